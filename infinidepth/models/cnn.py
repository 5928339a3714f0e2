"""The released InfiniDepth's CNN branch (``basic_encoder``): a RAFT-style residual encoder.

Instance-normalised residual stages at strides 2, 2, 4, 8, 16; all four resized (bilinear,
align_corners=True) to stride 4, concatenated, fused by a 3x3 and a 1x1 convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        self.downsample = None
        if stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), nn.InstanceNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class BasicEncoder(nn.Module):
    def __init__(self, output_dim: int = 128):
        super().__init__()
        half, three_q = output_dim // 2, output_dim // 4 * 3
        self.conv1 = nn.Conv2d(3, half, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(half)
        self.layer1 = nn.Sequential(ResidualBlock(half, half, 1), ResidualBlock(half, half, 1))
        self.layer2 = nn.Sequential(ResidualBlock(half, three_q, 2), ResidualBlock(three_q, three_q, 1))
        self.layer3 = nn.Sequential(ResidualBlock(three_q, output_dim, 2), ResidualBlock(output_dim, output_dim, 1))
        self.layer4 = nn.Sequential(ResidualBlock(output_dim, output_dim, 2), ResidualBlock(output_dim, output_dim, 1))
        self.conv2 = nn.Conv2d(half + three_q + 2 * output_dim, 2 * output_dim, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(2 * output_dim)
        self.conv3 = nn.Conv2d(2 * output_dim, output_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // 4, x.shape[-1] // 4)
        x = F.relu(self.norm1(self.conv1(x)))
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        feats = [F.interpolate(t, size, mode="bilinear", align_corners=True) for t in (a, b, c, d)]
        x = F.relu(self.norm2(self.conv2(torch.cat(feats, dim=1))))
        return self.conv3(x)

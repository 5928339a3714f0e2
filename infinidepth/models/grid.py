"""A grid-output baseline: the paper model's encoder and feature pyramid with a convolutional head
that predicts depth on the network input's pixel grid; any other resolution is that grid upsampled
bilinearly. Same encoder, same training: the comparison that isolates what the implicit decoder adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from infinidepth.ops.coords import clamp_to_pixel_centres
from infinidepth.ops.gather import bilinear_gather_reference

from .base import Features, ImplicitDepthModel, check_image
from .paper import Reassemble
from .vit import VIT_SIZES, ViTConfig, VisionTransformer, default_layers


@dataclass
class GridConfig:
    vit: ViTConfig = field(default_factory=lambda: VIT_SIZES["tiny"])
    channels: tuple[int, int, int] = (16, 32, 64)
    head: int = 32
    layers: tuple[int, int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GridConfig":
        d = dict(d)
        d["vit"] = ViTConfig(**d["vit"])
        d["channels"] = tuple(d["channels"])
        d["layers"] = None if d.get("layers") is None else tuple(d["layers"])
        return cls(**d)


class GridBaseline(ImplicitDepthModel):
    arch = "GridBaseline"
    output_space = "normalised log-depth on the input grid (relative)"
    alignment = "log_depth"
    Config = GridConfig

    def __init__(self, config: GridConfig | None = None):
        super().__init__()
        self.config = config or GridConfig()
        cfg = self.config
        self.encoder = VisionTransformer(cfg.vit)
        self.layers = list(cfg.layers or default_layers(cfg.vit.depth, 3))
        self.reassemble = nn.ModuleList(Reassemble(cfg.vit.embed_dim, c, up) for c, up in zip(cfg.channels, (4, 2, 1)))
        self.fuse = nn.Conv2d(sum(cfg.channels), cfg.head, 3, padding=1)
        self.refine = nn.Conv2d(cfg.head, cfg.head, 3, padding=1)
        self.out = nn.Conv2d(cfg.head, 1, 1)

    def features(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        if sparse_depth is not None:
            raise ValueError("the grid baseline takes no sparse depth")
        check_image(image, self.encoder.patch_size)
        image = image.to(self.device, torch.float32)
        B, _, H, W = image.shape
        p = self.encoder.patch_size
        tokens = self.encoder.intermediate_layers((image - self._mean) / self._std, self.layers)
        maps = [r(t.transpose(1, 2).reshape(B, -1, H // p, W // p)) for r, t in zip(self.reassemble, tokens)]
        size = maps[0].shape[-2:]
        x = torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]], 1)
        x = F.interpolate(F.relu(self.fuse(x)), size=(H, W), mode="bilinear", align_corners=False)
        grid = self.out(F.relu(self.refine(x)))                    # [B, 1, H, W]: one value per input pixel
        return Features(maps=[grid], image_size=(H, W))

    def decode_raw(self, feats, coords, backend, chunk, with_grad=False):
        if with_grad:
            raise NotImplementedError("the grid baseline has no exact derivative; it is for comparisons")
        # Bilinear upsampling of the grid, read at the queries: grid_sample semantics, edges clamped.
        return bilinear_gather_reference(feats.maps[0], clamp_to_pixel_centres(coords, *feats.image_size))[..., 0]

    def to_depth(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(raw)

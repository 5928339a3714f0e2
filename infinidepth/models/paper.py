"""The paper's InfiniDepth: a 3-scale feature pyramid and a hierarchical gated fusion decoder.

Encoder: DINOv3-layout ViT; tokens of a shallow, a middle and the last block are projected (1x1)
to C_1, C_2, C_3 channels and resized DPT-style by transposed convolutions (x4, x2, x1), giving
maps at strides p/4, p/2, p for patch p (4, 8, 16 for 16-pixel patches; 2, 4, 8 for mini's 8).
Decoder (per query, DESIGN.md section 1): ``h_1 = f^1``,
``h_{k+1} = FFN_k(f^{k+1} + sigmoid(gate_k) * Linear_k(h_k))``, head MLP to one value with ELU.
Output: normalised log-depth (relative); depth = exp(output), up to scale and power.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from infinidepth.ops import HierarchicalDecoder, implicit_decode

from .base import Features, ImplicitDepthModel, check_image
from .vit import VIT_SIZES, ViTConfig, VisionTransformer, default_layers


@dataclass
class PaperConfig:
    vit: ViTConfig = field(default_factory=lambda: VIT_SIZES["large"])
    channels: tuple[int, int, int] = (256, 512, 1024)
    head: tuple[int, ...] = (256, 256)
    ffn_ratio: int = 4
    layers: tuple[int, int, int] | None = None  # ViT blocks feeding strides 4, 8, 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PaperConfig":
        d = dict(d)
        d["vit"] = ViTConfig(**d["vit"])
        d["channels"] = tuple(d["channels"])
        d["head"] = tuple(d["head"])
        d["layers"] = None if d.get("layers") is None else tuple(d["layers"])
        return cls(**d)


class Reassemble(nn.Module):
    """Token map (stride 16) -> projected map at stride 16 / ``upsample``."""

    def __init__(self, dim: int, channels: int, upsample: int):
        super().__init__()
        self.project = nn.Conv2d(dim, channels, 1)
        self.resample = (
            nn.ConvTranspose2d(channels, channels, upsample, stride=upsample) if upsample > 1 else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(self.project(x))


class FusionStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, ratio: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(c_out))  # sigmoid(0) = 0.5 at start
        self.lateral = nn.Linear(c_in, c_out)
        self.ffn_in = nn.Linear(c_out, ratio * c_out)
        self.ffn_out = nn.Linear(ratio * c_out, c_out)


class HierarchicalHead(nn.Module):
    def __init__(self, channels: tuple[int, ...], head: tuple[int, ...], ratio: int):
        super().__init__()
        self.stages = nn.ModuleList(FusionStage(a, b, ratio) for a, b in zip(channels[:-1], channels[1:]))
        dims = [channels[-1], *head, 1]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def weights(self) -> HierarchicalDecoder:
        return HierarchicalDecoder(
            gates=[s.gate for s in self.stages],
            laterals=[(s.lateral.weight, s.lateral.bias) for s in self.stages],
            ffns=[((s.ffn_in.weight, s.ffn_in.bias), (s.ffn_out.weight, s.ffn_out.bias)) for s in self.stages],
            head=[(m.weight, m.bias) for m in self.mlp],
        )


class InfiniDepthPaper(ImplicitDepthModel):
    arch = "InfiniDepthPaper"
    output_space = "normalised log-depth (relative)"
    alignment = "log_depth"
    Config = PaperConfig

    def __init__(self, config: PaperConfig | None = None):
        super().__init__()
        self.config = config or PaperConfig()
        cfg = self.config
        self.encoder = VisionTransformer(cfg.vit)
        self.layers = list(cfg.layers or default_layers(cfg.vit.depth, 3))
        d = cfg.vit.embed_dim
        self.reassemble = nn.ModuleList(Reassemble(d, c, up) for c, up in zip(cfg.channels, (4, 2, 1)))
        self.decoder = HierarchicalHead(cfg.channels, cfg.head, cfg.ffn_ratio)

    def pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides p/4, p/2, p for patch p (differentiable: training calls this)."""
        B, _, H, W = image.shape
        p = self.encoder.patch_size
        tokens = self.encoder.intermediate_layers((image - self._mean) / self._std, self.layers)
        grids = [t.transpose(1, 2).reshape(B, -1, H // p, W // p) for t in tokens]
        return [r(g) for r, g in zip(self.reassemble, grids)]

    def features(self, image: torch.Tensor, sparse_depth: torch.Tensor | None = None) -> Features:
        if sparse_depth is not None:
            raise ValueError("the paper model takes no sparse depth; use an InfiniDepth_DepthSensor checkpoint")
        check_image(image, self.encoder.patch_size)
        image = image.to(self.device, torch.float32)
        return Features(maps=self.pyramid(image), image_size=tuple(image.shape[-2:]))

    def decode_raw(self, feats, coords, backend, chunk, with_grad=False):
        return implicit_decode(feats.maps, coords, self.decoder.weights(), backend=backend, chunk=chunk, cache=feats.extras,
                               precision=self.precision, with_grad=with_grad)

    def to_depth(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.exp(raw)

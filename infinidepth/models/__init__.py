"""Models: the released InfiniDepth pair and the paper model, plus named presets.

A preset builds an architecture with seeded random weights: the small ones are for tests, demos
and benchmarks; the large ones have the released shapes (load real weights with ``load_model``).
"""

from __future__ import annotations

import torch

from .base import Features, ImplicitDepthModel, SampledPoints
from .grid import GridBaseline, GridConfig
from .official import InfiniDepth, InfiniDepthDepthSensor, OfficialConfig
from .paper import InfiniDepthPaper, PaperConfig
from .vit import VIT_SIZES, ViTConfig

ARCHS: dict[str, type[ImplicitDepthModel]] = {
    InfiniDepth.arch: InfiniDepth,
    InfiniDepthDepthSensor.arch: InfiniDepthDepthSensor,
    InfiniDepthPaper.arch: InfiniDepthPaper,
    GridBaseline.arch: GridBaseline,
}

_TINY_OFFICIAL = dict(vit=VIT_SIZES["tiny"], cnn_dim=32, hidden=(64, 32, 16))
# The bundled demo model's encoder (infinidepth/assets/DEMO_MODEL.md): wider and deeper than "tiny",
# and 8-pixel patches, so that a 96x128 input gives 12x16 tokens instead of 6x8.
_MINI_VIT = ViTConfig(embed_dim=192, depth=6, num_heads=3, patch_size=8)

PRESETS: dict[str, tuple[str, object]] = {
    "tiny": (InfiniDepthPaper.arch, PaperConfig(vit=VIT_SIZES["tiny"], channels=(16, 32, 64), head=(32, 32))),
    "official-tiny": (InfiniDepth.arch, OfficialConfig(**_TINY_OFFICIAL)),
    "sensor-tiny": (InfiniDepthDepthSensor.arch, OfficialConfig(**_TINY_OFFICIAL)),
    "official-large": (InfiniDepth.arch, OfficialConfig()),
    "sensor-large": (InfiniDepthDepthSensor.arch, OfficialConfig()),
    "paper-small": (InfiniDepthPaper.arch, PaperConfig(vit=VIT_SIZES["small"], channels=(96, 192, 384), head=(256, 256))),
    "paper-base": (InfiniDepthPaper.arch, PaperConfig(vit=VIT_SIZES["base"], channels=(128, 256, 512), head=(256, 256))),
    "paper-large": (InfiniDepthPaper.arch, PaperConfig()),
    # the same encoder and pyramid as "tiny" with a grid head (bilinear upsampling): a baseline
    "grid-tiny": (GridBaseline.arch, GridConfig(vit=VIT_SIZES["tiny"], channels=(16, 32, 64), head=32)),
    "mini": (InfiniDepthPaper.arch, PaperConfig(vit=_MINI_VIT, channels=(16, 32, 64), head=(32, 32))),
    "grid-mini": (GridBaseline.arch, GridConfig(vit=_MINI_VIT, channels=(16, 32, 64), head=32)),
}


def build_model(arch: str, config=None) -> ImplicitDepthModel:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    cls = ARCHS[arch]
    if isinstance(config, dict):
        config = cls.Config.from_dict(config)
    return cls(config)


def from_preset(name: str, seed: int = 0) -> ImplicitDepthModel:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    arch, config = PRESETS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, config)
    return model.eval()


__all__ = [
    "ARCHS",
    "Features",
    "GridBaseline",
    "ImplicitDepthModel",
    "InfiniDepth",
    "InfiniDepthDepthSensor",
    "InfiniDepthPaper",
    "OfficialConfig",
    "PaperConfig",
    "PRESETS",
    "SampledPoints",
    "build_model",
    "from_preset",
]

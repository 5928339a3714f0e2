"""Training configuration: a dataclass, read from YAML, with presets.

    infinidepth train --config paper            # a preset: the paper model on the paper's recipe
    infinidepth train --config my_run.yaml      # a file: any field below, the rest from `base:`

A YAML file may start from a preset with ``base: paper`` and override fields; unknown keys are an
error that names them (a typo never silently trains something else).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataSource:
    name: str                      # a reader of infinidepth.data.DATASETS, or "procedural-live"
    root: str | None = None        # its folder (not for procedural-live)
    scenes: int = 0                # procedural-live: how many scenes
    render_size: tuple[int, int] = (384, 512)   # procedural-live: ground-truth resolution


@dataclass
class TrainConfig:
    model: str = "tiny"                          # preset name, or a checkpoint file to start from
    pretrained_encoder: str | None = None        # a DINOv3 or DINOv2 checkpoint (Meta layout) or our model file, for the encoder
    data: list[DataSource] = field(default_factory=list)
    input_size: tuple[int, int] = (384, 512)     # network input (H, W), multiples of the ViT patch (16; 14 for DINOv2)
    pairs: int = 100_000                         # coordinate-depth pairs per image
    target: str = "auto"                         # log_depth (paper) | disparity (released) | auto: by model
    batch_size: int = 4
    steps: int = 1000
    lr_encoder: float = 5e-6                     # 0: the encoder is frozen (no gradients through it)
    lr_decoder: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    precision: str = "auto"                      # auto: bf16 autocast on a GPU, fp32 on the CPU | fp32 | bf16 | fp16
    augment_scale: tuple[float, float] = (0.6, 1.0)
    augment_flip: bool = True
    augment_color: float = 0.2
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    out: str = "runs/infinidepth"

    def validate(self) -> "TrainConfig":
        problems = []
        if not self.data:
            problems.append("data: give at least one source")
        for s in self.data:
            if s.name != "procedural-live" and not s.root:
                problems.append(f"data source {s.name!r} needs a root folder")
            if s.name == "procedural-live" and s.scenes <= 0:
                problems.append("procedural-live needs scenes > 0")
        h, w = self.input_size
        if h <= 0 or w <= 0:  # multiples of the model's patch: checked once the model is built
            problems.append(f"input_size must be positive, got {self.input_size}")
        for name in ("pairs", "batch_size", "steps", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.target not in ("auto", "log_depth", "disparity"):
            problems.append(f"target must be auto, log_depth or disparity, got {self.target!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if min(self.lr_encoder, self.lr_decoder) < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            problems.append("learning rates, warmup_steps and grad_clip must not be negative")
        if problems:
            raise ValueError("bad training config:\n  " + "\n  ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        base = d.pop("base", None)
        if base and base not in PRESETS:
            raise ValueError(f"unknown base preset {base!r}; choose from {sorted(PRESETS)}")
        cfg = dataclasses.asdict(PRESETS[base]) if base else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cfg.update(d)
        sources = []
        for s in cfg.get("data", []):
            s = dict(s)
            extra = sorted(set(s) - {f.name for f in dataclasses.fields(DataSource)})
            if extra:
                raise ValueError(f"unknown keys in a data source: {', '.join(extra)}")
            if "render_size" in s:
                s["render_size"] = tuple(s["render_size"])
            sources.append(DataSource(**s))
        cfg["data"] = sources
        for key in ("input_size", "augment_scale"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        return cls(**cfg).validate()


def load_config(name_or_path: str, **overrides) -> TrainConfig:
    """A preset name or a YAML file, then ``overrides`` (e.g. out=...)."""
    if name_or_path in PRESETS:
        d = dataclasses.asdict(PRESETS[name_or_path])
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file {name_or_path!r} (and no preset of that name; presets: {sorted(PRESETS)})")
        import yaml

        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(d)


PRESETS = {
    # The paper's recipe on its synthetic mix (point the roots at your copies).
    "paper": TrainConfig(
        model="paper-large", data=[DataSource("hypersim", "data/hypersim"), DataSource("vkitti2", "data/vkitti2"),
                                   DataSource("tartanair", "data/tartanair"), DataSource("irs", "data/irs"),
                                   DataSource("urbansyn", "data/urbansyn"), DataSource("unrealstereo4k", "data/unrealstereo4k")],
        input_size=(768, 1024), pairs=100_000, target="log_depth", batch_size=4, steps=200_000,
        out="runs/paper"),
    # The released model's recipe: min-max disparity targets, Hypersim.
    "official": TrainConfig(
        model="official-large", data=[DataSource("hypersim", "data/hypersim")], input_size=(768, 1024), pairs=100_000,
        target="disparity", batch_size=4, steps=200_000, out="runs/official"),
    # The bundled demonstration model: the mini preset, procedural scenes, about an hour on a 2-core CPU.
    "demo": TrainConfig(
        model="mini", data=[DataSource("procedural", "data/procedural")], input_size=(96, 128), pairs=1024,
        target="log_depth", batch_size=8, steps=6000, lr_encoder=1e-3, lr_decoder=1e-3, weight_decay=0.01,
        warmup_steps=100, checkpoint_every=500, num_workers=0, out="runs/demo"),
}

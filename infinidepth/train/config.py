"""Training configuration: a dataclass, read from YAML, with presets.

    infinidepth train --config paper            # a preset: the paper model on the paper's recipe
    infinidepth train --config my_run.yaml      # a file: any field below, the rest from `base:`

A YAML file may start from a preset with ``base: paper`` and override fields; unknown keys are an
error that names them (a typo never silently trains something else).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DataSource:
    name: str                      # a reader of infinidepth.data.DATASETS, or "procedural-live"
    root: str | None = None        # its folder (not for procedural-live)
    scenes: int = 0                # procedural-live: how many scenes
    render_size: tuple[int, int] = (384, 512)   # procedural-live: ground-truth resolution

    def __post_init__(self):
        if isinstance(self.render_size, list):   # YAML gives lists
            self.render_size = tuple(self.render_size)


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
    grad_clip: float = 1.0                       # 0: no clipping
    precision: str = "auto"                      # auto: bf16 autocast on a GPU, fp32 on the CPU | fp32 | bf16 | fp16 (GPU only)
    augment_scale: tuple[float, float] = (0.6, 1.0)   # crop sizes, a range within (0, 1] of the largest crop
    augment_flip: bool = True
    augment_color: float = 0.2                   # colour jitter strength, in [0, 1]
    checkpoint_every: int = 500
    log_every: int = 10
    num_workers: int = 2
    seed: int = 0
    out: str = "runs/infinidepth"

    def __post_init__(self):
        for name in ("input_size", "augment_scale"):     # YAML gives lists
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))

    def validate(self) -> "TrainConfig":
        """Every field's type and range; one ValueError naming each bad field and what it must be.
        (That the input size is a multiple of the encoder's patch is checked when the model is built,
        at the start of training: a pretrained encoder may change the patch.)"""
        import torch

        from infinidepth.checkpoint import BUNDLED
        from infinidepth.data import DATASETS
        from infinidepth.models import PRESETS as MODELS

        problems = []
        if check_text(problems, "model", self.model) and self.model not in MODELS and self.model not in BUNDLED \
                and not Path(self.model).is_file():
            problems.append(f"model must be a model preset ({', '.join(sorted(MODELS))}), a bundled model "
                            f"({', '.join(sorted(BUNDLED))}) or a model file; there is no file {self.model!r}")
        if self.pretrained_encoder is not None and check_text(problems, "pretrained_encoder", self.pretrained_encoder) \
                and not Path(self.pretrained_encoder).is_file():
            problems.append(f"pretrained_encoder: no file {self.pretrained_encoder!r}")
        if not isinstance(self.data, list) or not self.data:
            problems.append("data: give at least one source")
        else:
            for i, s in enumerate(self.data):
                problems += _source_problems(s, f"data[{i}]", DATASETS)
        check_size(problems, "input_size", self.input_size)
        for name in ("pairs", "batch_size", "steps", "checkpoint_every", "log_every"):
            check_int(problems, name, getattr(self, name), 1)
        check_int(problems, "warmup_steps", self.warmup_steps, 0)
        check_int(problems, "num_workers", self.num_workers, 0)
        check_int(problems, "seed", self.seed, 0, 2**32 - 1)
        check_choice(problems, "target", self.target, ("auto", "log_depth", "disparity"))
        if check_choice(problems, "precision", self.precision, ("auto", "fp32", "bf16", "fp16")) \
                and self.precision == "fp16" and not torch.cuda.is_available():
            problems.append("precision fp16 needs a CUDA device, and there is none here; on the CPU use fp32 "
                            "(or bf16, on CPUs with AVX512_BF16)")
        rates = [check_number(problems, name, getattr(self, name), 0) for name in ("lr_encoder", "lr_decoder")]
        if all(rates) and self.lr_encoder == 0 and self.lr_decoder == 0:
            problems.append("lr_encoder and lr_decoder are both 0: nothing would be trained (lr_encoder 0 alone "
                            "freezes the encoder)")
        for name in ("weight_decay", "grad_clip"):
            check_number(problems, name, getattr(self, name), 0)
        check_number(problems, "augment_color", self.augment_color, 0, 1)
        check_bool(problems, "augment_flip", self.augment_flip)
        s = self.augment_scale
        if not (isinstance(s, tuple) and len(s) == 2 and all(_is_number(v) and math.isfinite(v) for v in s)
                and 0 < s[0] <= s[1] <= 1):
            problems.append(f"augment_scale must be [min, max] with 0 < min <= max <= 1, got {_show(s)}")
        check_text(problems, "out", self.out, what="a folder path")
        if problems:
            raise ValueError("bad training config:\n  " + "\n  ".join(problems))
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        base = d.pop("base", None)
        if base is not None and (not isinstance(base, str) or base not in PRESETS):
            raise ValueError(f"unknown base preset {base!r}; choose from {sorted(PRESETS)}")
        cfg = dataclasses.asdict(PRESETS[base]) if base else {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cfg.update(d)
        cfg["data"] = _sources(cfg.get("data", []))
        return cls(**cfg).validate()


EXAMPLE_SOURCE = "{name: procedural, root: data/procedural}"


def _sources(data) -> list[DataSource]:
    """``data`` from YAML (a list of mappings) as DataSources; a clear error for any other shape."""
    if not isinstance(data, list):
        raise ValueError(f"bad training config: data must be a list of sources such as [{EXAMPLE_SOURCE}], got {_show(data)}")
    keys = [f.name for f in dataclasses.fields(DataSource)]
    sources = []
    for i, s in enumerate(data):
        if isinstance(s, DataSource):
            sources.append(s)
            continue
        if not isinstance(s, dict):
            raise ValueError(f"bad training config: data[{i}] must be a mapping such as {EXAMPLE_SOURCE}, got {_show(s)}")
        extra = sorted(str(k) for k in s if k not in keys)
        if extra:
            raise ValueError(f"unknown keys in a data source: {', '.join(extra)} (data[{i}]; known: {', '.join(keys)})")
        if "name" not in s:
            raise ValueError(f"bad training config: data[{i}] needs a name (a dataset reader or procedural-live)")
        sources.append(DataSource(**s))
    return sources


def _source_problems(s, where: str, datasets) -> list[str]:
    """What is wrong with the data source ``s`` (``where``: its place in the config, e.g. data[0])."""
    if not isinstance(s, DataSource):
        return [f"{where} must be a data source such as {EXAMPLE_SOURCE}, got {_show(s)}"]
    problems = []
    if not isinstance(s.name, str) or (s.name not in datasets and s.name != "procedural-live"):
        problems.append(f"unknown data source {s.name!r} ({where}); choose from {sorted(datasets)} or procedural-live")
        return problems
    if s.name == "procedural-live":
        check_int(problems, f"{where}.scenes (procedural-live: how many scenes)", s.scenes, 1)
        check_size(problems, f"{where}.render_size", s.render_size)
        if s.root is not None:
            problems.append(f"{where}: procedural-live renders its scenes and reads no root folder, got root {s.root!r}")
        return problems
    if s.root is None or s.root == "":
        problems.append(f"{where}: data source {s.name!r} needs a root folder")
    else:
        check_text(problems, f"{where}.root", s.root, what="a folder path")
    if s.scenes != 0 or s.render_size != DataSource.render_size:   # set, but read by procedural-live only
        problems.append(f"{where}: scenes and render_size are for procedural-live; {s.name!r} reads its frames from root")
    return problems


# -- checks shared by the training configs: each appends "<name> must be ..., got ..." to problems ------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)       # YAML true/false are not numbers


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v) -> str:
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _bounds(low, high) -> str:
    if high is not None:
        return f"in [{_num(low)}, {_num(high)}]"
    return {1: "positive", 0: "0 or more"}.get(low, f"at least {_num(low)}")


def check_int(problems: list, name: str, value, low: int, high: int | None = None, why: str = "") -> bool:
    """``value`` must be a whole number (not a bool, not 2.5) in ``[low, high]``."""
    if not _is_int(value):
        problems.append(f"{name} must be a whole number, got {_show(value)}")
    elif value < low or (high is not None and value > high):
        problems.append(f"{name} must be {_bounds(low, high)}{why}, got {value}")
    else:
        return True
    return False


def check_number(problems: list, name: str, value, low: float, high: float | None = None, above: bool = False) -> bool:
    """``value`` must be a finite number in ``[low, high]`` (``above``: greater than ``low``)."""
    if not _is_number(value):
        problems.append(f"{name} must be a number, got {_show(value)}")
    elif not math.isfinite(value):
        problems.append(f"{name} must be a finite number, got {value}")
    elif (value <= low if above else value < low) or (high is not None and value > high):
        rule = f"greater than {_num(low)}" if above else (f"{_num(low)} or more" if high is None else _bounds(low, high))
        problems.append(f"{name} must be {rule}, got {_num(value)}")
    else:
        return True
    return False


def check_size(problems: list, name: str, value, multiple: int = 1) -> bool:
    """``value`` must be ``(height, width)``: two positive whole numbers (multiples of ``multiple``)."""
    if not (isinstance(value, tuple) and len(value) == 2 and all(_is_int(v) for v in value)):
        problems.append(f"{name} must be [height, width], two whole numbers, got {_show(value)}")
    elif min(value) <= 0:
        problems.append(f"{name} must be positive, got {_show(value)}")
    elif value[0] % multiple or value[1] % multiple:
        problems.append(f"{name} must be multiples of {multiple}, got {_show(value)}")
    else:
        return True
    return False


def check_choice(problems: list, name: str, value, choices) -> bool:
    if not isinstance(value, str) or value not in choices:
        problems.append(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {_show(value)}")
        return False
    return True


def check_bool(problems: list, name: str, value) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{name} must be true or false, got {_show(value)}")
        return False
    return True


def check_text(problems: list, name: str, value, what: str = "a name or file path") -> bool:
    if not isinstance(value, str) or not value:
        problems.append(f"{name} must be {what} (text), got {_show(value)}")
        return False
    return True


def _yaml_load(text: str):
    """``yaml.safe_load``, except that ``1e-4`` is the number it looks like (YAML 1.2), not the string
    PyYAML's YAML 1.1 rules make of it (they want ``1.0e-4``): learning rates are written that way;
    and that a key given twice in a mapping is an error (PyYAML keeps the last, silently)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            # (a merge key, <<: *anchor, is not a key of its own: its keys may be overridden here)
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge"]
            repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
            if repeated:
                raise yaml.constructor.ConstructorError(None, None, f"keys given twice: {', '.join(repeated)}",
                                                        node.start_mark)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


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
            d = _yaml_load(path.read_text()) or {}
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

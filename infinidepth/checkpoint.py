"""Loading and saving models.

Accepted files:
* the released Lightning checkpoints (``.ckpt``: ``state_dict`` with keys prefixed ``pipeline.``);
* plain state dicts (``.pt``/``.pth``/``.bin``) and ``.safetensors`` files of the same keys, also
  when a wrapper prefixed them all (``module.`` from DataParallel, ``_orig_mod.`` from torch.compile);
* our own format: ``.safetensors`` whose metadata carries the architecture and its config (no
  pickle, exact round trip). ``save_model`` writes it atomically.

Foreign files carry no config, so the architecture is read off the key names and shapes.
Loading is strict: a file whose keys do not fit gets one error listing what is missing, what is
unexpected and which shapes differ.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import types
from pathlib import Path

import numpy as np
import torch

from infinidepth.io import atomic_path
from infinidepth.models import ARCHS, PRESETS, ImplicitDepthModel, build_model, from_preset
from infinidepth.models.official import RELEASED_INPUT, OfficialConfig
from infinidepth.models.paper import PaperConfig
from infinidepth.models.vit import ViTConfig

FORMAT = "infinidepth"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the architecture."""


def one_line(error: Exception, limit: int = 200) -> str:
    """``Type: message`` of a reader library's error on one line, cut to ``limit`` characters
    (torch's run to pages of advice that does not apply here)."""
    text = " ".join(ln.strip() for ln in str(error).splitlines() if ln.strip())
    text = text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def read_torch_weights(path, nests: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """The tensors of a plain PyTorch weights file (nothing pickled is run), the dicts named in
    ``nests`` unwrapped in turn where present (e.g. ``{"state_dict": {...}}``); a clear error for a
    file that is not one."""
    obj = torch_load_inert(path)
    for key in nests:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class _Inert:
    """What a checkpoint's non-tensor objects become: built from any arguments, holding nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _tensor_global(module: str, name: str) -> bool:
    """The globals a pickled state dict needs to rebuild its tensors (and nothing that runs code)."""
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype) or name == "Size"
    return (module, name) in {("collections", "OrderedDict"), ("torch.nn.parameter", "Parameter"),
                              ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage")}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if _tensor_global(module, name):
            return super().find_class(module, name)
        return type(name, (_Inert,), {})


_inert_pickle = types.ModuleType("infinidepth_inert_pickle")
_inert_pickle.Unpickler = _InertUnpickler
_inert_pickle.load = lambda f, **kw: _InertUnpickler(f, **kw).load()
_inert_pickle.__version__ = pickle.format_version


class RefusedPickle(CheckpointError):
    """A PyTorch file that pickles objects (classes, functions) torch's weights-only loader refuses."""


def torch_load_weights_only(path, what: str = "PyTorch checkpoint") -> object:
    """What a PyTorch file holds, on the CPU, read by torch's weights-only loader (tensors, numbers,
    strings and containers; no code named by the file runs). A CheckpointError naming the file, that it
    is not a readable ``what`` and why, for one that is not a PyTorch file or a damaged one;
    :class:`RefusedPickle` for one that pickles other objects (torch's own error advises
    ``weights_only=False``, which would run them)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable {what} ({one_line(e)})") from e
    except Exception as e:
        error = e
    with open(path, "rb") as f:
        start = f.read(4)
    text, zipped = str(error), start == b"PK\x03\x04"
    if not (zipped or start[:1] == b"\x80"):  # torch.save writes a zip archive, its legacy format a pickle
        problem = "an empty file" if not start else \
            f"not a PyTorch file: those are zip archives or pickles, and it starts with {start!r}"
    elif "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", text)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        why = f"it pickles {found.group(1)}, which is not rebuilt (that could run code)" if found else \
            f"torch's weights-only loader refuses it ({detail.group(1).strip() if detail else 'unknown pickle content'})"
        raise RefusedPickle(f"{path}: not a readable {what}: {why}") from error
    elif zipped:
        detail = re.sub(r"\[enforce fail at \S+\] \. ", "", one_line(error).split(". This is an internal")[0])
        problem = f"a truncated or damaged PyTorch file, or another kind of zip archive ({detail})"
    else:
        problem = f"a truncated or damaged pickle ({one_line(error)})"
    raise CheckpointError(f"{path}: not a readable {what} ({problem})") from error


def torch_load_inert(path, what: str = "PyTorch checkpoint") -> object:
    """What a PyTorch file holds, on the CPU, with no code named by the file run: torch's weights-only
    loader, else (Lightning files may pickle hyper-parameter objects, argparse.Namespace or config
    classes, that it refuses) a load with every such class replaced by an inert stand-in, so that the
    tensors come out and nothing else does anything. A CheckpointError saying the file is not a
    readable ``what`` (and why) for a file that is neither."""
    try:
        return torch_load_weights_only(path, what)
    except RefusedPickle:
        pass
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_inert_pickle)
    except Exception as e2:
        raise CheckpointError(f"{path}: not a readable {what} ({one_line(e2)})") from e2


def load_training_state(path) -> object:
    """A training checkpoint as :func:`infinidepth.train.trainer.save_checkpoint` writes it (tensors,
    numbers, strings, containers, and NumPy's RNG state, an array), read with torch's weights-only
    loader: a file that names any other code to run is refused, not run (a CheckpointError naming the
    file and why, as :func:`torch_load_weights_only` words it)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        return torch_load_weights_only(path, "training checkpoint")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """State dict and (for our own format) the model description."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(e)})") from e
        try:
            info = json.loads(meta["infinidepth"]) if "infinidepth" in meta else None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: its infinidepth metadata is not valid JSON ({e})") from e
        if info is not None and not isinstance(info, dict):
            raise CheckpointError(f"{path}: its infinidepth metadata is not a JSON object")
        return _strip_wrapper_prefixes(sd), info
    obj = torch_load_inert(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors or a Lightning checkpoint, got {type(obj).__name__}")
    info = obj.get(FORMAT) if isinstance(obj.get(FORMAT), dict) else _training_description(obj)
    sd = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: its 'state_dict' is not a dict")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    return _strip_wrapper_prefixes(sd), info


def _training_description(obj: dict) -> dict | None:
    """The model description a training checkpoint (``OUT/checkpoint.pt``, ``train.trainer.save_checkpoint``)
    keeps beside its weights, in our format's terms; None for any other file. Without it the
    architecture would be guessed from the keys, which do not tell everything (a DINOv2-layout
    encoder, a grid baseline, a paper model's choice of ViT blocks)."""
    arch, config = obj.get("arch"), obj.get("model_config")
    if not (isinstance(arch, str) and isinstance(config, dict) and isinstance(obj.get("model"), dict)):
        return None
    run = obj.get("config")
    size = run.get("input_size") if isinstance(run, dict) else None
    return {"arch": arch, "config": config, "input_size": list(size) if isinstance(size, (list, tuple)) else None}


#: prefixes that wrappers put before every key: Lightning (the released ``.ckpt``), DataParallel and
#: DistributedDataParallel (``module.``), torch.compile (``_orig_mod.``)
WRAPPER_PREFIXES = ("pipeline.", "module.", "_orig_mod.")


def _strip_wrapper_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys without the prefixes of :data:`WRAPPER_PREFIXES`, stripped while every key has one
    (``module._orig_mod.encoder...`` too), whatever file format holds them (a ``.safetensors``
    converted from a ``.ckpt`` keeps the prefix as well as a ``.pt`` does). A prefix on only some keys
    is left for the strict load to report."""
    while sd and (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)):
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _vit_config(sd: dict[str, torch.Tensor], prefix: str) -> ViTConfig:
    try:
        dim = sd[f"{prefix}patch_embed.proj.weight"].shape[0]
        patch = sd[f"{prefix}patch_embed.proj.weight"].shape[-1]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}blocks\.(\d+)\.", k)))
        hidden = sd[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0]
        storage = sd[f"{prefix}storage_tokens"].shape[1]
        rope_freqs = sd[f"{prefix}rope_embed.periods"].shape[0]  # head_dim / 4
    except (KeyError, ValueError, IndexError) as e:  # IndexError: a tensor of fewer dimensions than the layout's
        what = (f"missing {e}" if isinstance(e, KeyError) else f"no {prefix}blocks.* keys" if isinstance(e, ValueError)
                else f"{type(e).__name__}: {e}")
        raise CheckpointError(f"cannot read the ViT shape from keys under {prefix!r}: {what}") from e
    return ViTConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=dim // (4 * rope_freqs),
        ffn_ratio=hidden / dim,
        n_storage_tokens=storage,
        patch_size=patch,
    )


def infer_architecture(sd: dict[str, torch.Tensor]) -> tuple[str, object]:
    """(arch, config) of a state dict that came without a description."""
    if any(k.startswith("depth_implicit_head.") for k in sd):
        arch = "InfiniDepth_DepthSensor" if any(k.startswith("prompt_model.") for k in sd) else "InfiniDepth"
        linears = sorted(
            (int(m.group(1)), v.shape[0])
            for k, v in sd.items()
            if (m := re.match(r"depth_implicit_head\.out_layer\.layers\.(\d+)\.weight", k))
        )
        cnn = sd.get("basic_encoder.conv3.weight")
        if cnn is None:
            raise CheckpointError("checkpoint has a depth_implicit_head but no basic_encoder.conv3.weight")
        return arch, OfficialConfig(vit=_vit_config(sd, "pretrained."), cnn_dim=cnn.shape[0], hidden=tuple(n for _, n in linears[:-1]))
    if any(k.startswith("decoder.stages.") for k in sd):
        try:
            channels = tuple(sd[f"reassemble.{i}.project.weight"].shape[0] for i in range(3))
            heads = sorted(
                (int(m.group(1)), v.shape[0]) for k, v in sd.items() if (m := re.match(r"decoder\.mlp\.(\d+)\.weight", k))
            )
            ratio = sd["decoder.stages.0.ffn_in.weight"].shape[0] // channels[1]
        except (KeyError, IndexError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise CheckpointError(f"cannot read the paper model's shape from its keys (decoder.stages.*): {what}") from e
        return "InfiniDepthPaper", PaperConfig(
            vit=_vit_config(sd, "encoder."), channels=channels, head=tuple(n for _, n in heads[:-1]), ffn_ratio=ratio
        )
    sample = ", ".join(sorted(sd)[:5])
    if any(k.startswith(("encoder.gaussian_head.", "gaussian_head.")) for k in sd):
        raise CheckpointError(f"this is a released Gaussian-splatting head checkpoint (keys {sample}, ...), not a depth "
                              "model; load it with infinidepth.gs.PixelAlignedHead.from_checkpoint")
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {sample}); expected InfiniDepth or infinidepth keys")


def load_state_dict_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:

        def show(items):
            return "; ".join(str(i) for i in items[:10]) + (f"; ... ({len(items) - 10} more)" if len(items) > 10 else "")

        lines = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: {show(unexpected)}")
        if mismatched:
            lines.append(
                f"  {len(mismatched)} shape mismatches: "
                + show([f"{k}: file {a} vs model {b}" for k, a, b in mismatched])
            )
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=True)


#: weights shipped inside the package, by name (see infinidepth/assets/DEMO_MODEL.md)
BUNDLED = {"demo": "demo_model.safetensors"}


def load_bundled(name: str, device: str | torch.device = "cpu") -> ImplicitDepthModel:
    """A model shipped inside the package (:data:`BUNDLED`), whatever the current folder holds."""
    from importlib import resources

    with resources.as_file(resources.files("infinidepth") / "assets" / BUNDLED[name]) as bundled:
        return load_model(bundled, device)


def load_model(path_or_preset: str | os.PathLike, device: str | torch.device = "cpu") -> ImplicitDepthModel:
    """A ready-to-use model (eval mode, on ``device``) from a checkpoint file, a bundled model
    (``"demo"``) or a preset name (random weights)."""
    name = str(path_or_preset)
    if name in BUNDLED and not Path(name).exists():
        return load_bundled(name, device)
    path = Path(name)
    if not path.exists():
        if name in PRESETS:
            return from_preset(name).to(device)
        raise FileNotFoundError(f"no checkpoint file {name!r} (and no preset or bundled model of that name; "
                                f"presets: {sorted(PRESETS)}; bundled: {sorted(BUNDLED)})")
    if path.is_dir():
        hint = (f" (the bundled model of that name is shadowed by it: pass ./{name}/<file> for a file in it, or "
                f"run from another folder for the bundled one)") if name in BUNDLED else ""
        raise CheckpointError(f"{path} is a directory, not a checkpoint file{hint}")
    try:
        return _load_file(path, device)
    except CheckpointError as e:
        if name in PRESETS or name in BUNDLED:
            raise CheckpointError(f"{e} (the file {name!r} here shadows the preset of that name: run from another "
                                  "folder for the preset)") from e
        raise


def _load_file(path: Path, device) -> ImplicitDepthModel:
    sd, info = _read(path)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors hold NaN or infinite values: {', '.join(bad[:5])}"
                              + (", ..." if len(bad) > 5 else ""))
    try:
        if info is not None:
            if info.get("arch") not in ARCHS:
                raise CheckpointError(f"unknown architecture {info.get('arch')!r}")
            model = build_model(info["arch"], info["config"])
            size = info.get("input_size")
            if size is not None and not (isinstance(size, list) and len(size) == 2
                                         and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
                raise CheckpointError(f"input_size must be [H, W], got {size!r}")
            model.input_size = tuple(size) if size else None
        else:
            model = build_model(*infer_architecture(sd))
            if model.arch in ("InfiniDepth", "InfiniDepth_DepthSensor"):  # a released file
                model.input_size = RELEASED_INPUT
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a description or layout that does not fit
        raise CheckpointError(f"{path}: its model description does not fit ({type(e).__name__}: {e})") from e
    load_state_dict_strict(model, sd, source=str(path))
    return model.to(device).eval()


def save_model(model: ImplicitDepthModel, path: str | os.PathLike) -> Path:
    """Write ``model`` in our format (``.safetensors`` + its description), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"models are saved as .safetensors, got {path.name}")
    info = {"format": FORMAT, "version": FORMAT_VERSION, "arch": model.arch, "config": model.config_dict(),
            "input_size": model.input_size}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"infinidepth": json.dumps(info)})
    return path

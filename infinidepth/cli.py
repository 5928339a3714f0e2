"""The ``infinidepth`` command.

    infinidepth predict IMAGE|FOLDER... [--checkpoint PATH] [--output-size HxW | --scale S] [--region y0,x0,y1,x1] [--sparse-depth FILE]
                              [--reference-depth FILE] [--out DIR] [--ply [--points N]] [--fx F --fy F --cx C --cy C]
    infinidepth demo [--out DIR]
    infinidepth data render --scenes N --size WxH --out DIR [--views V] [--seed S] [--baseline B]
    infinidepth bench [--checkpoint PATH | --preset NAME] [--sizes 1k,4k,8k,16k] [--json OUT]
    infinidepth train --config FILE|PRESET [--out DIR] [--resume]
    infinidepth gs IMAGE [--checkpoint PATH] [--points N] [--video orbit|swing] [--gs-head PATH] [--sparse-depth FILE | --reference-depth FILE]
                         [--out DIR]
    infinidepth train-gs [--depth-model PATH] [--steps N] [--out DIR] [--resume]
    infinidepth eval --dataset NAME --root DIR [--dataset NAME --root DIR ...] [--checkpoint PATH]
                     [--output-resolution native|input] [--json OUT]

Bad input (a missing or unreadable file, a depth map of the wrong size, NaN or negative depth, a
zero focal length, an input size that is not a multiple of the model's ViT patch, a --device or
--out this machine cannot use) gets one line on stderr, exit code 2, and no output files. Ctrl-C and
SIGTERM exit with 130 and 143 after removing the temporary files being written; train and train-gs
first save their checkpoint, and exit with the same codes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from infinidepth.checkpoint import CheckpointError, load_bundled, load_model
from infinidepth.data.datasets import DataError
from infinidepth.eval.benchmarks import BENCHMARKS
from infinidepth.models.official import MAX_PROMPT_SAMPLES
from infinidepth.ops import PRECISIONS
from infinidepth.ops.coords import MAX_SIDE
from infinidepth.ops.gather import BACKENDS
from infinidepth.io import (
    DEPTH_SUFFIXES,
    InputError,
    atomic_path,
    atomic_paths,
    bomb_message,
    check_depth_values,
    colorize_depth,
    depth_to_png16,
    read_depth,
    read_image,
    write_npy,
    write_ply,
    write_png,
)

DEFAULT_CHECKPOINT = "demo"  # the bundled demonstration model: infinidepth/assets/DEMO_MODEL.md
MAX_INPUT_SIDE = 1024


MAX_PROMPT_POINTS = 1500   # sparse-depth samples given to the DepthSensor model's prompt by default


def open_model(name: str | None, device):
    """``--checkpoint``'s model; without one the bundled demo model (not a file or folder of that
    name in the current directory)."""
    return load_bundled(DEFAULT_CHECKPOINT, device) if name is None else load_model(name, device=device)


def parse_size(text: str, what: str, form: str = "HxW (e.g. 768x1024)") -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"{what} must look like {form}, got {text!r}") from None
    if a <= 0 or b <= 0:
        raise InputError(f"{what} must be positive, got {text!r}")
    if max(a, b) > MAX_SIDE:
        raise InputError(f"{what}: sides of at most {MAX_SIDE} (2**24) pixels, got {text!r}")
    return a, b


def parse_output_size(text: str) -> tuple[int, int]:
    """``--output-size``: HxW, or a name of ``infinidepth bench`` (1k, 2k, 4k, 8k, 16k)."""
    from infinidepth.bench import SIZES

    return SIZES.get(text.strip().lower()) or parse_size(text, "--output-size", f"HxW (e.g. 768x1024) or one of "
                                                         f"{', '.join(SIZES)}")


def parse_sizes(text: str) -> list[tuple[str, tuple[int, int]]]:
    """``--sizes`` of ``infinidepth bench``: (name, (H, W)) for each comma-separated size; a size given
    twice, by any name, is refused (it would be timed twice)."""
    from infinidepth.bench import SIZES

    out = []
    for item in text.split(","):
        item = item.strip().lower()
        size = SIZES.get(item) or parse_size(item, "--sizes", f"HxW or one of {', '.join(SIZES)}, comma-separated")
        twin = next((name for name, hw in out if hw == size), None)
        if twin is not None:
            raise InputError(f"--sizes: {item!r} is {size[0]}x{size[1]}, given already as {twin!r}")
        out.append((item, size))
    return out


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed < 2**32:
        raise InputError(f"{flag} must be in [0, 2**32), got {seed}")


def check_json_target(path: str | None, flag: str = "--json") -> None:
    """Before any work: ``path`` names a file that can be written (not a folder, in a writable one)."""
    if path is None:
        return
    if Path(path).is_dir():
        raise InputError(f"{flag} {path} is a folder; name a file")
    parent = Path(path).absolute().parent
    check_output_folder(parent, flag)
    if parent.is_dir():  # permissions are not the whole story (a read-only mount, /proc): try it
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".infinidepth-check.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise InputError(f"{flag} {path}: cannot create a file in {parent} ({e.strerror})") from None


def check_report_spares_inputs(path: str | None, checkpoint: str | None, roots=(), flag: str = "--json") -> None:
    """Before any work: the report ``path`` replaces none of the run's inputs: the ``checkpoint`` file, or a
    file in a dataset root (an image, a depth map, an index), unless that is an earlier report."""
    if path is None:
        return
    target = Path(path).resolve()
    if checkpoint is not None and Path(checkpoint).is_file() and Path(checkpoint).resolve() == target:
        raise InputError(f"{flag} {path} is the checkpoint this run reads; name another file for the report")
    if not target.is_file():
        return
    for root in roots:
        if target.is_relative_to(Path(root).resolve()) and not is_eval_report(target):
            raise InputError(f"{flag} {path} is a file in the dataset root {root}, an input of this run; "
                             "write the report outside it")


def is_eval_report(path: Path) -> bool:
    """``path`` holds a report of ``infinidepth eval`` (replacing it loses no input)."""
    import json

    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and set(report) == {"checkpoint", "results"}


def require_memory(need: int, what: str, device: torch.device | str = "cpu", share: float = 1.0) -> None:
    """Before any work: ``what`` needs ``need`` bytes, at most ``share`` of the memory free on ``device``."""
    free = torch.cuda.mem_get_info(device)[0] if torch.device(device).type == "cuda" else available_memory()
    if need > share * free:
        part = "half of " if share == 0.5 else ""
        raise InputError(f"{what} needs about {need / 1e9:.1f} GB of memory, more than {part}the {free / 1e9:.1f} GB "
                         f"free on {device}")


def check_memory_for_points(n: int, flag: str = "--points") -> None:
    """The sampler and the point cloud hold ~80 bytes per point at their peak (coordinates, depths,
    points, colours, the sampler's cells)."""
    require_memory(80 * n, f"{flag} {n}")


def default_input_size(h: int, w: int, trained: tuple[int, int] | None = None, patch: int = 16) -> tuple[int, int]:
    """Aspect kept, both sides multiples of the model's ViT ``patch``; as many pixels as the model was
    trained at when that is known (``trained``), else the long side at most 1024."""
    if trained:
        s = (trained[0] * trained[1] / (h * w)) ** 0.5
    else:
        s = min(1.0, MAX_INPUT_SIDE / max(h, w))
    return max(patch, round(h * s / patch) * patch), max(patch, round(w * s / patch) * patch)


def network_input_size(text: str | None, H0: int = 0, W0: int = 0, trained=None, patch: int | None = None) -> tuple[int, int]:
    """``--input-size`` checked, or the default for an H0 x W0 image: multiples of the model's ViT
    ``patch`` (16 for the released models; None before the model is loaded: the syntax alone)."""
    size = parse_size(text, "--input-size") if text else default_input_size(H0, W0, trained, patch or 16)
    if patch and (size[0] % patch or size[1] % patch):
        raise InputError(f"--input-size must be multiples of {patch} (the model's ViT patch), got {size[0]}x{size[1]}")
    return size


def resize_nearest(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (never blends a valid sample with a missing one)."""
    H, W = depth.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * H / size[0]).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * W / size[1]).astype(np.int64), W - 1)
    return depth[rows][:, cols]


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == tuple(size):
        return rgb
    return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def load_depth_input(path: str, what: str, allowed: dict[str, tuple[int, int]], target: tuple[int, int]) -> np.ndarray:
    depth = read_depth(path)
    check_depth_values(depth, f"{what} {path}")
    if tuple(depth.shape) not in allowed.values():
        sizes = ", ".join(f"{h}x{w} ({name})" for name, (h, w) in allowed.items())
        raise InputError(f"{what} {path} is {depth.shape[0]}x{depth.shape[1]}; expected {sizes}")
    warn_if_unit_looks_wrong(depth, f"{what} {path}")
    return resize_nearest(depth, target)


def warn_if_unit_looks_wrong(depth: np.ndarray, what: str) -> None:
    """A note (the run goes on) when the median valid depth is beyond 1 km or under 1 cm: millimetres read as
    metres (every depth but a 16-bit PNG's is read as metres) give depths in km and a saturated depth PNG."""
    valid = depth[depth > 0]
    median = float(np.median(valid)) if valid.size else 1.0
    if median > 1000:
        hint = "if it holds millimetres, divide by 1000 (only 16-bit PNGs are read as millimetres)"
    elif median < 0.01:
        hint = "depth files are read as metres (16-bit PNGs as millimetres)"
    else:
        return
    print(f"note: {what} has a median depth of {median:.4g} m; {hint}", file=sys.stderr)


def subsample_prompt(depth: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    valid = np.flatnonzero(depth > 0)
    if valid.size <= max_points:
        return depth
    keep = np.random.default_rng(seed).choice(valid, max_points, replace=False)
    out = np.zeros_like(depth)
    out.flat[keep] = depth.flat[keep]
    return out


ALIGNMENT_SPACES = {
    "disparity": (lambda d: 1.0 / np.maximum(d, 1e-8), lambda x: 1.0 / np.maximum(x, 1e-8)),
    "log_depth": (lambda d: np.log(np.maximum(d, 1e-8)), np.exp),
}


def apply_alignment(depth: np.ndarray, space: str, a: float, b: float) -> np.ndarray:
    forward, inverse = ALIGNMENT_SPACES[space]
    return inverse(a * forward(depth) + b).astype(np.float32)


def check_reference(reference: np.ndarray, path: str, model, where: str = "") -> None:
    """Before any decoding: a reference depth (0 = missing) the fit can use, for ``model``."""
    if np.count_nonzero(reference > 0) < 2:  # the fit needs two samples
        raise InputError(f"reference depth {path} has fewer than 2 valid samples{where}")
    known = reference[reference > 0]
    if model.alignment is not None and known.min() == known.max():  # no scale to fit: it would be rounding noise
        raise InputError(f"reference depth {path} is {float(known[0]):.6g} at every valid sample{where}; aligning "
                         "needs samples at two or more different depths")


def align_to_reference(depth: np.ndarray, reference: np.ndarray, space: str, seed: int) -> tuple[np.ndarray, float, float]:
    from infinidepth.align import fit_affine_robust

    valid = reference > 0
    if valid.sum() < 2:
        raise InputError("reference depth has fewer than 2 valid samples")
    forward, _ = ALIGNMENT_SPACES[space]
    a, b = fit_affine_robust(forward(depth[valid]), forward(reference[valid]), seed=seed)
    if not a > 0:  # the aligned map would put far things near: not a reference for this image
        raise InputError(f"the reference depth orders the scene the other way round from the prediction (the fit "
                         f"in {space} space has scale {a:.3g} <= 0); is it depth of this image, in metres?")
    return apply_alignment(depth, space, a, b), a, b


def camera_points(depth: np.ndarray, coords: torch.Tensor, K: torch.Tensor, image_size) -> np.ndarray:
    """Camera-frame points ``[N, 3]`` of depths ``[N]`` at normalised ``coords`` ``[1, N, 2]``, with ``K``
    in pixels of the original image (normalised coordinates do not depend on resolution)."""
    from infinidepth.sampling import backproject

    z = torch.from_numpy(np.ascontiguousarray(depth, np.float32).reshape(1, -1))
    return backproject(z, coords.float(), K[None].float(), image_size)[0].numpy()


def pixel_points(depth: np.ndarray, out_size, region, K: torch.Tensor, image_size) -> np.ndarray:
    """Camera-frame points ``[h * w, 3]`` of the depth ``[h, w]`` of output pixels ``region`` = (y0, x0, y1, x1)
    of an ``out_size`` grid, ``K`` in pixels of the original image. A pinhole's rays are separable (x by
    column, y by row), so they are computed for one row and one column, not per pixel: the same values
    as :func:`camera_points` on the pixels' coordinates, some twenty times faster at 8K."""
    from infinidepth.models.base import _grid
    from infinidepth.sampling import rays

    (y0, x0, y1, x1), (H, W) = region, out_size
    across = rays(_grid(H, W, y0, y0 + 1, x0, x1, 1, None), K[None].float(), image_size)[0, :, 0].numpy()
    down = rays(_grid(H, W, y0, y1, x0, x0 + 1, 1, None), K[None].float(), image_size)[0, :, 1].numpy()
    depth = np.asarray(depth, np.float32).reshape(y1 - y0, x1 - x0)
    points = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    np.multiply(depth, across[None, :], out=points[..., 0])
    np.multiply(depth, down[:, None], out=points[..., 1])
    points[..., 2] = depth
    return points.reshape(-1, 3)


def image_colors(rgb: np.ndarray, coords: torch.Tensor) -> np.ndarray:
    """``uint8 [N, 3]``: the image read bilinearly at normalised ``coords`` ``[1, N, 2]`` (its border
    pixels repeated outside their centres)."""
    from infinidepth.ops.coords import clamp_to_pixel_centres
    from infinidepth.ops.gather import bilinear_gather_reference

    H0, W0 = rgb.shape[:2]
    rgb_t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    return bilinear_gather_reference(rgb_t, clamp_to_pixel_centres(coords, H0, W0))[0].clamp(0, 255).round().to(torch.uint8).numpy()


def sampled_point_cloud(model, image, rgb, n, K, alignment, seed, sparse, name):
    """``n`` points spread evenly over the surfaces by the surface-area sampler, with the
    original image's colours."""
    from infinidepth.sampling import scale_intrinsics

    H0, W0 = rgb.shape[:2]
    sp = model.sample_points(image, n, scale_intrinsics(K, (H0, W0), tuple(image.shape[-2:])), seed=seed, sparse_depth=sparse)
    note_far_pixels(sp, name)
    coords = sp.coords.cpu()
    depth = sp.depth[0].cpu().numpy()
    if alignment is not None:
        depth = apply_alignment(depth, *alignment)
    return camera_points(depth, coords, K, (H0, W0)), image_colors(rgb, coords)


def drop_flying_points(points: np.ndarray, name, keep_all: bool, say=print, progress: bool = True) -> np.ndarray:
    """The mask of the points to write: all of them with --keep-outliers, else the released pipeline's
    statistical outlier filter (``infinidepth.sampling.outliers``), with a line (``say``; None: quiet)
    saying what it took."""
    from infinidepth.sampling.outliers import NEIGHBOURS, STD_RATIO, statistical_inliers

    if keep_all:
        return np.ones(len(points), dtype=bool)
    keep = statistical_inliers(points, progress=progress and say is not None)
    if say is not None:
        gone = len(points) - int(keep.sum())
        say(f"{name}: removed {gone:,} flying points of {len(points):,} ({gone / max(len(points), 1):.1%}: mean distance "
            f"to their {NEIGHBOURS} nearest over mean + {STD_RATIO:g} std; --keep-outliers keeps them)")
    return keep


def note_far_pixels(sp, image_name) -> None:
    """A note when the sampler left part of the picture out for being beyond its far cut (a sky)."""
    from infinidepth.sampling.triangle import FAR_CUT

    far = float((sp.depth_map >= FAR_CUT).float().mean())
    if far >= 0.01:
        print(f"note: {far:.0%} of {image_name} is at depth {FAR_CUT:g} or more (a sky, say) and holds no points",
              file=sys.stderr)


def check_camera(K: torch.Tensor, grids, what: str) -> None:
    """Before any decoding: the camera ``K`` (pixels of the image, ``grids[0]``), rescaled to each of ``grids``
    (``(name, (h, w))``: the image, the network input the sampler works on, the rendered views) as the
    point cloud, the sampler and the renderer take it, in float32: a focal length in [1e-3, 1e9] pixels there
    and finite entries, or one line naming the flags (those checks would stop the run later, with a traceback)."""
    from infinidepth.sampling import check_intrinsics, scale_intrinsics

    image_size = grids[0][1]
    for name, size in grids:
        try:
            check_intrinsics(scale_intrinsics(K, image_size, size).float(), 1)
        except ValueError as e:
            on = "" if size == image_size else f", rescaled to the {size[0]}x{size[1]} {name}"
            raise InputError(f"{what}: the camera (fx {K[0, 0]:g}, fy {K[1, 1]:g}, cx {K[0, 2]:g}, cy {K[1, 2]:g} pixels "
                             f"of the {image_size[0]}x{image_size[1]} image{on}) is unusable: {e}") from None


def check_prompt_values(depth: np.ndarray, what: str) -> None:
    """A sparse depth the DepthSensor model takes: positive samples of at least 1e-30 m (a reciprocal in float32)."""
    tiny = (depth > 0) & (depth < 1e-30)
    if tiny.any():
        raise InputError(f"{what} has {int(tiny.sum())} positive depths below 1e-30 (not metres); mark missing samples with 0")


def check_finite_output(values: np.ndarray, what: str) -> None:
    """A model whose answer holds NaN or infinities (weights out of range, say) writes nothing."""
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputError(f"{what}: the model returned {bad} NaN or infinite depths of {values.size}; "
                         "nothing was written (is the checkpoint sound?)")


def parse_region(text: str, out_size: tuple[int, int]) -> tuple[int, int, int, int]:
    from infinidepth.models.base import check_region

    try:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != 4:
            raise ValueError
    except ValueError:
        raise InputError(f"--region must be y0,x0,y1,x1 in output pixels, got {text!r}") from None
    try:
        return check_region(values, out_size)
    except ValueError as e:
        raise InputError(f"--region: {e}") from None


def pick_device(text: str | None) -> torch.device:
    """``--device``: cpu, cuda or cuda:N (default: cuda when available); what this machine lacks is an InputError."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device: unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise InputError(f"--device {text}: no CUDA GPU is visible to torch here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise InputError(f"--device {text}: there are {count} CUDA GPU(s), numbered 0..{count - 1}")
    elif device.type == "cpu" and device.index not in (None, 0):
        raise InputError(f"--device {text}: the CPU has no device index; use --device cpu")
    elif device.type != "cpu":
        raise InputError(f"--device {text}: infinidepth runs on cpu or cuda")
    return device


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing ancestor (where a new folder would go)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk_space(path: Path) -> int:
    """Bytes free on the disk that holds ``path``, or would hold it once created."""
    import shutil

    return shutil.disk_usage(nearest_existing(path)).free


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """Before any work: ``out`` is a folder, or can be made one, that this process may write into."""
    p = nearest_existing(out)
    if not p.is_dir():
        raise InputError(f"{flag} {out}: {p} is a file, not a folder")
    # Tried, not asked: os.access says yes to root everywhere, also on read-only disks and in /proc.
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".infinidepth-probe-")
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot write in {p} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def available_memory() -> int:
    """Bytes of memory available to this process now (Linux: MemAvailable), or a generous guess."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 40


#: the pictures infinidepth writes (predict, gs); not taken as inputs when a folder is expanded
OUR_PICTURES = ("_depth.png", "_depth_color.png", "_novel_view.png")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(items: list[str]) -> list[Path]:
    """The images named on the command line: files as given, folders expanded to the images directly
    in them (sorted by name). Two images with the same name stem would overwrite each other's outputs."""
    from PIL import Image, UnidentifiedImageError

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            ours = [q for q in found if q.name.endswith(OUR_PICTURES)]  # a previous run's outputs in this folder
            if ours:
                print(f"note: skipping {len(ours)} file(s) in {p} named like infinidepth's outputs "
                      f"({', '.join('*' + e for e in OUR_PICTURES)})", file=sys.stderr)
                found = [q for q in found if q not in ours]
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"image not found: {p}")
    by_stem: dict[str, Path] = {}
    for p in paths:
        if p.stem in by_stem and by_stem[p.stem].resolve() != p.resolve():
            raise InputError(f"{by_stem[p.stem]} and {p} would write the same files ({p.stem}_depth.*); rename one")
        by_stem[p.stem] = p
    for p in by_stem.values():  # headers only: a file that is not an image fails before the model loads
        try:
            with Image.open(p):
                pass
        except Image.DecompressionBombError as e:
            raise InputError(bomb_message(p, e)) from None
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"cannot read image {p}: {e}") from e
    return list(by_stem.values())


def depth_input_for(value: str | None, image: Path, several: bool, flag: str) -> str | None:
    """The depth file for ``image`` given as ``--sparse-depth``/``--reference-depth``: the file itself
    (one image), or, from a folder, the one file named like the image (``STEM.npy``, ``STEM.png``, ...)."""
    if not value:
        return None
    folder = Path(value)
    if not folder.is_dir():
        if several:
            raise InputError(f"{flag} {value} is one file for several images; give a folder holding one depth file "
                             f"per image, named like it (e.g. {image.stem}.npy)")
        return value
    found = [folder / (image.stem + s) for s in DEPTH_SUFFIXES if (folder / (image.stem + s)).is_file()]
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
        raise InputError(f"{flag} folder {folder} has {what} for image {image}; expected one of "
                         f"{', '.join(image.stem + s for s in DEPTH_SUFFIXES)}")
    return str(found[0])


#: what predict writes per image, by the image's stem
OUTPUT_SUFFIXES = ("_depth.npy", "_depth.png", "_depth_color.png")


def output_files(out: Path, stem: str, ply: bool) -> list[Path]:
    return [out / f"{stem}{s}" for s in OUTPUT_SUFFIXES] + ([out / f"{stem}.ply"] if ply else [])


def note_earlier_outputs(out: Path, stem: str, written: list[Path]) -> None:
    """Say which files beside a new set are left from an earlier run: kept (never deleted), but stale."""
    for p in output_files(out, stem, ply=True):
        if p not in written and p.exists():
            print(f"note: {p} is left from an earlier run, not from this one", file=sys.stderr)


def gs_outputs(args) -> list[Path]:
    """The files ``infinidepth gs`` writes: the Gaussians, the novel view and, with --video, the video."""
    out, stem = Path(args.out), Path(args.image).stem
    return [out / f"{stem}_gaussians.ply", out / f"{stem}_novel_view.png"] + ([out / f"{stem}_{args.video}.mp4"] if args.video else [])


def check_no_folder_in_the_way(targets, owner) -> None:
    """Before any work: no output file's name is taken by a folder (its rename would fail after the
    files before it in the set were replaced, leaving a mixed set)."""
    for target in targets:
        if target.is_dir():
            raise InputError(f"{target} is a folder, where an output of {owner} goes; move it or choose another --out")


def check_outputs_spare_inputs(out: Path, images: list[Path], depth_files, ply: bool) -> None:
    """No output of this run may replace one of its inputs (an image, or a depth file), or be a folder."""
    inputs = {p.resolve(): p for p in images}
    inputs.update({Path(f).resolve(): Path(f) for pair in depth_files for f in pair if f})
    for image in images:
        check_no_folder_in_the_way(output_files(out, image.stem, ply), image)
        for target in output_files(out, image.stem, ply):
            if target.resolve() in inputs:
                raise InputError(f"{target} is an output for {image} and also an input of this run "
                                 f"({inputs[target.resolve()]}); choose another --out")


def predict(args) -> list[dict]:
    """Depth (and point clouds) for every image named, one model loaded once.

    Options, files and image headers are checked before the model loads. With several images, an
    image that fails later (a bad map size, say) stops the run with its name; the images before it
    keep their complete outputs.
    """
    from tqdm import tqdm

    images = image_paths(args.image)
    several = len(images) > 1
    depth_files = [(depth_input_for(args.sparse_depth, im, several, "--sparse-depth"),
                    depth_input_for(args.reference_depth, im, several, "--reference-depth")) for im in images]
    if args.input_size:  # checked now; the default depends on the model
        network_input_size(args.input_size)
    if args.output_size is not None and args.scale is not None:
        raise InputError("give either --output-size or --scale, not both")
    if args.output_size is not None:
        size = parse_output_size(args.output_size)
        if args.region is not None:
            parse_region(args.region, size)
    if args.scale is not None and not (np.isfinite(args.scale) and args.scale > 0):
        raise InputError(f"--scale must be positive and finite, got {args.scale}")
    if args.region is not None and not args.region.strip():
        raise InputError("--region is empty; give y0,x0,y1,x1 in output pixels")
    check_seed(args.seed)
    if args.max_prompt_points is None:
        args.max_prompt_points = MAX_PROMPT_POINTS
    elif not args.sparse_depth:   # (it would change nothing: better said than ignored)
        raise InputError("--max-prompt-points sets how many --sparse-depth samples prompt the model: give it with --sparse-depth")
    if not 1 <= args.max_prompt_points <= MAX_PROMPT_SAMPLES:
        raise InputError(f"--max-prompt-points must be in [1, {MAX_PROMPT_SAMPLES}], got {args.max_prompt_points}")
    camera = [f"--{n}" for n in ("fx", "fy", "cx", "cy") if getattr(args, n) is not None]
    if camera and not args.ply:
        raise InputError(f"{', '.join(camera)} {'describes' if len(camera) == 1 else 'describe'} the camera of the "
                         f"point cloud: give {'it' if len(camera) == 1 else 'them'} with --ply")
    for name in ("fx", "fy"):
        v = getattr(args, name)
        if v is not None and (not np.isfinite(v) or v <= 0):
            raise InputError(f"focal length {name} must be positive and finite, got {v}")
    for name in ("cx", "cy"):
        v = getattr(args, name)
        if v is not None and not np.isfinite(v):
            raise InputError(f"principal point {name} must be finite, got {v}")
    if args.points is not None:
        if not args.ply:
            raise InputError("--points sets the size of the point cloud: give it with --ply")
        if not 0 < args.points <= 2**30:
            raise InputError(f"--points must be in [1, 2**30], got {args.points}")
        if args.region is not None:   # the sampler spreads its points over the whole image, not the region
            raise InputError("--points samples the whole image, --region only part of it: use --ply alone for the "
                             "region's points (one per output pixel)")
        check_memory_for_points(args.points)

    check_output_folder(Path(args.out))
    check_outputs_spare_inputs(Path(args.out), images, depth_files, args.ply)
    device = pick_device(args.device)
    model = open_model(args.checkpoint, device)
    set_precision(model, args.precision)
    set_backend(model, args.backend)
    check_sparse_depth_given(model, args.sparse_depth)
    if args.points is not None and model.arch == "GridBaseline":
        raise InputError("--points needs the depth field's derivative, which the grid baseline lacks; use --ply alone")
    results = []
    bar = tqdm(list(zip(images, depth_files)), desc="images", unit="image", disable=args.quiet or not several)
    for image, (sparse_file, reference_file) in bar:
        results.append(predict_one(model, device, image, sparse_file, reference_file, args,
                                   say=bar.write if several else print, progress=not (args.quiet or several)))
    return results


def check_sparse_depth_given(model, sparse_depth: str | None) -> None:
    """--sparse-depth given exactly when the model is the sensor one."""
    if model.arch == "InfiniDepth_DepthSensor" and not sparse_depth:
        raise InputError("this InfiniDepth_DepthSensor checkpoint needs --sparse-depth FILE")
    if sparse_depth and model.arch != "InfiniDepth_DepthSensor":
        raise InputError(f"--sparse-depth needs an InfiniDepth_DepthSensor checkpoint; this one is {model.arch}")


def predict_one(model, device, path: Path, sparse_file: str | None, reference_file: str | None, args, say=print,
                progress: bool = True) -> dict:
    # Everything about this image is read and checked before anything is computed or written.
    rgb = read_image(path)
    H0, W0 = rgb.shape[:2]
    if args.output_size is not None:
        out_size = parse_output_size(args.output_size)
    elif args.scale is not None:
        out_size = (max(1, round(H0 * args.scale)), max(1, round(W0 * args.scale)))
        if max(out_size) > MAX_SIDE:
            raise InputError(f"--scale {args.scale} makes {path} {out_size[0]}x{out_size[1]}: sides of at most {MAX_SIDE}")
    else:
        out_size = (H0, W0)
    fx = args.fx if args.fx is not None else float(max(H0, W0))
    fy = args.fy if args.fy is not None else fx
    cx = args.cx if args.cx is not None else W0 / 2
    cy = args.cy if args.cy is not None else H0 / 2

    try:
        region = parse_region(args.region, out_size) if args.region is not None else (0, 0, *out_size)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    y0, x0, y1, x1 = region
    map_size = (y1 - y0, x1 - x0)
    huge = 4 * map_size[0] * map_size[1] > available_memory() // 2
    if huge and (args.ply or reference_file):
        raise InputError(f"a {map_size[0]}x{map_size[1]} map does not fit in memory: it is streamed into a memory-mapped "
                         ".npy, and --ply / --reference-depth need it in memory; use --region for a part of it")

    input_size = network_input_size(args.input_size, H0, W0, model.input_size, model.patch_size)
    sizes = {"image": (H0, W0), "network input": input_size}
    sparse = None
    if sparse_file:
        sparse = load_depth_input(sparse_file, "sparse depth", sizes, input_size)
        check_prompt_values(sparse, f"sparse depth {sparse_file}")
        sparse = subsample_prompt(sparse, args.max_prompt_points, args.seed)
    reference = None
    if reference_file:
        reference = load_depth_input(reference_file, "reference depth", {**sizes, "output": out_size}, out_size)
        reference = reference[y0:y1, x0:x1]
        check_reference(reference, reference_file, model, " in the region" if map_size != out_size else "")
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float64)
    if args.ply:
        check_camera(K, [("image", (H0, W0))] + ([("network input", input_size)] if args.points is not None else []),
                     str(path))

    image = torch.from_numpy(resize_rgb(rgb, input_size)).permute(2, 0, 1)[None].float().div(255)
    sparse_t = None if sparse is None else torch.from_numpy(sparse)[None, None]
    out = Path(args.out)
    stem = path.stem
    t0 = time.perf_counter()
    if huge:  # streamed tile by tile into the file; renamed into place only when complete
        needed, free = 4 * map_size[0] * map_size[1] + 4096, free_disk_space(out)
        if needed > free:  # a memory-mapped write into a full disk is a SIGBUS, not an exception
            raise InputError(f"the {map_size[0]}x{map_size[1]} map needs {needed / 1e9:.2f} GB in {out}, "
                             f"and that disk has {free / 1e9:.2f} GB free; use --region for a part of it")
        with atomic_path(out / f"{stem}_depth.npy") as tmp:
            depth = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=map_size)
            model.predict(image.to(device), output_size=out_size, sparse_depth=sparse_t, progress=progress,
                          region=region, out=depth)
            for r in range(0, map_size[0], 1024):  # a band at a time: the map is larger than memory
                check_finite_output(depth[r : r + 1024], str(path))
            depth.flush()
            del depth
        if not args.quiet:
            say(f"{model.arch} on {device}: {map_size[0]}x{map_size[1]} depth streamed to {out / f'{stem}_depth.npy'} "
                f"(memory-mapped; larger than half the free memory, so no PNGs) in {time.perf_counter() - t0:.2f} s")
        note_earlier_outputs(out, stem, [out / f"{stem}_depth.npy"])
        return {"image": path, "depth": None, "files": [out / f"{stem}_depth.npy"]}
    depth = model.predict(image.to(device), output_size=out_size, sparse_depth=sparse_t, progress=progress,
                          region=region)
    depth = depth[0, 0].cpu().numpy()
    check_finite_output(depth, str(path))
    seconds = time.perf_counter() - t0
    metric = model.alignment is None
    note = ""
    alignment = None
    if reference is not None:
        if model.alignment is None:
            print("note: the model predicts metric depth; --reference-depth is used for nothing", file=sys.stderr)
        else:
            depth, a, b = align_to_reference(depth, reference, model.alignment, args.seed)
            check_finite_output(depth, f"{path}, aligned to {reference_file}")
            alignment = (model.alignment, a, b)
            metric = True
            note = f", aligned to the reference in {model.alignment} space (a={a:.4g}, b={b:.4g})"
    if args.points is not None:
        points, colors = sampled_point_cloud(model, image.to(device), rgb, args.points, K, alignment, args.seed,
                                             None if sparse_t is None else sparse_t.to(device), path)

    if args.ply and args.points is None:   # the region's pixels only: the full grid may be far larger than memory
        points = pixel_points(depth, out_size, (y0, x0, y1, x1), K, (H0, W0))
        if 8 * out_size[0] * out_size[1] <= available_memory() // 4:   # the picture resized whole (bicubic), then cropped
            colors = resize_rgb(rgb, out_size)[y0:y1, x0:x1].reshape(-1, 3)
        else:   # too large to resize whole: the original read bilinearly at the region's pixel centres, as for --points
            from infinidepth.models.base import _grid

            colors = image_colors(rgb, _grid(*out_size, y0, y1, x0, x1, 1, None))
    if args.ply:
        check_finite_output(points, f"{path}, point cloud")
        keep = drop_flying_points(points, path.name, args.keep_outliers, None if args.quiet else say, progress)
        points, colors = points[keep], colors[keep]

    png16, encoding = depth_to_png16(depth, metric)
    if metric and (far := float((depth > 65.535).mean())):
        print(f"note: {path.name}: {far:.1%} of the depth is beyond 65.535 m, where the 16-bit PNG (millimetres) "
              f"saturates; {stem}_depth.npy holds the exact values", file=sys.stderr)
    written = output_files(out, stem, args.ply)
    with atomic_paths(written) as tmps:  # the set is replaced together, or not at all
        write_npy(tmps[0], depth.astype(np.float32, copy=False))
        write_png(tmps[1], png16, compress_level=1)   # a data file beside the .npy: speed over size
        write_png(tmps[2], colorize_depth(depth))
        if args.ply:
            write_ply(tmps[3], points, colors)
    note_earlier_outputs(out, stem, written)
    if not args.quiet:
        part = f" (region rows {y0}:{y1}, columns {x0}:{x1})" if map_size != out_size else ""
        say(f"{path.name}: {model.arch} on {device}, input {input_size[0]}x{input_size[1]}, "
            f"output {out_size[0]}x{out_size[1]}{part} in {seconds:.2f} s{note}")
        say(f"16-bit PNG holds {encoding}")
        for p in written:
            say(f"wrote {p}")
    return {"image": path, "depth": depth, "files": written}


def data_render(args) -> dict:
    from infinidepth.data.procedural import render_set

    w, h = parse_size(args.size, "--size", "WIDTHxHEIGHT (e.g. 1024x768)")  # WIDTHxHEIGHT here, as in the help
    if not (0 < args.scenes <= 10**6 and 0 < args.views <= 1000):
        raise InputError(f"--scenes must be in [1, 10**6] and --views in [1, 1000], got {args.scenes} and {args.views}")
    check_seed(args.seed)
    require_memory(600 * w * h, f"--size {args.size}: rendering a view")  # the ray caster: ~570 bytes per pixel at 1024x768
    if not (np.isfinite(args.baseline) and args.baseline >= 0):
        raise InputError(f"--baseline must be a non-negative number of metres, got {args.baseline}")
    device = pick_device(args.device)
    t0 = time.perf_counter()
    try:
        result = render_set(args.out, args.scenes, (h, w), views=args.views, seed=args.seed, baseline=args.baseline,
                            device=device, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as e:
        raise InputError(str(e)) from e
    if not args.quiet:
        seconds = time.perf_counter() - t0
        per = seconds / max(result["rendered"], 1)
        print(f"rendered {result['rendered']} views ({result['kept']} already there) at {w}x{h} in {seconds:.1f} s "
              f"({per:.2f} s per view) into {args.out}; layout in {Path(args.out) / 'README.md'}")
    return result


def run_eval(args) -> list[dict]:
    import json

    from infinidepth.eval import evaluate, format_table
    from infinidepth.io import atomic_path

    if len(args.dataset) != len(args.root):
        raise InputError(f"give one --root per --dataset ({len(args.dataset)} datasets, {len(args.root)} roots)")
    for name in args.dataset:
        if name not in BENCHMARKS:
            raise InputError(f"unknown dataset {name!r}; choose from {', '.join(BENCHMARKS)}")
    if args.hf_points <= 0 or (args.limit is not None and args.limit <= 0):
        raise InputError("--hf-points and --limit must be positive")
    if args.input_size:
        network_input_size(args.input_size)
    check_seed(args.seed)
    check_json_target(args.json)
    check_report_spares_inputs(args.json, args.checkpoint, args.root)
    device = pick_device(args.device)
    datasets = [BENCHMARKS[name](root) for name, root in zip(args.dataset, args.root)]  # all checked before any work
    model = open_model(args.checkpoint, device)
    if model.arch == "InfiniDepth_DepthSensor":
        raise InputError("infinidepth eval takes a monocular checkpoint; this InfiniDepth_DepthSensor one needs sparse depth")
    input_size = network_input_size(args.input_size, patch=model.patch_size) if args.input_size else None
    results = []
    for ds in datasets:
        r = evaluate(model, ds, args.output_resolution, input_size, None if args.align == "none" else args.align,
                     args.align_space, args.hf_points, args.seed, args.limit, progress=not args.quiet)
        r["root"] = str(ds.root)
        results.append(r)
        if not args.quiet:
            print(format_table(r))
        if args.json:  # after each benchmark: one that fails later (or Ctrl-C) does not take these scores with it
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps({"checkpoint": args.checkpoint or DEFAULT_CHECKPOINT, "results": results},
                                          indent=1))
    if args.json and not args.quiet:
        print(f"wrote {args.json}")
    return results


def set_precision(model, precision: str) -> None:
    """``model.precision``, checked now (one the device cannot compute is refused before any work)."""
    model.precision = precision
    try:
        model.low_precision_dtype()
    except ValueError as e:
        raise InputError(str(e)) from None


def set_backend(model, backend: str) -> None:
    """``model.backend``, checked now: a backend this machine cannot run is one clear line."""
    from infinidepth.ops.gather import resolve_backend

    try:
        resolve_backend(backend, model.device)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"--backend: {e}") from None
    model.backend = backend


def run_bench(args) -> dict:
    import json

    from infinidepth import bench

    if args.checkpoint and args.preset:
        raise InputError("give either --checkpoint or --preset, not both")
    sizes = parse_sizes(args.sizes)
    device = pick_device(args.device)
    known = bench.paths(device)
    chosen = args.paths.split(",") if args.paths else None
    for p in chosen or []:
        if p not in known:
            raise InputError(f"--paths: {p!r} is not available on {device}; choose from {', '.join(known)}")
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.input_size:
        network_input_size(args.input_size)
    check_json_target(args.json)
    check_report_spares_inputs(args.json, args.checkpoint or args.preset)
    for name, (h, w) in sizes:  # bench holds each map in memory
        require_memory(4 * h * w, f"--sizes {name}: its {h}x{w} float32 map", device, share=0.5)
    model = open_model(args.checkpoint or args.preset, device)
    if model.arch == "InfiniDepth_DepthSensor":
        raise InputError("infinidepth bench times monocular models; this InfiniDepth_DepthSensor one needs sparse depth")
    input_size = network_input_size(args.input_size, patch=model.patch_size) if args.input_size else None
    set_precision(model, args.precision)
    if args.precision != "fp32":
        # the released-style path is the plain-PyTorch decoder in its chunks: under the same autocast as torch
        low = (bench.BASELINE, "torch", "cpp") if device.type == "cpu" else (bench.BASELINE, "torch", "cuda", "triton")
        for p in chosen or known:
            if p not in low:
                raise InputError(f"--precision {args.precision}: path {p} computes in fp32; pass --paths from {', '.join(low)}")
    report = bench.bench(model, sizes, device, chosen, progress=not args.quiet, repeats=args.repeats, input_size=input_size)
    report["checkpoint"] = args.checkpoint or args.preset or DEFAULT_CHECKPOINT
    report["command"] = bench.command_line(getattr(args, "argv", None))
    if not args.quiet:
        print(bench.format_rows(report))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
    return report


def run_train(args) -> dict:
    from infinidepth.train import load_config, train

    try:
        cfg = load_config(args.config, out=args.out)
    except ValueError as e:
        raise InputError(str(e)) from None
    try:
        result = train(cfg, resume=args.resume, progress=not args.quiet)
    except (FileExistsError, ValueError, ImportError) as e:  # a run folder in the way, a config the data or
        raise InputError(str(e)) from None                   # checkpoint refuses, a reader's module not installed
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        state = "stopped (continue with --resume)" if result["interrupted"] else "finished"
        print(f"{state} at step {result['step']}; run folder {cfg.out}")
    return result


#: the longest video infinidepth gs renders
MAX_VIDEO_FRAMES = 108_000


def run_gs(args) -> dict:
    from infinidepth.gs.gaussians import write_ply as write_gaussians
    from infinidepth.gs.heads import PixelAlignedHead
    from infinidepth.gs.render import render
    from infinidepth.gs.splats import camera_path, splats_from_points
    from infinidepth.gs.train import feature_dim, point_features
    from infinidepth.sampling import scale_intrinsics

    rgb = read_image(args.image)
    H0, W0 = rgb.shape[:2]
    if args.input_size:  # checked now; the default depends on the model
        network_input_size(args.input_size)
    if not 4 <= args.points <= 2**26:
        raise InputError(f"--points must be in [4, 2**26], got {args.points}")
    if args.frames <= 0 or args.fps <= 0 or not (np.isfinite(args.move) and 0 < args.move <= 100):
        raise InputError("--frames and --fps must be positive, --move in (0, 100] (a fraction of the median depth)")
    if args.frames > MAX_VIDEO_FRAMES:   # the camera path is built before the first frame
        raise InputError(f"--frames must be at most {MAX_VIDEO_FRAMES:,} (an hour at 30 fps), got {args.frames:,}")
    check_seed(args.seed)
    check_memory_for_points(args.points)
    fx = args.fx if args.fx is not None else float(max(H0, W0))
    if not (np.isfinite(fx) and fx > 0):
        raise InputError(f"focal length must be positive and finite, got {fx}")
    if args.render_size:
        rs = parse_size(args.render_size, "--render-size")
    else:
        s = min(1.0, 512 / max(H0, W0))
        rs = (max(1, round(H0 * s)), max(1, round(W0 * s)))
    # a rendered view and its picture: ~40 bytes per pixel (the C++ rasteriser at 4096x4096)
    require_memory(48 * rs[0] * rs[1], f"--render-size {rs[0]}x{rs[1]}: rendering a view")
    check_output_folder(Path(args.out))
    check_no_folder_in_the_way(gs_outputs(args), args.image)
    device = pick_device(args.device)
    head = None
    if args.gs_head:  # read and checked before the depth model runs
        from infinidepth.gs.train import load_gs_head

        try:
            head, head_model = load_gs_head(args.gs_head)
        except ValueError as e:
            raise InputError(f"--gs-head: {e}") from None
        if head_model is not None and head_model != (args.checkpoint or DEFAULT_CHECKPOINT):
            print(f"note: the GS head was trained with depth model {head_model!r}, not {args.checkpoint or DEFAULT_CHECKPOINT!r}",
                  file=sys.stderr)
    model = open_model(args.checkpoint, device)
    if model.arch == "GridBaseline":
        raise InputError("infinidepth gs takes an implicit model (its sampler needs the field's derivative); this "
                         "checkpoint is GridBaseline")
    check_sparse_depth_given(model, args.sparse_depth)
    if args.sparse_depth and args.reference_depth:
        raise InputError("--reference-depth aligns a relative model's depth; InfiniDepth_DepthSensor's is metric "
                         "already, from --sparse-depth: give only that")
    released = isinstance(head, PixelAlignedHead)   # the released GS heads: they read the ViT's tokens
    official = model.arch in ("InfiniDepth", "InfiniDepth_DepthSensor")
    if released and not (official and model.config.vit.embed_dim == head.token_dim):
        width = f" {model.config.vit.embed_dim} wide" if official else ""
        raise InputError(f"--gs-head {args.gs_head} is the released GS head: it reads the {head.token_dim}-wide ViT tokens "
                         f"of a released InfiniDepth model (pass its checkpoint with --checkpoint); this checkpoint is "
                         f"{model.arch}{width}")
    if head is not None and not released and (width := feature_dim(model)) != head.feature_dim:
        raise InputError(f"--gs-head reads {head.feature_dim} feature channels; {model.arch} gives {width}: "
                         "train a head for this depth model with infinidepth train-gs --depth-model")
    input_size = network_input_size(args.input_size, H0, W0, model.input_size, model.patch_size)
    sizes = {"image": (H0, W0), "network input": input_size}
    sparse = None
    if args.sparse_depth:  # sampled as predict samples it
        sparse_file = depth_input_for(args.sparse_depth, Path(args.image), False, "--sparse-depth")
        sparse = load_depth_input(sparse_file, "sparse depth", sizes, input_size)
        check_prompt_values(sparse, f"sparse depth {sparse_file}")
        sparse = torch.from_numpy(subsample_prompt(sparse, MAX_PROMPT_POINTS, args.seed))[None, None].to(device)
    reference = None
    if args.reference_depth:
        reference_file = depth_input_for(args.reference_depth, Path(args.image), False, "--reference-depth")
        reference = load_depth_input(reference_file, "reference depth", sizes, input_size)
        check_reference(reference, reference_file, model)
    image = torch.from_numpy(resize_rgb(rgb, input_size)).permute(2, 0, 1)[None].float().div(255).to(device)
    K = torch.tensor([[fx, 0, W0 / 2], [0, fx, H0 / 2], [0, 0, 1]], dtype=torch.float64)
    check_camera(K, [("image", (H0, W0)), ("network input", input_size), ("rendered view", rs)], "--fx")
    try:  # the sampler refuses a depth field of NaN or infinities (weights out of range, say)
        sp = model.sample_points(image, args.points, scale_intrinsics(K, (H0, W0), input_size).to(device), seed=args.seed,
                                 sparse_depth=sparse)
    except ValueError as e:
        raise InputError(f"{args.image}: {e}; nothing was written (is the checkpoint sound?)") from None
    note_far_pixels(sp, args.image)
    z, depth_map, note = sp.depth[0].cpu().numpy(), sp.depth_map, ""
    if reference is not None:  # fitted on the dense depth the sampler weighed, at the network input's pixels
        aligned, a, b = align_to_reference(depth_map[0, 0].cpu().numpy(), reference, model.alignment, args.seed)
        z, depth_map = apply_alignment(z, model.alignment, a, b), torch.from_numpy(aligned).to(device)[None, None]
        note = f", aligned to the reference depth in {model.alignment} space (a={a:.4g}, b={b:.4g})"
    points, colors = camera_points(z, sp.coords.cpu(), K, (H0, W0)), image_colors(rgb, sp.coords.cpu())
    check_finite_output(points, args.image)
    pts, cols = torch.from_numpy(points).to(device), torch.from_numpy(colors).to(device).float() / 255
    with torch.no_grad():
        if released:  # its per-pixel attributes from the network input, its depth and tokens, read at the points
            head = head.to(device)
            g = head.at_points(head.attribute_maps(image, depth_map, sp.features.tokens), sp.coords[0], pts, cols)
        elif head is not None:
            g = head.to(device)(pts, cols, point_features(sp)[0])
        else:
            g = splats_from_points(pts, cols)
    g = g.subset(torch.from_numpy(drop_flying_points(g.means.cpu().numpy(), Path(args.image).name, args.keep_outliers,
                                                     None if args.quiet else print)).to(g.means.device))
    depth = float(np.median(points[:, 2]))
    K_r = torch.tensor([[fx * rs[1] / W0, 0, rs[1] / 2], [0, fx * rs[0] / H0, rs[0] / 2], [0, 0, 1]])

    def view(w2c):
        return (render(g, torch.as_tensor(w2c), K_r, rs)["rgb"].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)

    out = Path(args.out)
    stem = Path(args.image).stem
    written = gs_outputs(args)
    moved = camera_path("swing", 4, depth, args.move * depth)[1]        # a quarter swing: the full move to one side
    with atomic_paths(written) as tmps:  # replaced together: a video stopped midway leaves the earlier set whole
        write_gaussians(tmps[0], g)
        write_png(tmps[1], np.concatenate([resize_rgb(rgb, rs), view(np.eye(4)), view(moved)], axis=1))
        if args.video:
            import imageio.v2 as imageio
            from tqdm import tqdm

            writer = imageio.get_writer(tmps[2], format="FFMPEG", fps=args.fps, codec="libx264", macro_block_size=1)
            try:
                for w2c in tqdm(camera_path(args.video, args.frames, depth, args.move * depth), desc="rendering video",
                                unit="frame", disable=args.quiet):
                    frame = view(w2c)   # H.264 as players read it (yuv420p) needs even sides: repeat the last row / column
                    writer.append_data(np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge"))
            except BaseException:
                # imageio's "with" closes only on success: left open, ffmpeg would write the temporary file
                # after it was removed. Closed here, before it is; the error that stopped us is the one raised.
                with contextlib.suppress(Exception):
                    writer.close()
                raise
            writer.close()
    for p in (out / f"{stem}_{kind}.mp4" for kind in ("orbit", "swing")):
        if p not in written and p.exists():   # kept (never deleted), but not of these Gaussians
            print(f"note: {p} is left from an earlier run, not from this one", file=sys.stderr)
    if not args.quiet:
        print(f"{len(g)} Gaussians from {model.arch} on {device}{note}; views rendered at {rs[0]}x{rs[1]}")
        for p in written:
            print(f"wrote {p}")
    return {"gaussians": g, "files": written}


def run_train_gs(args) -> dict:
    from infinidepth.gs.metrics import load_lpips
    from infinidepth.gs.train import GSTrainConfig, train_gs

    if args.lpips_weight is not None and not args.lpips:
        raise InputError("--lpips-weight without --lpips: there is no LPIPS term to weigh (--lpips FILE adds it)")
    weight = {} if args.lpips_weight is None else {"lpips_weight": args.lpips_weight}
    try:
        cfg = GSTrainConfig(depth_model=args.depth_model, scenes=args.scenes, steps=args.steps, points=args.points,
                            size=parse_size(args.size, "--size"), views=args.views, lpips=args.lpips, **weight,
                            out=args.out).validate(lambda k: "--" + k.replace("_", "-"))
        if cfg.lpips:  # read now, so that a file of other weights is named as the flag's (train_gs reads it again)
            try:
                load_lpips(cfg.lpips)
            except (ValueError, OSError) as e:
                raise ValueError(f"--lpips {e}") from None
        check_output_folder(Path(args.out))
        # the scenes' views are ray cast as infinidepth data render's are: ~570 bytes per pixel at 1024x768
        require_memory(600 * cfg.size[0] * cfg.size[1], f"--size {args.size}: rendering a view")
        check_memory_for_points(cfg.points)
        if not args.quiet:
            print(cfg.loss_description())
        result = train_gs(cfg, resume=args.resume, progress=not args.quiet)
    except (ValueError, FileExistsError, ImportError) as e:
        raise InputError(str(e)) from None
    if not args.quiet:  # (a stopped run writes no head, only its checkpoint)
        if result["interrupted"]:
            print(f"stopped (continue with --resume) at step {result['step']}; checkpoint in {Path(args.out) / 'gs_checkpoint.pt'}")
        else:
            print(f"finished at step {result['step']}; head in {Path(args.out) / 'gs_head.pt'}")
    return result


QUIET_HELP = "no progress bars or summaries (warnings and errors are still printed)"
INPUT_SIZE_HELP = ("network input HxW, multiples of the model's ViT patch (16 for the released models, 8 for demo); default: "
                   "aspect kept, as many pixels as the model was trained at (768x1024 for a released file, what ours "
                   "record, 96x128 for demo), else the long side at most 1024")


KEEP_OUTLIERS_HELP = ("write every point: without it, points far from their 30 nearest neighbours (flying points on "
                      "depth edges) are removed, as the released pipeline does")


class Parser(argparse.ArgumentParser):
    """No abbreviated flags: `eval --out X` (a flag eval lacks) was read as --output-resolution and refused
    with a message about that flag's choices; a flag added later would change what an abbreviation means.
    Subcommands are built with the same class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def folder(value: str) -> str:
    """An --out value: ``--out ''`` (an unset shell variable) would write into the current folder unasked."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty folder name (for the current folder, say .)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="infinidepth", description="Monocular depth at any resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="depth maps (and point clouds) of images, one model load for all")
    p.add_argument("image", nargs="+", help="input images (PNG, JPEG, ...) or folders of them; outputs are named by "
                                            "each image's name stem")
    p.add_argument("--checkpoint", help=f"checkpoint file or preset name (default: {DEFAULT_CHECKPOINT})")
    p.add_argument("--output-size", help="output HxW, any size, or 1k, 2k, 4k, 8k, 16k (default: the image's)")
    p.add_argument("--scale", type=float, help="output size as a multiple of the image's")
    p.add_argument("--input-size", help=INPUT_SIZE_HELP)
    p.add_argument("--sparse-depth", help=f"metric sparse depth for a DepthSensor checkpoint, 0 = missing ({', '.join(DEPTH_SUFFIXES)}; "
                                          "PNG in mm); for several images a folder with one file per image, named like it")
    p.add_argument("--max-prompt-points", type=int, help=f"with --sparse-depth: samples used as prompts (seeded subsample; "
                                                          f"default {MAX_PROMPT_POINTS})")
    p.add_argument("--reference-depth", help="metric depth to align a relative prediction to (robust scale and shift); "
                                             "for several images a folder, as for --sparse-depth")
    p.add_argument("--region", help="only output pixels y0,x0,y1,x1 (end exclusive) of the output grid: zoom into part of "
                                    "the image at very high resolution without computing the rest")
    p.add_argument("--out", type=folder, default="outputs", help="output folder (default: ./outputs)")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="decoder backend (default auto: cpp on the CPU, torch on a GPU, where it beat the fused "
                        "cuda kernel on an H100; benchmarks/GPU.md)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="bf16/fp16 run the encoder and the decoder's matrix products in 16 bits (fp32 accumulation; "
                        "about 1%% of the depth's spread in RMS error); on the CPU bf16 needs AVX512_BF16 (Zen 4, "
                        "Sapphire Rapids and later) and fp16 is refused")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud (.ply): one point per output pixel")
    p.add_argument("--points", type=int, help="with --ply: N points spread evenly over the 3D surfaces (surface-area sampler) instead")
    p.add_argument("--keep-outliers", action="store_true", help=KEEP_OUTLIERS_HELP)
    p.add_argument("--fx", type=float, help="focal length in pixels of the original image (default: max(H, W))")
    p.add_argument("--fy", type=float, help="default: fx")
    p.add_argument("--cx", type=float, help="principal point x in pixels (default: W/2)")
    p.add_argument("--cy", type=float, help="principal point y in pixels (default: H/2)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of prompt subsampling, robust alignment and the --points "
                                                   "sampler (default 0)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    data = sub.add_parser("data", help="datasets: render a procedural set")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    r = data_sub.add_parser("render", help="render procedural scenes (RGB PNG, float32 EXR depth, normals, cameras) to a folder")
    r.add_argument("--scenes", type=int, required=True, help="number of scenes")
    r.add_argument("--size", required=True, help="WIDTHxHEIGHT as display resolutions are written, e.g. 3840x2160")
    r.add_argument("--out", type=folder, required=True, help="output folder (resumable: finished views are kept)")
    r.add_argument("--views", type=int, default=1, help="cameras per scene: the source view and moved copies (default 1)")
    r.add_argument("--baseline", type=float, default=0.3, help="largest sideways move of the extra views, metres (default 0.3)")
    r.add_argument("--seed", type=int, default=0, help="scene k has seed SEED + k (default 0)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    r.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    e = sub.add_parser("eval", help="score a model on benchmarks: full image and high-frequency regions")
    e.add_argument("--dataset", action="append", required=True, help="benchmark name (repeatable): " + ", ".join(BENCHMARKS))
    e.add_argument("--root", action="append", required=True, help="its folder (one per --dataset, in order)")
    e.add_argument("--checkpoint", help=f"checkpoint file or preset name (default: {DEFAULT_CHECKPOINT})")
    e.add_argument("--output-resolution", choices=("native", "input"), default="native",
                   help="native (default): query the decoder at every ground-truth pixel; input: predict at the network input and upsample bilinearly (baseline)")
    e.add_argument("--input-size", help=INPUT_SIZE_HELP)
    e.add_argument("--align", choices=("auto", "lsq", "ransac", "none"), default="auto",
                   help="scale-and-shift alignment (default auto: RANSAC for relative models, none for metric ones)")
    e.add_argument("--align-space", choices=("depth", "disparity", "log_depth"),
                   help="default: the model's own (disparity for InfiniDepth, log_depth for the paper model)")
    e.add_argument("--hf-points", type=int, default=10_000, help="pixels in each high-frequency mask (default 10000)")
    e.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset")
    e.add_argument("--json", help="write every score (summary and per image) here")
    e.add_argument("--seed", type=int, default=0, help="seed of the RANSAC fit and the high-frequency masks (default 0)")
    e.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    e.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    b = sub.add_parser("bench", help="end-to-end timings at large output sizes, every decoder path, ratios to the released-style path")
    b.add_argument("--checkpoint", help="checkpoint file or preset name (default: --preset's)")
    b.add_argument("--preset", default=None, help=f"preset name when no checkpoint is given (default: {DEFAULT_CHECKPOINT})")
    b.add_argument("--sizes", default="1k,4k", help="comma list of 1k (768x1024), 2k, 4k, 8k, 16k or HxW (default: 1k,4k)")
    b.add_argument("--paths", help="comma list of decoder paths (default: released-style, torch and every fused backend here)")
    b.add_argument("--json", help="write the report here")
    b.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="as for predict")
    b.add_argument("--repeats", type=int, default=1, help="runs per size and path (default 1); the median times are reported")
    b.add_argument("--input-size", help="network input HxW, multiples of the ViT patch, 16 for the released models (default: the model's training input "
                                        "when the checkpoint records one, else 768x1024)")
    b.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    b.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    t = sub.add_parser("train", help="train a model (YAML config or preset; torchrun -m infinidepth.train for several processes)")
    t.add_argument("--config", required=True, help="a YAML file or a preset: paper, official, demo")
    t.add_argument("--out", type=folder, help="run folder (checkpoint.pt, model.safetensors, log.jsonl); overrides the config's")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    gs = sub.add_parser("gs", help="Gaussian splats of one image: a 3DGS .ply, a novel view, optionally a video")
    gs.add_argument("image", help="input image (PNG, JPEG, ...)")
    gs.add_argument("--checkpoint", help=f"depth checkpoint file or preset (default: {DEFAULT_CHECKPOINT})")
    gs.add_argument("--points", type=int, default=200_000, help="Gaussians, spread evenly over the surfaces (surface-area sampler; default 200000)")
    gs.add_argument("--video", choices=("orbit", "swing"), help="also write an MP4 of this camera path")
    gs.add_argument("--frames", type=int, default=60, help="video frames (default 60)")
    gs.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    gs.add_argument("--move", type=float, default=0.05, help="camera move of the novel view and the video, as a fraction of the median depth "
                                                               "(default 0.05)")
    gs.add_argument("--render-size", help="HxW of the rendered views (default: the image's, long side at most 512)")
    gs.add_argument("--input-size", help=INPUT_SIZE_HELP)
    gs.add_argument("--fx", type=float, help="focal length in pixels of the image (default: max(H, W))")
    gs.add_argument("--sparse-depth", help=f"metric sparse depth for a DepthSensor checkpoint, 0 = missing, as for predict "
                                           f"(at most {MAX_PROMPT_POINTS} of its samples are used, a seeded subset)")
    gs.add_argument("--reference-depth", help="metric depth of the image (0 = missing; at the image's or the network "
                                              "input's size) to align the relative depth to (robust scale and shift): "
                                              "Gaussians in metres")
    gs.add_argument("--keep-outliers", action="store_true", help=KEEP_OUTLIERS_HELP)
    gs.add_argument("--out", type=folder, default="outputs", help="output folder (default: ./outputs)")
    gs.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    gs.add_argument("--seed", type=int, default=0, help="seed of the surface-area sampler (default 0)")
    gs.add_argument("--gs-head", help="a head trained by infinidepth train-gs, 'demo' (the one bundled with the demo "
                                      "model), or the released GS checkpoint (with a released InfiniDepth --checkpoint); "
                                      "default: plain splats sized by point spacing")
    gs.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    tg = sub.add_parser("train-gs", help="train the paper's Gaussian head on multi-view procedural scenes (depth model frozen)")
    tg.add_argument("--depth-model", default=DEFAULT_CHECKPOINT, help=f"frozen depth checkpoint or preset (default: {DEFAULT_CHECKPOINT})")
    tg.add_argument("--scenes", type=int, default=200, help="procedural training scenes (seeds 0 to SCENES - 1), rendered on the fly (default 200)")
    tg.add_argument("--steps", type=int, default=500, help="training steps, one scene each (default 500)")
    tg.add_argument("--points", type=int, default=6000, help="points sampled on each source view (default 6000)")
    tg.add_argument("--size", default="96x128", help="HxW of the rendered views, multiples of 16 (default 96x128)")
    tg.add_argument("--views", type=int, default=3, help="views per scene: the source and moved ones (default 3)")
    tg.add_argument("--lpips", help="LPIPS network weights: torchvision's VGG16 or AlexNet file (e.g. "
                                    "~/.cache/torch/hub/checkpoints/vgg16-397923af.pth) or a saved lpips.LPIPS state "
                                    "dict; adds --lpips-weight x LPIPS to L1 + SSIM (needs pip install lpips)")
    tg.add_argument("--lpips-weight", type=float, help="with --lpips: weight of the LPIPS term (default 0.05)")
    tg.add_argument("--out", type=folder, default="runs/gs", help="run folder (gs_head.pt, gs_checkpoint.pt, gs_log.jsonl; default runs/gs)")
    tg.add_argument("--resume", action="store_true", help="continue from OUT/gs_checkpoint.pt (same options)")
    tg.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    d = sub.add_parser("demo", help="run predict on the bundled picture, at twice its size, with a point cloud")
    d.add_argument("--out", type=folder, default="infinidepth_demo", help="output folder (default: ./infinidepth_demo)")
    d.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    return parser


COMMANDS = {"predict": predict, "data": data_render, "eval": run_eval, "bench": run_bench, "train": run_train,
            "gs": run_gs, "train-gs": run_train_gs}


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporary files are removed on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def join_negative_region(argv: list[str]) -> list[str]:
    """``--region -8,0,64,64`` as ``--region=-8,0,64,64``: argparse reads a value that starts with "-" as
    an option and says only that --region expected one argument; joined, the region check names the problem."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--region" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"--region={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(join_negative_region(argv))
    args.argv = ["infinidepth", *argv]  # what a report records as its command
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        # A kill (a batch system's time limit, say) unwinds like Ctrl-C does: every atomic write
        # in progress deletes its temporary file, which for a streamed 16K map is gigabytes.
        # (train installs its own handler while it runs: it checkpoints first.)
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "demo":
            with resources.as_file(resources.files("infinidepth") / "assets" / "demo.png") as image:
                args = build_parser().parse_args(
                    ["predict", str(image), "--scale", "2", "--ply", "--out", args.out]
                    + (["--device", args.device] if args.device else [])
                )
                predict(args)
        else:
            result = COMMANDS[args.command](args)
            if isinstance(result, dict) and result.get("interrupted"):
                # train / train-gs stopped by a signal: checkpointed, not finished. Exit as a killed
                # process does, so that `train && eval` stops and a batch system sees the run unfinished.
                return 128 + int(result.get("signal") or signal.SIGTERM)
    except (InputError, CheckpointError, DataError, OSError) as e:  # OSError: a full disk, a folder we may not write
        print(f"infinidepth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("infinidepth: interrupted; files not yet complete were removed", file=sys.stderr)
        return 130
    except Terminated:
        print("infinidepth: terminated; files not yet complete were removed", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Files in and out: images, depth maps in the formats sensors and datasets use, point clouds.

Every writer is atomic (a temporary file in the target folder, flushed to disk, then a rename), so
an interrupted run never leaves a half-written file and never clobbers a good one with a broken one.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

DEPTH_SUFFIXES = (".npy", ".npz", ".png", ".exr", ".h5", ".hdf5")


class InputError(ValueError):
    """Bad user input, reported as one clear line (the CLI exits with code 2)."""


# -- reading ----------------------------------------------------------------------------------
def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; EXIF orientation applied, alpha dropped, greyscale expanded.

    Greyscale of more than 8 bits is scaled, not clipped: 16-bit (and 32-bit integer files holding
    16-bit values) by 255/65535, floating point from [0, 1]. Pillow's own conversion would clip
    them to 255, a white picture. Anything outside those ranges is refused with its range.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                return _grey_to_rgb8(np.asarray(im), path)
            return np.asarray(im.convert("RGB")).copy()
    except Image.DecompressionBombError as e:
        raise InputError(bomb_message(path, e)) from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: {e}") from e


def bomb_message(path, error) -> str:
    """Pillow refuses images of more than 2 * Image.MAX_IMAGE_PIXELS pixels (a guard against files
    that declare a huge size); say so, and how to lift it for a real one."""
    return (f"cannot read image {path}: {error} To read a genuine image that large, raise "
            "PIL.Image.MAX_IMAGE_PIXELS in Python, or downscale it first (the network input is small anyway).")


def _grey_to_rgb8(grey: np.ndarray, path: Path) -> np.ndarray:
    """A greyscale image of 16-bit or 32-bit integers or floats as RGB ``uint8``."""
    lo, hi = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
    if grey.dtype.kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo and hi <= 1):
            raise InputError(f"image {path} is floating-point greyscale with values in [{lo:.4g}, {hi:.4g}]; "
                             "expected [0, 1] (or save it as an 8- or 16-bit image)")
        scale = 255.0
    else:
        if not (0 <= lo and hi <= 65535):
            raise InputError(f"image {path} is integer greyscale with values in [{lo:.0f}, {hi:.0f}]; "
                             "expected 16-bit values (0..65535)")
        scale = 255.0 / 65535.0
    grey8 = np.rint(grey.astype(np.float64) * scale).astype(np.uint8)
    return np.repeat(grey8[..., None], 3, axis=2)


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """A depth map ``float32 [H, W]`` in metres; 0 marks missing samples.

    ``.npy``/``.npz`` (the array named depth, else data, else the first), 16-bit ``.png`` (millimetres), ``.exr``
    (the channel named Z, else depth, Y, R, also as a layer's last part, ``ViewLayer.Depth.Z``; else the first),
    ``.h5``/``.hdf5`` (the dataset named depth, else dataset, else data, else the first).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"depth file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            depth = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise InputError(f"{path}: empty .npz")
                name = next((n for n in ("depth", "data") if n in z.files), z.files[0])
                depth = z[name]
        elif suffix == ".png":
            depth = _read_png16(path)
        elif suffix == ".exr":
            depth = _read_exr(path)
        elif suffix in (".h5", ".hdf5"):
            depth = _read_h5(path)
        else:
            raise InputError(f"unsupported depth format {suffix!r} for {path}; use one of {DEPTH_SUFFIXES}")
    except InputError:
        raise
    except Exception as e:  # each reader library raises its own types for a broken file
        raise InputError(f"cannot read depth file {path}: {e}") from e
    depth = np.asarray(depth)
    while depth.ndim > 2 and 1 in (depth.shape[0], depth.shape[-1]):  # [1, H, W], [H, W, 1]: the map; not
        depth = depth[0] if depth.shape[0] == 1 else depth[..., 0]       # np.squeeze, which flattens a 1xW map
    if depth.ndim != 2:
        raise InputError(f"depth in {path} must be a single-channel 2-D map, got shape {depth.shape}")
    if not (np.issubdtype(depth.dtype, np.integer) or np.issubdtype(depth.dtype, np.floating)):
        raise InputError(f"depth in {path} must hold real numbers, got dtype {depth.dtype}")
    if np.issubdtype(depth.dtype, np.floating) and depth.dtype.itemsize > 4:
        finite = depth[np.isfinite(depth)]
        if finite.size and np.abs(finite).max() > np.finfo(np.float32).max:
            raise InputError(f"depth in {path} holds values beyond float32's range ({np.abs(finite).max():.3g})")
    return depth.astype(np.float32)


def _read_png16(path: Path) -> np.ndarray:
    return read_png16(path).astype(np.float32) / 1000.0


def read_png16(path) -> np.ndarray:
    """The raw values ``int64 [H, W]`` of a 16-bit single-channel PNG (each dataset has its own unit)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
        mode = im.mode
    if arr.ndim != 2 or (arr.dtype != np.uint16 and not (arr.dtype == np.int32 and mode.startswith("I"))):
        raise InputError(f"{path}: depth PNGs must be 16-bit single-channel, got mode {mode}")
    return arr.astype(np.int64)


def _read_exr(path: Path) -> np.ndarray:
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        channels = f.channels()
        for wanted in ("Z", "depth", "Y", "R"):
            # also as the last part of a layer's name: a render's "ViewLayer.Depth.Z" beside its colour
            name = next((n for n in channels if n.split(".")[-1] == wanted), None)
            if name is not None:
                return np.asarray(channels[name].pixels, dtype=np.float32)
        first = next(iter(channels.values())).pixels
        return np.asarray(first, dtype=np.float32)[..., 0] if np.ndim(first) == 3 else np.asarray(first, np.float32)


def _read_h5(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        found = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        if not found:
            raise InputError(f"{path}: no dataset inside")
        named = {n.split("/")[-1]: n for n in reversed(found)}   # the first of each name
        name = next((named[k] for k in ("depth", "dataset", "data") if k in named), found[0])
        return f[name][()]


def check_depth_values(depth: np.ndarray, what: str, allow_missing: bool = True) -> None:
    if np.isnan(depth).any():
        raise InputError(f"{what} contains NaN; mark missing samples with 0")
    if np.isinf(depth).any():
        raise InputError(f"{what} contains infinite values; mark missing samples with 0")
    if (depth < 0).any():
        raise InputError(f"{what} contains negative depth ({float(depth.min()):.3g}); mark missing samples with 0")
    if not (depth > 0).any():
        raise InputError(f"{what} has no valid (positive) depth")


# -- writing ------------------------------------------------------------------------------------
def _as_array(values) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU) or anything ``np.asarray`` takes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside ``path``; renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the stem shortened: a name near the file system's limit (255 bytes) is still one open() accepts,
    # and the temporary's (prefix, random part and suffix around it) must fit too
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:40]}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give what open() would
        _fsync(tmp)  # the data on disk before the name points at it: a crash then cannot leave an empty file there
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_paths(paths):
    """:func:`atomic_path` for a set of files: temporaries for all, renamed onto ``paths`` only once
    the block has written every one of them. A run stopped (or failing) while writing leaves the
    previous set whole, not half old and half new. The renames themselves happen one after another,
    each atomic: a process killed in the few microseconds between two of them can still leave a mixed
    set, which no portable file system call avoids."""
    with ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_npy(path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_png(path, array: np.ndarray, compress_level: int = 6) -> None:
    """``compress_level`` is zlib's, 0-9 (6: Pillow's default); 1 writes an 8K 16-bit depth map
    about three times faster, a third larger."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=compress_level)


def depth_to_png16(depth: np.ndarray, metric: bool) -> tuple[np.ndarray, str]:
    """16-bit encoding: millimetres for metric depth; for relative depth, its range over 0..65535."""
    depth = _as_array(depth)
    if metric:
        return np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16), "millimetres"
    if depth.size and not np.isfinite(depth).all():  # a NaN or inf range would map every pixel to 0
        raise ValueError("depth_to_png16: relative depth contains NaN or infinite values")
    lo, hi = float(depth.min()), float(depth.max())
    scaled = (depth - lo) / max(hi - lo, 1e-12) * 65535.0
    return np.round(scaled).astype(np.uint16), f"relative depth, 0..65535 spans [{lo:.6g}, {hi:.6g}]"


def colorize_depth(depth: np.ndarray, cmap: str = "Spectral", reference: np.ndarray | None = None) -> np.ndarray:
    """RGB ``uint8`` picture of a depth map: near is red, far is blue; 2-98% of inverse depth spans the map
    (of ``reference``'s depths instead when given, so that several maps share one colour scale).

    Works in blocks of rows with a 256-colour table (the colormap's own resolution), and takes the
    percentiles from at most ~4 M evenly spaced samples, so a 16K map costs little beyond its picture."""
    from matplotlib import colormaps

    depth = _as_array(depth)
    ref = _as_array(depth if reference is None else reference).reshape(-1)
    if ref.size == 0:
        raise ValueError("colorize_depth: the reference holds no depth to take the colour scale from")
    if np.isnan(depth).any() or np.isnan(ref).any():  # no colour to give, and NaN percentiles spoil every pixel
        raise ValueError("colorize_depth: depth contains NaN" + ("" if reference is None else " (or the reference does)"))
    step = max(1, ref.size // 4_000_000)
    lo, hi = np.percentile(1.0 / np.maximum(ref[::step], 1e-6), [2, 98])
    table = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    out = np.empty(depth.shape + (3,), np.uint8)
    rows = max(1, 1_000_000 // max(depth.shape[-1], 1))
    for r in range(0, depth.shape[0], rows):
        t = np.clip((1.0 / np.maximum(depth[r:r + rows], 1e-6) - lo) / max(hi - lo, 1e-12), 0, 1)
        out[r:r + rows] = table[np.round((1.0 - t) * 255).astype(np.intp)]
    return out


def write_ply(path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary PLY point cloud: float32 x, y, z and uint8 red, green, blue. ``points`` ``[N, 3]`` finite;
    ``colors`` ``[N, 3]`` integers in 0..255, or floats in [0, 1] (as ``model.sample_points`` gives them),
    scaled to 0..255. Arrays or tensors."""
    from plyfile import PlyData, PlyElement

    points, colors = _as_array(points), _as_array(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"{path}: not written: points and colors must both be [N, 3], got {points.shape} and {colors.shape}")
    if not np.isfinite(points.astype(np.float32, copy=False)).all():
        raise ValueError(f"{path}: not written: points contain NaN or infinite values (in float32)")
    if colors.dtype.kind == "f":
        if colors.size and not (np.isfinite(colors).all() and colors.min() >= 0 and colors.max() <= 1):
            raise ValueError(f"{path}: not written: float colors must be in [0, 1], got range "
                             f"[{colors.min():.4g}, {colors.max():.4g}] (pass uint8 for 0..255)")
        colors = np.rint(colors * 255.0)
    elif colors.dtype.kind in "iub":
        if colors.size and not (colors.min() >= 0 and colors.max() <= 255):
            raise ValueError(f"{path}: not written: integer colors must be in 0..255, got {colors.min()}..{colors.max()}")
    else:
        raise TypeError(f"{path}: not written: colors must be numbers, got dtype {colors.dtype}")
    vertex = np.empty(len(points), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for i, k in enumerate("xyz"):
        vertex[k] = points[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        vertex[k] = colors[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp))

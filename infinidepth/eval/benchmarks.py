"""Readers for the evaluation benchmarks' file layouts: Synth4K, KITTI, ETH3D, NYUv2, ScanNet, DIODE,
and the procedural set of ``infinidepth data render``.

Each is a :class:`infinidepth.data.DepthDataset` (so it also yields training samples) with, for
evaluation, :meth:`Benchmark.region` (the pixels the benchmark's protocol scores: the Garg crop of
KITTI, the Eigen crop of NYUv2, ...) and :meth:`Benchmark.hf_mask_file` (a released high-frequency
mask, where the set has one) and :meth:`Benchmark.depth_range` (the fixed range every prediction
is clipped to before scoring). A set whose camera is not part of its release gets a nominal pinhole
(focal = the longer side, centred); evaluation does not use it.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np

from infinidepth.data.datasets import (
    DataError,
    DepthDataset,
    ProceduralFiles,
    _pair,
    _pinhole,
    _read_depth,
    _read_png16,
    _read_rgb,
    _unpaired,
)
from infinidepth.io import InputError

log = logging.getLogger("infinidepth.eval")


class Benchmark(DepthDataset):
    # The prediction range of a set whose protocol fixes none (ETH3D, procedural): far beyond their
    # ground truth, it only bounds a runaway (or non-finite) prediction.
    DEFAULT_RANGE = (1e-3, 1000.0)

    def depth_range(self) -> tuple[float, float]:
        """``(min, max)`` metres: every prediction, aligned or not, is clipped to it before scoring
        (NaN counts as ``max``): the benchmark's own ``[min_depth, max_depth]`` where it has one."""
        return (self.min_depth or self.DEFAULT_RANGE[0], self.max_depth or self.DEFAULT_RANGE[1])

    def region(self, shape: tuple[int, int]) -> np.ndarray | None:
        """Boolean mask of the scored pixels for a ground truth of ``shape`` (None: all)."""
        return None

    def hf_mask_file(self, record) -> Path | None:
        return None


def _nominal(H: int, W: int) -> np.ndarray:
    return _pinhole(float(max(H, W)), W / 2, H / 2)


def _meta_pairs(root: Path, names=("val.txt", "val_new.txt", "test.txt")) -> list[tuple[Path, Path]] | None:
    """Pairs from a released meta file (``rgb_rel depth_rel [...]`` per line, relative to ``root``)."""
    for name in names:
        meta = root / name
        if meta.is_file():
            pairs = []
            for n, line in enumerate(meta.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise DataError(f"{meta}:{n}: expected 'rgb_path depth_path', got {line!r}")
                pairs.append((root / parts[0], root / parts[1]))
            return pairs
    return None


class Synth4K(Benchmark):
    """Synth4K (the released ``game_4k_data``): one game per root, as the released evaluation runs
    each game (cyberpunk, deadisland, spiderman2, spidermanmm, watchdoglegion) as its own set. Its
    frames are listed by ONE meta file in the root, the first of ``val.txt``, ``val_new.txt``,
    ``test.txt`` that exists, each line ``rgb depth [...]`` relative to the root; depth is float EXR
    in metres, scored between 3 and 150 m as the released evaluation does. Meta files inside
    sub-folders are not read (a root holding several games is refused, naming them). The released
    high-frequency mask, when present, is ``<depth folder>/../highfreq_mask/<depth stem>_highfreq_mask.png``
    (any non-zero value = in the mask)."""

    layout = "one game: val.txt, val_new.txt or test.txt listing 'rgb depth' pairs (EXR depth), optional highfreq_mask/"
    min_depth, max_depth = 3.0, 150.0

    def find(self):
        pairs = _meta_pairs(self.root)
        if pairs is None:
            nested = sorted(str(p.relative_to(self.root)) for name in ("val.txt", "val_new.txt", "test.txt")
                            for p in self.root.glob(f"*/{name}"))
            if nested:
                raise InputError(f"Synth4K: {self.root} has no meta file of its own but its sub-folders do "
                                 f"({', '.join(nested[:5])}); give each game's folder as its own root")
        return pairs or []

    def load(self, record):
        rgb = _read_rgb(record[0])
        return rgb, _read_depth(record[1]), _nominal(*rgb.shape[:2])

    def hf_mask_file(self, record):
        depth = record[1]
        p = depth.parent.parent / "highfreq_mask" / f"{depth.stem}_highfreq_mask.png"
        return p if p.is_file() else None


class KITTI(Benchmark):
    """KITTI Eigen split: ``<drive>/proj_depth/groundtruth/image_02/<frame>.png`` (16-bit, metres *
    256, 0 = no lidar return) with ``<date>/<drive>/image_02/data/<frame>.png`` (or the same under
    the drive folder). Scored inside the Garg crop (rows 0.408-0.992 H, cols 0.036-0.964 W; ``crop=
    "eigen"``: rows 0.332-0.914 H), up to 80 m. Focal 721.5377 px (the Eigen test list's).

    The frames scored are those of the Eigen test list ``split`` (default ``<root>/eigen_test_files.txt``),
    one frame per line, its first field the RGB path relative to the root,
    ``<date>/<drive>/image_02/data/<frame>.png`` (further fields, such as the ground-truth path and
    focal of the common ``eigen_test_files_with_gt.txt``, are ignored; the ground truth is found under
    the root by drive and frame); a listed frame with no RGB or no ground truth is logged and counted.
    With no list, every frame with ground truth under the root is scored, with a warning saying so."""

    layout = "<drive>/proj_depth/groundtruth/image_02/*.png with <date>/<drive>/image_02/data/*.png"
    min_depth, max_depth = 1e-3, 80.0
    SPLIT_FILE = "eigen_test_files.txt"
    CROPS = {"garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
             "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229)}

    def __init__(self, root, crop: str | None = "garg", split=None, **kw):
        if crop is not None and crop not in self.CROPS:
            raise ValueError(f"crop must be one of {sorted(self.CROPS)} or None, got {crop!r}")
        self.crop = crop
        self.split = None if split is None else Path(split)
        if self.split is not None and not self.split.is_file():
            raise InputError(f"KITTI: split file {self.split} not found")
        super().__init__(root, **kw)

    def _rgb_of(self, drive: str, frame: str, depth: Path | None) -> Path | None:
        candidates = [self.root / drive[:10] / drive / "image_02" / "data" / frame]
        if depth is not None:
            candidates.append(depth.parents[3] / "image_02" / "data" / frame)
        return next((c for c in candidates if c.is_file()), None)

    def find(self):
        depths = {(d.parents[3].name, d.name): d
                  for d in sorted(self.root.rglob("proj_depth/groundtruth/image_02/*.png"))}
        split = self.split or self.root / self.SPLIT_FILE
        pairs = []
        if not split.is_file():
            log.warning("KITTI: no Eigen test list %s: scoring every frame with ground truth under %s",
                        split, self.root)
            for (drive, frame), d in depths.items():
                rgb = self._rgb_of(drive, frame, d)
                if rgb is None:
                    _unpaired(self.unpaired, f"{d}: no RGB image {drive[:10]}/{drive}/image_02/data/{frame}")
                else:
                    pairs.append((rgb, d))
            return pairs
        for n, line in enumerate(split.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = PurePosixPath(line.split()[0]).parts
            if len(parts) < 4 or parts[-3:-1] != ("image_02", "data"):
                raise InputError(f"{split}:{n}: expected '<date>/<drive>/image_02/data/<frame>.png ...', got {line!r}")
            drive, frame = parts[-4], parts[-1]
            d = depths.get((drive, frame))
            listed = self.root / Path(*parts)
            rgb = listed if listed.is_file() else self._rgb_of(drive, frame, d)
            if d is None or rgb is None:
                _unpaired(self.unpaired, f"{split}:{n}: {line.split()[0]} has no "
                          + ("ground truth under the root" if d is None else "RGB image under the root"))
            else:
                pairs.append((rgb, d))
        return pairs

    def load(self, record):
        rgb = _read_rgb(record[0])
        depth = _read_png16(record[1]).astype(np.float32) / 256.0
        H, W = depth.shape
        return rgb, depth, _pinhole(721.5377, W / 2, H / 2)

    def region(self, shape):
        if self.crop is None:
            return None
        H, W = shape
        t, b, l, r = self.CROPS[self.crop]
        mask = np.zeros(shape, bool)
        mask[int(t * H):int(b * H), int(l * W):int(r * W)] = True
        return mask


class ETH3D(Benchmark):
    """ETH3D (DSLR, undistorted): ``.../<scene>_dslr_depth/<scene>/ground_truth_depth/dslr_images/<name>.JPG``
    is raw little-endian float32 depth (metres, inf = no data) of the image's size, beside
    ``.../<scene>/images/dslr_images/<name>.JPG``; a ``.npz`` (array ``data``) or ``.npy`` depth of
    the same name is read as well (the released evaluation's converted files). The release caps no
    depth: all valid ground truth is scored, predictions are clipped to :attr:`Benchmark.DEFAULT_RANGE`."""

    layout = "<scene>/images/dslr_images/*.JPG with ground_truth_depth/dslr_images/*.JPG (raw float32)"

    def find(self):
        images = {}
        for p in self.root.rglob("images/dslr_images/*"):
            images[(p.parent.parent.parent.name, p.stem)] = p
        pairs = []
        for d in sorted(self.root.rglob("ground_truth_depth/dslr_images/*")):
            rgb = images.pop((d.parent.parent.parent.name, d.stem), None)
            if rgb is None:
                _unpaired(self.unpaired, f"{d}: no image of that name in <scene>/images/dslr_images")
            else:
                pairs.append((rgb, d))
        for p in sorted(images.values()):
            _unpaired(self.unpaired, f"{p}: no ground-truth depth of that name in ground_truth_depth/dslr_images")
        return pairs

    def load(self, record):
        rgb = _read_rgb(record[0])
        H, W = rgb.shape[:2]
        path = record[1]
        if path.suffix.lower() in (".npz", ".npy"):
            depth = _read_depth(path)
        else:
            raw = np.fromfile(path, dtype="<f4")
            if raw.size != H * W:
                raise DataError(f"{path}: {raw.size} float32 values, the image has {H}x{W} pixels")
            depth = raw.reshape(H, W)
        return rgb, depth, _nominal(H, W)


class NYUv2(Benchmark):
    """NYUv2 Eigen test split: ``<scene>/rgb_NNNN.png`` with ``depth_NNNN.png`` (16-bit
    millimetres) in the same folder, 640x480. Scored in the Eigen crop (rows 45-470, cols 41-600),
    up to 10 m. Intrinsics of the Kinect colour camera (NYU toolbox)."""

    layout = "<scene>/rgb_*.png with depth_*.png (mm)"
    min_depth, max_depth = 1e-3, 10.0

    def find(self):
        return _pair(self.root, "**/rgb_*.png", lambda p: p.with_name("depth_" + p.stem[4:] + ".png"),
                     others="**/depth_*.png", unpaired=self.unpaired)

    def load(self, record):
        rgb = _read_rgb(record[0])
        H, W = rgb.shape[:2]
        return rgb, _read_png16(record[1]).astype(np.float32) / 1000.0, \
            _pinhole(518.8579 * W / 640, 325.5824 * W / 640, 253.7362 * H / 480, 519.4696 * H / 480)

    def region(self, shape):
        H, W = shape
        mask = np.zeros(shape, bool)
        mask[int(45 * H / 480):int(471 * H / 480), int(41 * W / 640):int(601 * W / 640)] = True
        return mask


class ScanNet(Benchmark):
    """ScanNet: ``<scene>/color/NNNNNN.jpg`` with ``<scene>/depth/NNNNNN.png`` (16-bit millimetres)
    and ``<scene>/intrinsic/intrinsic_depth.txt`` (4x4). The colour image is resized to the depth's
    size when they differ (raw ScanNet: 1296x968 vs 640x480). Scored without a border of 9 rows and
    12 columns, as the released evaluation crops."""

    layout = "<scene>/color/*.jpg with <scene>/depth/*.png (mm)"
    min_depth, max_depth = 1e-3, 10.0

    def find(self):
        return _pair(self.root, "*/color/*.jpg", lambda p: p.parent.parent / "depth" / f"{p.stem}.png",
                     others="*/depth/*.png", unpaired=self.unpaired)

    def load(self, record):
        from PIL import Image

        rgb = _read_rgb(record[0])
        depth = _read_png16(record[1]).astype(np.float32) / 1000.0
        H, W = depth.shape
        if rgb.shape[:2] != (H, W):
            rgb = np.asarray(Image.fromarray(rgb).resize((W, H), Image.Resampling.BICUBIC))
        K_file = record[1].parent.parent / "intrinsic" / "intrinsic_depth.txt"
        if K_file.is_file():
            try:
                values = np.array(K_file.read_text().split(), dtype=np.float64)
            except ValueError as e:
                raise DataError(f"cannot parse {K_file}: {e}") from e
            if values.size not in (9, 16):
                raise DataError(f"{K_file}: expected a 4x4 (or 3x3) intrinsic matrix, got {values.size} values")
            K = values.reshape(4, 4)[:3, :3] if values.size == 16 else values.reshape(3, 3)
        else:
            K = _nominal(H, W)
        return rgb, depth, K

    def region(self, shape):
        mask = np.zeros(shape, bool)
        mask[9:-9, 12:-12] = True
        return mask


class DIODE(Benchmark):
    """DIODE: ``<split>/<scene>/<scan>/<name>.png`` with ``<name>_depth.npy`` (``[H, W, 1]`` metres)
    and ``<name>_depth_mask.npy`` (1 = valid); scored between 0.6 and 350 m as released evaluations
    do. Nominal intrinsics of the DIODE scanner (fx 886.81, fy 927.06 at 1024x768)."""

    layout = "<split>/<scene>/<scan>/*.png with *_depth.npy and *_depth_mask.npy"
    min_depth, max_depth = 0.6, 350.0

    def find(self):
        return _pair(self.root, "**/*_depth.npy", lambda p: p.with_name(p.name[: -len("_depth.npy")] + ".png"),
                     others="**/*.png", unpaired=self.unpaired)

    def name_of(self, record):
        return str(record[1])

    def load(self, record):
        depth_path, rgb_path = record
        depth = _read_depth(depth_path)            # [H, W, 1] squeezed; empty, complex, pickled: refused
        mask_path = depth_path.with_name(depth_path.stem + "_mask.npy")
        if mask_path.is_file():
            mask = _read_depth(mask_path)
            if mask.shape != depth.shape:
                raise DataError(f"{mask_path} is {mask.shape}, its depth {depth_path.name} {depth.shape}")
            depth = np.where(mask > 0, depth, 0.0).astype(np.float32)
        rgb = _read_rgb(rgb_path)
        H, W = depth.shape
        return rgb, depth, _pinhole(886.81 * W / 1024, W / 2, H / 2, 927.06 * H / 768)


class Procedural(ProceduralFiles, Benchmark):
    """The procedural set written by ``infinidepth data render`` (scored everywhere but the sky;
    predictions clipped to :attr:`Benchmark.DEFAULT_RANGE`, beyond its farthest surfaces)."""


BENCHMARKS = {
    "synth4k": Synth4K,
    "kitti": KITTI,
    "eth3d": ETH3D,
    "nyuv2": NYUv2,
    "scannet": ScanNet,
    "diode": DIODE,
    "procedural": Procedural,
}

"""Training datasets: readers for the file layouts of the synthetic sets the paper trains on, and the
procedural scenes. Each yields the common sample of :class:`DepthDataset`.

Every reader turns its set's encoding into z-depth in metres (distance to the camera centre, 16-bit
centimetres, disparity with a baseline, ...) and its intrinsics into a ``[3, 3]`` matrix in pixels;
:func:`infinidepth.data.transforms.prepare` does the rest. Bad frames never reach a loss: NaN,
infinite, non-positive and beyond-range depths are masked; a frame with no valid depth, or a file that
cannot be read (whatever the reader library raises), is skipped with a warning that names it, and
counted in ``dataset.skipped``. A file whose partner (the depth of an image, the image of a depth) is
missing is logged when the set is listed and kept in ``dataset.unpaired``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch

from infinidepth.io import InputError, read_depth, read_image

from infinidepth.sampling.camera import check_size

from .transforms import Augment, check_intrinsics, clean_depth, prepare

log = logging.getLogger("infinidepth.data")


class DataError(RuntimeError):
    """A frame that cannot be used (unreadable file, inconsistent sizes), with its path."""


class DepthDataset(torch.utils.data.Dataset):
    """Base of all readers. A sample is a dict:

    - ``image`` ``[3, h, w]`` float in [0, 1]: the network input (``size = (h, w)``)
    - ``intrinsics`` ``[3, 3]``: of the network image, in its pixels
    - ``depth`` ``[1, H, W]`` float metres (0: invalid) and ``valid`` ``[1, H, W]`` bool: the ground
      truth at full resolution, cropped/flipped with the image; ``depth_intrinsics`` in its pixels
    - ``coords`` ``[n_pairs, 2]`` normalised (y, x) and ``coord_depth`` ``[n_pairs]``: sub-pixel
      supervision sampled from the full-resolution ground truth
    - ``name``: where the frame came from

    ``augment``: an :class:`Augment` (or True for the defaults) for training; None resizes the whole
    frame. Randomness comes from ``(seed, epoch, index)`` only, so a sample is reproducible; call
    :meth:`set_epoch` to get new crops each epoch.
    """

    max_depth: float | None = None   # beyond this a reader's depth is sky or a placeholder
    min_depth: float | None = None   # below this it is not scored (a benchmark's protocol)

    def __init__(self, root=None, size: tuple[int, int] = (384, 512), n_pairs: int = 100_000,
                 augment: Augment | bool | None = None, seed: int = 0):
        self.root = Path(root) if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise InputError(f"{type(self).__name__}: dataset root {self.root} is not a directory")
        # Settings are checked here, once: a bad one found per sample would skip every frame in turn.
        self.size = check_size(size, f"{type(self).__name__}: size")
        self.n_pairs = int(n_pairs)
        if self.n_pairs <= 0:
            raise ValueError(f"n_pairs must be positive, got {n_pairs}")
        if not (augment is None or isinstance(augment, (bool, Augment))):
            raise TypeError(f"augment must be an Augment, True or None, got {type(augment).__name__}")
        self.augment = Augment() if augment is True else (augment or None)
        self.seed = seed
        self.epoch = 0
        self.skipped = 0
        self.unpaired: list[str] = []    # files left out of the records because their partner is missing
        self.records = self.find()
        if not self.records:
            raise InputError(f"{type(self).__name__}: no frames found under {self.root} (expected {self.layout})")

    layout = ""

    def find(self) -> list:
        raise NotImplementedError

    def load(self, record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rgb [H, W, 3] uint8, depth [H, W] float32 z in metres, K [3, 3] float64)``."""
        raise NotImplementedError

    def name_of(self, record) -> str:
        return str(record[0] if isinstance(record, tuple) else record)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def frame(self, index: int) -> dict:
        """Frame ``index`` as stored (no resize, no augmentation): ``rgb`` uint8 ``[H, W, 3]``,
        ``depth`` float32 tensor (0 invalid), ``valid``, ``intrinsics``, ``name``. Raises
        :class:`DataError` naming the frame if it cannot be read or holds no valid depth."""
        record = self.records[index]
        name = self.name_of(record)
        try:
            rgb, depth, K = self.load(record)
        except Exception as e:
            missing = _missing_module(e)
            if missing is not None:   # not a broken frame: every frame would fail the same way, one by one
                raise ImportError(f"{name}: reading {type(self).__name__} needs a module that is not installed "
                                  f"({missing})") from e
            if isinstance(e, (DataError, InputError)):   # the readers' own messages, naming the file
                raise DataError(f"{name}: {e}") from e
            raise DataError(f"{name}: {type(e).__name__}: {e}") from e   # what a library raises on a broken file
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DataError(f"{name}: the reader returned an image of shape {rgb.shape}, dtype {rgb.dtype}; "
                            "expected [H, W, 3] uint8")
        try:
            K = check_intrinsics(K).numpy()
        except ValueError as e:
            raise DataError(f"{name}: {e}") from None
        depth, valid = clean_depth(depth, self.max_depth, self.min_depth)
        if depth.ndim != 2:
            raise DataError(f"{name}: the depth map must be [H, W], got shape {tuple(depth.shape)}")
        if not valid.any():
            raise DataError(f"{name}: no valid depth")
        if tuple(rgb.shape[:2]) != tuple(depth.shape):
            raise DataError(f"{name}: image is {tuple(rgb.shape[:2])} but its depth map is {tuple(depth.shape)}")
        return {"rgb": rgb, "depth": depth, "valid": valid, "intrinsics": K, "name": name}

    def __getitem__(self, index: int) -> dict:
        # An index out of range must raise IndexError: `for sample in dataset` and list(dataset) stop on it
        # (wrapping it round would make them endless).
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} frames")
        index %= len(self)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                f = self.frame(i)
                g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF_FFFF_FFFF)
                try:
                    sample = prepare(f["rgb"], f["depth"], f["valid"], f["intrinsics"], self.size, self.n_pairs,
                                     self.augment, g)
                except ValueError as e:    # a frame() passed that this crop cannot use: say which frame
                    raise DataError(f"{f['name']}: {e}") from e
            except DataError as e:
                self.skipped += 1
                log.warning("skipping %s (%d skipped so far)", e, self.skipped)
                continue
            sample["name"] = f["name"]
            return sample
        raise DataError(f"{type(self).__name__}: every frame under {self.root} was unusable (see the warnings)")


def _missing_module(error: BaseException) -> ImportError | None:
    """The ImportError behind ``error`` (a reader library re-raises it as its own error), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ImportError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _read_rgb(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except InputError as e:
        raise DataError(str(e)) from e


def _read_depth(path: Path) -> np.ndarray:
    try:
        return read_depth(path)
    except InputError as e:
        raise DataError(str(e)) from e


def _read_png16(path: Path) -> np.ndarray:
    from infinidepth.io import read_png16

    try:
        return read_png16(path)
    except (InputError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _pinhole(f, cx, cy, fy=None) -> np.ndarray:
    return np.array([[f, 0, cx], [0, f if fy is None else fy, cy], [0, 0, 1]], dtype=np.float64)


def _unpaired(unpaired: list | None, message: str) -> None:
    log.warning("skipping %s", message)
    if unpaired is not None:
        unpaired.append(message)


def _pair(root: Path, pattern: str, partner, others: str | None = None,
          unpaired: list | None = None) -> list[tuple[Path, Path]]:
    """Files matching ``pattern`` under ``root`` whose ``partner(path)`` exists, sorted. A ``pattern``
    file without its partner, and an ``others`` file (the partners' pattern) that no ``pattern`` file
    pairs with, are logged and appended to ``unpaired``."""
    out, used = [], set()
    for p in sorted(root.glob(pattern)):
        q = partner(p)
        if q is not None and q.is_file():
            out.append((p, q))
            used.add(q)
        else:
            _unpaired(unpaired, f"{p}: its partner {q} is missing")
    if others is not None:
        for q in sorted(root.glob(others)):
            if q not in used:
                _unpaired(unpaired, f"{q}: no file matching {pattern} pairs with it")
    return out


# -- Hypersim ---------------------------------------------------------------------------------------
class Hypersim(DepthDataset):
    """apple/ml-hypersim: ``ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5``
    holds the distance to the camera centre (HDF5 dataset ``dataset``, NaN where nothing was hit),
    turned here into z-depth. RGB: ``scene_cam_XX_final_preview/frame.IIII.tonemap.jpg``, or else the HDR
    ``scene_cam_XX_final_hdf5/frame.IIII.color.hdf5`` tone-mapped as the Hypersim tools do
    (90th-percentile brightness to 0.8, gamma 1/2.2).

    The camera is per scene: many scenes use tilt-shift lenses, whose images are pinhole images with the
    principal point far from the centre (and other focal lengths) in a frame turned from the camera's.
    ml-hypersim gives each scene's ``M_cam_from_uv`` in ``contrib/mikeroberts3000/metadata_camera_parameters.csv``;
    pass that file as ``camera_parameters`` or put it in the root. Scenes it does not list (all of them
    without the file, with a warning) get the standard camera: 60 degree horizontal field of view, centred
    (fx = fy = W / 2 / tan 30deg, 886.81 at 1024x768)."""

    layout = "ai_*/images/scene_cam_*_geometry_hdf5/frame.*.depth_meters.hdf5 beside scene_cam_*_final_preview or _final_hdf5"
    FOV_X = math.radians(60.0)
    CAMERA_PARAMETERS = "metadata_camera_parameters.csv"

    def __init__(self, root=None, *args, camera_parameters=None, **kw):
        self.camera_parameters = Path(camera_parameters) if camera_parameters is not None else None
        super().__init__(root, *args, **kw)

    def find(self):
        csv_path = self.camera_parameters or self.root / self.CAMERA_PARAMETERS
        if self.camera_parameters is not None or csv_path.is_file():
            self.cameras = read_hypersim_cameras(csv_path)
        else:
            self.cameras = {}
            log.warning("Hypersim: no %s under %s (ml-hypersim, contrib/mikeroberts3000): every scene is read with "
                        "the standard 60 degree camera, so the tilt-shift scenes get wrong depth and intrinsics",
                        self.CAMERA_PARAMETERS, self.root)
        records = []
        for d in sorted(self.root.glob("ai_*/images/scene_cam_*_geometry_hdf5/frame.*.depth_meters.hdf5")):
            cam = d.parent.name[: -len("_geometry_hdf5")]
            frame = d.name[: -len(".depth_meters.hdf5")]
            jpg = d.parent.parent / f"{cam}_final_preview" / f"{frame}.tonemap.jpg"
            hdr = d.parent.parent / f"{cam}_final_hdf5" / f"{frame}.color.hdf5"
            rgb = jpg if jpg.is_file() else hdr if hdr.is_file() else None
            if rgb is None:
                _unpaired(self.unpaired, f"{d}: neither {jpg.name} nor {hdr.name} exists")
            else:
                records.append((d, rgb))
        for folder, suffix in (("final_preview", ".tonemap.jpg"), ("final_hdf5", ".color.hdf5")):   # images without depth
            for p in sorted(self.root.glob(f"ai_*/images/scene_cam_*_{folder}/frame.*{suffix}")):
                d = p.parent.parent / f"{p.parent.name[: -len(folder)]}geometry_hdf5" / f"{p.name[: -len(suffix)]}.depth_meters.hdf5"
                if not d.is_file():
                    _unpaired(self.unpaired, f"{p}: its depth {d} is missing")
        unlisted = sorted({d.parents[2].name for d, _ in records} - set(self.cameras))
        if unlisted and (self.cameras or self.camera_parameters is not None or csv_path.is_file()):
            log.warning("Hypersim: %d scenes are not in %s and get the standard camera: %s",
                        len(unlisted), csv_path, ", ".join(unlisted))
        return records

    def load(self, record):
        dist_path, rgb_path = record
        dist = _read_depth(dist_path)
        H, W = dist.shape
        M = self.cameras.get(dist_path.parents[2].name)
        if M is None:
            t = math.tan(self.FOV_X / 2)
            M = np.diag([t, t * H / W, -1.0])
        K, z_per_distance = hypersim_camera(M, H, W)
        if rgb_path.suffix == ".jpg":
            rgb = _read_rgb(rgb_path)
        else:   # the tools expose for the pixels that hit geometry (render_entity_id != -1), when that file is there
            ids = dist_path.with_name(dist_path.name.replace(".depth_meters.hdf5", ".render_entity_id.hdf5"))
            rgb = tonemap_hypersim(_read_hdf5(rgb_path), _read_hdf5(ids) != -1 if ids.is_file() else None)
        return rgb, (dist * z_per_distance).astype(np.float32), K


def read_hypersim_cameras(path: Path) -> dict[str, np.ndarray]:
    """``{scene name: M_cam_from_uv [3, 3]}`` from ml-hypersim's ``metadata_camera_parameters.csv``."""
    import csv

    names = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cameras = {row["scene_name"]: np.array([float(row[n]) for n in names]).reshape(3, 3) for row in rows}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read the Hypersim camera parameters {path}: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: expected the columns scene_name and {', '.join(names)} with numbers "
                         f"({type(e).__name__}: {e})") from None
    for scene, M in cameras.items():
        if not (np.isfinite(M).all() and abs(np.linalg.det(M)) > 1e-12):
            raise InputError(f"{path}: M_cam_from_uv of {scene} is not an invertible finite matrix: {M.tolist()}")
    return cameras


def hypersim_camera(M_cam_from_uv: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """``(K [3, 3], z_per_distance [H, W])`` of a Hypersim image whose scene has ``M_cam_from_uv``.

    Hypersim casts the ray of the point ``(x, y)`` of the image (pixel ``j`` spans ``[j, j + 1)``) as
    ``M (u, v, 1)``, ``u = 2 x / W - 1`` rightwards, ``v = 1 - 2 y / H`` upwards, in camera axes x right,
    y up, z backwards. In OpenCV axes (x right, y down, z forward) that is ``ray = B (x, y, 1)``, so the
    image is the pinhole ``(x, y, 1) ~ B^-1 ray = K R ray``, split into an upper-triangular ``K`` and a
    rotation ``R`` (Gram-Schmidt from the last row). The last row of ``R`` is the image plane's normal:
    z-depth is measured along it, ``z = distance * (normal . ray) / |ray|``. The standard camera has R = I.
    """
    A = np.array([[2.0 / W, 0.0, -1.0], [0.0, -2.0 / H, 1.0], [0.0, 0.0, 1.0]])   # (x, y, 1) -> (u, v, 1)
    B = np.diag([1.0, -1.0, -1.0]) @ np.asarray(M_cam_from_uv, dtype=np.float64) @ A
    P = np.linalg.inv(B)
    normal = P[2] / np.linalg.norm(P[2])
    down = P[1] - (P[1] @ normal) * normal
    down /= np.linalg.norm(down)
    right = P[0] - (P[0] @ normal) * normal - (P[0] @ down) * down
    right /= np.linalg.norm(right)
    K = np.triu(P @ np.stack([right, down, normal]).T)     # below the diagonal: zeros up to rounding
    K /= K[2, 2]
    if abs(K[0, 1]) < 1e-9 * abs(K[0, 0]):   # no skew but rounding's: an exact 0, as the samplers require
        K[0, 1] = 0.0
    x, y = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([x, y, np.ones_like(x)], -1) @ B.T
    return K, (rays @ normal) / np.linalg.norm(rays, axis=-1)


def _read_hdf5(path: Path) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["dataset"][()], dtype=np.float32)
    except (OSError, KeyError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def tonemap_hypersim(hdr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """HDR linear RGB -> uint8 as ml-hypersim's scene_generate_images_tonemap.py: scale so the 90th-percentile
    brightness of the ``valid`` pixels (all when None; scale 1 when none is) maps to 0.8 after gamma 1/2.2."""
    hdr = np.nan_to_num(hdr.astype(np.float64), nan=0.0, posinf=0.0)
    brightness = 0.3 * hdr[..., 0] + 0.59 * hdr[..., 1] + 0.11 * hdr[..., 2]
    if valid is not None and valid.shape != brightness.shape:
        raise DataError(f"render_entity_id is {valid.shape} but the colour image is {brightness.shape}")
    chosen = brightness if valid is None else brightness[valid]
    if chosen.size == 0:
        scale = 1.0
    else:
        p90 = np.percentile(chosen, 90)
        scale = 0.8**2.2 / p90 if p90 >= 1e-4 else 0.0
    return (np.clip((scale * np.clip(hdr, 0, None)) ** (1 / 2.2), 0, 1) * 255).round().astype(np.uint8)


# -- Virtual KITTI 2 --------------------------------------------------------------------------------
class VirtualKITTI2(DepthDataset):
    """Virtual KITTI 2: ``SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg`` with
    ``.../frames/depth/Camera_N/depth_NNNNN.png`` (16-bit, centimetres of z-depth; 65535 = 655.35 m is
    the far clip, i.e. sky, so invalid). Intrinsics per frame and camera from ``SceneXX/<variation>/intrinsic.txt``
    (``frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]``). The released archives (``vkitti_2.0.3_rgb``,
    ``_depth``, ``_textgt``) may sit side by side under the root or be merged."""

    layout = "Scene*/<variation>/frames/{rgb,depth}/Camera_*/{rgb,depth}_*.{jpg,png} and Scene*/<variation>/intrinsic.txt"
    max_depth = 655.0

    def find(self):
        key = re.compile(r"(Scene\d+)/([^/]+)/frames/(rgb|depth)/Camera_(\d+)/(?:rgb|depth)_(\d+)\.(?:jpg|png)$")
        found: dict[tuple, dict] = {}
        for p in sorted(self.root.rglob("*_*.*")):
            m = key.search(p.as_posix())
            if m:
                found.setdefault((m[1], m[2], int(m[4]), int(m[5])), {})[m[3]] = p
        self._intrinsics: dict[tuple, Path] = {}
        for p in sorted(self.root.rglob("intrinsic.txt")):   # archives side by side may each hold a copy
            k = (p.parent.parent.name, p.parent.name)
            if k in self._intrinsics and self._intrinsics[k].read_bytes() != p.read_bytes():
                raise DataError(f"two different intrinsic.txt for {k[0]}/{k[1]}: {self._intrinsics[k]} and {p}; "
                                "keep the one of the release the depth maps come from")
            self._intrinsics.setdefault(k, p)
        records = []
        for k, v in sorted(found.items()):
            if "rgb" in v and "depth" in v:
                records.append((v["rgb"], v["depth"], k))
            else:
                _unpaired(self.unpaired, f"{next(iter(v.values()))}: no {'depth' if 'rgb' in v else 'rgb'} partner")
        return records

    def load(self, record):
        rgb_path, depth_path, (scene, variation, cam, frame) = record
        raw = _read_png16(depth_path)
        depth = raw.astype(np.float32) / 100.0
        depth[raw == 65535] = 0.0
        K_file = self._intrinsics.get((scene, variation))
        if K_file is None:
            raise DataError(f"no intrinsic.txt for {scene}/{variation} under {self.root}")
        return _read_rgb(rgb_path), depth, self._camera(K_file, frame, cam)

    @staticmethod
    def _camera(path: Path, frame: int, cam: int) -> np.ndarray:
        try:
            rows = [[float(x) for x in line.split()] for line in path.read_text().splitlines()[1:] if line.strip()]
        except (OSError, ValueError) as e:
            raise DataError(f"cannot parse {path}: {e}") from e
        for n, row in enumerate(rows, 2):
            if len(row) < 6:
                raise DataError(f"{path}:{n}: expected 'frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]', "
                                f"got {len(row)} values")
            if row[0] == frame and row[1] == cam:
                fx, fy, cx, cy = row[2:6]
                return _pinhole(fx, cx, cy, fy)
        raise DataError(f"{path} has no intrinsics for frame {frame}, camera {cam}")


# -- TartanAir --------------------------------------------------------------------------------------
class TartanAir(DepthDataset):
    """TartanAir: ``ENV/{Easy,Hard}/PNNN/image_left/NNNNNN_left.png`` with
    ``depth_left/NNNNNN_left_depth.npy`` (z-depth in metres; the sky holds a large placeholder,
    masked beyond 1000 m). One pinhole for all frames: fx = fy = 320, cx = 320, cy = 240 at 640x480."""

    layout = "<env>/<Easy|Hard>/P*/image_left/*_left.png and depth_left/*_left_depth.npy"
    max_depth = 1000.0

    def find(self):
        return _pair(self.root, "*/*/P*/image_left/*_left.png",
                     lambda p: p.parent.parent / "depth_left" / f"{p.stem}_depth.npy",
                     others="*/*/P*/depth_left/*_left_depth.npy", unpaired=self.unpaired)

    def load(self, record):
        rgb = _read_rgb(record[0])
        H, W = rgb.shape[:2]
        return rgb, _read_depth(record[1]), _pinhole(320.0 * W / 640, W / 2, H / 2, 320.0 * H / 480)


# -- IRS --------------------------------------------------------------------------------------------
class IRS(DepthDataset):
    """IRS (indoor robotics stereo): ``<Category>/<Scene>/l_NNNNN.png`` with the left disparity
    ``d_NNNNN.exr`` (float, pixels) -> depth = baseline * focal / disparity with the released rig's
    baseline 0.1 m and focal 480 px at 960x540 (principal point at the centre)."""

    layout = "<Category>/<Scene>/l_*.png with d_*.exr"
    BASELINE, FOCAL = 0.1, 480.0

    def find(self):
        return _pair(self.root, "**/l_*.png", lambda p: p.with_name("d_" + p.stem[2:] + ".exr"), others="**/d_*.exr",
                     unpaired=self.unpaired)

    def load(self, record):
        rgb = _read_rgb(record[0])
        H, W = rgb.shape[:2]
        f = self.FOCAL * W / 960
        return rgb, disparity_to_depth(_read_depth(record[1]), f * self.BASELINE), _pinhole(f, W / 2, H / 2)


def disparity_to_depth(disp: np.ndarray, focal_times_baseline: float) -> np.ndarray:
    """z = f * b / d; non-positive or non-finite disparity -> 0 (invalid)."""
    ok = np.isfinite(disp) & (disp > 0)
    return np.where(ok, focal_times_baseline / np.where(ok, disp, 1.0), 0.0).astype(np.float32)


# -- UrbanSyn ---------------------------------------------------------------------------------------
class UrbanSyn(DepthDataset):
    """UrbanSyn: ``rgb/rgb_NNNN.png`` with ``depth/depth_NNNN.exr`` (channel Y, in units of 1e5 m,
    so metres = value * 1e5) and one ``camera_metadata.json``. The sky is invalid: the pixels of
    class 10 (Cityscapes' train id of sky; or its colour, 70 130 180, in a colour-coded map) in the
    semantic map ``ss/ss_NNNN.png`` where it is there, and anything beyond 1000 m. ``camera_metadata.json`` has
    ``parameters[0].Camera`` with ``focalLength_mm``, ``sensorWidth_mm``, ``sensorHeight_mm``
    (fx = focal / sensor width * W; principal point at the centre)."""

    layout = "rgb/rgb_*.png, depth/depth_*.exr, camera_metadata.json (and ss/ss_*.png for the sky, if there)"
    max_depth = 1000.0
    SCALE = 1e5
    SKY, SKY_COLOUR = 10, (70, 130, 180)   # Cityscapes' sky: train id and palette colour

    def find(self):
        self._meta = self.root / "camera_metadata.json"
        return _pair(self.root, "rgb/rgb_*.png", lambda p: self.root / "depth" / f"depth_{p.stem[4:]}.exr",
                     others="depth/depth_*.exr", unpaired=self.unpaired)

    def load(self, record):
        rgb = _read_rgb(record[0])
        H, W = rgb.shape[:2]
        try:
            cam = json.loads(self._meta.read_text())["parameters"][0]["Camera"]
            focal, sw, sh = float(cam["focalLength_mm"]), float(cam["sensorWidth_mm"]), float(cam["sensorHeight_mm"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise DataError(f"cannot read the camera from {self._meta}: {e!r}") from e
        if not (focal > 0 and sw > 0 and sh > 0 and math.isfinite(focal + sw + sh)):
            raise DataError(f"{self._meta}: focalLength_mm, sensorWidth_mm and sensorHeight_mm must be positive, "
                            f"got {focal}, {sw}, {sh}")
        fx, fy = focal / sw * W, focal / sh * H
        depth = _read_depth(record[1]) * self.SCALE
        classes = self.root / "ss" / f"ss_{record[0].stem[4:]}.png"
        if classes.is_file():
            from PIL import Image

            with Image.open(classes) as im:
                ids = np.asarray(im)   # (a palette image: its indices, the class ids)
            if ids.shape[:2] != depth.shape:
                raise DataError(f"{classes} is {ids.shape[1]}x{ids.shape[0]}, its depth map "
                                f"{depth.shape[1]}x{depth.shape[0]}")
            if ids.ndim == 2:
                sky = ids == self.SKY
            elif (ids[..., :3] == ids[..., :1]).all():   # an id image: the same id in every channel
                sky = ids[..., 0] == self.SKY
            else:   # colour-coded with Cityscapes' palette
                sky = (ids[..., :3] == self.SKY_COLOUR).all(-1)
            depth = np.where(sky, 0.0, depth).astype(np.float32)
        return rgb, depth, _pinhole(fx, W / 2, H / 2, fy)


# -- UnrealStereo4K ---------------------------------------------------------------------------------
class UnrealStereo4K(DepthDataset):
    """UnrealStereo4K (SMD-Nets): ``NNNNN/Image0/NNNNN.png`` with the left disparity
    ``Disp0/NNNNN.npy`` (float, pixels; 0 or NaN invalid) and both cameras in
    ``Extrinsics0/NNNNN.txt`` and ``Extrinsics1/NNNNN.txt``: the 3x3 intrinsics, then the 3x4 [R|t].
    depth = fx * baseline / disparity with the baseline the distance between the two camera centres
    (0.2 m indoors, 0.5 m outdoors in the released scenes). The sky is masked beyond 1000 m. The
    camera files describe the released 3840x2160 images: resized images need scaled intrinsics."""

    layout = "<scene>/Image0/*.png, Disp0/*.npy, Extrinsics0/*.txt, Extrinsics1/*.txt"
    max_depth = 1000.0

    def find(self):
        return _pair(self.root, "*/Image0/*.png", lambda p: p.parent.parent / "Disp0" / f"{p.stem}.npy",
                     others="*/Disp0/*.npy", unpaired=self.unpaired)

    def load(self, record):
        rgb_path, disp_path = record
        scene = rgb_path.parent.parent
        K, E0 = _stereo_camera(scene / "Extrinsics0" / f"{rgb_path.stem}.txt")
        _, E1 = _stereo_camera(scene / "Extrinsics1" / f"{rgb_path.stem}.txt")
        baseline = float(np.linalg.norm((E1 @ np.linalg.inv(E0))[:3, 3]))
        if not baseline > 0:
            raise DataError(f"{scene}: the two cameras of frame {rgb_path.stem} coincide (baseline 0)")
        rgb = _read_rgb(rgb_path)
        H, W = rgb.shape[:2]
        if not (0 < K[0, 2] < W and 0 < K[1, 2] < H):   # the released K is for 3840x2160 (cx 1920, cy 1080)
            raise DataError(f"{scene / 'Extrinsics0' / (rgb_path.stem + '.txt')}: principal point "
                            f"({K[0, 2]:g}, {K[1, 2]:g}) lies outside the {W}x{H} image: were the images resized "
                            "without the camera files? Scale the first two rows of the intrinsics (and the "
                            "disparities) by the same factor")
        return rgb, disparity_to_depth(_read_depth(disp_path), K[0, 0] * baseline), K


def _stereo_camera(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read camera file {path}: {e}") from e
    if values.size != 21:
        raise DataError(f"{path}: expected 9 intrinsics and 12 extrinsics values, got {values.size}")
    E = np.eye(4)
    E[:3] = values[9:].reshape(3, 4)
    return values[:9].reshape(3, 3), E


# -- procedural -------------------------------------------------------------------------------------
class ProceduralScenes(DepthDataset):
    """Scenes of :mod:`infinidepth.data.procedural`, rendered on the fly at ``render_size`` (the
    ground truth; the network image is resized from it). Frame ``k`` is scene seed ``seed_offset + k``."""

    layout = "(generated)"

    def __init__(self, scenes: int, render_size: tuple[int, int] = (768, 1024), seed_offset: int = 0, **kw):
        self.count, self.seed_offset = int(scenes), int(seed_offset)
        self.render_size = check_size(render_size, "ProceduralScenes: render_size")
        if self.count <= 0 or self.seed_offset < 0:
            raise ValueError(f"ProceduralScenes needs scenes > 0 and seed_offset >= 0, got {scenes} and {seed_offset}")
        super().__init__(None, **kw)

    def find(self):
        return list(range(self.seed_offset, self.seed_offset + self.count))

    def name_of(self, record) -> str:
        return f"procedural/{record:06d}"

    def load(self, record):
        from .procedural import generate_scene, render

        r = render(generate_scene(record), self.render_size)
        rgb = (r.rgb.numpy() * 255).round().astype(np.uint8)
        return rgb, r.depth.numpy(), r.intrinsics.numpy()


class ProceduralFiles(DepthDataset):
    """A procedural set written by ``infinidepth data render`` (layout in :mod:`infinidepth.data.procedural`)."""

    layout = "index.json and scene_*/view_*_{rgb.png,depth.exr,camera.json}"

    def find(self):
        from .procedural import FORMAT, list_rendered

        index = self.root / "index.json"
        try:
            return list_rendered(self.root)
        except FileNotFoundError as e:    # no index.json: names the folder
            raise InputError(str(e)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{index}: corrupt index, not JSON ({e})") from None
        except AttributeError:
            raise InputError(f"{index}: not a {FORMAT} index (not a JSON object)") from None
        except ValueError as e:    # names the index
            raise InputError(str(e)) from None

    def name_of(self, record) -> str:
        return str(record.relative_to(self.root))

    def load(self, record):
        from .procedural import load_view

        view = load_view(record, normals=False)      # normals are not needed: a broken normal map is no loss
        return view["rgb"], view["depth"], view["intrinsics"]


DATASETS = {
    "hypersim": Hypersim,
    "vkitti2": VirtualKITTI2,
    "tartanair": TartanAir,
    "irs": IRS,
    "urbansyn": UrbanSyn,
    "unrealstereo4k": UnrealStereo4K,
    "procedural": ProceduralFiles,
}

"""3D Gaussians and the standard 3DGS ``.ply`` layout.

A set of Gaussians: centres ``means [N, 3]``, per-axis standard deviations ``scales [N, 3]``
(linear, metres, positive), quaternions ``rotations [N, 4]`` (w, x, y, z; they need not be unit, they
are normalised where used, but must not be zero), ``opacities [N]`` in [0, 1] and spherical-harmonics
colour coefficients ``sh [N, 3, (degree + 1)^2]``, degree 0 to 3 (band 0 is the base colour:
``rgb = 0.5 + C0 * sh[..., 0]``). All five are float32 or float64 tensors of one dtype on one device,
finite; :meth:`Gaussians.validate` checks it all (on construction, and again before a render or a PLY write).

The PLY file is the one 3DGS viewers read (the layout of the original 3D Gaussian Splatting code):
binary little-endian float32 ``x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..(3 * (K - 1) - 1),
opacity, scale_0..2, rot_0..3`` with opacity stored as a logit, scales as logs, ``f_rest``
channel-major (all red coefficients, then green, then blue), normals zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

C0 = 0.28209479177387814  # the constant band-0 spherical harmonic, 1 / (2 sqrt(pi))


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * C0 + 0.5


FIELDS = ("means", "scales", "rotations", "opacities", "sh")


@dataclass
class Gaussians:
    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self):
        self.validate()

    def validate(self) -> "Gaussians":
        """Every field's type, dtype, device, shape and range (see the module docstring), or a ValueError
        naming the field and the problem. Reads the values only: no copies, nothing recorded for autograd."""
        fields = {name: getattr(self, name) for name in FIELDS}
        for name, t in fields.items():
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"Gaussians.{name} must be a tensor, got {type(t).__name__}")
            if t.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"Gaussians.{name} must be float32 or float64, got {str(t.dtype).removeprefix('torch.')}")
        for what in ("dtype", "device"):
            if len({getattr(t, what) for t in fields.values()}) > 1:
                each = ", ".join(f"{name} {str(getattr(t, what)).removeprefix('torch.')}" for name, t in fields.items())
                raise ValueError(f"Gaussians' fields must share one {what}, got {each}")
        n = self.means.shape[0] if self.means.dim() > 0 else -1
        shapes = {"means": (n, 3), "scales": (n, 3), "rotations": (n, 4), "opacities": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {list(getattr(self, name).shape)}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[1] != 3:
            raise ValueError(f"Gaussians.sh must be [N, 3, (degree + 1)^2], got {list(self.sh.shape)}")
        k = self.sh.shape[2]
        if k not in (1, 4, 9, 16):
            root = math.isqrt(k)
            if root * root == k and k > 16:
                raise ValueError(f"SH degree {root - 1} is not supported (at most 3)")
            raise ValueError(f"Gaussians.sh must be [N, 3, K] with K = (degree + 1)^2 = 1, 4, 9 or 16 (degree 0 to 3), "
                             f"got {list(self.sh.shape)}")
        with torch.no_grad():
            for name, t in fields.items():
                if not torch.isfinite(t).all():
                    raise ValueError(f"Gaussians.{name} has NaN or infinite values")
            problems = (("scales", (self.scales <= 0).any(1), "must be positive (standard deviations)"),
                        ("opacities", (self.opacities < 0) | (self.opacities > 1), "must be in [0, 1]"),
                        ("rotations", self.rotations.norm(dim=1) < 1e-12,
                         "must not be zero quaternions (any other length is fine: they are normalised)"))
            for name, bad, rule in problems:
                if bad.any():
                    i = int(bad.nonzero()[0, 0])
                    raise ValueError(f"Gaussians.{name} {rule}: Gaussian {i} has {getattr(self, name)[i].tolist()} "
                                     f"({int(bad.sum())} of {n} such)")
        return self

    @property
    def degree(self) -> int:
        return int(round(self.sh.shape[2] ** 0.5)) - 1

    def __len__(self) -> int:
        return self.means.shape[0]

    def subset(self, keep: torch.Tensor) -> "Gaussians":
        """The Gaussians where the boolean mask ``keep`` ``[N]`` is true, every field alike."""
        if keep.dtype != torch.bool or tuple(keep.shape) != (len(self),):
            raise ValueError(f"keep must be a boolean mask of shape [{len(self)}], got {keep.dtype} {list(keep.shape)}")
        return Gaussians(**{name: getattr(self, name)[keep] for name in FIELDS})


def write_ply(path, g: Gaussians) -> None:
    """The standard 3DGS PLY (see the module docstring), written atomically. The Gaussians are checked
    again first (their tensors may have been changed in place since they were made). Opacities of
    exactly 0 or 1 are stored as the logits of 1e-7 and 1 - 1e-7."""
    from plyfile import PlyData, PlyElement

    from infinidepth.io import atomic_path

    try:
        g.validate()
    except ValueError as e:
        raise ValueError(f"{path}: not written: {e}") from None
    # The file is float32: float64 values beyond its range would be written as inf (a file that
    # read_ply, like the viewers, cannot use). Scales are stored as logs, but read back as float32.
    for name in ("means", "scales", "rotations", "sh"):
        if not torch.isfinite(getattr(g, name).detach().float()).all():
            raise ValueError(f"{path}: not written: Gaussians.{name} has values beyond float32's range "
                             f"(the 3DGS PLY is float32), largest magnitude {float(getattr(g, name).abs().max()):.3g}")
    n, k = len(g), g.sh.shape[2]
    rest = [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    sh = g.sh.detach().float().cpu().numpy()
    op = g.opacities.detach().double().cpu().numpy().clip(1e-7, 1 - 1e-7)
    columns = [g.means.detach().float().cpu().numpy(), np.zeros((n, 3), np.float32), sh[:, :, 0],
               sh[:, :, 1:].reshape(n, 3 * (k - 1)), np.log(op / (1 - op))[:, None],
               np.log(g.scales.detach().double().cpu().numpy()), g.rotations.detach().float().cpu().numpy()]
    data = np.concatenate([c.astype(np.float32) for c in columns], axis=1)          # [n, len(names)], n may be 0
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp))


REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3")


def read_ply(path) -> Gaussians:
    """Gaussians from a 3DGS PLY (ours or another tool's; properties in any order, extra ones such as
    normals or colours ignored). A file of another layout is refused naming what is missing or odd."""
    from plyfile import PlyData, PlyParseError

    try:
        ply = PlyData.read(str(path))
    except PlyParseError as e:  # a truncated file, or none at all
        raise ValueError(f"{path}: not a readable PLY ({e})") from None
    elements = [e.name for e in ply.elements]
    if "vertex" not in elements:
        raise ValueError(f"{path}: not a 3DGS PLY: no 'vertex' element (it has {', '.join(elements) or 'none'})")
    v = ply["vertex"]
    names = v.data.dtype.names or ()
    odd = [k for k in names if (k.startswith("f_rest_") and not re.fullmatch(r"f_rest_(0|[1-9][0-9]*)", k))
           or (k.startswith("f_dc_") and k not in ("f_dc_0", "f_dc_1", "f_dc_2"))]
    if odd:
        raise ValueError(f"{path}: not a 3DGS PLY: odd properties {', '.join(odd)}")
    rest_index = {int(k[len("f_rest_"):]) for k in names if k.startswith("f_rest_")}
    degree = 0                                    # the smallest degree whose f_rest_0..3 ((d + 1)^2 - 1) - 1 hold them all
    while rest_index and 3 * ((degree + 1) ** 2 - 1) <= max(rest_index):
        degree += 1
    per_channel = (degree + 1) ** 2 - 1
    rest = [f"f_rest_{i}" for i in range(3 * per_channel)]
    missing = [k for k in (*REQUIRED, *rest) if k not in names]
    if missing:
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ValueError(f"{path}: not a 3DGS PLY: missing {', '.join(missing[:20])}{more}")
    col = lambda *ks: np.stack([np.asarray(v[k], np.float64) for k in ks], axis=1)  # noqa: E731
    n = len(v.data)
    sh = np.concatenate([col("f_dc_0", "f_dc_1", "f_dc_2")[:, :, None],
                         col(*rest).reshape(n, 3, per_channel) if rest else np.zeros((n, 3, 0))], axis=2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    with np.errstate(over="ignore"):  # a logit far below 0 is opacity 0; a huge log-scale is inf (then refused)
        opacities = 1 / (1 + np.exp(-np.asarray(v["opacity"], np.float64)))
        # a log-scale below float32's range (a flat Gaussian) keeps the thinnest positive scale float32 holds
        scales = np.exp(col("scale_0", "scale_1", "scale_2")).clip(np.finfo(np.float32).tiny, None)
    try:
        return Gaussians(means=t(col("x", "y", "z")), scales=t(scales), rotations=t(col("rot_0", "rot_1", "rot_2", "rot_3")),
                         opacities=t(opacities), sh=t(sh))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[N, 4]`` (w, x, y, z) -> rotation matrices ``[N, 3, 3]``."""
    q = torch.nn.functional.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def covariances(g: Gaussians) -> torch.Tensor:
    """World-space covariances ``R S S^T R^T`` ``[N, 3, 3]``."""
    R = quaternion_to_matrix(g.rotations)
    M = R * g.scales[:, None, :]
    return M @ M.transpose(1, 2)

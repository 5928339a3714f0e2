"""3D Gaussians and the standard 3DGS ``.ply`` layout.

A set of Gaussians: centres ``means [N, 3]``, per-axis standard deviations ``scales [N, 3]``
(linear, metres), unit quaternions ``rotations [N, 4]`` (w, x, y, z), ``opacities [N]`` in (0, 1) and
spherical-harmonics colour coefficients ``sh [N, 3, (degree + 1)^2]`` (band 0 is the base colour:
``rgb = 0.5 + C0 * sh[..., 0]``).

The PLY file is the one 3DGS viewers read (the layout of the original 3D Gaussian Splatting code):
binary little-endian float32 ``x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..(3 * (K - 1) - 1),
opacity, scale_0..2, rot_0..3`` with opacity stored as a logit, scales as logs, ``f_rest``
channel-major (all red coefficients, then green, then blue), normals zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C0 = 0.28209479177387814  # the constant band-0 spherical harmonic, 1 / (2 sqrt(pi))


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    return sh0 * C0 + 0.5


@dataclass
class Gaussians:
    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self):
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "scales": (n, 3), "rotations": (n, 4), "opacities": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"Gaussians.{name} must be {list(shape)}, got {list(getattr(self, name).shape)}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[1] != 3 or int(round(self.sh.shape[2] ** 0.5)) ** 2 != self.sh.shape[2]:
            raise ValueError(f"Gaussians.sh must be [N, 3, (degree + 1)^2], got {list(self.sh.shape)}")
        for name in ("means", "scales", "rotations", "opacities", "sh"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"Gaussians.{name} has NaN or infinite values")

    @property
    def degree(self) -> int:
        return int(round(self.sh.shape[2] ** 0.5)) - 1

    def __len__(self) -> int:
        return self.means.shape[0]


def write_ply(path, g: Gaussians) -> None:
    """The standard 3DGS PLY (see the module docstring), written atomically."""
    from plyfile import PlyData, PlyElement

    from infinidepth.io import atomic_path

    n, k = len(g), g.sh.shape[2]
    rest = [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    sh = g.sh.detach().float().cpu().numpy()
    op = g.opacities.detach().double().cpu().numpy().clip(1e-7, 1 - 1e-7)
    columns = [g.means.detach().float().cpu().numpy(), np.zeros((n, 3), np.float32), sh[:, :, 0],
               sh[:, :, 1:].reshape(n, -1), np.log(op / (1 - op))[:, None],
               np.log(g.scales.detach().double().cpu().numpy().clip(1e-12, None)),
               g.rotations.detach().float().cpu().numpy()]
    data = np.concatenate([c.astype(np.float32).reshape(n, -1) for c in columns], axis=1)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp))


def read_ply(path) -> Gaussians:
    """Gaussians from a 3DGS PLY (ours or another tool's)."""
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"]
    names = v.data.dtype.names
    col = lambda *ks: np.stack([np.asarray(v[k], np.float64) for k in ks], axis=1)  # noqa: E731
    rest = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k.split("_")[-1]))
    n = len(v.data)
    per_channel = len(rest) // 3
    sh = np.concatenate([col("f_dc_0", "f_dc_1", "f_dc_2")[:, :, None],
                         col(*rest).reshape(n, 3, per_channel) if rest else np.zeros((n, 3, 0))], axis=2)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    return Gaussians(means=t(col("x", "y", "z")), scales=t(np.exp(col("scale_0", "scale_1", "scale_2"))),
                     rotations=t(col("rot_0", "rot_1", "rot_2", "rot_3")),
                     opacities=t(1 / (1 + np.exp(-np.asarray(v["opacity"], np.float64)))), sh=t(sh))


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

"""Gaussians straight from sampled surface points, and camera paths for novel views.

Without a learned head, each point of the surface-area sampler becomes an isotropic Gaussian with the
image's colour, opacity 0.95, and a size from the local point spacing (0.75 of the mean distance to
its 3 nearest neighbours), so that neighbouring splats overlap into a closed surface. Because the
sampler spreads points evenly over 3D surfaces, one size rule fits near and far alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .gaussians import Gaussians, rgb_to_sh0

# a splat's standard deviation in point spacings: neighbouring splats overlap into a closed surface at any
# render size (on the bundled picture rendered at 4x the network input, 0.6 leaves 0.4-2% specks, 0.75 under 0.03%)
SPLAT_SIZE = 0.75


def point_spacing(points: torch.Tensor, neighbours: int = 3) -> torch.Tensor:
    """The local spacing of ``points [N, 3]``: each one's mean distance to its ``neighbours`` nearest
    (float64 ``[N]``, on the CPU; :func:`~infinidepth.sampling.knn_spacing`). Measured between distinct
    positions: a point given several times is one place, its copies get the spacing of that place (not 0)."""
    from infinidepth.sampling import knn_spacing

    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    if points.shape[0] <= neighbours:
        raise ValueError(f"need more than {neighbours} points to measure their spacing, got {points.shape[0]}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    places, place_of = np.unique(points.detach().double().cpu().numpy(), axis=0, return_inverse=True)
    if len(places) <= neighbours:
        raise ValueError(f"need more than {neighbours} distinct points to measure their spacing, got {len(places)} "
                         f"(of {points.shape[0]} points)")
    return torch.from_numpy(knn_spacing(places, neighbours)[place_of.reshape(-1)])


def splats_from_points(points: torch.Tensor, colors: torch.Tensor, opacity: float = 0.95, neighbours: int = 3,
                       size: float = SPLAT_SIZE) -> Gaussians:
    """``points [N, 3]`` and float ``colors [N, 3]`` in [0, 1] -> Gaussians (see the module docstring;
    the spacing as :func:`point_spacing` measures it)."""
    if points.dim() != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N, 3], got {tuple(points.shape)} and {tuple(colors.shape)}")
    if not (points.is_floating_point() and colors.is_floating_point()):
        raise ValueError(f"points and colors must be floating point (colors in [0, 1]), got {points.dtype} and {colors.dtype}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
        raise ValueError(f"neighbours must be a whole number of at least 1, got {neighbours!r}")
    if not (isinstance(size, (int, float, np.number)) and math.isfinite(size) and size > 0):
        raise ValueError(f"size must be a positive finite number (a fraction of the point spacing), got {size!r}")
    if not (isinstance(opacity, (int, float, np.number)) and 0 < opacity <= 1):
        raise ValueError(f"opacity must be in (0, 1], got {opacity!r}")
    if not torch.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
        raise ValueError(f"colors must be finite and in [0, 1], got values in [{float(colors.min())}, {float(colors.max())}]")
    spacing = point_spacing(points, neighbours)
    # positive in float32 too (distinct points closer than float32's smallest normal number stay visible specks)
    scale = (size * spacing).float().clamp_min(torch.finfo(torch.float32).tiny).to(points.device)
    n = points.shape[0]
    return Gaussians(means=points.detach().float(), scales=scale[:, None].expand(-1, 3).contiguous(),
                     rotations=torch.tensor([[1.0, 0, 0, 0]], device=points.device, dtype=torch.float32).expand(n, 4).contiguous(),
                     opacities=torch.full((n,), float(opacity), device=points.device, dtype=torch.float32),
                     sh=rgb_to_sh0(colors.detach().float())[:, :, None])


def camera_path(kind: str, frames: int, target_depth: float, radius: float) -> list[np.ndarray]:
    """World-to-camera matrices ``[4, 4]`` around the source camera (at the origin, looking +z); the
    first is the source camera itself, the path a loop of ``frames`` steps:

    ``orbit``: the camera circles in its image plane (radius ``radius``), always looking at the point
    ``target_depth`` ahead; ``swing``: it slides right, back, left and back by ``radius`` (``radius *
    sin(2 pi i / frames)``), looking at the same point. A two-frame swing is the source and the full
    move to the right (a full period sampled twice would be the source twice: sin 0 = sin pi)."""
    if kind not in ("orbit", "swing"):
        raise ValueError(f"camera path must be 'orbit' or 'swing', got {kind!r}")
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames <= 0:
        raise ValueError(f"frames must be a positive whole number, got {frames!r}")
    for name, value in (("radius", radius), ("target depth", target_depth)):
        if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    target = np.array([0.0, 0.0, target_depth])
    step = 2 * math.pi / frames if kind == "orbit" or frames != 2 else math.pi / 2
    out = []
    with np.errstate(all="ignore"):           # (ranges too far apart for float64 are refused below)
        for i in range(frames):
            t = step * i
            eye = radius * (np.array([math.cos(t) - 1, math.sin(t), 0.0]) if kind == "orbit" else np.array([math.sin(t), 0, 0]))
            f = target - eye
            f /= np.linalg.norm(f)
            r = np.cross(f, np.array([0.0, -1.0, 0.0]))   # camera y is down: "up" is -y
            r /= np.linalg.norm(r)
            d = np.cross(f, r)
            c2w = np.eye(4)
            c2w[:3, :3] = np.stack([r, d, f], axis=1)
            c2w[:3, 3] = eye
            if not np.isfinite(c2w).all():
                raise ValueError(f"radius {radius!r} and target depth {target_depth!r} are too far apart for a camera path")
            out.append(np.linalg.inv(c2w))
    return out

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


def splats_from_points(points: torch.Tensor, colors: torch.Tensor, opacity: float = 0.95, neighbours: int = 3,
                       size: float = 0.75) -> Gaussians:
    """``points [N, 3]`` and ``colors [N, 3]`` in [0, 1] -> Gaussians (see the module docstring)."""
    from scipy.spatial import cKDTree

    if points.dim() != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(f"points and colors must both be [N, 3], got {tuple(points.shape)} and {tuple(colors.shape)}")
    if points.shape[0] <= neighbours:
        raise ValueError(f"need more than {neighbours} points to size the splats, got {points.shape[0]}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    p = points.detach().double().cpu().numpy()
    dist, _ = cKDTree(p).query(p, k=neighbours + 1)
    spacing = torch.from_numpy(dist[:, 1:].mean(1)).to(points)
    scale = (size * spacing).clamp_min(1e-6)[:, None].expand(-1, 3).contiguous()
    n = points.shape[0]
    return Gaussians(means=points.detach().float(), scales=scale.float(),
                     rotations=torch.tensor([[1.0, 0, 0, 0]], device=points.device).expand(n, 4).contiguous(),
                     opacities=torch.full((n,), opacity, device=points.device),
                     sh=rgb_to_sh0(colors.detach().float().clamp(0, 1))[:, :, None])


def camera_path(kind: str, frames: int, target_depth: float, radius: float) -> list[np.ndarray]:
    """World-to-camera matrices ``[4, 4]`` around the source camera (at the origin, looking +z):

    ``orbit``: the camera circles in its image plane (radius ``radius``), always looking at the point
    ``target_depth`` ahead; ``swing``: it slides left and right by ``radius``, looking at the same point."""
    if kind not in ("orbit", "swing"):
        raise ValueError(f"camera path must be 'orbit' or 'swing', got {kind!r}")
    if frames <= 0 or not radius > 0 or not target_depth > 0:
        raise ValueError("frames, radius and target depth must be positive")
    target = np.array([0.0, 0.0, target_depth])
    out = []
    for i in range(frames):
        t = 2 * math.pi * i / frames
        eye = radius * (np.array([math.cos(t) - 1, math.sin(t), 0.0]) if kind == "orbit" else np.array([math.sin(t), 0, 0]))
        f = target - eye
        f /= np.linalg.norm(f)
        r = np.cross(f, np.array([0.0, -1.0, 0.0]))   # camera y is down: "up" is -y
        r /= np.linalg.norm(r)
        d = np.cross(f, r)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([r, d, f], axis=1)
        c2w[:3, 3] = eye
        out.append(np.linalg.inv(c2w))
    return out

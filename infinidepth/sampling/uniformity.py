"""How evenly do points cover the surfaces? Two measures (DESIGN.md section 3).

* :func:`uniformity`: spread of the local point spacing in 3D. For every point the mean distance to
  its ``k`` nearest neighbours (a k-d tree, scipy's ``cKDTree``); reported as the coefficient of
  variation over all points (lower is more uniform) and the 90th / 10th percentile ratio.
* :func:`hole_fraction`: the points splatted, one pixel each, into a camera moved sideways by
  ``baseline`` (same intrinsics and orientation): the fraction of target pixels that receive no
  point. ``target_mask`` says which pixels of the moved view see surface the points stand for
  (an analytic scene knows this exactly); without it every pixel counts.
"""

from __future__ import annotations

import numpy as np
import torch


def _points(points) -> np.ndarray:
    p = points.detach().cpu().double().numpy() if isinstance(points, torch.Tensor) else np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points contain NaN or infinite values")
    return p


def knn_spacing(points, k: int = 8) -> np.ndarray:
    """Mean distance of each point to its ``k`` nearest other points ``[N]``."""
    from scipy.spatial import cKDTree

    p = _points(points)
    if k < 1 or len(p) <= k:
        raise ValueError(f"need k >= 1 and more than k points, got k={k} with {len(p)} points")
    dist, _ = cKDTree(p).query(p, k=k + 1, workers=-1)  # the first neighbour is the point itself; every core
    return dist[:, 1:].mean(axis=1)


def uniformity(points, k: int = 8) -> dict:
    """``{"knn_cv", "knn_p90_p10", "knn_mean", "points"}`` of the k-NN spacing (see the module doc)."""
    s = knn_spacing(points, k)
    p10, p90 = np.percentile(s, [10, 90])
    return {"knn_cv": float(s.std() / s.mean()), "knn_p90_p10": float(p90 / max(p10, 1e-300)),
            "knn_mean": float(s.mean()), "points": int(len(s))}


def hole_fraction(points, intrinsics, size: tuple[int, int], baseline: float, target_mask=None) -> float:
    """Fraction of target pixels left empty when camera-frame ``points`` ``[N, 3]`` are projected into
    the camera moved by ``baseline`` along its x axis (``intrinsics`` ``[3, 3]`` in pixels of ``size``)."""
    from .camera import check_intrinsics, check_size

    p = _points(points)
    H, W = check_size(size, "size")
    if not np.isfinite(baseline):
        raise ValueError(f"baseline must be finite, got {baseline}")
    K = check_intrinsics(intrinsics, 1, dtype=torch.float64)[0].numpy()
    x, y, z = p[:, 0] - baseline, p[:, 1], p[:, 2]
    front = z > 0
    u = K[0, 0] * x[front] / z[front] + K[0, 2]
    v = K[1, 1] * y[front] / z[front] + K[1, 2]
    col, row = np.floor(u), np.floor(v)
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    filled = np.zeros((H, W), bool)
    filled[row[inside].astype(np.int64), col[inside].astype(np.int64)] = True
    target = np.ones((H, W), bool) if target_mask is None else np.asarray(target_mask, bool)
    if target.shape != (H, W):
        raise ValueError(f"target_mask must have shape {(H, W)}, got {target.shape}")
    if not target.any():
        raise ValueError("target_mask selects no pixel")
    return float(1.0 - (filled & target).sum() / target.sum())

"""Pinhole cameras for the sampler: checked intrinsics, viewing rays, back-projection.

Intrinsics are ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the grid they describe, with
pixel ``(i, j)``'s centre at ``(u, v) = (j + 0.5, i + 0.5)`` (as :func:`backproject` below uses them).
A normalised query ``(y, x)`` (ops/coords.py) is at ``u = (x + 1) / 2 * W``, ``v = (y + 1) / 2 * H``.
Camera frame: x right, y down, z forward; depth is z.
"""

from __future__ import annotations

import operator

import torch


def _real_tensor(values, expected: str) -> torch.Tensor:
    """``values`` (a tensor, array or nested lists of real numbers) as a float64 tensor; a TypeError
    saying what was ``expected`` for anything else (None, strings, ragged lists, booleans, complex numbers,
    whose imaginary part torch.as_tensor would drop)."""
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{expected} real numbers, got {type(values).__name__}"
                        + (f" of {t.dtype}" if t is not None else ""))
    return t.to(torch.float64)


def check_intrinsics(intrinsics, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[3, 3]`` or ``[B, 3, 3]`` (tensor or nested lists) -> ``[B, 3, 3]``, or a clear error."""
    K = _real_tensor(intrinsics, "intrinsics must be [3, 3] or [B, 3, 3]")
    if K.dim() == 2:
        K = K.expand(batch, 3, 3) if K.shape == (3, 3) else K
    if K.dim() != 3 or K.shape[1:] != (3, 3):
        raise ValueError(f"intrinsics must be [3, 3] or [B, 3, 3], got {tuple(K.shape)}")
    if K.shape[0] != batch:
        raise ValueError(f"intrinsics are given for {K.shape[0]} images, the batch has {batch}")
    if not torch.isfinite(K).all():
        raise ValueError("intrinsics contain NaN or infinite values")
    fx, fy = K[:, 0, 0], K[:, 1, 1]
    if (fx <= 0).any() or (fy <= 0).any():
        raise ValueError(f"focal lengths must be positive, got fx={fx.tolist()}, fy={fy.tolist()}")
    # beyond these, fx * fy under- or overflows in float32 (the sampler's area weights divide by it)
    if (torch.minimum(fx, fy) < 1e-3).any() or (torch.maximum(fx, fy) > 1e9).any():
        raise ValueError(f"focal lengths must be within [1e-3, 1e9] pixels, got fx={fx.tolist()}, fy={fy.tolist()}")
    zero = torch.stack([K[:, 0, 1], K[:, 1, 0], K[:, 2, 0], K[:, 2, 1]])
    if zero.abs().max() > 0 or (K[:, 2, 2] != 1).any():
        raise ValueError("intrinsics must have the form [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
    return K.to(device=device, dtype=dtype)


def scale_intrinsics(K: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """The same camera described on a grid of another resolution (pixel centres convention above).

    ``K`` ``[3, 3]`` or ``[B, 3, 3]`` (a tensor, array or nested lists; integer entries are promoted
    to float64, since the scaled focal lengths and centres are fractional); sizes are ``(H, W)``."""
    from_size, to_size = check_size(from_size, "from_size"), check_size(to_size, "to_size")
    K = torch.as_tensor(K)
    if not K.is_floating_point():
        K = K.to(torch.float64)
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [3, 3] or [B, 3, 3], got {tuple(K.shape)}")
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    S = torch.tensor([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], dtype=K.dtype, device=K.device)
    return S @ K


def check_size(size, what: str = "size") -> tuple[int, int]:
    """``(height, width)``: two positive whole numbers (ints, NumPy ints, 0-d integer tensors), or a
    ValueError naming ``what``. Floats are refused, not truncated: 2.7 is not a size. The one size
    check of the package: images, render targets, output grids."""
    try:
        h, w = (operator.index(s) for s in size)
        ok = h > 0 and w > 0 and not any(isinstance(s, bool) for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be (height, width), two positive whole numbers, got {size!r}")
    return h, w


def rays(coords: torch.Tensor, K: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Camera-frame rays with z = 1 through normalised ``coords`` ``[B, N, 2]`` -> ``[B, N, 3]``.
    ``K`` ``[3, 3]`` or ``[B, 3, 3]``, checked like every camera here (a zero focal length, skew or
    intrinsics for another batch size are refused, not broadcast into wrong points)."""
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape [B, N, 2], got {tuple(coords.shape)}")
    H, W = size
    u = (coords[..., 1] + 1) * (W / 2)
    v = (coords[..., 0] + 1) * (H / 2)
    K = check_intrinsics(K, coords.shape[0], coords.device, coords.dtype)
    x = (u - K[:, None, 0, 2]) / K[:, None, 0, 0]
    y = (v - K[:, None, 1, 2]) / K[:, None, 1, 1]
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def backproject(depth: torch.Tensor, coords: torch.Tensor, K: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Camera-frame points ``[B, N, 3]`` of z-depth ``[B, N]`` at normalised ``coords`` ``[B, N, 2]``."""
    if depth.shape != coords.shape[:-1]:
        raise ValueError(f"depth {tuple(depth.shape)} must be [B, N] for coords {tuple(coords.shape)}")
    return rays(coords, K, size) * depth[..., None]


def check_camera_to_world(camera_to_world, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[4, 4]`` or ``[B, 4, 4]`` finite transforms -> ``[B, 4, 4]``, or a clear error."""
    T = _real_tensor(camera_to_world, f"camera_to_world must be finite [{batch}, 4, 4] or [4, 4]").to(device, dtype)
    if T.shape == (4, 4):
        T = T.expand(batch, 4, 4)
    if T.shape != (batch, 4, 4) or not torch.isfinite(T).all():
        raise ValueError(f"camera_to_world must be finite [{batch}, 4, 4] or [4, 4], got {tuple(T.shape)}")
    return T


def to_world(points: torch.Tensor, camera_to_world: torch.Tensor | None) -> torch.Tensor:
    """Apply ``[B, 4, 4]`` (or ``[4, 4]``) camera-to-world transforms to ``[B, N, 3]`` points."""
    if camera_to_world is None:
        return points
    T = check_camera_to_world(camera_to_world, points.shape[0], points.device, points.dtype)
    return points @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]

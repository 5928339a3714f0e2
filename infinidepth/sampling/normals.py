"""Normals of the back-projected depth field, from the field's exact derivative.

With ``r(u, v) = ((u - cx) / fx, (v - cy) / fy, 1)`` the ray of pixel position ``(u, v)`` and ``d``
the z-depth, the surface is ``P = d r``; its tangents are

    dP/du = d_u r + d (1/fx, 0, 0),    dP/dv = d_v r + d (0, 1/fy, 0),

and the normal is their cross product, turned to face the camera. ``d_u``, ``d_v`` come from
``implicit_decode(..., with_grad=True)`` (derivatives in normalised units, times 2/W and 2/H), so the
normals are those of the field itself, not of finite differences of a grid.
"""

from __future__ import annotations

import torch

from infinidepth.ops import grid_coords

from .camera import check_intrinsics, rays


def _as_map(t: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a tensor [B, {channels}, H, W], got {type(t).__name__}")
    if t.dim() == 3 and channels == 1:
        t = t[:, None]
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(f"{what} must have shape [B, {channels}, H, W], got {tuple(t.shape)}")
    return t


def surface_normals(depth: torch.Tensor, grad: torch.Tensor, intrinsics) -> torch.Tensor:
    """Unit normals ``[B, 3, H, W]`` (camera frame, facing the camera) of a dense depth map.

    ``depth`` ``[B, 1, H, W]`` (z-depth), ``grad`` ``[B, 2, H, W]`` its derivative with respect to the
    normalised ``(y, x)`` at the pixel centres, ``intrinsics`` in pixels of this ``H x W`` grid.
    Pixels with depth <= 0 (no surface) get a zero normal. Computed (and returned) in float32 or
    wider: 16-bit inputs are promoted.
    """
    depth = _as_map(depth, 1, "depth")
    grad = _as_map(grad, 2, "grad")
    B, _, H, W = depth.shape
    if grad.shape != (B, 2, H, W):
        raise ValueError(f"grad must have shape {(B, 2, H, W)} to match depth, got {tuple(grad.shape)}")
    if not torch.isfinite(depth).all() or not torch.isfinite(grad).all():
        raise ValueError("depth or its gradient contains NaN or infinite values")
    # at least float32: in 16 bits the pixel centres and rays of a few hundred pixels are too coarse
    # (float16 normals were off by 0.4 at 640 pixels wide), and focal lengths above 65504 overflow
    dtype = torch.promote_types(depth.dtype, torch.float32)
    K = check_intrinsics(intrinsics, B, depth.device, dtype)
    r = rays(grid_coords(H, W, B, depth.device).to(dtype), K, (H, W))  # [B, HW, 3]
    d = depth.to(dtype).reshape(B, -1, 1)
    d_u = grad[:, 1].to(dtype).reshape(B, -1, 1) * (2.0 / W)
    d_v = grad[:, 0].to(dtype).reshape(B, -1, 1) * (2.0 / H)
    ex = torch.zeros_like(r)
    ex[..., 0] = 1 / K[:, None, 0, 0]
    ey = torch.zeros_like(r)
    ey[..., 1] = 1 / K[:, None, 1, 1]
    n = torch.cross(d_u * r + d * ex, d_v * r + d * ey, dim=-1)
    n = torch.where((n * r).sum(-1, keepdim=True) > 0, -n, n)  # face the camera (which sits at the origin)
    length = n.norm(dim=-1, keepdim=True)
    n = torch.where((d > 0) & (length > 0), n / length.clamp_min(torch.finfo(n.dtype).tiny), torch.zeros_like(n))
    return n.transpose(1, 2).reshape(B, 3, H, W)

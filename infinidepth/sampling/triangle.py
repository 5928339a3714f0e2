"""The released InfiniDepth triangle-area sampler, reproduced in plain PyTorch for comparison.

Behaviour of zju3dv/InfiniDepth's ``make_3d_uniform_coord_triangle`` (read, not copied): the depth
map is meshed with two triangles per 2x2 block of pixels, vertices back-projected at the pixel
centres; triangles are pruned when they cross a depth discontinuity (max/min depth ratio above a
threshold that grows from ``depth_ratio`` at 1 m to ``depth_ratio_far`` at 100 m, log-linearly) or
reach beyond ``max_depth`` (the release's far-plane cut, 90); the survivors' 3D areas weight them.

* deterministic (the release's default): with ``n`` at most the number of triangles, the centroids
  of the ``n`` largest; otherwise every centroid plus ``n - F`` extra points shared out in proportion
  to the square root of the area (floors, then the largest remainders), the k-th extra point of a
  triangle placed at the k-th point of a fixed barycentric lattice template;
* random: triangles drawn with probability proportional to area, a uniform point in each.

Returns normalised ``(y, x)`` query coordinates like the other samplers.
"""

from __future__ import annotations

import math

import torch

from infinidepth.ops.inverse_cdf import check_sample_count, resolve_seed

from .camera import check_intrinsics
from .normals import _as_map

_TEMPLATE_SIZE = 2000
_TEMPLATE_LEVELS = 50


def _barycentric_template() -> torch.Tensor:
    """Lattice points (a, b, c) / m, m = 1, 2, ..., in the release's order, centroid-like ones skipped."""
    points = []
    for m in range(1, _TEMPLATE_LEVELS + 1):
        for a in range(m + 1):
            for b in range(m + 1 - a):
                w = (a / m, b / m, (m - a - b) / m)
                if abs(w[0] - 1 / 3) < 0.01 and abs(w[1] - 1 / 3) < 0.01:
                    continue
                points.append(w)
                if len(points) == _TEMPLATE_SIZE:
                    return torch.tensor(points, dtype=torch.float64)
    return torch.tensor(points, dtype=torch.float64)


def _triangles(H: int, W: int, device) -> torch.Tensor:
    """Vertex indices ``[F, 3]``: per 2x2 block (top-left, bottom-left, top-right) and
    (bottom-right, top-right, bottom-left)."""
    idx = torch.arange(H * W, device=device).reshape(H, W)
    tl, bl, tr, br = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    return torch.cat([torch.stack([tl, bl, tr], -1).reshape(-1, 3), torch.stack([br, tr, bl], -1).reshape(-1, 3)])


def _sample_one(depth: torch.Tensor, K: torch.Tensor, n: int, depth_ratio, depth_ratio_far, max_depth, deterministic, generator):
    H, W = depth.shape
    dev = depth.device
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float64) + 0.5,
                          torch.arange(W, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    z = depth.double()
    verts = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)
    faces = _triangles(H, W, dev)
    zs = verts[faces, 2]
    zmin, zmax = zs.min(dim=1).values, zs.max(dim=1).values
    alpha = (torch.log10(zs.mean(dim=1).clamp(min=1.0)) / 2).clamp(0, 1)
    keep = (zmin > 0) & (zmax / zmin.clamp(min=1e-9) < depth_ratio + (depth_ratio_far - depth_ratio) * alpha)
    if max_depth is not None:
        keep &= zmax < max_depth
    faces = faces[keep]
    if len(faces) == 0:
        raise ValueError("every triangle was pruned (depth <= 0, discontinuities or beyond max_depth): nothing to sample")
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
    total = area.sum()
    if not (torch.isfinite(total) and total > 0):  # NaN shares or probabilities below, a crash in torch
        raise ValueError(f"the triangles' 3D areas sum to {float(total)} (depth too close to 0 or too large for "
                         "float64 areas): nothing to sample")
    rows = (faces // W).double()
    cols = (faces % W).double()
    if deterministic:
        F = len(faces)
        ci, cj = rows.mean(dim=1), cols.mean(dim=1)
        if n <= F:
            top = torch.sort(area, descending=True, stable=True).indices[:n]
            i, j = ci[top], cj[top]
        else:
            root = area.sqrt()
            share = root / root.sum() * (n - F)
            extra = share.floor().long()
            left = (n - F) - int(extra.sum())
            if left > 0:
                extra[torch.sort(share - extra, descending=True, stable=True).indices[:left]] += 1
            template = _barycentric_template().to(dev)
            tri = torch.repeat_interleave(torch.arange(F, device=dev), extra)
            first = torch.cumsum(extra, 0) - extra  # index of each triangle's first extra point
            k = (torch.arange(len(tri), device=dev) - first[tri]).clamp(max=len(template) - 1)
            bary = template[k]
            i = torch.cat([ci, (bary * rows[tri]).sum(1)])
            j = torch.cat([cj, (bary * cols[tri]).sum(1)])
    else:
        # inverse CDF of the areas: torch.multinomial refuses more than 2**24 categories (a map of
        # about 2900x2900 has more triangles), searchsorted has no such limit; zero-area triangles
        # own an empty interval and are never drawn
        cdf = torch.cumsum(area, 0)
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) * cdf[-1]
        tri = torch.searchsorted(cdf, u, right=True).clamp_(max=len(area) - 1)
        s = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        t = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        flip = s + t > 1
        s, t = torch.where(flip, 1 - s, s), torch.where(flip, 1 - t, t)
        bary = torch.stack([1 - s - t, s, t], 1)
        i, j = (bary * rows[tri]).sum(1), (bary * cols[tri]).sum(1)
    return torch.stack([(i + 0.5) / H * 2 - 1, (j + 0.5) / W * 2 - 1], dim=-1).float()


#: the released sampler's far-plane cut (its ``max_depth`` filter): nothing at this depth or beyond is sampled
FAR_CUT = 90.0


def triangle_area_sample(
    depth: torch.Tensor,
    intrinsics,
    n: int,
    depth_ratio: float = 1.05,
    depth_ratio_far: float = 1.10,
    max_depth: float | None = FAR_CUT,
    deterministic: bool = True,
    seed: int | None = None,
) -> torch.Tensor:
    """Query coordinates ``[B, n, 2]`` by the released triangle-area rule (see the module doc) on
    ``depth`` ``[B, 1, H, W]`` with ``intrinsics`` in pixels of that grid."""
    depth = _as_map(depth, 1, "depth")
    n = check_sample_count(n)
    B, _, H, W = depth.shape
    if H < 2 or W < 2:
        raise ValueError(f"the triangle sampler needs a depth map of at least 2x2, got {H}x{W}")
    if not torch.isfinite(depth).all():
        raise ValueError("depth contains NaN or infinite values; mark pixels without a surface with depth 0")
    if not (depth_ratio > 1 and depth_ratio_far >= depth_ratio and math.isfinite(depth_ratio_far)):
        raise ValueError(f"need 1 < depth_ratio <= depth_ratio_far, got {depth_ratio}, {depth_ratio_far}")
    K = check_intrinsics(intrinsics, B, depth.device, torch.float64)
    generator = None
    if not deterministic:
        generator = torch.Generator(device=depth.device).manual_seed(resolve_seed(seed))
    return torch.stack([
        _sample_one(depth[b, 0], K[b], n, depth_ratio, depth_ratio_far, max_depth, deterministic, generator)
        for b in range(B)
    ])

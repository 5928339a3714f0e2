"""The surface-area sampler (DESIGN.md section 3): spend the point budget evenly over 3D surfaces.

A pixel at z-depth ``d`` whose unit viewing ray ``v`` makes angle ``alpha`` with the optical axis
and meets a surface of normal ``n`` sees a surface patch of area

    A = d^2 cos(alpha) / (fx fy |n . v|)

(its solid angle is ``cos^3(alpha) / (fx fy)``, its range ``d / cos(alpha)``, and the patch is tilted
by ``|n . v|``). DESIGN.md writes ``d^2 / |n . v|``; the ``cos(alpha)`` factor is kept here because
without it a fronto-parallel plane would not be sampled uniformly with a wide field of view. The
tilt is clamped, ``max(|n . v|, eps)``, rather than offset by ``+ eps``: the area stays exact for
every surface less grazing than ``acos(eps)`` (88.9 degrees by default), and grazing surfaces get at
most ``1 / eps`` times the weight of a frontal one, which also bounds what a depth discontinuity,
where a continuous field is steep, can take.

Samples are then placed by stratified inverse-CDF over the pixels (``infinidepth.ops.inverse_cdf``,
one kernel per backend) and jittered uniformly inside their pixel; the caller re-queries depth there.
The pixels enter the CDF in the order of a Hilbert curve, not row by row. Stratification spaces the
samples evenly along that order, and along a Hilbert curve pixels close in the order are close in
the image. Row by row, a budget of one sample per four pixels of a plane put one sample every
fourth pixel of every row: columns 4 pixels apart, 1 apart within a column, so splats sized by
their nearest neighbours left 54% of the view specked (``benchmarks/splat_coverage.py``). With
more samples than pixels, each pixel is first cut into r x r sub-pixels (r a power of two, about
one sample per sub-pixel), so that the samples inside a pixel are spread out too, not jittered
independently into clumps (11% of the view specked at four samples per pixel; 0.5% now).
"""

from __future__ import annotations

import functools
import math

import torch

from infinidepth.ops.inverse_cdf import check_sample_count, quantize_weights, resolve_seed, sample_quantized

from .camera import check_intrinsics
from .normals import _as_map

DEFAULT_EPS = 2e-2


def surface_area_weights(depth: torch.Tensor, normals: torch.Tensor, intrinsics, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Surface area ``[B, H, W]`` (in squared depth units) seen by each pixel; 0 where depth <= 0."""
    return _areas(depth, normals, intrinsics, eps, relative=False)


def _areas(depth: torch.Tensor, normals: torch.Tensor, intrinsics, eps: float, relative: bool):
    """The areas, in the depth's dtype (at least float32); with ``relative``, in float64 and only in
    proportion within each image (what the sampler needs): each image's depth scaled to a largest value
    of 1 and ``1 / (fx fy)`` left out, so that no depth is too large or too small for its square (in
    float32, a depth of 2**64 overflowed and one of 2**-64 vanished)."""
    depth = _as_map(depth, 1, "depth")
    dtype = torch.float64 if relative else torch.promote_types(depth.dtype, torch.float32)
    normals = _as_map(normals, 3, "normals")
    B, _, H, W = depth.shape
    if normals.shape != (B, 3, H, W):
        raise ValueError(f"normals must have shape {(B, 3, H, W)} to match depth, got {tuple(normals.shape)}")
    if torch.isnan(depth).any():
        raise ValueError("depth contains NaN; mark pixels without a surface with depth 0")
    if torch.isinf(depth).any():
        raise ValueError("depth contains infinite values; mark pixels without a surface with depth 0")
    if not torch.isfinite(normals).all():
        raise ValueError("normals contain NaN or infinite values")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    # an infinite eps zeroes every weight, and one below the dtype's smallest normal number clamps to 0
    # there: a surface seen exactly edge-on then got an infinite weight
    if not (math.isfinite(eps) and eps >= torch.finfo(dtype).tiny):
        raise ValueError(f"eps must be finite and at least {torch.finfo(dtype).tiny:.3g} "
                         f"(the smallest normal {dtype}), got {eps}")
    K = check_intrinsics(intrinsics, B, depth.device, dtype)
    # the ray r = (x, y, 1) of pixel (i, j) has x from the column and y from the row: with v = r / |r|,
    # cos(alpha) = v_z = 1 / |r| and |n . v| = |n . r| / |r|, so d^2 cos(alpha) / max(|n . v|, eps) is
    # d^2 / max(|n . r|, eps |r|), on [B, H, W] planes without a [B, H * W, 3] ray array
    x = ((torch.arange(W, device=depth.device, dtype=dtype) + 0.5) - K[:, 0, 2, None]) / K[:, 0, 0, None]
    y = ((torch.arange(H, device=depth.device, dtype=dtype) + 0.5) - K[:, 1, 2, None]) / K[:, 1, 1, None]
    x, y = x[:, None, :], y[:, :, None]
    n = normals.to(dtype)
    tilt = torch.maximum((n[:, 0] * x + n[:, 1] * y + n[:, 2]).abs(), eps * torch.sqrt(x * x + y * y + 1))
    d = depth[:, 0].to(dtype)
    if relative:
        d = d / d.reshape(B, -1).amax(dim=1)[:, None, None].clamp_min(torch.finfo(dtype).tiny)
    else:
        tilt = tilt * (K[:, 0, 0] * K[:, 1, 1])[:, None, None]
    return torch.where(d > 0, d * d / tilt, torch.zeros_like(d))


def surface_area_sample(
    depth: torch.Tensor,
    normals: torch.Tensor,
    intrinsics,
    n: int,
    seed: int | None = None,
    jitter: bool = True,
    eps: float = DEFAULT_EPS,
    backend: str = "auto",
    max_depth: float | None = None,
) -> torch.Tensor:
    """``n`` query coordinates per image ``[B, n, 2]`` (normalised y, x), spread so that the 3D points
    cover the surfaces of ``depth`` ``[B, 1, H, W]`` evenly. ``normals`` ``[B, 3, H, W]`` (e.g. from
    :func:`surface_normals`), ``intrinsics`` in pixels of this grid. Deterministic for a given
    ``seed`` (``None``: drawn from torch's generator), identical cells on every backend. ``jitter=False``
    puts each sample at the centre of its pixel, or of its sub-pixel (module doc). Pixels at depth
    ``max_depth`` or more get no sample (``model.sample_points`` cuts at 90, as the released sampler
    does: a sky, at a disparity model's floor, would otherwise take nearly every sample, its area
    growing with the square of its depth)."""
    if max_depth is not None and not max_depth > 0:
        raise ValueError(f"max_depth must be positive (or None), got {max_depth}")
    # in float64 and relative: the sampler quantises proportions anyway (ops/inverse_cdf.py), and so
    # the depth's scale, in any unit, changes no sample
    weights = _areas(depth, normals, intrinsics, eps, relative=True)
    if max_depth is not None:
        weights = torch.where(_as_map(depth, 1, "depth")[:, 0] < max_depth, weights, torch.zeros_like(weights))
    empty = (weights.reshape(weights.shape[0], -1) > 0).sum(dim=1) == 0
    if empty.any():
        beyond = "" if max_depth is None else f" below max_depth {max_depth:g} (farther pixels, a sky's, are not sampled)"
        raise ValueError(f"depth of image {int(empty.nonzero()[0])} has no positive value{beyond}: no surface to sample")
    B, H0, W0 = weights.shape
    r = subdivision(check_sample_count(n), H0 * W0)   # several samples per pixel: r x r sub-pixels each
    H, W = H0 * r, W0 * r
    order, source = hilbert_layout(H0, W0, r, weights.device)
    # the sub-pixels' weights in Hilbert order: position p holds sub-pixel order[p], of pixel source[p];
    # each pixel's quantised once (the weights are finite and non-negative by construction)
    quantized = quantize_weights(weights.reshape(B, H0 * W0), cells=H * W)[:, source]
    coords, _ = sample_quantized(quantized, H, W, n, resolve_seed(seed), jitter, backend, order)
    return coords


#: the most cells the sampler subdivides pixels into (int64 weights and prefix sums: 256 MiB)
MAX_SUBDIVIDED_CELLS = 2**24


def subdivision(n: int, pixels: int) -> int:
    """Sub-pixels per side for ``n`` samples over ``pixels``: the smallest power of two that makes it
    at most one sample per sub-pixel on average (1: at one sample per pixel or fewer), within
    MAX_SUBDIVIDED_CELLS. A power of two, so that each pixel's sub-pixels are one stretch of the
    Hilbert curve and the pixels' counts stay as stratified as without them."""
    r = 1
    while r * r * pixels < n and (2 * r) ** 2 * pixels <= MAX_SUBDIVIDED_CELLS:
        r *= 2
    return r


@functools.lru_cache(maxsize=2)
def hilbert_layout(height: int, width: int, r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-pixels of an ``height x width`` grid cut ``r x r`` in Hilbert order, as flat indices on
    the fine grid, and the pixel each belongs to (flat indices on the grid); both int64 on ``device``."""
    order = hilbert_order(height * r, width * r, device)
    return order, (order // (width * r) // r) * width + (order % (width * r)) // r


def hilbert_order(height: int, width: int, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """The flat indices ``i * width + j`` of an ``height x width`` grid in the order a Hilbert curve
    over the enclosing power-of-two square visits them (int64 ``[height * width]`` on ``device``).

    Built from the top, one level of the quadtree at a time: each square of the curve is split into
    its four quadrants in the order the curve visits them, and quadrants wholly outside the grid are
    dropped, so the work is about 4/3 of the cell count and nothing is sorted. The order depends on
    the square's frame, one of four: the curve's own, transposed, reflected (both coordinates
    complemented), or both. In its frame a square's quadrants are visited at (x bit, y bit) = (0, 0),
    (0, 1), (1, 1), (1, 0); the first is entered transposed, the last transposed and reflected. Each
    square travels as one int64: x in bits 34-63, y in bits 4-33, its frame in bits 0-1."""
    if max(height, width) >= 2**30:
        raise ValueError(f"a Hilbert order of a {height}x{width} grid: sides must be below 2**30")
    side = 1 << max(0, math.ceil(math.log2(max(height, width, 1))))
    frame = torch.arange(4, device=device)[:, None]
    in_frame = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 0]], device=device)       # (x bit, y bit) per quadrant
    transposed, reflected = frame & 1, frame >> 1
    x_bit = torch.where(transposed.bool(), in_frame[:, 1], in_frame[:, 0]) ^ reflected   # [frame, quadrant]
    y_bit = torch.where(transposed.bool(), in_frame[:, 0], in_frame[:, 1]) ^ reflected
    next_frame = frame ^ torch.tensor([1, 0, 0, 3], device=device)
    squares = torch.zeros(1, dtype=torch.int64, device=device)
    s = side // 2
    while s > 0:
        step = ((s * x_bit) << 34) + ((s * y_bit) << 4) + (next_frame - frame)    # [frame, quadrant]
        squares = (squares[:, None] + step[squares & 3]).reshape(-1)
        if width % (2 * s) or height % (2 * s):   # else every quadrant of a square in the grid is in it
            squares = squares[((squares >> 34) < width) & (((squares >> 4) & (2**30 - 1)) < height)]
        s //= 2
    return ((squares >> 4) & (2**30 - 1)) * width + (squares >> 34)

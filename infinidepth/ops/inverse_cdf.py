"""Stratified inverse-CDF sampling of grid cells: ``inverse_cdf_sample(weights, n, seed)``.

The core of the surface-area sampler (DESIGN.md section 3). Given non-negative weights on an
``H x W`` grid, place ``n`` samples with equal probability mass each: sample ``j`` goes to the cell
whose CDF interval holds ``q_j = (j + 0.5) / n``, then (optionally) to a uniform point inside it.

Every backend (``torch`` reference, ``cpp``, ``cuda``, ``triton``) returns the *same cells*, bit for
bit, for the same weights and seed. That is by construction, not by luck of rounding:

* the weights are quantised once, here, to integers (``ceil(w / max(w) * 2**k)``, so a positive
  weight never becomes 0), with ``k`` chosen so that the total stays below ``2**53``; the prefix
  sums are then exact in int64 whatever the order of summation (a parallel scan included);
* sample ``j``'s target is ``t_j = floor((j + 0.5) * T / n)`` evaluated in IEEE float64 (one
  multiply, one divide: no contraction to FMA is possible) and its cell is the first whose
  inclusive prefix sum exceeds ``t_j``;
* the jitter is a counter-based hash of ``(seed, image, j, axis)`` (:func:`jitter_hash`), not a
  stateful generator, so it does not depend on how the work is split across threads;
* each coordinate is :func:`cell_coordinate`'s, the same IEEE expression in every kernel, so the
  coordinates agree bit for bit too, and each lies inside its cell.

With ``order``, the weights come laid out in another order of the cells (the surface-area sampler's
Hilbert curve); the kernels read the cell of each CDF position from it.

Cells are returned as flat indices ``i * W + j``; coordinates as normalised ``(y, x)`` with the
project's convention (ops/coords.py): a cell ``(i, j)`` spans ``[i, i + 1) x [j, j + 1)`` in pixels,
and an unjittered sample sits at its centre.
"""

from __future__ import annotations

import math

import torch

from .gather import HAS_EXTENSION, as_int, resolve_backend

#: most samples per image: coordinates alone are 8 bytes each (8 GiB at this limit)
MAX_SAMPLES = 2**30
_MASK32 = 0xFFFFFFFF


def quantize_weights(weights: torch.Tensor, cells: int | None = None) -> torch.Tensor:
    """``[B, M]`` non-negative floats -> int64 with the same proportions (see the module doc).

    ``cells``: the number of cells they will be sampled over (default ``M``). The surface-area sampler
    quantises each pixel once and repeats it over its sub-pixels, which gives the same integers as
    quantising the repeated weights."""
    w = weights.double()
    cells = w.shape[1] if cells is None else cells
    k = min(40, 53 - max(1, math.ceil(math.log2(cells))) - 1)
    top = w.amax(dim=1, keepdim=True)
    # w / top first: 2**k / top overflows for tiny weights (below ~1e-297), w / top is in [0, 1] at any scale
    return torch.ceil((w / top) * 2.0**k).to(torch.int64)


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``(a * c) mod 2**32`` for int64 tensors holding uint32 values, without int64 overflow."""
    lo = (a * (c & 0xFFFF)) & _MASK32
    hi = ((a * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    # "lowbias32" (C. Wellons' hash prospector): a full-avalanche 32-bit integer mixer.
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def jitter_stream(seed: int, image: int) -> int:
    """The per-image stream of the jitter hash: ``mix(seed ^ mix(image))``."""
    return int(_mix32(torch.tensor(seed & _MASK32) ^ _mix32(torch.tensor(image & _MASK32))))


def jitter_hash(seed: int, image: int, j: torch.Tensor, axis: int) -> torch.Tensor:
    """Uniform floats in [0, 1) (24 bits) for samples ``j`` of ``image``, ``axis`` 0 (y) or 1 (x).

    ``u = (mix(mix(seed ^ mix(image)) ^ mix(2 j + axis)) >> 8) / 2**24`` with ``mix`` = lowbias32;
    the kernels compute exactly this in uint32 arithmetic.
    """
    stream = torch.tensor(jitter_stream(seed, image), dtype=torch.int64, device=j.device)
    h = _mix32(stream ^ _mix32((2 * j + axis) & _MASK32))
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)


def inverse_cdf_reference(quantized: torch.Tensor, height: int, width: int, n: int, seed: int, jitter: bool,
                          order: torch.Tensor | None = None):
    """The oracle in plain PyTorch: ``(coords [B, n, 2] float32, cells [B, n] int64)``."""
    B = quantized.shape[0]
    device = quantized.device
    cdf = torch.cumsum(quantized, dim=1)
    total = cdf[:, -1:].double()
    j = torch.arange(n, device=device, dtype=torch.int64)
    targets = torch.floor((j.double() + 0.5)[None] * total / n).to(torch.int64)
    targets = torch.minimum(targets, cdf[:, -1:] - 1)
    cells = torch.searchsorted(cdf, targets, right=True)
    if order is not None:
        cells = order[cells]
    rows, cols = cells // width, cells % width
    if jitter:
        uy = torch.stack([jitter_hash(seed, b, j, 0) for b in range(B)])
        ux = torch.stack([jitter_hash(seed, b, j, 1) for b in range(B)])
    else:
        uy = ux = torch.full((B, n), 0.5, device=device)
    return torch.stack([cell_coordinate(rows, uy, height), cell_coordinate(cols, ux, width)], dim=-1), cells


def cell_coordinate(index: torch.Tensor, u: torch.Tensor, cells: int) -> torch.Tensor:
    """Normalised float32 coordinates of ``index + u`` along an axis of ``cells`` cells, kept inside
    their cell: at or above its lower edge, strictly below its upper one.

    In float32, ``row + u`` with ``u`` within 2**-24 of 1 rounds up to ``row + 1`` once ``row`` is in
    the thousands: the sample then sat on the next cell's edge, and in the last row at y = 1.0, the
    image's edge (about 1 sample in 20 000 at 2048 rows). At the other end, a cell's lower edge
    ``row / H * 2 - 1`` is rarely a float32: a sample just above it can round to just below it, into
    the previous cell (22 of 400 000 samples at 3000 rows), which may be a hole. Both edges are
    worked out in float64; such coordinates are moved to the nearest float32 inside the cell, all
    others are unchanged. The kernels compute exactly this (csrc/inverse_cdf.h's cell_coordinate)."""
    c = (index.float() + u) / cells * 2 - 1
    lo64, hi64 = index.double() / cells * 2 - 1, (index + 1).double() / cells * 2 - 1
    lo, hi = lo64.float(), hi64.float()
    lo = torch.where(lo.double() < lo64, torch.nextafter(lo, torch.full_like(lo, 2.0)), lo)
    hi = torch.where(hi.double() >= hi64, torch.nextafter(hi, torch.full_like(hi, -2.0)), hi)
    return torch.where(c.double() < lo64, lo, torch.where(c.double() >= hi64, hi, c))


def check_sample_count(n) -> int:
    n = as_int(n, "the number of samples")
    if n <= 0:
        raise ValueError(f"the number of samples must be positive, got {n}")
    if n > MAX_SAMPLES:
        raise ValueError(f"{n} samples per image exceeds the sampler's limit of {MAX_SAMPLES} (2**30)")
    return n


def resolve_seed(seed: int | None) -> int:
    """``None`` draws one from torch's global generator (so ``torch.manual_seed`` fixes it)."""
    if seed is None:
        return int(torch.randint(0, 2**31, (1,)).item())
    seed = as_int(seed, "seed")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    return seed


def inverse_cdf_sample(
    weights: torch.Tensor, n: int, seed: int | None = None, jitter: bool = True, backend: str = "auto",
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified samples of the cells of ``weights`` ``[B, H, W]`` (non-negative, finite, with a
    positive entry per image) -> ``(coords [B, n, 2] float32 in normalised (y, x), cells [B, n] int64)``.

    ``order`` (int64 ``[H * W]``, a permutation of the flat indices): the cells enter the CDF in this
    order, ``weights`` laid out in it (cell ``order[p]``'s weight at flat position ``p``); the cells
    returned are then ``order``'s. Default: row by row."""
    if not isinstance(weights, torch.Tensor) or weights.dim() != 3:
        raise ValueError(f"weights must be a tensor [B, H, W], got {getattr(weights, 'shape', type(weights))}")
    n = check_sample_count(n)
    seed = resolve_seed(seed)
    B, H, W = weights.shape
    if B == 0 or H == 0 or W == 0:
        raise ValueError(f"weights must be non-empty, got shape {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError("sampling weights contain NaN or infinite values")
    if (weights < 0).any():
        raise ValueError("sampling weights must be non-negative")
    empty = (weights.reshape(B, -1) > 0).sum(dim=1) == 0
    if empty.any():
        raise ValueError(f"image {int(empty.nonzero()[0])} has no positive weight: nothing to sample")
    if order is not None and (not isinstance(order, torch.Tensor) or order.shape != (H * W,)
                              or order.dtype != torch.int64 or order.device != weights.device):
        raise ValueError(f"order must be an int64 tensor [{H * W}] (a permutation of the cells) on {weights.device}, "
                         f"got {getattr(order, 'dtype', type(order))} {tuple(getattr(order, 'shape', ()))}")
    if order is not None:
        lo, hi = torch.aminmax(order)
        if lo < 0 or hi >= H * W:
            raise ValueError(f"order holds cells outside [0, {H * W}): {int(lo)} .. {int(hi)}")
        order = order.contiguous()
    return sample_quantized(quantize_weights(weights.reshape(B, H * W)), H, W, n, seed, jitter, backend, order)


def sample_quantized(quantized: torch.Tensor, height: int, width: int, n: int, seed: int, jitter: bool,
                     backend: str, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`inverse_cdf_sample` on weights already checked and quantised (``quantize_weights``),
    ``[B, height * width]`` int64, with ``n``, ``seed`` and ``order`` already checked."""
    backend = resolve_backend(backend, quantized.device)
    quantized = quantized.contiguous()
    if backend == "torch":
        return inverse_cdf_reference(quantized, height, width, n, seed, jitter, order)
    if backend == "triton":
        from infinidepth.kernels.inverse_cdf import inverse_cdf_triton

        return inverse_cdf_triton(quantized, height, width, n, seed, jitter, order)
    return torch.ops.infinidepth.inverse_cdf_sample(quantized, height, width, n, seed, jitter, order)


if HAS_EXTENSION:

    @torch.library.register_fake("infinidepth::inverse_cdf_sample")
    def _inverse_cdf_sample_fake(weights, height, width, n, seed, jitter, order=None):
        B = weights.shape[0]
        return weights.new_empty((B, n, 2), dtype=torch.float32), weights.new_empty((B, n))

"""Triton inverse-CDF sampler (same function as csrc/inverse_cdf_*; contract in ops/inverse_cdf.py).

Three launches, no host round trip: (1) every block of ``BLOCK`` cells scans itself (``tl.cumsum``,
exact in int64) and writes its total; (2) one program per image scans the block totals; (3) one
lane per sample finds its cell by a two-level binary search, first over the block prefix sums,
then inside the block's local scan, so the local scans never need their block offset added.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infinidepth.ops.inverse_cdf import jitter_stream

BLOCK = 1024  # cells per scan block


@triton.jit
def _block_scan(w_ptr, local_ptr, sums_ptr, M, n_blocks, BLOCK: tl.constexpr):
    blk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M
    vals = tl.load(w_ptr + b * M + idx, mask=mask, other=0)
    scan = tl.cumsum(vals, axis=0)
    tl.store(local_ptr + b * M + idx, scan, mask=mask)
    tl.store(sums_ptr + b * n_blocks + blk, tl.sum(vals, axis=0))


@triton.jit
def _scan_block_sums(sums_ptr, prefix_ptr, n_blocks, CHUNK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    carry = tl.zeros([], dtype=tl.int64)
    for start in range(0, n_blocks, CHUNK):
        idx = start + tl.arange(0, CHUNK)
        mask = idx < n_blocks
        vals = tl.load(sums_ptr + b * n_blocks + idx, mask=mask, other=0)
        tl.store(prefix_ptr + b * n_blocks + idx, tl.cumsum(vals, axis=0) + carry, mask=mask)
        carry += tl.sum(vals, axis=0)


@triton.jit
def _mix32(h):
    """lowbias32 on uint64 lanes holding 32-bit values (products stay below 2**64)."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & 0xFFFFFFFF
    return h ^ (h >> 16)


@triton.jit
def _jitter(stream, j, axis):
    key = ((2 * j + axis) & 0xFFFFFFFF).to(tl.uint64)
    h = _mix32(stream ^ _mix32(key))
    return (h >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _upper_bound(ptr, lo, hi, target, live, steps):
    """Per lane, the first index in [lo, hi) whose value exceeds target (values non-decreasing);
    ``steps`` >= log2 of the widest range + 1."""
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        right = tl.load(ptr + mid, mask=active & live, other=0) <= target
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    return lo


@triton.jit
def _step(f, UP: tl.constexpr):
    """The next float32 after ``f`` towards +inf (``UP``) or -inf, by its bits (no nextafter in tl)."""
    bits = f.to(tl.int32, bitcast=True)
    if UP:   # away from zero: one more in the magnitude's bits; from +-0: the smallest subnormal of that sign
        away = f > 0
        zero = 1
    else:
        away = f < 0
        zero = -2147483647   # 0x80000001
    return tl.where(f == 0, zero, tl.where(away, bits + 1, bits - 1)).to(tl.float32, bitcast=True)


@triton.jit
def _cell_coordinate(index, u, size):
    """csrc/inverse_cdf.h's cell_coordinate: ``index + u`` of ``size`` cells, normalised, kept inside
    the cell by edges worked out in float64."""
    # size as a tensor: Triton specialises an int argument equal to 1 into a constant, which has no .to()
    size = index * 0 + size
    # IEEE division, as the C++ and CUDA kernels and torch compute it
    c = tl.math.div_rn(index.to(tl.float32) + u, size.to(tl.float32)) * 2.0 - 1.0
    lo = index.to(tl.float64) / size.to(tl.float64) * 2.0 - 1.0
    hi = (index + 1).to(tl.float64) / size.to(tl.float64) * 2.0 - 1.0
    lo32, hi32 = lo.to(tl.float32), hi.to(tl.float32)
    lo32 = tl.where(lo32.to(tl.float64) < lo, _step(lo32, True), lo32)
    hi32 = tl.where(hi32.to(tl.float64) >= hi, _step(hi32, False), hi32)
    c64 = c.to(tl.float64)
    return tl.where(c64 < lo, lo32, tl.where(c64 >= hi, hi32, c))


@triton.jit
def _place_samples(local_ptr, prefix_ptr, streams_ptr, order_ptr, coords_ptr, cells_ptr, M, H, W, n, n_blocks,
                   block_steps, cell_steps, JITTER: tl.constexpr, ORDER: tl.constexpr, BLOCK: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    j = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = j < n
    total = tl.load(prefix_ptr + b * n_blocks + n_blocks - 1)
    t = ((j.to(tl.float64) + 0.5) * total.to(tl.float64) / n).to(tl.int64)
    t = tl.minimum(t, total - 1)
    # level 1: first block whose inclusive prefix exceeds t
    zero = tl.zeros([BLOCK_N], dtype=tl.int64)
    blk = _upper_bound(prefix_ptr + b * n_blocks, zero, zero + n_blocks, t, live, block_steps)
    offset = tl.where(blk > 0, tl.load(prefix_ptr + b * n_blocks + blk - 1, mask=live & (blk > 0), other=0), 0)
    rest = t - offset
    # level 2: first position of the block whose local prefix exceeds the rest, then its cell
    cell = _upper_bound(local_ptr + b * M, blk * BLOCK, tl.minimum(blk * BLOCK + BLOCK, M), rest, live, cell_steps)
    if ORDER:
        cell = tl.load(order_ptr + cell, mask=live, other=0)
    if JITTER:
        stream = tl.load(streams_ptr + b).to(tl.uint64)
        uy = _jitter(stream, j, 0)
        ux = _jitter(stream, j, 1)
    else:
        uy = tl.full([BLOCK_N], 0.5, tl.float32)
        ux = tl.full([BLOCK_N], 0.5, tl.float32)
    o = b * n + j
    tl.store(cells_ptr + o, cell, mask=live)
    tl.store(coords_ptr + 2 * o, _cell_coordinate(cell // W, uy, H), mask=live)
    tl.store(coords_ptr + 2 * o + 1, _cell_coordinate(cell % W, ux, W), mask=live)


def inverse_cdf_triton(quantized: torch.Tensor, height: int, width: int, n: int, seed: int, jitter: bool,
                       order: torch.Tensor | None = None):
    """``quantized`` [B, H*W] int64 (laid out in ``order`` [H*W] if given) -> (coords [B, n, 2] float32,
    cells [B, n] int64)."""
    B, M = quantized.shape
    dev = quantized.device
    n_blocks = triton.cdiv(M, BLOCK)
    local = torch.empty(B, M, dtype=torch.int64, device=dev)
    sums = torch.empty(B, n_blocks, dtype=torch.int64, device=dev)
    prefix = torch.empty(B, n_blocks, dtype=torch.int64, device=dev)
    coords = torch.empty(B, n, 2, dtype=torch.float32, device=dev)
    cells = torch.empty(B, n, dtype=torch.int64, device=dev)
    streams = torch.tensor([jitter_stream(seed, b) for b in range(B)], dtype=torch.int64, device=dev)
    _block_scan[(n_blocks, B)](quantized, local, sums, M, n_blocks, BLOCK=BLOCK)
    _scan_block_sums[(B,)](sums, prefix, n_blocks, CHUNK=1024)
    block_n = 256
    _place_samples[(triton.cdiv(n, block_n), B)](
        local, prefix, streams, cells if order is None else order, coords, cells, M, height, width, n, n_blocks,
        max(1, n_blocks.bit_length()), BLOCK.bit_length(), JITTER=jitter, ORDER=order is not None, BLOCK=BLOCK,
        BLOCK_N=block_n,
    )
    return coords, cells

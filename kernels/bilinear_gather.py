"""Triton bilinear gather (same function as csrc/bilinear_gather_*.{cpp,cu}, see ops/coords.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tap(feat_ptr, b, yy, xx, w, H, W, C, chan, q_mask, c_mask):
    inside = q_mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    row = ((b * H + yy).to(tl.int64) * W + xx) * C
    vals = tl.load(feat_ptr + row[:, None] + chan[None, :], mask=inside[:, None] & c_mask[None, :], other=0.0)
    return vals * tl.where(inside, w, 0.0)[:, None]


@triton.jit
def map_position(y, x, H, W):
    """Queries' continuous positions (py, px) in an H x W map's cells (ops/coords.py). Far-away
    queries clamp to one pixel outside the map: same result, defined integer conversion."""
    py = tl.minimum(tl.maximum(((y + 1.0) * H - 1.0) * 0.5, -2.0), H + 1.0)
    px = tl.minimum(tl.maximum(((x + 1.0) * W - 1.0) * 0.5, -2.0), W + 1.0)
    return py, px


@triton.jit
def bilerp_block(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask):
    """Bilinear samples [BLOCK_Q, BLOCK_C] of channels ``chan`` of a channels-last map at queries (y, x)."""
    py, px = map_position(y, x, H, W)
    fy = tl.floor(py)
    fx = tl.floor(px)
    wy1 = py - fy
    wx1 = px - fx
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    acc = _tap(feat_ptr, b, y0, x0, (1.0 - wy1) * (1.0 - wx1), H, W, C, chan, q_mask, c_mask)
    acc += _tap(feat_ptr, b, y0, x0 + 1, (1.0 - wy1) * wx1, H, W, C, chan, q_mask, c_mask)
    acc += _tap(feat_ptr, b, y0 + 1, x0, wy1 * (1.0 - wx1), H, W, C, chan, q_mask, c_mask)
    acc += _tap(feat_ptr, b, y0 + 1, x0 + 1, wy1 * wx1, H, W, C, chan, q_mask, c_mask)
    return acc


@triton.jit
def bilerp_block_grad(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask):
    """Bilinear samples as :func:`bilerp_block`, and their derivatives with respect to y and x
    (the differentiated bilinear weights; one-sided at cell borders, as grid_sample's backward)."""
    py, px = map_position(y, x, H, W)
    fy = tl.floor(py)
    fx = tl.floor(px)
    wy1 = (py - fy)[:, None]
    wx1 = (px - fx)[:, None]
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    v00 = _tap(feat_ptr, b, y0, x0, 1.0, H, W, C, chan, q_mask, c_mask)
    v01 = _tap(feat_ptr, b, y0, x0 + 1, 1.0, H, W, C, chan, q_mask, c_mask)
    v10 = _tap(feat_ptr, b, y0 + 1, x0, 1.0, H, W, C, chan, q_mask, c_mask)
    v11 = _tap(feat_ptr, b, y0 + 1, x0 + 1, 1.0, H, W, C, chan, q_mask, c_mask)
    top = v00 + (v01 - v00) * wx1  # along x at rows y0 and y0 + 1
    bottom = v10 + (v11 - v10) * wx1
    value = top + (bottom - top) * wy1
    dy = (bottom - top) * (0.5 * H)
    dx = ((v01 - v00) * (1.0 - wy1) + (v11 - v10) * wy1) * (0.5 * W)
    return value, dy, dx


@triton.jit
def _bilinear_gather_kernel(feat_ptr, coords_ptr, out_ptr, N, H, W, C, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(2)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    q_mask = q < N
    c_mask = chan < C
    row = b.to(tl.int64) * N + q   # int64 before the product: B * N may pass 2**31
    y = tl.load(coords_ptr + row * 2, mask=q_mask, other=0.0)
    x = tl.load(coords_ptr + row * 2 + 1, mask=q_mask, other=0.0)
    acc = bilerp_block(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask)
    tl.store(out_ptr + row[:, None] * C + chan[None, :], acc, mask=q_mask[:, None] & c_mask[None, :])


def bilinear_gather_triton(feat: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``feat`` [B, C, H, W] float32, ``coords`` [B, N, 2] float32 (y, x) -> [B, N, C]."""
    B, C, H, W = feat.shape
    N = coords.shape[1]
    feat_cl = feat.permute(0, 2, 3, 1).contiguous()
    coords = coords.contiguous()
    out = torch.empty((B, N, C), device=feat.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    block_q = 32
    block_c = min(128, triton.next_power_of_2(C))
    grid = (triton.cdiv(N, block_q), triton.cdiv(C, block_c), B)
    _bilinear_gather_kernel[grid](feat_cl, coords, out, N, H, W, C, BLOCK_Q=block_q, BLOCK_C=block_c)
    return out

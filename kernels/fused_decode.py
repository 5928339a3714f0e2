"""Triton fused decoder: the folded program (infinidepth/ops/fold.py) in one pass over the queries.

The program is read as up to two *streamed pairs* and a *tail*:

* pair = a wide layer A (gathered maps, optionally plus ``W_A x``) whose output is produced
  ``BLOCK_K`` channels at a time and contracted at once into the narrower layer B by ``tl.dot`` --
  the wide activations never exist in full, not even in registers;
* the first two layers after them as a third streamed pair (no gathers: A reads the previous
  output), so that no weight tile is ever wider than one chunk (a square 256 x 256 fp32 tile alone
  would need more shared memory than a Hopper SM has);
* tail = the remaining small layers, zero-padded to one width and run in a loop.

Official decoder: pair (gather 1024 -> 256), pair (256 -> 32 -> 1). Paper decoder: pair (gather
2048 -> 512), pair (512 + gather -> 4096 -> 256), pair (256 -> 256 -> 1). fp32 uses IEEE dot products (no TF32); bf16 and
fp16 feed the dots 16-bit operands with fp32 accumulation (tensor cores on the GPU), and the pairs'
weights and the gathered maps are passed in that 16-bit type too: every block streams the weights
and reads its taps from L2, so storing them at half the bytes halves the kernel's main traffic
(biases, the small tail and all sums stay fp32). In 16 bits, a block of neighbouring queries
(a dense grid finer than the maps) blends one window of map cells loaded once instead of reading
each query's 4 taps (``_window``, ``_gather``).

With ``WITH_GRAD`` the kernel carries two tangents beside every activation (forward mode): the
derivatives with respect to the query's y and x. Weights act on them as on the value, gathers give
them the differentiated bilinear blend, activations scale them by ``act'(pre-activation)``; the
output is ``[B, N, 3]`` = (value, d/dy, d/dx).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from infinidepth.ops.fold import ACT_CODES, FoldedLayer
from infinidepth.ops.implicit_decode import PRECISIONS

from .bilinear_gather import bilerp_block, bilerp_block_grad, map_position

# A block's gathers from a window of map cells (see _gather): the window's rows and columns.
WINDOW_Y = tl.constexpr(2)
WINDOW_X = tl.constexpr(8)


@triton.jit
def _act(x, code: tl.constexpr):
    if code == 1:
        x = tl.where(x < 0, 0.0, x)
    elif code == 2:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif code == 3:
        x = tl.where(x < 0, tl.exp(tl.minimum(x, 0.0)) - 1.0, x)
    return x


@triton.jit
def _act_grad(x, code: tl.constexpr):
    """The activation's derivative at the pre-activation x."""
    if code == 1:
        d = tl.where(x > 0, 1.0, 0.0)
    elif code == 2:
        d = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif code == 3:
        d = tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))
    else:
        d = tl.full(x.shape, 1.0, tl.float32)
    return d


@triton.jit
def _act_grad_runtime(x, code):
    d = tl.full(x.shape, 1.0, tl.float32)
    d = tl.where(code == 1, tl.where(x > 0, 1.0, 0.0), d)
    d = tl.where(code == 2, 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x), d)
    d = tl.where(code == 3, tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0))), d)
    return d


@triton.jit
def _act_runtime(x, code):
    x = tl.where(code == 1, tl.where(x < 0, 0.0, x), x)
    x = tl.where(code == 2, 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476)), x)
    x = tl.where(code == 3, tl.where(x < 0, tl.exp(tl.minimum(x, 0.0)) - 1.0, x), x)
    return x


@triton.jit
def _low(a, LOW: tl.constexpr):
    """``a`` in the dots' operand type (see :func:`_dot`)."""
    if LOW == 1:
        out = a.to(tl.bfloat16)
    elif LOW == 2:
        out = a.to(tl.float16)
    else:
        out = a
    return out


@triton.jit
def _dot(a, b, LOW: tl.constexpr):
    """LOW = 0: fp32 IEEE; 1: bf16 operands; 2: fp16 operands (fp32 accumulation in all)."""
    # one branch per value, no early returns: the compiler also builds the statements after a taken
    # `return`, and an fp32 dot there fails to compile with 16-bit weights
    if LOW == 0:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(_low(a, LOW), _low(b, LOW), out_dtype=tl.float32)
    return out


@triton.jit
def _window(y, x, H, W, q_mask, LOW: tl.constexpr):
    """A block's window of WINDOW_Y x WINDOW_X cells of an H x W map (see :func:`_gather`): whether
    every query's 2 x 2 taps lie in it, its first row and column, and the blend weights [BLOCK_Q,
    window] in two 16-bit parts: each query's bilinear weights at its 4 cells (zero elsewhere)
    rounded, and what the rounding lost. Computed once per block, before the loop over channels."""
    py, px = map_position(y, x, H, W)
    fy = tl.floor(py)
    fx = tl.floor(px)
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    far = 1 << 30
    top = tl.min(tl.where(q_mask, y0, far), axis=0)
    left = tl.min(tl.where(q_mask, x0, far), axis=0)
    fits = (tl.max(tl.where(q_mask, y0, -far), axis=0) - top + 2 <= WINDOW_Y) & \
        (tl.max(tl.where(q_mask, x0, -far), axis=0) - left + 2 <= WINDOW_X)
    cell = tl.arange(0, WINDOW_Y * WINDOW_X)
    cy = (cell // WINDOW_X)[None, :]
    cx = (cell % WINDOW_X)[None, :]
    wy1 = (py - fy)[:, None]
    wx1 = (px - fx)[:, None]
    ry = (y0 - top)[:, None]
    rx = (x0 - left)[:, None]
    along_y = tl.where(cy == ry, 1.0 - wy1, 0.0) + tl.where(cy == ry + 1, wy1, 0.0)
    along_x = tl.where(cx == rx, 1.0 - wx1, 0.0) + tl.where(cx == rx + 1, wx1, 0.0)
    blend = along_y * along_x
    kept = _low(blend, LOW)
    rest = _low(blend - kept.to(tl.float32), LOW)
    return fits, top, left, kept, rest


@triton.jit
def _gather(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask, fits, top, left, kept, rest, LOW: tl.constexpr):
    """Bilinear samples [BLOCK_Q, BLOCK_K] of a channels-last map, as :func:`bilerp_block`.

    Queries close together read the same few cells: at 8K one cell of the released model's CNN map
    spans about 22x30 output pixels, so a row of 128 neighbouring queries touches at most 2 x 6
    cells, and reading 4 taps per query fetches each cell some 40 times. With 16-bit dots, a block
    whose taps all lie in one window of cells (``fits``, from :func:`_window`) loads the window
    once and blends it on the tensor cores: weights [BLOCK_Q, window] @ cells [window, BLOCK_K].
    The weights enter in two 16-bit parts, so the blend is as exact as the taps' fp32 weights; the
    two products cost 2 x 16 multiply-adds per channel, against the 256 of the official decoder's
    next layer. The window is loaded whether the block uses it or not: a load outside any branch is
    one Triton's pipeliner issues ahead (cp.async), and it is 16 cells against the taps' 4 per
    query. Other blocks, and fp32 (where the products would run on the CUDA cores at 4x the taps'
    work, and ptxas spills the larger kernel), read each query's taps.

    Non-finite map cells: the blend multiplies every cell of the window by each query's weight,
    zero included, and 0 x NaN is NaN, so a NaN or infinite cell makes NaN every query of a block
    that reads its window, not only those whose taps touch it (the reference and the taps: only
    those). Finite maps, what a model gives, are unaffected; a map holding NaN gives NaN depth on
    any backend, here over a wider patch. A per-window finiteness check would cost the hot loop.
    """
    if LOW == 0:
        out = bilerp_block(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask)
    else:
        cell = tl.arange(0, WINDOW_Y * WINDOW_X)
        my = top + cell // WINDOW_X  # the window's cells in the map (outside it: zeros, as the taps read)
        mx = left + cell % WINDOW_X
        inside = (my >= 0) & (my < H) & (mx >= 0) & (mx < W)
        row = ((b * H + my).to(tl.int64) * W + mx) * C
        cells = tl.load(feat_ptr + row[:, None] + chan[None, :], mask=inside[:, None] & c_mask[None, :], other=0.0)
        if fits:
            out = _dot(kept, cells, LOW) + _dot(rest, cells, LOW)
        else:
            out = bilerp_block(feat_ptr, b, y, x, H, W, C, chan, q_mask, c_mask)
    return out


@triton.jit
def _stream_pair(
    x_prev, ty_prev, tx_prev, b, y, x, q_mask,
    wa_ptr, ba_ptr, ka, n_wide,
    m1_ptr, m1_h, m1_w, m2_ptr, m2_h, m2_w,
    wb_ptr, n_narrow,
    HAS_WA: tl.constexpr, N_MAPS: tl.constexpr, ACT_A: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, KA_PAD: tl.constexpr, NB_PAD: tl.constexpr, LOW: tl.constexpr,
    WITH_GRAD: tl.constexpr,
):
    """acc[BLOCK_Q, NB_PAD] = sum over chunks of act_A(A chunk) @ W_B^T chunk, and with WITH_GRAD the
    same for the tangents (acc_y, acc_x); without, those two are returned as acc."""
    acc = tl.zeros((BLOCK_Q, NB_PAD), dtype=tl.float32)
    acc_y = tl.zeros((BLOCK_Q, NB_PAD), dtype=tl.float32)
    acc_x = tl.zeros((BLOCK_Q, NB_PAD), dtype=tl.float32)
    nb = tl.arange(0, NB_PAD)
    ka_idx = tl.arange(0, KA_PAD)
    # (unused, and compiled away, in fp32 and with tangents: those read taps)
    fits1, top1, left1, kept1, rest1 = _window(y, x, m1_h, m1_w, q_mask, LOW)
    fits2, top2, left2, kept2, rest2 = _window(y, x, m2_h, m2_w, q_mask, LOW)
    for k0 in range(0, n_wide, BLOCK_K):
        chan = k0 + tl.arange(0, BLOCK_K)
        c_mask = chan < n_wide
        h = tl.load(ba_ptr + chan, mask=c_mask, other=0.0)[None, :] + tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
        h_y = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
        h_x = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)
        if HAS_WA:  # W_A stored transposed: [ka, n_wide]
            wa = tl.load(wa_ptr + ka_idx[:, None] * n_wide + chan[None, :],
                         mask=(ka_idx[:, None] < ka) & c_mask[None, :], other=0.0)
            h += _dot(x_prev, wa, LOW)
            if WITH_GRAD:
                h_y += _dot(ty_prev, wa, LOW)
                h_x += _dot(tx_prev, wa, LOW)
        if WITH_GRAD:
            if N_MAPS >= 1:
                v, gy, gx = bilerp_block_grad(m1_ptr, b, y, x, m1_h, m1_w, n_wide, chan, q_mask, c_mask)
                h += v
                h_y += gy
                h_x += gx
            if N_MAPS >= 2:
                v, gy, gx = bilerp_block_grad(m2_ptr, b, y, x, m2_h, m2_w, n_wide, chan, q_mask, c_mask)
                h += v
                h_y += gy
                h_x += gx
            d = tl.where(c_mask[None, :], _act_grad(h, ACT_A), 0.0)
            h_y = h_y * d
            h_x = h_x * d
        else:
            if N_MAPS >= 1:
                h += _gather(m1_ptr, b, y, x, m1_h, m1_w, n_wide, chan, q_mask, c_mask, fits1, top1, left1, kept1, rest1,
                             LOW)
            if N_MAPS >= 2:
                h += _gather(m2_ptr, b, y, x, m2_h, m2_w, n_wide, chan, q_mask, c_mask, fits2, top2, left2, kept2, rest2,
                             LOW)
        h = _act(h, ACT_A)
        h = tl.where(c_mask[None, :], h, 0.0)
        wb = tl.load(wb_ptr + chan[:, None] * n_narrow + nb[None, :],  # W_B^T: [n_wide, n_narrow]
                     mask=c_mask[:, None] & (nb[None, :] < n_narrow), other=0.0)
        acc += _dot(h, wb, LOW)
        if WITH_GRAD:
            acc_y += _dot(h_y, wb, LOW)
            acc_x += _dot(h_x, wb, LOW)
    if WITH_GRAD:
        return acc, acc_y, acc_x
    return acc, acc, acc


@triton.jit
def _finish_pair(acc, acc_y, acc_x, bias_ptr, n, NB_PAD: tl.constexpr, ACT: tl.constexpr, WITH_GRAD: tl.constexpr):
    """Layer B of a pair: bias and activation on the accumulator, and the tangents (d/dy, d/dx)
    scaled by the activation's derivative; returns ``(h, t_y, t_x)``."""
    nb = tl.arange(0, NB_PAD)
    pre = acc + tl.load(bias_ptr + nb, mask=nb < n, other=0.0)[None, :]
    if WITH_GRAD:
        d = _act_grad(pre, ACT)
        acc_y = acc_y * d
        acc_x = acc_x * d
    return _act(pre, ACT), acc_y, acc_x


@triton.jit
def _fused_decode_kernel(
    coords_ptr, out_ptr, N,
    # pair 1
    a1_b, a1_n, m11, m11_h, m11_w, m12, m12_h, m12_w, b1_wt, b1_b, b1_n,
    # pair 2 (A with a weight on pair 1's output)
    a2_wt, a2_b, a2_n, m21, m21_h, m21_w, b2_wt, b2_b, b2_n,
    # pair 3 (dense only: A reads the previous output)
    a3_wt, a3_b, a3_k, a3_n, b3_wt, b3_b, b3_n,
    # tail: stacked padded transposed weights [L, TW, TW], biases [L, TW], activation codes [L]
    tail_w, tail_b, tail_act, n_tail,
    n_bucket,  # log2 of the query count, rounded: an autotuning key only
    N_MAPS1: tl.constexpr, ACT_A1: tl.constexpr, ACT_B1: tl.constexpr, NB1_PAD: tl.constexpr,
    HAS_PAIR2: tl.constexpr, ACT_A2: tl.constexpr, ACT_B2: tl.constexpr, NB2_PAD: tl.constexpr,
    HAS_PAIR3: tl.constexpr, ACT_A3: tl.constexpr, ACT_B3: tl.constexpr, KA3_PAD: tl.constexpr, NB3_PAD: tl.constexpr,
    TW: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, LOW: tl.constexpr, WITH_GRAD: tl.constexpr,
):
    b = tl.program_id(1)
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_mask = q < N
    row = b.to(tl.int64) * N + q   # int64 before the product: B * N may pass 2**31
    y = tl.load(coords_ptr + row * 2, mask=q_mask, other=0.0)
    x = tl.load(coords_ptr + row * 2 + 1, mask=q_mask, other=0.0)

    zero16 = tl.zeros((BLOCK_Q, 16), dtype=tl.float32)
    acc, acc_y, acc_x = _stream_pair(zero16, zero16, zero16, b, y, x, q_mask,
                                     a1_b, a1_b, 0, a1_n, m11, m11_h, m11_w, m12, m12_h, m12_w, b1_wt, b1_n,
                                     False, N_MAPS1, ACT_A1, BLOCK_Q, BLOCK_K, 16, NB1_PAD, LOW, WITH_GRAD)
    h, t_y, t_x = _finish_pair(acc, acc_y, acc_x, b1_b, b1_n, NB1_PAD, ACT_B1, WITH_GRAD)
    if HAS_PAIR2:
        acc, acc_y, acc_x = _stream_pair(h, t_y, t_x, b, y, x, q_mask,
                                         a2_wt, a2_b, b1_n, a2_n, m21, m21_h, m21_w, m21, m21_h, m21_w, b2_wt, b2_n,
                                         True, 1, ACT_A2, BLOCK_Q, BLOCK_K, NB1_PAD, NB2_PAD, LOW, WITH_GRAD)
        h, t_y, t_x = _finish_pair(acc, acc_y, acc_x, b2_b, b2_n, NB2_PAD, ACT_B2, WITH_GRAD)
    if HAS_PAIR3:
        acc, acc_y, acc_x = _stream_pair(h, t_y, t_x, b, y, x, q_mask,
                                         a3_wt, a3_b, a3_k, a3_n, m11, m11_h, m11_w, m11, m11_h, m11_w, b3_wt, b3_n,
                                         True, 0, ACT_A3, BLOCK_Q, BLOCK_K, KA3_PAD, NB3_PAD, LOW, WITH_GRAD)
        h, t_y, t_x = _finish_pair(acc, acc_y, acc_x, b3_b, b3_n, NB3_PAD, ACT_B3, WITH_GRAD)
        width: tl.constexpr = NB3_PAD
    elif HAS_PAIR2:
        width: tl.constexpr = NB2_PAD
    else:
        width: tl.constexpr = NB1_PAD
    # widen h (and its tangents) to the tail width
    t_idx = tl.arange(0, TW)
    if width < TW:
        pad = tl.zeros((BLOCK_Q, TW), dtype=tl.float32)
        eye = (tl.arange(0, width)[:, None] == t_idx[None, :]).to(tl.float32)
        h = pad + tl.dot(h, eye, input_precision="ieee")
        if WITH_GRAD:
            t_y = pad + tl.dot(t_y, eye, input_precision="ieee")
            t_x = pad + tl.dot(t_x, eye, input_precision="ieee")
    for l in range(n_tail):
        w = tl.load(tail_w + l * TW * TW + t_idx[:, None] * TW + t_idx[None, :])
        pre = _dot(h, w, LOW) + tl.load(tail_b + l * TW + t_idx)[None, :]
        code = tl.load(tail_act + l)
        if WITH_GRAD:
            d = _act_grad_runtime(pre, code)
            t_y = _dot(t_y, w, LOW) * d
            t_x = _dot(t_x, w, LOW) * d
        h = _act_runtime(pre, code)
    first = t_idx[None, :] == 0
    if WITH_GRAD:
        tl.store(out_ptr + row * 3, tl.sum(tl.where(first, h, 0.0), axis=1), mask=q_mask)
        tl.store(out_ptr + row * 3 + 1, tl.sum(tl.where(first, t_y, 0.0), axis=1), mask=q_mask)
        tl.store(out_ptr + row * 3 + 2, tl.sum(tl.where(first, t_x, 0.0), axis=1), mask=q_mask)
    else:
        tl.store(out_ptr + row, tl.sum(tl.where(first, h, 0.0), axis=1), mask=q_mask)


# On the GPU the block sizes are autotuned per program shape for large calls; small calls and the
# interpreter (CPU) use the first config.
_fused_decode_kernel_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_Q": bq, "BLOCK_K": bk}, num_warps=w, num_stages=st)
        for bq, bk, w, st in [(16, 32, 4, 2), (32, 32, 4, 2), (32, 64, 8, 3), (64, 32, 8, 3), (64, 64, 8, 2), (128, 32, 8, 2)]
    ],
    # the query count enters as its power of two: a new N of the same order reuses the tuned config
    key=["n_bucket", "a1_n", "b1_n", "a2_n", "b2_n", "a3_n", "b3_n", "n_tail", "NB1_PAD", "NB2_PAD", "NB3_PAD", "TW",
         "LOW", "WITH_GRAD"],
)(_fused_decode_kernel)


# Autotuning compiles every config of a new program shape (seconds to minutes each, see
# benchmarks/results/triton_aot_sm90.json); a call with fewer queries than this takes the smallest
# config instead, which fits every shape: a first small call costs one compile, not six.
AUTOTUNE_MIN_QUERIES = 1 << 16


def _pad16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _split(folded):
    """The program as (pair1, pair2 or None, pair3 or None, tail layers), or a clear error."""
    layers = folded.layers
    if layers and len(layers[0].maps) > 2:
        raise ValueError(f"backend 'triton' gathers at most 2 feature maps in the decoder's first layer, this one has "
                         f"{len(layers[0].maps)}; use backend 'torch' or 'cpp'")
    if len(layers) == 1 and layers[0].weight is None and layers[0].width == 1:
        # A decoder of one layer (the maps straight to the value): the first pair's layer B is then an
        # identity of width 1, with no activation (in 16 bits, its product rounds the value to 16 bits).
        one = layers[0]
        layers = [one, FoldedLayer(torch.ones(1, 1, dtype=one.bias.dtype, device=one.bias.device),
                                   torch.zeros_like(one.bias))]
    if len(layers) < 2 or layers[0].weight is not None or not layers[0].maps or layers[1].maps:
        raise ValueError("the triton decoder expects a first layer of 1-2 gathered maps followed by a dense layer")
    pair1, rest = (layers[0], layers[1]), layers[2:]
    pair2 = None
    if rest and rest[0].maps:
        if len(rest) < 2 or len(rest[0].maps) != 1 or rest[0].weight is None or rest[1].maps:
            raise ValueError("the triton decoder supports one gathered map in a second streamed pair")
        pair2, rest = (rest[0], rest[1]), rest[2:]
    if any(l.maps for l in rest):
        raise ValueError("the triton decoder supports at most two layers with gathered maps")
    pair3 = None
    if len(rest) >= 2:
        pair3, rest = (rest[0], rest[1]), rest[2:]
    return pair1, pair2, pair3, rest


LOW_CODES = {"fp32": 0, "bf16": 1, "fp16": 2}


def fused_decode_triton(folded, coords: torch.Tensor, precision: str = "fp32", with_grad: bool = False) -> torch.Tensor:
    """``coords`` [B, N, 2] float32 -> [B, N] float32 (with_grad: [B, N, 3], the value and its
    derivatives with respect to y and x). ``precision`` of the dot operands: fp32 (IEEE), bf16 or
    fp16 (accumulation is fp32 always)."""
    args, constants, out = kernel_arguments(folded, coords, precision, with_grad)
    if out.numel() == 0:
        return out
    B, N = coords.shape[:2]
    tuned = coords.is_cuda and B * N >= AUTOTUNE_MIN_QUERIES
    kernel = _fused_decode_kernel_tuned if tuned else _fused_decode_kernel
    small = _fused_decode_kernel_tuned.configs[0]
    blocks = {} if tuned else dict(small.kwargs, num_warps=small.num_warps, num_stages=small.num_stages)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_Q"]), B)

    kernel[grid](*args, **constants, **blocks)
    return out


def kernel_arguments(folded, coords: torch.Tensor, precision: str, with_grad: bool):
    """The kernel's run-time arguments (in order), its compile-time constants but the block sizes,
    and the output tensor: also what an ahead-of-time compile needs (tests/test_triton_hopper.py)."""
    if precision not in LOW_CODES:
        raise ValueError(f"precision must be one of {sorted(LOW_CODES)}, got {precision!r}")
    pair1, pair2, pair3, tail = _split(folded)
    dev = coords.device
    f32 = dict(device=dev, dtype=torch.float32)
    stored = dict(device=dev, dtype=PRECISIONS[precision] or torch.float32)  # the pairs' weights and the maps
    B, N = coords.shape[:2]
    coords = coords.contiguous()

    def wt(layer):  # transposed weight [in, out], contiguous
        return layer.weight.to(**stored).t().contiguous()

    last = pair3[1] if pair3 else pair2[1] if pair2 else pair1[1]
    widths = [last.width] + [d for l in tail for d in l.weight.shape]
    TW = _pad16(max(widths))
    n_tail = len(tail)
    tail_w = torch.zeros(max(n_tail, 1), TW, TW, **f32)
    tail_b = torch.zeros(max(n_tail, 1), TW, **f32)
    for i, l in enumerate(tail):
        tail_w[i, : l.weight.shape[1], : l.weight.shape[0]] = l.weight.t()
        tail_b[i, : l.width] = l.bias
    tail_act = torch.tensor([ACT_CODES[l.act] for l in tail] or [0], device=dev, dtype=torch.int32)
    if not tail and last.width != 1:  # the pair's output is the answer
        raise ValueError("the program must end in a layer of width 1")

    no_w, no_b = torch.zeros(16, **stored), torch.zeros(16, **f32)  # stand-ins for an absent pair
    a1, b1 = pair1
    maps1 = [m.to(**stored).contiguous() for m in a1.maps]
    m11 = maps1[0]
    m12 = maps1[1] if len(maps1) > 1 else maps1[0]
    if pair2:
        a2, b2 = pair2
        m21 = a2.maps[0].to(**stored).contiguous()
        p2 = (wt(a2), a2.bias.to(**f32).contiguous(), a2.width, m21, m21.shape[1], m21.shape[2], wt(b2),
              b2.bias.to(**f32).contiguous(), b2.width)
    else:
        p2 = (no_w, no_b, 0, m11, 1, 1, no_w, no_b, 0)
    before3 = pair2[1] if pair2 else pair1[1]
    if pair3:
        a3, b3 = pair3
        p3 = (wt(a3), a3.bias.to(**f32).contiguous(), before3.width, a3.width, wt(b3), b3.bias.to(**f32).contiguous(),
              b3.width)
    else:
        p3 = (no_w, no_b, 0, 0, no_w, no_b, 0)
    out = torch.empty(B, N, 3, **f32) if with_grad else torch.empty(B, N, **f32)
    args = [
        coords, out, N,
        a1.bias.to(**f32).contiguous(), a1.width, m11, m11.shape[1], m11.shape[2], m12, m12.shape[1], m12.shape[2],
        wt(b1), b1.bias.to(**f32).contiguous(), b1.width,
        *p2,
        *p3,
        tail_w, tail_b, tail_act, n_tail,
        max(N, 1).bit_length(),
    ]
    constants = dict(
        N_MAPS1=len(maps1), ACT_A1=ACT_CODES[a1.act], ACT_B1=ACT_CODES[b1.act], NB1_PAD=_pad16(b1.width),
        HAS_PAIR2=pair2 is not None, ACT_A2=ACT_CODES[pair2[0].act] if pair2 else 0,
        ACT_B2=ACT_CODES[pair2[1].act] if pair2 else 0, NB2_PAD=_pad16(pair2[1].width) if pair2 else 16,
        HAS_PAIR3=pair3 is not None, ACT_A3=ACT_CODES[pair3[0].act] if pair3 else 0,
        ACT_B3=ACT_CODES[pair3[1].act] if pair3 else 0, KA3_PAD=_pad16(before3.width),
        NB3_PAD=_pad16(pair3[1].width) if pair3 else 16,
        TW=TW, LOW=LOW_CODES[precision], WITH_GRAD=with_grad,
    )
    return args, constants, out

"""The implicit decoder as one op: ``implicit_decode(maps, coords, decoder, backend)`` -> ``[B, N]``.

Two decoder families share it (DESIGN.md section 1):

* :class:`ConcatDecoder` (the released InfiniDepth): gather every map at the query, concatenate,
  MLP with ReLU between layers and ELU on the output.
* :class:`HierarchicalDecoder` (the paper): ``h_1 = f^1``,
  ``h_{k+1} = FFN_k(f^{k+1} + sigmoid(gate_k) * Linear_k(h_k))`` with ``FFN = Linear, GELU, Linear``,
  then an MLP head (ReLU between, ELU on the output).

``backend="torch"`` is plain PyTorch, obviously right, and the oracle for every kernel. The other
backends (``cpp``, ``cuda``, ``triton``) fold the decoder into the maps (ops/fold.py) and run the
folded program in one fused pass over the queries (csrc/fused_decode_*, kernels/fused_decode.py).
The fold is done once per image: pass a dict as ``cache`` (models pass their ``Features``) and it
is kept there. It is made afresh when a map or a decoder tensor has changed since, as PyTorch's
version counters see changes: an optimiser step, ``load_state_dict``, ``with torch.no_grad():
p.mul_(2)``, ``p.data = ...``. A change written through ``p.data`` in place (``p.data.mul_(2)``)
bumps no counter and is not seen; after one, pass a new cache (encode again).
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .gather import HAS_EXTENSION, bilinear_gather_reference, check_coords, check_feature_map, resolve_backend

Linear = tuple[torch.Tensor, torch.Tensor]  # (weight [out, in], bias [out])


@dataclass
class ConcatDecoder:
    layers: Sequence[Linear]

    def in_channels(self) -> list[int]:
        return [self.layers[0][0].shape[1]]


@dataclass
class HierarchicalDecoder:
    gates: Sequence[torch.Tensor]  # K-1 raw per-channel gate parameters (sigmoid gives the gate)
    laterals: Sequence[Linear]  # Linear_k: C_k -> C_{k+1}
    ffns: Sequence[tuple[Linear, Linear]]  # FFN_k: C_{k+1} -> e*C_{k+1} -> C_{k+1}
    head: Sequence[Linear]


def _mlp(x: torch.Tensor, layers: Sequence[Linear]) -> torch.Tensor:
    for w, b in layers[:-1]:
        x = F.relu(F.linear(x, w, b))
    w, b = layers[-1]
    # The answer's own layer outside any autocast: a 16-bit output would round the result itself
    # (2^-9 of its value, several % of the output's spread where the spread is small).
    with torch.autocast(x.device.type, enabled=False):
        return F.elu(F.linear(x.to(w.dtype), w, b))


def _in_dtype(decoder, dtype: torch.dtype):
    """``decoder`` with its tensors in ``dtype`` (the reference computes in the maps' dtype)."""
    def cast(v):
        if isinstance(v, torch.Tensor):
            return v.to(dtype)
        return type(v)(cast(x) for x in v) if isinstance(v, (list, tuple)) else v
    return type(decoder)(**{k: cast(v) for k, v in vars(decoder).items()})


def _tensors(v):
    """Every tensor in ``v``: a tensor, nested lists and tuples of them, or a decoder's fields."""
    if isinstance(v, (ConcatDecoder, HierarchicalDecoder)):
        v = list(vars(v).values())
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)


def _fold_key(maps, decoder) -> tuple:
    """Which tensors, in which state, a fold was made from: the maps and the decoder's tensors, each
    held (so that its id cannot pass to a new tensor), with its in-place version and its storage
    (``param.data = ...`` swaps the storage without a new version)."""
    return tuple((t, t._version, t.data_ptr()) for t in _tensors([list(maps), decoder]))


def _same_fold_key(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a, b))


def _check_maps(maps: Sequence[torch.Tensor]) -> None:
    if len(maps) == 0:
        raise ValueError("implicit_decode needs at least one feature map")
    for i, m in enumerate(maps):
        check_feature_map(m, f"feature map {i}")
        if m.device != maps[0].device:
            raise ValueError(f"feature map {i} is on {m.device}, map 0 on {maps[0].device}")
        if m.shape[0] != maps[0].shape[0]:
            raise ValueError(f"feature map {i} has batch {m.shape[0]}, map 0 has {maps[0].shape[0]}")
        if m.dtype != maps[0].dtype:
            raise TypeError(f"feature map {i} is {m.dtype}, map 0 is {maps[0].dtype}")


def _check_linear(name: str, layer: Linear, fan_in: int) -> int:
    w, b = layer
    if w.dim() != 2 or w.shape[1] != fan_in:
        raise ValueError(f"decoder {name}: weight must be [out, {fan_in}], got {tuple(w.shape)}")
    if tuple(b.shape) != (w.shape[0],):
        raise ValueError(f"decoder {name}: bias must be [{w.shape[0]}] like its weight's rows, got {tuple(b.shape)}")
    return w.shape[0]


def _check_mlp(layers: Sequence[Linear], width: int, name: str) -> None:
    if len(layers) == 0:  # the torch path would fail on it, the fold would skip the missing output layer
        raise ValueError(f"decoder has no {name}s: it needs at least the output layer of width 1")
    for i, layer in enumerate(layers):
        width = _check_linear(f"{name} {i}", layer, width)
    if width != 1:
        raise ValueError(f"decoder's last layer must have 1 output (the field's value), got {width}")


def check_decoder(decoder, chans: Sequence[int]) -> None:
    """Every weight of ``decoder`` fits the maps' channels ``chans`` and its neighbours, so that no
    backend meets a shape it would misread."""
    if isinstance(decoder, ConcatDecoder):
        if len(decoder.layers) == 0:
            raise ValueError("decoder has no layers: it needs at least the output layer of width 1")
        expected = decoder.layers[0][0].shape[-1]
        if sum(chans) != expected:
            raise ValueError(f"maps have {sum(chans)} channels in all, the decoder's first layer takes {expected}")
        _check_mlp(decoder.layers, sum(chans), "layer")
    elif isinstance(decoder, HierarchicalDecoder):
        stages = (len(decoder.gates), len(decoder.laterals), len(decoder.ffns))
        if len(set(stages)) != 1:  # zip would drop the stages beyond the shortest list, and their maps
            raise ValueError(f"hierarchical decoder needs one gate, lateral and ffn per stage, got {stages[0]} gates, "
                             f"{stages[1]} laterals and {stages[2]} ffns")
        if len(chans) != len(decoder.laterals) + 1:
            raise ValueError(f"hierarchical decoder expects {len(decoder.laterals) + 1} maps, got {len(chans)}")
        for k, (gate, lateral, (ffn_in, ffn_out)) in enumerate(zip(decoder.gates, decoder.laterals, decoder.ffns)):
            c = chans[k + 1]
            if _check_linear(f"lateral {k}", lateral, chans[k]) != c or tuple(gate.shape) != (c,):
                raise ValueError(f"decoder stage {k}: lateral and gate must have map {k + 1}'s {c} channels, got "
                                 f"{tuple(lateral[0].shape)} and {tuple(gate.shape)}")
            if _check_linear(f"stage {k} ffn_out", ffn_out, _check_linear(f"stage {k} ffn_in", ffn_in, c)) != c:
                raise ValueError(f"decoder stage {k}: ffn_out must give map {k + 1}'s {c} channels, got {ffn_out[0].shape[0]}")
        _check_mlp(decoder.head, chans[-1], "head layer")
    else:
        raise TypeError(f"unknown decoder type {type(decoder).__name__}")


def _decode(gathered: list[torch.Tensor], decoder) -> torch.Tensor:
    if isinstance(decoder, ConcatDecoder):
        return _mlp(torch.cat(gathered, dim=-1), decoder.layers)[..., 0]
    if isinstance(decoder, HierarchicalDecoder):
        h = gathered[0]
        for f, gate, (lw, lb), ((w1, b1), (w2, b2)) in zip(gathered[1:], decoder.gates, decoder.laterals, decoder.ffns):
            x = f + torch.sigmoid(gate) * F.linear(h, lw, lb)
            h = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
        return _mlp(h, decoder.head)[..., 0]
    raise TypeError(f"unknown decoder type {type(decoder).__name__}")


#: the arithmetic a decode (and a model) can run in: the 16-bit dtypes of its matrix operands
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_cpu_precision(precision: str) -> None:
    """A clear error where the CPU cannot compute ``precision``: fp32 always, bf16 with AVX512_BF16."""
    from .gather import cpu_supports_bf16

    if precision == "fp16":
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 (CPUs with AVX512_BF16) or fp32")
    if precision == "bf16" and not cpu_supports_bf16():
        raise ValueError("precision bf16 on the CPU needs AVX512_BF16 (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4 "
                         "and later), which this CPU lacks; use fp32")


def resolve_decoder_backend(backend: str, device: torch.device | str) -> str:
    """:func:`resolve_backend` for the decoder, where ``auto`` on a GPU means ``torch``: on the H100
    the plain-PyTorch decoder (cuBLAS GEMMs) beat the fused ``cuda`` kernel at every size
    (``benchmarks/results/bench_official_h100.json``: 8K decode 2.45 s against 4.51 s). ``auto``
    follows the benchmark; it goes back to a fused kernel once one wins there."""
    if backend == "auto" and torch.device(device).type == "cuda":
        return "torch"
    return resolve_backend(backend, device)


def implicit_decode(
    maps: Sequence[torch.Tensor],
    coords: torch.Tensor,
    decoder: ConcatDecoder | HierarchicalDecoder,
    backend: str = "auto",
    chunk: int | None = None,
    cache: dict | None = None,
    precision: str = "fp32",
    with_grad: bool = False,
):
    """Decode the field at ``coords`` ``[B, N, 2]`` (normalised y, x) from feature ``maps``.

    Returns ``[B, N]`` in the decoder's output space. ``chunk`` bounds the number of queries in
    flight (peak memory of the reference path), without changing the result. ``precision`` of the
    matrix products: ``fp32``, or ``bf16`` / ``fp16`` operands with fp32 accumulation (tensor cores
    on ``cuda`` and ``triton``, autocast on ``torch``; ``cpp`` computes bf16 on CPUs with
    AVX512_BF16), except with ``with_grad``: derivatives are computed in fp32 on every backend
    (``run_fused`` says why).

    ``with_grad=True`` returns ``(value [B, N], grad [B, N, 2])`` with ``grad`` the exact derivative
    of the value with respect to the query's normalised ``(y, x)``: forward mode through the bilinear
    weights and every layer (one-sided at feature-cell borders, where bilinear interpolation has a
    kink). The reference gets it from autograd; the fused kernels carry the two tangents alongside
    the value.

    The fused kernels have no backward: where autograd records the call (grad mode on and a map,
    the coordinates or a decoder tensor requiring grad) every backend computes through the
    reference, so that gradients reach them. ``auto`` also takes the reference for a decoder that
    folds into more than the compiled kernels hold (8 layers, 8 maps); ``cpp`` and ``cuda`` refuse it by name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    _check_maps(maps)
    check_decoder(decoder, [m.shape[1] for m in maps])
    check_coords(coords, maps[0].shape[0])
    requested, backend = backend, resolve_decoder_backend(backend, maps[0].device)
    if backend == "cpp":
        check_cpu_precision(precision)
    if backend != "torch" and _tracks_gradients(maps, coords, decoder):
        # The fused kernels have no backward (and the fold runs without autograd): their output
        # would carry no gradient, or a silent None, to the maps, the weights or the coordinates.
        # Where autograd must see the computation, the reference computes the same function.
        backend = "torch"
    if backend != "torch":
        from .fold import fold_decoder, run_fused

        # The fold depends on the weights and the maps: a decoder changed in place since (an
        # optimiser step, load_state_dict), another model's decoder on these features, maps changed
        # in place or other maps under the same dict fold afresh. A traced program folds in its
        # graph (versions are not known while tracing).
        if torch.compiler.is_compiling():
            cache = None
        key, weights = ("folded", backend), (_fold_key(maps, decoder) if cache is not None else ())
        held = cache.get(key) if cache is not None else None
        folded = held[1] if held is not None and _same_fold_key(held[0], weights) else None
        if folded is None:
            folded = fold_decoder([m.float() for m in maps], _in_dtype(decoder, torch.float32))
            if cache is not None:
                cache[key] = (weights, folded)
        too_long = _beyond_kernel(folded) if backend in ("cpp", "cuda") else None
        if too_long and requested != "auto":
            raise ValueError(f"backend {backend!r}: this decoder folds into {too_long}; use backend 'torch' "
                             "(or 'auto', which does so for such decoders)")
        if not too_long:
            out = run_fused(folded, coords.float(), backend, precision, with_grad)
            if with_grad:
                return out[..., 0].to(maps[0].dtype), out[..., 1:].to(maps[0].dtype)
            return out.to(maps[0].dtype)
        # auto: the kernel cannot hold this program; the reference computes it
    # queries in at least float32, as the gather reads them (bilinear_gather_reference): rounded to
    # 16 bits they would move by up to 2 pixels of a 1024-wide map
    coords = coords.to(torch.promote_types(maps[0].dtype, torch.float32))
    decoder = _in_dtype(decoder, maps[0].dtype)
    # One pass when tracing for torch.compile / torch.export: a loop over chunks would fix the
    # number of queries in the graph (chunks bound memory; they never change the result).
    pieces = [coords] if not chunk or torch.compiler.is_compiling() else coords.split(max(1, int(chunk)), dim=1)
    outs, grads = [], []
    # 16-bit values under autocast; derivatives stay in fp32 (autograd through 16-bit layers loses
    # ~5% of their spread: too much for normals)
    low = None if with_grad else PRECISIONS[precision]
    with torch.autocast(maps[0].device.type, dtype=low) if low else contextlib.nullcontext():
        for c in pieces:
            if with_grad:
                value, grad = _decode_with_grad(maps, c, decoder, _tracks_gradients(maps, c, decoder))
                outs.append(value.to(maps[0].dtype))
                grads.append(grad.to(maps[0].dtype))
            else:
                outs.append(_decode([bilinear_gather_reference(m, c) for m in maps], decoder).to(maps[0].dtype))
    out = torch.cat(outs, dim=1) if outs else coords.new_zeros((coords.shape[0], 0))
    if with_grad:
        return out, (torch.cat(grads, dim=1) if grads else coords.new_zeros((coords.shape[0], 0, 2)))
    return out


#: the largest folded program the compiled kernels run, (layers, maps): ``cpp`` and ``cuda`` share
#: kMaxLayers, kMaxMaps of csrc/fused_decode.h. Read once here, not in a call that may be traced.
KERNEL_LIMITS = tuple(torch.ops.infinidepth.fused_decode_limits()) if HAS_EXTENSION else (0, 0)


def _beyond_kernel(folded) -> str | None:
    """What of the folded program exceeds :data:`KERNEL_LIMITS`, in words; None where it fits."""
    max_layers, max_maps = KERNEL_LIMITS
    layers, maps = len(folded.layers), sum(len(l.maps) for l in folded.layers)
    if layers <= max_layers and maps <= max_maps:
        return None
    return f"{layers} layers with {maps} maps, where the kernel takes {max_layers} layers and {max_maps} maps"


def _tracks_gradients(maps, coords, decoder) -> bool:
    """Whether autograd records this decode: grad mode on and a map, the coordinates or a decoder
    tensor requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors([list(maps), coords, decoder]))


def _decode_with_grad(maps, coords, decoder, differentiable: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Value and d value / d coords by autograd: each output depends on its own query only, so the
    gradient of the sum is every query's own gradient. ``differentiable`` (autograd records the
    call): both stay in the graph (the derivative built with ``create_graph``), so that gradients of
    a loss on either reach the maps, the decoder and the coordinates; otherwise both are detached."""
    c = coords if differentiable and coords.requires_grad else coords.detach().requires_grad_(True)
    with torch.enable_grad():
        value = _decode([bilinear_gather_reference(m if differentiable else m.detach(), c) for m in maps], decoder)
        (grad,) = (torch.autograd.grad(value.sum(), c, create_graph=differentiable) if value.numel()
                   else (torch.zeros_like(c),))
    return (value, grad) if differentiable else (value.detach(), grad)

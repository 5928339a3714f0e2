"""Folding the decoder into the feature maps (DESIGN.md section 2, step 1), and the folded program.

Bilinear interpolation is linear, so a linear layer acting directly on a gathered feature can act
on the map instead, once per image: ``W @ bilerp(F) = bilerp(W @ F)``. After folding, a decoder is
a short *program* of layers, each ``act(W @ x + b + sum_m bilerp(P_m))`` where ``W`` (absent in the
first layer) acts on the previous layer's output and the ``P_m`` are projected maps. Consecutive
layers with no activation between them are merged when that is cheaper per query.

* Official concat decoder: the first layer's weight splits by input map -> ``P_m = W0[:, m] @ F_m``.
* Paper hierarchical decoder, stage k: ``FFN_k``'s first layer acts on
  ``f^{k+1} + g_k * (L_k h_k + c_k)``; its action on ``f^{k+1}`` folds into a map, and the rest is the
  matrix ``W1_k diag(g_k) L_k`` on ``h_k`` -- which, for k = 1, acts on ``h_1 = f^1`` and folds too.

Exact up to rounding (tests compare the folded program with the unfolded reference). The maps are
stored channels-last (``[B, H, W, C]``), the layout every kernel gathers from.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .implicit_decode import ConcatDecoder, HierarchicalDecoder

ACTIVATIONS = ("none", "relu", "gelu", "elu")


@dataclass
class FoldedLayer:
    weight: torch.Tensor | None  # [out, in] on the previous layer's output; None in the first layer
    bias: torch.Tensor  # [out]
    maps: list[torch.Tensor] = field(default_factory=list)  # channels-last [B, H, W, out], gathered and added
    act: str = "none"

    @property
    def width(self) -> int:
        return self.bias.shape[0]


@dataclass
class FoldedDecoder:
    layers: list[FoldedLayer]

    def macs_per_query(self) -> int:
        """Multiply-adds of the dense layers per query (gathers not counted)."""
        return sum(l.weight.numel() for l in self.layers if l.weight is not None)


def project(weight: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    """``weight`` [O, C] applied to every pixel of ``fmap`` [B, C, H, W] -> channels-last [B, H, W, O]."""
    return torch.einsum("oc,bchw->bhwo", weight.to(fmap.dtype), fmap).contiguous()


def fold_decoder(maps: list[torch.Tensor], decoder: ConcatDecoder | HierarchicalDecoder) -> FoldedDecoder:
    # outside any autocast of the caller's: under one the products would come out 16-bit, which the
    # kernels refuse (and the fold is exact arithmetic on the weights, done once)
    device = maps[0].device.type if maps else "cpu"
    off = torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext()
    with torch.no_grad(), off:
        if isinstance(decoder, ConcatDecoder):
            layers = _fold_concat(maps, decoder)
        elif isinstance(decoder, HierarchicalDecoder):
            layers = _fold_hierarchical(maps, decoder)
        else:
            raise TypeError(f"unknown decoder type {type(decoder).__name__}")
        return FoldedDecoder(_merge_linear_chains(layers))


def _mlp_layers(linears) -> list[FoldedLayer]:
    n = len(linears)
    return [
        FoldedLayer(w.detach(), b.detach(), act="relu" if i < n - 1 else "elu")
        for i, (w, b) in enumerate(linears)
    ]


def _fold_concat(maps, decoder: ConcatDecoder) -> list[FoldedLayer]:
    w0, b0 = decoder.layers[0]
    total = sum(m.shape[1] for m in maps)
    if total != w0.shape[1]:
        raise ValueError(f"maps have {total} channels in all, the decoder's first layer takes {w0.shape[1]}")
    projected, start = [], 0
    for m in maps:
        projected.append(project(w0[:, start : start + m.shape[1]], m))
        start += m.shape[1]
    first = FoldedLayer(None, b0.detach(), projected, "relu" if len(decoder.layers) > 1 else "elu")
    return [first] + _mlp_layers(decoder.layers[1:])


def _fold_hierarchical(maps, decoder: HierarchicalDecoder) -> list[FoldedLayer]:
    if len(maps) != len(decoder.laterals) + 1:
        raise ValueError(f"hierarchical decoder expects {len(decoder.laterals) + 1} maps, got {len(maps)}")
    layers: list[FoldedLayer] = []
    for k, (gate, (lw, lb), ((w1, b1), (w2, b2))) in enumerate(zip(decoder.gates, decoder.laterals, decoder.ffns)):
        g = torch.sigmoid(gate)
        on_h = w1 @ (g[:, None] * lw)  # W1 diag(g) L acting on h_k
        bias = w1 @ (g * lb) + b1
        if k == 0:  # h_1 = f^1 is itself gathered: fold it
            layer = FoldedLayer(None, bias, [project(on_h, maps[0]), project(w1, maps[1])], "gelu")
        else:
            layer = FoldedLayer(on_h, bias, [project(w1, maps[k + 1])], "gelu")
        layers += [layer, FoldedLayer(w2.detach(), b2.detach(), act="none")]
    return layers + _mlp_layers(decoder.head)


def _merge_linear_chains(layers: list[FoldedLayer]) -> list[FoldedLayer]:
    """``B(A x)`` -> ``(BA) x`` when A has no activation, neither has maps, and the product is cheaper."""
    out = [layers[0]]
    for nxt in layers[1:]:
        prev = out[-1]
        # Only into a layer without maps: the program keeps its shape (wide layers with gathers stay
        # separate), which the Triton kernel relies on.
        if prev.act == "none" and not prev.maps and not nxt.maps and prev.weight is not None and nxt.weight is not None:
            merged_cost = nxt.weight.shape[0] * prev.weight.shape[1]
            if merged_cost < prev.weight.numel() + nxt.weight.numel():
                out[-1] = FoldedLayer(nxt.weight @ prev.weight, nxt.weight @ prev.bias + nxt.bias, nxt.maps, nxt.act)
                continue
        out.append(nxt)
    return out


def _activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(x)
    if act == "gelu":
        return torch.nn.functional.gelu(x)
    if act == "elu":
        return torch.nn.functional.elu(x)
    return x


def run_folded_reference(folded: FoldedDecoder, coords: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """The folded program in plain PyTorch (grid_sample gathers): what the fused kernels compute.

    ``precision="bf16"``: the matrix products take operands rounded to bf16 (products and sums in
    the coordinates' type) except the last layer's, the arithmetic of the ``cpp`` kernel in bf16.
    """
    from .gather import bilinear_gather_reference

    x = None
    for index, layer in enumerate(folded.layers):
        pre = layer.bias.to(coords.dtype)
        if layer.weight is not None:
            w = layer.weight
            if precision == "bf16" and index < len(folded.layers) - 1:
                x, w = x.bfloat16().to(x.dtype), w.bfloat16()
            pre = torch.nn.functional.linear(x, w.to(x.dtype)) + pre
        for m in layer.maps:
            pre = pre + bilinear_gather_reference(m.permute(0, 3, 1, 2), coords)
        x = _activate(pre, layer.act)
    return x[..., 0]


ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}  # the codes of csrc/fused_decode.h


def run_fused(folded: FoldedDecoder, coords: torch.Tensor, backend: str, precision: str = "fp32",
              with_grad: bool = False) -> torch.Tensor:
    """The folded program through a fused kernel (``cpp``, ``cuda`` or ``triton``) -> ``[B, N]``, or
    with ``with_grad`` ``[B, N, 3]``: the value and its derivatives with respect to (y, x), in fp32
    whatever ``precision`` says. Through 16-bit products the tangents lose far more than the value:
    RMS 0.3% to 21% of their spread in bf16 (CUDA kernel, emulated) and up to 1.8% in fp16
    (Triton, interpreted), against about 1% and 0.1% for the value; they make the normals."""
    if with_grad:
        precision = "fp32"
    if backend == "triton":
        from infinidepth.kernels.fused_decode import fused_decode_triton

        return fused_decode_triton(folded, coords, precision, with_grad)
    maps, map_layer = [], []
    for index, layer in enumerate(folded.layers):
        for m in layer.maps:
            maps.append(m)
            map_layer.append(index)
    op = torch.ops.infinidepth.fused_decode_with_grad if with_grad else torch.ops.infinidepth.fused_decode
    return op(
        coords.contiguous(),
        maps,
        map_layer,
        [layer.weight for layer in folded.layers],
        [layer.bias for layer in folded.layers],
        [ACT_CODES[layer.act] for layer in folded.layers],
        precision,
    )

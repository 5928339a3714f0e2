"""implicit_decode: the torch reference against a per-query numpy transcription of DESIGN.md, and
every kernel backend against the torch reference."""

import math
import random

import numpy as np
import pytest
import torch

from infinidepth.ops import ConcatDecoder, HierarchicalDecoder, available_backends, implicit_decode
from infinidepth.ops.gather import cpu_supports_bf16

from conftest import rel_err
from test_coords import bilinear_by_hand

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


def lin(cin, cout, gain=1.0):
    w = torch.randn(cout, cin, dtype=torch.float64) * gain / math.sqrt(cin)
    return w, torch.randn(cout, dtype=torch.float64) * 0.1


def random_concat(rng):
    chans = [rng.randint(1, 9), rng.randint(1, 9)]
    dims = [sum(chans), rng.randint(2, 12), rng.randint(2, 8), 1]
    return chans, ConcatDecoder([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])


def random_hierarchical(rng):
    chans = [rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 6)]
    return chans, hierarchical(chans, [chans[-1], 5, 4, 1], last_gain=4.0)


def hierarchical(chans, head, last_gain=1.0):
    """A random hierarchical decoder with these pyramid channels and head widths (the head's weights
    drawn last, the last layer scaled by ``last_gain``)."""
    return HierarchicalDecoder(
        gates=[torch.randn(c, dtype=torch.float64) for c in chans[1:]],
        laterals=[lin(a, b) for a, b in zip(chans[:-1], chans[1:])],
        ffns=[(lin(c, 4 * c), lin(4 * c, c)) for c in chans[1:]],
        head=[lin(a, b, gain=last_gain if i == len(head) - 2 else 1.0)
              for i, (a, b) in enumerate(zip(head[:-1], head[1:]))],
    )


def np_linear(x, layer):
    w, b = (t.numpy() for t in layer)
    return w @ x + b


def np_gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_mlp(x, layers):
    for i, layer in enumerate(layers):
        x = np_linear(x, layer)
        x = np.maximum(x, 0) if i < len(layers) - 1 else np.where(x > 0, x, np.expm1(x))
    return x


def decode_by_hand(maps, coords, decoder):
    """One query at a time, straight from the formulas."""
    B, N = coords.shape[:2]
    out = np.zeros((B, N))
    for b in range(B):
        for n in range(N):
            y, x = coords[b, n].tolist()
            f = [bilinear_by_hand(m[b].numpy(), y, x) for m in maps]
            if isinstance(decoder, ConcatDecoder):
                out[b, n] = np_mlp(np.concatenate(f), decoder.layers)[0]
            else:
                h = f[0]
                for k in range(len(f) - 1):
                    g = 1 / (1 + np.exp(-decoder.gates[k].numpy()))
                    x_in = f[k + 1] + g * np_linear(h, decoder.laterals[k])
                    h = np_linear(np_gelu(np_linear(x_in, decoder.ffns[k][0])), decoder.ffns[k][1])
                out[b, n] = np_mlp(h, decoder.head)[0]
    return torch.from_numpy(out)


def random_maps(rng, chans, batch):
    return [torch.randn(batch, c, rng.randint(1, 9), rng.randint(1, 9), dtype=torch.float64) for c in chans]


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
def test_reference_matches_the_formulas(family):
    rng = random.Random(7)
    for _ in range(3):
        chans, decoder = family(rng)
        maps = random_maps(rng, chans, batch=2)
        coords = torch.rand(2, 17, 2, dtype=torch.float64) * 2.6 - 1.3
        coords[:, :2] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        got = implicit_decode(maps, coords, decoder, backend="torch")
        assert got.shape == (2, 17)
        np.testing.assert_allclose(got.numpy(), decode_by_hand(maps, coords, decoder).numpy(), atol=1e-10)


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backends_match_reference_fp32(family, backend):
    rng = random.Random(11)
    for _ in range(4):
        chans, decoder = family(rng)
        decoder = cast(decoder, torch.float32)
        maps = [m.float() for m in random_maps(rng, chans, batch=rng.randint(1, 3))]
        coords = torch.rand(maps[0].shape[0], rng.randint(1, 200), 2) * 2.6 - 1.3
        # oracle: the same fp32 inputs through the reference in float64
        decoder64 = cast(decoder, torch.float64)
        want = implicit_decode([m.double() for m in maps], coords.double(), decoder64, backend="torch")
        got = implicit_decode(maps, coords, decoder, backend=backend)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert rel_err(got, want) < 1e-5


def _to(v, dtype):
    if isinstance(v, torch.Tensor):
        return v.to(dtype)
    return type(v)(_to(t, dtype) for t in v)


def cast(decoder, dtype):
    """The same decoder with every tensor in ``dtype``."""
    return type(decoder)(**{k: _to(v, dtype) for k, v in vars(decoder).items()})


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
def test_16_bit_maps_are_decoded_at_the_float32_queries(dtype, tol):
    """The reference with 16-bit maps and decoder: NaN and wrong values came out (torch's 16-bit CPU
    grid_sample), and the queries were rounded to 16 bits first (bf16: by up to half a cell of these
    maps). Now it reads the maps at the float32 queries; 16 bits only round the values."""
    rng = random.Random(9)
    chans, decoder = random_concat(rng)
    maps = [torch.randn(1, c, 256, 256).to(dtype) for c in chans]
    decoder = cast(decoder, dtype)
    coords = torch.rand(1, 2000, 2) * 2 - 1
    want = implicit_decode([m.double() for m in maps], coords.double(), cast(decoder, torch.float64), backend="torch")
    for backend in ["torch", *KERNEL_BACKENDS]:
        got = implicit_decode(maps, coords, decoder, backend=backend)
        assert got.dtype == dtype and rel_err(got, want) < tol, backend


def test_chunking_does_not_change_the_result():
    rng = random.Random(3)
    chans, decoder = random_hierarchical(rng)
    maps = random_maps(rng, chans, batch=2)
    coords = torch.rand(2, 101, 2, dtype=torch.float64) * 2 - 1
    whole = implicit_decode(maps, coords, decoder, backend="torch")
    value, grad = implicit_decode(maps, coords, decoder, backend="torch", with_grad=True)
    for chunk in (1, 7):  # one query per piece (of every image), and a last piece of 3
        chunked = implicit_decode(maps, coords, decoder, backend="torch", chunk=chunk)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)  # BLAS may sum in another order
        chunked_value, chunked_grad = implicit_decode(maps, coords, decoder, backend="torch", chunk=chunk, with_grad=True)
        torch.testing.assert_close(chunked_value, value, rtol=0, atol=1e-12)
        torch.testing.assert_close(chunked_grad, grad, rtol=0, atol=1e-12)


def test_mismatched_channels_are_reported():
    rng = random.Random(5)
    _, decoder = random_concat(rng)
    maps = [torch.randn(1, 50, 4, 4, dtype=torch.float64)]
    with pytest.raises(ValueError, match="channels"):
        implicit_decode(maps, torch.zeros(1, 3, 2, dtype=torch.float64), decoder, backend="torch")


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
def test_folding_is_exact_up_to_rounding(family):
    from infinidepth.ops.fold import fold_decoder, run_folded_reference

    rng = random.Random(21)
    for _ in range(4):
        chans, decoder = family(rng)
        maps = random_maps(rng, chans, batch=2)
        coords = torch.rand(2, 64, 2, dtype=torch.float64) * 2.6 - 1.3
        folded = fold_decoder(maps, decoder)
        np.testing.assert_allclose(
            run_folded_reference(folded, coords).numpy(), implicit_decode(maps, coords, decoder, backend="torch").numpy(), atol=1e-12
        )


def test_fold_shapes_of_the_released_sizes():
    """ViT-L sizes fold to the program DESIGN.md describes; per-query work drops accordingly."""
    from infinidepth.ops.fold import fold_decoder

    with torch.device("meta"):
        maps = [torch.empty(1, 1024, 48, 64), torch.empty(1, 128, 192, 256)]
        dims = [1152, 1024, 256, 32, 1]
        official = fold_decoder(maps, ConcatDecoder([(torch.empty(b, a), torch.empty(b)) for a, b in zip(dims[:-1], dims[1:])]))
        assert [m.shape[-1] for m in official.layers[0].maps] == [1024, 1024]
        assert official.macs_per_query() == 1024 * 256 + 256 * 32 + 32  # the 1152x1024 layer is gone
        chans = [256, 512, 1024]
        lin_ = lambda a, b: (torch.empty(b, a), torch.empty(b))  # noqa: E731
        paper = fold_decoder(
            [torch.empty(1, c, 768 // s, 1024 // s) for c, s in zip(chans, (4, 8, 16))],
            HierarchicalDecoder(
                gates=[torch.empty(512), torch.empty(1024)],
                laterals=[lin_(256, 512), lin_(512, 1024)],
                ffns=[(lin_(512, 2048), lin_(2048, 512)), (lin_(1024, 4096), lin_(4096, 1024))],
                head=[lin_(1024, 256), lin_(256, 256), lin_(256, 1)],
            ),
        )
    widths = [l.width for l in paper.layers]
    assert widths == [2048, 512, 4096, 256, 256, 1]  # FFN_2's output merged into the head's first layer
    assert paper.macs_per_query() == 2048 * 512 + 512 * 4096 + 4096 * 256 + 256 * 256 + 256


def test_fused_op_rejects_malformed_programs():
    from infinidepth.ops.gather import HAS_EXTENSION

    if not HAS_EXTENSION:
        pytest.skip("extension not built")
    op = torch.ops.infinidepth.fused_decode
    coords = torch.zeros(1, 4, 2)
    m = torch.zeros(1, 3, 3, 8)
    with pytest.raises(RuntimeError, match="last layer must have width 1"):
        op(coords, [m], [0], [None], [torch.zeros(8)], [1])
    with pytest.raises(RuntimeError, match="has 8 channels, layer 0 has width 5"):
        op(coords, [m], [0], [None, torch.zeros(1, 5)], [torch.zeros(5), torch.zeros(1)], [1, 3])
    with pytest.raises(RuntimeError, match=r"weight 1 must be float32 \[1, 8\]"):
        op(coords, [m], [0], [None, torch.zeros(1, 7)], [torch.zeros(8), torch.zeros(1)], [1, 3])
    with pytest.raises(RuntimeError, match="unknown activation"):
        op(coords, [m], [0], [None, torch.zeros(1, 8)], [torch.zeros(8), torch.zeros(1)], [9, 3])


def fused_op_args(family, seed):
    """Arguments of torch.ops.infinidepth.fused_decode* for a random folded decoder."""
    from infinidepth.ops.fold import ACT_CODES, fold_decoder

    rng = random.Random(seed)
    chans, decoder = family(rng)
    folded = fold_decoder([m.float() for m in random_maps(rng, chans, batch=1)], cast(decoder, torch.float32))
    return (
        torch.rand(1, 9, 2) * 2 - 1,
        [m for l in folded.layers for m in l.maps],
        [i for i, l in enumerate(folded.layers) for _ in l.maps],
        [l.weight for l in folded.layers],
        [l.bias for l in folded.layers],
        [ACT_CODES[l.act] for l in folded.layers],
    )


def test_fused_op_contract():
    args = fused_op_args(random_concat, 2)
    torch.library.opcheck(torch.ops.infinidepth.fused_decode.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_a_decoder_of_one_layer_runs_on_every_backend(backend):
    """A ConcatDecoder of only its output layer (the maps straight to the value): the Triton kernel
    refused it (its first pair needs a dense layer after the gathers); the value and its derivatives
    match the float64 reference on every backend, and in fp16 on Triton within its tolerance."""
    rng = random.Random(4)
    for chans in ([3, 5], [4]):
        maps = [m.float() for m in random_maps(rng, chans, batch=2)]
        decoder = ConcatDecoder([lin(sum(chans), 1, gain=3.0)])
        coords = torch.rand(2, 40, 2) * 2.4 - 1.2
        maps64, decoder64 = [m.double() for m in maps], cast(cast(decoder, torch.float32), torch.float64)
        want_v, want_g = implicit_decode(maps64, coords.double(), decoder64, backend="torch", with_grad=True)
        f32 = cast(decoder, torch.float32)
        assert rel_err(implicit_decode(maps, coords, f32, backend=backend), want_v) < 1e-5
        got_v, got_g = implicit_decode(maps, coords, f32, backend=backend, with_grad=True)
        assert rel_err(got_v, want_v) < 1e-5 and rel_err(got_g, want_g) < 1e-5
        if backend == "triton":
            from infinidepth.kernels.fused_decode import fused_decode_triton
            from infinidepth.ops.fold import fold_decoder

            got = fused_decode_triton(fold_decoder(maps, f32), coords, precision="fp16")
            assert rel_err(got, want_v) < 1e-2


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
def test_triton_names_a_first_layer_of_more_maps_than_it_gathers():
    maps = [torch.randn(1, c, 4, 4) for c in (2, 3, 4)]
    decoder = ConcatDecoder([(torch.randn(4, 9), torch.randn(4)), (torch.randn(1, 4), torch.randn(1))])
    with pytest.raises(ValueError, match="^backend 'triton' gathers at most 2 feature maps in the decoder's first "
                                         "layer, this one has 3; use backend 'torch' or 'cpp'$"):
        implicit_decode(maps, torch.zeros(1, 5, 2), decoder, backend="triton")


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
def test_triton_16bit_path_within_its_tolerance():
    """fp16 operands here: the Triton interpreter computes bf16 dots wrongly (its numpy has no
    bf16); the bf16 path is the same code with another cast and is checked on a GPU."""
    from infinidepth.kernels.fused_decode import fused_decode_triton
    from infinidepth.ops.fold import fold_decoder

    rng = random.Random(8)
    for family in (random_concat, random_hierarchical):
        chans, decoder = family(rng)
        maps = random_maps(rng, chans, batch=2)
        coords = torch.rand(2, 50, 2, dtype=torch.float64) * 2 - 1
        want = implicit_decode(maps, coords, decoder, backend="torch")
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        got = fused_decode_triton(folded, coords.float(), precision="fp16")
        assert rel_err(got, want) < 1e-2


def block_spans(coords: torch.Tensor, height: int, width: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of an ``height x width`` map that the taps of each block of ``block``
    consecutive queries cover, ``[B, blocks]`` each: the Triton decoder blends a block from one
    window of cells when they fit in it (kernels/fused_decode.py, ``_gather``)."""
    from infinidepth.ops.coords import normalized_to_pixel

    py, px = normalized_to_pixel(coords, height, width)
    cy = torch.floor(py.clamp(-2, height + 1))
    cx = torch.floor(px.clamp(-2, width + 1))
    B, N = cy.shape
    pad = (-N) % block  # the last block's missing queries take its last query's cell

    def span(c):
        c = torch.cat([c, c[:, -1:].expand(B, pad)], dim=1).reshape(B, -1, block)
        return c.amax(-1) - c.amin(-1) + 2

    return span(cy), span(cx)


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
def test_triton_window_gathers_on_dense_grids():
    """Dense output grids finer than the maps, with 16-bit dots: a block of neighbouring queries
    whose taps fit in one window of cells blends that window, loaded once (``_gather``); the other
    blocks read each query's taps. Both kinds occur in every map, at the image's borders and
    (second grid) beyond them, and blocks sit exactly at the window's limits and one cell over them
    in each direction. The same queries in random order read taps only, with otherwise the same
    arithmetic: the two agree within 1e-3 of the output's spread (dropping the weights' second
    16-bit part gives 3e-3 and more), and both are within fp16's 2e-2 of the float64 reference."""
    from infinidepth.kernels.fused_decode import WINDOW_X, WINDOW_Y, _fused_decode_kernel_tuned, fused_decode_triton
    from infinidepth.ops import grid_coords
    from infinidepth.ops.fold import fold_decoder

    block = _fused_decode_kernel_tuned.configs[0].kwargs["BLOCK_Q"]  # what the interpreter runs
    wy, wx = int(WINDOW_Y), int(WINDOW_X)
    rng = random.Random(5)
    cases = [  # decoder, output grid, its reach (1: the image), map sizes
        (random_concat, (9, 28), 1.0, [(3, 12), (4, 11)]),
        (random_hierarchical, (14, 8), 1.1, [(4, 3), (5, 4), (3, 2)]),
    ]
    limits = {"x at": 0, "x over": 0, "y at": 0, "y over": 0}
    for family, (h, w), reach, sizes in cases:
        chans, decoder = family(rng)
        maps = [torch.randn(2, c, *size, dtype=torch.float64) for c, size in zip(chans, sizes)]
        coords = grid_coords(h, w, 2).double() * reach
        perm = torch.randperm(coords.shape[1])
        for m in maps:
            sy, sx = block_spans(coords, m.shape[2], m.shape[3], block)
            fits = (sy <= wy) & (sx <= wx)
            assert fits.any() and not fits.all(), (m.shape, sy, sx)
            limits["x at"] += int((fits & (sx == wx)).sum())
            limits["x over"] += int(((sx == wx + 1) & (sy <= wy)).sum())
            limits["y at"] += int((fits & (sy == wy)).sum())
            limits["y over"] += int(((sy == wy + 1) & (sx <= wx)).sum())
            sy, sx = block_spans(coords[:, perm], m.shape[2], m.shape[3], block)
            assert not ((sy <= wy) & (sx <= wx)).any()
        want = implicit_decode(maps, coords, decoder, backend="torch")
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        windowed = fused_decode_triton(folded, coords.float(), precision="fp16")
        taps = torch.empty_like(windowed)
        taps[:, perm] = fused_decode_triton(folded, coords[:, perm].float(), precision="fp16")
        assert rel_err(windowed, taps) < 1e-3
        assert rel_err(windowed, want) < 2e-2 and rel_err(taps, want) < 2e-2
    assert all(limits.values()), limits


def test_reduced_precision_is_refused_where_not_computed(monkeypatch):
    from infinidepth.ops import gather

    rng = random.Random(4)
    chans, decoder = random_concat(rng)
    maps = random_maps(rng, chans, batch=1)
    coords = torch.zeros(1, 2, 2, dtype=torch.float64)
    for backend in [b for b in KERNEL_BACKENDS if b == "cpp"]:
        with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
            implicit_decode(maps, coords, decoder, backend=backend, precision="fp16")
        monkeypatch.setattr(gather, "cpu_supports_bf16", lambda: False)  # a CPU without AVX512_BF16
        with pytest.raises(ValueError, match="needs AVX512_BF16"):
            implicit_decode(maps, coords, decoder, backend=backend, precision="bf16")
        monkeypatch.undo()
    with pytest.raises(ValueError, match="precision must be"):
        implicit_decode(maps, coords, decoder, precision="int8")


def wide_concat(rng):
    """Widths across the bf16 GEMM's 16-column panels, odd K (padded pairs) and single columns."""
    chans = [rng.randint(1, 40), rng.randint(1, 40)]
    dims = [sum(chans), rng.randint(1, 70), rng.randint(1, 40), 1]
    return chans, ConcatDecoder([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])


def wide_hierarchical(rng):
    chans = [rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 20)]
    return chans, hierarchical(chans, [chans[-1], rng.randint(1, 40), rng.randint(1, 40), 1])


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX512_BF16")
@pytest.mark.parametrize("family", [random_concat, random_hierarchical, wide_concat, wide_hierarchical])
def test_cpp_bf16_computes_its_stated_arithmetic(family):
    """cpp in bf16 against the folded program with bf16-rounded operands (its arithmetic: products
    exact, sums in fp32, the last layer in fp32), on random programs and query counts (partial
    tiles and row blocks); and against the exact reference within the bf16 tolerance of the GPU
    kernels: RMS error under 2% of the output's spread. Tangents stay fp32."""
    from infinidepth.ops.fold import fold_decoder, run_folded_reference, run_fused

    rng = random.Random(21)
    for _ in range(6):
        chans, decoder = family(rng)
        maps = random_maps(rng, chans, batch=rng.randint(1, 2))
        n = rng.choice([1, 11, 12, 47, 48, 49, 1000]) if _ < 5 else 1000
        coords = torch.rand(maps[0].shape[0], n, 2, dtype=torch.float64) * 2.4 - 1.2  # borders and outside
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        got = run_fused(folded, coords.float(), "cpp", "bf16")
        emulated = run_folded_reference(folded, coords.float(), "bf16")
        exact = implicit_decode(maps, coords, decoder, backend="torch")
        # Sums in another order can flip an intermediate's rounding to bf16 (0.4%) now and then, so
        # the bound is on the whole output, with a looser one per query
        diff = (got - emulated).double()
        assert (diff.norm() / emulated.double().norm()).item() < 1e-4, (chans, n)
        assert diff.abs().max().item() < 1e-2 * emulated.abs().max().item(), (chans, n)
        if n >= 47:  # enough queries for a spread
            spread = (exact - exact.mean()).norm()
            assert ((got.double() - exact).norm() / spread).item() < 2e-2, (chans, n)
        fp32 = run_fused(folded, coords.float(), "cpp", "fp32", with_grad=True)
        torch.testing.assert_close(run_fused(folded, coords.float(), "cpp", "bf16", with_grad=True), fp32, rtol=0, atol=0)
    # and it is rounded at all (fp32 lands near 1e-7)
    assert ((got.double() - exact).norm() / (exact - exact.mean()).norm()).item() > 1e-5


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX512_BF16")
def test_cpp_bf16_keeps_nans_of_any_payload():
    """The bf16 rounding of the CPU kernel added the rounding bias to a NaN's bits as to a number's:
    a NaN whose mantissa is all ones (0xFFFFFFFF, what memory filled with 0xFF bytes holds) carried
    into the sign and exponent and became +0, so a NaN map cell or weight gave finite answers."""
    rng = random.Random(17)
    chans, decoder = random_concat(rng)
    decoder = cast(decoder, torch.float32)
    maps = [torch.randn(1, c, 5, 6) for c in chans]
    coords = torch.rand(1, 300, 2) * 2.4 - 1.2
    for bits in (-1, 0x7FFFFFFF):  # 0xFFFFFFFF and 0x7FFFFFFF
        maps[0][0, :, 2, 3] = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
        want = implicit_decode(maps, coords, decoder, backend="torch", precision="bf16")
        bad = ~torch.isfinite(want)
        assert bad.any() and not bad.all()
        got = implicit_decode(maps, coords, decoder, backend="cpp", precision="bf16")
        assert torch.equal(~torch.isfinite(got), bad)
    # in a weight, too (packed to bf16 once per call): every query's answer is NaN
    maps[0][0, :, 2, 3] = 0.0
    decoder.layers[1][0][0, 0] = torch.tensor([-1], dtype=torch.int32).view(torch.float32)
    assert torch.isnan(implicit_decode(maps, coords, decoder, backend="torch", precision="bf16")).all()
    assert torch.isnan(implicit_decode(maps, coords, decoder, backend="cpp", precision="bf16")).all()



@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX512_BF16")
def test_cpp_bf16_rounds_ties_to_even():
    """The CPU kernel rounds to bf16 as torch does: to nearest, ties to even. Random weights almost
    never lie halfway between two bf16 values, so these do: +-2**e * (1 + 2**-8), halfway between
    2**e and 2**e * (1 + 2**-7), which rounds down to even (ties away from zero would move every
    weight by 0.8%)."""
    from infinidepth.ops.fold import fold_decoder, run_folded_reference, run_fused

    rng = random.Random(6)
    chans, decoder = random_concat(rng)
    decoder = cast(decoder, torch.float32)
    w, b = decoder.layers[1]
    g = torch.Generator().manual_seed(6)
    signs = torch.randint(0, 2, w.shape, generator=g) * 2.0 - 1.0
    ties = signs * 2.0 ** torch.randint(-4, 1, w.shape, generator=g).float() * (1 + 2**-8)
    assert not torch.equal(ties.bfloat16().float(), ties)  # not bf16 values themselves
    decoder.layers[1] = (ties, b)
    maps = [torch.randn(1, c, 5, 6) for c in chans]
    coords = torch.rand(1, 200, 2) * 2 - 1
    folded = fold_decoder(maps, decoder)
    got = run_fused(folded, coords, "cpp", "bf16").double()
    want = run_folded_reference(folded, coords, "bf16").double()
    assert ((got - want).norm() / want.norm()).item() < 1e-4


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_backends_take_non_contiguous_inputs_and_reject_nan(backend):
    rng = random.Random(13)
    chans, decoder = random_hierarchical(rng)
    decoder = cast(decoder, torch.float32)
    maps = [torch.randn(2, 7, 6, c).permute(0, 3, 2, 1) for c in chans]  # [B, C, H, W] views, channels-last memory
    coords = (torch.rand(2, 2, 90) * 2.4 - 1.2).transpose(1, 2)  # [B, N, 2] view
    assert not coords.is_contiguous() and not maps[0].is_contiguous()
    want = implicit_decode([m.double() for m in maps], coords.double(), cast(decoder, torch.float64), backend="torch")
    assert rel_err(implicit_decode(maps, coords, decoder, backend=backend), want) < 1e-5
    bad = coords.clone()
    bad[1, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        implicit_decode(maps, bad, decoder, backend=backend)


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
def test_torch_backend_in_bf16_under_autocast(family):
    # The reference path in 16 bits (the fast path on a GPU today): really rounded, and within an RMS
    # error of 5% of the output's spread -- looser than the fused kernels' 2%, since autocast also
    # stores every layer's output in bf16 (1-2.2% seen here); with_grad stays in fp32.
    rng = random.Random(9)
    chans, decoder = family(rng)
    maps64 = random_maps(rng, chans, batch=2)
    coords = torch.rand(2, 700, 2, dtype=torch.float64) * 2.2 - 1.1
    want_v, want_g = implicit_decode(maps64, coords, decoder, backend="torch", with_grad=True)
    maps, dec = [m.float() for m in maps64], cast(decoder, torch.float32)

    def err(got, want):
        return ((got.double() - want).norm() / (want - want.mean()).norm()).item()

    for chunk in (None, 123):
        got = implicit_decode(maps, coords.float(), dec, backend="torch", precision="bf16", chunk=chunk)
        assert got.dtype == torch.float32
        assert 1e-5 < err(got, want_v) < 5e-2  # rounded (fp32 lands near 1e-7), but not garbage
    got_v, got_g = implicit_decode(maps, coords.float(), dec, backend="torch", precision="bf16", with_grad=True)
    assert err(got_v, want_v) < 1e-5 and err(got_g, want_g) < 1e-5


def test_auto_decoder_backend_follows_the_gpu_benchmark():
    """On a GPU ``auto`` is the plain-PyTorch decoder (it beat the fused cuda kernel on the H100);
    elsewhere it is the shared rule (cpp on the CPU when built). No GPU is needed to resolve a name."""
    from infinidepth.ops.gather import resolve_backend
    from infinidepth.ops.implicit_decode import resolve_decoder_backend

    assert resolve_decoder_backend("auto", "cuda") == "torch"
    assert resolve_decoder_backend("auto", "cpu") == resolve_backend("auto", "cpu")
    assert resolve_decoder_backend("torch", "cpu") == "torch"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's numpy, about the NaNs
@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_finite_values_propagate_like_the_reference(family, backend):
    """A NaN or infinite feature cell, or a NaN weight, gives a non-finite answer on every backend,
    exactly where the reference's is (a ReLU written max(x, 0) would turn NaN into 0)."""
    rng = random.Random(17)
    chans, decoder = family(rng)
    decoder = cast(decoder, torch.float32)
    maps = [torch.randn(2, c, 5, 6) for c in chans]
    maps[0][0, :, 2, 3] = float("nan")
    maps[-1][1, 0, 1, 1] = float("inf")
    maps[1][0, :, 0, 0] = float("inf")  # cell 0: what a kernel reads for taps outside the map, if it reads any
    coords = torch.rand(2, 300, 2) * 2.4 - 1.2
    want = implicit_decode(maps, coords, decoder, backend="torch")
    bad = ~torch.isfinite(want)
    assert bad[0].any() and bad[1].any() and not bad.all()
    for with_grad in (False, True):
        got = implicit_decode(maps, coords, decoder, backend=backend, with_grad=with_grad)
        got = got[0] if with_grad else got
        assert torch.equal(~torch.isfinite(got), bad), with_grad
        assert rel_err(got[~bad], want[~bad]) < 1e-4
    # a NaN bias in the last hidden layer reaches every query
    layers = decoder.layers if family is random_concat else decoder.head
    layers[-2][1][0] = float("nan")
    assert torch.isnan(implicit_decode(maps, coords, decoder, backend="torch")).all()
    assert torch.isnan(implicit_decode(maps, coords, decoder, backend=backend)).all()


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_malformed_maps_and_decoders_are_refused_before_any_kernel(backend):
    rng = random.Random(19)
    chans, decoder = random_hierarchical(rng)
    decoder = cast(decoder, torch.float32)
    maps = [torch.randn(1, c, 4, 5) for c in chans]
    coords = torch.rand(1, 10, 2) * 2 - 1
    empty = [maps[0], maps[1][:, :, :0], maps[2]]
    with pytest.raises(ValueError, match="feature map 1 has no cells"):
        implicit_decode(empty, coords, decoder, backend=backend)
    with pytest.raises(TypeError, match="feature map 0 must be a float tensor"):
        implicit_decode([maps[0].long()] + maps[1:], coords, decoder, backend=backend)
    with pytest.raises(TypeError, match="feature map 2 is torch.float64"):
        implicit_decode(maps[:2] + [maps[2].double()], coords, decoder, backend=backend)
    short_bias = cast(decoder, torch.float32)
    w, b = short_bias.head[0]
    short_bias.head[0] = (w, b[:-1])
    with pytest.raises(ValueError, match="head layer 0: bias must be"):
        implicit_decode(maps, coords, short_bias, backend=backend)
    wide = cast(decoder, torch.float32)
    w, b = wide.head[-1]
    wide.head[-1] = (torch.cat([w, w]), torch.cat([b, b]))
    with pytest.raises(ValueError, match="last layer must have 1 output"):
        implicit_decode(maps, coords, wide, backend=backend)
    one_gate = cast(decoder, torch.float32)  # one gate for map 2's 5 channels: it would broadcast, silently
    one_gate.gates[1] = one_gate.gates[1][:1]
    with pytest.raises(ValueError, match="stage 1: lateral and gate must have map 2's 5 channels"):
        implicit_decode(maps, coords, one_gate, backend=backend)
    from infinidepth.ops import bilinear_gather

    with pytest.raises(ValueError, match="no cells"):
        bilinear_gather(torch.rand(2, 5, 0, 7), torch.rand(2, 10, 2) * 2 - 1, backend=backend)
    # taps outside the map read zero padding, not cell 0 times a zero weight (NaN when cell 0 is)
    feat = torch.randn(1, 3, 4, 5)
    feat[0, :, 0, 0] = float("inf")
    feat[0, 1, 3, 4] = float("nan")
    where = torch.rand(1, 500, 2) * 3 - 1.5
    want = bilinear_gather(feat, where, backend="torch")
    got = bilinear_gather(feat, where, backend=backend)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.isnan(want).any() and torch.isinf(want).any()
    with pytest.raises(TypeError, match="float tensor"):
        bilinear_gather(torch.arange(8).reshape(2, 1, 2, 2), torch.zeros(2, 1, 2), backend=backend)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_taps_outside_the_maps_read_nothing_of_the_image_before(backend):
    """A tap outside a map has index -1: read as a cell, it would be the cell just before the image
    in memory, the previous image's last one. With those cells infinite in image 0, image 1's
    queries across its top and left borders stay finite, as the reference's (zero padding). The
    hierarchical decoder gathers in its first layer and in a later one."""
    chans, decoder = random_hierarchical(random.Random(47))
    decoder = cast(decoder, torch.float32)
    maps = [torch.randn(2, c, 4, 5) for c in chans]
    for m in maps:
        m[0, :, -1, -1] = float("inf")
    coords = torch.rand(2, 40, 2) * 0.6 - 0.3  # image 0: well inside, away from its last cells
    coords[1] = torch.rand(40, 2) * 0.3 - 1.2  # image 1: its first row and column and beyond
    want = implicit_decode(maps, coords, decoder, backend="torch")
    assert torch.isfinite(want).all()
    for with_grad in (False, True):
        got = implicit_decode(maps, coords, decoder, backend=backend, with_grad=with_grad)
        got = got[0] if with_grad else got
        assert torch.isfinite(got).all() and rel_err(got, want) < 1e-4, with_grad


@pytest.mark.parametrize("backend", ["torch"] + KERNEL_BACKENDS)
def test_decoders_with_missing_stages_or_layers_are_refused(backend):
    """A hierarchical decoder with fewer gates or ffns than laterals used to decode without its last
    stages (zip stopped at the shortest list: the last map was ignored, silently, whenever the channel
    counts happened to fit), and one without a head gave the fused kernels the last FFN's output as
    the field's value where the reference raised an IndexError."""
    chans = [3, 4, 4]
    decoder = hierarchical(chans, [4, 5, 1])
    maps = [torch.randn(1, c, 4, 5, dtype=torch.float64) for c in chans]
    coords = torch.rand(1, 6, 2, dtype=torch.float64) * 2 - 1
    for field in ("gates", "ffns"):
        short = HierarchicalDecoder(**{**vars(decoder), field: list(getattr(decoder, field))[:1]})
        with pytest.raises(ValueError, match="one gate, lateral and ffn per stage"):
            implicit_decode(maps, coords, short, backend=backend)
    chans = [3, 1]
    no_head = HierarchicalDecoder(**{**vars(hierarchical(chans, [1, 1])), "head": []})
    maps = [torch.randn(1, c, 4, 5, dtype=torch.float64) for c in chans]
    with pytest.raises(ValueError, match="no head layers"):
        implicit_decode(maps, coords, no_head, backend=backend)
    with pytest.raises(ValueError, match="no layers"):
        implicit_decode(maps, coords, ConcatDecoder([]), backend=backend)


def test_reference_computes_in_the_maps_dtype():
    """float64 maps with a float32 decoder: the reference computes in float64 (not an error deep
    in F.linear), the kernels in float32; both agree."""
    rng = random.Random(23)
    chans, decoder = random_concat(rng)
    maps = random_maps(rng, chans, batch=2)
    coords = torch.rand(2, 50, 2, dtype=torch.float64) * 2 - 1
    want = implicit_decode(maps, coords, decoder, backend="torch")
    got = implicit_decode(maps, coords, cast(decoder, torch.float32), backend="torch")
    assert got.dtype == torch.float64 and rel_err(got, want) < 1e-6
    for backend in KERNEL_BACKENDS:
        assert rel_err(implicit_decode(maps, coords, decoder, backend=backend), want) < 1e-5


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_fused_backends_give_the_reference_gradients(backend):
    """A decode autograd must record (maps, weights or coordinates requiring grad) used to come back
    from a fused backend without a graph to the maps and weights (the fold runs without autograd)
    and with a silent None for the coordinates; it now gets the reference's gradients."""
    rng = random.Random(31)
    chans, decoder = random_concat(rng)
    decoder = cast(decoder, torch.float32)
    maps = [m.float().requires_grad_() for m in random_maps(rng, chans, batch=2)]
    w0 = decoder.layers[0][0].requires_grad_()
    coords = (torch.rand(2, 40, 2) * 2 - 1).requires_grad_()
    inputs = (*maps, w0, coords)
    want = torch.autograd.grad(implicit_decode(maps, coords, decoder, backend="torch").sum(), inputs)
    out = implicit_decode(maps, coords, decoder, backend=backend)
    assert out.requires_grad
    got = torch.autograd.grad(out.sum(), inputs)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5
    # the coordinates alone requiring grad (a loss on where the field is read) record the call too
    plain_maps = [m.detach() for m in maps]
    plain = ConcatDecoder([(w.detach(), b.detach()) for w, b in decoder.layers])
    c = coords.detach().requires_grad_()
    want_c = torch.autograd.grad(implicit_decode(plain_maps, c, plain, backend="torch").sum(), c)[0]
    out = implicit_decode(plain_maps, c, plain, backend=backend)
    assert out.requires_grad
    assert rel_err(torch.autograd.grad(out.sum(), c)[0], want_c) < 1e-5
    with torch.no_grad():  # without autograd the kernel runs (and folds into the cache)
        cache = {}
        implicit_decode(maps, coords, decoder, backend=backend, cache=cache)
        assert ("folded", backend) in cache


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
def test_fold_cache_follows_the_maps(family):
    """The fold kept in ``cache`` was keyed on the decoder only: maps changed in place, other maps
    under the same dict (also views of the same memory), or a weight whose ``.data`` was swapped got
    the stale fold (errors of the order of the output's spread)."""
    rng = random.Random(37)
    chans, decoder = family(rng)
    decoder = cast(decoder, torch.float32)
    maps = [m.float() for m in random_maps(rng, chans, batch=2)]
    coords = torch.rand(2, 60, 2) * 2 - 1
    cache = {}

    def check(maps):
        got = implicit_decode(maps, coords, decoder, backend="cpp", cache=cache)
        assert rel_err(got, implicit_decode(maps, coords, decoder, backend="torch")) < 1e-4

    check(maps)
    maps[0].mul_(2.0)
    check(maps)
    last = decoder.layers[-1] if family is random_concat else decoder.head[-1]
    last[0].data = last[0].data * -3.0
    check(maps)  # the same maps: only the weight's new storage tells
    check([m.transpose(-2, -1) for m in maps])  # views of the same storage and version: only identity tells
    check([m.flip(-1).contiguous() for m in maps])
    assert len(cache) == 1


@pytest.mark.skipif("cpp" not in KERNEL_BACKENDS, reason="extension not built")
def test_decoders_beyond_the_cpu_kernel_are_computed_by_auto_and_named_by_cpp():
    """A deep MLP (9 layers) or many maps (9) fold into a program the cpp kernel cannot hold: 'auto'
    (cpp on the CPU) used to fail inside the kernel; it now computes it with the reference, and an
    explicit 'cpp' says why it refuses."""
    rng = random.Random(41)
    deep = ConcatDecoder([lin(a, b) for a, b in zip([3] + [5] * 8, [5] * 8 + [1])])
    wide = ConcatDecoder([lin(9, 6), lin(6, 1)])
    for decoder, maps in ((deep, random_maps(rng, [3], batch=2)), (wide, random_maps(rng, [1] * 9, batch=2))):
        decoder, maps = cast(decoder, torch.float32), [m.float() for m in maps]
        coords = torch.rand(2, 30, 2) * 2 - 1
        want = implicit_decode([m.double() for m in maps], coords.double(), decoder, backend="torch")
        assert rel_err(implicit_decode(maps, coords, decoder), want) < 1e-5
        with pytest.raises(ValueError, match="backend .cpp.: this decoder folds into .* where the kernel takes 8 layers and 8 maps"):
            implicit_decode(maps, coords, decoder, backend="cpp")
    # a decoder of exactly the kernel's limits (8 maps into the first of 8 layers) runs on cpp
    edge = cast(ConcatDecoder([lin(8, 5)] + [lin(5, 5) for _ in range(6)] + [lin(5, 1)]), torch.float32)
    maps = [m.float() for m in random_maps(rng, [1] * 8, batch=2)]
    coords = torch.rand(2, 30, 2) * 2 - 1
    want = implicit_decode([m.double() for m in maps], coords.double(), edge, backend="torch")
    assert rel_err(implicit_decode(maps, coords, edge, backend="cpp"), want) < 1e-5


@pytest.mark.skipif("cpp" not in KERNEL_BACKENDS, reason="extension not built")
def test_single_layer_decoder_ends_in_elu_on_cpp():
    """A concat decoder of one layer folds into one layer that is both the gathers' and the output's:
    ELU, as the reference (never ReLU, the hidden layers' activation: negative answers would be 0)."""
    rng = random.Random(43)
    decoder = cast(ConcatDecoder([lin(5, 1)]), torch.float32)
    maps = [m.float() for m in random_maps(rng, [2, 3], batch=2)]
    coords = torch.rand(2, 60, 2) * 2.4 - 1.2
    want = implicit_decode([m.double() for m in maps], coords.double(), decoder, backend="torch")
    assert (want < 0).any()
    assert rel_err(implicit_decode(maps, coords, decoder, backend="cpp"), want) < 1e-5

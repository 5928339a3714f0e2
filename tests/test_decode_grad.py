"""implicit_decode(with_grad=True): the derivative of the field with respect to the query.

The reference (autograd through grid_sample and the MLP) is checked against central finite
differences in float64; every kernel backend carries forward-mode tangents and is fuzzed against
the reference. Tolerances: float64 reference vs finite differences 1e-6 of the derivative's
scale; fp32 kernels 1e-5 (values) and 2e-5 (derivatives) of the reference's spread.
"""

import random

import pytest
import torch

from infinidepth.ops import implicit_decode

from conftest import rel_err
from test_implicit_decode import KERNEL_BACKENDS, cast, fused_op_args, random_concat, random_hierarchical, random_maps


def finite_difference(maps, coords, decoder, axis, h=1e-6):
    step = torch.zeros(2, dtype=torch.float64)
    step[axis] = h
    plus = implicit_decode(maps, coords + step, decoder, backend="torch")
    minus = implicit_decode(maps, coords - step, decoder, backend="torch")
    return (plus - minus) / (2 * h)


def fuzz_coords(batch, n, rng_seed):
    """Random queries inside, on and beyond the borders, plus the four corners and far away points."""
    g = torch.Generator().manual_seed(rng_seed)
    coords = torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 2.6 - 1.3
    coords[:, :4] = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64) * 0.999
    coords[:, 4] = torch.tensor([5.0, -7.0], dtype=torch.float64)
    return coords


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
def test_reference_gradient_matches_finite_differences(family):
    rng = random.Random(17)
    for _ in range(3):
        chans, decoder = family(rng)
        maps = random_maps(rng, chans, batch=2)
        coords = fuzz_coords(2, 40, rng.randint(0, 1000))
        value, grad = implicit_decode(maps, coords, decoder, backend="torch", with_grad=True)
        assert value.shape == (2, 40) and grad.shape == (2, 40, 2)
        torch.testing.assert_close(value, implicit_decode(maps, coords, decoder, backend="torch"), rtol=0, atol=1e-12)
        scale = grad.abs().max().item() + 1e-12
        for axis in (0, 1):
            fd = finite_difference(maps, coords, decoder, axis)
            assert (fd - grad[..., axis]).abs().max().item() / scale < 1e-6
        # far outside the maps nothing is read, so the field is flat there
        assert grad[:, 4].abs().max().item() == 0.0


def test_gradient_is_exact_for_a_linear_field():
    """A one-channel map holding a positive linear ramp and an identity decoder (ReLU then ELU of a
    positive value): the field is the ramp, whose derivative is known in closed form."""
    from infinidepth.ops import ConcatDecoder

    H, W = 6, 9
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    ramp = (10 + 2.0 * ys + 3.0 * xs)[None, None]  # value = 10 + 2 * py + 3 * px (pixel units)
    identity = (torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    decoder = ConcatDecoder([identity, identity])
    coords = torch.rand(1, 50, 2, dtype=torch.float64) * 1.2 - 0.6  # well inside: no zero padding involved
    for backend in ["torch", *KERNEL_BACKENDS]:
        dec = decoder if backend == "torch" else cast(decoder, torch.float32)
        m = ramp if backend == "torch" else ramp.float()
        c = coords if backend == "torch" else coords.float()
        _, grad = implicit_decode([m], c, dec, backend=backend, with_grad=True)
        # d py / d y = H / 2, d px / d x = W / 2
        torch.testing.assert_close(grad[..., 0].double(), torch.full((1, 50), 2.0 * H / 2, dtype=torch.float64), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad[..., 1].double(), torch.full((1, 50), 3.0 * W / 2, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernel_tangents_match_reference(family, backend):
    rng = random.Random(29)
    for _ in range(4):
        chans, decoder = family(rng)
        decoder32 = cast(decoder, torch.float32)
        batch = rng.randint(1, 3)
        maps = [m.float() for m in random_maps(rng, chans, batch=batch)]
        coords = fuzz_coords(batch, rng.randint(5, 150), rng.randint(0, 1000)).float()
        want_v, want_g = implicit_decode([m.double() for m in maps], coords.double(), decoder, backend="torch", with_grad=True)
        got_v, got_g = implicit_decode(maps, coords, decoder32, backend=backend, with_grad=True)
        assert got_v.dtype == torch.float32 and got_g.shape == want_g.shape
        assert rel_err(got_v, want_v) < 1e-5
        assert rel_err(got_g, want_g) < 2e-5
        # the value is the same function with or without tangents
        torch.testing.assert_close(got_v, implicit_decode(maps, coords, decoder32, backend=backend), rtol=0, atol=1e-5)


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
def test_derivatives_stay_fp32_whatever_the_precision():
    """with_grad asks for fp32 products on every backend: through 16-bit ones the tangents lose far
    more than the value (infinidepth.ops.fold.run_fused). Triton in fp16 (what the interpreter
    computes right) gives exactly its fp32 answer, value included."""
    rng = random.Random(31)
    chans, decoder = random_hierarchical(rng)
    decoder32 = cast(decoder, torch.float32)
    maps = [m.float() for m in random_maps(rng, chans, batch=1)]
    coords = fuzz_coords(1, 40, 3).float()
    fp32 = implicit_decode(maps, coords, decoder32, backend="triton", with_grad=True)
    fp16 = implicit_decode(maps, coords, decoder32, backend="triton", precision="fp16", with_grad=True)
    for a, b in zip(fp16, fp32):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # without with_grad the same call does compute in fp16
    assert not torch.equal(implicit_decode(maps, coords, decoder32, backend="triton", precision="fp16"), fp32[0])


@pytest.mark.skipif("triton" not in KERNEL_BACKENDS, reason="triton is not available")
def test_triton_tail_runs_every_activation_with_its_derivative():
    """The Triton decoder's tail (the layers after its streamed pairs) picks each layer's activation
    at run time, and the fold only ever puts ReLU and ELU there: a hand-made program puts each
    activation in the tail, value and derivative against autograd through the folded reference."""
    from infinidepth.kernels.fused_decode import fused_decode_triton
    from infinidepth.ops.fold import ACTIVATIONS, FoldedDecoder, FoldedLayer, run_folded_reference

    g = torch.Generator().manual_seed(5)

    def dense(cin, cout, act):
        return FoldedLayer(torch.randn(cout, cin, generator=g, dtype=torch.float64) / cin**0.5,
                           torch.randn(cout, generator=g, dtype=torch.float64) * 0.3, act=act)

    first = FoldedLayer(None, torch.zeros(6, dtype=torch.float64), [torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)], "relu")
    coords = fuzz_coords(2, 20, 7)
    for act in ACTIVATIONS:
        # pair 1 (the gathers, then 5 wide), pair 3 (7 then 5 wide), tail: 6 wide with act, then 1
        folded = FoldedDecoder([first, dense(6, 5, "none"), dense(5, 7, "gelu"), dense(7, 5, "relu"),
                                dense(5, 6, act), dense(6, 1, "elu")])
        c = coords.clone().requires_grad_(True)
        want_v = run_folded_reference(folded, c)
        (want_g,) = torch.autograd.grad(want_v.sum(), c)
        folded32 = FoldedDecoder([FoldedLayer(None if l.weight is None else l.weight.float(), l.bias.float(),
                                              [m.float() for m in l.maps], l.act) for l in folded.layers])
        got = fused_decode_triton(folded32, coords.float(), with_grad=True)
        assert rel_err(got[..., 0], want_v.detach()) < 1e-5, act
        assert rel_err(got[..., 1:], want_g) < 2e-5, act


def test_empty_query_set_with_grad():
    rng = random.Random(3)
    chans, decoder = random_concat(rng)
    maps = random_maps(rng, chans, batch=2)
    for backend in ["torch", *KERNEL_BACKENDS]:
        dec = decoder if backend == "torch" else cast(decoder, torch.float32)
        ms = maps if backend == "torch" else [m.float() for m in maps]
        value, grad = implicit_decode(ms, torch.zeros(2, 0, 2, dtype=ms[0].dtype), dec, backend=backend, with_grad=True)
        assert value.shape == (2, 0) and grad.shape == (2, 0, 2)


def test_with_grad_op_contract():
    from infinidepth.ops.gather import HAS_EXTENSION

    if not HAS_EXTENSION:
        pytest.skip("extension not built")
    args = fused_op_args(random_hierarchical, 2)
    torch.library.opcheck(torch.ops.infinidepth.fused_decode_with_grad.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_with_grad_is_differentiable_where_autograd_records_it(family, backend):
    """with_grad used to return a detached value and derivative even where autograd records the call
    (maps, coordinates or decoder requiring grad): a loss on either (a normal-consistency term) got
    no gradient at all, silently. Both now stay in the graph, and their gradients are the exact
    ones (gradcheck in float64, second order through the derivative included)."""
    rng = random.Random(41)
    chans, decoder = family(rng)
    maps = random_maps(rng, chans, batch=2)
    coords = torch.rand(2, 5, 2, dtype=torch.float64) * 1.8 - 0.9

    def value_and_grad(*inputs):
        ms, c = list(inputs[:-1]), inputs[-1]
        return implicit_decode(ms, c, decoder, backend=backend, with_grad=True)

    inputs = tuple(m.clone().requires_grad_(True) for m in maps) + (coords.clone().requires_grad_(True),)
    value, grad = value_and_grad(*inputs)
    assert value.requires_grad and grad.requires_grad
    assert torch.autograd.gradcheck(value_and_grad, inputs)
    # without anything to record, nothing is recorded (the fused kernels run)
    value, grad = implicit_decode(maps, coords, decoder, backend=backend, with_grad=True)
    assert not value.requires_grad and not grad.requires_grad

"""implicit_decode: the torch reference against a per-query numpy transcription of DESIGN.md, and
every kernel backend against the torch reference."""

import math
import random

import numpy as np
import pytest
import torch

from infinidepth.ops import ConcatDecoder, HierarchicalDecoder, available_backends, implicit_decode

from conftest import rel_err
from test_coords import bilinear_by_hand

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


def lin(cin, cout):
    return torch.randn(cout, cin, dtype=torch.float64) / math.sqrt(cin), torch.randn(cout, dtype=torch.float64) * 0.1


def random_concat(rng):
    chans = [rng.randint(1, 9), rng.randint(1, 9)]
    dims = [sum(chans), rng.randint(2, 12), rng.randint(2, 8), 1]
    return chans, ConcatDecoder([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])


def random_hierarchical(rng):
    chans = [rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 6)]
    return chans, HierarchicalDecoder(
        gates=[torch.randn(c, dtype=torch.float64) for c in chans[1:]],
        laterals=[lin(a, b) for a, b in zip(chans[:-1], chans[1:])],
        ffns=[(lin(c, 4 * c), lin(4 * c, c)) for c in chans[1:]],
        head=[lin(chans[-1], 5), lin(5, 4), lin(4, 1)],
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
        decoder = type(decoder)(**{k: _to32(v) for k, v in vars(decoder).items()})
        maps = [m.float() for m in random_maps(rng, chans, batch=rng.randint(1, 3))]
        coords = torch.rand(maps[0].shape[0], rng.randint(1, 200), 2) * 2.6 - 1.3
        want = implicit_decode(maps, coords, decoder, backend="torch")
        got = implicit_decode(maps, coords, decoder, backend=backend)
        assert rel_err(got, want) < 1e-5


def _to32(v):
    if isinstance(v, torch.Tensor):
        return v.float()
    return type(v)(_to32(t) for t in v)


def test_chunking_does_not_change_the_result():
    rng = random.Random(3)
    chans, decoder = random_hierarchical(rng)
    maps = random_maps(rng, chans, batch=2)
    coords = torch.rand(2, 101, 2, dtype=torch.float64) * 2 - 1
    whole = implicit_decode(maps, coords, decoder, backend="torch")
    chunked = implicit_decode(maps, coords, decoder, backend="torch", chunk=7)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)  # BLAS may sum in another order


def test_mismatched_channels_are_reported():
    rng = random.Random(5)
    _, decoder = random_concat(rng)
    maps = [torch.randn(1, 50, 4, 4, dtype=torch.float64)]
    with pytest.raises(ValueError, match="channels"):
        implicit_decode(maps, torch.zeros(1, 3, 2, dtype=torch.float64), decoder, backend="torch")

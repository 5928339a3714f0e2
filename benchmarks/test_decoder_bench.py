"""pytest-benchmark suite of the decoder at ViT-L sizes: ``pytest benchmarks/ --benchmark-only``.

Compares every available backend with the released-style chunked PyTorch path on the same queries.
"""

import pytest
import torch

from infinidepth.ops import available_backends, implicit_decode

from decoder import BASELINE_CHUNK, make_problem, query_grid

QUERIES = 16384


@pytest.fixture(scope="module", params=["official", "paper"])
def problem(request):
    maps, dec = make_problem(request.param, torch.device("cpu"))
    return request.param, maps, dec, query_grid(QUERIES, "cpu")


def test_baseline_released_style(benchmark, problem):
    name, maps, dec, coords = problem
    benchmark.group = f"{name} decoder, {QUERIES} queries"
    out = benchmark(lambda: implicit_decode(maps, coords, dec, backend="torch", chunk=BASELINE_CHUNK))
    assert out.shape == (1, QUERIES)


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b not in ("torch", "triton")])
def test_fused(benchmark, problem, backend):
    name, maps, dec, coords = problem
    benchmark.group = f"{name} decoder, {QUERIES} queries"
    cache: dict = {}
    implicit_decode(maps, coords[:, :1], dec, backend=backend, cache=cache)  # fold once per image
    out = benchmark(lambda: implicit_decode(maps, coords, dec, backend=backend, cache=cache))
    assert out.shape == (1, QUERIES)

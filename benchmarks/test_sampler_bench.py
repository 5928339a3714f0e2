"""pytest-benchmark suite of the depth query strategy: ``pytest benchmarks/ --benchmark-only``.

The surface-area sampler on every CPU backend against the released triangle-area sampler (plain
PyTorch) at the same budget, on the analytic corridor at 384x512 with 1 M points.
"""

import pytest
import torch

from infinidepth.ops import available_backends
from infinidepth.sampling import surface_area_sample, triangle_area_sample

from sampler import make_problem

POINTS = 1_000_000


@pytest.fixture(scope="module")
def problem():
    return make_problem((384, 512), torch.device("cpu"))


def test_triangle_released(benchmark, problem):
    depth, _, K = problem
    benchmark.group = f"sampler, 384x512, {POINTS} points"
    out = benchmark(lambda: triangle_area_sample(depth, K, POINTS))
    assert out.shape == (1, POINTS, 2)


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "triton"])
def test_surface_area(benchmark, problem, backend):
    depth, normals, K = problem
    benchmark.group = f"sampler, 384x512, {POINTS} points"
    out = benchmark(lambda: surface_area_sample(depth, normals, K, POINTS, seed=0, backend=backend))
    assert out.shape == (1, POINTS, 2)

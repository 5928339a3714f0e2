"""pytest-benchmark suite of the gather: ``pytest benchmarks/ --benchmark-only``."""

import pytest
import torch

from infinidepth.ops import available_backends, bilinear_gather


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "triton"])
def test_gather_official_vit_map(benchmark, backend):
    torch.manual_seed(0)
    feat = torch.randn(1, 1024, 48, 64)
    coords = torch.rand(1, 16384, 2) * 2 - 1
    out = benchmark(bilinear_gather, feat, coords, backend)
    assert out.shape == (1, 16384, 1024)

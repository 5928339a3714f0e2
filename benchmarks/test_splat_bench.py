"""pytest-benchmark suite of the Gaussian rasterisers: ``pytest benchmarks/ --benchmark-only``.

The plain-PyTorch reference against the C++ CPU kernel, on the Gaussians `infinidepth gs` makes of
the bundled picture (20,000 of them here, to keep the reference's rounds short), at 384x512.
"""

import pytest
import torch

from infinidepth.gs.render import render
from infinidepth.ops import available_backends

from splat_render import make_scene

SIZE = (384, 512)


@pytest.fixture(scope="module")
def scene():
    g, (H0, W0), _ = make_scene(20_000, "cpu")
    fx = float(max(H0, W0))
    K = torch.tensor([[fx * SIZE[1] / W0, 0, SIZE[1] / 2], [0, fx * SIZE[0] / H0, SIZE[0] / 2], [0, 0, 1]])
    return g, K


@pytest.mark.parametrize("backend", ["torch"] + [b for b in ("cpp",) if b in available_backends("cpu")])
def test_render(benchmark, scene, backend):
    g, K = scene
    benchmark.group = f"Gaussian rasteriser, {len(g)} Gaussians, {SIZE[0]}x{SIZE[1]}"
    out = benchmark(lambda: render(g, torch.eye(4), K, SIZE, backend=backend))
    assert out["rgb"].shape == (*SIZE, 3) and out["alpha"].max() > 0.5

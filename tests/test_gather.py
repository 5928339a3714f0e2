"""Every backend of bilinear_gather against the torch reference, fuzzed; plus the op's contract."""

import random

import pytest
import torch

from infinidepth.ops import available_backends, bilinear_gather, bilinear_gather_reference
from infinidepth.ops.gather import HAS_EXTENSION, has_cuda_kernels

from conftest import rel_err

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


def random_case(rng: random.Random, contiguous: bool = True):
    B, C, H, W, N = rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 17), rng.randint(1, 17), rng.randint(0, 300)
    feat = torch.randn(B, C, H, W)
    coords = torch.rand(B, N, 2) * 2.8 - 1.4  # inside, on and beyond the borders
    if N >= 6:
        coords[:, :6] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [1e6, 0.0], [0.0, -1e6]])
    if not contiguous:
        feat = torch.randn(B, W, H, C).permute(0, 3, 2, 1)  # channels-last memory
        coords = torch.rand(B, 2, N).mul(2.8).sub(1.4).transpose(1, 2)
    return feat, coords


def test_extension_is_built():
    assert HAS_EXTENSION, "infinidepth._C did not import: the C++ extension is not built"
    assert "cpp" in available_backends("cpu")


def test_cuda_sources_compiled_when_possible():
    import os
    import shutil

    if torch.version.cuda is None or shutil.which("nvcc") is None:
        pytest.skip("this torch has no CUDA or nvcc is absent: the CUDA part is not built")
    if os.environ.get("INFINIDEPTH_NO_CUDA") == "1":
        pytest.skip("INFINIDEPTH_NO_CUDA=1: the build was told to leave CUDA out")
    assert has_cuda_kernels(), "torch has CUDA and nvcc exists, but the CUDA kernels were not compiled in"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("infinidepth::fused_decode", "CUDA")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_backend_matches_reference_fuzzed(backend, contiguous):
    rng = random.Random(hash((backend, contiguous)) & 0xFFFF)
    for _ in range(12 if backend == "cpp" else 4):
        feat, coords = random_case(rng, contiguous)
        got = bilinear_gather(feat, coords, backend=backend)
        want = bilinear_gather_reference(feat, coords)
        assert got.shape == want.shape
        if want.numel():
            assert rel_err(got, want) < 1e-5  # fp32 tolerance


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_bad_coordinates_get_clear_errors(backend):
    feat = torch.randn(1, 4, 5, 6)
    with pytest.raises(ValueError, match="NaN"):
        bilinear_gather(feat, torch.tensor([[[0.0, float("nan")]]]), backend=backend)
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        bilinear_gather(feat, torch.zeros(1, 5, 3), backend=backend)
    with pytest.raises(ValueError, match="batch"):
        bilinear_gather(feat, torch.zeros(2, 5, 2), backend=backend)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        bilinear_gather(torch.randn(4, 5, 6), torch.zeros(1, 5, 2), backend=backend)


def test_unknown_or_unavailable_backend_is_named():
    feat, coords = torch.randn(1, 2, 3, 3), torch.zeros(1, 1, 2)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        bilinear_gather(feat, coords, backend="fast")
    with pytest.raises(RuntimeError, match="'cuda' is not available for cpu"):
        bilinear_gather(feat, coords, backend="cuda")


def test_custom_op_contract():
    """Schema, fake (meta) implementation and dispatch pass torch.library's own checks."""
    op = torch.ops.infinidepth.bilinear_gather.default
    torch.library.opcheck(op, (torch.randn(2, 3, 5, 7), torch.rand(2, 11, 2) * 2 - 1),
                          test_utils=("test_schema", "test_faketensor"))


def test_double_inputs_are_computed_and_returned_in_their_dtype():
    feat, coords = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.rand(1, 9, 2, dtype=torch.float64) * 2 - 1
    got = bilinear_gather(feat, coords, backend="cpp")
    assert got.dtype == torch.float64
    assert rel_err(got, bilinear_gather_reference(feat, coords)) < 1e-5


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernel_backends_pass_gradients_to_the_map_and_the_coords(backend):
    """Through a kernel backend autograd used to see nothing (triton: no graph at all) or a warning
    and None (cpp, cuda: no autograd kernel registered): the map and the coordinates got no gradient.
    Now every backend has the reference's backward, also for float64 and float16 inputs."""
    torch.manual_seed(3)
    for dtype in (torch.float32, torch.float64, torch.float16):
        feat = torch.randn(2, 3, 4, 5, dtype=dtype)
        coords = torch.rand(2, 9, 2, dtype=dtype) * 2.4 - 1.2
        coords[:, 0] = 4.0  # beyond the clamp: flat
        grad = torch.randn(2, 9, 3, dtype=dtype)
        f64, c64 = feat.double().requires_grad_(), coords.double().requires_grad_()
        want = torch.autograd.grad(bilinear_gather_reference(f64, c64), (f64, c64), grad.double())
        f, c = feat.clone().requires_grad_(), coords.clone().requires_grad_()
        got = torch.autograd.grad(bilinear_gather(f, c, backend=backend), (f, c), grad)
        tol = 1e-2 if dtype == torch.float16 else 1e-5
        for g, w in zip(got, want):
            assert g.dtype == dtype and rel_err(g, w) < tol
    # only the map, under a plain loss.backward()
    f = torch.randn(1, 2, 3, 3, requires_grad=True)
    bilinear_gather(f, torch.rand(1, 5, 2) * 2 - 1, backend=backend).sum().backward()
    assert f.grad is not None and f.grad.abs().sum() > 0


@pytest.mark.skipif(not HAS_EXTENSION, reason="extension not built")
def test_custom_op_autograd_contract():
    op = torch.ops.infinidepth.bilinear_gather.default
    feat = torch.randn(2, 3, 5, 7, requires_grad=True)
    coords = (torch.rand(2, 11, 2) * 2.4 - 1.2).requires_grad_()
    torch.library.opcheck(op, (feat, coords), test_utils=("test_autograd_registration", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_16_bit_maps_read_at_the_float32_queries(dtype, tol):
    """16-bit maps: every backend, the reference included, samples the map at the float32 query and
    rounds only the result. The reference used torch's 16-bit CPU grid_sample, which gave NaN and
    wrong values on 256-cell maps, at the query rounded to 16 bits (bf16: steps of 2 pixels here)."""
    feat = torch.randn(1, 2, 256, 256).to(dtype)
    coords = torch.rand(1, 2000, 2) * 2 - 1
    want = bilinear_gather_reference(feat.double(), coords.double())
    for backend in ["torch", *KERNEL_BACKENDS]:
        got = bilinear_gather(feat, coords, backend=backend)
        assert got.dtype == dtype and rel_err(got, want) < tol, backend


def test_coordinate_limit_is_inclusive_and_named():
    """check_coords with a limit (the models pass 2): coordinates up to the limit itself pass;
    beyond it, NaN or infinite values get a ValueError naming the problem."""
    from infinidepth.ops.gather import check_coords

    edge = torch.tensor([[[2.0, -2.0], [0.0, 1.5]]])
    check_coords(edge, 1, limit=2.0)
    for bad, match in ((2.001, "more than 2"), (-40.0, "magnitude 40"), (float("nan"), "NaN"), (float("inf"), "infinite")):
        coords = edge.clone()
        coords[0, 1, 1] = bad
        with pytest.raises(ValueError, match=match):
            check_coords(coords, 1, limit=2.0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_taps_outside_the_map_read_nothing_of_the_image_before(backend):
    """A tap outside the map has index -1: read as a cell, it would be the cell just before the
    image in memory, the previous image's last one. With that cell infinite, image 1's queries
    across its top and left borders stay finite, as the reference's (zero padding)."""
    feat = torch.randn(2, 3, 4, 5)
    feat[0, :, -1, -1] = float("inf")
    coords = torch.rand(2, 64, 2) * 0.6 - 0.3  # image 0: well inside, away from the infinite cell
    coords[1] = torch.rand(64, 2) * 0.3 - 1.2  # image 1: its first row and column and beyond
    want = bilinear_gather_reference(feat, coords)
    assert torch.isfinite(want).all() and want[1].abs().sum() > 0
    got = bilinear_gather(feat, coords, backend=backend)
    assert torch.isfinite(got).all() and rel_err(got, want) < 1e-5

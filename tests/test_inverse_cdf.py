"""inverse_cdf_sample: stratified inverse-CDF placement of samples on a weighted grid.

Properties checked on the reference (independent of the kernels): stratification (each cell gets
n * p_i samples give or take one), a chi-square goodness of fit of the counts, jitter uniform
inside the cell, determinism by seed. Every kernel backend must then pick *exactly* the reference's
cells (integer arithmetic by construction) and coordinates within 1e-6 (float32).
"""

import ctypes
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infinidepth.ops import available_backends
from infinidepth.ops.inverse_cdf import inverse_cdf_reference, inverse_cdf_sample, jitter_hash, quantize_weights

KERNEL_BACKENDS = [b for b in available_backends("cpu") if b != "torch"]


def counts(cells, M):
    return torch.bincount(cells.reshape(-1), minlength=M).double()


def test_counts_are_stratified():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(1, 23, 31, generator=g) ** 3
    w[0, 5:8, 2:20] = 0
    n = 20000
    _, cells = inverse_cdf_sample(w, n, seed=3, backend="torch")
    expected = n * (w.reshape(-1) / w.sum()).double()
    got = counts(cells, w.numel())
    # stratified: never more than one sample away from the expectation (plus quantisation slack)
    assert (got - expected).abs().max().item() <= 1.0 + 1e-6
    assert got[(w.reshape(-1) == 0)].sum() == 0


def test_chi_square_goodness_of_fit():
    """Counts against the weights: chi-square far below what even i.i.d. sampling would give."""
    g = torch.Generator().manual_seed(2)
    w = torch.rand(1, 10, 12, generator=g) + 0.05
    n = 50000
    _, cells = inverse_cdf_sample(w, n, seed=11, backend="torch")
    expected = n * (w.reshape(-1) / w.sum()).double()
    chi2 = (((counts(cells, w.numel()) - expected) ** 2) / expected).sum().item()
    dof = w.numel() - 1
    assert chi2 < dof  # i.i.d. sampling would give about dof; stratification gives far less


def test_jitter_is_uniform_inside_the_cell():
    H, W = 7, 5
    w = torch.ones(1, H, W)
    n = 35000
    coords, cells = inverse_cdf_sample(w, n, seed=5, backend="torch")
    py = (coords[0, :, 0].double() + 1) / 2 * H
    px = (coords[0, :, 1].double() + 1) / 2 * W
    rows, cols = cells[0] // W, cells[0] % W
    fy, fx = py - rows, px - cols
    assert fy.min() >= 0 and fy.max() < 1 and fx.min() >= 0 and fx.max() < 1
    for frac in (fy, fx):  # 10 bins of the sub-cell offset: chi-square with 9 dof
        hist = torch.histc(frac.float(), bins=10, min=0, max=1).double()
        chi2 = (((hist - n / 10) ** 2) / (n / 10)).sum().item()
        assert chi2 < 30  # p < 0.0005 for 9 dof
    assert abs(torch.corrcoef(torch.stack([fy, fx]))[0, 1].item()) < 0.03


def test_without_jitter_samples_sit_at_cell_centres():
    H, W = 4, 6
    w = torch.rand(2, H, W) + 0.1
    coords, cells = inverse_cdf_sample(w, 100, seed=0, jitter=False, backend="torch")
    rows, cols = cells // W, cells % W
    torch.testing.assert_close(coords[..., 0], (rows.float() + 0.5) / H * 2 - 1)
    torch.testing.assert_close(coords[..., 1], (cols.float() + 0.5) / W * 2 - 1)


def test_seed_determines_everything():
    w = torch.rand(2, 9, 9)
    a = inverse_cdf_sample(w, 500, seed=42, backend="torch")
    b = inverse_cdf_sample(w, 500, seed=42, backend="torch")
    c = inverse_cdf_sample(w, 500, seed=43, backend="torch")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[1], c[1]) and not torch.equal(a[0], c[0])  # same cells (stratified), other jitter
    torch.manual_seed(9)
    d = inverse_cdf_sample(w, 500, backend="torch")
    torch.manual_seed(9)
    e = inverse_cdf_sample(w, 500, backend="torch")
    assert torch.equal(d[0], e[0])
    # images of a batch get independent jitter
    same = inverse_cdf_sample(torch.ones(2, 3, 3), 50, seed=1, backend="torch")[0]
    assert not torch.equal(same[0], same[1])


def test_jitter_hash_is_the_documented_lowbias32():
    """Independent transcription of the documented hash in numpy uint32 arithmetic."""

    def mix(h):
        h = np.uint32(h)
        with np.errstate(over="ignore"):
            h ^= h >> np.uint32(16)
            h = np.uint32(h * np.uint32(0x7FEB352D))
            h ^= h >> np.uint32(15)
            h = np.uint32(h * np.uint32(0x846CA68B))
            h ^= h >> np.uint32(16)
        return h

    seed, image = 123456789, 3
    stream = mix(np.uint32(seed) ^ mix(image))
    for j in (0, 1, 77, 2**29 + 5):
        for axis in (0, 1):
            want = float(mix(stream ^ mix(2 * j + axis)) >> np.uint32(8)) / 2**24
            got = jitter_hash(seed, image, torch.tensor([j]), axis).item()
            assert got == pytest.approx(want, abs=0)


def test_quantisation_keeps_every_positive_weight_and_fits_float64():
    w = torch.tensor([[0.0, 1e-30, 1.0, 0.5, 3.0]])
    q = quantize_weights(w)
    assert q[0, 0] == 0 and (q[0, 1:] > 0).all()
    assert int(q.sum()) < 2**53
    ratio = q[0, 2:].double() / q[0, 4].double()
    torch.testing.assert_close(ratio, torch.tensor([1 / 3, 0.5 / 3, 1.0], dtype=torch.float64), rtol=1e-9, atol=0)


def test_cells_do_not_depend_on_the_weights_scale():
    """The same proportions at any float64 scale give the same cells (2**k / max(w) would
    overflow for weights below ~1e-297 and send every sample to a cell of weight 0)."""
    w = torch.zeros(1, 4, 5, dtype=torch.float64)
    w[0, 1, 2], w[0, 3, 3], w[0, 0, 4] = 1.0, 0.5, 0.25
    want = inverse_cdf_sample(w, 50, seed=1)[1]
    assert set(want.unique().tolist()) == {4, 7, 18}
    for scale in (1e-300, 1e-250, 1e250, 1e300):
        assert torch.equal(inverse_cdf_sample(w * scale, 50, seed=1)[1], want), scale



def test_quantising_pixels_for_their_sub_pixels_equals_quantising_the_sub_pixels():
    """The surface-area sampler quantises each pixel once, for the cell count of its sub-pixels, and
    repeats the integers: exactly what quantising the repeated weights gives. The bits kept depend on
    the cell count (40 for 3,000 cells, 30 for 1,024 times as many), so the count matters."""
    w = torch.rand(2, 3000, generator=torch.Generator().manual_seed(5)) ** 3 + 1e-9
    for r2 in (4, 16, 1024):
        want = quantize_weights(w.repeat_interleave(r2, dim=1))
        assert torch.equal(quantize_weights(w, cells=w.shape[1] * r2).repeat_interleave(r2, dim=1), want), r2
    assert not torch.equal(quantize_weights(w, cells=w.shape[1] * 1024), quantize_weights(w))

@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_pick_exactly_the_reference_cells(backend):
    rng = random.Random(31)
    for trial in range(8):
        B, H, W = rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 40)
        g = torch.Generator().manual_seed(trial)
        w = torch.rand(B, H, W, generator=g) ** rng.choice([1, 4, 12])  # up to a huge dynamic range
        w[w < 0.05] = 0
        w.view(B, -1)[:, rng.randrange(H * W)] = 1.0  # at least one positive cell per image
        n = rng.choice([1, 2, 7, H * W, 3 * H * W + 1, rng.randint(1, 5000)])
        order = torch.randperm(H * W, generator=g) if trial % 2 else None   # weights laid out in another order
        for jitter in (True, False):
            want = inverse_cdf_sample(w, n, seed=trial, jitter=jitter, backend="torch", order=order)
            got = inverse_cdf_sample(w, n, seed=trial, jitter=jitter, backend=backend, order=order)
            assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), (trial, jitter)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_scan_grids_of_several_chunks(backend):
    """Grids of more than 2**16 cells, every cell weighted: the CPU kernel scans them in chunks of
    2**16 cells (Triton in blocks of 1024) whose sums offset the next ones; the large-grid tests
    above weight two cells only, so an offset that missed a chunk's first cell went unseen."""
    w = torch.rand(2, 300, 230, generator=torch.Generator().manual_seed(4)) + 0.01
    want = inverse_cdf_sample(w, 3000, seed=2, backend="torch")
    got = inverse_cdf_sample(w, 3000, seed=2, backend=backend)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.skipif("cpp" not in KERNEL_BACKENDS, reason="extension not built")
def test_ten_million_samples_on_the_cpu():
    """The issue's largest budget: 10 M samples of a 96 x 128 grid, identical to the reference."""
    w = torch.rand(1, 96, 128, generator=torch.Generator().manual_seed(0)) ** 8
    want = inverse_cdf_sample(w, 10_000_000, seed=1, backend="torch")
    got = inverse_cdf_sample(w, 10_000_000, seed=1, backend="cpp")
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_targets_on_a_cdf_boundary_go_to_the_upper_cell(backend):
    """16 equal cells, 8 samples: sample j's mass (j + 0.5) / 8 = (2j + 1) / 16 lies exactly on the
    boundary between cells 2j and 2j + 1; the convention (first cell whose CDF exceeds it) says 2j + 1."""
    _, cells = inverse_cdf_sample(torch.ones(1, 4, 4), 8, seed=0, backend=backend)
    assert cells[0].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_bad_input_is_reported(backend):
    w = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        inverse_cdf_sample(w, 0, backend=backend)
    with pytest.raises(ValueError, match="limit"):
        inverse_cdf_sample(w, 2**31, backend=backend)
    with pytest.raises(TypeError, match="int"):
        inverse_cdf_sample(w, 10.0, backend=backend)
    with pytest.raises(ValueError, match="seed"):
        inverse_cdf_sample(w, 10, seed=-1, backend=backend)
    with pytest.raises(ValueError, match="seed"):  # 2**32 would wrap to seed 0 in the hash
        inverse_cdf_sample(w, 10, seed=2**32, backend=backend)
    inverse_cdf_sample(w, 10, seed=2**32 - 1, backend=backend)  # the largest seed is one
    bad = w.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        inverse_cdf_sample(bad, 10, backend=backend)
    with pytest.raises(ValueError, match="non-negative"):
        inverse_cdf_sample(-w, 10, backend=backend)
    with pytest.raises(ValueError, match="image 1 has no positive weight"):
        inverse_cdf_sample(torch.stack([w[0], torch.zeros(4, 4)]), 10, backend=backend)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        inverse_cdf_sample(w[0], 10, backend=backend)
    for cell in (-1, 16):   # a kernel would read outside the weights
        with pytest.raises(ValueError, match=rf"order holds cells outside \[0, 16\): .*{cell}"):
            inverse_cdf_sample(w, 10, backend=backend, order=torch.cat([torch.arange(15), torch.tensor([cell])]))


def test_op_guards_direct_callers_and_contract():
    from infinidepth.ops.gather import HAS_EXTENSION

    if not HAS_EXTENSION:
        pytest.skip("extension not built")
    op = torch.ops.infinidepth.inverse_cdf_sample
    with pytest.raises(RuntimeError, match="int64"):
        op(torch.rand(1, 6), 2, 3, 5, 0, True)
    with pytest.raises(RuntimeError, match="6 cells, not 2 x 4"):
        op(torch.ones(1, 6, dtype=torch.int64), 2, 4, 5, 0, True)
    with pytest.raises(RuntimeError, match="order must be a contiguous int64 \\[6\\]"):
        op(torch.ones(1, 6, dtype=torch.int64), 2, 3, 5, 0, True, torch.arange(6).int())
    with pytest.raises(RuntimeError, match="order holds cells outside \\[0, 6\\)"):
        op(torch.ones(1, 6, dtype=torch.int64), 2, 3, 5, 0, True, torch.tensor([0, 1, 2, 3, 4, 6]))
    for order in (None, torch.tensor([5, 0, 4, 1, 3, 2])):
        args = (torch.arange(1, 13).reshape(2, 6), 2, 3, 11, 5, True, order)
        torch.library.opcheck(op.default, args, test_utils=("test_schema", "test_faketensor"))
        coords, cells = op(*args)
        ref = inverse_cdf_reference(*args)
        assert torch.equal(cells, ref[1]) and torch.equal(coords, ref[0])


def assert_every_sample_in_its_cell(w, n, seed, backend):
    """Worked out in float64, each of ``n`` samples of weights ``w`` [1, H, W] lies in its own cell,
    and a kernel backend gives the reference's samples bit for bit."""
    H, W = w.shape[1:]
    coords, cells = inverse_cdf_sample(w, n, seed=seed, backend=backend)
    assert coords.max() < 1.0
    py = (coords[0, :, 0].double() + 1) / 2 * H
    px = (coords[0, :, 1].double() + 1) / 2 * W
    assert torch.equal(py.floor().long(), cells[0] // W) and torch.equal(px.floor().long(), cells[0] % W)
    if backend != "torch":
        want = inverse_cdf_sample(w, n, seed=seed, backend="torch")
        assert torch.equal(coords, want[0]) and torch.equal(cells, want[1])


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_jittered_samples_stay_inside_their_cell_on_large_grids(backend):
    """On a 2048-row grid, float32 ``row + u`` rounded up to ``row + 1`` for ``u`` near 1: about 1
    sample in 20 000 sat on the next cell's edge, in the last row at exactly y = 1.0 (pixel index H
    for whoever floors it back)."""
    w = torch.zeros(1, 2048, 2048)
    w[0, -1, -1] = 1.0  # every sample in the last cell: the worst place to round up
    w[0, 1000, 3] = 1.0
    assert_every_sample_in_its_cell(w, 200_000, 0, backend)


@pytest.mark.parametrize("backend", ["torch", *KERNEL_BACKENDS])
def test_jittered_samples_stay_above_their_cells_lower_edge(backend):
    """A cell's lower edge row / H * 2 - 1 is rarely a float32: at 3000 rows a sample just above it
    rounded to just below it, into the previous cell (22 of 400 000), which may be a hole; and an
    upper edge computed in float32 could lie above the exact one."""
    assert_every_sample_in_its_cell(torch.ones(1, 3000, 3), 400_000, 1, backend)


@pytest.mark.parametrize("cells", [3, 3000, 2**20 + 7])
def test_cell_coordinate_moves_exactly_the_coordinates_outside_their_cell(cells):
    """Jitters at both ends of [0, 1) put float32 ``(index + u) / cells * 2 - 1`` on or past an edge
    of the cell on large grids: every result lies inside the cell in float64, those already inside
    are kept bit for bit, and the others are the float32 inside nearest to where they fell."""
    from infinidepth.ops.inverse_cdf import cell_coordinate

    g = torch.Generator().manual_seed(cells)
    index = torch.randint(0, cells, (2000,), generator=g)
    ends = torch.tensor([0.0, 2.0**-24, 0.5, 1 - 2.0**-23, 1 - 2.0**-24]).repeat(400)
    u = torch.where(torch.arange(2000) % 7 == 0, torch.rand(2000, generator=g), ends)
    got = cell_coordinate(index, u, cells).numpy().astype(np.float64)
    raw = ((index.float() + u) / cells * 2 - 1).numpy()
    lo, hi = (index.double() / cells * 2 - 1).numpy(), ((index + 1).double() / cells * 2 - 1).numpy()
    assert ((got >= lo) & (got < hi)).all()
    inside = (raw >= lo) & (raw < hi)
    assert (got[inside] == raw[inside]).all()
    moved = np.nextafter(got.astype(np.float32), raw).astype(np.float64)   # one float32 step back towards raw
    assert ((moved[~inside] < lo[~inside]) | (moved[~inside] >= hi[~inside])).all()
    if cells > 3:
        assert (raw < lo).any() and (raw >= hi).any()    # both edges were crossed


def test_sample_count_limit_is_inclusive():
    """2**30 samples per image is the limit itself, allowed; one more is refused (checked without
    sampling: 2**30 samples would take 8 GiB)."""
    from infinidepth.ops.inverse_cdf import MAX_SAMPLES, check_sample_count

    assert MAX_SAMPLES == 2**30 and check_sample_count(2**30) == 2**30
    with pytest.raises(ValueError, match="limit"):
        check_sample_count(2**30 + 1)


# What one thread of csrc/inverse_cdf_cuda.cu's place_samples computes, for every sample of image 0.
SEARCH_SHIM = r"""
#include "inverse_cdf.h"
extern "C" void place_by_search(const int64_t* cdf, const int64_t* order, int64_t M, int64_t H, int64_t W, int64_t n,
                                uint32_t seed, int jitter, float* coords, int64_t* cells) {
  const uint32_t stream = infinidepth::jitter_stream(seed, 0);
  for (int64_t j = 0; j < n; ++j)
    infinidepth::write_sample(infinidepth::upper_bound_index(cdf, M, infinidepth::sample_target(j, cdf[M - 1], n)),
                              order, j, 0, n, H, W, stream, jitter != 0, coords, cells);
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_the_cuda_samplers_search_picks_the_reference_cells(tmp_path):
    """The CUDA sampler places every sample by one binary search (upper_bound_index), where the CPU
    kernel searches once per block of samples and then walks forward, which would hide a search
    that stops one cell early. CI has no GPU: the shared header's functions, compiled for the host,
    against the reference, on CDF boundaries (equal cells), runs of empty cells, a layout order, and a
    3000-row grid where float32 puts jittered samples on their cells' edges."""
    src = tmp_path / "search.cpp"
    src.write_text(SEARCH_SHIM)
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{csrc}", str(src), "-o", str(tmp_path / "s.so")],
                   check=True)
    lib = ctypes.CDLL(str(tmp_path / "s.so"))
    holes = torch.rand(1, 6, 7, generator=torch.Generator().manual_seed(3))
    holes[holes < 0.5] = 0
    shuffled = torch.randperm(42, generator=torch.Generator().manual_seed(4))
    cases = ((torch.ones(1, 4, 4), 8, None), (torch.ones(1, 4, 4), 48, None), (holes, 5, None), (holes, 300, None),
             (holes, 300, shuffled), (torch.ones(1, 3000, 3), 20_000, None))
    for w, n, order in cases:
        H, W = w.shape[1:]
        q = quantize_weights(w.reshape(1, -1))
        cdf = np.ascontiguousarray(q.cumsum(1)[0].numpy())
        layout = None if order is None else np.ascontiguousarray(order.numpy())
        for jitter in (False, True):
            coords = np.zeros((n, 2), dtype=np.float32)
            cells = np.zeros(n, dtype=np.int64)
            lib.place_by_search(cdf.ctypes.data_as(ctypes.c_void_p),
                                None if layout is None else layout.ctypes.data_as(ctypes.c_void_p),
                                *(ctypes.c_int64(v) for v in (H * W, H, W, n)), ctypes.c_uint32(9),
                                ctypes.c_int(int(jitter)), coords.ctypes.data_as(ctypes.c_void_p),
                                cells.ctypes.data_as(ctypes.c_void_p))
            want_coords, want_cells = inverse_cdf_reference(q, H, W, n, 9, jitter, order)
            assert torch.equal(torch.from_numpy(cells), want_cells[0]), (n, jitter)
            assert torch.equal(torch.from_numpy(coords), want_coords[0]), (n, jitter)


# Compiles the Triton sampler's kernels for sm_90 with Triton's own compiler and ptxas (run with
# TRITON_INTERPRET unset, hence a subprocess), with the argument types a GPU launch passes them.
AOT_SAMPLER = r"""
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from infinidepth.kernels import inverse_cdf as k

def build(fn, types, **consts):
    names = list(inspect.signature(fn.fn).parameters)
    sig = dict(zip(names, types)) | {c: "constexpr" for c in consts}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs={(names.index(c),): v for c, v in consts.items()}),
                   target=GPUTarget("cuda", 90, 32))

build(k._block_scan, ["*i64", "*i64", "*i64", "i64", "i32"], BLOCK=k.BLOCK)
build(k._scan_block_sums, ["*i64", "*i64", "i32"], CHUNK=1024)
for order in (False, True):
    for jitter in (False, True):
        build(k._place_samples, ["*i64"] * 4 + ["*fp32", "*i64", "i64"] + ["i32"] * 6, JITTER=jitter, ORDER=order,
              BLOCK=k.BLOCK, BLOCK_N=256)
print("compiled")
"""


def test_the_triton_sampler_compiles_for_hopper():
    """The interpreter, which checks the Triton sampler against the reference in CI, accepts programs
    that the GPU compiler rejects; this builds the real sm_90 binaries of every kernel variant."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_SAMPLER], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]

"""The CUDA fused decoder (csrc/fused_decode_cuda.cu) and gather (csrc/bilinear_gather_cuda.cu) run on the CPU under a host emulation of CUDA
(csrc/tests/cuda_emulation.h), against the reference: CI has no GPU, but it runs the kernel's own
code, its tiling, streamed pairs, WMMA tiles, tangent rows and barriers this way. Uninitialised
shared memory reads as NaN, and each CUDA thread is a real thread.

The emulated device has an H100's shared memory per block unless a test gives it another, and
refuses a launch that asks for more. Under ThreadSanitizer the same run is compute-sanitizer's
racecheck (two threads touching one word with no barrier between them), under AddressSanitizer its
memcheck (any access outside the maps, weights, coordinates, output or shared memory). What it
cannot see: speed, and the GPU's memory model beyond barriers. tests/test_gpu.py runs the same
kernel compiled by nvcc on a GPU."""

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

from infinidepth.ops import ConcatDecoder, implicit_decode
from infinidepth.ops.fold import ACT_CODES, fold_decoder, run_folded_reference

from conftest import rel_err, rms_err
from test_decode_grad import fuzz_coords
from test_implicit_decode import cast, hierarchical, lin, random_concat, random_hierarchical, random_maps

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler")


def build(kernel: Path, out: Path, sanitize: str | None = None) -> Path:
    """Compile the fused decoder's CUDA source ``kernel`` (and the gather's) as C++ under the
    emulation, with their C entry points; ``sanitize``: "thread" or "address" (GCC's sanitizers)."""
    flags = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}"] if sanitize else ["-O2"]
    # -fno-strict-aliasing: the kernel reads floats as float4, as CUDA code does
    cmd = [CXX, "-std=c++20", *flags, "-fno-strict-aliasing", "-pthread", "-shared", "-fPIC", "-DINFINIDEPTH_CUDA_EMULATION",
           f"-I{ROOT / 'csrc'}", "-x", "c++", str(kernel), str(ROOT / "csrc/bilinear_gather_cuda.cu"), "-x", "none",
           str(ROOT / "csrc/tests/emulated_kernels.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(path) -> ctypes.CDLL:
    so = ctypes.CDLL(str(path))
    so.emulated_narrow_limit.restype = ctypes.c_int64
    so.emulated_fused_decode.restype = ctypes.c_int
    return so


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return load(build(ROOT / "csrc/fused_decode_cuda.cu", tmp_path_factory.mktemp("cuda_emulation") / "decode.so"))


def _ptrs(arrays):
    return (ctypes.c_void_p * len(arrays))(*[None if a is None else a.ctypes.data for a in arrays])


H100_SHARED = 232448  # bytes of shared memory a block may opt into on an H100 (A100: 166912)


def run_emulated(lib, folded, coords, tensor_cores=False, with_grad=False, shared=H100_SHARED):
    """The kernel under emulation on a device with ``shared`` bytes of shared memory per block -> [B, N]
    or [B, N, 3]."""
    return launch_emulated(lib, folded, coords, tensor_cores, with_grad, shared)[0]


def launch_emulated(lib, folded, coords, tensor_cores, with_grad, shared):
    """What ops_cuda.cpp does on a GPU, with numpy: transposed weights (bf16 copies for tensor cores),
    then the launch -> (output, rows per block the launcher picked)."""
    keep = []

    def arr(t, dtype=np.float32):
        """A copy at a 256-byte aligned address, as CUDA's allocator gives (WMMA needs 32 bytes)."""
        a = t.detach().cpu().numpy().astype(dtype)
        raw = np.empty(a.nbytes + 256, dtype=np.uint8)
        start = -raw.ctypes.data % 256
        out = raw[start : start + a.nbytes].view(dtype).reshape(a.shape)
        out[...] = a
        keep.append(raw)
        return out

    layers = folded.layers
    widths = np.array([l.width for l in layers], dtype=np.int64)
    acts = np.array([ACT_CODES[l.act] for l in layers], dtype=np.int32)
    biases = [arr(l.bias) for l in layers]
    wt = [None if l.weight is None else arr(l.weight.t()) for l in layers]
    wt16 = [None if l.weight is None else arr(l.weight.t().contiguous().bfloat16().view(torch.int16), np.int16) for l in layers]
    maps, hw, map_layer = [], [], []
    for i, l in enumerate(layers):
        for m in l.maps:
            maps.append(arr(m))
            hw += [m.shape[1], m.shape[2]]
            map_layer.append(i)
    q = arr(coords)
    B, N = coords.shape[:2]
    out = np.full((B, N, 3) if with_grad else (B, N), np.nan, dtype=np.float32)
    rows = ctypes.c_int(0)
    lib.emulated_set_shared_memory_limit(ctypes.c_int(shared))
    error = lib.emulated_fused_decode(
        ctypes.c_int(len(layers)), widths.ctypes.data_as(ctypes.c_void_p), acts.ctypes.data_as(ctypes.c_void_p),
        _ptrs(biases), _ptrs(wt), _ptrs(wt16), ctypes.c_int(len(maps)), _ptrs(maps),
        np.array(hw, dtype=np.int64).ctypes.data_as(ctypes.c_void_p) if hw else None,
        np.array(map_layer, dtype=np.int32).ctypes.data_as(ctypes.c_void_p) if map_layer else None,
        q.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(B), ctypes.c_int64(N), ctypes.c_int(int(tensor_cores)),
        ctypes.c_int(int(with_grad)), out.ctypes.data_as(ctypes.c_void_p), ctypes.byref(rows))
    assert error != 1, f"the launch asked for more than {shared} bytes of shared memory"
    assert error != 2, "a WMMA load or store was misaligned (pointer not 32-byte aligned, or ld not 16 bytes)"
    assert error == 0
    return torch.from_numpy(out), rows.value


def test_emulated_cuda_gather(lib):
    """csrc/bilinear_gather_cuda.cu against the reference: random shapes (channels across a block of
    256 threads), queries inside, on the borders and outside."""
    from infinidepth.ops.gather import bilinear_gather_reference

    rng = random.Random(67)
    for _ in range(6):
        B, C, H, W, N = rng.randint(1, 2), rng.choice([1, 3, 64, 257]), rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 60)
        feat = torch.randn(B, C, H, W)
        coords = torch.rand(B, N, 2) * 2.8 - 1.4
        coords[0, : min(N, 2)] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])[: min(N, 2)]
        f = np.ascontiguousarray(feat.permute(0, 2, 3, 1).numpy())
        q = np.ascontiguousarray(coords.numpy())
        out = np.full((B, N, C), np.nan, dtype=np.float32)
        lib.emulated_bilinear_gather(*(a.ctypes.data_as(ctypes.c_void_p) for a in (f, q, out)),
                                     *(ctypes.c_int64(v) for v in (B, H, W, C, N)))
        want = bilinear_gather_reference(feat.double(), coords.double())
        assert rel_err(torch.from_numpy(out), want) < 1e-5, (B, C, H, W, N)


def test_emulated_cuda_gather_reads_nothing_outside_the_map(lib):
    """A tap outside the map has index -1: read as a cell, it would be the cell just before the
    image in memory, the previous image's last one (0 x inf = NaN). With that cell infinite, image
    1's queries across its top and left borders stay finite, as the reference's."""
    from infinidepth.ops.gather import bilinear_gather_reference

    B, C, H, W, N = 2, 5, 4, 5, 40
    feat = torch.randn(B, C, H, W)
    feat[0, :, -1, -1] = float("inf")
    coords = torch.rand(B, N, 2) * 0.6 - 0.3  # image 0: well inside, away from the infinite cell
    coords[1] = torch.rand(N, 2) * 0.3 - 1.2  # image 1: its first row and column and beyond
    f = np.ascontiguousarray(feat.permute(0, 2, 3, 1).numpy())
    q = np.ascontiguousarray(coords.numpy())
    out = np.full((B, N, C), np.nan, dtype=np.float32)
    lib.emulated_bilinear_gather(*(a.ctypes.data_as(ctypes.c_void_p) for a in (f, q, out)),
                                 *(ctypes.c_int64(v) for v in (B, H, W, C, N)))
    want = bilinear_gather_reference(feat.double(), coords.double())
    assert torch.isfinite(want).all() and np.isfinite(out).all()
    assert rel_err(torch.from_numpy(out), want) < 1e-5


def wide_concat(rng, narrow):
    """A first layer wider than the kernel keeps whole: streamed into the next, in chunks with a
    partial last one."""
    chans = [rng.randint(1, 9), rng.randint(1, 9)]
    dims = [sum(chans), narrow + rng.randint(1, 80), rng.randint(2, 40), 1]
    return chans, ConcatDecoder([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])


def tensor_core_concat(rng, narrow):
    """Every width but the last a multiple of 16 (the WMMA tiles), the first one streamed; the next
    one 3 to 16 tiles wide (a warp takes 1, 2 or 4 of a block's row tiles per strip)."""
    chans = [rng.randint(1, 9), rng.randint(1, 9)]
    dims = [sum(chans), narrow + 16 * rng.randint(1, 6), rng.choice([48, 64, 128, 256]), 16 * rng.randint(1, 3), 1]
    return chans, ConcatDecoder([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])


def tensor_core_hierarchical(rng, narrow):
    chans = [16 * rng.randint(1, 2), 16 * rng.randint(1, 2), 16 * rng.randint(1, 2)]
    return chans, hierarchical(chans, [chans[-1], 32, 16, 1], last_gain=4.0)


def wide_hierarchical(rng, narrow):
    """The paper decoder's shape: the last stage's FFN (4 c wide) streamed, and it has a weight (on
    the previous stage's output); widths multiples of 16 for the tensor cores."""
    chans = [16, 16 * rng.randint(1, 2), 16 * (narrow // 64 + rng.randint(1, 2))]
    return chans, hierarchical(chans, [chans[-1], 32, 1], last_gain=4.0)


def problem(rng, family, narrow, batch=None, n=None):
    chans, decoder = family(rng) if family in (random_concat, random_hierarchical) else family(rng, narrow)
    batch = batch or rng.randint(1, 2)
    maps = random_maps(rng, chans, batch=batch)
    n = n or rng.choice([1, 15, 16, 17, 40])
    coords = torch.rand(batch, n, 2, dtype=torch.float64) * 2.6 - 1.3  # borders and outside
    coords[0, : min(n, 2)] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)[: min(n, 2)]
    return maps, coords, decoder


@pytest.mark.parametrize("family", [random_concat, random_hierarchical, wide_concat, wide_hierarchical,
                                    tensor_core_concat])
def test_emulated_cuda_decoder_fp32(lib, family):
    """fp32: 3xTF32 on the tensor cores where widths fit WMMA (the 16-aligned families), CUDA cores
    elsewhere; partial tiles, batches, wide layers streamed."""
    rng = random.Random(31)
    narrow = lib.emulated_narrow_limit()
    for _ in range(3):
        maps, coords, decoder = problem(rng, family, narrow)
        want = implicit_decode(maps, coords, decoder, backend="torch")
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        got = run_emulated(lib, folded, coords.float())
        assert torch.isfinite(got).all()
        assert rel_err(got, want) < 1e-5


def shared_bytes(folded, rows, narrow, bf16=True):
    """Shared memory of a block of ``rows`` rows (csrc/fused_decode_cuda.cu's layout): per row, the
    taps (4 offsets, 4 weights: 48 bytes) in each map of the layer with the most maps; x, y (fp32)
    and, in bf16, x16 rows as wide as the widest layer kept whole, rounded up to 16; a 64-channel
    chunk in fp32 and, in bf16, its copy."""
    ld = max([16] + [l.width for l in folded.layers if l.width <= narrow])
    ld = (ld + 15) // 16 * 16
    tap_maps = max(len(l.maps) for l in folded.layers)
    return rows * (48 * tap_maps + 4 * (2 * ld + 64) + (2 * (ld + 64) if bf16 else 0))


@pytest.mark.parametrize("rows", [64, 32, 16])
@pytest.mark.parametrize("family", [tensor_core_concat, tensor_core_hierarchical, wide_hierarchical])
def test_emulated_cuda_decoder_tensor_cores(lib, family, rows, monkeypatch):
    """bf16 WMMA tiles of 16 to 64 rows per block (as many as the device's shared memory takes):
    against the folded program with bf16-rounded operands (the same arithmetic, sums in another
    order), and against the exact reference within the GPU tests' bf16 bound."""
    rng = random.Random(37)
    narrow = lib.emulated_narrow_limit()
    for _ in range(2):
        maps, coords, decoder = problem(rng, family, narrow, n=rng.choice([16, 33, 100, 129]))
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        # a device with just enough shared memory for this many rows
        got, picked = launch_emulated(lib, folded, coords.float(), True, False, shared_bytes(folded, rows, narrow))
        assert picked == rows
        if rows > 16:  # the benchmarking cap (read per launch) picks smaller blocks on the same device
            monkeypatch.setenv("INFINIDEPTH_CUDA_MAX_ROWS", str(rows // 2))
            capped, picked = launch_emulated(lib, folded, coords.float(), True, False, shared_bytes(folded, rows, narrow))
            monkeypatch.delenv("INFINIDEPTH_CUDA_MAX_ROWS")
            assert picked == rows // 2 and torch.equal(capped, got)
        emulated = run_folded_reference(folded, coords.float(), "bf16").double()
        exact = implicit_decode(maps, coords, decoder, backend="torch")
        assert torch.isfinite(got).all()
        diff = got.double() - emulated
        # an fp32 sum in another order can flip an intermediate's bf16 rounding (0.4%) now and then
        # (seen: up to 8e-4 of the norm)
        assert (diff.norm() / emulated.norm()).item() < 2e-3
        assert rms_err(got, exact) < 2e-2
        assert rms_err(got, exact) > 1e-5  # and it did round (fp32 lands near 1e-7)
        # tangents are computed in fp32 whatever the precision, value included (as in cpp)
        fp32 = run_emulated(lib, folded, coords.float(), with_grad=True)
        assert torch.equal(run_emulated(lib, folded, coords.float(), tensor_cores=True, with_grad=True), fp32)


@pytest.mark.parametrize("rows", [64, 32, 16])
@pytest.mark.parametrize("family", [random_hierarchical, tensor_core_concat, wide_hierarchical])
def test_emulated_cuda_decoder_fp32_block_sizes(lib, family, rows):
    """fp32 in blocks of 16 to 64 rows (3xTF32 tiles, and the CUDA-core loop for other widths),
    their shared memory without the bf16 copies: within fp32's tolerance of the exact reference,
    and the same for every block size."""
    rng = random.Random(59)
    narrow = lib.emulated_narrow_limit()
    for _ in range(2):
        maps, coords, decoder = problem(rng, family, narrow, n=rng.choice([33, 100, 129]))
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        got, picked = launch_emulated(lib, folded, coords.float(), False, False,
                                      shared_bytes(folded, rows, narrow, bf16=False))
        assert picked == rows
        assert rel_err(got, implicit_decode(maps, coords, decoder, backend="torch")) < 1e-5
        got16, _ = launch_emulated(lib, folded, coords.float(), False, False, shared_bytes(folded, 16, narrow, bf16=False))
        assert torch.equal(got, got16)


A100_SHARED = 166912


@pytest.mark.parametrize("device,shared", [("H100", H100_SHARED), ("A100", A100_SHARED)])
def test_emulated_cuda_decoder_released_sizes(lib, device, shared):
    """The ViT-L decoders' real widths (official: 1024-wide maps streamed into 256; paper: 2048 and
    4096 streamed, a 512-wide layer kept whole) on small images: the block sizes the launcher picks on
    an H100 and an A100 from their shared memory, and the answers, bf16 against its emulated
    arithmetic and fp32 against float64 within tests/test_gpu.py's bound for these widths."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from decoder import make_problem

    # rows per block (bf16, fp32): 195 KB / 154 KB for 64 rows of the official program, 179 KB / 142 KB
    # for 32 of the paper's
    expected = {("H100", "official"): (64, 64), ("H100", "paper"): (32, 32),
                ("A100", "official"): (32, 64), ("A100", "paper"): (16, 32)}
    for name, n in (("official", 80), ("paper", 40)):
        maps, dec = make_problem(name, torch.device("cpu"))
        maps = [m[:, :, :6, :8].contiguous() for m in maps]  # the real channels, small images
        coords = torch.rand(1, n, 2, generator=torch.Generator().manual_seed(5)) * 2.2 - 1.1
        folded = fold_decoder(maps, dec)
        exact = implicit_decode([m.double() for m in maps], coords.double(), cast(dec, torch.float64), backend="torch")
        bf16, rows16 = launch_emulated(lib, folded, coords, True, False, shared)
        fp32, rows32 = launch_emulated(lib, folded, coords, False, False, shared)
        assert (rows16, rows32) == expected[device, name]
        emulated = run_folded_reference(folded, coords, "bf16").double()
        assert ((bf16.double() - emulated).norm() / emulated.norm()).item() < 2e-3
        assert rms_err(bf16, exact) < 2e-2
        assert rel_err(fp32, exact) < 1e-4


@pytest.mark.parametrize("family", [random_concat, random_hierarchical, wide_concat, wide_hierarchical])
def test_emulated_cuda_decoder_tangents(lib, family):
    """with_grad: 5 queries per tile, value rows then d/dy rows then d/dx rows."""
    rng = random.Random(41)
    narrow = lib.emulated_narrow_limit()
    for _ in range(2):
        maps, coords, decoder = problem(rng, family, narrow)
        coords = fuzz_coords(coords.shape[0], rng.choice([5, 6, 11, 16]), rng.randint(0, 999))
        want_v, want_g = implicit_decode(maps, coords, decoder, backend="torch", with_grad=True)
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        got = run_emulated(lib, folded, coords.float(), with_grad=True)
        assert rel_err(got[..., 0], want_v) < 1e-5
        assert rel_err(got[..., 1:], want_g) < 2e-5


MUTATIONS = {
    # a tile's queries shifted by one from the second block on
    "rows": ("const int64_t q0 = static_cast<int64_t>(blockIdx.x) * Q;",
             "const int64_t q0 = static_cast<int64_t>(blockIdx.x) * Q + (blockIdx.x > 0);"),
    # a chunk of a streamed layer never starts from its bias: uninitialised shared memory
    "uninitialised": ("      fill_bias<kRows, kGrad>(s.chunk, kKC, L.bias, c0, count);\n", ""),
    # each warp multiplies one row tile per strip: the others of a 64-row block are left out
    "row tiles": ("    G = kTiles / groups;", "    G = 1;"),
    # fp32 on the tensor cores as plain tf32: the low parts' products left out
    "tf32 only": ("            wmma::mma_sync(acc[g], a_lo, b, acc[g]);\n"
                  "            wmma::mma_sync(acc[g], a, b_lo, acc[g]);\n", ""),
}


def correct(so, folded, coords, tensor_cores, exact) -> bool:
    """The bounds of the tests above: bf16 against its emulated arithmetic, fp32 against ``exact``."""
    got = run_emulated(so, folded, coords.float(), tensor_cores=tensor_cores)
    if not torch.isfinite(got).all():
        return False
    if tensor_cores:
        want = run_folded_reference(folded, coords.float(), "bf16").double()
        return ((got.double() - want).norm() / want.norm()).item() < 2e-3
    return rel_err(got, exact) < 1e-5


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_emulation_sees_a_broken_kernel(lib, tmp_path, mutation):
    """The harness can fail: the kernel with one mistake put in gives wrong answers here, in fp32
    (CUDA cores or 3xTF32) or in bf16."""
    old, new = MUTATIONS[mutation]
    src = (ROOT / "csrc/fused_decode_cuda.cu").read_text()
    assert src.count(old) == 1
    path = tmp_path / "broken.cu"
    path.write_text(src.replace(old, new))
    broken = load(build(path, tmp_path / "broken.so"))
    rng = random.Random(43)
    narrow = lib.emulated_narrow_limit()
    cases = []
    for family, tensor_cores in ((wide_concat, False), (tensor_core_concat, False), (tensor_core_concat, True)):
        maps, coords, decoder = problem(rng, family, narrow, batch=1, n=100)
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        exact = implicit_decode(maps, coords, decoder, backend="torch")
        assert correct(lib, folded, coords, tensor_cores, exact)
        cases.append(correct(broken, folded, coords, tensor_cores, exact))
    assert not all(cases)


def test_emulation_checks_wmma_alignment(lib, tmp_path):
    """WMMA wants 32-byte aligned tiles; the emulation refuses a launch that breaks that (on a GPU it
    is undefined behaviour, often silently wrong). Put in: the layout shifted by 16 bytes."""
    src = (ROOT / "csrc/fused_decode_cuda.cu").read_text()
    shifts = [("s.x = reinterpret_cast<float*>(s.taps + tap_maps * kRows);",
               "s.x = reinterpret_cast<float*>(s.taps + tap_maps * kRows) + 4;"),
              ("return static_cast<size_t>(rows) *", "return 16 + static_cast<size_t>(rows) *")]
    for old, new in shifts:
        assert src.count(old) == 1
        src = src.replace(old, new)
    (tmp_path / "shifted.cu").write_text(src)
    shifted = load(build(tmp_path / "shifted.cu", tmp_path / "shifted.so"))
    maps, coords, decoder = problem(random.Random(53), tensor_core_concat, lib.emulated_narrow_limit(), batch=1, n=20)
    folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
    for tensor_cores in (False, True):  # bf16 WMMA, and 3xTF32 WMMA for fp32
        run_emulated(lib, folded, coords.float(), tensor_cores=tensor_cores)
        with pytest.raises(AssertionError, match="misaligned"):
            run_emulated(shifted, folded, coords.float(), tensor_cores=tensor_cores)


def runtime(name: str) -> Path:
    """The compiler's shared runtime library ``name`` (libtsan.so, ...), or an empty path."""
    if CXX is None:
        return Path()
    found = subprocess.run([CXX, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return Path(found).resolve() if os.path.isabs(found) and Path(found).exists() else Path()


TSAN, ASAN, LIBSTDCXX = runtime("libtsan.so"), runtime("libasan.so"), runtime("libstdc++.so")


def sanitized_run(so: Path, preload: list[Path], options: dict[str, str]) -> str:
    """Runs this file's __main__ (every mode of the kernel on programs of every family) on ``so``,
    built with a sanitizer, in a process that preloads its runtime; returns the output."""
    env = dict(os.environ, LD_PRELOAD=" ".join(str(p) for p in preload), **options)
    proc = subprocess.run([sys.executable, __file__, str(so)], capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    if "emulated decoder ran" not in out and "Sanitizer" in out and "ERROR: AddressSanitizer" not in out \
            and "WARNING: ThreadSanitizer" not in out:  # the sanitizer itself could not start here
        pytest.skip("the sanitizer cannot run here: " + out.strip().splitlines()[0])
    return out


def kernel_source(tmp_path, old="", new="") -> Path:
    src = (ROOT / "csrc/fused_decode_cuda.cu").read_text()
    if old:
        assert src.count(old) == 1
        src = src.replace(old, new)
    (tmp_path / "kernel.cu").write_text(src)
    return tmp_path / "kernel.cu"


@pytest.mark.skipif(not TSAN.is_file(), reason="no ThreadSanitizer runtime")
@pytest.mark.parametrize("broken", [False, True])
def test_no_data_races_between_barriers(tmp_path, broken):
    """compute-sanitizer's racecheck, on the CPU: each CUDA thread is a thread and each barrier a
    std::barrier, so ThreadSanitizer reports any two threads touching one shared-memory word with no
    __syncthreads between them. The kernel has none; with one barrier taken out (between a
    streamed chunk's gathers and its activation) it reports one."""
    old = "      gather_layer<kRows>(P, l, s.taps, c0, count, s.chunk, kKC);\n      __syncthreads();\n"
    src = kernel_source(tmp_path, *((old, old.replace("      __syncthreads();\n", "")) if broken else ()))
    out = sanitized_run(build(src, tmp_path / "kernel.so", "thread"), [TSAN],
                        {"TSAN_OPTIONS": "halt_on_error=0 report_signal_unsafe=0"})
    assert "emulated decoder ran" in out, out[-4000:]
    assert ("WARNING: ThreadSanitizer: data race" in out) == broken, out[-4000:]


@pytest.mark.skipif(not (ASAN.is_file() and LIBSTDCXX.is_file()), reason="no AddressSanitizer runtime")
@pytest.mark.parametrize("broken", ["", "shared", "map"])
def test_no_out_of_bounds_access(tmp_path, broken):
    """compute-sanitizer's memcheck, on the CPU: under AddressSanitizer every buffer (maps, weights,
    coordinates, output, the block's shared memory) has red zones, and the kernel reads and writes
    none of them. Put in: a shared-memory layout one float short, a gather one cell past its tap."""
    mutations = {
        "shared": ("(sizeof(RowTaps) * tap_maps + sizeof(float) * (2 * ld + kKC)",
                   "(sizeof(RowTaps) * tap_maps + sizeof(float) * (2 * ld + kKC - 1)"),
        "map": ("__ldg(reinterpret_cast<const float4*>(base + T.offset[k]))",
                "__ldg(reinterpret_cast<const float4*>(base + T.offset[k] + m.C))"),
    }
    src = kernel_source(tmp_path, *mutations.get(broken, ()))
    # libstdc++ preloaded after the runtime, or ASan cannot intercept C++ throws of modules loaded later
    out = sanitized_run(build(src, tmp_path / "kernel.so", "address"), [ASAN, LIBSTDCXX],
                        {"ASAN_OPTIONS": "detect_leaks=0"})
    if broken:
        assert "ERROR: AddressSanitizer: heap-buffer-overflow" in out, out[-4000:]
    else:
        assert "emulated decoder ran" in out and "ERROR: AddressSanitizer" not in out, out[-4000:]


@pytest.mark.parametrize("tensor_cores", [False, True])
def test_emulated_cuda_decoder_propagates_nan_like_the_reference(lib, tensor_cores):
    """A NaN or infinite feature gives a non-finite answer exactly where the reference's is (a
    ReLU written v > 0 ? v : 0 would turn NaN into 0; bf16 and 3xTF32 splits keep it NaN)."""
    rng = random.Random(37)
    maps, coords, decoder = problem(rng, tensor_core_hierarchical, lib.emulated_narrow_limit(), batch=2, n=100)
    maps[0][1, 0] = float("nan")                 # every cell of one channel of image 1
    maps[-1][0, :, 0, 0] = float("inf")          # one corner cell of image 0
    want = implicit_decode(maps, coords, decoder, backend="torch")
    bad = ~torch.isfinite(want)
    assert bad[0].any() and bad[1].any() and not bad.all()
    folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
    got = run_emulated(lib, folded, coords.float(), tensor_cores=tensor_cores)
    assert torch.equal(~torch.isfinite(got), bad)
    if tensor_cores:  # bf16 operands: RMS error, as in the other bf16 checks
        assert rms_err(got[~bad], want[~bad]) < 2e-2
    else:
        assert rel_err(got[~bad], want[~bad]) < 1e-5


if __name__ == "__main__":  # the workload of the sanitizer runs: every kind of layer, every mode
    so = load(sys.argv[1])
    rng = random.Random(47)
    narrow = so.emulated_narrow_limit()
    for family in (wide_concat, tensor_core_concat, wide_hierarchical):
        maps, coords, decoder = problem(rng, family, narrow, batch=1, n=20)
        folded = fold_decoder([m.float() for m in maps], cast(decoder, torch.float32))
        for tensor_cores, with_grad in ((False, False), (True, False), (False, True)):
            assert torch.isfinite(run_emulated(so, folded, coords.float(), tensor_cores, with_grad)).all()
    print("emulated decoder ran")


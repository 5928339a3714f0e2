"""GPU backends (cuda, triton) against the float64 reference: skipped without a GPU.

On a machine with one: ``pytest tests/test_gpu.py`` (and under ``compute-sanitizer``).
"""

import random

import pytest
import torch

from infinidepth.ops import available_backends, bilinear_gather, bilinear_gather_reference, implicit_decode

from conftest import rel_err, rms_err
from test_implicit_decode import cast, random_concat, random_hierarchical, random_maps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")

GPU_BACKENDS = [b for b in available_backends("cuda") if b != "torch"] if torch.cuda.is_available() else []

# Tolerances by dtype, as measured on an H100 (2026-11-24) with margin:
# - fp32: max |error| / std of the output (rel_err). Float32 rounding of the normalised coordinate
#   is scaled by the map size before it becomes a bilinear weight, and wide layers sum ~1000 terms,
#   so the worst query lands near 1e-5 (fuzz) to 4e-5 (ViT-L widths), not at 1e-7.
# - bf16: RMS error / std of the output (rms_err). Operands keep 8 significant bits, rounded at
#   every layer; the error is spread over all queries with a heavy tail (a few queries at 3-9% of
#   the std in max norm), so the bound is on the RMS, as is usual for 16-bit inference.
FP32_TOL, FP32_WIDE_TOL, BF16_RMS_TOL = 5e-5, 1e-4, 2e-2


def within(got, want, precision, fp32_tol=FP32_TOL):
    if precision == "fp32":
        return rel_err(got, want) < fp32_tol, rel_err(got, want)
    return rms_err(got, want) < BF16_RMS_TOL, rms_err(got, want)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gather_on_gpu(backend):
    rng = random.Random(1)
    for _ in range(8):
        B, C, H, W, N = rng.randint(1, 3), rng.randint(1, 70), rng.randint(1, 33), rng.randint(1, 33), rng.randint(0, 999)
        feat = torch.randn(B, C, H, W, device="cuda")
        coords = torch.rand(B, N, 2, device="cuda") * 2.8 - 1.4
        want = bilinear_gather_reference(feat.double(), coords.double())
        got = bilinear_gather(feat, coords, backend=backend)
        if want.numel():
            assert rel_err(got, want) < FP32_TOL


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_decoder_on_gpu(backend, family, precision):
    rng = random.Random(5)
    for _ in range(6):
        chans, decoder = family(rng)
        maps64 = random_maps(rng, chans, batch=rng.randint(1, 3))
        coords = torch.rand(maps64[0].shape[0], rng.randint(1, 3000), 2, dtype=torch.float64) * 2.6 - 1.3
        want = implicit_decode(maps64, coords, decoder, backend="torch")
        dec32 = type(decoder)(**{k: _to_device(v) for k, v in vars(cast(decoder, torch.float32)).items()})
        got = implicit_decode([m.float().cuda() for m in maps64], coords.float().cuda(), dec32, backend=backend, precision=precision)
        ok, err = within(got.cpu(), want, precision)
        assert ok, err


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_decoder_weights_given_as_unaligned_transposed_views_on_gpu(backend):
    """Weights that are transposed views at a storage offset of one float (the kernels' transposed
    copy must not alias them: the tensor-core loads need 32-byte alignment) decode like the reference."""
    from infinidepth.ops.implicit_decode import ConcatDecoder

    def unaligned(w: torch.Tensor) -> torch.Tensor:   # float32 [out, in] on the GPU: a transposed view, offset 1
        buf = torch.empty(1 + w.numel(), device="cuda")[1:].view(w.shape[1], w.shape[0])
        buf.copy_(w.t())
        return buf.t()

    rng = random.Random(9)
    chans = [8, 8]
    dims = [16, 32, 32, 1]
    decoder = ConcatDecoder([(torch.randn(b, a, dtype=torch.float64) / a ** 0.5, torch.randn(b, dtype=torch.float64) * 0.1)
                             for a, b in zip(dims[:-1], dims[1:])])
    maps64 = random_maps(rng, chans, batch=1)
    coords = torch.rand(1, 2000, 2, dtype=torch.float64) * 2 - 1
    want = implicit_decode(maps64, coords, decoder, backend="torch")
    dec32 = ConcatDecoder([(unaligned(w.float().cuda()), b.float().cuda()) for w, b in decoder.layers])
    assert all(w.storage_offset() == 1 and w.t().is_contiguous() for w, _ in dec32.layers)
    for precision in ("fp32", "bf16"):
        got = implicit_decode([m.float().cuda() for m in maps64], coords.float().cuda(), dec32, backend=backend,
                              precision=precision)
        ok, err = within(got.cpu(), want, precision)
        assert ok, (precision, err)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_decoder_released_sizes_on_gpu(backend, precision):
    """The ViT-L shapes (wide layers streamed, tensor-core tiles): a few thousand queries."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from decoder import make_problem, query_grid

    for name in ("official", "paper"):
        maps, dec = make_problem(name, torch.device("cuda"))
        coords = query_grid(4096, "cuda")
        want = implicit_decode([m.double() for m in maps], coords.double(), cast(dec, torch.float64), backend="torch")
        got = implicit_decode(maps, coords, dec, backend=backend, precision=precision)
        ok, err = within(got, want, precision, FP32_WIDE_TOL)
        assert ok, (name, err)


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="triton is not available")
def test_autotuned_triton_decoder_on_gpu():
    """Calls of at least AUTOTUNE_MIN_QUERIES queries run the autotuned kernel (the other tests are
    smaller and take the first config): the official decoder in bf16, the 8K path."""
    import sys
    from pathlib import Path

    from infinidepth.kernels.fused_decode import AUTOTUNE_MIN_QUERIES

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from decoder import make_problem, query_grid

    maps, dec = make_problem("official", torch.device("cuda"))
    coords = query_grid(AUTOTUNE_MIN_QUERIES, "cuda")
    want = implicit_decode([m.double() for m in maps], coords.double(), cast(dec, torch.float64), backend="torch", chunk=8192)
    got = implicit_decode(maps, coords, dec, backend="triton", precision="bf16")
    ok, err = within(got, want, "bf16")
    assert ok, err


@pytest.mark.skipif("triton" not in GPU_BACKENDS, reason="triton is not available")
def test_triton_window_gathers_on_gpu():
    """The 8K path compiled and autotuned: the official decoder in bf16 on the top rows of the
    4320x7680 grid, where every block of up to 128 queries blends one window of cells of each map
    (the image's top border included). The same queries in random order read taps; the two agree
    to a tenth of the bf16 tolerance, and both are within it of the float64 reference."""
    import sys
    from pathlib import Path

    from infinidepth.kernels.fused_decode import WINDOW_X, WINDOW_Y
    from infinidepth.ops import pixel_centers

    from test_implicit_decode import block_spans

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from decoder import make_problem

    maps, dec = make_problem("official", torch.device("cuda"))
    gy, gx = torch.meshgrid(pixel_centers(4320, "cuda")[:9], pixel_centers(7680, "cuda"), indexing="ij")
    coords = torch.stack([gy, gx], dim=-1).reshape(1, -1, 2).clamp(-1 + 1e-6, 1 - 1e-6)  # as the model clamps
    for m in maps:
        sy, sx = block_spans(coords.cpu(), m.shape[2], m.shape[3], 128)
        assert ((sy <= int(WINDOW_Y)) & (sx <= int(WINDOW_X))).all()
    perm = torch.randperm(coords.shape[1], device="cuda")
    want = implicit_decode([m.double() for m in maps], coords.double(), cast(dec, torch.float64), backend="torch", chunk=8192)
    windowed = implicit_decode(maps, coords, dec, backend="triton", precision="bf16")
    taps = torch.empty_like(windowed)
    taps[:, perm] = implicit_decode(maps, coords[:, perm].contiguous(), dec, backend="triton", precision="bf16")
    assert rms_err(windowed, taps) < BF16_RMS_TOL / 10, rms_err(windowed, taps)
    for got in (windowed, taps):
        ok, err = within(got, want, "bf16")
        assert ok, err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", [random_concat, random_hierarchical])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_decoder_tangents_on_gpu(backend, family, precision):
    """with_grad: the forward-mode tangents of the CUDA (5 queries x 3 rows per tile) and Triton kernels."""
    from test_decode_grad import fuzz_coords

    rng = random.Random(6)
    for _ in range(6):
        chans, decoder = family(rng)
        batch = rng.randint(1, 3)
        maps64 = random_maps(rng, chans, batch=batch)
        coords = fuzz_coords(batch, rng.randint(5, 3000), rng.randint(0, 999))
        want_v, want_g = implicit_decode(maps64, coords, decoder, backend="torch", with_grad=True)
        dec32 = type(decoder)(**{k: _to_device(v) for k, v in vars(cast(decoder, torch.float32)).items()})
        got_v, got_g = implicit_decode([m.float().cuda() for m in maps64], coords.float().cuda(), dec32, backend=backend,
                                       precision=precision, with_grad=True)
        for got, want in ((got_v, want_v), (got_g, want_g)):
            ok, err = within(got.cpu(), want, precision)
            assert ok, err


def _to_device(v):
    if isinstance(v, torch.Tensor):
        return v.cuda()
    return type(v)(_to_device(t) for t in v)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_inverse_cdf_on_gpu(backend):
    """The GPU samplers pick exactly the reference's cells and coordinates, up to the issue's 10 M
    samples, with the weights row by row and in a layout order (the surface-area sampler's)."""
    from infinidepth.ops.inverse_cdf import inverse_cdf_sample

    rng = random.Random(4)
    cases = [(rng.randint(1, 3), rng.randint(1, 300), rng.randint(1, 300), rng.randint(1, 200_000)) for _ in range(6)]
    cases.append((1, 768, 1024, 10_000_000))
    for i, (B, H, W, n) in enumerate(cases):
        w = torch.rand(B, H, W) ** 6
        order = torch.randperm(H * W) if i % 2 else None
        want = inverse_cdf_sample(w, n, seed=n % 997, backend="cpp", order=order)
        got = inverse_cdf_sample(w.cuda(), n, seed=n % 997, backend=backend, order=None if order is None else order.cuda())
        assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[0].cpu(), want[0]), (B, H, W, n)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_streamed_prediction_on_gpu(backend):
    # Tiles of any size, a region, and a host-side output all give the untiled result.
    from infinidepth.models import from_preset

    model = from_preset("tiny").cuda()
    image = torch.rand(1, 3, 64, 96, device="cuda")
    whole = model.predict(image, output_size=(301, 457), backend=backend, tile=10**9)
    for tile in (457, 1000, 4099):
        assert torch.equal(model.predict(image, output_size=(301, 457), backend=backend, tile=tile), whole)
    part = model.predict(image, output_size=(301, 457), backend=backend, region=(17, 3, 250, 401))
    assert torch.equal(part, whole[:, :, 17:250, 3:401])
    host = torch.empty(1, 1, 301, 457)
    model.predict(image, output_size=(301, 457), backend=backend, out=host)
    assert torch.equal(host, whole.cpu())


def test_torch_rasteriser_agrees_with_gsplat():
    # The plain-PyTorch rasteriser is the CPU stand-in for gsplat: same projection, dilation,
    # cut-offs and compositing, so the images must agree closely (PSNR > 40 dB on a random scene).
    pytest.importorskip("gsplat")
    from infinidepth.gs import Gaussians, render_gsplat, render_torch, psnr

    g = torch.Generator().manual_seed(0)
    n = 2000
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.5, 1.0, 1.0]) + torch.tensor([0, 0, 5.0])
    scene = Gaussians(means, torch.rand(n, 3, generator=g) * 0.1 + 0.01,
                      torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                      torch.rand(n, generator=g) * 0.9 + 0.05, torch.randn(n, 3, 4, generator=g) * 0.5)
    K = torch.tensor([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
    ours = render_torch(scene, torch.eye(4), K, (240, 320))["rgb"].clamp(0, 1)
    cuda = Gaussians(*(t.cuda() for t in (scene.means, scene.scales, scene.rotations, scene.opacities, scene.sh)))
    theirs = render_gsplat(cuda, torch.eye(4), K, (240, 320))["rgb"].clamp(0, 1).cpu()
    assert psnr(ours, theirs) > 40


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gather_gradients_on_gpu(backend):
    """The kernels' backward (grid_sample's, registered on the custom op) on CUDA tensors."""
    torch.manual_seed(3)
    feat = torch.randn(2, 3, 4, 5, device="cuda")
    coords = torch.rand(2, 9, 2, device="cuda") * 2.4 - 1.2
    grad = torch.randn(2, 9, 3, device="cuda")
    f64, c64 = feat.double().requires_grad_(), coords.double().requires_grad_()
    want = torch.autograd.grad(bilinear_gather_reference(f64, c64), (f64, c64), grad.double())
    f, c = feat.clone().requires_grad_(), coords.clone().requires_grad_()
    got = torch.autograd.grad(bilinear_gather(f, c, backend=backend), (f, c), grad)
    for g, w in zip(got, want):
        assert rel_err(g, w) < FP32_TOL


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_inverse_cdf_samples_stay_inside_their_cell_on_gpu(backend):
    from infinidepth.ops.inverse_cdf import inverse_cdf_sample

    H = W = 2048
    w = torch.zeros(1, H, W, device="cuda")
    w[0, -1, -1] = 1.0
    coords, cells = inverse_cdf_sample(w, 200_000, seed=0, backend=backend)
    assert coords.max().item() < 1.0
    want = inverse_cdf_sample(w.cpu(), 200_000, seed=0, backend="torch")
    assert torch.equal(cells.cpu(), want[1]) and torch.equal(coords.cpu(), want[0])
    py = ((coords[0, :, 0].double() + 1) / 2 * H).floor().long()   # every sample floors back into its cell
    assert torch.equal(py.cpu(), want[1][0] // W)


@pytest.mark.parametrize("head", ["splats", "demo", "released"])
def test_gs_command_on_gpu(tmp_path, head):
    # Every tensor of the gs command's three paths on one device (plain splats, the point head, the
    # released head with a reference depth); the CPU run of the same command as the yardstick. The
    # sampler's weights come from decodes that differ in the last bits between devices, so points may
    # differ one by one: compared are their count and the scene's median depth.
    import numpy as np
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main
    from infinidepth.gs.gaussians import read_ply
    from test_gs import released_depth_model, released_gs_head_file

    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    args = ["gs", str(tmp_path / "pic.png"), "--points", "3000", "--keep-outliers", "--quiet"]   # the counts compared below
    if head == "demo":
        args += ["--gs-head", "demo"]
    elif head == "released":
        model = released_depth_model("official-tiny")
        save_model(model, tmp_path / "released.safetensors")
        released_gs_head_file(tmp_path / "gs.ckpt", model.config.vit.embed_dim)
        with torch.no_grad():   # metric depth twice the model's
            depth = model.predict(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
        np.save(tmp_path / "ref.npy", 2 * depth)
        args += ["--checkpoint", str(tmp_path / "released.safetensors"), "--gs-head", str(tmp_path / "gs.ckpt"),
                 "--input-size", "96x128", "--reference-depth", str(tmp_path / "ref.npy")]
    runs = {}
    for device in ("cuda", "cpu"):
        assert main([*args, "--device", device, "--out", str(tmp_path / device)]) == 0
        runs[device] = read_ply(tmp_path / device / "pic_gaussians.ply")
    assert len(runs["cuda"]) == len(runs["cpu"]) == 3000
    z = {d: float(g.means[:, 2].median()) for d, g in runs.items()}
    assert abs(z["cuda"] - z["cpu"]) <= 1e-3 * z["cpu"], z

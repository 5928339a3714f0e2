"""Gaussian splatting: the 3DGS PLY layout, the plain-PyTorch rasteriser against closed forms, and
the `infinidepth gs` command."""

import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunsCode

from infinidepth.gs.gaussians import C0, Gaussians, read_ply, rgb_to_sh0, write_ply
from infinidepth.gs.render import ALPHA_MIN, EPS2D, eval_sh, render_torch

K = torch.tensor([[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]])


def gaussians(means, scales, colors, opacities, rotations=None, degree=0):
    n = len(means)
    sh = torch.zeros(n, 3, (degree + 1) ** 2)
    sh[:, :, 0] = rgb_to_sh0(torch.as_tensor(colors, dtype=torch.float32))
    rot = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1) if rotations is None else torch.as_tensor(rotations, dtype=torch.float32)
    return Gaussians(torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(scales, dtype=torch.float32), rot,
                     torch.as_tensor(opacities, dtype=torch.float32), sh)


def test_ply_round_trip_in_the_standard_layout(tmp_path):
    from plyfile import PlyData

    g = torch.Generator().manual_seed(0)
    n = 50
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    src = Gaussians(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g) * 0.1 + 1e-3, q,
                    torch.rand(n, generator=g) * 0.98 + 0.01, torch.randn(n, 3, 9, generator=g))
    write_ply(tmp_path / "g.ply", src)
    names = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert names[9:33] == tuple(f"f_rest_{i}" for i in range(24))
    assert names[33:] == ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
    back = read_ply(tmp_path / "g.ply")
    for a, b in ((src.means, back.means), (src.scales, back.scales), (src.rotations, back.rotations),
                 (src.opacities, back.opacities), (src.sh, back.sh)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    # stored as the viewers expect: log scales, logit opacity, channel-major f_rest
    np.testing.assert_allclose(v["scale_0"], np.log(src.scales[:, 0].numpy()), rtol=1e-5)
    np.testing.assert_allclose(v["opacity"], (src.opacities / (1 - src.opacities)).log().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v["f_rest_8"], src.sh[:, 1, 1].numpy(), rtol=1e-6)     # green's first rest coefficient


def test_a_single_gaussian_footprint_matches_the_closed_form():
    # Isotropic sigma at depth z on the optical axis: a 2-D Gaussian of variance (f sigma / z)^2 + 0.3.
    sigma, z, o = 0.15, 4.0, 0.8
    g = gaussians([[0, 0, z]], [[sigma] * 3], [[0.2, 0.6, 1.0]], [o])
    out = render_torch(g, torch.eye(4), K, (48, 64))
    s2 = (60 * sigma / z) ** 2 + EPS2D
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    a = o * torch.exp(-0.5 * ((xs - 32) ** 2 + (ys - 24) ** 2) / s2)
    a = torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))
    torch.testing.assert_close(out["alpha"], a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["rgb"], a[..., None] * torch.tensor([0.2, 0.6, 1.0]), atol=1e-5, rtol=1e-4)
    assert torch.allclose(out["depth"][a > 0], torch.tensor(z))


def test_an_anisotropic_rotated_gaussian_is_elongated_along_its_axis():
    # Long axis along world x, then rotated 90 degrees about z: long along y on screen.
    q = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]
    out = render_torch(gaussians([[0, 0, 4.0]], [[0.5, 0.05, 0.05]], [[1, 1, 1]], [0.9], [q]), torch.eye(4), K, (48, 64))
    a = out["alpha"]
    assert a[24 - 10, 32] > 0.3 and a[24, 32 - 10] < 0.01


def test_front_to_back_order_and_alpha_compositing():
    red, blue = [1.0, 0, 0], [0, 0, 1.0]
    near = gaussians([[0, 0, 3.0], [0, 0, 6.0]], [[0.3] * 3, [0.6] * 3], [red, blue], [0.6, 0.9])
    far_first = gaussians([[0, 0, 6.0], [0, 0, 3.0]], [[0.6] * 3, [0.3] * 3], [blue, red], [0.9, 0.6])
    a, b = render_torch(near, torch.eye(4), K, (48, 64)), render_torch(far_first, torch.eye(4), K, (48, 64))
    torch.testing.assert_close(a["rgb"], b["rgb"])
    # the centre pixel: alphas are opacity * exp(-0.5 * (0.5^2 + 0.5^2) / s2) (pixel centre is half a pixel off)
    s_near, s_far = (60 * 0.3 / 3) ** 2 + EPS2D, (60 * 0.6 / 6) ** 2 + EPS2D
    a1, a2 = 0.6 * math.exp(-0.25 / s_near), 0.9 * math.exp(-0.25 / s_far)
    c = a["rgb"][23, 31]
    assert c[0].item() == pytest.approx(a1, rel=1e-4) and c[2].item() == pytest.approx(a2 * (1 - a1), rel=1e-4)
    assert a["depth"][23, 31].item() == pytest.approx((3 * a1 + 6 * a2 * (1 - a1)) / (a1 + a2 * (1 - a1)), rel=1e-4)


def test_gaussians_behind_the_camera_are_not_drawn_and_bad_input_is_refused():
    out = render_torch(gaussians([[0, 0, -3.0]], [[0.3] * 3], [[1, 1, 1]], [0.9]), torch.eye(4), K, (48, 64))
    assert out["alpha"].max() == 0 and out["rgb"].max() == 0
    with pytest.raises(ValueError, match="focal"):
        render_torch(gaussians([[0, 0, 3.0]], [[0.3] * 3], [[1, 1, 1]], [0.9]), torch.eye(4), K * 0, (48, 64))
    with pytest.raises(ValueError, match="NaN"):
        gaussians([[0, 0, float("nan")]], [[0.3] * 3], [[1, 1, 1]], [0.9])
    with pytest.raises(ValueError, match="means"):
        Gaussians(torch.zeros(2, 2), torch.ones(2, 3), torch.ones(2, 4), torch.ones(2), torch.zeros(2, 3, 1))


def test_spherical_harmonics_band_zero_and_band_one():
    sh = torch.zeros(2, 3, 4)
    sh[:, 0, 0] = 1.0
    sh[:, 1, 2] = 1.0                                   # green follows +z (the Y_1^0 band)
    dirs = torch.tensor([[0, 0, 1.0], [0, 0, -1.0]])
    c = eval_sh(sh, dirs)
    assert c[0, 0].item() == pytest.approx(0.5 + C0) and c[0, 1].item() > 0.5 > c[1, 1].item()


def test_spherical_harmonics_up_to_band_three_are_orthonormal_on_the_sphere():
    """Each of the 16 basis functions (read off eval_sh with one coefficient set) integrates to an
    orthonormal set over the sphere, as real spherical harmonics must: a wrong polynomial anywhere
    (x (x^2 - y^2) for the last one, say: not even harmonic) breaks it."""
    n = 40000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n                                                   # a Fibonacci sphere: near-uniform directions
    r, phi = torch.sqrt(1 - z * z), math.pi * (1 + 5**0.5) * i
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    basis = []
    for k in range(16):
        sh = torch.zeros(n, 3, 16, dtype=torch.float64)
        sh[:, 0, k] = 0.1                                               # small: clear of the clamp at 0
        basis.append((eval_sh(sh, dirs)[:, 0] - 0.5) / 0.1)
    B = torch.stack(basis, 1)
    gram = 4 * math.pi * B.T @ B / n
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def dense_oracle(g, size):
    """Every pixel against every Gaussian, in depth order: what the tiled rasteriser must equal."""
    from infinidepth.gs.render import ALPHA_MAX, T_MIN, project

    H, W = size
    mean2d, conic, z, colors, visible = project(g, torch.eye(4), K, size)
    order = torch.argsort(torch.where(visible, z, torch.full_like(z, math.inf)))
    order = order[visible[order]]
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    d = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[:, None] - mean2d[order][None]
    c = conic[order]
    power = -0.5 * (c[:, 0, 0] * d[..., 0] ** 2 + c[:, 1, 1] * d[..., 1] ** 2 + 2 * c[:, 0, 1] * d[..., 0] * d[..., 1])
    a = (g.opacities[order] * torch.exp(power)).clamp_max(ALPHA_MAX)
    a = torch.where(a >= ALPHA_MIN, a, torch.zeros_like(a))
    rgb, T = torch.zeros(H * W, 3), torch.ones(H * W)
    done = torch.zeros(H * W, dtype=torch.bool)
    for i in range(a.shape[1]):
        done |= T * (1 - a[:, i]) < T_MIN
        w = torch.where(done, torch.zeros_like(T), a[:, i] * T)
        rgb += w[:, None] * colors[order][i]
        T = torch.where(done, T, T * (1 - a[:, i]))
    return rgb.reshape(H, W, 3)


def test_tiled_rasteriser_equals_the_dense_oracle_on_random_scenes():
    g = torch.Generator().manual_seed(2)
    for n, size in ((40, (37, 53)), (300, (48, 64)), (5, (16, 16))):
        means = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 0.8, 1.0]) + torch.tensor([0, 0, 4.0])
        q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
        scene = Gaussians(means, torch.rand(n, 3, generator=g) * 0.3 + 0.01, q, torch.rand(n, generator=g) * 0.99,
                          torch.randn(n, 3, 1, generator=g))
        got = render_torch(scene, torch.eye(4), K, size, tile=8, budget=4096)["rgb"]
        torch.testing.assert_close(got, dense_oracle(scene, size), atol=2e-5, rtol=1e-4)


def random_scene(n, generator, dtype, degree=1):
    """In front of, beside and behind the camera; tiny to large; opacities up to the 0.999 cap, so
    that pixels saturate (the C++ walk's early stop) as well as stay see-through."""
    g = generator
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.5, 1.2, 2.0], dtype=dtype)
    means[:, 2] += 3.0
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1)
    scales = torch.exp(torch.rand(n, 3, generator=g, dtype=dtype) * 4 - 5)          # 0.007 .. 0.37
    opac = torch.where(torch.rand(n, generator=g, dtype=dtype) < 0.5, torch.ones(n, dtype=dtype),
                       torch.rand(n, generator=g, dtype=dtype))
    return Gaussians(means, scales, q, opac, torch.randn(n, 3, (degree + 1) ** 2, generator=g, dtype=dtype) * 0.5)


def random_camera(generator, dtype):
    axis = torch.nn.functional.normalize(torch.randn(3, generator=generator, dtype=dtype), dim=0) * 0.3
    R = torch.linalg.matrix_exp(torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
                                             dtype=dtype))
    T = torch.eye(4, dtype=dtype)
    T[:3, :3], T[:3, 3] = R, torch.randn(3, generator=generator, dtype=dtype) * 0.3
    return T


@pytest.mark.skipif("cpp" not in __import__("infinidepth.ops", fromlist=["x"]).available_backends(torch.device("cpu")),
                    reason="the compiled extension is not built")
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cpp_rasteriser_matches_the_reference_on_random_scenes(dtype, atol):
    """The C++ walk stops at the first Gaussian that would take a pixel's transmittance below 1e-4;
    the reference evaluates every pair and zeroes the rest: the same image, to rounding (float64:
    1e-10; float32: 1e-4, sums of hundreds of weights in another order)."""
    from infinidepth.gs.render import render_cpp

    g = torch.Generator().manual_seed(5)
    cases = [(1, (5, 3), 16), (40, (37, 53), 16), (600, (48, 64), 8), (600, (61, 47), 16), (3000, (40, 56), 16)]
    alphas = []
    for n, size, tile in cases:
        scene, cam = random_scene(n, g, dtype), random_camera(g, dtype)
        Kd = K.to(dtype)
        bg = tuple(torch.rand(3, generator=g).tolist())
        want = render_torch(scene, cam, Kd, size, background=bg, tile=tile)
        got = render_cpp(scene, cam, Kd, size, background=bg, tile=tile)
        for key in ("rgb", "depth", "alpha"):
            assert got[key].dtype == dtype and got[key].shape == want[key].shape, key
            torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=f"{key}, {n} Gaussians, {size}")
        alphas.append(want["alpha"].reshape(-1))
    alphas = torch.cat(alphas)
    assert (alphas > 0.999).sum() > 100 and (alphas < 0.5).sum() > 100      # pixels stopped early, and see-through ones


@pytest.mark.skipif("cpp" not in __import__("infinidepth.ops", fromlist=["x"]).available_backends(torch.device("cpu")),
                    reason="the compiled extension is not built")
def test_render_picks_cpp_on_the_cpu_unless_gradients_are_wanted():
    from infinidepth.gs.render import render, render_cpp

    scene = random_scene(200, torch.Generator().manual_seed(1), torch.float32)
    torch.testing.assert_close(render(scene, torch.eye(4), K, (30, 40))["rgb"],
                               render_cpp(scene, torch.eye(4), K, (30, 40))["rgb"], atol=0, rtol=0)
    scene.opacities.requires_grad_(True)
    out = render(scene, torch.eye(4), K, (30, 40))                    # training: the differentiable reference
    out["rgb"].sum().backward()
    assert scene.opacities.grad is not None and scene.opacities.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no gradients"):
        render(scene, torch.eye(4), K, (30, 40), backend="cpp")
    with torch.no_grad():
        assert render(scene, torch.eye(4), K, (30, 40))["rgb"].grad_fn is None
    # direct callers of the op get a check, not an out-of-bounds read
    args = [torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1), torch.ones(2), torch.ones(2, 3), torch.ones(2)]
    with pytest.raises(RuntimeError, match="names a Gaussian that does not exist"):
        torch.ops.infinidepth.gs_composite(*args, torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long),
                                           torch.tensor([7]), 4, 4, 16, torch.zeros(3))
    with pytest.raises(RuntimeError, match="runs outside the order array"):
        torch.ops.infinidepth.gs_composite(*args, torch.zeros(1, dtype=torch.long), torch.full((1,), 3),
                                           torch.tensor([0]), 4, 4, 16, torch.zeros(3))


def test_splats_from_points_size_to_the_spacing_and_cover_a_plane():
    from infinidepth.gs.splats import splats_from_points

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 41), torch.linspace(-1, 1, 41), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((41 * 41,), 4.0)], -1)   # spacing 0.05
    g = splats_from_points(pts, torch.full_like(pts, 0.5))
    assert torch.allclose(g.scales[41 * 20 + 20], torch.tensor(0.75 * 0.05), rtol=1e-4)
    inner = render_torch(g, torch.eye(4), K, (48, 64))["alpha"][10:38, 18:46]       # the plane's inside
    assert inner.min() > 0.99                                                       # no holes between splats
    with pytest.raises(ValueError, match="more than 3"):
        splats_from_points(pts[:3], torch.full_like(pts[:3], 0.5))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)   # rotations and opacities used to follow it, the other fields not: refused
    try:
        assert splats_from_points(pts, torch.full_like(pts, 0.5)).rotations.dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)


def test_camera_paths_start_at_the_source_and_look_at_the_target():
    import numpy as np

    from infinidepth.gs.splats import camera_path

    for kind in ("orbit", "swing"):
        path = camera_path(kind, 8, 5.0, 0.3)
        np.testing.assert_allclose(path[0], np.eye(4), atol=1e-12)
        for w2c in path:
            target = w2c @ np.array([0, 0, 5.0, 1])
            np.testing.assert_allclose(target[:2], 0, atol=1e-9)                   # on the optical axis
            assert abs(np.linalg.norm(np.linalg.inv(w2c)[:3, 3])) <= 0.6 + 1e-9
    with pytest.raises(ValueError, match="orbit"):
        camera_path("spiral", 8, 5.0, 0.3)


def test_gs_command_writes_ply_view_and_video(tmp_path, capsys):
    from PIL import Image

    from infinidepth.cli import main

    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["gs", str(img), "--points", "2000", "--keep-outliers", "--video", "swing", "--frames", "4", "--out", str(out),
                 "--quiet"]) == 0
    g = read_ply(out / "pic_gaussians.ply")
    assert len(g) == 2000 and (g.opacities > 0.9).all()
    view = np.asarray(Image.open(out / "pic_novel_view.png"))
    assert view.shape == (32, 3 * 48, 3)
    import imageio.v2 as imageio

    frames = imageio.mimread(out / "pic_swing.mp4")
    assert len(frames) == 4 and frames[0].shape[:2] == (32, 48)
    assert main(["gs", str(img), "--points", "2", "--out", str(out)]) == 2
    assert "--points" in capsys.readouterr().err
    # GS head files are read (without running pickled code) and checked before the depth model runs
    (tmp_path / "junk.pt").write_bytes(b"not a head")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"head": {}, "feature_dim": "8", "hidden": 64, "depth_model": "demo"}, tmp_path / "text.pt")  # was a TypeError
    for head, match in ((tmp_path / "junk.pt", "not a readable GS head"), (tmp_path / "list.pt", "not a GS head written"),
                        (tmp_path / "text.pt", "not a GS head written"), (tmp_path / "none.pt", "no GS head file")):
        assert main(["gs", str(img), "--gs-head", str(head), "--out", str(tmp_path / "never")]) == 2
        assert match in capsys.readouterr().err
    # the bundled head reads the demo model's features; another model's is refused by name
    assert main(["gs", str(img), "--gs-head", "demo", "--checkpoint", "official-tiny", "--points", "500",
                 "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "trained with depth model 'demo'" in err and "reads 112 feature channels" in err
    assert not (tmp_path / "never").exists()


def test_gs_video_of_odd_sides_is_written_with_the_last_row_and_column_repeated(tmp_path):
    """libx264 in yuv420p refuses odd sides; an image of 15x21 (rendered at its own size) used to fail
    in ffmpeg after all the rendering ("Broken pipe")."""
    import imageio.v2 as imageio
    from PIL import Image

    from infinidepth.cli import main

    img = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (15, 21, 3), dtype=np.uint8)).save(img)
    assert main(["gs", str(img), "--points", "300", "--video", "orbit", "--frames", "2", "--out", str(tmp_path), "--quiet"]) == 0
    frames = imageio.mimread(tmp_path / "odd_orbit.mp4")
    assert len(frames) == 2 and frames[0].shape[:2] == (16, 22)
    assert np.asarray(Image.open(tmp_path / "odd_novel_view.png")).shape == (15, 3 * 21, 3)    # the PNG keeps the size


def test_gs_outputs_are_replaced_as_a_set_and_an_older_video_is_named(tmp_path, monkeypatch, capsys):
    """A video stopped midway used to leave the new PLY and PNG beside the earlier run's MP4; now the
    earlier set stays whole. A run without the earlier run's video kind says that file is stale."""
    import sys

    from PIL import Image

    from infinidepth.cli import main

    gs_render = sys.modules["infinidepth.gs.render"]   # (the package's name render is the function)
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(img)
    args = ["gs", str(img), "--points", "300", "--video", "orbit", "--frames", "3", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    names = ("pic_gaussians.ply", "pic_novel_view.png", "pic_orbit.mp4")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    real, calls = gs_render.render, []

    def stopped(*a, **k):   # the 4th view is the video's 2nd frame
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gs_render, "render", stopped)
    assert main(args[:3] + ["400"] + args[4:]) == 130 and len(calls) == 4
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pic.png", *names])   # no temporaries left
    monkeypatch.setattr(gs_render, "render", real)
    assert main(["gs", str(img), "--points", "300", "--out", str(tmp_path), "--quiet"]) == 0
    assert f"{tmp_path / 'pic_orbit.mp4'} is left from an earlier run" in capsys.readouterr().err


def test_gs_command_with_a_head_samples_the_points_once(tmp_path, monkeypatch):
    """The head path used to run the sampler twice (once for plain splats it then threw away)."""
    from PIL import Image

    from infinidepth.cli import main
    from infinidepth.models.base import ImplicitDepthModel

    calls = []
    original = ImplicitDepthModel.sample_points

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImplicitDepthModel, "sample_points", counted)
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(img)
    assert main(["gs", str(img), "--gs-head", "demo", "--points", "500", "--keep-outliers", "--out", str(tmp_path),
                 "--quiet"]) == 0
    assert len(calls) == 1 and len(read_ply(tmp_path / "pic_gaussians.ply")) == 500


def test_gs_command_gives_the_head_the_original_images_colours(tmp_path, monkeypatch):
    """The head used to read its colours from the network input (96x128 for demo): fine detail of a
    larger picture was averaged away before the head saw it (a blurry render). A picture of one-pixel
    black and white stripes is uniform grey at the network input; its Gaussians, with the head's
    colour offset zeroed, must still be black and white."""
    from PIL import Image

    import infinidepth.gs.train as gs_train
    from infinidepth.cli import main

    load = gs_train.load_gs_head

    def no_colour_offset(path):
        head, name = load(path)
        with torch.no_grad():
            head.color.weight.zero_()
            head.color.bias.zero_()
        return head, name

    monkeypatch.setattr(gs_train, "load_gs_head", no_colour_offset)
    stripes = np.zeros((384, 512, 3), np.uint8)
    stripes[:, ::2] = 255
    img = tmp_path / "stripes.png"
    Image.fromarray(stripes).save(img)
    assert main(["gs", str(img), "--gs-head", "demo", "--points", "2000", "--out", str(tmp_path), "--quiet"]) == 0
    grey = (read_ply(tmp_path / "stripes_gaussians.ply").sh[:, :, 0] * C0 + 0.5).mean(1)
    # read bilinearly between pixel centres a point may be any grey; half of them lie within a quarter
    # pixel of a centre, so far from mid-grey (at the network input every one would be 0.5)
    assert float((grey - 0.5).abs().median()) > 0.2


def test_gs_command_with_a_model_answering_nan_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main
    from infinidepth.models import from_preset

    model = from_preset("tiny")
    with torch.no_grad():
        model.decoder.mlp[0].weight.mul_(1e38)  # finite weights, overflowing activations
    save_model(model, tmp_path / "overflow.safetensors")
    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["gs", str(img), "--checkpoint", str(tmp_path / "overflow.safetensors"), "--points", "100",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "nothing was written" in err and "Traceback" not in err
    assert not out.exists()


def test_psnr_ssim_and_holes_against_hand_values():
    from infinidepth.gs.metrics import hole_fraction, psnr, ssim

    a = torch.full((20, 30, 3), 0.5)
    b = torch.full((20, 30, 3), 0.6)
    assert psnr(a, b) == pytest.approx(20.0)                       # MSE 0.01
    assert psnr(a, a) == math.inf
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4))   # luminance term only
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 32, 3, generator=g)
    noisy = (x + 0.2 * torch.randn(32, 32, 3, generator=g)).clamp(0, 1)
    assert ssim(x, x) == pytest.approx(1.0) and ssim(x, noisy) < 0.9
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[:, :10] = True
    b2 = b.clone()
    b2[:, :10] = 0.5
    assert psnr(a, b2, mask) == math.inf
    alpha = torch.ones(20, 30)
    alpha[:5] = 0.2
    assert hole_fraction(alpha) == pytest.approx(0.25) and hole_fraction(alpha, mask) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="images"):
        psnr(a, b[..., :2])


def _plane_grid(side: int, step: float, depth: float, dtype=torch.float32) -> torch.Tensor:
    """``side x side`` points ``step`` apart on the plane z = ``depth``, centred on the optical axis."""
    u = (torch.arange(side, dtype=dtype) - (side - 1) / 2) * step
    y, x = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), torch.full((side * side,), depth, dtype=dtype)], -1)


def test_point_head_outputs_have_the_documented_ranges_and_follow_the_point_spacing():
    from infinidepth.gs.heads import PointHead

    torch.manual_seed(0)
    head = PointHead(feature_dim=8)
    pts = _plane_grid(5, 0.1, 2.0)
    colors, feats = torch.rand(25, 3), torch.randn(25, 8)
    g = head(pts, colors, feats)
    assert g.sh.shape == (25, 3, 1) and (g.opacities > 0).all() and (g.opacities < 1).all()
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(25))
    # the centre point's 3 nearest neighbours are 0.1 away: its footprint is 0.1, its offset at most two
    assert (g.means[12] - pts[12]).abs().max() <= 2 * 0.1 + 1e-6
    # the same scene ten times as far (every ray the same): the same splats in pixels, scales exactly x10
    far = head(pts * 10, colors, feats)
    torch.testing.assert_close(far.scales, g.scales * 10)
    torch.testing.assert_close(far.means, g.means * 10)
    # the same plane sampled twice as densely, same colour and features: the centre point (on the
    # optical axis in both) gets exactly half the scale
    dense = head(_plane_grid(9, 0.05, 2.0), torch.full((81, 3), 0.5), feats[:1].expand(81, -1))
    sparse = head(pts, torch.full((25, 3), 0.5), feats[:1].expand(25, -1))
    torch.testing.assert_close(dense.scales[40], sparse.scales[12] / 2)
    for bad, what in ((torch.empty(0, 3), "no points"), (torch.tensor([[0.0, 0, -1.0]] * 5), "in front of the camera"),
                      (torch.tensor([[0.0, 0, 1.0]] * 5), "distinct points")):
        with pytest.raises(ValueError, match=what):
            head(bad, torch.zeros(len(bad), 3), torch.zeros(len(bad), 8))


def test_pixel_aligned_head_has_the_released_layout_and_loads_it(tmp_path):
    from infinidepth.checkpoint import CheckpointError
    from infinidepth.gs.heads import PixelAlignedHead

    ref = Path(__file__).parent / "data" / "official_keys_gs.txt"          # the released key layout
    expected = {}
    for line in ref.read_text().splitlines():
        if line and not line.startswith("#"):
            k, shape, _ = line.split("\t")
            expected[k] = [int(v) for v in shape.strip("[]").split(",")]
    head = PixelAlignedHead()
    assert {k: list(v.shape) for k, v in head.state_dict().items()} == expected
    torch.manual_seed(1)
    donor = PixelAlignedHead()
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in donor.state_dict().items()}}, tmp_path / "gs.ckpt")
    loaded = PixelAlignedHead.from_checkpoint(tmp_path / "gs.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), donor.state_dict().values()))
    image, depth, tokens = torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48) + 1, torch.randn(1, 1024, 2, 3)
    maps = loaded.attribute_maps(image, depth, tokens)
    assert maps.shape == (1, 37, 32, 48)
    coords = torch.rand(100, 2) * 2 - 1
    g = loaded.at_points(maps, coords, torch.rand(100, 3) + torch.tensor([0, 0, 1.0]), torch.rand(100, 3))
    assert g.sh.shape == (100, 3, 9) and (g.scales > 0).all() and (g.scales <= 5).all()
    partial = {f"encoder.{k}": v for k, v in list(donor.state_dict().items())[:-2]}
    torch.save(partial, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="missing"):
        PixelAlignedHead.from_checkpoint(tmp_path / "partial.ckpt")


def test_gs_head_training_loss_charges_the_source_views_uncovered_pixels(tmp_path):
    """The first step's loss with coverage weight w is the photometric loss plus w times the mean
    transparency of the source view's surface pixels: positive, and proportional to w."""
    from infinidepth.gs.train import GSTrainConfig, train_gs

    def first_loss(w):
        out = tmp_path / f"w{w}"
        cfg = GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=300, steps=1, coverage_weight=w, out=str(out))
        return train_gs(cfg, progress=False)["losses"][0][1]

    plain, one, two = first_loss(0.0), first_loss(1.0), first_loss(2.0)
    assert one - plain > 1e-3
    assert two - plain == pytest.approx(2 * (one - plain), rel=1e-4)


def test_gs_training_signalled_in_its_last_step_is_finished(tmp_path):
    """The head is written, so the run is complete: not 'interrupted' (the command exits 0, and
    --resume would have nothing to continue)."""
    import os

    from infinidepth.gs.train import GSTrainConfig, train_gs

    cfg = GSTrainConfig(depth_model="tiny", scenes=1, size=(32, 48), points=100, steps=1, out=str(tmp_path))
    result = train_gs(cfg, progress=False, on_step=lambda step, loss: os.kill(os.getpid(), signal.SIGTERM))
    assert result["step"] == 1 and result["signal"] == signal.SIGTERM and not result["interrupted"]
    assert (tmp_path / "gs_head.pt").is_file()


def test_gs_head_training_resumes_exactly_and_feeds_the_gs_command(tmp_path):
    import os
    import signal

    from infinidepth.cli import main
    from infinidepth.gs.train import GSTrainConfig, train_gs

    def cfg(out):
        return GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=300, steps=4, checkpoint_every=2,
                             log_every=1, out=str(out))

    whole = train_gs(cfg(tmp_path / "whole"), progress=False)

    def stop_at_2(step, loss):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train_gs(cfg(tmp_path / "cut"), progress=False, on_step=stop_at_2)
    assert first["interrupted"] and first["step"] == 2 and not (tmp_path / "cut" / "gs_head.pt").exists()
    second = train_gs(cfg(tmp_path / "cut"), resume=True, progress=False)
    assert first["losses"] + second["losses"] == whole["losses"]
    with pytest.raises(FileExistsError):
        train_gs(cfg(tmp_path / "whole"), progress=False)
    with pytest.raises(ValueError, match="lpips: no weights file vgg.pth"):
        GSTrainConfig(lpips="vgg.pth").validate()

    from PIL import Image

    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(img)
    assert main(["gs", str(img), "--checkpoint", "tiny", "--points", "500", "--gs-head", str(tmp_path / "whole" / "gs_head.pt"),
                 "--keep-outliers", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    g = read_ply(tmp_path / "o" / "pic_gaussians.ply")
    assert len(g) == 500 and not torch.allclose(g.opacities, torch.full((500,), 0.95))   # the head's, not the splat rule


GS_BAD_VALUES = [  # (GSTrainConfig fields, what the error must say)
    (dict(points=3), r"points must be in \[4, 67108864\], got 3"),
    (dict(points=2.5), "points must be a whole number, got 2.5"),
    (dict(steps=True), "steps must be a whole number, got True"),
    (dict(lpips_weight=float("nan")), "lpips_weight must be a finite number, got nan"),
    (dict(ssim_weight=-1.0), "ssim_weight must be 0 or more, got -1"),
    (dict(coverage_weight=-0.5), "coverage_weight must be 0 or more, got -0.5"),
    (dict(lr=0.0), "lr must be greater than 0, got 0"),
    (dict(baseline=float("inf")), "baseline must be a finite number, got inf"),
    (dict(views=1), r"views must be at least 2 \(a source and a moved view\), got 1"),
    (dict(seed=-1), r"seed must be in \[0, 4294967295\], got -1"),
    (dict(size=(30, 48)), r"size must be multiples of 16, got \[30, 48\]"),
    (dict(size=64), r"size must be \[height, width\], two whole numbers, got 64"),
    (dict(scenes="10"), "scenes must be a whole number, got '10'"),
    (dict(out=5), r"out must be a folder path \(text\), got 5"),
]


@pytest.mark.parametrize("fields,message", GS_BAD_VALUES, ids=[str(f) for f, _ in GS_BAD_VALUES])
def test_gs_training_config_refuses_bad_values_naming_the_field(fields, message):
    from infinidepth.gs.train import GSTrainConfig

    with pytest.raises(ValueError, match=message):
        GSTrainConfig(**fields).validate()


def test_gs_training_config_accepts_the_smallest_values_and_the_command_refuses_bad_ones(tmp_path, capsys):
    from infinidepth.cli import main
    from infinidepth.gs.train import GSTrainConfig

    assert GSTrainConfig(points=4, views=2, size=[16, 16], ssim_weight=0, lpips_weight=0).validate().size == (16, 16)
    (tmp_path / "notes.txt").write_text("not weights")
    for flags, message in ((["--points", "3"], "\n  --points must be in [4, 67108864], got 3\n"),   # the flag, not the field
                           (["--lpips", str(tmp_path / "notes.txt"), "--lpips-weight", "nan"],
                            "\n  --lpips-weight must be a finite number, got nan\n"),
                           (["--lpips", str(tmp_path / "notes.txt")], f"error: --lpips {tmp_path / 'notes.txt'}: not a "
                                                                      "readable PyTorch checkpoint")):
        assert main(["train-gs", "--depth-model", "tiny", *flags, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gs_training_refuses_depth_models_its_sampler_cannot_use_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import sys

    from infinidepth.cli import main

    # the grid baseline used to end in a NotImplementedError traceback at the first step
    for model, arch in (("grid-tiny", "GridBaseline"), ("sensor-tiny", "InfiniDepth_DepthSensor")):
        assert main(["train-gs", "--depth-model", model, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{model} is {arch}" in err and "Traceback" not in err
    (tmp_path / "vgg.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lpips", None)                  # the lpips package not installed
    assert main(["train-gs", "--depth-model", "tiny", "--lpips", str(tmp_path / "vgg.pth"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "pip install lpips" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gs_resume_after_a_crash_logs_each_step_once(tmp_path):
    import json

    from infinidepth.gs.train import GSTrainConfig, train_gs

    cfg = GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=200, steps=4, checkpoint_every=2, log_every=1,
                        out=str(tmp_path))

    def crash_at_3(step, loss):   # logged step 3, killed before the next checkpoint (no SIGTERM: no save)
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_gs(cfg, progress=False, on_step=crash_at_3)
    train_gs(cfg, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "gs_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (None, 143)])
def test_gs_training_stopped_early_names_its_checkpoint_not_a_head_it_did_not_write(tmp_path, capsys, monkeypatch,
                                                                                  sig, code):
    """...and exits as the signal's kill would (None: the signal went to another rank), not 0."""
    import infinidepth.gs.train as gs_train
    from infinidepth.cli import main

    monkeypatch.setattr(gs_train, "train_gs", lambda cfg, resume, progress: {"step": 2, "interrupted": True,
                                                                             "signal": sig, "losses": []})
    assert main(["train-gs", "--out", str(tmp_path)]) == code
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"stopped (continue with --resume) at step 2; checkpoint in {tmp_path / 'gs_checkpoint.pt'}"


def test_gs_resume_names_the_fields_that_differ(tmp_path):
    import dataclasses

    from infinidepth.gs.train import GSTrainConfig, train_gs

    cfg = GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=300, steps=4, out=str(tmp_path)).validate()
    torch.save({"config": dataclasses.asdict(dataclasses.replace(cfg, steps=8, lr=0.01))}, tmp_path / "gs_checkpoint.pt")
    with pytest.raises(ValueError, match="--resume: the config differs from the checkpoint's in lr, steps$"):
        train_gs(cfg, resume=True, progress=False)
    (tmp_path / "gs_checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="is damaged or not a train-gs checkpoint"):
        train_gs(cfg, resume=True, progress=False)
    (tmp_path / "gs_checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="--resume: no checkpoint at"):
        train_gs(cfg, resume=True, progress=False)


def test_the_bundled_gs_head_loads_by_name_and_fits_the_demo_model():
    from infinidepth.checkpoint import load_model
    from infinidepth.gs.train import feature_dim, load_gs_head

    head, depth_model = load_gs_head("demo")
    assert depth_model == "demo" and head.feature_dim == feature_dim(load_model("demo"))


# -- LPIPS (the lpips package, network weights from a file the user gives) -----------------------------------------
@pytest.fixture
def lpips():
    """The lpips package (in the test extras; these tests skip where it is not installed)."""
    return pytest.importorskip("lpips")


def trunk_file(tmp_path, net: str) -> tuple[Path, torch.nn.Module]:
    """torchvision's trunk of ``net`` with random weights, saved as torchvision's files are (the
    classifier left out here to keep the file small; a real file's is ignored)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg16() if net == "vgg" else torchvision.models.alexnet()
    path = tmp_path / f"{net}.pth"
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("features.")}, path)
    return path, model.features.eval()


# where LPIPS reads the trunk (the paper): after the ReLUs of VGG's conv1_2, conv2_2, conv3_3, conv4_3,
# conv5_3 and of AlexNet's conv1 to conv5, as indices into torchvision's `features`
LPIPS_TAPS = {"vgg": [3, 8, 15, 22, 29], "alex": [1, 4, 7, 9, 11]}


def lpips_by_hand(features, taps, lins, a, b) -> float:
    """LPIPS written out (Zhang et al. 2018, v0.1): inputs to [-1, 1], the fixed per-channel scaling,
    the trunk's activations at the taps, unit-normalised over channels, squared differences weighted
    per channel by the calibrated linear layers, averaged over space, summed over the taps."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    x, y = ((t.permute(2, 0, 1)[None] * 2 - 1 - shift) / scale for t in (a, b))
    total, k = 0.0, 0
    for i, layer in enumerate(features):
        x, y = layer(x), layer(y)
        if i in taps:
            fx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += float(((fx - fy) ** 2 * lins[k].view(1, -1, 1, 1)).sum(1).mean())
            k += 1
    return total


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # torchvision on lpips's `pretrained`
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_from_a_torchvision_trunk_file_matches_the_formula(tmp_path, net, lpips):
    from infinidepth.gs.metrics import load_lpips, lpips_distance

    path, features = trunk_file(tmp_path, net)
    model = load_lpips(path)
    calibrated = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)       # the package's linear layers
    lins = [getattr(calibrated, f"lin{k}").model[1].weight.detach().flatten() for k in range(5)]
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(64, 80, 3, generator=g), torch.rand(64, 80, 3, generator=g)
    with torch.no_grad():
        got = float(lpips_distance(model, a, b))
        want = lpips_by_hand(features, LPIPS_TAPS[net], lins, a, b)
    assert got == pytest.approx(want, rel=1e-4) and got > 0
    assert float(lpips_distance(model, a, a)) == 0.0
    # pixels outside the mask do not count: changing them there changes nothing
    mask = torch.zeros(64, 80, dtype=torch.bool)
    mask[:, :40] = True
    c = torch.where(mask[..., None], a, torch.rand(64, 80, 3, generator=g))
    assert float(lpips_distance(model, c, b, mask)) == pytest.approx(float(lpips_distance(model, a, b, mask)), abs=0)
    # gradients reach the image (a training loss), not the frozen network
    a.requires_grad_(True)
    lpips_distance(model, a, b).backward()
    assert a.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # torchvision on lpips's `pretrained`
def test_lpips_takes_a_saved_lpips_module_and_refuses_other_files(tmp_path, lpips):
    from infinidepth.checkpoint import CheckpointError
    from infinidepth.gs.metrics import load_lpips, lpips_distance

    torch.manual_seed(2)
    whole = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    torch.save(whole.state_dict(), tmp_path / "lpips_alex.pth")
    model = load_lpips(tmp_path / "lpips_alex.pth")
    a, b = torch.rand(32, 48, 3), torch.rand(32, 48, 3)
    with torch.no_grad():
        assert float(lpips_distance(model, a, b)) == pytest.approx(float(whole(a.permute(2, 0, 1)[None],
                                                                             b.permute(2, 0, 1)[None], normalize=True)))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="neither torchvision VGG16 / AlexNet"):
        load_lpips(tmp_path / "resnet.pth")
    path, _ = trunk_file(tmp_path, "alex")
    short = {k: v for k, v in torch.load(path).items() if k != "features.8.bias"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors of the alex trunk \(e.g. net.slice4.8.bias\)"):
        load_lpips(tmp_path / "short.pth")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_lpips(tmp_path / "text.pth")


def test_gs_training_adds_lpips_when_given_weights_and_says_when_it_does_not(tmp_path, capsys, lpips):
    from infinidepth.cli import main
    from infinidepth.gs.train import GSTrainConfig, train_gs

    path, _ = trunk_file(tmp_path, "alex")

    def cfg(out, **kw):
        return GSTrainConfig(depth_model="tiny", scenes=2, size=(32, 48), points=300, steps=1, out=str(out), **kw)

    plain = train_gs(cfg(tmp_path / "plain"), progress=False)["losses"]
    with_lpips = train_gs(cfg(tmp_path / "lpips", lpips=str(path), lpips_weight=10.0), progress=False)["losses"]
    assert with_lpips[0][1] > plain[0][1] + 1e-3          # the same first step, plus the LPIPS term
    args = ["train-gs", "--depth-model", "tiny", "--scenes", "2", "--size", "32x48", "--points", "300", "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert ("loss: L1 + 0.2 (1 - SSIM) + 0.5 (1 - source-view opacity) (no LPIPS: --lpips VGG16_OR_ALEXNET_WEIGHTS.pth "
            "adds it)") in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--lpips", str(path)]) == 0
    assert f"loss: L1 + 0.2 (1 - SSIM) + 0.5 (1 - source-view opacity) + 0.05 LPIPS ({path})" in capsys.readouterr().out


# -- input validation: bad input is refused naming the problem -----------------------------------------------------
def one_gaussian(**fields):
    """One valid Gaussian 3 m ahead, with ``fields`` replaced."""
    f = dict(means=torch.tensor([[0.0, 0, 3]]), scales=torch.full((1, 3), 0.1), rotations=torch.tensor([[1.0, 0, 0, 0]]),
             opacities=torch.tensor([0.9]), sh=torch.zeros(1, 3, 1))
    f.update(fields)
    return Gaussians(**f)


BAD_GAUSSIANS = [  # (fields replaced, what the error must say)
    (dict(scales=torch.tensor([[-0.2, 0.2, 0.2]])), r"Gaussians.scales must be positive .*Gaussian 0 has"),
    (dict(scales=torch.zeros(1, 3)), "Gaussians.scales must be positive"),
    (dict(opacities=torch.tensor([1.5])), r"Gaussians.opacities must be in \[0, 1\]"),
    (dict(opacities=torch.tensor([-0.1])), r"Gaussians.opacities must be in \[0, 1\]"),
    (dict(rotations=torch.zeros(1, 4)), "Gaussians.rotations must not be zero quaternions"),
    (dict(means=torch.tensor([[0, 0, 3]])), "Gaussians.means must be float32 or float64, got int64"),
    (dict(opacities=torch.tensor([True])), "Gaussians.opacities must be float32 or float64, got bool"),
    (dict(means=torch.tensor([[0.0, 0, 3]]).half()), "Gaussians.means must be float32 or float64, got float16"),
    (dict(means=torch.tensor([[0.0, 0, 3]], dtype=torch.float64)),
     "Gaussians' fields must share one dtype, got means float64, scales float32, rotations float32"),
    (dict(means=torch.zeros(1, 3, device="meta")), "Gaussians' fields must share one device, got means meta, scales cpu"),
    (dict(sh=torch.zeros(1, 3, 25)), r"SH degree 4 is not supported \(at most 3\)"),
    (dict(sh=torch.zeros(1, 3, 0)), r"K = \(degree \+ 1\)\^2 = 1, 4, 9 or 16 .*got \[1, 3, 0\]"),
    (dict(sh=torch.zeros(1, 3, 2)), r"K = \(degree \+ 1\)\^2 = 1, 4, 9 or 16 .*got \[1, 3, 2\]"),
    (dict(means=[[0.0, 0, 3]]), "Gaussians.means must be a tensor, got list"),
]


@pytest.mark.parametrize("fields,message", BAD_GAUSSIANS, ids=[m[:40] for _, m in BAD_GAUSSIANS])
def test_gaussians_refuse_bad_fields_naming_them(fields, message):
    with pytest.raises(ValueError, match=message):
        one_gaussian(**fields)


def test_gaussians_accept_the_edges_and_keep_gradients(tmp_path):
    # opacities 0 and 1 are valid (the PLY stores the logits of 1e-7 and 1 - 1e-7); a non-unit quaternion is normalised
    g = gaussians([[0, 0, 3.0], [0.2, 0, 3.0]], [[0.1] * 3] * 2, [[1, 1, 1]] * 2, [0.0, 1.0], [[2.0, 0, 0, 0], [1, 0, 0, 0]])
    write_ply(tmp_path / "edges.ply", g)
    back = read_ply(tmp_path / "edges.ply")
    torch.testing.assert_close(back.opacities, torch.tensor([1e-7, 1 - 1e-7]), atol=1e-7, rtol=0)
    unit = gaussians([[0, 0, 3.0]], [[0.1, 0.2, 0.3]], [[1, 1, 1]], [0.9], [[0.6, 0.8, 0, 0]])
    double = gaussians([[0, 0, 3.0]], [[0.1, 0.2, 0.3]], [[1, 1, 1]], [0.9], [[1.2, 1.6, 0, 0]])
    torch.testing.assert_close(render_torch(unit, torch.eye(4), K, (48, 64))["alpha"],
                               render_torch(double, torch.eye(4), K, (48, 64))["alpha"])
    # the checks record nothing and change nothing: gradients reach non-leaf inputs (the heads' outputs)
    raw = torch.tensor([-1.0, 0.5], requires_grad=True)
    log_scale = torch.full((2, 3), -2.0, requires_grad=True)
    h = Gaussians(g.means, log_scale.exp(), g.rotations, torch.sigmoid(raw), g.sh)
    render_torch(h, torch.eye(4), K, (48, 64))["alpha"].sum().backward()
    assert raw.grad.abs().min() > 0 and log_scale.grad.abs().sum() > 0


def test_write_ply_writes_zero_gaussians_and_refuses_ones_changed_to_nan(tmp_path):
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 3, 4))
    write_ply(tmp_path / "empty.ply", empty)
    back = read_ply(tmp_path / "empty.ply")
    assert len(back) == 0 and back.degree == 1
    g = gaussians([[0, 0, 3.0]], [[0.1] * 3], [[1, 1, 1]], [0.9])
    g.means[0, 0] = float("nan")                                  # changed in place after construction
    with pytest.raises(ValueError, match=r"nan.ply: not written: Gaussians.means has NaN or infinite values"):
        write_ply(tmp_path / "nan.ply", g)
    g.means[0, 0] = 0.0
    g.scales[0, 1] = -0.1
    with pytest.raises(ValueError, match="not written: Gaussians.scales must be positive"):
        write_ply(tmp_path / "nan.ply", g)
    assert not (tmp_path / "nan.ply").exists()


def test_read_ply_names_the_file_and_what_a_non_3dgs_layout_lacks(tmp_path):
    import re

    from plyfile import PlyData, PlyElement

    full = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(9)], "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]

    def ply(name, names, element="vertex", value=0.5):
        v = np.empty(3, dtype=[(k, "f4") for k in names])
        for k in names:
            v[k] = value
        path = tmp_path / name
        PlyData([PlyElement.describe(v, element)]).write(str(path))
        return path

    assert read_ply(ply("ok.ply", full)).degree == 1
    cases = [
        (ply("xyz.ply", ["x", "y", "z"]), "not a 3DGS PLY: missing f_dc_0, f_dc_1, f_dc_2, opacity, scale_0"),
        (ply("two.ply", [k for k in full if k not in ("opacity", "scale_2")]), "not a 3DGS PLY: missing opacity, scale_2$"),
        (ply("gap.ply", [k for k in full if k != "f_rest_4"]), "not a 3DGS PLY: missing f_rest_4$"),
        (ply("short.ply", [k for k in full if k != "f_rest_8"]), "not a 3DGS PLY: missing f_rest_8$"),
        (ply("extra.ply", [*full, "f_rest_extra"]), "not a 3DGS PLY: odd properties f_rest_extra"),
        (ply("element.ply", full, element="gaussian"), "not a 3DGS PLY: no 'vertex' element"),
        (ply("deg4.ply", [*full[:9], *[f"f_rest_{i}" for i in range(72)], *full[-8:]]), r"SH degree 4 is not supported"),
        (ply("q0.ply", full, value=0.0), "Gaussians.rotations must not be zero"),
    ]
    (tmp_path / "cut.ply").write_bytes((tmp_path / "ok.ply").read_bytes()[:-20])
    cases.append((tmp_path / "cut.ply", "not a readable PLY"))
    for path, message in cases:
        with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
            read_ply(path)


BAD_RENDERS = [  # (changes to a valid render call, what the error must say)
    (dict(T=torch.diag(torch.tensor([2.0, 1, 1, 1]))), r"world_to_camera must be rigid: .*not a rotation"),
    (dict(T=torch.diag(torch.tensor([-1.0, 1, 1, 1]))), r"world_to_camera must be rigid: .*det -1"),
    (dict(T=torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), "world_to_camera must be rigid"),
    (dict(T=torch.diag(torch.tensor([1.0, 1, 1, 5]))), r"bottom row must be \[0, 0, 0, 1\]"),
    (dict(T=torch.full((4, 4), float("nan"))), "world_to_camera has NaN or infinite values"),
    (dict(size=(2.7, 3.9)), r"image size must be \(height, width\), two positive whole numbers, got \(2.7, 3.9\)"),
    (dict(size=(24,)), r"image size must be \(height, width\)"),
    (dict(size=(True, 4)), "image size must be .* two positive whole numbers"),
    (dict(tile=0), "tile must be a positive whole number of pixels, got 0"),
    (dict(tile=-4, renderer="cpp"), "tile must be a positive whole number of pixels, got -4"),
    (dict(tile=8.0), "tile must be a positive whole number"),
    (dict(background=(1.0, 1.0)), r"background must be three numbers \(r, g, b\)"),
    (dict(background=(float("nan"), 0, 0)), "background has NaN or infinite values"),
    (dict(background=(float("nan"), 0, 0), renderer="cpp"), "background has NaN or infinite values"),
    (dict(renderer="gsplat"), r"backend gsplat needs CUDA tensors \(the Gaussians are on cpu\)"),
]


@pytest.mark.parametrize("change,message", BAD_RENDERS, ids=[m[:40] for _, m in BAD_RENDERS])
def test_render_refuses_bad_cameras_sizes_tiles_and_backgrounds(change, message):
    from infinidepth.gs.render import render, render_cpp

    args = dict(T=torch.eye(4), size=(24, 32), renderer="torch")
    args.update(change)
    T, size, renderer = args.pop("T"), args.pop("size"), args.pop("renderer")
    g = gaussians([[0, 0, 3.0]], [[0.1] * 3], [[1, 1, 1]], [0.9])
    with pytest.raises(ValueError, match=message):
        if renderer == "gsplat":
            render(g, T, K, size, backend="gsplat", **args)
        else:
            (render_torch if renderer == "torch" else render_cpp)(g, T, K, size, **args)


def test_render_accepts_rigid_cameras_within_rounding():
    from infinidepth.gs.splats import camera_path

    g = gaussians([[0, 0, 3.0]], [[0.1] * 3], [[1, 1, 1]], [0.9])
    for w2c in camera_path("orbit", 5, 3.0, 0.5):                          # float64, through an inverse
        assert render_torch(g, torch.as_tensor(w2c).float(), K, (24, 32))["alpha"].max() > 0


def test_huge_gaussians_cover_the_view_or_are_refused():
    from infinidepth.gs.render import cpp_available, render_cpp

    # 1e9 m across at 3 m: the whole view at the Gaussian's opacity (float32 once squared its footprint
    # to inf - inf = NaN in the tile binning and dropped it)
    for dtype in (torch.float32, torch.float64):
        g = Gaussians(torch.tensor([[0.0, 0, 3]], dtype=dtype), torch.full((1, 3), 1e9, dtype=dtype),
                      torch.tensor([[1.0, 0, 0, 0]], dtype=dtype), torch.tensor([0.9], dtype=dtype),
                      torch.zeros(1, 3, 1, dtype=dtype))
        renderers = (render_torch, render_cpp) if cpp_available() else (render_torch,)
        for r in renderers:
            torch.testing.assert_close(r(g, torch.eye(4), K, (24, 32))["alpha"], torch.full((24, 32), 0.9, dtype=dtype))
    beyond = gaussians([[0, 0, 0.05]], [[3e16] * 3], [[1, 1, 1]], [0.9])   # its screen covariance overflows float32
    with pytest.raises(ValueError, match=r"Gaussian 0 \(1 in all\) is too large to project in float32"):
        render_torch(beyond, torch.eye(4), K, (24, 32))


def test_splats_from_points_size_repeated_points_by_their_distinct_neighbours():
    from infinidepth.gs.splats import splats_from_points

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 11), torch.linspace(-1, 1, 11), indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((121,), 4.0)], -1)   # spacing 0.2
    once = splats_from_points(pts, torch.full_like(pts, 0.5))
    twice = splats_from_points(torch.cat([pts, pts[:40]]), torch.full((161, 3), 0.5))
    torch.testing.assert_close(twice.scales[:121], once.scales)
    torch.testing.assert_close(twice.scales[121:], once.scales[:40])
    assert torch.allclose(once.scales[60], torch.tensor(0.75 * 0.2), rtol=1e-4)


BAD_SPLATS = [  # (keyword changes, what the error must say)
    (dict(neighbours=0), "neighbours must be a whole number of at least 1, got 0"),
    (dict(neighbours=2.5), "neighbours must be a whole number"),
    (dict(size=-1.0), r"size must be a positive finite number"),
    (dict(size=float("nan")), r"size must be a positive finite number"),
    (dict(opacity=0.0), r"opacity must be in \(0, 1\], got 0.0"),
    (dict(opacity=1.5), r"opacity must be in \(0, 1\], got 1.5"),
    (dict(colors=torch.full((10, 3), 255, dtype=torch.uint8)), "points and colors must be floating point"),
    (dict(colors=torch.full((10, 3), 3.0)), r"colors must be finite and in \[0, 1\]"),
    (dict(colors=torch.full((10, 3), float("nan"))), r"colors must be finite and in \[0, 1\]"),
    (dict(points=torch.ones(10, 3, dtype=torch.long)), "points and colors must be floating point"),
    (dict(points=torch.ones(10, 3)), r"need more than 3 distinct points to measure their spacing, got 1 \(of 10 points\)"),
]


@pytest.mark.parametrize("change,message", BAD_SPLATS, ids=[m[:40] for _, m in BAD_SPLATS])
def test_splats_from_points_refuses_bad_arguments(change, message):
    from infinidepth.gs.splats import splats_from_points

    args = dict(points=torch.rand(10, 3, generator=torch.Generator().manual_seed(0)) + torch.tensor([0, 0, 3.0]),
                colors=torch.full((10, 3), 0.5))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        splats_from_points(**args)


def test_camera_path_refuses_bad_numbers_and_a_two_frame_swing_moves():
    from infinidepth.gs.splats import camera_path

    for args, message in [((3, float("inf"), 0.3), "target depth must be a positive finite number, got inf"),
                          ((3, float("nan"), 0.3), "target depth must be a positive finite number, got nan"),
                          ((3, 3.0, float("inf")), "radius must be a positive finite number, got inf"),
                          ((2.5, 3.0, 0.3), "frames must be a positive whole number, got 2.5"),
                          ((True, 3.0, 0.3), "frames must be a positive whole number, got True"),
                          ((3, 1e-300, 1.0), "too far apart for a camera path")]:
        with pytest.raises(ValueError, match=message):
            camera_path("orbit", *args)
    for frames in (2, 3, 5):
        eyes = [np.linalg.inv(m)[:3, 3] for m in camera_path("swing", frames, 5.0, 0.3)]
        assert min(np.linalg.norm(a - b) for i, a in enumerate(eyes) for b in eyes[i + 1:]) > 0.05   # no two alike
    np.testing.assert_allclose(np.linalg.inv(camera_path("swing", 2, 5.0, 0.3)[1])[:3, 3], [0.3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(camera_path("swing", 4, 5.0, 0.3)[1], camera_path("swing", 2, 5.0, 0.3)[1])  # the full move


def test_metrics_refuse_integer_masks_empty_masks_and_images_off_range():
    from infinidepth.gs.metrics import hole_fraction, psnr, ssim

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(16, 16, 3, generator=g), torch.rand(16, 16, 3, generator=g)
    rows = torch.zeros(16, 16, dtype=torch.long)
    rows[:8] = 1                                                   # as an index: rows 0 and 1, not the top half
    for f in (lambda m: psnr(a, b, m), lambda m: ssim(a, b, m), lambda m: hole_fraction(a[..., 0], m)):
        with pytest.raises(ValueError, match="mask must be a bool tensor"):
            f(rows)
        with pytest.raises(ValueError, match="mask selects no pixels"):
            f(torch.zeros(16, 16, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"mask must be \[H, W\] = \(16, 16\), got \(8, 8\)"):
            f(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"the first image must be in \[0, 1\], got values in \[.*, 255\]"):
        psnr(a * 255, b)
    with pytest.raises(ValueError, match="the second image must be floating point in"):
        ssim(a, (b * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="the second image has NaN or infinite values"):
        psnr(a, torch.full_like(b, float("nan")))
    with pytest.raises(ValueError, match="SSIM needs images of at least 11x11 pixels"):
        ssim(a[:5, :5], b[:5, :5])
    with pytest.raises(ValueError, match="images are empty"):
        psnr(a[:0], b[:0])
    with pytest.raises(ValueError, match=r"alpha must be floating point, finite and in \[0, 1\]"):
        hole_fraction(torch.full((4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"alpha must be a non-empty \[H, W\] tensor"):
        hole_fraction(torch.rand(16, 16, 1))
    for threshold in (float("nan"), 0.0, 1.5):
        with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
            hole_fraction(a[..., 0], threshold=threshold)


def test_pixel_aligned_head_checks_coords_points_and_channels():
    from infinidepth.gs.heads import PixelAlignedHead

    torch.manual_seed(0)
    head = PixelAlignedHead()
    image, depth, tokens = torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48) + 1, torch.randn(1, 1024, 2, 3)
    with torch.no_grad():
        maps = head.attribute_maps(image, depth, tokens)
        coords, pts, cols = torch.rand(20, 2) * 2 - 1, torch.rand(20, 3) + torch.tensor([0, 0, 1.0]), torch.rand(20, 3)
        assert len(head.at_points(maps, coords, pts, cols)) == 20
        for args, message in [((maps, coords[None], pts, cols), r"coords must be \[N, 2\]"),
                              ((maps, torch.rand(20, 3), pts, cols), r"coords must be \[N, 2\]"),
                              ((maps, coords, pts[:10], cols[:10]), r"points and colors must be \[20, 3\] like coords"),
                              ((maps, torch.full((20, 2), float("nan")), pts, cols), "coords must be finite"),
                              ((maps, coords * 5, pts, cols), r"in \[-1, 1\]"),
                              ((maps, coords[:0], pts[:0], cols[:0]), "no points"),
                              ((maps[:, :30], coords, pts, cols), r"maps must be \[B, 37, H, W\]")]:
            with pytest.raises(ValueError, match=message):
                head.at_points(*args)
        for args, message in [((image[:, :2], depth, tokens), r"image must be \[B, 3, H, W\]"),
                              ((image, depth, torch.randn(1, 512, 2, 3)), r"tokens \[1, 1024, h, w\]"),
                              ((image, depth[..., :16], tokens), r"depth must be \[1, 1, 32, 48\]"),
                              ((image, torch.full_like(depth, float("nan")), tokens), "depth has NaN")]:
            with pytest.raises(ValueError, match=message):
                head.attribute_maps(*args)


def test_pixel_aligned_head_reads_border_points_from_the_border_pixels():
    """Points in the image's outer half-pixel (the sampler jitters up to the edge) used to get attributes
    blended with the zero padding: at a corner a quarter of the opacity logit and of the raw scale."""
    from infinidepth.gs.heads import PixelAlignedHead

    maps = torch.zeros(1, 37, 8, 8)
    maps[:, 0], maps[:, 3:6], maps[:, 6] = 3.0, 5.0, 1.0               # opacity logit, raw scales, rotation w
    coords = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.99], [0.3, -1.0]])
    g = PixelAlignedHead().at_points(maps, coords, torch.tensor([[0, 0, 1.0]]).repeat(4, 1), torch.full((4, 3), 0.5))
    torch.testing.assert_close(g.opacities, torch.sigmoid(torch.tensor(3.0)).repeat(4))
    torch.testing.assert_close(g.scales, torch.nn.functional.softplus(torch.tensor(1.0)).repeat(4, 3))


def test_pixel_aligned_head_resamples_each_pixels_gaussian_not_its_raw_outputs():
    """Halfway between a pixel of opacity logit -10 and raw scale 0 and one of logit 2 and raw scale 8,
    the released code gives the mean of the two pixels' Gaussians: opacity (sigmoid(-10) + sigmoid(2)) / 2
    = 0.44, not sigmoid(-4) = 0.018; scale (softplus(-4) + softplus(4)) / 2 = 2.02, not softplus(0) = 0.69;
    rotations of opposite handedness average to their normalised sum."""
    from infinidepth.gs.heads import PixelAlignedHead

    maps = torch.zeros(1, 37, 1, 2)
    maps[0, 0, 0], maps[0, 3:6, 0, 1] = torch.tensor([-10.0, 2.0]), 8.0
    maps[0, 6, 0, 0], maps[0, 7, 0, 1] = 2.0, 0.5                       # quaternions (1, 0, 0, 0) and (0, 1, 0, 0)
    g = PixelAlignedHead().at_points(maps, torch.tensor([[0.0, 0.0]]), torch.tensor([[0, 0, 1.0]]), torch.full((1, 3), 0.5))
    sig, soft = (lambda x: 1 / (1 + math.exp(-x))), (lambda x: math.log1p(math.exp(x)))
    torch.testing.assert_close(g.opacities, torch.tensor([(sig(-10) + sig(2)) / 2]))
    torch.testing.assert_close(g.scales, torch.full((1, 3), (soft(-4) + soft(4)) / 2))
    torch.testing.assert_close(g.rotations, torch.tensor([[0.5**0.5, 0.5**0.5, 0, 0]]))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_render_refuses_gaussians_changed_to_bad_values_after_construction(backend):
    from infinidepth.gs.render import render

    g = gaussians([[0, 0, 3.0]], [[0.1] * 3], [[1, 1, 1]], [0.9])
    g.opacities[0] = float("nan")                                 # an optimiser step gone wrong, say
    with pytest.raises(ValueError, match="Gaussians.opacities has NaN or infinite values"):
        render(g, torch.eye(4), K, (24, 32), backend=backend)
    g.opacities[0] = 0.9
    g.scales[0, 2] = 0.0
    with pytest.raises(ValueError, match="Gaussians.scales must be positive"):
        render(g, torch.eye(4), K, (24, 32), backend=backend)


def test_released_gs_head_file_loads_without_running_code_from_it(tmp_path):
    import argparse

    from infinidepth.checkpoint import CheckpointError
    from infinidepth.gs.heads import PixelAlignedHead

    torch.manual_seed(3)
    donor = PixelAlignedHead()
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in donor.state_dict().items()},
                "hyper_parameters": argparse.Namespace(trap=RunsCode(marker))}, tmp_path / "gs.ckpt")
    loaded = PixelAlignedHead.from_checkpoint(tmp_path / "gs.ckpt")   # a Lightning file: hyper-parameters pickled
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), donor.state_dict().values()))
    torch.save({"state_dict": {"encoder.x": RunsCode(marker)}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="no 'encoder.'-prefixed GS head keys"):
        PixelAlignedHead.from_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def released_gs_head_file(path, token_dim, seed=5):
    from infinidepth.gs.heads import PixelAlignedHead

    torch.manual_seed(seed)
    head = PixelAlignedHead(token_dim)
    for p in head.parameters():   # large enough that every input moves every attribute
        p.data.mul_(2)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in head.state_dict().items()}}, path)
    return head


def released_depth_model(preset):
    """A random model of the released layout whose depth varies (about 0.65 to 1): initialised, its
    disparity is below the floor everywhere, depth 200, beyond the sampler's far cut."""
    from infinidepth.models import from_preset

    torch.manual_seed(0)
    model = from_preset(preset).eval()
    last = model.depth_implicit_head.out_layer.layers[-2]
    with torch.no_grad():
        last.weight.mul_(5)
        last.bias.add_(1.5)
    return model


def test_gs_command_runs_the_released_gs_head_on_the_depth_and_tokens_of_the_image(tmp_path):
    """``infinidepth gs --gs-head <released GS checkpoint>``: each Gaussian's attributes are the
    released head's per-pixel maps of the network input, its dense depth (``model.predict``) and its
    ViT tokens (``model.encode``), read where the Gaussian's centre projects; the token width is read
    off the file (64 here, the official-tiny preset's)."""
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main

    model = released_depth_model("official-tiny")
    save_model(model, tmp_path / "released.safetensors")
    head = released_gs_head_file(tmp_path / "gs.ckpt", model.config.vit.embed_dim)
    H, W, f = 64, 96, 80.0
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        depth, tokens = model.predict(image), model.encode(image).maps[0]
    np.save(tmp_path / "twice.npy", 2 * depth[0, 0].numpy())   # metric depth twice the model's: its disparity halved
    for scale, extra in ((1, []), (2, ["--reference-depth", str(tmp_path / "twice.npy")])):
        assert main(["gs", str(tmp_path / "pic.png"), "--checkpoint", str(tmp_path / "released.safetensors"), "--gs-head",
                     str(tmp_path / "gs.ckpt"), "--input-size", f"{H}x{W}", "--fx", str(f), "--points", "400",
                     "--keep-outliers", "--out", str(tmp_path / "out"), "--quiet", *extra]) == 0
        g = read_ply(tmp_path / "out" / "pic_gaussians.ply")
        assert len(g) == 400
        with torch.no_grad():
            maps = head.attribute_maps(image, scale * depth, tokens)
        x, y, z = g.means.unbind(-1)
        coords = torch.stack([(f * y / z + H / 2) / H * 2 - 1, (f * x / z + W / 2) / W * 2 - 1], -1).clamp(-1, 1)
        want = head.at_points(maps, coords, g.means, torch.full((400, 3), 0.5))
        assert want.opacities.std() > 0.05 and want.scales.std() > 1e-3   # the attributes vary over the image
        torch.testing.assert_close(g.opacities, want.opacities, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(g.scales, want.scales, atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(g.rotations.abs(), want.rotations.abs(), atol=1e-4, rtol=1e-4)   # q and -q alike
        torch.testing.assert_close(g.sh[:, :, 1:], want.sh[:, :, 1:], atol=1e-4, rtol=1e-3)
        if scale == 1:
            plain_z = z
    torch.testing.assert_close(z, 2 * plain_z, rtol=1e-4, atol=0)   # the same points, twice as far


def test_gs_command_runs_the_released_gs_head_on_the_sensor_model_with_the_tokens_before_its_prompt(tmp_path):
    """With InfiniDepth_DepthSensor and --sparse-depth: its metric depth, and (as the released
    pipeline passes them) the ViT tokens from before the depth prompt, not the prompted ones."""
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main

    model = released_depth_model("sensor-tiny")
    with torch.no_grad():
        for p in model.prompt_model.parameters():   # a prompt that moves the tokens
            p.add_(0.05 * torch.randn_like(p))
    save_model(model, tmp_path / "sensor.safetensors")
    head = released_gs_head_file(tmp_path / "gs.ckpt", model.config.vit.embed_dim)
    H, W, f = 64, 96, 80.0
    rgb = np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    sparse = np.zeros((H, W), np.float32)
    rows, cols = np.random.default_rng(3).integers(0, H, 60), np.random.default_rng(4).integers(0, W, 60)
    sparse[rows, cols] = np.random.default_rng(5).uniform(1, 4, 60)
    np.save(tmp_path / "sparse.npy", sparse)
    assert main(["gs", str(tmp_path / "pic.png"), "--checkpoint", str(tmp_path / "sensor.safetensors"), "--gs-head",
                 str(tmp_path / "gs.ckpt"), "--sparse-depth", str(tmp_path / "sparse.npy"), "--input-size", f"{H}x{W}",
                 "--fx", str(f), "--points", "400", "--keep-outliers", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    g = read_ply(tmp_path / "out" / "pic_gaussians.ply")
    image, sparse_t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, torch.from_numpy(sparse)[None, None]
    with torch.no_grad():
        depth = model.predict(image, sparse_depth=sparse_t)
        vit = model.pretrained
        before = vit.intermediate_layers((image - model._mean) / model._std, [model.layer])[0]
        before = before.transpose(1, 2).reshape(1, -1, H // vit.patch_size, W // vit.patch_size)
        prompted = model.encode(image, sparse_depth=sparse_t).maps[0]
    assert (before - prompted).abs().max() > 0.1
    x, y, z = g.means.unbind(-1)
    coords = torch.stack([(f * y / z + H / 2) / H * 2 - 1, (f * x / z + W / 2) / W * 2 - 1], -1).clamp(-1, 1)
    want = head.at_points(head.attribute_maps(image, depth, before), coords, g.means, torch.full((400, 3), 0.5))
    torch.testing.assert_close(g.opacities, want.opacities, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g.scales, want.scales, atol=1e-5, rtol=1e-3)
    i = ((coords[:, 0] + 1) / 2 * H - 0.5).round().long().clamp(0, H - 1)   # the metric depth, near each point's pixel
    j = ((coords[:, 1] + 1) / 2 * W - 0.5).round().long().clamp(0, W - 1)
    assert float((z / depth[0, 0, i, j] - 1).abs().median()) < 0.05


def test_gs_and_predict_say_how_much_of_the_picture_is_beyond_the_far_cut(tmp_path, capsys):
    """A model whose depth is at the disparity floor (200) on about half the picture: both commands
    that sample points say which share holds none (the share of pixels at depth 90 or more)."""
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main
    from infinidepth.models import from_preset

    torch.manual_seed(0)
    model = from_preset("official-tiny").eval()
    last = model.depth_implicit_head.out_layer.layers[-2]
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.add_(0.5)
    save_model(model, tmp_path / "m.safetensors")
    rgb = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    far = float((model.predict(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255) >= 90).float().mean())
    assert 0.2 < far < 0.9
    common = [str(tmp_path / "pic.png"), "--checkpoint", str(tmp_path / "m.safetensors"), "--input-size", "64x96", "--quiet"]
    for argv in (["gs", *common, "--points", "500", "--out", str(tmp_path / "g")],
                 ["predict", *common, "--ply", "--points", "500", "--out", str(tmp_path / "p")]):
        assert main(argv) == 0
        assert f"note: {far:.0%} of " in capsys.readouterr().err, argv
    assert main(["gs", *common[:1], "--points", "500", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    assert "holds no points" not in capsys.readouterr().err   # demo's depths, 1 to e: no note


def test_gs_command_aligns_its_gaussians_to_a_reference_depth(tmp_path, capsys):
    """--reference-depth (at the image's or the network input's size): the Gaussians in its units,
    fitted in the model's alignment space (log-depth for demo: three times the model's depth is an
    exact fit, scale 1, shift log 3); a reference it cannot use is one error line and no output."""
    from PIL import Image

    from infinidepth.checkpoint import load_model
    from infinidepth.cli import main

    rgb = np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8)   # demo's network input size
    Image.fromarray(rgb).save(tmp_path / "pic.png")
    depth = load_model("demo").predict(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
    np.save(tmp_path / "thrice.npy", 3 * depth)
    run = ["gs", str(tmp_path / "pic.png"), "--points", "500", "--gs-head", "demo"]
    assert main([*run, "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    assert main([*run, "--out", str(tmp_path / "metric"), "--reference-depth", str(tmp_path / "thrice.npy")]) == 0
    assert "aligned to the reference depth in log_depth space (a=1, b=1.099)" in capsys.readouterr().out
    plain, metric = (read_ply(tmp_path / d / "pic_gaussians.ply") for d in ("plain", "metric"))
    torch.testing.assert_close(metric.means[:, 2], 3 * plain.means[:, 2], rtol=1e-4, atol=0)
    np.save(tmp_path / "small.npy", np.ones((10, 10), np.float32))
    flat = np.zeros((96, 128), np.float32)
    flat[10:20, 10:20] = 2.5
    np.save(tmp_path / "flat.npy", flat)
    for name, what in (("small.npy", "is 10x10; expected 96x128 \\(image\\), 96x128 \\(network input\\)"),
                       ("flat.npy", "is 2.5 at every valid sample; aligning needs samples at two or more different depths")):
        assert main([*run, "--out", str(tmp_path / "never"), "--reference-depth", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(what, err[0]), err
    assert not (tmp_path / "never").exists()


def test_gs_command_refuses_the_released_gs_head_without_a_released_depth_model(tmp_path, capsys):
    from PIL import Image

    from infinidepth import save_model
    from infinidepth.cli import main
    from infinidepth.models import InfiniDepth, OfficialConfig, ViTConfig

    released_gs_head_file(tmp_path / "gs.ckpt", 1024)
    save_model(InfiniDepth(OfficialConfig(vit=ViTConfig(embed_dim=64, depth=2, num_heads=2), cnn_dim=32, hidden=(16,))),
               tmp_path / "narrow.safetensors")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(tmp_path / "pic.png")
    for checkpoint, what in (("demo", "this checkpoint is InfiniDepthPaper$"), (str(tmp_path / "narrow.safetensors"),
                                                                             "this checkpoint is InfiniDepth 64 wide$")):
        assert main(["gs", str(tmp_path / "pic.png"), "--checkpoint", checkpoint, "--gs-head", str(tmp_path / "gs.ckpt"),
                     "--out", str(tmp_path / "never"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is the released GS head: it reads the 1024-wide ViT tokens" in err[0], err
        assert re.search(what, err[0]), err
    assert not (tmp_path / "never").exists()


def test_a_gaussian_exactly_at_the_near_plane_is_drawn_as_gsplat_draws_it():
    """gsplat culls depths below near_plane (0.01) only; the CPU backends culled z == 0.01 too, so
    the GPU and CPU renders of the same Gaussians differed. Behind it (by one ulp) stays undrawn."""
    from infinidepth.gs.render import NEAR, render

    for dtype in (torch.float32, torch.float64):
        at = torch.tensor(NEAR, dtype=dtype)
        for z, drawn in ((at, True), (torch.nextafter(at, torch.zeros((), dtype=dtype)), False)):
            g = Gaussians(torch.stack([torch.zeros((), dtype=dtype), torch.zeros((), dtype=dtype), z])[None],
                          torch.full((1, 3), 1e-4, dtype=dtype), torch.tensor([[1.0, 0, 0, 0]], dtype=dtype),
                          torch.tensor([0.9], dtype=dtype), torch.zeros(1, 3, 1, dtype=dtype))
            backends = ["torch"] + (["cpp"] if "cpp" in __import__("infinidepth.ops", fromlist=["x"]).available_backends(
                torch.device("cpu")) else [])
            for backend in backends:
                alpha = render(g, torch.eye(4, dtype=dtype), K.to(dtype), (48, 64), backend=backend)["alpha"]
                assert (alpha.max() > 0.5) == drawn, (dtype, float(z), backend)


def test_write_ply_refuses_float64_values_beyond_float32s_range(tmp_path):
    """The file is float32: such values used to be written as inf, a file read_ply then refused."""
    d = torch.float64
    ok = dict(means=torch.tensor([[0, 0, 1.0]], dtype=d), scales=torch.full((1, 3), 0.1, dtype=d),
              rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=d), opacities=torch.tensor([0.5], dtype=d),
              sh=torch.zeros(1, 3, 1, dtype=d))
    for name, value in (("means", torch.tensor([[0, 0, 1e39]], dtype=d)), ("scales", torch.full((1, 3), 1e300, dtype=d)),
                        ("rotations", torch.tensor([[1e39, 0, 0, 0]], dtype=d)), ("sh", torch.full((1, 3, 1), -1e39, dtype=d))):
        path = tmp_path / f"{name}.ply"
        with pytest.raises(ValueError, match=f"not written: Gaussians.{name} has values beyond float32's range"):
            write_ply(path, Gaussians(**{**ok, name: value}))
        assert not path.exists()
    write_ply(tmp_path / "ok.ply", Gaussians(**ok))                           # in range: written and read back
    torch.testing.assert_close(read_ply(tmp_path / "ok.ply").scales, ok["scales"].float())


def test_gs_resume_takes_the_run_folder_moved_or_spelt_differently(tmp_path):
    """The folder, how often it logs and saves change nothing a run computes; resuming a moved run
    folder (or "runs/gs/" for "runs/gs") used to be refused as a config that differs in out."""
    import os
    import shutil
    import signal

    from infinidepth.gs.train import GSTrainConfig, train_gs

    def cfg(out, **kw):
        return GSTrainConfig(**{**dict(depth_model="tiny", scenes=2, size=(32, 48), points=200, steps=3, checkpoint_every=1,
                                       log_every=1, out=str(out)), **kw})

    whole = train_gs(cfg(tmp_path / "whole"), progress=False)

    def stop_at_1(step, loss):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train_gs(cfg(tmp_path / "a"), progress=False, on_step=stop_at_1)
    assert first["interrupted"] and first["step"] == 1
    shutil.move(tmp_path / "a", tmp_path / "b")
    second = train_gs(cfg(f"{tmp_path / 'b'}{os.sep}", checkpoint_every=5), resume=True, progress=False)
    assert first["losses"] + second["losses"] == whole["losses"]
    assert (tmp_path / "b" / "gs_head.pt").is_file()
    with pytest.raises(ValueError, match="differs from the checkpoint's in points$"):
        train_gs(cfg(tmp_path / "b", points=300), resume=True, progress=False)


# -- closed forms written out here, independently of render.py's code --------------------------------------------
def rodrigues(axis, angle):
    """The rotation by ``angle`` about ``axis`` (float64 [3, 3]): I + sin K + (1 - cos) K^2."""
    u = torch.nn.functional.normalize(torch.as_tensor(axis, dtype=torch.float64), dim=0)
    Kx = torch.tensor([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def ewa_alpha(p_cam, cov_cam, opacity, f, c, size, jacobian_at=None):
    """EWA splatting of one Gaussian by hand: the Jacobian of (f x / z + cx, f y / z + cy) at
    ``jacobian_at`` (x, y, z; the centre unless given), J Sigma J^T + 0.3 I, alpha at pixel centres."""
    x, y, z = p_cam.tolist()
    jx, jy, jz = (x, y, z) if jacobian_at is None else jacobian_at
    J = torch.tensor([[f / jz, 0, -f * jx / jz**2], [0, f / jz, -f * jy / jz**2]], dtype=torch.float64)
    cov2d = J @ cov_cam @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)       # gsplat's eps2d: 0.3 px^2
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64) + 0.5,
                            torch.arange(size[1], dtype=torch.float64) + 0.5, indexing="ij")
    d = torch.stack([xs - (f * x / z + c[0]), ys - (f * y / z + c[1])], -1)
    a = opacity * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov2d), d))
    return torch.where(a >= 1 / 255, a, torch.zeros_like(a))


def gaussian_at(mean, scales, quat, opacity, rgb):
    d = torch.float64
    sh = torch.zeros(1, 3, 1, dtype=d)
    sh[0, :, 0] = (torch.tensor(rgb, dtype=d) - 0.5) / 0.28209479177387814
    return Gaussians(torch.as_tensor(mean, dtype=d).reshape(1, 3), torch.tensor([scales], dtype=d),
                     torch.tensor([quat], dtype=d), torch.tensor([opacity], dtype=d), sh)


def test_an_off_axis_rotated_gaussian_seen_by_a_rotated_camera_matches_ewa_by_hand():
    """Camera and Gaussian both rotated about skew axes, the Gaussian off the optical axis in x and y:
    every term of the projection (the Jacobian's x/z and y/z columns, the camera's rotation of the
    covariance, the quaternion's w, x, y, z, R S S^T R^T, the 0.3 px^2 dilation) shows in the footprint."""
    Rc = rodrigues([0.3, -0.5, 0.8], 0.4)
    C = torch.tensor([0.2, -0.1, -0.5], dtype=torch.float64)                 # camera centre in the world
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = Rc, -Rc @ C
    p_cam = torch.tensor([0.7, -0.45, 3.0], dtype=torch.float64)
    mean = Rc.T @ p_cam + C
    axis, angle = [0.2, 0.9, -0.4], 1.1
    u = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    quat = [math.cos(angle / 2), *(math.sin(angle / 2) * u).tolist()]       # (w, x, y, z)
    s = torch.tensor([0.25, 0.04, 0.12], dtype=torch.float64)
    Rg = rodrigues(axis, angle)
    cov_cam = Rc @ Rg @ torch.diag(s**2) @ Rg.T @ Rc.T
    Kd = K.double()
    want = ewa_alpha(p_cam, cov_cam, 0.8, 60.0, (32.0, 24.0), (48, 64))
    assert want[:, :-1].max() > 0.5 and want[0].max() == 0 and want[:, -1].max() == 0     # well inside the frame
    g = gaussian_at(mean, s.tolist(), quat, 0.8, [0.2, 0.6, 1.0])
    for backend in ("torch", "cpp") if "cpp" in __import__("infinidepth.ops", fromlist=["x"]).available_backends(
            torch.device("cpu")) else ("torch",):
        from infinidepth.gs.render import render

        out = render(g, T, Kd, (48, 64), backend=backend)
        torch.testing.assert_close(out["alpha"], want, atol=1e-9, rtol=0, msg=backend)
        torch.testing.assert_close(out["rgb"], want[..., None] * torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64),
                                   atol=1e-9, rtol=0, msg=backend)
        torch.testing.assert_close(out["depth"], torch.where(want > 0, 3.0, 0.0).double(), atol=1e-9, rtol=0, msg=backend)


def test_a_gaussian_beyond_the_image_edge_is_projected_with_gsplats_clamped_jacobian():
    """Centred 16 px right of the image (x/z = 0.8): the Jacobian is taken at x/z clamped to the
    image's extent plus 30% of its half field of view, (64 - 32) / 60 + 0.3 * 32 / 60 = 0.6933, as gsplat
    does; its visible tail is the footprint of that Jacobian, not the unclamped (or unmargined) one."""
    z = 4.0
    p_cam = torch.tensor([0.8 * z, 0.15 * z, z], dtype=torch.float64)
    sigma = 0.5
    limit = (64 - 32) / 60 + 0.3 * 0.5 * 64 / 60
    want = ewa_alpha(p_cam, sigma**2 * torch.eye(3, dtype=torch.float64), 0.9, 60.0, (32.0, 24.0), (48, 64),
                     jacobian_at=(limit * z, 0.15 * z, z))
    assert want[:, -1].max() > 0.1                                          # the tail reaches well into the image
    out = render_torch(gaussian_at(p_cam, [sigma] * 3, [1.0, 0, 0, 0], 0.9, [1, 1, 1]), torch.eye(4, dtype=torch.float64),
                       K.double(), (48, 64))
    torch.testing.assert_close(out["alpha"], want, atol=1e-9, rtol=0)


# real spherical harmonics (x, y, z unit), each with the sign the 3DGS code gives it (Condon-Shortley phase)
REAL_SH = [
    lambda x, y, z: 0.5 / math.sqrt(math.pi),
    lambda x, y, z: -math.sqrt(3 / (4 * math.pi)) * y,
    lambda x, y, z: math.sqrt(3 / (4 * math.pi)) * z,
    lambda x, y, z: -math.sqrt(3 / (4 * math.pi)) * x,
    lambda x, y, z: 0.5 * math.sqrt(15 / math.pi) * x * y,
    lambda x, y, z: -0.5 * math.sqrt(15 / math.pi) * y * z,
    lambda x, y, z: 0.25 * math.sqrt(5 / math.pi) * (2 * z * z - x * x - y * y),
    lambda x, y, z: -0.5 * math.sqrt(15 / math.pi) * x * z,
    lambda x, y, z: 0.25 * math.sqrt(15 / math.pi) * (x * x - y * y),
    lambda x, y, z: -0.25 * math.sqrt(35 / (2 * math.pi)) * y * (3 * x * x - y * y),
    lambda x, y, z: 0.5 * math.sqrt(105 / math.pi) * x * y * z,
    lambda x, y, z: -0.25 * math.sqrt(21 / (2 * math.pi)) * y * (4 * z * z - x * x - y * y),
    lambda x, y, z: 0.25 * math.sqrt(7 / math.pi) * z * (2 * z * z - 3 * x * x - 3 * y * y),
    lambda x, y, z: -0.25 * math.sqrt(21 / (2 * math.pi)) * x * (4 * z * z - x * x - y * y),
    lambda x, y, z: 0.25 * math.sqrt(105 / math.pi) * z * (x * x - y * y),
    lambda x, y, z: -0.25 * math.sqrt(35 / (2 * math.pi)) * x * (x * x - 3 * y * y),
]


def test_spherical_harmonics_are_the_3dgs_basis_in_its_order_and_signs():
    """Orthonormality holds for any order or sign of the 16 functions; the PLY files other tools
    read fix both. Coefficient k of channel c weighs basis function k in that channel only."""
    dirs = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.81], [-0.7, 0.2, -0.4], [0.1, 0.9, 0.3]],
                                                      dtype=torch.float64), dim=1)
    for k in range(16):
        for c in range(3):
            sh = torch.zeros(3, 3, 16, dtype=torch.float64)
            sh[:, c, k] = 0.2
            got = eval_sh(sh, dirs)
            want = torch.full((3, 3), 0.5, dtype=torch.float64)
            want[:, c] += torch.tensor([0.2 * REAL_SH[k](*d.tolist()) for d in dirs], dtype=torch.float64)
            torch.testing.assert_close(got, want.clamp_min(0), atol=1e-12, rtol=0, msg=f"coefficient {k}, channel {c}")


def test_view_dependent_colour_uses_the_direction_from_the_camera_centre():
    """A rotated, translated camera; a degree-1 Gaussian on its optical axis at 5 m. The colour is the
    SH towards the world direction from the camera's centre to the Gaussian (here the optical axis, R^T e_z)."""
    Rc = rodrigues([0.4, 1.0, -0.3], 0.9)
    C = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = Rc, -Rc @ C
    v = Rc.T @ torch.tensor([0, 0, 1.0], dtype=torch.float64)            # the viewing direction in the world
    g = gaussian_at(C + 5 * v, [0.2] * 3, [1.0, 0, 0, 0], 0.9, [0.5, 0.5, 0.5])
    coef = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, -0.3], [-0.25, 0.15, 0.35]], dtype=torch.float64)
    g.sh = torch.cat([g.sh, coef[None]], 2)                                 # channel c, band-1 coefficients 1..3
    out = render_torch(g, T, K.double(), (48, 64))
    basis = torch.tensor([REAL_SH[k](*v.tolist()) for k in (1, 2, 3)], dtype=torch.float64)
    want = 0.5 + coef @ basis
    assert (want - 0.5).abs().min() > 0.01                                 # each channel moved by the view
    i, j = 23, 31                                                            # next to the principal point
    torch.testing.assert_close(out["rgb"][i, j] / out["alpha"][i, j], want, atol=1e-9, rtol=0)


def test_ply_columns_by_hand_both_ways(tmp_path):
    """The layout other 3DGS tools write and read, by hand: rot_0..3 = w, x, y, z; opacity the logit;
    scales the natural log; f_rest channel-major (red's band-1..n coefficients, then green's, then blue's)."""
    from plyfile import PlyData, PlyElement

    # read: a file written here property by property
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(9)],
             "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    row = [1.0, 2.0, 3.0, 0, 0, 0, 0.1, 0.2, 0.3, *[10.0 + i for i in range(9)],
           math.log(3.0), math.log(0.2), math.log(0.05), math.log(1.5), 0.1, 0.7, -0.5, 0.5]
    vertex = np.array([tuple(row)], dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(tmp_path / "hand.ply"))
    g = read_ply(tmp_path / "hand.ply")
    assert g.degree == 1
    torch.testing.assert_close(g.opacities, torch.tensor([0.75]))                 # sigmoid(ln 3)
    torch.testing.assert_close(g.scales, torch.tensor([[0.2, 0.05, 1.5]]))
    torch.testing.assert_close(g.rotations, torch.tensor([[0.1, 0.7, -0.5, 0.5]]))
    torch.testing.assert_close(g.sh, torch.tensor([[[0.1, 10, 11, 12], [0.2, 13, 14, 15], [0.3, 16, 17, 18]]]))
    # write: the columns of known Gaussians
    sh = torch.zeros(1, 3, 4)
    sh[0, :, 0] = torch.tensor([0.1, 0.2, 0.3])
    sh[0, :, 1:] = torch.tensor([[10.0, 11, 12], [13, 14, 15], [16, 17, 18]])
    write_ply(tmp_path / "ours.ply", Gaussians(torch.tensor([[1.0, 2, 3]]), torch.tensor([[0.2, 0.05, 1.5]]),
                                               torch.tensor([[0.1, 0.7, -0.5, 0.5]]), torch.tensor([0.75]), sh))
    v = PlyData.read(str(tmp_path / "ours.ply"))["vertex"]
    got = [float(v[n][0]) for n in names]
    np.testing.assert_allclose(got, row, rtol=1e-6, atol=1e-6)


def test_point_head_activations_by_hand():
    """Linear heads with zero weights output their biases: every activation of the module docstring is
    then a number worked out here (offset 2 tanh(.) footprints, colour clamp(rgb + 0.5 tanh(.)),
    scale footprint exp(clamp(., log 0.75, 4)), opacity sigmoid, rotation normalise(. + (1, 0, 0, 0))),
    with the footprint the points' spacing on a grid."""
    from infinidepth.gs.heads import PointHead

    head = PointHead(feature_dim=4).double()
    biases = {"offset": [10.0, 0.0, -10.0], "color": [2.0, -1.0, 0.0], "scale": [0.5, -5.0, 0.0],
              "opacity": [1.0], "rotation": [0.0, 0.0, 0.5, 0.0]}
    with torch.no_grad():
        for name, b in biases.items():
            layer = getattr(head, name)
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64))
    pts = _plane_grid(3, 0.1, 2.0, torch.float64)[[0, 4, 1, 2, 3, 5, 6, 7, 8]]   # a corner, the centre, the rest
    colors = torch.tensor([[0.3, 0.6, 0.9], [0.9, 0.1, 0.5]] + [[0.5, 0.5, 0.5]] * 7, dtype=torch.float64)
    g = head(pts, colors, torch.randn(9, 4, dtype=torch.float64))
    # footprints by hand: the corner's 3 nearest are 0.1, 0.1 and 0.1 sqrt 2 away, the centre's all 0.1
    fp = torch.tensor([[(0.2 + 0.1 * math.sqrt(2)) / 3], [0.1]], dtype=torch.float64)
    pts, colors = pts[:2], colors[:2]
    t10 = math.tanh(10.0)
    torch.testing.assert_close(g.means[:2], pts + 2 * fp * torch.tensor([t10, 0.0, -t10], dtype=torch.float64))
    rgb = (colors + 0.5 * torch.tensor([math.tanh(2.0), math.tanh(-1.0), 0.0], dtype=torch.float64)).clamp(0, 1)
    assert rgb[1, 0] == 1.0                                                    # (0.9 + 0.48 clamped)
    torch.testing.assert_close(g.sh[:2][:, :, 0] * C0 + 0.5, rgb)
    torch.testing.assert_close(g.scales[:2], fp * torch.tensor([math.exp(0.5), 0.75, 1.0], dtype=torch.float64))   # (-5: at least 0.75)
    torch.testing.assert_close(g.opacities[:2], torch.full((2,), 1 / (1 + math.exp(-1.0)), dtype=torch.float64))
    torch.testing.assert_close(g.rotations[:2], torch.tensor([[1.0, 0, 0.5, 0]] * 2, dtype=torch.float64) / math.sqrt(1.25))


def test_point_head_gaussians_close_a_plane_rendered_finer_than_a_pixel_per_point():
    """However small the head asks its Gaussians to be, they stay at least the plain splats' size, so a
    plane of points closes on its own, rendered where the points are 4 pixels apart (the rasteriser's
    0.3 px^2 anti-aliasing fills nothing there). Each grid cell's centre is 0.707 spacings from four
    points: with scale 0.75 and opacity 0.95 each gives alpha 0.95 exp(-0.5 (0.707 / 0.75)^2) = 0.61,
    together 1 - 0.39^4 = 0.98. With Gaussians of exp(-4) spacings (the head's earlier smallest) the
    cell centres are empty."""
    from infinidepth.gs.heads import PointHead

    head = PointHead(feature_dim=4).double()
    with torch.no_grad():
        for name in ("offset", "color", "scale", "opacity", "rotation"):
            getattr(head, name).weight.zero_()
            getattr(head, name).bias.zero_()
        head.scale.bias.fill_(-10.0)                                           # "as small as you can"
        head.opacity.bias.fill_(math.log(0.95 / 0.05))
    pts = _plane_grid(12, 0.01, 2.0, torch.float64)                           # 0.01 apart at 2 m
    with torch.no_grad():
        g = head(pts, torch.full((144, 3), 0.5, dtype=torch.float64), torch.zeros(144, 4, dtype=torch.float64))
    f = 4 / 0.01 * 2.0                                                          # 4 px between neighbours
    K = torch.tensor([[f, 0, 24.0], [0, f, 24.0], [0, 0, 1]], dtype=torch.float64)
    alpha = render_torch(g, torch.eye(4, dtype=torch.float64), K, (48, 48))["alpha"]
    inner = alpha[4:44, 4:44]                                                   # between the outer points
    assert float(inner.min()) > 0.95, f"specks: alpha down to {float(inner.min()):.3f} inside the plane"


def test_pixel_aligned_head_activations_by_hand():
    """Constant attribute maps: every point reads the same raw values, so each released activation is a
    number worked out here: channel 0 opacity (sigmoid), 1-2 unused, 3-5 scales softplus(x - 4) in
    [1e-10, 5], 6-9 the unit quaternion, 10-36 the degree-2 SH (channel-major) damped by 0.1 * 0.25^band,
    plus the point's colour on band 0."""
    from infinidepth.gs.heads import PixelAlignedHead

    head = PixelAlignedHead()
    raw = torch.zeros(37, dtype=torch.float64)
    raw[0], raw[1:3], raw[3:6], raw[6:10] = 0.7, torch.tensor([9.0, -9.0]), torch.tensor([4.0, 0.0, 20.0]), \
        torch.tensor([2.0, 0.0, -1.0, 2.0])
    raw[10:] = torch.arange(27, dtype=torch.float64) / 10 - 1
    maps = raw[None, :, None, None].expand(1, 37, 4, 5).double()
    colors = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.3]], dtype=torch.float64)
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.3, 0.1, 5.0]], dtype=torch.float64)
    g = head.double().at_points(maps, torch.tensor([[-0.9, 0.4], [0.5, -1.0]], dtype=torch.float64), pts, colors)
    torch.testing.assert_close(g.means, pts)
    torch.testing.assert_close(g.opacities, torch.full((2,), 1 / (1 + math.exp(-0.7)), dtype=torch.float64))
    softplus = [math.log1p(math.exp(v - 4)) for v in (4.0, 0.0, 20.0)]         # ln 2, ln(1 + e^-4), 16 -> 5
    torch.testing.assert_close(g.scales, torch.tensor([[softplus[0], softplus[1], 5.0]] * 2, dtype=torch.float64))
    torch.testing.assert_close(g.rotations, torch.tensor([[2.0, 0, -1, 2]] * 2, dtype=torch.float64) / 3)
    damp = torch.tensor([1.0] + [0.025] * 3 + [0.00625] * 5, dtype=torch.float64)
    want = (raw[10:].reshape(3, 9) * damp).expand(2, 3, 9).clone()
    want[:, :, 0] += (colors - 0.5) / C0
    torch.testing.assert_close(g.sh, want)


def test_ssim_of_a_cosine_against_a_flat_image_by_hand():
    """b = 0.5 + 0.1 cos(w x) with w (W - 1) a multiple of 2 pi is its own reflection at both borders, so
    the 11-tap Gaussian (sigma 1.5) blurs it to 0.5 + 0.1 G(w) cos(w x) at every pixel, with G the
    window's cosine sum; against a flat a the covariance is 0 and SSIM is, pixel by pixel,
    (2 a my + C1) C2 / ((a^2 + my^2 + C1)(vy + C2)) with C1 = 0.01^2, C2 = 0.03^2."""
    from infinidepth.gs.metrics import ssim, ssim_map

    H, W, w = 16, 33, math.pi / 4                                             # w (W - 1) = 8 pi
    r = np.arange(-5, 6)
    k = np.exp(-0.5 * (r / 1.5) ** 2)
    k /= k.sum()
    G1, G2 = float(np.sum(k * np.cos(w * r))), float(np.sum(k * np.cos(2 * w * r)))
    x = np.arange(W)
    my = 0.5 + 0.1 * G1 * np.cos(w * x)
    vy = 0.255 + 0.1 * G1 * np.cos(w * x) + 0.005 * G2 * np.cos(2 * w * x) - my**2   # blur(b^2) - my^2
    a0, c1, c2 = 0.4, 0.01**2, 0.03**2
    want = (2 * a0 * my + c1) * c2 / ((a0**2 + my**2 + c1) * (vy + c2))
    b = torch.from_numpy(np.broadcast_to((0.5 + 0.1 * np.cos(w * x))[None, :, None], (H, W, 3)).copy())
    a = torch.full((H, W, 3), a0, dtype=torch.float64)
    got = ssim_map(a, b)
    torch.testing.assert_close(got, torch.from_numpy(np.broadcast_to(want, (H, W)).copy()), atol=1e-10, rtol=0)
    assert want.max() < 0.5 and want.max() - want.min() > 0.05             # far from 1: the structure term counts
    assert ssim(a, b) == pytest.approx(want.mean(), abs=1e-10)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[:, ::8] = True                                                     # the crests of the cosine only
    assert ssim(a, b, mask) == pytest.approx(want[::8].mean(), abs=1e-10)


def test_hole_fraction_counts_only_alpha_below_the_threshold():
    from infinidepth.gs.metrics import hole_fraction

    alpha = torch.tensor([[0.0, 0.25, 0.5, 0.75], [0.3, 0.3, 1.0, 0.5]], dtype=torch.float64)
    assert hole_fraction(alpha) == pytest.approx(4 / 8)                    # 0.5 itself is covered
    assert hole_fraction(alpha, threshold=0.25) == pytest.approx(1 / 8)
    assert hole_fraction(alpha, threshold=1.0) == pytest.approx(7 / 8)


def test_gs_command_with_a_gs_head_that_is_no_head_file_is_one_error_line_naming_it(tmp_path, capsys):
    import argparse

    from PIL import Image

    from infinidepth.cli import main
    from infinidepth.models import from_preset

    img = tmp_path / "pic.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(img)
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 256)) * 4)
    torch.save({"state_dict": {f"pipeline.{k}": v for k, v in from_preset("official-tiny").state_dict().items()},
                "hyper_parameters": argparse.Namespace(lr=1e-4)}, tmp_path / "depth.ckpt")   # a released-style file
    for name, says in (("noise.pt", "not a readable GS head (not a PyTorch file"),
                       ("depth.ckpt", "not a GS head written by infinidepth train-gs: it lacks depth_model, feature_dim, "
                                      "head, hidden (it holds hyper_parameters, state_dict)")):
        assert main(["gs", str(img), "--gs-head", str(tmp_path / name), "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"infinidepth: error: --gs-head: {tmp_path / name}: {says}"), err
        assert err.count("\n") == 1 and "weights_only" not in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_lists_hold_every_reachable_gaussian_front_to_back(dtype):
    """bin_tiles against a loop over tiles: round footprints (conic I / s^2, so a reach of s sqrt(2 ln 255)
    pixels), depths with ties (broken by index), some Gaussians hidden or off-screen."""
    from infinidepth.gs.render import bin_tiles

    rng = np.random.default_rng(0)
    n, H, W, tile = 300, 50, 70, 8
    mean = rng.uniform(-20, [W + 20, H + 20], (n, 2))
    s = rng.uniform(0.3, 6, n)
    z = rng.choice([1.0, 2.0, 2.5, 3.0], n) if dtype == torch.float32 else rng.uniform(0.5, 4, n)
    visible = rng.random(n) > 0.1
    conic = torch.eye(2, dtype=dtype).repeat(n, 1, 1) / torch.tensor(s**2, dtype=dtype)[:, None, None]
    g_of, per_tile, first = bin_tiles(torch.tensor(mean, dtype=dtype), conic, torch.tensor(z, dtype=dtype),
                                      torch.from_numpy(visible), (H, W), tile)
    reach = s * math.sqrt(2 * math.log(255))
    TY, TX = math.ceil(H / tile), math.ceil(W / tile)
    assert per_tile.shape == (TY * TX,)
    for ty in range(TY):
        for tx in range(TX):
            hits = [i for i in range(n) if visible[i]
                    and math.floor((mean[i, 0] - reach[i]) / tile) <= tx <= math.floor((mean[i, 0] + reach[i]) / tile)
                    and math.floor((mean[i, 1] - reach[i]) / tile) <= ty <= math.floor((mean[i, 1] + reach[i]) / tile)]
            want = sorted(hits, key=lambda i: (z[i], i))
            t = ty * TX + tx
            assert g_of[first[t] : first[t] + per_tile[t]].tolist() == want, (ty, tx)


def test_depth_order_is_a_stable_argsort_for_any_depths():
    from infinidepth.gs.render import depth_order

    for z in (torch.tensor([2.0, 1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, -1.0, 0.0, -0.0, 1.0], dtype=torch.float64),
              torch.tensor([3, 1, 2, 1]), torch.rand(1000, dtype=torch.float64) + 0.1):
        assert depth_order(z).tolist() == torch.argsort(z, stable=True).tolist()

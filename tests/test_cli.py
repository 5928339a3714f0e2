"""The command line: outputs, formats, alignment, and one clear line + exit 2 for every bad input."""

import numpy as np
import pytest
from PIL import Image

from infinidepth.cli import main


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_at_an_arbitrary_size_writes_all_outputs(tmp_path, image, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run(["predict", str(image), "--output-size", "1234x777", "--ply", "--out", str(out), "--input-size", "32x48"], capsys)
    assert code == 0, stdout
    depth = np.load(out / "scene_depth.npy")
    assert depth.shape == (1234, 777) and depth.dtype == np.float32 and np.isfinite(depth).all() and (depth > 0).all()
    png = np.asarray(Image.open(out / "scene_depth.png"))
    assert png.dtype == np.uint16 and png.shape == (1234, 777)
    color = np.asarray(Image.open(out / "scene_depth_color.png"))
    assert color.shape == (1234, 777, 3) and color.std() > 0
    from plyfile import PlyData

    assert len(PlyData.read(str(out / "scene.ply"))["vertex"]) == 1234 * 777
    assert "output 1234x777" in stdout


def test_scale_and_reference_alignment(tmp_path, image, capsys):
    out = tmp_path / "o"
    assert run(["predict", str(image), "--scale", "0.5", "--out", str(out), "--quiet"], capsys)[0] == 0
    rel = np.load(out / "scene_depth.npy")
    assert rel.shape == (20, 28)
    # a reference that is a known log-space affine map of the prediction is recovered exactly
    ref = np.exp(1.7 * np.log(rel) + 0.4).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    assert run(["predict", str(image), "--scale", "0.5", "--out", str(out), "--quiet", "--reference-depth", str(tmp_path / "ref.npy")], capsys)[0] == 0
    np.testing.assert_allclose(np.load(out / "scene_depth.npy"), ref, rtol=1e-3)


def test_point_cloud_from_the_surface_area_sampler(tmp_path, image, capsys):
    from plyfile import PlyData

    out = tmp_path / "p"
    argv = ["predict", str(image), "--ply", "--points", "5000", "--out", str(out), "--quiet", "--input-size", "32x48"]
    assert run(argv, capsys)[0] == 0
    v = PlyData.read(str(out / "scene.ply"))["vertex"]
    assert len(v) == 5000
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    assert np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
    # seeded: the same command writes the same cloud
    assert run(argv, capsys)[0] == 0
    v2 = PlyData.read(str(out / "scene.ply"))["vertex"]
    np.testing.assert_array_equal(np.stack([v2["x"], v2["y"], v2["z"]], 1), xyz)


def test_sensor_checkpoint_with_sparse_depth(tmp_path, image, capsys):
    sparse = np.zeros((40, 56), np.float32)
    sparse[::5, ::7] = 3.0
    np.save(tmp_path / "sparse.npy", sparse)
    out = tmp_path / "s"
    code, _, err = run(["predict", str(image), "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "sparse.npy"),
                        "--out", str(out), "--quiet", "--input-size", "32x48"], capsys)
    assert code == 0, err
    png = np.asarray(Image.open(out / "scene_depth.png"))  # metric: millimetres
    depth = np.load(out / "scene_depth.npy")
    np.testing.assert_array_equal(png, np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16))


def bad_cases(tmp_path, image):
    np.save(tmp_path / "nan.npy", np.full((40, 56), np.nan, np.float32))
    np.save(tmp_path / "neg.npy", -np.ones((40, 56), np.float32))
    np.save(tmp_path / "small.npy", np.ones((10, 10), np.float32))
    (tmp_path / "text.png").write_text("hello")
    import torch

    torch.save({"state_dict": {"pipeline.depth_implicit_head.x": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    img = str(image)
    return [
        (["predict", str(tmp_path / "missing.png")], "image not found"),
        (["predict", str(tmp_path / "text.png")], "cannot read image"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "small.npy")], "is 10x10; expected"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "nan.npy")], "NaN"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "neg.npy")], "negative"),
        (["predict", img, "--checkpoint", "sensor-tiny"], "needs --sparse-depth"),
        (["predict", img, "--sparse-depth", str(tmp_path / "small.npy")], "needs an InfiniDepth_DepthSensor"),
        (["predict", img, "--fx", "0", "--ply"], "focal length fx must be positive"),
        (["predict", img, "--input-size", "40x56"], "multiples of 16"),
        (["predict", img, "--output-size", "12by5"], "HxW"),
        (["predict", img, "--scale", "-1"], "--scale must be positive"),
        (["predict", img, "--checkpoint", str(tmp_path / "none.ckpt")], "no checkpoint file"),
        (["predict", img, "--checkpoint", str(tmp_path / "bad.ckpt")], "basic_encoder"),
        (["predict", img, "--reference-depth", str(tmp_path / "small.npy")], "reference depth"),
        (["predict", img, "--points", "100"], "with --ply"),
        (["predict", img, "--ply", "--points", "0"], "--points must be"),
    ]


def test_bad_inputs_exit_2_with_one_line_and_no_files(tmp_path, image, capsys):
    for argv, match in bad_cases(tmp_path, image):
        out = tmp_path / "never"
        code, stdout, err = run(argv + ["--out", str(out)], capsys)
        assert code == 2, (argv, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) >= 1 and lines[0].startswith("infinidepth: error:") and match in err, (argv, err)
        assert not out.exists(), argv


def test_demo_runs_on_the_bundled_image(tmp_path, capsys):
    code, stdout, _ = run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0
    assert np.load(tmp_path / "demo" / "demo_depth.npy").shape == (768, 1024)
    assert (tmp_path / "demo" / "demo.ply").stat().st_size > 0


def test_backend_choice(tmp_path, image, capsys):
    # Every backend of this machine gives the same map (to fp32 rounding); one it lacks is one line.
    from infinidepth.ops import available_backends

    maps = {}
    for backend in [b for b in available_backends("cpu") if b != "triton"]:  # (the interpreter: slow, tested elsewhere)
        out = tmp_path / backend
        argv = ["predict", str(image), "--out", str(out), "--quiet", "--input-size", "32x48", "--backend", backend]
        assert run(argv, capsys)[0] == 0
        maps[backend] = np.load(out / "scene_depth.npy")
    assert len(maps) >= 2
    for depth in maps.values():
        np.testing.assert_allclose(depth, maps["torch"], rtol=1e-4)
    code, _, err = run(["predict", str(image), "--out", str(tmp_path / "x"), "--backend", "cuda", "--device", "cpu"], capsys)
    assert code == 2 and "--backend" in err and "not available" in err

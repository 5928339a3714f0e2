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
    code, stdout, _ = run(["predict", str(image), "--output-size", "1234x777", "--ply", "--keep-outliers", "--out", str(out),
                           "--input-size", "32x48"], capsys)
    assert code == 0, stdout
    depth = np.load(out / "scene_depth.npy")
    assert depth.shape == (1234, 777) and depth.dtype == np.float32 and np.isfinite(depth).all() and (depth > 0).all()
    png = np.asarray(Image.open(out / "scene_depth.png"))
    assert png.dtype == np.uint16 and png.shape == (1234, 777)
    color = np.asarray(Image.open(out / "scene_depth_color.png"))
    assert color.shape == (1234, 777, 3) and color.std() > 0
    from plyfile import PlyData

    assert len(PlyData.read(str(out / "scene.ply"))["vertex"]) == 1234 * 777    # --keep-outliers: every pixel
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
    # a reference ordered the other way round (far where the prediction is near) aligns to nothing
    np.save(tmp_path / "anti.npy", np.exp(-1.7 * np.log(rel) + 0.4).astype(np.float32))
    code, _, err = run(["predict", str(image), "--scale", "0.5", "--out", str(tmp_path / "anti"),
                        "--reference-depth", str(tmp_path / "anti.npy")], capsys)
    assert code == 2 and "other way round" in err and not (tmp_path / "anti").exists()


def test_point_cloud_from_the_surface_area_sampler(tmp_path, image, capsys):
    from plyfile import PlyData

    out = tmp_path / "p"
    argv = ["predict", str(image), "--ply", "--points", "5000", "--keep-outliers", "--out", str(out), "--quiet",
            "--input-size", "32x48"]
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
    assert "median depth" not in err


@pytest.mark.parametrize("value,hint", [(3000.0, "median depth of 3000 m; if it holds millimetres, divide by 1000"),
                                        (0.003, "median depth of 0.003 m; depth files are read as metres")])
def test_depth_in_the_wrong_unit_gets_a_note(tmp_path, image, capsys, value, hint):
    """Millimetres in a .npy (read as metres) ran without a word, into depths of km and a saturated PNG."""
    sparse = np.zeros((40, 56), np.float32)
    sparse[::5, ::7] = value
    np.save(tmp_path / "sparse.npy", sparse)
    code, _, err = run(["predict", str(image), "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "sparse.npy"),
                        "--out", str(tmp_path / "s"), "--quiet", "--input-size", "32x48"], capsys)
    assert code == 0 and f"note: sparse depth {tmp_path / 'sparse.npy'} has a {hint}" in err, err
    saturated = np.load(tmp_path / "s" / "scene_depth.npy") > 65.535
    assert saturated.any() or value < 1   # (millimetres as metres: km)
    assert (f"{saturated.mean():.1%} of the depth is beyond 65.535 m, where the 16-bit PNG (millimetres) saturates"
            in err) == saturated.any()


def bad_cases(tmp_path, image):
    np.save(tmp_path / "nan.npy", np.full((40, 56), np.nan, np.float32))
    np.save(tmp_path / "neg.npy", -np.ones((40, 56), np.float32))
    np.save(tmp_path / "small.npy", np.ones((10, 10), np.float32))
    one = np.zeros((40, 56), np.float32)
    one[3, 4] = 2.0
    np.save(tmp_path / "one.npy", one)
    (tmp_path / "text.png").write_text("hello")
    import torch

    torch.save({"state_dict": {"pipeline.depth_implicit_head.x": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    img = str(image)
    return [
        (["predict", str(tmp_path / "missing.png")], "image not found"),
        (["predict", str(tmp_path / "text.png")], "cannot read image"),
        (["gs", str(tmp_path)], "is a folder, not an image file"),     # (predict takes folders of images)
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "small.npy")], "is 10x10; expected"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "nan.npy")], "NaN"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "neg.npy")], "negative"),
        (["predict", img, "--checkpoint", "sensor-tiny"], "needs --sparse-depth"),
        (["predict", img, "--sparse-depth", str(tmp_path / "small.npy")], "needs an InfiniDepth_DepthSensor"),
        (["predict", img, "--fx", "0", "--ply"], "focal length fx must be positive"),
        (["predict", img, "--input-size", "44x56"], "multiples of 8"),       # the demo model's patch
        (["predict", img, "--output-size", "12by5"], "HxW"),
        (["predict", img, "--scale", "-1"], "--scale must be positive"),
        (["predict", img, "--checkpoint", str(tmp_path / "none.ckpt")], "no checkpoint file"),
        (["predict", img, "--checkpoint", str(tmp_path / "bad.ckpt")], "basic_encoder"),
        (["predict", img, "--reference-depth", str(tmp_path / "small.npy")], "reference depth"),
        (["predict", img, "--points", "100"], "with --ply"),
        (["predict", img, "--fy", "300", "--cx", "10"], "--fy, --cx describe the camera of the point cloud: give them with --ply"),
        (["predict", img, "--max-prompt-points", "50"], "give it with --sparse-depth"),
        (["predict", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "small.npy"),
          "--max-prompt-points", str(2**16 + 1)], "--max-prompt-points must be in [1, 65536]"),
        (["predict", img, "--ply", "--points", "0"], "--points must be"),
        (["predict", img, "--ply", "--points", str(2**30)], "GB of memory"),
        (["predict", img, "--ply", "--points", "100", "--checkpoint", "grid-tiny"], "grid baseline lacks"),
        (["predict", img, "--scale", "inf"], "--scale must be positive and finite"),
        (["predict", img, "--output-size", "99999999999999999999x1"], "sides of at most"),
        (["predict", img, "--output-size", "8x8", "--region", "0,0,9,9"], "--region"),
        (["predict", img, "--region", ""], "--region is empty"),
        # a negative value reads like an option to argparse ("expected one argument"): the range is named instead
        (["predict", img, "--output-size", "8x8", "--region", "-1,0,4,4"], "must satisfy 0 <= y0 < y1 <= 8"),
        (["predict", img, "--fx", "400"], "--fx describes the camera of the point cloud: give it with --ply"),
        (["predict", img, "--seed=-1"], "--seed must be in"),
        (["predict", img, "--reference-depth", str(tmp_path / "one.npy")], "fewer than 2 valid samples"),
        (["gs", img, "--checkpoint", "grid-tiny"], "this checkpoint is GridBaseline"),
        (["gs", img, "--checkpoint", "sensor-tiny"], "needs --sparse-depth"),
        (["gs", img, "--sparse-depth", str(tmp_path / "neg.npy")], "needs an InfiniDepth_DepthSensor"),
        (["gs", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "nan.npy")], "NaN"),
        (["gs", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "small.npy")], "is 10x10; expected"),
        (["gs", img, "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "one.npy"), "--reference-depth",
          str(tmp_path / "one.npy")], "metric already, from --sparse-depth"),
        (["gs", img, "--move", "inf"], "--move in"),
        (["gs", img, "--video", "orbit", "--frames", "100000000"], "--frames must be at most 108,000"),
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


def test_several_images_and_folders_with_one_model_load(tmp_path, image, capsys):
    """Files and folders mix; every image gets the outputs it gets alone; per-image depth inputs come
    from a folder by name; whatever is wrong is reported before anything is written."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, shape in (("a.png", (24, 40, 3)), ("b.jpg", (40, 32, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image, not picked up")
    alone = tmp_path / "alone"
    for path in (image, folder / "a.png", folder / "b.jpg"):
        assert run(["predict", str(path), "--out", str(alone), "--quiet"], capsys)[0] == 0
    out = tmp_path / "together"
    code, stdout, err = run(["predict", str(image), str(folder), "--out", str(out)], capsys)
    assert code == 0, err
    for stem in ("scene", "a", "b"):
        np.testing.assert_array_equal(np.load(out / f"{stem}_depth.npy"), np.load(alone / f"{stem}_depth.npy"))
        assert f"wrote {out / f'{stem}_depth.png'}" in stdout
    assert np.load(out / "b_depth.npy").shape == (40, 32)

    # reference depth per image, found in a folder by the image's name
    refs = tmp_path / "refs"
    refs.mkdir()
    for stem in ("a", "b"):
        rel = np.load(alone / f"{stem}_depth.npy")
        np.save(refs / f"{stem}.npy", np.exp(1.3 * np.log(rel) - 0.2).astype(np.float32))
    aligned = tmp_path / "aligned"
    assert run(["predict", str(folder), "--reference-depth", str(refs), "--out", str(aligned), "--quiet"], capsys)[0] == 0
    for stem in ("a", "b"):
        np.testing.assert_allclose(np.load(aligned / f"{stem}_depth.npy"), np.load(refs / f"{stem}.npy"), rtol=1e-3)

    bad = tmp_path / "bad"
    (refs / "b.npy").unlink()
    cases = [
        ([str(folder), "--reference-depth", str(refs)], "has no file for image"),
        ([str(folder), "--reference-depth", str(refs / "a.npy")], "one file for several images"),
        ([str(image), str(folder / "a.png"), str(tmp_path / "missing.png")], "image not found"),
        ([str(tmp_path / "refs")], "no images"),
        ([str(image), str(folder / "notes.txt")], "cannot read image"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(other / "a.bmp")
    cases.append(([str(folder), str(other)], "would write the same files"))
    for argv, message in cases:
        code, _, err = run(["predict", *argv, "--out", str(bad), "--quiet"], capsys)
        assert code == 2 and message in err, (argv, err)
        assert not bad.exists(), argv


def test_every_command_refuses_a_device_it_cannot_use(tmp_path, image, capsys):
    import torch

    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    expected = "numbered" if torch.cuda.is_available() else "no CUDA GPU"
    out = tmp_path / "never"
    commands = [["predict", str(image), "--out", str(out)], ["gs", str(image), "--out", str(out)],
                ["bench", "--preset", "tiny", "--sizes", "32x48", "--json", str(out / "b.json")],
                ["eval", "--dataset", "procedural", "--root", str(tmp_path), "--json", str(out / "e.json")],
                ["data", "render", "--scenes", "1", "--size", "32x24", "--out", str(out)], ["demo", "--out", str(out)]]
    for argv in commands:
        for device, match in (("foo", "unknown device 'foo'"), ("mps", "runs on cpu or cuda"), (missing, expected),
                              ("cpu:5", "no device index")):
            code, _, err = run(argv + ["--device", device], capsys)
            assert code == 2 and err.startswith("infinidepth: error: --device") and match in err, (argv, device, err)
            assert not out.exists(), argv


def test_the_default_model_ignores_a_folder_named_demo(tmp_path, image, capsys, monkeypatch):
    """A second `infinidepth demo --out demo` in the same folder used to load ./demo as the model."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    code, _, err = run(["predict", str(image), "--out", "o", "--quiet"], capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "scene_depth.npy").exists()


def test_a_model_answering_nan_writes_nothing_and_keeps_the_old_outputs(tmp_path, image, capsys):
    import torch

    from infinidepth import save_model
    from infinidepth.models import from_preset

    model = from_preset("tiny")
    with torch.no_grad():
        model.decoder.mlp[0].weight.mul_(1e38)  # finite weights, overflowing activations
    save_model(model, tmp_path / "overflow.safetensors")
    out = tmp_path / "o"
    assert run(["predict", str(image), "--out", str(out), "--quiet", "--ply"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(["predict", str(image), "--out", str(out), "--ply", "--checkpoint",
                        str(tmp_path / "overflow.safetensors")], capsys)
    assert code == 2 and "NaN or infinite depths" in err and "nothing was written" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_outputs_never_replace_inputs(tmp_path, image, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.open(image).save(folder / "a.png")
    Image.open(image).save(folder / "a_depth.png")  # an input image that a.png's outputs would replace
    code, _, err = run(["predict", str(folder / "a.png"), str(folder / "a_depth.png"), "--out", str(folder)], capsys)
    assert code == 2 and "also an input of this run" in err, err
    ref = folder / "x_depth.npy"
    np.save(ref, np.ones((40, 56), np.float32))
    Image.open(image).save(folder / "x.png")
    code, _, err = run(["predict", str(folder / "x.png"), "--reference-depth", str(ref), "--out", str(folder)], capsys)
    assert code == 2 and "also an input" in err
    assert np.load(ref).sum() == 40 * 56
    # a folder's earlier outputs are not taken as new images
    (folder / "a_depth.png").unlink()
    out = tmp_path / "o"
    assert run(["predict", str(folder), "--out", str(folder), "--quiet"], capsys)[0] == 0
    code, _, err = run(["predict", str(folder), "--out", str(out), "--quiet"], capsys)
    assert code == 0 and "skipping 4 file(s)" in err, err
    assert sorted(p.name for p in out.glob("*_depth.npy")) == ["a_depth.npy", "x_depth.npy"]


def test_json_reports_are_checked_before_any_work(tmp_path, image, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("")
    for target, match in ((tmp_path / "folder", "is a folder"), (tmp_path / "afile" / "r.json", "is a file")):
        for argv in (["bench", "--preset", "tiny", "--sizes", "64x64"],
                     ["eval", "--dataset", "procedural", "--root", str(tmp_path)]):
            code, stdout, err = run(argv + ["--json", str(target)], capsys)
            assert code == 2 and match in err and stdout == "", (argv, err)
    code, _, err = run(["bench", "--preset", "tiny", "--sizes", "100000x100000"], capsys)
    assert code == 2 and "more than half" in err
    code, stdout, err = run(["bench", "--preset", "tiny", "--sizes", "1k,4k,2160X3840"], capsys)
    assert code == 2 and stdout == "" and "--sizes: '2160x3840' is 2160x3840, given already as '4k'" in err, err


def test_atomic_paths_replace_a_set_together_or_not_at_all(tmp_path):
    from infinidepth.io import atomic_paths

    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for f in files:
        f.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_paths(files) as tmps:
            tmps[0].write_text("new")
            assert files[0].read_text() == "old"                                  # not renamed as it is written
            raise RuntimeError("stopped between the files")
    assert [f.read_text() for f in files] == ["old", "old"] and len(list(tmp_path.iterdir())) == 2
    with atomic_paths(files) as tmps:
        for t in tmps:
            t.write_text("new")
    assert [f.read_text() for f in files] == ["new", "new"] and len(list(tmp_path.iterdir())) == 2


def test_a_run_stopped_between_files_leaves_the_previous_set_whole(tmp_path, image, capsys, monkeypatch):
    from infinidepth import cli

    out = tmp_path / "o"
    assert run(["predict", str(image), "--out", str(out), "--quiet", "--ply"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def stopped(*args):  # the last file of the set fails: Ctrl-C, a full disk
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "write_ply", stopped)
    assert run(["predict", str(image), "--out", str(out), "--ply", "--scale", "2"], capsys)[0] == 130
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_files_left_from_an_earlier_run_are_kept_and_named(tmp_path, image, capsys):
    out = tmp_path / "o"
    assert run(["predict", str(image), "--out", str(out), "--quiet", "--ply"], capsys)[0] == 0
    old_ply = (out / "scene.ply").read_bytes()
    code, _, err = run(["predict", str(image), "--out", str(out), "--quiet", "--scale", "2"], capsys)
    assert code == 0 and (out / "scene.ply").read_bytes() == old_ply  # the user's file is not lost
    assert f"{out / 'scene.ply'} is left from an earlier run" in err, err
    assert "scene_depth" not in err  # the set this run wrote is not flagged


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, image, capsys, monkeypatch):
    from infinidepth import cli

    monkeypatch.setattr(cli, "open_model", lambda *a: pytest.fail("the model was loaded"))
    # /proc takes no new files, even from root (for whom os.access says yes everywhere)
    code, _, err = run(["predict", str(image), "--out", "/proc/infinidepth-never"], capsys)
    assert code == 2 and "--out /proc/infinidepth-never: cannot write in /proc" in err, err
    monkeypatch.undo()
    out = tmp_path / "o"
    out.mkdir()
    assert run(["predict", str(image), "--out", str(out), "--quiet"], capsys)[0] == 0
    assert not [p for p in out.iterdir() if "probe" in p.name]      # the write test leaves nothing


def test_a_folder_named_like_an_output_is_refused_before_any_work(tmp_path, image, capsys, monkeypatch):
    from infinidepth import cli

    out = tmp_path / "o"
    assert run(["predict", str(image), "--out", str(out), "--quiet", "--ply"], capsys)[0] == 0
    (out / "scene_depth.png").unlink()
    (out / "scene_depth.png").mkdir()   # the rename onto it would fail after the files before it were replaced
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr(cli, "open_model", lambda *a: pytest.fail("the model was loaded"))
    code, _, err = run(["predict", str(image), "--out", str(out), "--ply", "--scale", "2"], capsys)
    assert code == 2 and f"{out / 'scene_depth.png'} is a folder" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "scene_depth.png"])   # no temporary left
    (out / "scene_novel_view.png").mkdir()
    code, _, err = run(["gs", str(image), "--out", str(out), "--points", "100"], capsys)
    assert code == 2 and f"{out / 'scene_novel_view.png'} is a folder" in err, err
    assert not (out / "scene_gaussians.ply").exists()


def test_the_per_pixel_cloud_is_the_pinhole_back_projection_of_the_depth(tmp_path, image, capsys):
    """Each output pixel (i, j) of an h x w map of a W0 x H0 image sits at u = (j + 0.5) W0 / w, v = (i + 0.5) H0 / h
    in the image's pixels; its point is z ((u - cx) / fx, (v - cy) / fy, 1). Whole and for a region."""
    from plyfile import PlyData

    H0, W0 = np.asarray(Image.open(image)).shape[:2]
    fx, fy, cx, cy = 37.0, 41.0, 30.5, 17.25
    for extra, (y0, x0, y1, x1) in (([], (0, 0, 2 * H0, 2 * W0)), (["--region", "3,5,61,100"], (3, 5, 61, 100))):
        out = tmp_path / str(y0)
        argv = ["predict", str(image), "--out", str(out), "--quiet", "--ply", "--keep-outliers", "--scale", "2",
                "--fx", str(fx), "--fy", str(fy), "--cx", str(cx), "--cy", str(cy), *extra]
        assert run(argv, capsys)[0] == 0
        z = np.load(out / "scene_depth.npy").astype(np.float64)
        assert z.shape == (y1 - y0, x1 - x0)
        u = (np.arange(x0, x1) + 0.5) * W0 / (2 * W0)
        v = (np.arange(y0, y1) + 0.5) * H0 / (2 * H0)
        want = np.stack([z * ((u[None, :] - cx) / fx), z * ((v[:, None] - cy) / fy), z], -1).reshape(-1, 3)
        vert = PlyData.read(str(out / "scene.ply"))["vertex"]
        got = np.stack([vert["x"], vert["y"], vert["z"]], -1).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


def test_a_region_point_cloud_builds_only_the_region(tmp_path, image, capsys, monkeypatch):
    from plyfile import PlyData

    from infinidepth import cli

    full, part = tmp_path / "full", tmp_path / "part"
    assert run(["predict", str(image), "--out", str(full), "--quiet", "--ply", "--keep-outliers", "--scale", "2"], capsys)[0] == 0
    argv = ["predict", str(image), "--out", str(part), "--quiet", "--ply", "--keep-outliers", "--scale", "2", "--region",
            "10,20,50,90"]
    assert run(argv, capsys)[0] == 0
    whole = PlyData.read(str(full / "scene.ply"))["vertex"].data.reshape(80, 112)[10:50, 20:90].ravel()
    crop = PlyData.read(str(part / "scene.ply"))["vertex"].data
    assert len(crop) == 40 * 70 and (crop == whole).all()     # the crop of the full cloud, colours included
    # an output grid far larger than memory (here: a machine with 1 MB): the region's cloud is still made,
    # nothing the size of the full grid is built (it was: the coordinates and the resized picture)
    monkeypatch.setattr(cli, "available_memory", lambda: 2**20)
    monkeypatch.setattr(cli, "grid_coords", lambda *a, **k: pytest.fail("the full grid was built"), raising=False)
    monkeypatch.setattr(cli, "resize_rgb", lambda rgb, size: pytest.fail("the picture was resized whole")
                        if tuple(size) == (8000, 11200) else rgb)
    argv = ["predict", str(image), "--out", str(part), "--quiet", "--ply", "--keep-outliers", "--output-size", "8000x11200",
            "--region", "4000,5000,4010,5020"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    v = PlyData.read(str(part / "scene.ply"))["vertex"].data
    assert len(v) == 200 and np.isfinite(np.stack([v["x"], v["y"], v["z"]])).all()
    y, x = np.mgrid[4000:4010, 5000:5020]    # pixel centres of the original 40x56 image, bilinear colours
    rgb = np.asarray(Image.open(image)).astype(np.float64)
    py, px = np.clip((y + 0.5) / 200 - 0.5, 0, 39), np.clip((x + 0.5) / 200 - 0.5, 0, 55)
    i, j = np.floor(py).astype(int), np.floor(px).astype(int)
    i1, j1, fy, fx = np.minimum(i + 1, 39), np.minimum(j + 1, 55), (py - i)[..., None], (px - j)[..., None]
    want = (rgb[i, j] * (1 - fy) * (1 - fx) + rgb[i1, j] * fy * (1 - fx) + rgb[i, j1] * (1 - fy) * fx
            + rgb[i1, j1] * fy * fx).reshape(-1, 3)
    got = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float64)
    assert np.abs(got - want).max() <= 1.0


def test_a_constant_reference_depth_is_refused_not_fitted(tmp_path, image, capsys):
    # every valid sample at one depth leaves the scale undetermined: the fit's was rounding noise, so the
    # run either wrote that constant as the depth map or blamed the prediction's ordering, by its sign
    ref = np.zeros((40, 56), np.float32)
    ref[5:30, 3:50] = 2.0
    np.save(tmp_path / "flat.npy", ref)
    for seed in range(4):
        out = tmp_path / f"o{seed}"
        code, _, err = run(["predict", str(image), "--out", str(out), "--seed", str(seed),
                            "--reference-depth", str(tmp_path / "flat.npy")], capsys)
        assert code == 2 and "is 2 at every valid sample" in err and not out.exists(), err

"""The command line on awkward inputs: depth maps one pixel tall, cameras out of the sampler's range,
sparse depth that is not in metres, --region with --points, and ``python -m infinidepth``."""

import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from infinidepth.cli import main
from infinidepth.io import read_depth
from test_cli import run


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "pic.png"
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def assert_refused(argv, capsys, *words):
    """Exit 2, the first line infinidepth's error naming ``words``; the --out folder (last argument) not made."""
    code, _, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("infinidepth: error:"), (argv, err)
    for w in words:
        assert w in lines[0], (argv, w, err)


@pytest.mark.parametrize("shape, want", [((1, 7), (1, 7)), ((7, 1), (7, 1)), ((1, 1), (1, 1)), ((1, 1, 7), (1, 7)),
                                         ((5, 7, 1), (5, 7)), ((1, 5, 7), (5, 7)), ((1, 1, 5, 7), (5, 7))])
def test_a_depth_map_one_pixel_tall_or_wide_keeps_its_shape(tmp_path, shape, want):
    # np.squeeze made a 1xW map 1-D and a 1x1 map 0-D, both then refused as "not a 2-D map"
    values = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    np.save(tmp_path / "d.npy", values)
    got = read_depth(tmp_path / "d.npy")
    assert got.shape == want
    np.testing.assert_array_equal(got, values.reshape(want))


def test_a_one_row_exr_depth_as_data_render_writes_it(tmp_path):
    import OpenEXR

    depth = np.linspace(1, 2, 9, dtype=np.float32)[None]
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {"Z": depth}).write(str(tmp_path / "row.exr"))
    np.testing.assert_array_equal(read_depth(tmp_path / "row.exr"), depth)


def test_a_one_row_image_takes_a_reference_depth_of_its_size(tmp_path, capsys):
    # its own prediction as the reference: the fit is the identity (a = 1, b = 0), so the aligned map is the first
    img = tmp_path / "row.png"
    Image.fromarray(np.tile(np.arange(0, 250, 8, dtype=np.uint8)[None, :, None], (1, 1, 3))).save(img)
    assert run(["predict", str(img), "--out", str(tmp_path / "a"), "--quiet"], capsys)[0] == 0
    first = np.load(tmp_path / "a" / "row_depth.npy")
    assert first.shape == (1, 32)
    code, _, err = run(["predict", str(img), "--out", str(tmp_path / "b"), "--quiet", "--reference-depth",
                        str(tmp_path / "a" / "row_depth.npy")], capsys)
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "b" / "row_depth.npy"), first, rtol=1e-4)


def test_a_camera_the_point_cloud_cannot_use_is_one_line_and_keeps_earlier_outputs(tmp_path, image, capsys):
    out = tmp_path / "out"
    assert run(["predict", str(image), "--out", str(out), "--quiet", "--ply", "--keep-outliers"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"pic_depth.npy", "pic_depth.png", "pic_depth_color.png", "pic.ply"}
    for flags, words in ((["--fx", "1e-30"], ("pic.png", "camera", "fx 1e-30", "[1e-3, 1e9]")),
                         (["--fx", "1e300"], ("camera", "infinite")),        # finite in float64, not in float32
                         (["--cx", "1e39"], ("camera", "cx 1e+39", "infinite")),
                         # fine on the 24x32 image; the sampler's 96x128 network input has 4x the focal length
                         (["--fx", "5e8", "--points", "50"], ("camera", "rescaled to the 96x128 network input"))):
        assert_refused(["predict", str(image), "--out", str(out), "--quiet", "--ply", *flags], capsys, *words)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, flags


def test_gs_names_the_camera_not_the_checkpoint_when_fx_is_out_of_range(tmp_path, image, capsys):
    never = tmp_path / "never"
    base = ["gs", str(image), "--points", "40", "--quiet"]
    # 1e9 is the sampler's limit, but on the network input (4x the image here) it is 4e9
    assert_refused(base + ["--fx", "1e9", "--out", str(never)], capsys, "--fx", "camera", "network input")
    # the rendered views (--render-size 1x1) rescale 0.002 to 6e-5
    assert_refused(base + ["--fx", "0.002", "--render-size", "1x1", "--out", str(never)], capsys, "camera", "rendered view")
    err = capsys.readouterr().err
    assert "checkpoint sound" not in err
    assert not never.exists()


@pytest.mark.parametrize("command", ["predict", "gs"])
def test_sparse_depth_far_below_a_metre_is_refused_in_one_line(tmp_path, image, capsys, command):
    # a reciprocal of 1e-38 overflows float32: the model refused it with a traceback (predict) or blamed the checkpoint (gs)
    sparse = np.zeros((24, 32), np.float32)
    sparse[::3, ::4] = 1e-38
    np.save(tmp_path / "tiny.npy", sparse)
    argv = [command, str(image), "--checkpoint", "sensor-tiny", "--sparse-depth", str(tmp_path / "tiny.npy"), "--quiet",
            "--out", str(tmp_path / "never")] + (["--points", "40"] if command == "gs" else [])
    assert_refused(argv, capsys, "tiny.npy", "below 1e-30")
    assert not (tmp_path / "never").exists()


def test_points_with_a_region_is_refused_before_the_model_loads(tmp_path, image, capsys, monkeypatch):
    # the sampler spreads its points over the whole image: the cloud did not match the region's depth files
    from infinidepth import cli

    monkeypatch.setattr(cli, "open_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert_refused(["predict", str(image), "--ply", "--points", "50", "--region", "0,0,4,4", "--out",
                    str(tmp_path / "never")], capsys, "--points", "--region")
    assert not (tmp_path / "never").exists()


def test_python_dash_m_infinidepth_runs_the_command(tmp_path, image, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["infinidepth", "predict", str(image), "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("infinidepth", run_name="__main__")
    assert stop.value.code == 0
    assert np.load(out / "pic_depth.npy").shape == (24, 32)


def test_a_flag_a_command_lacks_is_named_not_read_as_an_abbreviation(tmp_path, capsys):
    """eval has no --out: argparse used to expand it to --output-resolution and refuse "X" as its choice."""
    with pytest.raises(SystemExit) as e:
        main(["eval", "--dataset", "procedural", "--root", str(tmp_path), "--out", "X"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --out X" in err and "--output-resolution" not in err
    with pytest.raises(SystemExit):   # and in a subcommand of a subcommand
        main(["data", "render", "--scenes", "1", "--size", "8x8", "--out", str(tmp_path / "d"), "--view", "2"])
    assert "unrecognized arguments: --view 2" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["predict", "IMG"], ["demo"], ["gs", "IMG"], ["train", "--config", "tiny"],
                                     ["train-gs"], ["data", "render", "--scenes", "1", "--size", "8x8"]])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(tmp_path, image, capsys, monkeypatch, command):
    # Path("") is Path("."): `--out "$DIR"` with DIR unset wrote into the current folder without a word
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        main([str(image) if a == "IMG" else a for a in command] + ["--out", " "])
    assert e.value.code == 2 and "argument --out: empty folder name" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == before


def test_a_folder_of_gifs_is_read(tmp_path, capsys):
    # a GIF named on the command line worked; in a folder it was skipped ("no images in folder")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (12, 16), dtype=np.uint8)).save(folder / "anim.gif")
    assert run(["predict", str(folder), "--out", str(tmp_path / "o"), "--quiet"], capsys)[0] == 0
    assert np.load(tmp_path / "o" / "anim_depth.npy").shape == (12, 16)

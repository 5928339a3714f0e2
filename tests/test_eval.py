"""Evaluation: metrics against hand-computed values, alignment under outliers, high-frequency masks,
benchmark readers on files written in their formats, and `infinidepth eval` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from infinidepth.cli import main
from infinidepth.data.procedural import render_set
from infinidepth.eval.metrics import SPACES
from infinidepth.eval import (
    DIODE,
    ETH3D,
    KITTI,
    NYUv2,
    Procedural,
    ScanNet,
    Synth4K,
    align,
    depth_metrics,
    evaluate,
    format_table,
    high_frequency_map,
    high_frequency_mask,
)
from infinidepth.models import from_preset


# -- metrics ------------------------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    gt = np.array([[1.0, 2.0], [4.0, 10.0]])
    pred = np.array([[1.1, 1.0], [4.0, 99.0]])
    mask = np.array([[True, True], [True, False]])        # the 99 is masked out
    m = depth_metrics(pred, gt, mask)
    # |d|/g: 0.1, 0.5, 0;  d^2/g: 0.01, 0.5, 0;  d^2: 0.01, 1, 0
    assert m["abs_rel"] == pytest.approx((0.1 + 0.5 + 0) / 3)
    assert m["sq_rel"] == pytest.approx((0.01 + 0.5) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1.01 / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.5) ** 2) / 3))
    # ratios: 1.1, 2, 1
    assert m["delta_1.25"] == pytest.approx(2 / 3) and m["delta_1.25^0.5"] == pytest.approx(2 / 3)
    assert m["delta_1.25^2"] == pytest.approx(2 / 3)
    assert m["delta_1.01"] == pytest.approx(1 / 3) and m["delta_1.04"] == pytest.approx(1 / 3)
    assert m["pixels"] == 3


def test_metrics_reject_bad_input():
    gt = np.ones((2, 2))
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones((2, 3)), gt)
    with pytest.raises(ValueError, match="NaN"):
        depth_metrics(np.array([[np.nan, 1], [1, 1]]), gt)
    with pytest.raises(ValueError, match="non-positive"):
        depth_metrics(np.array([[0.0, 1], [1, 1]]), gt)
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(gt, gt * 0)


@pytest.mark.parametrize("space", ["depth", "disparity", "log_depth"])
def test_ransac_alignment_recovers_scale_and_shift_under_outliers(space):
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, (60, 80))
    fwd, inv = SPACES[space]
    a, b = 0.5, 0.05
    pred = inv((fwd(gt) - b) / a)                            # so that a * f(pred) + b = f(gt)
    corrupt = rng.random(gt.shape) < 0.25
    pred = np.where(corrupt, pred * rng.uniform(1.5, 4, gt.shape), pred)
    aligned, fa, fb = align(pred, gt, space=space, method="ransac", seed=0)
    assert fa == pytest.approx(a, rel=1e-6) and fb == pytest.approx(b, rel=1e-5, abs=1e-7)
    np.testing.assert_allclose(aligned[~corrupt], gt[~corrupt], rtol=1e-5)
    _, la, _ = align(pred, gt, space=space, method="lsq")
    assert abs(la - a) > 1e-3                               # least squares is pulled by the outliers


def test_alignment_clips_to_the_ground_truth_range():
    gt = np.linspace(1, 5, 100).reshape(10, 10)
    pred = gt.copy()
    pred[0, 0] = 1e-4                                       # an extreme prediction
    aligned, _, _ = align(pred, gt, space="disparity", method="ransac")
    assert aligned.min() >= 1 and aligned.max() <= 5 and np.isfinite(aligned).all()
    with pytest.raises(ValueError, match="space"):
        align(pred, gt, space="log")


# -- high-frequency masks --------------------------------------------------------------------------------------
def step_and_wire(H=64, W=96):
    depth = np.full((H, W), 10.0)
    depth[:, 60:] = 4.0                                     # a depth edge at column 60
    depth[:, 20] = 3.0                                      # a one-pixel wire at column 20
    return depth


def test_hf_mask_picks_edges_and_thin_structures():
    depth = step_and_wire()
    m = high_frequency_map(depth)
    flat = np.ones(depth.shape, bool)
    flat[:, 15:26] = False
    flat[:, 55:66] = False
    assert m[1:-1, 20].min() == pytest.approx(1.0) and m[flat].max() == 0   # (border rows: no 4 neighbours)
    mask = high_frequency_mask(depth, n=300, seed=1)
    assert mask.sum() == 300
    cols = np.nonzero(mask)[1]
    assert ((np.abs(cols - 20) <= 3) | (np.abs(cols - 59.5) <= 4)).all()
    assert np.array_equal(mask, high_frequency_mask(depth, n=300, seed=1))
    assert not np.array_equal(mask, high_frequency_mask(depth, n=300, seed=2))


def test_hf_mask_finds_detail_on_under_two_percent_of_the_frame():
    depth = np.full((200, 200), 8.0)
    depth[100, 120] = 3.0                                   # one pixel of a distant pole
    mask = high_frequency_mask(depth, n=20)
    assert mask.sum() == 20 and mask[100, 120]
    rows, cols = np.nonzero(mask)
    assert (np.abs(rows - 100) <= 5).all() and (np.abs(cols - 120) <= 5).all()


def test_hf_mask_ignores_holes_and_sharpening_follows_tau():
    depth = np.full((40, 40), 5.0)
    depth[10:20, 10:20] = np.nan                            # a hole is not an edge
    m = high_frequency_map(depth)
    assert m.max() == 0 and high_frequency_mask(depth, n=10).sum() == 0
    ramp = step_and_wire()
    ramp[:, 60:] += np.linspace(0, 0.5, 36)[None] ** 2      # mild curvature: values strictly between 0 and 1
    soft, sharp = high_frequency_map(ramp, tau=2.0), high_frequency_map(ramp, tau=0.5)
    mid = (soft > 0) & (soft < 1)
    assert mid.any() and (sharp[mid] < soft[mid]).all()
    with pytest.raises(ValueError, match="tau"):
        high_frequency_map(ramp, tau=0)
    with pytest.raises(ValueError, match="no valid"):
        high_frequency_map(np.zeros((4, 4)))


# -- readers ------------------------------------------------------------------------------------------------------
def rgb(path, H, W):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def png16(path, values):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, np.uint16)).save(path)


def test_kitti_eigen_layout_scale_and_garg_crop(tmp_path):
    drive = "2011_09_26_drive_0002_sync"
    rgb(tmp_path / "2011_09_26" / drive / "image_02" / "data" / "0000000069.png", 30, 100)
    gt = np.zeros((30, 100), np.uint16)
    gt[20, 50] = 2560
    gt[25, 10] = 256 * 90                                   # beyond 80 m
    png16(tmp_path / drive / "proj_depth" / "groundtruth" / "image_02" / "0000000069.png", gt)
    ds = KITTI(tmp_path)
    f = ds.frame(0)
    assert f["valid"].sum() == 1 and f["depth"][20, 50] == 10.0
    region = ds.region((30, 100))
    assert region[20, 50] and not region[0, 50] and not region[20, 0] and region.sum() < 0.6 * 3000


def test_nyu_eigen_crop_and_millimetres(tmp_path):
    rgb(tmp_path / "test" / "kitchen_0004" / "rgb_0001.png", 480, 640)
    png16(tmp_path / "test" / "kitchen_0004" / "depth_0001.png", np.full((480, 640), 2500))
    ds = NYUv2(tmp_path)
    f = ds.frame(0)
    assert torch.allclose(f["depth"], torch.tensor(2.5))
    r = ds.region((480, 640))
    assert r[45, 41] and r[470, 600] and not r[44, 41] and not r[471, 600] and not r[45, 601]


def test_eth3d_raw_float32_with_inf(tmp_path):
    rgb(tmp_path / "rgb" / "office" / "images" / "dslr_images" / "DSC_0219.JPG", 6, 9)
    depth = np.full((6, 9), 3.25, "<f4")
    depth[0, 0] = np.inf
    out = tmp_path / "depth" / "office_dslr_depth" / "office" / "ground_truth_depth" / "dslr_images" / "DSC_0219.JPG"
    out.parent.mkdir(parents=True)
    depth.tofile(out)
    f = ETH3D(tmp_path).frame(0)
    assert not f["valid"][0, 0] and torch.allclose(f["depth"][1:], torch.tensor(3.25))


def test_scannet_resizes_colour_to_depth_and_reads_intrinsics(tmp_path):
    rgb(tmp_path / "scene0406_02" / "color" / "000300.jpg", 97, 130)
    png16(tmp_path / "scene0406_02" / "depth" / "000300.png", np.full((48, 64), 1500))
    (tmp_path / "scene0406_02" / "intrinsic").mkdir()
    (tmp_path / "scene0406_02" / "intrinsic" / "intrinsic_depth.txt").write_text(
        "57.7 0 31.5 0\n0 57.9 23.7 0\n0 0 1 0\n0 0 0 1\n")
    f = ScanNet(tmp_path).frame(0)
    assert f["rgb"].shape == (48, 64, 3) and torch.allclose(f["depth"], torch.tensor(1.5))
    assert f["intrinsics"][0, 0] == 57.7 and f["intrinsics"][1, 2] == 23.7


def test_diode_depth_mask_and_range(tmp_path):
    scan = tmp_path / "val" / "indoors" / "scene_00021" / "scan_00189"
    rgb(scan / "00021_00189_indoors_200_010.png", 8, 10)
    depth = np.full((8, 10, 1), 2.0, np.float32)
    depth[0, 0, 0] = 0.3                                    # below DIODE's 0.6 m
    mask = np.ones((8, 10), np.float32)
    mask[1, 1] = 0
    np.save(scan / "00021_00189_indoors_200_010_depth.npy", depth)
    np.save(scan / "00021_00189_indoors_200_010_depth_mask.npy", mask)
    f = DIODE(tmp_path).frame(0)
    assert not f["valid"][0, 0] and not f["valid"][1, 1] and f["valid"].sum() == 78


def test_synth4k_meta_file_range_and_released_hf_mask(tmp_path):
    import OpenEXR

    rgb(tmp_path / "cyberpunk" / "rgb" / "0001.png", 8, 12)
    depth = np.full((8, 12), 20.0, np.float32)
    depth[0, :3] = [1.0, 200.0, np.nan]                     # below 3 m, beyond 150 m, missing
    (tmp_path / "cyberpunk" / "depth").mkdir()
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Z": depth}) as f:
        f.write(str(tmp_path / "cyberpunk" / "depth" / "0001.exr"))
    hf = np.zeros((8, 12), np.uint8)
    hf[4, 4:8] = 255
    (tmp_path / "cyberpunk" / "highfreq_mask").mkdir()
    Image.fromarray(hf).save(tmp_path / "cyberpunk" / "highfreq_mask" / "0001_highfreq_mask.png")
    (tmp_path / "val.txt").write_text("cyberpunk/rgb/0001.png cyberpunk/depth/0001.exr\n")
    ds = Synth4K(tmp_path)
    f = ds.frame(0)
    assert f["valid"].sum() == 8 * 12 - 3
    assert ds.hf_mask_file(ds.records[0]).name == "0001_highfreq_mask.png"
    result = evaluate(from_preset("tiny"), ds, progress=False)
    assert result["summary"]["hf"]["images"] == 1
    assert result["images"][0]["hf"]["pixels"] == 4        # the released mask, not a computed one


# -- the loop and the command -----------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """A 'model' that returns a known affine distortion of the truth, to test the loop's plumbing."""

    alignment = "disparity"

    def __init__(self, truth_of):
        super().__init__()
        self.truth_of = truth_of
        self.device = torch.device("cpu")
        self.patch_size = 16

    def predict(self, image, output_size=None):
        H, W = output_size or image.shape[-2:]
        truth = torch.as_tensor(self.truth_of(H, W)).float()
        return (1 / (2.0 / truth + 0.1))[None, None]           # disparity scaled by 2 and shifted


def test_evaluate_aligns_and_scores_exactly_at_native_resolution(tmp_path):
    root = tmp_path / "set"
    render_set(root, scenes=2, size=(36, 48), progress=False)
    ds = Procedural(root)
    truths = [ds.frame(i)["depth"].numpy() for i in range(len(ds))]
    calls = iter(truths)
    model = Oracle(lambda H, W: next(calls))
    result = evaluate(model, ds, output_resolution="native", hf_points=50, progress=False)
    assert result["summary"]["full"]["abs_rel"] < 1e-4 and result["summary"]["full"]["delta_1.01"] == 1.0
    assert result["images"][0]["alignment"]["a"] == pytest.approx(0.5, rel=1e-4)
    assert "AbsRel" in format_table(result) and "HF" in format_table(result)


def test_querying_at_native_resolution_beats_upsampling_on_fine_detail(tmp_path):
    # A perfect field (the renderer itself, at any size) against the same field sampled at the network
    # input and upsampled: exact at native resolution, blurred at edges and wires when upsampled.
    from infinidepth.data import generate_scene, render

    root = tmp_path / "set"
    render_set(root, scenes=2, size=(72, 96), progress=False)
    ds = Procedural(root)

    def field():
        seeds = iter(range(len(ds)))
        return Oracle(lambda H, W, s=seeds: render(generate_scene(next(s)), (H, W)).depth.numpy())

    native = evaluate(field(), ds, output_resolution="native", input_size=(32, 48), hf_points=200, progress=False)
    upsampled = evaluate(field(), ds, output_resolution="input", input_size=(32, 48), hf_points=200, progress=False)
    assert native["summary"]["hf"]["abs_rel"] < 1e-4
    assert upsampled["summary"]["hf"]["abs_rel"] > 0.05
    assert upsampled["summary"]["hf"]["abs_rel"] > 3 * upsampled["summary"]["full"]["abs_rel"]


def test_eval_command_on_the_procedural_set(tmp_path, capsys):
    root = tmp_path / "set"
    assert main(["data", "render", "--scenes", "2", "--size", "48x32", "--out", str(root), "--quiet"]) == 0
    out = tmp_path / "scores.json"
    code = main(["eval", "--dataset", "procedural", "--root", str(root), "--checkpoint", "tiny", "--hf-points", "64",
                 "--output-resolution", "input", "--json", str(out), "--quiet"])
    assert code == 0
    scores = json.loads(out.read_text())["results"][0]
    assert scores["output_resolution"] == "input" and len(scores["images"]) == 2
    assert 0 <= scores["summary"]["full"]["delta_1.25"] <= 1 and scores["summary"]["hf"]["images"] == 2
    assert main(["eval", "--dataset", "nyu", "--root", str(root)]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["eval", "--dataset", "nyuv2", "--root", str(root)]) == 2
    assert "no frames found" in capsys.readouterr().err
    assert main(["eval", "--dataset", "procedural", "--dataset", "kitti", "--root", str(root)]) == 2
    assert "one --root per --dataset" in capsys.readouterr().err


# -- the grid-head ceiling (benchmarks/grid_ceiling.py) ------------------------------------------


def _grid_ceiling():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from grid_ceiling import grid_ceiling_depth

    return grid_ceiling_depth


def test_grid_ceiling_reproduces_what_a_grid_can_hold_and_not_a_sharp_edge():
    ceiling = _grid_ceiling()
    H, W = 32, 48
    y, x = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    valid = np.ones((H, W), bool)
    # log-depth linear in the pixel position: each cell's mean is its centre's value, and bilinear
    # upsampling of those is exact between the outermost cell centres (beyond them it is held flat)
    plane = np.exp(0.5 + 0.02 * y - 0.01 * x).astype(np.float32)
    out = ceiling(plane, valid, (8, 12))
    np.testing.assert_allclose(out[2:-2, 2:-2], plane[2:-2, 2:-2], rtol=1e-5)
    # a step inside a cell cannot be held by the grid: the ceiling blurs it
    step = np.where(x < 21, 2.0, 8.0).astype(np.float32)
    blurred = ceiling(step, valid, (8, 12))
    assert np.abs(blurred - step).max() > 1.0
    np.testing.assert_allclose(blurred[:, :12], 2.0, rtol=1e-5)


def test_grid_ceiling_continues_the_surface_under_unscored_cells():
    ceiling = _grid_ceiling()
    depth = np.full((32, 48), 5.0, np.float32)
    valid = np.ones_like(depth, bool)
    valid[:12, :] = False            # three rows of cells with no scored pixel (sky)
    depth[:12, :] = 0.0
    out = ceiling(depth, valid, (8, 12))
    np.testing.assert_allclose(out[valid], 5.0, rtol=1e-5)   # no pull from the empty cells
    with pytest.raises(ValueError, match="multiple"):
        ceiling(depth, valid, (7, 12))
    with pytest.raises(ValueError, match="no valid pixel"):
        ceiling(depth, np.zeros_like(valid), (8, 12))

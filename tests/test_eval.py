"""Evaluation: metrics against hand-computed values, alignment under outliers, high-frequency masks,
benchmark readers on files written in their formats, and `infinidepth eval` end to end."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from infinidepth.cli import main
from infinidepth.data.procedural import render_set
from infinidepth.eval.metrics import SPACES
from infinidepth.io import InputError
from infinidepth.eval import (
    DIODE,
    ETH3D,
    KITTI,
    NYUv2,
    Procedural,
    ScanNet,
    Synth4K,
    align,
    clip_depth,
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


def test_delta_thresholds_are_strict_and_two_sided():
    """Ratios max(p / g, g / p) on both sides of each threshold, two of them exactly 1.25 and 1.25^2
    (exact in binary): a ratio equal to a threshold does not count."""
    ratios = [1.005, 1.015, 1.03, 1.1, 1.2, 1.25, 1.3, 1.5625, 1.6, 2.0]
    over = [True, False, True, False, True, True, False, True, False, True]  # prediction too far, or too near
    gt = np.full(len(ratios), 2.0)
    pred = np.array([2.0 * r if o else 2.0 / r for r, o in zip(ratios, over)])
    m = depth_metrics(pred, gt)
    want = {"delta_1.01": 1, "delta_1.02": 2, "delta_1.04": 3, "delta_1.25^0.5": 4, "delta_1.25": 5, "delta_1.25^2": 7}
    assert {k: m[k] for k in want} == {k: pytest.approx(v / 10) for k, v in want.items()}
    assert m["abs_rel"] == pytest.approx(np.mean([r - 1 if o else 1 - 1 / r for r, o in zip(ratios, over)]))


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
    with pytest.raises(ValueError, match=r"mask \(2,\) and ground truth \(2, 2\) differ"):   # a row is not broadcast
        align(gt, gt, np.array([True, False]))


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



def test_ransac_searches_all_its_hypotheses():
    """7% of the samples on a line, the rest uniform noise, a tight threshold: a pair of inliers turns up
    about once in 200 trials, so only a search of all 1000 (not of the first few) finds the line, for
    every seed."""
    from infinidepth.align import fit_affine_robust

    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        x, y = rng.uniform(0, 10, 1000), rng.uniform(0, 10, 1000)
        y[:70] = 0.7 * x[:70] + 1.3
        a, b = fit_affine_robust(x, y, seed=seed, threshold=0.01)
        assert (a, b) == (pytest.approx(0.7, abs=1e-9), pytest.approx(1.3, abs=1e-8)), seed

def test_alignment_does_not_clip_to_the_ground_truth_and_clip_depth_uses_a_fixed_range():
    gt = np.linspace(1, 5, 100).reshape(10, 10)
    pred = gt.copy()
    pred[0, 0] = 1e-4                                       # an extreme prediction
    pred[0, 1] = np.nan                                     # a failed one
    aligned, _, _ = align(pred, gt, space="disparity", method="ransac")
    # the ground truth does not repair the prediction: the extreme pixel stays far below gt.min() = 1
    assert aligned[0, 0] == pytest.approx(1e-4, rel=1e-3) and np.isnan(aligned[0, 1])
    np.testing.assert_allclose(aligned.ravel()[2:], gt.ravel()[2:], rtol=1e-5)
    clipped = clip_depth(aligned, (1e-3, 10.0))            # the benchmark's range: NaN -> max, then clip
    assert clipped[0, 0] == pytest.approx(1e-3) and clipped[0, 1] == 10.0
    # an aligned disparity that is not positive lies beyond infinity: the range's maximum
    # (fit on the two valid pixels: 1/g = -1/p + 1.5, so p = 0.5 maps to disparity -0.5)
    far, a, b = align(np.array([[2.0, 1.0, 0.5]]), np.array([[1.0, 2.0, 0.0]]), space="disparity", method="lsq")
    assert (a, b) == (pytest.approx(-1.0), pytest.approx(1.5)) and far[0, 2] == np.inf
    assert clip_depth(far, (1e-3, 80.0))[0, 2] == 80.0
    with pytest.raises(ValueError, match="space"):
        align(pred, gt, space="log")
    with pytest.raises(ValueError, match="depth range"):
        clip_depth(pred, (0.0, 10.0))


class Fixed(torch.nn.Module):
    """A 'model' returning ``fn(H, W)`` (no alignment unless ``alignment`` is given)."""

    def __init__(self, fn, alignment=None):
        super().__init__()
        self.fn, self.alignment = fn, alignment
        self.device = torch.device("cpu")
        self.patch_size = 16

    def predict(self, image, output_size=None):
        H, W = output_size or image.shape[-2:]
        return torch.as_tensor(np.asarray(self.fn(H, W), np.float32))[None, None]


def nyu_set(root, depths):
    """A NYUv2-layout folder with one frame per depth map (metres; 0 = no depth)."""
    for k, d in enumerate(depths):
        rgb(root / "scene" / f"rgb_{k:04d}.png", *d.shape)
        png16(root / "scene" / f"depth_{k:04d}.png", np.round(np.asarray(d) * 1000))
    return NYUv2(root)


def test_metric_predictions_are_clipped_to_the_benchmark_range(tmp_path, caplog):
    # KITTI's protocol clips predictions to [1e-3, 80] m: a constant 200 m scores as 80 m would
    drive = "2011_09_26_drive_0002_sync"
    rgb(tmp_path / "2011_09_26" / drive / "image_02" / "data" / "0000000000.png", 40, 130)
    gt = np.random.default_rng(0).uniform(2, 60, (40, 130))
    png16(tmp_path / drive / "proj_depth" / "groundtruth" / "image_02" / "0000000000.png", np.round(gt * 256))
    ds = KITTI(tmp_path)
    assert ds.depth_range() == (1e-3, 80.0)
    f = ds.frame(0)
    g, m = f["depth"].numpy(), f["valid"].numpy() & ds.region((40, 130))
    r = evaluate(Fixed(lambda H, W: np.full((H, W), 200.0)), ds, align_method=None, progress=False)
    assert r["images"][0]["full"]["abs_rel"] == pytest.approx(np.mean(np.abs(80.0 - g[m]) / g[m]), rel=1e-6)
    assert r["depth_range"] == [1e-3, 80.0]
    # a NaN prediction without alignment is the model's failure: scored as the maximum, logged, no traceback
    nyu = nyu_set(tmp_path / "nyu", [np.full((48, 64), 2.0)])

    def half_nan(H, W):
        p = np.full((H, W), 2.0)
        p[:, : W // 2] = np.nan
        return p

    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(Fixed(half_nan), nyu, align_method=None, progress=False, hf_points=50)
    row = r["images"][0]
    assert row["nonfinite"] > 0 and "NaN or infinite" in caplog.text and "scene/rgb_0000.png" in caplog.text
    m = nyu.region((48, 64))
    left = m[:, :32].sum()
    assert row["full"]["abs_rel"] == pytest.approx(left * (10.0 - 2.0) / 2.0 / m.sum(), rel=1e-6)
    # a relative prediction with nothing to align (all NaN) is scored as 10 m everywhere, not a traceback
    r = evaluate(Fixed(lambda H, W: np.full((H, W), np.nan), alignment="disparity"), nyu, progress=False)
    assert r["images"][0]["full"]["abs_rel"] == pytest.approx((10.0 - 2.0) / 2.0) and "alignment" not in r["images"][0]


def test_aligned_outliers_are_not_repaired_by_the_ground_truth(tmp_path):
    # an exact relative prediction except a fifth of the pixels 4x too near or far: the fit is exact,
    # the outliers are scored where the model put them (clipped to NYUv2's 10 m), not at the ground truth's range
    rng = np.random.default_rng(0)
    gt = rng.uniform(2, 4, (48, 64))
    ds = nyu_set(tmp_path, [gt])
    g = ds.frame(0)["depth"].numpy()
    wrong = rng.random(g.shape) < 0.2
    factor = np.where(rng.random(g.shape) < 0.5, 4.0, 0.25)
    disp = np.where(wrong, (2.0 / g + 0.1) * factor, 2.0 / g + 0.1)
    r = evaluate(Fixed(lambda H, W: 1 / disp, alignment="disparity"), ds, progress=False, hf_points=200)
    m = ds.region(g.shape)
    expected = np.clip(1 / ((disp - 0.1) / 2.0), 1e-3, 10.0)
    assert r["images"][0]["full"]["abs_rel"] == pytest.approx(np.mean(np.abs(expected[m] - g[m]) / g[m]), rel=1e-4)
    assert r["images"][0]["full"]["abs_rel"] > 0.2          # clipped to [2, 4] (the ground truth's range) it was 0.07


def test_images_and_hf_rows_with_too_few_pixels_are_skipped_and_logged(tmp_path, caplog):
    rng = np.random.default_rng(1)
    full = rng.uniform(1, 9, (48, 64))
    two = np.zeros((48, 64))
    two[20, 30:32] = 3.0                                    # 2 pixels: a scale-and-shift fit is exact
    ds = nyu_set(tmp_path, [full, two])
    noisy = iter([full * rng.uniform(0.5, 1.5, full.shape), np.ones((48, 64))])
    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(Fixed(lambda H, W: next(noisy), alignment="disparity"), ds, progress=False, hf_points=50)
    assert r["summary"]["full"]["images"] == 1 and len(r["images"]) == 1
    assert any("rgb_0001.png: 2 scored pixels, fewer than the minimum 100" in s for s in r["skipped"])
    assert "rgb_0001.png: 2 scored pixels" in caplog.text
    # 50 high-frequency points are under the minimum: the image has no HF row, and says why
    assert r["images"][0]["hf"] is None and r["summary"]["hf"] is None
    assert any("rgb_0000.png: high-frequency row: 50 pixels" in s for s in r["skipped"])
    assert "skipped 2" in format_table(r)
    with pytest.raises(ValueError, match="min_pixels"):
        evaluate(Fixed(lambda H, W: full), ds, progress=False, min_pixels=1)



def test_summary_is_the_mean_over_images_and_an_hf_row_of_exactly_min_pixels_counts(tmp_path):
    """Three images scored 0.1, 0.2 and 0.5 (constant predictions against a flat 2 m): the summary is
    their mean, not their median. A random-depth image with exactly min_pixels high-frequency points keeps its row."""
    flat = [np.full((48, 64), 2.0)] * 3
    preds = iter([2.2, 2.4, 3.0])
    r = evaluate(Fixed(lambda H, W: np.full((H, W), next(preds))), nyu_set(tmp_path / "flat", flat), align_method=None,
                 progress=False, hf_points=100)
    assert [row["full"]["abs_rel"] for row in r["images"]] == [pytest.approx(v, rel=1e-6) for v in (0.1, 0.2, 0.5)]
    assert r["summary"]["full"]["abs_rel"] == pytest.approx(0.8 / 3, rel=1e-6) and r["summary"]["full"]["images"] == 3
    gt = np.random.default_rng(3).uniform(1, 9, (48, 64))
    r = evaluate(Fixed(lambda H, W: gt), nyu_set(tmp_path / "rough", [gt]), align_method=None, progress=False,
                 hf_points=100, min_pixels=100)
    assert r["images"][0]["hf"]["pixels"] == 100 and r["summary"]["hf"]["images"] == 1


def test_a_released_hf_mask_is_scored_only_inside_the_benchmarks_region(tmp_path):
    """A benchmark with a scoring region (here rows 2 and below) and a released mask covering rows 0-4:
    only the mask's pixels inside the region are scored, as for the full-image row."""

    class Cropped(Synth4K):
        def region(self, shape):
            m = np.zeros(shape, bool)
            m[2:] = True
            return m

    mask = synth4k_game(tmp_path / "g")
    hf = np.zeros((16, 24), np.uint8)
    hf[:5] = 255                                                           # 120 pixels, 72 of them in rows 2-4
    Image.fromarray(hf).save(mask)
    r = evaluate(Fixed(lambda H, W: np.full((H, W), 20.0)), Cropped(tmp_path / "g"), align_method=None, progress=False,
                 min_pixels=2)
    assert r["images"][0]["hf"]["pixels"] == 72 and r["images"][0]["full"]["pixels"] == 14 * 24


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



def test_one_hf_point_is_drawn_with_probability_proportional_to_the_map():
    """n = 1: a single draw picks pixel i with probability map_i / sum(map) (Gumbel-max). Over 1000 seeds
    the strongest pixels' share matches their share of the map within 4.5 standard deviations."""
    depth = np.full((16, 16), 5.0)
    depth[:, 8:] = 3.0
    depth[4, 3] = 2.0
    w = high_frequency_map(depth).astype(np.float64)
    strong = w >= 0.99
    share = w[strong].sum() / w.sum()
    assert 0.5 < share < 0.95 and (w[~strong] > 0).sum() > 20
    picks = np.zeros(w.shape)
    for seed in range(1000):
        picks += high_frequency_mask(depth, n=1, seed=seed)
    assert picks.sum() == 1000 and picks[w == 0].sum() == 0
    assert abs(picks[strong].sum() / 1000 - share) < 4.5 * math.sqrt(share * (1 - share) / 1000)

def test_hf_map_ignores_the_image_border_and_the_edges_of_holes():
    # a tilted plane has no detail: the smoothed scales' truncated windows at the border and at
    # holes used to make a band of 1-4 px (and each hole's rim) score as the strongest detail
    y, x = np.mgrid[0:120, 0:160].astype(float)
    plane = 2 + 0.05 * x + 0.03 * y
    holed = plane.copy()
    holed[40:60, 50:80] = np.nan
    holed[np.random.default_rng(0).random(plane.shape) < 0.05] = 0.0
    for depth in (plane, holed):
        assert high_frequency_map(depth).max() == 0
        assert high_frequency_mask(depth, n=10_000).sum() == 0      # no detail, no HF pixel (no HF row)
    # a ramp with a thin pole: the selection concentrates at the pole, not at the border
    ramp = 5 + 0.04 * x
    ramp[20:100, 80:82] = 2.0
    mask = high_frequency_mask(ramp, n=500)
    rows, cols = np.nonzero(mask)
    assert mask.sum() == 500 and np.mean(np.abs(cols - 80.5) <= 3.5) > 0.95
    assert not mask[:4].any() and not mask[-4:].any() and not mask[:, :4].any() and not mask[:, -4:].any()


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


def synth4k_game(root, H=16, W=24, hf_pixels=120, mode="L"):
    """One Synth4K game folder: a frame, its meta file, and a released mask of ``hf_pixels`` pixels."""
    import OpenEXR

    rgb(root / "rgb" / "0001.png", H, W)
    depth = np.full((H, W), 20.0, np.float32)
    depth[0, :3] = [1.0, 200.0, np.nan]                     # below 3 m, beyond 150 m, missing
    (root / "depth").mkdir()
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, {"Z": depth}) as f:
        f.write(str(root / "depth" / "0001.exr"))
    hf = np.zeros(H * W, np.uint16 if mode == "I;16" else np.uint8)
    hf[W:W + hf_pixels] = 1 if mode == "I;16" else 255     # a 16-bit mask holding 0/1, or 0/255
    (root / "highfreq_mask").mkdir()
    Image.fromarray(hf.reshape(H, W)).save(root / "highfreq_mask" / "0001_highfreq_mask.png")
    (root / "val.txt").write_text("rgb/0001.png depth/0001.exr\n")
    return root / "highfreq_mask" / "0001_highfreq_mask.png"


def test_synth4k_meta_file_range_and_released_hf_mask(tmp_path):
    synth4k_game(tmp_path / "cyberpunk")
    ds = Synth4K(tmp_path / "cyberpunk")
    f = ds.frame(0)
    assert f["valid"].sum() == 16 * 24 - 3 and ds.depth_range() == (3.0, 150.0)
    assert ds.hf_mask_file(ds.records[0]).name == "0001_highfreq_mask.png"
    result = evaluate(from_preset("tiny"), ds, progress=False)
    assert result["summary"]["hf"]["images"] == 1
    assert result["images"][0]["hf"]["pixels"] == 120      # the released mask, not a computed one


def test_synth4k_16_bit_mask_and_truncated_mask(tmp_path, caplog):
    synth4k_game(tmp_path / "a", mode="I;16")              # 0/1 in 16 bits: any non-zero value is in the mask
    result = evaluate(from_preset("tiny"), Synth4K(tmp_path / "a"), progress=False)
    assert result["images"][0]["hf"]["pixels"] == 120
    mask = synth4k_game(tmp_path / "b")
    mask.write_bytes(mask.read_bytes()[:60])                # truncated: the computed mask is used instead
    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        result = evaluate(from_preset("tiny"), Synth4K(tmp_path / "b"), progress=False, min_pixels=2)
    assert len(result["images"]) == 1 and "cannot read the released mask" in caplog.text and str(mask) in caplog.text


def test_synth4k_mask_with_an_alpha_channel_is_its_grey_channel(tmp_path):
    mask = synth4k_game(tmp_path / "a")
    grey = np.asarray(Image.open(mask))
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), "LA").save(mask)   # opaque everywhere
    result = evaluate(from_preset("tiny"), Synth4K(tmp_path / "a"), progress=False)
    assert result["images"][0]["hf"]["pixels"] == 120      # not every pixel of the frame


def test_synth4k_reads_one_meta_file_per_game_root(tmp_path):
    synth4k_game(tmp_path / "games" / "cyberpunk")
    with pytest.raises(InputError, match="cyberpunk/val.txt.*own root"):
        Synth4K(tmp_path / "games")
    assert len(Synth4K(tmp_path / "games" / "cyberpunk")) == 1


def scannet_frame(root, scene, K_text):
    rgb(root / scene / "color" / "000000.jpg", 48, 64)
    png16(root / scene / "depth" / "000000.png", np.full((48, 64), 2000))
    (root / scene / "intrinsic").mkdir()
    (root / scene / "intrinsic" / "intrinsic_depth.txt").write_text(K_text)
    return root / scene / "intrinsic" / "intrinsic_depth.txt"


def diode_frame(root, name, depth=None):
    scan = root / "val" / "indoors" / "scene_00021" / "scan_00189"
    rgb(scan / f"{name}.png", 48, 64)
    np.save(scan / f"{name}_depth.npy", np.full((48, 64, 1), 2.0, np.float32) if depth is None else depth)
    np.save(scan / f"{name}_depth_mask.npy", np.ones((48, 64), np.float32))
    return scan / f"{name}_depth.npy"


def eth3d_frame(root, name, suffix=".npy"):
    rgb(root / "office" / "images" / "dslr_images" / f"{name}.JPG", 48, 64)
    path = root / "office" / "ground_truth_depth" / "dslr_images" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(path, np.full((48, 64), 2.0, np.float32))
    else:
        np.savez(path, data=np.full((48, 64), 2.0))
    return path


def _truncate(path):
    path.write_bytes(path.read_bytes()[:40])
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


K4 = "57.7 0 31.5 0\n0 57.9 23.7 0\n0 0 1 0\n0 0 0 1\n"


# Each case writes one good frame and one broken one, and returns the broken file.
def scannet_empty_intrinsics(root):
    scannet_frame(root, "scene0000_00", K4)
    return scannet_frame(root, "scene0001_00", "")


def scannet_short_intrinsics(root):
    scannet_frame(root, "scene0000_00", K4)
    return scannet_frame(root, "scene0001_00", "57.7 0 31.5\n0 57.9 23.7\n")


def diode_empty_depth(root):
    diode_frame(root, "a")
    return _empty(diode_frame(root, "b"))


def diode_empty_mask(root):
    diode_frame(root, "a")
    return _empty(diode_frame(root, "b").with_name("b_depth_mask.npy"))


def diode_complex_depth(root):
    diode_frame(root, "a")
    return diode_frame(root, "b", np.full((48, 64, 1), 2 + 1j))    # its imaginary part is not dropped silently


def eth3d_truncated_npz(root):
    eth3d_frame(root, "a")
    return _truncate(eth3d_frame(root, "b", ".npz"))


def eth3d_npz_without_arrays(root):
    eth3d_frame(root, "a")
    path = eth3d_frame(root, "b", ".npz")
    np.savez(path)
    return path


def eth3d_empty_npy(root):
    eth3d_frame(root, "a")
    return _empty(eth3d_frame(root, "b"))


BROKEN = {"scannet empty intrinsics": (ScanNet, scannet_empty_intrinsics),
          "scannet short intrinsics": (ScanNet, scannet_short_intrinsics),
          "diode empty depth": (DIODE, diode_empty_depth),
          "diode empty mask": (DIODE, diode_empty_mask),
          "diode complex depth": (DIODE, diode_complex_depth),
          "eth3d truncated npz": (ETH3D, eth3d_truncated_npz),
          "eth3d npz without arrays": (ETH3D, eth3d_npz_without_arrays),
          "eth3d empty npy": (ETH3D, eth3d_empty_npy)}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_skips_its_frame_naming_the_file(tmp_path, caplog, case):
    reader, build = BROKEN[case]
    bad = build(tmp_path)
    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(Fixed(lambda H, W: np.full((H, W), 2.0)), reader(tmp_path), align_method=None, progress=False)
    assert len(r["images"]) == 1 and r["summary"]["full"]["abs_rel"] == pytest.approx(0, abs=1e-6)
    assert any(str(bad) in s for s in r["skipped"]) and str(bad) in caplog.text


def test_eth3d_npz_prefers_the_data_array(tmp_path):
    eth3d_frame(tmp_path, "a", ".npz")
    path = tmp_path / "office" / "ground_truth_depth" / "dslr_images" / "a.npz"
    np.savez(path, other=np.ones((48, 64)), data=np.full((48, 64), 4.5))
    assert torch.allclose(ETH3D(tmp_path).frame(0)["depth"], torch.tensor(4.5))
    assert ETH3D(tmp_path).depth_range() == (1e-3, 1000.0)    # no protocol cap: a bound for runaway predictions


def test_procedural_eval_does_not_read_normals_and_a_corrupt_index_is_one_line(tmp_path, capsys):
    from infinidepth.data.procedural import load_view

    root = tmp_path / "set"
    render_set(root, scenes=1, size=(24, 32), progress=False)
    normal = root / "scene_000000" / "view_00_normal.exr"
    _empty(normal)                                          # evaluation needs no normals
    assert Procedural(root).frame(0)["depth"].shape == (24, 32)
    assert "normals" not in load_view(root / "scene_000000" / "view_00_camera.json", normals=False)
    (root / "index.json").write_text('{"format": "infinidepth-proc')
    with pytest.raises(InputError, match="index.json: corrupt index"):
        Procedural(root)
    assert main(["eval", "--dataset", "procedural", "--root", str(root), "--checkpoint", "tiny"]) == 2
    assert "corrupt index" in capsys.readouterr().err
    (root / "index.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        Procedural(root)


def test_files_without_their_partner_are_logged_and_counted(tmp_path, caplog):
    nyu = tmp_path / "nyu" / "scene"
    rgb(nyu / "rgb_0001.png", 48, 64)
    png16(nyu / "depth_0001.png", np.full((48, 64), 2000))
    rgb(nyu / "rgb_0002.png", 48, 64)                       # no depth
    png16(nyu / "depth_0003.png", np.full((48, 64), 2000))  # no image
    with caplog.at_level(logging.WARNING):
        ds = NYUv2(tmp_path / "nyu")
    assert len(ds) == 1 and len(ds.unpaired) == 2
    assert str(nyu / "rgb_0002.png") in caplog.text and str(nyu / "depth_0003.png") in caplog.text
    r = evaluate(Fixed(lambda H, W: np.full((H, W), 2.0)), ds, align_method=None, progress=False)
    assert sum(str(nyu / "rgb_0002.png") in s or str(nyu / "depth_0003.png") in s for s in r["skipped"]) == 2
    diode_frame(tmp_path / "diode", "a")
    rgb(tmp_path / "diode" / "val" / "indoors" / "scene_00021" / "scan_00189" / "b.png", 48, 64)   # no depth
    assert len(DIODE(tmp_path / "diode").unpaired) == 1


def kitti_set(root, frames, without_rgb=()):
    drive = "2011_09_26_drive_0002_sync"
    for k in frames:
        if k not in without_rgb:
            rgb(root / "2011_09_26" / drive / "image_02" / "data" / f"{k:010d}.png", 40, 130)
        png16(root / drive / "proj_depth" / "groundtruth" / "image_02" / f"{k:010d}.png", np.full((40, 130), 2560))
    return f"2011_09_26/{drive}/image_02/data/{{:010d}}.png"


def test_kitti_scores_the_eigen_list_when_present(tmp_path, caplog):
    line = kitti_set(tmp_path, [0, 1, 2], without_rgb=[2])
    with caplog.at_level(logging.WARNING):
        ds = KITTI(tmp_path)
    assert len(ds) == 2 and len(ds.unpaired) == 1 and "0000000002.png" in ds.unpaired[0]
    assert "no Eigen test list" in caplog.text
    # the list (the common eigen_test_files_with_gt.txt layout: rgb, ground truth, focal): listed frames only
    (tmp_path / "eigen_test_files.txt").write_text(
        line.format(1) + " 2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000001.png 721.5377\n"
        + line.format(7) + " None 721.5377\n\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ds = KITTI(tmp_path)
    assert [p.name for p, _ in ds.records] == ["0000000001.png"]
    assert len(ds.unpaired) == 1 and "eigen_test_files.txt:2" in ds.unpaired[0] and "no ground truth" in ds.unpaired[0]
    assert "no Eigen test list" not in caplog.text
    (tmp_path / "other.txt").write_text("0000000001.png\n")
    with pytest.raises(InputError, match=r"other.txt:1: expected"):
        KITTI(tmp_path, split=tmp_path / "other.txt")
    with pytest.raises(InputError, match="not found"):
        KITTI(tmp_path, split=tmp_path / "missing.txt")


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
    code = main(["eval", "--dataset", "procedural", "--root", str(root), "--checkpoint", "tiny", "--hf-points", "128",
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


def test_eval_json_keeps_the_benchmarks_scored_before_one_that_fails(tmp_path, capsys):
    root = tmp_path / "set"
    render_set(root, scenes=1, size=(32, 48), progress=False)
    nyu = tmp_path / "nyu" / "scene"
    rgb(nyu / "rgb_0000.png", 48, 64)
    Image.fromarray(np.full((48, 64), 20, np.uint8)).save(nyu / "depth_0000.png")   # 8-bit: unreadable as depth
    out = tmp_path / "scores.json"
    code = main(["eval", "--dataset", "procedural", "--root", str(root), "--dataset", "nyuv2", "--root",
                 str(tmp_path / "nyu"), "--checkpoint", "tiny", "--hf-points", "128", "--json", str(out), "--quiet"])
    assert code == 2 and "no image of NYUv2 could be evaluated" in capsys.readouterr().err
    results = json.loads(out.read_text())["results"]
    assert [r["dataset"] for r in results] == ["Procedural"] and len(results[0]["images"]) == 1


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


def test_an_alignment_that_reverses_depth_order_is_scored_and_logged(tmp_path, caplog):
    """A relative prediction ordered far-to-near (its disparity grows with depth) fits with a negative
    scale: the image is scored as fitted, and the log says what happened."""
    gt = np.random.default_rng(1).uniform(2, 8, (48, 64))
    ds = nyu_set(tmp_path, [gt])
    g = ds.frame(0)["depth"].numpy()
    reversed_order = Fixed(lambda H, W: 1 / (0.1 + g / 10), alignment="disparity")   # disparity rising with depth
    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(reversed_order, ds, align_method="lsq", progress=False, hf_points=200)
    assert r["images"][0]["alignment"]["a"] < 0
    assert "orders the scene the other way round" in caplog.text and "rgb_0000.png" in caplog.text


def test_the_default_network_input_is_the_one_the_model_was_trained_at():
    """As predict does: a model that records its training input (demo: 96x128) is fed that many pixels."""
    from infinidepth.eval.evaluate import predict_depth
    from infinidepth.models import from_preset

    model = from_preset("tiny")
    model.input_size = (32, 48)
    seen = []
    predict = model.predict
    model.predict = lambda image, **kw: (seen.append(tuple(image.shape[-2:])), predict(image, **kw))[1]
    rgb = np.zeros((120, 180, 3), np.uint8)
    assert predict_depth(model, rgb, (120, 180), "native").shape == (120, 180)
    assert seen == [(32, 48)]

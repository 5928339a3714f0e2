"""Checks of the evaluation numbers that a mutation pass over infinidepth/eval found unguarded:
threshold constants, which ground-truth pixels count, clip_depth's range checks, alignment on
invalid predictions, the high-frequency map against an independent numpy transcription of its
documented steps, and what the evaluation loop feeds into each metric.

Expected values come from hand computation, closed forms or plain numpy, never from the code under test."""

import logging
import math

import numpy as np
import pytest
import torch

from infinidepth.eval import align, clip_depth, depth_metrics, evaluate, format_table
from infinidepth.eval import high_frequency_map, high_frequency_mask
from infinidepth.eval.evaluate import predict_depth
from test_eval import Fixed, nyu_set as nyu

# NYUv2's Eigen crop on a 48 x 64 frame: rows int(45 * 48 / 480) = 4 .. int(471 * 48 / 480) = 47,
# columns int(41 * 64 / 640) = 4 .. int(601 * 64 / 640) = 60, i.e. 43 x 56 = 2408 scored pixels.
ROWS, COLS = slice(4, 47), slice(4, 60)


def nyu_region():
    m = np.zeros((48, 64), bool)
    m[ROWS, COLS] = True
    return m


# -- metrics -------------------------------------------------------------------------------------------------
def test_every_delta_threshold_sits_at_its_documented_value():
    """For each of the six thresholds, four ratios a relative 1e-7 below and above it, with the
    prediction too far and too near. Sorted, the thresholds are 1.01 < 1.02 < 1.04 < 1.25^0.5 < 1.25
    < 1.25^2, so the k-th (from 0) counts the 4 k ratios of the smaller ones plus its own 2 below."""
    thresholds = [1.01, 1.02, 1.04, 1.1180339887498949, 1.25, 1.5625]   # 1.25^0.5 = 1.11803398874989...
    ratios = [t * f for t in thresholds for f in (1 - 1e-7, 1 + 1e-7)]
    ratios = [r for r in ratios for _ in range(2)]
    over = [True, False] * (len(ratios) // 2)
    gt = np.linspace(0.5, 7.0, len(ratios))
    pred = np.array([g * r if o else g / r for g, r, o in zip(gt, ratios, over)])
    m = depth_metrics(pred, gt)
    names = ["delta_1.01", "delta_1.02", "delta_1.04", "delta_1.25^0.5", "delta_1.25", "delta_1.25^2"]
    assert {n: m[n] for n in names} == {n: pytest.approx((4 * k + 2) / 24) for k, n in enumerate(names)}


def test_metrics_skip_ground_truth_that_is_zero_nan_or_infinite_and_predictions_outside_the_mask():
    gt = np.array([[2.0, 0.0, np.nan], [np.inf, 4.0, 5.0]])
    pred = np.array([[3.0, 1.0, 1.0], [1.0, np.nan, 5.0]])
    mask = np.array([[True, True, True], [True, False, True]])   # the NaN prediction is masked out
    m = depth_metrics(pred, gt, mask)                            # scored: (3 vs 2) and (5 vs 5)
    assert m["pixels"] == 2
    assert m["abs_rel"] == pytest.approx((0.5 + 0) / 2) and m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["delta_1.25"] == pytest.approx(0.5) and m["delta_1.25^2"] == pytest.approx(1.0)
    m = depth_metrics(np.where(np.isfinite(pred), pred, 1.0), gt)   # no mask: the same two pixels plus (1 vs 4)
    assert m["pixels"] == 3 and m["abs_rel"] == pytest.approx((0.5 + 0.75 + 0) / 3)


def test_clip_depth_range_checks_and_float32_output():
    with pytest.raises(ValueError, match="depth range"):
        clip_depth(np.ones(3), (1.0, np.inf))                    # "+inf -> max" needs a finite max
    with pytest.raises(ValueError, match="depth range"):
        clip_depth(np.ones(3), (5.0, 5.0))
    out = clip_depth(np.array([np.nan, np.inf, -np.inf, -3.0, 0.0, 0.25, 7.0, 100.0]), (0.5, 10.0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([10, 10, 0.5, 0.5, 0.5, 0.5, 7, 10], np.float32))


# -- alignment -----------------------------------------------------------------------------------------------
def test_alignment_ignores_non_positive_predictions_and_ground_truth():
    rng = np.random.default_rng(5)
    gt = rng.uniform(1, 10, (12, 12))
    pred = 1 / ((1 / gt - 0.05) / 0.5)                        # 1/g = 0.5 / p + 0.05 exactly
    bad = np.zeros(gt.shape, bool)
    bad[::3, ::4] = True
    pred_neg = np.where(bad, -pred, pred)                      # negative depths: neither fitted nor mapped
    out, a, b = align(pred_neg, gt, space="disparity", method="lsq")
    assert (a, b) == (pytest.approx(0.5, rel=1e-9), pytest.approx(0.05, rel=1e-7))
    assert np.isnan(out[bad]).all()
    np.testing.assert_allclose(out[~bad], gt[~bad], rtol=1e-5)
    # zero ground truth (no depth) takes no part in a depth-space fit
    gt0 = np.where(bad, 0.0, gt)
    _, a, b = align(2.0 * gt - 1.0, gt0, space="depth", method="lsq")       # g = 0.5 p + 0.5
    assert (a, b) == (pytest.approx(0.5, rel=1e-9), pytest.approx(0.5, rel=1e-9))


def test_alignment_defaults_to_ransac_in_disparity_space():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, 10, (30, 30))
    pred = 1 / ((1 / gt - 0.05) / 0.5)
    corrupt = rng.random(gt.shape) < 0.25
    pred = np.where(corrupt, pred * rng.uniform(1.5, 4, gt.shape), pred)
    _, a, b = align(pred, gt)
    assert (a, b) == (pytest.approx(0.5, rel=1e-6), pytest.approx(0.05, rel=1e-5))


def test_the_seed_reaches_the_robust_fit():
    """Two equally supported relations (g = p + 1 and g = p + 101, 50 pixels each): which hypothesis
    RANSAC keeps depends on its random pairs, so different seeds may give different fits, and one
    seed always the same fit."""
    p = np.random.default_rng(0).uniform(1, 10, (1, 100))
    g = np.where(np.arange(100) < 50, p + 1, p + 101)
    fits = {s: align(p, g, space="depth", method="ransac", seed=s)[1:] for s in range(4)}
    assert len(set(fits.values())) > 1
    assert align(p, g, space="depth", method="ransac", seed=1)[1:] == fits[1]


def test_an_aligned_disparity_of_exactly_zero_is_infinitely_far():
    """Fit on two pixels (1/g = -0.5 / p + 5 through p = 1/8, 1/2 and g = 1, 1/4), the third
    (no ground truth) at p = -a / b: its aligned disparity is exactly 0, so its depth is +inf
    (the range's maximum once clipped), not a finite depth."""
    pred = np.array([[0.125, 0.5, 1.0]])
    gt = np.array([[1.0, 0.25, 0.0]])
    _, a, b = align(pred, gt, space="disparity", method="lsq")
    p = -a / b
    if a * (1.0 / p) + b != 0.0:                              # lstsq rounded differently on this platform
        pytest.skip(f"no exactly-zero disparity from a={a!r}, b={b!r}")
    out, _, _ = align(np.array([[0.125, 0.5, p]]), gt, space="disparity", method="lsq")
    assert out[0, 2] == np.inf


# -- high-frequency map: an independent transcription of the module's documented steps ------------------------
def reference_hf_map(depth, valid=None, scales=(0.6, 1.2), tau=0.8):
    d = np.asarray(depth, np.float64)
    H, W = d.shape
    v = np.isfinite(d) & (d > 0)
    if valid is not None:
        v &= np.asarray(valid, bool)
    filled = np.where(v, d, 0.0)

    def laplacian(a):
        p = np.pad(a, 1)
        return np.abs(p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * a)

    def stencil_valid(offsets, r):
        bad = np.pad(~v, r, constant_values=True)                   # outside the image is not data
        hit = np.zeros((H, W), bool)
        for i, j in offsets:
            hit |= bad[r + i:r + i + H, r + j:r + j + W]
        return ~hit

    def blur(a, s, r):
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        k /= k.sum()
        p = np.pad(a, ((0, 0), (r, r)))
        a = sum(k[t] * p[:, t:t + W] for t in range(2 * r + 1))
        p = np.pad(a, ((r, r), (0, 0)))
        return sum(k[t] * p[t:t + H] for t in range(2 * r + 1))

    cross = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]
    energy = np.where(stencil_valid(cross, 1), laplacian(filled), 0.0)
    for s in scales:
        r = max(1, math.ceil(3 * s))
        square = [(i, j) for i in range(-r - 1, r + 2) for j in range(-r - 1, r + 2)]
        energy = np.maximum(energy, np.where(stencil_valid(square, r + 1), laplacian(blur(filled, s, r)), 0.0))
    energy[energy <= 1e-9 * np.abs(d[v]).max()] = 0.0
    q = np.percentile(energy[v], 98)
    if q <= 0:
        q = energy.max()
    return np.zeros((H, W)) if q <= 0 else np.clip(energy / q, 0, 1) ** (1 / tau)


def rough_scene():
    """Gentle curvature on the left (Laplacian ~5e-4, far below detail but above round-off), a noisy
    step on the right, a NaN hole, scattered zero-depth pixels, and a corner outside ``valid``."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:30, 0:34].astype(float)
    d = 3 + 0.1 * x + 0.05 * y + 2.5e-4 * (x - 10) ** 2
    right = x >= 17
    d[right] += 2.0 + 0.02 * rng.standard_normal(int(right.sum()))
    d[5:9, 5:8] = np.nan
    d[rng.random(d.shape) < 0.03] = 0.0
    valid = np.ones(d.shape, bool)
    valid[25:, :6] = False
    return d, valid


def test_hf_map_matches_an_independent_transcription_of_its_definition():
    d, valid = rough_scene()
    want = reference_hf_map(d, valid)
    assert 0 < (want == 1).sum() < 0.05 * want.size and ((want > 0) & (want < 0.01)).sum() > 20   # clip and faint detail matter
    np.testing.assert_allclose(high_frequency_map(d, valid), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(high_frequency_map(d), reference_hf_map(d), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(high_frequency_map(d, valid, scales=(1.0,), tau=0.5),
                               reference_hf_map(d, valid, scales=(1.0,), tau=0.5), rtol=1e-5, atol=1e-6)


def test_hf_map_with_detail_on_under_two_percent_of_the_frame_matches_the_transcription():
    d = np.full((100, 100), 8.0)
    d[50, 61] = 5.0                                            # ~120 pixels of detail, under 2% of 10^4
    want = reference_hf_map(d)
    assert (want > 0).sum() < 0.02 * want.size and want.max() == 1.0
    np.testing.assert_allclose(high_frequency_map(d), want, rtol=1e-5, atol=1e-6)


def test_unsmoothed_hf_map_of_a_spike_by_hand():
    """scales=(): only the 4-neighbour Laplacian of a 7 x 7 frame of 10 with one 4 at (3, 3) and one
    at (1, 5). Energies: 24 at each spike, 6 at their 4 neighbours, except that (0, 5) and (1, 6) lie
    on the border (a neighbour outside the image): 0 there; (1, 5) itself has all 4 neighbours inside.
    49 values: 41 zeros, 6 sixes, 2 x 24, so the 98th percentile (rank 0.98 * 48 = 47.04, between
    ranks 47 and 48) is 24: a map of 1 at the spikes and (6 / 24) ** (1 / 0.8) at the 6 neighbours."""
    d = np.full((7, 7), 10.0)
    d[3, 3] = d[1, 5] = 4.0
    m = high_frequency_map(d, scales=())
    want = np.zeros((7, 7))
    want[3, 3] = want[1, 5] = 1.0
    for i, j in [(2, 3), (4, 3), (3, 2), (3, 4), (2, 5), (1, 4)]:
        want[i, j] = 0.25 ** 1.25
    np.testing.assert_allclose(m, want, rtol=1e-6, atol=1e-7)


def test_hf_mask_with_n_above_the_support_is_the_support():
    d, valid = rough_scene()
    support = reference_hf_map(d, valid) > 0
    mask = high_frequency_mask(d, valid, n=d.size)
    assert np.array_equal(mask, support)


# -- the evaluation loop (test_eval's Fixed: a "model" answering fn(H, W); nyu: a NYUv2 folder of depth maps) ---
def rough_gt(seed):
    return np.round(np.random.default_rng(seed).uniform(2, 4, (48, 64)), 3)   # millimetres, as stored


def test_an_image_with_exactly_min_pixels_scored_pixels_counts(tmp_path):
    gt = np.zeros((48, 64))
    gt[10, 10:60] = gt[20, 10:60] = 2.0                         # 100 pixels, all inside the crop
    r = evaluate(Fixed(lambda H, W: np.full((H, W), 2.2)), nyu(tmp_path, [gt]), align_method=None,
                 progress=False, min_pixels=100)
    assert r["summary"]["full"]["images"] == 1 and r["images"][0]["full"]["pixels"] == 100
    assert r["summary"]["full"]["abs_rel"] == pytest.approx(0.1, rel=1e-6)


def test_alignment_is_fitted_on_the_scored_region_only(tmp_path):
    """Inside NYUv2's crop the prediction is an exact affine disparity of the truth; outside it (valid
    ground truth, not scored) it is something else: the fit must not see those pixels."""
    gt = rough_gt(1)
    region = nyu_region()
    pred = np.where(region, 1 / ((2 / gt + 0.1)), 0.3 * gt)   # disparity 2/g + 0.1 in the crop
    r = evaluate(Fixed(lambda H, W: pred, alignment="disparity"), nyu(tmp_path, [gt]), align_method="lsq",
                 progress=False, hf_points=50)
    row = r["images"][0]
    assert row["full"]["abs_rel"] < 1e-5 and row["alignment"]["a"] == pytest.approx(0.5, rel=1e-5)


def test_nonfinite_count_is_over_the_scored_pixels(tmp_path):
    def half_nan(H, W):
        p = np.full((H, W), 2.0)
        p[:, :32] = np.nan
        return p

    r = evaluate(Fixed(half_nan), nyu(tmp_path, [np.full((48, 64), 2.0)]), align_method=None, progress=False,
                 hf_points=50)
    assert r["images"][0]["nonfinite"] == 43 * 28               # crop rows 4..46, columns 4..31


def test_pixels_the_alignment_leaves_without_depth_are_counted_and_logged(tmp_path, caplog):
    """A predicted depth <= 0 has no disparity: after the fit it is NaN and scored as the range's maximum
    (10 m). It used to be scored so without a word (only NaN in the raw prediction was counted)."""
    def with_zeros(H, W):
        p = np.full((H, W), 2.0)
        p[:, :32] = np.where(np.arange(32) % 2, 0.0, -1.0)    # columns 0..31: zero or negative, finite
        return p

    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(Fixed(with_zeros, alignment="disparity"), nyu(tmp_path, [np.full((48, 64), 2.0)]),
                     align_method="lsq", progress=False, hf_points=50)
    row = r["images"][0]
    assert row["nonfinite"] == 0 and row["lost_in_alignment"] == 43 * 28   # crop rows 4..46, columns 4..31
    assert f"{43 * 28} of {43 * 56} scored pixels have no depth after the alignment" in caplog.text
    assert row["full"]["abs_rel"] == pytest.approx(28 / 56 * (10.0 - 2.0) / 2.0, rel=1e-5)
    r = evaluate(Fixed(with_zeros), nyu(tmp_path / "b", [np.full((48, 64), 2.0)]), align_method=None, progress=False,
                 hf_points=50)
    assert r["images"][0]["lost_in_alignment"] == 0            # not aligned: nothing to lose


def test_a_log_depth_model_is_aligned_in_log_depth_space(tmp_path):
    gt = rough_gt(2)
    pred = math.exp(0.1) * gt**0.5                             # log g = 2 log p - 0.2: exact in log space only
    r = evaluate(Fixed(lambda H, W: pred, alignment="log_depth"), nyu(tmp_path, [gt]), progress=False, hf_points=50)
    row = r["images"][0]
    assert row["alignment"]["space"] == "log_depth" and row["alignment"]["method"] == "ransac"
    assert row["alignment"]["a"] == pytest.approx(2.0, rel=1e-5) and row["full"]["abs_rel"] < 1e-5


def test_a_prediction_that_cannot_be_aligned_scores_as_the_range_maximum(tmp_path, caplog):
    """All-negative relative depth: nothing to align, so every pixel is the range's 10 m (not the
    clipped -1, i.e. 1 mm)."""
    ds = nyu(tmp_path, [np.full((48, 64), 2.0)])
    with caplog.at_level(logging.WARNING, logger="infinidepth.eval"):
        r = evaluate(Fixed(lambda H, W: np.full((H, W), -1.0), alignment="disparity"), ds, progress=False, hf_points=50)
    assert r["images"][0]["full"]["abs_rel"] == pytest.approx((10.0 - 2.0) / 2.0) and "cannot align" in caplog.text


def test_the_hf_mask_follows_the_seed_and_hf_summaries_count_only_images_with_a_row(tmp_path):
    gt = rough_gt(3)
    noise = np.random.default_rng(9).uniform(0.8, 1.25, gt.shape)
    ds = nyu(tmp_path, [gt, np.full((48, 64), 2.0)])           # the flat second frame has no detail, no HF row
    runs = [evaluate(Fixed(lambda H, W: gt * noise), ds, align_method=None, progress=False, hf_points=150, seed=s)
            for s in (0, 7)]
    for r in runs:
        assert r["summary"]["full"]["images"] == 2 and r["summary"]["hf"]["images"] == 1
        assert r["images"][1]["hf"] is None
        assert r["summary"]["hf"]["abs_rel"] == pytest.approx(r["images"][0]["hf"]["abs_rel"])
    assert runs[0]["images"][0]["full"] == runs[1]["images"][0]["full"]
    assert runs[0]["images"][0]["hf"]["abs_rel"] != runs[1]["images"][0]["hf"]["abs_rel"]
    one = evaluate(Fixed(lambda H, W: gt), ds, align_method=None, progress=False, hf_points=150, limit=1)
    assert len(one["images"]) == 1


def test_input_resolution_upsamples_bilinearly_from_pixel_centres():
    """A network output of 4 x 8 holding column index + 1, upsampled to 8 x 16: output column j
    samples source x = (j + 0.5) / 2 - 0.5, held at the ends (align_corners=False)."""
    model = Fixed(lambda H, W: np.broadcast_to(np.arange(W, dtype=np.float64) + 1, (H, W)))
    out = predict_depth(model, np.zeros((8, 16, 3), np.uint8), (8, 16), "input", input_size=(4, 8))
    j = np.arange(16)
    want = np.clip((j + 0.5) / 2 - 0.5, 0, 7) + 1
    np.testing.assert_allclose(out, np.broadcast_to(want, (8, 16)), rtol=1e-6)


def test_format_table_puts_each_metric_under_its_own_label():
    keys = ["abs_rel", "sq_rel", "rmse", "rmse_log", "delta_1.25^0.5", "delta_1.25", "delta_1.25^2",
            "delta_1.01", "delta_1.02", "delta_1.04"]
    labels = ["AbsRel", "SqRel", "RMSE", "RMSElog", "d<1.25^.5", "d<1.25", "d<1.25^2", "d<1.01", "d<1.02", "d<1.04"]
    values = {k: 0.1 * (i + 1) + 0.012345 for i, k in enumerate(keys)}
    result = {"dataset": "X", "output_resolution": "native", "alignment": None, "skipped": [],
              "summary": {"full": {**values, "images": 3}, "hf": None}}
    lines = format_table(result).splitlines()
    head, full = lines[1].split(), lines[2].split()
    assert head[:2] == ["region", "images"] and full[:2] == ["full", "3"]
    table = dict(zip(head[2:], full[2:]))
    assert table == {lab: f"{0.1 * (i + 1) + 0.012345:.4f}" for i, lab in enumerate(labels)}
    assert table["AbsRel"] == "0.1123" and table["d<1.25"] == "0.6123"

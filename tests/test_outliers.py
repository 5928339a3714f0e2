"""The flying-point filter (infinidepth.sampling.outliers) against a brute-force transcription of
Open3D's remove_statistical_outlier, and its use by `predict --ply` and `gs`."""

import numpy as np
import pytest
import torch
from PIL import Image

from infinidepth.cli import main
from infinidepth.sampling import outliers
from infinidepth.sampling.outliers import statistical_inliers


def brute_force(points, k=30, ratio=2.0):
    """Every pairwise distance; each point's k smallest (its own 0 among them) averaged; kept when at
    most the mean + ratio x the sample standard deviation of the positive averages."""
    p = np.asarray(points, np.float64)
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    score = np.sort(d, axis=1)[:, : min(k, len(p))].mean(1)
    pos = score[score > 0]
    return score <= pos.mean() + ratio * np.sqrt(((pos - pos.mean()) ** 2).sum() / (len(pos) - 1))


def wall_with_flyers(seed, n=300, flyers=6):
    """A noisy slanted plane and a few points floating well in front of it."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n, 2))
    plane = np.c_[xy, 2 + 0.3 * xy[:, 0] + rng.normal(0, 0.01, n)]
    fly = np.c_[rng.uniform(-1, 1, (flyers, 2)), rng.uniform(0.8, 1.4, flyers)]
    return np.concatenate([plane, fly]), n


@pytest.mark.parametrize("k, ratio", [(30, 2.0), (8, 1.0), (2, 3.0)])
def test_the_mask_is_open3d_s_rule(k, ratio):
    for seed in range(8):
        p, n = wall_with_flyers(seed)
        keep = statistical_inliers(p, neighbours=k, std_ratio=ratio)
        np.testing.assert_array_equal(keep, brute_force(p, k, ratio))
        if k == 30:   # and what it is for: the floating points go, almost all of the plane stays
            assert not keep[n:].any() and keep[:n].mean() > 0.95
    # the same from a float32 tensor (the Gaussians' means)
    p = wall_with_flyers(0)[0]
    np.testing.assert_array_equal(statistical_inliers(torch.from_numpy(p).float()),
                                  brute_force(torch.from_numpy(p).float().double().numpy()))


def test_queries_in_chunks_give_the_same_mask(monkeypatch):
    p = np.concatenate([wall_with_flyers(s)[0] for s in range(4)]) + np.repeat(np.arange(4), 306)[:, None] * [0, 0, 0.05]
    whole = statistical_inliers(p)
    monkeypatch.setattr(outliers, "_CHUNK", 97)
    np.testing.assert_array_equal(statistical_inliers(p), whole)
    np.testing.assert_array_equal(whole, brute_force(p))


def test_a_cloud_smaller_than_the_neighbourhood():
    """12 heavy-tailed points, 30 neighbours: each score is over the whole cloud, the spread is a sample's
    (this cloud was picked because either slip, 11 neighbours or the population spread, changes its mask)."""
    p = np.random.default_rng(78).standard_t(2, (12, 3))
    np.testing.assert_array_equal(statistical_inliers(p), brute_force(p))


def test_degenerate_clouds_lose_nothing():
    square = np.array([[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], np.float64)   # 2 neighbours: every score 0.5 exactly
    assert statistical_inliers(square, neighbours=2).all()
    y, x = np.mgrid[0:20, 0:20]
    grid = np.c_[x.ravel(), y.ravel(), np.full(400, 3.0)].astype(np.float64)
    inner = (x.ravel() > 2) & (x.ravel() < 17) & (y.ravel() > 2) & (y.ravel() < 17)
    assert statistical_inliers(grid, neighbours=5)[inner].all()   # interior points of a lattice: one score, spread 0
    twins = np.concatenate([np.zeros((40, 3)), wall_with_flyers(1)[0]])   # 40 copies of one point: score 0
    keep = statistical_inliers(twins)
    assert keep[:40].all()
    np.testing.assert_array_equal(keep[40:], brute_force(twins)[40:])   # the statistics of the other points' scores
    assert statistical_inliers(np.zeros((2, 3))).tolist() == [True, True]
    assert statistical_inliers(np.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("kwargs, match", [({"neighbours": 1}, "neighbours must be"), ({"neighbours": 2.5}, "neighbours must be"),
                                           ({"std_ratio": 0}, "std_ratio must be"), ({"std_ratio": float("nan")}, "std_ratio")])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        statistical_inliers(np.zeros((10, 3)), **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        statistical_inliers(np.full((10, 3), np.nan))


def _vertices(path):
    from plyfile import PlyData

    v = PlyData.read(str(path))["vertex"].data
    return np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64), v


@pytest.mark.parametrize("extra", [[], ["--points", "1500"]], ids=["per-pixel", "sampled"])
def test_predict_writes_the_cloud_without_its_flying_points(tmp_path, capsys, extra):
    img = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img)
    argv = ["predict", str(img), "--ply", "--input-size", "32x48", *extra]
    assert main([*argv, "--keep-outliers", "--out", str(tmp_path / "all"), "--quiet"]) == 0
    assert main([*argv, "--out", str(tmp_path / "kept")]) == 0
    xyz, every = _vertices(tmp_path / "all" / "scene.ply")
    want = brute_force(xyz)
    assert 0 < (~want).sum() < 0.2 * len(xyz)      # the test means something: some points go, most stay
    _, kept = _vertices(tmp_path / "kept" / "scene.ply")
    assert (kept == every[want]).all()             # exactly the inliers, colours with them, in order
    gone = int((~want).sum())
    assert f"removed {gone:,} flying points of {len(xyz):,}" in capsys.readouterr().out


def test_gs_writes_the_gaussians_without_their_flying_points(tmp_path, capsys):
    from infinidepth.gs.gaussians import read_ply

    img = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(img)
    argv = ["gs", str(img), "--points", "1200", "--render-size", "16x24"]
    assert main([*argv, "--keep-outliers", "--out", str(tmp_path / "all"), "--quiet"]) == 0
    assert main([*argv, "--out", str(tmp_path / "kept"), "--quiet"]) == 0
    every, kept = read_ply(tmp_path / "all" / "pic_gaussians.ply"), read_ply(tmp_path / "kept" / "pic_gaussians.ply")
    want = torch.from_numpy(brute_force(every.means.double().numpy()))
    assert 0 < int((~want).sum()) < 0.2 * len(every)
    for name in ("means", "scales", "rotations", "opacities", "sh"):
        torch.testing.assert_close(getattr(kept, name), getattr(every, name)[want], rtol=0, atol=0)

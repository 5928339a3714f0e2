"""The exact k-nearest-neighbour search behind the flying-point filter (csrc/outliers_cpu.cpp, through
infinidepth.sampling.outliers.mean_neighbour_distances) against independent references: every pairwise
distance in numpy, and scipy's cKDTree, on clouds chosen to break a k-d tree: lattices full of ties, stacked
duplicates, flat and clustered clouds, spans near the ends of float64, clouds of a few points."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from infinidepth.ops.gather import HAS_EXTENSION
from infinidepth.sampling import outliers
from infinidepth.sampling.outliers import mean_neighbour_distances, statistical_inliers

pytestmark = pytest.mark.skipif(not HAS_EXTENSION, reason="needs the compiled extension infinidepth._C")


def brute_scores(p, k):
    """Each point's k smallest distances to all points (its own 0 included), averaged."""
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k].mean(1)


def tree_scores(p, k):
    return cKDTree(p).query(p, k=k)[0].reshape(len(p), -1).mean(1)


def rng_cloud(kind, seed, n):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(-1, 1, (n, 3))
    if kind == "clustered":   # blobs of very different sizes, and a few points between them
        centres = rng.uniform(-5, 5, (6, 3))
        sizes = np.array([1e-3, 1e-2, 0.1, 0.3, 1.0, 2.0])
        c = rng.integers(0, 6, n)
        p = centres[c] + rng.normal(size=(n, 3)) * sizes[c, None]
        p[: n // 50] = rng.uniform(-8, 8, (n // 50, 3))
        return p
    if kind == "planar":      # a lattice on a plane: every coordinate repeated, distances tied by the dozen
        side = int(np.ceil(np.sqrt(n)))
        y, x = np.divmod(rng.permutation(side * side)[:n], side)
        return np.c_[x, y, np.full(n, 7.0)].astype(np.float64)
    if kind == "lattice":     # a 3D integer lattice, shuffled
        side = int(np.ceil(n ** (1 / 3)))
        idx = rng.permutation(side ** 3)[:n]
        return np.stack(np.unravel_index(idx, (side,) * 3), 1).astype(np.float64)
    if kind == "duplicates":  # points stacked 1 to 40 times, so that many scores are exactly 0
        base = rng.uniform(0, 1, (max(1, n // 8), 3))
        p = base[rng.integers(0, len(base), n)]
        p[: min(n, 40)] = base[0]
        return p
    if kind == "picture":     # a back-projected depth map with a step: two surfaces and the points between
        h, w = 48, n // 48
        v, u = np.mgrid[0:h, 0:w] + 0.5
        z = np.where(u < w / 2, 1.0, 3.0) + 0.01 * np.sin(v / 5)
        z[:, int(w / 2) - 1 : int(w / 2) + 1] = rng.uniform(1, 3, (h, 2))   # the flying points
        return np.stack([(u - w / 2) * z / w, (v - h / 2) * z / w, z], -1).reshape(-1, 3)
    raise ValueError(kind)


KINDS = ["uniform", "clustered", "planar", "lattice", "duplicates", "picture"]


@pytest.mark.parametrize("leaf", [2, 3, 32])
@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_the_brute_force_ones(kind, leaf, monkeypatch):
    monkeypatch.setattr(outliers, "_LEAF", leaf)
    for seed, n, k in [(0, 700, 30), (1, 480, 8), (2, 300, 2)]:
        p = rng_cloud(kind, seed, n)
        np.testing.assert_allclose(mean_neighbour_distances(p, k), brute_scores(p, k), rtol=1e-13, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_ckdtree_s_on_larger_clouds(kind):
    p = rng_cloud(kind, 3, 12_000)
    np.testing.assert_allclose(mean_neighbour_distances(p, 30), tree_scores(p, 30), rtol=1e-13, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 31, 32, 33, 63, 64, 65, 97])
def test_clouds_of_a_few_points_and_k_up_to_n(n):
    """Around the leaf size (32): one leaf, two, three levels; and k = n, where each score is over the whole cloud."""
    p = np.random.default_rng(n).standard_t(2, (n, 3))
    for k in sorted({1, min(n, 2), min(n, 30), n}):
        np.testing.assert_allclose(mean_neighbour_distances(p, k), brute_scores(p, k), rtol=1e-13, atol=0)


@pytest.mark.parametrize("scale, offset", [(1e-140, 0.0), (1e140, 0.0), (1e-3, 1e6), (1.0, -3e4), (1e-9, 1.0)])
def test_huge_and_tiny_spans(scale, offset):
    """Spans near both ends of float64, and clouds far from the origin compared with their size."""
    for kind in ("uniform", "picture", "duplicates"):
        p = rng_cloud(kind, 4, 960) * scale + offset
        np.testing.assert_allclose(mean_neighbour_distances(p, 30), brute_scores(p, 30), rtol=1e-12, atol=0)


def test_any_range_of_the_tree_order_gives_the_same_scores():
    """Queries in ranges that start and end inside leaves (the seeded bound restarts in each), through the op."""
    p = rng_cloud("picture", 5, 4800)
    coords, order, boxes = torch.ops.infinidepth.knn_tree(torch.from_numpy(p), 32)
    assert sorted(order.tolist()) == list(range(len(p)))
    np.testing.assert_array_equal(coords.numpy().T, p[order.numpy()])   # the tree holds the points, unrounded
    want = tree_scores(p, 30)[order.numpy()]
    cuts = [0, 1, 2, 17, 31, 32, 33, 100, 2399, 2400, 4000, 4799, 4800]
    for a, b in zip(cuts[:-1], cuts[1:]):
        got = torch.ops.infinidepth.knn_mean_distance(coords, boxes, 32, 30, a, b).numpy()
        np.testing.assert_allclose(got, want[a:b], rtol=1e-13, atol=0)
    assert torch.ops.infinidepth.knn_mean_distance(coords, boxes, 32, 30, 7, 7).shape == (0,)


def test_python_chunks_do_not_change_the_scores(monkeypatch):
    p = rng_cloud("clustered", 6, 1500)
    monkeypatch.setattr(outliers, "_CHUNK", 97)
    np.testing.assert_allclose(mean_neighbour_distances(p, 30), brute_scores(p, 30), rtol=1e-13, atol=0)


def reference_mask(p, k=30, ratio=2.0):
    """Open3D's rule on brute-force scores, and the points whose score is too close to the threshold to judge."""
    s = brute_scores(p, min(k, len(p)))
    pos = s[s > 0]
    threshold = pos.mean() + ratio * pos.std(ddof=1)
    return s <= threshold, np.abs(s - threshold) <= 1e-9 * threshold


@pytest.mark.parametrize("kind", KINDS)
def test_the_mask_is_the_rule_on_exact_scores(kind):
    for seed in range(3):
        p = rng_cloud(kind, 10 + seed, 720)
        want, close = reference_mask(p)
        keep = statistical_inliers(p)
        assert 0 < (~want).sum()                         # the test means something: points go
        np.testing.assert_array_equal(keep[~close], want[~close])
        # float32 inputs (a cloud as written, the Gaussians' means): judged on their float64 values
        p32 = p.astype(np.float32)
        want32, close32 = reference_mask(p32.astype(np.float64))
        for given in (p32, torch.from_numpy(p32)):
            np.testing.assert_array_equal(statistical_inliers(given)[~close32], want32[~close32])


def test_the_ops_refuse_what_would_read_out_of_bounds():
    p = torch.from_numpy(rng_cloud("uniform", 7, 200))
    coords, order, boxes = torch.ops.infinidepth.knn_tree(p, 32)
    knn = torch.ops.infinidepth.knn_mean_distance
    for call, match in [(lambda: knn(coords, boxes, 32, 30, 0, 201), "outside"),
                        (lambda: knn(coords, boxes, 32, 30, 5, 4), "outside"),
                        (lambda: knn(coords, boxes, 32, 201, 0, 10), "k must be"),
                        (lambda: knn(coords, boxes, 32, 0, 0, 10), "k must be"),
                        (lambda: knn(coords, boxes[:-1], 32, 30, 0, 10), "boxes must be"),
                        (lambda: knn(coords, boxes, 16, 30, 0, 10), "boxes must be"),   # another leaf: another tree
                        (lambda: knn(coords.float(), boxes, 32, 30, 0, 10), "coords must be"),
                        (lambda: knn(coords, boxes, 1, 30, 0, 10), "leaf must be"),
                        (lambda: torch.ops.infinidepth.knn_tree(p.float(), 32), "points must be"),
                        (lambda: torch.ops.infinidepth.knn_tree(p[:0], 32), "no points"),
                        (lambda: torch.ops.infinidepth.knn_tree(p, 1), "leaf must be")]:
        with pytest.raises(RuntimeError, match=match):
            call()


def test_the_mask_of_clouds_smaller_than_the_neighbourhood():
    """Fewer points than 30 neighbours: each score is over the whole cloud, its own 0 included."""
    for n in (3, 5, 12, 29, 30, 31):
        for seed in range(12):
            p = np.random.default_rng(100 * n + seed).standard_t(2, (n, 3))
            want, close = reference_mask(p)
            np.testing.assert_array_equal(statistical_inliers(p)[~close], want[~close])


def test_coordinates_whose_squared_distances_overflow_are_refused_by_name():
    """Beyond 1e150 a squared distance can overflow float64 (the search would find no neighbours); up to it, exact."""
    p = rng_cloud("uniform", 8, 300)
    for bad in (p * 1e200, np.r_[p, [[0.0, -2e150, 0.0]]]):
        with pytest.raises(ValueError, match="beyond 1e\\+150, where squared distances overflow float64"):
            statistical_inliers(bad)
    edge = p * 1e150 / np.abs(p).max()
    np.testing.assert_allclose(mean_neighbour_distances(edge, 30), brute_scores(edge, 30), rtol=1e-12, atol=0)


def test_flipped_and_read_only_arrays_are_accepted():
    """A reversed view (negative strides) and a read-only array are points like any other: the mask of
    the reversed cloud is the reversed mask, and no warning about writability escapes."""
    import warnings

    from infinidepth.sampling.outliers import statistical_inliers

    rng = np.random.default_rng(7)
    p = np.concatenate([rng.normal(size=(300, 3)), [[40.0, 40.0, 40.0]]])   # one far outlier, last
    frozen = p.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not statistical_inliers(p[::-1])[0]              # the outlier, first once reversed
        assert not statistical_inliers(p[:, ::-1])[-1]
        assert not statistical_inliers(frozen)[-1]
    np.testing.assert_array_equal(statistical_inliers(p[::-1])[::-1], statistical_inliers(p))


def test_nan_points_are_refused_by_name():
    """mean_neighbour_distances is public: a NaN is refused in words, not met by the kernel's internal error."""
    p = np.random.default_rng(8).normal(size=(200, 3))
    p[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mean_neighbour_distances(p, 30)

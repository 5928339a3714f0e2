"""Flying points: the statistical outlier filter the released pipeline applies before it writes a cloud.

Depth predicted across an occlusion edge lands between the foreground and the background, so the
points back-projected there float in mid-air, far from both surfaces and from each other. The released
InfiniDepth code removes them from every point cloud and every set of Gaussians it writes, with
Open3D's ``remove_statistical_outlier(nb_neighbors=30, std_ratio=2.0)``. This is that test, on an
exact k-nearest-neighbour search of our own (``csrc/outliers_cpu.cpp``, in the compiled extension; scipy's
k-d tree where the extension was never built), with no Open3D dependency:

* each point's score is its mean distance to its ``neighbours`` nearest points, **itself included**
  (Open3D counts the point as its own first neighbour, at distance 0);
* the mean ``m`` and standard deviation ``s`` (Bessel-corrected) of the scores over the points whose
  score is positive;
* a point is kept when its score is at most ``m + std_ratio * s``.

Two deliberate differences from Open3D, both only in degenerate clouds: a point with a score of 0
(``neighbours`` copies of the same position) is kept, not dropped; and the comparison is ``<=``
rather than ``<``, so a perfectly regular cloud (``s = 0``) keeps every point instead of an
arbitrary share decided by rounding.
"""

from __future__ import annotations

import numpy as np
import torch

NEIGHBOURS = 30   # the released pipeline's nb_neighbors
STD_RATIO = 2.0   # and its std_ratio
_CHUNK = 262_144  # points queried at a time: bounded memory, and a progress bar that moves
_LEAF = 32        # points per leaf of the extension's k-d tree, at most
MAX_COORD = 1e150  # coordinates beyond it: a squared distance (up to 12 x its square) overflows float64


def mean_neighbour_distances(p: np.ndarray, k: int, progress: bool = False) -> np.ndarray:
    """``[N]`` float64: each point's mean Euclidean distance to its ``k`` nearest points of ``p``
    (float64 ``[N, 3]``, finite, ``1 <= k <= N``), itself included. Exact: the ``k`` distances are the
    ones scipy's ``cKDTree.query`` returns."""
    from tqdm import tqdm

    from infinidepth.ops.gather import HAS_EXTENSION

    if len(p) and np.isnan(largest := float(np.abs(p).max())):   # NaN propagates through max: no second pass
        raise ValueError("points contain NaN values")
    if len(p) and largest > MAX_COORD:
        raise ValueError(f"points of magnitude {largest:.3g} are beyond {MAX_COORD:g}, where squared distances "
                         "overflow float64; rescale the cloud")
    n = len(p)
    bar = tqdm(total=n, desc="outlier filter", unit="pt", unit_scale=True, disable=not progress or n <= _CHUNK)
    with bar:
        if not HAS_EXTENSION:  # a source checkout that was never built
            return ckdtree_mean_distances(p, k, bar=bar)
        bar.set_postfix_str("building the k-d tree")   # seconds at 8K, before the first chunk
        # from_numpy refuses negative strides (p[::-1], np.flip) and warns on a read-only array (np.load with
        # mmap_mode="r"): a writable C-ordered copy then, none otherwise
        src = torch.from_numpy(np.require(p, np.float64, ("C_CONTIGUOUS", "WRITEABLE")))
        coords, order, boxes = torch.ops.infinidepth.knn_tree(src, _LEAF)
        bar.set_postfix_str("")
        in_tree_order = np.empty(n)  # queried in the tree's order: consecutive queries are close
        for start in range(0, n, _CHUNK):
            end = min(n, start + _CHUNK)
            in_tree_order[start:end] = torch.ops.infinidepth.knn_mean_distance(coords, boxes, _LEAF, k, start, end).numpy()
            bar.update(end - start)
        score = np.empty(n)
        score[order.numpy()] = in_tree_order
    return score


def ckdtree_mean_distances(p: np.ndarray, k: int, workers: int = -1, bar=None) -> np.ndarray:
    """The scores of :func:`mean_neighbour_distances` from scipy's cKDTree, ``_CHUNK`` points at a time
    (``bar``: a tqdm to advance): the path of a checkout without the extension, and the previous
    implementation that ``benchmarks/outliers.py`` times the kernel against."""
    from scipy.spatial import cKDTree

    tree = cKDTree(p)
    score = np.empty(len(p))
    for start in range(0, len(p), _CHUNK):
        dist, _ = tree.query(p[start : start + _CHUNK], k=k, workers=workers)
        score[start : start + _CHUNK] = dist.reshape(len(dist), -1).mean(axis=1)
        if bar is not None:
            bar.update(len(dist))
    return score


def statistical_inliers(points, neighbours: int = NEIGHBOURS, std_ratio: float = STD_RATIO,
                        progress: bool = False) -> np.ndarray:
    """Boolean mask ``[N]`` of the points to keep (see the module docstring). ``points``: ``[N, 3]``,
    finite (a numpy array or a tensor). Fewer than 3 points are all kept: there is no spread to judge by."""
    from .uniformity import _points

    if not (isinstance(neighbours, (int, np.integer)) and neighbours >= 2):
        raise ValueError(f"neighbours must be an integer of at least 2 (the point itself and one other), got {neighbours!r}")
    if not (np.isfinite(std_ratio) and std_ratio > 0):
        raise ValueError(f"std_ratio must be positive and finite, got {std_ratio}")
    p = _points(points)
    n = len(p)
    if n < 3:
        return np.ones(n, dtype=bool)
    score = mean_neighbour_distances(p, min(int(neighbours), n), progress)
    positive = score[score > 0]
    if len(positive) < 2:
        return np.ones(n, dtype=bool)
    threshold = positive.mean() + std_ratio * positive.std(ddof=1)
    return score <= threshold

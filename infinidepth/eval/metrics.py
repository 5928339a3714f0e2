"""Depth metrics over a validity mask, and alignment of relative predictions.

All metrics compare a predicted depth ``pred`` with the ground truth ``gt`` (metres) on the pixels
where ``mask`` holds (and ``gt > 0``):

- ``abs_rel`` mean |p - g| / g;  ``sq_rel`` mean (p - g)^2 / g;  ``rmse`` sqrt(mean (p - g)^2);
  ``rmse_log`` sqrt(mean (log p - log g)^2)
- ``delta_<t>``: fraction with max(p / g, g / p) < t, for the relative thresholds 1.25^0.5, 1.25,
  1.25^2 and the strict metric ones 1.01, 1.02, 1.04 (all six are always reported)

A relative prediction is first mapped onto the ground truth by ``a * f(pred) + b ~= f(gt)`` with
``f`` the identity (``space="depth"``), ``1 / d`` (``space="disparity"``) or ``log d``
(``space="log_depth"``: scale and power, for log-depth models), fitted by least
squares (``method="lsq"``) or by seeded RANSAC (``method="ransac"``, robust to outliers).

Before the metrics, every prediction, aligned or not, is clipped to the benchmark's fixed depth range
(:func:`clip_depth`: KITTI [1e-3, 80] m, NYUv2 [1e-3, 10] m, ...), as the standard protocols do; the
ground truth never repairs the prediction. A non-finite value is the model's failure and is scored,
not dropped: NaN becomes the range's maximum, +-inf its maximum / minimum.
"""

from __future__ import annotations

import math

import numpy as np

from infinidepth.align import fit_affine, fit_affine_robust

THRESHOLDS = {"delta_1.25^0.5": 1.25**0.5, "delta_1.25": 1.25, "delta_1.25^2": 1.25**2,
              "delta_1.01": 1.01, "delta_1.02": 1.02, "delta_1.04": 1.04}
METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", *THRESHOLDS)
SPACES = {"depth": (lambda d: d, lambda x: x), "disparity": (lambda d: 1.0 / d, lambda x: 1.0 / x),
          "log_depth": (np.log, np.exp)}


def _check(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if mask is None:
        mask = np.ones(gt.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != gt.shape:
        raise ValueError(f"mask {mask.shape} and ground truth {gt.shape} differ in shape")
    mask = mask & np.isfinite(gt) & (gt > 0)
    if not mask.any():
        raise ValueError("no valid ground-truth pixel under the mask")
    if not np.isfinite(pred[mask]).all():
        raise ValueError("the prediction has NaN or infinite values on the evaluated pixels")
    if (pred[mask] <= 0).any():
        raise ValueError("the prediction has non-positive depth on the evaluated pixels; clip it first")
    return mask


def depth_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """The metrics above (float64), plus ``pixels``, the number of pixels evaluated."""
    mask = _check(pred, gt, mask)
    p, g = np.asarray(pred, np.float64)[mask], np.asarray(gt, np.float64)[mask]
    diff = p - g
    ratio = np.maximum(p / g, g / p)
    out = {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(math.sqrt(np.mean(diff**2))),
        "rmse_log": float(math.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
    }
    for name, t in THRESHOLDS.items():
        out[name] = float(np.mean(ratio < t))
    out["pixels"] = int(mask.sum())
    return out


def clip_depth(pred: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """The prediction (float32) with NaN set to ``max``, then clipped to ``[min, max]`` (so +inf ->
    max, -inf and non-positive depth -> min): a benchmark's fixed range, never the ground truth's."""
    lo, hi = float(depth_range[0]), float(depth_range[1])
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"depth range must satisfy 0 < min < max < inf, got {depth_range}")
    pred = np.asarray(pred, np.float64)
    return np.clip(np.where(np.isnan(pred), hi, pred), lo, hi).astype(np.float32)


def align(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, space: str = "disparity",
          method: str = "ransac", seed: int = 0) -> tuple[np.ndarray, float, float]:
    """``(aligned depth, a, b)``: the prediction mapped onto the ground truth (see the module doc).

    The fit uses the pixels of ``mask`` where both are valid (finite, positive). The aligned depth is
    not clipped: it is NaN where the prediction is not a finite positive depth, and +inf where an
    aligned disparity is not positive (beyond infinity); clip it with :func:`clip_depth` to the
    benchmark's range before :func:`depth_metrics`."""
    if space not in SPACES:
        raise ValueError(f"alignment space must be one of {', '.join(SPACES)}, got {space!r}")
    if method not in ("lsq", "ransac"):
        raise ValueError(f"alignment method must be 'lsq' or 'ransac', got {method!r}")
    pred = np.asarray(pred, np.float64)
    if pred.shape != np.shape(gt):
        raise ValueError(f"prediction {pred.shape} and ground truth {np.shape(gt)} differ in shape")
    mask = np.ones(pred.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != pred.shape:   # not broadcast: a row of a mask is not a mask
        raise ValueError(f"mask {mask.shape} and ground truth {pred.shape} differ in shape")
    mask = mask & np.isfinite(gt) & (np.asarray(gt) > 0)
    mask &= np.isfinite(pred) & (pred > 0)
    if mask.sum() < 2:
        raise ValueError("need at least 2 pixels where both prediction and ground truth are valid to align")
    g = np.asarray(gt, np.float64)
    fwd, inv = SPACES[space]
    x, y = fwd(pred[mask]), fwd(g[mask])
    a, b = fit_affine(x, y) if method == "lsq" else fit_affine_robust(x, y, seed=seed)
    usable = np.isfinite(pred) & (pred > 0)      # as in the fit: a depth <= 0 is no depth
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mapped = a * fwd(np.where(usable, pred, 1.0)) + b
        if space == "disparity":
            depth = np.where(mapped > 0, 1.0 / np.where(mapped > 0, mapped, 1.0), np.inf)
        else:
            depth = inv(mapped)
        return np.where(usable, depth, np.nan).astype(np.float32), a, b

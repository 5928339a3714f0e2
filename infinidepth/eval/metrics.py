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


def align(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, space: str = "disparity",
          method: str = "ransac", seed: int = 0) -> tuple[np.ndarray, float, float]:
    """``(aligned depth, a, b)``: the prediction mapped onto the ground truth (see the module doc).

    The aligned depth is clipped to the ground truth's range on the mask, so that a disparity fit that
    crosses zero cannot produce negative or infinite depth."""
    if space not in SPACES:
        raise ValueError(f"alignment space must be one of {', '.join(SPACES)}, got {space!r}")
    if method not in ("lsq", "ransac"):
        raise ValueError(f"alignment method must be 'lsq' or 'ransac', got {method!r}")
    pred = np.asarray(pred, np.float64)
    if pred.shape != np.shape(gt):
        raise ValueError(f"prediction {pred.shape} and ground truth {np.shape(gt)} differ in shape")
    mask = (np.ones(pred.shape, bool) if mask is None else np.asarray(mask, bool)) & np.isfinite(gt) & (np.asarray(gt) > 0)
    mask &= np.isfinite(pred) & (pred > 0)
    if mask.sum() < 2:
        raise ValueError("need at least 2 pixels where both prediction and ground truth are valid to align")
    g = np.asarray(gt, np.float64)
    fwd, inv = SPACES[space]
    x, y = fwd(pred[mask]), fwd(g[mask])
    a, b = fit_affine(x, y) if method == "lsq" else fit_affine_robust(x, y, seed=seed)
    lo, hi = float(g[mask].min()), float(g[mask].max())
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = inv(a * fwd(np.where(pred > 0, pred, np.nan)) + b)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, hi)
    return np.clip(depth, lo, hi).astype(np.float32), a, b

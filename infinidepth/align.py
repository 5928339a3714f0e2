"""Aligning a relative prediction to a reference: ``a * pred + b ~= ref``.

``fit_affine`` is least squares; ``fit_affine_robust`` is RANSAC (seeded, so results repeat) with
the inlier threshold at the median absolute deviation of the reference, then least squares on
the inliers of the best hypothesis, refined until the inlier set settles, with the threshold tightened to three
robust sigmas of the inliers' residuals.
"""

from __future__ import annotations

import math

import numpy as np


def _samples(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    """Both as flat float64 arrays of one size, at least 2, all finite; or a clear error."""
    pred = np.asarray(pred, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference differ in size: {pred.shape} vs {ref.shape}")
    if pred.size < 2:
        raise ValueError(f"need at least 2 valid samples to fit scale and shift, got {pred.size}")
    for name, x in (("prediction", pred), ("reference", ref)):
        bad = int((~np.isfinite(x)).sum())
        if bad:
            raise ValueError(f"the {name} holds {bad} NaN or infinite values of {x.size}; pass only valid samples")
    return pred, ref


def fit_affine(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    pred, ref = _samples(pred, ref)
    A = np.stack([pred, np.ones_like(pred)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, ref, rcond=None)
    return float(a), float(b)


def fit_affine_robust(
    pred: np.ndarray, ref: np.ndarray, seed: int = 0, trials: int = 1000, threshold: float | None = None
) -> tuple[float, float]:
    pred, ref = _samples(pred, ref)
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"the inlier threshold must be positive and finite, got {threshold!r}")
    if threshold is None:
        # the reference's robust spread; where more than half of it is one value (a wall at a quantised
        # depth, a clipped far range) the median deviation is 0, and a threshold of ~0 would let the
        # constant line through those samples win: the mean deviation then
        dev = np.abs(ref - np.median(ref))
        threshold = float(np.median(dev)) or float(dev.mean()) or 1e-12
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, pred.size, size=(2, trials))
    keep = pred[i] != pred[j]
    i, j = i[keep], j[keep]
    if i.size == 0:
        return fit_affine(pred, ref)
    a = (ref[j] - ref[i]) / (pred[j] - pred[i])
    b = ref[i] - a * pred[i]
    # Count inliers per hypothesis in blocks so memory stays bounded for large images.
    best, best_count = 0, -1
    idx = rng.choice(pred.size, 200_000, replace=False) if pred.size > 200_000 else slice(None)
    sub, sub_ref = pred[idx], ref[idx]
    for start in range(0, a.size, 64):
        res = np.abs(a[start : start + 64, None] * sub[None] + b[start : start + 64, None] - sub_ref[None])
        counts = (res < threshold).sum(axis=1)
        k = int(np.argmax(counts))
        if counts[k] > best_count:
            best, best_count = start + k, int(counts[k])
    fa, fb = float(a[best]), float(b[best])
    inliers = np.abs(fa * pred + fb - ref) < threshold
    # Refine: refit on the inliers, then tighten the threshold to three robust sigmas of their residuals,
    # so outliers that a loose threshold let in stop pulling the fit.
    for _ in range(30):  # until the inlier set settles
        if inliers.sum() < 2:
            break
        fa, fb = fit_affine(pred[inliers], ref[inliers])
        residual = np.abs(fa * pred + fb - ref)
        sigma = 1.4826 * float(np.median(residual[inliers]))
        new = residual < min(threshold, 3 * sigma + 1e-12)
        if np.array_equal(new, inliers):
            break
        inliers = new
    return fa, fb

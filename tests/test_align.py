import numpy as np
import pytest

from infinidepth.align import fit_affine, fit_affine_robust


def test_least_squares_recovers_exact_line():
    x = np.linspace(0, 1, 50)
    assert fit_affine(x, 3 * x - 2) == pytest.approx((3.0, -2.0))


@pytest.mark.parametrize("outlier_fraction", [0.0, 0.2, 0.4])
def test_robust_fit_recovers_scale_and_shift_under_outliers(outlier_fraction):
    rng = np.random.default_rng(0)
    x = rng.random(4000)
    y = 2.5 * x + 0.7 + rng.normal(0, 0.01, x.size)
    bad = rng.random(x.size) < outlier_fraction
    y[bad] = rng.random(bad.sum()) * 10
    a, b = fit_affine_robust(x, y, seed=1)
    assert a == pytest.approx(2.5, abs=0.01) and b == pytest.approx(0.7, abs=0.01)
    # plain least squares is pulled away by the outliers (the robust fit is doing work)
    if outlier_fraction:
        assert abs(fit_affine(x, y)[0] - 2.5) > 0.1


def test_robust_fit_is_reproducible_and_checks_sizes():
    rng = np.random.default_rng(1)
    x, y = rng.random(500), rng.random(500)
    assert fit_affine_robust(x, y, seed=4) == fit_affine_robust(x, y, seed=4)
    with pytest.raises(ValueError, match="differ in size"):
        fit_affine_robust(x, y[:10])
    with pytest.raises(ValueError, match="at least 2"):
        fit_affine_robust(x[:1], y[:1])


@pytest.mark.parametrize("where", ["pred", "ref"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_named_not_fitted(where, value):
    """A NaN in the reference used to make the default threshold NaN: no inlier anywhere, and the
    'fit' was the first random pair's line, unrefined (silently off on noisy data)."""
    rng = np.random.default_rng(0)
    x = rng.random(1000)
    y = 2 * x + 1 + rng.normal(0, 0.01, x.size)
    (x if where == "pred" else y)[3] = value
    name = "prediction" if where == "pred" else "reference"
    with pytest.raises(ValueError, match=f"the {name} holds 1 NaN or infinite"):
        fit_affine_robust(x, y)
    with pytest.raises(ValueError, match=f"the {name} holds 1 NaN or infinite"):
        fit_affine(x, y)  # (was a LinAlgError from LAPACK, or NaN)


@pytest.mark.parametrize("kwargs,match", [
    ({"threshold": 0.0}, "threshold"), ({"threshold": -1.0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": float("inf")}, "threshold"),
    ({"trials": 0}, "trials"), ({"trials": -5}, "trials"), ({"trials": 2.5}, "trials"), ({"trials": True}, "trials"),
])
def test_bad_ransac_settings_are_refused(kwargs, match):
    """A threshold <= 0 (or NaN) has no inliers: the result was a random pair's line, unrefined."""
    rng = np.random.default_rng(0)
    x = rng.random(1000)
    y = 2 * x + 1 + rng.normal(0, 0.01, x.size)
    with pytest.raises(ValueError, match=match):
        fit_affine_robust(x, y, **kwargs)
    assert fit_affine_robust(x, y, threshold=0.05) == pytest.approx((2.0, 1.0), abs=0.01)


def test_a_reference_mostly_one_value_still_fits_the_line_not_a_constant():
    """More than half the reference at one depth (a wall in a quantised sensor map) made the default
    threshold 0, and the constant line through those samples won: a flat depth map."""
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 3, 10_000)
    ref = 2 * pred + 1 + rng.normal(0, 0.01, pred.size)
    wall = rng.random(pred.size) < 0.6
    pred[wall] = 0.5 + rng.normal(0, 0.003, wall.sum())
    ref[wall] = 2.0
    a, b = fit_affine_robust(pred, ref)
    assert abs(a - 2) < 0.05 and abs(b - 1) < 0.05, (a, b)


def test_robust_fit_of_a_constant_prediction_and_of_a_threshold_nothing_meets():
    """A constant prediction has no pair to draw a line through: the fit falls back to least
    squares, whose line puts the prediction at the reference's mean (no NaN from 0 / 0). A
    threshold no sample meets leaves the best hypothesis unrefined rather than failing."""
    import warnings

    rng = np.random.default_rng(0)
    ref = rng.uniform(1, 3, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = fit_affine_robust(np.full(500, 0.25), ref)
    assert a * 0.25 + b == pytest.approx(ref.mean(), rel=1e-9)
    for seed in range(5):
        x = rng.random(50)
        a, b = fit_affine_robust(x, 2 * x + 1 + rng.normal(0, 0.01, x.size), seed=seed, threshold=1e-300)
        assert np.isfinite(a) and np.isfinite(b), seed

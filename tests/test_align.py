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

"""rolling_ols against statsmodels RollingOLS: same coefficients, R-squared, NaN pattern; singular windows survive."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.regression.rolling import RollingOLS

from etl.factors.rolling_ols import rolling_ols

TOL = 1e-9
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # statsmodels divides by zero dof


def heavy_tailed(n: int, k: int, seed: int, nan_rate: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Student-t(3) factors with pairwise correlation 0.6, returns-sized, with scattered NaNs and a long gap."""
    rng = np.random.default_rng(seed)
    corr = np.full((k, k), 0.6) + 0.4 * np.eye(k)
    X = rng.standard_t(3, (n, k)) @ np.linalg.cholesky(corr).T * 1e-3
    y = 2e-5 + X @ rng.normal(1.0, 0.5, k) + rng.standard_t(3, n) * 1e-3
    X[rng.random((n, k)) < nan_rate] = np.nan
    y[rng.random(n) < nan_rate] = np.nan
    X[n // 2: n // 2 + 260, 0] = np.nan  # longer than some windows: forces the min_obs rule
    return y, X


def statsmodels_fit(y, X, window, min_obs, add_constant=True, expanding=False):
    exog = sm.add_constant(X, has_constant="add") if add_constant else X
    return RollingOLS(y, exog, window, min_nobs=min_obs, expanding=expanding).fit()


@pytest.mark.parametrize(("k", "window", "min_obs", "add_constant", "expanding"), [
    (4, 240, None, True, False),
    (4, 240, 200, True, False),
    (10, 300, 60, True, False),
    (3, 240, 40, True, True),
    (3, 240, 40, False, False),
])
def test_matches_statsmodels_rolling_ols(k, window, min_obs, add_constant, expanding):
    y, X = heavy_tailed(2500, k, seed=k + window)
    ours = rolling_ols(y, X, window, min_obs, add_constant=add_constant, expanding=expanding)
    ref = statsmodels_fit(y, X, window, min_obs, add_constant, expanding)

    assert np.array_equal(np.isnan(ours.params), np.isnan(ref.params))
    assert np.isnan(ours.params).any() and np.isfinite(ours.params).any()
    np.testing.assert_allclose(ours.params, ref.params, rtol=0, atol=TOL)
    np.testing.assert_allclose(ours.r_squared, ref.rsquared, rtol=0, atol=TOL)
    # with as many observations as parameters statsmodels divides by zero degrees of freedom (inf/nan); ours is NaN
    has_dof = ref.df_resid > 0
    np.testing.assert_allclose(ours.r_squared_adj[has_dof], ref.rsquared_adj[has_dof], rtol=0, atol=TOL)
    assert np.isnan(ours.r_squared_adj[~has_dof]).all()
    defined = np.isfinite(ours.r_squared)
    assert np.array_equal(ours.n_obs[defined], ref.nobs[defined])
    assert not ours.rank_deficient.any()


def test_windows_below_min_obs_are_nan_and_report_their_count():
    rng = np.random.default_rng(3)
    X = rng.standard_t(3, (600, 2))
    y = X @ [1.0, 2.0] + rng.normal(size=600)
    X[200:400, 1] = np.nan
    res = rolling_ols(y, X, window=100, min_obs=50)
    # window ending at row 399 holds rows 300..399: all missing
    assert res.n_obs[399] == 0 and np.isnan(res.params[399]).all() and np.isnan(res.r_squared[399])
    # ending at 449: rows 400..449 are complete -> 50 observations, just enough
    assert res.n_obs[449] == 50 and np.isfinite(res.params[449]).all()
    assert res.n_obs[448] == 49 and np.isnan(res.params[448]).all()
    assert np.isnan(res.params[:99]).all() and np.isfinite(res.params[99]).all()  # first full window


def test_rank_deficient_windows_do_not_raise_and_keep_the_least_squares_fit():
    rng = np.random.default_rng(5)
    n = 800
    x = rng.standard_t(4, (n, 2))
    y = x @ [0.5, -1.0] + rng.normal(size=n)
    X = np.column_stack([x[:, 0], 2 * x[:, 0], x[:, 1], x[:, 1]])   # column 1 duplicates column 0 everywhere
    X[300:500, 3] = 7.0                                             # column 3 constant for a while
    X[600:700, 2] = np.nan
    res = rolling_ols(y, X, window=150, min_obs=30)

    defined = res.n_obs >= 30
    defined[:149] = False
    assert res.rank_deficient[defined].all()
    assert np.isfinite(res.params[defined]).all() and np.isfinite(res.r_squared[defined]).all()
    i = 499  # window rows 350..499: column 3 constant (collinear with the intercept), column 1 = 2 x column 0
    rows = slice(i - 149, i + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ols = sm.OLS(y[rows], sm.add_constant(X[rows], has_constant="add")).fit()
    fitted = res.params[i, 0] + X[rows] @ res.params[i, 1:]
    np.testing.assert_allclose(fitted, ols.fittedvalues, atol=1e-9)
    assert res.r_squared[i] == pytest.approx(ols.rsquared, abs=1e-9)
    assert res.params[i, 4] == 0.0                                  # no loading on a constant regressor
    # minimum norm in standardised units: the duplicate (twice as large) gets half the raw loading
    assert res.params[i, 2] == pytest.approx(res.params[i, 1] / 2)


def test_long_series_with_large_levels_stays_exact():
    """Blocked prefix sums keep window-level rounding on long series with a large mean (no drift over n)."""
    rng = np.random.default_rng(11)
    n, window = 60_000, 500
    X = 1e4 + rng.standard_t(3, (n, 3))
    y = 3.0 + X @ [0.2, -0.1, 0.05] + rng.normal(size=n)
    res = rolling_ols(y, X, window)
    for i in (window - 1, n // 2, n - 1):
        rows = slice(i - window + 1, i + 1)
        ref = sm.OLS(y[rows], sm.add_constant(X[rows])).fit()
        np.testing.assert_allclose(res.params[i, 1:], ref.params[1:], rtol=0, atol=1e-9)
        assert res.r_squared[i] == pytest.approx(ref.rsquared, abs=1e-9)
        assert res.r_squared_adj[i] == pytest.approx(ref.rsquared_adj, abs=1e-9)


def test_rejects_bad_arguments_with_a_message():
    y, X = heavy_tailed(100, 2, seed=1)
    with pytest.raises(ValueError, match="min_obs"):
        rolling_ols(y, X, window=20, min_obs=30)
    with pytest.raises(ValueError, match="same n"):
        rolling_ols(y[:50], X, window=20)

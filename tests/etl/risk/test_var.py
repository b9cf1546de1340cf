"""etl.risk.var against independent oracles (tolerance 1e-9 unless the method is random).

Oracles: numpy quantile, empyrical-reloaded, scipy (linalg.sqrtm, stats.norm) and hand-worked cases. The other risk
maths modules have their own files beside this one; `rets` (t-distributed returns) is in conftest.py.
"""

from __future__ import annotations

import empyrical
import numpy as np
import pytest
from scipy import linalg, stats

from etl.risk import var

TOL = 1e-9


# ---- VaR and ES ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("conf", [0.95, 0.99])
def test_historical_var_matches_numpy_and_empyrical(rets, conf):
    losses = -rets
    out = var.var_es_from_losses(losses, conf)[conf]
    np.testing.assert_allclose(out[0], np.quantile(losses, conf, axis=0), rtol=0, atol=TOL)
    for k in range(rets.shape[1]):
        assert out[0][k] == pytest.approx(-empyrical.value_at_risk(rets[:, k], 1 - conf), abs=TOL)
        # no ties in continuous data: ES = empyrical's CVaR (mean of the worst floor((n-1)p)+1 returns)
        assert out[1][k] == pytest.approx(-empyrical.conditional_value_at_risk(rets[:, k], 1 - conf), abs=TOL)
        tail = losses[:, k][losses[:, k] >= out[0][k]]
        assert out[1][k] == pytest.approx(tail.mean(), abs=TOL)


def test_quantile_ignores_nan_padding_and_handles_ties():
    x = np.array([[np.nan, 1.0], [np.nan, 1.0], [3.0, 1.0], [1.0, 1.0], [2.0, 5.0]])
    q = var.quantile_linear(x, 0.95)
    assert q == pytest.approx([np.quantile([3.0, 1.0, 2.0], 0.95), np.quantile(x[:, 1], 0.95)], abs=TOL)
    v, es = var.var_es_from_losses(np.array([1.0, 1.0, 1.0, 1.0]), 0.99)[0.99]
    assert v == 1.0 and es == 1.0                                             # every loss is "at" VaR


def test_historical_losses_are_todays_book_revalued(rets):
    exposure = np.array([[1000.0, -500.0], [200.0, 0.0], [0.0, 300.0], [50.0, 50.0], [-10.0, 0.0]])
    losses = var.historical_losses(rets, exposure)
    np.testing.assert_allclose(losses[:, 1], -(rets @ exposure[:, 1]), atol=TOL)
    v = var.var_es_from_losses(losses, 0.99)[0.99][0]
    np.testing.assert_allclose(v, np.quantile(-(rets @ exposure), 0.99, axis=0), atol=TOL)


def test_parametric_var_es(rets):
    exposure = np.array([[1000.0], [200.0], [-300.0], [0.0], [50.0]])
    cov = var.covariance(rets)
    np.testing.assert_allclose(cov, np.cov(rets, rowvar=False, ddof=1), rtol=TOL)
    sigma = var.portfolio_sigma(cov, exposure)
    assert sigma[0] == pytest.approx(np.std(rets @ exposure[:, 0], ddof=1), rel=TOL)
    v, es = var.parametric_var_es(sigma, 0.99)
    assert v[0] == pytest.approx(stats.norm.ppf(0.99) * sigma[0], rel=TOL)
    assert es[0] == pytest.approx(stats.norm.expect(lambda x: x, loc=0, scale=sigma[0], lb=v[0]) / 0.01, rel=1e-7)


def test_covariance_skips_nan_rows(rets):
    padded = np.vstack([np.full((7, 5), np.nan), rets[:50]])
    np.testing.assert_allclose(var.covariance(padded), np.cov(rets[:50], rowvar=False), rtol=TOL)


def test_rolling_covariance_is_each_windows_covariance(rets):
    """Running sums against np.cov of each window: full windows, windows reaching before row 0 and windows
    holding NaN rows (both left out); to 1e-13 of the largest entry (the sums' rounding)."""
    x = rets.copy()
    x[30] = np.nan
    n, ends = 40, np.array([0, 1, 5, 29, 30, 31, 45, 69, 70, len(x) - 1])
    cov = var.rolling_covariance(x, ends, n)
    for i, end in enumerate(ends):
        rows = x[max(0, end - n + 1):end + 1]
        rows = rows[~np.isnan(rows).any(axis=1)]
        if len(rows) < 2:
            assert np.isnan(cov[i]).all()
            continue
        expected = np.cov(rows, rowvar=False, ddof=1)
        np.testing.assert_allclose(cov[i], expected, rtol=0, atol=1e-13 * np.abs(expected).max())


@pytest.mark.parametrize("dist", ["normal", "t"])
def test_monte_carlo_is_seeded_and_matches_the_covariance(rets, dist):
    cov = np.cov(rets, rowvar=False)
    exposure = np.array([[1000.0], [200.0], [-300.0], [0.0], [50.0]])
    z, s = var.mc_draws(200_000, 5, seed=7, distribution=dist, dof=5.0)
    z2, s2 = var.mc_draws(200_000, 5, seed=7, distribution=dist, dof=5.0)
    assert np.array_equal(z, z2) and np.array_equal(s, s2)
    losses = var.mc_losses(z, s, cov, exposure)[:, 0]
    sigma = var.portfolio_sigma(cov, exposure)[0]
    assert losses.std() == pytest.approx(sigma, rel=0.02)                     # statistical, seeded
    v, _ = var.var_es_from_losses(losses, 0.99)[0.99]
    expected = stats.norm.ppf(0.99) if dist == "normal" else stats.t.ppf(0.99, 5) * np.sqrt(3 / 5)
    assert v == pytest.approx(expected * sigma, rel=0.03)


@pytest.mark.parametrize("dist", ["normal", "t"])
def test_mc_model_figures_are_what_the_scenarios_estimate_within_their_standard_error(rets, dist):
    """The backtest scores the Monte Carlo model by its exact VaR/ES (var.mc_model_var_es); the 10,000-scenario
    figures of the as-of day estimate them. Their difference stays within 4 asymptotic standard errors:
    VaR: sqrt(c (1-c) / S) / f(VaR); ES: sqrt((Var(L | L >= VaR) + c (ES - VaR)^2) / (S (1-c))) (the loss
    density f and the tail moments of the model's own distribution, by scipy)."""
    s_count = 10_000
    z, s = var.mc_draws(s_count, 5, seed=7, distribution=dist, dof=5.0)
    expo = np.random.default_rng(3).normal(size=(5, 40)) * 1000                # 40 books, one set of draws
    cov = np.cov(rets, rowvar=False)
    sigma = var.portfolio_sigma(cov, expo)
    k = np.sqrt(3 / 5)
    law = stats.norm() if dist == "normal" else stats.t(5, scale=k)              # the standardised innovation
    for c, (v, es) in var.var_es_from_losses(var.mc_losses(z, s, cov, expo), (0.95, 0.975, 0.99)).items():
        v_exact, es_exact = var.mc_model_var_es(sigma, c, dist, 5.0)
        q = law.ppf(c)
        assert v_exact == pytest.approx(q * sigma, rel=1e-12)
        assert es_exact == pytest.approx(law.expect(lambda x: x, lb=q) / (1 - c) * sigma, rel=1e-7)
        tail_var = law.expect(lambda x, m=es_exact[0] / sigma[0]: (x - m) ** 2, lb=q) / (1 - c)
        se_var = np.sqrt(c * (1 - c) / s_count) / law.pdf(q) * sigma
        se_es = np.sqrt((tail_var + c * (es_exact[0] / sigma[0] - q) ** 2) / (s_count * (1 - c))) * sigma
        assert (np.abs(v - v_exact) < 4 * se_var).all() and (np.abs(es - es_exact) < 4 * se_es).all()
        assert np.abs(v - v_exact).mean() < 1.5 * se_var.mean()                # typical error ~0.8 se


def test_var_es_of_nan_padded_windows_with_ties_below_the_kept_tail():
    """Rows of different valid lengths (NaN padding in front) and a tie with VaR reaching below the kept largest
    losses: equal to a sort of each row's valid values."""
    rng = np.random.default_rng(2)
    losses = rng.standard_normal((30, 250))
    losses[:, :100] = np.nan
    losses[np.arange(30)[:, None] > np.arange(250)[None, :] / 4] = np.nan   # rows with 150 down to ... valid
    losses[3, 100:] = 0.0                                                     # all tied
    losses[4, 100:240] = 0.0                                                  # ties from the VaR down
    for c, (v, es) in var.var_es_from_losses(losses, (0.95, 0.975, 0.99), axis=1).items():
        for i, row in enumerate(losses):
            x = row[~np.isnan(row)]
            assert v[i] == np.quantile(x, c) and es[i] == pytest.approx(x[x >= v[i]].mean(), rel=1e-12)


def test_cov_sqrt_handles_a_zero_variance_asset():
    cov = np.array([[0.0004, 0.0], [0.0, 0.0]])                              # e.g. BTC in BTC terms
    L = var.cov_sqrt(cov)
    np.testing.assert_allclose(L @ L.T, cov, atol=1e-15)


def test_mc_var_is_continuous_in_the_covariance():
    """Two assets with equal variance: any rotation of the eigenvectors is an eigen-decomposition, and a 1e-18
    correlation turns numpy's choice by 45 degrees. The scenarios must not depend on that choice: the square root
    is the unique symmetric one, so the same covariance up to rounding gives the same MC VaR."""
    cov = np.diag([4e-4, 4e-4])
    nudged = cov + np.array([[0.0, 1e-18], [1e-18, 0.0]])
    exposure = np.array([[1000.0], [0.0]])
    z, s = var.mc_draws(5000, 2, seed=7)
    a = var.var_es_from_losses(var.mc_losses(z, s, cov, exposure), 0.99)[0.99]
    b = var.var_es_from_losses(var.mc_losses(z, s, nudged, exposure), 0.99)[0.99]
    np.testing.assert_allclose(b, a, rtol=1e-9)


def test_cov_sqrt_is_the_symmetric_square_root(rets):
    """Oracle: scipy.linalg.sqrtm; batched roots equal one-at-a-time roots."""
    cov = np.cov(rets, rowvar=False)
    root = var.cov_sqrt(cov)
    np.testing.assert_allclose(root, linalg.sqrtm(cov).real, rtol=0, atol=1e-12)
    np.testing.assert_allclose(root, root.T, rtol=0, atol=1e-15)
    stack = np.stack([cov, 2 * cov])
    np.testing.assert_allclose(var.cov_sqrt(stack)[1], linalg.sqrtm(2 * cov).real, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [5, 11, 101, 250])
def test_var_es_with_ties_against_a_sort(n):
    """Heavy ties and exact order statistics (n-1)q integer: the partition path equals a brute-force sort."""
    rng = np.random.default_rng(n)
    losses = rng.integers(0, 4, size=(n, 40)).astype(float)
    for c in (0.95, 0.99, 0.75, 0.5):
        v, es = var.var_es_from_losses(losses, c)[c]
        np.testing.assert_array_equal(v, np.quantile(losses, c, axis=0))
        brute = np.array([col[col >= q].mean() for col, q in zip(losses.T, v, strict=True)])
        np.testing.assert_allclose(es, brute, rtol=1e-12)


# ---- hand-worked cases ------------------------------------------------------------------------------------------
def test_historical_var_es_hand_worked():
    losses = np.arange(1.0, 21.0)[::-1].copy()          # 20 scenario losses 20, 19, ..., 1
    # 95%: virtual index 19 x 0.95 = 18.05 -> 19 + 0.05 x (20 - 19) = 19.05; only the loss 20 is >= VaR
    # 90%: index 17.1 -> 18.1; losses 19 and 20 -> ES 19.5.  50%: index 9.5 -> 10.5; ES = mean(11..20) = 15.5
    out = var.var_es_from_losses(losses, (0.95, 0.9, 0.5))
    assert out[0.95][0] == pytest.approx(19.05, abs=TOL) and out[0.95][1] == pytest.approx(20.0, abs=TOL)
    assert out[0.9][0] == pytest.approx(18.1, abs=TOL) and out[0.9][1] == pytest.approx(19.5, abs=TOL)
    assert out[0.5][0] == pytest.approx(10.5, abs=TOL) and out[0.5][1] == pytest.approx(15.5, abs=TOL)
    # a loss exactly at VaR belongs to the tail: 21 losses 0..20 at 95% -> index 19 exactly -> VaR 19, ES 19.5
    v, es = var.var_es_from_losses(np.arange(0.0, 21.0), 0.95)[0.95]
    assert v == 19.0 and es == 19.5


def test_parametric_var_with_a_hand_computed_covariance():
    r = np.array([[0.01, 0.02], [-0.02, 0.00], [0.03, -0.01], [0.00, 0.03]])
    # means 0.005, 0.01; sum of squared deviations 0.0013 and 0.001, cross -0.0003; divided by n - 1 = 3
    cov = np.array([[0.0013, -0.0003], [-0.0003, 0.001]]) / 3
    np.testing.assert_allclose(var.covariance(r), cov, rtol=1e-12, atol=0)
    exposure = np.array([[1000.0], [2000.0]])
    sigma2 = (1000**2 * 0.0013 + 2000**2 * 0.001 - 2 * 1000 * 2000 * 0.0003) / 3   # = 1366.666...
    sigma = var.portfolio_sigma(var.covariance(r), exposure)[0]
    assert sigma == pytest.approx(np.sqrt(sigma2), rel=1e-12)
    for c in (0.95, 0.99):
        v, es = var.parametric_var_es(np.array([sigma]), c)
        assert v[0] == pytest.approx(stats.norm.ppf(c, scale=np.sqrt(sigma2)), rel=1e-12)
        # ES = E[L | L >= VaR] of N(0, sigma^2), by numerical integration
        assert es[0] == pytest.approx(stats.norm(scale=np.sqrt(sigma2)).expect(lambda x: x, lb=v[0]) / (1 - c),
                                      rel=1e-8)

"""The risk maths against independent oracles (tolerance 1e-9 unless the method is random).

Oracles: numpy quantile, empyrical-reloaded, quantstats (periods=365, prepare_returns=False), pandas ewm,
scipy.stats (median_abs_deviation, norm, binom, chi2) and hand-worked cases.
"""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest
import quantstats as qs
from scipy import linalg, stats

from etl.risk import anomalies, backtest, drawdown, risk_returns, valuation, var

TOL = 1e-9


@pytest.fixture(scope="module")
def rets() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.standard_t(4, size=(300, 5)) * 0.03


# ---- valuation: a hand-computed 3-asset book -----------------------------------------------------------------
def test_three_asset_book_by_hand():
    close = np.array([[100.0, 50.0, 20.0], [110.0, 45.0, 20.0], [99.0, 60.0, 25.0]])   # days Jan 30, Jan 31, Feb 1
    qty = np.broadcast_to(np.array([10.0, -4.0, 5.0]), (3, 1, 3))
    cost = np.broadcast_to(np.array([90.0, 55.0, 22.0]), (3, 1, 3))
    val = valuation.value_positions(qty, cost, close, np.ones((3, 1, 3)))
    assert val.market_value[2, 0].tolist() == [990.0, -240.0, 125.0]
    assert val.unrealized_pnl[2, 0].tolist() == [90.0, -20.0, 15.0]          # (99-90)*10, (60-55)*-4, (25-22)*5
    e = valuation.exposures(val.market_value)
    assert e["gross_exposure"][2, 0] == 1355.0 and e["net_exposure"][2, 0] == 875.0
    assert e["long_exposure"][2, 0] == 1115.0 and e["short_exposure"][2, 0] == 240.0
    assert e["concentration_pct"][2, 0] == pytest.approx(990 / 1355, abs=TOL)
    pnl = valuation.daily_pnl(qty, close[:, None, :])
    assert np.isnan(pnl[0, 0]) and pnl[1, 0] == 120.0 and pnl[2, 0] == -145.0   # 100+20+0 ; -110-60+25
    mtd = valuation.month_to_date(pnl, np.array([1, 1, 2]))
    assert mtd[:, 0].tolist() == [0.0, 120.0, -145.0]                          # February starts afresh
    r = valuation.portfolio_returns(pnl, e["gross_exposure"])
    assert r[2, 0] == pytest.approx(-145.0 / (1100 + 180 + 100), abs=TOL)      # on yesterday's gross


def test_quote_currency_conversion_and_empty_book():
    close = np.array([[0.03], [0.035]])                 # ETH-BTC in BTC
    fx = np.array([[[60000.0]], [[50000.0]]])           # BTC-USD close each day
    val = valuation.value_positions(np.full((2, 1, 1), 2.0), np.full((2, 1, 1), 0.02), close, fx)
    assert val.market_value[:, 0, 0].tolist() == pytest.approx([3600.0, 3500.0], abs=TOL)
    assert val.unrealized_pnl[1, 0, 0] == pytest.approx((0.035 - 0.02) * 2 * 50000, abs=TOL)
    e = valuation.exposures(np.zeros((1, 1, 3)))
    assert e["gross_exposure"][0, 0] == 0 and np.isnan(e["concentration_pct"][0, 0])


def test_carry_forward_latest_snapshot_per_portfolio():
    snap_days = np.array([10, 12])
    has = np.array([[True, False], [True, True]])       # X has both snapshots, Y only the later one
    values = np.zeros((2, 2, 2))
    values[0, 0] = [1.0, 2.0]
    values[1, 0] = [5.0, 0.0]                           # X closes asset 1 at the rebalance
    values[1, 1] = [0.0, 7.0]
    out = valuation.carry_forward(snap_days, has, values, np.array([9, 10, 11, 12, 13]))
    assert out[:, 0].tolist() == [[0, 0], [1, 2], [1, 2], [5, 0], [5, 0]]
    assert out[:, 1].tolist() == [[0, 0], [0, 0], [0, 0], [0, 7], [0, 7]]


# ---- returns and volatility ----------------------------------------------------------------------------------
def test_returns():
    p = np.array([[100.0], [110.0], [99.0]])
    assert risk_returns.simple_returns(p)[:, 0] == pytest.approx([0.1, -0.1], abs=TOL)
    assert risk_returns.log_returns(p)[:, 0] == pytest.approx([np.log(1.1), np.log(0.9)], abs=TOL)


@pytest.mark.parametrize("window", [20, 30])
def test_window_vol_matches_quantstats(rets, window):
    ours = risk_returns.window_vol(rets, window, 365)
    for k in range(rets.shape[1]):
        oracle = qs.stats.volatility(pd.Series(rets[-window:, k]), periods=365, prepare_returns=False)
        assert ours[k] == pytest.approx(oracle, abs=TOL)
    assert np.isnan(risk_returns.window_vol(rets[:5], window)).all()


def test_ewma_vol_matches_pandas(rets):
    ours = risk_returns.ewma_vol(rets, 0.94, 365)
    oracle = np.sqrt(pd.DataFrame(rets**2).ewm(alpha=0.06, adjust=True).mean().iloc[-1].to_numpy() * 365)
    np.testing.assert_allclose(ours, oracle, rtol=TOL, atol=0)


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


def test_mc_batched_equals_one_day_at_a_time(rets):
    covs = np.stack([np.cov(rets[i:i + 100], rowvar=False) for i in (0, 50, 100)])
    expo = np.random.default_rng(3).normal(size=(3, 5, 4)) * 1000
    z, s = var.mc_draws(2000, 5, seed=1)
    batched = var.mc_var_es_batched(z, s, covs, expo, (0.95, 0.99), max_cells=2000 * 4)   # one day per block
    for d in range(3):
        one = var.var_es_from_losses(var.mc_losses(z, s, covs[d], expo[d]), (0.95, 0.99))
        for c in (0.95, 0.99):
            np.testing.assert_allclose(batched[c][0][d], one[c][0], rtol=1e-12)
            np.testing.assert_allclose(batched[c][1][d], one[c][1], rtol=1e-12)


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


# ---- drawdown --------------------------------------------------------------------------------------------------
def test_max_drawdown_matches_empyrical_and_quantstats(rets):
    mdd = drawdown.max_drawdown(rets)
    for k in range(rets.shape[1]):
        assert mdd.max_drawdown[k] == pytest.approx(empyrical.max_drawdown(rets[:, k]), abs=TOL)
        prices = pd.Series(100 * np.cumprod(1 + rets[:, k]), index=pd.date_range("2025-01-02", periods=len(rets)))
        assert mdd.max_drawdown[k] == pytest.approx(qs.stats.max_drawdown(prices), abs=1e-6)  # quantstats rounds
    dd = drawdown.drawdown_series(rets)
    np.testing.assert_allclose(dd.min(axis=0), mdd.max_drawdown, atol=TOL)


def test_drawdown_dates_by_hand():
    r = np.array([[0.10], [-0.5], [0.2], [0.5], [0.4], [-0.1]])              # wealth 1, 1.1, .55, .66, .99, 1.386
    mdd = drawdown.max_drawdown(r)
    assert mdd.max_drawdown[0] == pytest.approx(-0.5, abs=TOL)
    assert (mdd.peak[0], mdd.trough[0], mdd.recovery[0]) == (1, 2, 5)
    never = drawdown.max_drawdown(np.array([[0.1], [-0.2], [0.05]]))
    assert (never.peak[0], never.trough[0], never.recovery[0]) == (1, 2, -1)
    up = drawdown.max_drawdown(np.array([[0.1], [0.2]]))
    assert up.max_drawdown[0] == 0.0 and up.recovery[0] == -1
    first_day_loss = drawdown.max_drawdown(np.array([[-0.1], [0.05]]))       # counted from the start
    assert first_day_loss.max_drawdown[0] == pytest.approx(-0.1, abs=TOL)


# ---- anomalies -------------------------------------------------------------------------------------------------
def test_robust_z_matches_scipy_mad(rets):
    window = 60
    z, how = anomalies.robust_z(rets, window)
    assert np.isnan(z[:window]).all()
    for t in (window, 150, 299):
        w = rets[t - window:t]
        med = np.median(w, axis=0)
        mad = stats.median_abs_deviation(w, axis=0, scale=1.0)
        np.testing.assert_allclose(z[t], 0.6745 * (rets[t] - med) / mad, rtol=TOL)
    assert set(how[window:].ravel()) == {"mad"}


def test_robust_z_mad_zero_and_missing_values():
    x = np.zeros((12, 3))
    x[:, 1] = [0, 0, 0, 0, 0, 0.01, 0, 0, 0, 0, 0, 0.05]  # MAD 0, meanAD > 0
    x[11, 2] = 0.02                                        # constant window, then a move
    x[5, 0] = np.nan                                       # a missing bar inside a window
    z, how = anomalies.robust_z(x, window=10, min_obs=5)
    meanad = np.mean(np.abs(x[1:11, 1]))            # the median of the window is 0
    assert z[11, 1] == pytest.approx(0.05 / (1.253314 * meanad), rel=TOL) and how[11, 1] == "meanad"
    assert z[11, 2] == np.inf and how[11, 2] == "none"
    assert z[10, 2] == 0.0
    assert z[11, 0] == 0.0 and not np.isnan(z[11, 0])                         # NaN skipped in the window
    assert np.isnan(anomalies.robust_z(x, window=10, min_obs=11)[0][11]).all()


# ---- backtest statistics ---------------------------------------------------------------------------------------
def test_kupiec_hand_worked():
    # n=250, x=5, p=0.01: LR = -2[245 ln .99 + 5 ln .01] + 2[245 ln .98 + 5 ln .02]
    lr, p = backtest.kupiec(250, 5, 0.99)
    expected = -2 * (245 * np.log(0.99) + 5 * np.log(0.01)) + 2 * (245 * np.log(0.98) + 5 * np.log(0.02))
    assert lr == pytest.approx(expected, abs=TOL)
    assert lr == pytest.approx(1.9568, abs=1e-4)
    assert p == pytest.approx(stats.chi2.sf(expected, 1), abs=TOL)
    lr0, _ = backtest.kupiec(250, 0, 0.99)                                    # no exceptions: 0 ln 0 = 0
    assert lr0 == pytest.approx(-2 * 250 * np.log(0.99), abs=TOL)


def test_christoffersen_hand_worked():
    hits = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    # transitions: 00: (0,1),(4,5),(5,6),(8,9) = 4 ; 01: (1,2),(6,7) = 2 ; 10: (3,4),(7,8) = 2 ; 11: (2,3) = 1
    assert [int(v[0]) for v in backtest.transition_counts(hits)] == [4, 2, 2, 1]
    pi0, pi1, pi = 2 / 6, 1 / 3, 3 / 9
    restricted = 6 * np.log(1 - pi) + 3 * np.log(pi)
    unrestricted = 4 * np.log(1 - pi0) + 2 * np.log(pi0) + 2 * np.log(1 - pi1) + 1 * np.log(pi1)
    lr, p = backtest.christoffersen(hits)
    assert lr[0] == pytest.approx(max(-2 * (restricted - unrestricted), 0.0), abs=TOL)
    clustered = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    n00, n01, n10, n11 = 7, 1, 1, 2                                            # 11 transitions
    pi0, pi1, pi = 1 / 8, 2 / 3, 3 / 11
    expected = -2 * ((n00 + n10) * np.log(1 - pi) + (n01 + n11) * np.log(pi)
                     - (n00 * np.log(1 - pi0) + n01 * np.log(pi0) + n10 * np.log(1 - pi1) + n11 * np.log(pi1)))
    lr, p = backtest.christoffersen(clustered)
    assert lr[0] == pytest.approx(expected, abs=TOL) and p[0] == pytest.approx(stats.chi2.sf(expected, 1), abs=TOL)
    lr_cc, p_cc = backtest.conditional_coverage(1.5, lr[0])
    assert p_cc == pytest.approx(stats.chi2.sf(1.5 + expected, 2), abs=TOL)
    lr_none, _ = backtest.christoffersen(np.zeros(20, dtype=bool))
    assert lr_none[0] == 0.0


def test_traffic_light_is_the_basel_table():
    x = np.arange(16)
    zones = backtest.traffic_light(x, 250, 0.99)
    assert list(zones) == ["green"] * 5 + ["yellow"] * 5 + ["red"] * 6
    cdf = stats.binom.cdf(x, 250, 0.01)
    assert (cdf[:5] < 0.95).all() and (cdf[5:10] < 0.9999).all() and (cdf[10:] >= 0.9999).all()


def test_exceptions_are_losses_beyond_var():
    assert backtest.exceptions(np.array([10.0, 10.0, 10.0, np.nan]), np.array([-10.0, -10.5, 3.0, -99.0])).tolist() \
        == [False, True, False, False]


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


def test_ewma_vol_matches_the_direct_recursion(rets):
    """RiskMetrics with normalised weights: S_t = lam S_{t-1} + r_t^2, W_t = lam W_{t-1} + 1, sigma^2 = S / W."""
    s = w = np.zeros(rets.shape[1])
    for row in rets:
        s, w = 0.94 * s + row**2, 0.94 * w + 1.0
    np.testing.assert_allclose(risk_returns.ewma_vol(rets, 0.94, 365), np.sqrt(s / w * 365), rtol=1e-12, atol=0)
    one = risk_returns.ewma_vol(np.array([[0.02]]), 0.94, 365)                      # one return: sigma = |r|
    assert one[0] == pytest.approx(0.02 * np.sqrt(365), rel=1e-12)


@pytest.mark.parametrize("window", [20, 30])
def test_window_vol_matches_pandas_rolling_std(rets, window):
    oracle = pd.DataFrame(rets).rolling(window).std().iloc[-1].to_numpy() * np.sqrt(365)
    np.testing.assert_allclose(risk_returns.window_vol(rets, window, 365), oracle, rtol=1e-12, atol=0)


def test_backtest_statistics_edge_cases():
    # all exceptions: LR_pof = -2 n ln p (the unrestricted likelihood is 1); one state only: LR_ind = 0
    lr, p = backtest.kupiec(10, 10, 0.99)
    assert lr == pytest.approx(-2 * 10 * np.log(0.01), rel=1e-12) and p == pytest.approx(stats.chi2.sf(lr, 1))
    lr_ind, p_ind = backtest.christoffersen(np.ones(10, dtype=bool))
    assert lr_ind[0] == 0.0 and p_ind[0] == 1.0
    # no exceptions: LR_pof = -2 n ln(1 - p), LR_ind = 0
    assert backtest.kupiec(250, 0, 0.99)[0] == pytest.approx(-2 * 250 * np.log(0.99), rel=1e-12)
    assert backtest.christoffersen(np.zeros(250, dtype=bool))[0][0] == 0.0
    # no consecutive exceptions: n11 = 0, pi1 = 0 and 0 ln 0 = 0 (by hand: n00 = n01 = n10 = 3)
    hits = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert [int(v[0]) for v in backtest.transition_counts(hits)] == [3, 3, 3, 0]
    restricted = 6 * np.log(2 / 3) + 3 * np.log(1 / 3)                         # pi = 3 / 9
    unrestricted = 3 * np.log(0.5) + 3 * np.log(0.5) + 3 * np.log(1.0)        # pi0 = 1/2, pi1 = 0
    lr_ind, p_ind = backtest.christoffersen(hits)
    assert lr_ind[0] == pytest.approx(-2 * (restricted - unrestricted), rel=1e-12)
    assert lr_ind[0] == pytest.approx(3.139489, abs=1e-6) and p_ind[0] == pytest.approx(stats.chi2.sf(lr_ind[0], 1))
    # no days: undefined
    assert np.isnan(backtest.kupiec(0, 0, 0.99)[0])

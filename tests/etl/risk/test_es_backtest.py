"""ES backtests (etl.risk.es_backtest) on hand-built series, and the model comparison the engine writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

from etl.risk import es_backtest, var
from etl.risk.engine import BACKTEST_CONFIDENCES, METHODS, RiskParams, compute_tables
from tests.etl.risk.test_contributions import BOOK, PORTFOLIOS, QUOTE, _closes


def test_z2_of_a_hand_built_series():
    # 10 days, alpha 10%, VaR 1 and ES 2 every day; two exceedances, losses 3 and 1.5
    losses = np.array([0.5, 3.0, 0.2, -1.0, 0.9, 1.5, 0.0, -0.4, 1.0, 0.3])[:, None]
    var, es = np.ones((10, 1)), np.full((10, 1), 2.0)
    # Z2 = 1 - (3/2 + 1.5/2) / (10 x 0.1) = -1.25 (a loss equal to VaR is not an exceedance)
    assert es_backtest.z2_stat(losses, var, es, 0.1)[0] == pytest.approx(-1.25, rel=1e-15)
    valid = np.ones((10, 1), bool)
    valid[1] = False                                                 # day 2 left out: T = 9
    assert es_backtest.z2_stat(losses, var, es, 0.1, valid)[0] == pytest.approx(1 - 0.75 / 0.9, rel=1e-15)
    # no exceedance at all: Z2 = 1 (ES never reached, the model is conservative)
    assert es_backtest.z2_stat(np.zeros((10, 1)), var, es, 0.1)[0] == 1.0


def test_an_exceedance_against_an_es_forecast_of_no_loss_is_untestable_not_the_best_score():
    # 10 days, alpha 10%, ES 2 every day but day 2's, whose window held gains only (VaR -3, ES -1: the model's tail
    # is a gain); a loss of 3 that day. L / ES = -3 would raise Z2 to 1 + 3 / 1 = 4, above the 1 of no exceedance
    losses = np.array([0.5, 3.0, 0.2, -1.0, 0.9, 0.1, 0.0, -0.4, 1.0, 0.3])[:, None]
    var, es = np.ones((10, 1)), np.full((10, 1), 2.0)
    var[1], es[1] = -3.0, -1.0
    assert np.isnan(es_backtest.z2_stat(losses, var, es, 0.1)[0])
    es[1] = 0.0                                                      # a constant window: ES 0 (was -inf)
    assert np.isnan(es_backtest.z2_stat(losses, var, es, 0.1)[0])
    assert np.isnan(es_backtest.z2_p_value(es_backtest.z2_stat(losses, var, es, 0.1), np.zeros((9, 1)))[0])
    losses[1] = -4.0                                                 # no exceedance that day: the others score
    assert es_backtest.z2_stat(losses, var, es, 0.1)[0] == 1.0
    # a simulated path drawing that day's largest scenario (-1.5 > VaR -3) is untestable too: not counted as
    # at least as extreme as an observed Z2 (p from the other path only)
    draws = sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))   # path 0 draws day 0's top scenario
    tail = np.array([[[-1.5]], [[0.5]]])                              # (T = 2, K = 1, k = 1)
    null = es_backtest.z2_null_drawn(draws, tail, np.array([[-3.0], [1.0]]), np.array([[-1.0], [2.0]]), 0.1,
                                     np.ones((2, 1), bool))
    assert np.isnan(null[0, 0]) and null[1, 0] == 1.0
    assert es_backtest.z2_p_value(np.array([1.0]), null)[0] == 2 / 3


def test_a_realised_loss_after_a_window_of_gains_fails_the_es_test_of_the_scenario_methods():
    """A long book whose first backtest window (20 returns) holds gains only: the historical ES forecast of the
    next day is a gain (negative), and a loss of 5% that day scored Z2 = 51 with p = 1 (a pass) at 99%."""
    days = pd.date_range("2026-01-01", periods=61, freq="D")
    rng = np.random.default_rng(2)
    r = rng.normal(0, 0.02, 60)
    r[:20] = rng.uniform(0.002, 0.02, 20)
    r[20] = -0.05
    closes = pd.DataFrame({"A-USD": 100 * np.r_[1, np.cumprod(1 + r)]}, index=days)
    book = pd.DataFrame({"portfolio_id": ["U1"], "product_id": ["A-USD"], "as_of_date": [days[0]],
                         "quantity": [10.0], "avg_cost": [100.0]})
    tables = compute_tables(closes, {"A-USD": "USD"}, PORTFOLIOS.iloc[:1], book,
                            RiskParams(var_lookback_days=20, backtest_days=60, mc_scenarios=500,
                                       es_simulations=200, es_bootstrap=200))
    bt = tables["var_backtest"]
    first = bt[(bt.method == "hist") & (bt.as_of_date == days[21])]
    assert (first["es_forecast"] < 0).all() and (first["realized_pnl"] < 0).all() and first["is_exception"].all()
    cmp = tables["var_model_comparison"].set_index("method")
    for method in ("hist", "fhs_ewma", "garch_t"):
        assert cmp.loc[method, "z2"].isna().all() and not cmp.loc[method, "pass_z2"].any(), method
        assert not cmp.loc[method, "passes"].any(), method
    assert np.isfinite(cmp.loc["param", "z2"]).all()               # a positive ES every day: scored as before


def test_z2_is_centred_under_the_true_model_and_rejects_a_thin_tailed_one():
    rng = np.random.default_rng(1)
    alpha, t_days = 0.025, 250
    z = stats.norm.ppf(1 - alpha)
    var, es = np.full((t_days, 1), z), np.full((t_days, 1), stats.norm.pdf(z) / alpha)
    paths = rng.standard_normal((4000, t_days, 1))
    assert es_backtest.z2_stat(paths, var, es, alpha).mean() == pytest.approx(0.0, abs=0.02)   # E[Z2] = 0
    sims = rng.standard_normal((999, t_days, 1))
    _, p_true = es_backtest.z2_test(rng.standard_normal((t_days, 1)), var, es, alpha, sims)
    fat = rng.standard_t(3, (t_days, 1)) * 1.2                      # fatter tails than the normal model says
    z2_fat, p_fat = es_backtest.z2_test(fat, var, es, alpha, sims)
    assert p_true[0] > 0.05 and z2_fat[0] < 0 and p_fat[0] < 0.01
    assert p_fat[0] >= 1 / 1000                                      # p = (1 + count) / (M + 1) > 0


def test_exceedance_residuals_by_hand_and_the_bootstrap_mean_test():
    losses = np.array([5.0, 0.1, 7.0, 4.0, 0.3, 6.0, 0.2])[:, None]
    var, es, sd = np.full((7, 1), 3.0), np.full((7, 1), 5.0), np.full((7, 1), 2.0)
    (res,) = es_backtest.exceedance_residuals(losses, var, es, sd)
    np.testing.assert_allclose(res, [(5 - 5) / 2, (7 - 5) / 2, (4 - 5) / 2, (6 - 5) / 2])   # [0, 1, -0.5, 0.5]
    t, p = es_backtest.mean_zero_bootstrap(res, 2000, np.random.default_rng(0))
    assert t == pytest.approx(stats.ttest_1samp(res, 0.0).statistic, rel=1e-12)
    # residuals far above 0 (ES too small) reject; symmetric ones do not; the bootstrap agrees with Student's t
    rng = np.random.default_rng(3)
    high = rng.standard_normal(60) + 0.6
    sym = rng.standard_normal(60)
    for r in (high, sym):
        _, p = es_backtest.mean_zero_bootstrap(r, 4000, np.random.default_rng(5))
        assert p == pytest.approx(stats.ttest_1samp(r, 0.0, alternative="greater").pvalue, abs=0.03)
    assert es_backtest.mean_zero_bootstrap(high, 999, np.random.default_rng(5))[1] < 0.01
    assert np.isnan(es_backtest.mean_zero_bootstrap(np.array([1.0]), 99, rng)[1])   # one exceedance: no test
    out = es_backtest.exceedance_residual_test(losses, var, es, sd, 500, seed=1)
    assert out["n"][0] == 4 and out["mean"][0] == pytest.approx(0.25)


def test_the_engine_compares_every_method_at_every_confidence():
    tables = compute_tables(_closes(), QUOTE, PORTFOLIOS, BOOK,
                            RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=2000,
                                       es_simulations=200, es_bootstrap=200))
    cmp = tables["var_model_comparison"]
    assert len(cmp) == len(PORTFOLIOS) * len(METHODS) * len(BACKTEST_CONFIDENCES)
    assert set(cmp["method"]) == {"hist", "param", "mc", "fhs_ewma", "garch_t", "param_cf", "param_t", "evt_gpd"}
    assert set(cmp["confidence"]) == {0.95, 0.975, 0.99}
    cmp = cmp[cmp["method"] != "evt_gpd"]                         # 60 losses: too few exceedances, no EVT forecast
    assert cmp["es_test_p"].between(0, 1).all() and cmp["kupiec_p"].between(0, 1).all()
    expected = (cmp["pass_kupiec"] & cmp["pass_christoffersen"] & cmp["pass_traffic_light"] & cmp["pass_z2"]
                & cmp["pass_exceedance_residual"])
    pd.testing.assert_series_equal(cmp["passes"], expected, check_names=False)
    # Z2 recomputed from the backtest rows the engine wrote (forecasts against realised PnL)
    bt = tables["var_backtest"]
    row = bt[(bt.portfolio_id == "U1") & (bt.method == "garch_t") & (bt.confidence == 0.975)]
    loss = -row["realized_pnl"].to_numpy()
    hit = loss > row["var_forecast"].to_numpy()
    z2 = 1 - (loss[hit] / row["es_forecast"].to_numpy()[hit]).sum() / (len(row) * 0.025)
    got = cmp.set_index(["portfolio_id", "method", "confidence"]).loc[("U1", "garch_t", 0.975)]
    assert got["z2"] == pytest.approx(z2, rel=1e-12) and got["exceptions"] == hit.sum()
    assert (row["es_forecast"] >= row["var_forecast"]).all()


def test_shared_z2_paths_give_each_series_its_own_paths_p_value_within_the_monte_carlo_error():
    """The engine draws the Z2 paths once per method and level and shares them across portfolios. For each series
    the p-value equals, within its Monte Carlo error, the one from paths of its own (es_backtest.z2_test on
    (M, T, K) simulated losses, the sampler before the sharing): |p_shared - p_own| < 4 sqrt(2 p (1 - p) / M)
    (two independent estimates of p). Scenario model: the engine's own backtest step on random scenario returns;
    its VaR/ES forecasts are exact (a sort of each day's losses)."""
    from etl.risk.engine import _scenario_backtest, _Scenarios

    rng = np.random.default_rng(4)
    t_days, n, a, k, m = 120, 60, 4, 30, 2000
    w = rng.standard_t(4, (t_days, n, a)) * 0.02
    w[:10, :20] = np.nan                                               # short history on the first days
    expo = rng.normal(0, 1000, (t_days, k, a))
    held = np.ones((t_days, k), bool)
    params = RiskParams(es_simulations=m)
    nulls: dict = {}
    forecasts = _scenario_backtest("hist", _Scenarios.of(w), expo, held, np.random.default_rng(9), params, nulls)
    losses = -np.einsum("tna,tka->tnk", w, expo)                      # (T, N, K)
    realized = (losses[np.arange(t_days), rng.integers(20, n, t_days)] * 1.1)   # somewhat fatter than the model
    for c in BACKTEST_CONFIDENCES:
        fc, es = forecasts[("hist", c)]
        for d in range(t_days):
            x = losses[d][~np.isnan(losses[d, :, 0])]
            np.testing.assert_allclose(fc[d], np.quantile(x, c, axis=0), rtol=1e-12)   # losses by einsum
            np.testing.assert_allclose(es[d], [col[col >= q].mean() for col, q in zip(x.T, fc[d], strict=True)],
                                       rtol=1e-12)
        # own paths: each series draws its own valid scenario index every day
        valid_rows = np.where(np.isnan(losses[:, :, 0]), 0, 1)
        n_valid = valid_rows.sum(axis=1)
        idx = n - n_valid[None, :, None] + np.floor(rng.random((m, t_days, k)) * n_valid[None, :, None]).astype(int)
        own = losses[np.arange(t_days)[None, :, None], idx, np.arange(k)[None, None, :]]
        z, p_own = es_backtest.z2_test(realized, fc, es, 1 - c, own)
        p_shared = es_backtest.z2_p_value(z, nulls[("hist", c)])
        bound = 4 * np.sqrt(2 * p_own * (1 - p_own) / m) + 2 / m
        assert (np.abs(p_shared - p_own) < bound).all()
    # location-scale model: param, sigma different per series and day
    sigma = rng.uniform(0.5, 2.0, (t_days, k))
    u = rng.standard_normal((m, t_days))
    for c in BACKTEST_CONFIDENCES:
        fc, es = var.parametric_var_es(sigma, c)
        realized_param = sigma * rng.standard_t(5, (t_days, k))
        z, p_own = es_backtest.z2_test(realized_param, fc, es, 1 - c, sigma * rng.standard_normal((m, t_days, k)))
        unit = var.parametric_var_es(1.0, c)
        shared = es_backtest.z2_null_scaled(u, unit[0], unit[1], 1 - c, held, sigma)
        assert (np.abs(es_backtest.z2_p_value(z, shared) - p_own) < 4 * np.sqrt(2 * p_own * (1 - p_own) / m)
                + 2 / m).all()


def test_tail_methods_shared_z2_paths_match_paths_of_their_own():
    """The fat-tail methods' Z2 paths share one uniform per path and day across portfolios (the loss is each
    portfolio's model quantile at it): each series' p-value equals, within the Monte Carlo error, the one from
    losses drawn for it alone from each day's fitted model."""
    from etl.risk import tails
    from etl.risk.engine import _Scenarios, _tail_backtest

    rng = np.random.default_rng(6)
    t_days, n, a, k, m = 60, 250, 3, 8, 2000
    w = rng.standard_t(4, (t_days, n, a)) * 0.02
    expo = rng.normal(0, 1000, (t_days, k, a))
    held = np.ones((t_days, k), bool)
    nulls: dict = {}
    sc = _Scenarios.of(w)
    sigma = var.portfolio_sigma(sc.cov, np.swapaxes(expo, 1, 2))
    forecasts = _tail_backtest(sc, expo, held, sigma, np.random.default_rng(9),
                               RiskParams(es_simulations=m, tail_refit_days=1), nulls)     # refitted every day
    losses = -np.einsum("tna,tka->tkn", w, expo)                      # (T, K, N)
    realized = -losses[:, :, 0] * 1.2
    for method in tails.METHODS:
        fit = tails.fit(method, losses)
        own = fit.quantile(rng.uniform(0.9, 1.0, (m, t_days, k)))        # the tail draws; the rest stay below VaR
        own = np.where(rng.random((m, t_days, k)) < 0.1, own, -np.inf)
        for c in BACKTEST_CONFIDENCES:
            fc, es = forecasts[(method, c)]
            np.testing.assert_allclose(fit.var_es(c), (fc, es), rtol=1e-6)    # losses rounded otherwise
            z, p_own = es_backtest.z2_test(realized, fc, es, 1 - c, own)
            p_shared = es_backtest.z2_p_value(z, nulls[(method, c)])
            assert (np.abs(p_shared - p_own) < 4 * np.sqrt(2 * p_own * (1 - p_own) / m) + 2 / m).all()


def test_batched_bootstrap_equals_the_one_series_test():
    """Series with the same number of exceedances share resampling indices: each equals mean_zero_bootstrap on
    its residuals with those indices; the t statistic is the series' own."""
    rng = np.random.default_rng(8)
    losses = rng.standard_t(4, (250, 12))
    var_, es, sd = np.full((250, 12), 1.6), np.full((250, 12), 2.4), np.ones((250, 12))
    out = es_backtest.exceedance_residual_test(losses, var_, es, sd, 300, seed=3, max_cells=3000)
    res = es_backtest.exceedance_residuals(losses, var_, es, sd)
    for j, r in enumerate(res):
        assert out["n"][j] == len(r) and out["mean"][j] == pytest.approx(r.mean(), rel=1e-12)
        assert out["t"][j] == pytest.approx(stats.ttest_1samp(r, 0.0).statistic, rel=1e-10)
        assert 0 < out["p"][j] <= 1
    # the series with k exceedances share the indices drawn with the seed (3, k): mean_zero_bootstrap's test
    k = out["n"][0]
    idx = np.random.default_rng((3, int(k))).integers(0, k, size=(300, k))
    for j in [j for j in range(12) if out["n"][j] == k]:
        b = (res[j] - res[j].mean())[idx]
        tb = np.nan_to_num(b.mean(axis=1) / (b.std(axis=1, ddof=1) / np.sqrt(k)))
        assert out["p"][j] == pytest.approx((1 + (tb >= out["t"][j]).sum()) / 301, abs=1e-12)
    # and do not depend on the other series
    alone = es_backtest.exceedance_residual_test(losses[:, :1], var_[:, :1], es[:, :1], sd[:, :1], 300, seed=3)
    assert alone["p"][0] == out["p"][0]

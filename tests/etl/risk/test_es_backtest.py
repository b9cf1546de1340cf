"""ES backtests (etl.risk.es_backtest) on hand-built series, and the model comparison the engine writes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from etl.risk import es_backtest
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
    assert set(cmp["method"]) == {"hist", "param", "mc", "fhs_ewma", "garch_t"}
    assert set(cmp["confidence"]) == {0.95, 0.975, 0.99}
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

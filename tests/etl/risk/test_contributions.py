"""Euler risk contributions and the firm book (etl.risk.contributions, etl.risk.firm) against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.risk import contributions, var
from etl.risk.engine import RiskParams, compute_tables

DAYS = pd.date_range("2025-12-01", "2026-03-31", freq="D")
START = {"BTC-USD": 60000.0, "ETH-BTC": 0.05, "ETH-USD": 3000.0}
VOL = {"BTC-USD": 0.025, "ETH-BTC": 0.02, "ETH-USD": 0.035}
QUOTE = {"BTC-USD": "USD", "ETH-BTC": "BTC", "ETH-USD": "USD"}
PORTFOLIOS = pd.DataFrame({"portfolio_id": ["U1", "U2", "B1"], "name": ["u1", "u2", "b"],
                           "base_currency": ["USD", "USD", "BTC"], "var_limit": [1e12] * 3,
                           "concentration_limit": [1.0] * 3, "drawdown_limit": [1.0] * 3,
                           "var_limit_metric": ["var_99_hist"] * 3})
BOOK = pd.DataFrame({"portfolio_id": ["U1", "U1", "U2", "U2", "B1", "B1"],
                     "product_id": ["BTC-USD", "ETH-USD", "BTC-USD", "ETH-BTC", "ETH-USD", "ETH-BTC"],
                     "as_of_date": pd.to_datetime(["2025-12-01"] * 6), "quantity": [2.0, -30.0, 1.0, 50.0, 20.0, 40.0],
                     "avg_cost": [50000.0, 2500.0, 55000.0, 0.04, 2800.0, 0.05]})
PARAMS = RiskParams(var_lookback_days=60, backtest_days=20, mc_scenarios=2000, es_simulations=50, es_bootstrap=50)


def _closes() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    cols = sorted(START)
    common = rng.standard_normal((len(DAYS), 1)) * 0.015
    r = common + rng.standard_normal((len(DAYS), len(cols))) * np.array([VOL[c] for c in cols])
    return pd.DataFrame(np.array([START[c] for c in cols]) * np.exp(np.cumsum(r, axis=0)), index=DAYS, columns=cols)


@pytest.fixture(scope="module")
def tables():
    return compute_tables(_closes(), QUOTE, PORTFOLIOS, BOOK, PARAMS)


def test_parametric_components_of_a_hand_worked_three_asset_book():
    cov = np.array([[0.04, 0.01, 0.00], [0.01, 0.09, 0.02], [0.00, 0.02, 0.16]])
    e = np.array([[100.0], [50.0], [-20.0]])
    # C e = (4 + 0.5, 1 + 4.5 - 0.4, 1 - 3.2) = (4.5, 5.1, -2.2); e' C e = 450 + 255 + 44 = 749
    z = 2.3263478740408408                                           # N^-1(0.99)
    sigma = np.sqrt(749.0)
    comp, marginal = contributions.parametric(cov, e, 0.99)
    np.testing.assert_allclose(marginal[:, 0], z * np.array([4.5, 5.1, -2.2]) / sigma, rtol=1e-12)
    np.testing.assert_allclose(comp[:, 0], z * np.array([450.0, 255.0, 44.0]) / sigma, rtol=1e-12)
    assert comp.sum() == pytest.approx(z * sigma, rel=1e-12)
    assert comp.sum() == pytest.approx(var.parametric_var_es(var.portfolio_sigma(cov, e), 0.99)[0][0], rel=1e-12)


def test_euler_components_sum_to_the_portfolio_figures_for_many_random_books():
    rng = np.random.default_rng(3)
    r = rng.standard_t(4, (250, 30)) * 0.03
    e = rng.normal(0, 1e6, (30, 200)) * (rng.random((30, 200)) < 0.4)
    e[:, 0] = 0.0                                                    # an empty book: all components 0
    cov = var.covariance(r)
    sigma = var.portfolio_sigma(cov, e)
    losses = var.historical_losses(r, e)
    es_hist = var.var_es_from_losses(losses, (0.95, 0.99))
    for c in (0.95, 0.99):
        comp, _ = contributions.parametric(cov, e, c)
        total = var.parametric_var_es(sigma, c)[0]
        assert np.abs(comp.sum(axis=0) - total).max() <= 1e-9 * np.abs(total).max()
        es_comp = contributions.historical_es(r, e, (c,))[c]
        assert np.abs(es_comp[:, 1:].sum(axis=0) - es_hist[c][1][1:]).max() <= 1e-9 * np.abs(es_hist[c][1]).max()
    assert (comp[:, 0] == 0).all()


def test_historical_component_es_is_each_assets_mean_loss_in_the_tail_scenarios_by_hand():
    rng = np.random.default_rng(8)
    r = rng.standard_normal((101, 3)) * [0.02, 0.03, 0.05]
    e = np.array([1000.0, -400.0, 250.0])
    for c in (0.95, 0.99):
        losses = -(r @ e)
        v = np.quantile(losses, c)                                   # numpy's linear quantile, as documented
        tail = [s for s in range(len(losses)) if losses[s] >= v]
        by_hand = [np.mean([-e[a] * r[s, a] for s in tail]) for a in range(3)]
        got = contributions.historical_es(r, e[:, None], (c,))[c][:, 0]
        np.testing.assert_allclose(got, by_hand, rtol=1e-12)
        assert got.sum() == pytest.approx(np.mean(losses[tail]), rel=1e-12)


def test_engine_contributions_reconcile_to_risk_metrics_and_to_the_firm(tables):
    c, rm, firm = tables["risk_contributions"], tables["risk_metrics"].set_index("portfolio_id"), \
        tables["firm_risk"].iloc[0]
    port = c[c["scope"] == "portfolio"].groupby("portfolio_id").sum(numeric_only=True)
    for comp, total in (("component_var_95_param", "var_95_param"), ("component_var_99_param", "var_99_param"),
                        ("component_es_95_hist", "es_95_hist"), ("component_es_99_hist", "es_99_hist")):
        np.testing.assert_allclose(port[comp], rm.loc[port.index, total], rtol=1e-9)
        assert c.loc[c["scope"] == "firm", comp].sum() == pytest.approx(firm[total], rel=1e-9)
    # a position's firm component = its USD exposure x the firm's marginal VaR of the asset
    f = c[c["scope"] == "firm"]
    np.testing.assert_allclose(f["component_var_99_param"], f["exposure"] * f["marginal_var_99_param"], rtol=1e-12)
    assert set(zip(f["portfolio_id"], f["product_id"], strict=True)) == set(
        zip(BOOK["portfolio_id"], BOOK["product_id"], strict=True))


def test_firm_var_equals_the_standalone_var_of_one_usd_book_holding_every_position(tables):
    closes = _closes()
    merged = BOOK.assign(portfolio_id="ALL").groupby(["portfolio_id", "product_id", "as_of_date"], as_index=False)["quantity"].sum()
    merged["avg_cost"] = 0.0
    one = PORTFOLIOS.iloc[[0]].assign(portfolio_id="ALL", base_currency="USD")
    alone = compute_tables(closes, QUOTE, one, merged, PARAMS)["risk_metrics"].iloc[0]
    firm = tables["firm_risk"].iloc[0]
    for method in ("hist", "param", "mc", "fhs_ewma", "garch_t"):
        for kind in ("var", "es"):
            for c in (95, 99):
                col = f"{kind}_{c}_{method}"
                assert firm[col] == pytest.approx(alone[col], rel=1e-9), col
    assert firm["market_value"] == pytest.approx(alone["market_value"], rel=1e-12)   # gross: before netting
    # diversification: the sum of standalone USD VaRs minus the firm's; parametric VaR is sub-additive
    rm = tables["risk_metrics"].set_index("portfolio_id")
    usd_var = rm.loc[["U1", "U2"], "var_99_hist"].sum()              # USD books: standalone = their own figure
    assert firm["sum_standalone_var_99_hist"] > usd_var               # plus B1's USD VaR
    assert firm["diversification_benefit"] == pytest.approx(firm["sum_standalone_var_99_hist"]
                                                            - firm["var_99_hist"], rel=1e-12)
    assert firm["diversification_benefit_99_param"] >= 0


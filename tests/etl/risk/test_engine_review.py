"""Review (rev-risk): defects of the end-of-day risk figures demonstrated by failing tests (hand-made books,
independent oracles)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.risk.engine import RiskParams, compute_tables

QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "SOL-USD": "USD", "ETH-BTC": "BTC"}


def _closes(days: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    r = rng.standard_t(4, size=(days, 3)) * 0.03
    px = 100 * np.cumprod(1 + r, axis=0)
    idx = pd.date_range("2026-01-01", periods=days, freq="D")
    out = pd.DataFrame({"BTC-USD": px[:, 0] * 300, "ETH-USD": px[:, 1] * 20, "SOL-USD": px[:, 2]}, index=idx)
    out["ETH-BTC"] = out["ETH-USD"] / out["BTC-USD"] * (1 + rng.normal(0, 0.001, days))
    return out


def _portfolios(ids, bases) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"portfolio_id": ids, "name": ids, "base_currency": bases, "var_limit": [1e12] * n,
                         "concentration_limit": [1.0] * n, "drawdown_limit": [1.0] * n,
                         "var_limit_metric": ["var_99_hist"] * n})


def _book(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["portfolio_id", "product_id", "as_of_date", "quantity", "avg_cost"]).assign(
        as_of_date=lambda d: pd.to_datetime(d["as_of_date"]))


def test_garch_backtest_forecasts_do_not_use_returns_after_their_forecast_day_in_a_short_history():
    """docs/risk_conventions.md: the filtered backtest is out of sample, sigma_t from returns before t only.
    With a history shorter than backtest_days + 75 days, GARCH's backcast (0.94^i mean of the FIRST 75 squared
    returns of the whole series, etl.risk.filtered.garch_filter) contains returns realised after early forecast
    days: moving only the as-of close changes garch_t forecasts made days earlier (hist, param, fhs_ewma do not)."""
    closes = _closes(45)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "ETH-USD", "2025-12-01", -30.0, 1.0)])
    params = RiskParams(var_lookback_days=250, backtest_days=250, mc_scenarios=500)
    a = compute_tables(closes, QUOTE, pf, book, params)["var_backtest"]
    bumped = closes.copy()
    bumped.iloc[-1] *= [1.3, 0.8, 1.2, 0.9]
    b = compute_tables(bumped, QUOTE, pf, book, params)["var_backtest"]
    earlier = a["forecast_date"] < closes.index[-2]        # forecasts made before the bumped close was known
    for method in ("hist", "fhs_ewma", "garch_t"):
        sel = earlier & (a["method"] == method)
        assert sel.sum() > 0
        np.testing.assert_array_equal(a.loc[sel, "var_forecast"].to_numpy(), b.loc[sel, "var_forecast"].to_numpy(),
                                      err_msg=f"{method} forecasts moved with a later close")


def test_a_book_closed_out_on_the_as_of_day_is_empty_and_breaches_no_limit():
    """docs/risk_conventions.md "Empty portfolio (no positions, or none held on the as-of day)": a risk row with
    VaR/ES 0 and max drawdown 0, and it breaches no limit. Book X held 1 BTC from 100 down to 50 and its snapshot
    of the as-of day closes it (quantity 0): gross exposure 0 today. The engine still reports max_drawdown -0.5 /
    drawdown_from_peak -0.5 and a drawdown breach (0.5 > 0.3) - one that can never clear while the old peak stays
    in the lookback, since a book holding nothing has no returns."""
    days = pd.date_range("2026-01-01", periods=30, freq="D")
    price = np.r_[[100.0] * 10, np.linspace(95, 50, 19), [50.0]]
    closes = pd.DataFrame({"BTC-USD": price, "ETH-USD": price[::-1] + 1}, index=days)
    pf = _portfolios(["X"], ["USD"]).assign(drawdown_limit=0.3)
    book = _book([("X", "BTC-USD", "2025-12-01", 1.0, 100.0), ("X", "ETH-USD", "2025-12-01", 0.0, 1.0),
                  ("X", "BTC-USD", str(days[-1].date()), 0.0, 100.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "ETH-USD": "USD"}, pf, book,
                       RiskParams(mc_scenarios=500, backtest_days=20))
    risk = t["risk_metrics"].iloc[0]
    assert risk["gross_exposure"] == 0 and t["positions_valued"].empty
    assert t["limit_breaches"].empty, t["limit_breaches"][["limit_type", "metric", "value", "limit_value"]].to_dict("records")
    assert risk["max_drawdown"] == 0


def test_mtd_pnl_of_a_month_the_price_history_starts_inside_is_unknown_not_a_partial_sum():
    """docs/risk_conventions.md: MTD = sum of daily PnL from the first day of D's month to D; the first day of the
    price history has no PnL (unknown, so a run whose history starts later must not replace an earlier run's
    figures with an unknown). Two runs of the same book to the same as-of day, one whose history starts on
    2025-12-01, one on 2026-01-10: for 2026-01-20 both have the same daily_pnl, but the short run's mtd_pnl is
    the sum from 01-11 only (the PnL of 01-01..01-10 treated as 0) - a confident wrong MTD instead of NULL."""
    closes = _closes(80).set_axis(pd.date_range("2025-12-01", periods=80, freq="D"))
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-11-01", 2.0, 1.0), ("U", "ETH-USD", "2025-11-01", -30.0, 1.0)])
    params = RiskParams(var_lookback_days=20, backtest_days=80, mc_scenarios=500)
    long = compute_tables(closes, QUOTE, pf, book, params)["pnl_daily"].set_index("as_of_date")
    short = compute_tables(closes.loc["2026-01-10":], QUOTE, pf, book, params)["pnl_daily"].set_index("as_of_date")
    d = pd.Timestamp("2026-01-20")
    assert short.loc[d, "daily_pnl"] == pytest.approx(long.loc[d, "daily_pnl"], rel=1e-12)
    true_mtd = (2 * closes["BTC-USD"].diff() - 30 * closes["ETH-USD"].diff()).loc["2026-01-01":d].sum()
    assert long.loc[d, "mtd_pnl"] == pytest.approx(true_mtd, rel=1e-9)
    got = short.loc[d, "mtd_pnl"]
    assert np.isnan(got) or got == pytest.approx(true_mtd, rel=1e-9), (got, true_mtd)


def test_the_pnl_of_the_day_a_book_is_closed_out_has_its_pnl_daily_row():
    """docs/risk_conventions.md: daily PnL of D = holdings at the end of D-1 revalued (on a rebalance day the PnL
    belongs to the previous holdings); pnl_daily has a row per portfolio and day of the history window (only the
    price history's first day has none). U holds 2 BTC until its 2026-02-10 snapshot closes the position (and
    buys 1 BTC again on 02-20): the PnL of 02-10 is 2 x (BTC(02-10) - BTC(02-09)) - var_backtest scores it as the
    realised PnL of 02-10 and mtd_pnl counts it - but pnl_daily has no 02-10 row (rows are kept only where the
    book holds something at the END of the day), so pnl_daily no longer sums to mtd_pnl."""
    closes = _closes(60)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "BTC-USD", "2026-02-10", 0.0, 1.0),
                  ("U", "BTC-USD", "2026-02-20", 1.0, 1.0)])
    t = compute_tables(closes, QUOTE, pf, book, RiskParams(var_lookback_days=30, backtest_days=60, mc_scenarios=500))
    pnl = t["pnl_daily"].set_index("as_of_date")
    d = pd.Timestamp("2026-02-10")
    hand = 2 * (closes.loc[d, "BTC-USD"] - closes.loc[d - pd.Timedelta(days=1), "BTC-USD"])
    bt = t["var_backtest"].query("method == 'hist' and confidence == 0.99").set_index("as_of_date")
    assert bt.loc[d, "realized_pnl"] == pytest.approx(hand, rel=1e-12)     # the backtest has it
    feb = pnl.loc["2026-02-01":"2026-02-28"]
    assert feb["daily_pnl"].sum() == pytest.approx(feb["mtd_pnl"].iloc[-1], rel=1e-9), "pnl_daily does not sum to MTD"
    assert d in pnl.index and pnl.loc[d, "daily_pnl"] == pytest.approx(hand, rel=1e-12)


def test_the_stored_drawdown_series_ends_at_drawdown_from_peak_when_the_windows_are_the_same_returns():
    """docs/risk_conventions.md (Drawdown): wealth starts at 1 the day before the first return of the window;
    portfolio_valuation's drawdown is the series over the history window and pages chart it with pnl_daily's
    daily_return "as stored". With backtest_days = var_lookback_days = 30, pnl_daily holds exactly the 30 returns
    of the VaR lookback (days 20..49), so the stored drawdown of the as-of day must equal risk_metrics'
    drawdown_from_peak (the compounded stored returns, by hand: 0.5 / 1 - 1 = -50%). The engine starts the
    history series' wealth ON the first history day (engine.py dd_hist = drawdown_series(port_ret[hist_start +
    1:])), dropping the first stored return: the chart shows 0 where the limit sees -50%."""
    days = pd.date_range("2026-01-01", periods=50, freq="D")
    price = np.r_[[100.0] * 20, [50.0] * 30]                    # falls on day index 20, the first history day
    closes = pd.DataFrame({"BTC-USD": price, "ETH-USD": 10 + np.arange(50.0)}, index=days)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 1.0, 100.0), ("U", "ETH-USD", "2025-12-01", 0.0, 1.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "ETH-USD": "USD"}, pf, book,
                       RiskParams(var_lookback_days=30, backtest_days=30, mc_scenarios=500))
    risk = t["risk_metrics"].iloc[0]
    pnl = t["pnl_daily"].set_index("as_of_date")["daily_return"]
    assert len(pnl) == 30 and risk["lookback_days"] == 30
    by_hand = np.prod(1 + pnl.to_numpy()) - 1                     # no new peak after the start: the drawdown
    assert risk["drawdown_from_peak"] == pytest.approx(by_hand) == pytest.approx(-0.5)
    stored = t["portfolio_valuation"].set_index("as_of_date")["drawdown"]
    assert stored.iloc[-1] == pytest.approx(risk["drawdown_from_peak"]), (stored.iloc[-1], risk["drawdown_from_peak"])


def test_backtest_days_without_a_forecast_do_not_count_in_the_var_backtest_summary():
    """docs/risk_conventions.md (fat tails): evt_gpd is uncomputable (NaN) with fewer than 15 exceedances, "so ...
    a backtest day without it does not count"; Kupiec with n = 0 days is NaN. With a 60-day lookback every evt_gpd
    forecast is NaN, yet var_backtest_summary / var_model_comparison count all 40 held days as days without an
    exception: n_days 40, 0 exceptions, Kupiec p 0.37 at 99% (pass_kupiec True) and a GREEN traffic light for a
    model that never produced a forecast (the ES tests, by contrast, leave those days out: z2 NaN)."""
    closes = _closes(120)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "ETH-USD", "2025-12-01", -30.0, 1.0)])
    t = compute_tables(closes, QUOTE, pf, book, RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=500))
    bt = t["var_backtest"].query("method == 'evt_gpd'")
    assert len(bt) and bt["var_forecast"].isna().all()                   # never a forecast
    comp = t["var_model_comparison"].query("method == 'evt_gpd'").set_index("confidence")
    assert np.isnan(comp.loc[0.99, "z2"])                                 # the ES test leaves the days out
    summary = t["var_backtest_summary"].query("method == 'evt_gpd'").set_index("confidence")
    got = summary.loc[0.99, ["n_days", "exceptions", "kupiec_p", "traffic_light"]].to_dict()
    assert summary.loc[0.99, "n_days"] == 0 and np.isnan(summary.loc[0.99, "kupiec_p"]), got
    assert comp.loc[0.99, "traffic_light"] != "green" and not comp.loc[0.99, "pass_kupiec"], got

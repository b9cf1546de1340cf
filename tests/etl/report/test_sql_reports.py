"""The SQL reports (sql/**/*.sql, run by etl/report/sql_reports.py) on a hand-built gold schema: their figures are
the engine's as stored in gold, never a second computation that disagrees with it."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from etl import db
from etl.db import scratch_database
from etl.report.gold import GoldReader
from etl.report.sql_reports import SQL_DIR, bind
from etl.warehouse import reporting_url
from tests.support.env import pipeline_env
from tests.support.report_sample import AS_OF, book_switched_from_btc_to_usd, create_gold, sample_frames


def _report(url: str, name: str):
    with GoldReader(url) as reader:
        return reader.query(*bind((SQL_DIR / name).read_text(), AS_OF))


@pytest.fixture
def gold(pg_url):
    """gold_with(frames): a scratch database holding these gold frames; its URL."""
    with db.scratch_database(pg_url, "sqlrep") as url:
        yield lambda frames: (create_gold(url, frames), url)[1]


def test_the_concentration_report_lists_the_engines_concentration_breaches_uncomputable_ones_included(gold):
    """P-ALT exceeded its limit on the day (the engine's row); P-CORE's concentration could not be computed (an
    unpriced holding: NaN, NULL in gold), which the engine counts as a breach. The report lists both, with the
    limit the run checked, not the one dim_portfolio holds since (raised after the run)."""
    frames = sample_frames(AS_OF)
    val = frames["fact_portfolio_valuation"]
    core_today = (val["portfolio_id"] == "P-CORE") & (val["as_of_date"] == AS_OF)
    val.loc[core_today, "concentration_pct"] = np.nan
    breaches = frames["fact_limit_breaches"]
    alt = breaches[breaches["limit_type"] == "concentration"].iloc[0]
    core = alt.copy()
    core[["portfolio_id", "value", "limit_value", "breach_kind"]] = ["P-CORE", np.nan, 0.60, "uncomputable"]
    breaches.loc[len(breaches)] = core
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "concentration_limit"] = 0.99
    rows = _report(gold(frames), "risk_exposure/concentration_breaches.sql")
    assert rows["portfolio_id"].tolist() == ["P-CORE", "P-ALT"]   # the uncomputable one first: nothing shows it holds
    got = rows.set_index("portfolio_id")
    assert got.at["P-ALT", "concentration_pct"] == pytest.approx(round(alt["value"], 4))
    assert got.at["P-ALT", "concentration_limit"] == pytest.approx(0.5)
    assert got.at["P-ALT", "excess"] == pytest.approx(round(alt["value"] - 0.5, 4))
    assert got.loc["P-CORE", ["concentration_pct", "excess"]].isna().all()
    assert got["breach_kind"].to_dict() == {"P-CORE": "uncomputable", "P-ALT": "exceeded"}
    held = frames["fact_positions"]
    held = held[(held["portfolio_id"] == "P-CORE") & (held["as_of_date"] == AS_OF)]
    assert got.at["P-CORE", "largest_product_id"] == held.loc[held["market_value"].abs().idxmax(), "product_id"]


def test_the_limit_breach_report_rounds_every_amount_limit_as_money_and_fractions_to_4_decimals(gold):
    """var and lvar limits are amounts in base currency (cents; satoshis in a crypto one), concentration and
    drawdown limits fractions (sql/README.md): an lvar of 0.00123456 BTC is not 0.0012."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "base_currency"] = "BTC"
    breaches = frames["fact_limit_breaches"]
    lvar = breaches.iloc[0].copy()
    lvar[["portfolio_id", "limit_type", "metric", "value", "limit_value"]] = \
        ["P-ALT", "lvar", "lvar_99", 0.00123456, 0.00100001]
    breaches.loc[len(breaches)] = lvar
    rows = _report(gold(frames), "risk_exposure/limit_breaches.sql").set_index(["portfolio_id", "limit_type"])
    assert rows.loc[("P-ALT", "lvar"), ["value", "limit_value"]].tolist() == [0.00123456, 0.00100001]
    var = breaches[breaches["limit_type"] == "var"].iloc[0]
    assert rows.loc[("P-CORE", "var"), "value"] == round(var["value"], 2)                   # a USD book: cents
    conc = breaches[breaches["limit_type"] == "concentration"].iloc[0]
    assert rows.loc[("P-ALT", "concentration"), "value"] == round(conc["value"], 4)


def test_the_backtest_exception_report_counts_only_days_with_a_forecast_as_the_engine_does(gold):
    """A backtest day whose VaR forecast could not be computed (NaN, NULL in gold: e.g. evt_gpd without enough
    exceedances; is_exception false) was not tested: it is neither a day nor a 'no exception' of the report, as it
    is neither in the engine's n_days and exceptions (fact_var_backtest_summary)."""
    from etl.risk.engine import backtest_summary

    frames = sample_frames(AS_OF)
    bt = frames["fact_var_backtest"]
    key = (bt["portfolio_id"] == "P-CORE") & (bt["method"] == "hist") & (bt["confidence"] == 0.99)
    unscored = bt.index[key][:10]
    bt.loc[unscored, ["var_forecast", "is_exception"]] = [np.nan, False]
    summary = backtest_summary(bt.assign(as_of_date=pd.to_datetime(bt["as_of_date"])), pd.Timestamp(AS_OF))
    frames["fact_var_backtest_summary"] = summary.assign(     # the run of the day with these forecasts
        as_of_date=AS_OF, window_start=summary["window_start"].dt.date, window_end=summary["window_end"].dt.date)
    engine = summary.set_index(["portfolio_id", "method", "confidence"])
    rows = _report(gold(frames), "risk_exposure/var_backtest_exceptions.sql").set_index(
        ["portfolio_id", "method", "confidence"])
    for k, row in rows.iterrows():
        n, hits = engine.loc[k, ["n_days", "exceptions"]]
        assert (row["n_days"], row["exceptions"]) == (n, hits), k
        assert row["exception_rate"] == pytest.approx(round(hits / n, 4)), k
    assert rows.loc[("P-CORE", "hist", 0.99), "n_days"] == key.sum() - 10


def test_top_movers_rank_positions_of_books_in_different_currencies_by_their_usd_pnl(pg_url, tmp_path):
    """P-ALT is a BTC book: its positions' market values (and PnL) are in BTC. Ranked as plain numbers beside the USD
    book's, a loss of 0.1 BTC (thousands of USD) ranked as a loss smaller than one USD. Each position's PnL of the
    day in USD is the engine's PnL in the book's currency (for the BTC book: quantity x the move of the price in
    BTC) x the as-of BTC-USD close: the ranking follows it."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "base_currency"] = "BTC"
    prices = frames["fact_price_daily"].assign(price_date=lambda d: pd.to_datetime(d["price_date"]).dt.date)
    close = prices.pivot(index="price_date", columns="product_id", values="close")
    pos = frames["fact_positions"]
    alt = pos["portfolio_id"] == "P-ALT"
    btc = pd.to_datetime(pos["as_of_date"]).dt.date.map(close["BTC-USD"])
    pos.loc[alt, "market_value"] = pos.loc[alt, "market_value"] / btc[alt]        # as the engine: in BTC
    in_btc = close.div(close["BTC-USD"], axis=0)
    days = pd.to_datetime(pos.loc[alt, "as_of_date"]).dt.date
    pos.loc[alt, "daily_pnl"] = [r.quantity * in_btc[r.product_id].diff().get(d)
                                 for r, d in zip(pos[alt].itertuples(), days, strict=True)]
    with scratch_database(pg_url, "sql_top_movers") as url:
        create_gold(url, frames)
        with pipeline_env(url, tmp_path / "data"), GoldReader(reporting_url()) as reader:
            got = reader.query(*bind((SQL_DIR / "daily_pnl" / "top_movers.sql").read_text(), AS_OF))
    day = pos[pd.to_datetime(pos["as_of_date"]).dt.date == AS_OF]
    move = close.loc[AS_OF] - close.loc[AS_OF - timedelta(days=1)]
    move_btc = in_btc.loc[AS_OF] - in_btc.loc[AS_OF - timedelta(days=1)]
    usd = {(r.portfolio_id, r.product_id): r.quantity * (move_btc[r.product_id] * close.at[AS_OF, "BTC-USD"]
                                                         if r.portfolio_id == "P-ALT" else move[r.product_id])
           for r in day.itertuples()}
    gainers = sorted((k for k, v in usd.items() if v > 0), key=lambda k: -usd[k])[:5]
    losers = sorted((k for k, v in usd.items() if v < 0), key=lambda k: usd[k])[:5]
    assert list(zip(got["portfolio_id"], got["product_id"], strict=True)) == gainers + losers
    assert got["position_pnl_usd"].astype(float).tolist() == pytest.approx([usd[k] for k in gainers + losers], abs=0.006)
    assert got.loc[got["portfolio_id"] == "P-ALT", "base_currency"].eq("BTC").all()


def test_the_performance_summary_annualises_the_sharpe_ratio_with_the_risk_runs_annualisation_days(gold):
    """The engine annualises with RISK_ANNUALIZATION_DAYS (risk_returns: x sqrt(periods)) and records it on each
    risk row (`annualization_days`). A desk running 252 saw every volatility of the run at sqrt(252) but the
    report's Sharpe at sqrt(365), a different convention for the same returns: the Sharpe is mean / sample sd of
    gold's daily returns x sqrt(the annualisation days of the as-of risk row)."""
    from etl.risk import risk_returns

    frames = sample_frames(AS_OF)
    frames["fact_risk_metrics"]["annualization_days"] = 252
    rows = _report(gold(frames), "daily_pnl/performance_summary.sql").set_index("portfolio_id")
    pnl = frames["fact_pnl_daily"]
    for pid, mine in pnl.groupby("portfolio_id"):
        r = mine.sort_values("as_of_date")["daily_return"].dropna().to_numpy()
        vol = float(risk_returns.window_vol(r[:, None], len(r), 252)[0])       # the engine's convention
        assert rows.at[pid, "sharpe_annualised"] == pytest.approx(round(r.mean() * 252 / vol, 2), abs=1e-9), pid


def test_top_movers_are_the_engines_position_pnl_of_the_day_which_adds_up_to_the_books_daily_pnl(gold):
    """P-ALT doubles its SOL on the as-of day. The engine's PnL of the day is the previous close's holdings
    revalued (docs/risk_conventions.md "Daily PnL": no trading PnL), so SOL earns 200 x its move, not the 400
    held at the close; the report's positions of a book add up to its daily_pnl (fact_pnl_daily), not to a
    figure of their own."""
    frames = sample_frames(AS_OF)
    pos = frames["fact_positions"]
    sol = (pos["portfolio_id"] == "P-ALT") & (pos["product_id"] == "SOL-USD") & (pos["as_of_date"] == AS_OF)
    pos.loc[sol, "market_value"] = pos.loc[sol, "market_value"] * 2
    pos.loc[sol, "quantity"] = 400.0
    prices = frames["fact_price_daily"].assign(price_date=lambda d: pd.to_datetime(d["price_date"]).dt.date)
    close = prices.pivot(index="price_date", columns="product_id", values="close")
    move = close.loc[AS_OF] - close.loc[AS_OF - timedelta(days=1)]
    rows = _report(gold(frames), "daily_pnl/top_movers.sql").set_index(["portfolio_id", "product_id"])
    assert len(rows) == 5                                                  # every position of the two books
    assert rows.at[("P-ALT", "SOL-USD"), "position_pnl"] == pytest.approx(round(200 * move["SOL-USD"], 2), abs=1e-9)
    pnl = frames["fact_pnl_daily"]
    pnl = pnl[pnl["as_of_date"] == AS_OF].set_index("portfolio_id")["daily_pnl"]
    book = rows["position_pnl"].astype(float).groupby(level="portfolio_id").sum()
    assert book.to_dict() == pytest.approx(pnl.to_dict(), abs=0.011)


def test_the_backtest_exception_report_counts_the_engines_backtest_window_not_all_the_days_gold_holds(gold):
    """Gold keeps the backtest rows of every run (upsert by day), so after more daily runs than RISK_BACKTEST_DAYS it
    holds more days than the engine's window. The engine's summary of the day (fact_var_backtest_summary: the last
    backtest_days days, window_start..window_end) is what the traffic light and the Kupiec test are of; the
    exception report counted every day gold holds, another number for the same backtest. Here the run's window is
    the last 30 of the 44 days in gold: the report says the engine's days and exceptions."""
    from etl.risk.engine import backtest_summary

    frames = sample_frames(AS_OF)
    bt = frames["fact_var_backtest"].assign(as_of_date=lambda d: pd.to_datetime(d["as_of_date"]))
    window = bt[bt["as_of_date"] > pd.Timestamp(AS_OF) - pd.Timedelta(days=30)]
    summary = backtest_summary(window, pd.Timestamp(AS_OF))
    frames["fact_var_backtest_summary"] = summary.assign(
        as_of_date=AS_OF, window_start=summary["window_start"].dt.date, window_end=summary["window_end"].dt.date)
    rows = _report(gold(frames), "risk_exposure/var_backtest_exceptions.sql").set_index(
        ["portfolio_id", "method", "confidence"])
    engine = summary.set_index(["portfolio_id", "method", "confidence"])
    assert len(rows) == len(engine)
    for k, row in rows.iterrows():
        n, hits = engine.loc[k, ["n_days", "exceptions"]]
        assert (row["n_days"], row["exceptions"]) == (n, hits), k
        assert (str(row["first_day"]), str(row["last_day"])) == (str(engine.at[k, "window_start"].date()),
                                                                 str(engine.at[k, "window_end"].date())), k
    assert (rows["n_days"] == 30).all()


def test_the_var_and_drawdown_reports_measure_utilisation_against_the_limits_the_run_checked(gold):
    """dim_portfolio holds today's portfolios.csv. P-CORE's VaR limit was 3,500 when the run flagged its breach
    (fact_limit_breaches: utilisation > 1); raised to 5,000 since, the VaR report of that day showed the same VaR
    under 1 against the new limit while the breach report said over 1; a drawdown limit moved since the same. Each
    report now divides by the limit the run checked (on its risk row), as the engine's breach rows do."""
    frames = sample_frames(AS_OF)
    dim = frames["dim_portfolio"]
    dim.loc[dim["portfolio_id"] == "P-CORE", ["var_limit", "drawdown_limit"]] = [5_000.0, 0.9]
    day = AS_OF - timedelta(days=10)
    frames["fact_drawdowns"] = pd.DataFrame({
        "entity_type": "portfolio", "entity_id": ["P-CORE", "P-ALT"], "portfolio_id": ["P-CORE", "P-ALT"],
        "as_of_date": AS_OF, "max_drawdown": [-0.3, -0.1], "peak_date": day, "trough_date": day + timedelta(days=2),
        "drawdown_days": 2, "recovery_date": None, "recovery_days": None, "is_recovered": False,
        "window_start": AS_OF - timedelta(days=44), "window_end": AS_OF})
    url = gold(frames)
    var = _report(url, "risk_exposure/var_es_by_portfolio.sql").set_index("portfolio_id")
    breach = frames["fact_limit_breaches"].query("limit_type == 'var'").set_index("portfolio_id")
    assert breach.at["P-CORE", "utilisation"] > 1
    assert var.at["P-CORE", "var_limit"] == 3_500.0
    assert var.at["P-CORE", "var_limit_utilisation"] == pytest.approx(round(breach.at["P-CORE", "utilisation"], 4))
    dd = _report(url, "risk_exposure/drawdowns.sql").set_index("portfolio_id")
    risk = frames["fact_risk_metrics"].set_index("portfolio_id")
    assert dd.at["P-CORE", "drawdown_limit"] == 0.25
    assert dd.at["P-CORE", "limit_utilisation"] == pytest.approx(
        round(-risk.at["P-CORE", "drawdown_from_peak"] / 0.25, 4))


def test_the_performance_summarys_total_pnl_is_unknown_over_a_day_whose_pnl_is_unknown(gold):
    """P-CORE's PnL of a day ten days back is unknown (NULL in gold: an unpriced holding, the engine's NaN; its MTD
    unknown for the rest of the month). SQL's sum skips NULLs, so the report's total PnL was the sum of the other
    days, a confident figure that counts the unknown day as 0. The total is now unknown (NULL) as the MTD is, and
    P-ALT's, whose days are all known, is still their sum; best and worst days and the count are of known days."""
    frames = sample_frames(AS_OF)
    pnl = frames["fact_pnl_daily"]
    gap = (pnl["portfolio_id"] == "P-CORE") & (pnl["as_of_date"] == AS_OF - timedelta(days=10))
    pnl.loc[gap, ["daily_pnl", "daily_return"]] = np.nan
    rows = _report(gold(frames), "daily_pnl/performance_summary.sql").set_index("portfolio_id")
    assert pd.isna(rows.at["P-CORE", "total_pnl"])
    alt = pnl[pnl["portfolio_id"] == "P-ALT"]["daily_pnl"]
    assert float(rows.at["P-ALT", "total_pnl"]) == pytest.approx(round(alt.sum(), 2), abs=1e-9)
    core = pnl[pnl["portfolio_id"] == "P-CORE"]["daily_pnl"]
    assert rows.at["P-CORE", "n_days"] == core.notna().sum() == len(core) - 1


def test_top_movers_keep_a_position_whose_base_currency_has_no_close_on_the_day(gold, pg_url):
    """P-ALT is a EUR book. On the as-of day EUR-USD has no daily bar: the engine valued the book at the EUR-USD
    close it carries (the previous day's, docs/risk_conventions.md), but the report converted to USD with the
    as-of close only, got NULL and its ranking dropped the book's positions without a word. The USD figure uses
    the close the engine carries (the latest on or before the day); a book without any EUR-USD close keeps its
    positions in the report, flagged 'no USD rate' with a NULL USD PnL, never left out."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "base_currency"] = "EUR"
    prices = frames["fact_price_daily"]
    eur = prices[prices["product_id"] == "BTC-USD"].assign(product_id="EUR-USD", open=1.1, high=1.1, low=1.1,
                                                           close=1.1, daily_return=0.0)
    day = pd.to_datetime(eur["price_date"]).dt.date
    eur.loc[day == AS_OF - timedelta(days=1), "close"] = 1.25
    frames["fact_price_daily"] = pd.concat([prices, eur[day < AS_OF]], ignore_index=True)   # none on the day
    pos = frames["fact_positions"]
    today = pos[pd.to_datetime(pos["as_of_date"]).dt.date == AS_OF].set_index(["portfolio_id", "product_id"])
    rows = _report(gold(frames), "daily_pnl/top_movers.sql").set_index(["portfolio_id", "product_id"])
    assert sorted(rows.index) == sorted(today.index)                      # every position of the two books
    for (pid, product), row in rows.iterrows():
        rate = 1.25 if pid == "P-ALT" else 1.0
        assert float(row["position_pnl_usd"]) == pytest.approx(today.at[(pid, product), "daily_pnl"] * rate,
                                                               abs=0.006), (pid, product)

    frames["fact_price_daily"] = prices                                   # no EUR-USD close at all
    with scratch_database(pg_url, "sql_no_rate") as url:
        create_gold(url, frames)
        rows = _report(url, "daily_pnl/top_movers.sql").set_index(["portfolio_id", "product_id"])
    assert sorted(rows.index) == sorted(today.index)
    alt = rows.loc["P-ALT"]
    assert (alt["mover"] == "no USD rate").all() and alt["position_pnl_usd"].isna().all()
    assert alt["position_pnl"].astype(float).tolist() == pytest.approx(
        today.loc["P-ALT"].loc[alt.index, "daily_pnl"].tolist(), abs=1e-8)
    assert rows.loc["P-CORE", "mover"].isin(["gainer", "loser"]).all()


def test_the_backtest_exception_report_says_the_engines_counts_of_the_day_as_the_traffic_light_does(gold):
    """Gold's backtest rows are upserted by day: the next day's run rewrites the days of the window they share (a
    restated close, a corrected snapshot). The exception report recounted those rows, so for the same as-of day
    it said 3 exceptions where the engine's test of that day (fact_var_backtest_summary, the traffic light report,
    the Kupiec p-value) said 2: two numbers for one figure. It reads the engine's n_days and exceptions."""
    from etl.risk.engine import backtest_summary

    frames = sample_frames(AS_OF)
    bt = frames["fact_var_backtest"].assign(as_of_date=lambda d: pd.to_datetime(d["as_of_date"]))
    summary = backtest_summary(bt, pd.Timestamp(AS_OF))
    frames["fact_var_backtest_summary"] = summary.assign(
        as_of_date=AS_OF, window_start=summary["window_start"].dt.date, window_end=summary["window_end"].dt.date)
    key = ((bt["portfolio_id"] == "P-CORE") & (bt["method"] == "hist") & (bt["confidence"] == 0.99)
           & ~bt["is_exception"] & bt["var_forecast"].notna())
    rewritten = bt.index[key][3]                                           # a later run's row of a shared day
    frames["fact_var_backtest"].loc[rewritten, "is_exception"] = True
    engine = summary.set_index(["portfolio_id", "method", "confidence"])
    rows = _report(gold(frames), "risk_exposure/var_backtest_exceptions.sql").set_index(
        ["portfolio_id", "method", "confidence"])
    assert len(rows) == len(engine)
    for k, row in rows.iterrows():
        n, hits = engine.loc[k, ["n_days", "exceptions"]]
        assert (row["n_days"], row["exceptions"]) == (n, hits), k
        assert row["exception_rate"] == pytest.approx(round(hits / n, 4)), k


def test_a_past_day_of_a_book_whose_currency_changed_since_is_reported_in_the_currency_of_its_rows(pg_url, tmp_path):
    """P-ALT was a BTC book on AS_OF (the run wrote its figures in BTC, base_currency BTC on every row) and is a USD
    book now (dim_portfolio, portfolios.csv as it is now). The reports took dim_portfolio's currency: its VaR
    breach of 0.00123456 BTC read 0.00 (rounded to the cent), its VaR and PnL were labelled USD, and its positions'
    BTC PnL ranked as USD (rate 1, not the BTC-USD close). Each row is reported in the currency it carries."""
    frames = book_switched_from_btc_to_usd()
    risk = frames["fact_risk_metrics"]
    risk.loc[risk["portfolio_id"] == "P-ALT", ["var_99_hist", "checked_var_limit"]] = [0.00123456, 0.001]
    pnl = frames["fact_pnl_daily"]
    pnl["cumulative_pnl"] = pnl.groupby("portfolio_id")["daily_pnl"].cumsum()
    frames["dim_portfolio"]["base_currency"] = "USD"
    with scratch_database(pg_url, "sql_ccy_changed") as url:
        create_gold(url, frames)
        with pipeline_env(url, tmp_path / "data"), GoldReader(reporting_url()) as reader:
            got = {name: reader.query(*bind((SQL_DIR / name).read_text(), AS_OF)) for name in (
                "risk_exposure/limit_breaches.sql", "risk_exposure/var_es_by_portfolio.sql",
                "daily_pnl/daily_and_mtd.sql", "daily_pnl/top_movers.sql")}
    lb = got["risk_exposure/limit_breaches.sql"].set_index(["portfolio_id", "limit_type"])
    assert lb.loc[("P-ALT", "var"), ["value", "limit_value"]].astype(float).tolist() == [0.00123456, 0.001]
    ves = got["risk_exposure/var_es_by_portfolio.sql"].set_index("portfolio_id")
    assert ves["base_currency"].to_dict() == {"P-CORE": "USD", "P-ALT": "BTC"}
    assert (float(ves.at["P-ALT", "var_99_hist"]), float(ves.at["P-ALT", "var_limit"])) == (0.00123456, 0.001)
    pnl = got["daily_pnl/daily_and_mtd.sql"].set_index("portfolio_id")
    assert pnl["base_currency"].to_dict() == {"P-CORE": "USD", "P-ALT": "BTC"}
    movers = got["daily_pnl/top_movers.sql"]
    btc_close = frames["fact_price_daily"].query("product_id == 'BTC-USD'").set_index("price_date")["close"][AS_OF]
    pos = frames["fact_positions"].query("portfolio_id == 'P-ALT' and as_of_date == @AS_OF").set_index("product_id")
    for r in movers[movers["portfolio_id"] == "P-ALT"].itertuples():
        assert r.base_currency == "BTC"
        assert float(r.position_pnl_usd) == pytest.approx(pos.at[r.product_id, "daily_pnl"] * btc_close, abs=0.006)
    assert (movers["portfolio_id"] == "P-ALT").any()

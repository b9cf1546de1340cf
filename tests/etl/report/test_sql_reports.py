"""The SQL reports of sql/ (etl/report/sql_reports.py runs them) against the real Postgres, on the sample gold."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from etl.db import scratch_database
from etl.report.gold import GoldReader
from etl.report.sql_reports import SQL_DIR, bind
from etl.warehouse import reporting_url
from tests.support.env import pipeline_env
from tests.support.report_sample import AS_OF, create_gold, sample_frames


def test_top_movers_rank_positions_of_books_in_different_currencies_by_their_usd_pnl(pg_url, tmp_path):
    """P-ALT is a BTC book: its positions' market values (and PnL) are in BTC. Ranked as plain numbers beside the USD
    book's, a loss of 0.1 BTC (thousands of USD) ranked as a loss smaller than one USD. Each position's PnL of the
    day in USD is quantity x the close-to-close move of its USD-quoted product: the ranking follows it."""
    frames = sample_frames(AS_OF)
    frames["dim_portfolio"].loc[frames["dim_portfolio"]["portfolio_id"] == "P-ALT", "base_currency"] = "BTC"
    prices = frames["fact_price_daily"].assign(price_date=lambda d: pd.to_datetime(d["price_date"]).dt.date)
    close = prices.pivot(index="price_date", columns="product_id", values="close")
    pos = frames["fact_positions"]
    alt = pos["portfolio_id"] == "P-ALT"
    btc = pd.to_datetime(pos["as_of_date"]).dt.date.map(close["BTC-USD"])
    pos.loc[alt, "market_value"] = pos.loc[alt, "market_value"] / btc[alt]        # as the engine: in BTC
    with scratch_database(pg_url, "sql_top_movers") as url:
        create_gold(url, frames)
        with pipeline_env(url, tmp_path / "data"), GoldReader(reporting_url()) as reader:
            got = reader.query(*bind((SQL_DIR / "daily_pnl" / "top_movers.sql").read_text(), AS_OF))
    day = pos[pd.to_datetime(pos["as_of_date"]).dt.date == AS_OF]
    move = close.loc[AS_OF] - close.loc[AS_OF - timedelta(days=1)]
    usd = {(r.portfolio_id, r.product_id): r.quantity * move[r.product_id] for r in day.itertuples()}
    gainers = sorted((k for k, v in usd.items() if v > 0), key=lambda k: -usd[k])[:5]
    losers = sorted((k for k, v in usd.items() if v < 0), key=lambda k: usd[k])[:5]
    assert list(zip(got["portfolio_id"], got["product_id"], strict=True)) == gainers + losers
    assert got["position_pnl_usd"].astype(float).tolist() == pytest.approx([usd[k] for k in gainers + losers], abs=0.006)
    assert got.loc[got["portfolio_id"] == "P-ALT", "base_currency"].eq("BTC").all()


def test_backtest_exceptions_count_only_the_days_with_a_var_forecast(pg_url, tmp_path):
    """A day without a VaR forecast (NULL: uncomputable that day, which the engine writes) is not a tested day: the
    report counted it in n_days and as a day without exception, so the exception rate was understated and n_days
    disagreed with the engine's backtest summary of the same rows (etl.risk.engine.backtest_summary)."""
    from etl.risk.engine import backtest_summary

    frames = sample_frames(AS_OF)
    bt = frames["fact_var_backtest"]
    first_days = pd.to_datetime(bt["as_of_date"]).dt.date < AS_OF - timedelta(days=30)
    bt.loc[first_days & (bt["method"] == "hist"), ["var_forecast", "is_exception"]] = [None, False]
    with scratch_database(pg_url, "sql_backtest_exceptions") as url:
        create_gold(url, frames)
        with pipeline_env(url, tmp_path / "data"), GoldReader(reporting_url()) as reader:
            got = reader.query(*bind((SQL_DIR / "risk_exposure" / "var_backtest_exceptions.sql").read_text(), AS_OF))
    engine = backtest_summary(bt.assign(as_of_date=pd.to_datetime(bt["as_of_date"]),
                                        var_forecast=bt["var_forecast"].astype(float)), pd.Timestamp(AS_OF))
    keys = ["portfolio_id", "method", "confidence"]
    both = got.astype({"confidence": float}).merge(engine, on=keys, suffixes=("", "_engine"), validate="1:1")
    assert len(both) == len(engine) == 8
    assert both["n_days"].tolist() == both["n_days_engine"].tolist()
    assert both["exceptions"].tolist() == both["exceptions_engine"].tolist()
    assert both["exception_rate"].astype(float).tolist() == pytest.approx(
        (both["exceptions_engine"] / both["n_days_engine"]).tolist(), abs=5e-5)
    hist = both[both["method"] == "hist"]
    assert (hist["first_day"].astype(str) >= str(AS_OF - timedelta(days=30))).all()   # the first day tested

"""Currency conversion with silver bars: direct and inverse pairs, vectorised dates, and the missing-bar error."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from etl.errors import DataNotFoundError
from etl.silver import build, convert, read_bars
from tests.etl.silver.test_incremental import FUTURE, minute_candles, write_batch  # the shared bronze writer

DAY0 = datetime(2026, 1, 10, tzinfo=UTC)


@pytest.fixture
def btc_bars(data_dir):
    """BTC-USD: three daily candles (Jan 10-12) and one hour of minute candles on Jan 12."""
    daily = minute_candles("BTC-USD", DAY0, 3, seed=5, step=86400)
    minutes = minute_candles("BTC-USD", DAY0 + timedelta(days=2), 60, seed=6)
    write_batch(data_dir, pd.concat([daily, minutes]), "b1", DAY0 + timedelta(days=3))
    build(now=FUTURE)
    return read_bars("1d", ["BTC-USD"]).set_index("price_date")["close"], read_bars("5m", ["BTC-USD"])


def test_quote_to_base_and_back_use_the_daily_close(btc_bars):
    closes, _ = btc_bars
    close_10 = closes[pd.Timestamp("2026-01-10")]
    assert convert(2.0, "BTC", "USD", date(2026, 1, 10)) == pytest.approx(2.0 * close_10, rel=1e-15)
    assert convert(1000.0, "USD", "BTC", date(2026, 1, 10)) == pytest.approx(1000.0 / close_10, rel=1e-15)
    assert convert(5.0, "usd", "USD", date(1999, 1, 1)) == 5.0  # same currency: unchanged, no bar needed


def test_daily_close_is_from_the_daily_candle_when_the_minutes_stop_short(btc_bars):
    closes, bars_5m = btc_bars
    # Jan 12's minute candles stop at 01:00 with nothing after them and close elsewhere than its daily candle: the
    # daily bar is the daily candle's (docs/silver.md; a day they cover: test_price_quality.py)
    daily_close = minute_candles("BTC-USD", DAY0, 3, seed=5, step=86400)["close"].iat[2]
    assert closes[pd.Timestamp("2026-01-12")] == daily_close != bars_5m["close"].iat[-1]


def test_vectorised_over_dates_and_amounts(btc_bars):
    closes, _ = btc_bars
    days = [date(2026, 1, 10), date(2026, 1, 11), date(2026, 1, 12)]
    got = convert(np.array([1.0, 2.0, 3.0]), "BTC", "USD", days)
    np.testing.assert_allclose(got, np.array([1.0, 2.0, 3.0]) * closes.to_numpy(), rtol=1e-15)
    # dates as read_bars("1d") returns them (naive midnight datetime64) are read as dates too
    same = convert(1.0, "BTC", "USD", closes.index)
    np.testing.assert_allclose(same, closes.to_numpy(), rtol=1e-15)


def test_timestamps_use_the_5m_bar_containing_them(btc_bars):
    _, bars_5m = btc_bars
    at = pd.Timestamp("2026-01-12 00:17:30", tz="UTC")
    bar = bars_5m.set_index("bucket_start").loc[pd.Timestamp("2026-01-12 00:15", tz="UTC")]
    assert convert(1.0, "BTC", "USD", at) == bar["close"]


def test_eth_btc_amount_converts_to_usd_via_btc_usd(btc_bars):
    closes, _ = btc_bars
    # an ETH-BTC position's value is in BTC (its quote currency); the portfolio's base is USD
    assert convert(0.5, "BTC", "USD", date(2026, 1, 11)) == pytest.approx(0.5 * closes.iat[1], rel=1e-15)


def test_missing_bar_is_an_error_naming_the_pair_and_the_date(btc_bars):
    with pytest.raises(DataNotFoundError, match=r"BTC-USD on 2026-01-09.*2026-01-13"):
        convert([1.0, 1.0, 1.0], "BTC", "USD", [date(2026, 1, 9), date(2026, 1, 10), date(2026, 1, 13)])
    with pytest.raises(DataNotFoundError, match=r"5-minute bar of BTC-USD on 2026-01-12T05:00:00Z"):
        convert(1.0, "USD", "BTC", datetime(2026, 1, 12, 5, 1, tzinfo=UTC))


def test_missing_product_is_an_error_never_a_rate_of_one(btc_bars):
    with pytest.raises(DataNotFoundError, match=r"EUR.*USD-EUR.*instruments\.csv"):
        convert(1.0, "USD", "EUR", date(2026, 1, 10))
    with pytest.raises(DataNotFoundError, match=r"ETH-USD on 2026-01-10"):  # listed, but never ingested
        convert(1.0, "ETH", "USD", date(2026, 1, 10))

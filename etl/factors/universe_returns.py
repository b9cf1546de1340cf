"""Universe returns: every product on one regular time grid, missing buckets left as NaN.

Prices are in USD: close x the same bucket's <QUOTE>-USD close (1 for a USD quote), so the products of every quote
currency are averaged into the factors and ranked on one scale (ETH-BTC moves as ETH does in USD, as in the engine's
correlations); NaN where that close is missing, never a quote-currency figure. A return at bucket t is
usd_close[t] / usd_close[t - 1] - 1 and exists only when both buckets have a candle (and a USD rate): a gap gives
NaN for the missing bucket and the one after it, never a zero or a return computed from a forward-filled price.
Traded value is volume x the USD close.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from etl.errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Universe:
    """Aligned (time x product) matrices; row t is the bucket starting at times[t]."""

    times: pd.DatetimeIndex        # regular grid, UTC
    products: list[str]
    close: np.ndarray              # (T, N) NaN where the bucket has no candle
    returns: np.ndarray            # (T, N) simple USD returns, NaN unless both t-1 and t have a candle
    traded_value: np.ndarray       # (T, N) volume x close in USD, NaN where no candle or no USD rate
    rates: tuple[str, ...] = ()    # conversion pairs (e.g. EUR-USD): regressed on the factors, never building them

    @property
    def assets(self) -> np.ndarray:
        """(N,) True for the products that build the factors (the market, the terciles): all but `rates`."""
        return ~np.isin(np.array(self.products, dtype=object), list(self.rates))


def universe_returns(bars: pd.DataFrame, frequency_s: int, start: pd.Timestamp, end: pd.Timestamp,
                     products: list[str] | None = None, rates: list[str] = ()) -> Universe:
    """Pivot candles/bars (product_id, bucket_start, close, volume) onto the grid [start, end) every frequency_s.

    `rates`: the conversion pairs among the products (a book's EUR-USD): their returns are computed (and
    regressed) like any product's, but they are not assets: the factor model leaves them out of the market and
    the terciles.

    `start` should be a multiple of frequency_s; rows off the grid or outside it are ignored (and logged).
    """
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    times = pd.date_range(start, end, freq=f"{frequency_s}s", inclusive="left", tz="UTC", unit="us")
    products = sorted(products if products is not None else bars["product_id"].unique().tolist())
    n_t, n_p = len(times), len(products)
    close = np.full((n_t, n_p), np.nan)
    volume = np.full((n_t, n_p), np.nan)
    if len(bars) and n_t:
        missing = {"product_id", "bucket_start", "close", "volume"} - set(bars.columns)
        if missing:
            raise ValidationError(f"factor input is missing columns {sorted(missing)}: expected silver candles/bars "
                                  "(product_id, bucket_start, close, volume)")
        col = pd.Index(products).get_indexer(bars["product_id"])
        offset_us = (pd.DatetimeIndex(bars["bucket_start"]).as_unit("us").asi8 - times[0].value // 1000)
        step_us = frequency_s * 1_000_000
        row = offset_us // step_us
        keep = (col >= 0) & (offset_us % step_us == 0) & (row >= 0) & (row < n_t)
        if (~keep).sum():
            log.info("factor input: %d rows outside the grid or the product list ignored", int((~keep).sum()))
        c = bars["close"].to_numpy(dtype=np.float64)[keep]
        v = bars["volume"].to_numpy(dtype=np.float64)[keep]
        bad = ~(np.isfinite(c) & (c > 0) & np.isfinite(v) & (v >= 0))
        if bad.any():  # silver quarantines these; a stray one must not turn into an infinite return
            log.warning("factor input: %d rows with non-positive or non-finite close, or negative or non-finite "
                        "volume treated as missing",
                        int(bad.sum()))
        close[row[keep], col[keep]] = np.where(bad, np.nan, c)
        volume[row[keep], col[keep]] = np.where(bad, np.nan, v)
    usd_close = close * _usd_rates(close, products)
    returns = np.full_like(close, np.nan)
    returns[1:] = usd_close[1:] / usd_close[:-1] - 1.0
    return Universe(times=times, products=products, close=close, returns=returns, traded_value=usd_close * volume,
                    rates=tuple(p for p in products if p in set(rates)))


def _usd_rates(close: np.ndarray, products: list[str]) -> np.ndarray:
    """(T, N) USD per unit of each product's quote currency at each bucket: 1 for USD (and for an id without a
    quote), the bucket's close of <QUOTE>-USD otherwise, NaN when the universe lacks it."""
    index = {p: k for k, p in enumerate(products)}
    rates = np.ones_like(close)
    unknown = []
    for k, p in enumerate(products):
        quote = p.rsplit("-", 1)[1] if "-" in p else "USD"
        if quote != "USD":
            usd = index.get(f"{quote}-USD")
            rates[:, k] = close[:, usd] if usd is not None else np.nan
            if usd is None:
                unknown.append(p)
    if unknown:
        log.warning("factor input: no <QUOTE>-USD prices for %s: their USD returns and traded value are unknown",
                    unknown)
    return rates

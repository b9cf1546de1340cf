"""Currency conversion with silver bars: a quote-currency amount -> another currency (a portfolio's base).

The rate is the close of the product that links the two currencies in the instrument master: BTC -> USD multiplies
by the BTC-USD close, USD -> BTC divides by it. A date uses that day's daily bar, a timestamp the 5-minute bar
containing it. There is no fallback: a missing product or bar raises DataNotFoundError, never a rate of 1.0.
"""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd

from etl.errors import DataNotFoundError, some
from etl.reference import load_instruments
from etl.settings import Settings, get_settings
from etl.silver.read import read_bars


def convert(amount, from_currency: str, to_currency: str, on, settings: Settings | None = None,
            kind: str | None = None):
    """`amount` in `from_currency` expressed in `to_currency`, at the close of the bar on `on`.

    `on`: a date, a timestamp, or an array of either (vectorised; `amount` broadcasts against it). Dates (python
    `date`, datetime64[D], or naive timestamps that are all at midnight, as `read_bars("1d")` returns them) use
    daily bars; other timestamps (naive = UTC) use the 5-minute bar whose bucket contains them. `kind` ("1d" or
    "5m") overrides that choice. Returns a float for scalar inputs, else a float64 numpy array.
    """
    from_currency, to_currency = from_currency.upper(), to_currency.upper()
    scalar = np.ndim(on) == 0 and np.ndim(amount) == 0
    if from_currency == to_currency:
        return amount
    settings = settings or get_settings()
    product, inverted = _linking_product(from_currency, to_currency, settings)
    keys, kind = _bar_keys(on, kind)
    closes = _closes(product, keys, kind, settings)
    rate = 1.0 / closes if inverted else closes
    result = np.asarray(amount, dtype=np.float64) * (rate if np.ndim(on) else rate[0])
    return float(result) if scalar else result


def _linking_product(from_currency: str, to_currency: str, settings: Settings) -> tuple[str, bool]:
    products = set(load_instruments(settings)["product_id"])
    direct, inverse = f"{from_currency}-{to_currency}", f"{to_currency}-{from_currency}"
    if direct in products:
        return direct, False
    if inverse in products:
        return inverse, True
    raise DataNotFoundError(
        f"cannot convert {from_currency} to {to_currency}: neither {direct} nor {inverse} is in the instrument "
        f"master {settings.reference_dir / 'instruments.csv'}; add one of them and ingest its candles")


def _bar_keys(on, kind: str | None) -> tuple[pd.DatetimeIndex, str]:
    if kind not in (None, "1d", "5m"):
        raise ValueError(f"convert kind {kind!r}: expected '1d' or '5m'")
    values = list(on) if np.ndim(on) else [on]
    as_dates = kind == "1d" or (kind is None and all(
        isinstance(v, date) and not isinstance(v, datetime) for v in values))
    index = pd.DatetimeIndex(pd.to_datetime(values))
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    elif kind is None and not as_dates:
        as_dates = bool((index == index.normalize()).all())
    return (index.normalize(), "1d") if as_dates else (index.floor("5min"), "5m")


def _closes(product: str, keys: pd.DatetimeIndex, kind: str, settings: Settings) -> np.ndarray:
    if kind == "1d":
        bars = read_bars("1d", [product], start=keys.min().date(), end=keys.max().date(), settings=settings)
        index = pd.DatetimeIndex(bars["price_date"])
    else:
        bars = read_bars("5m", [product], start=keys.min().tz_localize("UTC"), end=keys.max().tz_localize("UTC"),
                         settings=settings)
        index = pd.DatetimeIndex(bars["bucket_start"]).tz_convert("UTC").tz_localize(None)
    position = index.get_indexer(keys)
    missing = keys[position < 0].unique()
    if len(missing):
        shown = some(str(k.date()) if kind == "1d" else k.isoformat() + "Z" for k in missing)
        label = "daily" if kind == "1d" else "5-minute"
        raise DataNotFoundError(
            f"no {label} bar of {product} on {shown}: needed to convert between "
            f"{product.split('-')[0]} and {product.split('-')[1]}; ingest {product} candles covering those "
            f"{'dates' if kind == '1d' else 'times'} and run `python -m etl silver`")
    return bars["close"].to_numpy(dtype=np.float64)[position]

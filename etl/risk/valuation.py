"""Holdings, valuation, exposures and daily PnL (pure numpy).

Shapes: T days, P portfolios, A assets. Prices are in the portfolio's base currency (`close * fx`), so every amount
here is in base currency. Positions are snapshots carried forward (the holdings on day D are the portfolio's latest
snapshot dated <= D); a product missing from a later snapshot is closed (quantity 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def carry_forward(snapshot_days: np.ndarray, has_snapshot: np.ndarray, values: np.ndarray,
                  days: np.ndarray) -> np.ndarray:
    """Values of each portfolio's latest snapshot on or before each day.

    snapshot_days (K,) sorted ascending; has_snapshot (K, P) bool; values (K, P, A) (0 where not held);
    days (T,) comparable with snapshot_days. Returns (T, P, A), zeros before a portfolio's first snapshot.
    """
    k, p = has_snapshot.shape
    idx = np.where(has_snapshot, np.arange(k)[:, None], -1)
    latest = np.maximum.accumulate(idx, axis=0)                      # (K, P): last snapshot index so far
    day_k = np.searchsorted(snapshot_days, days, side="right") - 1   # (T,): last snapshot date <= day
    pick = np.where(day_k[:, None] >= 0, latest[np.maximum(day_k, 0)], -1)  # (T, P)
    out = values[np.maximum(pick, 0), np.arange(p)[None, :]]        # (T, P, A)
    return np.where((pick >= 0)[..., None], out, 0.0)


@dataclass(frozen=True)
class Valuation:
    market_value: np.ndarray     # (T, P, A) quantity x close, base currency
    unrealized_pnl: np.ndarray   # (T, P, A) (close - avg_cost) x quantity, base currency


def value_positions(quantity: np.ndarray, avg_cost: np.ndarray, close: np.ndarray, fx: np.ndarray) -> Valuation:
    """quantity, avg_cost (T, P, A) (avg_cost in the product's quote currency); close (T, A) in quote currency;
    fx (T, P, A) or broadcastable: quote -> base currency rate of the day."""
    mv = quantity * close[:, None, :] * fx
    upnl = quantity * (close[:, None, :] - avg_cost) * fx
    return Valuation(mv, upnl)


def exposures(market_value: np.ndarray) -> dict[str, np.ndarray]:
    """Portfolio exposures over the last axis (assets): gross, net, long, short (a positive amount),
    concentration_pct = largest single-asset |market value| / gross (NaN for an empty book)."""
    gross = np.abs(market_value).sum(axis=-1)
    long_ = np.clip(market_value, 0.0, None).sum(axis=-1)
    short = -np.clip(market_value, None, 0.0).sum(axis=-1)
    largest = np.abs(market_value).max(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = np.where(gross > 0, largest / np.where(gross > 0, gross, 1.0), np.nan)
    return {"gross_exposure": gross, "net_exposure": market_value.sum(axis=-1), "long_exposure": long_,
            "short_exposure": short, "concentration_pct": conc}


def daily_pnl(quantity: np.ndarray, price_base: np.ndarray) -> np.ndarray:
    """PnL of day t = holdings at the end of t-1 revalued: sum_a q[t-1] * (price[t] - price[t-1]).

    quantity (T, P, A); price_base (T, P, A) or (T, 1, A): close converted to base currency on each day.
    Returns (T, P) with NaN on the first day (no previous close). No trading PnL: trades are not modelled.
    """
    pnl = np.full(quantity.shape[:2], np.nan)
    pnl[1:] = (quantity[:-1] * np.diff(price_base, axis=0)).sum(axis=-1)
    return pnl


def month_to_date(pnl: np.ndarray, month_id: np.ndarray) -> np.ndarray:
    """Cumulative PnL since the first day of each day's month. pnl (T, P); month_id (T,) e.g. year*12+month,
    non-decreasing. An unknown (NaN) PnL makes the rest of its month unknown: the month of the history's first day
    (no previous close) has no MTD, not the sum of the days the history happens to hold."""
    def month_sums(x: np.ndarray) -> np.ndarray:
        cs = np.cumsum(x, axis=0)
        return cs - np.where(start[:, None] > 0, cs[np.maximum(start - 1, 0)], 0)

    first = np.r_[True, month_id[1:] != month_id[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(month_id)), 0))   # first row of the month
    unknown = np.isnan(pnl)
    return np.where(month_sums(unknown.astype(np.int64)) > 0, np.nan, month_sums(np.where(unknown, 0.0, pnl)))


def portfolio_returns(pnl: np.ndarray, gross_exposure: np.ndarray) -> np.ndarray:
    """Return on gross capital: r[t] = pnl[t] / gross[t-1] (NaN when the book was empty). Equals the usual
    market-value return for a long-only book and stays defined for hedged books whose net value is near zero."""
    r = np.full(pnl.shape, np.nan)
    prev = gross_exposure[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        r[1:] = np.where(prev > 0, pnl[1:] / np.where(prev > 0, prev, 1.0), np.nan)
    return r

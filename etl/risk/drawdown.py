"""Drawdowns from daily simple returns (pure numpy; time down axis 0, one column per portfolio or asset).

Wealth starts at 1 on the day before the first return (so a first-day loss counts, as in empyrical's
drawdown_series); drawdown = wealth / running peak - 1 (<= 0); max drawdown = its minimum (a negative fraction).
Indices refer to the wealth series: 0 = the start, i = after the i-th return.
Wealth compounded from returns carries rounding (100 -> 97 -> 100 gives 0.9999999999999999): a wealth within
REL_TOL of its running peak is at the peak (drawdown 0, recovered), never in a drawdown of 1e-16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REL_TOL = 1e-12   # relative rounding of compounded wealth; far below any move (a thousandth of a cent on a billion)


def wealth_index(returns: np.ndarray) -> np.ndarray:
    """(T, K) returns (NaN = flat day) -> (T+1, K) wealth starting at 1."""
    r = np.asarray(returns, dtype="float64")
    w = np.empty((r.shape[0] + 1,) + r.shape[1:])
    w[0] = 1.0
    np.add(r, 1.0, out=w[1:])
    missing = np.isnan(r)
    if missing.any():
        w[1:][missing] = 1.0                                          # a missing return is a flat day
    np.cumprod(w[1:], axis=0, out=w[1:])
    return w


def _drawdowns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(drawdowns, running peak) of a wealth series; within REL_TOL of the peak is 0."""
    running = np.maximum.accumulate(w, axis=0)
    dd = w / running - 1.0
    return np.where(dd > -REL_TOL, 0.0, dd), running


def drawdown_series(returns: np.ndarray) -> np.ndarray:
    """(T, K) returns -> (T+1, K) drawdowns (<= 0)."""
    return _drawdowns(wealth_index(returns))[0]


@dataclass(frozen=True)
class MaxDrawdown:
    max_drawdown: np.ndarray   # (K,) negative fraction (0 = never below a previous peak)
    peak: np.ndarray           # (K,) wealth index of the peak before the trough
    trough: np.ndarray         # (K,) wealth index of the trough
    recovery: np.ndarray       # (K,) first index after the trough back at the peak level; -1 = not recovered


def max_drawdown(returns: np.ndarray) -> MaxDrawdown:
    """Maximum drawdown with peak, trough and recovery indices, for every column at once."""
    w = wealth_index(returns)
    dd, running = _drawdowns(w)
    low = dd.min(axis=0)
    trough = (dd - low[None, :] < REL_TOL).argmax(axis=0)             # first day of the deepest point (rounding:
    #                                                                    a later low within REL_TOL is the same one)
    cols = np.arange(w.shape[1])
    rows = np.arange(w.shape[0])[:, None]
    level = running[trough, cols]                                     # the peak level before the trough
    at_level = w / level[None, :] - 1.0 > -REL_TOL                   # at the peak level, as _drawdowns
    peak = at_level.argmax(axis=0)              # first day wealth reached that level (a later rounding high is not)
    back = (rows > trough[None, :]) & at_level                        # back at the peak
    recovery = np.where(back.any(axis=0), back.argmax(axis=0), -1)
    recovery = np.where(low < 0, recovery, -1)
    return MaxDrawdown(low, peak, trough, recovery)

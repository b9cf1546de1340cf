"""VaR backtest statistics (pure numpy/scipy; one column per series, e.g. portfolio x method x confidence).

An exception is a day whose realised loss exceeds the VaR forecast made at the previous close: -pnl > var.
- Kupiec proportion of failures: LR = -2 ln[(1-p)^(n-x) p^x / ((1-x/n)^(n-x) (x/n)^x)] ~ chi2(1), p = 1 - confidence.
- Christoffersen independence: first-order Markov transitions n00, n01, n10, n11 of the exception indicator;
  LR = -2 ln[L(pi) / L(pi0, pi1)] ~ chi2(1). Conditional coverage LR_cc = LR_pof + LR_ind ~ chi2(2).
- Basel traffic light from the binomial CDF of the exception count: green while P(X <= x) < 95%, red from
  99.99%, yellow between; for 250 days at 99% this is the Basel table (green 0-4, yellow 5-9, red 10+). No day
  scored (n = 0): no light (None), as the tests are NaN.
0 ln 0 is taken as 0 (scipy.special.xlogy), so zero or all exceptions are fine.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

GREEN_BELOW = 0.95
RED_FROM = 0.9999


def exceptions(var_forecast: np.ndarray, realized_pnl: np.ndarray) -> np.ndarray:
    """True where the realised loss exceeds the forecast VaR (NaN forecasts or PnL are never exceptions)."""
    with np.errstate(invalid="ignore"):
        return -np.asarray(realized_pnl) > np.asarray(var_forecast)


def _loglik(n_no: np.ndarray, n_yes: np.ndarray, p: np.ndarray) -> np.ndarray:
    return special.xlogy(n_no, 1.0 - p) + special.xlogy(n_yes, p)


def kupiec(n: np.ndarray, x: np.ndarray, confidence: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kupiec POF likelihood ratio and p-value for x exceptions in n days."""
    n = np.asarray(n, dtype="float64")
    x = np.asarray(x, dtype="float64")
    p = 1.0 - np.asarray(confidence, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = np.where(n > 0, x / np.where(n > 0, n, 1.0), np.nan)
    lr = -2.0 * (_loglik(n - x, x, p) - _loglik(n - x, x, phat))
    lr = np.maximum(lr, 0.0)
    return lr, stats.chi2.sf(lr, 1)


def transition_counts(hits: np.ndarray) -> tuple[np.ndarray, ...]:
    """n00, n01, n10, n11 of (T, K) boolean exception indicators (n01 = no exception then an exception)."""
    h = np.asarray(hits, dtype=bool)
    if h.ndim == 1:
        h = h[:, None]
    prev, cur = h[:-1], h[1:]
    return tuple((a & b).sum(axis=0).astype("float64") for a, b in
                 ((~prev, ~cur), (~prev, cur), (prev, ~cur), (prev, cur)))


def christoffersen_counts(n00, n01, n10, n11) -> tuple[np.ndarray, np.ndarray]:
    """Independence LR and p-value from transition counts."""
    n00, n01, n10, n11 = (np.asarray(v, dtype="float64") for v in (n00, n01, n10, n11))
    with np.errstate(invalid="ignore", divide="ignore"):
        pi0 = np.where(n00 + n01 > 0, n01 / (n00 + n01), 0.0)
        pi1 = np.where(n10 + n11 > 0, n11 / (n10 + n11), 0.0)
        total = n00 + n01 + n10 + n11
        pi = np.where(total > 0, (n01 + n11) / total, 0.0)
    restricted = _loglik(n00 + n10, n01 + n11, pi)
    unrestricted = _loglik(n00, n01, pi0) + _loglik(n10, n11, pi1)
    lr = np.maximum(-2.0 * (restricted - unrestricted), 0.0)
    return lr, stats.chi2.sf(lr, 1)


def christoffersen(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independence LR and p-value from (T, K) boolean exception indicators (one column per series)."""
    return christoffersen_counts(*transition_counts(hits))


def conditional_coverage(lr_pof: np.ndarray, lr_ind: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lr = np.asarray(lr_pof) + np.asarray(lr_ind)
    return lr, stats.chi2.sf(lr, 2)


def traffic_light(x: np.ndarray, n: np.ndarray, confidence: float | np.ndarray) -> np.ndarray:
    """'green' | 'yellow' | 'red' from the binomial CDF of the exception count; None without a scored day (the CDF
    of 0 in 0 days is 1, which would read as red: a model rejected over no data)."""
    n = np.asarray(n)
    cdf = stats.binom.cdf(np.asarray(x), n, 1.0 - np.asarray(confidence, dtype="float64"))
    light = np.where(cdf < GREEN_BELOW, "green", np.where(cdf < RED_FROM, "yellow", "red")).astype(object)
    return np.where(n > 0, light, None)

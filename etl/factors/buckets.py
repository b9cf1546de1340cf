"""Tercile membership per style, formed on a window that ends where its holding period starts (no look-ahead).

Holding periods are consecutive blocks of `holding` grid rows: period p holds rows [p*holding, (p+1)*holding).
Its members are ranked on the `formation` rows just before it, [p*holding - formation, p*holding) (shorter at the
very start of the grid), so nothing from the holding period or later is used. Signals:
- liquidity: average traded value (volume x close) over the formation window;
- volatility: beta of the product's returns to the equal-weighted market return over the formation window;
- momentum: sum over the lookbacks h (e.g. 60, 120, 180, 360, 720 rows) of the product's summed returns over the
  last h rows of the formation window (missing returns count as zero).
A product is ranked when it has at least `min_obs` returns in the formation window and a finite signal. Ranks
ascend with the signal (ties broken by product order); bucket = floor(3 * rank / n_ranked): 0 low, 1 mid, 2 high.
Fewer than 3 ranked products leave the period unassigned (-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUPS = ("liquidity", "volatility", "momentum")
BUCKETS = ("low", "mid", "high")


@dataclass(frozen=True)
class Membership:
    holding: int
    formation: int
    signal: np.ndarray   # (G, P, N) formation signal per group, NaN where not ranked
    rank: np.ndarray     # (G, P, N) 0-based rank among ranked products, -1 where not ranked
    bucket: np.ndarray   # (G, P, N) 0 low, 1 mid, 2 high, -1 unassigned
    n_ranked: np.ndarray  # (G, P)

    @property
    def n_periods(self) -> int:
        return self.bucket.shape[1]

    def per_row(self, group: int, n_rows: int) -> np.ndarray:
        """(n_rows, N) bucket of each product at each grid row, from the period holding that row."""
        return self.bucket[group][np.arange(n_rows) // self.holding]


def windowed(values: np.ndarray, ends: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the finite values in rows [end - length, end) for each end: shapes (len(ends), N)."""
    finite = np.isfinite(values)
    zero = np.zeros((1, values.shape[1]))
    csum = np.concatenate([zero, np.cumsum(np.where(finite, values, 0.0), axis=0)])
    ccount = np.concatenate([zero, np.cumsum(finite, axis=0)])
    lo = np.maximum(ends - length, 0)
    return csum[ends] - csum[lo], ccount[ends] - ccount[lo]


def signals(returns: np.ndarray, traded_value: np.ndarray, market: np.ndarray, ends: np.ndarray,
            formation: int, momentum_lookbacks: tuple[int, ...], min_obs: int) -> np.ndarray:
    """(G, P, N) formation signals for the windows ending (exclusive) at `ends`; NaN where not rankable."""
    _, n_returns = windowed(returns, ends, formation)
    enough = n_returns >= min_obs

    tv_sum, tv_count = windowed(traded_value, ends, formation)
    with np.errstate(invalid="ignore", divide="ignore"):
        liquidity = tv_sum / tv_count

        # beta to the market on rows where both returns exist
        both = np.isfinite(returns) & np.isfinite(market)[:, None]
        r = np.where(both, returns, np.nan)
        m = np.where(both, market[:, None], np.nan)
        s_r, count = windowed(r, ends, formation)
        s_m, _ = windowed(m, ends, formation)
        s_rm, _ = windowed(r * m, ends, formation)
        s_mm, _ = windowed(m * m, ends, formation)
        var_m = s_mm - s_m * s_m / count
        volatility = (s_rm - s_r * s_m / count) / var_m
        volatility = np.where(var_m > 0, volatility, np.nan)

    momentum = sum(windowed(returns, ends, h)[0] for h in momentum_lookbacks)   # h <= formation (factor_model)
    out = np.stack([liquidity, volatility, momentum])
    return np.where(enough[None] & np.isfinite(out), out, np.nan)


def terciles(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank the last axis (products) of `signal`; returns rank, bucket (-1 unassigned), n_ranked."""
    ranked = np.isfinite(signal)
    order = np.argsort(np.where(ranked, signal, np.inf), axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(signal.shape[-1]), axis=-1)
    n_ranked = ranked.sum(axis=-1)
    bucket = (3 * rank) // np.maximum(n_ranked, 1)[..., None]
    assigned = ranked & (n_ranked >= 3)[..., None]
    return np.where(ranked, rank, -1), np.where(assigned, bucket, -1), n_ranked


def form_buckets(returns: np.ndarray, traded_value: np.ndarray, market: np.ndarray, holding: int, formation: int,
                 momentum_lookbacks: tuple[int, ...], min_obs: int) -> Membership:
    """Membership for every holding period of the grid (returns and traded_value are (T, N))."""
    n_periods = -(-returns.shape[0] // holding)
    ends = np.arange(n_periods) * holding
    signal = signals(returns, traded_value, market, ends, formation, momentum_lookbacks, min_obs)
    rank, bucket, n_ranked = terciles(signal)
    return Membership(holding=holding, formation=formation, signal=signal, rank=rank, bucket=bucket,
                      n_ranked=n_ranked)

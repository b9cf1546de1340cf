"""The factor model on a Universe: factor returns from tercile buckets, then rolling exposures per product.

Factors (return series on the universe grid):
- market: equal-weighted average return of the products with a return in that bucket;
- market_vw: the same weighted by each product's average traded value over the formation window (known before
  the holding period, so no look-ahead);
- <group>_<low|mid|high>: equal-weighted average return of the bucket's members, for liquidity, volatility and
  momentum;
- <group>_hml: high minus low of that group.
Exposures regress each product on REGRESSION_FACTORS = market plus the three high-minus-low spreads. The market
is (near enough, exactly when buckets are full and equal) the average of any group's three buckets, so regressing
on market and all buckets would be singular; market + one spread per group keeps one independent direction per
group. Any window that still ends up rank-deficient is solved by rolling_ols' pseudo-inverse fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from etl.errors import ConfigError
from etl.factors.buckets import BUCKETS, GROUPS, Membership, form_buckets
from etl.factors.rolling_ols import rolling_ols
from etl.factors.universe_returns import Universe
from etl.settings import Settings

# Defaults of the settings FACTOR_FORMATION_MINUTES, FACTOR_HOLDING_MINUTES, FACTOR_MOMENTUM_MINUTES. Buckets are formed on the previous UTC day and held for the next one, so membership has
# one row per day x factor x product (the warehouse key); the formation day covers the longest momentum lookback.
FORMATION_MINUTES = 1440
HOLDING_MINUTES = 1440
MOMENTUM_MINUTES = (60, 120, 180, 360, 720)
REGRESSION_FACTORS = ("market", "liquidity_hml", "volatility_hml", "momentum_hml")
FACTOR_NAMES = ("market", "market_vw",
                *(f"{g}_{b}" for g in GROUPS for b in (*BUCKETS, "hml")))


@dataclass(frozen=True)
class FactorConfig:
    """All lengths in grid rows except where named minutes."""

    frequency_s: int = 60
    window: int = 1440
    min_obs: int = 60
    formation_minutes: int = FORMATION_MINUTES
    holding_minutes: int = HOLDING_MINUTES
    momentum_minutes: tuple[int, ...] = MOMENTUM_MINUTES
    regression_factors: tuple[str, ...] = REGRESSION_FACTORS

    @classmethod
    def from_settings(cls, settings: Settings) -> FactorConfig:
        return cls(frequency_s=settings.factor_frequency_s, window=settings.factor_window,
                   min_obs=settings.factor_min_obs, formation_minutes=settings.factor_formation_minutes,
                   holding_minutes=settings.factor_holding_minutes,
                   momentum_minutes=settings.factor_momentum_minutes)

    def rows(self, minutes: int) -> int:
        return max(1, minutes * 60 // self.frequency_s)

    @property
    def holding(self) -> int:
        return self.rows(self.holding_minutes)

    @property
    def formation(self) -> int:
        return self.rows(self.formation_minutes)

    @property
    def momentum(self) -> tuple[int, ...]:
        return tuple(self.rows(m) for m in self.momentum_minutes)

    @property
    def warmup_rows(self) -> int:
        """History needed before the first output row for full formation and regression windows."""
        return self.formation + self.window


@dataclass(frozen=True)
class Exposures:
    products: list[str]
    factors: tuple[str, ...]
    beta: np.ndarray           # (T, N, K)
    alpha: np.ndarray          # (T, N)
    r_squared: np.ndarray      # (T, N)
    r_squared_adj: np.ndarray  # (T, N)
    n_obs: np.ndarray          # (T, N)
    rank_deficient: np.ndarray  # (T, N)


@dataclass(frozen=True)
class FactorResult:
    universe: Universe
    config: FactorConfig
    factor_names: tuple[str, ...]
    factor_returns: np.ndarray  # (T, F)
    membership: Membership
    exposures: Exposures
    extra: dict = field(default_factory=dict)

    def factor(self, name: str) -> np.ndarray:
        return self.factor_returns[:, self.factor_names.index(name)]


def _mean_where(values: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Row-wise (weighted) mean of values over mask & finite; NaN where nothing qualifies."""
    use = mask & np.isfinite(values)
    w = use.astype(np.float64) if weights is None else np.where(use & np.isfinite(weights), weights, 0.0)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.where(use, values, 0.0) * w).sum(axis=1) / total, np.nan)


def factor_returns(universe: Universe, config: FactorConfig) -> tuple[np.ndarray, Membership]:
    """(T, len(FACTOR_NAMES)) factor returns and the membership they were built from."""
    if config.formation < config.min_obs:  # no product could ever be ranked: every spread undefined, no beta
        raise ConfigError(f"factor buckets: FACTOR_FORMATION_MINUTES={config.formation_minutes} is {config.formation} "
                          f"grid rows at FACTOR_FREQUENCY_S={config.frequency_s}, fewer than the FACTOR_MIN_OBS="
                          f"{config.min_obs} returns a product needs there to be ranked: lengthen the formation window "
                          "or lower FACTOR_MIN_OBS")
    if max(config.momentum) > config.formation:  # the signal would be cut to the formation window, not as configured
        raise ConfigError(f"factor buckets: FACTOR_MOMENTUM_MINUTES={','.join(map(str, config.momentum_minutes))} "
                          f"looks back further than FACTOR_FORMATION_MINUTES={config.formation_minutes}, the window "
                          "members are ranked on: lengthen the formation window or shorten the lookbacks")
    # the assets build the factors; a conversion pair (a currency rate) is regressed on them but in no average
    r = np.where(universe.assets[None, :], universe.returns, np.nan)
    everyone = np.ones_like(r, dtype=bool)
    market = _mean_where(r, everyone)
    membership = form_buckets(r, universe.traded_value, market, config.holding, config.formation,
                              config.momentum, config.min_obs)
    columns = {"market": market}
    liquidity = membership.signal[GROUPS.index("liquidity")]  # average traded value over the formation window
    weights = liquidity[np.arange(r.shape[0]) // config.holding]
    columns["market_vw"] = _mean_where(r, np.isfinite(weights), weights)
    for g, group in enumerate(GROUPS):
        bucket = membership.per_row(g, r.shape[0])
        for b, name in enumerate(BUCKETS):
            columns[f"{group}_{name}"] = _mean_where(r, bucket == b)
        columns[f"{group}_hml"] = columns[f"{group}_high"] - columns[f"{group}_low"]
    return np.column_stack([columns[name] for name in FACTOR_NAMES]), membership


def exposures(universe: Universe, factors: np.ndarray, config: FactorConfig) -> Exposures:
    """Rolling OLS of each product's returns on the regression factors (plus a constant).

    Expanding at the start of the grid: a window shorter than config.window because history is short behaves like
    one with gaps (reported through n_obs); below config.min_obs observations the estimates are NaN.
    """
    X = factors[:, [FACTOR_NAMES.index(f) for f in config.regression_factors]]
    n_t, n_p, k = X.shape[0], len(universe.products), X.shape[1]
    beta = np.full((n_t, n_p, k), np.nan)
    alpha = np.full((n_t, n_p), np.nan)
    r2, r2_adj = np.full((n_t, n_p), np.nan), np.full((n_t, n_p), np.nan)
    n_obs = np.zeros((n_t, n_p), dtype=np.int64)
    deficient = np.zeros((n_t, n_p), dtype=bool)
    min_obs = max(config.min_obs, k + 1)                    # the fewest a window may rest on, and >= the parameters
    if min_obs > config.window:  # no window could hold them: refuse, rather than estimate on fewer than the minimum
        raise ConfigError(f"factor exposures: FACTOR_MIN_OBS={config.min_obs} (at least {k + 1}: {k} factors and "
                          f"the constant) exceeds FACTOR_WINDOW={config.window}, the observations a window holds: "
                          "widen FACTOR_WINDOW or lower FACTOR_MIN_OBS")
    if n_t:
        for j in range(n_p):  # one vectorised regression per product (12 products, not 12 x T windows)
            fit = rolling_ols(universe.returns[:, j], X, config.window, min_obs, add_constant=True, expanding=True)
            alpha[:, j], beta[:, j] = fit.const, fit.betas
            r2[:, j], r2_adj[:, j], n_obs[:, j], deficient[:, j] = (fit.r_squared, fit.r_squared_adj, fit.n_obs,
                                                                    fit.rank_deficient)
    return Exposures(products=universe.products, factors=config.regression_factors, beta=beta, alpha=alpha,
                     r_squared=r2, r_squared_adj=r2_adj, n_obs=n_obs, rank_deficient=deficient)


def compute(universe: Universe, config: FactorConfig) -> FactorResult:
    returns, membership = factor_returns(universe, config)
    return FactorResult(universe=universe, config=config, factor_names=FACTOR_NAMES, factor_returns=returns,
                        membership=membership, exposures=exposures(universe, returns, config))


# ---- long tables for the outputs --------------------------------------------------------------------------------
def factor_returns_frame(result: FactorResult, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """factor_name, bucket_start, factor_return: one row per factor x bucket with a defined return."""
    times = result.universe.times
    keep_t = _from(times, start)
    values = result.factor_returns[keep_t]
    names = list(result.factor_names)
    frame = pd.DataFrame({
        "factor_name": pd.Categorical.from_codes(np.tile(np.arange(len(names)), values.shape[0]), categories=names),
        "bucket_start": np.repeat(times[keep_t], len(names)),
        "factor_return": values.ravel(),
    })
    return frame[frame["factor_return"].notna()].reset_index(drop=True)


def membership_frame(result: FactorResult, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per holding period x product x group it is a bucket member of.

    factor_name is the bucket's factor (e.g. "momentum_high"), weight the product's equal weight in it.
    """
    m, times, cfg = result.membership, result.universe.times, result.config
    g_idx, p_idx, n_idx = np.nonzero(m.bucket >= 0)
    bucket = m.bucket[g_idx, p_idx, n_idx]
    size = (m.bucket[g_idx, p_idx] == bucket[:, None]).sum(axis=1)
    seconds = cfg.frequency_s
    holding_start = times[0] + pd.to_timedelta(p_idx * m.holding * seconds, unit="s")
    groups = np.array(GROUPS)[g_idx]
    names = np.array(BUCKETS)[bucket]
    frame = pd.DataFrame({
        "holding_start": holding_start,
        "holding_end": holding_start + pd.Timedelta(seconds=m.holding * seconds),
        "formation_start": times[0] + pd.to_timedelta(np.maximum(p_idx * m.holding - m.formation, 0) * seconds,
                                                      unit="s"),
        "formation_end": holding_start,
        "factor_group": groups,
        "bucket": names,
        "factor_name": np.char.add(np.char.add(groups.astype(str), "_"), names.astype(str)),
        "product_id": np.array(result.universe.products)[n_idx],
        "signal": m.signal[g_idx, p_idx, n_idx],
        "rank": m.rank[g_idx, p_idx, n_idx],
        "n_ranked": m.n_ranked[g_idx, p_idx],
        "weight": 1.0 / size,
    })
    if start is not None:
        frame = frame[frame["holding_start"] >= start]
    return frame.sort_values(["holding_start", "factor_group", "product_id"]).reset_index(drop=True)


def exposures_frame(result: FactorResult, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """Full resolution: product_id, factor_name, bucket_start, beta, alpha, r_squared, r_squared_adj, n_obs,
    rank_deficient, window; one row per product x regression factor x bucket where the window had enough
    observations, ordered by time."""
    e, times = result.exposures, result.universe.times
    defined = np.isfinite(e.alpha) & _from(times, start)[:, None]
    t_idx, p_idx = np.nonzero(defined)   # row-major: time, then product
    return _exposure_rows(result, t_idx, p_idx)


def daily_snapshot(result: FactorResult, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """The warehouse snapshot: one row per product x factor x complete UTC day, taken at the day's last timestamp
    with an estimate (the day's last bucket unless that product's window fell below min_obs there).

    Only complete days (the prices reach their last bucket: some product has a return there) get a row, so a
    rerun later the same day cannot add a second snapshot for it, and a day whose prices stop early (an outage, a
    late ingest: the grid runs on to `end` without them) is not taken for finished. Columns as exposures_frame
    plus as_of_date (the UTC day).
    """
    e, times = result.exposures, result.universe.times
    keep = _from(times, start)
    step_ns = (times[1] - times[0]).value if len(times) > 1 else 86_400 * 10**9
    ns = times.as_unit("ns").asi8
    day = ns // (86_400 * 10**9)
    priced = np.flatnonzero(np.isfinite(result.universe.returns).any(axis=1))   # rows the prices reach
    complete = keep & (day < (ns[priced[-1]] + step_ns) // (86_400 * 10**9)) if priced.size else keep & False
    rows = np.flatnonzero(complete)
    if rows.size == 0:
        return _exposure_rows(result, rows, rows).assign(as_of_date=pd.Series([], dtype="object"))
    day_starts = rows[np.r_[0, np.flatnonzero(np.diff(day[rows])) + 1]]
    position = np.where(np.isfinite(e.alpha[rows]), rows[:, None], -1)   # (rows, N)
    last = np.maximum.reduceat(position, np.searchsorted(rows, day_starts), axis=0)  # (days, N)
    t_idx = last[last >= 0]
    p_idx = np.nonzero(last >= 0)[1]
    frame = _exposure_rows(result, t_idx, p_idx)
    as_of = pd.to_datetime(np.repeat(day[t_idx], len(e.factors)), unit="D").date
    return frame.assign(as_of_date=as_of)


def output_tables(result: FactorResult, start: pd.Timestamp | None = None) -> dict[str, pd.DataFrame]:
    """The stage's output tables (etl/factors/io.py writes them), from `start` on."""
    return {
        "factor_returns": factor_returns_frame(result, start=start),
        "factor_membership": membership_frame(result, start=start),
        "factor_exposures_full": exposures_frame(result, start=start),
        "factor_exposures": daily_snapshot(result, start=start),
    }


def _from(times: pd.DatetimeIndex, start: pd.Timestamp | None) -> np.ndarray:
    return np.ones(len(times), dtype=bool) if start is None else np.asarray(times >= start)


def _exposure_rows(result: FactorResult, t_idx: np.ndarray, p_idx: np.ndarray) -> pd.DataFrame:
    """Long rows (one per regression factor) for the (time, product) pairs given."""
    e, times = result.exposures, result.universe.times
    k = len(e.factors)

    def per_factor(values: np.ndarray) -> np.ndarray:
        return np.repeat(values[t_idx, p_idx], k)

    return pd.DataFrame({
        "product_id": pd.Categorical.from_codes(np.repeat(p_idx, k), categories=e.products),
        "factor_name": pd.Categorical.from_codes(np.tile(np.arange(k), len(t_idx)), categories=list(e.factors)),
        "bucket_start": np.repeat(times[t_idx], k),
        "beta": e.beta[t_idx, p_idx].ravel(),
        "alpha": per_factor(e.alpha),
        "r_squared": per_factor(e.r_squared),
        "r_squared_adj": per_factor(e.r_squared_adj),
        "n_obs": per_factor(e.n_obs),
        "rank_deficient": per_factor(e.rank_deficient),
        "window": np.full(len(t_idx) * k, result.config.window, dtype=np.int64),
    })

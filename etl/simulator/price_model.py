"""The deterministic price model: a candle is a pure function of (seed, product, bucket start, granularity).

Construction (see docs/simulator.md for the calibration):
- Daily: a market factor and per-product shocks (Student-t, unit variance) scaled by a slowly varying
  volatility regime common to the market, drawn once for every day from EPOCH_DATE to LAST_DATE. Their cumulative
  sum gives each day's opening log price ("anchor"), pinned to `start_price` at REFERENCE_DATE.
- Intraday: 1,440 minute shocks per (seed, product, UTC day) from their own RNG (market part shared by all
  products, plus rare jumps), shaped by an hour-of-day vol profile, then bridged so the path ends exactly at the
  next day's anchor. Daily closes therefore realise exactly the daily returns above.
- Minute candles: open = previous close, wicks beyond the body, lognormal volume around the product's liquidity
  with hour-of-day and weekday shapes and more volume on big moves, missing minutes for illiquid products.
- Coarser granularities are exact aggregations of the minute candles (a bucket with no minute is absent).
Days are generated in one vectorised call and cached, so any window, split or order gives the same candles.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import numpy as np
import pandas as pd

from etl.simulator.universe import (
    EPOCH_DATE,
    LAST_DATE,
    MARKET_VOL,
    REFERENCE_DATE,
    SYNTHETIC,
    UNIVERSE,
    ProductSpec,
    product_spec,
    synthetic_products,
)

GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
DAY_S = 86_400
MINUTES = 1_440
COLUMNS = ("time", "low", "high", "open", "close", "volume")  # the wire order of a candle

EPOCH_DAY = EPOCH_DATE.toordinal() - 719_163  # unix day number (1970-01-01 has ordinal 719163)
N_DAYS = (LAST_DATE - EPOCH_DATE).days + 1
REF_INDEX = (REFERENCE_DATE - EPOCH_DATE).days

# fat tails and volatility clustering of daily returns
T_DOF = 6.0                  # Student-t degrees of freedom of daily shocks (excess kurtosis 3)
REGIME_PHI = 0.95            # daily persistence of log-volatility (half-life ~13.5 days)
REGIME_SD = 0.20             # stationary sd of log-volatility (30-day vol ranges ~0.7x..1.4x)
REGIME_TAPS = 200            # AR(1) as a truncated exponential kernel (0.95^200 ~ 4e-5)
# intraday
MARKET_JUMP_PROB = 5e-4      # per minute: a market-wide jump ...
IDIO_JUMP_PROB = 3e-4        # ... or a product-specific one
JUMP_SCALE = 12.0            # jump sd in minute sigmas
WICK_MEAN = 0.3              # mean wick beyond the body, in minute sigmas (real BTC 5m: 0.29)
VOLUME_NOISE_SD = 0.7        # lognormal noise of minute volume
VOLUME_MOVE_LOADING = 0.9    # log-volume rises with |standardised move| (corr ~0.45 in real 5m data)
BASIS_SD = 2e-4              # cross pairs: minute noise around num/den (arbitrage keeps it tiny)

# hour-of-day (UTC) profiles measured on real BTC-USD 5-minute candles, 2025-07..2026-01
_HOURLY_ABS_RETURN = np.array([1.06, 0.97, 0.98, 0.85, 0.82, 0.79, 0.76, 0.81, 0.85, 0.84, 0.74, 0.75,
                               0.93, 1.18, 1.60, 1.47, 1.31, 1.19, 1.10, 1.11, 1.05, 1.02, 0.97, 0.84])
_HOURLY_VOLUME = np.array([0.87, 0.83, 0.81, 0.71, 0.67, 0.60, 0.59, 0.67, 0.59, 0.60, 0.55, 0.56,
                           0.81, 1.26, 1.88, 1.86, 1.70, 1.52, 1.33, 1.59, 1.37, 1.04, 0.83, 0.76])
WEEKDAY_VOLUME = np.array([1.14, 1.25, 1.14, 1.13, 1.41, 0.41, 0.52])  # Monday .. Sunday

_VOL_SHAPE = np.repeat(_HOURLY_ABS_RETURN, 60)
_VOL_SHAPE = _VOL_SHAPE / np.sqrt(np.mean(_VOL_SHAPE**2))   # mean variance 1: the shape moves vol, not its level
_VOLUME_SHAPE = np.repeat(_HOURLY_VOLUME / _HOURLY_VOLUME.mean(), 60)
_MINUTE_SCALE = 1.0 / math.sqrt(365 * MINUTES)
_FRACTION = np.arange(1, MINUTES + 1) / MINUTES
_MEAN_ABS_Z = math.sqrt(2 / math.pi)
# E[exp(a(|z| - E|z|) + b*eps)] for standard normals, so the noise keeps the mean volume at the target
_VOLUME_NORM = (2 * math.exp(VOLUME_MOVE_LOADING**2 / 2) * 0.5 * (1 + math.erf(VOLUME_MOVE_LOADING / math.sqrt(2)))
                * math.exp(-VOLUME_MOVE_LOADING * _MEAN_ABS_Z) * math.exp(VOLUME_NOISE_SD**2 / 2))


class UnsupportedRequest(ValueError):
    """A candle request the source cannot answer (served as HTTP 400 with this message)."""


Candles = tuple[np.ndarray, np.ndarray]  # (time int64 [n], values float64 [n, 5]: low, high, open, close, volume)


def _empty() -> Candles:
    return np.empty(0, dtype=np.int64), np.empty((0, 5), dtype=np.float64)


def _rng(seed: int, name: str, day: int, stream: int) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, and candles must not change between runs
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(name.encode()), day, stream])


def _student(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_t(T_DOF, n) * math.sqrt((T_DOF - 2) / T_DOF)


@lru_cache(maxsize=16)
def _market_days(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Daily market shocks and the volatility regime (mean square 1) for every day of the model."""
    rng = _rng(seed, "__market__", 0, 0)
    shocks = _student(rng, N_DAYS)
    kernel = REGIME_PHI ** np.arange(REGIME_TAPS)
    noise = rng.standard_normal(N_DAYS + REGIME_TAPS - 1)
    log_vol = np.convolve(noise, kernel, mode="valid") * (REGIME_SD / math.sqrt(np.sum(kernel**2)))
    return shocks, np.exp(log_vol - REGIME_SD**2)


@lru_cache(maxsize=64)
def _anchors(seed: int, product: str) -> np.ndarray:
    """Log price at 00:00 UTC of every model day (N_DAYS + 1 values: the last is the end of LAST_DATE)."""
    spec = product_spec(product)
    if spec.derived_from:
        num, den = spec.derived_from
        return _anchors(seed, num) - _anchors(seed, den)
    market, regime = _market_days(seed)
    own = _student(_rng(seed, product, 0, 0), N_DAYS)
    returns = regime * (spec.beta * MARKET_VOL * market + spec.idio_vol * own) / math.sqrt(365)
    level = np.concatenate([[0.0], np.cumsum(returns)])
    return math.log(spec.start_price) + level - level[REF_INDEX]


@lru_cache(maxsize=64)
def _market_minutes(seed: int, day: int) -> np.ndarray:
    """Unit-variance market minute shocks of one day, jumps included."""
    return _shocks(_rng(seed, "__market__", day, 1), MARKET_JUMP_PROB)


def _shocks(rng: np.random.Generator, jump_prob: float) -> np.ndarray:
    gauss = rng.standard_normal(MINUTES) * math.sqrt(1 - jump_prob * JUMP_SCALE**2)
    jumps = (rng.random(MINUTES) < jump_prob) * rng.standard_normal(MINUTES) * JUMP_SCALE
    return gauss + jumps


@lru_cache(maxsize=256)
def _log_path(seed: int, product: str, day: int) -> tuple[np.ndarray, np.ndarray]:
    """Log prices at the 1,441 minute boundaries of model day `day`, and each minute's local sigma."""
    spec = product_spec(product)
    anchors = _anchors(seed, product)
    regime = _market_days(seed)[1][day]
    sigma = spec.annual_vol * regime * _VOL_SHAPE * _MINUTE_SCALE
    if spec.derived_from:
        num, den = spec.derived_from
        noise = _rng(seed, product, day, 1).standard_normal(MINUTES + 1) * BASIS_SD
        noise[[0, -1]] = 0.0  # day boundaries stay on the legs' anchors, so daily closes are exact ratios
        return _log_path(seed, num, day)[0] - _log_path(seed, den, day)[0] + noise, sigma
    rng = _rng(seed, product, day, 1)
    unit = regime * _VOL_SHAPE * _MINUTE_SCALE
    moves = unit * (spec.beta * MARKET_VOL * _market_minutes(seed, day)
                    + spec.idio_vol * _shocks(rng, IDIO_JUMP_PROB))
    path = np.cumsum(moves)
    target = anchors[day + 1] - anchors[day]
    bridged = path - _FRACTION * (path[-1] - target)  # Brownian-bridge pin: ends exactly on the next anchor
    return np.concatenate([[anchors[day]], anchors[day] + bridged]), sigma


@lru_cache(maxsize=512)
def _minute_day(seed: int, product: str, day: int) -> Candles:
    """The 1-minute candles of model day `day` (absent minutes dropped)."""
    spec = product_spec(product)
    log_price, sigma = _log_path(seed, product, day)
    rng = _rng(seed, product, day, 2)
    log_open, log_close = log_price[:-1], log_price[1:]
    log_high = np.maximum(log_open, log_close) + rng.exponential(WICK_MEAN, MINUTES) * sigma
    log_low = np.minimum(log_open, log_close) - rng.exponential(WICK_MEAN, MINUTES) * sigma
    z = np.minimum(np.abs(log_close - log_open) / sigma, 4.0)  # capped: a jump minute must not own the day's volume
    regime = _market_days(seed)[1][day]
    weekday = (EPOCH_DAY + day + 3) % 7  # 1970-01-01 was a Thursday
    usd = (spec.daily_volume_usd / MINUTES * _VOLUME_SHAPE * WEEKDAY_VOLUME[weekday] * regime
           * np.exp(VOLUME_MOVE_LOADING * (z - _MEAN_ABS_Z) + VOLUME_NOISE_SD * rng.standard_normal(MINUTES))
           / _VOLUME_NORM)
    usd_price = np.exp(_log_path(seed, spec.derived_from[0], day)[0][1:]) if spec.derived_from else np.exp(log_close)
    volume = np.maximum(np.round(usd / usd_price, 8), 1e-8)
    present = rng.random(MINUTES) >= spec.missing_prob
    decimals = spec.price_decimals
    values = np.column_stack([np.round(np.exp(p), decimals) for p in (log_low, log_high, log_open, log_close)]
                             + [volume])
    times = (EPOCH_DAY + day) * DAY_S + np.arange(MINUTES, dtype=np.int64) * 60
    times, values = times[present], values[present]
    times.setflags(write=False)  # cached: callers get copies from candle_arrays, never these
    values.setflags(write=False)
    return times, values


def aggregate(times: np.ndarray, values: np.ndarray, granularity: int) -> Candles:
    """Aggregate ascending candles into `granularity` buckets: open first, high max, low min, close last, volume sum."""
    if len(times) == 0:
        return _empty()
    bucket = times // granularity
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    lasts = np.concatenate([starts[1:], [len(times)]]) - 1
    out = np.column_stack([
        np.minimum.reduceat(values[:, 0], starts),
        np.maximum.reduceat(values[:, 1], starts),
        values[starts, 2],
        values[lasts, 3],
        np.add.reduceat(values[:, 4], starts),
    ])
    return bucket[starts] * granularity, out


@lru_cache(maxsize=8192)
def _coarse_day(seed: int, product: str, day: int, granularity: int) -> Candles:
    return aggregate(*_minute_day(seed, product, day), granularity)


def _day_candles(seed: int, product: str, day: int, granularity: int) -> Candles:
    if granularity == 60:
        return _minute_day(seed, product, day)
    if granularity >= 3600:  # at most 24 rows a day: cheap to keep for long daily histories
        return _coarse_day(seed, product, day, granularity)
    return aggregate(*_minute_day(seed, product, day), granularity)


def check_request(product: str, granularity: int) -> ProductSpec:
    if product not in UNIVERSE and product not in SYNTHETIC:
        raise UnsupportedRequest(f"unknown product {product!r}; known: {', '.join(sorted(UNIVERSE))} "
                                 "(and SYN###-USD with --universe N)")
    if granularity not in GRANULARITIES:
        raise UnsupportedRequest(f"granularity {granularity} is not one of {GRANULARITIES}")
    return product_spec(product)


def _listed_days(spec: ProductSpec) -> tuple[int, int]:
    """Model day indexes [first, last] with candles: the product's listing, within the model's span."""
    first = (spec.listed_on - EPOCH_DATE).days if spec.listed_on else 0
    last = (spec.delisted_on - EPOCH_DATE).days - 1 if spec.delisted_on else N_DAYS - 1
    return max(first, 0), min(last, N_DAYS - 1)


def candle_arrays(seed: int, product: str, start: int, end: int, granularity: int) -> Candles:
    """Candles whose bucket start t (a multiple of granularity) has start <= t < end, ascending, as arrays."""
    listed, delisted = _listed_days(check_request(product, granularity))
    first = -(-int(start) // granularity) * granularity
    end = int(math.ceil(end))
    d0 = max(first // DAY_S - EPOCH_DAY, listed)   # nothing before the listing ...
    d1 = min((end - 1) // DAY_S - EPOCH_DAY, delisted)  # ... or after the delisting
    if end <= first or d1 < d0:
        return _empty()
    pieces = [_day_candles(seed, product, d, granularity) for d in range(d0, d1 + 1)]
    times = np.concatenate([p[0] for p in pieces])
    values = np.concatenate([p[1] for p in pieces])
    keep = slice(np.searchsorted(times, first), np.searchsorted(times, end))
    return times[keep], values[keep]


def candles(seed: int, product: str, start: int, end: int, granularity: int) -> pd.DataFrame:
    """The pure model: candles with bucket start in [start, end) (epoch seconds), ascending.

    Columns time (int64 epoch seconds), low, high, open, close, volume (float64): what the simulator serves for
    completed buckets, so tests and benchmarks can compute expected candles without HTTP.
    """
    times, values = candle_arrays(seed, product, start, end, granularity)
    frame = pd.DataFrame(values, columns=list(COLUMNS[1:]))
    frame.insert(0, "time", times)
    return frame


class SyntheticSource:
    """The model behind the HTTP server: the universe (plus `universe` synthetic products) or a subset, at one
    seed."""

    def __init__(self, seed: int, products: tuple[str, ...] | None = None, universe: int = 0):
        self.seed = seed
        everything = {**UNIVERSE, **synthetic_products(universe)}
        self.products = {p: everything.get(p) or product_spec(p) for p in (products or everything)}

    def base_granularity(self, product: str, granularity: int) -> int:
        return 60

    def arrays(self, product: str, start: int, end: int, granularity: int) -> Candles:
        return candle_arrays(self.seed, product, start, end, granularity)

"""Trades behind the candles: the trades of a bucket are a pure function of (seed, product, bucket) and aggregate
back to exactly the candle the REST API serves for that bucket.

For one candle (low, high, open, close, volume) of the source's base granularity (60 s for the price model):
- n trades, n = 4 + Poisson(liquidity) (fewer only when the volume has fewer than 4 units of 1e-8),
- prices: the first trade at `open`, the last at `close`, one inside trade at `high` and one at `low`, the others
  uniform in [low, high] rounded to the product's price decimals, so first/max/min/last = open/high/low/close,
- sizes: the volume in integer units of 1e-8 split into n positive parts (exponential weights), so the sizes,
  summed in those units, give the candle's volume exactly,
- times: n distinct microseconds inside the bucket, ascending; trade ids bucket_index * 1000 + k (per product,
  increasing with time, as Coinbase's are); sides BUY/SELL at random.
The RNG stream is separate from the candle model's, so trades never change a candle.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIZE_UNIT = 1e-8            # sizes carry at most 8 decimals (base_increment of the big products)
UNITS_PER_BASE = 100_000_000
MAX_LIQUIDITY = 36.0        # mean extra trades per bucket for the most liquid products
LIQUIDITY_USD = 1e7         # daily USD volume per mean extra trade


@dataclass(frozen=True)
class Trades:
    """Trades of a span, ascending in time: time_us (int64), trade_id (int64), price (float64), units (int64
    count of 1e-8 base units), buy (bool)."""

    time_us: np.ndarray
    trade_id: np.ndarray
    price: np.ndarray
    units: np.ndarray
    buy: np.ndarray

    def __len__(self) -> int:
        return len(self.time_us)

    def select(self, mask: np.ndarray) -> Trades:
        return Trades(*(a[mask] for a in (self.time_us, self.trade_id, self.price, self.units, self.buy)))


def bucket_trades(seed: int, product: str, start: int, granularity: int, candle: tuple[float, ...],
                  decimals: int, daily_volume_usd: float) -> Trades:
    """The trades of one bucket [start, start + granularity) whose candle is (low, high, open, close, volume)."""
    return _bucket_trades(seed, product, int(start), int(granularity), tuple(float(v) for v in candle), decimals,
                          float(daily_volume_usd))


@lru_cache(maxsize=8192)
def _bucket_trades(seed: int, product: str, start: int, granularity: int, candle: tuple[float, ...],
                   decimals: int, daily_volume_usd: float) -> Trades:
    low, high, opn, close, volume = candle
    rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(product.encode()), start, 7])
    units = int(round(volume * UNITS_PER_BASE))
    n = 4 + int(rng.poisson(min(MAX_LIQUIDITY, daily_volume_usd / LIQUIDITY_USD)))
    n = max(1, min(n, units))
    price = np.round(rng.uniform(low, high, n), decimals)
    price = np.clip(price, low, high)
    if n >= 4:
        inner = rng.permutation(np.arange(1, n - 1))[:2]
        price[inner[0]], price[inner[1]] = high, low
    price[0] = opn
    price[-1] = close
    weights = rng.exponential(1.0, n)
    parts = np.floor(weights / weights.sum() * (units - n)).astype(np.int64) + 1
    parts[np.argmax(parts)] += units - int(parts.sum())
    span = granularity * 1_000_000
    offsets = np.sort(rng.integers(0, span - n, n)) + np.arange(n)  # distinct, ascending, inside the bucket
    index = start // granularity
    out = Trades(time_us=start * 1_000_000 + offsets, trade_id=index * 1000 + np.arange(n, dtype=np.int64),
                 price=price, units=parts, buy=rng.random(n) < 0.5)
    for a in (out.time_us, out.trade_id, out.price, out.units, out.buy):
        a.setflags(write=False)  # cached: shared by every caller
    return out


def trades_between(source, product: str, start_us: int, end_us: int) -> Trades:
    """Trades of `product` with start_us < time <= end_us (epoch microseconds), ascending, from a simulator source
    (SyntheticSource or ReplaySource: the candles of its base granularity)."""
    spec = source.products[product]
    granularity = source.base_granularity(product, 60)
    first = (start_us // 1_000_000) // granularity * granularity
    last = end_us // 1_000_000 + 1
    times, values = source.arrays(product, first, last, granularity)
    seed = getattr(source, "seed", 0)
    pieces = [bucket_trades(seed, product, int(t), granularity, tuple(v), spec.price_decimals, spec.daily_volume_usd)
              for t, v in zip(times.tolist(), values.tolist(), strict=True)]
    if not pieces:
        return Trades(*(np.zeros(0, dtype=d) for d in (np.int64, np.int64, np.float64, np.int64, bool)))
    merged = Trades(*(np.concatenate([getattr(p, f) for p in pieces])
                      for f in ("time_us", "trade_id", "price", "units", "buy")))
    return merged.select((merged.time_us > start_us) & (merged.time_us <= end_us))


def aggregate_trades(time_us: np.ndarray, price: np.ndarray, units: np.ndarray, granularity: int):
    """Candles from ascending trades: (bucket start s, low, high, open, close, volume) arrays - the inverse of
    `bucket_trades`, used by tests and the reconciliation docs. Volume is the sum of units times 1e-8."""
    bucket = time_us // (granularity * 1_000_000)
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]])) if len(bucket) else np.zeros(0, int)
    lasts = np.append(starts[1:], len(bucket)) - 1
    return (bucket[starts] * granularity, np.minimum.reduceat(price, starts), np.maximum.reduceat(price, starts),
            price[starts], price[lasts], np.add.reduceat(units, starts) / UNITS_PER_BASE)

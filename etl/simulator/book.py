"""The order book behind the `level2` channel: a pure function of (seed, product, feed time), around the price path.

At feed time t (epoch microseconds) the book of a product is
- a price grid of step g = the power of ten nearest 1 bp of the last trade price at t (at least the product's price
  increment), the mid m the last trade price (`etl.simulator.trades`; the last candle's close when the last two
  minutes have no trade),
- bids at floor(m / g) * g - (s_b + i) * g and asks at floor(m / g) * g + (1 + s_a + i) * g for i = 0..LEVELS-1,
  s_b, s_a in {0, 1, 2} drawn per second (the spread breathes),
- a quantity per level drawn from a hash of (seed, product, price on the grid, epoch), where a level's epoch turns
  every REFRESH_S seconds at an offset of its own, so about 1/REFRESH_S of the levels change a second (a level
  keeps its quantity while the mid moves); one level in ten is empty (not in the book).
The server sends the difference between consecutive books (`new_quantity` "0" removes a level), so a client that
applies every message holds exactly `book_at(t)` of the last message's `event_time`: the collector's oracle.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from etl.simulator.trades import UNITS_PER_BASE, trades_between

LEVELS = 100          # levels served per side
REFRESH_S = 7         # a level's quantity is redrawn every this many seconds
LEVEL_USD = 1e-4      # mean value of a level as a share of the product's daily traded value (50 levels: ~0.5%)
EMPTY_SHARE = 0.1     # share of grid levels without an order


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uniform 64-bit hashes of uint64 keys."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(seed: int, product: str, keys: np.ndarray, salt: int) -> np.ndarray:
    base = np.uint64((seed * 0x9E3779B1 + zlib.crc32(product.encode()) * 31 + salt) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        return (_mix(keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base) >> np.uint64(11)) / 2.0 ** 53


def mid_price(source, product: str, t_us: int) -> float:
    trades = trades_between(source, product, t_us - 120_000_000, t_us)
    if len(trades):
        return float(trades.price[-1])
    t_s = t_us // 1_000_000
    _, values = source.arrays(product, t_s - 86_400, t_s + 1, source.base_granularity(product, 60))
    return float(values[-1, 3])


def book_at(source, product: str, t_us: int) -> dict[str, dict[float, int]]:
    """{"bid": {price: quantity in 1e-8 units}, "offer": {...}} at feed time t_us (see the module docstring)."""
    spec = source.products[product]
    seed = getattr(source, "seed", 0)
    d = spec.price_decimals
    mid = mid_price(source, product, t_us)
    g = max(10.0 ** round(math.log10(mid * 1e-4)), 10.0 ** -d)
    base = math.floor(mid / g)
    second = t_us // 1_000_000
    s_b, s_a = (int(_uniform(seed, product, np.array([second]), salt)[0] * 3) for salt in (1, 2))
    depth = np.arange(LEVELS)
    mean_units = spec.daily_volume_usd * LEVEL_USD / mid * UNITS_PER_BASE
    book = {}
    for side, ticks in (("bid", base - s_b - depth), ("offer", base + 1 + s_a + depth)):
        ticks = ticks[ticks > 0]
        keys = ticks.astype(np.int64) * 2 + (side == "offer")
        epoch = (second + keys % REFRESH_S) // REFRESH_S
        u = _uniform(seed, product, keys * 1_000_003 + epoch, 3)
        present = _uniform(seed, product, keys * 1_000_003 + epoch, 4) >= EMPTY_SHARE
        units = np.maximum(1, (mean_units * (0.2 + 1.6 * u)).astype(np.int64))
        book[side] = {round(float(t) * g, d): int(q)
                      for t, q, ok in zip(ticks.tolist(), units.tolist(), present.tolist(), strict=True) if ok}
    return book


def book_diff(old: dict[str, dict[float, int]], new: dict[str, dict[float, int]]) -> list[tuple[str, float, int]]:
    """(side, price, new quantity) turning `old` into `new`; quantity 0 removes the level."""
    out = []
    for side in ("bid", "offer"):
        before, after = old.get(side, {}), new[side]
        out += [(side, p, q) for p, q in after.items() if before.get(p) != q]
        out += [(side, p, 0) for p in before if p not in after]
    return out

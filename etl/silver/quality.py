"""Named quality rules for candles: each row either passes all of them or is quarantined with the rules it broke."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa

from etl.silver.bars import US, chunks, timestamps_us
from etl.utc import to_utc

# Checked in this order; a row's `rule` is the first it breaks (so NaN prices count as finite_values, not as
# price_positive) and `failed_rules` lists them all.
RULES = (
    "finite_values", "price_positive", "low_le_open", "low_le_close", "high_ge_open", "high_ge_close",
    "volume_non_negative", "traded_value_finite", "not_in_future",
)
DAY = 86_400


def rule_failures(candles: pa.Table | pa.RecordBatch, now: datetime) -> dict[str, np.ndarray]:
    """rule name -> boolean mask of the rows that break it."""
    o, h, lo, c, v = (candles[m].to_numpy() for m in ("open", "high", "low", "close", "volume"))
    # a bar sums at most a day of candles of one granularity: volume and volume x high each that many times over
    # must stay finite, or a bar's volume or VWAP is infinite (a 1e308 volume is finite, the sum is not)
    per_day = np.maximum(DAY // np.maximum(candles["granularity"].to_numpy(), 1), 1)
    with np.errstate(invalid="ignore", over="ignore"):
        return {
            "finite_values": ~(np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c) & np.isfinite(v)),
            "price_positive": ~((o > 0) & (h > 0) & (lo > 0) & (c > 0)),
            "low_le_open": ~(lo <= o),
            "low_le_close": ~(lo <= c),
            "high_ge_open": ~(h >= o),
            "high_ge_close": ~(h >= c),
            "volume_non_negative": ~(v >= 0),
            "traded_value_finite": ~np.isfinite(v * np.maximum(h, 1.0) * per_day),  # >= volume, >= volume x price
            "not_in_future": timestamps_us(candles["bucket_start"]) > int(to_utc(now).timestamp() * US),
        }


def split(candles: pa.Table, now: datetime) -> tuple[pa.Table, pa.Table]:
    """(rows passing every rule, rows breaking one or more with `rule` and `failed_rules` columns added)."""
    bad_parts, failed_parts = [], []
    for batch in chunks(candles):  # chunk by chunk: no table-sized mask per rule
        failures = rule_failures(batch, now)
        bad = np.logical_or.reduce(list(failures.values()))
        bad_parts.append(bad)
        failed_parts.append({rule: mask[bad] for rule, mask in failures.items()})
    bad = np.concatenate(bad_parts) if bad_parts else np.zeros(0, dtype=bool)
    failed = {rule: np.concatenate([f[rule] for f in failed_parts]) if failed_parts else np.zeros(0, dtype=bool)
              for rule in RULES}
    if not bad.any():
        return candles, quarantine_rows(candles.slice(0, 0), failed)
    return candles.filter(pa.array(~bad)), quarantine_rows(candles.filter(pa.array(bad)), failed)


def quarantine_rows(rejected: pa.Table, failures: dict[str, np.ndarray]) -> pa.Table:
    """`rejected` plus `rule` (first broken) and `failed_rules`; failures = rule -> mask over the rejected rows."""
    first = np.full(rejected.num_rows, "", dtype=object)
    every = np.full(rejected.num_rows, "", dtype=object)
    for rule in reversed(RULES):  # reversed so the earliest rule is written last and wins `first`
        mask = failures[rule]
        first[mask] = rule
    for rule in RULES:
        mask = failures[rule]
        every[mask] = every[mask] + np.where(every[mask] == "", rule, "," + rule).astype(object)
    return rejected.append_column("rule", pa.array(first, pa.string())) \
        .append_column("failed_rules", pa.array(every, pa.string()))


def count_by_rule(quarantined: pa.Table) -> dict[str, int]:
    """rule -> rows quarantined with it as their first broken rule (every rule listed, zeros included)."""
    counts = dict.fromkeys(RULES, 0)
    if quarantined.num_rows:
        rules, n = np.unique(quarantined["rule"].to_numpy(zero_copy_only=False), return_counts=True)
        counts.update({str(r): int(k) for r, k in zip(rules, n, strict=True)})
    return counts

"""One pass over a large, clean candle file: order check, quality rules and bar folding while the batches stream in.

Meant for backfills and rebuilds (millions of one-granularity candles sorted by product and time, as bronze writes
them): nothing table-sized is ever held in memory. When the input turns out not to be like that (out of order,
duplicate keys, mixed granularities, products not in name order) `stream_bars` returns None and the caller uses the
general path (`latest_per_key`, `quality.split`, `aggregate`), which gives the same bars.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.silver import quality
from etl.silver.bars import BAR_5M_GRANULARITIES, MEASURES, bars_table, fold, timestamps_us


class _NotClean(Exception):
    """The stream is not sorted, unique and single-granularity: use the general path."""


def stream_bars(batches: Iterable[pa.RecordBatch], now: datetime, bar_seconds: int = 300,
                granularities: tuple[int, ...] = BAR_5M_GRANULARITIES) -> tuple[pa.Table, pa.Table] | None:
    """(bars as `aggregate` returns them, quarantined rows as `quality.split` returns them or None when no row
    broke a rule), or None when the input is not clean (see above)."""
    names: list[str] = []
    quarantined: list[pa.Table] = []
    try:
        bars = fold(_clean_pieces(batches, now, granularities, names, quarantined), bar_seconds, single=True)
    except _NotClean:
        return None
    if bars is None:
        return None
    bad = pa.concat_tables(quarantined) if quarantined else None
    return bars_table(bars, names), bad


def _clean_pieces(batches: Iterable[pa.RecordBatch], now: datetime, granularities: tuple[int, ...],
                  names: list[str], quarantined: list[pa.Table]) -> Iterator[dict[str, np.ndarray]]:
    code_of: dict[str, int] = {}
    last: tuple | None = None
    granularity = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        product = batch["product_id"]
        if not pa.types.is_dictionary(product.type):
            product = pc.dictionary_encode(product)
        values = product.dictionary.to_pylist()
        new = sorted(v for v in set(values) if v not in code_of)
        if new and names and new[0] < names[-1]:
            raise _NotClean  # codes must follow name order, as the general path sorts products
        for name in new:
            code_of[name] = len(names)
            names.append(name)
        codes = np.array([code_of[v] for v in values], dtype=np.int32)[
            product.indices.to_numpy(zero_copy_only=False)]
        gran, ts = batch["granularity"].to_numpy(), timestamps_us(batch["bucket_start"])
        granularity = gran[0] if granularity is None else granularity
        if gran.min() != granularity or gran.max() != granularity:
            raise _NotClean
        step_code, step_ts = np.diff(codes), np.diff(ts)
        if not ((step_code > 0) | ((step_code == 0) & (step_ts > 0))).all() or \
                (last is not None and (codes[0], ts[0]) <= last):
            raise _NotClean  # not strictly increasing: unsorted or duplicate keys
        last = (codes[-1], ts[-1])

        failures = quality.rule_failures(batch, now)
        bad = np.logical_or.reduce(list(failures.values()))
        piece = {"codes": codes, "gran": gran, "ts": ts, **{m: batch[m].to_numpy() for m in MEASURES}}
        if bad.any():
            rejected = pa.Table.from_batches([batch.filter(pa.array(bad))])
            quarantined.append(quality.quarantine_rows(rejected, {r: m[bad] for r, m in failures.items()}))
            piece = {k: v[~bad] for k, v in piece.items()}
        if granularity in granularities and len(piece["ts"]):
            yield piece

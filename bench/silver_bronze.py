"""Bronze candles for the silver benchmark, written the way `etl.bronze.ingest` writes them.

Each (product, day) is one page of exchange rows ([time, low, high, open, close, volume] lists, as parsed from the
API body) turned into bronze rows by `etl.bronze._page_tables` (validation, the `raw` text, batch columns) and
written like ingest's flush: sorted by bucket_start, cast to CANDLE_SCHEMA, one `<batch_id>.parquet` per
partition, then the batch's Delta commit. A backfill batch covers every day; a second, incremental batch re-fetches the
last two days of every product with revised closes (ingest's overlap), so silver has duplicates to drop.
About 5% of minutes have no candle (no trade), as in the simulator's and Coinbase's 1-minute data.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from etl import candles
from etl.bronze import CANDLE_SCHEMA, _page_tables
from etl.lake import Lake
from etl.settings import DEFAULT_PRODUCTS
from etl.source import CandlePage
from etl.storage import Store

END = datetime(2026, 1, 1, tzinfo=UTC)  # every size ends here, in the past: silver drops future candles
MISSING = 0.05
BACKFILL, OVERLAP = "20260101T000000Z-backfill", "20260101T010000Z-overlap"  # as etl.bronze.new_batch_id


def _day_rows(rng: np.random.Generator, level: float, day: datetime) -> tuple[list, float]:
    t0 = int(day.timestamp())
    close = level * np.exp(np.cumsum(rng.normal(0, 1e-3, 1440)))
    open_ = np.concatenate([[level], close[:-1]])
    spread = np.abs(rng.normal(0, 5e-4, 1440)) * close
    keep = rng.random(1440) > MISSING
    cols = [t0 + 60 * np.arange(1440), np.minimum(open_, close) - spread, np.maximum(open_, close) + spread,
            open_, close, rng.uniform(0.01, 10, 1440).round(8)]
    rows = np.column_stack([c[keep] for c in cols]).tolist()
    for r in rows:
        r[0] = int(r[0])  # epoch seconds are integers on the wire
    return rows, float(close[-1])


def _write_pages(store: Store, batch_id: str, pages: list[CandlePage], files: list, parts: list) -> None:
    for page in pages:
        table = _page_tables(page, batch_id, "simulator").candles
        table = table.drop_columns(["_day"]).sort_by("bucket_start").cast(CANDLE_SCHEMA)
        day = page.start.date().isoformat()
        files.append(candles.write_file(store, page.product_id, day, f"{batch_id}.parquet", table))
        parts.append({"product_id": page.product_id, "date": day, "rows": table.num_rows})


def _manifest(store: Store, batch_id: str, files: list, parts: list, created: datetime) -> int:
    candles.commit(store, Lake(store.root), files, {candles.BATCH_ID: batch_id, "created_at": created.isoformat()})
    return sum(p["rows"] for p in parts)


def make_bronze(data_dir: Path, days: int, products: tuple[str, ...] = DEFAULT_PRODUCTS, seed: int = 7) -> dict:
    """Write bronze for `products` x `days` of 1-minute candles under data_dir; returns its size."""
    store = Store.from_uri(str(data_dir))
    rng = np.random.default_rng(seed)
    end = END
    start = END - timedelta(days=days)
    batches = {BACKFILL: ([], []), OVERLAP: ([], [])}
    for i, product in enumerate(products):  # one product at a time: memory stays bounded at 20 M candles
        level = 10.0 ** (1 + i % 4)
        backfill, overlap = [], []
        for d in range(days):
            day = start + timedelta(days=d)
            rows, level = _day_rows(rng, level, day)
            backfill.append(CandlePage(product, day, day + timedelta(days=1), 60, rows, end))
            if d >= days - 2:  # the incremental batch's overlap: the same minutes, closes revised a little
                revised = [[t, lo, hi, o, min(max(c * 1.0001, lo), hi), v] for t, lo, hi, o, c, v in rows]
                overlap.append(CandlePage(product, day, day + timedelta(days=1), 60, revised,
                                          end + timedelta(hours=1)))
        _write_pages(store, BACKFILL, backfill, *batches[BACKFILL])
        _write_pages(store, OVERLAP, overlap, *batches[OVERLAP])
    n = _manifest(store, BACKFILL, *batches[BACKFILL], end)
    n += _manifest(store, OVERLAP, *batches[OVERLAP], end + timedelta(hours=1))
    info = {"candles": n, "files": sum(len(f) for f, _ in batches.values()), "products": len(products), "days": days}
    (data_dir / "bench_input.json").write_text(json.dumps(info))
    return info

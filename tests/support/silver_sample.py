"""Silver daily and 5-minute bars from closes, for risk runs in tests and benchmarks (etl.silver.bars schemas)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from etl.lake import Lake, conform
from etl.silver.bars import BARS_1D_SCHEMA, BARS_5M_SCHEMA
from etl.silver.incremental import BARS_1D_DIR, BARS_5M_DIR, LAST_TABLE, SILVER_READ, write_partition_file
from etl.storage import Store, partition_path


def commit_silver(store: Store, table_dir: str, parts: list[tuple[dict[str, str], pa.Table]]) -> int:
    """Commit `parts` ((partition values, rows) each) to the silver Delta table `table_dir` as a build does: one file
    per partition named by its digest, replacing the partitions' files. Returns the version made."""
    lake, parts = Lake.of(store), [(values, conform(rows)) for values, rows in parts]  # in Delta's types
    files = [write_partition_file(store, table_dir, values, rows) for values, rows in parts]
    new = {posixpath.join(table_dir, f.path) for f in files}
    folders = {partition_path(table_dir, **values) for values, _ in parts}
    current = lake.files(table_dir) or []
    old = [f for f in current if posixpath.dirname(f) in folders and f not in new]
    keys = list(parts[0][0])
    schema = pa.schema([*parts[0][1].schema, *(pa.field(k, pa.string()) for k in keys)])
    return lake.commit_files(table_dir, [f for f in files if posixpath.join(table_dir, f.path) not in current],
                             schema, keys, remove=old)


def write_daily_bars(root: Path, closes: pd.DataFrame, quotes: dict[str, str], *, spread: float = 0.0,
                     volume: float = 1.0, n_candles: int = 1440, source_granularity: int = 86400) -> None:
    """closes (day x product) as the partitions product_id=P/year=Y of silver bars_1d (replaced if there):
    open = close, high/low = close x (1 +/- spread), vwap = close, complete bars in the product's quote currency."""
    parts = []
    for product in closes.columns:
        c = closes[product].to_numpy()
        n = len(c)
        table = pa.table({
            "price_date": pa.array(closes.index.date, pa.date32()), "open": c, "high": c * (1 + spread),
            "low": c * (1 - spread), "close": c, "volume": np.full(n, volume), "vwap": c,
            "n_candles": np.full(n, n_candles), "is_complete": np.ones(n, bool), "quote_currency": [quotes[product]] * n,
            "first_candle_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
            "last_candle_at": pa.array([None] * n, pa.timestamp("us", tz="UTC")),
            "source_granularity": np.full(n, source_granularity)}).cast(BARS_1D_SCHEMA)
        parts += [({"product_id": product, "year": str(year)}, table.filter(pa.array(closes.index.year == year)))
                  for year in sorted(set(closes.index.year))]
    commit_silver(Store.from_uri(str(root)), BARS_1D_DIR, parts)


def write_5m_bars(root: Path, product: str, quote: str, buckets: pd.DatetimeIndex, closes: np.ndarray) -> None:
    """One product's 5-minute bars (bucket starts, closes) as the partitions product_id=P/date=D of silver bars_5m
    (replaced if there): flat bars of 5 one-minute candles, volume 1."""
    m = len(closes)
    table = pa.table({
        "bucket_start": pa.array(buckets), "open": closes, "high": closes, "low": closes, "close": closes,
        "volume": np.ones(m), "vwap": closes, "n_candles": np.full(m, 5), "is_complete": np.ones(m, bool),
        "quote_currency": [quote] * m, "first_candle_at": pa.array(buckets), "last_candle_at": pa.array(buckets),
        "source_granularity": np.full(m, 60)}).cast(BARS_5M_SCHEMA)
    commit_silver(Store.from_uri(str(root)), BARS_5M_DIR,
                  [({"product_id": product, "date": str(day)}, table.filter(pa.array(buckets.date == day)))
                   for day in sorted(set(buckets.date))])


def silver_file(root: Path, rel: str) -> Path:
    """The current file (from the table's log) of the silver partition that `rel`
    (`silver/<table>/<partition>/part-0.parquet`, the name the partition's one file had before Delta) names."""
    folder = posixpath.dirname(rel)
    table = "/".join(folder.split("/")[:2])
    files = [f for f in Lake.of(Store.from_uri(str(root))).files(table) or [] if posixpath.dirname(f) == folder]
    assert len(files) == 1, f"{folder}: {files}"
    return root / files[0]


def silver_read(root: Path) -> dict:
    """What the last silver build recorded it read of bronze ({"PRODUCT/DATE": version}: its last commit's metadata)."""
    table = Lake.of(Store.from_uri(str(root))).table(LAST_TABLE)
    return json.loads(table.history(limit=1)[0][SILVER_READ])


def silver_frame(root: Path, table_dir: str) -> pd.DataFrame:
    """The rows of the silver Delta table `table_dir` (its latest version, partition columns included)."""
    table = Lake.of(Store.from_uri(str(root))).read(table_dir)
    return pd.DataFrame() if table is None else table.to_pandas()


def remove_product(root: Path, table_dir: str, product: str) -> None:
    """Commit the removal of every file of `product` from the silver Delta table `table_dir` (as a full refresh
    does when its bronze is gone)."""
    store = Store.from_uri(str(root))
    lake, table = Lake.of(store), Lake.of(store).table(table_dir)
    gone = [f for f in lake.files(table_dir) if f"/product_id={product}/" in f]
    keys = table.metadata().partition_columns
    lake.commit_files(table_dir, [], pa.schema(table.schema().to_arrow()), keys, remove=gone)

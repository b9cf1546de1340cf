"""Test-only readers of bronze: every raw row, the latest row per key, the quarantine, as DataFrames.

The pipeline itself reads bronze through etl.silver (incremental, Arrow); these answer tests' and benchmarks'
questions about what a batch wrote.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from etl.bronze import CANDLE_SCHEMA, CANDLES_DIR, QUARANTINE_DIR, QUARANTINE_SCHEMA
from etl.lake import Lake
from etl.settings import Settings
from etl.silver.bars import latest_per_key
from etl.storage import get_store

KEY = ["product_id", "granularity", "bucket_start"]


def dedup_latest(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (product_id, granularity, bucket_start), sorted by it: the latest ingested_at, then the highest
    batch_id - the rows silver keeps (`etl.silver.bars.latest_per_key`, the one implementation of the rule)."""
    return latest_per_key(pa.Table.from_pandas(df, preserve_index=False)).to_pandas()


def read_bronze(products: list[str] | None = None, granularity: int | None = None,
                settings: Settings | None = None, dedup: bool = False) -> pd.DataFrame:
    """Raw bronze rows (the table's latest version, read through its log) with product_id and date.

    `dedup=True` keeps only the latest row per (product_id, granularity, bucket_start).
    """
    store = get_store(settings)
    flt = None
    if products:
        flt = pc.field("product_id").isin([p.upper() for p in products])
    if granularity is not None:
        g = pc.field("granularity") == granularity
        flt = g if flt is None else flt & g
    t = Lake.of(store, settings).table(CANDLES_DIR)
    table = None if t is None else t.to_pyarrow_dataset().to_table(filter=flt)
    if table is None:
        empty = CANDLE_SCHEMA.append(pa.field("product_id", pa.string())).append(pa.field("date", pa.string()))
        return empty.empty_table().to_pandas()
    df = table.to_pandas()
    return dedup_latest(df) if dedup else df.sort_values(["product_id", "bucket_start"]).reset_index(drop=True)


def read_quarantine(settings: Settings | None = None) -> pd.DataFrame:
    """Every quarantined row with its reason (product_id from the partition path)."""
    table = get_store(settings).read_table(QUARANTINE_DIR)
    if table is None:  # the same columns as when there are rows: product_id comes from the partition path
        return QUARANTINE_SCHEMA.append(pa.field("product_id", pa.string())).empty_table().to_pandas()
    return table.to_pandas()

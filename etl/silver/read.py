"""Readers other stages call: silver bars and clean (deduplicated, quality-checked) candles as DataFrames.

Time bounds are inclusive on both sides. For 5-minute bars and candles a `date` bound covers the whole UTC day;
a naive datetime is taken as UTC. Bars are read through their Delta table's log (the files of its latest version;
partitions outside the bounds are never opened), each file checked against the SHA-256 its name carries
(etl/integrity.py): a corrupt file stops the read naming it and the repair. A build in flight is invisible until
its commit, so a reader never waits for it.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from etl.candles import files as candle_files
from etl.lake import Lake
from etl.settings import Settings, get_settings
from etl.silver import price_quality, quality
from etl.silver.bars import BARS_1D_SCHEMA, BARS_5M_SCHEMA, TS, latest_per_key
from etl.silver.incremental import (
    BARS_1D_DIR,
    BARS_5M_DIR,
    PRICE_QUALITY_DIR,
    file_digests,
    read_bronze,
)
from etl.storage import Store, get_store

log = logging.getLogger(__name__)
KINDS = {"5m": (BARS_5M_DIR, "bucket_start", "date"), "1d": (BARS_1D_DIR, "price_date", "year")}
CANDLE_COLUMNS = ["product_id", "bucket_start", "open", "high", "low", "close", "volume"]


def read_bars(kind: str, products: list[str] | None = None, start=None, end=None,
              settings: Settings | None = None) -> pd.DataFrame:
    """Silver bars sorted by product_id, time; always with a product_id column.

    kind "5m": one row per product x 5-minute bucket, `bucket_start` datetime64[us, UTC].
    kind "1d": one row per product x UTC day, `price_date` datetime64[ns] at midnight, tz-naive.
    Other columns: open, high, low, close, volume, vwap, n_candles, is_complete, quote_currency,
    first_candle_at, last_candle_at, source_granularity (see docs/silver.md).
    """
    if kind not in KINDS:
        raise ValueError(f"read_bars kind {kind!r}: expected '5m' or '1d'")
    root, time_col, part_key = KINDS[kind]
    settings = settings or get_settings()
    if kind == "5m" and settings.bars_source == "trades":  # PIPELINE_BARS_SOURCE: bars from streamed trades
        from etl.silver.trade_bars import TRADE_BARS_DIR as root
    store = get_store(settings)
    if kind == "5m":
        lo, hi = _timestamp(start, end_of_day=False), _timestamp(end, end_of_day=True)
        keep = _between(lo and lo.date().isoformat(), hi and hi.date().isoformat())
        condition = _range_filter(time_col, lo and pa.scalar(lo, TS), hi and pa.scalar(hi, TS))
    else:
        lo_d, hi_d = _day(start), _day(end)
        keep = _between(lo_d and str(lo_d.year), hi_d and str(hi_d.year))
        condition = _range_filter(time_col, lo_d and pa.scalar(lo_d, pa.date32()), hi_d and pa.scalar(hi_d, pa.date32()))
    table = _read_partitions(store, root, products, part_key, keep, condition)
    if table is None:
        return _empty(kind)
    table = table.drop_columns([part_key]).sort_by([("product_id", "ascending"), (time_col, "ascending")])
    df = table.to_pandas()
    if kind == "1d":
        df["price_date"] = pd.to_datetime(df["price_date"]).astype("datetime64[ns]")
    return df[["product_id", time_col, *[c for c in df.columns if c not in ("product_id", time_col)]]]


def read_candles(products: list[str] | None = None, start=None, end=None, granularity: int = 60,
                 settings: Settings | None = None, now: datetime | None = None) -> pd.DataFrame:
    """Deduplicated candles of one granularity that pass every quality rule, from bronze.

    Columns product_id, bucket_start (datetime64[us, UTC]), open, high, low, close, volume; sorted by product, time.
    Quarantined rows are left out (silver's quarantine lists them), and so are the prints the market-data quality
    gate excluded (silver/price_quality, as of the last silver build); `now` drives the not_in_future rule.
    """
    store = get_store(settings or get_settings())
    lo, hi = _timestamp(start, end_of_day=False), _timestamp(end, end_of_day=True)
    days = _between(lo and lo.date().isoformat(), hi and hi.date().isoformat())
    files = _current_bronze_files(store, products, days)
    if not files:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _CANDLE_DTYPES.items()})
    candles = read_bronze(store, files)
    candles = candles.filter(pc.equal(candles["granularity"], granularity))
    candles, _ = quality.split(latest_per_key(candles), now or datetime.now(UTC))
    candles = _without_excluded(store, candles, products, days, granularity)
    condition = _range_filter("bucket_start", lo and pa.scalar(lo, TS), hi and pa.scalar(hi, TS))
    if condition is not None:
        candles = candles.filter(condition)
    return candles.select(CANDLE_COLUMNS).to_pandas()


def _without_excluded(store: Store, candles: pa.Table, products: list[str] | None, days, granularity: int) -> pa.Table:
    """`candles` minus the prints of this granularity that silver's quality gate excluded."""
    table = _read_partitions(store, PRICE_QUALITY_DIR, products, "date", days,
                             (ds.field("granularity") == granularity) & (ds.field("decision") == price_quality.EXCLUDED))
    if table is None or table.num_rows == 0 or candles.num_rows == 0:
        return candles
    key = pc.binary_join_element_wise(candles["product_id"].cast(pa.string()),
                                      candles["bucket_start"].cast(TS).cast(pa.int64()).cast(pa.string()), "@")
    bad = pc.binary_join_element_wise(table["product_id"], table["bucket_start"].cast(TS).cast(pa.int64())
                                      .cast(pa.string()), "@")
    return candles.filter(pc.invert(pc.is_in(key, bad)))


_CANDLE_DTYPES = {"product_id": "str", "bucket_start": "datetime64[us, UTC]", "open": "float64",
                  "high": "float64", "low": "float64", "close": "float64", "volume": "float64"}


# ---- partition pruning -----------------------------------------------------------------------------------------
def _between(lo: str | None, hi: str | None):
    return lambda value: (lo is None or value >= lo) and (hi is None or value <= hi)


def _partition_files(store: Store, root: str, products: list[str] | None, key: str, keep) -> list[str]:
    """The files of the Delta table `root`'s latest version in root/product_id=P/key=V/ for the products asked
    and the values `keep` accepts ([] when there is no table)."""
    wanted = None if products is None else {f"product_id={p}" for p in products}
    files = []
    for f in Lake.of(store).files(root) or []:
        product_dir, part = f[len(root) + 1:].split("/")[:2]
        name, _, value = part.partition("=")
        if (wanted is None or product_dir in wanted) and name == key and keep(value):
            files.append(f)
    return files


def _current_bronze_files(store: Store, products: list[str] | None, keep) -> list[str]:
    """The files of the bronze partitions asked for, at the bronze table's latest version (etl.candles)."""
    return candle_files(Lake.of(store), products=products, keep=keep)


def _read_partitions(store: Store, root: str, products, key: str, keep, condition) -> pa.Table | None:
    files = _partition_files(store, root, products, key, keep)
    if not files:
        return None
    table = store.read_files(root, files, filter=condition, digests=file_digests(files))
    return table.set_column(table.schema.get_field_index("product_id"), "product_id",
                            table["product_id"].cast(pa.string()))


def _range_filter(column: str, lo, hi):
    expr = None
    if lo is not None:
        expr = ds.field(column) >= lo
    if hi is not None:
        upper = ds.field(column) <= hi
        expr = upper if expr is None else expr & upper
    return expr


# ---- bounds ----------------------------------------------------------------------------------------------------
def _timestamp(value, end_of_day: bool) -> datetime | None:
    """A bound as a UTC datetime; a plain date means its midnight (start) or its last microsecond (end)."""
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        ts = pd.Timestamp(value, tz="UTC")
        return (ts + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1)).to_pydatetime() if end_of_day \
            else ts.to_pydatetime()
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _day(value) -> date | None:
    if value is None:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC") if ts.tzinfo else ts).date()


def _empty(kind: str) -> pd.DataFrame:
    schema = BARS_5M_SCHEMA if kind == "5m" else BARS_1D_SCHEMA
    df = pa.table({"product_id": pa.array([], pa.string()),
                   **{f.name: pa.array([], f.type) for f in schema}}).to_pandas()
    if kind == "1d":
        df["price_date"] = df["price_date"].astype("datetime64[ns]")
    return df

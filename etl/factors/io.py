"""The factor stage's edges: prices in from silver, output tables out through the Store (one file per day)."""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import commits
from etl.errors import ConfigError
from etl.settings import Settings
from etl.storage import Store
from etl.warehouse.schema import arrow_schema, check_output

log = logging.getLogger(__name__)

COMMIT_NAME = "factors"
_EXPOSURES = ["product_id", "factor_name", "bucket_start", "beta", "alpha", "r_squared", "r_squared_adj", "n_obs",
              "rank_deficient", "window"]
# table -> (column that names its date=D partition, Arrow schema: the columns in the order written, each typed by
# its declaration in etl/warehouse/tables.yml)
SCHEMAS: dict[str, tuple[str, pa.Schema]] = {
    "factor_returns": ("bucket_start", arrow_schema("factor_returns", ["factor_name", "bucket_start", "factor_return"])),
    "factor_membership": ("holding_start", arrow_schema("factor_membership", [
        "holding_start", "holding_end", "formation_start", "formation_end", "factor_group", "bucket", "factor_name",
        "product_id", "signal", "rank", "n_ranked", "weight"])),
    "factor_exposures_full": ("bucket_start", arrow_schema("factor_exposures_full", _EXPOSURES)),
    "factor_exposures": ("bucket_start", arrow_schema("factor_exposures", [*_EXPOSURES, "as_of_date"])),
}


def read_prices(settings: Settings, products: list[str], start: datetime, end: datetime) -> pd.DataFrame:
    """Silver candles (frequency 60 s) or 5-minute bars (300 s) with bucket_start in [start, end)."""
    from etl import silver

    last = pd.Timestamp(end) - pd.Timedelta(microseconds=1)  # silver's bounds are inclusive
    if settings.factor_frequency_s == 60:
        frame = silver.read_candles(products, start, last.to_pydatetime(), granularity=60, settings=settings)
    elif settings.factor_frequency_s == 300:
        frame = silver.read_bars("5m", products, start, last.to_pydatetime(), settings=settings)
    else:
        raise ConfigError(f"FACTOR_FREQUENCY_S={settings.factor_frequency_s}: expected 60 (1-minute candles) or "
                          "300 (5-minute bars)")
    frame = frame[(frame["bucket_start"] >= pd.Timestamp(start)) & (frame["bucket_start"] < pd.Timestamp(end))]
    return frame[["product_id", "bucket_start", "close", "volume"]]


def write_outputs(store: Store, tables: dict[str, pd.DataFrame], days: list[str] = ()
                  ) -> tuple[dict[str, int], list[str]]:
    """Write each table as outputs/<table>/date=D/<run_id>.parquet, one file per UTC day of its time column, and
    commit them all with one run record named "factors" (etl/commits.py; the days of earlier runs that this run
    does not rewrite stay committed).

    A day's file is replaced whole, so a rerun over the same days is idempotent. `days` (YYYY-MM-DD) are the days
    the run covers: each table gets a file for each of them, empty where it has no rows there, so no table keeps an
    earlier run's rows of a day beside this run's other tables. Returns the rows written per table and the days
    written.
    """
    rows: dict[str, int] = {}
    days_written: set[str] = set()
    parts: dict[tuple[str, str], pa.Table] = {}
    for name, frame in tables.items():
        time_col, schema = SCHEMAS[name]
        day = pd.DatetimeIndex(frame[time_col]).as_unit("ns").asi8 // (86_400 * 10**9)
        order = np.argsort(day, kind="stable")
        day = day[order]
        arrow = to_arrow(frame.iloc[order] if not np.array_equal(order, np.arange(len(order))) else frame, schema)
        check_output(name, arrow.column_names, partition=["date"])
        cuts = np.r_[0, np.flatnonzero(np.diff(day)) + 1, len(day)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):
            if hi <= lo:
                continue
            date = pd.Timestamp(int(day[lo]), unit="D").strftime("%Y-%m-%d")
            parts[(name, f"date={date}")] = arrow.slice(lo, hi - lo)
            days_written.add(date)
        for date in days:  # a day this run covers but left without rows in this table
            if (name, f"date={date}") not in parts:
                parts[(name, f"date={date}")] = schema.empty_table()
                days_written.add(date)
        rows[name] = len(frame)
        log.info("factors: %s %d rows in %d day partitions", name, len(frame), len(cuts) - 2 if len(day) else 0)
    commits.publish(store, COMMIT_NAME, "factors", parts)
    return rows, sorted(days_written)


def read_days(store: Store, days: list[str], columns: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """{table: `columns[table]` of its committed rows of the UTC days `days` (YYYY-MM-DD) the factor commits have
    (an empty frame when none)}, every table from ONE read of the factor records: a factors run committing
    meanwhile gives all of them or none (not one run's returns beside another's betas)."""
    files = (commits.read_manifest(store, COMMIT_NAME) or {"files": {}})["files"]
    out = {}
    for table, cols in columns.items():
        parts = [commits.read_entry(store, files[key], columns=cols)
                 for key in (f"{table}/date={d}" for d in days) if key in files]
        out[table] = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame(columns=cols)
    return out


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame's columns in schema order and types (categoricals become plain strings)."""
    arrays = []
    for field in schema:
        array = pa.array(frame[field.name], from_pandas=True)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        arrays.append(array.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)

"""Warehouse load speed: our COPY upsert vs pandas `DataFrame.to_sql` (default method), same 5-minute bars, same
embedded Postgres (a throwaway database), same run. Full mode also times `dbt build` on a demo-like data set.

Sizes: 2,000,000 bars (quick: 100,000, to stay under 20 s on a shared machine). Target: COPY >= 3x the to_sql throughput; dbt build well under 60 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from etl import db
from etl.settings import get_settings
from etl.warehouse import copy_upsert, load_warehouse, run_dbt
from etl.warehouse.schema import BY_NAME
from tests.support import warehouse_sample as sample

log = logging.getLogger(__name__)
TARGET_RATIO = 3.0
DBT_BUDGET_S = 60.0


def make_bars(n_rows: int, seed: int = 3) -> pd.DataFrame:
    """n_rows 5-minute bars over 12 products, in the raw.bars_5m columns."""
    rng = np.random.default_rng(seed)
    products = [f"P{i:02d}-USD" for i in range(12)]
    per = -(-n_rows // len(products))
    buckets = pd.date_range("2020-01-01", periods=per, freq="5min", tz="UTC")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, (len(products), per)), axis=1)).ravel()[:n_rows]
    open_ = close * (1 + rng.normal(0, 0.0005, n_rows))
    df = pd.DataFrame({
        "product_id": np.repeat(products, per)[:n_rows], "bucket_start": np.tile(buckets, len(products))[:n_rows],
        "open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) * 0.999,
        "close": close, "volume": rng.uniform(1, 100, n_rows), "vwap": (open_ + close) / 2,
        "n_candles": np.int64(5), "is_complete": True, "quote_currency": "USD",
        "first_candle_at": np.tile(buckets, len(products))[:n_rows],
        "last_candle_at": np.tile(buckets, len(products))[:n_rows] + pd.Timedelta("4min"),
    })
    return df


@contextlib.contextmanager
def environment(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _create(url: str, name: str) -> None:
    ddl = BY_NAME["bars_5m"].ddl()[0].replace("raw.bars_5m", f"public.{name}")
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(ddl)


def time_loads(url: str, df: pd.DataFrame) -> tuple[float, float]:
    from sqlalchemy import create_engine

    _create(url, "bars_copy")
    _create(url, "bars_to_sql")
    t0 = time.perf_counter()
    with db.connect(url=url) as conn:
        written = copy_upsert(conn, "public.bars_copy", df, ["product_id", "bucket_start"])
    ours = time.perf_counter() - t0
    assert written == len(df), (written, len(df))

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    t0 = time.perf_counter()
    df.to_sql("bars_to_sql", engine, schema="public", if_exists="append", index=False)  # the baseline
    baseline = time.perf_counter() - t0
    engine.dispose()
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute("select (select count(*) from public.bars_copy), (select count(*) from public.bars_to_sql)")
        assert cur.fetchone() == (len(df), len(df))
    return ours, baseline


def time_dbt_build(url: str, days: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, environment(
            PIPELINE_DATABASE_URL=url, PIPELINE_DATA_DIR=f"{tmp}/data", PIPELINE_STATE_DIR=f"{tmp}/state",
            PIPELINE_REFERENCE_DIR=str(sample.write_reference(Path(tmp) / "reference"))):
        settings = get_settings()
        sample.write_sample(settings, first_day=date(2026, 1, 1), days=days)
        load_warehouse(settings, run_dbt=False)
        t0 = time.perf_counter()
        run_dbt("build", settings)
        return time.perf_counter() - t0


def run(quick: bool) -> dict:
    n_rows = 100_000 if quick else 2_000_000  # quick: 200k took 34 s on the shared 2-core box (to_sql 28 s)
    df = make_bars(n_rows)
    results = {}
    with db.scratch_database(db.database_url(get_settings()), "bench_wh") as url:
        ours, baseline = time_loads(url, df)
        ratio = baseline / ours
        results["warehouse_load_bars"] = {
            "ours_s": round(ours, 3), "baseline": "DataFrame.to_sql (default method) into the same table",
            "baseline_s": round(baseline, 3), "ratio": round(ratio, 2), "ratio_means": "baseline_s / ours_s",
            "target": f">= {TARGET_RATIO}", "meets_target": ratio >= TARGET_RATIO,
            "rows": n_rows, "ours_rows_per_s": round(n_rows / ours), "baseline_rows_per_s": round(n_rows / baseline),
        }
        if not quick:  # dbt's start-up alone takes several seconds: quick mode stays under 20 s without it
            build = time_dbt_build(url, days=7)
            results["warehouse_dbt_build"] = {
                "ours_s": round(build, 3), "baseline": "a budget of well under a minute",
                "baseline_s": DBT_BUDGET_S, "ratio": round(DBT_BUDGET_S / build, 2),
                "ratio_means": "budget_s / dbt build seconds (3 products x 7 days of 5-minute bars, every gold model "
                               "and test)",
                "target": ">= 1", "meets_target": build < DBT_BUDGET_S,
            }
    return results


if __name__ == "__main__":
    import json

    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

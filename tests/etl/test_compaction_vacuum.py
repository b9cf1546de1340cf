"""Review: `python -m etl compact` (etl/compaction.py) does not vacuum the silver Delta tables. Fails on the code it
was written against."""

from __future__ import annotations

from datetime import date, timedelta

from etl.compaction import compact
from etl.lake import Lake
from etl.settings import get_settings
from etl.silver import build
from etl.silver.incremental import BARS_1D_DIR, BARS_5M_DIR
from etl.storage import get_store
from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, write_batch


def test_compact_vacuums_the_superseded_silver_files_past_the_retention(data_dir, monkeypatch):
    """docs/commit_protocol.md: "compact ... vacuums every Delta table past PIPELINE_LAKE_RETENTION_DAYS"; docs/lake.md:
    silver's superseded files are "kept for time travel until `vacuum`", a killed build's files are "orphans ...
    (vacuumed after PIPELINE_LAKE_RETENTION_DAYS)". compaction.py vacuums bronze candles, the stream tables and
    outputs/ only: silver's superseded files (a new bars_1d year file every build) stay on disk for ever."""
    write_batch(data_dir, minute_candles("ETH-USD", T0, 600), "b1", T0 + timedelta(days=1))
    build(now=FUTURE)
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=100), 300, seed=2), "b2",
                T0 + timedelta(days=2))
    build(now=FUTURE)                                 # supersedes the day's 5-minute file and the year file
    lake = Lake.of(get_store())
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    compact(before=date(2026, 1, 1), settings=get_settings())
    stale = {root: sorted(str(p.relative_to(data_dir)) for p in (data_dir / root).rglob("*.parquet")
                          if str(p.relative_to(data_dir)) not in set(lake.files(root)))
             for root in (BARS_5M_DIR, BARS_1D_DIR)}
    assert stale == {BARS_5M_DIR: [], BARS_1D_DIR: []}, f"superseded silver files left past the retention: {stale}"

"""The whole chain on an object store (issue 14): ingest -> silver -> compact -> risk -> load with
PIPELINE_DATA_DIR=s3://... against a real S3-compatible server process (moto's standalone server), equal to the
same chain on a local path; a writer killed mid-commit leaves the previous complete state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from etl import candles, db
from etl.lake import Lake
from etl.orchestration import tasks
from etl.settings import get_settings
from etl.silver import read_bars
from etl.storage import get_store
from tests.support.reference import small_reference

ROOT = Path(__file__).resolve().parents[2]
PRODUCTS = ["BTC-USD", "ETH-USD"]
AS_OF = date(2026, 3, 1)


@pytest.fixture
def s3_env(s3_bucket, simulator, pg_url, tmp_path, monkeypatch):
    """A fresh bucket (its credentials and endpoint in the standard AWS variables) and a small book."""
    for name, value in {"PIPELINE_DATABASE_URL": pg_url, "PIPELINE_STATE_DIR": str(tmp_path / "state"),
                        "PIPELINE_PRODUCTS": ",".join(PRODUCTS), "PIPELINE_HISTORY_DAYS": "1",
                        "PIPELINE_DAILY_HISTORY_DAYS": "30"}.items():
        monkeypatch.setenv(name, value)
    small_reference(ROOT / "etl" / "reference_data", tmp_path / "reference", PRODUCTS)
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(tmp_path / "reference"))
    return s3_bucket


def _chain(data_dir: str, monkeypatch) -> dict:
    monkeypatch.setenv("PIPELINE_DATA_DIR", data_dir)
    s = get_settings()
    for product in PRODUCTS:
        tasks.ingest_daily_history(product, AS_OF, settings=s)
        tasks.fetch_candles(product, datetime(2026, 3, 1, 18, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), 60,
                               settings=s)
    tasks.build_silver(settings=s)
    compacted = tasks.compact_bronze(AS_OF, settings=s)
    risk = tasks.compute_risk(AS_OF, settings=s)
    with db.scratch_database(s.database_url, "s3chain") as url:
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        loaded = tasks.load_warehouse(settings=get_settings())
        counts = {t: int(db.run_psql(f"select count(*) from raw.{t}", url=url)) for t, n in loaded["rows"].items()}
    monkeypatch.setenv("PIPELINE_DATABASE_URL", s.database_url)
    return {"bars_5m": read_bars("5m", settings=s), "bars_1d": read_bars("1d", settings=s), "risk": risk,
            "compacted": compacted, "raw_counts": counts, "store": get_store(s)}


@pytest.mark.slow
def test_object_store_whole_chain_equals_the_local_chain(s3_env, tmp_path, monkeypatch):
    remote = _chain(f"{s3_env}/data", monkeypatch)
    local = _chain(str(tmp_path / "local"), monkeypatch)
    assert remote["store"].root.startswith(s3_env[5:]) and not remote["store"].is_local
    drop = ["first_candle_at", "last_candle_at"]
    for kind in ("bars_5m", "bars_1d"):
        assert len(remote[kind]) > 0
        pd.testing.assert_frame_equal(remote[kind].drop(columns=drop), local[kind].drop(columns=drop))
    # silver folded the days it read already: compaction sees them closed and compact on both
    assert remote["compacted"]["compacted"] == local["compacted"]["compacted"]
    assert remote["compacted"]["partitions_seen"] == local["compacted"]["partitions_seen"] > 0
    assert remote["raw_counts"] == local["raw_counts"]
    assert remote["raw_counts"]["bars_5m"] == len(remote["bars_5m"]) and remote["raw_counts"]["risk_metrics"] > 0
    keys = [rel for rel, _ in remote["store"].entries("")]
    assert not [k for k in keys if "/.tmp-" in k]  # no rename dance on S3: nothing temporary left behind


@pytest.mark.slow
def test_object_store_ingest_killed_mid_commit_leaves_the_previous_state(s3_env, make_simulator, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_DIR", f"{s3_env}/crash")
    s = get_settings()
    tasks.fetch_candles("BTC-USD", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, 6, tzinfo=UTC), 60,
                           settings=s)
    tasks.build_silver(settings=s)
    before = read_bars("5m", settings=s)
    slow = make_simulator(rate_limit_rps=1000.0, burst=1000, latency_ms=150)
    env = {**os.environ, "COINBASE_API_URL": slow.url, "PIPELINE_MAX_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "etl", "ingest", "--products", "BTC-USD", "--start",
                             "2026-03-02T00:00", "--end", "2026-03-04T00:00"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = get_store(s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("date=2026-03-02" in r for r, _ in store.entries("bronze/candles")):
        time.sleep(0.1)  # the first day's file is written; the second day and the manifest are not
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert any("date=2026-03-02" in r for r, _ in store.entries("bronze/candles"))
    history = Lake.of(store, s).table(candles.CANDLES_DIR).history()
    assert sum(candles.BATCH_ID in c for c in history) == 1  # the killed batch never committed
    # nothing committed since the last build: nothing to rebuild, bars unchanged
    assert tasks.build_silver(settings=s)["partitions"] == 0
    pd.testing.assert_frame_equal(read_bars("5m", settings=s), before)

    tasks.fetch_candles("BTC-USD", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC), 60,
                           settings=s)
    tasks.build_silver(settings=s)
    after = read_bars("5m", settings=s)
    assert len(after) == len(before) + 2 * 288

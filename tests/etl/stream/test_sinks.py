"""The embedded sink writes the bronze stream tables as Delta tables: one commit per table per micro-batch, read
by the tables' logs (ours and DuckDB's), so a file no commit names (a batch killed before its commit) is never
read."""

from __future__ import annotations

import pytest

from etl.lake import Lake
from etl.silver.trade_bars import build_trade_bars
from etl.storage import get_store
from etl.stream.sinks import TRADES_DIR, TRADES_SCHEMA, BronzeSink, MicroBatch
from tests.support.delta_reader import EXTENSION, duckdb_frame

DAY = "2026-01-01"


def _batch(batch_id: str, trades: list[tuple[str, str]]) -> MicroBatch:
    batch = MicroBatch(batch_id)
    for i, (trade_id, price) in enumerate(trades):
        when = f"{DAY}T00:0{i}:00Z"
        batch.add_trade("BTC-USD", DAY, (trade_id, price, "0.5", "BUY", when, "update", "market_trades", when, "",
                                         i, "c1", 1767225600.0 + i, None))
    batch.add_gap(DAY, ("sequence", "c1", "market_trades", 3, 5, 1, 1767225600.0, ""))
    return batch


@pytest.mark.skipif(EXTENSION is None, reason="duckdb-ext-delta is not installed (requirements-dev.txt)")
def test_each_batch_is_one_commit_per_table_and_duckdb_reads_exactly_the_committed_rows(data_dir):
    store = get_store()
    sink = BronzeSink(store)
    sink.write(_batch("20260101T000000000000Z-a-000001", [("1", "100.0"), ("2", "101.0")]))
    sink.write(_batch("20260101T000000000000Z-a-000002", [("3", "102.0")]))
    # a batch killed after writing its file, before its commit: the file is on disk, no log names it
    orphan = _batch("20260101T000000000000Z-a-000003", [("4", "999.0")])
    store.write_parquet(f"{TRADES_DIR}/product_id=BTC-USD/date={DAY}/{orphan.batch_id}.parquet",
                        orphan.trades[("BTC-USD", DAY)].table(TRADES_SCHEMA, orphan.batch_id))
    lake = Lake.of(store)
    history = lake.table(TRADES_DIR).history()
    assert [c["batch_id"] for c in history if "batch_id" in c] == ["20260101T000000000000Z-a-000002",
                                                                   "20260101T000000000000Z-a-000001"]
    assert lake.version("bronze/stream_gaps") == 2   # version 0 made the table, then one commit per batch
    assert [f.rsplit("/", 1)[1] for f in lake.files(TRADES_DIR)] == [
        "20260101T000000000000Z-a-000001.parquet", "20260101T000000000000Z-a-000002.parquet"]

    theirs = duckdb_frame(str(data_dir / TRADES_DIR), exclude=()).sort_values("trade_id", ignore_index=True)
    assert theirs["trade_id"].tolist() == ["1", "2", "3"] and set(theirs["product_id"]) == {"BTC-USD"}
    assert set(theirs["date"]) == {DAY} and len(duckdb_frame(str(data_dir / "bronze/stream_gaps"), exclude=())) == 2
    summary = build_trade_bars()
    assert summary.files == 2 and summary.trades_in == 3   # the orphan file is not a committed batch


def test_two_collectors_and_an_optimize_at_once_on_the_s3_server_lose_nothing(s3_bucket, tmp_path, monkeypatch):
    """Item 6 of issue 31 for the stream tables: two sinks commit to the same tables at once through S3's
    conditional PUTs (no lock service), then a trade-bars build runs while bronze is optimized: every trade is
    there once, and the bars equal a full refresh's."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("PIPELINE_DATA_DIR", f"{s3_bucket}/lake")
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    store = get_store()
    start = threading.Barrier(2)

    def collector(name: str) -> None:
        sink = BronzeSink(store)
        start.wait()
        for n in range(4):
            sink.write(_batch(f"20260101T00000{n}000000Z-{name}-00000{n}",
                              [(f"{name}{n}a", "100.0"), (f"{name}{n}b", "101.0")]))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(collector, ("a", "b")))
    lake = Lake.of(store)
    trades = lake.read(TRADES_DIR)
    assert trades.num_rows == 16 and len(set(trades["trade_id"].to_pylist())) == 16
    assert len(lake.files(TRADES_DIR)) == 8 and lake.version(TRADES_DIR) == 8   # version 0, then 8 batch commits

    with ThreadPoolExecutor(2) as pool:   # silver reads bronze while an optimize rewrites its files
        build = pool.submit(build_trade_bars)
        optimized = pool.submit(lake.optimize, TRADES_DIR)
        assert build.result().trades_in == 16 and optimized.result()["numFilesRemoved"] == 8
    assert len(lake.files(TRADES_DIR)) == 1 and lake.read(TRADES_DIR).num_rows == 16
    build_trade_bars()                      # the optimized file is news: the day is rebuilt, to the same bars
    incremental = lake.read("silver/trade_bars_5m").sort_by("bucket_start")
    build_trade_bars(full_refresh=True)
    assert lake.read("silver/trade_bars_5m").sort_by("bucket_start").equals(incremental)
    assert incremental["n_trades"].to_pylist() == [16] and incremental["volume"].to_pylist() == [8.0]


def test_compact_optimizes_the_closed_days_of_the_stream_tables_into_one_file_per_partition(data_dir):
    from datetime import date

    from etl.compaction import compact

    store = get_store()
    sink = BronzeSink(store)
    for n in range(5):
        sink.write(_batch(f"20260101T00000{n}000000Z-a-00000{n}", [(f"t{n}", "100.0")]))
    lake = Lake.of(store)
    before = lake.read(TRADES_DIR).sort_by("trade_id")
    summary = compact(before=date(2026, 1, 2))          # 2026-01-01 is the day before: still batch files
    assert summary.stream_files_compacted == 0 and len(lake.files(TRADES_DIR)) == 5
    summary = compact(before=date(2026, 1, 3))
    assert summary.stream_files_compacted == 5 + 5      # trades and the gaps: five batch files each
    assert len(lake.files(TRADES_DIR)) == 1 and lake.read(TRADES_DIR).sort_by("trade_id").equals(before)
    assert "10 stream batch file(s) compacted" in str(summary)

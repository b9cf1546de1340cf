"""Bronze compaction (issue 14, on the Delta table since issue 31): exact rows, atomic, idempotent, crash-safe."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pyarrow as pa

from etl import candles
from etl.bronze import watermark
from etl.cli import main
from etl.lake import Lake
from etl.orchestration import intervals, tasks
from etl.settings import get_settings
from etl.silver import build
from etl.storage import Store
from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, silver_files, write_batch
from tests.support.bronze import read_bronze

DAY = "bronze/candles/product_id=BTC-USD/date=2026-01-05"


def _history(data_dir):
    """Three committed batches revising each other on 2026-01-05 (1-minute and daily candles), a batch of the
    next day, and an uncommitted batch file (its writer died before the commit)."""
    write_batch(data_dir, minute_candles("BTC-USD", T0, 1440), "b1", T0 + timedelta(days=1))
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(hours=20), 300, seed=1), "b2",
                T0 + timedelta(days=1, hours=1))
    daily = minute_candles("BTC-USD", T0, 1, seed=2, step=86400)
    write_batch(data_dir, daily, "b3", T0 + timedelta(days=1, hours=2))
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(days=1), 60, seed=3), "b4",
                T0 + timedelta(days=2))
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(hours=5), 60, seed=4), "orphan",
                T0 + timedelta(days=3), commit=False)


def _deduped(settings) -> pd.DataFrame:
    df = read_bronze(settings=settings, dedup=True)
    return df.drop(columns=["date"]).sort_values(["granularity", "bucket_start"]).reset_index(drop=True)


def _committed(data_dir, day: str = DAY) -> list[str]:
    return [f for f in Lake(str(data_dir)).files(candles.CANDLES_DIR) if f.startswith(day + "/")]


def test_compaction_keeps_exactly_the_rows_a_reader_dedupes_to(data_dir):
    _history(data_dir)
    settings = get_settings()
    before_rows = _deduped(settings)
    build(full_refresh=True, now=FUTURE)
    before_silver = silver_files(data_dir)

    summary = compaction_run(date(2026, 1, 6))
    assert (summary.compacted, summary.partitions_seen, summary.files_compacted) == (1, 1, 3)
    assert summary.rows_in == 1440 + 240 + 1 and summary.rows_out == 1440 + 1
    names = sorted(f.rsplit("/", 1)[1] for f in _committed(data_dir))     # one file per granularity
    assert len(names) == 2 and all(n.startswith("compacted-") for n in names)
    assert sorted(n.rsplit("-", 1)[1] for n in names) == ["g60.parquet", "g86400.parquet"]
    assert {"b1.parquet", "b2.parquet", "b3.parquet", "orphan.parquet"} <= {p.name for p in (data_dir / DAY).iterdir()}
    assert len(_committed(data_dir, "bronze/candles/product_id=BTC-USD/date=2026-01-06")) == 2  # open day as it was
    pd.testing.assert_frame_equal(_deduped(settings), before_rows)          # the very rows, column by column
    assert watermark("BTC-USD", 60, settings) == T0 + timedelta(days=1, minutes=59)

    assert build(now=FUTURE).partitions == 2  # the compacted day, once, and the day after (the quality gate's context)
    assert silver_files(data_dir) == before_silver                          # same bars, same bytes
    # current versions only (the incremental run folded the day after too: its two batches overlap by 60 rows)
    assert build(full_refresh=True, now=FUTURE).rows_in == 1441 + 60

    on_disk = sorted(p.name for p in (data_dir / DAY).iterdir())
    again = compaction_run(date(2026, 1, 6))                               # idempotent
    assert (again.compacted, again.files_compacted) == (0, 0)
    assert sorted(p.name for p in (data_dir / DAY).iterdir()) == on_disk


def compaction_run(before: date):
    from etl.compaction import compact

    return compact(before=before)


def test_superseded_files_stay_readable_during_retention_and_readers_never_count_them(data_dir, monkeypatch):
    _history(data_dir)
    settings = get_settings()
    expected = _deduped(settings)
    lake = Lake(str(data_dir))
    version = lake.version(candles.CANDLES_DIR)
    compaction_run(date(2026, 1, 6))  # default retention: 90 days
    assert {"b1.parquet", "b2.parquet", "b3.parquet"} <= {p.name for p in (data_dir / DAY).iterdir()}
    raw = read_bronze(settings=settings)
    assert len(raw[raw["date"] == "2026-01-05"]) == 1441  # the compacted version only, not both
    pd.testing.assert_frame_equal(_deduped(settings), expected)
    assert len(candles.files(lake, version)) == 5                          # time travel: the old files
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    later = compaction_run(date(2026, 1, 6))
    assert later.compacted == 0                                            # b1, b2, b3 and the orphan go
    assert {p.name for p in (data_dir / DAY).iterdir()} == {f.rsplit("/", 1)[1] for f in _committed(data_dir)}
    assert later.files_vacuumed == 4
    pd.testing.assert_frame_equal(_deduped(settings), expected)


def test_a_compaction_killed_before_its_commit_leaves_the_old_version_and_the_rerun_finishes(data_dir):
    """A compaction writes its file, then commits: killed in between, its file is one no log names."""
    _history(data_dir)
    settings = get_settings()
    expected = _deduped(settings)
    build(full_refresh=True, now=FUTURE)
    store = Store.from_uri(str(data_dir))
    rows = pa.concat_tables([store.read_parquet(f) for f in _committed(data_dir)], promote_options="default")
    store.write_parquet(f"{DAY}/part-00001-killed-c000.zstd.parquet", rows)  # written, never committed
    pd.testing.assert_frame_equal(_deduped(settings), expected)            # readers: the old version
    assert build(now=FUTURE).partitions == 0                               # silver sees no change

    assert compaction_run(date(2026, 1, 6)).compacted == 1
    pd.testing.assert_frame_equal(_deduped(settings), expected)


def test_late_data_after_compaction_is_folded_into_the_next_version_by_the_next_silver_run(data_dir):
    _history(data_dir)
    settings = get_settings()
    compaction_run(date(2026, 1, 6))
    build(now=FUTURE)
    late = minute_candles("BTC-USD", T0 + timedelta(hours=23), 60, seed=9)
    write_batch(data_dir, late, "b5", T0 + timedelta(days=4))
    expected = _deduped(settings)
    assert build(now=FUTURE).batches == 1
    assert len(_committed(data_dir)) == 2              # the compacted files and b5's, folded: one per granularity
    pd.testing.assert_frame_equal(_deduped(settings), expected)
    rebuilt = silver_files(data_dir)
    assert compaction_run(date(2026, 1, 6)).compacted == 0                 # nothing left to compact
    shutil.rmtree(data_dir / "silver")
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == rebuilt


def test_the_open_day_stays_one_file_however_many_batches_arrive(data_dir):
    for k in range(6):  # an intraday run every 5 minutes, each refetching the last 10 minutes (overlap)
        start = T0 + timedelta(minutes=max(0, 5 * k - 5))
        write_batch(data_dir, minute_candles("BTC-USD", start, 10, seed=k), f"run{k}", T0 + timedelta(hours=1 + k))
        summary = build(now=FUTURE)
        assert summary.partitions == 1 and summary.batches == 1
        (only,) = _committed(data_dir)                                     # the silver run folded the day
        assert only.endswith("run0.parquet" if k == 0 else "-g60.parquet")
    folded = _deduped(get_settings())
    assert len(folded) == 30 and list(folded["batch_id"].tail(10)) == ["run5"] * 10  # latest ingestion wins
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental


def test_compact_cli(data_dir, capsys):
    _history(data_dir)
    assert main(["compact", "--before", "2026-01-07"]) == 0
    assert "2 of 2 closed bronze partition(s) compacted" in capsys.readouterr().out
    assert main(["compact", "--before", "2026-01-07"]) == 0
    assert "0 of 2 closed bronze partition(s) compacted" in capsys.readouterr().out


def test_end_of_day_fetches_only_the_daily_candles_it_lacks_plus_the_overlap(data_dir, simulator, monkeypatch):
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "30")
    monkeypatch.setenv("PIPELINE_DAILY_OVERLAP_DAYS", "3")
    settings = get_settings()
    first = tasks.ingest_daily_history("BTC-USD", date(2026, 3, 1), settings=settings)
    assert first["candles"] == 30                                          # the first run backfills
    second = tasks.ingest_daily_history("BTC-USD", date(2026, 3, 2), settings=settings)
    assert second["candles"] == 4                                          # 3 overlap days + the new one
    mark, oldest = watermark("BTC-USD", 86400, settings), watermark("BTC-USD", 86400, settings, oldest=True)
    assert oldest == datetime(2026, 1, 31, tzinfo=UTC)
    assert intervals.daily_history_start(mark, oldest, date(2026, 3, 2), settings) == datetime(2026, 2, 28, tzinfo=UTC)
    rerun = tasks.ingest_daily_history("BTC-USD", date(2026, 3, 1), settings=settings)  # an earlier as-of day
    assert rerun["candles"] == 3
    daily = read_bronze(granularity=86400, settings=settings, dedup=True)
    assert len(daily) == 31 and daily["bucket_start"].max() == pd.Timestamp("2026-03-02", tz="UTC")


def test_duckdb_reads_exactly_the_committed_candles(data_dir):
    """An independent reader (DuckDB's delta extension) of the bronze table: after a compaction, with superseded
    files and an uncommitted batch's file on disk, it reads exactly the rows our readers take."""
    from tests.support.delta_reader import duckdb_frame

    _history(data_dir)
    compaction_run(date(2026, 1, 6))
    on_disk = len(list((data_dir / "bronze/candles").rglob("*.parquet")))
    ours = read_bronze(settings=get_settings())
    theirs = duckdb_frame(str(data_dir / "bronze/candles"), exclude=())
    assert on_disk == 8 and len(candles.files(Lake(str(data_dir)))) == 4   # b1-b3, orphan + 2 compacted, b2, b4
    key = ["date", "granularity", "bucket_start", "batch_id"]
    assert len(theirs) == len(ours) == 1441 + 60 + 60
    pd.testing.assert_frame_equal(theirs[ours.columns].sort_values(key).reset_index(drop=True),
                                  ours.sort_values(key).reset_index(drop=True), check_dtype=False)


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
    from etl.compaction import compact
    from etl.silver.incremental import BARS_1D_DIR, BARS_5M_DIR
    from etl.storage import get_store

    lake = Lake.of(get_store())
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    compact(before=date(2026, 1, 1), settings=get_settings())
    stale = {root: sorted(str(p.relative_to(data_dir)) for p in (data_dir / root).rglob("*.parquet")
                          if str(p.relative_to(data_dir)) not in set(lake.files(root)))
             for root in (BARS_5M_DIR, BARS_1D_DIR)}
    assert stale == {BARS_5M_DIR: [], BARS_1D_DIR: []}, f"superseded silver files left past the retention: {stale}"
    assert build(now=FUTURE).partitions == 0        # vacuum's own commits do not hide what the last build read
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=200), 300, seed=3), "b3",
                T0 + timedelta(days=3))
    build(now=FUTURE)
    build(now=FUTURE)                                 # a third year file: two superseded ones to vacuum
    for _ in range(2):                                # two compact runs between builds
        compact(before=date(2026, 1, 1), settings=get_settings())
    assert build(now=FUTURE).partitions == 0


def test_compact_on_a_folder_not_migrated_yet_refuses_and_deletes_no_old_file(data_dir, capsys):
    """The upgraded pipeline runs before `migrate-lake`: an ingest's commit made the candle table, which names only
    its batch; the old batches (months of history, named only by their manifests) are files no log names, and
    compact's full vacuum deleted every one older than the retention, so the migration had nothing left to adopt:
    the history was gone. compact refuses (exit 2, naming the old layout and migrate-lake) and deletes nothing."""
    import os

    from etl import migrate
    from tests.etl.silver.test_incremental import commit_batch

    store = Store.from_uri(str(data_dir))
    old = write_batch(data_dir, minute_candles("BTC-USD", T0, 60), "b1", T0 + timedelta(days=1), commit=False)
    store.write_json("bronze/_manifests/b1.json", {"batch_id": "b1", "files": old,
                                                   "sha256": {r: store.digest(r) for r in old}})
    months_ago = (datetime.now(UTC) - timedelta(days=200)).timestamp()
    os.utime(store.path(old[0]), (months_ago, months_ago))
    new = write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(days=1), 60, seed=1), "new",
                      T0 + timedelta(days=2), commit=False)
    commit_batch(data_dir, new, "new")                                 # the upgraded ingest makes the table

    assert main(["compact"]) == 2
    err = capsys.readouterr().err
    assert "bronze/_manifests" in err and "python -m etl migrate-lake" in err and err.count("\n") == 1, err
    assert store.exists(old[0])
    migrate.migrate_lake()
    assert Lake.of(store).files(candles.CANDLES_DIR) == sorted([*old, *new])
    assert main(["compact"]) == 0                                      # migrated: compact runs


def test_compact_on_a_stream_folder_an_upgraded_collector_wrote_to_first_refuses_and_deletes_no_old_batch(
        data_dir, capsys):
    """The upgraded collector ran before `migrate-lake`: its first commit made the Delta table `bronze/trades`, which
    names only its own batches; the old batches (streamed once, never to be fetched again) are files no log names.
    With no other file of the old layout there, `migrate.unconverted` saw nothing and compact's full vacuum deleted
    every old batch older than the retention: the trades were gone before the migration could adopt them. compact
    refuses (exit 2, naming the folder and migrate-lake) and deletes nothing; after the migration it runs."""
    import os

    from etl import migrate
    from etl.stream.sinks import TRADES_DIR, TRADES_SCHEMA, BronzeSink, MicroBatch

    store = Store.from_uri(str(data_dir))

    def batch(n: int, day: str) -> MicroBatch:
        b = MicroBatch(f"2026010{n}T000000000000Z-a-00000{n}")
        when = f"{day}T00:00:00Z"
        b.add_trade("BTC-USD", day, (f"{n}0", "100.0", "0.5", "BUY", when, "update", "market_trades", when, "", 0,
                                     "c1", 1767225600.0, None))
        return b

    old = batch(1, "2026-01-01")
    old_file = f"{TRADES_DIR}/product_id=BTC-USD/date=2026-01-01/{old.batch_id}.parquet"
    store.write_parquet(old_file, old.trades[("BTC-USD", "2026-01-01")].table(TRADES_SCHEMA, old.batch_id))
    months_ago = (datetime.now(UTC) - timedelta(days=200)).timestamp()
    os.utime(store.path(old_file), (months_ago, months_ago))
    BronzeSink(store).write(batch(2, "2026-01-02"))                  # the upgraded collector makes the table
    assert migrate.unconverted(store) == TRADES_DIR

    assert main(["compact"]) == 2
    err = capsys.readouterr().err
    assert TRADES_DIR in err and "python -m etl migrate-lake" in err and err.count("\n") == 1, err
    assert store.exists(old_file)
    migrate.migrate_lake()
    assert migrate.unconverted(store) is None
    assert sorted(Lake.of(store).read(TRADES_DIR)["trade_id"].to_pylist()) == ["10", "20"]
    assert main(["compact"]) == 0                                    # migrated: compact runs
    assert sorted(Lake.of(store).read(TRADES_DIR)["trade_id"].to_pylist()) == ["10", "20"]

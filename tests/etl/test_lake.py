"""The lake's Delta tables (etl/lake.py) and the output commits on them (etl/commits.py): versions and their
metadata, time travel, a crash before the run record, vacuum, an independent reader (DuckDB's delta extension), and
concurrent writers on a local disk and on the S3 server (moto)."""

from __future__ import annotations

import glob
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pyarrow as pa
import pytest

from etl import commits
from etl.errors import ValidationError
from etl.lake import Lake, LakeConflict
from etl.settings import get_settings
from etl.storage import Store, get_store
from tests.support.delta_reader import EXTENSION, duckdb_rows

DAY = date(2026, 3, 1)


def metrics(day: date, var: list[float]) -> pa.Table:
    return pa.table({"portfolio_id": [f"P{i:03d}" for i in range(len(var))], "as_of_date": [day] * len(var),
                     "var_99_hist": var})


def history(day: date, pnl: list[float]) -> pa.Table:
    """A history table: one run's partition holds rows of many days."""
    days = [date.fromordinal(day.toordinal() - i) for i in range(len(pnl))]
    return pa.table({"portfolio_id": ["P000"] * len(pnl), "as_of_date": days, "daily_pnl": pnl})


def publish_day(store: Store, day: date, var: list[float], pnl: list[float]) -> dict:
    part = f"as_of_date={day.isoformat()}"
    return commits.publish(store, commits.risk_manifest(day), "risk",
                           {("risk_metrics", part): metrics(day, var), ("pnl_daily", part): history(day, pnl)},
                           meta={"portfolios": ["P000"]})


def committed(store: Store, day: date, table: str) -> pa.Table:
    manifest = commits.read_manifest(store, commits.risk_manifest(day))
    return commits.read_entry(store, manifest["files"][f"{table}/as_of_date={day.isoformat()}"])


def test_a_write_is_a_version_with_its_metadata_and_earlier_versions_stay_readable(data):
    lake = Lake.of(get_store())
    assert lake.table("t") is None and lake.read("t") is None
    assert lake.write("t", pa.table({"k": ["a"], "v": [1.0]}), metadata={"run_id": "r1"}) == 0
    assert lake.write("t", pa.table({"k": ["b"], "v": [2.0]}), metadata={"run_id": "r2"}) == 1
    assert [(c["version"], c["run_id"]) for c in lake.table("t").history()] == [(1, "r2"), (0, "r1")]
    assert lake.read("t", version=0).to_pydict() == {"k": ["a"], "v": [1.0]}
    assert sorted(lake.read("t")["k"].to_pylist()) == ["a", "b"]
    config = lake.table("t").metadata().configuration
    assert config["delta.logRetentionDuration"] == "interval 2160 hours"               # 90 days
    assert config["delta.deletedFileRetentionDuration"] == "interval 7776000 seconds"  # the same, in seconds
    assert config["delta.checkpointInterval"] == "10"


def test_a_run_replaces_its_partitions_and_readers_see_only_committed_runs(data):
    store = get_store()
    first = publish_day(store, DAY, [100.0, 200.0], [1.0, 2.0, 3.0])
    assert set(first["files"]) == {"risk_metrics/as_of_date=2026-03-01", "pnl_daily/as_of_date=2026-03-01"}
    assert committed(store, DAY, "risk_metrics").to_pydict() == metrics(DAY, [100.0, 200.0]).to_pydict()
    # a history table keeps each row's own as_of_date: the run's day is the partition column run_as_of_date
    assert committed(store, DAY, "pnl_daily").to_pydict() == history(DAY, [1.0, 2.0, 3.0]).to_pydict()
    entry = first["files"]["pnl_daily/as_of_date=2026-03-01"]
    assert entry["columns"] == {"run_as_of_date": "2026-03-01"} and entry["run_id"] == first["run_id"]
    assert [posixpath.dirname(p) for p in entry["files"]] == ["outputs/pnl_daily/run_as_of_date=2026-03-01"]

    second = publish_day(store, DAY, [110.0, 210.0], [4.0])  # a rerun of the day replaces it whole
    assert committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist() == [110.0, 210.0]
    assert committed(store, DAY, "pnl_daily")["daily_pnl"].to_pylist() == [4.0]
    assert set(commits.committed_files(store)) == {p for e in second["files"].values() for p in e["files"]}
    # the first run is still there for time travel: its version of the table reads as it did
    old = first["files"]["risk_metrics/as_of_date=2026-03-01"]
    assert commits.read_entry(store, old)["var_99_hist"].to_pylist() == [100.0, 200.0]


def test_a_run_killed_before_its_record_leaves_the_previous_commit(data, monkeypatch):
    store = get_store()
    before = publish_day(store, DAY, [100.0], [1.0])
    real = Lake.write

    def killed(self, rel, *args, **kwargs):
        if rel == commits.RUNS:
            raise KeyboardInterrupt("killed before the run record")
        return real(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        publish_day(store, DAY, [999.0], [9.0])
    monkeypatch.setattr(Lake, "write", real)
    assert commits.read_manifest(store, commits.risk_manifest(DAY)) == before
    assert committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist() == [100.0]
    assert set(commits.committed_files(store)) == {p for e in before["files"].values() for p in e["files"]}
    after = publish_day(store, DAY, [120.0], [2.0])  # the next run of the day replaces the orphan partitions
    assert committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist() == [120.0]
    assert after["run_id"] != before["run_id"]


def test_a_run_commits_the_versions_of_the_delta_tables_it_read(data):
    from etl.lake import records_reads

    store = get_store()
    first = publish_day(store, DAY, [100.0], [1.0])

    @records_reads
    def next_day() -> dict:
        seen = committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist()   # reads the first day's entry
        return publish_day(store, date(2026, 3, 2), seen, [2.0])

    record = next_day()
    entry = first["files"]["risk_metrics/as_of_date=2026-03-01"]
    assert record["inputs"]["outputs/risk_metrics/as_of_date=2026-03-01"] == entry["version"]
    assert "outputs/_runs" in record["inputs"]                 # it read the run records to find that entry
    assert "inputs" not in first                                # a commit outside a recorded run records none


def test_a_version_past_the_log_is_a_clear_error(data):
    publish_day(get_store(), DAY, [100.0], [1.0])
    with pytest.raises(ValidationError, match=r"outputs/risk_metrics: version 9 is not in the table's log any more "
                                              r"\(older than PIPELINE_LAKE_RETENTION_DAYS"):
        Lake.of(get_store()).read("outputs/risk_metrics", version=9)


def test_vacuum_keeps_what_the_retention_needs_and_then_removes_superseded_files(data):
    store = get_store()
    lake = Lake.of(store)
    first = publish_day(store, DAY, [100.0], [1.0])
    publish_day(store, DAY, [110.0], [2.0])
    old = next(iter(first["files"]["risk_metrics/as_of_date=2026-03-01"]["files"]))
    assert lake.vacuum("outputs/risk_metrics") == [] and store.exists(old)   # 90 days of history kept
    removed = lake.vacuum("outputs/risk_metrics", retention_hours=0)
    assert [posixpath.join("outputs/risk_metrics", p) for p in removed] == [old] and not store.exists(old)
    assert committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist() == [110.0]


@pytest.mark.skipif(EXTENSION is None, reason="duckdb-ext-delta is not installed (requirements-dev.txt)")
def test_duckdb_reads_exactly_the_committed_rows(data):
    store = get_store()
    publish_day(store, DAY, [100.0, 200.0], [1.0, 2.0])
    publish_day(store, DAY, [110.0, 210.0], [3.0, 4.0])   # supersedes the first run's files (still on disk)
    publish_day(store, date(2026, 3, 2), [120.0, 220.0], [5.0])
    files = sorted(glob.glob(str(data / "outputs/risk_metrics/**/*.parquet"), recursive=True))
    assert len(files) == 3  # the superseded file is on disk: a folder listing would count it
    ours = sorted(tuple(r.values()) for d in (DAY, date(2026, 3, 2))
                  for r in committed(store, d, "risk_metrics").to_pylist())
    assert duckdb_rows(str(data / "outputs/risk_metrics")) == ours == [
        ("P000", DAY, 110.0), ("P000", date(2026, 3, 2), 120.0), ("P001", DAY, 210.0),
        ("P001", date(2026, 3, 2), 220.0)]
    pnl = duckdb_rows(str(data / "outputs/pnl_daily"))
    assert sorted(r[2] for r in pnl) == [3.0, 4.0, 5.0]


def test_concurrent_runs_of_other_days_all_commit_locally(data):
    _concurrent_runs(get_store())


def test_concurrent_runs_on_the_s3_server_all_commit_and_equal_the_local_run(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA_DIR", f"{s3_bucket}/lake")
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    assert get_settings().lake_storage_options["AWS_ALLOW_HTTP"] == "true"
    remote = _concurrent_runs(get_store())
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "local"))
    local = _concurrent_runs(get_store())
    assert {d: t.to_pydict() for d, t in remote.items()} == {d: t.to_pydict() for d, t in local.items()}


def _concurrent_runs(store: Store, days: int = 6) -> dict[date, pa.Table]:
    """`days` risk runs of different days at once, all on two new tables: every one commits, none is lost."""
    start = threading.Barrier(days)
    dates = [date(2026, 3, d + 1) for d in range(days)]

    def run(i: int) -> dict:
        start.wait()
        return publish_day(store, dates[i], [100.0 + i, 200.0 + i], [float(i)])

    with ThreadPoolExecutor(days) as pool:
        list(pool.map(run, range(days)))
    lake = Lake.of(store)
    # version 0 made each table (once: the other writers read it), then one version per run
    assert lake.version("outputs/risk_metrics") == days and lake.version("outputs/pnl_daily") == days
    assert len(commits.manifests(store)) == days
    out = {d: committed(store, d, "risk_metrics") for d in dates}
    assert {d: t["var_99_hist"].to_pylist() for d, t in out.items()} == {
        d: [100.0 + i, 200.0 + i] for i, d in enumerate(dates)}
    return out


def test_compact_optimizes_the_run_records_and_vacuums_the_outputs_past_the_retention(data, monkeypatch):
    from etl.compaction import compact

    store = get_store()
    for var in (100.0, 110.0, 120.0):
        publish_day(store, DAY, [var], [1.0])
    runs = Lake.of(store)
    assert len(runs.table(commits.RUNS).file_uris()) == 3
    assert compact(settings=get_settings()).files_vacuumed == 0   # everything younger than 90 days
    assert len(runs.table(commits.RUNS).file_uris()) == 1                # one file for the three records
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    summary = compact(settings=get_settings())
    # per output table the two superseded run files, and the run records' three pre-optimize files
    assert summary.files_vacuumed == 2 * 2 + 3 and "7 Delta file(s) vacuumed" in str(summary)
    assert committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist() == [120.0]
    assert len(commits.manifests(store)) == 1 and commits.read_manifest(store, commits.risk_manifest(DAY))


def test_two_runs_of_the_same_day_at_once_leave_one_complete_run(data):
    """Both replace the same partitions: delta-rs' conflict check fails a loser (LakeConflict, nothing of its own
    committed by its record), or they serialise; either way readers get one run's complete set."""
    store = get_store()
    publish_day(store, DAY, [1.0, 2.0], [0.0])
    for attempt in range(3):
        start = threading.Barrier(2)

        def run(var: float, start: threading.Barrier = start) -> str:
            start.wait()
            try:
                return publish_day(store, DAY, [var, var + 1], [var])["run_id"]
            except LakeConflict:
                return "conflict"

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(run, (10.0 * (attempt + 1), 100.0 * (attempt + 1))))
        manifest = commits.read_manifest(store, commits.risk_manifest(DAY))
        assert manifest["run_id"] in outcomes
        assert {e["run_id"] for e in manifest["files"].values()} == {manifest["run_id"]}
        var = committed(store, DAY, "risk_metrics")["var_99_hist"].to_pylist()
        assert committed(store, DAY, "pnl_daily")["daily_pnl"].to_pylist() == [var[0]] and var[1] == var[0] + 1


def test_commits_since_reads_back_to_a_time_not_the_whole_log(data):
    lake = Lake.of(get_store())
    for run in ("r0", "r1", "r2"):
        lake.write("t", pa.table({"k": [run]}), metadata={"run_id": run})
        time.sleep(0.01)                                        # distinct commit times (ms)
    since = lake.commits("t", 0, 1)[0]["timestamp"]          # version 1's time
    assert [(c["version"], c["run_id"]) for c in lake.commits_since("t", since)] == [(1, "r1"), (2, "r2")]
    added = lake.added_at("t")
    assert len(added) == 3 and max(added.values()) <= lake.commits("t", 1, 2)[0]["timestamp"]  # made before it


def test_two_compactions_at_once_keep_every_run_record_once(data, monkeypatch):
    """Two `compact` at once (the EOD DAG's and a manual one) both optimize `outputs/_runs`: delta-rs' optimize
    commits on top of a concurrent optimize of the same files (its removes are not data changes, so its conflict
    check passes them), so each added its own compacted copy of the records: every run record twice, and
    `fact_run_inputs` (one row per run and table) every row twice. The slower compaction now re-plans on the
    table as the faster left it (nothing left to compact) or fails, never commits a second copy."""
    store = get_store()
    for var in (100.0, 110.0, 120.0):
        publish_day(store, DAY, [var], [1.0])
    lake = Lake.of(store)
    records = lake.read(commits.RUNS).sort_by("run_id")
    stale = lake.table(commits.RUNS)     # the second compaction loaded the table before the first committed
    lake.optimize(commits.RUNS)
    table, handed = Lake.table, []

    def first_stale(self, rel, version=None):
        if rel == commits.RUNS and version is None and not handed:
            handed.append(rel)
            return stale
        return table(self, rel, version)

    monkeypatch.setattr(Lake, "table", first_stale)
    try:
        lake.optimize(commits.RUNS)
    except LakeConflict:
        pass
    monkeypatch.setattr(Lake, "table", table)
    assert handed and lake.read(commits.RUNS).num_rows == 3, lake.read(commits.RUNS)["run_id"].to_pylist()
    assert lake.read(commits.RUNS).sort_by("run_id").equals(records) and len(lake.files(commits.RUNS)) == 1
    assert commits.run_inputs(store).num_rows == 0 and len(commits._records(store)) == 3


def test_a_conflict_is_one_line_naming_the_table(data):
    """The CLI prints a LakeConflict as its `error:` line (exit 2: CONTRACT, "one line saying what and where"); the
    message carried delta-rs' own text verbatim, whose conflict check says "...this operation read.\\nHelp: ...":
    `compact` losing a race to another compaction printed a two-line error."""
    from etl.lake import DataFile

    store = get_store()
    lake, rel = Lake.of(store), "bronze/t"
    schema = pa.schema([("x", pa.int64()), ("k", pa.string())])

    def written(name: str, values: list[int]) -> DataFile:
        path = store.write_parquet(f"{rel}/k=a/{name}", pa.table({"x": values}))
        return DataFile(f"k=a/{name}", store.fs.get_file_info(path).size, {"k": "a"}, len(values))

    for i in range(2):
        lake.commit_files(rel, [written(f"f{i}.parquet", [i])], schema, ["k"])
    stale, old = lake.table(rel), lake.files(rel)
    lake.commit_files(rel, [written("c1.parquet", [0, 1])], schema, ["k"], remove=old)   # one compaction
    with pytest.raises(LakeConflict) as conflict:                                       # the other, at once
        lake.commit_files(rel, [written("c2.parquet", [0, 1])], schema, ["k"], remove=old, table=stale)
    assert "\n" not in str(conflict.value) and str(conflict.value).startswith(lake.uri(rel)), str(conflict.value)
    assert sorted(lake.read(rel)["x"].to_pylist()) == [0, 1]


def test_raising_the_retention_keeps_the_history_of_tables_made_under_the_old_one(data, monkeypatch):
    """docs/lake.md: time travel (and `risk --reproduce`) reaches back PIPELINE_LAKE_RETENTION_DAYS. The log retention
    was a table property set once, when the table was made: after raising the setting from 1 to 90 days, the next
    checkpoint of a table made under 1 day deleted its log entries older than a day, and a 10-day-old version was
    "not in the table's log any more" although the setting promises 90 days of it."""
    import os

    store = get_store()
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "1")
    for i in range(12):                    # versions 1-12 of risk_metrics (0 made it), a checkpoint at 9
        publish_day(store, DAY, [100.0 + i], [1.0])
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "90")
    ten_days_ago = time.time() - 10 * 86400
    for entry in glob.glob(str(data / "outputs" / "*" / "_delta_log" / "*")):    # ten days pass
        os.utime(entry, (ten_days_ago, ten_days_ago))
    for i in range(12):                    # past the next checkpoint (every 10 commits)
        publish_day(store, date(2026, 3, 2 + i), [200.0 + i], [2.0])
    lake = Lake.of(store)
    first = lake.read("outputs/risk_metrics", version=1)
    assert first is not None, f"version 1 gone: {sorted(os.listdir(data / 'outputs/risk_metrics/_delta_log'))}"
    assert first["var_99_hist"].to_pylist() == [100.0]
    assert committed(store, date(2026, 3, 13), "risk_metrics")["var_99_hist"].to_pylist() == [211.0]
    config = lake.table("outputs/risk_metrics").metadata().configuration
    assert config["delta.logRetentionDuration"] == "interval 2160 hours", config
    assert config["delta.deletedFileRetentionDuration"] == "interval 7776000 seconds", config


def test_vacuum_keeps_a_version_younger_than_a_retention_of_a_fraction_of_an_hour(data, monkeypatch):
    """lake.py's module docstring: old versions stay readable until `vacuum` removes the files no version younger
    than the retention needs. Lake.vacuum passed delta-rs `int(hours)`: PIPELINE_LAKE_RETENTION_DAYS=0.02 (28.8
    minutes) became 0 hours, so a file superseded a moment ago was deleted and the version read a moment ago (what a
    run recorded, what `risk --reproduce` reads back) was gone; 1.99 days vacuumed 45 minutes early likewise."""
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0.02")
    lake = Lake.of(get_store(), get_settings())
    lake.write("silver/t", pa.table({"k": ["a", "b"], "v": [1.0, 2.0]}))
    lake.delete("silver/t", "k = 'a'")                     # version 1 supersedes version 0's file
    assert lake.vacuum("silver/t") == []
    assert lake.vacuum("silver/t", retention_hours=0.5) == []
    assert sorted(lake.read("silver/t", version=0)["k"].to_pylist()) == ["a", "b"]
    assert len(lake.vacuum("silver/t", retention_hours=0)) == 1   # a retention of 0 still removes it


def test_a_run_reading_a_table_twice_reads_and_records_one_version_that_a_replay_reads_back(data):
    """A run reads a table twice (risk: the daily bars of the window, then those of delisted products; the run
    records before each earlier day's scenario set) and a writer commits to it in between. note_read kept the
    highest version only: the first read's rows came from version 0, the record said 1, and a replay pinned to the
    record (`risk --reproduce`) read other rows for that read than the run did. Now a run reads one version of a
    table throughout (the first it read), and records it."""
    from etl.lake import pinned, recorded_reads, records_reads

    lake = Lake.of(get_store())
    lake.write("silver/t", pa.table({"k": ["a"]}))

    @records_reads
    def run(concurrent: bool) -> tuple[list, list, dict]:
        first = sorted(lake.read("silver/t")["k"].to_pylist())
        if concurrent:
            lake.write("silver/t", pa.table({"k": ["b"]}))     # another writer (a silver build) lands meanwhile
        second = sorted(p.rsplit("/", 1)[-1] for p in lake.files("silver/t"))
        return first, second, recorded_reads()

    first, second, inputs = run(concurrent=True)
    with pinned(inputs):
        replay = run(concurrent=False)
    assert (replay[0], replay[1]) == (first, second), f"recorded {inputs}: run read {first}, {second}; replay {replay}"
    assert inputs == {"silver/t": 0} and first == ["a"] and len(second) == 1
    assert sorted(lake.read("silver/t")["k"].to_pylist()) == ["a", "b"]   # outside a run: the latest


def test_the_log_keeps_a_version_younger_than_a_retention_that_is_not_whole_hours(data, monkeypatch):
    """A version stays readable for PIPELINE_LAKE_RETENTION_DAYS (docs/lake.md). The table's log retention was the
    setting rounded to the nearest hour: 1.01 days (24.24 h) became 24 hours, so the next checkpoint deleted the log
    entries of a version 24.1 hours old, still inside the retention: time travel to it (`risk --reproduce` of a
    run that read it) failed with "not in the table's log any more"."""
    import os

    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "1.01")
    lake = Lake.of(get_store(), get_settings())
    for i in range(12):                                       # versions 0-11, a checkpoint at 9
        lake.write("silver/t", pa.table({"k": [i]}))
    then = time.time() - 24.1 * 3600                          # 24.1 hours pass
    for entry in glob.glob(str(data / "silver" / "t" / "_delta_log" / "*")):
        os.utime(entry, (then, then))
    for i in range(12, 24):                                   # past the next checkpoint (every 10 commits)
        lake.write("silver/t", pa.table({"k": [i]}))
    first = lake.read("silver/t", version=1)
    assert sorted(first["k"].to_pylist()) == [0, 1]


def test_optimize_refuses_a_file_whose_pages_are_corrupt_instead_of_compacting_its_wrong_values(data):
    """docs/commit_protocol.md (Integrity): every read verifies the pages' CRC32, so a flipped byte fails the read
    "instead of decoding into wrong prices". Lake.optimize (compact: the stream tables' closed days, the run
    records) read the partition through delta-rs' dataset, which does not verify them: a streamed trades file with
    a flipped byte decoded into other prices, and optimize wrote them into a new file with valid checksums and
    removed the bad one, so silver built trade bars from wrong prices with nothing flagged. Now it refuses, naming
    the file, and commits nothing."""
    import numpy as np

    from etl.integrity import CorruptFileError
    from etl.lake import DataFile

    store, rel, part = get_store(), "bronze/trades", "product_id=BTC-USD/date=2026-03-01"
    lake = Lake.of(store)
    schema = pa.schema([("price", pa.float64()), ("size", pa.float64())])
    for batch in ("a", "b"):
        rows = pa.table({"price": np.random.default_rng(ord(batch)).normal(100, 1, 1000),
                         "size": np.ones(1000)}, schema=schema)
        path = store.write_parquet(f"{rel}/{part}/{batch}.parquet", rows)
        lake.commit_files(rel, [DataFile(f"{part}/{batch}.parquet", store.fs.get_file_info(path).size,
                                         {"product_id": "BTC-USD", "date": "2026-03-01"}, 1000)],
                          pa.schema([*schema, ("product_id", pa.string()), ("date", pa.string())]),
                          ["product_id", "date"])
    flip_silently(data / rel / part / "b.parquet", "price")
    version = lake.version(rel)
    with pytest.raises(CorruptFileError, match=f"{rel}/{part}/b.parquet is corrupt"):
        lake.optimize(rel)
    assert lake.version(rel) == version and sorted(p.rsplit("/", 1)[-1] for p in lake.files(rel)) == [
        "a.parquet", "b.parquet"]
    assert len(list((data / rel / part).glob("*.parquet"))) == 2        # no compacted file left behind


def flip_silently(path, column: str) -> None:
    """Flip a byte of `column`'s pages that the decompressor does not notice: the file still decodes, into other
    values; only the pages' CRC32 tells."""
    import pyarrow.parquet as pq

    raw = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    clean = pq.ParquetFile(path).read()
    chunk = meta.row_group(0).column(meta.schema.names.index(column))
    for offset in range(chunk.data_page_offset + chunk.total_compressed_size // 2, len(raw)):
        flipped = bytearray(raw)
        flipped[offset] ^= 0x5A
        try:
            if not pq.ParquetFile(pa.BufferReader(bytes(flipped))).read().equals(clean):
                path.write_bytes(bytes(flipped))
                return
        except (pa.ArrowException, OSError):
            continue
    raise AssertionError(f"no silent flip in {path}")


def test_a_run_record_whose_pages_are_corrupt_is_refused_naming_the_file_not_read_as_other_values(data):
    """Every read verifies the pages' CRC32 (docs/commit_protocol.md, Integrity). Lake.read (the run records every
    reader folds: which files and versions are in force, what a run read) went through delta-rs' dataset without
    that check: a flipped byte in `outputs/_runs` decoded into another record, e.g. another committed_at, read as
    if committed. Now the read fails naming the file."""
    from etl.integrity import CorruptFileError

    store = get_store()
    publish_day(store, DAY, [100.0], [1.0])
    publish_day(store, DAY, [110.0], [1.0])
    Lake.of(store).optimize(commits.RUNS)                     # compact: the day's records in one file
    (path,) = [data / p for p in Lake.of(store).files(commits.RUNS)]
    flip_silently(path, "committed_at")
    with pytest.raises(CorruptFileError, match=r"outputs/_runs/name=.*\.parquet is corrupt"):
        commits.read_manifest(store, commits.risk_manifest(DAY))


def test_a_fresh_run_record_whose_pages_are_corrupt_is_refused_naming_the_file(data):
    """The run record is the commit point every reader folds. It was the one lake file not written by the Store
    (delta-rs' writer, no page checksums), so a flipped byte in a fresh record decoded into another committed_at
    (another run in force) with nothing to tell. It is now written with page checksums, like every other file."""
    from etl.integrity import CorruptFileError

    store = get_store()
    publish_day(store, DAY, [100.0], [1.0])
    (path,) = [data / p for p in Lake.of(store).files(commits.RUNS)]
    flip_silently(path, "committed_at")
    with pytest.raises(CorruptFileError, match=r"outputs/_runs/name=.*\.parquet is corrupt"):
        commits.read_manifest(store, commits.risk_manifest(DAY))


def test_the_files_of_a_partition_whose_value_needs_escaping_are_paths_that_exist(tmp_path):
    """`Lake.files` ("paths relative to the data root ... what a reader reads instead of listing the folder") and
    `ever_added`/`added_at` gave the log's URL-encoded paths: for the run records' partition `name=risk/as_of_date=D`
    (a folder `name=risk%2Fas_of_date%3DD` on disk) they named `name=risk%252F...`, a file that is not there, and
    `commit_files(remove=...)` refused those paths as "not in version N any more". They give the files' own paths."""
    store = Store.from_uri(str(tmp_path))
    lake = Lake.of(store)
    rows = pa.table({"name": [commits.risk_manifest(DAY), "factors"], "x": [1, 2]})
    lake.write("t", rows, partition_by=["name"])
    files = lake.files("t")
    assert len(files) == 2 and all(store.exists(f) for f in files), files
    assert sorted(x for f in files for x in store.read_parquet(f)["x"].to_pylist()) == [1, 2]
    assert lake.ever_added("t") == set(files) and sorted(lake.added_at("t")) == files
    gone = [f for f in files if "risk" in f]
    lake.commit_files("t", [], pa.schema([("x", pa.int64()), ("name", pa.string())]), ["name"], remove=gone)
    assert lake.read("t").to_pydict() == {"x": [2], "name": ["factors"]}

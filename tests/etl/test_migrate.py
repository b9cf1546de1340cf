"""`python -m etl migrate-lake`: an output folder of the old format (a JSON manifest per commit naming one
Parquet file per table and partition) becomes Delta tables and run records with the same rows, run ids and
metadata; a rerun changes nothing, and a run killed after publishing finishes on the next one. Stream folders and
the old bronze candle folder (batch manifests, compaction markers) become Delta tables of their current files."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from etl import commits, migrate
from etl.cli import main
from etl.storage import get_store

DAY = date(2026, 3, 1)
RISK = {"risk_metrics": pa.table({"portfolio_id": ["P001", "P002"], "as_of_date": [DAY, DAY],
                                  "var_99_hist": [50776.81, 1234.5]}),
        "pnl_daily": pa.table({"portfolio_id": ["P001", "P001"], "as_of_date": [date(2026, 2, 28), DAY],
                               "daily_pnl": [-10.0, 25.0]})}
FACTORS = {"factor_returns": pa.table({"factor_name": ["MKT"], "bucket_start": pa.array(
    [1772323200000000], pa.timestamp("us", tz="UTC")), "factor_return": [0.01]})}


@pytest.fixture
def old_folder(tmp_path, monkeypatch):
    """A data folder as the hand-written protocol left it: files, then the manifest written last."""
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    store = get_store()
    for name, partition, tables, run_id, meta in (
            (commits.risk_manifest(DAY), f"as_of_date={DAY}", RISK, "20260302T010000000000-aaaaaaaa",
             {"as_of": str(DAY), "portfolios": ["P001", "P002"]}),
            ("factors", f"date={DAY}", FACTORS, "20260302T020000000000-bbbbbbbb", {})):
        files = {}
        for table, rows in tables.items():
            rel = f"outputs/{table}/{partition}/{run_id}.parquet"
            store.write_parquet(rel, rows)
            files[f"{table}/{partition}"] = {"path": rel, "rows": rows.num_rows, "sha256": store.digest(rel)}
        store.write_json(f"outputs/_commits/{name}.json", {"name": name, "stage": name.split("/")[0],
                                                            "run_id": run_id, "files": files, **meta})
    return tmp_path / "data"


def _committed(store, name: str, key: str) -> pa.Table:
    return commits.read_entry(store, commits.read_manifest(store, name)["files"][key])


def test_old_commits_become_delta_run_records_with_the_same_rows_and_a_rerun_changes_nothing(old_folder):
    store = get_store()
    assert main(["migrate-lake"]) == 0
    risk = commits.read_manifest(store, commits.risk_manifest(DAY))
    assert risk["run_id"] == "20260302T010000000000-aaaaaaaa" and risk["portfolios"] == ["P001", "P002"]
    for table, rows in RISK.items():
        assert _committed(store, commits.risk_manifest(DAY), f"{table}/as_of_date={DAY}").equals(rows)
    assert _committed(store, "factors", f"factor_returns/date={DAY}").equals(FACTORS["factor_returns"])
    assert not (old_folder / "outputs/_commits").exists() or not any((old_folder / "outputs/_commits").rglob("*.json"))
    # the old files are gone; the factor file's path was the old file's (same run, and `date` is no column of the
    # rows): the converted file got a name of its own, the old one was not written over
    left = sorted(p.relative_to(old_folder).as_posix() for p in (old_folder / "outputs").rglob("*.parquet")
                  if "_runs" not in p.parts and "_delta_log" not in p.parts)
    assert left == sorted(commits.committed_files(store))
    assert left[0].startswith("outputs/factor_returns/date=2026-03-01/20260302T020000000000-bbbbbbbb-") and left[1:] == [
        "outputs/pnl_daily/run_as_of_date=2026-03-01/20260302T010000000000-aaaaaaaa.parquet",
        "outputs/risk_metrics/run_as_of_date=2026-03-01/20260302T010000000000-aaaaaaaa.parquet"]

    again = migrate.migrate_lake()
    assert (again.converted, again.already, again.files_removed) == ([], [], 0)
    assert len(commits.manifests(store)) == 2


def test_a_migration_killed_after_publishing_finishes_on_the_next_run(old_folder):
    store = get_store()
    name = commits.risk_manifest(DAY)
    manifest = json.loads((old_folder / f"outputs/_commits/{name}.json").read_text())
    migrate._publish(store, name, manifest)  # killed here: published, old files and manifest still there
    summary = migrate.migrate_lake()
    # the risk run's two old files, and the factor run's (its converted file has a name of its own)
    assert summary.converted == ["factors"] and summary.already == [name] and summary.files_removed == 3
    assert len(commits.manifests(store)) == 2
    for table, rows in RISK.items():
        assert _committed(store, name, f"{table}/as_of_date={DAY}").equals(rows)


def test_stream_folders_of_plain_parquet_become_delta_tables_of_the_same_files(tmp_path, monkeypatch):
    from etl.lake import Lake
    from etl.silver.trade_bars import build_trade_bars
    from etl.stream.sinks import TRADES_DIR, TRADES_SCHEMA, MicroBatch

    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    store = get_store()
    batch = MicroBatch("20260101T000000000000Z-a-000001")
    for i in range(3):
        when = f"2026-01-01T00:0{i}:00Z"
        batch.add_trade("BTC-USD", "2026-01-01", (str(i), "100.0", "0.5", "BUY", when, "update", "market_trades",
                                                  when, "", i, "c1", 1767225600.0, None))
    folder = f"{TRADES_DIR}/product_id=BTC-USD/date=2026-01-01"
    store.write_parquet(f"{folder}/{batch.batch_id}.parquet", batch.trades[("BTC-USD", "2026-01-01")]
                        .table(TRADES_SCHEMA, batch.batch_id))                   # as the sink wrote it before
    store.write_bytes(f"{folder}/.tmp-0123-{batch.batch_id}.parquet", b"half a file")  # an interrupted write
    store.write_json("silver/_state/trade_files.json", {"files": []})

    summary = migrate.migrate_lake()
    assert summary.tables_adopted == [TRADES_DIR] and "1 Parquet folder(s) made Delta tables" in str(summary)
    lake = Lake.of(store)
    assert lake.files(TRADES_DIR) == [f"{folder}/{batch.batch_id}.parquet"]
    assert lake.read(TRADES_DIR)["trade_id"].to_pylist() == ["0", "1", "2"]
    assert not store.exists("silver/_state/trade_files.json")
    assert build_trade_bars().trades_in == 3
    assert migrate.migrate_lake().tables_adopted == []      # idempotent: the folder is a table now


def test_silver_bar_folders_of_plain_parquet_become_delta_tables_checked_against_the_old_state(tmp_path, monkeypatch):
    """Silver as the build wrote it before Delta (one `part-0.parquet` per partition, digests in the state file)
    is adopted file for file; the state file goes; the next build rebuilds every partition to the same rows."""
    import shutil

    from etl.integrity import CorruptFileError
    from etl.lake import Lake
    from etl.silver import build, read_bars
    from etl.silver.incremental import SILVER_TABLES
    from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, write_batch

    data = tmp_path / "data"
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data))
    write_batch(data, minute_candles("BTC-USD", T0, 2 * 1440), "b1", T0)
    partitions = build(now=FUTURE).partitions
    clean = {k: read_bars(k) for k in ("5m", "1d")}
    store, digests = get_store(), {}
    for table in SILVER_TABLES:  # back to the old layout
        for rel in Lake.of(store).files(table) or []:
            old = f"{rel.rsplit('/', 1)[0]}/part-0.parquet"
            store.copy(rel, old)
            store.delete(rel)
            digests[old] = store.digest(old)
        shutil.rmtree(data / table / "_delta_log", ignore_errors=True)
    store.write_json(migrate.OLD_SILVER_STATE, {"partitions": {}, "files": digests})
    store.write_bytes("silver/bars_1d/product_id=BTC-USD/year=2026/.tmp-0123-part-0.parquet", b"half a file")

    bad = "silver/bars_5m/product_id=BTC-USD/date=2026-01-06/part-0.parquet"
    kept = (data / bad).read_bytes()
    (data / bad).write_bytes((data / bad.replace("01-06", "01-05")).read_bytes())  # valid Parquet, another day's
    with pytest.raises(CorruptFileError, match="date=2026-01-06/part-0.parquet"):  # not the file silver wrote
        migrate.migrate_lake()
    assert Lake.of(store).table("silver/bars_5m") is None
    (data / bad).write_bytes(kept)

    summary = migrate.migrate_lake()
    assert sorted(summary.tables_adopted) == ["silver/bars_1d", "silver/bars_5m"]
    assert Lake.of(store).files("silver/bars_1d") == ["silver/bars_1d/product_id=BTC-USD/year=2026/part-0.parquet"]
    assert not store.exists(migrate.OLD_SILVER_STATE)
    for kind, df in clean.items():
        pd.testing.assert_frame_equal(read_bars(kind), df)
    assert migrate.migrate_lake().tables_adopted == []      # idempotent
    assert build(now=FUTURE).partitions == partitions       # no bronze version recorded yet: every partition once
    for kind, df in clean.items():
        pd.testing.assert_frame_equal(read_bars(kind), df)
    assert all("part-0.parquet" not in f for f in Lake.of(store).files("silver/bars_5m"))


def test_an_old_bronze_candle_folder_becomes_the_delta_table_of_its_current_files(tmp_path, monkeypatch):
    """Batch manifests and a compaction marker (the old protocol): the table holds exactly the files they made
    current, with their digests; silver reads the same rows; a rerun changes nothing."""
    from etl import candles
    from etl.lake import Lake
    from etl.silver import build
    from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, write_batch
    from tests.support.bronze import read_bronze

    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    data, store = tmp_path / "data", get_store()
    day = "bronze/candles/product_id=BTC-USD/date=2026-01-05"
    old = {}
    for batch, start, seed in (("b1", T0, 0), ("b2", T0 + timedelta(hours=1), 1), ("b3", T0 + timedelta(days=1), 2),
                               ("orphan", T0 + timedelta(hours=2), 3)):
        rels = write_batch(data, minute_candles("BTC-USD", start, 60, seed=seed), batch, T0 + timedelta(days=2),
                           commit=False)
        old[batch] = rels
        if batch != "orphan":  # the orphan's writer died before its manifest
            store.write_json(f"bronze/_manifests/{batch}.json", {"batch_id": batch, "files": rels,
                                                                  "sha256": {r: store.digest(r) for r in rels}})
    # b1 and b2 compacted into generation 1 (as etl/compaction.py wrote it), b1/b2 files kept for the retention
    rows = pa.concat_tables([store.read_parquet(old["b1"][0]), store.read_parquet(old["b2"][0])])
    store.write_parquet(f"{day}/compacted-v000001-g60.parquet", rows)
    store.write_json(f"{day}/_v000001.json", {"generation": 1, "files": ["compacted-v000001-g60.parquet"],
                                              "replaces": ["b1.parquet", "b2.parquet"],
                                              "sha256": {"compacted-v000001-g60.parquet":
                                                         store.digest(f"{day}/compacted-v000001-g60.parquet")}})
    store.write_json("bronze/_pending/x.json", {"batch_id": "x"})

    summary = migrate.migrate_lake()
    assert candles.CANDLES_DIR in summary.tables_adopted
    lake = Lake.of(store)
    assert lake.files(candles.CANDLES_DIR) == sorted([f"{day}/compacted-v000001-g60.parquet", *old["b3"]])
    (commit,) = [c for c in lake.commits(candles.CANDLES_DIR, None, lake.version(candles.CANDLES_DIR))
                 if "migrated_from" in c]
    assert set(json.loads(commit["sha256"])) == set(lake.files(candles.CANDLES_DIR))
    assert not (data / "bronze/_manifests").exists() and not (data / "bronze/_pending").exists()
    assert not (data / day / "_v000001.json").exists()
    assert len(read_bronze()) == 180 and set(read_bronze()["batch_id"]) == {"b1", "b2", "b3"}
    assert build(now=FUTURE).rows_in == 180
    again = migrate.migrate_lake()                           # idempotent: the folder is a table now
    assert again.tables_adopted == [] and lake.files(candles.CANDLES_DIR) == sorted(
        [f"{day}/compacted-v000001-g60.parquet", *old["b3"]])


def test_a_rerun_after_a_kill_never_puts_the_old_commit_back_over_a_newer_run(old_folder):
    """Killed after publishing the day's old commit; before the rerun, the upgraded pipeline commits a new run of
    that day and new factor days. The rerun must not publish the old manifest again over the newer run (it did:
    the latest record's run id is not the old one, so it "converted" it again and the old figures were back in
    force), and must still convert what no record holds (the old factor day)."""
    store = get_store()
    name = commits.risk_manifest(DAY)
    migrate._publish(store, name, json.loads((old_folder / f"outputs/_commits/{name}.json").read_text()))
    newer = {"risk_metrics": RISK["risk_metrics"].set_column(2, "var_99_hist", pa.array([60000.0, 2000.0])),
             "pnl_daily": RISK["pnl_daily"]}
    commits.publish(store, name, "risk", {(t, f"as_of_date={DAY}"): rows for t, rows in newer.items()},
                    meta={"as_of": str(DAY)})
    later = f"date={DAY + timedelta(days=1)}"
    commits.publish(store, "factors", "factors", {("factor_returns", later): FACTORS["factor_returns"]})
    run_id = commits.read_manifest(store, name)["run_id"]

    summary = migrate.migrate_lake()
    assert commits.read_manifest(store, name)["run_id"] == run_id
    assert _committed(store, name, f"risk_metrics/as_of_date={DAY}").equals(newer["risk_metrics"])
    assert summary.already == [name] and summary.converted == ["factors"], summary
    assert _committed(store, "factors", f"factor_returns/date={DAY}").equals(FACTORS["factor_returns"])
    assert _committed(store, "factors", f"factor_returns/{later}").equals(FACTORS["factor_returns"])


def test_an_old_candle_folder_an_upgraded_ingest_wrote_to_first_keeps_its_old_batches(tmp_path, monkeypatch):
    """The upgraded pipeline ingested before `migrate-lake` ran: its commit made the Delta table, which named only
    the new batch. The migration then skipped the folder (a table is there) and deleted the batch manifests, the only
    record of which old files are data: the old history dropped out of bronze without a word."""
    from etl import candles
    from etl.lake import Lake
    from etl.silver import build, read_bars
    from tests.etl.silver.test_incremental import FUTURE, T0, commit_batch, minute_candles, write_batch

    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    data, store = tmp_path / "data", get_store()
    old = write_batch(data, minute_candles("BTC-USD", T0, 60), "b1", T0 + timedelta(days=2), commit=False)
    store.write_json("bronze/_manifests/b1.json", {"batch_id": "b1", "files": old,
                                                   "sha256": {r: store.digest(r) for r in old}})
    write_batch(data, minute_candles("BTC-USD", T0 + timedelta(days=1), 60, seed=1), "new", T0 + timedelta(days=3),
                commit=False)
    orphan = write_batch(data, minute_candles("BTC-USD", T0, 60, seed=2), "orphan", T0 + timedelta(days=3),
                         commit=False)                            # an old writer died before its manifest
    new = [f for f in store.list_files(candles.CANDLES_DIR, ".parquet") if f.endswith("/new.parquet")]
    commit_batch(data, new, "new")                                # the upgraded ingest's commit

    summary = migrate.migrate_lake()
    lake = Lake.of(store)
    assert lake.files(candles.CANDLES_DIR) == sorted([*old, *new]), summary
    assert orphan[0] not in lake.files(candles.CANDLES_DIR)
    assert not store.exists("bronze/_manifests/b1.json")
    assert migrate.migrate_lake().tables_adopted == [] and lake.files(candles.CANDLES_DIR) == sorted([*old, *new])
    build(now=FUTURE)                                             # silver takes the old batch in as new
    assert set(read_bars("5m")["bucket_start"].dt.date.astype(str)) == {"2026-01-05", "2026-01-06"}


def test_an_old_stream_folder_an_upgraded_collector_wrote_to_first_keeps_its_old_batches(tmp_path, monkeypatch):
    """The upgraded collector ran before `migrate-lake`: its first commit made the Delta table `bronze/trades`,
    naming only its own batches. The migration skipped the folder (a table is there), so the old trades (streamed,
    never to be fetched again) dropped out of bronze and of the trade bars without a word. They are added beside
    the new batches; a file of an upgraded writer killed before its commit is not; a rerun adds nothing, also
    after `compact` replaced the adopted files."""
    import os
    import time

    from etl.lake import Lake
    from etl.silver.trade_bars import build_trade_bars
    from etl.stream.sinks import TRADES_DIR, TRADES_SCHEMA, BronzeSink, MicroBatch

    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    store = get_store()

    def batch(n: int, day: str) -> MicroBatch:
        b = MicroBatch(f"2026010{n}T000000000000Z-a-00000{n}")
        for i in range(2):
            when = f"{day}T00:0{i}:00Z"
            b.add_trade("BTC-USD", day, (f"{n}{i}", "100.0", "0.5", "BUY", when, "update", "market_trades", when, "",
                                         i, "c1", 1767225600.0, None))
        return b

    hour_ago = time.time() - 3600                                      # written by the collector before the upgrade
    for old in (batch(1, "2026-01-01"), batch(4, "2026-01-01")):
        old_file = f"{TRADES_DIR}/product_id=BTC-USD/date=2026-01-01/{old.batch_id}.parquet"
        store.write_parquet(old_file, old.trades[("BTC-USD", "2026-01-01")].table(TRADES_SCHEMA, old.batch_id))
        os.utime(store.path(old_file), (hour_ago, hour_ago))
    BronzeSink(store).write(batch(2, "2026-01-02"))                    # the upgraded collector makes the table
    killed = batch(3, "2026-01-02")                                    # an upgraded writer killed before its commit
    store.write_parquet(f"{TRADES_DIR}/product_id=BTC-USD/date=2026-01-02/{killed.batch_id}.parquet",
                        killed.trades[("BTC-USD", "2026-01-02")].table(TRADES_SCHEMA, killed.batch_id))

    summary = migrate.migrate_lake()
    lake = Lake.of(store)
    assert TRADES_DIR in summary.tables_adopted, summary
    trades = ["10", "11", "20", "21", "40", "41"]
    assert sorted(lake.read(TRADES_DIR)["trade_id"].to_pylist()) == trades
    assert build_trade_bars().trades_in == 6
    lake.optimize(TRADES_DIR)                                          # `compact`: the adopted files are replaced
    assert old_file not in lake.files(TRADES_DIR)
    assert migrate.migrate_lake().tables_adopted == []
    assert sorted(lake.read(TRADES_DIR)["trade_id"].to_pylist()) == trades


def test_a_candle_migration_killed_before_its_clean_up_adds_nothing_again_after_a_fold(tmp_path, monkeypatch):
    """Killed after the commit adopting the old candle batches, before the batch manifests went; a silver build then
    folded the adopted files of a partition into one (`compact` refuses until the migration is done). The rerun
    found the manifests' files no longer in the table and committed them again beside the folded copy: every old
    candle twice in bronze."""
    from etl import candles
    from etl.lake import Lake
    from etl.silver import build
    from tests.etl.silver.test_incremental import FUTURE, T0, minute_candles, write_batch
    from tests.support.bronze import read_bronze

    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    data, store = tmp_path / "data", get_store()
    for batch, seed in (("b1", 0), ("b2", 1)):
        rels = write_batch(data, minute_candles("BTC-USD", T0 + timedelta(hours=seed), 60, seed=seed), batch,
                           T0 + timedelta(days=2), commit=False)
        store.write_json(f"bronze/_manifests/{batch}.json", {"batch_id": batch, "files": rels,
                                                              "sha256": {r: store.digest(r) for r in rels}})
    lake = Lake.of(store)
    assert migrate._adopt_candles(store, lake)           # killed here: committed, the manifests still there
    build(now=FUTURE)
    assert all("compacted" in f for f in lake.files(candles.CANDLES_DIR))
    migrate.migrate_lake()
    assert len(read_bronze()) == 120
    assert not store.exists("bronze/_manifests/b1.json")


def test_a_migration_killed_before_a_factor_record_finishes_on_the_next_run(old_folder, monkeypatch):
    """A factor table's partition `date=D` is no column of its rows, so the converted run's file has the old file's
    path (same run id): publishing rewrote the old file in place, in the new writer's bytes. Killed before the run
    record, the old manifest (still in force for the migration) named a SHA-256 the file no longer had, and every
    rerun of `migrate-lake` stopped on it as a corrupt file (exit 2): the migration could never finish."""
    import pyarrow.parquet as pq

    from etl.lake import Lake

    store = get_store()
    rel = f"outputs/factor_returns/date={DAY}/20260302T020000000000-bbbbbbbb.parquet"
    pq.write_table(FACTORS["factor_returns"], store.path(rel), compression="snappy")   # an older writer's bytes
    old = json.loads((old_folder / "outputs/_commits/factors.json").read_text())
    old["files"][f"factor_returns/date={DAY}"]["sha256"] = store.digest(rel)
    store.write_json("outputs/_commits/factors.json", old)
    write = Lake.write

    def killed_before_the_factor_record(self, rel, data, *args, **kwargs):
        if rel == commits.RUNS and data["name"][0].as_py() == "factors":
            raise KeyboardInterrupt("killed")
        return write(self, rel, data, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", killed_before_the_factor_record)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate_lake()
    monkeypatch.setattr(Lake, "write", write)
    assert main(["migrate-lake"]) == 0
    assert _committed(store, "factors", f"factor_returns/date={DAY}").equals(FACTORS["factor_returns"])
    assert migrate.unconverted(store) is None and len(commits.manifests(store)) == 2

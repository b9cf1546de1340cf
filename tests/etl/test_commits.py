"""The commit protocol of the output tables (etl/commits.py on etl/lake.py, docs/commit_protocol.md)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pyarrow as pa
import pytest

from etl import commits
from etl.lake import Lake, LakeConflict
from etl.storage import get_store
from tests.support.delta_reader import EXTENSION, duckdb_rows

DAY = date(2026, 3, 1)


def publish_day(store, day: date, var: list[float]) -> dict:
    part = f"as_of_date={day.isoformat()}"
    rows = pa.table({"portfolio_id": [f"P{i:03d}" for i in range(len(var))], "as_of_date": [day] * len(var),
                     "var_99_hist": var})
    return commits.publish(store, commits.risk_manifest(day), "risk", {("risk_metrics", part): rows})


def committed(store, day: date) -> pa.Table:
    manifest = commits.read_manifest(store, commits.risk_manifest(day))
    return commits.read_entry(store, manifest["files"][f"risk_metrics/as_of_date={day.isoformat()}"])


@pytest.mark.skipif(EXTENSION is None, reason="duckdb-ext-delta is not installed (requirements-dev.txt)")
def test_two_first_runs_of_a_day_at_once_leave_the_delta_table_holding_one_run(data):
    """docs/commit_protocol.md: "Two runs of the same day at once: each per-table commit is an overwrite of the same
    partition, so delta-rs' conflict check lets one win per table"; docs/lake.md tells other engines to read
    `delta_scan('outputs/risk_metrics')`. When the day's partition is new (the day's first runs), both overwrites
    only add files and both commit: the table's latest version holds both runs' rows."""
    store = get_store()
    publish_day(store, date(2026, 2, 1), [1.0])           # the table exists; the days below are new partitions
    days = [date(2026, 3, d) for d in range(1, 4)]
    for day in days:
        start = threading.Barrier(2)

        def run(var: float, start: threading.Barrier = start, day: date = day) -> str:
            start.wait()
            try:
                return publish_day(store, day, [var, var + 1])["run_id"]
            except LakeConflict:
                return "conflict"

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, (10.0, 100.0)))
    for day in days:
        ours = sorted(committed(store, day)["var_99_hist"].to_pylist())      # one run's rows: 2 portfolios
        delta = Lake.of(store).read("outputs/risk_metrics", partition={"run_as_of_date": day.isoformat()})
        external = [r for r in duckdb_rows(str(data / "outputs/risk_metrics")) if r[1] == day]
        assert (len(ours), delta.num_rows, len(external)) == (2, 2, 2), (
            f"{day}: the committed run has {len(ours)} rows, the Delta table's latest version {delta.num_rows} "
            f"({sorted(delta['var_99_hist'].to_pylist())}), DuckDB's delta_scan {len(external)}")


def test_a_run_killed_before_its_record_does_not_let_vacuum_delete_the_committed_run(data, monkeypatch):
    """docs/commit_protocol.md step 3/4: a run killed after its per-table commits leaves "the previous record of the
    name in force"; vacuum deletes only superseded files. But the killed run's overwrite removed the committed
    run's file from the Delta table, so once the retention passes (no rerun of that day: an old day is rarely
    rerun) `vacuum` deletes the file the record in force names, and the loader / read_entry fail for good."""
    store = get_store()
    before = publish_day(store, DAY, [100.0])
    real = Lake.write

    def killed(self, rel, *args, **kwargs):   # the process dies between step 3 and step 4 (as test_lake.py does)
        if rel == commits.RUNS:
            raise KeyboardInterrupt("killed before the run record")
        return real(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        publish_day(store, DAY, [999.0])
    monkeypatch.setattr(Lake, "write", real)
    assert commits.read_manifest(store, commits.risk_manifest(DAY)) == before      # the previous run is in force
    # the retention passes (PIPELINE_LAKE_RETENTION_DAYS); `python -m etl compact` vacuums every output table
    monkeypatch.setenv("PIPELINE_LAKE_RETENTION_DAYS", "0")
    from etl.compaction import compact
    from etl.settings import get_settings

    compact(settings=get_settings())
    assert commits.read_manifest(store, commits.risk_manifest(DAY))["run_id"] == before["run_id"]
    assert committed(store, DAY)["var_99_hist"].to_pylist() == [100.0]   # FileNotFoundError: vacuumed


def test_a_damaged_run_log_is_one_error_line_naming_the_table(data, tmp_path, capsys):
    """The CLI's rule (docs/commit_protocol.md "fail closed ... naming the table, its version"): a bad input is
    one `error:` line naming what and where, exit 2. A truncated log entry of `outputs/_runs` (a torn copy/restore
    of the data folder) raises delta-rs' DeltaError from Lake.table (lake.py:127-129 re-raises it when no version
    was asked): no path, a Rust backtrace, and the CLI (cli.py:328) lets it out as a traceback."""
    from etl import cli

    store = get_store()
    run_id = publish_day(store, DAY, [100.0])["run_id"]
    publish_day(store, DAY, [110.0])
    last = sorted((data / "outputs/_runs/_delta_log").glob("*.json"))[-1]
    last.write_text(last.read_text()[:40])
    code = cli.main(["risk", "--as-of", str(DAY), "--reproduce", run_id, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "outputs/_runs" in err and len(err.strip().splitlines()) == 1, err[-600:]


def test_a_rerun_on_a_host_whose_clock_is_behind_is_the_run_in_force(data, monkeypatch):
    """docs/commit_protocol.md: after a run's record "the new one" is in force. _records ordered a name's records by
    `committed_at`, the committing host's clock: a run of the day on a host whose clock ran an hour ahead, then a
    rerun (after a fix) on a host with the right clock, left the first run in force: readers, the loader and the
    report took the superseded figures, and the rerun's record was never the latest."""
    from datetime import UTC, datetime, timedelta

    store = get_store()

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(commits, "datetime", Ahead)
    first = publish_day(store, DAY, [100.0])                 # on the host whose clock is ahead
    monkeypatch.setattr(commits, "datetime", datetime)
    second = publish_day(store, DAY, [120.0])                # later, on a host with the right clock
    assert committed(store, DAY)["var_99_hist"].to_pylist() == [120.0]
    manifest = commits.read_manifest(store, commits.risk_manifest(DAY))
    assert manifest["run_id"] == second["run_id"] != first["run_id"]
    assert datetime.fromisoformat(manifest["committed_at"]) > datetime.fromisoformat(first["committed_at"])
    assert manifest["committed_at"] == second["committed_at"]   # what publish returned is what the record says
    assert [r["run_id"] for r in commits._records(store, commits.risk_manifest(DAY))] == [first["run_id"],
                                                                                          second["run_id"]]
    assert datetime.now(UTC) < datetime.fromisoformat(first["committed_at"])


def test_of_two_records_committed_at_once_on_hosts_whose_clocks_differ_the_one_committed_last_is_in_force(
        data, monkeypatch):
    """docs/commit_protocol.md: `committed_at` is "a microsecond after the name's previous record when that host's
    clock ran ahead: the record committed last is the latest, whatever the clocks". The previous record was read
    before the append, not on the version the append lands on: a run on a host whose clock is an hour behind read
    the day's records, another run (right clock) committed its record meanwhile, then the first one's record landed
    last, stamped an hour before the other's: the other run stayed in force, and the run committed last never was."""
    from datetime import datetime, timedelta

    store = get_store()
    publish_day(store, DAY, [90.0])                                  # the day's first run, long done

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(hours=1)

    write, other = Lake.write, {}

    def meanwhile(self, rel, *args, **kwargs):   # just before the slow host's record lands, the other run commits
        if rel == commits.RUNS and not other:
            other["run_id"] = None
            monkeypatch.setattr(commits, "datetime", datetime)
            other.update(publish_day(store, DAY, [120.0]))
            monkeypatch.setattr(commits, "datetime", Behind)
        return write(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "write", meanwhile)
    monkeypatch.setattr(commits, "datetime", Behind)
    last = publish_day(store, DAY, [100.0])                          # on the host whose clock is behind
    monkeypatch.setattr(commits, "datetime", datetime)
    records = commits._records(store, commits.risk_manifest(DAY))
    assert [r["run_id"] for r in records][1:] == [other["run_id"], last["run_id"]]   # in the order they landed
    assert commits.read_manifest(store, commits.risk_manifest(DAY))["run_id"] == last["run_id"]
    assert committed(store, DAY)["var_99_hist"].to_pylist() == [100.0]

"""`make demo` (etl/local/demo.py): the end-of-day run the scheduler creates after the demo (etl/local/airflow_home.py
settle_test_run), what the demo prints at the end, the market source it starts (etl/local/simulator_process.py), and
that an interrupted demo leaves no DAG run running in Airflow (fail_unfinished_runs)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl.local import airflow_home, demo, simulator_process, standalone
from etl.settings import PROJECT_ROOT


def test_a_first_unpause_of_end_of_day_finds_the_demo_run_and_waits_for_the_next_interval(tmp_path, monkeypatch):
    """The run the scheduler creates when risk_end_of_day is first unpaused (catchup=False: the latest complete
    interval, computed by Airflow's own timetable now) is the interval `make demo` ran, with the logical date the
    demo run is given (the interval start); the scheduler creates no run for a logical date that has one."""
    from datetime import UTC, datetime, timedelta

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "dags"))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "risk_end_of_day.py")).dags["risk_end_of_day"]
    assert dag.catchup is False
    timetable = coerce_to_core_timetable(dag.timetable)
    now = datetime.now(UTC)
    first = timetable.next_dagrun_info(last_automated_data_interval=None,
                                       restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False))
    _, demo_eod = demo.demo_dates(now)
    if first.data_interval.end != demo_eod:  # the clock crossed 00:10 UTC between the two calls
        pytest.skip("ran across the daily boundary")
    # `dags test` with the demo's date: Airflow infers the same interval, and settle_test_run sets its start
    manual = timetable.infer_manual_data_interval(run_after=demo_eod)
    assert (manual.start, manual.end) == (first.data_interval.start, first.data_interval.end)
    assert first.logical_date == first.data_interval.start == demo_eod - timedelta(days=1)
    # after that interval the next run is tonight's: the one after demo_eod, due one day later
    after = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval,
                                       restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False))
    assert after.logical_date == demo_eod and after.run_after == demo_eod + timedelta(days=1) > now


def test_the_demo_ends_with_what_to_do_next(monkeypatch, tmp_path):
    from datetime import date

    from etl import db
    from etl.settings import get_settings

    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PIPELINE_AIRFLOW_PORT", "18080")
    monkeypatch.setenv("PIPELINE_DOCS_PORT", "18090")
    lines = demo.next_steps(get_settings(), "/r/2026-03-01/report.html", date(2026, 3, 1), "postgresql://postgres@/db",
                            "postgresql://reporting@/db", "/d/alerts/alerts.jsonl")
    text = "\n".join(lines)
    psql = db.psql_path()
    assert "file:///r/2026-03-01/report.html" in text and "/r/2026-03-01/sql_reports.md" in text
    assert "make airflow   -> http://localhost:18080" in text and "make docs      -> http://localhost:18090" in text
    assert (f"{psql} 'postgresql://reporting@/db' -v as_of=2026-03-01 -f sql/risk_exposure/var_es_by_portfolio.sql"
            in text)
    assert f"{psql} 'postgresql://reporting@/db'   (= make psql-reporting)" in text
    assert "/d/alerts/alerts.jsonl" in text and "reference validate" in text
    assert (PROJECT_ROOT / "sql" / "risk_exposure" / "var_es_by_portfolio.sql").exists()
    assert "file://" not in "\n".join(demo.next_steps(get_settings(), None, date(2026, 3, 1), "o", "r", "a"))


def test_with_coinbase_as_source_the_demo_starts_no_simulator_and_uses_the_exchange(monkeypatch, tmp_path):
    from etl.settings import COINBASE_URL, get_settings

    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    monkeypatch.setenv("PIPELINE_SOURCE", "coinbase")
    monkeypatch.delenv("COINBASE_API_URL", raising=False)
    source = simulator_process.market_source(get_settings())
    assert (source.url, source.proc) == (COINBASE_URL, None)
    env = airflow_home.airflow_env(get_settings(), home=tmp_path / "af")
    assert env["COINBASE_API_URL"] == COINBASE_URL and env["PIPELINE_SOURCE"] == "coinbase"


def _query(airflow_db: Path, sql: str) -> list[tuple]:
    """Rows of the demo's Airflow metadata DB ([] before it is migrated)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{airflow_db}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created or not migrated yet
        return []


def _runs(airflow_db: Path) -> dict[str, str]:
    return dict(_query(airflow_db, "select run_id, state from dag_run"))


def _task_states(airflow_db: Path) -> set[str]:
    return {s for (s,) in _query(airflow_db, "select coalesce(state, 'none') from task_instance")}


def _start_demo(env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115  (the runner owns it until it exits)
    # SIGINT as in a terminal (a background job's shell ignores it, and children inherit that)
    return subprocess.Popen([sys.executable, "-m", "etl.local.demo"], env=env, cwd=PROJECT_ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_running_run(proc: subprocess.Popen, log: Path, airflow_db: Path, after: str) -> str:
    """Once `after` is in the demo's output, wait for a DAG run running in Airflow with a task running; its run_id."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        running = [run_id for run_id, state in _runs(airflow_db).items() if state == "running"]
        if after in log.read_text() and running and "running" in _task_states(airflow_db):
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no DAG run started:\n{log.read_text()[-3000:]}")


UNFINISHED = {"queued", "running", "scheduled", "up_for_retry", "up_for_reschedule", "deferred", "restarting", "none"}


@pytest.mark.slow
def test_an_interrupted_demo_leaves_no_dag_run_running_in_airflow(tmp_path, pg_url):
    """A demo killed outright (SIGKILL of its whole session: a closed terminal) leaves its run "running" in Airflow,
    which with max_active_runs=1 would block the next run of the DAG: the next demo marks it failed when it
    starts. A demo stopped with Ctrl-C (SIGINT to its process group) marks its own run failed as it exits."""
    from etl.local.simulator_process import port_busy
    from tests.support.cockpit_server import free_port

    sim_port = free_port()
    env = dict(os.environ, PIPELINE_STATE_DIR=str(tmp_path / "state"), PIPELINE_DATABASE_URL=pg_url,
               SIMULATOR_PORT=str(sim_port), SIMULATOR_WS_PORT=str(free_port()), PIPELINE_PRODUCTS="BTC-USD,ETH-USD",
               PIPELINE_ENV_FILE=str(tmp_path / "no.env"))
    airflow_db = tmp_path / "state" / "airflow" / "airflow.db"

    log = tmp_path / "demo-killed.log"
    proc = _start_demo(env, log)
    try:
        killed = _wait_for_running_run(proc, log, airflow_db, after="airflow dags test")
    finally:
        for pid in standalone.session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while standalone.session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _runs(airflow_db) == {killed: "running"}, "the fault: a killed demo leaves its run running"
    assert "running" in _task_states(airflow_db)
    assert not port_busy(sim_port)

    log = tmp_path / "demo-interrupted.log"
    proc = _start_demo(env, log)
    try:
        # the start marks the killed run failed (`dags test` of the same interval then runs it again)
        interrupted = _wait_for_running_run(proc, log, airflow_db, after="left running by an earlier `make demo`")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "marked 1 DAG run(s) left running by an earlier `make demo` that was killed as failed" in text
    assert "marked 1 DAG run(s) left running by this demo, interrupted as failed" in text
    runs = _runs(airflow_db)
    assert runs[interrupted] == "failed" and not {"queued", "running"} & set(runs.values()), (runs, text[-3000:])
    assert not UNFINISHED & _task_states(airflow_db)


def test_a_bad_book_or_setting_stops_the_demo_at_once_naming_the_cause(tmp_path, monkeypatch, capsys, data_dir):
    """The console's first error line is the cause: before anything starts, the reference data and the settings
    that name it; after a DAG failed, the first failed task's message from the run log (not `exit 1`)."""
    from etl import runlog
    from etl.settings import get_settings

    monkeypatch.setenv("PIPELINE_PRODUCTS", "BTC-USD,NOPE-USD")
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    assert demo.run_demo(get_settings()) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: setting PIPELINE_PRODUCTS: NOPE-USD not in the instrument master")
    assert not (tmp_path / "state").exists()  # nothing started: no Postgres, no Airflow home

    for task_id, status, message in (("validate_products", "success", "ok"),
                                     ("fetch_candles[0]", "failed", "ValidationError: product(s) ['X-USD'] ..."),
                                     ("build_silver", "failed", "upstream failed")):
        runlog.record(runlog.RunRecord("run1", "market_data_intraday", task_id, status=status, message=message))
    runlog.record(runlog.RunRecord("other", "market_data_intraday", "validate_products", status="failed"))
    assert demo.failure_cause(get_settings(), {"run1"}) == "fetch_candles[0]: ValidationError: product(s) ['X-USD'] ..."
    assert demo.failure_cause(get_settings(), {"none"}) is None


def test_the_demo_records_the_as_of_days_order_books_for_every_held_product(data_dir, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from etl.portfolios import load_positions
    from etl.settings import get_settings
    from etl.silver.liquidity import build_liquidity

    monkeypatch.setenv("PIPELINE_SOURCE", "simulator")
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    summary = demo.record_order_books(get_settings(), day, seconds=2)
    held = sorted(load_positions(get_settings())["product_id"].unique())
    assert summary.committed["book"] > 0 and summary.rejects == 0
    build_liquidity()
    from etl.lake import Lake
    from etl.silver import increments
    from etl.silver.liquidity import LIQUIDITY_DIR
    from etl.storage import get_store

    for product in held:  # every held product has a book on the as-of day, in silver
        assert increments.partition_file(Lake.of(get_store()), LIQUIDITY_DIR, product, str(day)), product

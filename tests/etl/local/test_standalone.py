"""`make airflow` (etl/local/standalone.py run_standalone): Ctrl-C and SIGTERM stop every process it started.

The real runner (`python -m etl.local.standalone`: airflow standalone with scheduler, api-server, dag-processor,
triggerer and LocalExecutor workers) starts on free ports with its own state dir; the test snapshots every
process descending from it, signals it as a terminal or a service manager would, and checks that none survives.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl.local import airflow_home, demo, simulator_process, standalone
from etl.settings import PROJECT_ROOT

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(root: int) -> dict[int, int]:
    """{pid: start time} of `root` and every process below it (walks /proc parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        stat = standalone._proc_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            out[pid] = stat[2]
        todo.extend(children.get(pid, []))
    return out


def _survivors(snapshot: dict[int, int]) -> list[str]:
    """Processes of the snapshot still alive (same pid and start time: not a recycled pid), with their command."""
    left = []
    for pid, started in snapshot.items():
        stat = standalone._proc_stat(pid)
        if stat is not None and stat[2] == started and stat[0] not in ("Z", "X"):
            left.append(f"{pid}: {standalone._command(pid)[:120]}")
    return left


def _start(env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115  (the runner owns it until it exits)
    # a session of its own, like a terminal's foreground job: its process group is the runner's pid
    return subprocess.Popen([sys.executable, "-m", "etl.local.standalone"], env=env, cwd=PROJECT_ROOT,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> dict[int, int]:
    """Wait for the login banner and the scheduler's LocalExecutor workers; return the process snapshot."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the runner exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        tree = _descendants(proc.pid)
        workers = [p for p in tree if b"LocalExecutor" in standalone._cmdline(p)]
        if "Ctrl-C stops everything" in log.read_text() and len(workers) >= 1:
            return tree
        time.sleep(1)
    raise AssertionError(f"Airflow did not come up in {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_and_sigterm_stop_every_process_make_airflow_started(tmp_path, pg_url):
    env = dict(os.environ, PIPELINE_STATE_DIR=str(tmp_path / "state"), PIPELINE_DATABASE_URL=pg_url,
               PIPELINE_AIRFLOW_PORT=str(_free_port()), SIMULATOR_PORT=str(_free_port()),
               PIPELINE_ENV_FILE=str(tmp_path / "no.env"))
    for attempt, how in enumerate(("SIGINT to the process group (Ctrl-C)", "SIGTERM to the runner")):
        log = tmp_path / f"runner-{attempt}.log"
        proc = _start(env, log)
        try:
            tree = _wait_ready(proc, log)
            names = b" ".join(standalone._cmdline(p) for p in tree)
            for component in (b"scheduler", b"dag-processor", b"triggerer", b"api_server", b"LocalExecutor"):
                assert component in names, f"{component!r} not started: the snapshot would prove nothing"
            sessions = {standalone._proc_stat(p)[1] for p in tree} - {None}
            t = time.monotonic()
            if attempt == 0:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            took = time.monotonic() - t
        finally:
            if proc.poll() is None:
                proc.kill()
        text = log.read_text()
        assert code == 0, f"{how}: exit {code}\n{text[-3000:]}"
        assert _survivors(tree) == [], f"{how}: processes left running"
        assert all(standalone.session_pids(sid) == set() for sid in sessions), f"{how}: a session still has members"
        assert "Airflow stopped:" in text and "Traceback" not in text, text[-3000:]
        assert took < 30, f"{how}: stopping took {took:.0f}s"
        # the second start found nothing to clean up: the first stop left no leftovers and no session file
        assert "left by an earlier" not in text
        assert not (tmp_path / "state" / "airflow" / "standalone.session").exists()


def test_a_start_stops_the_leftovers_of_a_killed_runner(tmp_path):
    """A runner killed with SIGKILL cannot clean up: the next start stops its session (found by the session file)."""
    home = tmp_path / "airflow"
    home.mkdir()
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); " \
           "time.sleep(120)"
    leader = subprocess.Popen([sys.executable, "-c", code, "airflow", "standalone"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(standalone.session_pids(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        members = standalone.session_pids(leader.pid)
        assert len(members) == 2
        (home / "standalone.session").write_text(f"{leader.pid}\n")
        # the child's command line does not name airflow, the leader's does: the session is recognised as ours
        stopped = standalone.stop_leftovers(home)
        leader.wait(timeout=5)
    finally:
        if leader.poll() is None:
            leader.kill()
    assert stopped == 2
    assert standalone.session_pids(leader.pid) == set()
    assert not (home / "standalone.session").exists()


def test_leftovers_of_a_recycled_session_id_are_left_alone(tmp_path):
    home = tmp_path / "airflow"
    home.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (home / "standalone.session").write_text(f"{other.pid}\n")
        assert standalone.stop_leftovers(home) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


# ---- `make demo` runs and the scheduler (etl/local/airflow_home.py settle_test_run) ---------------------------
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
    assert f"{psql} 'postgresql://reporting@/db'   (= psql \"$(python -m etl db url --role reporting)\")" in text
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

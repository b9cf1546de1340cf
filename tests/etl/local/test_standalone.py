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

from etl.local import standalone
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
               SIMULATOR_WS_PORT=str(_free_port()), PIPELINE_ENV_FILE=str(tmp_path / "no.env"))
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

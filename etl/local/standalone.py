"""`make airflow`: `airflow standalone` with this project's DAGs, plugins and the live collector, until Ctrl-C.

`python -m etl.local.standalone` runs `airflow standalone` in a session of its own with the local Airflow home
(etl.local.airflow_home) and prints the login; Ctrl-C (SIGINT) or SIGTERM stops every process it started (see
`stop_session`), and a start first ends the leftovers of a previous runner that was killed outright.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etl.errors import ConfigError
from etl.local import run_main
from etl.local.airflow_home import PASSWORDS_FILE, airflow_env, airflow_home, fail_unfinished_runs, prepare_home
from etl.local.simulator_process import market_source, port_busy
from etl.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # SIGINT to standalone and SIGTERM to the rest, then this long to exit, then SIGKILL


class _Stop(Exception):
    """Raised in the runner by SIGINT or SIGTERM: stop Airflow and exit."""


def _raise_stop(signum, frame) -> None:
    raise _Stop(signal.Signals(signum).name)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session id, start time in clock ticks) of a process from /proc/PID/stat; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # fields after "(comm)": state is field 3 of the man page
    return fields[0], int(fields[3]), int(fields[19])


def session_pids(sid: int) -> set[int]:
    """Live processes (not zombies) of session `sid`. Every process `airflow standalone` starts stays in its
    session: components are its children, LocalExecutor workers and task processes theirs (tasks only change
    their process group, not their session), so the session is the set of processes to stop."""
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[1] == sid and stat[0] not in ("Z", "X"):
                pids.add(int(entry.name))
    return pids


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_session(sid: int, leader: subprocess.Popen | None = None, grace_s: float = STOP_GRACE_S) -> tuple[int, int]:
    """Stop every process of session `sid`; return (processes stopped, of which killed with SIGKILL).

    SIGINT to the session leader `airflow standalone` (its own shutdown: it stops its components and waits for
    them) and SIGTERM to every other member at once (components, LocalExecutor workers, task processes: each
    shuts down on SIGTERM), up to `grace_s` for the session to empty, then SIGKILL to what is left (named in the
    log). `leader`: the leader as our child, reaped at the end so it does not linger as a zombie.
    """
    seen: set[int] = set()

    def alive() -> set[int]:
        if leader is not None:
            leader.poll()  # reap the leader as soon as it exits
        pids = session_pids(sid)
        seen.update(pids)
        return pids

    def wait_empty(seconds: float) -> set[int]:
        deadline = time.monotonic() + seconds
        while (left := alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    left = alive()
    _signal_all(left & {sid}, signal.SIGINT)
    _signal_all(left - {sid}, signal.SIGTERM)
    left = wait_empty(grace_s)
    if left:
        log.warning("killing what did not stop within %.0fs: %s", grace_s,
                    "; ".join(f"{pid} {_command(pid)[:60]}" for pid in sorted(left)))
        _signal_all(left, signal.SIGKILL)
        wait_empty(2.0)
    if leader is not None:
        try:
            leader.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    return len(seen), len(left)


def _pid_file(home: Path) -> Path:
    return home / "standalone.session"


def stop_leftovers(home: Path) -> int:
    """Stop the processes of an earlier runner's Airflow session that was never stopped (runner killed with
    SIGKILL, terminal closed); returns how many. Only processes whose command line names airflow are counted, so a
    recycled session id is left alone."""
    pid_file = _pid_file(home)
    try:
        sid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    ours = {pid for pid in session_pids(sid) if b"airflow" in _cmdline(pid)}
    stopped = 0
    if ours:
        print(f"stopping {len(ours)} Airflow process(es) left by an earlier `make airflow` (session {sid})...",
              flush=True)
        stopped, _ = stop_session(sid)
    pid_file.unlink(missing_ok=True)
    return stopped


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _command(pid: int) -> str:
    return _cmdline(pid).replace(b"\0", b" ").decode(errors="replace").strip()


def run_standalone(settings: Settings) -> int:
    """`make airflow`: `airflow standalone` in a session of its own, until Ctrl-C or SIGTERM; then stop it all.

    The runner alone receives the terminal's Ctrl-C (standalone runs in a new session, so its components do not
    get the SIGINT half-way through their own shutdown and print tracebacks); both SIGINT and SIGTERM end the
    runner through `stop_session`, which reports what it stopped.
    """
    from etl import db

    db.database_url(settings)
    home = airflow_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    stop_leftovers(home)
    port = settings.airflow_port
    if port_busy(port):
        raise ConfigError(f"port {port} is already in use: stop what listens there, or set PIPELINE_AIRFLOW_PORT "
                          f"(environment or .env) to a free port")
    sim = market_source(settings)
    env = airflow_env(settings)
    env["COINBASE_API_URL"] = sim.url
    proc: subprocess.Popen | None = None
    stream: subprocess.Popen | None = None
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        home = prepare_home(env)
        _fail_unfinished(env, "an earlier `make airflow` that was killed")
        passwords = home / PASSWORDS_FILE
        print(f"starting airflow standalone (AIRFLOW_HOME={home}); the UI will be at http://localhost:{port}",
              flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env, cwd=PROJECT_ROOT,
                                start_new_session=True)
        _pid_file(home).write_text(f"{proc.pid}\n")
        stream = start_collector(settings, env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not passwords.exists() and proc.poll() is None:
            time.sleep(1)
        if passwords.exists():
            creds = json.loads(passwords.read_text())
            login = ", ".join(f"{user} / {pw}" for user, pw in creds.items())
            print(f"\n== Airflow UI: http://localhost:{port}  login: {login}  (from {passwords})", flush=True)
        print(f"== Risk cockpit: http://localhost:{port}/risk/ (\"Risk\" in the UI's navigation; "
              f"JSON: /risk/api/summary)", flush=True)
        print(f"== market data ({settings.source}): {sim.url}   warehouse: {db.redact(db.database_url(settings))}",
              flush=True)
        print("== DAGs are paused at creation: unpause market_data_intraday to go live; Ctrl-C stops everything",
              flush=True)
        code = proc.wait()
        print(f"airflow standalone exited with code {code}", file=sys.stderr)
        return code or 1
    except _Stop:
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C must not interrupt the shutdown half-way
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stream is not None:
                stream.terminate()  # SIGTERM: the collector commits its open batch (while Airflow stops)
            if proc is not None:
                print(f"\nstopping Airflow (scheduler, api-server, dag-processor, triggerer, task processes; "
                      f"at most {STOP_GRACE_S + 2:.0f}s)...", flush=True)
                t = time.perf_counter()
                stopped, killed = stop_session(proc.pid, leader=proc)
                _pid_file(home).unlink(missing_ok=True)
                how = f", {killed} of them killed after the grace period" if killed else ""
                print(f"Airflow stopped: {stopped} process(es) ended in {time.perf_counter() - t:.1f}s{how}",
                      flush=True)
                _fail_unfinished(env, "the stopped scheduler")
            if stream is not None:
                try:
                    stream.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    stream.kill()
                    stream.wait()
            sim.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _fail_unfinished(env: dict[str, str], whose: str) -> None:
    """Runs nothing will finish fail now, rather than block the next run of their DAG (max_active_runs=1)."""
    if n := fail_unfinished_runs(env, test_runs=False):
        print(f"marked {n} DAG run(s) left running by {whose} as failed in Airflow", flush=True)


def start_collector(settings: Settings, env: dict[str, str]) -> subprocess.Popen:
    """`python -m etl stream` beside the scheduler (live trades into bronze), logging to {state_dir}/stream.log."""
    env = {**env, "COINBASE_WS_URL": settings.coinbase_ws_url}
    out = open(settings.state_dir / "stream.log", "ab")  # closed when the process ends
    print(f"== live collector: python -m etl stream -> {settings.coinbase_ws_url} (log: {out.name})", flush=True)
    return subprocess.Popen([sys.executable, "-m", "etl", "stream"], env=env, cwd=PROJECT_ROOT, stdout=out,
                            stderr=subprocess.STDOUT)



def main(argv: list[str] | None = None) -> int:
    return run_main(run_standalone, "python -m etl.local.standalone", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

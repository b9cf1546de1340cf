"""`make demo` / `make airflow`: the pipeline end to end through Airflow, on this machine, with nothing installed.

`python -m etl.demo` prepares a SQLite Airflow home under `{state_dir}/airflow` (migrated once, pools and
connections set), starts the embedded Postgres and the exchange simulator (reusing one already answering on
SIMULATOR_PORT), runs `airflow dags test market_data_intraday` then `airflow dags test risk_end_of_day`, and
prints where the results are. `python -m etl.demo --airflow` runs `airflow standalone` with the same
configuration instead and prints the login; Ctrl-C (SIGINT) or SIGTERM stops every process it started (see
`stop_session`), and a start first ends the leftovers of a previous runner that was killed outright.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from etl.errors import ConfigError, PipelineError
from etl.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

DAGS_DIR = PROJECT_ROOT / "dags"
PLUGINS_DIR = PROJECT_ROOT / "plugins"
INTRADAY = "market_data_intraday"
EOD = "risk_end_of_day"
# LocalExecutor task processes at once: sized for a 2-core machine (each task is CPU-bound pandas/numpy work;
# the scheduler, api-server, dag-processor and triggerer share the same cores)
LOCAL_PARALLELISM = 2


# ---- the Airflow home ---------------------------------------------------------------------------------------
def airflow_home(settings: Settings) -> Path:
    return settings.state_dir / "airflow"


def airflow_env(settings: Settings, home: Path | None = None, base: dict[str, str] | None = None,
                database_url: str | None = None, parallelism: int = LOCAL_PARALLELISM) -> dict[str, str]:
    """The environment every Airflow command of this project runs with (config by env: no airflow.cfg edits)."""
    home = home or airflow_home(settings)
    env = dict(os.environ if base is None else base)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": env.get("AIRFLOW__CORE__EXECUTOR", "LocalExecutor"),
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                                                       f"sqlite:///{home / 'airflow.db'}"),
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # task processes reach the api-server's execution API here (Airflow's default assumes port 8080)
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{settings.airflow_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p),
        # `airflow standalone` starts its components as `airflow ...`: the venv's bin must come first
        "PATH": os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p),
        "PIPELINE_STATE_DIR": str(settings.state_dir),
        "PIPELINE_DATA_DIR": settings.data_dir,
        "COINBASE_API_URL": settings.coinbase_api_url,
        "PIPELINE_SOURCE": settings.source,
    })
    url = database_url or settings.database_url
    if url:
        env["PIPELINE_DATABASE_URL"] = url
        env["AIRFLOW_CONN_PIPELINE_WAREHOUSE"] = _postgres_connection(url)
    env["AIRFLOW_CONN_COINBASE_API"] = json.dumps({"conn_type": "http", "host": settings.coinbase_api_url})
    return env


def _postgres_connection(url: str) -> str:
    from etl.db import connection_params

    p = connection_params(url)
    return json.dumps({"conn_type": "postgres", "host": p["host"], "port": int(p["port"]), "login": p["user"],
                       "password": p["password"], "schema": p["dbname"]})


def airflow(env: dict[str, str], *args: str, check: bool = True, capture: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run one `airflow ...` command of the venv's Airflow with `env`."""
    cmd = [sys.executable, "-m", "airflow", *args]
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).strip().splitlines()[-20:])
        raise PipelineError(f"`airflow {' '.join(args)}` failed (exit {proc.returncode})"
                            + (f":\n{tail}" if tail else f"; see the logs under {env['AIRFLOW_HOME']}/logs"))
    return proc


def pools() -> dict[str, tuple[int, str]]:
    """The pools the DAGs use (defined in dags/pipeline_common.py, the one place DAGs share)."""
    if str(DAGS_DIR) not in sys.path:
        sys.path.insert(0, str(DAGS_DIR))
    import pipeline_common

    return dict(pipeline_common.POOLS)


def prepare_home(env: dict[str, str]) -> Path:
    """Migrate the metadata DB once (a stamp keyed on the Airflow version) and (re)create the pools."""
    from importlib.metadata import version

    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    stamp = home / f".migrated-{version('apache-airflow')}"
    if not stamp.exists():
        log.info("migrating the Airflow metadata database in %s (once)", home)
        airflow(env, "db", "migrate", capture=True)
        stamp.touch()
    os.environ.setdefault("AIRFLOW_HOME", str(home))  # importing the DAGs' shared module reads Airflow config
    pool_file = home / "pools.json"
    pool_file.write_text(json.dumps({name: {"slots": slots, "description": desc, "include_deferred": False}
                                     for name, (slots, desc) in pools().items()}, indent=2))
    airflow(env, "pools", "import", str(pool_file), capture=True)
    return home


def dags_test(env: dict[str, str], dag_id: str, logical_date: datetime, capture: bool = True,
              timeout: float | None = None, log_file: Path | None = None) -> subprocess.CompletedProcess:
    """`airflow dags test <dag_id> <logical_date>`: one run, tasks in this process tree, no scheduler; then
    `settle_test_run` so the run reads like the scheduled run of its interval.

    `log_file`: stream the output there (follow it with `tail -f`) instead of capturing it.
    """
    args = ("dags", "test", dag_id, logical_date.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    try:
        if log_file is None:
            return airflow(env, *args, check=False, capture=capture, timeout=timeout)
        with open(log_file, "w") as out:
            return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, cwd=PROJECT_ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
    finally:
        settle_test_run(env, dag_id)


def settle_test_run(env: dict[str, str], dag_id: str) -> None:
    """Fix two fields of the latest run of `dag_id` in Airflow's metadata DB, as `airflow dags test` leaves them:

    - `start_date` := its first task's start. `dags test` sets it to the logical date, so a 5-minute end-of-day
      run showed a 22 h duration and dwarfed every real run in the duration chart.
    - `logical_date` := its data interval's start, the logical date the scheduler gives the scheduled run of
      that interval. `dags test` uses the interval's end, which is the logical date of the *next* scheduled run:
      the scheduler would then skip that run ("run already exists"), and unpausing the DAG would create a
      catch-up run for the interval the demo has just computed. With the interval start, the scheduler's own
      rule (no new run for a logical date that has one) counts this interval as done: the first unpause waits
      for the next interval. An earlier `dags test` run of the same interval gives its logical date up (to NULL,
      as for a run triggered without one: `dags test` itself replaces its earlier run of a date); a scheduled
      run of the interval keeps it, and this run is then left with the interval's end.
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.begin() as conn:
            row = conn.execute(text("select id from dag_run where dag_id = :dag order by id desc limit 1"),
                               {"dag": dag_id}).first()
            if row is None:
                return
            conn.execute(text("""
                update dag_run set start_date = (
                    select min(ti.start_date) from task_instance ti
                    where ti.dag_id = dag_run.dag_id and ti.run_id = dag_run.run_id)
                where id = :id and exists (
                    select 1 from task_instance ti
                    where ti.dag_id = dag_run.dag_id and ti.run_id = dag_run.run_id and ti.start_date is not null)
                """), {"id": row.id})
            conn.execute(text("""
                update dag_run set logical_date = null
                where dag_id = :dag and id != :id and run_type = 'manual'
                  and logical_date = (select data_interval_start from dag_run where id = :id)
                """), {"dag": dag_id, "id": row.id})
            conn.execute(text("""
                update dag_run set logical_date = data_interval_start
                where id = :id and data_interval_start is not null and not exists (
                    select 1 from dag_run other
                    where other.dag_id = dag_run.dag_id and other.logical_date = dag_run.data_interval_start)
                """), {"id": row.id})
    finally:
        engine.dispose()


def small_reference(src: Path, dst: Path, products: list[str]) -> list[str]:
    """Copy the reference CSVs to `dst`, keeping only the USD portfolios that hold nothing but `products`.

    For small end-to-end runs (tests, benchmarks): the risk run needs prices for every position held.
    Returns the portfolio ids kept.
    """
    import csv

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("instruments.csv", "exchanges.csv"):
        (dst / name).write_text((src / name).read_text())
    with open(src / "positions.csv", newline="") as f:
        positions = list(csv.DictReader(f))
    with open(src / "portfolios.csv", newline="") as f:
        portfolios = list(csv.DictReader(f))
    others = {p["portfolio_id"] for p in positions if p["product_id"] not in products}
    keep = ({p["portfolio_id"] for p in portfolios if p["base_currency"] == "USD"} - others
            ) & {p["portfolio_id"] for p in positions}
    if not keep:
        raise ConfigError(f"no USD portfolio in {src} holds only {products}")
    for name, rows in (("portfolios.csv", portfolios), ("positions.csv", positions)):
        with open(dst / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["portfolio_id"] in keep)
    return sorted(keep)


# ---- the simulator ------------------------------------------------------------------------------------------
@dataclass
class SimulatorProcess:
    url: str
    proc: subprocess.Popen | None  # None: someone else's simulator, reused and left running

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM, not SIGINT: a process started from a background shell job inherits SIGINT ignored
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _answers(url: str) -> bool:
    import requests

    try:
        r = requests.get(f"{url}/products", timeout=2)
        return r.status_code == 200 and isinstance(r.json(), list)
    except (requests.RequestException, ValueError):
        return False


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_simulator(settings: Settings, wait_s: float = 30.0) -> SimulatorProcess:
    """Reuse a simulator answering on SIMULATOR_PORT, else start `python -m etl simulator` in the background."""
    port = settings.simulator_port
    url = f"http://127.0.0.1:{port}"
    if _answers(url):
        log.info("reusing the simulator already running at %s", url)
        return SimulatorProcess(url, None)
    if _port_busy(port):
        raise ConfigError(f"port {port} is in use by something that is not the simulator: "
                          f"set SIMULATOR_PORT to a free port")
    log_path = settings.state_dir / "simulator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "etl", "simulator", "--port", str(port)], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"the simulator exited with code {proc.returncode}: see {log_path}")
        if _answers(url):
            return SimulatorProcess(url, proc)
        time.sleep(0.3)
    proc.kill()
    raise ConfigError(f"the simulator did not answer on {url} within {wait_s:.0f}s: see {log_path}")


def market_source(settings: Settings) -> SimulatorProcess:
    """Where the DAGs fetch from: the simulator (reused or started) when PIPELINE_SOURCE=simulator; with
    PIPELINE_SOURCE=coinbase the configured Exchange API (COINBASE_API_URL, default the real one), nothing started."""
    if settings.source == "simulator":
        return ensure_simulator(settings)
    return SimulatorProcess(settings.coinbase_api_url, None)


# ---- what the demo prints -----------------------------------------------------------------------------------
def gold_counts(url: str) -> dict[str, int]:
    """Row counts of every table in schema gold."""
    from etl import db

    counts: dict[str, int] = {}
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute("select table_name from information_schema.tables where table_schema = 'gold' "
                    "and table_type = 'BASE TABLE' order by table_name")
        for (name,) in cur.fetchall():
            cur.execute(f'select count(*) from gold."{name}"')
            counts[name] = int(cur.fetchone()[0])
    return counts


def runs_summary(settings: Settings, run_ids: set[str]) -> list[str]:
    from etl import runlog

    df = runlog.read_all(settings)
    df = df[df["run_id"].isin(run_ids)].sort_values("started_at")
    return [f"  {r.dag_id:<22} {r.task_id:<26} {r.status:<13} {r.duration_s:7.2f}s  in={r.rows_in} out={r.rows_out}"
            for r in df.itertuples()]


def report_path(settings: Settings, run_ids: set[str]) -> str | None:
    from etl import runlog

    df = runlog.read_all(settings)
    df = df[df["run_id"].isin(run_ids) & (df["task_id"] == "export_report") & (df["status"] == "success")]
    for message in df["message"]:
        if "report=" in message:
            return message.split("report=", 1)[1].strip()
    return None


def next_steps(settings: Settings, report: str | None, as_of, owner_url: str, reporting_url: str,
               alerts: str) -> list[str]:
    """The closing lines of `make demo`: where to look and what to run next, with this configuration's ports."""
    from etl import db

    psql = db.psql_path()
    sql = f"-v as_of={as_of.isoformat()} -f sql/risk_exposure/var_es_by_portfolio.sql"
    lines = []
    if report:
        lines.append(f"   open the report in a browser:  file://{report}")
        lines.append(f"   SQL reports of that run:       {Path(report).parent}/sql_reports.md and sql/*.csv")
    lines += [
        f"   Airflow UI with these runs:    make airflow   -> http://localhost:{settings.airflow_port} "
        "(DAGs start paused; Ctrl-C stops it all)",
        f"   warehouse docs (dbt):          make docs      -> http://localhost:{settings.docs_port}",
        f"   a SQL report in psql:          {psql} '{reporting_url}' {sql}",
        f"   psql, read-only reporting:     {psql} '{reporting_url}'   (= psql \"$(python -m etl db url --role "
        "reporting)\")",
        f"   psql, owner (read-write):      {psql} '{owner_url}'",
        f"   limit-breach alerts:           {alerts}   (one JSON line per alert)",
        "   your own portfolios:           docs/own_portfolios.md, then python -m etl reference validate DIR",
        "   real Coinbase data:            README.md, section Real Coinbase",
    ]
    return lines


def demo_dates(now: datetime) -> tuple[datetime, datetime]:
    """Logical dates for `airflow dags test`, which treats the date as the end of the run's data interval.

    Intraday: the latest complete 5-minute interval. End of day: today 00:10 UTC, i.e. the interval that
    covers yesterday, so risk is computed as of yesterday (the last complete UTC day).
    """
    intraday = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)
    eod = now.replace(hour=0, minute=10, second=0, microsecond=0)
    if eod > now:  # between 00:00 and 00:10 the run for yesterday is not due yet
        eod -= timedelta(days=1)
    return intraday, eod


def run_demo(settings: Settings) -> int:
    from etl import db
    from etl.storage import get_store

    t0 = time.perf_counter()
    print(f"starting the embedded Postgres{' and the exchange simulator' if settings.source == 'simulator' else ''}"
          "...", flush=True)
    url = db.database_url(settings)
    sim = market_source(settings)
    try:
        env = airflow_env(settings, database_url=settings.database_url)
        env.setdefault("PIPELINE_API_POOL_SLOTS", "1")  # `dags test` runs one task at a time: full rate each
        env["PIPELINE_EOD_DEADLINE_HOURS"] = "0"  # `dags test` of 3.3.2 cannot finish a DAG with a deadline
        env["COINBASE_API_URL"] = sim.url
        print(f"preparing the Airflow home {env['AIRFLOW_HOME']}...", flush=True)
        prepare_home(env)
        intraday_date, eod_date = demo_dates(datetime.now(UTC))
        run_ids: set[str] = set()
        # intraday before and after end of day: the second run revalues the book on the EOD scenario set
        runs = ((INTRADAY, intraday_date - timedelta(minutes=5)), (EOD, eod_date), (INTRADAY, intraday_date))
        for dag_id, when in runs:
            log_file = Path(env["AIRFLOW_HOME"]) / f"demo-{dag_id}.log"
            print(f"airflow dags test {dag_id} {when:%Y-%m-%dT%H:%M}Z ... (follow: tail -f {log_file})", flush=True)
            t = time.perf_counter()
            proc = dags_test(env, dag_id, when, log_file=log_file)
            run_ids |= _run_ids_since(settings, dag_id, t0)
            if proc.returncode != 0:
                print(f"error: {dag_id} failed (exit {proc.returncode}); log: {log_file}", file=sys.stderr)
                print("\n".join(runs_summary(settings, run_ids)), file=sys.stderr)
                return 1
            print(f"  ok in {time.perf_counter() - t:.0f}s (log: {log_file})", flush=True)
        store = get_store(settings)
        print("\n== task runs (run log: one row per task instance; a mapped task has one per product)")
        print("\n".join(runs_summary(settings, run_ids)))
        print(f"\n== warehouse: {db.redact(url)}")
        for table, n in gold_counts(url).items():
            print(f"   gold.{table:<28} {n:>9,} rows")
        report = report_path(settings, run_ids)
        print(f"\n== report: {report or 'not produced (no successful export_report in these runs)'}")
        print(f"== bronze: {store.path('bronze')}")
        print(f"== silver: {store.path('silver')}")
        print(f"== outputs: {store.path('outputs')}")
        from etl.orchestration.intervals import eod_as_of
        from etl.report.alerts import ALERTS_FILE
        from etl.warehouse import reporting_url

        print("\n== what next")
        print("\n".join(next_steps(settings, report, eod_as_of(eod_date - timedelta(days=1)), url,
                                   reporting_url(settings), store.path(ALERTS_FILE))))
        print(f"\ndemo finished in {time.perf_counter() - t0:.0f}s")
        return 0
    finally:
        sim.stop()


def _run_ids_since(settings: Settings, dag_id: str, t0: float) -> set[str]:
    from etl import runlog

    df = runlog.read_all(settings)
    since = datetime.now(UTC) - timedelta(seconds=time.perf_counter() - t0 + 5)
    df = df[(df["dag_id"] == dag_id) & (df["started_at"] >= since)]
    return set(df["run_id"])


# ---- `make airflow`: airflow standalone, and stopping everything it started ---------------------------------
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
    if _port_busy(port):
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
        passwords = home / "simple_auth_manager_passwords.json.generated"
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


def start_collector(settings: Settings, env: dict[str, str]) -> subprocess.Popen:
    """`python -m etl stream` beside the scheduler (live trades into bronze), logging to {state_dir}/stream.log."""
    env = {**env, "COINBASE_WS_URL": settings.coinbase_ws_url}
    out = open(settings.state_dir / "stream.log", "ab")  # closed when the process ends
    print(f"== live collector: python -m etl stream -> {settings.coinbase_ws_url} (log: {out.name})", flush=True)
    return subprocess.Popen([sys.executable, "-m", "etl", "stream"], env=env, cwd=PROJECT_ROOT, stdout=out,
                            stderr=subprocess.STDOUT)


# ---- scale-out check: CeleryExecutor with local workers (opt-in, needs Debian's redis-server) --------------
# The Celery provider and its dependencies, installed beside the venv (not into it) so nobody else pays for them.
CELERY_PACKAGES = (
    # celery 5.7 dropped celery.backends.database.retry, which provider 3.26.0 imports: stay on 5.5
    "apache-airflow-providers-celery==3.26.0", "celery==5.5.3", "kombu==5.5.4", "billiard==4.2.4", "vine==5.1.0",
    "amqp==5.4.2", "click-didyoumean==0.3.1", "click-repl==0.4.1", "click-plugins==1.1.1.2", "redis==8.1.0",
    "prompt_toolkit==3.0.53", "wcwidth==0.9.4", "tzlocal==5.4.5",
)
CELERY_API_PORT = 8081


def celery_site(settings: Settings) -> Path:
    target = settings.state_dir / "celery-site"
    import hashlib

    stamp = target / f".installed-{hashlib.sha256(' '.join(CELERY_PACKAGES).encode()).hexdigest()[:12]}"
    if not stamp.exists():
        if target.exists():
            import shutil

            shutil.rmtree(target)
        print(f"installing the Celery provider into {target} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--target", str(target), *CELERY_PACKAGES], check=True)
        stamp.touch()
    return target


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metadata_db(url: str, name: str) -> str:
    """A fresh database for Airflow's metadata on the warehouse server (Celery needs a server DB, not SQLite):
    each check starts from an empty Airflow, so earlier runs cannot queue in front of its run."""
    from etl import db

    with db.connect(url=url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'drop database if exists "{name}" with (force)')
        cur.execute(f'create database "{name}"')
    return db.with_database(url, name).replace("postgresql://", "postgresql+psycopg2://", 1)


def run_celery(settings: Settings, workers: int = 2, timeout_s: float = 900) -> int:
    """Run one intraday DAG run through the scheduler with the CeleryExecutor and `workers` local workers.

    Starts Redis (Debian's redis-server) on a free port, an api-server (the workers' execution API), a
    scheduler, a dag-processor and the workers, each with its own log under {state_dir}/airflow-celery/; then
    triggers market_data_intraday, waits for it, and prints which worker ran which task.
    """
    import shutil
    import uuid

    from etl import db

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise ConfigError("redis-server not found: install it (Debian: apt-get install redis-server) and rerun")
    url = db.database_url(settings)
    site = celery_site(settings)
    meta = _metadata_db(url, "airflow_celery")
    home = settings.state_dir / "airflow-celery"
    home.mkdir(parents=True, exist_ok=True)
    for stamp in home.glob(".migrated-*"):  # the metadata DB is new: migrate again
        stamp.unlink()
    redis_port = _free_port()
    env = airflow_env(settings, home=home, database_url=settings.database_url)
    secret = uuid.uuid4().hex
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__API__PORT": str(CELERY_API_PORT),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{CELERY_API_PORT}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__API__SECRET_KEY": secret,
        "PYTHONPATH": os.pathsep.join([str(site), env["PYTHONPATH"]]),
    })
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, cmd: list[str]) -> None:
        out = open(home / f"{name}.log", "w")  # closed when the process ends
        procs.append((name, subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)))

    sim = ensure_simulator(settings)
    env["COINBASE_API_URL"] = sim.url
    try:
        start("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no"])
        prepare_home(env)
        af = [sys.executable, "-m", "airflow"]
        start("api-server", [*af, "api-server"])
        start("scheduler", [*af, "scheduler"])
        start("dag-processor", [*af, "dag-processor"])
        for i in range(1, workers + 1):
            start(f"worker{i}", [*af, "celery", "worker", "--celery-hostname", f"worker{i}@%h"])
        deadline = time.monotonic() + timeout_s
        while _paused(meta, INTRADAY) is None:  # wait for the dag-processor to serialize the DAG
            if time.monotonic() > deadline:
                raise PipelineError(f"the DAG was never parsed: see {home}/dag-processor.log")
            time.sleep(3)
        airflow(env, "dags", "unpause", INTRADAY, capture=True)
        if _paused(meta, INTRADAY):
            raise PipelineError(f"could not unpause {INTRADAY}")
        run_id = f"celery_check__{uuid.uuid4().hex[:8]}"
        airflow(env, "dags", "trigger", INTRADAY, "--run-id", run_id, capture=True)
        print(f"triggered {INTRADAY} run {run_id} on the CeleryExecutor with {workers} workers", flush=True)
        state = _wait_for_run(meta, INTRADAY, run_id, deadline)
        ran = _worker_tasks(home, workers, run_id)
        print(f"run {run_id}: {state}")
        for name, tasks in ran.items():
            print(f"  {name}: {len(tasks)} task(s): {', '.join(tasks)}")
        return 0 if state == "success" and sum(1 for t in ran.values() if t) >= min(2, workers) else 1
    finally:
        for _name, p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _name, p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        sim.stop()


def _paused(meta: str, dag_id: str) -> bool | None:
    """Whether the DAG is paused in the metadata DB; None while it has not been parsed yet."""
    import psycopg2

    with psycopg2.connect(meta.replace("postgresql+psycopg2://", "postgresql://", 1)) as conn, conn.cursor() as cur:
        try:
            cur.execute("select is_paused from dag where dag_id = %s", (dag_id,))
        except psycopg2.errors.UndefinedTable:
            return None
        row = cur.fetchone()
    return None if row is None else bool(row[0])


def _wait_for_run(meta: str, dag_id: str, run_id: str, deadline: float) -> str:
    import psycopg2

    dsn = meta.replace("postgresql+psycopg2://", "postgresql://", 1)
    while time.monotonic() < deadline:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("select state from dag_run where dag_id = %s and run_id = %s", (dag_id, run_id))
            row = cur.fetchone()
        if row and row[0] in ("success", "failed"):
            return row[0]
        time.sleep(3)
    return "timed out"


def _worker_tasks(home: Path, workers: int, run_id: str) -> dict[str, list[str]]:
    """Tasks of `run_id` each Celery worker executed, from its log ("Executing workload ... log_path=...")."""
    import re

    pattern = re.compile(rf"run_id={re.escape(run_id)}/task_id=(\w+)(?:/map_index=(\d+))?/")
    out = {}
    for i in range(1, workers + 1):
        text = (home / f"worker{i}.log").read_text(errors="replace")
        found = []
        for line in text.splitlines():
            m = pattern.search(line) if "Executing workload" in line else None
            if m:
                found.append(m.group(1) + (f"[{m.group(2)}]" if m.group(2) else ""))
        out[f"worker{i}"] = found
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--airflow", action="store_true", help="run `airflow standalone` (web UI) instead")
    parser.add_argument("--celery", action="store_true",
                        help="scale-out check: one intraday run on the CeleryExecutor with two local workers "
                             "(needs redis-server)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings()
        if args.celery:
            return run_celery(settings)
        return run_standalone(settings) if args.airflow else run_demo(settings)
    except KeyboardInterrupt:
        return 130
    except (PipelineError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

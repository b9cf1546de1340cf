"""The Airflow home of the local runners (`make demo`, `make airflow`, `make celery`): configuration by environment.

`airflow_env` is the environment every Airflow command of this project runs with on this machine (a SQLite
metadata DB under `{state_dir}/airflow`, LocalExecutor, the project's dags/ and plugins/ folders, the warehouse
and market-data connections); `prepare_home` migrates it once and creates the pools; `dags_test` runs one DAG
run without a scheduler and `settle_test_run` makes that run read like the scheduled run of its interval.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from etl import permissions
from etl.errors import PipelineError
from etl.orchestration import spec
from etl.settings import PROJECT_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

DAGS_DIR = PROJECT_ROOT / "dags"
PLUGINS_DIR = PROJECT_ROOT / "plugins"
# LocalExecutor task processes at once: sized for a 2-core machine (each task is CPU-bound pandas/numpy work;
# the scheduler, api-server, dag-processor and triggerer share the same cores)
LOCAL_PARALLELISM = 2
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # the UI login Airflow generates (0600: umask)


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
        "AIRFLOW__API__HOST": settings.bind_host,  # Airflow's default is 0.0.0.0: every network the machine is on
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # task processes reach the api-server's execution API here (Airflow's default assumes port 8080)
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{_client_host(settings)}:{settings.airflow_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
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


def _client_host(settings: Settings) -> str:
    """Where this machine reaches the api-server: its bind address, or loopback when it listens on all of them."""
    return "127.0.0.1" if settings.bind_host in ("0.0.0.0", "::", "") else settings.bind_host


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
    """The pools the DAGs use (etl.orchestration.spec), sized by this process's settings as the DAGs size them."""
    return spec.pools(get_settings().api_pool_slots)


def prepare_home(env: dict[str, str]) -> Path:
    """Migrate the metadata DB once (a stamp keyed on the Airflow version) and (re)create the pools."""
    from importlib.metadata import version

    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    permissions.lock_folder(home)  # made 0755 by an earlier version: the metadata DB, logs and the login file
    permissions.lock_file(home / PASSWORDS_FILE)
    stamp = home / f".migrated-{version('apache-airflow')}"
    if not stamp.exists():
        log.info("migrating the Airflow metadata database in %s (once)", home)
        airflow(env, "db", "migrate", capture=True)
        stamp.touch()
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


STARTED_TI = ("running", "queued", "deferred", "up_for_retry", "up_for_reschedule", "restarting")


def fail_unfinished_runs(env: dict[str, str], test_runs: bool) -> int:
    """Mark the DAG runs a stopped runner leaves queued or running as failed; return how many. Nothing runs them
    any more (the runner stopped its processes, or was killed), yet Airflow counts each as an active run: with
    `max_active_runs=1` the next run of its DAG would never start. Their task instances get what Airflow's own
    "mark failed" gives: failed if started, skipped if not.

    `test_runs`: the runs of `airflow dags test` (`make demo`: triggered_by TEST), else every other run (the
    scheduler's, under `make airflow`), so one runner never fails what the other is running.
    """
    from sqlalchemy import create_engine, text

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    runs = f"""dag_run.state in ('queued', 'running')
               and (upper(coalesce(dag_run.triggered_by, '')) = 'TEST') = {'true' if test_runs else 'false'}"""
    of_runs = f"""exists (select 1 from dag_run where dag_run.dag_id = task_instance.dag_id
                  and dag_run.run_id = task_instance.run_id and {runs})"""
    try:
        with engine.begin() as conn:
            conn.execute(text(f"update task_instance set state = 'failed', end_date = current_timestamp "
                              f"where state in {STARTED_TI} and {of_runs}"))
            conn.execute(text(f"update task_instance set state = 'skipped', end_date = current_timestamp "
                              f"where (state is null or state = 'scheduled') and {of_runs}"))
            return conn.execute(text(f"update dag_run set state = 'failed', end_date = current_timestamp "
                                     f"where {runs}")).rowcount
    finally:
        engine.dispose()

"""`make celery`: a scale-out check, one intraday run on the CeleryExecutor with two local workers.

`python -m etl.local.celery` needs Debian's redis-server; the Celery provider is installed once beside the venv
(`{state_dir}/celery-site`), not into it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etl.errors import ConfigError, PipelineError
from etl.local import run_main
from etl.local.airflow_home import airflow, airflow_env, fail_unfinished_runs, prepare_home
from etl.local.simulator_process import ensure_simulator
from etl.orchestration.spec import INTRADAY_DAG
from etl.settings import PROJECT_ROOT, Settings

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
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p),
    })
    procs: list[tuple[str, subprocess.Popen]] = []
    migrated = False

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
        migrated = True
        af = [sys.executable, "-m", "airflow"]
        start("api-server", [*af, "api-server"])
        start("scheduler", [*af, "scheduler"])
        start("dag-processor", [*af, "dag-processor"])
        for i in range(1, workers + 1):
            start(f"worker{i}", [*af, "celery", "worker", "--celery-hostname", f"worker{i}@%h"])
        deadline = time.monotonic() + timeout_s
        while _paused(meta, INTRADAY_DAG) is None:  # wait for the dag-processor to serialize the DAG
            if time.monotonic() > deadline:
                raise PipelineError(f"the DAG was never parsed: see {home}/dag-processor.log")
            time.sleep(3)
        airflow(env, "dags", "unpause", INTRADAY_DAG, capture=True)
        if _paused(meta, INTRADAY_DAG):
            raise PipelineError(f"could not unpause {INTRADAY_DAG}")
        run_id = f"celery_check__{uuid.uuid4().hex[:8]}"
        airflow(env, "dags", "trigger", INTRADAY_DAG, "--run-id", run_id, capture=True)
        print(f"triggered {INTRADAY_DAG} run {run_id} on the CeleryExecutor with {workers} workers", flush=True)
        state = _wait_for_run(meta, INTRADAY_DAG, run_id, deadline)
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
        if migrated:  # an interrupted check's run must not stay running in its metadata DB
            fail_unfinished_runs(env, test_runs=False)
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
    return run_main(run_celery, "python -m etl.local.celery", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())

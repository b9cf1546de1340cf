"""Running the dbt CLI (dbt_project/) against the warehouse, and its docs site.

dbt reads the connection from PIPELINE_DB_* variables (profiles.yml uses env_var()), which we set for the
subprocess from the pipeline's database URL; the password never appears on a command line or in the logs.
dbt's target/ and logs/ live under `{state_dir}/dbt/` so that each state dir (and each test) has its own.

`dbt build` is write-audit-publish (`build_gold`): models and tests run into the shadow schema `gold__shadow`
(every model a table rebuilt from raw), and only when every test passed is the shadow swapped in for `gold` in
one transaction (grants re-applied in it), so a failed build leaves the previous complete gold in place. The dbt
process runs in its own process group and is killed with its parent (PR_SET_PDEATHSIG), and the whole
load + build holds the warehouse lock (etl.warehouse.loader.warehouse_lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from etl import db
from etl.settings import PROJECT_ROOT, Settings, get_settings
from etl.warehouse.loader import WarehouseError

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
FAILED_STATUSES = ("error", "fail", "runtime error")
GOLD, SHADOW, RETIRED = "gold", "gold__shadow", "gold__previous"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dbt_executable() -> str:
    """The dbt next to the running interpreter (the project's .venv), else the one on PATH."""
    here = Path(sys.executable).parent / "dbt"
    return str(here) if here.exists() else "dbt"


def target_dir(settings: Settings) -> Path:
    return settings.state_dir / "dbt" / "target"


def dbt_env(settings: Settings, url: str | None = None) -> dict[str, str]:
    """The subprocess environment: connection parts for profiles.yml plus dbt's own switches."""
    params = db.connection_params(url or db.database_url(settings))
    env = dict(os.environ)
    env.update({
        "PIPELINE_DB_HOST": params["host"],
        "PIPELINE_DB_PORT": params["port"],
        "PIPELINE_DB_USER": params["user"],
        "PIPELINE_DB_PASSWORD": params["password"],
        "PIPELINE_DB_NAME": params["dbname"],
        "PIPELINE_DBT_TARGET": settings.dbt_target,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",  # no internet; never phone home
        "DBT_TARGET_PATH": str(target_dir(settings)),
        "DBT_LOG_PATH": str(settings.state_dir / "dbt" / "logs"),
    })
    return env


def _failed_nodes(settings: Settings) -> list[str]:
    results = target_dir(settings) / "run_results.json"
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError):
        return []
    return [r["unique_id"] for r in data.get("results", []) if r.get("status") in FAILED_STATUSES]


def run_dbt(command: str = "build", settings: Settings | None = None, select: str | None = None,
            extra_args: list[str] | None = None) -> None:
    """Run `dbt <command>` on dbt_project; raise WarehouseError naming the failing nodes.

    `build` (and `run`) go through write-audit-publish (`build_gold`) under the warehouse lock; other commands
    (`docs generate`, `parse`, `test`) run as they are.
    """
    settings = settings or get_settings()
    if shlex.split(command)[0] in ("build", "run"):
        build_gold(command, settings, select, extra_args)
    else:
        _dbt(command, settings, select, extra_args)


def _dbt(command: str, settings: Settings, select: str | None = None, extra_args: list[str] | None = None,
         gold_schema: str | None = None) -> None:
    args = [dbt_executable(), *shlex.split(command), "--project-dir", str(DBT_PROJECT_DIR),
            "--profiles-dir", str(DBT_PROJECT_DIR)]
    if select:
        args += ["--select", *shlex.split(select)]
    if gold_schema:
        args += ["--vars", json.dumps({"gold_schema": gold_schema})]
    args += extra_args or []
    env = dbt_env(settings)
    dbt_dir = settings.state_dir / "dbt"
    dbt_dir.mkdir(parents=True, exist_ok=True)
    dbt_dir.chmod(0o700)  # logs and compiled SQL: the pipeline's user only
    results = target_dir(settings) / "run_results.json"
    results.unlink(missing_ok=True)  # so a crash before any node runs is not blamed on the last run's nodes
    log.info("dbt %s%s", command, f" --select {select}" if select else "")
    returncode, stdout, stderr = _run_with_parent(args, env)
    for line in stdout.splitlines():
        log.debug("dbt: %s", line)
    if returncode != 0:
        failed = _failed_nodes(settings)
        tail = "\n".join((stdout + stderr).strip().splitlines()[-15:])
        where = f"failing node(s): {', '.join(failed)}" if failed else f"output:\n{tail}"
        # a build reruns through write-audit-publish: dbt by hand would write gold directly, untested
        rerun = ("python -m etl load --dbt-only" if gold_schema else
                 f".venv/bin/dbt {command} --project-dir dbt_project --profiles-dir dbt_project")
        raise WarehouseError(
            f"dbt {command} failed (exit {returncode}); {where}. Details: "
            f"{settings.state_dir / 'dbt' / 'logs' / 'dbt.log'}; rerun with `{rerun}` after fixing the data or "
            "model.")
    summary = [line for line in stdout.splitlines() if "Done." in line or "Completed" in line]
    log.info("dbt %s ok%s", command, f": {summary[-1].split('Done.')[-1].strip()}" if summary else "")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the process group kill below still applies
        pass


def _run_with_parent(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run dbt in its own process group, killed with its parent: the kernel sends it SIGKILL if we die
    (PR_SET_PDEATHSIG), and any exception here (timeout, Ctrl-C, Airflow's SIGTERM) kills the whole group."""
    proc = subprocess.Popen(args, cwd=DBT_PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, stdout, stderr


# ---- write-audit-publish -----------------------------------------------------------------------------------------
def _schema_exists(cur, name: str) -> bool:
    cur.execute("select 1 from pg_namespace where nspname = %s", (name,))
    return cur.fetchone() is not None


def _relations(cur, schema: str) -> dict[str, str]:
    """name -> relkind ('r' table, 'v' view, ...) of the tables and views in `schema`."""
    cur.execute("select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = %s and c.relkind in ('r', 'v', 'm', 'p')", (schema,))
    return dict(cur.fetchall())


def build_gold(command: str = "build", settings: Settings | None = None, select: str | None = None,
               extra_args: list[str] | None = None) -> None:
    """Write-audit-publish: dbt builds and tests gold in `gold__shadow`; if all passes, the shadow replaces gold
    in one transaction; if not, gold is untouched and the error names the failing tests.

    Before the build the shadow gets a placeholder view over every gold relation (so a `--select` build and its
    tests see the models it does not rebuild). At publish, each placeholder dbt did not replace gives way to the gold table itself, moved over.
    """
    from etl.warehouse import roles
    from etl.warehouse.loader import warehouse_lock

    settings = settings or get_settings()
    with warehouse_lock(settings):
        with db.connect(settings) as conn, conn.cursor() as cur:  # write: a fresh shadow
            cur.execute(f"drop schema if exists {SHADOW} cascade")
            cur.execute(f"create schema {SHADOW}")
            placeholders = sorted(_relations(cur, GOLD))
            for name in placeholders:
                cur.execute(f'create view {SHADOW}."{name}" as select * from {GOLD}."{name}"')
        try:
            _dbt(command, settings, select, extra_args, gold_schema=SHADOW)  # audit: dbt's tests run in the shadow
        except WarehouseError as exc:
            raise WarehouseError(f"{exc} Gold was not published: it still holds the last build that passed its "
                                 "tests.") from exc
        with db.connect(settings) as conn, conn.cursor() as cur:  # publish: one transaction
            shadow = _relations(cur, SHADOW)
            for name in placeholders:
                if shadow.get(name) == "v":  # not rebuilt by this build: the gold relation itself moves over
                    cur.execute(f'drop view {SHADOW}."{name}"')
                    cur.execute(f'alter table {GOLD}."{name}" set schema {SHADOW}')
            if _schema_exists(cur, GOLD):
                cur.execute(f"alter schema {GOLD} rename to {RETIRED}")
            cur.execute(f"alter schema {SHADOW} rename to {GOLD}")
            cur.execute(f"drop schema if exists {RETIRED} cascade")
            cur.execute("select rolname from pg_roles where rolname in (%s, %s)", (roles.READER, roles.WRITER))
            roles.grant(conn, {r for (r,) in cur.fetchall()})  # schema usage and default privileges: the new gold's
        log.info("gold published (write-audit-publish: built and tested in %s, swapped in)", SHADOW)


def docs(settings: Settings | None = None, serve: bool = False, port: int = 8081) -> Path:
    """`dbt docs generate --static` (one self-contained HTML file); with serve=True, serve the site (blocks)."""
    settings = settings or get_settings()
    if serve:
        _check_port(settings.bind_host, port)  # before the generate step: a busy port fails in a second, not after it
    run_dbt("docs generate --static", settings)
    static = target_dir(settings) / "static_index.html"
    log.info("dbt docs: %s", static)
    if serve:
        _serve_docs(settings, port)
    return static


def _check_port(host: str, port: int) -> None:
    """A WarehouseError when `host`:`port` is taken (dbt would print a traceback and exit 0)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise WarehouseError(f"cannot serve the dbt docs on port {port}: {exc.strerror}. Stop what listens "
                                 "there, or choose another port with --port or PIPELINE_DOCS_PORT") from None


def _serve_docs(settings: Settings, port: int) -> None:
    """`dbt docs serve` on the bind host's `port` until Ctrl-C; a server that fails (the port taken meanwhile) is a
    WarehouseError. dbt runs in its own session so that Ctrl-C reaches only us: we stop it quietly."""
    log.info("dbt docs: http://%s:%d (Ctrl-C stops)", settings.bind_host, port)
    proc = subprocess.Popen([dbt_executable(), "docs", "serve", "--host", settings.bind_host, "--port", str(port),
                             "--no-browser",
                             "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)],
                            cwd=DBT_PROJECT_DIR, env=dbt_env(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a server that outlives SIGTERM must not keep Ctrl-C waiting for ever
            proc.kill()
            proc.wait()
        log.info("dbt docs: stopped")
        return
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise WarehouseError(f"dbt docs serve on port {port} failed: {last}. See "
                             f"{settings.state_dir / 'dbt' / 'logs' / 'dbt.log'}")

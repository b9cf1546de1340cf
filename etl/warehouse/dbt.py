"""Running the dbt CLI (dbt_project/) against the warehouse, and its docs site.

dbt reads the connection from PIPELINE_DB_* variables (profiles.yml uses env_var()), which we set for the
subprocess from the pipeline's database URL; the password never appears on a command line or in the logs.
dbt's target/ and logs/ live under `{state_dir}/dbt/` so that each state dir (and each test) has its own.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from etl import db
from etl.settings import PROJECT_ROOT, Settings, get_settings
from etl.warehouse.loader import WarehouseError

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
FAILED_STATUSES = ("error", "fail", "runtime error")


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
    """Run `dbt <command>` on dbt_project; raise WarehouseError naming the failing nodes."""
    settings = settings or get_settings()
    args = [dbt_executable(), *shlex.split(command), "--project-dir", str(DBT_PROJECT_DIR),
            "--profiles-dir", str(DBT_PROJECT_DIR)]
    if select:
        args += ["--select", *shlex.split(select)]
    args += extra_args or []
    env = dbt_env(settings)
    (settings.state_dir / "dbt").mkdir(parents=True, exist_ok=True)
    results = target_dir(settings) / "run_results.json"
    results.unlink(missing_ok=True)  # so a crash before any node runs is not blamed on the last run's nodes
    log.info("dbt %s%s", command, f" --select {select}" if select else "")
    proc = subprocess.run(args, cwd=DBT_PROJECT_DIR, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        log.debug("dbt: %s", line)
    if proc.returncode != 0:
        failed = _failed_nodes(settings)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        where = f"failing node(s): {', '.join(failed)}" if failed else f"output:\n{tail}"
        raise WarehouseError(
            f"dbt {command} failed (exit {proc.returncode}); {where}. Details: "
            f"{settings.state_dir / 'dbt' / 'logs' / 'dbt.log'}; rerun with `.venv/bin/dbt {command} "
            f"--project-dir dbt_project --profiles-dir dbt_project` after fixing the data or model.")
    summary = [line for line in proc.stdout.splitlines() if "Done." in line or "Completed" in line]
    log.info("dbt %s ok%s", command, f": {summary[-1].split('Done.')[-1].strip()}" if summary else "")


def docs(settings: Settings | None = None, serve: bool = False, port: int = 8081) -> Path:
    """`dbt docs generate --static` (one self-contained HTML file); with serve=True, serve the site (blocks)."""
    settings = settings or get_settings()
    run_dbt("docs generate --static", settings)
    static = target_dir(settings) / "static_index.html"
    log.info("dbt docs: %s", static)
    if serve:
        subprocess.run([dbt_executable(), "docs", "serve", "--port", str(port), "--no-browser",
                        "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)],
                       cwd=DBT_PROJECT_DIR, env=dbt_env(settings), check=False)
    return static

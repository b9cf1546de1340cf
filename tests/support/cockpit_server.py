"""An Airflow API server with the risk cockpit plugin, on a free port, for tests and benchmarks.

`api_server(database_url, state_dir)` starts `airflow api-server` with this project's Airflow configuration
(etl.local.airflow_home.airflow_env: plugins_folder = plugins/), a SQLite metadata DB copied from a template
migrated once per Airflow version, and one simple-auth-manager user whose password we chose. It yields an `ApiServer` with
the base URL, the login and `token()` (a JWT from POST /auth/token, as any API client gets one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from etl.errors import PipelineError
from etl.settings import PROJECT_ROOT, get_settings

USER, PASSWORD = "admin", "cockpit-" + uuid.uuid4().hex[:8]


@dataclass
class ApiServer:
    url: str
    username: str
    password: str
    home: Path
    log: Path
    jwt_secret: str

    def token(self) -> str:
        import requests

        r = requests.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password},
                          timeout=30)
        r.raise_for_status()
        return r.json()["access_token"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template_db(state_dir: Path, env: dict[str, str]) -> Path:
    """A migrated SQLite metadata DB, made once per Airflow version (migrating costs ~30 s; copying nothing)."""
    from importlib.metadata import version

    folder = state_dir / f"airflow-cockpit-template-{version('apache-airflow')}"
    db = folder / "airflow.db"
    if not db.exists():
        tmp = Path(tempfile.mkdtemp(prefix="migrate-", dir=state_dir))
        try:
            e = {**env, "AIRFLOW_HOME": str(tmp),
                 "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow.db'}"}
            proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=e, cwd=PROJECT_ROOT,
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise PipelineError(f"airflow db migrate failed: {proc.stderr[-2000:]}")
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "airflow.db", db)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return db


@contextmanager
def api_server(database_url: str, state_dir: Path, data_dir: str | None = None,
               wait_s: float = 180.0, password: str | None = PASSWORD) -> Iterator[ApiServer]:
    """`airflow api-server` with the cockpit, reading gold from `database_url`; stopped (its process group)
    on exit. `state_dir` holds the Airflow home (and dbt's target/ for the docs link). `password=None`: Airflow
    generates the login file itself, as under `make airflow`."""
    import requests

    from etl.local.airflow_home import airflow_env

    settings = get_settings()
    home = Path(tempfile.mkdtemp(prefix="airflow-cockpit-", dir=state_dir))
    env = airflow_env(settings, home=home, database_url=database_url)
    port = free_port()
    secret = uuid.uuid4().hex + uuid.uuid4().hex  # 64 bytes: the HMAC-SHA512 minimum
    env.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "PIPELINE_STATE_DIR": str(state_dir),
    })
    if data_dir:
        env["PIPELINE_DATA_DIR"] = data_dir
    if password is not None:
        (home / "passwords.json").write_text(json.dumps({USER: password}))
    shutil.copy(_template_db(Path(settings.state_dir), env), home / "airflow.db")
    log = home / "api-server.log"
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--port", str(port), "--workers", "1"],
                            env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise PipelineError(f"airflow api-server exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise PipelineError(f"airflow api-server did not answer on {url} in {wait_s:.0f}s: see {log}")
            time.sleep(0.5)
        if password is None:
            password = json.loads((home / "passwords.json").read_text())[USER]
        yield ApiServer(url=url, username=USER, password=password, home=home, log=log, jwt_secret=secret)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        shutil.rmtree(home, ignore_errors=True)

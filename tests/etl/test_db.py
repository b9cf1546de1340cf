"""etl.db: what a wrong PIPELINE_DATABASE_URL or a dead connection gives (issue 29 item 3)."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg2
import pytest

from etl import db
from etl.settings import PROJECT_ROOT


@pytest.mark.parametrize("command", [["load"], ["report"], ["db", "url"]])
def test_a_database_url_that_is_not_a_url_is_one_line_exit_2(tmp_path, command):
    """It was a 31-line `invalid dsn` traceback."""
    env = dict(os.environ, PIPELINE_DATABASE_URL="not-a-url", PIPELINE_DATA_DIR=str(tmp_path),
               PIPELINE_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "etl", *command], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr == (
        "error: PIPELINE_DATABASE_URL='not-a-url' is not a Postgres URL (invalid dsn: missing \"=\" after "
        "\"not-a-url\" in connection info string): expected postgresql://USER@HOST:5432/DBNAME (a password as "
        ":PASSWORD after USER), or unset it to use the embedded Postgres\n")


def test_key_value_dsns_and_urls_are_accepted():
    for url in ("postgresql://etl:secret@db.example:5432/warehouse", "host=/tmp dbname=warehouse user=etl"):
        assert db.check_url(url) == url


def test_connect_leaves_the_servers_error_when_the_server_closed_the_connection(pg_url):
    """No rollback on a connection the server closed: the caller sees why (it was `InterfaceError: connection
    already closed` from the rollback, hiding the cause)."""
    with pytest.raises(psycopg2.OperationalError) as err, db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        pid = cur.fetchone()[0]
        with db.connect(url=pg_url) as other, other.cursor() as kill:
            kill.execute("select pg_terminate_backend(%s)", (pid,))
        cur.execute("select 1")
    assert not isinstance(err.value, psycopg2.InterfaceError)
    assert db.lost_connection(err.value, conn)
    assert str(err.value).startswith("server closed the connection unexpectedly")

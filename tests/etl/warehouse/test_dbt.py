"""etl.warehouse.dbt: the docs site's failures (issue 29 item 3), through the CLI a user runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from etl.settings import PROJECT_ROOT


def _docs(port: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "etl", "docs", "--serve", "--port", str(port)], cwd=PROJECT_ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,  # its own process group, as a terminal's job
                            # SIGINT as in a terminal (a background job's shell ignores it, and children inherit that)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_docs_on_a_busy_port_is_one_line_exit_2_before_generating_anything(tmp_path):
    """It was dbt's `Address already in use` traceback and exit 0."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _docs(port, {"PIPELINE_STATE_DIR": str(tmp_path / "state")})
        out, err = proc.communicate()
    assert proc.returncode == 2 and out == ""
    assert err == (f"error: cannot serve the dbt docs on port {port}: Address already in use. Stop what listens "
                   "there, or choose another port with --port or PIPELINE_DOCS_PORT\n")
    assert not (tmp_path / "state" / "dbt").exists()  # failed before running dbt


@pytest.mark.slow
def test_ctrl_c_stops_the_docs_site_without_a_traceback(tmp_path, pg_url):
    """Ctrl-C (SIGINT to the job's process group) printed a KeyboardInterrupt traceback; now the site stops quietly."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = _docs(port, {"PIPELINE_STATE_DIR": str(tmp_path / "state"), "PIPELINE_DATABASE_URL": pg_url})
    while proc.poll() is None:  # dbt docs generate, then the server comes up
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate()
    assert proc.returncode == 0
    assert out == f"{tmp_path / 'state' / 'dbt' / 'target' / 'static_index.html'}\n"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1].endswith("INFO etl.warehouse.dbt: dbt docs: stopped")
    with pytest.raises(OSError):  # dbt's server went with it
        socket.create_connection(("127.0.0.1", port)).close()


def test_cumulative_pnl_is_unknown_from_a_day_whose_pnl_is_unknown(pg_url, tmp_path):
    """fact_pnl_daily summed coalesce(daily_pnl, 0): a day whose PnL is unknown (NULL, an unpriced holding; the
    engine's MTD unknown for the rest of the month) counted as 0, and cumulative_pnl (daily_and_mtd.sql shows it) went
    on as a confident figure. The model's dbt unit tests (models/marts/_marts__unit_tests.yml) run here on the
    staging view they read: cumulative_pnl is NULL from that day on, a NULL first day still counts as none."""
    from etl import db
    from etl.warehouse import setup
    from etl.warehouse.dbt import _dbt
    from tests.support.env import pipeline_env

    with db.scratch_database(pg_url, "dbt_unit") as url, \
            pipeline_env(url, tmp_path / "data", PIPELINE_STATE_DIR=tmp_path / "state"):
        from etl.settings import get_settings

        settings = get_settings()
        setup(settings)
        _dbt("run", settings, select="stg_risk__pnl_daily")      # the unit tests' input: the view must exist
        _dbt("test", settings, select="fact_pnl_daily,test_type:unit")

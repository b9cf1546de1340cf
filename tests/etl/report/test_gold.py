"""etl.report.gold: the advice when the reporting session cannot start (issue 29 item 3)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from etl.settings import PROJECT_ROOT


def test_report_with_the_server_down_says_to_check_the_server_not_to_load(tmp_path):
    """It advised `python -m etl load (it creates the role)`, which cannot help while the server is down."""
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PIPELINE_DATABASE_URL=f"postgresql://etl:hunter2@127.0.0.1:{port}/warehouse",
               PIPELINE_DATA_DIR=str(tmp_path), PIPELINE_STATE_DIR=str(tmp_path / "state"))
    result = subprocess.run([sys.executable, "-m", "etl", "report"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot connect to the warehouse as 'reporting' (postgresql://reporting@127.0.0.1:{port}/warehouse): "
        f"connection to server at \"127.0.0.1\", port {port} failed: Connection refused Is the server running on that "
        "host and accepting TCP/IP connections?; check that the server is up (`python -m etl db status`; "
        "PIPELINE_DATABASE_URL names it), then rerun\n")

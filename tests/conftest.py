"""Shared fixtures: a real Postgres database per test session, a temporary data root, a live simulator, a real
S3-compatible server, the report's sample gold, reference folders and the screenshot folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from etl.settings import PROJECT_ROOT

warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A fresh database on the real server (embedded by default, PIPELINE_DATABASE_URL if set), dropped at the end."""
    from etl import db
    from etl.settings import get_settings

    with db.scratch_database(db.database_url(get_settings()), "test") as url:
        yield url


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty data root for bronze/silver/outputs, set through the environment like a user would."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(root))
    return root


@pytest.fixture
def make_simulator():
    """Start simulators with any config (faults, limits) on free ports; all stopped at the end of the test."""
    from etl.simulator import Simulator, SimulatorConfig

    started = []

    def _make(**kwargs):
        kwargs.setdefault("port", 0)
        sim = Simulator(SimulatorConfig(**kwargs)).start()
        started.append(sim)
        return sim

    yield _make
    for sim in started:
        sim.stop()


@pytest.fixture
def simulator(make_simulator, monkeypatch):
    """A fault-free simulator with a generous rate limit, wired in through COINBASE_API_URL."""
    sim = make_simulator(rate_limit_rps=1000.0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    monkeypatch.setenv("PIPELINE_SOURCE", "simulator")
    return sim


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server as its own process; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket on the S3 server, its credentials and endpoint in the standard AWS variables; "s3://<bucket>"."""
    import pyarrow.fs as pafs

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    bucket = f"pipeline-{os.urandom(4).hex()}"
    pafs.S3FileSystem(endpoint_override=s3_server, access_key="testing", secret_key="testing",
                      region="us-east-1", allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def sample_gold_url(pg_url, request):
    """The report's sample gold schema (tests/support/report_sample.py, as of its AS_OF) in a database of the test module's
    own on the test server: the session database may get the warehouse's real gold schema."""
    from etl import db
    from tests.support.report_sample import create_gold, sample_frames

    with db.scratch_database(pg_url, request.module.__name__.rpartition(".")[2]) as url:
        create_gold(url, sample_frames())
        yield url


REFERENCE_DATA = PROJECT_ROOT / "etl" / "reference_data"


@pytest.fixture
def reference_copy(tmp_path) -> Path:
    """A copy of the shipped reference folder (instruments, exchanges, portfolios, positions) to edit."""
    return Path(shutil.copytree(REFERENCE_DATA, tmp_path / "reference"))


@pytest.fixture
def book_reference(tmp_path, monkeypatch):
    """book_reference(portfolios_csv, positions_csv): a reference folder with the shipped instruments and exchanges
    and this book, set as PIPELINE_REFERENCE_DIR; returns the folder."""
    def _write(portfolios: str, positions: str) -> Path:
        ref = tmp_path / "ref"
        ref.mkdir()
        for name in ("instruments.csv", "exchanges.csv"):
            shutil.copy(REFERENCE_DATA / name, ref / name)
        (ref / "portfolios.csv").write_text(portfolios)
        (ref / "positions.csv").write_text(positions)
        monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(ref))
        return ref

    return _write


@pytest.fixture(scope="module")
def artifacts(request) -> Path:
    """The module's screenshot folder: `$PIPELINE_TEST_ARTIFACTS/<its ARTIFACTS>/` (default
    `.state/test-artifacts/...`, git-ignored)."""
    root = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS", PROJECT_ROOT / ".state" / "test-artifacts"))
    out = root / request.module.ARTIFACTS
    out.mkdir(parents=True, exist_ok=True)
    return out


"""Shared fixtures: a real Postgres database per test session, a temporary data root, a live simulator."""

from __future__ import annotations

import os
import warnings

import pytest

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


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PIPELINE_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="PIPELINE_SKIP_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)

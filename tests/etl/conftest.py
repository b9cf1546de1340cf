"""Fixtures of the tests of the lake's modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data folder (and state folder) of the test's own, as PIPELINE_DATA_DIR."""
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "data"

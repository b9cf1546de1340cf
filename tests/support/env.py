"""The settings of a module-scoped fixture (monkeypatch is function-scoped): the warehouse and data folder it runs
against, set in the environment for the block and undone after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def pipeline_env(database_url: str, data_dir: Path, **more: str | Path) -> Iterator[pytest.MonkeyPatch]:
    """PIPELINE_DATABASE_URL and PIPELINE_DATA_DIR, plus `more` (NAME=value), for the block; yields the
    MonkeyPatch for anything else the fixture patches."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"PIPELINE_DATABASE_URL": database_url, "PIPELINE_DATA_DIR": data_dir, **more}.items():
            mp.setenv(name, str(value))
        yield mp

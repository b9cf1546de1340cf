"""Owner-only files: what the pipeline writes locally (data root, state dir, Airflow home, secrets) is its user's only.

Every process of ours runs with umask 077 (`owner_only`: new files 0600, new folders 0700): the CLI, the local
runners (and so every Airflow process they start, which writes the login file, the metadata DB and task logs) and
any process that opens a local data root (etl.storage). `lock_folder` closes a folder that exists already: one
made by an earlier version, or the state dir after the embedded Postgres started, which, run as root, opens every
parent of its data folder to everyone so that its own user can reach it (etl.db).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

UMASK = 0o077


def owner_only() -> None:
    """Files and folders this process creates from now on: readable by their owner only."""
    os.umask(UMASK)


def lock_folder(path: Path, traverse_gid: int | None = None) -> None:
    """`path` (if it exists) 0700; with `traverse_gid`: 0710 with that group, which may then pass through the
    folder (not list it, not read what it does not own)."""
    if not path.is_dir():
        return
    if os.geteuid() not in (0, path.stat().st_uid):  # another user's folder (a shared mount): theirs to close
        log.warning("%s belongs to another user: not closing it to others (make it 0700 yourself)", path)
        return
    if traverse_gid is not None:
        os.chown(path, -1, traverse_gid)
    path.chmod(0o710 if traverse_gid is not None else 0o700)


def lock_file(path: Path) -> None:
    """`path` (if it exists) 0600."""
    if path.is_file():
        path.chmod(0o600)

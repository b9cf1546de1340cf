"""The commit protocol of the risk and factor outputs: immutable run files, then one manifest written last.

A stage run writes each output file under a name of its own, `outputs/<table>/<partition>/<run_id>.parquet`,
then commits them all by writing ONE small manifest, `outputs/_commits/<name>.json`, with the Store's atomic
single-file write (a rename locally, a single PUT on an object store). Readers (the loader) take only the files a
manifest names, so they see the previous complete run or the new complete one, never a mix: a run killed before
its manifest leaves orphan files that nothing reads, and the next run's commit deletes them. docs/commit_protocol.md.

Manifest: {"name", "stage", "run_id", "committed_at", "files": {"<table>/<partition>": {"path", "rows", "sha256"}},
...}; `sha256` is the file's content hash (etl/integrity.py), which the readers check.
`merge=True` (factors: each run rewrites a sliding window of days) keeps the previous manifest's entries for the
partitions this run does not write. One writer per manifest at a time (the orchestrator runs one risk/factors run
per day); a commit naming a file that is gone is an error for the loader, never a silent gap.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.fs as pafs

from etl.errors import ValidationError
from etl.storage import Store

log = logging.getLogger(__name__)

OUTPUTS = "outputs"
COMMITS_DIR = f"{OUTPUTS}/_commits"


def new_run_id() -> str:
    """Sortable by start time, unique across hosts."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def risk_manifest(as_of: date) -> str:
    """The manifest name that commits the risk outputs of one as-of day."""
    return f"risk/as_of_date={as_of.isoformat()}"


def manifest_path(name: str) -> str:
    return f"{COMMITS_DIR}/{name}.json"


def read_manifest(store: Store, name: str) -> dict | None:
    """The committed manifest `name`, or None when nothing is committed under it."""
    rel = manifest_path(name)
    if not store.exists(rel):
        return None
    return _read(store, rel)


def _read(store: Store, rel: str) -> dict:
    try:
        data = store.read_json(rel)
        if not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' object")
    except (ValueError, AttributeError, OSError) as exc:
        raise ValidationError(f"{store.path(rel)}: unreadable commit manifest ({exc}); rerun the stage that wrote "
                              "it (python -m etl risk --as-of D, or python -m etl factors)") from exc
    return data


def manifests(store: Store) -> list[dict]:
    """Every committed manifest under outputs/_commits (sorted by name)."""
    base = store.path(COMMITS_DIR)
    if store.fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    infos = store.fs.get_file_info(pafs.FileSelector(base, recursive=True))
    rels = sorted(posixpath.relpath(i.path, store.root) for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(".json") and not i.base_name.startswith("."))
    return [_read(store, rel) for rel in rels]


def committed_files(store: Store) -> dict[str, str | None]:
    """Every output file some manifest commits (path relative to the data root) -> its recorded content hash
    (None in a manifest written before hashes were recorded)."""
    return {entry["path"]: entry.get("sha256") for m in manifests(store) for entry in m["files"].values()}


def publish(store: Store, name: str, stage: str, parts: dict[tuple[str, str], pa.Table], *, merge: bool = False,
            run_id: str | None = None, meta: dict | None = None) -> dict:
    """Write `parts` ((table, partition) -> rows, partition like "as_of_date=2026-01-31") as new run files, commit
    them with one manifest write, then delete the files of those partitions that the manifest no longer names.

    Returns the manifest. A crash before the manifest write leaves the previous commit in force.
    """
    run_id = run_id or new_run_id()
    previous = read_manifest(store, name) if merge else None
    files = dict(previous["files"]) if previous else {}
    for (table, partition), rows in parts.items():
        rel = posixpath.join(OUTPUTS, table, partition, f"{run_id}.parquet")
        store.write_parquet(rel, rows)
        files[f"{table}/{partition}"] = {"path": rel, "rows": rows.num_rows, "sha256": store.digest(rel)}
    manifest = {"name": name, "stage": stage, "run_id": run_id, "committed_at": datetime.now(UTC).isoformat(),
                "files": files, **(meta or {})}
    store.write_json(manifest_path(name), manifest)  # the commit point
    keep = {e["path"] for e in files.values()}
    for table, partition in parts:
        folder = posixpath.join(OUTPUTS, table, partition)
        for rel in store.list_files(folder, ".parquet"):
            if rel not in keep:
                store.delete(rel)  # a superseded run's file, or the orphan of a killed run
    log.info("committed %s: run %s, %d file(s)", name, run_id, len(parts))
    return manifest

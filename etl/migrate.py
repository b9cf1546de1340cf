"""`python -m etl migrate-lake`: convert a data folder written before the lake's Delta tables (docs/lake.md).

Converts the risk, factor and intraday outputs: each old commit manifest `outputs/_commits/<name>.json` becomes a
run record of the same name and run id (etl/commits.py) whose entries are the manifest's files, each checked
against its recorded SHA-256 and committed to its Delta table. Per manifest, in this order:
1. publish its entries (skipped when `outputs/_runs` already holds a record of that name and run id),
2. delete the old files it named that no Delta table references,
3. delete the manifest: the mark that this name is converted.
A crash anywhere leaves the old manifest or the converted record in force (readers take the record), and a rerun
finishes the remaining steps: the command is idempotent. Bronze and silver keep their format on this branch
(docs/lake_migration_status.md).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field

from etl import commits
from etl.errors import ValidationError
from etl.settings import Settings, get_settings
from etl.storage import Store, get_store

log = logging.getLogger(__name__)
OLD_COMMITS = f"{commits.OUTPUTS}/_commits"


@dataclass
class MigrationSummary:
    converted: list[str] = field(default_factory=list)    # commit names published as run records by this run
    already: list[str] = field(default_factory=list)      # names a previous (interrupted) run had published
    files_removed: int = 0

    def __str__(self) -> str:
        return (f"migrate-lake: {len(self.converted)} output commit(s) converted to Delta run records, "
                f"{len(self.already)} already converted, {self.files_removed} old file(s) removed")


def migrate_lake(settings: Settings | None = None) -> MigrationSummary:
    settings = settings or get_settings()
    store = get_store(settings)
    summary = MigrationSummary()
    # the old manifests sit under a hidden folder (list_files skips those): list its entries
    old = [p for p, _ in store.entries(OLD_COMMITS) if p.endswith(".json") and not posixpath.basename(p).startswith(".")]
    for rel in old:
        manifest = _read_old(store, rel)
        name = manifest.get("name") or rel[len(OLD_COMMITS) + 1:-len(".json")]
        records = commits.read_manifest(store, name)
        if records is not None and records["run_id"] == manifest["run_id"]:
            summary.already.append(name)
        else:
            _publish(store, name, manifest)
            summary.converted.append(name)
        summary.files_removed += _remove_old_files(store, manifest)
        store.delete(rel)
    log.info("%s", summary)
    return summary


def _read_old(store: Store, rel: str) -> dict:
    try:
        manifest = store.read_json(rel)
        if not isinstance(manifest.get("files"), dict) or "run_id" not in manifest:
            raise ValueError("no 'files' object or no 'run_id'")
    except (ValueError, AttributeError, OSError) as exc:
        raise ValidationError(f"{store.path(rel)}: unreadable old commit manifest ({exc}); rerun the stage that wrote "
                              "it (python -m etl risk --as-of D, or python -m etl factors), then delete it") from exc
    return manifest


def _publish(store: Store, name: str, manifest: dict) -> None:
    parts = {}
    for key, entry in manifest["files"].items():
        table, partition = key.split("/", 1)
        parts[(table, partition)] = store.read_parquet(entry["path"], sha256=entry.get("sha256"))
    meta = {k: v for k, v in manifest.items() if k not in ("name", "stage", "run_id", "committed_at", "files")}
    commits.publish(store, name, manifest.get("stage", name.split("/")[0]), parts, run_id=manifest["run_id"],
                    meta=meta)


def _remove_old_files(store: Store, manifest: dict) -> int:
    live = set(commits.committed_files(store))
    old = [e["path"] for e in manifest["files"].values() if e["path"] not in live and store.exists(e["path"])]
    for rel in old:
        store.delete(rel)
    return len(old)

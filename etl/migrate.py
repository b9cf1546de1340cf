"""`python -m etl migrate-lake`: convert a data folder written before the lake's Delta tables (docs/lake.md).

Stream tables (bronze trades, ticker, order_book, stream_gaps, stream_rejects; silver trade bars and liquidity)
and silver's candle tables (bars_5m, bars_1d, quarantine, price_quality) written as plain Parquet folders become
Delta tables of the same files: one commit adding every visible file (a hidden temporary file of an interrupted
write is never data), made when the folder has no table yet; a silver file whose SHA-256 the old state file
recorded is checked against it first. A bronze stream table an upgraded collector made first gets, in one commit,
the folder's files older than the table that its log never named (the old batches: streamed once, never fetched
again); a silver table an upgraded build made is left as it is (its next build rebuilds the partitions whose bronze
files the migration adds). The silver state files they replace are deleted after. Silver's next build then
rebuilds every partition once (no bronze version recorded yet).

Converts the risk, factor and intraday outputs: each old commit manifest `outputs/_commits/<name>.json` becomes a
run record of the same name and run id (etl/commits.py) whose entries are the manifest's files, each checked
against its recorded SHA-256 and committed to its Delta table. Per manifest, in this order:
1. publish its entries that no run record of that name holds (records are newer than any old manifest: one
   holding an entry converted it before a kill, or a run of the upgraded pipeline superseded it),
2. delete the old files it named that no Delta table references,
3. delete the manifest: the mark that this name is converted.
A crash anywhere leaves the old manifest or the converted record in force (readers take the record), and a rerun
finishes the remaining steps: the command is idempotent.

Bronze candles written with batch manifests and compaction markers become the Delta table `bronze/candles` of
their current files, in one commit: per partition the newest marker's compacted files plus the files of batches
with a manifest that marker does not replace (their SHA-256 carried over from the manifests and markers; when an
upgraded ingest already made the table, they are added beside the batches it names). Then the
manifests, markers and pending records go (the superseded and uncommitted files are left to `vacuum`). A crash
before the commit leaves the old folder as it was; after it, the next run only finishes the clean-up.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from etl import candles, commits
from etl.errors import ValidationError
from etl.lake import DataFile, Lake
from etl.settings import Settings, get_settings
from etl.silver.incremental import SILVER_TABLES
from etl.silver.liquidity import LIQUIDITY_DIR, LIQUIDITY_SCHEMA
from etl.silver.trade_bars import TRADE_BARS_DIR, TRADE_BARS_SCHEMA
from etl.storage import Store, get_store
from etl.stream import sinks

log = logging.getLogger(__name__)
OLD_COMMITS = f"{commits.OUTPUTS}/_commits"
OLD_SILVER_STATE = "silver/_state/partitions.json"   # the candle build's partition versions and file digests
OLD_STATE_FILES = ("silver/_state/trade_files.json", "silver/_state/book_files.json", OLD_SILVER_STATE,
                   "silver/_state/processed_batches.json")
OLD_BRONZE = ("bronze/_manifests", "bronze/_pending")  # batch manifests; plans of batches being written
_MARKER = re.compile(r"/_v(\d{6})\.json$")


@dataclass
class MigrationSummary:
    tables_adopted: list[str] = field(default_factory=list)  # plain Parquet folders made Delta tables
    converted: list[str] = field(default_factory=list)    # commit names published as run records by this run
    already: list[str] = field(default_factory=list)      # names a previous (interrupted) run had published
    files_removed: int = 0

    def __str__(self) -> str:
        return (f"migrate-lake: {len(self.tables_adopted)} Parquet folder(s) made Delta tables, "
                f"{len(self.converted)} output commit(s) converted to Delta run records, "
                f"{len(self.already)} already converted, {self.files_removed} old file(s) removed")


def migrate_lake(settings: Settings | None = None) -> MigrationSummary:
    settings = settings or get_settings()
    store = get_store(settings)
    summary = MigrationSummary()
    lake = Lake.of(store, settings)
    digests = _old_digests(store)
    for rel, (schema, keys) in _folder_tables().items():
        table = lake.table(rel)
        # a stream table an upgraded collector made first still gets the old files (streamed once, never fetched
        # again); a silver table an upgraded build made is not: its next build rebuilds from bronze what they held
        if (table is None or rel in sinks.STREAM_TABLES) and _adopt(store, lake, rel, schema, keys, digests, table):
            summary.tables_adopted.append(rel)
    for rel in OLD_STATE_FILES:  # what the silver tables' own commits replaced
        store.delete(rel)
    markers = [p for p, _ in store.entries(candles.CANDLES_DIR) if _MARKER.search(p)]
    old_bronze = markers or any(store.entries(OLD_BRONZE[0]))
    if ((old_bronze or (lake.table(candles.CANDLES_DIR) is None and store.list_files(candles.CANDLES_DIR, ".parquet")))
            and _adopt_candles(store, lake)):
        summary.tables_adopted.append(candles.CANDLES_DIR)
    for rel in [*OLD_BRONZE, *markers]:
        store.delete(rel)
    # the old manifests sit under a hidden folder (list_files skips those): list its entries
    old = [p for p, _ in store.entries(OLD_COMMITS) if p.endswith(".json") and not posixpath.basename(p).startswith(".")]
    for rel in old:
        manifest = _read_old(store, rel)
        name = manifest.get("name") or rel[len(OLD_COMMITS) + 1:-len(".json")]
        # every run record is newer than every old manifest: an entry a record holds was converted before a kill,
        # or superseded by a run of the upgraded pipeline; publishing it again would put the old figures back
        held = (commits.read_manifest(store, name) or {}).get("files", {})
        rest = {key: entry for key, entry in manifest["files"].items() if key not in held}
        if rest:
            _publish(store, name, {**manifest, "files": rest})
            summary.converted.append(name)
        else:
            summary.already.append(name)
        summary.files_removed += _remove_old_files(store, manifest)
        store.delete(rel)
    log.info("%s", summary)
    return summary


def unconverted(store: Store) -> str | None:
    """The first file or folder of the old layout this command converts (batch manifests or plans, output
    manifests, silver state files, a stream table an upgraded collector made holding older files its log never
    named), or None. Their data files are files no Delta log names: a vacuum (`compact`) would delete them."""
    folders = [*OLD_BRONZE, OLD_COMMITS]   # the output manifests' folder is left empty after the migration
    lake = Lake.of(store)
    return next((rel for rel in folders if store.entries(rel)), None) or next(
        (rel for rel in OLD_STATE_FILES if store.exists(rel)), None) or next(
        (rel for rel in sinks.STREAM_TABLES if (t := lake.table(rel)) is not None and _unnamed(store, lake, rel, t)),
        None)


def _folder_tables() -> dict[str, tuple[pa.Schema, list[str]]]:
    by_product = ["product_id", "date"]
    return {sinks.TRADES_DIR: (sinks.TRADES_SCHEMA, by_product), sinks.TICKER_DIR: (sinks.TICKER_SCHEMA, by_product),
            sinks.BOOK_DIR: (sinks.BOOK_SCHEMA, by_product), sinks.GAPS_DIR: (sinks.GAPS_SCHEMA, ["date"]),
            sinks.REJECTS_DIR: (sinks.REJECTS_SCHEMA, ["date"]), TRADE_BARS_DIR: (TRADE_BARS_SCHEMA, by_product),
            LIQUIDITY_DIR: (LIQUIDITY_SCHEMA, by_product), **SILVER_TABLES}


def _old_digests(store: Store) -> dict[str, str]:
    """The silver file digests the old state file recorded ({} without one, or one that is unreadable: the files
    are then adopted unchecked and the next build rewrites them all)."""
    try:
        files = store.read_json(OLD_SILVER_STATE).get("files") if store.exists(OLD_SILVER_STATE) else {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        files = None
    return files if isinstance(files, dict) else {}


def _adopt(store: Store, lake: Lake, rel: str, schema: pa.Schema, keys: list[str], digests: dict[str, str],
           table: DeltaTable | None = None) -> bool:
    """Make the folder `rel` a Delta table of its visible Parquet files, in one commit, or add to `table` (made by an
    upgraded writer before the migration) those of its files older than the table that its log never named (not
    those of an upgraded writer killed before its commit, nor those a commit named and `compact` replaced since);
    a file that differs from its recorded digest stops it (CorruptFileError: nothing committed). Returns whether it
    committed."""
    paths = store.list_files(rel, ".parquet") if table is None else _unnamed(store, lake, rel, table)
    if not paths:
        return False
    files = []
    for path in paths:
        store.verify(path, digests.get(path))
        inside = posixpath.relpath(path, rel)
        values = dict(part.split("=", 1) for part in posixpath.dirname(inside).split("/"))
        with store.fs.open_input_file(store.path(path)) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        files.append(DataFile(inside, store.fs.get_file_info(store.path(path)).size, values, rows))
    lake.commit_files(rel, files, pa.schema([*schema, *(pa.field(k, pa.string()) for k in keys)]), keys,
                      metadata={"migrated_from": "plain Parquet folder"}, table=table)
    return True


def _unnamed(store: Store, lake: Lake, rel: str, table: DeltaTable) -> list[str]:
    """The visible Parquet files of the folder `rel` older than its Delta table `table` (made by an upgraded writer
    before the migration) that its log never named: the old layout's data."""
    paths = store.list_files(rel, ".parquet")
    made = table.metadata().created_time / 1000
    infos = store.fs.get_file_info([store.path(p) for p in paths])
    paths = [p for p, info in zip(paths, infos, strict=True) if info.mtime.timestamp() < made]
    named = lake.ever_added(rel) if paths else set()   # its whole log: read only when there is a candidate
    return [p for p in paths if p not in named]


def _adopt_candles(store: Store, lake: Lake) -> bool:
    """Commit the old bronze candle folder's current files (see the module docstring) that the table never named:
    its first data, or beside the batches an upgraded ingest committed before the migration (a rerun after a kill
    past this commit adds nothing, also when `compact` replaced the files it committed). Returns whether it
    committed."""
    manifests = [store.read_json(p) for p, _ in store.entries(OLD_BRONZE[0]) if p.endswith(".json")]
    committed = {m["batch_id"] for m in manifests}
    sha = {rel: digest for m in manifests for rel, digest in (m.get("sha256") or {}).items()}
    folders: dict[str, list[str]] = {}
    for rel, _ in store.entries(candles.CANDLES_DIR):
        if not posixpath.basename(rel).startswith((".", "_")) or _MARKER.search(rel):
            folders.setdefault(posixpath.dirname(rel), []).append(posixpath.basename(rel))
    current = []
    for folder, names in sorted(folders.items()):
        markers = sorted(n for n in names if n.startswith("_v"))
        marker = store.read_json(f"{folder}/{markers[-1]}") if markers else {"files": [], "replaces": []}
        sha |= {f"{folder}/{n}": d for n, d in (marker.get("sha256") or {}).items()}
        current += [f"{folder}/{n}" for n in marker["files"]]
        current += [f"{folder}/{n}" for n in sorted(names) if n.endswith(".parquet") and
                    n[: -len(".parquet")] in committed and n not in marker["replaces"]]
    table = lake.table(candles.CANDLES_DIR)
    if table is not None:
        named = lake.ever_added(candles.CANDLES_DIR)
        current = [rel for rel in current if rel not in named]
        if not current:
            return False
    files = []
    for rel in current:
        with store.fs.open_input_file(store.path(rel)) as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        files.append(DataFile(posixpath.relpath(rel, candles.CANDLES_DIR), store.fs.get_file_info(store.path(rel)).size,
                              dict(zip(candles.KEYS, candles.partition_of(rel), strict=True)), rows))
    lake.commit_files(candles.CANDLES_DIR, files, candles.TABLE_SCHEMA, candles.KEYS,
                      metadata={"migrated_from": "batch manifests and compaction markers",
                                candles.SHA256: json.dumps({f: sha[f] for f in current if f in sha})}, table=table)
    return True


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

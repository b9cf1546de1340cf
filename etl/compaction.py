"""Bronze partitions: which files are a partition's current version, compaction of closed days, and the fold of
the partitions still receiving batches.

A partition `bronze/candles/product_id=X/date=D/` holds
- batch files `<batch_id>.parquet`, part of the current version once the batch's manifest
  `bronze/_manifests/<batch_id>.json` exists (bronze writes it last),
- compacted files `compacted-v<N>-g<granularity>.parquet` and markers `_v<N>.json` (hidden from plain readers).

**Current version** = the files named by the newest marker (highest N) plus every committed batch file that marker
does not list under `replaces`. Without a marker: every committed batch file. A compacted file no marker names
(a compaction that died before its commit) is never read. A marker is written once and never changed, so
(newest marker, committed batch files) decide the current version: `version` returns exactly that, from a
listing, without opening any file.

**Compaction** (`compact`) of a closed partition (date < `before`), under the silver writer lock:
1. read the current version; dedup to one row per (granularity, bucket_start): the latest `ingested_at`, then the
   greatest `batch_id` - the rows every reader would have kept (`latest_per_key`); columns are kept as they are;
2. write one file per granularity `compacted-v<N+1>-g<g>.parquet` (invisible: no marker names it yet);
3. commit: write the marker `_v<N+1>.json` listing those files and every file they replace (one atomic write, so
   a reader sees the old files or the compacted ones, never both or neither);
4. retention: files a marker replaced, older markers and uncommitted compacted files are deleted once the newest
   marker is `compact_retention_hours` old (readers already in flight keep their files that long); a manifest
   none of whose files is left is deleted too. Quarantine files (bad rows of a batch) are kept: audit data.
A partition whose current version is already one compacted file per granularity is left alone (idempotent); a
crash at any step leaves either the old version or the new one, and the next run finishes or redoes the step.
An unreadable (truncated, corrupt: a page checksum fails, or its bytes differ from the SHA-256 its batch manifest or
marker recorded under `sha256`) file is moved to `bronze/quarantined_files/` with a JSON reason beside it.

**Fold** (`fold`): the same steps 1-4 for the partitions silver's incremental build is about to read whose current
version holds two or more files (today's gets a batch every intraday run), under the lock silver already holds.
The open day is then one compacted file per granularity plus the batches since the last run, so a run reads O(1)
files instead of every batch of the day; the output is the same rows (step 1 is the dedup silver applies).
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from etl import commits
from etl.integrity import CorruptFileError, repair
from etl.settings import Settings, get_settings
from etl.storage import Store, exclusive, get_store
from etl.stream import sinks

log = logging.getLogger(__name__)

CANDLES_DIR = "bronze/candles"
MANIFEST_DIR = "bronze/_manifests"
BAD_FILES_DIR = "bronze/quarantined_files"
SILVER_LOCK = "silver"  # compaction changes what silver reads: one lock for both
_PARTITION = re.compile(r"^(.*/product_id=([^/]+)/date=(\d{4}-\d{2}-\d{2}))/([^/]+)$")
_MARKER = re.compile(r"^_v(\d{6})\.json$")
_COMPACTED = re.compile(r"^compacted-v(\d{6})-g(\d+)\.parquet$")


@dataclass
class Partition:
    product_id: str
    date: str
    rel_dir: str
    batch_files: dict[str, int] = field(default_factory=dict)   # name -> size
    compacted: dict[str, int] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)            # names, sorted (oldest first)

    @property
    def key(self) -> tuple[str, str]:
        return self.product_id, self.date

    @property
    def newest_marker(self) -> str | None:
        return self.markers[-1] if self.markers else None

    def rel(self, name: str) -> str:
        return f"{self.rel_dir}/{name}"


def scan(store: Store, root: str = CANDLES_DIR) -> dict[tuple[str, str], Partition]:
    """Every partition under root from one recursive listing (markers included), keyed by (product_id, date)."""
    parts: dict[tuple[str, str], Partition] = {}
    for rel, size in store.entries(root):
        m = _PARTITION.match(rel)
        if not m:
            continue
        rel_dir, product, day, name = m.groups()
        part = parts.setdefault((product, day), Partition(product, day, rel_dir))
        if _MARKER.match(name):
            part.markers.append(name)
        elif _COMPACTED.match(name):
            part.compacted[name] = size
        elif name.endswith(".parquet") and not name.startswith((".", "_")):
            part.batch_files[name] = size
    for part in parts.values():
        part.markers.sort()
    return parts


def committed_batches(store: Store) -> set[str]:
    """Ids of the finished bronze batches (those with a manifest)."""
    return {posixpath.basename(rel)[:-5] for rel, _ in store.entries(MANIFEST_DIR)
            if rel.endswith(".json") and not posixpath.basename(rel).startswith((".", "_"))}


def read_marker(store: Store, part: Partition, name: str) -> dict:
    from etl.errors import ValidationError

    rel = part.rel(name)
    try:
        marker = store.read_json(rel)
        return {"files": list(marker["files"]), "replaces": list(marker["replaces"]),
                "created_at": datetime.fromisoformat(marker["created_at"])}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(f"{store.path(rel)}: unreadable compaction marker ({type(exc).__name__}: {exc}); "
                              "delete it (the partition then reads its batch files again) and rerun "
                              "`python -m etl compact`") from None


def current_files(store: Store, part: Partition, committed: set[str]) -> list[str]:
    """The partition's current version (paths relative to the data root), compacted files first."""
    replaced: set[str] = set()
    files: list[str] = []
    if part.newest_marker:
        marker = read_marker(store, part, part.newest_marker)
        replaced = set(marker["replaces"])
        files = [n for n in marker["files"] if n in part.compacted]
    files += [n for n in sorted(part.batch_files) if n[: -len(".parquet")] in committed and n not in replaced]
    return [part.rel(n) for n in files]


def version(part: Partition, committed: set[str]) -> dict:
    """What decides the current version, from a listing alone (no file opened): the newest marker and the
    committed batch ids. Equal versions mean equal current files (a marker is never rewritten)."""
    return {"marker": part.newest_marker or "",
            "batches": [n[: -len(".parquet")] for n in sorted(part.batch_files) if n[: -len(".parquet")] in committed]}


def quarantine_file(store: Store, rel: str, reason: str) -> str:
    """Move an unreadable bronze file out of its partition, with a JSON reason beside it; returns the new path."""
    dest = f"{BAD_FILES_DIR}/{rel[len('bronze/'):]}" if rel.startswith("bronze/") else f"{BAD_FILES_DIR}/{rel}"
    store.copy(rel, dest)
    store.write_json(f"{dest}.reason.json", {"file": rel, "reason": reason,
                                              "quarantined_at": datetime.now(UTC).isoformat()})
    store.delete(rel)
    log.error("bronze file %s is unreadable (%s): moved to %s; %s", store.path(rel), reason, store.path(dest),
              repair(rel))
    return dest


def readable(store: Store, rel: str, sha256: str | None = None) -> str | None:
    """None when the Parquet file reads whole (and matches `sha256`, its recorded digest, when given), else the
    reason it does not."""
    try:
        store.read_parquet(rel, sha256=sha256)
        return None
    except CorruptFileError as exc:
        return exc.reason[:300]
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]


def recorded_digests(store: Store, rels: list[str]) -> dict[str, str]:
    """The SHA-256 each bronze file's commit recorded: a batch file's in its manifest, a compacted file's in the
    marker naming it (files committed before digests were recorded have none)."""
    out: dict[str, str] = {}
    sources: dict[str, list[str]] = {}
    for rel in rels:
        folder, name = posixpath.split(rel)
        m = _COMPACTED.match(name)
        source = f"{folder}/_v{m.group(1)}.json" if m else f"{MANIFEST_DIR}/{name[: -len('.parquet')]}.json"
        sources.setdefault(source, []).append(rel)
    for source, files in sources.items():
        try:
            recorded = store.read_json(source).get("sha256") or {}
        except (OSError, ValueError, AttributeError):
            continue  # a missing or broken manifest/marker is reported by the code that needs it
        for rel in files:
            sha = recorded.get(rel) or recorded.get(posixpath.basename(rel))
            if sha:
                out[rel] = sha
    return out


# ---- compaction ------------------------------------------------------------------------------------------------
@dataclass
class CompactSummary:
    before: str
    partitions_seen: int = 0
    compacted: int = 0            # partitions given a new version
    already_compact: int = 0
    rows_in: int = 0              # rows of the versions read (all versions of each key)
    rows_out: int = 0             # rows written (one per key)
    files_deleted: int = 0        # superseded files removed by retention
    manifests_deleted: int = 0
    output_files_vacuumed: int = 0  # Delta tables: files older than PIPELINE_LAKE_RETENTION_DAYS no version needs
    stream_files_compacted: int = 0  # bronze stream batch files of closed days optimized into one per partition
    bad_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"compact before {self.before}: {self.compacted} partition(s) compacted ({self.rows_in:,} rows -> "
                f"{self.rows_out:,}), {self.already_compact} already compact, {self.files_deleted} superseded "
                f"file(s) and {self.manifests_deleted} manifest(s) removed, {self.stream_files_compacted} stream batch "
                f"file(s) compacted, {self.output_files_vacuumed} Delta file(s) vacuumed, {len(self.bad_files)} unreadable file(s) quarantined, {self.seconds:.2f} s")


def compact(before: date | None = None, settings: Settings | None = None, now: datetime | None = None) -> CompactSummary:
    """Compact every bronze candle partition dated before `before` (default: today, UTC); see the module doc."""
    started = time.perf_counter()
    settings = settings or get_settings()
    store = get_store(settings)
    now = now or datetime.now(UTC)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    before = before or now.date()
    retention = timedelta(hours=settings.compact_retention_hours)
    summary = CompactSummary(before=before.isoformat())
    with exclusive(SILVER_LOCK, settings):
        committed = committed_batches(store)
        parts = scan(store)
        for key in sorted(parts):
            part = parts[key]
            if date.fromisoformat(part.date) >= before:
                continue
            summary.partitions_seen += 1
            _compact_partition(store, part, committed, now, summary)
        deleted = _sweep(store, scan(store), retention, now, summary)
        _prune_manifests(store, deleted, retention, now, summary)
    # the Delta tables: no lock (optimistic concurrency)
    summary.stream_files_compacted, stream_vacuumed = sinks.maintain(store, before)
    summary.output_files_vacuumed = commits.maintain(store) + stream_vacuumed
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info("%s", summary)
    return summary


def fold(store: Store, parts: dict[tuple[str, str], Partition], keys, committed: set[str],
         settings: Settings, now: datetime | None = None) -> CompactSummary:
    """Fold each partition of `keys` whose current version holds two or more files into one file per granularity:
    the compaction above, for partitions still receiving batches (today's gets one every intraday run), so a
    reader opens one file per granularity plus the batches since the last fold, however long the day has run.
    Then the retention sweep and manifest pruning of those partitions. The caller holds SILVER_LOCK (silver's
    incremental build folds what it is about to read); `parts` is updated to the new listing."""
    now = now or datetime.now(UTC)
    summary = CompactSummary(before="")
    for key in sorted(keys):
        part = parts[key]
        batches = sum(n[: -len(".parquet")] in committed for n in part.batch_files)
        if _plainly_compact(part, committed) or (not part.newest_marker and batches < 2) \
                or (part.newest_marker and batches == 0):
            continue  # one file per granularity already, or nothing new since the last fold: nothing to gain
        summary.partitions_seen += 1
        _compact_partition(store, part, committed, now, summary)
        swept = scan(store, part.rel_dir)
        deleted = _sweep(store, swept, timedelta(hours=settings.compact_retention_hours), now, summary)
        _prune_manifests(store, deleted, timedelta(hours=settings.compact_retention_hours), now, summary)
        parts[key] = scan(store, part.rel_dir).get(key) or Partition(part.product_id, part.date, part.rel_dir)
    if summary.compacted:
        log.info("bronze fold: %d partition(s) folded (%d rows -> %d), %d superseded file(s) removed",
                 summary.compacted, summary.rows_in, summary.rows_out, summary.files_deleted)
    return summary


def _compact_partition(store: Store, part: Partition, committed: set[str], now: datetime,
                       summary: CompactSummary) -> None:
    from etl.silver.bars import latest_per_key

    if _plainly_compact(part, committed):  # decided from the listing: no marker read, so a run costs O(changes)
        summary.already_compact += 1
        return
    current = current_files(store, part, committed)
    names = [posixpath.basename(f) for f in current]
    grans = [int(_COMPACTED.match(n).group(2)) for n in names if _COMPACTED.match(n)]
    if names and len(grans) == len(names) and len(set(grans)) == len(grans):
        summary.already_compact += 1
        return
    tables = []
    digests = recorded_digests(store, current)
    for rel in current:
        try:
            tables.append(store.read_parquet(rel, sha256=digests.get(rel)))
        except CorruptFileError as exc:
            summary.bad_files.append(quarantine_file(store, rel, exc.reason))
            part.batch_files.pop(posixpath.basename(rel), None)
    if not tables:
        return
    rows = pa.concat_tables(tables, promote_options="default")
    summary.rows_in += rows.num_rows
    keyed = rows.append_column("product_id", pa.array([part.product_id] * rows.num_rows, pa.string()))
    latest = latest_per_key(keyed).drop_columns(["product_id"]).combine_chunks()
    generation = int(_MARKER.match(part.newest_marker).group(1)) + 1 if part.newest_marker else 1
    files, sha256 = [], {}
    for g in sorted(set(latest["granularity"].to_pylist())):
        piece = latest.filter(pc.equal(latest["granularity"], g)).sort_by("bucket_start")
        name = f"compacted-v{generation:06d}-g{g}.parquet"
        store.write_parquet(part.rel(name), piece.replace_schema_metadata(None))
        files.append(name)
        sha256[name] = store.digest(part.rel(name))
        summary.rows_out += piece.num_rows
    previous = read_marker(store, part, part.newest_marker) if part.newest_marker else {"replaces": []}
    replaces = sorted((set(previous["replaces"]) | set(names)) & (set(part.batch_files) | set(part.compacted)))
    store.write_json(part.rel(f"_v{generation:06d}.json"), {   # the commit point
        "generation": generation, "files": files, "sha256": sha256, "replaces": replaces, "created_at": now.isoformat(),
        "rows_in": rows.num_rows, "rows_out": latest.num_rows})
    summary.compacted += 1


def _plainly_compact(part: Partition, committed: set[str]) -> bool:
    """One marker, no committed batch file, and one compacted file per granularity, all of that marker's
    generation: the current version is those files (nothing else could be), so there is nothing to do."""
    if len(part.markers) != 1 or any(n[: -len(".parquet")] in committed for n in part.batch_files):
        return False
    gen = part.newest_marker[2:8]
    grans = [m.group(2) for n in part.compacted if (m := _COMPACTED.match(n)) and m.group(1) == gen]
    return len(grans) == len(part.compacted) > 0 and len(set(grans)) == len(grans)


def _sweep(store: Store, parts: dict[tuple[str, str], Partition], retention: timedelta, now: datetime,
           summary: CompactSummary) -> set[str]:
    """Delete what the newest marker of each partition made obsolete, once that marker is `retention` old."""
    deleted: set[str] = set()
    for part in parts.values():
        if not part.newest_marker:
            continue
        gen = part.newest_marker[2:8]
        if len(part.markers) == 1 and not part.batch_files and all(f"-v{gen}-" in n for n in part.compacted):
            continue  # nothing but the current compacted files: no need to open the marker
        marker = read_marker(store, part, part.newest_marker)
        if now - marker["created_at"] < retention:
            continue
        keep = set(marker["files"])
        newest = int(_MARKER.match(part.newest_marker).group(1))
        obsolete = [n for n in marker["replaces"] if n in part.batch_files or n in part.compacted]
        obsolete += [n for n in part.compacted if n not in keep and n not in obsolete]  # old or uncommitted
        for name in obsolete:
            store.delete(part.rel(name))
            deleted.add(part.rel(name))
        for name in part.markers:
            if int(_MARKER.match(name).group(1)) < newest:
                store.delete(part.rel(name))
        summary.files_deleted += len(obsolete)
    return deleted


def _prune_manifests(store: Store, deleted: set[str], retention: timedelta, now: datetime,
                     summary: CompactSummary) -> None:
    """Delete the manifests (older than `retention`) of the batches whose files were just deleted, once none of
    their data files is left: only those manifests are opened, so a run costs O(changes), not O(batches kept)."""
    batches = {posixpath.basename(rel)[: -len(".parquet")] for rel in deleted
               if not _COMPACTED.match(posixpath.basename(rel))}
    for batch in sorted(batches):
        rel = f"{MANIFEST_DIR}/{batch}.json"
        if not store.exists(rel):
            continue
        try:
            manifest = store.read_json(rel)
            files = list(manifest.get("files", []))
            created = datetime.fromisoformat(manifest["created_at"])
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("manifest %s unreadable (%s): left in place", store.path(rel), exc)
            continue
        if files and now - created >= retention and not any(store.exists(f) for f in files):
            store.delete(rel)
            summary.manifests_deleted += 1

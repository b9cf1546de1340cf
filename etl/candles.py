"""The bronze candles table `bronze/candles`: a Delta table (etl/lake.py) partitioned by product_id and date.

An ingest batch writes one Parquet file per (product, date) it fetched, `<batch_id>-<attempt>.parquet`, then commits
them all in ONE Delta commit whose metadata holds the batch (`batch_id`, plan, counts) and the SHA-256 of each file
(`sha256`, checked by silver). A file no commit names (a batch killed before its commit) is never read; `vacuum`
deletes it after the retention. Readers take the files of one version of the log: silver (etl/silver), the
watermark (etl.bronze.watermark), `read_candles`, any Delta reader.

`compact` rewrites a partition's files into one file per granularity of the rows readers keep (the latest
ingestion per key), in one commit removing the files it replaces: run for the closed days by `python -m etl
compact`, and by silver for the partitions it is about to read. Like delta-rs' `optimize`, but the files are
written by the Store (page checksums) and their SHA-256 recorded in the commit, like every bronze file.

An unreadable file (it does not read whole, or its bytes differ from the digest its commit recorded) is copied to
`bronze/quarantined_files/` with a JSON reason beside it and removed from the table by one commit (`set_aside`,
`remove`: also for the streamed tables' files, by silver's trade bars and liquidity).
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from etl.integrity import CorruptFileError, repair
from etl.lake import DataFile, Lake
from etl.storage import Store, partition_path

log = logging.getLogger(__name__)

CANDLES_DIR = "bronze/candles"
BAD_FILES_DIR = "bronze/quarantined_files"
KEYS = ["product_id", "date"]
BATCH_ID = "batch_id"   # commit metadata: the batch a commit appended
SHA256 = "sha256"       # commit metadata: {file: SHA-256 of its bytes} (JSON)
TS = pa.timestamp("us", tz="UTC")
CLOCK_SKEW_MS = 600_000  # a commit's timestamp is the committing host's clock
CANDLE_SCHEMA = pa.schema([
    ("bucket_start", TS), ("open", pa.float64()), ("high", pa.float64()), ("low", pa.float64()),
    ("close", pa.float64()), ("volume", pa.float64()), ("granularity", pa.int64()), ("raw", pa.string()),
    ("batch_id", pa.string()), ("ingested_at", TS), ("source", pa.string()),
    ("request_start", TS), ("request_end", TS),
])
TABLE_SCHEMA = pa.schema([*CANDLE_SCHEMA, *(pa.field(k, pa.string()) for k in KEYS)])


def write_file(store: Store, product: str, day: str, name: str, rows: pa.Table) -> DataFile:
    """Write one partition file (not yet committed) and describe it for the commit."""
    inside = posixpath.join(partition_path("", product_id=product, date=day), name)
    path = store.write_parquet(posixpath.join(CANDLES_DIR, inside), rows)
    return DataFile(inside, store.fs.get_file_info(path).size, {"product_id": product, "date": day}, rows.num_rows)


def commit(store: Store, lake: Lake, files: list[DataFile], metadata: dict, remove: list[str] = ()) -> int:
    """Append `files` to the table (removing the files `remove`) in one commit carrying `metadata` and each new
    file's SHA-256; returns the version."""
    sha = {posixpath.join(CANDLES_DIR, f.path): store.digest(posixpath.join(CANDLES_DIR, f.path)) for f in files}
    return lake.commit_files(CANDLES_DIR, files, TABLE_SCHEMA, KEYS, remove=remove, app_id=metadata.get(BATCH_ID),
                             metadata={**metadata, SHA256: json.dumps(sha)})


def files(lake: Lake, version: int | None = None, products: list[str] | None = None,
          keep: Callable[[str], bool] | None = None) -> list[str]:
    """The table's files at `version` (default the latest; paths relative to the data root), of `products` and
    the days `keep` accepts (all by default)."""
    wanted = None if products is None else {p.upper() for p in products}
    return [f for f in lake.files(CANDLES_DIR, version) or []
            if (key := partition_of(f)) and (wanted is None or key[0] in wanted) and (keep is None or keep(key[1]))]


def partition_of(rel: str) -> tuple[str, str] | None:
    """(product_id, date) of a file of the table."""
    parts = dict(p.split("=", 1) for p in rel.split("/")[:-1] if "=" in p)  # the folders' key=value pairs
    return (parts["product_id"], parts["date"]) if KEYS[0] in parts and KEYS[1] in parts else None


def by_partition(rels: list[str]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rel in rels:
        if (key := partition_of(rel)) is not None:
            out[key].append(rel)
    return dict(out)


def digests(commits: list[dict]) -> dict[str, str]:
    """{file: SHA-256} recorded by `commits` (commit infos, `Lake.commits`): the files a reader takes in as new."""
    out: dict[str, str] = {}
    for info in commits:
        out.update(json.loads(info.get(SHA256) or "{}"))
    return out


def batch(lake: Lake, batch_id: str) -> dict | None:
    """The commit metadata of batch `batch_id` when the table holds it (a committed batch), else None. The table's
    state says whether (the commit recorded the batch id as its app transaction, with its time); only then is its
    log entry looked for, newest first, back to that time: O(1) for the batches never committed."""
    t = lake.table(CANDLES_DIR)
    stamp = None if t is None else t.transaction_version(batch_id)
    if stamp is None:
        return None
    for version in range(t.version(), -1, -1):
        info = next(iter(lake.commits(CANDLES_DIR, version - 1, version)), {})
        if info.get(BATCH_ID) == batch_id:
            return info
        if info.get("timestamp", stamp) < stamp - CLOCK_SKEW_MS:
            break
    return {BATCH_ID: batch_id, "version": None}  # committed; its log entry is past the log's retention


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


def set_aside(store: Store, rel: str, reason: str) -> str:
    """Copy an unreadable file to `bronze/quarantined_files/` with its reason beside it (any process may); returns
    where. `remove` then takes it out of the table."""
    dest = _aside(rel)
    store.copy(rel, dest)
    store.write_json(f"{dest}.reason.json", {"file": rel, "reason": reason,
                                              "quarantined_at": datetime.now(UTC).isoformat()})
    log.error("bronze file %s is unreadable (%s): moved to %s; %s", store.path(rel), reason, store.path(dest),
              repair(rel))
    return dest


def set_aside_unreadable(store: Store, rels: list[str]) -> dict[str, str]:
    """Set aside the files of `rels` that do not read whole: {file: where it went}."""
    return {rel: set_aside(store, rel, reason) for rel in rels if (reason := readable(store, rel)) is not None}


def _aside(rel: str) -> str:
    return f"{BAD_FILES_DIR}/{rel[len('bronze/'):]}"


def set_aside_files(store: Store, table: str) -> list[str]:
    """Where the files `set_aside` took from bronze table `table` are (their partitions' paths kept)."""
    return store.list_files(_aside(table), ".parquet")


def remove(store: Store, lake: Lake, rels: list[str], table: str = CANDLES_DIR,
           schema: pa.Schema = TABLE_SCHEMA) -> int | None:
    """Take files set aside out of `table` (its `schema`, partitioned by KEYS) in one commit, then delete them;
    returns the version it made."""
    if not rels:
        return None
    version = lake.commit_files(table, [], schema, KEYS, remove=rels,
                                metadata={"quarantined": json.dumps(rels)})
    for rel in rels:
        store.delete(rel)
    return version


@dataclass
class Compacted:
    partitions: int = 0          # partitions given one file per granularity
    files_removed: int = 0       # files they replaced
    rows_in: int = 0             # rows of those files
    rows_out: int = 0            # rows kept: one per (granularity, bucket_start), the one readers keep
    bad_files: list[str] = field(default_factory=list)  # where the unreadable files went


def compact(store: Store, lake: Lake, keys: list[tuple[str, str]], recorded: dict[str, str],
            metadata: dict | None = None) -> Compacted:
    """Rewrite each (product, date) partition of `keys` holding two or more files into one file per granularity of
    the rows every reader keeps (latest ingestion per key, every column as it was), and commit them all in one Delta commit that
    removes the files they replace (kept for time travel until vacuum). Written by the Store (page checksums) with
    its SHA-256 in the commit, like a batch. Files are read with the digests `recorded` holds; an unreadable one is
    quarantined. A concurrent commit removing the same files (another compaction) fails this one: LakeConflict."""
    from etl.silver.bars import latest_per_key  # the one implementation of the readers' rule

    current, out = by_partition(files(lake)), Compacted()
    written, replaced, bad = [], [], []
    for product, day in keys:
        rels = current.get((product, day), [])
        if compacted(rels):
            continue
        tables = []
        for rel in rels:
            try:
                tables.append(store.read_parquet(rel, sha256=recorded.get(rel)))
            except CorruptFileError as exc:
                out.bad_files.append(set_aside(store, rel, exc.reason))
                bad.append(rel)
            replaced.append(rel)
        if not tables:
            continue
        rows = _conformed(pa.concat_tables(tables, promote_options="default"))
        keyed = rows.append_column("product_id", pa.array([product] * rows.num_rows, pa.string()))
        latest = latest_per_key(keyed).drop_columns(["product_id"]).combine_chunks()
        name = uuid.uuid4().hex
        for g in sorted(set(latest["granularity"].to_pylist())):  # one file per granularity: its own repair
            piece = latest.filter(pc.equal(latest["granularity"], g)).sort_by("bucket_start")
            written.append(write_file(store, product, day, f"compacted-{name}-g{g}.parquet", piece))
        out.partitions += 1
        out.files_removed += len(rels)
        out.rows_in += rows.num_rows
        out.rows_out += latest.num_rows
    if replaced:
        commit(store, lake, written, {"compacted": len(written), **(metadata or {})}, remove=replaced)
        for rel in bad:  # set aside; the others stay for time travel until vacuum
            store.delete(rel)
    return out


def compacted(rels: list[str]) -> bool:
    """One file, or only compacted files of distinct granularities: nothing to gain."""
    names = [posixpath.basename(r) for r in rels]
    grans = [n.rsplit("-", 1)[-1] for n in names if n.startswith("compacted-")]
    return len(rels) < 2 or (len(grans) == len(names) and len(set(grans)) == len(grans))


def _conformed(rows: pa.Table) -> pa.Table:
    """`rows` with exactly CANDLE_SCHEMA's columns (a column older files lack is null)."""
    return pa.table({f.name: rows[f.name] if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
                     for f in CANDLE_SCHEMA}).cast(CANDLE_SCHEMA).combine_chunks()

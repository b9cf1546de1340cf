"""Loading `raw`: new Parquet files and reference data, COPY-upserted in one transaction per run.

Algorithm (one transaction, serialised by an advisory lock):
1. For each raw table, list its Store folder and compare every file's size:mtime with `raw._load_state`;
   reference data is fingerprinted by a content hash instead. Risk and factor outputs count only when a run
   record commits them (etl/commits.py): files of a run that never committed, or superseded (kept in the Delta
   table for time travel), are not loaded.
2. Read only the new or changed files, keep the declared columns (partition values from the path fill in columns
   a file does not carry, e.g. silver's product_id), cast them to the declared types. Rows of a changed file are
   deleted first (by `source_file`), so a rewritten partition replaces its rows.
3. `copy_upsert`, fed the files as they are read (binary COPY format, encoded by a producer thread while the
   server ingests): one COPY straight into the keyed table (new files of the
   append-mostly tables hold new keys); if Postgres refuses it for a key already there or repeated, that COPY is
   rolled back to a savepoint and the rows are upserted through a temporary table (last row per key wins; a row
   never replaces one from a later partition: the latest as-of run wins in any load order). Keys that rewritten
   or gone output files held and no new file has come back from the other committed files (`_restore`).
   Record the files in `raw._load_state`.
4. Commit once at the end: a failure anywhere rolls back every table and the load state, so the previous rows
   stay and the next run retries the same files. A rerun with no new files changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import posixpath
import queue
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from etl import commits, db
from etl.errors import PipelineError, ValidationError, some
from etl.lake import Lake
from etl.settings import Settings
from etl.silver.incremental import file_digests
from etl.storage import Store
from etl.warehouse import copy_binary
from etl.warehouse.schema import ARROW_TYPES, LOAD_STATE, SOURCE_FILE, TABLES, RawTable

if TYPE_CHECKING:
    from etl.reference_set import Reference

log = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 50_000       # rows encoded at a time: the server ingests one chunk while the next is made
COPY_READ_AHEAD = 4            # chunks the producer may have ready (~10 MB each at most)
COPY_READ_BYTES = 1 << 20      # psycopg2 asks the stream for this much at a time (its default is 8 KiB)
LOAD_LOCK_ID = 0x7761726568    # pg_advisory_xact_lock key: one load at a time per database
WAREHOUSE_LOCK_ID = 0x77617265  # session advisory lock: load + dbt build + publish, one at a time per database


class WarehouseError(PipelineError):
    """The warehouse load or dbt run failed; the message names the table/file/node and what to do."""


@dataclass
class LoadSummary:
    rows: dict[str, int] = field(default_factory=dict)    # rows upserted per raw table (0 = nothing new)
    files: dict[str, int] = field(default_factory=dict)   # new or changed files per raw table
    dbt: str = ""  # set once dbt has run (or was skipped): the raw load's own log line says nothing about dbt

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        loaded = ", ".join(f"{t}={n}" for t, n in self.rows.items() if n) or "nothing new"
        dbt = f"; dbt {self.dbt}" if self.dbt else ""
        return f"warehouse load: {self.total_rows} rows from {sum(self.files.values())} files ({loaded}){dbt}"


# ---- one load or build per warehouse ---------------------------------------------------------------------------
_lock_depth = 0  # this process already holds the lock (load() calls the dbt build inside its own hold)


@contextmanager
def warehouse_lock(settings: Settings) -> Iterator[None]:
    """Hold the warehouse lock (a Postgres session advisory lock on a connection of its own) for the block.

    One load + dbt build per warehouse at a time: another holder is waited for up to
    `settings.warehouse_lock_timeout_s`, then this fails naming it. The server releases the lock when the
    holder's session ends, so a killed process never leaves it behind. Re-entrant within one process.
    """
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    url = db.database_url(settings)
    conn = db.open_connection(url, application_name=f"etl warehouse lock pid {os.getpid()}")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            if not db.wait_for_advisory_lock(cur, WAREHOUSE_LOCK_ID, settings.warehouse_lock_timeout_s):
                raise WarehouseError(
                    f"another load or dbt build holds the warehouse lock on {db.redact(url)} ({_holder(cur)}); "
                    f"waited {settings.warehouse_lock_timeout_s:g}s (PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S). Let it "
                    "finish, then rerun `python -m etl load`")
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("select pg_advisory_unlock(%s)", (WAREHOUSE_LOCK_ID,))
    finally:
        conn.close()


def _holder(cur) -> str:
    cur.execute("select a.pid, a.application_name, a.backend_start from pg_locks l join pg_stat_activity a "
                "using (pid) where l.locktype = 'advisory' and l.objid = %s and l.granted limit 1",
                (WAREHOUSE_LOCK_ID & 0xFFFFFFFF,))
    row = cur.fetchone()
    return f"server pid {row[0]}, {row[1] or 'no application name'}, since {row[2]:%H:%M:%S}" if row else "holder gone"


# ---- the COPY upsert primitive --------------------------------------------------------------------------------
def _as_arrow(data: pd.DataFrame | pa.Table) -> pa.Table:
    return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)


def last_per_key(table: pa.Table, key: list[str]) -> pa.Table:
    """Keep the last row of each key (later files/rows win), vectorised."""
    if table.num_rows == 0:
        return table
    idx = pa.array(np.arange(table.num_rows, dtype=np.int64))
    last = table.select(key).append_column("__row", idx).group_by(key, use_threads=False).aggregate(
        [("__row", "max")])
    if last.num_rows == table.num_rows:
        return table
    keep = last["__row_max"].combine_chunks()
    return table.take(pc.take(keep, pc.sort_indices(keep)))  # original row order


class _CopyStream:
    """A file-like that psycopg2's COPY reads: binary COPY (etl/warehouse/copy_binary.py) of the tables of
    `parts`, cast to the target's column types and encoded by a producer thread while the server ingests the rows
    already sent (reading Parquet and encoding release the GIL, and so does psycopg2's send).

    `columns` are the first table's (read at once); `consumed` keeps the tables taken from `parts`, for a retry
    through the staged upsert; `error` keeps the producer's own exception, which psycopg2 reports only as
    QueryCanceled. `close()` stops the producer; every exit from a COPY calls it."""

    def __init__(self, parts: Iterable[pa.Table], types: dict[str, pa.DataType | str]):
        self._parts = iter(parts)
        first = next(self._parts, None)
        self.columns = first.column_names if first is not None else []
        self._parts = itertools.chain([first] if first is not None else [], self._parts)
        if missing := [c for c in self.columns if c not in types]:
            raise WarehouseError(f"columns {missing} are not in the target table (it has {sorted(types)})")
        if unsent := {c: types[c] for c in self.columns if isinstance(types[c], str)}:
            raise WarehouseError(f"columns {unsent} have types the loader does not send (it sends "
                                 f"{sorted(ARROW_TYPES)}): declare them with one of those in tables.yml")
        self._schema = pa.schema([(c, types[c]) for c in self.columns])
        self.consumed: list[pa.Table] = []
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=COPY_READ_AHEAD)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> None:
        try:
            self._put(copy_binary.HEADER)
            batch: list[pa.Table] = []
            for part in self._parts:
                self.consumed.append(part)
                batch.append(part)
                if sum(p.num_rows for p in batch) >= COPY_CHUNK_ROWS:
                    self._send(batch)
                    batch = []
            self._send(batch)
            self._put(copy_binary.TRAILER)
            self._put(b"")
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the COPY's thread, which raises it
            self.error = exc
            with contextlib.suppress(_Stopped):
                self._put(None)

    def _send(self, batch: list[pa.Table]) -> None:
        table = _cast(pa.concat_tables(batch), self._schema) if batch else None
        for lo in range(0, table.num_rows if table else 0, COPY_CHUNK_ROWS):  # int32 offsets: bounded chunks
            self._put(copy_binary.encode(table.slice(lo, COPY_CHUNK_ROWS)))

    def _put(self, item: bytes | None) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return
        raise _Stopped

    def read(self, size: int = -1) -> bytes:
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="copy-producer", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item is None:
            raise WarehouseError("the COPY's producer failed")  # psycopg2 cancels the COPY; _copy raises its error
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def rest(self) -> list[pa.Table]:
        """Every table of `parts`: the ones the producer took, then the ones it did not get to."""
        self.close()
        return self.consumed + list(self._parts)


class _Stopped(Exception):
    """The COPY ended before the producer did (refused, or failed): the producer stops."""


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` in the target's column types (binary COPY does not convert); timestamps may lose sub-microseconds."""
    if table.schema.remove_metadata().equals(schema):
        return table
    arrays = []
    for f in schema:
        arr = table[f.name]
        try:
            arrays.append(arr if arr.type == f.type else pc.cast(arr, f.type, safe=not pa.types.is_timestamp(f.type)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"column {f.name!r} ({arr.type}) cannot be sent as {f.type}: {exc}") from exc
    return pa.table(arrays, schema=schema)


def _copy(cur, table: str, stream: _CopyStream) -> int:
    try:
        cur.copy_expert(f"copy {table} ({', '.join(stream.columns)}) from stdin with (format binary)", stream,
                        size=COPY_READ_BYTES)
    except psycopg2.errors.QueryCanceled:
        if stream.error is not None:  # the producer failed (e.g. an unreadable file): its error, not psycopg2's
            raise stream.error from None
        raise
    finally:
        stream.close()
    return cur.rowcount


def _column_types(cur, table: str) -> dict[str, pa.DataType | str]:
    """The Arrow type of each column of `table`, from the catalog (schema.ARROW_TYPES; the Postgres type's name
    where it has none)."""
    cur.execute("select attname, format_type(atttypid, atttypmod) from pg_attribute "
                "where attrelid = %s::regclass and attnum > 0 and not attisdropped", (table,))
    names = {"timestamp with time zone": "timestamptz"}
    return {name: ARROW_TYPES.get(names.get(t, t), t) for name, t in cur.fetchall()}


def _has_unique_key(cur, table: str, key: list[str]) -> bool:
    """Whether `table` has a unique index on exactly the `key` columns (every raw table: its primary key)."""
    cur.execute("select 1 from pg_index i where i.indrelid = %s::regclass and i.indisunique and i.indpred is null "
                "and (select array_agg(a.attname::text order by a.attname) from pg_attribute a "
                "where a.attrelid = i.indrelid and a.attnum = any(i.indkey)) = %s",
                (table, sorted(key)))
    return cur.fetchone() is not None


def copy_upsert(conn, table: str, data: pd.DataFrame | pa.Table | Iterable[pa.Table], key: list[str],
                ranked: bool = False) -> int:
    """Upsert `data` into `table` by `key` inside the caller's transaction; returns the rows written.

    `data` is a DataFrame, an Arrow table, or an iterable of Arrow tables of the same columns, consumed as the
    COPY goes (the loader passes a generator reading Store files: they are read while the server ingests).
    Duplicate keys keep the last row. Nothing commits here: the caller owns the transaction.

    When `table` has a unique index on `key` (every raw table: its primary key), the rows are first COPYed
    straight into it under a savepoint: new files of the append-mostly tables (bars, daily outputs) hold new keys,
    so that one keyed COPY is the whole load. A key already in the table, or twice in the batch, makes Postgres
    refuse that COPY: the savepoint is rolled back and the rows take the staged upsert (`_staged_upsert`).

    `ranked` (rows carrying `source_file`): a row replaces the row of its key only if its file's folder (the
    partition, e.g. run_as_of_date=D) sorts at or after that row's: the latest as-of run's row wins whatever order
    the files are loaded in (a rerun of an earlier day after a later one, as a clean load of the same files).
    """
    key = list(key)
    with conn.cursor() as cur:
        types = _column_types(cur, table)
        stream = _CopyStream([_as_arrow(data)] if isinstance(data, pa.Table | pd.DataFrame) else data, types)
        if not stream.columns:
            return 0
        if _has_unique_key(cur, table, key):
            cur.execute("savepoint copy_upsert")
            try:
                written = _copy(cur, table, stream)
                cur.execute("release savepoint copy_upsert")
                return written
            except psycopg2.errors.UniqueViolation:
                cur.execute("rollback to savepoint copy_upsert")
        return _staged_upsert(cur, table, last_per_key(pa.concat_tables(stream.rest()), key), key, types, ranked)


def _folder(alias: str) -> str:
    """SQL: the folder of the row's source file (its partition)."""
    return f"regexp_replace({alias}.{SOURCE_FILE}, '/[^/]*$', '')"


def _staged_upsert(cur, table: str, data: pa.Table, key: list[str], types: dict[str, pa.DataType],
                   ranked: bool = False) -> int:
    """COPY into a temporary copy of the table, delete the target rows whose key is in the batch, insert the batch
    (`data` holds each key once); `ranked`: only over rows of a file folder that sorts at or before the batch row's
    (copy_upsert)."""
    if data.num_rows == 0:
        return 0
    stage = f"_stage_{uuid.uuid4().hex[:12]}"
    cur.execute(f"create temp table {stage} (like {table} including defaults) on commit drop")
    _copy(cur, stage, _CopyStream([data], types))
    cur.execute(f"analyze {stage}")
    match = " and ".join(f"t.{k} = s.{k}" for k in key)
    outranked = f" and {_folder('t')} <= {_folder('s')}" if ranked else ""
    cur.execute(f"delete from {table} t using {stage} s where {match}{outranked}")
    cols = ", ".join(data.column_names)
    kept = f" where not exists (select 1 from {table} t where {match})" if ranked else ""
    cur.execute(f"insert into {table} ({cols}) select {', '.join(f's.{c}' for c in data.column_names)} "
                f"from {stage} s{kept}")
    written = cur.rowcount
    cur.execute(f"drop table {stage}")
    return written


def replace_all(conn, table: str, df: pd.DataFrame | pa.Table, key: list[str]) -> int:
    """Replace the whole table's contents (reference data) inside the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute(f"delete from {table}")
    return copy_upsert(conn, table, df, key)


def keep_removed(conn, table: str, data: pa.Table, key: list[str], flag: str) -> int:
    """Reference data whose removed rows the facts still reference (a retired book): upsert the current rows with
    `flag` true; a row whose key is no longer in the files stays, its attributes as last loaded, `flag` false."""
    with conn.cursor() as cur:
        cur.execute(f"update {table} set {flag} = false")
    column = data.column_names.index(flag)
    return copy_upsert(conn, table, data.set_column(column, flag, pa.array([True] * data.num_rows, pa.bool_())), key)


# ---- reading Store files -----------------------------------------------------------------------------------
def _partition_values(rel_path: str) -> dict[str, str]:
    """The hive path's values; `run_<key>` (the run's day of an output table, etl/commits.py) also as `<key>`, for
    rows that do not carry their own."""
    values = dict(p.split("=", 1) for p in posixpath.dirname(rel_path).split("/") if "=" in p)
    return {**{k.removeprefix("run_"): v for k, v in values.items()}, **values}


def conform(table: pa.Table, spec: RawTable, where: str, extra: dict[str, str] | None = None) -> pa.Table:
    """Select the declared columns of `spec`, filled from `extra` (partition values) when absent, cast to type."""
    extra = extra or {}
    present = set(table.column_names)
    missing = [c.name for c in spec.columns if c.required and c.name not in present and c.name not in extra]
    if missing:
        raise ValidationError(
            f"{where}: missing column(s) {missing} for {spec.qualified}; expected {spec.column_names} "
            f"(CONTRACT.md gold columns). Fix the producer and rerun it, then rerun `python -m etl load`.")
    if table.num_rows == 0:
        # an empty output carries no values to check, and pandas writes the columns of an empty frame as float64
        # (e.g. anomalies on a quiet day): load it as an empty table of the declared types
        return pa.table({c.name: pa.array([], c.arrow_type) for c in spec.columns})
    arrays = []
    for col in spec.columns:
        if col.name in present:
            arr = table[col.name]
        elif col.name in extra:
            arr = pa.array([extra[col.name]] * table.num_rows, pa.string())
        else:
            arr = pa.nulls(table.num_rows, col.arrow_type)
        try:
            if arr.type != col.arrow_type:
                arr = pc.cast(arr, col.arrow_type, safe=not pa.types.is_timestamp(col.arrow_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"{where}: column {col.name!r} ({arr.type}) cannot be read as {col.pg_type} "
                                  f"for {spec.qualified}: {exc}. Fix the producer's output.") from exc
        if pa.types.is_floating(col.arrow_type) and pc.any(pc.is_nan(arr)).as_py():
            arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, col.arrow_type), arr)  # NaN = unknown: NULL in SQL
        arrays.append(arr)
    return pa.table(arrays, names=spec.column_names)


def _fingerprints(store: Store, rel_dir: str) -> dict[str, str]:
    """size:mtime of the folder's Parquet files: a silver Delta table's from its log (its latest version), the
    outputs' and other folders' from a listing (the caller keeps the outputs a run record commits)."""
    logged = None if rel_dir.startswith(f"{commits.OUTPUTS}/") else Lake.of(store).files(rel_dir)
    files = store.list_files(rel_dir, ".parquet") if logged is None else logged
    infos = store.fs.get_file_info([store.path(f) for f in files]) if files else []
    return {rel: f"{info.size}:{info.mtime_ns}" for rel, info in zip(files, infos, strict=True)}


def _read_file(store: Store, spec: RawTable, rel: str, digests: dict[str, str | None]) -> pa.Table:
    """One file, checked against the content hash its commit recorded (`digests`: run records; a silver file's
    name)."""
    try:  # one core decodes; the other the server's
        raw = store.read_parquet(rel, use_threads=False, sha256=digests.get(rel) or file_digests([rel]).get(rel))
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValidationError(f"{store.path(rel)}: unreadable Parquet for {spec.qualified}: {exc}") from exc
    table = conform(raw, spec, store.path(rel), _partition_values(rel))
    return table.append_column(SOURCE_FILE, pa.array([rel] * table.num_rows, pa.string()))


# ---- reference data ----------------------------------------------------------------------------------------
REFERENCE_TABLES = ("exchanges", "instruments", "portfolios", "positions", "firm_limits")  # Reference frames in raw


def _whole_table(name: str, store: Store, reference: Reference) -> pa.Table | pd.DataFrame | None:
    """The rows of a raw table loaded whole (no source_dir): a reference frame, or the inputs the run records name
    (etl.commits.run_inputs); None for a table that has none."""
    if name in REFERENCE_TABLES:
        return getattr(reference, name)
    return commits.run_inputs(store) if name == "run_inputs" else None


def _content_hash(table: pa.Table) -> str:
    buf = pa.BufferOutputStream()
    pacsv.write_csv(table, buf)
    return hashlib.sha256(buf.getvalue().to_pybytes()).hexdigest()[:32]


# ---- one load run ------------------------------------------------------------------------------------------
def _loaded_state(conn) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(f"select path, fingerprint from {LOAD_STATE}")
        return dict(cur.fetchall())


def _record_state(conn, spec: RawTable, entries: dict[str, str], row_counts: list[int]) -> None:
    if not entries:
        return
    state = pa.table({
        "path": list(entries), "table_name": [spec.name] * len(entries), "fingerprint": list(entries.values()),
        "row_count": pa.array(row_counts, pa.int64()),
    })
    copy_upsert(conn, LOAD_STATE, state, ["path"])


def _repeats_keys(spec: RawTable) -> bool:
    """Whether files of several partitions may hold one key: the risk outputs' history tables (each as-of run's
    partition repeats the days of its window), so a row loaded may have replaced another committed file's."""
    return spec.source_dir is not None and spec.source_dir.startswith(f"{commits.OUTPUTS}/")


def _forget_files(conn, spec: RawTable, rewritten: list[str], gone: list[str]) -> None:
    """Delete the rows loaded from files that changed or disappeared, so raw mirrors the files (a rewritten
    partition with fewer rows, or a day silver removed, leaves no stale rows behind); gone files leave the state.
    The keys of those rows are kept (temp table `_forgotten`) for `_restore`."""
    if not rewritten and not gone:
        return
    with conn.cursor() as cur:
        if _repeats_keys(spec):
            cur.execute(f"create temp table _forgotten on commit drop as select {', '.join(spec.key)} "
                        f"from {spec.qualified} where {SOURCE_FILE} = any(%s)", (rewritten + gone,))
        cur.execute(f"delete from {spec.qualified} where {SOURCE_FILE} = any(%s)", (rewritten + gone,))
        if gone:
            cur.execute(f"delete from {LOAD_STATE} where path = any(%s)", (gone,))
            log.info("raw.%s: %d file(s) no longer in the Store, their rows removed", spec.name, len(gone))


def _restore(conn, store: Store, spec: RawTable, loaded: list[str], digests: dict[str, str | None]) -> int:
    """After `_forget_files` and the load of the new files: the keys the forgotten rows held that no file loaded
    now holds again come back from the other committed files that hold them (`loaded`: the files loaded before,
    unchanged), ranked as copy_upsert does: raw equals a clean load of the same files. Reads those files only
    when a key is missing (a rerun that dropped rows another run's partition also has)."""
    with conn.cursor() as cur:
        cur.execute("select to_regclass('pg_temp._forgotten')")
        if cur.fetchone()[0] is None:
            return 0
        keys = ", ".join(spec.key)
        cur.execute(f"select {keys} from _forgotten except select {keys} from {spec.qualified}")
        missing = cur.fetchall()
        cur.execute("drop table _forgotten")
    if not missing:
        return 0

    def rows() -> Iterator[pa.Table]:
        for rel in loaded:
            part = _read_file(store, spec, rel, digests)
            wanted = pa.table({k: pa.array([m[i] for m in missing], part.schema.field(k).type)
                               for i, k in enumerate(spec.key)})
            yield part.join(wanted, list(spec.key), join_type="left semi").select(part.column_names)

    restored = copy_upsert(conn, spec.qualified, rows(), list(spec.key), ranked=True)
    log.info("%s: %d row(s) of %d key(s) no rerun holds any more restored from the other committed files",
             spec.qualified, restored, len(missing))
    return restored


def _committed_outputs(store: Store) -> dict[str, str | None]:
    """The output files some run record commits, with their content hashes; a record naming a file that is gone
    fails the load."""
    committed = commits.committed_files(store)
    if committed:
        infos = store.fs.get_file_info([store.path(p) for p in sorted(committed)])
        if gone := [i.path for i in infos if i.type == pafs.FileType.NotFound]:
            raise ValidationError(f"{len(gone)} committed output file(s) are missing, e.g. {gone[0]}: rerun the "
                                  "stage that committed it (python -m etl risk --as-of D, or python -m etl factors)")
    return committed


def load_raw(conn, store: Store, settings: Settings, only: set[str] | None = None,
             reference: Reference | None = None) -> LoadSummary:
    """Load every raw table's new data (or only the tables named in `only`) inside `conn`'s transaction (the
    caller commits). `reference`: the run's reference data (etl.reference_set; default: the files of `settings`)."""
    from etl.reference_set import Reference  # etl.warehouse imports this module: a top-level import would cycle

    with conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(%s)", (LOAD_LOCK_ID,))
    committed = _committed_outputs(store)  # read once: one consistent view of what is committed
    digests = committed
    seen = _loaded_state(conn)
    summary = LoadSummary()
    reference = Reference.of(reference, settings)
    for spec in TABLES:
        if only is not None and spec.name not in only:
            continue
        try:
            _load_table(conn, store, settings, spec, seen, reference, summary, committed, digests)
        except psycopg2.Error as exc:  # e.g. recording the load state; the rows' own errors name their files
            raise _rejected(conn, spec, [f"the files of {spec.source_dir or 'reference data'}"], exc) from exc
    if any(summary.files.get(t) for t in ("portfolio_valuation", "positions_valued", "risk_metrics")):
        _check_runs_agree(conn)
    return summary


def _check_runs_agree(conn) -> None:
    """Refuse a load after which a day's valuation (a history table: the latest as-of run holding the day wins) and
    its positions (only that day's own run writes them) come from runs that disagree: a rerun of an earlier day on
    corrected inputs (a silver correction, a backdated positions snapshot) while a later day's run, computed
    before, still holds the day. Gold would show a valuation that is not the sum of its positions (dbt's
    reconciles_to_sum refuses the build, naming only the test): the error names the day and the runs to rerun."""
    with conn.cursor() as cur:
        cur.execute(f"""
            with positions as (
                select portfolio_id, as_of_date, sum(market_value) as mv, sum(abs(market_value)) as gross,
                       min({SOURCE_FILE}) as {SOURCE_FILE}, bool_or(loaded_at = now()) as new
                from raw.positions_valued group by portfolio_id, as_of_date
            ),
            own as (  -- what each day's own run holds: its positions, none for a book it valued empty (risk row)
                select portfolio_id, as_of_date, coalesce(p.mv, 0) as mv, coalesce(p.gross, 0) as gross,
                       coalesce(p.{SOURCE_FILE}, r.{SOURCE_FILE}) as {SOURCE_FILE},
                       coalesce(p.new, false) or coalesce(r.loaded_at = now(), false) as new
                from positions p full join raw.risk_metrics r using (portfolio_id, as_of_date)
            )
            select v.portfolio_id, v.as_of_date, v.market_value, o.mv, {_folder('v')}, {_folder('o')}
            from raw.portfolio_valuation v join own o using (portfolio_id, as_of_date)
            where (v.loaded_at = now() or o.new)
              and (abs(v.market_value - o.mv) > 1e-6 * greatest(1, abs(v.market_value), abs(o.mv))
                   or abs(v.gross_exposure - o.gross) > 1e-6 * greatest(1, abs(v.gross_exposure), abs(o.gross)))
            order by v.as_of_date, v.portfolio_id""")
        rows = cur.fetchall()
    if not rows:
        return
    pid, day, value, positions, v_run, p_run = rows[0]
    run_days = [f.rsplit("=", 1)[-1] for r in rows for f in (r[4], r[5])]
    first, last = min(r[1] for r in rows).isoformat(), max(run_days)
    raise ValidationError(
        f"risk runs disagree on {len(rows)} portfolio-day(s): {some([f'{r[0]} {r[1]}' for r in rows])}. E.g. {pid} "
        f"on {day}: {v_run} values the book at {value:.10g}, its positions in {p_run} sum to {positions:.10g}. A "
        "day was rerun on changed inputs (a silver correction, a backdated positions snapshot) and the other run "
        f"predates the change. Rerun `python -m etl risk --as-of D` for every day D from {first} to {last}, in "
        "order, then `python -m etl load`. Nothing was loaded: raw and gold are as before.")


def _rejected(conn, spec: RawTable, sources: list[str], exc: psycopg2.Error) -> WarehouseError:
    """The error for a failed statement: the files' fault when Postgres refused their rows, not when the server or
    the connection went away (then the data is fine and a rerun is the fix)."""
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
    if db.lost_connection(exc, conn):
        return WarehouseError(
            f"{spec.qualified}: the warehouse connection was lost during the load ({reason}); nothing was "
            "committed, the previous rows are kept. Check that the server is up (`python -m etl db status`), then "
            "rerun `python -m etl load`")
    shown = some(sources)
    return WarehouseError(
        f"{spec.qualified}: Postgres rejected the new rows from {shown} ({reason}); the whole load was rolled back "
        "and the previous rows are kept. Fix the producer's files (see raw._load_state for what is loaded) and "
        "rerun the load.")


def _load_table(conn, store: Store, settings: Settings, spec: RawTable, seen: dict[str, str],
                reference: Reference, summary: LoadSummary,
                committed: dict[str, str | None], digests: dict[str, str | None]) -> None:
    if spec.source_dir is None:
        if (whole := _whole_table(spec.name, store, reference)) is None:
            return
        data = conform(_as_arrow(whole), spec, f"reference data {spec.name}")
        new = {f"reference:{spec.name}": _content_hash(data)}
        if seen.get(f"reference:{spec.name}") == new[f"reference:{spec.name}"]:
            new = {}
        try:
            if not new:
                rows = 0
            elif spec.keep_removed:
                rows = keep_removed(conn, spec.qualified, data, list(spec.key), spec.keep_removed)
            else:
                rows = replace_all(conn, spec.qualified, data, list(spec.key))
        except psycopg2.Error as exc:
            raise _rejected(conn, spec, [f"reference data {spec.name}"], exc) from exc
        counts = [data.num_rows]
    else:
        current = _fingerprints(store, spec.source_dir)
        if spec.source_dir.startswith(f"{commits.OUTPUTS}/"):
            current = {p: fp for p, fp in current.items() if p in committed}
        new = {path: fp for path, fp in sorted(current.items()) if seen.get(path) != fp}
        # files deleted since the last load (only when the folder is there: a wrong data dir must not empty raw)
        gone = [p for p in seen if p.startswith(f"{spec.source_dir}/") and p not in current] \
            if store.exists(spec.source_dir) else []
        counts: list[int] = []

        def read_new() -> Iterator[pa.Table]:  # read as the COPY goes: the server ingests while the next file is read
            for rel in new:
                part = _read_file(store, spec, rel, digests)
                counts.append(part.num_rows)
                yield part

        try:
            _forget_files(conn, spec, [p for p in new if p in seen], gone)
            rows = copy_upsert(conn, spec.qualified, read_new(), list(spec.key), ranked=True) if new else 0
            rows += _restore(conn, store, spec, sorted(p for p in current if p in seen and p not in new), digests)
        except psycopg2.Error as exc:
            raise _rejected(conn, spec, [store.path(p) for p in new], exc) from exc
    _record_state(conn, spec, new, counts)
    summary.rows[spec.name] = rows
    summary.files[spec.name] = len(new)
    if new:
        log.info("raw.%s: %d rows from %d new file(s)", spec.name, rows, len(new))


# ---- the light intraday path -------------------------------------------------------------------------------
# The run log rides along: every task row of every DAG run (the end of day's own load, dbt, report and alert tasks,
# the previous intraday run) reaches gold.fact_pipeline_runs within one intraday interval.
INTRADAY_RAW = ("exchanges", "instruments", "portfolios", "positions", "intraday_risk", "intraday_limit_breaches",
                "pipeline_runs")
INTRADAY_DBT_SELECT = "+fact_intraday_risk +fact_intraday_limit_breaches +dim_portfolio +fact_pipeline_runs"


def load_intraday(settings: Settings | None = None, run_dbt: bool = True,
                  reference: Reference | None = None) -> LoadSummary:
    """Every 5 minutes: only the reference data, the intraday outputs and the run log into raw (one transaction,
    as `load`), then `dbt build` of only their models and tests (INTRADAY_DBT_SELECT), not the whole warehouse.
    `reference`: the run's reference data (default: the files of `settings`)."""
    from etl import db
    from etl.settings import get_settings
    from etl.storage import get_store
    from etl.warehouse import run_dbt as dbt
    from etl.warehouse import setup

    settings = settings or get_settings()
    with warehouse_lock(settings):  # as `load`: never commit raw under a build in progress (it reads raw as it goes)
        setup(settings)
        with db.connect(settings) as conn:
            summary = load_raw(conn, get_store(settings), settings, only=set(INTRADAY_RAW), reference=reference)
        log.info("intraday %s", summary)
        if run_dbt:
            # cautious: only the tests whose every parent is selected (not the other facts' tests on dim_portfolio)
            dbt("build", settings=settings, select=INTRADAY_DBT_SELECT,
                extra_args=["--indirect-selection", "cautious"])
            summary.dbt = "build (intraday models) ok"
    return summary

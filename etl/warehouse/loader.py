"""Loading `raw`: new Parquet files and reference data, COPY-upserted in one transaction per run.

Algorithm (one transaction, serialised by an advisory lock):
1. For each raw table, list its Store folder and compare every file's size:mtime with `raw._load_state`;
   reference data is fingerprinted by a content hash instead. Risk and factor outputs count only when a commit
   manifest names them (etl/commits.py): files of a run that never committed are not loaded.
2. Read only the new or changed files, keep the declared columns (partition values from the path fill in columns
   a file does not carry, e.g. silver's product_id), cast them to the declared types, and keep the last row per key.
3. `copy_upsert`: COPY into a temporary table, delete the target rows with those keys, insert; record the files
   in `raw._load_state`.
4. Commit once at the end: a failure anywhere rolls back every table and the load state, so the previous rows
   stay and the next run retries the same files. A rerun with no new files changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from etl import commits, db
from etl.errors import PipelineError, ValidationError
from etl.settings import Settings
from etl.storage import Store
from etl.warehouse.schema import LOAD_STATE, SOURCE_FILE, TABLES, RawTable

log = logging.getLogger(__name__)

COPY_CHUNK_ROWS = 500_000      # CSV is serialised and streamed in chunks to bound memory
LOAD_LOCK_ID = 0x7761726568    # pg_advisory_xact_lock key: one load at a time per database
WAREHOUSE_LOCK_ID = 0x77617265  # session advisory lock: load + dbt build + publish, one at a time per database


class WarehouseError(PipelineError):
    """The warehouse load or dbt run failed; the message names the table/file/node and what to do."""


@dataclass
class LoadSummary:
    rows: dict[str, int] = field(default_factory=dict)    # rows upserted per raw table (0 = nothing new)
    files: dict[str, int] = field(default_factory=dict)   # new or changed files per raw table
    dbt: str = "not run"

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        loaded = ", ".join(f"{t}={n}" for t, n in self.rows.items() if n) or "nothing new"
        return f"warehouse load: {self.total_rows} rows from {sum(self.files.values())} files ({loaded}); dbt {self.dbt}"


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
        deadline = time.monotonic() + settings.warehouse_lock_timeout_s
        with conn.cursor() as cur:
            while True:
                cur.execute("select pg_try_advisory_lock(%s)", (WAREHOUSE_LOCK_ID,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() >= deadline:
                    raise WarehouseError(
                        f"another load or dbt build holds the warehouse lock on {db.redact(url)} ({_holder(cur)}); "
                        f"waited {settings.warehouse_lock_timeout_s:g}s (PIPELINE_WAREHOUSE_LOCK_TIMEOUT_S). Let it "
                        "finish, then rerun `python -m etl load`")
                time.sleep(0.2)
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


def _csv_chunks(table: pa.Table):
    options = pacsv.WriteOptions(include_header=False)
    for start in range(0, max(table.num_rows, 1), COPY_CHUNK_ROWS):
        buf = pa.BufferOutputStream()
        pacsv.write_csv(table.slice(start, COPY_CHUNK_ROWS), buf, options)
        yield pa.BufferReader(buf.getvalue())


def copy_upsert(conn, table: str, df: pd.DataFrame | pa.Table, key: list[str]) -> int:
    """Upsert `df` into `table` by `key` inside the caller's transaction; returns the rows written.

    COPY (CSV) into a temporary copy of the table, delete the target rows whose key is in the batch, insert the
    batch. Duplicate keys in the batch keep the last row. Nothing commits here: the caller owns the transaction.
    """
    data = last_per_key(_as_arrow(df), list(key))
    if data.num_rows == 0:
        return 0
    stage = f"_stage_{uuid.uuid4().hex[:12]}"
    with conn.cursor() as cur:
        cur.execute(f"create temp table {stage} (like {table} including defaults) on commit drop")
        # Arrow writes tz-aware timestamps to CSV ~40x slower than naive ones: send UTC wall times to a
        # `timestamp` stage column and convert with `at time zone 'UTC'` on insert (no session time zone involved).
        utc_cols = _timestamptz_columns(cur, table, data)
        for name in utc_cols:
            data = data.set_column(data.column_names.index(name), name, pc.cast(data[name], pa.timestamp("us")))
            cur.execute(f"alter table {stage} alter column {name} type timestamp")
        cols = ", ".join(data.column_names)
        for chunk in _csv_chunks(data):
            cur.copy_expert(f"copy {stage} ({cols}) from stdin with (format csv)", chunk)
        cur.execute(f"analyze {stage}")

        def staged(col: str, alias: str = "") -> str:
            return f"{alias}{col} at time zone 'UTC'" if col in utc_cols else f"{alias}{col}"

        match = " and ".join(f"t.{k} = {staged(k, 's.')}" for k in key)
        cur.execute(f"delete from {table} t using {stage} s where {match}")
        values = ", ".join(staged(c) for c in data.column_names)
        cur.execute(f"insert into {table} ({cols}) select {values} from {stage}")
        written = cur.rowcount
        cur.execute(f"drop table {stage}")
    return written


def _timestamptz_columns(cur, table: str, data: pa.Table) -> list[str]:
    """Columns of `data` that hold Arrow timestamps and land in `timestamptz` columns of `table`."""
    cur.execute("select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 "
                "and not attisdropped and atttypid = 'timestamptz'::regtype", (table,))
    target = {row[0] for row in cur.fetchall()}
    return [n for n in data.column_names if n in target and pa.types.is_timestamp(data[n].type)]


def replace_all(conn, table: str, df: pd.DataFrame | pa.Table, key: list[str]) -> int:
    """Replace the whole table's contents (reference data) inside the caller's transaction."""
    with conn.cursor() as cur:
        cur.execute(f"delete from {table}")
    return copy_upsert(conn, table, df, key)


# ---- reading Store files -----------------------------------------------------------------------------------
def _partition_values(rel_path: str) -> dict[str, str]:
    parts = posixpath.dirname(rel_path).split("/")
    return dict(p.split("=", 1) for p in parts if "=" in p)


def conform(table: pa.Table, spec: RawTable, where: str, extra: dict[str, str] | None = None) -> pa.Table:
    """Select the declared columns of `spec`, filled from `extra` (partition values) when absent, cast to type."""
    extra = extra or {}
    missing = [c.name for c in spec.columns if c.required and c.name not in table.column_names
               and c.name not in extra]
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
        if col.name in table.column_names:
            arr = table[col.name]
        elif col.name in extra:
            arr = pa.array([extra[col.name]] * table.num_rows, pa.string())
        else:
            arr = pa.nulls(table.num_rows, col.arrow_type)
        try:
            arr = pc.cast(arr, col.arrow_type, safe=not pa.types.is_timestamp(col.arrow_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValidationError(f"{where}: column {col.name!r} ({arr.type}) cannot be read as {col.pg_type} "
                                  f"for {spec.qualified}: {exc}. Fix the producer's output.") from exc
        if pa.types.is_floating(col.arrow_type):
            arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, col.arrow_type), arr)  # NaN = unknown: NULL in SQL
        arrays.append(arr)
    return pa.table(arrays, names=spec.column_names)


def _fingerprints(store: Store, rel_dir: str) -> dict[str, str]:
    files = store.list_files(rel_dir, ".parquet")
    infos = store.fs.get_file_info([store.path(f) for f in files]) if files else []
    return {rel: f"{info.size}:{info.mtime_ns}" for rel, info in zip(files, infos, strict=True)}


def _read_file(store: Store, spec: RawTable, rel: str) -> pa.Table:
    try:
        raw = store.read_parquet(rel)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValidationError(f"{store.path(rel)}: unreadable Parquet for {spec.qualified}: {exc}") from exc
    table = conform(raw, spec, store.path(rel), _partition_values(rel))
    return table.append_column(SOURCE_FILE, pa.array([rel] * table.num_rows, pa.string()))


# ---- reference data ----------------------------------------------------------------------------------------
def _reference_loaders() -> dict[str, Callable[[Settings], pd.DataFrame]]:
    from etl import portfolios, reference

    return {
        "exchanges": reference.load_exchanges,
        "instruments": reference.load_instruments,
        "portfolios": portfolios.load_portfolios,
        "positions": portfolios.load_positions,
    }


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


def _forget_files(conn, spec: RawTable, rewritten: list[str], gone: list[str]) -> None:
    """Delete the rows loaded from files that changed or disappeared, so raw mirrors the files (a rewritten
    partition with fewer rows, or a day silver removed, leaves no stale rows behind); gone files leave the state."""
    if not rewritten and not gone:
        return
    with conn.cursor() as cur:
        cur.execute(f"delete from {spec.qualified} where {SOURCE_FILE} = any(%s)", (rewritten + gone,))
        if gone:
            cur.execute(f"delete from {LOAD_STATE} where path = any(%s)", (gone,))
            log.info("raw.%s: %d file(s) no longer in the Store, their rows removed", spec.name, len(gone))


def _committed_outputs(store: Store) -> set[str]:
    """The output files some commit manifest names; a manifest naming a file that is gone fails the load."""
    committed = commits.committed_files(store)
    if committed:
        infos = store.fs.get_file_info([store.path(p) for p in sorted(committed)])
        if gone := [i.path for i in infos if i.type == pafs.FileType.NotFound]:
            raise ValidationError(f"{len(gone)} committed output file(s) are missing, e.g. {gone[0]}: rerun the "
                                  "stage that committed it (python -m etl risk --as-of D, or python -m etl factors)")
    return committed


def load_raw(conn, store: Store, settings: Settings, only: set[str] | None = None) -> LoadSummary:
    """Load every raw table's new data (or only the tables named in `only`) inside `conn`'s transaction (the
    caller commits)."""
    with conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(%s)", (LOAD_LOCK_ID,))
    committed = _committed_outputs(store)  # read once: one consistent view of what is committed
    seen = _loaded_state(conn)
    summary = LoadSummary()
    reference = _reference_loaders()
    for spec in TABLES:
        if only is not None and spec.name not in only:
            continue
        try:
            _load_table(conn, store, settings, spec, seen, reference, summary, committed)
        except psycopg2.Error as exc:  # e.g. recording the load state; the rows' own errors name their files
            raise _rejected(spec, [f"the files of {spec.source_dir or 'reference data'}"], exc) from exc
    return summary


def _rejected(spec: RawTable, sources: list[str], exc: psycopg2.Error) -> WarehouseError:
    shown = ", ".join(sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
    return WarehouseError(
        f"{spec.qualified}: Postgres rejected the new rows from {shown} ({type(exc).__name__}: "
        f"{str(exc).strip().splitlines()[0]}); the whole load was rolled back and the previous rows are "
        f"kept. Fix the producer's files (see raw._load_state for what is loaded) and rerun the load.")


def _load_table(conn, store: Store, settings: Settings, spec: RawTable, seen: dict[str, str],
                reference: dict[str, Callable[[Settings], pd.DataFrame]], summary: LoadSummary,
                committed: set[str]) -> None:
    if spec.source_dir is None:
        if spec.name not in reference:
            return
        data = conform(_as_arrow(reference[spec.name](settings)), spec, f"reference data {spec.name}")
        new = {f"reference:{spec.name}": _content_hash(data)}
        if seen.get(f"reference:{spec.name}") == new[f"reference:{spec.name}"]:
            new = {}
        try:
            rows = replace_all(conn, spec.qualified, data, list(spec.key)) if new else 0
        except psycopg2.Error as exc:
            raise _rejected(spec, [f"reference data {spec.name}"], exc) from exc
        counts = [data.num_rows]
    else:
        current = _fingerprints(store, spec.source_dir)
        if spec.source_dir.startswith(f"{commits.OUTPUTS}/"):
            current = {p: fp for p, fp in current.items() if p in committed}
        new = {path: fp for path, fp in sorted(current.items()) if seen.get(path) != fp}
        # files deleted since the last load (only when the folder is there: a wrong data dir must not empty raw)
        gone = [p for p in seen if p.startswith(f"{spec.source_dir}/") and p not in current] \
            if store.exists(spec.source_dir) else []
        parts = [_read_file(store, spec, rel) for rel in new]
        counts = [p.num_rows for p in parts]
        try:
            _forget_files(conn, spec, [p for p in new if p in seen], gone)
            rows = copy_upsert(conn, spec.qualified, pa.concat_tables(parts), list(spec.key)) if parts else 0
        except psycopg2.Error as exc:
            raise _rejected(spec, [store.path(p) for p in new], exc) from exc
    _record_state(conn, spec, new, counts)
    summary.rows[spec.name] = rows
    summary.files[spec.name] = len(new)
    if new:
        log.info("raw.%s: %d rows from %d new file(s)", spec.name, rows, len(new))


# ---- the light intraday path -------------------------------------------------------------------------------
INTRADAY_RAW = ("exchanges", "instruments", "portfolios", "positions", "intraday_risk", "intraday_limit_breaches")
INTRADAY_DBT_SELECT = "+fact_intraday_risk +fact_intraday_limit_breaches +dim_portfolio"


def load_intraday(settings: Settings | None = None, run_dbt: bool = True) -> LoadSummary:
    """Every 5 minutes: only the reference data and the intraday outputs into raw (one transaction, as `load`),
    then `dbt build` of only their models and tests (INTRADAY_DBT_SELECT), not the whole warehouse."""
    from etl import db
    from etl.settings import get_settings
    from etl.storage import get_store
    from etl.warehouse import run_dbt as dbt
    from etl.warehouse import setup

    settings = settings or get_settings()
    setup(settings)
    with db.connect(settings) as conn:
        summary = load_raw(conn, get_store(settings), settings, only=set(INTRADAY_RAW))
    log.info("intraday %s", summary)
    if run_dbt:
        # cautious: only the tests whose every parent is selected (not the other facts' tests on dim_portfolio)
        dbt("build", settings=settings, select=INTRADAY_DBT_SELECT, extra_args=["--indirect-selection", "cautious"])
        summary.dbt = "build (intraday models) ok"
    return summary

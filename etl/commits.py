"""The commit protocol of the risk, factor and intraday outputs on Delta tables (docs/commit_protocol.md).

Every output table `outputs/<table>` is a Delta table (etl/lake.py) partitioned as the stage names its partitions
("as_of_date=D", "date=D", "as_of_date=D/bucket=HHMM"). A partition key that is also a column of the rows is stored
as the Delta partition column `run_<key>` (`run_as_of_date`: the as-of day of the run that wrote the row), because
a Delta partition column is a column: history tables (pnl_daily, var_backtest...) hold many days of `as_of_date` in
one run's partition. A stage run that writes several tables:
1. replaces each of its partitions: one Delta commit per table (an overwrite whose predicate is the partition),
   carrying the run id in the commit's metadata. Delta files are immutable: the table's earlier versions still
   hold the rows they held.
2. commits the run: appends ONE record to the Delta table `outputs/_runs` (partitioned by `name`) naming, for each
   (table, partition) it wrote, the table version it made, its rows and its data files with their SHA-256, plus
   the run's metadata. That append is the commit point of the whole run.
Readers (the loader, scenario sets, factor days, intraday breaches) take what the records of a name say: for each
(table, partition), the files of the latest record that wrote it. So they see the previous complete run or the
new complete one, never a mix: a run killed between 1 and 2 leaves partitions replaced in some tables by a run
with no record; no reader takes them, the next run of that name replaces them, `vacuum` deletes their files.

A "manifest" (read_manifest) is that fold of a name's records: {"name", "stage", "run_id", "committed_at",
"files": {"<table>/<partition>": {"table", "partition", "columns" (the Delta partition columns and values),
"run_id", "version", "rows", "files": {path: sha256}}}, ...meta}.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from etl.errors import ValidationError
from etl.lake import ABSENT, COMMIT_RETRIES, DataFile, Lake, LakeConflict, conform, note_read, recorded_reads
from etl.storage import Store

log = logging.getLogger(__name__)

OUTPUTS = "outputs"
RUNS = f"{OUTPUTS}/_runs"
RUNS_SCHEMA = pa.schema([("name", pa.string()), ("run_id", pa.string()), ("stage", pa.string()),
                         ("committed_at", pa.timestamp("us", tz="UTC")), ("record", pa.string())])
RUN_INPUTS_SCHEMA = pa.schema([("run_id", pa.string()), ("commit_name", pa.string()), ("stage", pa.string()),
                               ("committed_at", pa.timestamp("us", tz="UTC")), ("input_table", pa.string()),
                               ("input_version", pa.int64())])


def new_run_id() -> str:
    """Sortable by start time, unique across hosts."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def risk_manifest(as_of: date) -> str:
    """The commit name of the risk outputs of one as-of day."""
    return f"risk/as_of_date={as_of.isoformat()}"


def partition_values(partition: str) -> dict[str, str]:
    """"as_of_date=D/bucket=HHMM" -> {"as_of_date": "D", "bucket": "HHMM"}."""
    return dict(p.split("=", 1) for p in partition.split("/"))


def _records(store: Store, name: str | None = None) -> list[dict]:
    """The run records (of `name`, or all), oldest first."""
    rows = Lake.of(store).read(RUNS, partition=None if name is None else {"name": name})
    if rows is None or rows.num_rows == 0:
        return []
    rows = rows.sort_by([("committed_at", "ascending"), ("run_id", "ascending")])
    out = []
    for row in rows.to_pylist():
        try:
            out.append({**json.loads(row["record"]), "name": row["name"], "run_id": row["run_id"],
                        "stage": row["stage"], "committed_at": row["committed_at"].isoformat()})
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{store.path(RUNS)}: unreadable run record of {row['name']} run {row['run_id']} "
                                  f"({exc}); rerun the stage that wrote it (python -m etl risk --as-of D, or "
                                  "python -m etl factors)") from exc
    return out


def _fold(records: list[dict]) -> dict | None:
    """The manifest of one name: the latest record's fields, and per (table, partition) the latest entry."""
    if not records:
        return None
    files: dict[str, dict] = {}
    for record in records:
        files.update(record["files"])
    return {**records[-1], "files": files}


def read_manifest(store: Store, name: str) -> dict | None:
    """What is committed under `name` (see the module docstring), or None when nothing is."""
    return _fold(_records(store, name))


def run_record(store: Store, name: str, run_id: str) -> dict:
    """The record run `run_id` committed under `name` (its own entries, not the fold); ValidationError naming the
    runs there are when it is not one of them."""
    records = _records(store, name)
    for record in records:
        if record["run_id"] == run_id:
            return record
    raise ValidationError(f"no run {run_id} committed {name} in {store.path(RUNS)}; its runs: "
                          f"{', '.join(r['run_id'] for r in records) or 'none'}")


def manifests(store: Store) -> list[dict]:
    """The manifest of every committed name (sorted by name)."""
    by_name: dict[str, list[dict]] = {}
    for record in _records(store):
        by_name.setdefault(record["name"], []).append(record)
    return [_fold(by_name[n]) for n in sorted(by_name)]


def run_inputs(store: Store) -> pa.Table:
    """One row per (run, table or partition it read) with the version read, from every run record that names its
    inputs (etl.lake.records_reads): what `risk --reproduce` reads back, for the warehouse (gold.fact_run_inputs).
    Tables a run found absent (version ABSENT in its record, which reproduce pins) are not rows: nothing was read."""
    rows = [{"run_id": r["run_id"], "commit_name": r["name"], "stage": r["stage"],
             "committed_at": datetime.fromisoformat(r["committed_at"]), "input_table": table, "input_version": version}
            for r in _records(store) for table, version in sorted((r.get("inputs") or {}).items()) if version != ABSENT]
    return pa.Table.from_pylist(rows, RUN_INPUTS_SCHEMA)


def committed_files(store: Store) -> dict[str, str]:
    """Every output file some manifest commits (path relative to the data root) -> its content hash."""
    return {path: sha for m in manifests(store) for entry in m["files"].values()
            for path, sha in entry["files"].items()}


def kept_files(store: Store, since: datetime) -> set[str]:
    """The output files a run record names whose entry is in force, or was superseded (by a later record of its name
    writing the same table partition) at or after `since`: those `maintain` keeps, whenever their table removed them
    (a run killed before its record removes the files of the record in force long before a rerun supersedes it)."""
    by_name: dict[str, list[dict]] = {}
    for record in _records(store):
        by_name.setdefault(record["name"], []).append(record)
    keep: set[str] = set()
    for records in by_name.values():
        superseded_at: dict[str, datetime] = {}   # entry key -> when the next record of the name wrote it
        for record in reversed(records):
            for key, entry in record["files"].items():
                if key not in superseded_at or superseded_at[key] >= since:
                    keep.update(entry["files"])
            superseded_at.update(dict.fromkeys(record["files"], datetime.fromisoformat(record["committed_at"])))
    return keep


def read_entry(store: Store, entry: dict, columns: list[str] | None = None) -> pa.Table:
    """The rows one manifest entry commits, as the stage wrote them (`columns`, default all): its files (those of
    the partition at the table version it names), pages verified and bytes checked against the recorded SHA-256
    (CorruptFileError names a file that differs). A file that is gone (vacuumed: superseded in its table longer
    than the retention) raises FileNotFoundError, which the loader reports with the command to rerun."""
    note_read(posixpath.join(OUTPUTS, entry["table"], entry["partition"]), entry["version"])
    parts = [store.read_parquet(path, columns=columns, sha256=sha) for path, sha in entry["files"].items()]
    return pa.concat_tables(parts) if len(parts) != 1 else parts[0]


def _fit(table: DeltaTable | None, where: str, rows: pa.Table, values: dict[str, str]
         ) -> tuple[pa.Table, pa.Schema, dict]:
    """(rows in the table's column types, the table's schema with any new column added, the Delta partition
    columns and values). A new table's partition key that is also a column of the rows becomes `run_<key>`; an
    existing table keeps the partition columns it was made with."""
    if table is None:
        columns = {f"run_{k}" if k in rows.column_names else k: v for k, v in values.items()}
        return rows, pa.schema([*rows.schema, *(pa.field(k, pa.string()) for k in columns)]), columns
    schema, partition_by = pa.schema(table.schema().to_arrow()), table.metadata().partition_columns
    columns = {(f"run_{k}" if f"run_{k}" in partition_by else k): v for k, v in values.items()}
    if sorted(columns) != sorted(partition_by):
        raise ValidationError(f"{where} is partitioned by {partition_by}, not by {sorted(columns)}: the "
                              "stage's partitions changed; rerun `python -m etl migrate-lake`")
    types = {f.name: f.type for f in schema}
    if rows.num_rows == 0:  # pandas types an empty frame's columns float64: any type fits no rows
        return pa.schema([f.with_type(types.get(f.name, f.type)) for f in rows.schema]).empty_table(), schema, columns
    try:
        rows = rows.cast(pa.schema([f.with_type(types.get(f.name, f.type)) for f in rows.schema]))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValidationError(f"{where}: the new rows do not fit the table's column types ({exc})") from exc
    return rows, pa.schema([*schema, *(f for f in rows.schema if f.name not in types)]), columns


def maintain(store: Store) -> int:
    """Optimize the run records (one small file per run) into large files, then vacuum every output table and the
    records: the files no version younger than the retention needs go, except those a run record in force names, or
    one superseded less than the retention ago (`kept_files`: a run killed between its per-table commits and its
    record removed them from their tables, yet the previous record still commits them, and once a rerun supersedes
    it, `risk --reproduce` of it still reads them for the retention). Returns how many files were deleted."""
    lake = Lake.of(store)
    lake.optimize(RUNS)
    deleted = len(lake.vacuum(RUNS))
    tables = [posixpath.join(OUTPUTS, t) for t in store.list_dirs(OUTPUTS)]   # not `_runs` (hidden)
    candidates = [posixpath.join(rel, p) for rel in tables for p in lake.vacuum(rel, dry_run=True)]
    # read after the candidates: a record committed meanwhile is honoured too
    named = kept_files(store, datetime.now(UTC) - timedelta(days=lake.retention_days))
    for path in candidates:
        if path not in named:
            store.delete(path)
            deleted += 1
    return deleted


def _after_previous(runs: DeltaTable | None, name: str, now: datetime) -> datetime:
    """`now`, or a microsecond after the `committed_at` of the latest record of `name` in `runs` (a version of
    `_runs`: the one the record is committed on top of) when that is not before `now` (its host's clock ran ahead of
    this one's): a name's records are ordered by `committed_at`, so the record committed last is the one in force,
    whatever the hosts' clocks."""
    if runs is None:
        return now
    latest = pc.max(runs.to_pyarrow_dataset(partitions=[("name", "=", name)]).to_table(columns=["committed_at"])
                    ["committed_at"]).as_py()
    return now if latest is None or latest < now else latest + timedelta(microseconds=1)


def publish(store: Store, name: str, stage: str, parts: dict[tuple[str, str], pa.Table], *,
            run_id: str | None = None, meta: dict | None = None) -> dict:
    """Replace each (table, partition) of `parts` (partition like "as_of_date=2026-01-31", rows without or with
    the partition columns) in its Delta table, then commit them all with one run record. Returns the record (as
    read_manifest gives a name's: its entries are this run's). A crash before the record leaves the previous
    commit in force."""
    run_id = run_id or new_run_id()
    lake = Lake.of(store)
    entries = {}
    for (table, partition), rows in parts.items():
        rel = posixpath.join(OUTPUTS, table)
        current = lake.table(rel)
        rows, schema, columns = _fit(current, lake.uri(rel), conform(rows), partition_values(partition))
        in_table = posixpath.join(*(f"{k}={v}" for k, v in columns.items()), f"{run_id}.parquet")
        path = posixpath.join(rel, in_table)
        if store.exists(path):  # a file of this run id is there (the old layout's, of a run migrate-lake converts):
            # never written over, a file another commit or record names keeps its bytes; this one gets its own name
            in_table = f"{in_table.removesuffix('.parquet')}-{uuid.uuid4().hex[:8]}.parquet"
            path = posixpath.join(rel, in_table)
        store.write_parquet(path, rows)
        size = store.fs.get_file_info(store.path(path)).size
        version = lake.commit_files(rel, [DataFile(in_table, size, columns, rows.num_rows)], schema, list(columns),
                                    replace=columns, metadata={"run_id": run_id, "commit": name}, table=current)
        entries[f"{table}/{partition}"] = {"table": table, "partition": partition, "columns": columns,
                                           "run_id": run_id, "version": version, "rows": rows.num_rows,
                                           "files": {path: store.digest(path)}}
    inputs = recorded_reads()  # the versions of the Delta tables the run read (etl.lake.records_reads)
    record = json.dumps({"files": entries, **(meta or {}), **({"inputs": inputs} if inputs is not None else {})},
                        default=str, sort_keys=True)
    for attempt in range(COMMIT_RETRIES + 1):
        # stamped after the name's records in the `_runs` version it lands on: a record of the name committed
        # meanwhile (LakeConflict) makes it read them again
        runs = lake.table(RUNS)
        committed_at = _after_previous(runs, name, datetime.now(UTC))
        try:
            lake.write(RUNS, pa.Table.from_pylist([{"name": name, "run_id": run_id, "stage": stage,
                                                    "committed_at": committed_at, "record": record}], RUNS_SCHEMA),
                       partition_by=["name"], metadata={"run_id": run_id, "commit": name}, guard=True,
                       table=runs)  # the commit point
            break
        except LakeConflict:
            if attempt == COMMIT_RETRIES:
                raise
    log.info("committed %s: run %s, %d partition(s)", name, run_id, len(parts))
    return {**json.loads(record), "name": name, "run_id": run_id, "stage": stage,
            "committed_at": committed_at.isoformat()}

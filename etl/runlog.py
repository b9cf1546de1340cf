"""Pipeline run log: one row per task run (run id, DAG, task, status, rows in/out, timing, message).

Rows are small Parquet files under `{data}/runlog/date=YYYY-MM-DD/` (append-only, one file per record) so that
tasks on different workers never contend for a file; the warehouse loads them into `raw.pipeline_runs`, which dbt
models as `gold.fact_pipeline_runs`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from etl.redaction import redact_text
from etl.settings import Settings
from etl.storage import get_store, partition_path

log = logging.getLogger(__name__)

RUNLOG_DIR = "runlog"
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("dag_id", pa.string()), ("task_id", pa.string()), ("status", pa.string()),
    ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("started_at", pa.timestamp("us", tz="UTC")),
    ("duration_s", pa.float64()), ("message", pa.string()), ("try_number", pa.int64()),
    ("record_id", pa.string()),
])
STATUSES = ("success", "failed", "up_for_retry", "skipped")


@dataclass
class RunRecord:
    run_id: str
    dag_id: str
    task_id: str
    status: str = "success"
    rows_in: int = 0
    rows_out: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    duration_s: float = 0.0
    message: str = ""
    try_number: int = 1
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def record(rec: RunRecord, settings: Settings | None = None) -> str:
    """Append one run-log row (its message redacted: `redact_text`); returns the file written."""
    if rec.status not in STATUSES:
        raise ValueError(f"run-log status {rec.status!r} is not one of {STATUSES}")
    rec.message = redact_text(rec.message or "")[:2000]
    table = pa.Table.from_pylist([asdict(rec)], schema=SCHEMA)
    day = rec.started_at.astimezone(UTC).date().isoformat()
    rel = partition_path(RUNLOG_DIR, date=day) + f"/{rec.record_id}.parquet"
    return get_store(settings).write_parquet(rel, table)


@contextmanager
def task_run(run_id: str, dag_id: str, task_id: str, settings: Settings | None = None, try_number: int = 1,
             failure_status: str | None | Callable[[BaseException], str | None] = "failed") -> Iterator[RunRecord]:
    """Time a block of work and record it; the block fills rows_in/rows_out/message on the yielded record.

    On an exception the row is recorded with `failure_status` ("up_for_retry" when Airflow will try again; None
    when someone else records the final failure, e.g. Airflow's on_failure_callback; or a function of the
    exception giving either) and the error re-raised.
    """
    rec = RunRecord(run_id=run_id, dag_id=dag_id, task_id=task_id, try_number=try_number)
    t0 = time.perf_counter()
    try:
        yield rec
    except BaseException as exc:
        status = failure_status(exc) if callable(failure_status) else failure_status
        rec.status = status or "failed"
        rec.message = f"{type(exc).__name__}: {exc}"
        if status is not None:
            rec.duration_s = round(time.perf_counter() - t0, 6)
            record_safely(rec, settings)
        raise
    rec.duration_s = round(time.perf_counter() - t0, 6)
    record_safely(rec, settings)


def record_safely(rec: RunRecord, settings: Settings | None = None) -> None:
    """Record, logging instead of raising: the log must never hide the task's own result or error."""
    try:
        record(rec, settings)
    except Exception:
        log.exception("could not write the run-log row for %s.%s", rec.dag_id, rec.task_id)


def read_all(settings: Settings | None = None) -> pd.DataFrame:
    table = get_store(settings).read_table(RUNLOG_DIR)
    if table is None:
        return pd.DataFrame(columns=SCHEMA.names)
    return table.select(SCHEMA.names).to_pandas()

"""Pipeline run log: one row per task run (run id, DAG, task, status, rows in/out, timing, message).

Rows are small Parquet files under `{data}/runlog/date=YYYY-MM-DD/` (append-only, one file per record) so that
tasks on different workers never contend for a file; the warehouse loads them into `raw.pipeline_runs`, which dbt
models as `gold.fact_pipeline_runs`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from etl.settings import Settings, get_settings
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


_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s/?#@'\"<>]*@)?([^\s/?#'\"<>]*)([^\s'\"<>]*)")
_SECRET_PAIR = re.compile(r"(?i)\b([a-z0-9_]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)[a-z0-9_]*)"
                          r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[a-z0-9._~+/=-]{8,}")


def _redact_url(m: re.Match) -> str:
    scheme, userinfo, host, rest = m.group(1), m.group(2) or "", m.group(3), m.group(4)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***@"
    if scheme.lower() in ("http", "https", "ws", "wss"):  # a webhook's path or query is its secret
        rest = "/***" if rest.strip("/") else rest
    else:  # database URLs: the path is a database name; drop secret query parameters
        rest = _SECRET_PAIR.sub(lambda p: f"{p.group(1)}{p.group(2)}***", rest)
    return f"{scheme}://{userinfo}{host}{rest}"


_REQUEST_PATH = re.compile(r"(?i)(\burl:\s*)/\S+")  # urllib3: "Max retries exceeded with url: /services/..."


def _known_secrets() -> list[str]:
    """Secret values of the current settings (webhook path, database and reporting passwords), longest first."""
    from urllib.parse import urlparse

    try:
        settings = get_settings()
    except Exception:  # a bad setting must not stop an error from being recorded
        return []
    found = []
    if settings.alert_webhook_url:
        u = urlparse(settings.alert_webhook_url)
        found += [settings.alert_webhook_url, u.path + (f"?{u.query}" if u.query else ""), u.path,
                  u.path.lstrip("/"), u.query]
    if settings.database_url:
        found.append(urlparse(settings.database_url).password or "")
    found.append(settings.reporting_password or "")
    return sorted({f for f in found if len(f.strip("/")) >= 4}, key=len, reverse=True)


def redact_text(text: str) -> str:
    """`text` with credentials removed: the configured secrets (webhook URL path, passwords), URL passwords,
    http(s) URL paths and queries, password=/token=/secret=/api_key= values and bearer tokens become ***.
    Applied to every run-log message and to the CLI's one-line errors: the run log reaches
    gold.fact_pipeline_runs, which the reporting role reads."""
    text = _URL.sub(_redact_url, text)
    text = _REQUEST_PATH.sub(lambda m: f"{m.group(1)}/***", text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} ***", text)


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

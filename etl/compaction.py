"""`python -m etl compact [--before DATE]`: the lake's maintenance, all with Delta's own means (docs/bronze.md).

- Bronze candles: `optimize` of the closed days (date < `before`) rewrites each partition's batch files into one
  file, in one commit (rows unchanged: bronze is append-only and readers keep the latest ingestion per key). A
  crash before the commit leaves the old files in force; a rerun does it again; a compacted partition is left
  alone (idempotent). Ingests may append meanwhile (appends never conflict with a compaction).
  An unreadable file is quarantined first (etl.candles.optimize).
- The bronze stream tables (etl.stream.sinks.maintain) and the run records (etl.commits.maintain) likewise.
- `vacuum` of every Delta table: the files no version younger than PIPELINE_LAKE_RETENTION_DAYS needs, and
  uncommitted files that old, are deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pyarrow as pa
import pyarrow.compute as pc

from etl import candles, commits
from etl.candles import CANDLES_DIR
from etl.lake import Lake
from etl.settings import Settings, get_settings
from etl.storage import get_store
from etl.stream import sinks

log = logging.getLogger(__name__)
SILVER_LOCK = "silver"  # silver's writer lock (etl.storage.exclusive), which its readers wait for


@dataclass
class CompactSummary:
    before: str
    partitions_seen: int = 0        # closed bronze candle partitions
    compacted: int = 0              # of them given one file by this run
    files_compacted: int = 0        # bronze candle files rewritten into those
    rows: int = 0                   # rows of the compacted partitions (unchanged by a compaction)
    stream_files_compacted: int = 0  # bronze stream batch files of closed days optimized into one per partition
    files_vacuumed: int = 0         # files older than PIPELINE_LAKE_RETENTION_DAYS no version needs (every table)
    bad_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"compact before {self.before}: {self.compacted} of {self.partitions_seen} closed bronze partition(s) "
                f"compacted ({self.files_compacted} file(s) rewritten; {self.rows:,} rows in closed days), "
                f"{self.stream_files_compacted} stream batch file(s) compacted, {self.files_vacuumed} Delta file(s) "
                f"vacuumed, {len(self.bad_files)} unreadable file(s) quarantined, {self.seconds:.2f} s")


def compact(before: date | None = None, settings: Settings | None = None, now: datetime | None = None) -> CompactSummary:
    """Compact every bronze partition dated before `before` (default: today, UTC), then the other tables; vacuum."""
    started = time.perf_counter()
    settings = settings or get_settings()
    store = get_store(settings)
    lake = Lake.of(store, settings)
    before = before or (now or datetime.now(UTC)).date()
    summary = CompactSummary(before=before.isoformat())
    closed = [("date", "<", before.isoformat())]
    summary.partitions_seen = len(candles.by_partition(candles.files(lake, keep=lambda d: d < summary.before)))
    recorded = candles.digests(lake.commits(CANDLES_DIR, None, lake.version(CANDLES_DIR) or 0))
    metrics, summary.bad_files = candles.optimize(store, lake, closed, recorded)
    summary.compacted = metrics.get("partitionsOptimized", 0)
    summary.files_compacted = metrics.get("numFilesRemoved", 0)
    summary.rows = _rows(lake, before)
    summary.files_vacuumed = len(lake.vacuum(CANDLES_DIR))
    stream_compacted, stream_vacuumed = sinks.maintain(store, before)
    summary.stream_files_compacted = stream_compacted
    summary.files_vacuumed += commits.maintain(store) + stream_vacuumed
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info("%s", summary)
    return summary


def _rows(lake: Lake, before: date) -> int:
    """Rows of the closed days, from the log's per-file record counts (no file opened)."""
    t = lake.table(CANDLES_DIR)
    actions = pa.table(t.get_add_actions(flatten=True)) if t is not None else None
    if actions is None or actions.num_rows == 0:
        return 0
    closed = pc.less(actions["partition.date"], before.isoformat())
    return pc.sum(actions.filter(closed)["num_records"]).as_py() or 0

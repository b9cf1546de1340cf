"""`python -m etl compact [--before DATE]`: the lake's maintenance, all with Delta's own means (docs/bronze.md).

- Bronze candles: each closed partition (date < `before`) holding two or more files is rewritten into one file of
  the rows readers keep, all in one commit (etl.candles.compact). A crash before the commit leaves the old files
  in force (the written file is one no log names); a rerun does it again; a partition of one file is left alone
  (idempotent). Ingests may append meanwhile. An unreadable file is quarantined on the way.
- The bronze stream tables (etl.stream.sinks.maintain) and the run records (etl.commits.maintain) likewise.
- The silver tables are vacuumed too (their superseded files: each build replaces the partitions it rebuilds).
- `vacuum` of every Delta table: the files no version younger than PIPELINE_LAKE_RETENTION_DAYS needs, and
  uncommitted files that old, are deleted. So a data folder `migrate-lake` has not converted yet is refused (exit 2):
  the old layout's data files are files no log names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from etl import candles, commits, migrate
from etl.candles import CANDLES_DIR
from etl.errors import ValidationError
from etl.lake import Lake, LakeConflict
from etl.settings import Settings, get_settings
from etl.storage import get_store
from etl.stream import sinks

log = logging.getLogger(__name__)
SILVER = "silver"   # every table folder under it is a Delta table (etl/silver)


@dataclass
class CompactSummary:
    before: str
    partitions_seen: int = 0        # closed bronze candle partitions
    compacted: int = 0              # of them given one file by this run
    files_compacted: int = 0        # bronze candle files rewritten into those
    rows_in: int = 0                # rows of the files compacted
    rows_out: int = 0               # rows kept: one per (granularity, bucket_start)
    stream_files_compacted: int = 0  # bronze stream batch files of closed days optimized into one per partition
    files_vacuumed: int = 0         # files older than PIPELINE_LAKE_RETENTION_DAYS no version needs (every table)
    bad_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"compact before {self.before}: {self.compacted} of {self.partitions_seen} closed bronze partition(s) "
                f"compacted ({self.files_compacted} file(s), {self.rows_in:,} rows -> {self.rows_out:,}), "
                f"{self.stream_files_compacted} stream batch file(s) compacted, {self.files_vacuumed} Delta file(s) "
                f"vacuumed, {len(self.bad_files)} unreadable file(s) quarantined, {self.seconds:.2f} s")


def compact(before: date | None = None, settings: Settings | None = None, now: datetime | None = None) -> CompactSummary:
    """Compact every bronze partition dated before `before` (default: today, UTC), then the other tables; vacuum."""
    started = time.perf_counter()
    settings = settings or get_settings()
    store = get_store(settings)
    if (old := migrate.unconverted(store)) is not None:  # its vacuum would delete the old layout's data files
        raise ValidationError(f"{store.path(old)}: the data folder is not converted to the lake's Delta tables yet, "
                              "and compact would delete the old files no table's log names: run `python -m etl "
                              "migrate-lake` first; nothing was compacted")
    lake = Lake.of(store, settings)
    before = before or (now or datetime.now(UTC)).date()
    summary = CompactSummary(before=before.isoformat())
    parts = candles.by_partition(candles.files(lake, keep=lambda d: d < summary.before))
    closed = sorted(parts)
    summary.partitions_seen = len(closed)
    # the digests of the files to rewrite, from the commits since the oldest of them was added (not the whole log:
    # compaction keeps that short, so the cost stays flat however long the table's history)
    pending = [rel for rels in parts.values() if not candles.compacted(rels) for rel in rels]
    added = lake.added_at(CANDLES_DIR)
    since = min((added[rel] for rel in pending if rel in added), default=None)
    recorded = {} if since is None else candles.digests(
        lake.commits_since(CANDLES_DIR, since - candles.CLOCK_SKEW_MS))
    for attempt in range(3):
        try:
            done = candles.compact(store, lake, closed, recorded, {"compact_before": summary.before})
            break
        except LakeConflict:  # a silver fold replaced some of the same files first: compact what is there now
            if attempt == 2:
                raise
    summary.compacted, summary.files_compacted = done.partitions, done.files_removed
    summary.rows_in, summary.rows_out, summary.bad_files = done.rows_in, done.rows_out, done.bad_files
    summary.files_vacuumed = len(lake.vacuum(CANDLES_DIR))
    for name in store.list_dirs(SILVER):  # the silver Delta tables (bars, quality, trade bars, liquidity)
        summary.files_vacuumed += len(lake.vacuum(f"{SILVER}/{name}"))
    stream_compacted, stream_vacuumed = sinks.maintain(store, before)
    summary.stream_files_compacted = stream_compacted
    summary.files_vacuumed += commits.maintain(store) + stream_vacuumed
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info("%s", summary)
    return summary

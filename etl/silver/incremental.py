"""`build()`: bronze candles -> silver 5-minute and daily bars, recomputing only what new bronze commits touched.

Silver reads the bronze candles Delta table (etl/candles.py) at one version of its log, and decides which
(product, date) partitions to rebuild from the files added or removed since the bronze version it last processed
(etl.silver.increments.since; a compaction or a quarantined file is a change too; a partition left with no bronze
file loses its silver days, as a full refresh leaves it). That version is recorded in
the metadata of the build's last commit (`silver_read` on bars_1d: `bronze_version`, and per partition the price
overrides of its day it was built with: accepting a print rebuilds its day), so it moves with the data.
The market-data quality gate (price_quality) judges a day's candles with the two days before and the day after
(CONTEXT_DAYS): a partition is rebuilt when it or one of those changed, reading them as context, so its output
stays a pure function of those four partitions. A full refresh reads every partition.
Before reading, an incremental run folds each partition to rebuild that holds several files into one file of the
rows readers keep (etl.candles.compact): the open day's intraday batches do not pile up, so the cost of a run
stays flat through the day; the bars are the same.

Output: four Delta tables (SILVER_TABLES), each committed once per build on top of the version the build loaded
first (no lock: a concurrent build that committed first makes this one fail with LakeConflict); files are written
before, invisible until the commit. Every output file is a pure function of its bronze partition(s), so a full
refresh writes the same bytes as incremental runs. docs/commit_protocol.md says what a crash between the tables'
commits leaves and how the next build repairs it.

Integrity (etl/integrity.py): each silver file is named by its SHA-256 (`part-<digest>.parquet`), so the log holds
the digest and readers (`read_bars`, the loader) check the files they read against it. Unreadable inputs: a bronze
file that does not read whole, or a new one whose bytes differ from the digest its commit recorded, is moved to
`bronze/quarantined_files/` with its reason, taken out of the bronze table, and the partition is built from the rest
(re-ingest that window to get its rows back); a corrupt `silver_read` or daily file stops the run (ValidationError,
exit 2) saying which file and to run `--full-refresh`.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import posixpath
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl import candles
from etl.candles import CANDLES_DIR
from etl.commits import new_run_id
from etl.errors import ValidationError
from etl.integrity import CorruptFileError, digest
from etl.lake import DataFile, Lake, LakeConflict
from etl.settings import Settings, get_settings
from etl.silver import increments, price_quality, quality
from etl.silver.bars import (
    BAR_1D_GRANULARITIES,
    BAR_5M_GRANULARITIES,
    BARS_1D_SCHEMA,
    BARS_5M_SCHEMA,
    TS,
    US,
    aggregate,
    latest_per_key,
)
from etl.storage import Store, get_store, parquet_bytes, partition_path
from etl.stream.sinks import BOOK_DIR, TRADES_DIR
from etl.utc import to_utc

if TYPE_CHECKING:  # pandas: the build's process only, not its workers
    import pandas as pd
    from deltalake import DeltaTable

    from etl.reference_set import Reference

log = logging.getLogger(__name__)

BRONZE_DIR = CANDLES_DIR
BARS_5M_DIR = "silver/bars_5m"
BARS_1D_DIR = "silver/bars_1d"
QUARANTINE_DIR = "silver/quarantine"
PRICE_QUALITY_DIR = "silver/price_quality"
BRONZE_VERSION = "bronze_version"  # in `silver_read`: the bronze version the build read
QUALITY_DIR = "silver/_quality"
SILVER_READ = "silver_read"   # metadata of a build's last commit: what it read of bronze, per partition
_DIGEST_NAME = re.compile(r"/part-([0-9a-f]{64})\.parquet$")  # a silver file is named by its SHA-256
DAY_US = 86_400 * US

# What silver reads of bronze: never `raw` (the bulk of a bronze file), which only quarantined rows need.
BRONZE_COLUMNS = ["product_id", "bucket_start", "open", "high", "low", "close", "volume", "granularity",
                  "ingested_at", "batch_id"]
QUARANTINE_SCHEMA = pa.schema([
    ("bucket_start", TS), ("granularity", pa.int64()), ("open", pa.float64()), ("high", pa.float64()),
    ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()), ("ingested_at", TS),
    ("batch_id", pa.string()), ("raw", pa.string()), ("rule", pa.string()), ("failed_rules", pa.string()),
])
# The quality gate's flagged prints (etl/silver/price_quality.py) with the decision taken on each.
PRICE_QUALITY_SCHEMA = pa.schema([*price_quality.FLAG_SCHEMA, ("decision", pa.string()), ("accepted_by", pa.string()),
                                  ("accepted_at", TS), ("override_reason", pa.string())])
BY_DAY = ["product_id", "date"]
# The Delta tables a build writes (schema of their files, partition columns), committed in this order: the last
# one's commit records what the build read.
SILVER_TABLES = {QUARANTINE_DIR: (QUARANTINE_SCHEMA, BY_DAY), PRICE_QUALITY_DIR: (PRICE_QUALITY_SCHEMA, BY_DAY),
                 BARS_5M_DIR: (BARS_5M_SCHEMA, BY_DAY), BARS_1D_DIR: (BARS_1D_SCHEMA, ["product_id", "year"])}
LAST_TABLE = BARS_1D_DIR
VACUUM_COMMITS = ("VACUUM START", "VACUUM END")   # the commits delta-rs' vacuum adds (no data, no metadata of ours)
# the commit Lake.follow_retention adds when PIPELINE_LAKE_RETENTION_DAYS changed (no data either); passed over too
PROPERTY_COMMIT = "SET TBLPROPERTIES"
NO_ROW_COMMITS = (*VACUUM_COMMITS, PROPERTY_COMMIT)
VACUUMS_PASSED = 10   # vacuums (compact runs) between two builds the state survives; more: a full rebuild


@dataclass
class SilverSummary:
    rows_in: int = 0                      # bronze rows read (all versions, before dedup)
    rows_out: int = 0                     # 5-minute bars written
    bars_1d: int = 0                      # daily bars (re)computed
    duplicates: int = 0                   # superseded bronze versions dropped by the dedup
    quarantined: int = 0                  # rows quarantined, all rules together
    quarantined_by_rule: dict[str, int] = field(default_factory=lambda: dict.fromkeys(quality.RULES, 0))
    suspect: int = 0                      # prints the quality gate flagged (excluded + accepted by override)
    suspect_by_rule: dict[str, int] = field(default_factory=lambda: dict.fromkeys(price_quality.RULES, 0))
    accepted: int = 0                     # flagged prints kept in the bars by price_overrides.csv
    gaps: int = 0                         # incomplete_bars + missing_buckets
    incomplete_bars: int = 0              # 5-minute bars with fewer candles than the bar holds
    missing_buckets: int = 0              # empty 5-minute buckets between a partition's first and last bar
    partitions: int = 0                   # (product, date) partitions rebuilt
    batches: int = 0                      # bronze batches committed since the bronze version last read
    bad_files: list[str] = field(default_factory=list)  # unreadable bronze files moved to quarantine
    full_refresh: bool = False
    seconds: float = 0.0
    trade_bars: str = ""                  # the trade-bar build and its reconciliation, when trades were streamed
    liquidity: str = ""                   # the liquidity build, when order books were streamed

    def __str__(self) -> str:
        rules = ", ".join(f"{r}={n}" for r, n in self.quarantined_by_rule.items() if n) or "none"
        suspects = ", ".join(f"{r}={n}" for r, n in self.suspect_by_rule.items() if n) or "none"
        return "\n".join([
            f"silver {'full refresh' if self.full_refresh else 'incremental'}: {self.batches} bronze batch(es) taken in, "
            f"{self.partitions} partition(s) rebuilt in {self.seconds:.2f}s",
            *([f"  QUARANTINED {len(self.bad_files)} corrupt bronze file(s), re-ingest their windows: "
               + ", ".join(self.bad_files[:3])] if self.bad_files else []),
            f"  rows in      {self.rows_in:>10,}  (duplicates dropped {self.duplicates:,})",
            f"  bars out     {self.rows_out:>10,}  5-minute, {self.bars_1d:,} daily",
            f"  quarantined  {self.quarantined:>10,}  ({rules})",
            f"  suspect      {self.suspect:>10,}  ({suspects}; {self.accepted:,} accepted by override)",
            f"  gaps         {self.gaps:>10,}  ({self.incomplete_bars:,} incomplete bars, "
            f"{self.missing_buckets:,} empty buckets)",
            *([self.trade_bars] if self.trade_bars else []),
            *([self.liquidity] if self.liquidity else []),
        ])


def build(full_refresh: bool = False, settings: Settings | None = None, now: datetime | None = None,
          reference: Reference | None = None) -> SilverSummary:
    """Bring silver up to date with bronze; `full_refresh` recomputes every partition (same bytes as incremental).

    `now` is the reference time of the `not_in_future` rule (default: the current time). Raises LakeConflict when
    another build committed to a silver table since this one loaded it. `reference`: the run's reference data
    (etl.reference_set; default: the files of `settings`).
    """
    from etl.reference_set import Reference  # pandas: the build's process only, not its workers

    settings = settings or get_settings()
    return _build(full_refresh, settings, now, Reference.of(reference, settings))


def _build(full_refresh: bool, settings: Settings, now: datetime | None, reference: Reference) -> SilverSummary:
    started = time.perf_counter()
    store = get_store(settings)
    now = to_utc(now) if now else datetime.now(UTC)  # naive means UTC, like everywhere in the platform
    summary = SilverSummary(full_refresh=full_refresh)
    whole = full_refresh
    while _candle_bars(store, settings, whole, now, reference, summary):
        whole = False  # a context file went bad: once more, rebuilding the days its removal changes
    if store.exists(TRADES_DIR):  # live trades from `python -m etl stream`: 5-minute bars from trades too
        from etl.silver.trade_bars import build_trade_bars

        summary.trade_bars = str(build_trade_bars(settings, full_refresh, reference))
    if store.exists(BOOK_DIR):  # order-book snapshots from `python -m etl stream`: spread and depth
        from etl.silver.liquidity import build_liquidity

        summary.liquidity = str(build_liquidity(settings, full_refresh))

    summary.bad_files = list(dict.fromkeys(summary.bad_files))  # a file two chunks read (own, context): once
    summary.quarantined = sum(summary.quarantined_by_rule.values())
    summary.gaps = summary.incomplete_bars + summary.missing_buckets
    summary.seconds = round(time.perf_counter() - started, 3)
    finished = datetime.now(UTC)
    store.write_json(f"{QUALITY_DIR}/{finished:%Y%m%dT%H%M%S%fZ}.json",
                     {"run_at": finished.isoformat(), "now": now.isoformat(), **asdict(summary)})
    log.info("silver: %s", str(summary).replace("\n", " |"))
    return summary


def _candle_bars(store: Store, settings: Settings, full_refresh: bool, now: datetime, reference: Reference,
                 summary: SilverSummary) -> bool:
    """One pass over the bronze candles: plan, rebuild, commit (counts added to `summary`). True when a bronze file
    read only as the context of the days rebuilt was unreadable: set aside and taken out of bronze, but the days it
    belongs to (and those their gate reaches) were not rebuilt without it: the state records the bronze version
    before its removal, so another pass rebuilds them."""
    silver = _snapshot(Lake.of(store, settings))
    lake = silver.lake
    last, state = (None, {}) if full_refresh else _load_state(silver)
    overrides = _overrides(reference.price_overrides)
    bronze, parts, todo = _plan(lake, last, state, overrides, now)
    crowded = [k for k in todo if not candles.compacted(parts[k])]
    if crowded and not full_refresh:  # today's partition gains a batch per intraday run: fold it into one file
        folded = _fold(store, lake, crowded, bronze)
        summary.rows_in += folded.rows_in - folded.rows_out  # versions the fold dropped
        summary.duplicates += folded.rows_in - folded.rows_out
        summary.bad_files += folded.bad_files
        bronze, parts, todo = _plan(lake, last, state, overrides, now)
    log.info("silver %s: %d of %d bronze partitions to rebuild (bronze version %s)",
             "full refresh" if full_refresh else "incremental", len(todo), len(parts), bronze.version)
    files = {k: parts[k] for k in todo}
    taken_in = [] if bronze.version is None else lake.commits(BRONZE_DIR, bronze.since, bronze.version)
    currencies = _quote_currencies({p for p, _ in files}, reference)

    chunks: dict[tuple[str, str], list[str]] = defaultdict(list)  # (product, month): a worker's memory is a month
    for product, day in sorted(files):
        chunks[(product, day[:7])].append(day)

    bad: list[str] = []
    others: set[str] = set()  # unreadable context files of days not rebuilt here
    written: dict[str, DataFile | None] = {}  # silver partition -> its new file (None: the day has no rows any more)
    read: dict[tuple[str, str], dict] = {}
    daily: dict[tuple[str, int], list] = defaultdict(list)  # (product, year) -> its chunks' (days, daily bars)
    digests = candles.digests(taken_in)  # of the files new since the last build: older ones were checked then
    jobs = []
    for (product, _), days in sorted(chunks.items()):
        own, context = [f for d in days for f in files[(product, d)]], _context_files(parts, product, days)
        jobs.append((store, product, days, own, currencies[product], now, context, overrides.get(product),
                     {f: digests[f] for f in (*own, *context) if f in digests}))  # its own: a job is pickled
    # chunks in worker processes (each writes its own days' files; this process alone writes the daily year files
    # and commits the state below, so a failed worker leaves the previous state); threads in one process crashed
    # pyarrow (SIGSEGV, bad_alloc)
    workers = min(settings.silver_workers, len(jobs)) if sum(len(job[3]) for job in jobs) >= POOL_MIN_FILES else 1
    with _pool(workers) as map_chunks:
        for job, (counts, chunk_files, paths, bars_1d) in zip(jobs, map_chunks(_rebuild_chunk, jobs), strict=True):
            _, product, days, wanted = job[:4]
            _add(summary, counts)
            written.update(chunk_files)
            daily[(product, int(days[0][:4]))].append((days, bars_1d))
            aside = set(job[6]) - set(paths)  # context files set aside by the worker
            bad += sorted((set(wanted) - set(paths)) | aside)  # set aside by the worker
            others |= {f for f in aside if candles.partition_of(f) not in files}
            for day in days:
                read[(product, day)] = _version((product, day), overrides, now)
    bad = sorted(set(bad))
    # partitions whose bronze files are all gone since the last build (e.g. quarantined whole by compact): their
    # silver days go too, as a full refresh leaves them (no bronze behind them)
    emptied = set() if full_refresh else set(increments.touched(bronze.removed, BRONZE_DIR)) - parts.keys()
    for product, day in sorted(emptied):
        written.update({partition_path(root, product_id=product, date=day): None
                        for root in (BARS_5M_DIR, QUARANTINE_DIR, PRICE_QUALITY_DIR)})
        daily[(product, int(day[:4]))].append(([day], BARS_1D_SCHEMA.empty_table()))
    read_version = bronze.version
    if candles.remove(store, lake, bad) == (read_version or 0) + 1 and not others:  # nothing else committed
        read_version += 1                                  # since the read: the build read that version minus `bad`
    for (product, year), months in sorted(daily.items()):
        day_numbers = [_day_number(d) for days, _ in months for d in days]
        bars_1d = pa.concat_tables([t for _, t in months]).combine_chunks()
        written.update(_write_daily(store, silver, product, year, day_numbers, bars_1d, full_refresh))
    summary.batches += sum(candles.BATCH_ID in c for c in taken_in)
    # what this build read; partitions that have no bronze any more drop out
    kept = {_key(k) for k in parts}
    if written or full_refresh or read_version != last:
        _commit(store, silver, written, full_refresh, read_version,
                {k: v for k, v in state.items() if k in kept} | {_key(k): v for k, v in read.items()})
    return bool(others)


def _plan(lake: Lake, last: int | None, state: dict[str, dict], overrides: dict[str, pa.Table], now: datetime
          ) -> tuple[increments.Increment, dict[tuple[str, str], list[str]], list[tuple[str, str]]]:
    """(bronze at its latest version and its changes since version `last`, its files by partition, the
    partitions to rebuild: those whose files or overrides changed, or whose day was not over when last built and
    is now, and the days whose quality gate reads them)."""
    bronze = increments.since(lake, BRONZE_DIR, last)
    parts = candles.by_partition(bronze.files)
    changed = set(increments.touched(bronze.new + bronze.removed, BRONZE_DIR)) | \
        {k for k in parts if state.get(_key(k)) != _version(k, overrides, now)}
    return bronze, parts, sorted((changed | {n for k in changed for n in _shifted(k, REACHED)}) & parts.keys())


def _fold(store: Store, lake: Lake, crowded: list[tuple[str, str]], bronze: increments.Increment) -> candles.Compacted:
    """Compact the partitions about to be read that hold several files into one file per granularity (one
    commit), so a run reads O(1) files however many batches the day has had."""
    recorded = candles.digests(lake.commits(BRONZE_DIR, bronze.since, bronze.version))
    try:
        done = candles.compact(store, lake, crowded, recorded, {"fold": "silver"})
    except LakeConflict as exc:  # a compaction of the same partitions won: read them as they are
        log.warning("bronze fold skipped: %s", exc)
        return candles.Compacted()
    log.info("bronze fold: %d partition(s) folded (%d files, %d rows -> %d)", done.partitions, done.files_removed,
             done.rows_in, done.rows_out)
    return done


def _add(summary: SilverSummary, counts: SilverSummary) -> None:
    for name in ("rows_in", "rows_out", "bars_1d", "duplicates", "incomplete_bars", "missing_buckets", "partitions",
                 "suspect", "accepted"):
        setattr(summary, name, getattr(summary, name) + getattr(counts, name))
    for rule, n in counts.quarantined_by_rule.items():
        summary.quarantined_by_rule[rule] += n
    for rule, n in counts.suspect_by_rule.items():
        summary.suspect_by_rule[rule] += n
    summary.bad_files += counts.bad_files


def _key(partition: tuple[str, str]) -> str:
    return f"{partition[0]}/{partition[1]}"


REACHED = tuple(-k for k in price_quality.CONTEXT_DAYS)  # the days whose quality gate reads a given day


def _shifted(partition: tuple[str, str], offsets: tuple[int, ...]) -> list[tuple[str, str]]:
    product, day = partition
    d = date.fromisoformat(day)
    return [(product, (d + timedelta(days=k)).isoformat()) for k in offsets]


def _version(partition: tuple[str, str], overrides: dict[str, pa.Table], now: datetime) -> dict:
    """What, besides its bronze files, a partition was built with: the overrides that fall on its day, and whether
    the day was not over by the build's `now` (`open`: its daily bar is the day so far, and the day is rebuilt
    once over, when finer candles that stop early no longer make its bar: price_quality.uncovered_in_daily_bars)."""
    day = _day_number(partition[1])
    is_open = {"open": True} if (day + 1) * DAY_US > int(to_utc(now).timestamp() * US) else {}
    accepted = overrides.get(partition[0])
    if accepted is None:
        return is_open
    mine = [f"{g}@{t}" for g, t in zip(accepted["granularity"].to_pylist(),
                                       accepted["bucket_start"].cast(pa.int64()).to_pylist(), strict=True)
            if t // DAY_US == day]
    return ({"overrides": mine} if mine else {}) | is_open


def _context_files(parts: dict[tuple[str, str], list[str]], product: str, days: list[str]) -> list[str]:
    """The bronze files of the days around `days` that are not among them: the gate's context."""
    around = {n for d in days for n in _shifted((product, d), price_quality.CONTEXT_DAYS)} - {(product, d) for d in days}
    return [f for k in sorted(around & parts.keys()) for f in parts[k]]


def _overrides(df: pd.DataFrame) -> dict[str, pa.Table]:
    """product -> its rows of price_overrides.csv (granularity, bucket_start, accepted_by, accepted_at, reason)."""
    return {str(p): pa.Table.from_pandas(g.drop(columns="product_id"), preserve_index=False)
            for p, g in df.groupby("product_id")}


POOL_MIN_FILES = 200  # bronze files below which starting worker processes (~1 s each) costs more than it saves


@contextmanager
def _pool(workers: int):
    """`map` over a spawn-started process pool (no fork of a process holding pyarrow's threads), or the builtin for
    1 worker; on a failure the chunks not started yet are cancelled."""
    if workers <= 1:
        yield map
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool.map
    finally:
        pool.shutdown(cancel_futures=True)


def _die_with_parent(parent: int) -> None:
    """A worker is killed when its build dies (Linux PR_SET_PDEATHSIG): a SIGKILLed build must not leave writers
    running behind it."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the build died before the call
            os._exit(1)


def _rebuild_chunk(job: tuple) -> tuple[SilverSummary, dict[str, str | None], list[str], pa.Table]:
    """One (product, month) chunk, in a worker: (its counts, the files written with their digests, the bronze paths
    that read, its own and its context's, its daily bars)."""
    store, product, days, paths, quote, now, context, overrides, digests = job
    counts = SilverSummary()
    rows, paths = _read_readable(store, paths, counts, digests, context)
    written, bars_1d = _rebuild(store, product, days, rows, paths, quote, now, counts, overrides)
    return counts, written, paths, bars_1d


def _read_readable(store: Store, paths: list[str], summary: SilverSummary, digests: dict[str, str],
                   context: list[str] = ()) -> tuple[pa.Table, list[str]]:
    """(read_bronze of `paths` then `context`, the paths read): files that do not read whole, or differ from
    their recorded digest, are quarantined and left out, a context file too (another chunk may be quarantining
    it as its own at this moment: the same copy; or its day is not rebuilt by this pass: the build runs another)."""
    every = [*paths, *context]
    if not every:
        return _BRONZE_SCHEMA.empty_table(), []
    try:
        return read_bronze(store, every, digests), every
    except (CorruptFileError, pa.ArrowException, OSError, ValueError):
        pass
    good = []
    for rel in every:
        reason = candles.readable(store, rel, digests.get(rel))
        if reason is None:
            good.append(rel)
        else:
            summary.bad_files.append(candles.set_aside(store, rel, reason))
    return (read_bronze(store, good, digests), good) if good else (_BRONZE_SCHEMA.empty_table(), [])


# ---- one (product, month) chunk --------------------------------------------------------------------------------
def _rebuild(store: Store, product: str, days: list[str], candles: pa.Table, paths: list[str], quote: str,
             now: datetime, summary: SilverSummary,
             overrides: pa.Table | None = None) -> tuple[dict[str, str | None], pa.Table]:
    """Recompute the 5-minute bars, quarantine, price-quality flags and daily bars of `days` of one product from
    all their candles (read_bronze of `paths`: every current bronze row of those days and of the days around them,
    the quality gate's context); writes the days' 5-minute, quarantine and price-quality files and returns them
    with their digests and the daily bars (the caller writes those into the product's year file)."""
    day_numbers = [_day_number(d) for d in days]
    unique = latest_per_key(candles)
    good, bad = quality.split(unique, now)
    suspect, flags = price_quality.gate(good, bad)
    flags = _decide(flags, overrides)
    excluded = np.zeros(good.num_rows, dtype=bool)
    excluded[np.flatnonzero(suspect)[flags["decision"].to_numpy(zero_copy_only=False) == price_quality.EXCLUDED]] = True
    disputed = (price_quality.disputed_in_daily_bars(good, suspect, flags, excluded)
                | price_quality.agreeing_in_daily_bars(good, suspect, flags, excluded))[~excluded]
    good = good.filter(pa.array(~excluded))
    # finer candles a fetch cut short leave the day's close to its daily candle (read with the next day: context)
    cut_short = price_quality.cut_short_in_daily_bars(good, bad)
    # ... and without such a daily candle, a finished day they do not cover has no close at all
    cut_short |= price_quality.uncovered_in_daily_bars(good, bad, int(to_utc(now).timestamp() * US))
    mine_good = _on_days(good, day_numbers)
    daily_input = good.filter(pa.array(mine_good & ~cut_short & ~disputed))
    good = good.filter(pa.array(mine_good))
    bad = bad.filter(pa.array(_on_days(bad, day_numbers)))
    flags = flags.filter(pa.array(_on_days(flags, day_numbers))) \
        .sort_by([("bucket_start", "ascending"), ("granularity", "ascending")]).cast(PRICE_QUALITY_SCHEMA)
    mine = _on_days(candles, day_numbers)
    summary.rows_in += int(mine.sum())
    summary.duplicates += int(mine.sum()) - int(_on_days(unique, day_numbers).sum())
    for rule, n in zip(*np.unique(flags["rule"].to_numpy(zero_copy_only=False), return_counts=True), strict=True):
        summary.suspect_by_rule[str(rule)] += int(n)
    summary.suspect += flags.num_rows
    summary.accepted += int((flags["decision"].to_numpy(zero_copy_only=False) == price_quality.ACCEPTED).sum())
    bad = bad.sort_by([("bucket_start", "ascending"), ("granularity", "ascending")])
    bad = bad.append_column("raw", bronze_raw(store, paths, bad["_row"]))
    for rule, n in quality.count_by_rule(bad).items():
        summary.quarantined_by_rule[rule] += n

    bars_5m = aggregate(good, 300, BAR_5M_GRANULARITIES)
    bars_1d = aggregate(daily_input, 86_400, BAR_1D_GRANULARITIES)
    written = _write_by_day(store, BARS_5M_DIR, product, days, day_numbers, _bars_5m_table(bars_5m, quote),
                             timestamps=bars_5m["bar_start"].to_numpy(), summary=summary)
    bad_ts = bad["bucket_start"].cast(TS).cast(pa.int64()).to_numpy() if bad.num_rows else np.zeros(0, np.int64)
    written |= _write_by_day(store, QUARANTINE_DIR, product, days, day_numbers, _quarantine_table(bad),
                             timestamps=bad_ts)
    written |= _write_by_day(store, PRICE_QUALITY_DIR, product, days, day_numbers, flags,
                             timestamps=flags["bucket_start"].cast(pa.int64()).to_numpy())
    summary.partitions += len(days)
    summary.bars_1d += bars_1d.num_rows
    return written, _bars_1d_table(bars_1d, quote)


def _day_number(day: str) -> int:
    return (date.fromisoformat(day) - date(1970, 1, 1)).days


def _on_days(table: pa.Table, day_numbers: list[int]) -> np.ndarray:
    """Mask of the rows whose bucket_start falls on one of the days (the others are the gate's context)."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=bool)
    return np.isin(np.floor_divide(table["bucket_start"].cast(TS).cast(pa.int64()).to_numpy(), DAY_US), day_numbers)


def _decide(flags: pa.Table, overrides: pa.Table | None) -> pa.Table:
    """The flags with `decision` (excluded, or accepted_by_override when price_overrides.csv accepts the print)
    and the override's accepted_by, accepted_at and reason."""
    n = flags.num_rows
    decision = np.full(n, price_quality.EXCLUDED, dtype=object)
    by, at, reason = np.full(n, None, dtype=object), np.full(n, None, dtype=object), np.full(n, None, dtype=object)
    if overrides is not None and n and overrides.num_rows:
        key = flags["bucket_start"].cast(pa.int64()).to_numpy()
        ov_key = overrides["bucket_start"].cast(TS).cast(pa.int64()).to_numpy()
        ov_gran, gran = overrides["granularity"].to_numpy(), flags["granularity"].to_numpy()
        for j in range(overrides.num_rows):  # a handful of overrides per product
            hit = (key == ov_key[j]) & (gran == ov_gran[j])
            decision[hit] = price_quality.ACCEPTED
            by[hit], reason[hit] = overrides["accepted_by"][j].as_py(), overrides["reason"][j].as_py()
            at[hit] = overrides["accepted_at"][j].as_py()
    return flags.append_column("decision", pa.array(decision, pa.string())) \
        .append_column("accepted_by", pa.array(by, pa.string())) \
        .append_column("accepted_at", pa.array(list(at), TS)) \
        .append_column("override_reason", pa.array(reason, pa.string()))


_BRONZE_SCHEMA = pa.schema([
    ("product_id", pa.string()), ("bucket_start", TS), ("open", pa.float64()), ("high", pa.float64()),
    ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64()), ("granularity", pa.int64()),
    ("ingested_at", TS), ("batch_id", pa.string()), ("_row", pa.int64()),
])


def read_bronze(store: Store, paths: list[str], digests: dict[str, str] | None = None) -> pa.Table:
    """BRONZE_COLUMNS of the files `paths`, in that order, plus `_row`: each row's position in the read. Files
    whose digest `digests` records are checked against it (CorruptFileError)."""
    names = set(store.dataset(BRONZE_DIR, paths).schema.names)
    table = store.read_files(BRONZE_DIR, paths, columns=[c for c in BRONZE_COLUMNS if c in names], digests=digests)
    if "ingested_at" not in names:
        table = table.append_column("ingested_at", pa.nulls(table.num_rows, TS))
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return table.select(_BRONZE_SCHEMA.names).cast(_BRONZE_SCHEMA).combine_chunks()  # one chunk: free numpy views


def bronze_raw(store: Store, paths: list[str], rows: pa.ChunkedArray) -> pa.ChunkedArray:
    """The `raw` text of the rows at positions `rows` of read_bronze(store, paths) (null where files have none)."""
    if len(rows) == 0:
        return pa.chunked_array([], pa.string())
    if "raw" not in store.dataset(BRONZE_DIR, paths).schema.names:
        return pa.chunked_array([pa.nulls(len(rows), pa.string())])
    return store.read_files(BRONZE_DIR, paths, columns=["raw"])["raw"].cast(pa.string()).take(rows)


def _bars_5m_table(bars: pa.Table, quote: str) -> pa.Table:
    return _finish(bars, "bucket_start", bars["bar_start"].cast(TS), quote, BARS_5M_SCHEMA)


def _bars_1d_table(bars: pa.Table, quote: str) -> pa.Table:
    days = pa.array(np.floor_divide(bars["bar_start"].to_numpy(), DAY_US).astype(np.int32), pa.int32())
    return _finish(bars, "price_date", days.cast(pa.date32()), quote, BARS_1D_SCHEMA)


def _finish(bars: pa.Table, time_name: str, time_col, quote: str, schema: pa.Schema) -> pa.Table:
    table = bars.drop_columns(["product_id", "bar_start"]).append_column(time_name, time_col) \
        .append_column("quote_currency", pa.array([quote] * bars.num_rows, pa.string()))
    return table.select(schema.names).cast(schema)


def _quarantine_table(bad: pa.Table) -> pa.Table:
    return bad.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)


def _write_by_day(store: Store, root: str, product: str, days: list[str], day_numbers: list[int],
                  table: pa.Table, timestamps: np.ndarray, summary: SilverSummary | None = None
                  ) -> dict[str, DataFile | None]:
    """Write one file per day (rows sorted by time), named by its digest. Returns each day's partition -> its
    file (None: the day has no rows, its old file goes)."""
    row_day = np.floor_divide(timestamps, DAY_US)
    written: dict[str, DataFile | None] = {}
    for day, number in zip(days, day_numbers, strict=True):
        lo, hi = np.searchsorted(row_day, [number, number + 1])
        values = {"product_id": product, "date": day}
        if hi == lo:
            written[partition_path(root, **values)] = None
            continue
        part = table.slice(lo, hi - lo)
        written[partition_path(root, **values)] = write_partition_file(store, root, values, part)
        if summary is not None:
            summary.rows_out += part.num_rows
            summary.incomplete_bars += int((~part["is_complete"].to_numpy(zero_copy_only=False)).sum())
            starts = timestamps[lo:hi]
            summary.missing_buckets += int(((starts[-1] - starts[0]) // (300 * US)) + 1 - len(starts))
    return written


def _write_daily(store: Store, silver: Snapshot, product: str, year: int, day_numbers: list[int],
                 table: pa.Table, full_refresh: bool) -> dict[str, DataFile | None]:
    """Replace the recomputed days inside the product's year file, keeping the other days as they were (the
    current file, checked against the digest its name carries). Returns {partition: its new file} (None: none)."""
    values = {"product_id": product, "year": str(year)}
    folder = partition_path(BARS_1D_DIR, **values)
    olds = silver.current[BARS_1D_DIR].get(folder, [])
    if not full_refresh and olds:
        try:
            old = pa.concat_tables([store.read_parquet(rel, sha256=file_digests([rel]).get(rel)).cast(BARS_1D_SCHEMA)
                                    for rel in olds])
        except (CorruptFileError, pa.ArrowException, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, CorruptFileError) else f"{type(exc).__name__}: {exc}"
            raise ValidationError(f"{store.path(olds[0])}: unreadable silver daily file ({reason}); "
                                  "an incremental run only replaces some of its days: run `python -m etl silver "
                                  "--full-refresh` to rebuild it from bronze") from None
        days = old["price_date"].cast(pa.int32()).to_numpy()
        keep = ~np.isin(days, day_numbers)
        table = pa.concat_tables([old.filter(pa.array(keep)), table])
        table = table.take(pc.sort_indices(table, [("price_date", "ascending")]))
    if table.num_rows == 0:
        return {folder: None}
    return {folder: write_partition_file(store, BARS_1D_DIR, values, table.replace_schema_metadata(None))}


def write_partition_file(store: Store, root: str, values: dict[str, str], table: pa.Table) -> DataFile:
    """Write `table` into the partition `values` of table `root` as `part-<its SHA-256>.parquet`: the digest a
    reader checks travels in the table's log with the file (the same rows give the same file: a full refresh
    that changes nothing commits nothing new)."""
    data = parquet_bytes(table)
    name = posixpath.join(partition_path("", **values), f"part-{digest(data)}.parquet")
    store.write_bytes(posixpath.join(root, name), data)
    return DataFile(name, len(data), values, table.num_rows)


def file_digests(files: Iterable[str]) -> dict[str, str]:
    """Silver file (path relative to the data root) -> the SHA-256 its name carries (files written by a build)."""
    return {f: m.group(1) for f in files if (m := _DIGEST_NAME.search(f))}


# ---- silver's commits ------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """The silver tables as a build found them: each table (None: not made yet) and its current file per
    partition folder. The build commits on top of these versions or not at all (a concurrent build: LakeConflict)."""

    lake: Lake
    tables: dict[str, DeltaTable | None]
    current: dict[str, dict[str, list[str]]]   # table -> partition folder -> its files (relative to the data root)


def _snapshot(lake: Lake) -> Snapshot:
    tables = {root: lake.table(root) for root in SILVER_TABLES}
    current: dict[str, dict[str, list[str]]] = {root: defaultdict(list) for root in SILVER_TABLES}
    for root, table in tables.items():
        for f in [] if table is None else lake.files(root, table.version()):
            current[root][posixpath.dirname(f)].append(f)
    return Snapshot(lake, tables, current)


def _load_state(silver: Snapshot) -> tuple[int | None, dict[str, dict]]:
    """(the bronze version the last build read, partition "PRODUCT/DATE" -> what else it was built with), from the
    metadata of the last commit of silver's last-written table (vacuum's own commits, which `compact` adds, and
    a retention change's, passed over); (None, {}) when that commit has none (a first build, a table adopted by migrate-lake, or a build that
    died between its tables' commits: everything is rebuilt)."""
    table = silver.tables[LAST_TABLE]
    history = table.history(limit=1 + VACUUMS_PASSED * len(NO_ROW_COMMITS)) if table is not None else []
    last = next((h for h in history if h.get("operation") not in NO_ROW_COMMITS), {})
    if SILVER_READ not in last:
        return None, {}
    where = f"{silver.lake.uri(LAST_TABLE)} version {last['version']} commit metadata {SILVER_READ!r}"
    fix = "run `python -m etl silver --full-refresh` (rebuilds every partition and records a new one)"
    try:
        raw = json.loads(last[SILVER_READ])
    except ValueError as exc:
        raise ValidationError(f"{where}: not valid JSON ({exc}); {fix}") from None
    parts = raw.get("partitions") if isinstance(raw, dict) else None
    version = raw.get(BRONZE_VERSION) if isinstance(raw, dict) else None
    if not isinstance(parts, dict) or not all(isinstance(v, dict) for v in parts.values()) \
            or not (version is None or isinstance(version, int)):
        raise ValidationError(f"{where}: expected {{\"{BRONZE_VERSION}\": N, \"partitions\": "
                              f"{{\"PRODUCT/DATE\": {{...}}}}}} (key missing or mistyped); {fix}")
    return version, parts


def _commit(store: Store, silver: Snapshot, written: dict[str, DataFile | None], full_refresh: bool,
            bronze_version: int | None, read: dict[str, dict]) -> None:
    """One commit per silver table, in SILVER_TABLES' order: the rebuilt partitions' new files, the removal of
    their previous files (and, on a full refresh, of every partition not rebuilt: no bronze behind it any more);
    the last commit records what the build read: the bronze version, and per partition `read`. Each commit is made on top of the version the
    build started from, without retry: a concurrent build that committed first makes this one fail (LakeConflict)
    before its remaining tables; the next build repairs what that left (docs/commit_protocol.md). Only the commits
    of a concurrent `compact`'s vacuum are gone over (`_past_vacuums`)."""
    build = new_run_id()
    for root in SILVER_TABLES:
        schema, key = SILVER_TABLES[root]
        mine = {folder: f for folder, f in written.items() if folder.startswith(f"{root}/")}
        new = {folder: posixpath.join(root, f.path) for folder, f in mine.items() if f is not None}
        current = silver.current[root]
        # a file of the same rows has the same name: it stays, neither added nor removed
        adds = [f for folder, f in mine.items() if f is not None and new[folder] not in current.get(folder, [])]
        removes = [rel for folder, rels in current.items() if folder in mine or full_refresh
                   for rel in rels if rel != new.get(folder)]
        last = root == LAST_TABLE
        if not (adds or removes or last):
            continue
        if silver.tables[root] is None and silver.lake.table(root) is not None:
            raise LakeConflict(f"{silver.lake.uri(root)}: another silver build made the table meanwhile; nothing of "
                               "this table was committed: rerun `python -m etl silver`")
        recorded = {BRONZE_VERSION: bronze_version, "partitions": read}
        metadata = {"silver_build": build, **({SILVER_READ: json.dumps(recorded, sort_keys=True)} if last else {})}
        table = silver.tables[root]
        while True:
            try:
                silver.lake.commit_files(root, adds, pa.schema([*schema, *(pa.field(k, pa.string()) for k in key)]),
                                         key, metadata=metadata, table=table, remove=removes, retries=0)
                break
            except LakeConflict:
                if (table := _past_vacuums(store, silver.lake, root, table, adds)) is None:
                    raise
        log.info("silver %s: %d file(s) added, %d removed", root, len(adds), len(removes))


def _past_vacuums(store: Store, lake: Lake, root: str, table: DeltaTable | None,
                  adds: list[DataFile]) -> DeltaTable | None:
    """Table `root` at its latest version when only finished vacuums committed since `table`'s (`compact`, every day
    past the retention: VACUUM START/END change no row, so the build still replaces what it read; nor does a
    retention change's SET TBLPROPERTIES, Lake.follow_retention) and the files to
    add are still there (a vacuum deletes a superseded file of the same name: the same rows, past the retention),
    else None (another build committed, or a vacuum is running: the conflict stands)."""
    latest = lake.table(root)
    if table is None or latest is None or latest.version() == table.version():
        return None
    operations = [c.get("operation") for c in lake.commits(root, table.version(), latest.version())]
    if not operations or any(op not in NO_ROW_COMMITS for op in operations):
        return None
    while operations and operations[-1] == PROPERTY_COMMIT:   # a retention change (e.g. before a vacuum)
        operations.pop()
    if operations and operations[-1] != VACUUM_COMMITS[1]:
        return None
    return latest if all(store.exists(posixpath.join(root, f.path)) for f in adds) else None


def _quote_currencies(products: set[str], reference: Reference) -> dict[str, str]:
    quotes = reference.quote_ccy
    unknown = sorted(products - set(quotes))
    if unknown:
        raise ValidationError(
            f"bronze holds product(s) {unknown} that are not in the instrument master "
            f"{reference.settings.reference_dir / 'instruments.csv'}: add a row (product_id,base_currency,quote_currency,"
            f"exchange_id,asset_class,display_name) for each, then rerun `python -m etl silver`")
    return quotes

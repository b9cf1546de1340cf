"""Bronze: fetch candles from the Exchange API (or simulator) into the Delta table `bronze/candles` (etl/candles.py).

A run (a *batch*) does, in order:
1. check its arguments and the products (unknown/delisted -> SourceError; nothing is written),
2. plan pages per product: explicit [start, end), or incremental from the watermark minus an overlap,
3. fetch pages concurrently (one shared token bucket paces them) and validate rows at the door: bad rows go to
   quarantine with a reason, never silently dropped,
4. write each (product, date) partition as soon as all its pages are in: `bronze/candles/product_id=X/date=D/
   <batch_id>-<attempt>.parquet` (atomic write; not yet part of the table),
5. write the quarantine files, then ONE Delta commit appending the batch's partition files, its metadata (batch
   id, plan, counts) and their SHA-256. Before that commit no reader sees anything of the batch.

A failed or killed batch leaves files no commit names (invisible; `vacuum` deletes them after the retention); a
retry of the same `batch_id` writes the batch again (files of its own attempt), and a retry of a committed
`batch_id` returns its recorded summary without fetching; two attempts of one `batch_id` at once commit once (the
table's app transaction, checked by `Lake.commit_files`): the other returns the committed summary. Bronze is append-only: readers deduplicate on (product_id, granularity,
bucket_start), keeping the latest ingested_at (then batch_id) - see `etl.silver.bars.latest_per_key`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from etl import candles
from etl.candles import CANDLE_SCHEMA, CANDLES_DIR, TS
from etl.errors import ConfigError
from etl.lake import DataFile, Lake, LakeConflict
from etl.orchestration.intervals import fetch_start
from etl.reference_set import Reference
from etl.settings import Settings, get_settings
from etl.source import (
    CandlePage,
    ExchangeClient,
    api_url,
    check_granularity,
    check_products,
    floor_time,
    plan_windows,
    to_utc,
)
from etl.storage import get_store, partition_path

log = logging.getLogger(__name__)

__all__ = ["CANDLES_DIR", "CANDLE_SCHEMA", "ingest", "watermark"]
QUARANTINE_DIR = "bronze/quarantine"
QUARANTINE_SCHEMA = pa.schema([
    ("granularity", pa.int64()), ("raw", pa.string()), ("reason", pa.string()), ("batch_id", pa.string()),
    ("ingested_at", TS), ("source", pa.string()), ("request_start", TS), ("request_end", TS),
])
# A page with rows that fail validation is fetched again (a glitch rarely repeats); the bad rows of every attempt
# are quarantined, and the last attempt's valid rows are kept. Candidate setting: PIPELINE_INVALID_REFETCHES.
INVALID_REFETCHES = 4


# ---- validation at the door ------------------------------------------------------------------------------------
def _arity(row: object) -> int:
    return len(row) if isinstance(row, list) else -1


_is_number = np.frompyfunc(lambda v: type(v) in (int, float), 1, 1)  # bool and numeric strings are not numbers


def _float(v: int | float) -> float:
    """A JSON number as a float. JSON integers are unbounded: one beyond float's range is infinite (the row is
    quarantined as non-finite), not an OverflowError failing the whole page."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


_as_float = np.frompyfunc(_float, 1, 1)


def validate_rows(rows: list, granularity: int, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one page's parsed rows into (good, bad).

    good: bucket_start (epoch s), open, high, low, close, volume, raw; sorted by time, only buckets in [start, end)
    (the API may return candles just outside the page: those are dropped, not quarantined; the neighbouring page
    fetches them). bad: raw, reason - wrong arity, non-numeric, non-finite, off the granularity grid, inconsistent
    OHLC, or a bucket repeated within the response (every row of a bucket whose repeats differ: which one is the
    trade is unknown; only the copies of a repeat with the same values).
    """
    n = len(rows)
    # The raw payload is text per row by definition: serialise each row once, compactly, for audit.
    raw = np.array([json.dumps(r, separators=(",", ":")) for r in rows], dtype=object)
    reason = np.full(n, "", dtype=object)
    arity = np.fromiter(map(_arity, rows), dtype=np.int64, count=n)
    shaped = arity == 6
    reason[~shaped] = "wrong arity: expected [time, low, high, open, close, volume]"

    values = np.full((n, 6), np.nan)
    idx = np.flatnonzero(shaped)
    if idx.size:
        cells = np.empty((idx.size, 6), dtype=object)
        cells[:] = [rows[i] for i in idx]
        numeric = _is_number(cells).astype(bool)
        values[idx] = _as_float(np.where(numeric, cells, np.nan)).astype(np.float64)
        bad_type = ~numeric.all(axis=1)
        reason[idx[bad_type]] = "non-numeric value"
    t, low, high, opn, close, volume = values.T
    ok = reason == ""
    with np.errstate(invalid="ignore"):
        checks = [
            (~np.isfinite(values).all(axis=1), "non-finite value (NaN or infinity)"),
            (np.mod(t, 1) != 0, "time is not a whole number of epoch seconds"),
            (np.mod(t, granularity) != 0, f"bucket start off the {granularity}s grid"),
            ((low > np.minimum(opn, close)) | (high < np.maximum(opn, close)) | (low <= 0),
             "inconsistent prices (need 0 < low <= open, close <= high)"),
            (volume < 0, "negative volume"),
        ]
    for failed, why in checks:
        hit = ok & failed
        reason[hit] = why
        ok &= ~failed
    lo, hi = start.timestamp(), end.timestamp()
    inside = ok & (t >= lo) & (t < hi)
    dup = np.zeros(n, dtype=bool)
    dup[inside] = pd.Series(t[inside]).duplicated().to_numpy()
    if dup.any():  # a bucket served twice with different values: no telling which is the trade, neither is kept
        rows_in = pd.DataFrame(values[inside])
        dup[inside] |= (rows_in.groupby(0)[[1, 2, 3, 4, 5]].transform("nunique") > 1).any(axis=1).to_numpy()
    reason[dup] = "bucket start repeated within one response"
    inside &= ~dup

    good = pd.DataFrame({"bucket_start": t[inside].astype(np.int64), "open": opn[inside], "high": high[inside],
                         "low": low[inside], "close": close[inside], "volume": volume[inside], "raw": raw[inside]})
    bad_mask = reason != ""
    bad = pd.DataFrame({"raw": raw[bad_mask], "reason": reason[bad_mask]})
    return good.sort_values("bucket_start", kind="stable").reset_index(drop=True), bad


@dataclass
class _PageResult:
    product_id: str
    candles: pa.Table        # CANDLE_SCHEMA plus a helper `_day` (days since epoch) for partitioning
    quarantined: pa.Table    # QUARANTINE_SCHEMA
    outside: int             # rows outside the page (filtered, not quarantined)


def _page_tables(page: CandlePage, batch_id: str, source: str) -> _PageResult:
    good, bad = validate_rows(page.rows, page.granularity, page.start, page.end)
    n, m = len(good), len(bad)

    def const(value, typ, k):
        return pa.array([value] * k, type=typ) if k else pa.array([], type=typ)

    common = {"batch_id": pa.string(), "ingested_at": TS, "source": pa.string(), "request_start": TS,
              "request_end": TS}
    values = {"batch_id": batch_id, "ingested_at": page.received_at, "source": source,
              "request_start": page.start, "request_end": page.end}
    epoch = good["bucket_start"].to_numpy()
    candles = pa.table({
        "bucket_start": pa.array(epoch * 1_000_000, type=pa.int64()).cast(TS),
        **{c: pa.array(good[c].to_numpy(), type=pa.float64()) for c in ("open", "high", "low", "close", "volume")},
        "granularity": const(page.granularity, pa.int64(), n),
        "raw": pa.array(good["raw"].tolist(), type=pa.string()),
        **{c: const(values[c], typ, n) for c, typ in common.items()},
        "_day": pa.array(epoch // 86400, type=pa.int64()),
    })
    quarantined = pa.table({
        "granularity": const(page.granularity, pa.int64(), m),
        "raw": pa.array(bad["raw"].tolist(), type=pa.string()),
        "reason": pa.array(bad["reason"].tolist(), type=pa.string()),
        **{c: const(values[c], typ, m) for c, typ in common.items()},
    }, schema=QUARANTINE_SCHEMA)
    outside = len(page.rows) - n - m
    return _PageResult(page.product_id, candles, quarantined, outside)


def fetch_page(client: ExchangeClient, product: str, start: datetime, end: datetime, granularity: int,
               batch_id: str, source: str) -> _PageResult:
    """One page [start, end), fetched again (up to INVALID_REFETCHES times) while a response has invalid rows.

    The bad rows of every response are quarantined. A glitch hits different rows in different responses, so each
    bucket keeps its valid row from the latest response that had one: a row broken only in the last response is
    not lost.
    """
    attempts: list[_PageResult] = []
    for attempt in range(INVALID_REFETCHES + 1):
        result = _page_tables(client.candles(product, start, end, granularity), batch_id, source)
        attempts.append(result)
        if result.quarantined.num_rows == 0:
            break
        if attempt < INVALID_REFETCHES:
            client.stats.add(retries=1)
            log.info("%s [%s, %s): %d invalid rows, fetching the page again", product, start, end,
                     result.quarantined.num_rows)
    if len(attempts) == 1:
        return result
    newest_first = pa.concat_tables([a.candles for a in reversed(attempts)])
    _, first = np.unique(newest_first["bucket_start"].cast(pa.int64()).to_numpy(), return_index=True)
    return _PageResult(product, newest_first.take(pa.array(first)),  # np.unique sorts by bucket_start
                       pa.concat_tables([a.quarantined for a in attempts]), result.outside)


# ---- summary ---------------------------------------------------------------------------------------------------
@dataclass
class IngestSummary:
    batch_id: str
    products: list[str]
    granularity: int
    window: tuple[datetime, datetime] | None       # overall [start, end) across products (None: nothing to fetch)
    requests: int = 0                              # HTTP requests sent, retries included
    retries: int = 0
    http_429: int = 0
    candles: int = 0                               # valid candles written
    quarantined: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)                       # data files, relative to the data root
    partitions: list[tuple[str, date]] = field(default_factory=list)      # (product_id, UTC date) written
    source: str = ""
    pages: int = 0
    version: int | None = None                     # the bronze table version its commit made

    def __str__(self) -> str:
        if self.window:
            span = f"[{self.window[0]:%Y-%m-%d %H:%M}, {self.window[1]:%Y-%m-%d %H:%M}) UTC"
        else:
            span = "nothing to fetch (already up to date)"
        rate = self.candles / self.seconds if self.seconds > 0 else 0.0
        return "\n".join([
            f"ingest {self.batch_id}: {', '.join(self.products)} at {self.granularity}s from {self.source}, {span}",
            f"  requests {self.requests} ({self.pages} pages), retries {self.retries}, HTTP 429 {self.http_429}",
            f"  candles {self.candles}, quarantined {self.quarantined}, "
            f"{len(self.files)} files in {len(self.partitions)} partitions",
            f"  {self.seconds:.1f} s ({rate:,.0f} candles/s)",
        ])


# ---- watermark ------------------------------------------------------------------------------------------------
def watermark(product: str, granularity: int, settings: Settings | None = None,
              oldest: bool = False) -> datetime | None:
    """Newest (`oldest`: oldest) bucket_start of `product` at `granularity` in the latest version of bronze; None if
    none. Reads the product's newest (oldest) partition first and stops at the first that holds the granularity."""
    store = get_store(settings)
    lake = Lake.of(store, settings)
    parts = candles.by_partition(candles.files(lake, products=[product]))
    for key in sorted(parts, reverse=not oldest):
        table = store.read_files(CANDLES_DIR, parts[key], columns=["bucket_start", "granularity"])
        table = table.filter(pc.equal(table["granularity"], granularity))
        if table.num_rows:
            return (pc.min if oldest else pc.max)(table["bucket_start"]).as_py()
    return None


# ---- ingest ----------------------------------------------------------------------------------------------------
def new_batch_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique across hosts: 20260131T120000Z-1a2b3c4d."""
    return f"{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _days(start: datetime, end: datetime, granularity: int) -> list[int]:
    """Days since epoch touched by the buckets starting in [start, end)."""
    first = int(start.timestamp()) // 86400
    last = (int(end.timestamp()) - granularity) // 86400
    return list(range(first, last + 1))


def _day_to_date(day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day)


def _plan(products: list[str], start: datetime | None, end: datetime, granularity: int,
          settings: Settings) -> dict[str, list[tuple[datetime, datetime]]]:
    plans = {}
    for product in products:
        p_start = start
        if p_start is None:
            mark = watermark(product, granularity, settings)
            p_start = fetch_start(mark, end, granularity, settings)
            log.info("%s %ss: watermark %s -> start %s", product, granularity, mark, p_start)
        plans[product] = plan_windows(p_start, end, granularity)
    return plans


def _resolve_window(start: datetime | None, end: datetime | None, granularity: int,
                    now: datetime) -> tuple[datetime | None, datetime]:
    """Check the requested range; `end` is exclusive and clamped to the newest complete bucket."""
    newest = floor_time(now, granularity)  # buckets starting before this are complete
    start = to_utc(start) if start else None
    end = to_utc(end) if end else None
    if start and end and start >= end:
        raise ConfigError(f"start {start:%Y-%m-%dT%H:%M:%SZ} is not before end {end:%Y-%m-%dT%H:%M:%SZ}: "
                          "pass --start earlier than --end")
    if start and start >= newest:
        raise ConfigError(f"start {start:%Y-%m-%dT%H:%M:%SZ} is in the future (newest complete {granularity}s bucket "
                          f"starts before {newest:%Y-%m-%dT%H:%M:%SZ}): pass a start in the past")
    if end is None or end > newest:
        if end is not None:
            log.warning("end %s is after the newest complete bucket; clamped to %s", end, newest)
        end = newest
    return start, end

def ingest(products: list[str] | None = None, start: datetime | None = None, end: datetime | None = None,
           granularity: int | None = None, source: str | None = None, settings: Settings | None = None,
           progress: bool = False, now: datetime | None = None, batch_id: str | None = None,
           on_page: Callable[[int, int, int], None] | None = None,
           reference: Reference | None = None) -> IngestSummary:
    """Fetch candles for `products` into bronze; see the module docstring and docs/bronze.md.

    start/end: [start, end) on bucket starts; start=None continues from each product's watermark minus
    settings.overlap_minutes (first run: settings.history_days back, daily_history_days for 86400 s candles).
    end=None means `now` floored to the granularity: only complete candles land. Passing the batch_id of a
    finished batch returns its recorded summary without fetching again (idempotent task retries).
    `on_page(pages_done, pages_total, candles)` is called after each page (task logs report progress with it).
    `reference`: the run's reference data, read only when `products` is not given (etl.reference_set).
    """
    t0 = time.perf_counter()
    settings = settings or get_settings()
    store = get_store(settings)
    source = (source or settings.source).lower()
    url = api_url(source, settings)
    granularity = check_granularity(settings.granularity if granularity is None else granularity)
    products = list(dict.fromkeys(p.strip().upper()
                                  for p in (products or Reference.of(reference, settings).products_to_ingest())
                                  if p.strip()))
    if not products:
        raise ConfigError("no products to ingest: pass --products, set PIPELINE_PRODUCTS or add positions")
    lake = Lake.of(store, settings)
    if batch_id and (done := candles.batch(lake, batch_id)) is not None:
        log.info("batch %s already committed (version %s): nothing to do", batch_id, done["version"])
        return _summary_from_commit(done)
    now = to_utc(now) if now else datetime.now(UTC)
    start, end = _resolve_window(start, end, granularity, now)

    client = ExchangeClient(url, settings)
    check_products(client, products)  # unknown / delisted -> SourceError, before anything is written
    plans = _plan(products, start, end, granularity, settings)
    batch_id = batch_id or new_batch_id()
    attempt = uuid.uuid4().hex[:8]   # its files are this attempt's: a concurrent retry never rewrites committed bytes
    tasks = [(p, s, e) for p in products for s, e in plans[p]]
    summary = IngestSummary(batch_id, products, granularity, None, source=source, pages=len(tasks))
    if tasks:
        summary.window = (min(s for _, s, _ in tasks), max(e for _, _, e in tasks))

    pending = Counter((p, d) for p, s, e in tasks for d in _days(s, e, granularity))
    buffers: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
    quarantined: dict[str, list[pa.Table]] = defaultdict(list)
    written: list[DataFile] = []
    newest: dict[str, datetime] = {}

    def flush(product: str, day: int) -> None:
        parts = buffers.pop((product, day), [])
        table = pa.concat_tables(parts) if parts else None
        if table is None or table.num_rows == 0:
            return
        table = table.drop_columns(["_day"]).sort_by("bucket_start").cast(CANDLE_SCHEMA)
        on = _day_to_date(day)
        written.append(candles.write_file(store, product, on.isoformat(), f"{batch_id}-{attempt}.parquet",
                                         table))
        summary.partitions.append((product, on))
        summary.candles += table.num_rows
        top = pc.max(table["bucket_start"]).as_py()
        newest[product] = max(newest.get(product, top), top)

    outside = 0
    pool = ThreadPoolExecutor(max_workers=max(1, settings.max_workers), thread_name_prefix="ingest")
    try:
        futures = {pool.submit(fetch_page, client, p, s, e, granularity, batch_id, source): (p, s, e)
                   for p, s, e in tasks}
        with tqdm(total=len(tasks), unit="page", desc=f"ingest {granularity}s", disable=not progress) as bar:
            for fut in as_completed(futures):
                product, s, e = futures.pop(fut)  # drop the reference: memory stays bounded
                result = fut.result()  # a page that exhausted its retries raises SourceError here
                outside += result.outside
                if result.quarantined.num_rows:
                    quarantined[product].append(result.quarantined)
                days = result.candles["_day"]
                for day in _days(s, e, granularity):
                    part = result.candles.filter(pc.equal(days, day))
                    if part.num_rows:
                        buffers[(product, day)].append(part)
                    pending[(product, day)] -= 1
                    if pending[(product, day)] == 0:
                        flush(product, day)
                bar.update(1)
                if on_page is not None:
                    on_page(len(tasks) - len(futures), len(tasks), result.candles.num_rows)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        log.error("batch %s stopped before its commit: nothing of it is in bronze (%d files written stay "
                  "uncommitted, deleted by vacuum); rerun the ingest", batch_id, len(written))
        raise
    pool.shutdown(wait=True)
    summary.files = sorted(f"{CANDLES_DIR}/{f.path}" for f in written)
    summary.partitions.sort()

    quarantine_files = []
    for product, tables in sorted(quarantined.items()):
        table = pa.concat_tables(tables)
        summary.quarantined += table.num_rows
        rel = f"{partition_path(QUARANTINE_DIR, product_id=product)}/{batch_id}.parquet"
        store.write_parquet(rel, table)
        quarantine_files.append(rel)
        reasons = Counter(table["reason"].to_pylist())
        log.warning("batch %s: %d %s rows quarantined (%s) -> %s", batch_id, table.num_rows, product,
                    ", ".join(f"{r}: {n}" for r, n in reasons.most_common()), rel)

    stats = client.stats
    summary.requests, summary.retries, summary.http_429 = stats.requests, stats.retries, stats.http_429
    summary.seconds = time.perf_counter() - t0
    plan = {"source": source, "api_url": url, "granularity": granularity, "products": products,
            "window": [summary.window[0].isoformat(), summary.window[1].isoformat()] if summary.window else None,
            "product_windows": {p: [w[0][0].isoformat(), w[-1][1].isoformat()] for p, w in plans.items() if w},
            "quarantine_files": quarantine_files, "max_bucket_start": {p: t.isoformat() for p, t in newest.items()}}
    counts = {"quarantined": summary.quarantined, "candles": summary.candles, "pages": len(tasks),
              "outside_page_rows": outside, "requests": summary.requests, "retries": summary.retries,
              "http_429": summary.http_429, "seconds": round(summary.seconds, 3)}
    # the commit point: one Delta commit appends every partition file of the batch
    try:
        summary.version = candles.commit(store, lake, written, {candles.BATCH_ID: batch_id, "plan": json.dumps(plan),
                                                                "counts": json.dumps(counts)})
    except LakeConflict:
        if (done := candles.batch(lake, batch_id)) is None:
            raise
        log.warning("batch %s was committed by a concurrent attempt (version %s): this attempt's %d files stay "
                    "uncommitted (deleted by vacuum)", batch_id, done["version"], len(written))
        return _summary_from_commit(done)
    log.info("batch %s committed (bronze version %d): %d candles, %d quarantined, %d requests (%d retries, "
             "%d HTTP 429), %.1f s", batch_id, summary.version, summary.candles, summary.quarantined,
             summary.requests, summary.retries, summary.http_429, summary.seconds)
    return summary


def _summary_from_commit(c: dict) -> IngestSummary:
    plan, counts = json.loads(c.get("plan") or "{}"), json.loads(c.get("counts") or "{}")
    window = tuple(datetime.fromisoformat(x) for x in plan["window"]) if plan.get("window") else None
    files = sorted(json.loads(c.get(candles.SHA256) or "{}"))
    return IngestSummary(
        batch_id=c[candles.BATCH_ID], products=list(plan.get("products", [])),
        granularity=int(plan.get("granularity", 0)),
        window=window, requests=counts.get("requests", 0), retries=counts.get("retries", 0),
        http_429=counts.get("http_429", 0), candles=counts.get("candles", 0),
        quarantined=counts.get("quarantined", 0), seconds=counts.get("seconds", 0.0), files=files,
        partitions=sorted((p, date.fromisoformat(d)) for p, d in filter(None, map(candles.partition_of, files))),
        source=plan.get("source", ""), pages=counts.get("pages", 0), version=c["version"])

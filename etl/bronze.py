"""Bronze: fetch candles from the Exchange API (or simulator) into immutable, hive-partitioned Parquet.

A run (a *batch*) does, in order:
1. check its arguments and the products (unknown/delisted -> SourceError; nothing is written),
2. plan pages per product: explicit [start, end), or incremental from the watermark minus an overlap,
3. fetch pages concurrently (one shared token bucket paces them) and validate rows at the door: bad rows go to
   quarantine with a reason, never silently dropped,
4. write each (product, date) partition as soon as all its pages are in: `bronze/candles/product_id=X/date=D/
   <batch_id>.parquet` (atomic: temp name, then rename),
5. write the quarantine files, then the manifest `bronze/_manifests/<batch_id>.json` last. A batch without a
   manifest did not finish: its files are valid data (readers may see them), but the watermark ignores them, so
   the next incremental run re-fetches that range.

Resume: before fetching, a batch writes its plan to `bronze/_pending/<batch_id>.json` (and spools quarantined
rows under `bronze/_pending/<batch_id>/`). A rerun with the same source, granularity and products takes over an
abandoned pending batch: it keeps that batch id, reuses every partition file whose pages it would fetch again
(same pages: the file is complete for them), deletes the batch's other files, and fetches only the rest. Older
abandoned batches of the same key are deleted. The pending record goes once the manifest is written.

Bronze is append-only: readers deduplicate on (product_id, granularity, bucket_start), keeping the latest
ingested_at (then batch_id) - see `etl.silver.bars.latest_per_key`.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
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
import pyarrow.fs as pafs
from tqdm import tqdm

from etl.errors import ConfigError
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
from etl.storage import Store, get_store, partition_path

log = logging.getLogger(__name__)

CANDLES_DIR = "bronze/candles"
QUARANTINE_DIR = "bronze/quarantine"
MANIFEST_DIR = "bronze/_manifests"
PENDING_DIR = "bronze/_pending"   # <batch_id>.json: the plan of a batch being written; <batch_id>/: its spool
# A pending batch is abandoned (its rerun takes it over) when its process is gone (same host) or its heartbeat is
# older than this (another host). Heartbeats are written at most every PENDING_HEARTBEAT_S while fetching.
PENDING_STALE_S = 900
PENDING_HEARTBEAT_S = 30
TS = pa.timestamp("us", tz="UTC")

CANDLE_SCHEMA = pa.schema([
    ("bucket_start", TS), ("open", pa.float64()), ("high", pa.float64()), ("low", pa.float64()),
    ("close", pa.float64()), ("volume", pa.float64()), ("granularity", pa.int64()), ("raw", pa.string()),
    ("batch_id", pa.string()), ("ingested_at", TS), ("source", pa.string()),
    ("request_start", TS), ("request_end", TS),
])
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


def validate_rows(rows: list, granularity: int, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split one page's parsed rows into (good, bad).

    good: bucket_start (epoch s), open, high, low, close, volume, raw; sorted by time, only buckets in [start, end)
    (the API may return candles just outside the page: those are dropped, not quarantined; the neighbouring page
    fetches them). bad: raw, reason - wrong arity, non-numeric, non-finite, off the granularity grid, inconsistent
    OHLC, or a bucket repeated within the response.
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
        values[idx] = np.where(numeric, cells, np.nan).astype(np.float64)
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
    manifest: str = ""
    reused: int = 0                                # partition files taken over from an abandoned run of the batch

    def __str__(self) -> str:
        if self.window:
            span = f"[{self.window[0]:%Y-%m-%d %H:%M}, {self.window[1]:%Y-%m-%d %H:%M}) UTC"
        else:
            span = "nothing to fetch (already up to date)"
        rate = self.candles / self.seconds if self.seconds > 0 else 0.0
        return "\n".join([
            f"ingest {self.batch_id}: {', '.join(self.products)} at {self.granularity}s from {self.source}, {span}",
            f"  requests {self.requests} ({self.pages} pages), retries {self.retries}, HTTP 429 {self.http_429}"
            + (f", {self.reused} partition files reused from an interrupted run" if self.reused else ""),
            f"  candles {self.candles}, quarantined {self.quarantined}, "
            f"{len(self.files)} files in {len(self.partitions)} partitions",
            f"  {self.seconds:.1f} s ({rate:,.0f} candles/s)",
        ])


# ---- watermark ------------------------------------------------------------------------------------------------
def watermark(product: str, granularity: int, settings: Settings | None = None) -> datetime | None:
    """Newest bucket_start of `product` at `granularity` in the current version of bronze (finished batches and
    compacted files, etl.compaction); None if none."""
    from etl import compaction

    store = get_store(settings)
    base = partition_path(CANDLES_DIR, product_id=product.upper())
    committed = compaction.committed_batches(store)
    parts = compaction.scan(store, base)
    for key in sorted(parts, reverse=True):
        files = compaction.current_files(store, parts[key], committed)
        if not files:
            continue
        table = store.read_files(CANDLES_DIR, files, columns=["bucket_start", "granularity"])
        table = table.filter(pc.equal(table["granularity"], granularity))
        if table.num_rows:
            return pc.max(table["bucket_start"]).as_py()
    return None


# ---- resume: pending batches -----------------------------------------------------------------------------------
def _pending_key(record: dict) -> tuple:
    return record.get("api_url"), record.get("granularity"), tuple(record.get("products") or ())


def _pending_records(store: Store) -> list[dict]:
    """Every readable pending record, newest batch first (the folder is hidden, so it is listed directly)."""
    base = store.path(PENDING_DIR)
    if store.fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    out = []
    for info in store.fs.get_file_info(pafs.FileSelector(base)):
        name = info.base_name
        if info.type != pafs.FileType.File or not name.endswith(".json") or name.startswith("."):
            continue
        try:
            record = store.read_json(f"{PENDING_DIR}/{name}")
        except (OSError, ValueError):
            log.warning("unreadable pending record %s: ignored", info.path)
            continue
        if isinstance(record, dict) and record.get("batch_id") == name[:-5]:
            out.append(record)
    return sorted(out, key=lambda r: r["batch_id"], reverse=True)


def _abandoned(record: dict, now: float) -> bool:
    """Its writer is gone: a dead process on this host, or no heartbeat for PENDING_STALE_S."""
    if record.get("host") == socket.gethostname() and isinstance(record.get("pid"), int):
        if record["pid"] == os.getpid():
            return True  # an earlier attempt in this very process (an in-process retry)
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return now - float(record.get("heartbeat", 0)) > PENDING_STALE_S


def _page_days(pages: list[tuple[int, int]], granularity: int) -> dict[int, set[tuple[int, int]]]:
    """day -> the pages (epoch start, end) that touch it."""
    out: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for s, e in pages:
        for day in range(s // 86400, (e - granularity) // 86400 + 1):
            out[day].add((s, e))
    return out


def _batch_files(store: Store, record: dict) -> dict[tuple[str, int], str]:
    """(product, day) -> the batch's partition file, for each partition its plan touches that holds one.
    Temp files the batch left behind (a kill mid-write) are deleted on the way."""
    found = {}
    batch_id, granularity = record["batch_id"], int(record["granularity"])
    for product, pages in (record.get("pages") or {}).items():
        for day in _page_days([tuple(p) for p in pages], granularity):
            folder = partition_path(CANDLES_DIR, product_id=product, date=_day_to_date(day).isoformat())
            base = store.path(folder)
            if store.fs.get_file_info(base).type != pafs.FileType.Directory:
                continue
            for info in store.fs.get_file_info(pafs.FileSelector(base)):
                if info.base_name == f"{batch_id}.parquet":
                    found[(product, day)] = f"{folder}/{info.base_name}"
                elif info.base_name.startswith(".tmp-") and info.base_name.endswith(f"-{batch_id}.parquet"):
                    store.fs.delete_file(info.path)
    return found


def _spooled(store: Store, spool: str) -> dict[str, list[str]]:
    """product -> the quarantine spool files of a pending batch."""
    out: dict[str, list[str]] = defaultdict(list)
    base = store.path(spool)
    if store.fs.get_file_info(base).type != pafs.FileType.Directory:
        return out
    for info in store.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") and not info.base_name.startswith("."):
            rel = posixpath.relpath(info.path, store.root)
            out[rel.split("/")[-2]].append(rel)
    return {p: sorted(r) for p, r in out.items()}


def _discard_pending(store: Store, record: dict) -> None:
    """Delete an abandoned batch: its partition files, its spool, then its record."""
    files = _batch_files(store, record)
    for rel in files.values():
        store.delete(rel)
    store.delete(f"{PENDING_DIR}/{record['batch_id']}")
    store.delete(f"{PENDING_DIR}/{record['batch_id']}.json")
    log.info("abandoned batch %s deleted: %d orphan files", record["batch_id"], len(files))


def _take_over(store: Store, record: dict, batch_id: str | None, now: float) -> tuple[str, dict, list[dict]]:
    """Pick this run's batch id and the partition files it reuses from an abandoned run.

    The base is the pending batch of the id asked for, else the newest abandoned one of the same key (API URL,
    granularity, products). Its partition file for a product-day is reused when the new plan has exactly the
    pages touching that day that the old plan had (the file was written once all of them were in); its other
    files are deleted. Returns (batch_id, reused {(product, day): rel}, the other abandoned records of the key).
    A finished batch's leftover record (a kill between manifest and cleanup) is only removed.
    """
    key = _pending_key(record)
    base, same = None, []
    for old in _pending_records(store):
        if store.exists(f"{MANIFEST_DIR}/{old['batch_id']}.json"):
            store.delete(f"{PENDING_DIR}/{old['batch_id']}.json")
            continue
        if old["batch_id"] == batch_id:
            # the orchestrator retries a task only once its attempt ended: another host's record of this id is
            # a dead attempt; on this host a live pid means a concurrent run of the same id
            if old.get("host") == socket.gethostname() and not _abandoned(old, now):
                raise ConfigError(f"batch {batch_id} is being written by pid {old.get('pid')} on "
                                  f"{old.get('host')}; wait for it or pass another batch id")
            base = old
        elif _pending_key(old) == key and _abandoned(old, now):
            same.append(old)
    if base is None and batch_id is None and same:
        base = same.pop(0)
    if base is None:
        return batch_id or new_batch_id(), {}, same
    granularity = int(record["granularity"])
    reused = {}
    for (product, day), rel in _batch_files(store, base).items():
        new_pages = _page_days([tuple(p) for p in record["pages"].get(product, [])], granularity).get(day)
        old_pages = _page_days([tuple(p) for p in base["pages"].get(product, [])], int(base["granularity"]))[day]
        if int(base["granularity"]) == granularity and old_pages == new_pages:
            reused[(product, day)] = rel
        else:
            store.delete(rel)  # not complete for this plan: fetched again
    log.info("taking over abandoned batch %s: %d partition files reused", base["batch_id"], len(reused))
    return base["batch_id"], reused, same


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
    if batch_id and store.exists(f"{MANIFEST_DIR}/{batch_id}.json"):
        log.info("batch %s already finished: nothing to do", batch_id)
        return _summary_from_manifest(store.read_json(f"{MANIFEST_DIR}/{batch_id}.json"))
    now = to_utc(now) if now else datetime.now(UTC)
    start, end = _resolve_window(start, end, granularity, now)

    client = ExchangeClient(url, settings)
    check_products(client, products)  # unknown / delisted -> SourceError, before anything is written
    plans = _plan(products, start, end, granularity, settings)
    record = {"api_url": url, "source": source, "granularity": granularity, "products": products,
              "pages": {p: [[int(s.timestamp()), int(e.timestamp())] for s, e in w] for p, w in plans.items()},
              "host": socket.gethostname(), "pid": os.getpid()}
    batch_id, reused, stale = _take_over(store, record, batch_id, time.time())
    for old in stale:
        _discard_pending(store, old)
    record["batch_id"] = batch_id
    pending_rel, spool = f"{PENDING_DIR}/{batch_id}.json", f"{PENDING_DIR}/{batch_id}"
    beat = [0.0]

    def heartbeat(force: bool = False) -> None:
        if force or time.time() - beat[0] >= PENDING_HEARTBEAT_S:
            beat[0] = record["heartbeat"] = time.time()
            store.write_json(pending_rel, record)

    heartbeat(force=True)  # the plan is on disk before any data file: a rerun can take the batch over
    planned = [(p, s, e) for p in products for s, e in plans[p]]
    tasks = [(p, s, e) for p, s, e in planned if not all((p, d) in reused for d in _days(s, e, granularity))]
    summary = IngestSummary(batch_id, products, granularity, None, source=source, pages=len(planned),
                            reused=len(reused))
    if planned:
        summary.window = (min(s for _, s, _ in planned), max(e for _, _, e in planned))

    pending = Counter((p, d) for p, s, e in tasks for d in _days(s, e, granularity) if (p, d) not in reused)
    buffers: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
    newest: dict[str, datetime] = {}
    rows_written: list[dict] = []

    def written(product: str, day: int, rel: str, table: pa.Table) -> None:
        summary.files.append(rel)
        summary.partitions.append((product, _day_to_date(day)))
        rows_written.append({"product_id": product, "date": _day_to_date(day).isoformat(), "rows": table.num_rows})
        summary.candles += table.num_rows
        top = pc.max(table["bucket_start"]).as_py()
        newest[product] = max(newest.get(product, top), top)

    for (product, day), rel in sorted(reused.items()):
        written(product, day, rel, store.read_parquet(rel, columns=["bucket_start"]))

    def flush(product: str, day: int) -> None:
        parts = buffers.pop((product, day), [])
        table = pa.concat_tables(parts) if parts else None
        if table is None or table.num_rows == 0:
            return
        table = table.drop_columns(["_day"]).sort_by("bucket_start").cast(CANDLE_SCHEMA)
        on = _day_to_date(day)
        rel = f"{partition_path(CANDLES_DIR, product_id=product, date=on.isoformat())}/{batch_id}.parquet"
        store.write_parquet(rel, table)
        written(product, day, rel, table)
        heartbeat()

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
                if result.quarantined.num_rows:  # spooled at once: a rerun that reuses the page keeps them
                    store.write_parquet(f"{spool}/{product}/{uuid.uuid4().hex}.parquet", result.quarantined)
                days = result.candles["_day"]
                for day in _days(s, e, granularity):
                    if (product, day) in reused:
                        continue
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
        log.error("batch %s stopped; %d files written stay uncommitted (no manifest) until a rerun takes the "
                  "batch over", batch_id, len(summary.files))
        raise
    pool.shutdown(wait=True)
    summary.files.sort()
    summary.partitions.sort()
    rows_written.sort(key=lambda r: (r["product_id"], r["date"]))

    quarantine_files = []
    for product, parts in sorted(_spooled(store, spool).items()):
        table = pa.concat_tables([store.read_parquet(rel) for rel in parts])
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
    manifest = {
        "batch_id": batch_id, "created_at": datetime.now(UTC).isoformat(), "source": source, "api_url": url,
        "granularity": granularity, "products": products,
        "window": [summary.window[0].isoformat(), summary.window[1].isoformat()] if summary.window else None,
        "product_windows": {p: [w[0][0].isoformat(), w[-1][1].isoformat()] for p, w in plans.items() if w},
        "files": summary.files, "partitions": rows_written, "quarantine_files": quarantine_files,
        "sha256": {rel: store.digest(rel) for rel in summary.files},  # content hashes: silver checks them
        "quarantined": summary.quarantined, "candles": summary.candles, "pages": len(tasks),
        "outside_page_rows": outside, "requests": summary.requests, "retries": summary.retries,
        "http_429": summary.http_429, "seconds": round(summary.seconds, 3), "reused_files": summary.reused,
        "max_bucket_start": {p: t.isoformat() for p, t in newest.items()},
    }
    summary.manifest = f"{MANIFEST_DIR}/{batch_id}.json"
    store.write_json(summary.manifest, manifest)  # last: the batch is committed once this exists
    store.delete(spool)
    store.delete(pending_rel)
    log.info("batch %s committed: %d candles, %d quarantined, %d requests (%d retries, %d HTTP 429), %.1f s",
             batch_id, summary.candles, summary.quarantined, summary.requests, summary.retries, summary.http_429,
             summary.seconds)
    return summary


def _summary_from_manifest(m: dict) -> IngestSummary:
    window = tuple(datetime.fromisoformat(x) for x in m["window"]) if m.get("window") else None
    return IngestSummary(
        batch_id=m["batch_id"], products=list(m["products"]), granularity=int(m["granularity"]), window=window,
        requests=m.get("requests", 0), retries=m.get("retries", 0), http_429=m.get("http_429", 0),
        candles=m.get("candles", 0), quarantined=m.get("quarantined", 0), seconds=m.get("seconds", 0.0),
        files=list(m.get("files", [])),
        partitions=[(p["product_id"], date.fromisoformat(p["date"])) for p in m.get("partitions", [])],
        source=m.get("source", ""), pages=m.get("pages", 0), manifest=f"{MANIFEST_DIR}/{m['batch_id']}.json",
        reused=m.get("reused_files", 0),
    )

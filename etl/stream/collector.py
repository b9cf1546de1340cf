"""`python -m etl stream`: Coinbase's live trades, tickers and order books into bronze, as atomic Parquet
micro-batches.

The collector is a long-lived service (not an Airflow task). One asyncio loop runs three tasks:
- the `Feed` (etl/stream/feed.py) receives messages, reconnecting as needed; each message is split into rows of
  the open `MicroBatch` at once (trades per trade, tickers per ticker, each field as received plus the envelope),
  feed gaps become rows too, and text that cannot be read or breaks a field rule (etl/stream/validate.py) is
  kept as a reject row with its reason, never as a partition: nothing received is dropped; `level2` messages
  update the books of etl/stream/book.py instead (a sequence gap resubscribes `level2` for a fresh snapshot and
  is recorded as a `book_resync` gap),
- the book snapshotter adds the top `stream_book_depth` levels of every valid book to the open batch every
  `stream_book_snapshot_s` seconds (bronze/order_book),
- the committer swaps the open batch for a new one every `stream_commit_s` seconds and hands the full one to the
  sink in a worker thread (so receiving never waits on the disk); the sink writes each file atomically.
SIGTERM or SIGINT (or `--seconds`) stops the feed, commits the open batch and prints the summary; a SIGKILL
loses only the rows of the batch still open (at most one commit interval), and no partial file is ever visible.
Downstream deduplicates trades by (product_id, trade_id): a reconnect's snapshot and duplicated messages repeat
trades on purpose.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from etl.settings import Settings, get_settings, parse_products
from etl.stream import validate
from etl.stream.book import Books
from etl.stream.feed import CHANNELS, Feed, Gap, ws_url
from etl.stream.sinks import TICKER_FIELDS, TRADE_FIELDS, BronzeSink, MicroBatch, Sink

log = logging.getLogger(__name__)

_TRADE_KNOWN = frozenset((*TRADE_FIELDS, "product_id"))
_TICKER_KNOWN = frozenset((*TICKER_FIELDS, "product_id"))


@dataclass
class StreamSummary:
    url: str
    products: list[str]
    seconds: float = 0.0
    connections: int = 0
    messages: int = 0
    trades: int = 0
    tickers: int = 0
    heartbeats: int = 0
    book_messages: int = 0
    rejects: int = 0
    gaps: Counter = field(default_factory=Counter)   # kind -> count
    missing: int = 0                                  # messages lost according to sequence_num
    batches: int = 0
    files: int = 0
    committed: Counter = field(default_factory=Counter)  # table -> rows committed
    first_received_at: float = 0.0                    # epoch seconds of the first and last message
    last_received_at: float = 0.0

    def __str__(self) -> str:
        gaps = ", ".join(f"{k} {v}" for k, v in sorted(self.gaps.items())) or "none"
        rate = self.messages / self.seconds if self.seconds else 0.0
        return "\n".join([
            f"stream {self.url}: {', '.join(self.products)} for {self.seconds:.1f}s, {self.connections} connection(s)",
            f"  messages {self.messages:,} ({rate:,.0f}/s): trades {self.trades:,}, tickers {self.tickers:,}, "
            f"heartbeats {self.heartbeats:,}, order book {self.book_messages:,}, rejected {self.rejects:,}",
            f"  gaps: {gaps}; messages missing by sequence_num {self.missing:,}",
            f"  committed {self.batches} batch(es), {self.files} file(s): trades {self.committed['trades']:,}, "
            f"tickers {self.committed['ticker']:,}, book levels {self.committed['book']:,}, "
            f"gaps {self.committed['gaps']:,}",
        ])


def _text(value) -> str | None:
    """A field as received, as text (strings unchanged; numbers and objects as their JSON)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _day(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%d")


class Collector:
    """Messages -> rows of the open micro-batch; `commit()` hands the batch to the sink."""

    def __init__(self, sink: Sink, summary: StreamSummary, resubscribe=None):
        self.sink, self.summary = sink, summary
        self.resubscribe = resubscribe    # channel -> coroutine: a fresh snapshot (Feed.resubscribe)
        self.books = Books()
        self.session = uuid.uuid4().hex[:8]
        self.counter = 0
        self.batch = self._new_batch()
        self.pending: list[MicroBatch] = []   # batches a failed write kept, oldest first (see commit)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-commit")
        self._window: tuple[int, tuple[str, str]] = (-1, ("", ""))   # (second, validate.window of it)
        self._book_seq: tuple[str, int] = ("", -1)   # (connection, sequence_num) of the last l2_data message applied

    def _new_batch(self) -> MicroBatch:
        self.counter += 1
        return MicroBatch(f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{self.session}-{self.counter:06d}")

    # ---- rows ----------------------------------------------------------------------------------------------
    def on_message(self, received_at: float, conn_id: str, msg: dict) -> None:
        s = self.summary
        s.messages += 1
        s.last_received_at = received_at
        if not s.first_received_at:
            s.first_received_at = received_at
        channel = msg.get("channel")
        if channel == "heartbeats":
            s.heartbeats += 1
            return
        if channel not in ("market_trades", "ticker", "ticker_batch", "l2_data"):
            return  # subscriptions confirmations, errors: logged by the feed
        bounds = self._bounds(received_at)
        seq = validate.message_number(msg.get("sequence_num"))   # None: the message is rejected below
        problem = validate.envelope_problem(msg, bounds)
        if problem:
            self.on_reject(received_at, conn_id, json.dumps(msg), problem)
            if channel == "l2_data":
                self._resync(received_at, conn_id, f"rejected l2_data message: {problem}")
            elif channel == "market_trades":
                self._trade_lost(received_at, conn_id, seq, problem)
            return
        if channel == "l2_data":
            self._on_book(received_at, conn_id, msg, bounds)
            return
        envelope = (_text(channel), msg["timestamp"], _text(msg.get("client_id")), seq, conn_id, received_at)
        trades = channel == "market_trades"
        key = "trades" if trades else "tickers"
        known = _TRADE_KNOWN if trades else _TICKER_KNOWN
        fields = TRADE_FIELDS if trades else TICKER_FIELDS
        lost = None
        for event in msg.get("events") or []:
            problem = validate.event_problem(event, key)
            if problem:
                self.on_reject(received_at, conn_id, json.dumps(event), problem)
                lost = lost or problem
                continue
            event_type = event["type"]
            for item in event.get(key) or []:
                problem = validate.trade_problem(item, bounds) if trades else validate.ticker_problem(item)
                if problem:
                    self.on_reject(received_at, conn_id, json.dumps(item), problem)
                    lost = lost or problem
                    continue
                extra = {k: v for k, v in item.items() if k not in known}
                row = (*(_text(item.get(f)) for f in fields), event_type, *envelope,
                       json.dumps(extra) if extra else None)
                if trades:  # partitions from validated fields only: the product and the trade's own UTC date
                    self.batch.add_trade(item["product_id"], item["time"][:10], row)
                    s.trades += 1
                else:
                    self.batch.add_ticker(item["product_id"], msg["timestamp"][:10], row)
                    s.tickers += 1
        if trades and lost:
            self._trade_lost(received_at, conn_id, seq, lost)

    def _trade_lost(self, received_at: float, conn_id: str, seq, why: str) -> None:
        """A `market_trades` message with a rejected trade: a `rejected_trade` gap at its sequence_num, so the
        trade bars take it as lost (the bar of that time is not complete)."""
        if isinstance(seq, int):
            self.on_gap(Gap("rejected_trade", conn_id, "market_trades", seq, seq, 0, received_at, why[:300]))

    def _on_book(self, received_at: float, conn_id: str, msg: dict, bounds: tuple[str, str]) -> None:
        self.summary.book_messages += 1
        seq = msg.get("sequence_num")
        if isinstance(seq, int):
            # a repeat or an older message (a `duplicate` gap) would set levels back to older absolute quantities
            # (a late snapshot would replace the book): the book already holds it, or a gap already resynced it
            if self._book_seq[0] == conn_id and seq <= self._book_seq[1]:
                return
            self._book_seq = (conn_id, seq)
        for event in msg.get("events") or []:
            problem = validate.event_problem(event, "updates") or validate.product_problem(event.get("product_id"))
            updates = event.get("updates") or []
            snapshot = isinstance(event, dict) and event.get("type") == "snapshot"
            problem = problem or next((p for u in updates if (p := validate.book_update_problem(u, bounds, snapshot))),
                                      None)
            if problem:  # the book would miss a change: reject the event, distrust the book(s) it touches
                self.on_reject(received_at, conn_id, json.dumps(event), problem)
                product = event.get("product_id") if isinstance(event, dict) else None
                known = product if validate.product_problem(product) is None else None   # else: every book
                self._resync(received_at, conn_id, f"rejected l2_data event: {problem}", known)
                continue
            self.books.apply(event["type"], event["product_id"], updates, seq if isinstance(seq, int) else None,
                             conn_id)

    def _resync(self, detected_at: float, conn_id: str, why: str, product: str | None = None) -> None:
        """Distrust the book(s) and ask for a fresh `level2` snapshot; recorded as a `book_resync` gap."""
        self.books.invalidate(product)
        self.on_gap(Gap("book_resync", conn_id, "l2_data", None, None, 0, detected_at, why[:300]))
        if self.resubscribe is not None:
            asyncio.ensure_future(self.resubscribe("level2"))

    def snapshot_books(self, depth: int) -> None:
        """The top `depth` levels of every valid book into the open batch (bronze/order_book)."""
        now = time.time()
        for product, day, row in self.books.snapshot_rows(depth, now):
            self.batch.add_book(product, day, row)

    async def snapshot_every(self, seconds: float, depth: int, stop: asyncio.Event) -> None:
        due = time.monotonic()
        while not stop.is_set():
            due = max(due + seconds, time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), timeout=due - time.monotonic())
            except TimeoutError:
                self.snapshot_books(depth)

    def _bounds(self, received_at: float) -> tuple[str, str]:
        """validate.window at the second of `received_at` (computed once a second)."""
        second = int(received_at)
        if self._window[0] != second:
            self._window = (second, validate.window(second))
        return self._window[1]

    def on_gap(self, gap: Gap) -> None:
        self.summary.gaps[gap.kind] += 1
        self.summary.missing += gap.missing if gap.kind == "sequence" else 0
        if gap.kind in ("disconnect", "stall"):
            self.books.invalidate()  # the next connection subscribes level2 again: a fresh snapshot
        if gap.kind in ("sequence", "heartbeat"):
            log.info("stream: %s gap on %s: expected %s, got %s (%d missing)", gap.kind, gap.connection_id,
                     gap.expected, gap.received, gap.missing)
        self.batch.add_gap(_day(gap.detected_at), (gap.kind, gap.connection_id, gap.channel, gap.expected,
                                                         gap.received, gap.missing, gap.detected_at, gap.detail))
        if gap.kind == "sequence":  # the lost message may be a book's (even the snapshot awaited)
            self._resync(gap.detected_at, gap.connection_id, f"sequence gap {gap.expected}..{gap.received - 1}")

    def on_reject(self, received_at: float, conn_id: str, raw: str, reason: str) -> None:
        self.summary.rejects += 1
        self.batch.add_reject(_day(received_at), (raw, reason, conn_id, received_at))

    # ---- commits -------------------------------------------------------------------------------------------
    async def commit(self) -> None:
        """Hand the open batch to the sink after those a failed write left (oldest first). A failed write raises
        and keeps its batch for the next commit: a sink down for a while delays rows, it does not drop them."""
        batch, self.batch = self.batch, self._new_batch()
        if not batch.empty:
            self.pending.append(batch)
        while self.pending:
            batch = self.pending[0]
            paths = await asyncio.get_running_loop().run_in_executor(self.pool, self.sink.write, batch)
            self.pending.pop(0)
            self.summary.batches += 1
            self.summary.files += len(paths)
            self.summary.committed.update(batch.counts())

    async def commit_every(self, seconds: float, stop: asyncio.Event) -> None:
        due = time.monotonic()
        while not stop.is_set():
            due = max(due + seconds, time.monotonic())  # a fixed grid: a slow write does not push later commits
            try:
                await asyncio.wait_for(stop.wait(), timeout=due - time.monotonic())
            except TimeoutError:
                pass
            if stop.is_set():
                return  # the final commit comes after the feed has stopped, with everything received
            try:
                await self.commit()
            except Exception as exc:  # any sink error (store, broker): the batches wait for the next commit
                log.error("stream: the sink failed (%s: %s); %d batch(es) kept for the next commit", type(exc).__name__,
                          exc, len(self.pending))


def collect(products, seconds: float | None = None, source: str | None = None, settings: Settings | None = None,
            sink: Sink | None = None, url: str | None = None, validate: bool = True) -> StreamSummary:
    """Collect until SIGTERM/SIGINT or `seconds`; returns what was received and committed.

    Products are checked against the REST API of the same source first (unknown -> SourceError, nothing
    written) unless `validate` is False.
    """
    settings = settings or get_settings()
    products = parse_products(products)
    if validate:
        from etl.source import ExchangeClient, api_url, check_products

        check_products(ExchangeClient(api_url(source, settings), settings), products)
    url = url or ws_url(source, settings)
    if sink is None:
        from etl.storage import get_store

        sink = BronzeSink(get_store(settings))
    summary = StreamSummary(url=url, products=products)
    try:
        asyncio.run(_collect(products, seconds, settings, sink, summary))
    finally:
        sink.close()
    print(summary, flush=True)
    return summary


async def _collect(products: list[str], seconds: float | None, settings: Settings, sink: Sink,
                   summary: StreamSummary) -> None:
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    collector = Collector(sink, summary)
    feed = Feed(summary.url, products, collector.on_message, collector.on_gap, collector.on_reject,
                channels=(*CHANNELS, "level2"), stall_s=settings.stream_stall_s, backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s, max_message_bytes=settings.stream_max_message_bytes)
    if seconds is not None:
        loop.call_later(seconds, stop.set)
    collector.resubscribe = feed.resubscribe
    committer = asyncio.create_task(collector.commit_every(settings.stream_commit_s, stop))
    snapshotter = asyncio.create_task(collector.snapshot_every(settings.stream_book_snapshot_s,
                                                               settings.stream_book_depth, stop))
    try:
        await feed.run(stop)
    finally:
        stop.set()
        await committer
        await snapshotter
        await collector.commit()  # the open batch: a clean stop loses nothing received
        collector.pool.shutdown(wait=True)
        summary.connections = feed.connections
        summary.seconds = time.monotonic() - started
        log.info("stream: %s", str(summary).replace("\n", " |"))

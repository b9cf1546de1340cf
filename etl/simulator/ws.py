"""The WebSocket half of the simulator: Coinbase Advanced Trade's public market-data feed (channels `heartbeats`,
`market_trades`, `ticker`, `level2`; contract in docs/coinbase_api.md) over the same price model as the REST candles.

It listens on its own port (`ws_port`, default the REST port + 1, path ignored: `ws://127.0.0.1:8766`), runs an
asyncio loop in a background thread and gives every connection its own sender:
- a **feed clock** `ws_start + elapsed * ws_speed` (default: now, real time); every `ws_tick_ms` (250, as Coinbase batches trades) of real time each
  subscribed product gets one `market_trades` update with the trades of (previous tick, now] (`etl.simulator.
  trades`: they aggregate exactly to the served candles) and one `ticker` update (last price, best bid/ask around
  it, 24 h figures from the candles) and one `l2_data` update with the levels of the book (`etl.simulator.book`)
  that changed since the last one sent (`new_quantity` "0" removes a level); `heartbeats` once a real second
  with a per-connection counter,
- on subscribe: the `subscriptions` confirmation, a `market_trades` snapshot (the last SNAPSHOT_TRADES trades), a
  `ticker` snapshot and an `l2_data` snapshot of the whole book (each level's `event_time` the epoch), as Coinbase
  sends them (unsubscribe and subscribe again for a fresh book snapshot),
- `sequence_num` counts the messages of the connection; message `timestamp` is the wall-clock send time (so
  consumers can measure latency); trade `time` is feed time.
Client messages past `ws_message_rps` a second per IP (Coinbase's ~8) are refused with an `error` message.
Faults (flags of `python -m etl simulator`): `ws_drop_rate` (a message is skipped but its sequence number used),
`ws_duplicate_rate` (a message sent twice), `ws_disconnect_every` (abrupt connection drop every N s),
`ws_stall_every`/`ws_stall_s` (nothing, not even heartbeats, for S s every N s; the backlog follows afterwards),
`ws_max_queue` (a slow consumer whose unsent backlog exceeds this many messages is disconnected, code 1008).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from etl.errors import ConfigError
from etl.simulator.book import book_at, book_diff
from etl.simulator.trades import UNITS_PER_BASE, trades_between

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
SNAPSHOT_TRADES = 50
CHANNELS = ("heartbeats", "market_trades", "ticker", "level2")
MSG_RATE_LIMIT = "rate limit exceeded: at most 8 messages a second per IP"
HALF_SPREAD_BPS = 0.5    # best bid/ask sit this far from the last trade (plus noise)
SNAPSHOT_EVENT_TIME = "1970-01-01T00:00:00Z"   # event_time of every level of an l2_data snapshot


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_us(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us // 1_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{epoch_us % 1_000_000:06d}Z"


@dataclass
class _Connection:
    subs: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CHANNELS})
    seq: int = 0
    heartbeat: int = 0
    queue: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_trade: dict[str, float] = field(default_factory=dict)
    seed: str = ""
    closing: bool = False
    rngs: dict[str, random.Random] = field(default_factory=dict)
    books: dict[str, dict] = field(default_factory=dict)   # product -> the book as last sent (dropped or not)

    def roll(self, channel: str, rate: float) -> bool:
        """A fault draw from the connection's own stream per channel: the k-th heartbeat of the n-th
        connection is dropped or not whatever the other channels do (reproducible faults)."""
        if rate <= 0:
            return False
        rng = self.rngs.get(channel)
        if rng is None:
            rng = self.rngs[channel] = random.Random(f"{self.seed}:{channel}")
        return rng.random() < rate


class FeedServer:
    """The WebSocket feed of one simulator (started and stopped by `Simulator`)."""

    def __init__(self, app, host: str, port: int):
        self.app, self.config = app, app.config
        self.host, self.port = host, port
        self.faults = random.Random(self.config.seed + 1)
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.server = None
        self.mono0 = time.monotonic()
        self.feed0 = self.config.ws_start if self.config.ws_start is not None else app.clock()
        self.stats = {"connections": 0, "sent": 0, "dropped": 0, "duplicated": 0, "disconnects": 0,
                      "stalls": 0, "slow_consumers": 0, "trades": 0, "refused": 0}
        self.fault_log: list[tuple[str, int]] = []  # ("dropped" | "duplicated", sequence_num), first 10,000
        self.lock = threading.Lock()

    # ---- clock ---------------------------------------------------------------------------------------------
    def feed_now_us(self) -> int:
        return int((self.feed0 + (time.monotonic() - self.mono0) * self.config.ws_speed) * 1_000_000)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        from websockets.asyncio.server import serve

        async def _open():
            return await serve(self._handle, self.host, self.port, compression=None, max_queue=64,
                               ping_interval=20, ping_timeout=20)

        self.thread = threading.Thread(target=self.loop.run_forever, name="simulator-ws", daemon=True)
        self.thread.start()
        try:
            self.server = asyncio.run_coroutine_threadsafe(_open(), self.loop).result(timeout=10)
        except OSError as exc:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise ConfigError(f"cannot serve the WebSocket feed on {self.host}:{self.port}: {exc.strerror or exc}; "
                              "pass --ws-port (or stop the other process)") from None
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("simulator WebSocket feed at %s", self.url)

    def stop(self) -> None:
        if self.server is None:
            return

        async def _close():
            self.server.close()
            await self.server.wait_closed()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:  # connection handlers still sleeping: end them inside the loop, not at collection
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result(timeout=10)
        except (TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.server = None

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.stats)

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def _fault(self, kind: str, seq: int) -> None:
        with self.lock:
            self.stats[kind] += 1
            if len(self.fault_log) < 10_000:
                self.fault_log.append((kind, seq))

    # ---- one connection ------------------------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        with self.lock:
            self.stats["connections"] += 1
            conn = _Connection(seed=f"{self.config.seed}:{self.stats['connections']}")
        tasks = [asyncio.create_task(self._reader(ws, conn)), asyncio.create_task(self._producer(ws, conn)),
                 asyncio.create_task(self._writer(ws, conn)), asyncio.create_task(ws.wait_closed())]
        try:  # until the writer fails or the connection is gone (a closing one may have nothing left to send)
            await asyncio.wait(tasks[2:], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _writer(self, ws, conn: _Connection) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._send_loop(ws, conn)
        except ConnectionClosed:
            pass

    async def _send_loop(self, ws, conn: _Connection) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            while conn.queue:
                batch, conn.queue = conn.queue, []
                for text in batch:
                    await ws.send(text)
                self._count("sent", len(batch))

    def _emit(self, ws, conn: _Connection, channel: str, events: list, now: float | None = None) -> None:
        """Number the message, apply drop/duplicate faults, queue it; a backlog over ws_max_queue ends the
        connection as Coinbase ends slow consumers."""
        if conn.closing:
            return
        seq = conn.seq
        conn.seq += 1
        if conn.roll(channel, self.config.ws_drop_rate):
            self._fault("dropped", seq)
            return
        text = json.dumps({"channel": channel, "client_id": "", "timestamp": iso(now or time.time()),
                           "sequence_num": seq, "events": events}, separators=(",", ":"))
        conn.queue.append(text)
        if conn.roll(channel + ":dup", self.config.ws_duplicate_rate):
            conn.queue.append(text)
            self._fault("duplicated", seq)
        conn.wake.set()
        if self.config.ws_max_queue and len(conn.queue) > self.config.ws_max_queue:
            self._count("slow_consumers")
            conn.closing = True
            conn.queue.clear()
            asyncio.ensure_future(ws.close(1008, "slow consumer: messages are not read fast enough"))

    async def _reader(self, ws, conn: _Connection) -> None:
        async for raw in ws:
            if not self.app.ws_messages.take(ws.remote_address[0]):   # over the limit: refused, not applied
                self._count("refused")
                await ws.send(json.dumps({"type": "error", "message": MSG_RATE_LIMIT}))
                continue
            try:
                msg = json.loads(raw)
                kind, channel = msg["type"], msg["channel"]
                products = [str(p).upper() for p in msg.get("product_ids", [])]
            except (ValueError, KeyError, TypeError, AttributeError):
                await ws.send(json.dumps({"type": "error", "message": "Failure to parse subscription"}))
                continue
            unknown = [p for p in products if p not in self.app.source.products]
            if kind not in ("subscribe", "unsubscribe") or channel not in CHANNELS or unknown:
                why = f"unknown product(s) {unknown}" if unknown else f"unsupported {kind!r} / channel {channel!r}"
                await ws.send(json.dumps({"type": "error", "message": f"Failure to subscribe: {why}"}))
                continue
            if kind == "subscribe":
                new = [p for p in products if p not in conn.subs[channel]]
                conn.subs[channel].update(products)
            else:
                new = []
                conn.subs[channel].difference_update(products)
                if channel == "level2":
                    for product in products:
                        conn.books.pop(product, None)
            self._emit(ws, conn, "subscriptions",
                       [{"subscriptions": {c: sorted(p) for c, p in conn.subs.items() if p}}])
            now_us = self.feed_now_us()
            for product in new:
                if channel == "market_trades":
                    trades = trades_between(self.app.source, product, now_us - 3_600_000_000, now_us)
                    self._trades_message(ws, conn, product, trades, "snapshot", SNAPSHOT_TRADES)
                elif channel == "ticker":
                    self._ticker_message(ws, conn, product, now_us, "snapshot")
                elif channel == "level2":
                    self._book_message(ws, conn, product, now_us)

    async def _producer(self, ws, conn: _Connection) -> None:
        cfg = self.config
        last_us = self.feed_now_us()
        next_beat = next_drop = next_stall = time.monotonic()
        next_drop += cfg.ws_disconnect_every or float("inf")
        next_stall += cfg.ws_stall_every or float("inf")
        while True:
            await asyncio.sleep(cfg.ws_tick_ms / 1000.0)
            mono = time.monotonic()
            if mono >= next_drop:
                self._count("disconnects")
                ws.transport.abort()  # no close frame: as a network failure looks
                return
            if mono >= next_stall:
                self._count("stalls")
                await asyncio.sleep(cfg.ws_stall_s)
                next_stall = time.monotonic() + cfg.ws_stall_every
                continue  # the next tick carries the backlog: trades are late, not lost
            now_us = self.feed_now_us()
            for product in sorted(conn.subs["market_trades"] | conn.subs["ticker"]):
                trades = trades_between(self.app.source, product, last_us, now_us)
                if len(trades) and product in conn.subs["market_trades"]:
                    self._trades_message(ws, conn, product, trades, "update")
                if len(trades) and product in conn.subs["ticker"]:
                    conn.last_trade[product] = float(trades.price[-1])
                    self._ticker_message(ws, conn, product, now_us, "update")
            for product in sorted(conn.subs["level2"]):
                self._book_message(ws, conn, product, now_us)
            last_us = now_us
            if conn.subs["heartbeats"] and mono >= next_beat:
                conn.heartbeat += 1
                wall = time.time()
                current = datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f000+00:00")
                self._emit(ws, conn, "heartbeats", [{"current_time": current, "heartbeat_counter": conn.heartbeat}],
                           wall)
                next_beat = max(next_beat + HEARTBEAT_S, mono)

    # ---- message bodies ------------------------------------------------------------------------------------
    def _trades_message(self, ws, conn: _Connection, product: str, trades, kind: str, last: int | None = None):
        if last is not None:
            trades = trades.select(np.arange(len(trades)) >= len(trades) - last)
        if not len(trades):
            return
        decimals = self.app.source.products[product].price_decimals
        rows = [{"trade_id": str(tid), "product_id": product, "price": f"{price:.{decimals}f}",
                 "size": f"{units / UNITS_PER_BASE:.8f}", "side": "BUY" if buy else "SELL", "time": _iso_us(t)}
                for t, tid, price, units, buy in zip(trades.time_us.tolist(), trades.trade_id.tolist(),
                                                     trades.price.tolist(), trades.units.tolist(),
                                                     trades.buy.tolist(), strict=True)]
        if kind == "snapshot":
            rows.reverse()  # Coinbase's snapshot lists the newest trade first
        self._count("trades", len(rows))
        self._emit(ws, conn, "market_trades", [{"type": kind, "trades": rows}])

    def _book_message(self, ws, conn: _Connection, product: str, now_us: int) -> None:
        """The book at now_us: whole as a snapshot for a new subscription, else the changed levels (if any)."""
        book = book_at(self.app.source, product, now_us)
        old = conn.books.get(product)
        changes = book_diff(old or {}, book)
        conn.books[product] = book
        if old is not None and not changes:
            return
        d = self.app.source.products[product].price_decimals
        # Coinbase's snapshot levels carry no time: their event_time is the epoch (docs' level2 example)
        when = SNAPSHOT_EVENT_TIME if old is None else _iso_us(now_us)
        self._emit(ws, conn, "l2_data", [{"type": "snapshot" if old is None else "update", "product_id": product,
                                          "updates": [{"side": side, "event_time": when, "price_level": f"{p:.{d}f}",
                                                       "new_quantity": f"{q / UNITS_PER_BASE:.8f}"}
                                                      for side, p, q in changes]}])

    def _ticker_message(self, ws, conn: _Connection, product: str, now_us: int, kind: str) -> None:
        spec = self.app.source.products[product]
        now_s = now_us // 1_000_000
        granularity = self.app.source.base_granularity(product, 60)
        times, values = self.app.source.arrays(product, now_s - 86_400, now_s + 1, granularity)
        if not len(times):
            return
        price = conn.last_trade.get(product)
        if price is None:
            recent = trades_between(self.app.source, product, now_us - 3_600_000_000, now_us)
            price = float(recent.price[-1]) if len(recent) else float(values[-1, 3])
            conn.last_trade[product] = price
        d = spec.price_decimals
        half = max(price * HALF_SPREAD_BPS * 1e-4 * (1 + self.faults.random()), 10.0 ** -d)
        bid, ask = round(price - half, d), round(price + half, d)
        if ask <= bid:
            ask = round(bid + 10.0 ** -d, d)
        first_open = float(values[0, 2])
        self._emit(ws, conn, "ticker", [{"type": kind, "tickers": [{
            "type": "ticker", "product_id": product, "price": f"{price:.{d}f}",
            "volume_24_h": f"{float(values[:, 4].sum()):.8f}", "low_24_h": f"{float(values[:, 0].min()):.{d}f}",
            "high_24_h": f"{float(values[:, 1].max()):.{d}f}", "low_52_w": f"{float(values[:, 0].min()):.{d}f}",
            "high_52_w": f"{float(values[:, 1].max()):.{d}f}",
            "price_percent_chg_24_h": f"{(price / first_open - 1) * 100:.8f}",
            "best_bid": f"{bid:.{d}f}", "best_bid_quantity": f"{self.faults.uniform(0.01, 2):.8f}",
            "best_ask": f"{ask:.{d}f}", "best_ask_quantity": f"{self.faults.uniform(0.01, 2):.8f}"}]}])

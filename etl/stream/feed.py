"""The WebSocket client both live commands share: connect, subscribe, reconnect, and notice what went missing.

`Feed.run()` loops until `stop` is set:
1. connect to the Advanced Trade market-data feed (or the simulator), send one `subscribe` per channel for all
   products (Coinbase wants one channel per message; `heartbeats` keeps quiet channels open),
2. hand every message to `on_message(received_at, connection_id, message)`; text that is not a JSON object goes to
   `on_reject` (kept, never dropped),
3. check `sequence_num` (per connection, from 0, +1 per message) and the heartbeat counter (+1 per heartbeat):
   a jump is a `sequence`/`heartbeat` gap, a repeat or step back a `duplicate`; a gap is data (`on_gap`), not an
   error, and the message is still delivered,
4. a connection that closes, fails, or stays silent for `stall_s` (a `stall`) is recorded as a gap and reopened
   after an exponential backoff with jitter (reset once a connection delivers), with the same subscriptions;
5. a message larger than `max_message_bytes` is never read whole: the client closes the connection (code 1009,
   as soon as the frame header announces the size), the message is counted as a reject (its reason, no text),
   and the connection reopens as in 4.
`resubscribe(channel)` unsubscribes and subscribes one channel again on the open connection: the collector's way to
get a fresh `level2` snapshot after a sequence gap. Every message the client sends is paced (SEND_RATE, under
Coinbase's ~8 a second per IP) and a resubscription asked while one waits to be sent is the same one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from etl.errors import ConfigError
from etl.settings import STREAM_MAX_MESSAGE_BYTES, Settings, get_settings
from etl.stream.validate import message_number

log = logging.getLogger(__name__)

CHANNELS = ("heartbeats", "market_trades", "ticker")
# Coinbase takes about 8 client messages a second per IP (unauthenticated): one feed sends at most SEND_BURST at once
# (a connection's subscriptions) and SEND_RATE a second after, so a second feed on the host (insights) fits beside it
# and a reconnect every second still subscribes at once (a slower pace delays the trade snapshot behind the others).
SEND_RATE = 4.0
SEND_BURST = 4


def ws_url(source: str | None = None, settings: Settings | None = None) -> str:
    """Feed URL for a source: "coinbase" is Advanced Trade's, "simulator" is settings.coinbase_ws_url."""
    return (settings or get_settings()).source_urls(source)[1]


@dataclass(frozen=True)
class Gap:
    """Something the feed did not deliver as promised (written to bronze/stream_gaps)."""

    kind: str                 # sequence | heartbeat | duplicate | disconnect | stall | book_resync, rejected_trade (collector)
    connection_id: str
    channel: str
    expected: int | None      # the sequence number / counter expected next
    received: int | None      # the one that arrived
    missing: int              # messages (or heartbeats) lost; 0 for duplicates, disconnects, stalls
    detected_at: float        # epoch seconds
    detail: str = ""


class Feed:
    """One logical subscription kept alive across connections (see the module docstring)."""

    def __init__(self, url: str, products: list[str], on_message: Callable[[float, str, dict], None],
                 on_gap: Callable[[Gap], None], on_reject: Callable[[float, str, str, str], None] | None = None,
                 channels: tuple[str, ...] = CHANNELS, stall_s: float = 5.0, backoff_initial_s: float = 0.2,
                 backoff_max_s: float = 20.0, max_message_bytes: int = STREAM_MAX_MESSAGE_BYTES):
        self.url, self.products, self.channels = url, list(products), tuple(channels)
        self.on_message, self.on_gap, self.on_reject = on_message, on_gap, on_reject
        self.stall_s, self.backoff_initial_s, self.backoff_max_s = stall_s, backoff_initial_s, backoff_max_s
        self.max_message_bytes = max_message_bytes
        self.connections = 0
        self.messages = 0
        self._ws = None
        self._tokens, self._refilled = float(SEND_BURST), time.monotonic()   # the send pacer (SEND_RATE)
        self._resubscribing: set[str] = set()    # channels whose resubscription waits to be sent

    async def run(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        failures = 0
        while not stop.is_set():
            conn_id = uuid.uuid4().hex[:12]
            delivered = False
            try:
                async with connect(self.url, compression=None, max_size=self.max_message_bytes, open_timeout=10,
                                   ping_interval=20, ping_timeout=20, close_timeout=2) as ws:
                    self._ws = ws
                    self.connections += 1
                    for channel in self.channels:
                        await self._send(ws, "subscribe", channel)
                    log.info("stream: connected to %s (connection %s), subscribed to %s for %s", self.url, conn_id,
                             ", ".join(self.channels), ", ".join(self.products))
                    delivered, why = await self._receive(ws, conn_id, stop)
                if why and not stop.is_set():
                    self.on_gap(Gap("disconnect", conn_id, "", None, None, 0, time.time(), why[:300]))
                    log.warning("stream: connection %s to %s ended (%s)", conn_id, self.url, why)
            except InvalidURI as exc:
                raise ConfigError(f"bad WebSocket URL {self.url!r}: {exc}; fix COINBASE_WS_URL") from None
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                self._count_refused(exc, conn_id)
                if not stop.is_set():
                    self.on_gap(Gap("disconnect", conn_id, "", None, None, 0, time.time(),
                                    f"{type(exc).__name__}: {exc}"[:300]))
                    log.warning("stream: connection %s to %s lost (%s)", conn_id, self.url, exc)
            finally:
                self._ws = None
            if stop.is_set():
                break
            failures = 0 if delivered else failures + 1
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** failures) * random.uniform(0.5, 1.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _send(self, ws, kind: str, channel: str) -> None:
        """Send one (un)subscribe message once the pacer allows it (Coinbase refuses messages past its limit)."""
        now = time.monotonic()
        self._tokens = min(SEND_BURST, self._tokens + (now - self._refilled) * SEND_RATE) - 1.0
        self._refilled = now
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / SEND_RATE)
        await ws.send(json.dumps({"type": kind, "product_ids": self.products, "channel": channel}))

    async def resubscribe(self, channel: str) -> None:
        """A fresh snapshot of `channel` on the open connection (none open: the next one subscribes anyway). A call
        while one waits to be sent adds nothing: the snapshot it asks for comes after every gap seen so far."""
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        if ws is None or channel in self._resubscribing:
            return
        self._resubscribing.add(channel)
        try:
            for kind in ("unsubscribe", "subscribe"):
                await self._send(ws, kind, channel)
        except ConnectionClosed:
            pass
        finally:
            self._resubscribing.discard(channel)

    async def _receive(self, ws, conn_id: str, stop: asyncio.Event) -> tuple[bool, str]:
        """Read one connection until it ends, stalls or `stop` is set: (delivered any message, why it ended
        unless it stalled - a stall is recorded as such)."""
        from websockets.exceptions import ConnectionClosed

        state = {"last": time.monotonic(), "stalled": False}

        async def watchdog():
            while True:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=min(1.0, self.stall_s / 4))
                except TimeoutError:
                    pass
                if stop.is_set():
                    await ws.close(1000, "client stopping")
                    return
                if time.monotonic() - state["last"] > self.stall_s:
                    state["stalled"] = True
                    self.on_gap(Gap("stall", conn_id, "", None, None, 0, time.time(),
                                    f"no message for {self.stall_s:g}s: reconnecting"))
                    log.warning("stream: connection %s silent for %.1fs, reconnecting", conn_id, self.stall_s)
                    ws.transport.abort()
                    return

        guard = asyncio.create_task(watchdog())
        expected = 0
        heartbeat: int | None = None
        delivered = False
        why = ""
        try:
            async for raw in ws:
                received_at = time.time()
                state["last"] = time.monotonic()
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    if self.on_reject:
                        self.on_reject(received_at, conn_id, raw if isinstance(raw, str) else raw.decode(
                            errors="replace"), f"unparseable message: {exc}")
                    continue
                delivered = True
                self.messages += 1
                channel = msg.get("channel", "")
                if not isinstance(channel, str):  # as text: a gap row's channel column is a string
                    channel = json.dumps(channel)
                seq = message_number(msg.get("sequence_num"))   # a bad one is not counted: the next is a gap
                if seq is not None:
                    if seq > expected:
                        self.on_gap(Gap("sequence", conn_id, channel, expected, seq, seq - expected, received_at))
                    elif seq < expected:
                        self.on_gap(Gap("duplicate", conn_id, channel, expected, seq, 0, received_at))
                    expected = max(expected, seq + 1)
                if channel == "heartbeats":
                    heartbeat = self._heartbeat(msg, heartbeat, conn_id, received_at)
                elif msg.get("type") == "error":
                    log.warning("stream: the feed reported an error: %s", msg.get("message"))
                self.on_message(received_at, conn_id, msg)
            why = f"closed by the server: code {ws.close_code} {ws.close_reason or ''}".strip()
        except ConnectionClosed as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._count_refused(exc, conn_id)
        finally:
            guard.cancel()
        return delivered, "" if state["stalled"] else why

    def _count_refused(self, exc: BaseException, conn_id: str) -> None:
        """A connection we closed with 1009 (message too big): the refused message is a reject (no text)."""
        sent = getattr(exc, "sent", None)
        if sent is not None and sent.code == 1009 and self.on_reject:
            self.on_reject(time.time(), conn_id, "", f"message over {self.max_message_bytes:,} bytes "
                           "(PIPELINE_STREAM_MAX_MESSAGE_BYTES): not read, connection closed (1009) and reopened")

    def _heartbeat(self, msg: dict, last: int | None, conn_id: str, received_at: float) -> int | None:
        events = msg.get("events") or []
        if not isinstance(events, list):  # bad input: kept as a reject, not a TypeError that ends the feed
            if self.on_reject:
                self.on_reject(received_at, conn_id, json.dumps(msg), "events is not a list")
            return last
        for event in events:
            counter = event.get("heartbeat_counter") if isinstance(event, dict) else None
            try:
                counter = message_number(int(counter))   # a counter beyond int64 fits no gap row
            except (TypeError, ValueError):
                continue
            if counter is None:
                continue
            if last is not None and counter > last + 1:
                self.on_gap(Gap("heartbeat", conn_id, "heartbeats", last + 1, counter, counter - last - 1,
                                received_at))
            last = counter if last is None else max(last, counter)
        return last

"""The HTTP server: Coinbase Exchange's public REST contract (docs/coinbase_api.md) over the price model or a
replay, with injectable faults (5xx, 429 token bucket, latency, malformed bodies, late corrections).

Threaded (one thread per connection, keep-alive) so added latency never serialises other clients. Fault
decisions come from their own seeded RNG: they never touch candle values, except the documented late corrections.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import random
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from etl.errors import ConfigError
from etl.simulator.price_model import GRANULARITIES, SyntheticSource, UnsupportedRequest, aggregate
from etl.simulator.replay import ReplaySource
from etl.simulator.universe import UNIVERSE, synthetic_products
from etl.simulator.ws import FeedServer

log = logging.getLogger(__name__)

MAX_CANDLES = 300
DEFAULT_GRANULARITY = 60         # when the query has none
LATE_CORRECTION_MINUTES = 10     # buckets starting within this many minutes before `now` may be revised
LATE_CORRECTION_PRICE = 0.002    # revised close moves by +-0.2% ...
LATE_CORRECTION_VOLUME = 1.15    # ... and volume grows 15% (late trades)
SERVER_ERRORS = {500: "Internal server error", 502: "Bad gateway", 503: "Service unavailable",
                 504: "Gateway timeout"}
MALFORMED_KINDS = ("truncated", "wrong_arity", "string_number")

MSG_NOT_FOUND = "NotFound"
MSG_GRANULARITY = "Unsupported granularity"
MSG_TOO_MANY = ("granularity too small for the requested time range. Count of aggregations requested "
                "exceeds 300")
MSG_DELISTED = "Not allowed for delisted products"
MSG_RATE_LIMIT = "Public rate limit exceeded"


@dataclass(frozen=True)
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8765                 # 0 = pick a free port
    seed: int = 42
    products: tuple[str, ...] | None = None  # None = whole universe (or every replayed product)
    universe: int = 0                # extra synthetic products SYN001-USD.. (`--universe N`, SIMULATOR_UNIVERSE)
    replay_dir: str | None = None
    fail_rate: float = 0.0           # fraction of requests answered with a random 5xx (JSON body)
    rate_limit_rps: float = 10.0     # token bucket per client IP (<= 0 disables it)
    burst: int = 15
    latency_ms: float = 0.0          # added to every request
    malformed_rate: float = 0.0      # fraction of 200 bodies made unparseable or with bad rows
    late_corrections: bool = False   # recent candles come back revised from their 2nd fetch on
    now: Callable[[], float] | None = None  # clock override (epoch seconds); None = time.time
    # WebSocket feed (etl/simulator/ws.py): its own port, None = the REST port + 1 (0 when the REST port is 0)
    ws_port: int | None = None
    ws_speed: float = 1.0            # feed seconds per real second (trades arrive this much faster)
    ws_start: float | None = None    # feed clock at start (epoch s); None = now
    ws_tick_ms: float = 250.0        # market_trades batching interval
    ws_drop_rate: float = 0.0        # fraction of messages skipped (their sequence_num is used: a gap)
    ws_duplicate_rate: float = 0.0   # fraction of messages sent twice
    ws_disconnect_every: float = 0.0  # drop each connection abruptly after this many seconds (0 = never)
    ws_stall_every: float = 0.0      # go silent (no heartbeats either) every this many seconds ...
    ws_stall_s: float = 0.0          # ... for this long
    ws_max_queue: int = 0            # unsent messages before a slow consumer is disconnected (0 = unbounded)
    ws_message_rps: float = 8.0      # client messages a second per IP (Coinbase's unauthenticated limit; <= 0: none)


class _Reply(Exception):
    """Ends request handling with this status and JSON message (every error body is {"message": ...})."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServerRateLimit:
    """The simulator's rate limit, one token bucket per client key: `rate` tokens a second up to `burst`; a
    request takes one or is refused (429)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._state[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed


def parse_time(raw: str, name: str) -> float:
    """ISO 8601 (naive = UTC) or unix seconds -> epoch seconds."""
    text = raw.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise _Reply(400, f"Invalid {name} {raw!r}: expected ISO 8601 or unix seconds") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise _Reply(400, f"Invalid {name} {raw!r}: expected ISO 8601 or unix seconds")
    return value


class _App:
    """Routing, faults and statistics shared by the handler threads of one simulator."""

    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.clock = config.now or time.time
        if config.replay_dir:
            self.source = ReplaySource(config.replay_dir, config.products)
        else:
            self.source = SyntheticSource(config.seed, config.products, config.universe)
        self.buckets = ServerRateLimit(config.rate_limit_rps, config.burst)
        self.ws_messages = ServerRateLimit(config.ws_message_rps, max(1, math.floor(config.ws_message_rps)))
        self.faults = random.Random(config.seed)
        self.lock = threading.Lock()
        self.served_recent: set[tuple[str, int, int]] = set()  # (product, granularity, bucket) for late corrections
        self.connections: set[socket.socket] = set()
        self.in_flight = 0
        self.reset_stats()

    # ---- statistics ----------------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with self.lock:
            self.stats = {"requests": 0, "served_200": 0, "served_4xx": 0, "served_429": 0, "served_5xx": 0,
                          "malformed": 0, "late_corrected": 0, "max_in_flight": 0,
                          "by_endpoint": {"products": 0, "product": 0, "candles": 0, "time": 0, "other": 0},
                          "malformed_by_kind": dict.fromkeys(MALFORMED_KINDS, 0)}

    def snapshot(self) -> dict:
        with self.lock:
            return json.loads(json.dumps(self.stats))

    def _count(self, key: str, sub: str | None = None) -> None:
        with self.lock:
            if sub is None:
                self.stats[key] += 1
            else:
                self.stats[key][sub] += 1

    def _roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self.lock:
            return self.faults.random() < rate

    # ---- one request ---------------------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)
        try:
            if self.config.latency_ms > 0:
                time.sleep(self.config.latency_ms / 1000.0)
            status, body = self._respond(method, handler.path, handler.client_address[0])
        finally:
            with self.lock:
                self.in_flight -= 1
        if status == 200:
            self._count("served_200")
        elif status == 429:
            self._count("served_429")
        elif status >= 500:
            self._count("served_5xx")
        else:
            self._count("served_4xx")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)

    def _respond(self, method: str, path: str, client: str) -> tuple[int, bytes]:
        url = urlsplit(path)
        parts = [p for p in url.path.split("/") if p]
        endpoint = _endpoint(parts)
        self._count("requests")
        self._count("by_endpoint", endpoint)
        try:
            if method != "GET" or endpoint == "other":
                raise _Reply(404, MSG_NOT_FOUND)
            if not self.buckets.take(client):
                raise _Reply(429, MSG_RATE_LIMIT)
            if self._roll(self.config.fail_rate):
                with self.lock:
                    status = self.faults.choice(sorted(SERVER_ERRORS))
                raise _Reply(status, SERVER_ERRORS[status])
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            payload = self._dispatch(endpoint, parts, query)
        except _Reply as reply:
            return reply.status, _dumps({"message": reply.message})
        if self._roll(self.config.malformed_rate):
            return 200, self._malform(payload)
        return 200, _dumps(payload)

    def _dispatch(self, endpoint: str, parts: list[str], query: dict[str, str]):
        if endpoint == "time":
            now = self.clock()
            iso = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
            return {"iso": iso, "epoch": now}
        if endpoint == "products":
            return [spec.to_json() for spec in self.source.products.values()]
        spec = self.source.products.get(parts[1])
        if spec is None:
            raise _Reply(404, MSG_NOT_FOUND)
        if endpoint == "product":
            return spec.to_json()
        return self._candles(spec.id, spec.status, query)

    def _candles(self, product: str, status: str, query: dict[str, str]) -> list[list]:
        if status == "delisted":
            raise _Reply(400, MSG_DELISTED)
        try:
            granularity = int(query.get("granularity") or DEFAULT_GRANULARITY)
        except ValueError:
            raise _Reply(400, MSG_GRANULARITY) from None
        if granularity not in GRANULARITIES:
            raise _Reply(400, MSG_GRANULARITY)
        now = self.clock()
        if query.get("start") and query.get("end"):
            start, end = parse_time(query["start"], "start"), parse_time(query["end"], "end")
            if end < start:
                raise _Reply(400, "start must be before end")
            if math.floor(end / granularity) - math.floor(start / granularity) + 1 > MAX_CANDLES:
                raise _Reply(400, MSG_TOO_MANY)
        else:  # Coinbase ignores a lone start or end: the latest 300 buckets
            end = now
            start = (math.floor(now / granularity) - (MAX_CANDLES - 1)) * granularity
        first = math.floor(start / granularity) * granularity  # like Coinbase: the bucket holding `start`
        last = math.floor(min(end, now))                          # `end` inclusive; nothing after now
        try:
            times, values = self.source.arrays(product, first, last + 1, granularity)
            times, values = self._forming(product, times, values, granularity, now)
        except UnsupportedRequest as exc:
            raise _Reply(400, str(exc)) from None
        if self.config.late_corrections and len(times):
            values = self._late_corrections(product, granularity, times, values, now)
        rows = values.tolist()
        return [[t, *row] for t, row in zip(times[::-1].tolist(), rows[::-1], strict=True)]

    def _forming(self, product: str, times: np.ndarray, values: np.ndarray, granularity: int, now: float):
        """The newest bucket, if still forming, is the aggregation of its candles started by `now`."""
        if not len(times) or times[-1] + granularity <= now:
            return times, values
        base = self.source.base_granularity(product, granularity)
        if base == granularity:
            return times, values
        part_t, part_v = self.source.arrays(product, int(times[-1]), math.floor(now) + 1, base)
        agg_t, agg_v = aggregate(part_t, part_v, granularity)
        if not len(agg_t):  # no trade yet in the forming bucket (illiquid product): no candle yet
            return times[:-1], values[:-1]
        values = values.copy()
        values[-1] = agg_v[-1]
        return times, values

    def _late_corrections(self, product: str, granularity: int, times: np.ndarray, values: np.ndarray,
                          now: float) -> np.ndarray:
        """Buckets starting in the last LATE_CORRECTION_MINUTES come back revised once they were served before."""
        recent = np.flatnonzero(times >= now - LATE_CORRECTION_MINUTES * 60)
        if not len(recent):
            return values
        values = values.copy()
        decimals = self.source.products[product].price_decimals
        with self.lock:
            for i in recent.tolist():  # a handful of rows at most
                key = (product, granularity, int(times[i]))
                if key in self.served_recent:
                    sign = 1.0 if zlib.crc32(f"{self.config.seed}:{key}".encode()) % 2 else -1.0
                    low, high, _, close, volume = values[i]
                    close = round(close * (1 + sign * LATE_CORRECTION_PRICE), decimals)
                    values[i, [0, 1, 3, 4]] = [min(low, close), max(high, close), close, volume * LATE_CORRECTION_VOLUME]
                    self.stats["late_corrected"] += 1
                self.served_recent.add(key)
            if len(self.served_recent) > 50_000:  # a long-running server: forget buckets too old to be revised
                self.served_recent = {k for k in self.served_recent if k[2] >= now - LATE_CORRECTION_MINUTES * 60}
        return values

    def _malform(self, payload) -> bytes:
        """A 200 body that is broken in one of MALFORMED_KINDS (row faults only apply to non-empty candle lists)."""
        rows = isinstance(payload, list) and payload and isinstance(payload[0], list)
        with self.lock:
            kind = self.faults.choice(MALFORMED_KINDS) if rows else "truncated"
            row = self.faults.randrange(len(payload)) if rows else 0
            self.stats["malformed"] += 1
            self.stats["malformed_by_kind"][kind] += 1
        if kind == "truncated":
            body = _dumps(payload)
            return body[: max(1, len(body) // 2)]
        broken = [list(r) for r in payload]
        if kind == "wrong_arity":
            broken[row] = broken[row][:-1]
        else:
            broken[row][4] = str(broken[row][4])
        return _dumps(broken)


def _endpoint(parts: list[str]) -> str:
    if parts == ["time"]:
        return "time"
    if parts == ["products"]:
        return "products"
    if len(parts) == 2 and parts[0] == "products":
        return "product"
    if len(parts) == 3 and parts[0] == "products" and parts[2] == "candles":
        return "candles"
    return "other"


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: clients reuse connections, as with the real API
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    timeout = 60                    # idle keep-alive connections close after this
    server_version = "CoinbaseSimulator"
    sys_version = ""

    @property
    def app(self) -> _App:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.app.lock:
            self.app.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.app.lock:
                self.app.connections.discard(self.connection)

    def do_GET(self) -> None:
        self.app.handle(self, "GET")

    def do_HEAD(self) -> None:
        self.app.handle(self, "HEAD")

    def _not_found(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # keep the keep-alive stream in step
        self.app.handle(self, self.command)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_found

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def _validate(config: SimulatorConfig) -> None:
    if config.ws_speed <= 0 or config.ws_tick_ms <= 0:
        raise ConfigError(f"simulator ws_speed={config.ws_speed}, ws_tick_ms={config.ws_tick_ms}: expected > 0")
    for name in ("fail_rate", "malformed_rate", "ws_drop_rate", "ws_duplicate_rate"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"simulator {name}={value}: expected a fraction between 0 and 1")
    if config.latency_ms < 0:
        raise ConfigError(f"simulator latency_ms={config.latency_ms}: expected >= 0")
    if config.rate_limit_rps > 0 and config.burst < 1:
        raise ConfigError(f"simulator burst={config.burst}: expected >= 1 (or disable with rate_limit_rps=0)")
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"simulator port {config.port}: expected 0..65535 (0 picks a free port)")
    if config.universe < 0 or (config.universe and config.replay_dir):
        raise ConfigError(f"simulator universe={config.universe}: expected N >= 0 extra synthetic products, "
                          "and no --universe with --replay (a replay serves its recorded products)")
    if config.products and not config.replay_dir:
        known = {**UNIVERSE, **synthetic_products(config.universe)}
        unknown = [p for p in config.products if p not in known]
        if unknown:
            raise ConfigError(f"unknown product(s) {', '.join(unknown)} in --products; known: "
                              f"{', '.join(sorted(UNIVERSE))}")


class Simulator:
    """An in-process simulator for tests: `with Simulator(SimulatorConfig(port=0)) as sim: requests.get(sim.url...)`."""

    def __init__(self, config: SimulatorConfig):
        _validate(config)
        self.config = config
        self._app = _App(config)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._feed: FeedServer | None = None

    @property
    def url(self) -> str:
        host, port = (self._server.server_address[:2] if self._server else (self.config.host, self.config.port))
        return f"http://{host}:{port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket feed's URL (started with the HTTP server)."""
        return self._feed.url if self._feed else ""

    @property
    def ws_stats(self) -> dict:
        """Feed counters: connections, sent, dropped, duplicated, disconnects, stalls, slow_consumers, trades."""
        return self._feed.snapshot() if self._feed else {}

    @property
    def ws_faults(self) -> list[tuple[str, int]]:
        """(kind, sequence_num) of every dropped or duplicated message, in order (the first 10,000)."""
        return list(self._feed.fault_log) if self._feed else []

    @property
    def stats(self) -> dict:
        """A snapshot of the counters (requests, served_200, served_4xx, served_429, served_5xx, malformed, ...)."""
        return self._app.snapshot()

    def reset_stats(self) -> None:
        self._app.reset_stats()

    def bind(self) -> None:
        """Listen on the configured host/port (ConfigError if the port is taken)."""
        if self._server is not None:
            return
        try:
            self._server = _Server((self.config.host, self.config.port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {self.config.port} is in use: {exc.strerror}; pass --port or stop the "
                                  "other process") from None
            raise ConfigError(f"cannot listen on {self.config.host}:{self.config.port}: {exc}; pass --host/--port "
                              "for a local address") from None
        self._server.app = self._app  # type: ignore[attr-defined]
        if self._feed is None:
            ws_port = self.config.ws_port
            if ws_port is None:
                ws_port = self.config.port + 1 if self.config.port else 0
            self._feed = FeedServer(self._app, self.config.host, ws_port)
            self._feed.start()

    def start(self) -> Simulator:
        """Serve in a background thread; returns self."""
        self.bind()
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"simulator-{self.url}", daemon=True)
            self._thread.start()
            log.info("simulator serving %s", self.url)
        return self

    def serve_forever(self) -> None:
        self.bind()
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with self._app.lock:
            connections = list(self._app.connections)
        for conn in connections:  # idle keep-alive connections would otherwise outlive the server
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._server = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(config: SimulatorConfig) -> None:
    """Serve until interrupted (`python -m etl simulator`); prints the URL first."""
    sim = Simulator(config)
    sim.bind()
    source = f"replay of {config.replay_dir}" if config.replay_dir else f"seed {config.seed}"
    products = sim._app.source.products
    print(f"Coinbase Exchange simulator at {sim.url}, WebSocket feed at {sim.ws_url} ({source}, "
          f"{len(products)} products: {', '.join(products)}); Ctrl-C to stop", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        sim.serve_forever()
    finally:
        sim.stop()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt

"""Client for the Coinbase Exchange public market-data API (or the offline simulator that serves the same contract).

Three pieces, each small enough to test on its own:
- `RequestPacer` (a token bucket): one pacer shared by every concurrent request of a run, so we stay under the
  API's limit instead of bouncing off 429s; it adapts to the limit the server really enforces (AIMD on 429s).
- `ExchangeClient`: GET with connect/read timeouts and retries (tenacity) on 5xx, dropped connections, timeouts
  and malformed bodies, bounded by time (settings.max_wait_s per request, jittered exponential backoff between
  attempts), not by a count: a bad minute of the exchange costs a minute, not the run. A 429 slows the pacer and
  is sent again (bounded by settings.throttle_max_wait_s); other 4xx are bugs and raise at once with the API's
  message. A refused connection before the server ever answered means nothing listens at the URL: that fails at
  once, saying how to start the simulator.
- `plan_windows`: splits [start, end) into pages of at most 300 buckets with no gap and no overlap at page edges.

See docs/coinbase_api.md for the contract this is built against and docs/bronze.md for the choices made here.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_before_delay, wait_exponential_jitter

from etl.errors import ConfigError, SourceError
from etl.orchestration.spec import GRANULARITIES
from etl.settings import COINBASE_URL, Settings, get_settings
from etl.utc import to_utc

log = logging.getLogger(__name__)

VALID_GRANULARITIES = GRANULARITIES  # the candle sizes the exchange serves (etl.orchestration.spec)
MAX_BUCKETS = 300  # the API rejects a candles request spanning more than 300 buckets

# Pacing headroom: settings.rate_limit_rps / rate_limit_burst describe the API's own token bucket. Requests reach
# the server with a few ms of jitter, so pacing at exactly its limit can land two requests in one refill slot.
# One token under the burst absorbs up to 1/rate seconds of jitter; 97% of the rate covers clock drift.
PACING_RATE_FRACTION = 0.97
PACING_BURST_MARGIN = 1


def _iso(ts: datetime) -> str:
    return to_utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_url(source: str | None = None, settings: Settings | None = None) -> str:
    """Base URL for a source: "coinbase" is the real Exchange API, "simulator" is settings.coinbase_api_url."""
    return (settings or get_settings()).source_urls(source)[0]


# ---- pacing ----------------------------------------------------------------------------------------------------
# Adaptive pacing (AIMD, as TCP's congestion control): a 429 is the server stating its rate. The first 429 of each
# slowdown cuts our rate by AIMD_DECREASE; every accepted request adds AIMD_INCREASE / rate, i.e. the rate grows by
# AIMD_INCREASE requests/s per second of traffic, back up to the configured ceiling. The rate then saws between
# AIMD_DECREASE x and 1 x the server's real limit: ~0.93 x on average, with one or two 429s per cycle.
AIMD_DECREASE = 0.85
AIMD_INCREASE = 0.08      # requests/s gained per second of accepted traffic
MIN_RATE = 0.1            # requests/s: the pace never falls below this however many 429s arrive


class RequestPacer:
    """Thread-safe, adaptive token bucket: `acquire()` blocks until the caller may send one request.

    Each caller reserves a token at once (the balance may go negative) and sleeps off its share of the deficit
    outside the lock, so waiting callers are served in arrival order at `rate` per second. `throttled()` (a 429)
    cuts the rate multiplicatively, at most once per slowdown: a 429 on a request whose slot was planned before
    the last cut says nothing new. Callers asleep on a slot planned at the old rate queue again when they wake.
    `accepted()` raises the rate additively up to the ceiling it was built with.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(f"token bucket needs rate > 0 and burst >= 1 (got rate={rate}, burst={burst}); "
                              "check PIPELINE_RATE_LIMIT_RPS / PIPELINE_RATE_LIMIT_BURST")
        self.ceiling = self.rate = float(rate)
        self.burst = int(burst)
        self.floor = min(self.ceiling, MIN_RATE)
        self.cuts = 0                    # rate cuts so far: a slot remembers the count it was planned under
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def slot(self) -> tuple[float, int]:
        """Take one token, sleeping until it is due; returns (seconds waited, rate cuts when it was planned)."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                self._tokens -= 1.0
                wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
                cuts = self.cuts
            if wait <= 0:
                return waited, cuts
            self._sleep(wait)
            waited += wait
            with self._lock:
                if self.cuts == cuts:
                    return waited, cuts
            # the rate was cut while we slept: this slot was planned at the old pace, queue again

    def acquire(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds waited."""
        return self.slot()[0]

    def accepted(self) -> None:
        """The server took a request at the current pace: additive increase."""
        with self._lock:
            self.rate = min(self.ceiling, self.rate + AIMD_INCREASE / self.rate)

    def throttled(self, planned_cuts: int, retry_after: float | None = None) -> None:
        """The server answered 429 to a request whose slot was planned under `planned_cuts` cuts.

        Multiplicative decrease (once per slowdown), no saved-up burst any more, and when the server sent
        Retry-After nobody sends again before it has passed.
        """
        with self._lock:
            self._refill()
            if planned_cuts == self.cuts:
                self.rate = max(self.floor, self.rate * AIMD_DECREASE)
                self.burst = 1      # the server's bucket is smaller than we assumed: no bursts from now on
                self.cuts += 1
                self._tokens = 0.0  # reservations planned at the old rate are void (their callers queue again)
            self._tokens = min(self._tokens, 0.0)
            if retry_after:
                self._tokens = min(self._tokens, -retry_after * self.rate)


def pacer_for(settings: Settings) -> RequestPacer:
    return RequestPacer(settings.rate_limit_rps * PACING_RATE_FRACTION,
                       max(1, settings.rate_limit_burst - PACING_BURST_MARGIN))


# ---- HTTP client -----------------------------------------------------------------------------------------------
class TransientError(Exception):
    """A failure worth retrying (5xx, connection error, timeout, malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Unreachable(Exception):
    """The connection was refused before the server ever answered: nothing listens at the URL."""


class _Throttled(Exception):
    """429s for longer than the throttle budget (settings.throttle_max_wait_s)."""


class _ClientError(Exception):
    """A 4xx other than 429: our request is wrong, retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class ApiRefusedError(SourceError):
    """The API answered 4xx (not 429): `status` and the API's `message` are kept for callers."""

    def __init__(self, text: str, status: int, message: str) -> None:
        super().__init__(text)
        self.status, self.message = status, message


@dataclass
class ClientStats:
    requests: int = 0   # HTTP requests sent, retries included
    retries: int = 0    # requests beyond the first attempt (429 re-sends included)
    http_429: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause of a requests error, e.g. "[Errno 111] Connection refused" (not urllib3's wrapping)."""
    inner: BaseException = exc
    while inner.__cause__ or inner.__context__:
        inner = inner.__cause__ or inner.__context__
    return str(inner) or type(inner).__name__


def _start_hint(url: str) -> str:
    """What to do when nothing answers at `url`: start the simulator (a local URL) or check the URL."""
    if url.rstrip("/") == COINBASE_URL.rstrip("/"):
        return "Check the network (or run offline with --source simulator and `python -m etl simulator`)"
    host, port = urlsplit(url).hostname, urlsplit(url).port
    if host in ("127.0.0.1", "localhost", "::1"):
        return (f"The exchange simulator is not running: start it with `python -m etl simulator --port {port or 80}` "
                "(in another terminal), or point COINBASE_API_URL at a running API")
    return "Check COINBASE_API_URL and that the server is up"


def _api_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])
    except ValueError:
        pass
    return resp.text[:200] or resp.reason or ""


def backoff_for(settings: Settings) -> Callable[[RetryCallState], float]:
    """Honour Retry-After when the server sent one, else exponential backoff with jitter."""
    initial, longest = settings.backoff_initial_s, settings.backoff_max_s
    exponential = wait_exponential_jitter(initial=initial, max=longest, jitter=initial)

    def wait(retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, longest)
        return exponential(retry_state)

    return wait


@dataclass(frozen=True)
class CandlePage:
    """One candles response: rows exactly as parsed from the JSON body, and when it arrived."""

    product_id: str
    start: datetime          # the page's half-open window [start, end)
    end: datetime
    granularity: int
    rows: list
    received_at: datetime


class ExchangeClient:
    """GETs against the Exchange public API, paced by one shared RequestPacer and retried with backoff."""

    def __init__(self, base_url: str, settings: Settings | None = None, pacer: RequestPacer | None = None) -> None:
        self.settings = settings or get_settings()
        self.base_url = base_url.rstrip("/")
        self.pacer = pacer or pacer_for(self.settings)
        self.stats = ClientStats()
        self.timeout = (self.settings.http_timeout_connect_s, self.settings.http_timeout_read_s)
        self.max_wait_s = max(0.0, self.settings.max_wait_s)  # 429s are bounded apart: see _send
        self.answered = False  # has the server ever answered? (a refused connection before that: nothing listens)
        self.throttle_max_wait_s = self.settings.throttle_max_wait_s
        self._wait = backoff_for(self.settings)
        self._local = threading.local()  # one requests.Session per worker thread (connection reuse)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["User-Agent"] = "market-risk-etl/1.0"
        return session

    def _send(self, path: str, params: dict | None) -> requests.Response:
        """One paced GET; a 429 is the server's rate, not a failure: slow down and send again (no attempt used),
        until the request has been refused for longer than settings.throttle_max_wait_s."""
        first_429 = None
        while True:
            _, cuts = self.pacer.slot()
            self.stats.add(requests=1)
            try:
                resp = self._session().get(f"{self.base_url}{path}", params=params, timeout=self.timeout)
                resp.content  # noqa: B018 - read the body here, where a broken stream is a transient error
            except requests.Timeout as exc:
                raise TransientError(f"timeout ({type(exc).__name__})") from exc
            except requests.RequestException as exc:  # connection refused/reset, truncated chunked body, ...
                if isinstance(exc, requests.ConnectionError) and not self.answered:
                    raise _Unreachable(_reason(exc)) from exc
                raise TransientError(f"connection error ({_reason(exc)})") from exc
            self.answered = True
            if resp.status_code != 429:
                self.pacer.accepted()
                return resp
            self.stats.add(http_429=1, retries=1)
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            now = time.monotonic()
            first_429 = first_429 or now
            if retry_after is not None and now - first_429 + retry_after > self.throttle_max_wait_s:
                # a wait that would end past the budget is not started (an hour's hang; inf: OverflowError)
                raise _Throttled(f"HTTP 429 {_api_message(resp)} with Retry-After {retry_after:.0f} s, past the "
                                 f"{self.throttle_max_wait_s:.0f} s of refusals PIPELINE_THROTTLE_MAX_WAIT_S allows")
            self.pacer.throttled(cuts, retry_after)
            if now - first_429 > self.throttle_max_wait_s:
                raise _Throttled(f"HTTP 429 {_api_message(resp)} for {now - first_429:.0f} s "
                                 f"(pace now {self.pacer.rate:.2f} requests/s)")

    def _attempt(self, path: str, params: dict | None, expect: type) -> Any:
        resp = self._send(path, params)
        text = resp.text
        if resp.status_code >= 500:
            raise TransientError(f"HTTP {resp.status_code} {_api_message(resp)}",
                                 _retry_after(resp.headers.get("Retry-After")))
        if resp.status_code >= 400:
            raise _ClientError(resp.status_code, _api_message(resp))
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise TransientError(f"malformed body ({len(text)} bytes, not JSON: {exc})") from exc
        if not isinstance(body, expect):
            raise TransientError(f"malformed body (expected a JSON {expect.__name__}, got {type(body).__name__})")
        return body

    def get(self, path: str, params: dict | None = None, *, expect: type = dict, what: str = "") -> Any:
        """GET `path` with pacing and retries; `what` names the product/window in errors."""
        def before_sleep(state: RetryCallState) -> None:
            self.stats.add(retries=1)
            exc = state.outcome.exception() if state.outcome else None
            log.debug("retry %d for %s %s: %s", state.attempt_number, path, what, exc)

        # stop before a wait that would end past the budget: a dead server fails within max_wait_s
        retrying = Retrying(stop=stop_before_delay(self.max_wait_s), wait=self._wait, reraise=True,
                            retry=retry_if_exception_type(TransientError), before_sleep=before_sleep)
        started = time.monotonic()
        try:
            return retrying(self._attempt, path, params, expect)
        except TransientError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise SourceError(f"{what or path}: {self.base_url} kept failing for {time.monotonic() - started:.0f} s "
                              f"({attempts} attempts; last: {exc}). Check that the API is up, then rerun (finished "
                              "pages are kept), or allow longer with PIPELINE_MAX_WAIT_S") from exc
        except _Unreachable as exc:
            raise SourceError(f"{what or path}: nothing answers at {self.base_url} ({exc}). "
                              f"{_start_hint(self.base_url)}") from None
        except _Throttled as exc:
            raise SourceError(f"{what or path}: the API kept refusing at {self.base_url}: {exc}. Lower "
                              "PIPELINE_RATE_LIMIT_RPS or raise PIPELINE_THROTTLE_MAX_WAIT_S") from exc
        except _ClientError as exc:
            raise ApiRefusedError(f"{what or path}: the API refused the request (HTTP {exc.status}: {exc.message}) "
                                  f"at {self.base_url}{path} {params or ''}", exc.status, exc.message) from exc

    # ---- endpoints -----------------------------------------------------------------------------------------
    def product(self, product_id: str) -> dict:
        return self.get(f"/products/{product_id}", what=f"product {product_id}")

    def products(self) -> list[dict]:
        return self.get("/products", expect=list, what="product list")

    def candles(self, product_id: str, start: datetime, end: datetime, granularity: int) -> CandlePage:
        """One page [start, end) of at most 300 buckets; `end` goes to the API inclusive (end - granularity)."""
        params = {"granularity": granularity, "start": _iso(start),
                  "end": _iso(end - timedelta(seconds=granularity))}
        what = f"candles {product_id} [{_iso(start)}, {_iso(end)}) granularity {granularity}s"
        rows = self.get(f"/products/{product_id}/candles", params, expect=list, what=what)
        return CandlePage(product_id, start, end, granularity, rows, datetime.now(UTC))


# ---- products --------------------------------------------------------------------------------------------------
def check_products(client: ExchangeClient, products: list[str]) -> list[dict]:
    """Look each product up; unknown, delisted or trading-disabled products raise SourceError before any fetch."""
    found = []
    for product_id in products:
        try:
            info = client.product(product_id)
        except ApiRefusedError as exc:
            if exc.status != 404:
                raise
            ids = [p.get("id", "") for p in client.products() if isinstance(p, dict)]
            close = difflib.get_close_matches(product_id, ids, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else f"{len(ids)} products are listed at /products"
            raise SourceError(f"unknown product {product_id!r} at {client.base_url}: {hint} "
                              "Fix --products / PIPELINE_PRODUCTS") from None
        status = str(info.get("status", "online")).lower()
        if status == "delisted":
            raise SourceError(f"product {product_id!r} is delisted at {client.base_url} "
                              f"({info.get('status_message') or 'no candles are served'}); remove it from --products")
        if info.get("trading_disabled"):
            raise SourceError(f"product {product_id!r} has trading disabled at {client.base_url} (status {status}); "
                              "remove it from --products")
        found.append(info)
    return found


def validate_products(products: list[str], settings: Settings | None = None) -> list[dict]:
    """Product objects from /products/{id} for each product; raises SourceError for unknown/delisted/disabled."""
    settings = settings or get_settings()
    return check_products(ExchangeClient(api_url(None, settings), settings), list(products))


# ---- window planner --------------------------------------------------------------------------------------------
def floor_time(ts: datetime, granularity: int) -> datetime:
    epoch = int(to_utc(ts).timestamp())
    return datetime.fromtimestamp(epoch - epoch % granularity, tz=UTC)


def ceil_time(ts: datetime, granularity: int) -> datetime:
    floored = floor_time(ts, granularity)
    return floored if floored == to_utc(ts) else floored + timedelta(seconds=granularity)


def check_granularity(granularity: int) -> int:
    """The granularity if the API accepts it, else ConfigError naming the allowed values (0 included: no default)."""
    if isinstance(granularity, bool) or granularity not in VALID_GRANULARITIES:
        raise ConfigError(f"granularity {granularity!r} is not supported by the API: use one of "
                          f"{', '.join(map(str, VALID_GRANULARITIES))} seconds (--granularity)")
    return int(granularity)


def plan_windows(start: datetime, end: datetime, granularity: int,
                 max_buckets: int = MAX_BUCKETS) -> list[tuple[datetime, datetime]]:
    """Half-open pages [s, e) that tile the buckets starting in [start, end), each at most `max_buckets` long.

    Pages sit on the granularity grid (epoch multiples), so page k ends exactly where page k+1 starts: no bucket
    is fetched twice or skipped. The API's `end` is inclusive, so a page is requested as [s, e - granularity].
    """
    if granularity <= 0 or max_buckets < 1:
        raise ConfigError(f"plan_windows needs granularity > 0 and max_buckets >= 1 "
                          f"(got {granularity}, {max_buckets})")
    first, stop = ceil_time(start, granularity), ceil_time(end, granularity)
    step = timedelta(seconds=granularity * max_buckets)
    windows = []
    s = first
    while s < stop:
        e = min(s + step, stop)
        windows.append((s, e))
        s = e
    return windows

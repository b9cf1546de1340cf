"""etl.source: window planner, token bucket, Retry-After, and the client against the simulator's real HTTP server."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.errors import ConfigError, SourceError
from etl.source import (
    VALID_GRANULARITIES,
    ExchangeClient,
    RequestPacer,
    _retry_after,
    api_url,
    check_granularity,
    plan_windows,
    validate_products,
)

T0 = datetime(2026, 1, 5, tzinfo=UTC)


# ---- planner ---------------------------------------------------------------------------------------------------
def test_plan_windows_pages_of_300_without_gap_or_overlap():
    windows = plan_windows(T0, T0 + timedelta(minutes=1000), 60)
    assert windows == [
        (T0, T0 + timedelta(minutes=300)),
        (T0 + timedelta(minutes=300), T0 + timedelta(minutes=600)),
        (T0 + timedelta(minutes=600), T0 + timedelta(minutes=900)),
        (T0 + timedelta(minutes=900), T0 + timedelta(minutes=1000)),
    ]


def test_plan_windows_exact_multiple_and_single_bucket():
    assert plan_windows(T0, T0 + timedelta(minutes=600), 60) == [
        (T0, T0 + timedelta(minutes=300)), (T0 + timedelta(minutes=300), T0 + timedelta(minutes=600))]
    assert plan_windows(T0, T0 + timedelta(minutes=1), 60) == [(T0, T0 + timedelta(minutes=1))]
    assert plan_windows(T0, T0, 60) == []


def test_plan_windows_aligns_to_grid_on_bucket_starts():
    # buckets whose start lies in [start, end): 00:00:30 -> first bucket 00:01; end 00:05:10 -> last bucket 00:05
    windows = plan_windows(T0 + timedelta(seconds=30), T0 + timedelta(minutes=5, seconds=10), 60)
    assert windows == [(T0 + timedelta(minutes=1), T0 + timedelta(minutes=6))]


def test_plan_windows_daily():
    windows = plan_windows(T0, T0 + timedelta(days=400), 86400)
    assert [len(range(int(s.timestamp()), int(e.timestamp()), 86400)) for s, e in windows] == [300, 100]


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(0, 10**6), length=st.integers(0, 5 * 10**5),
       granularity=st.sampled_from(VALID_GRANULARITIES), max_buckets=st.integers(1, 300))
def test_plan_windows_tiles_every_bucket_exactly_once(offset, length, granularity, max_buckets):
    start = T0 + timedelta(seconds=offset)
    end = start + timedelta(seconds=length)
    windows = plan_windows(start, end, granularity, max_buckets)
    expected = [t for t in range(int(start.timestamp()), int(end.timestamp())) if t % granularity == 0] \
        if length < 20_000 else None
    covered = []
    for i, (s, e) in enumerate(windows):
        assert s < e
        assert int(s.timestamp()) % granularity == 0 and int(e.timestamp()) % granularity == 0
        n = (e - s).total_seconds() / granularity
        assert 1 <= n <= max_buckets
        if i:
            assert windows[i - 1][1] == s  # page edges meet: no gap, no overlap
        covered.extend(range(int(s.timestamp()), int(e.timestamp()), granularity))
    if expected is not None:
        assert covered == expected
    if windows:
        assert windows[0][0] >= start and windows[0][0] - start < timedelta(seconds=granularity)
        assert windows[-1][1] >= end and windows[-1][1] - end < timedelta(seconds=granularity)


def test_check_granularity_rejects_unsupported_values():
    assert check_granularity(300) == 300
    with pytest.raises(ConfigError, match="granularity 120 is not supported.*60, 300, 900, 3600, 21600, 86400"):
        check_granularity(120)


# ---- pacing ----------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_token_bucket_allows_burst_then_paces_at_rate():
    clock = FakeClock()
    bucket = RequestPacer(rate=10, burst=15, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(15)]
    assert waits == [0.0] * 15 and clock.now == 0.0
    for _ in range(30):
        bucket.acquire()
    assert clock.now == pytest.approx(3.0)  # 30 more requests at 10/s


def test_token_bucket_never_exceeds_rate_plus_burst_in_any_interval():
    clock = FakeClock()
    bucket = RequestPacer(rate=5, burst=3, clock=clock, sleep=clock.sleep)
    sent = []
    for i in range(200):
        if i % 7 == 0:
            clock.now += 0.9  # idle gaps refill the bucket, never above the burst
        bucket.acquire()
        sent.append(clock.now)
    for i in range(len(sent)):
        for j in range(i, min(len(sent), i + 40)):
            assert j - i + 1 <= 3 + 5 * (sent[j] - sent[i]) + 1e-9


def test_token_bucket_429_spends_saved_burst_and_cuts_the_rate():
    from etl.source import AIMD_DECREASE

    clock = FakeClock()
    bucket = RequestPacer(rate=10, burst=15, clock=clock, sleep=clock.sleep)
    _, cuts = bucket.slot()
    bucket.throttled(cuts)
    assert bucket.rate == pytest.approx(10 * AIMD_DECREASE) and bucket.burst == 1
    assert bucket.acquire() == pytest.approx(1 / (10 * AIMD_DECREASE))


def test_token_bucket_cuts_once_per_slowdown():
    """429s on slots planned before the last cut say nothing new: one cut, not one per request in flight."""
    from etl.source import AIMD_DECREASE

    bucket = RequestPacer(rate=10, burst=15, clock=FakeClock(), sleep=lambda s: None)
    planned = [bucket.slot()[1] for _ in range(8)]  # eight requests in flight, all planned before any 429
    for cuts in planned:
        bucket.throttled(cuts)
    assert bucket.cuts == 1 and bucket.rate == pytest.approx(10 * AIMD_DECREASE)
    bucket.throttled(bucket.slot()[1])  # a request planned after the cut is refused too: slow down again
    assert bucket.cuts == 2 and bucket.rate == pytest.approx(10 * AIMD_DECREASE**2)


def test_token_bucket_honours_retry_after():
    clock = FakeClock()
    bucket = RequestPacer(rate=10, burst=15, clock=clock, sleep=clock.sleep)
    bucket.throttled(bucket.slot()[1], retry_after=2.0)
    assert bucket.acquire() >= 2.0


def test_token_bucket_aimd_converges_near_the_servers_real_limit():
    """Against a server bucket of 4 requests/s (burst 1) the adaptive pacer sends >= 85% of 4/s once it has
    learnt the limit (from a ceiling of 10/s), with under 10% of requests refused."""
    from etl.source import AIMD_INCREASE  # noqa: F401 - the constant this test tunes against

    clock = FakeClock()
    bucket = RequestPacer(rate=10, burst=14, clock=clock, sleep=clock.sleep)
    limit, server_tokens, server_last = 4.0, 1.0, 0.0
    accepted, refused = [], 0
    for _ in range(2000):
        _, cuts = bucket.slot()
        now = clock.now
        server_tokens = min(1.0, server_tokens + (now - server_last) * limit)
        server_last = now
        if server_tokens >= 1.0:
            server_tokens -= 1.0
            bucket.accepted()
            accepted.append(now)
        else:
            refused += 1
            bucket.throttled(cuts)
    steady = [t for t in accepted if t >= 60.0]
    assert len(steady) / (steady[-1] - 60.0) >= 0.85 * limit
    assert refused / (len(accepted) + refused) < 0.10


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ConfigError, match="rate > 0"):
        RequestPacer(rate=0, burst=1)


def test_retry_after_parsing():
    assert _retry_after(None) is None
    assert _retry_after("2") == 2.0
    assert _retry_after("garbage") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_api_url_by_source(monkeypatch):
    from etl.settings import COINBASE_URL, get_settings

    monkeypatch.setenv("PIPELINE_SOURCE", "simulator")
    monkeypatch.setenv("COINBASE_API_URL", "http://127.0.0.1:9999")
    s = get_settings()
    assert api_url(None, s) == "http://127.0.0.1:9999"
    assert api_url("coinbase", s) == COINBASE_URL
    with pytest.raises(ConfigError, match="unknown source 'kraken'"):
        api_url("kraken", s)


# ---- client against the simulator's HTTP server ----------------------------------------------------------------
def _settings(**env):
    from dataclasses import replace

    from etl.settings import get_settings

    return replace(get_settings(), **env)


def test_validate_products_returns_product_objects(simulator):
    found = validate_products(["BTC-USD", "ETH-USD"], _settings(coinbase_api_url=simulator.url))
    assert [p["id"] for p in found] == ["BTC-USD", "ETH-USD"]
    assert found[0]["quote_currency"] == "USD"


def test_unknown_product_names_close_matches(simulator):
    with pytest.raises(SourceError, match=r"unknown product 'BTC-USDD'.*did you mean BTC-USD"):
        validate_products(["BTC-USDD"], _settings(coinbase_api_url=simulator.url))


def test_client_error_is_not_retried(simulator):
    client = ExchangeClient(simulator.url, _settings(coinbase_api_url=simulator.url))
    with pytest.raises(SourceError, match="HTTP 400.*Unsupported granularity"):
        client.candles("BTC-USD", T0, T0 + timedelta(minutes=2), 120)
    assert client.stats.requests == 1 and client.stats.retries == 0


def test_candles_page_has_at_most_300_rows_inside_the_window(simulator):
    client = ExchangeClient(simulator.url, _settings(coinbase_api_url=simulator.url))
    page = client.candles("BTC-USD", T0, T0 + timedelta(minutes=300), 60)
    times = [row[0] for row in page.rows]
    assert 0 < len(times) <= 300
    assert min(times) >= T0.timestamp() and max(times) < (T0 + timedelta(minutes=300)).timestamp()


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_before_any_answer_fails_at_once_saying_how_to_start_the_simulator():
    """Issue 29 item 3: no simulator running is not 27 s of retries ending in "raise PIPELINE_MAX_ATTEMPTS"."""
    port = _free_port()
    client = ExchangeClient(f"http://127.0.0.1:{port}", _settings(rate_limit_rps=1000.0, rate_limit_burst=1000))
    with pytest.raises(SourceError) as err:
        client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    assert str(err.value) == (
        f"candles BTC-USD [2026-01-05T00:00:00Z, 2026-01-05T00:05:00Z) granularity 60s: nothing answers at "
        f"http://127.0.0.1:{port} ([Errno 111] Connection refused). The exchange simulator is not running: start it "
        f"with `python -m etl simulator --port {port}` (in another terminal), or point COINBASE_API_URL at a "
        "running API")
    assert client.stats.requests == 1 and client.stats.retries == 0


def test_a_server_gone_after_answering_is_retried_for_max_wait_s(make_simulator):
    """A server that answered and then went away (a restart) is retried within PIPELINE_MAX_WAIT_S, not failed."""
    sim = make_simulator(rate_limit_rps=1000.0, burst=1000)
    client = ExchangeClient(sim.url, _settings(max_wait_s=0.5, backoff_initial_s=0.01, backoff_max_s=0.05,
                                               rate_limit_rps=1000.0, rate_limit_burst=1000))
    client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    url = sim.url
    sim.stop()
    with pytest.raises(SourceError, match=rf"{url} kept failing for [01] s \((\d+) attempts; last: connection "
                                          r"error \(\[Errno 111\] Connection refused\)\)\. Check that the API is up, then rerun "
                                          r"\(finished pages are kept\), or allow longer with PIPELINE_MAX_WAIT_S$"):
        client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    assert client.stats.requests - 1 > 3  # several attempts, all refused


def test_a_dead_server_fails_once_its_time_budget_is_spent(make_simulator):
    """Every answer a 5xx: retried with backoff until PIPELINE_MAX_WAIT_S, then one line naming the last error."""
    sim = make_simulator(fail_rate=1.0, rate_limit_rps=1000.0, burst=1000)
    client = ExchangeClient(sim.url, _settings(max_wait_s=1.0, backoff_initial_s=0.05, backoff_max_s=0.2,
                                               rate_limit_rps=1000.0, rate_limit_burst=1000))
    with pytest.raises(SourceError, match=r"granularity 60s: .* kept failing for [01] s \((\d+) attempts; last: HTTP "
                                          r"5\d\d [A-Z][a-z ]+\)") as err:
        client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    attempts = int(err.value.__str__().split(" attempts")[0].rsplit("(", 1)[1])
    assert attempts == client.stats.requests == sim.stats["served_5xx"] >= 5  # backoff 0.05, 0.1, 0.2, 0.2, ...


def _state_after(exc: Exception, attempt: int):
    from tenacity import RetryCallState, Retrying

    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    try:
        raise exc
    except Exception:
        state.set_exception(sys.exc_info())
    return state


def test_wait_honours_retry_after_else_exponential_backoff_with_jitter():
    from etl.settings import get_settings
    from etl.source import TransientError, backoff_for

    settings = get_settings()
    wait, initial = backoff_for(settings), settings.backoff_initial_s
    assert wait(_state_after(TransientError("HTTP 429", retry_after=1.5), 1)) == 1.5
    for attempt in (1, 2, 3, 4):
        waited = wait(_state_after(TransientError("HTTP 503"), attempt))
        floor = initial * 2 ** (attempt - 1)
        assert floor <= waited <= floor + initial


def test_429s_do_not_use_attempts_and_give_up_after_the_throttle_wait(make_simulator):
    """A server that keeps refusing: 429s are sent again beyond PIPELINE_MAX_WAIT_S, and the request fails only
    once it has been refused for PIPELINE_THROTTLE_MAX_WAIT_S, naming both settings."""
    sim = make_simulator(rate_limit_rps=0.01, burst=1)  # one request, then the next token in 100 s
    client = ExchangeClient(sim.url, _settings(max_wait_s=0.0, throttle_max_wait_s=1.0, rate_limit_rps=50.0,
                                               rate_limit_burst=2))
    client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    with pytest.raises(SourceError, match=r"kept refusing.*HTTP 429.*PIPELINE_THROTTLE_MAX_WAIT_S"):
        client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
    assert client.stats.http_429 == sim.stats["served_429"] > 2  # sent again although no retry is allowed
    assert client.pacer.rate < 50.0 * 0.97  # the pace came down


@pytest.mark.parametrize("retry_after", ["3600", "inf"])
def test_a_429_asking_for_a_wait_past_the_throttle_budget_fails_at_once_not_after_it(retry_after):
    """A 429 whose Retry-After (a proxy's, say: Coinbase sends none) is longer than PIPELINE_THROTTLE_MAX_WAIT_S
    used to start that wait anyway: an hour's hang for "3600", and OverflowError out of time.sleep for "inf".
    The request fails at once, naming the wait asked and the setting."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refusing(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(429)
            self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message":"Public rate limit exceeded"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    outcome = {}

    def fetch():
        client = ExchangeClient(f"http://127.0.0.1:{server.server_port}",
                                _settings(max_wait_s=0.0, throttle_max_wait_s=1.0))
        try:
            client.candles("BTC-USD", T0, T0 + timedelta(minutes=5), 60)
        except Exception as exc:  # noqa: BLE001 - the test inspects whatever it is
            outcome["error"] = exc

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=10)
    server.shutdown()
    assert not worker.is_alive(), "the client is still waiting on the server's Retry-After"
    assert isinstance(outcome.get("error"), SourceError), outcome
    assert "Retry-After" in str(outcome["error"]) and "PIPELINE_THROTTLE_MAX_WAIT_S" in str(outcome["error"])

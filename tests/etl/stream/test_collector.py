"""The live collector against the real simulator over real WebSockets: gaps, duplicates, reconnects, exact
aggregation to the served candles, trade bars, crash safety (SIGKILL) and a clean stop (SIGTERM)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests

from etl.settings import PROJECT_ROOT
from etl.simulator.price_model import SyntheticSource
from etl.simulator.trades import aggregate_trades, trades_between

SPEED = 60.0   # feed seconds per real second: a minute of trades a second


@pytest.fixture
def live(make_simulator, data_dir, monkeypatch):
    """Start a simulator whose feed replays the recent past SPEED times faster, wired in through the environment."""

    def _make(speed: float = SPEED, **faults):
        start = (time.time() - 1800) // 300 * 300   # a bar boundary half an hour ago: every candle is served
        # the feed (and its subscription snapshot's trades, from before `start`) would cross a UTC midnight, its
        # trades and bars two days' partitions: the hour before that midnight, whatever the time the test runs
        if (start - 300) // 86400 != (start + 1800) // 86400:
            start = (start + 1800) // 86400 * 86400 - 3600
        sim = make_simulator(rate_limit_rps=1000.0, burst=1000, products=("BTC-USD", "ETH-USD"), ws_speed=speed,
                             ws_start=start, **faults)
        monkeypatch.setenv("COINBASE_API_URL", sim.url)
        monkeypatch.setenv("COINBASE_WS_URL", sim.ws_url)
        monkeypatch.setenv("PIPELINE_SOURCE", "simulator")
        monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
        monkeypatch.setenv("PIPELINE_BACKOFF_INITIAL_S", "0.1")
        return sim

    return _make


def bronze(data_dir: Path, table: str) -> pd.DataFrame:
    files = sorted((data_dir / "bronze" / table).rglob("*.parquet"))
    frames = []
    for f in files:
        if any(part.startswith((".", "_")) for part in f.relative_to(data_dir).parts):
            continue
        df = pq.read_table(f).to_pandas()
        for part in f.relative_to(data_dir / "bronze" / table).parts[:-1]:
            key, _, value = part.partition("=")
            df[key] = value
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def expected_trades(product: str, first_us: int, last_us: int) -> set[str]:
    """Trade ids the model has for [first_us, last_us]: what a loss-free collection of that span holds."""
    trades = trades_between(SyntheticSource(42, (product,)), product, first_us - 1, last_us)
    return {str(t) for t in trades.trade_id.tolist()}


def trade_span(df: pd.DataFrame) -> tuple[int, int]:
    ts = pd.to_datetime(df["time"], utc=True, format="ISO8601").astype("datetime64[us, UTC]").astype("int64")
    return int(ts.min()), int(ts.max())


def test_clean_feed_has_no_gaps_and_keeps_every_trade(live, data_dir):
    from etl.stream.collector import collect

    live()
    summary = collect(["BTC-USD", "ETH-USD"], seconds=3)
    assert summary.gaps == {} and summary.missing == 0 and summary.rejects == 0
    assert summary.committed["trades"] == summary.trades > 100 and summary.committed["ticker"] == summary.tickers
    trades = bronze(data_dir, "trades")
    assert len(trades) == summary.trades
    for product, group in trades.groupby("product_id"):
        assert set(group["trade_id"]) == expected_trades(product, *trade_span(group))  # no hole, nothing extra
        assert group["sequence_num"].notna().all() and group["batch_id"].nunique() >= 3
    ticker = bronze(data_dir, "ticker")
    assert {"best_bid", "best_ask", "volume_24_h", "received_at", "sequence_num"} <= set(ticker.columns)
    assert (ticker["best_bid"].astype(float) < ticker["best_ask"].astype(float)).all()


def test_dropped_and_duplicated_messages_are_recorded_as_gaps(live, data_dir):
    from etl.stream.collector import collect

    sim = live(ws_drop_rate=0.2, ws_duplicate_rate=0.2)
    summary = collect(["BTC-USD"], seconds=3)
    gaps = bronze(data_dir, "stream_gaps")
    trades, ticker = bronze(data_dir, "trades"), bronze(data_dir, "ticker")
    last_seq = max(trades["sequence_num"].max(), ticker["sequence_num"].max(), gaps["received"].max())
    dropped = {s for kind, s in sim.ws_faults if kind == "dropped" and s < last_seq}
    duplicated = {s for kind, s in sim.ws_faults if kind == "duplicated" and s < last_seq}
    assert len(dropped) >= 2 and len(duplicated) >= 2
    # exactly the sequence numbers the simulator skipped are recorded as missing, and every repeat as a duplicate
    seq = gaps[gaps["kind"] == "sequence"].astype({"expected": int, "received": int})  # book_resync rows: null
    assert {s for e, r in zip(seq["expected"], seq["received"], strict=True) for s in range(e, r)} == dropped
    assert (seq["received"] - seq["expected"] == seq["missing"]).all() and seq["missing"].sum() == summary.missing
    dups = gaps[gaps["kind"] == "duplicate"]
    # (the stop may fall between the last message and its copy: that one is left out on both sides)
    assert {r for r in dups["received"] if r < last_seq} == duplicated and (dups["missing"] == 0).all()
    assert len(seq) == summary.gaps["sequence"] and len(dups) == summary.gaps["duplicate"]
    # a duplicated message is kept (nothing received is dropped): its trades repeat, deduplicated downstream
    assert len(trades) == summary.trades == summary.committed["trades"]


def test_heartbeat_counter_gap(live, data_dir):
    from etl.stream.collector import collect

    live(ws_drop_rate=0.7)  # fault draws are per connection and channel: seed 42 drops heartbeat 2 of the first
    summary = collect(["BTC-USD"], seconds=4)
    gaps = bronze(data_dir, "stream_gaps")
    beats = gaps[gaps["kind"] == "heartbeat"]
    assert len(beats) == summary.gaps["heartbeat"] >= 1
    assert (beats["channel"] == "heartbeats").all() and (beats["missing"] >= 1).all()


def test_reconnects_after_forced_disconnects_without_loss(live, data_dir):
    from etl.stream.collector import collect

    sim = live(ws_disconnect_every=1.0)
    summary = collect(["BTC-USD"], seconds=4)
    assert sim.ws_stats["disconnects"] >= 2 and summary.connections >= 3
    assert summary.gaps["disconnect"] >= 2
    assert summary.committed["trades"] == summary.trades  # what was received before each drop is committed
    trades = bronze(data_dir, "trades")
    assert trades["connection_id"].nunique() == summary.connections
    # the resubscription's snapshot covers the reconnect: no trade of the span is missing
    assert set(trades["trade_id"]) == expected_trades("BTC-USD", *trade_span(trades))


def test_a_sink_that_fails_for_a_while_delays_batches_and_loses_none(live, data_dir):
    """The sink refuses two writes (a store or a broker down for a moment): those batches are kept and committed,
    in order, once it is back - every trade received is in bronze. The committer task died on the first failure:
    that batch was gone and nothing more was written (the feed kept receiving into memory, no error until the
    stop), so a SIGKILL of the service then lost everything since."""
    from etl.storage import Store
    from etl.stream.collector import collect
    from etl.stream.sinks import BronzeSink

    class Refusing:
        """The bronze sink, whose 2nd and 3rd writes fail before anything is written."""

        def __init__(self):
            self.inner, self.calls, self.batches = BronzeSink(Store.from_uri(str(data_dir))), 0, []

        def write(self, batch):
            self.calls += 1
            if self.calls in (2, 3):
                raise OSError(f"store unavailable (write {self.calls})")
            self.batches.append(batch.batch_id)
            return self.inner.write(batch)

        def close(self):
            self.inner.close()

    live()
    sink = Refusing()
    summary = collect(["BTC-USD"], seconds=3, sink=sink)
    assert sink.calls > 4 and sink.batches == sorted(sink.batches)         # retried, in batch order
    assert summary.trades > 0 and summary.committed["trades"] == summary.trades
    assert len(bronze(data_dir, "trades")) == summary.trades


def test_stall_without_heartbeats_reconnects(live, data_dir, monkeypatch):
    from etl.stream.collector import collect

    monkeypatch.setenv("PIPELINE_STREAM_STALL_S", "1")
    live(speed=20.0, ws_stall_every=1.0, ws_stall_s=2.5)
    summary = collect(["BTC-USD"], seconds=4)
    assert summary.gaps["stall"] >= 1 and summary.connections >= 2
    # detected after 1 s and reconnected: the fresh subscription's snapshot (50 trades, ~75 s of feed time) covers
    # the ~25 feed seconds the stalled connection held back
    trades = bronze(data_dir, "trades")
    assert set(trades["trade_id"]) == expected_trades("BTC-USD", *trade_span(trades))


def test_slow_consumer_is_disconnected(live):
    import socket

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    sim = live(speed=600.0, ws_max_queue=5, ws_tick_ms=1)
    host, port = sim.ws_url.removeprefix("ws://").split(":")

    async def lazy_client():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's backlog builds
        sock.connect((host, int(port)))
        async with connect(sim.ws_url, sock=sock, max_queue=1, compression=None) as ws:
            for channel in ("market_trades", "ticker", "heartbeats"):
                await ws.send(json.dumps({"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"],
                                          "channel": channel}))
            deadline = time.monotonic() + 30
            while not sim.ws_stats["slow_consumers"]:  # read nothing meanwhile
                assert time.monotonic() < deadline, "the server never found the consumer slow"
                await asyncio.sleep(0.1)
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(30):
                    while True:
                        await ws.recv()
            return closed.value

    closed = asyncio.run(lazy_client())
    assert sim.ws_stats["slow_consumers"] == 1
    assert closed.rcvd is not None and closed.rcvd.code == 1008


def test_trades_aggregate_to_served_candles_and_trade_bars_reconcile(live, data_dir):
    from etl.bronze import ingest
    from etl.silver import build
    from etl.stream.collector import collect

    sim = live()
    collect(["BTC-USD"], seconds=6)
    trades = bronze(data_dir, "trades").drop_duplicates("trade_id")
    ts = pd.to_datetime(trades["time"], utc=True, format="ISO8601").astype("datetime64[us, UTC]").astype("int64")
    trades = trades.assign(ts=ts.to_numpy()).sort_values(["ts", "trade_id"])
    units = np.rint(trades["size"].astype(float).to_numpy() * 1e8).astype(np.int64)
    times, low, high, opn, close, volume = aggregate_trades(trades["ts"].to_numpy(), trades["price"].astype(float)
                                                            .to_numpy(), units, 60)
    first, last = times[1], times[-2]  # whole minutes only: the first and last may be partly streamed
    body = requests.get(f"{sim.url}/products/BTC-USD/candles",
                        params={"granularity": 60, "start": int(first), "end": int(last)}, timeout=10).json()
    served = pd.DataFrame(body, columns=["time", "low", "high", "open", "close", "volume"]).sort_values("time")
    ours = pd.DataFrame({"time": times, "low": low, "high": high, "open": opn, "close": close,
                         "volume": volume}).query("@first <= time <= @last")
    assert len(served) == len(ours) >= 4
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), served.reset_index(drop=True), check_exact=True,
                                  check_dtype=False)

    # silver: 5-minute trade bars reconcile with the candle bars of the same buckets
    ingest(["BTC-USD"], start=datetime.fromtimestamp(first - 600, UTC), end=datetime.fromtimestamp(last + 600, UTC),
           granularity=60)
    summary = build()
    assert "trade bars" in str(summary)
    bars = pq.read_table(next((data_dir / "silver" / "trade_bars_5m").rglob("part-*.parquet"))).to_pandas()
    assert (bars["n_trades"] > 0).all() and bars["is_complete"].any()
    report = json.loads((data_dir / "silver" / "_quality" / "trade_bars_reconciliation.json").read_text())
    rec = report["reconciliation"]
    assert rec["compared"] >= 1 and rec["ohlc_mismatches"] == 0 and rec["volume_mismatches"] == 0
    assert abs(rec["vwap_diff_bps_mean"]) < 50  # true VWAP vs typical price: close, not equal
    # the risk chain's reader takes either source (PIPELINE_BARS_SOURCE)
    from etl.settings import get_settings
    from etl.silver import read_bars

    os.environ["PIPELINE_BARS_SOURCE"] = "trades"
    try:
        from_trades = read_bars("5m", ["BTC-USD"], settings=get_settings())
    finally:
        del os.environ["PIPELINE_BARS_SOURCE"]
    from_candles = read_bars("5m", ["BTC-USD"], settings=get_settings())
    both = from_trades[from_trades["is_complete"]].merge(from_candles, on="bucket_start", suffixes=("_t", "_c"))
    assert len(both) >= 1 and (both["close_t"] == both["close_c"]).all() and "n_trades" in from_trades


def _start_collector(data_dir: Path, sim, commit_s: float) -> subprocess.Popen:
    env = {**os.environ, "PIPELINE_DATA_DIR": str(data_dir), "COINBASE_API_URL": sim.url,
           "COINBASE_WS_URL": sim.ws_url, "PIPELINE_SOURCE": "simulator", "PIPELINE_STREAM_COMMIT_S": str(commit_s)}
    return subprocess.Popen([sys.executable, "-m", "etl", "stream", "--products", "BTC-USD"], cwd=PROJECT_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_batch_loses_at_most_the_open_batch(live, data_dir):
    sim = live()
    commit_s = 1.0
    proc = _start_collector(data_dir, sim, commit_s)
    try:
        trades_dir = data_dir / "bronze" / "trades"
        _wait_for(lambda: len(list(trades_dir.rglob("*.parquet"))) >= 3)
        time.sleep(0.6)  # mid-batch
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    visible = [f for f in trades_dir.rglob("*.parquet") if not f.name.startswith(".")]
    for f in visible:
        pq.read_table(f)  # every visible file is whole
    trades = bronze(data_dir, "trades")
    received = pd.to_datetime(trades["received_at"], utc=True)
    assert killed_at - received.max().timestamp() <= commit_s + 1.0  # only the open batch was lost
    assert set(trades["trade_id"]) == expected_trades("BTC-USD", *trade_span(trades))  # a prefix without holes


def test_sigterm_commits_the_open_batch(live, data_dir):
    sim = live()
    proc = _start_collector(data_dir, sim, commit_s=60.0)  # nothing commits on its own during the test
    try:
        _wait_for(lambda: sim.ws_stats["trades"] >= 50)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    received = int(out.split("trades ")[1].split(",")[0].replace(",", ""))
    trades = bronze(data_dir, "trades")
    assert received > 0 and len(trades) == received
    assert trades["batch_id"].nunique() == 1


def test_stream_and_insights_refuse_an_unlisted_product(live):
    live()
    for args in (["stream", "--products", "BTC-USDD", "--seconds", "1"], ["insights", "--product-id", "ETH-USDX"]):
        proc = subprocess.run([sys.executable, "-m", "etl", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env=os.environ.copy(), timeout=60)
        assert proc.returncode == 2
        assert "did you mean" in proc.stderr and ("BTC-USD" in proc.stderr or "ETH-USD" in proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


def test_insights_shows_mid_spread_and_averages(live):
    from etl.stream.insights import run_insights

    live()
    out = io.StringIO()
    state = run_insights("BTC-USD", seconds=3.5, out=out)
    text = out.getvalue()
    assert "mid" in text and "spread" in text and "average   1 min" in text
    last_block = text.strip().split("\n\n")[-1]
    mid = float(last_block.splitlines()[1].split()[1].replace(",", ""))
    assert mid == pytest.approx(state.samples[-1][1], abs=0.006)  # the mid sampled at the last refresh
    assert state.bid < state.mid < state.ask
    assert len(state.samples) >= 2 and state.messages > 0


def test_insights_marks_the_mid_stale_while_the_feed_is_down_and_does_not_sample_it(live, monkeypatch):
    """The simulator goes away mid-run (no message, no heartbeat, reconnects refused): the last mid is not shown
    as current - the view says STALE with its age - and the frozen mid is not sampled into the averages or the
    forecaster (a clean run samples every second)."""
    import threading

    from etl.stream.insights import run_insights

    monkeypatch.setenv("PIPELINE_STREAM_STALL_S", "1")
    sim = live()
    threading.Timer(2.0, sim.stop).start()
    out = io.StringIO()
    state = run_insights("BTC-USD", seconds=6.5, out=out)
    blocks = out.getvalue().strip().split("\n\n")
    assert state.bid is not None and len(blocks) >= 6
    assert "STALE" in blocks[-1] and "no message from the feed for" in blocks[-1]
    assert all("STALE" not in b for b in blocks[:1])
    assert len(state.samples) <= 3       # seconds 1-2 (and the one the feed stopped in), not the silent ones


def test_fresh_trades_watcher_fires_on_a_new_commit(data_dir):
    from etl.storage import Store
    from etl.stream.sinks import BronzeSink, MicroBatch
    from etl.stream.watch import FreshTradesTrigger

    def commit(batch_id: str) -> None:
        batch = MicroBatch(batch_id)
        now = time.time()
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        batch.add_trade("BTC-USD", day, ("1", "100.0", "0.5", "BUY", f"{day}T00:00:00Z", "update", "market_trades",
                                         f"{day}T00:00:00Z", "", 1, "c1", now, None))
        BronzeSink(Store.from_uri(str(data_dir))).write(batch)

    commit("20260101T000000000000Z-aaaa-000001")
    trigger = FreshTradesTrigger(poll_s=0.05, data_dir=str(data_dir))
    assert trigger.serialize() == ("etl.stream.watch.FreshTradesTrigger", {"poll_s": 0.05, "data_dir": str(data_dir)})

    async def first_event():
        events = trigger.run()
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        assert not pending.done()  # nothing new yet
        commit("20260101T000001000000Z-aaaa-000002")
        return (await asyncio.wait_for(pending, timeout=10)).payload

    payload = asyncio.run(first_event())
    assert payload["newest_batch_id"] == "20260101T000001000000Z-aaaa-000002"
    assert payload["previous_batch_id"] == "20260101T000000000000Z-aaaa-000001" and payload["files"] == 2


# ---- untrusted input: field rules and the message size cap -------------------------------------------------
class ScriptedServer:
    """A real WebSocket server on a free port that sends connection i the messages scripts[i] once the client has
    subscribed (one message per channel), then stays open."""

    def __init__(self, scripts: list[list[str]]):
        import threading

        from websockets.asyncio.server import serve

        self.scripts, self.connections = scripts, 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        async def start():
            return await serve(self._handle, "127.0.0.1", 0, max_size=None)

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, ws) -> None:
        from etl.stream.feed import CHANNELS

        n, self.connections = self.connections, self.connections + 1
        for _ in CHANNELS:
            await ws.recv()
        for text in self.scripts[n] if n < len(self.scripts) else []:
            await ws.send(text)
        await ws.wait_closed()

    def close(self) -> None:
        self.server.close()
        asyncio.run_coroutine_threadsafe(self.server.wait_closed(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _message(channel: str, events: list, timestamp: str, seq: int) -> str:
    return json.dumps({"channel": channel, "client_id": "", "timestamp": timestamp, "sequence_num": seq,
                       "events": events})


def _trade(trade_id: str, when: str, **fields) -> dict:
    return {"trade_id": trade_id, "product_id": "BTC-USD", "price": "68900.50", "size": "0.0015", "side": "BUY",
            "time": when, **fields}


def test_malformed_fields_are_quarantined_never_a_partition_and_an_oversized_message_reconnects(data_dir,
                                                                                              monkeypatch):
    """The issue's inputs (a product id with a trailing newline, a trade time 9999-99-99, a price "abc") and more,
    from a scripted server: only the valid trades and tickers become rows and partitions, every bad one is a
    reject row with its reason; a message over the size cap closes the connection (1009), is counted, and the
    collector reconnects and keeps collecting."""
    from etl.stream.collector import collect

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    monkeypatch.setenv("PIPELINE_BACKOFF_INITIAL_S", "0.1")
    monkeypatch.setenv("PIPELINE_STREAM_MAX_MESSAGE_BYTES", "65536")
    now = time.time()
    t, today = _iso(now), datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    bad_trades = [_trade("11", t, product_id="BTC-USD\n"), _trade("12", "9999-99-99T00:00:00Z"),
                  _trade("13", t, price="abc"), _trade("14", t, price="NaN"), _trade("15", t, price="1e400"),
                  _trade("16", t, size="-1"), _trade("17", t, size="0"), _trade("18", t, side="HOLD"),
                  _trade("19", t, product_id="../../x-y"), _trade("20", _iso(now + 2 * 86400)),
                  _trade("2/1", t), _trade("22", t, price=68900.5), "not an object"]
    ticker = {"type": "ticker", "product_id": "BTC-USD", "price": "68900.50", "volume_24_h": "15328.12345678",
              "price_percent_chg_24_h": "-1.45", "best_bid": "68900.00", "best_bid_quantity": "1.5",
              "best_ask": "68901.00", "best_ask_quantity": "0.5"}
    bad_tickers = [{**ticker, "price": "inf"}, {**ticker, "product_id": "btc-usd"}, {**ticker, "best_ask": "-3"},
                   {**ticker, "type": "other"}]
    first = [
        _message("market_trades", [{"type": "update", "trades": [_trade("1", t), *bad_trades]}], t, 0),
        _message("ticker", [{"type": "snapshot", "tickers": [ticker, *bad_tickers]}], t, 1),
        _message("ticker", [{"type": "update", "tickers": [ticker]}], "9999-99-99T00:00:00Z", 2),   # whole message
        _message("market_trades", [{"type": "weird", "trades": [_trade("30", t)]}], t, 3),          # the event
        _message("market_trades", [{"type": "update", "trades": [_trade("40", t, pad="x" * 200_000)]}], t, 4),
        _message("market_trades", [{"type": "update", "trades": [_trade("41", t)]}], t, 5),  # never read
    ]
    second = [_message("market_trades", [{"type": "snapshot", "trades": [_trade("2", t)]}], t, 0)]
    server = ScriptedServer([first, second])
    try:
        summary = collect(["BTC-USD"], seconds=3, url=server.url, validate=False)
    finally:
        server.close()
    n_bad = len(bad_trades) + len(bad_tickers) + 2 + 1          # items, the bad message, the bad event, oversized
    assert summary.connections == server.connections == 2
    assert (summary.trades, summary.tickers, summary.rejects) == (2, 1, n_bad)
    # only valid fields named partitions
    for table in ("trades", "ticker"):
        root = data_dir / "bronze" / table
        assert sorted(str(p.relative_to(root)) for p in root.glob("product_id=*/*")) == [  # not the Delta log
            f"product_id=BTC-USD/date={today}"]
    trades = bronze(data_dir, "trades")
    assert sorted(trades["trade_id"]) == ["1", "2"] and (trades["price"] == "68900.50").all()
    rejects = bronze(data_dir, "stream_rejects")
    assert len(rejects) == n_bad == summary.committed["rejects"]
    reasons = list(rejects["reason"])
    for expected in ("product_id='BTC-USD\\n' is not BASE-QUOTE", "time='9999-99-99T00:00:00Z' is not a calendar",
                     "price='abc' is not a positive decimal", "price='NaN'", "price='1e400'", "size='-1'",
                     "size='0' is not a positive decimal", "side='HOLD'", "product_id='../../x-y'",
                     "(the collector's clock -7 days/+1 day)", "trade_id='2/1'", "price=68900.5 is not",
                     "trade is not an object", "price='inf'", "product_id='btc-usd'", "best_ask='-3'",
                     "type='other' is not 'ticker'", "timestamp='9999-99-99T00:00:00Z'",
                     "event type='weird' is not snapshot or update",
                     "message over 65,536 bytes (PIPELINE_STREAM_MAX_MESSAGE_BYTES): not read, connection closed "
                     "(1009) and reopened"):
        assert sum(expected in r for r in reasons) == 1, expected
    assert json.loads(rejects.loc[rejects["reason"].str.startswith("product_id='BTC-USD"), "raw"].iat[0])[
        "product_id"] == "BTC-USD\n"                                                  # the raw text is kept
    gaps = bronze(data_dir, "stream_gaps")
    assert sorted(gaps["kind"]) == ["disconnect", "rejected_trade", "rejected_trade"]
    assert "1009" in gaps.loc[gaps["kind"] == "disconnect", "detail"].iat[0]
    # the market_trades messages that lost a trade to a field rule (the trade bars take their span as a hole)
    assert sorted(gaps.loc[gaps["kind"] == "rejected_trade", "expected"]) == [0, 3]


def test_real_coinbase_messages_pass_every_field_rule():
    """The recorded Advanced Trade messages (../shared/data/coinbase/ws_*.json) are valid as they are, at the
    time they were sent."""
    from etl.stream import validate

    data = PROJECT_ROOT.parent.parent / "shared" / "data" / "coinbase"
    if not data.is_dir():
        data = Path("/work/shared/data/coinbase")
    for name, key, check in (("ws_market_trades.json", "trades", validate.trade_problem),
                             ("ws_ticker.json", "tickers", lambda item, _: validate.ticker_problem(item))):
        msg = json.loads((data / name).read_text())
        sent = datetime.fromisoformat(msg["timestamp"][:19]).replace(tzinfo=UTC).timestamp()
        bounds = validate.window(sent)
        assert validate.envelope_problem(msg, bounds) is None
        for event in msg["events"]:
            assert validate.event_problem(event, key) is None
            assert [check(item, bounds) for item in event[key]] == [None] * len(event[key])
        assert len((data / name).read_bytes()) < 2_000   # what the 1 MiB message cap leaves room for



@pytest.mark.parametrize("bad", [None, "7", 7.0, -1, True])
def test_a_message_without_an_integer_sequence_num_is_rejected_and_its_place_is_a_hole(data_dir, monkeypatch, bad):
    """Coinbase numbers every message (`sequence_num`, an integer from 0). A market_trades message whose number is
    missing or not one is a reject naming the field, and its place in the connection is a hole:
    - late, after a lost message (seq 5 skipped): its trades were stored with a null number, which the trade bars
      counted as the connection's first run, stretching that run over the lost message: the bar was complete
      (`True` crashed the commit instead: a bool is no int64);
    - in the middle of a clean run, with -1 or `true` (an int to the feed's check): its trades were lost without a
      sequence gap, the bar missing them was complete."""
    import time as _time

    from etl.silver.trade_bars import TRADE_BARS_DIR, build_trade_bars
    from etl.stream.collector import collect
    from tests.etl.silver.test_trade_bars import bronze_table

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    bar = (_time.time() - 3600) // 300 * 300
    t = _iso(_time.time())
    offsets = [-10, 5, 65, 125, 185, 245, 290, 310]
    numbered = [json.loads(_message("market_trades", [{"type": "update", "trades": [_trade(str(i + 1), _iso(bar + s))]}],
                                    t, i)) for i, s in enumerate(offsets)]

    def unnumbered(offset: int) -> dict:
        msg = json.loads(_message("market_trades", [{"type": "update", "trades": [_trade("99", _iso(bar + offset))]}],
                                  t, 0))
        return {**{k: v for k, v in msg.items() if k != "sequence_num"}, **({} if bad is None else {"sequence_num": bad})}

    late = [*(m for m in numbered if m["sequence_num"] != 5), unnumbered(320)]
    middle = [*numbered[:5], unnumbered(200), *({**m, "sequence_num": m["sequence_num"] + 1} for m in numbered[5:])]
    for case, script in (("late", late), ("middle", middle)):
        for path in (data_dir / "bronze", data_dir / "silver"):
            shutil.rmtree(path, ignore_errors=True)
        server = ScriptedServer([[json.dumps(m) for m in script]])
        try:
            summary = collect(["BTC-USD"], seconds=1.5, url=server.url, validate=False)
        finally:
            server.close()
        assert summary.rejects == 1, case
        assert "sequence_num=" in bronze(data_dir, "stream_rejects")["reason"].iat[0], case
        build_trade_bars()
        row = bronze_table(data_dir, TRADE_BARS_DIR).set_index("bucket_start").loc[pd.Timestamp(bar, unit="s", tz="UTC")]
        assert row["n_candles"] == 5 and not row["is_complete"], case


def test_a_heartbeat_whose_events_is_not_a_list_is_a_reject_not_the_end_of_the_collector(data_dir, monkeypatch):
    """`"events": 5` on the heartbeats channel (bad input) raised TypeError out of the feed's heartbeat check: the
    collector stopped, and the trades after it were never received. It is a reject naming the field; the feed goes on."""
    from etl.stream.collector import collect

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    t = _iso(time.time())
    script = [_message("heartbeats", [{"current_time": t, "heartbeat_counter": 1}], t, 0),
              json.dumps({"channel": "heartbeats", "client_id": "", "timestamp": t, "sequence_num": 1, "events": 5}),
              _message("heartbeats", [{"current_time": t, "heartbeat_counter": 2}], t, 2),
              _message("market_trades", [{"type": "update", "trades": [_trade("1", t)]}], t, 3)]
    server = ScriptedServer([script])
    try:
        summary = collect(["BTC-USD"], seconds=1.5, url=server.url, validate=False)
    finally:
        server.close()
    assert summary.trades == 1 and summary.rejects == 1 and summary.connections == 1
    assert bronze(data_dir, "stream_rejects")["reason"].iat[0] == "events is not a list"


def test_values_no_bronze_column_can_hold_are_rejects_or_text_never_a_batch_that_cannot_be_written(data_dir,
                                                                                                   monkeypatch):
    """A sequence_num or heartbeat counter beyond int64, a channel that is not text: each used to reach a row of the
    open batch (a trade's or a gap's) that Arrow cannot convert, so the commit failed and took the batch with it (the
    trade after them was lost)."""
    from etl.stream.collector import collect

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    t = _iso(time.time())
    huge = 2 ** 63
    script = [_message("heartbeats", [{"current_time": t, "heartbeat_counter": 1}], t, 0),
              _message("heartbeats", [{"current_time": t, "heartbeat_counter": huge}], t, 1),     # a heartbeat gap
              _message("market_trades", [{"type": "update", "trades": [_trade("1", t)]}], t, huge),
              json.dumps({"channel": 5, "client_id": "", "timestamp": t, "sequence_num": 9, "events": []}),  # a gap
              _message("market_trades", [{"type": "update", "trades": [_trade("2", t)]}], t, 10)]
    server = ScriptedServer([script])
    try:
        summary = collect(["BTC-USD"], seconds=1.5, url=server.url, validate=False)
    finally:
        server.close()
    assert summary.trades == 1 and summary.rejects == 1 and summary.committed["trades"] == 1
    assert list(bronze(data_dir, "trades")["trade_id"]) == ["2"]
    assert "sequence_num=9223372036854775808 is not" in bronze(data_dir, "stream_rejects")["reason"].iat[0]
    gaps = bronze(data_dir, "stream_gaps")
    assert sorted(gaps["kind"]) == ["book_resync", "sequence"]     # the counter beyond int64 is not a number either
    assert gaps.loc[gaps["kind"] == "sequence", "channel"].iat[0] == "5"


def test_a_btc_usd_size_book_snapshot_is_read_not_refused(data_dir, monkeypatch):
    """Coinbase's `level2` snapshot is the whole book: for BTC-USD it exceeds 4 MiB most of the time (ccxt issue
    #23597; Coinbase's WebSocket best practices ask for the largest receive buffer possible). The collector
    subscribes level2 on its only connection, so under a 1 MiB cap every connection closed with 1009 on the
    snapshot and reopened for the same snapshot: no book, and no trade after it, ever. With the default cap the
    snapshot (here 25,000 levels a side, about 5 MB) is read, the book written and the trades collected."""
    from etl.stream.collector import collect

    monkeypatch.setenv("PIPELINE_STREAM_COMMIT_S", "0.5")
    monkeypatch.setenv("PIPELINE_STREAM_BOOK_SNAPSHOT_S", "0.2")
    monkeypatch.setenv("PIPELINE_BACKOFF_INITIAL_S", "0.1")
    t = _iso(time.time())
    levels = 25_000
    book = [{"side": "bid", "event_time": "1970-01-01T00:00:00Z", "price_level": f"{60000 - i * 0.01:.2f}",
             "new_quantity": "0.01500000"} for i in range(levels)]
    book += [{"side": "offer", "event_time": "1970-01-01T00:00:00Z", "price_level": f"{60000.01 + i * 0.01:.2f}",
              "new_quantity": "0.02500000"} for i in range(levels)]
    snapshot = _message("l2_data", [{"type": "snapshot", "product_id": "BTC-USD", "updates": book}], t, 0)
    assert len(snapshot) > 4 << 20
    update = _message("l2_data", [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": t, "price_level": "60000.00", "new_quantity": "0.5"}]}], t, 1)
    trades = _message("market_trades", [{"type": "update", "trades": [_trade("1", t)]}], t, 2)
    server = ScriptedServer([[snapshot, update, trades]])
    try:
        summary = collect(["BTC-USD"], seconds=3, url=server.url, validate=False)
    finally:
        server.close()
    assert (summary.connections, summary.rejects, summary.trades, dict(summary.gaps)) == (1, 0, 1, {})
    top = bronze(data_dir, "order_book")
    top = top[top["level"] == 1].drop_duplicates("side").set_index("side")
    assert (top.loc["bid", "price"], top.loc["bid", "quantity"]) == (60000.0, 0.5)
    assert (top.loc["offer", "price"], top.loc["offer", "quantity"]) == (60000.01, 0.025)


def test_resubscriptions_stay_within_coinbases_message_limit(live):
    """Coinbase takes about 8 client messages a second per IP (the simulator refuses the rest with an error). A
    burst of sequence gaps asked one unsubscribe + subscribe of level2 each, on top of the 4 subscriptions of the
    connection: the messages past the limit were refused, and a refused subscribe after an accepted unsubscribe
    left level2 off (no book until the next gap or reconnect). Resubscriptions are paced and coalesced: none is
    refused, and level2 is on and snapshots again after the burst."""
    from etl.stream.feed import CHANNELS, Feed

    sim = live()
    received: list[dict] = []

    async def run() -> None:
        stop = asyncio.Event()
        feed = Feed(sim.ws_url, ["BTC-USD", "ETH-USD"], lambda at, conn, msg: received.append(msg),
                    lambda gap: None, channels=(*CHANNELS, "level2"))
        task = asyncio.create_task(feed.run(stop))
        while not any(m.get("channel") == "l2_data" for m in received):
            await asyncio.sleep(0.05)
        for _ in range(6):   # six gaps within a few milliseconds, as a burst of lost messages gives
            asyncio.ensure_future(feed.resubscribe("level2"))
        await asyncio.sleep(0.01)
        burst_end = len(received)
        await asyncio.sleep(2.5)
        stop.set()
        await task
        received.append({"channel": "marker", "at": burst_end})

    asyncio.run(run())
    burst_end = received.pop()["at"]
    assert [m for m in received if m.get("type") == "error"] == [] and sim.ws_stats["refused"] == 0
    after = received[burst_end:]
    subscriptions = [m for m in after if m.get("channel") == "subscriptions"]
    assert subscriptions[-1]["events"][0]["subscriptions"]["level2"] == ["BTC-USD", "ETH-USD"]
    assert {e["product_id"] for m in after if m.get("channel") == "l2_data" for e in m["events"]
            if e["type"] == "snapshot"} == {"BTC-USD", "ETH-USD"}

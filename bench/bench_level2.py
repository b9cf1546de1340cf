"""Order-book collection speed: the collector keeping `level2` books for 10 products (messages per second and CPU
per message) against a plain `websockets` loop that only parses each message, as bench_stream does for trades.

The simulator runs in its own process (10 products, feed clock 60x, a tick every 10 ms: an `l2_data` update per
product per tick with the levels that changed, plus trades and tickers). Both consumers subscribe the same channels
(heartbeats, market_trades, ticker, level2) and get the same feed for the same time:
- ours: `etl.stream.collector.collect` (field rules on every level update, books per product with gap handling,
  trade/ticker rows, bronze snapshots of the top 50 levels every second, Parquet commits every COMMIT_S),
- baseline: `async for raw in ws: json.loads(raw)`.
CPU per message is process_time in this process (commit thread included) over all messages received.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_stream import against_simulator

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD", "AVAX-USD", "LINK-USD", "DOT-USD",
            "LTC-USD"]
CHANNELS = ("heartbeats", "market_trades", "ticker", "level2")
COMMIT_S = 1.0
SIMULATOR = """
import sys, time
from etl.simulator import SimulatorConfig, serve
serve(SimulatorConfig(port=int(sys.argv[1]), ws_speed=60.0, ws_tick_ms=10.0, ws_start=time.time() - 86400,
                      rate_limit_rps=0, products=tuple(sys.argv[2].split(","))))
"""


def _ours(url: str, seconds: float) -> dict:
    from etl.settings import get_settings
    from etl.stream.collector import collect

    with tempfile.TemporaryDirectory() as tmp:
        env = {"PIPELINE_DATA_DIR": tmp, "PIPELINE_STREAM_COMMIT_S": str(COMMIT_S),
               "PIPELINE_STREAM_BOOK_SNAPSHOT_S": "1", "PIPELINE_STREAM_BOOK_DEPTH": "50"}
        os.environ.update(env)
        try:
            cpu = time.process_time()
            summary = collect(PRODUCTS, seconds=seconds, settings=get_settings(), url=url, validate=False)
            cpu = time.process_time() - cpu
        finally:
            for key in env:
                del os.environ[key]
    span = summary.last_received_at - summary.first_received_at
    return {"messages": summary.messages, "book_messages": summary.book_messages, "rate": (summary.messages - 1) / span,
            "cpu_per_msg": cpu / summary.messages, "book_levels": summary.committed["book"],
            "resyncs": summary.gaps["book_resync"], "rejects": summary.rejects}


def _baseline(url: str, seconds: float) -> dict:
    from websockets.asyncio.client import connect

    async def loop():
        n = book = 0
        first = last = 0.0
        async with connect(url, compression=None, max_size=None) as ws:
            for channel in CHANNELS:
                await ws.send(json.dumps({"type": "subscribe", "product_ids": PRODUCTS, "channel": channel}))
            began = time.monotonic()
            cpu = time.process_time()
            async for raw in ws:
                msg = json.loads(raw)
                last = time.time()
                first = first or last
                n += 1
                book += msg.get("channel") == "l2_data"
                if time.monotonic() - began >= seconds:
                    break
            cpu = time.process_time() - cpu
        return n, book, cpu, last - first

    n, book, cpu, elapsed = asyncio.run(loop())
    return {"messages": n, "book_messages": book, "rate": (n - 1) / elapsed, "cpu_per_msg": cpu / n}


def run(quick: bool = False) -> dict:
    seconds = 2.0 if quick else 10.0
    base, ours = against_simulator(SIMULATOR, PRODUCTS, seconds, _baseline, _ours)
    stated = {"input": f"{ours['messages']:,} messages, {ours['book_messages']:,} of them l2_data (ours) / "
                       f"{base['messages']:,}, {base['book_messages']:,} l2_data (baseline) over {seconds:g} s each, "
                       f"{len(PRODUCTS)} products, simulator at 60x with a tick every 10 ms",
              "command": "python -m etl stream --products LIST --seconds N (in-process: etl.stream.collector.collect)",
              "baseline_command": "websockets connect(url); async for raw in ws: json.loads(raw)",
              "book_levels_committed": ours["book_levels"], "book_resyncs": ours["resyncs"],
              "rejects": ours["rejects"]}
    capacity = 1.0 / ours["cpu_per_msg"]
    return {
        "level2_cpu_per_message": {
            "ours_s": ours["cpu_per_msg"], "baseline": "plain websockets loop, json.loads only (same feed)",
            "baseline_s": base["cpu_per_msg"], "ratio": base["cpu_per_msg"] / ours["cpu_per_msg"],
            "ratio_means": "baseline_s / ours_s (CPU seconds per message; < 1: the collector does more work)",
            "target": ">= 2,000 msg/s of CPU capacity with books for 10 products",
            "meets_target": bool(capacity >= 2000), "capacity_msgs_per_s": capacity, **stated},
        "level2_throughput": {
            "ours_s": 1.0 / ours["rate"], "baseline": "plain websockets loop, json.loads only (same feed)",
            "baseline_s": 1.0 / base["rate"], "ratio": ours["rate"] / base["rate"],
            "ratio_means": "ours msg/s / baseline msg/s (seconds per message; the simulator's send rate caps both)",
            "target": ">= 0.9 of the baseline's rate, no book resync (keeps up with 10 books)",
            "meets_target": bool(ours["rate"] >= 0.9 * base["rate"] and ours["resyncs"] == 0),
            "ours_msgs_per_s": ours["rate"], "baseline_msgs_per_s": base["rate"], **stated},
    }


if __name__ == "__main__":
    for name, entry in run(quick="--quick" in sys.argv).items():
        print(name, json.dumps(entry, default=float))

"""Simulator speed: a candle page from the model, 400 daily candles from cold caches, HTTP requests per second.

Baselines run in the same process on the same candles: pandas groupby/resample for the aggregations, and one
new connection per request (what a client without keep-alive pays) for the HTTP server.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import requests
from bench_factors import best_of  # one helper for best-of-N timing

from etl.simulator import Simulator, SimulatorConfig, candle_arrays, candles
from etl.simulator import price_model as model

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def _clear_caches() -> None:
    for cached in (model._minute_day, model._log_path, model._coarse_day, model._market_minutes):
        cached.cache_clear()


def _entry(ours: float, baseline: str, baseline_s: float, target: str, meets: bool, **stated: str) -> dict:
    """`stated`: input, command, baseline_command."""
    return {"ours_s": ours, "baseline": baseline, "baseline_s": baseline_s, "ratio": baseline_s / ours,
            "ratio_means": "baseline_s / ours_s", "target": target, "meets_target": bool(meets), **stated}


def bench_page(repeat: int) -> dict:
    """300 five-minute candles (1,500 minutes, two cached days) aggregated by numpy reduceat vs pandas groupby."""
    start, end = T0 + 3600, T0 + 3600 + 300 * 300
    minutes = candles(42, "ETH-USD", start, end, 60)  # warms the day cache for both sides

    def ours():
        candle_arrays(42, "ETH-USD", start, end, 300)

    def baseline():
        grouped = minutes.groupby(minutes["time"] // 300 * 300)
        grouped.agg(low=("low", "min"), high=("high", "max"), open=("open", "first"), close=("close", "last"),
                    volume=("volume", "sum"))

    ours_s, base_s = best_of(ours, repeat)[0], best_of(baseline, repeat)[0]
    return {"simulator_page_300x5m_warm": _entry(ours_s, "pandas groupby of the same cached 1-minute candles",
                                                 base_s, "< 0.01 s", ours_s < 0.01,
                                                 input="300 five-minute candles from 1,500 cached 1-minute candles "
                                                       f"(ETH-USD), best of {repeat}",
                                                 command="etl.simulator.candle_arrays(42, 'ETH-USD', start, end, 300)",
                                                 baseline_command="DataFrame.groupby(time // 300 * 300).agg(low min, "
                                                                  "high max, open first, close last, volume sum)")}


def bench_daily(days: int) -> dict:
    """`days` daily candles from cold caches: per-day generation + reduceat vs the same minutes via pandas resample."""
    start, end = T0 - days * 86_400, T0

    def ours():
        _clear_caches()
        candle_arrays(42, "SOL-USD", start, end, 86_400)

    def baseline():
        _clear_caches()
        frame = candles(42, "SOL-USD", start, end, 60)
        frame.index = pd.to_datetime(frame["time"], unit="s")
        frame.resample("1D").agg({"low": "min", "high": "max", "open": "first", "close": "last", "volume": "sum"})

    ours_s, base_s = best_of(ours, 2)[0], best_of(baseline, 2)[0]
    return {"simulator_daily_candles_cold": _entry(ours_s, f"{days} days: same minutes concatenated, pandas "
                                                   "resample('1D')", base_s, "< 1 s for 400 days",
                                                   ours_s < days / 400,
                                                   input=f"{days} daily candles of SOL-USD, model caches cleared",
                                                   command="etl.simulator.candle_arrays(42, 'SOL-USD', start, end, "
                                                           "86400)",
                                                   baseline_command="candles(42, 'SOL-USD', start, end, 60), then "
                                                                    "DataFrame.resample('1D').agg(...)")}


def bench_http(requests_n: int) -> dict:
    """Seconds per candle request (300 one-minute candles) with keep-alive vs a new connection each time."""
    config = SimulatorConfig(port=0, rate_limit_rps=0, now=lambda: T0 + 86_400)
    with Simulator(config) as sim:
        url = f"{sim.url}/products/BTC-USD/candles"
        params = [{"granularity": 60, "start": T0 + i * 60, "end": T0 + i * 60 + 299 * 60}
                  for i in range(requests_n)]
        requests.get(url, params=params[0], timeout=10)  # warm the day caches

        def ours():
            with requests.Session() as session:
                for p in params:
                    assert session.get(url, params=p, timeout=10).status_code == 200

        def baseline():
            for p in params:
                assert requests.get(url, params=p, headers={"Connection": "close"}, timeout=10).status_code == 200

        ours_s = best_of(ours, 1)[0] / requests_n
        base_s = best_of(baseline, 1)[0] / requests_n
    return {"simulator_http_candles_request": _entry(ours_s, "a new TCP connection per request", base_s,
                                                     "> 100 requests/s (< 0.01 s)", ours_s < 0.01,
                                                     input=f"{requests_n} requests of 300 1-minute candles (BTC-USD), "
                                                           "simulator unthrottled",
                                                     command="requests.Session().get(URL/products/BTC-USD/candles) "
                                                             "(keep-alive)",
                                                     baseline_command="requests.get(URL/products/BTC-USD/candles, "
                                                                      "headers={'Connection': 'close'})")}


def run(quick: bool) -> dict:
    results = {}
    results.update(bench_page(repeat=20 if quick else 100))
    results.update(bench_daily(days=100 if quick else 400))
    results.update(bench_http(requests_n=100 if quick else 500))
    for entry in results.values():
        entry["ratio"] = float(np.round(entry["ratio"], 3))
    return results

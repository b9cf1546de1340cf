"""The risk stage in shards at scale: 239 products x 10,000 portfolios in 4 shards on 2 worker processes, next to
the unsharded run of 1,000 portfolios (quick: 15 products, 20 portfolios in 2 shards next to 10 unsharded).

Setup as bench_universe (a seeded book, the simulator's universe, daily history ingested and built into silver);
the 1,000-portfolio book is the first 1,000 portfolios of the 10,000 one. Each risk step runs in its own process,
as an Airflow worker would run the task, and reports its seconds and its peak memory (VmHWM: the process' own
high-water mark; ru_maxrss would carry the forking parent's over exec):
- `unsharded`: `python -m etl risk --as-of` on the small book (today's path, one process);
- `shard i`: `etl.risk.shards.run_shard` on the large book, at most 2 at a time (the 2 workers);
- `commit`: `etl.risk.shards.commit_shards` (firm and product tables, one commit of every table).

Entry risk_sharded_10k: ours_s = the wall time of the sharded run (shards on 2 workers, then the commit);
baseline_s = the unsharded 1,000-portfolio run scaled linearly to 10,000 portfolios in one process; ratio =
baseline_s / ours_s (the gain of 2 workers net of what each shard repeats: reading inputs, the GARCH fits).
`table` lists portfolios x shards -> seconds, peak MB per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_universe import AS_OF, ROOT, make_book

from etl.simulator import UNIVERSE, Simulator, SimulatorConfig
from etl.simulator.universe import synthetic_products

STEP = """
import json, sys, time
from datetime import date
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
if spec["step"] == "cli":
    from etl.cli import main
    if main(spec["args"]) != 0:
        raise SystemExit(f"python -m etl {spec['args'][0]} failed")
else:
    from etl.risk import shards
    from etl.settings import get_settings
    as_of = date.fromisoformat(spec["as_of"])
    if spec["step"] == "shard":
        shards.run_shard(as_of, spec["shard"], spec["shards"], "bench", get_settings())
    else:
        shards.commit_shards(as_of, spec["shards"], "bench", get_settings())
seconds = time.perf_counter() - t0
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print("STEP", json.dumps({"seconds": seconds, "peak_mb": int(hwm) / 1024}))
"""


def _step(env: dict, **spec) -> dict:
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(spec)], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"risk step {spec} failed: {done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("STEP ")][-1]
    return {k: round(v, 2) for k, v in json.loads(line[len("STEP "):]).items()}


def run(quick: bool) -> dict:
    n_synthetic, small, large, n_shards, workers = (2, 10, 20, 2, 2) if quick else (250 - len(UNIVERSE), 1000,
                                                                                     10_000, 4, 2)
    history_days = 40 if quick else 120                 # as bench_universe: VaR on 60 days, backtest over 40
    synthetic = synthetic_products(n_synthetic)
    tradable = [p for p, s in {**UNIVERSE, **synthetic}.items()
                if s.status == "online" and not s.trading_disabled and not s.listed_on and not s.derived_from]
    all_products = [p for p, s in {**UNIVERSE, **synthetic}.items() if s.status == "online" and not s.trading_disabled]
    start_day = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=UTC)
    sim = Simulator(SimulatorConfig(port=0, seed=42, rate_limit_rps=0, universe=n_synthetic)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
            books = {n: make_book(Path(tmp) / f"ref{n}", all_products, tradable, n) for n in (small, large)}
            env = dict(os.environ, PIPELINE_DATA_DIR=str(Path(tmp) / "data"), PIPELINE_STATE_DIR=str(Path(tmp)),
                       PIPELINE_REFERENCE_DIR=str(Path(tmp) / f"ref{small}"), COINBASE_API_URL=sim.url,
                       PIPELINE_SOURCE="simulator", PIPELINE_RATE_LIMIT_RPS="1000", PIPELINE_RATE_LIMIT_BURST="1000",
                       PIPELINE_DAILY_HISTORY_DAYS=str(history_days), RISK_VAR_LOOKBACK_DAYS=str(history_days // 2),
                       RISK_BACKTEST_DAYS=str(history_days // 3), PYTHONPATH=str(ROOT))
            _step(env, step="cli", args=["ingest", "--granularity", "86400", "--products", ",".join(all_products),
                                         "--start", (start_day - timedelta(days=history_days)).isoformat(),
                                         "--end", (start_day + timedelta(days=1)).isoformat()])
            _step(env, step="cli", args=["silver"])
            unsharded = _step(env, step="cli", args=["risk", "--as-of", AS_OF.isoformat()])
            env["PIPELINE_REFERENCE_DIR"] = str(Path(tmp) / f"ref{large}")
            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:                  # each thread drives one worker process
                shard_steps = list(pool.map(lambda i: _step(env, step="shard", as_of=AS_OF.isoformat(), shard=i,
                                                            shards=n_shards), range(n_shards)))
            commit = _step(env, step="commit", as_of=AS_OF.isoformat(), shards=n_shards)
            wall = time.perf_counter() - t0
    finally:
        sim.stop()
    baseline_s = unsharded["seconds"] * large / small
    ratio = baseline_s / wall
    table = [{"portfolios": small, "shards": 1, "workers": 1, "step": "unsharded run", **unsharded},
             *({"portfolios": large, "shards": n_shards, "workers": workers, "step": f"shard {i}", **s}
               for i, s in enumerate(shard_steps)),
             {"portfolios": large, "shards": n_shards, "workers": workers, "step": "commit", **commit},
             {"portfolios": large, "shards": n_shards, "workers": workers, "step": "wall (shards + commit)",
              "seconds": round(wall, 2), "peak_mb": max(s["peak_mb"] for s in [*shard_steps, commit])}]
    return {"risk_sharded_10k": {
        "ours_s": round(wall, 3),
        "baseline": f"the unsharded risk run of {small:,} portfolios ({unsharded['seconds']:.1f} s, "
                    f"{unsharded['peak_mb']:.0f} MB) scaled linearly to {large:,} in one process",
        "baseline_s": round(baseline_s, 3), "ratio": round(ratio, 3),
        "ratio_means": f"baseline_s / ours_s (what {workers} workers gain over one process, net of what each shard "
                       "repeats: inputs, GARCH fits)",
        "target": ">= 1.0", "meets_target": bool(ratio >= 1.0),
        "products": len(all_products), "book_products": len(tradable), "positions": books,
        "history_days": history_days, "table": table,
        "per_portfolio_ms": {"unsharded": round(1000 * unsharded["seconds"] / small, 2),
                             "sharded_cpu": round(1000 * sum(s["seconds"] for s in shard_steps) / large, 2)},
        "input": f"{len(all_products)} products; books of {small:,} and {large:,} portfolios "
                 f"({books[small]:,} and {books[large]:,} positions), {history_days} days of daily history",
        "command": f"etl.risk.shards.run_shard x {n_shards} ({workers} processes at a time), then commit_shards",
        "baseline_command": f"python -m etl risk --as-of {AS_OF} on the {small:,}-portfolio book, x {large // small}",
    }}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

"""The end-of-day chain over the whole universe: 250 products x 1,000 generated portfolios (quick: 15 x 10).

The simulator serves the hand-set products plus `--universe N` synthetic ones; a seeded generator writes a book of
portfolios over the products listed for the whole history (instruments, portfolios, positions CSVs). Each stage is
the product's own entry point in its own process (`python -m etl ...`), so its peak memory is its own (VmHWM;
ru_maxrss would carry the forking parent's over exec):
1. ingest_daily: `ingest --granularity 86400` over the risk history, every product,
2. ingest_day: `ingest --granularity 60` of one UTC day (the intraday candles of the day), every product,
3. silver, 4. risk --as-of, 5. factors up to the end of the day (`etl.factors.run_factors(end=...)`).
Ingest runs against an unthrottled simulator; the physical limit is the same day at the API ceiling: the pages of
a 250-product day of 1-minute candles (5 per product) plus the daily history pages, at 10 requests/s.

Entry universe_eod_chain: ours_s = silver + risk + factors (the compute after the data is in); baseline_s = the
ingest of the day at the API ceiling; ratio = baseline_s / ours_s (>= 1: the chain keeps up with the data, the API
is the bottleneck). Per-stage seconds and peak MB are in the entry; `bottleneck` names the slowest compute stage.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from etl.simulator import UNIVERSE, Simulator, SimulatorConfig
from etl.simulator.universe import product_spec, synthetic_products
from etl.source import MAX_BUCKETS

ROOT = Path(__file__).resolve().parent.parent
API_RPS = 10.0               # Coinbase's public limit
AS_OF = date(2026, 1, 20)
SEED = 2026
STAGE = """
import json, sys, time
from datetime import datetime
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
if spec.get("factors_end"):  # `factors --end` is not in the CLI yet (issue 12 item 7): its entry point directly
    from etl.factors import run_factors
    run_factors(end=datetime.fromisoformat(spec["factors_end"]))
else:
    from etl.cli import main
    if main(spec["args"]) != 0:
        raise SystemExit(f"python -m etl {spec['args'][0]} failed")
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print("STAGE", json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": int(hwm) / 1024}))
"""


def make_book(ref_dir: Path, listed: list[str], products: list[str], n_portfolios: int, seed: int = SEED) -> int:
    """Instruments for `listed`; seeded portfolios over `products`: 5-40 positions each, sizes lognormal around
    $50k (15% short); returns the number of positions."""
    rng = np.random.default_rng(seed)
    ref_dir.mkdir(parents=True, exist_ok=True)
    (ref_dir / "exchanges.csv").write_text((ROOT / "etl" / "reference_data" / "exchanges.csv").read_text())
    specs = {p: product_spec(p) for p in listed}
    with open(ref_dir / "instruments.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "base_currency", "quote_currency", "exchange_id", "asset_class", "display_name"])
        for p in listed:
            s = specs[p]
            w.writerow([p, s.base, s.quote, "coinbase", "crypto_major" if s.daily_volume_usd > 1e8 else "crypto_alt",
                        f"{s.base} / {s.quote}"])
    n_positions = 0
    with open(ref_dir / "portfolios.csv", "w", newline="") as f, \
            open(ref_dir / "positions.csv", "w", newline="") as g:
        pw, qw = csv.writer(f), csv.writer(g)
        pw.writerow(["portfolio_id", "name", "base_currency", "var_limit", "concentration_limit", "drawdown_limit",
                     "var_limit_metric"])
        qw.writerow(["portfolio_id", "product_id", "as_of_date", "quantity", "avg_cost"])
        for i in range(1, n_portfolios + 1):
            pid = f"G{i:04d}"
            k = int(rng.integers(5, min(40, len(products)) + 1))
            held = rng.choice(len(products), size=k, replace=False)
            usd = np.exp(rng.normal(np.log(50_000), 1.0, k)) * np.where(rng.random(k) < 0.15, -1, 1)
            pw.writerow([pid, f"Generated {i}", "USD", round(float(np.abs(usd).sum() * 0.1)), 0.6, 0.9, ""])
            for j, usd_j in zip(held, usd, strict=True):
                price = specs[products[j]].start_price
                qw.writerow([pid, products[j], "2025-06-01", f"{usd_j / price:.8g}", f"{price:.8g}"])
            n_positions += k
    return n_positions


def _stage(args: list[str], env: dict, **spec) -> dict:
    """One stage in its own process: seconds inside the entry point (imports excluded) and the process' max RSS."""
    done = subprocess.run([sys.executable, "-c", STAGE, json.dumps({"args": args, **spec})], env=env, cwd=str(ROOT), capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"stage {args} failed: {done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("STAGE ")][-1]
    return json.loads(line[len("STAGE "):])


def run(quick: bool) -> dict:
    n_synthetic, n_portfolios = (2, 10) if quick else (250 - len(UNIVERSE), 1000)
    history_days = 40 if quick else 120   # full: VaR on 60 days, backtest over 40 (setup cost: the model's days)
    synthetic = synthetic_products(n_synthetic)
    # the book holds products trading over the whole history (no mid-history listing, no delisting)
    tradable = [p for p, s in {**UNIVERSE, **synthetic}.items()
                if s.status == "online" and not s.trading_disabled and not s.listed_on and not s.derived_from]
    all_products = [p for p, s in {**UNIVERSE, **synthetic}.items()
                    if s.status == "online" and not s.trading_disabled]
    start_day = datetime(AS_OF.year, AS_OF.month, AS_OF.day, tzinfo=UTC)
    sim = Simulator(SimulatorConfig(port=0, seed=42, rate_limit_rps=0, universe=n_synthetic)).start()
    stages: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-universe-") as tmp:
            positions = make_book(Path(tmp) / "ref", all_products, tradable, n_portfolios)
            env = dict(os.environ, PIPELINE_DATA_DIR=str(Path(tmp) / "data"), PIPELINE_STATE_DIR=str(Path(tmp)),
                       PIPELINE_REFERENCE_DIR=str(Path(tmp) / "ref"), COINBASE_API_URL=sim.url,
                       PIPELINE_SOURCE="simulator", PIPELINE_RATE_LIMIT_RPS="1000", PIPELINE_RATE_LIMIT_BURST="1000",
                       PIPELINE_DAILY_HISTORY_DAYS=str(history_days), RISK_VAR_LOOKBACK_DAYS=str(history_days // 2),
                       RISK_BACKTEST_DAYS=str(history_days // 3), PYTHONPATH=str(ROOT))
            products = ",".join(all_products)
            history_start = start_day - timedelta(days=history_days)
            stages["ingest_daily"] = _stage(["ingest", "--granularity", "86400", "--products", products,
                                             "--start", history_start.isoformat(),
                                             "--end", (start_day + timedelta(days=1)).isoformat()], env)
            stages["ingest_day"] = _stage(["ingest", "--products", products, "--start", start_day.isoformat(),
                                           "--end", (start_day + timedelta(days=1)).isoformat()], env)
            stages["silver"] = _stage(["silver"], env)
            stages["risk"] = _stage(["risk", "--as-of", AS_OF.isoformat()], env)
            stages["factors"] = _stage(["factors"], env, factors_end=(start_day + timedelta(days=1)).isoformat())
    finally:
        sim.stop()
    day_pages = len(all_products) * -(-86_400 // 60 // MAX_BUCKETS)
    daily_pages = len(all_products) * -(-(history_days + 1) // MAX_BUCKETS)
    ceiling_s = (day_pages + daily_pages) / API_RPS
    compute = {k: stages[k] for k in ("silver", "risk", "factors")}
    ours_s = sum(v["seconds"] for v in compute.values())
    bottleneck = max(compute, key=lambda k: compute[k]["seconds"])
    ratio = ceiling_s / ours_s
    return {"universe_eod_chain": {
        "ours_s": round(ours_s, 3),
        "baseline": f"ingest of the day for {len(all_products)} products at the API ceiling "
                    f"({day_pages + daily_pages} pages at {API_RPS:g} requests/s)",
        "baseline_s": round(ceiling_s, 3), "ratio": round(ratio, 3),
        "ratio_means": "baseline_s / ours_s (>= 1: silver + risk + factors keep up with the data; the API bounds)",
        "target": ">= 1.0", "meets_target": bool(ratio >= 1.0),
        "products": len(all_products), "book_products": len(tradable), "portfolios": n_portfolios,
        "positions": positions, "history_days": history_days,
        "bottleneck": f"{bottleneck} ({compute[bottleneck]['seconds']:.1f} s, peak "
                      f"{compute[bottleneck]['peak_mb']:.0f} MB)",
        "stages": {k: {"seconds": round(v["seconds"], 2), "peak_mb": round(v["peak_mb"], 1)}
                   for k, v in stages.items()},
        "input": f"{len(all_products)} products, {n_portfolios} portfolios ({positions:,} positions), "
                 f"{history_days} days of daily history + one day of 1-minute candles",
        "command": f"python -m etl silver; python -m etl risk --as-of {AS_OF}; etl.factors.run_factors(end=...) "
                   "(each in its own process)",
        "baseline_command": f"none: the day's {day_pages + daily_pages} pages at {API_RPS:g} requests/s "
                            "(Coinbase's public limit)", "baseline_is_limit": True,
    }}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

"""Silver speed on the real path: `python -m etl silver --full-refresh` against one DuckDB script doing the same job.

Input (bench/silver_bronze.py): bronze in the exact layout `etl.bronze.ingest` writes (one file per product-day
through bronze's own page-to-rows function, manifests), 1-minute candles of the 13 products of the instrument
master: a backfill batch plus an overlapping incremental batch (duplicates to drop). Sizes: `4m` = 8 months
(~4.3 M candles, 3,185 files), `20m` = 3 years (~20 M candles, 14,600 files); quick: 10 days. The bronze is made
once per size and kept under the system temp folder (`etl-bench-silver/`), as it takes minutes at 20 M.

Each side runs as its own command in a fresh subprocess, from bronze Parquet on disk to silver files on disk, on
an empty silver folder (removed before each run, untimed): ours is the CLI itself (lock, state, quarantine and
quality files included); the baseline is `python bench/silver_duckdb.py DATA OUT`. Time = the command's wall
time, peak memory = the peak PSS summed over its whole process tree (see _timed). Best of RUNS, the two sides
interleaved so both see the same load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {"4m": 243, "20m": 1123}  # days of 1-minute candles for the 13 products
QUICK_DAYS = 10
RUNS = 3
QUICK_RUNS = 2     # bench-quick's budget (2 minutes for every benchmark)
SAMPLE_S = 0.02  # memory sampling interval of the process tree
CACHE = Path(tempfile.gettempdir()) / "etl-bench-silver"
OURS_COMMAND = "python -m etl silver --full-refresh"
BASELINE_COMMAND = "python bench/silver_duckdb.py DATA OUT"


def bronze(days: int) -> tuple[Path, dict]:
    """The data root holding bronze for `days` (made on first use; `bench_input.json` is written last)."""
    sys.path.insert(0, str(HERE))
    from silver_bronze import make_bronze

    from etl.reference import load_instruments

    products = tuple(load_instruments()["product_id"])
    data = CACHE / f"v3-{len(products)}x{days}d"  # v3: bronze is a Delta table (v2: every size ends in the past)
    if not (data / "bench_input.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        make_bronze(data, days, products)
    return data, json.loads((data / "bench_input.json").read_text())


def _timed(command: list[str], env: dict) -> tuple[float, float, float]:
    """(wall seconds, peak PSS GiB, peak RSS GiB) of one command run to completion, its descendants included.

    Each peak is the largest sum over the command and all its descendants alive at one moment, sampled every
    SAMPLE_S. PSS (proportional set size) counts a page shared by n processes as 1/n in each, so a worker pool's
    common libraries are counted once: the memory the tree really holds, and the figure the target is judged on.
    The RSS sum counts shared pages once per process (it overstates a pool) and is kept for reference. os.wait4's
    ru_maxrss would be the largest single process, not a sum: it would flatter a pool.
    """
    import psutil

    t0 = time.perf_counter()
    # stderr to a file, not a pipe: a child that logs more than the pipe holds (64 KiB) would block on it forever
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    peak = [0, 0]  # PSS, RSS
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            pss = rss = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        full = p.memory_full_info()
                        pss, rss = pss + full.pss, rss + full.rss
            except psutil.Error:
                return
            peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, _ = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    err.seek(0)
    log = err.read().decode(errors="replace")
    err.close()
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({status}): {log[-2000:]}")
    proc.returncode = 0
    return seconds, peak[0] / 2**30, peak[1] / 2**30


def measure(data: Path, runs: int) -> dict[str, dict]:
    """Best of `runs` per side, interleaved; the outputs of the last runs stay for the comparison."""
    out = data / "duckdb_out"
    env = os.environ | {"PIPELINE_DATA_DIR": str(data)}
    sides = {"ours": [sys.executable, "-m", "etl", "silver", "--full-refresh"],
             "duckdb": [sys.executable, str(HERE / "silver_duckdb.py"), str(data), str(out)]}
    best: dict[str, dict] = {}
    for _ in range(runs):
        for name, command in sides.items():
            shutil.rmtree(data / "silver" if name == "ours" else out, ignore_errors=True)
            os.sync()  # untimed: the previous run's files reach the disk before this one starts, not during it
            seconds, pss, rss = _timed(command, env)
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"seconds": seconds, "peak_gib": pss, "peak_rss_gib": rss}
    return best


def same_bars(data: Path) -> bool:
    """Our 5-minute and daily bars hold the baseline's rows, closes, volumes and VWAPs."""
    import numpy as np
    import pyarrow.dataset as ds

    def read(root: Path, time_col: str):
        table = ds.dataset(root, format="parquet", partitioning="hive").to_table(
            columns=["product_id", time_col, "close", "volume", "vwap", "n_candles"])
        return table.sort_by([("product_id", "ascending"), (time_col, "ascending")])

    for kind, time_col in (("bars_5m", "bucket_start"), ("bars_1d", "price_date")):
        a, b = read(data / "silver" / kind, time_col), read(data / "duckdb_out" / kind, time_col)
        if a.num_rows != b.num_rows or not all(
                np.allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, atol=0) for c in ("close", "volume", "vwap")):
            return False
    return True


def run(quick: bool) -> dict:
    sizes = {"quick": QUICK_DAYS} if quick else SIZES
    results = {}
    for label, days in sizes.items():
        data, info = bronze(days)
        best = measure(data, QUICK_RUNS if quick else RUNS)
        o, d = best["ours"], best["duckdb"]
        agree = same_bars(data)
        ratio = o["seconds"] / d["seconds"]
        memory = o["peak_gib"] / d["peak_gib"]
        name = "silver_full_refresh_vs_duckdb" + ("" if quick else f"_{label}")
        results[name] = {
            "ours_s": round(o["seconds"], 3), "baseline": "one DuckDB script: dedup, validity filter, 5-minute and "
            "daily bars with VWAP and counts, written partitioned by product and date (bench/silver_duckdb.py)",
            "baseline_s": round(d["seconds"], 3), "ratio": round(ratio, 3),
            "ratio_means": "ours_s / baseline_s (lower is better); memory_ratio = ours / baseline peak",
            "target": "ratio <= 1.0 and memory_ratio < 0.5",
            "meets_target": ratio <= 1.0 and memory < 0.5 and agree,
            "input": f"{info['candles']:,} 1-minute candles, {info['products']} products x {info['days']} days, "
                     f"{info['files']:,} bronze files (ingest layout, 2 batches)",
            "command": OURS_COMMAND, "baseline_command": BASELINE_COMMAND,
            "runs": f"best of {QUICK_RUNS if quick else RUNS}, interleaved; each a fresh process on an empty silver folder",
            "ours_peak_gib": round(o["peak_gib"], 3), "baseline_peak_gib": round(d["peak_gib"], 3),
            "peak_measure": "PSS summed over the process tree", "ours_peak_rss_gib": round(o["peak_rss_gib"], 3),
            "baseline_peak_rss_gib": round(d["peak_rss_gib"], 3),
            "memory_ratio": round(memory, 3), "outputs_agree": agree,
        }
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

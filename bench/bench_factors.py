"""Factor model speed: rolling OLS against statsmodels RollingOLS, and the whole factor stage.

- factors_rolling_ols: n rows, window 1,440, 10 factors + constant, with R-squared and adjusted R-squared, on
  heavy-tailed correlated factors with 1% NaN rows, vs `RollingOLS(y, add_constant(X), window).fit()` (then reading
  rsquared and rsquared_adj) in the same run on the same data; target 50x. Peak memory of our call measured with
  tracemalloc (numpy reports its buffers to it); target < 2 GiB.
- factors_rolling_ols_params_only: the same call of ours (still with R-squared) vs `fit(params_only=True)`;
  target 8x.
- factors_stage: `python -m etl factors --end END` in-process (`etl.factors.run_factors`): reading the 1-minute
  candles through silver's reader (bronze, deduplicated, quality rules), universe returns, buckets, factor returns,
  the rolling regressions, the output tables committed to a temporary data root. Input: bench_silver's bronze of
  the 13 products of the instrument master (bench/silver_bronze.py, cached), 118 days (+ 2 of warm-up). No
  baseline exists (absolute time; target < 60 s).
Quick mode: n = 8,640 and the 13 products x 6 days (+ 2).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from bench_silver import QUICK_DAYS, SIZES, bronze  # its cached bronze is the factor stage's input

from etl.factors.rolling_ols import rolling_ols

WINDOW = 1_440
K = 10
GIB = 2**30


def regression_data(n: int, k: int = K, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corr = np.full((k, k), 0.5) + 0.5 * np.eye(k)
    X = rng.standard_t(4, (n, k)) @ np.linalg.cholesky(corr).T * 1e-3
    y = X @ rng.normal(0.5, 0.5, k) + rng.standard_t(4, n) * 1e-3
    X[rng.random(n) < 0.005, rng.integers(0, k)] = np.nan
    y[rng.random(n) < 0.005] = np.nan
    return y, X


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_rolling(n: int) -> dict:
    import statsmodels.api as sm
    from statsmodels.regression.rolling import RollingOLS

    y, X = regression_data(n)
    exog = sm.add_constant(X)
    rolling_ols(y, X, WINDOW)  # warm up (first-touch page faults)
    ours_s, ours = best_of(lambda: rolling_ols(y, X, WINDOW), 5)

    tracemalloc.start()
    rolling_ols(y, X, WINDOW)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def full():
            res = RollingOLS(y, exog, WINDOW).fit()
            return res.params, res.rsquared, res.rsquared_adj

        full_s, (params, r2, r2_adj) = best_of(full, 1)
        po_s, _ = best_of(lambda: RollingOLS(y, exog, WINDOW).fit(params_only=True), 1 if n > 20_000 else 3)
    max_diff = float(max(np.nanmax(np.abs(ours.params - params)), np.nanmax(np.abs(ours.r_squared - r2)),
                         np.nanmax(np.abs(ours.r_squared_adj - r2_adj))))
    common = {"n": n, "window": WINDOW, "factors": K, "max_abs_diff_vs_statsmodels": max_diff,
              "input": f"{n:,} rows x {K} factors + constant, window {WINDOW:,}, ~1% NaN rows",
              "command": f"etl.factors.rolling_ols.rolling_ols(y, X, {WINDOW}) (with R-squared and adjusted)",
              "peak_memory_mib": round(peak / 2**20, 1), "memory_target_mib": 2048, "meets_memory": peak < 2 * GIB}
    print(f"   rolling_ols n={n}: ours {ours_s:.3f}s (best of 5), RollingOLS.fit {full_s:.2f}s, "
          f"params_only {po_s:.2f}s, peak {peak / 2**20:.0f} MiB, max |diff| {max_diff:.1e}", flush=True)
    return {
        "factors_rolling_ols": {
            "ours_s": ours_s, "baseline": "statsmodels RollingOLS(y, add_constant(X), 1440).fit() + rsquared(_adj)",
            "baseline_s": full_s, "ratio": full_s / ours_s, "ratio_means": "baseline_s / ours_s", "target": 50,
            "meets_target": full_s / ours_s >= 50 and peak < 2 * GIB, **common,
            "baseline_command": f"statsmodels RollingOLS(y, add_constant(X), {WINDOW}).fit(), then .rsquared, "
                                ".rsquared_adj",
        },
        "factors_rolling_ols_params_only": {
            "ours_s": ours_s, "baseline": "statsmodels RollingOLS(...).fit(params_only=True) (ours still with R2)",
            "baseline_s": po_s, "ratio": po_s / ours_s, "ratio_means": "baseline_s / ours_s", "target": 8,
            "meets_target": po_s / ours_s >= 8, **common,
            "baseline_command": f"statsmodels RollingOLS(y, add_constant(X), {WINDOW}).fit(params_only=True)",
        },
    }


def bench_stage(days: int, bronze_days: int) -> dict:
    """run_factors over the last `days` (plus its warm-up) of bench_silver's bronze of `bronze_days`, outputs to a
    temporary root: the candles are read as `python -m etl factors` reads them, not handed over in memory."""
    from bench_warehouse import environment
    from silver_bronze import END

    from etl.factors import run_factors
    from etl.settings import get_settings

    data, _ = bronze(bronze_days)
    with tempfile.TemporaryDirectory() as tmp, environment(
            PIPELINE_DATA_DIR=tmp, PIPELINE_STATE_DIR=tmp, PIPELINE_HISTORY_DAYS=str(days)):
        (Path(tmp) / "bronze").symlink_to(data / "bronze")  # read only; the outputs go to the temporary root
        settings = get_settings()
        t0 = time.perf_counter()
        summary = run_factors(settings, end=END)
        total = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = len(summary.products)
    print(f"   stage {n} x {days} days ({summary.rows_in:,} candles read): {total:.2f}s, {summary.rows}, "
          f"process max RSS {rss_mib:.0f} MiB", flush=True)
    return {"factors_stage": {
        "ours_s": total, "baseline": f"none: absolute time of the factor stage for {n} products x {days} days of "
        "1-minute candles", "baseline_s": None, "ratio": None, "ratio_means": "n/a",
        "target": "< 60 s", "meets_target": total < 60, "candles": summary.rows_in, "rows": summary.rows,
        "process_max_rss_mib": round(rss_mib),
        "input": f"{n} products x {days} days of 1-minute candles in bronze ({summary.rows_in:,} read, the 2-day "
                 "warm-up included), bench/silver_bronze.py",
        "command": f"python -m etl factors --end {END.isoformat()} (in-process: etl.factors.run_factors(settings, "
                   "end=...)), outputs to a temporary data root",
        "baseline_command": "none: absolute time",
    }}


def run(quick: bool) -> dict:
    results = bench_rolling(8_640 if quick else 86_400)
    results.update(bench_stage(6, QUICK_DAYS) if quick else bench_stage(118, SIZES["4m"]))
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=str))

"""Intraday risk speed: the 5-minute revaluation versus recomputing the end-of-day engine, and the intraday DAG.

- `intraday_revaluation_vs_eod_engine`: 1,000 portfolios x 50 assets (USD books, 400 days of daily closes, today's
  5-minute bars up to 12:00 UTC), written as silver bars and reference CSVs in a temporary data root. Ours:
  `python -m etl intraday` for one bucket, in-process (`etl.risk.intraday_io.run_intraday_risk`: the reference,
  the scenario set the EOD run persisted, the bars, value, PnL, exposures, historical/parametric/Monte Carlo VaR
  and ES, drawdown from peak, limits, the two output files), best of 5. Baseline: the obvious alternative,
  `python -m etl risk` for the same book (`etl.risk.runner.run_risk`, a full EOD risk run: the same VaR/ES plus
  what EOD recomputes around it, its reads and writes), default parameters (250-day lookback and backtest, 10,000
  Monte Carlo scenarios), its second run (the first persists the scenario set). Target: ratio >= 20.
  Quick: 50 portfolios x 20 assets x 200 days, 2,000 scenarios, 120-day lookback and backtest.
- `intraday_dag_dags_test` (full mode only, it needs a minute or two): `airflow dags test market_data_intraday`
  for the shipped sample book (all its portfolios and products) against the simulator on a fresh database, after
  an EOD risk run in-process (the scenario set) and a first intraday run (the 1-minute history backfill). Ours:
  wall time of the next interval's run (every task: validate, fetch per product, silver, intraday risk, the light
  warehouse load with its dbt models, alerts). Baseline: the 300 s schedule interval. Target: ratio < 0.2.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from bench_airflow import dags_test_world, timed_dags_test  # one set-up and timing of `airflow dags test` runs
from bench_factors import best_of  # one helper for best-of-N timing
from bench_warehouse import environment  # one helper for a scoped environment

from etl.risk import intraday, intraday_io
from etl.risk.engine import RiskParams

ROOT = Path(__file__).resolve().parent.parent

TARGET_RATIO = 20.0
DAG_TARGET = 0.2
INTERVAL_S = 300.0


def book(n_port: int, n_assets: int, n_days: int, seed: int = 0):
    """Daily closes up to yesterday, today's 5-minute bars to 12:00, one position snapshot, USD portfolios."""
    rng = np.random.default_rng(seed)
    products = [f"A{i:03d}-USD" for i in range(n_assets)]
    today = pd.Timestamp("2026-03-31")
    days = pd.date_range(end=today - pd.Timedelta(days=1), periods=n_days, freq="D")
    market = rng.standard_normal((n_days, 1)) * 0.02
    r = 0.7 * market + rng.standard_normal((n_days, n_assets)) * rng.uniform(0.02, 0.05, n_assets)
    closes = pd.DataFrame(100 * np.cumprod(1 + r, axis=0), index=days, columns=products)
    buckets = pd.date_range(pd.Timestamp(today, tz="UTC"), pd.Timestamp(today, tz="UTC") + pd.Timedelta(hours=12),
                            freq="5min")
    path = closes.iloc[-1].to_numpy() * np.cumprod(1 + rng.standard_normal((len(buckets), n_assets)) * 0.002,
                                                   axis=0)
    bars_5m = pd.DataFrame({"product_id": np.tile(products, len(buckets)),
                            "bucket_start": np.repeat(buckets, n_assets), "close": path.ravel()})
    qty = rng.normal(0, 100, (n_port, n_assets)) * (rng.random((n_port, n_assets)) < 0.4)
    qty[:, 0] += 50                                             # everyone holds something
    pids = [f"P{i:04d}" for i in range(n_port)]
    pi, ai = np.nonzero(qty)
    positions = pd.DataFrame({"portfolio_id": np.asarray(pids)[pi], "product_id": np.asarray(products)[ai],
                              "as_of_date": days[0], "quantity": qty[pi, ai], "avg_cost": 100.0})
    portfolios = pd.DataFrame({"portfolio_id": pids, "name": pids, "base_currency": "USD", "var_limit": 1e6,
                               "concentration_limit": 0.5, "drawdown_limit": 0.2, "var_limit_metric": "var_99_hist"})
    return {"closes": closes, "bars_5m": bars_5m, "positions": positions, "portfolios": portfolios,
            "quote": dict.fromkeys(products, "USD"), "bucket": buckets[-1]}


def revaluation(quick: bool) -> dict:
    """Both sides as users run them, on one data root: the book as silver daily and 5-minute bars and reference
    CSVs; the EOD risk run for yesterday (timed the second time: the first persists the scenario set and warms the
    imports), then the intraday run of the last bucket (best of 5)."""
    from bench_eod import write_world  # (bench_eod imports this module's book)

    from etl.risk.intraday_io import run_intraday_risk
    from etl.risk.runner import run_risk
    from etl.settings import get_settings
    from tests.support.silver_sample import write_5m_bars

    n_port, n_assets, n_days = (50, 20, 200) if quick else (1000, 50, 400)
    params = RiskParams(mc_scenarios=2000, var_lookback_days=120, backtest_days=120) if quick else RiskParams()
    b = book(n_port, n_assets, n_days)
    with tempfile.TemporaryDirectory(prefix="bench-intraday-") as tmp:
        base = Path(tmp)
        as_of = date.fromisoformat(write_world(base, b))                   # daily bars to yesterday
        for product, bars in b["bars_5m"].groupby("product_id"):
            write_5m_bars(base / "data", product, b["quote"][product], pd.DatetimeIndex(bars["bucket_start"]),
                          bars["close"].to_numpy())
        with environment(PIPELINE_DATA_DIR=str(base / "data"), PIPELINE_STATE_DIR=str(base),
                         PIPELINE_REFERENCE_DIR=str(base / "ref"), PIPELINE_DAILY_HISTORY_DAYS=str(n_days + 10),
                         RISK_MC_SCENARIOS=str(params.mc_scenarios),
                         RISK_VAR_LOOKBACK_DAYS=str(params.var_lookback_days),
                         RISK_BACKTEST_DAYS=str(params.backtest_days)):
            settings = get_settings()
            run_risk(as_of, settings=settings)                            # yesterday's run: the scenario set
            base_s, _ = best_of(lambda: run_risk(as_of, settings=settings), 1)
            bucket = b["bucket"].to_pydatetime()
            now = bucket + timedelta(minutes=5)
            ours_s, summary = best_of(lambda: run_intraday_risk(bucket, settings=settings, now=now), 5)
    # the whole book revalued at fresh prices with VaR on the EOD scenario set (not a cheaper partial run)
    assert (summary.portfolios, summary.stale_products, summary.uncomputable, summary.scenario_as_of) == \
        (n_port, 0, 0, as_of.isoformat()), summary
    ratio = base_s / ours_s
    return {"intraday_revaluation_vs_eod_engine": {
        "ours_s": round(ours_s, 4),
        "baseline": "python -m etl risk for the same book (a full EOD risk run, yesterday's)",
        "baseline_s": round(base_s, 3), "ratio": round(ratio, 1), "ratio_means": "baseline_s / ours_s",
        "target": f"ratio >= {TARGET_RATIO:g}", "meets_target": ratio >= TARGET_RATIO,
        "portfolios": n_port, "assets": n_assets, "mc_scenarios": params.mc_scenarios,
        "input": f"{n_port} portfolios x {n_assets} assets, {n_days} days of daily bars, 5-minute bars to 12:00, "
                 f"{params.mc_scenarios:,} Monte Carlo scenarios, as silver and reference files",
        "command": f"python -m etl intraday --bucket {bucket.isoformat()} (in-process: "
                   "etl.risk.intraday_io.run_intraday_risk: reference, scenario set, bars, compute, write)",
        "baseline_command": f"python -m etl risk --as-of {as_of} (in-process: etl.risk.runner.run_risk)",
    }}


def dag_time() -> dict:
    """`airflow dags test market_data_intraday` for the sample book; the second interval's run is measured."""
    from etl import runlog
    from etl.local import airflow_home
    from etl.orchestration import tasks
    from etl.settings import get_settings
    from etl.storage import get_store

    base = Path(tempfile.mkdtemp(prefix="bench_intraday_"))
    with dags_test_world(base, PIPELINE_REFERENCE_DIR=str(ROOT / "etl" / "reference_data")) as url:
        settings = get_settings()
        as_of = date(2026, 3, 1)
        for product in tasks.validate_products(include_book=True, settings=settings):
            tasks.ingest_daily_history(product, as_of, settings=settings)
        tasks.build_silver(settings=settings)
        tasks.compute_risk(as_of, settings=settings)                      # the EOD scenario set
        env = airflow_home.airflow_env(settings, home=base / "airflow", database_url=url)
        airflow_home.prepare_home(env)
        first = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)                    # `dags test` date = interval end
        for when in (first, first + timedelta(minutes=5)):
            wall = timed_dags_test(env, "market_data_intraday", when)
        log = runlog.read_all(settings)
        log = log[(log["dag_id"] == "market_data_intraday") & (log["started_at"] == log["started_at"])]
        last_run = log.sort_values("started_at")["run_id"].iloc[-1]
        tasks = log[log["run_id"] == last_run].groupby(log["task_id"].str.replace(r"\[\d+\]", "", regex=True))
        per_task = tasks["duration_s"].sum().round(2).to_dict()
        rows = intraday_io.committed_rows(get_store(settings), intraday.RISK_TABLE,
                                          pd.Timestamp("2026-03-02 10:00", tz="UTC"))
    ratio = wall / INTERVAL_S
    return {"intraday_dag_dags_test": {
        "ours_s": round(wall, 2), "baseline": "the intraday schedule interval (300 s)", "baseline_s": INTERVAL_S,
        "ratio": round(ratio, 3), "ratio_means": "ours_s / baseline_s (share of the 5-minute interval used)",
        "target": f"ratio < {DAG_TARGET:g}", "meets_target": ratio < DAG_TARGET,
        "task_s": per_task, "portfolios": int(len(rows)), "var_filled": int(rows["var_99"].notna().sum()),
        "input": f"the shipped sample book ({len(rows)} portfolios), the second interval after an EOD risk run and "
                 "a first intraday run, on a fresh database",
        "command": f"airflow dags test market_data_intraday {when.isoformat()}",
        "baseline_command": "none: the 300 s schedule interval",
    }}


def run(quick: bool) -> dict:
    results = revaluation(quick)
    if not quick:
        results.update(dag_time())
    return results


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2, default=str))

"""End to end through Airflow: `airflow dags test` of the intraday then the end-of-day DAG against the real
Postgres (a fresh database) and the real simulator HTTP server, then a DAG whose source answers 500 to
everything: it retries, fails, and the run log says so.

Small on purpose (2 products, 1 day of 1-minute candles, 90 days of daily candles, a fixed past date) so the
module stays well under 5 minutes on 2 cores.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
PRODUCTS = ["BTC-USD", "ETH-USD"]
INTRADAY_DATE = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)   # interval [03-01 23:55, 03-02 00:00)
EOD_DATE = datetime(2026, 3, 2, 0, 10, tzinfo=UTC)       # interval [03-01 00:10, 03-02 00:10): as of 2026-03-01
INTRADAY_TASKS = {"validate_products", "fetch_candles", "build_silver", "compute_intraday_risk",
                  "load_intraday_warehouse", "send_intraday_alerts"}
NEXT_INTRADAY_DATE = datetime(2026, 3, 2, 0, 5, tzinfo=UTC)  # after the EOD run: bucket 03-02 00:00
EOD_TASKS = {"validate_products", "ingest_daily_history", "build_silver", "compact_bronze", "plan_risk_shards",
             "compute_risk_shard", "compute_risk", "compute_factors", "load_warehouse", "build_dbt", "export_report",
             "send_alerts"}
RISK_SHARDS = 2                                          # the EOD risk run in 2 mapped shards, then one commit


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, pg_url):
    """A migrated SQLite Airflow home, a reduced reference dir, and a simulator (all real), for this module."""
    from etl import db
    from etl.local import airflow_home
    from etl.settings import get_settings
    from etl.simulator import Simulator, SimulatorConfig
    from tests.support.reference import small_reference

    base = tmp_path_factory.mktemp("e2e")
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:  # gold from an earlier module (incremental facts)
        cur.execute("drop schema if exists raw, staging, gold cascade")
    small_reference(ROOT / "etl" / "reference_data", base / "reference", PRODUCTS)
    sim = Simulator(SimulatorConfig(port=0, rate_limit_rps=1000.0, burst=1000)).start()
    broken = Simulator(SimulatorConfig(port=0, fail_rate=1.0, rate_limit_rps=1000.0, burst=1000)).start()
    overrides = {
        "PIPELINE_STATE_DIR": str(base / "state"),
        "PIPELINE_DATABASE_URL": pg_url,
        "PIPELINE_REFERENCE_DIR": str(base / "reference"),
        "PIPELINE_SOURCE": "simulator",
        "PIPELINE_PRODUCTS": ",".join(PRODUCTS),
        "PIPELINE_HISTORY_DAYS": "1",
        "PIPELINE_DAILY_HISTORY_DAYS": "90",
        "RISK_VAR_LOOKBACK_DAYS": "60",
        "RISK_BACKTEST_DAYS": "20",
        "RISK_MC_SCENARIOS": "2000",
        "FACTOR_WINDOW": "120",
        "FACTOR_MIN_OBS": "30",
        "PIPELINE_API_POOL_SLOTS": "1",
        "PIPELINE_RISK_SHARDS": str(RISK_SHARDS),
        "PIPELINE_EOD_DEADLINE_HOURS": "0",  # `airflow dags test` of 3.3.2 crashes on DAG deadlines
        "PIPELINE_RETRY_DELAY_S": "1",       # small retry delays for the failure test
        "PIPELINE_MAX_RETRY_DELAY_S": "2",
        "PIPELINE_MAX_WAIT_S": "1",         # per HTTP request inside a task
    }
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        def env_for(data_dir: Path, url: str) -> dict[str, str]:
            os.environ["PIPELINE_DATA_DIR"] = str(data_dir)
            os.environ["COINBASE_API_URL"] = url
            settings = get_settings()
            return airflow_home.airflow_env(settings, home=base / "airflow", database_url=pg_url)

        airflow_home.prepare_home(env_for(base / "data", sim.url))
        yield {"env_for": env_for, "base": base, "sim": sim, "broken": broken}
    finally:
        sim.stop()
        broken.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.environ.pop("PIPELINE_DATA_DIR", None)
        os.environ.pop("COINBASE_API_URL", None)


def _runlog(data_dir: Path):
    from etl import runlog
    from etl.settings import get_settings

    os.environ["PIPELINE_DATA_DIR"] = str(data_dir)
    return runlog.read_all(get_settings())


def _base_task(task_id: str) -> str:
    return task_id.split("[", 1)[0]


def _dags_test(env, dag_id, when):
    from etl.local import airflow_home

    proc = airflow_home.dags_test(env, dag_id, when, timeout=420)
    output = (proc.stdout or "") + (proc.stderr or "")
    return proc, output


def test_intraday_then_end_of_day_fill_gold_and_the_run_log(airflow_stack, pg_url):
    from etl.local import demo

    data = airflow_stack["base"] / "data"
    env = airflow_stack["env_for"](data, airflow_stack["sim"].url)

    proc, output = _dags_test(env, "market_data_intraday", INTRADAY_DATE)
    assert proc.returncode == 0, output[-4000:]
    proc, output = _dags_test(env, "risk_end_of_day", EOD_DATE)
    assert proc.returncode == 0, output[-4000:]

    _assert_runs_read_like_scheduled_runs(env)

    log = _runlog(data)
    assert set(log["status"]) == {"success"}, log[log["status"] != "success"][["task_id", "message"]]
    for dag_id, tasks in (("market_data_intraday", INTRADAY_TASKS), ("risk_end_of_day", EOD_TASKS)):
        rows = log[log["dag_id"] == dag_id]
        n_rows = len(tasks) - 1 + len(PRODUCTS)  # one row per product of the mapped fetch/ingest task
        if dag_id == "risk_end_of_day":
            n_rows += RISK_SHARDS - 1            # and one per risk shard
        assert rows["run_id"].nunique() == 1, dag_id
        assert {_base_task(t) for t in rows["task_id"]} == tasks
        assert len(rows) == n_rows  # one row per task instance (mapped: one per product)
        assert rows["task_id"].is_unique
    fetch = log[log["task_id"].str.startswith("fetch_candles")]
    assert fetch["rows_out"].tolist() == [24 * 60, 24 * 60]  # first run: history_days of 1-minute candles
    risk_row = log[log["task_id"] == "compute_risk"].iloc[0]
    assert "as_of=2026-03-01" in risk_row["message"]

    counts = demo.gold_counts(pg_url)
    for table in ("fact_price_bars", "fact_price_daily", "fact_positions", "fact_portfolio_valuation",
                  "fact_risk_metrics", "fact_pipeline_runs", "dim_symbol"):
        assert counts.get(table, 0) > 0, f"gold.{table} is empty: {counts}"
    assert counts["fact_price_bars"] >= len(PRODUCTS) * 24 * 12 * 0.9

    from etl import db

    loaded = db.run_psql("select count(*) from gold.fact_pipeline_runs where dag_id = 'market_data_intraday'",
                         url=pg_url)
    assert int(loaded.strip()) == len(INTRADAY_TASKS) - 1 + len(PRODUCTS)  # the intraday rows reached it

    # the next intraday run revalues the book on the EOD run's scenario set: gold.fact_intraday_risk filled
    proc, output = _dags_test(env, "market_data_intraday", NEXT_INTRADAY_DATE)
    assert proc.returncode == 0, output[-4000:]
    rows = db.run_psql("select count(*), count(var_99), min(scenario_as_of_date), bool_and(var_99 >= var_95) "
                       "from gold.fact_intraday_risk where bucket_start = '2026-03-02 00:00+00'", url=pg_url)
    n_portfolios = len(pd.read_csv(airflow_stack["base"] / "reference" / "portfolios.csv"))
    assert rows.strip().split("|") == [str(n_portfolios), str(n_portfolios), "2026-03-01", "t"]


def _assert_runs_read_like_scheduled_runs(env):
    """etl.local.airflow_home.settle_test_run: each `dags test` run starts with its first task (a real duration, not one back-dated
    to the logical date) and has its interval's start as logical date, as the scheduled run of that interval."""
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    engine = create_engine(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    with engine.connect() as conn:
        for dag_id, when, every in (("market_data_intraday", INTRADAY_DATE, timedelta(minutes=5)),
                                    ("risk_end_of_day", EOD_DATE, timedelta(days=1))):
            run = conn.execute(text(
                "select logical_date, data_interval_start, data_interval_end, start_date, end_date, "
                "(select min(ti.start_date) from task_instance ti where ti.dag_id = r.dag_id and ti.run_id = r.run_id)"
                " as first_task from dag_run r where dag_id = :dag order by id desc limit 1"), {"dag": dag_id}).one()
            parse = [datetime.fromisoformat(str(v)).replace(tzinfo=UTC) for v in run]
            logical, start, end, started, ended, first_task = parse
            assert (start, end) == (when - every, when), dag_id
            assert logical == start, dag_id
            assert started == first_task and timedelta(0) < ended - started < timedelta(minutes=15), dag_id
    engine.dispose()


def test_failing_source_retries_then_fails_and_is_in_the_run_log(airflow_stack):
    data = airflow_stack["base"] / "data_failing"
    env = airflow_stack["env_for"](data, airflow_stack["broken"].url)
    proc, output = _dags_test(env, "market_data_intraday", INTRADAY_DATE)
    assert proc.returncode != 0 or "state=failed" in output, output[-3000:]

    log = _runlog(data).sort_values(["started_at"])
    rows = log[log["task_id"] == "validate_products"]
    assert rows["status"].tolist() == ["up_for_retry", "up_for_retry", "failed"], rows
    assert rows["try_number"].tolist() == [1, 2, 3]
    assert rows["message"].str.contains("SourceError").all()
    assert not (log["task_id"].str.startswith("fetch_candles")).any()  # nothing downstream ran


def test_bad_reference_data_fails_its_task_at_once_without_retry(airflow_stack):
    """A product the instrument master lacks will not appear on a retry: validate_products fails on its first
    attempt (AirflowFailException), one `failed` row whose message is the ValidationError itself."""
    data = airflow_stack["base"] / "data_bad_products"
    env = {**airflow_stack["env_for"](data, airflow_stack["sim"].url), "PIPELINE_PRODUCTS": "BTC-USD,NOPE-USD"}
    proc, output = _dags_test(env, "market_data_intraday", INTRADAY_DATE)
    assert proc.returncode != 0 or "state=failed" in output, output[-3000:]
    rows = _runlog(data)
    rows = rows[rows["task_id"] == "validate_products"]
    assert rows["status"].tolist() == ["failed"] and rows["try_number"].tolist() == [1], rows
    assert rows["message"].iat[0].startswith("ValidationError: product(s) ['NOPE-USD'] are not in the instrument "
                                             "master")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

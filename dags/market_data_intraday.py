"""market_data_intraday: every 5 minutes, 1-minute candles -> bronze -> touched silver partitions -> intraday risk."""

from __future__ import annotations

from airflow.sdk import task
from pipeline_common import (
    API_POOL,
    API_POOL_SLOTS,
    BRONZE_CANDLES,
    INTRADAY_PRIORITY,
    INTRADAY_RUN_TIMEOUT,
    SILVER_BARS,
    SILVER_POOL,
    WAREHOUSE_GOLD,
    pipeline_dag,
)

from etl.orchestration import spec, tasks  # light (no pandas)
from etl.orchestration.airflow_adapter import current_interval, current_ref

DOC = """
### Intraday market data
Every 5 minutes: validate the product universe (instrument master + the exchange's `/products`), fetch
1-minute candles per product (**dynamic task mapping**, all API calls in the `coinbase_api` pool sized to the
exchange's rate limit), write bronze, rebuild the touched silver partitions and publish the `silver/bars` Asset.

**Window** = the run's data interval, extended back by `PIPELINE_OVERLAP_MINUTES` so late corrections are picked
up; the first ever run backfills `PIPELINE_HISTORY_DAYS`; after skipped intervals (catchup is off) it reaches back
to the newest candle bronze holds, so they are fetched too. No `now()`: a rerun refetches the same window.
Then `compute_intraday_risk` revalues every portfolio at the interval's 5-minute bucket (value, PnL since the
previous UTC close, exposures, VaR/ES on the last end-of-day scenario set, stale prices, intraday limits),
`load_intraday_warehouse` loads only the intraday tables and builds their dbt models (`gold.fact_intraday_risk`,
`gold.fact_intraday_limit_breaches`), and `send_intraday_alerts` alerts each new breach once per day.
Its tasks have the highest priority weight of the pipeline (`INTRADAY_PRIORITY`): they take the next free slot of
the shared pools before any queued end-of-day or backfill task. A run not finished within one task timeout
(`dagrun_timeout`, `PIPELINE_TASK_TIMEOUT_MIN`) fails, with a `dagrun_timeout` row in the run log, so one stuck run
cannot hold the DAG (one run at a time) through its tasks' retries.
`python -m etl intraday --bucket ISO` runs the same risk task for one bucket (recompute after an outage).

Each task writes one row to the run log (`gold.fact_pipeline_runs`). Logic lives in `etl/orchestration/tasks.py`.
"""


@pipeline_dag(spec.INTRADAY_DAG, spec.INTRADAY_CRON, task_args=INTRADAY_PRIORITY, max_active_runs=1,
              dagrun_timeout=INTRADAY_RUN_TIMEOUT, tags=["market-data", "intraday"], doc_md=DOC)
def market_data_intraday():
    @task(pool=API_POOL)
    def validate_products() -> list[str]:
        # the universe plus every product the portfolios hold: the intraday revaluation needs their bars
        return tasks.validate_products(pool_slots=API_POOL_SLOTS, include_book=True, ref=current_ref())

    @task(pool=API_POOL, outlets=[BRONZE_CANDLES])
    def fetch_candles(product: str) -> dict:
        start, end = current_interval(spec.INTRADAY_EVERY)
        return tasks.fetch_intraday(product, start, end, pool_slots=API_POOL_SLOTS, ref=current_ref())

    @task(pool=SILVER_POOL, outlets=[SILVER_BARS])
    def build_silver(fetched: list[dict]) -> dict:
        return tasks.build_silver(ref=current_ref())

    @task
    def compute_intraday_risk() -> dict:
        return tasks.compute_intraday_risk(current_interval(spec.INTRADAY_EVERY)[0], ref=current_ref())

    @task(outlets=[WAREHOUSE_GOLD])
    def load_intraday_warehouse() -> dict:
        return tasks.load_intraday_warehouse(ref=current_ref())

    @task
    def send_intraday_alerts() -> int:
        return tasks.send_intraday_alerts(current_interval(spec.INTRADAY_EVERY)[0], ref=current_ref())

    silver = build_silver(fetch_candles.expand(product=validate_products()))
    risk = compute_intraday_risk()
    silver >> risk >> [load_intraday_warehouse(), send_intraday_alerts()]


market_data_intraday()

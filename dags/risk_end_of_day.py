"""risk_end_of_day: after the UTC close, revalue portfolios, risk, factors, warehouse + dbt, report, alerts."""

from __future__ import annotations

from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task
from pipeline_common import (
    API_POOL,
    API_POOL_SLOTS,
    BRONZE_CANDLES,
    DEFAULT_ARGS,
    RISK_OUTPUTS,
    SILVER_BARS,
    SILVER_POOL,
    WAREHOUSE_GOLD,
    eod_deadline,
)

from etl.orchestration import spec

DOC = """
### End of day risk
Runs daily 10 minutes after the UTC close for the day that just ended (the data interval's start date):

1. `validate_products` (the universe plus every product the portfolios hold), then `ingest_daily_history`
   per product (the daily candles it lacks plus `PIPELINE_DAILY_OVERLAP_DAYS`; the first run backfills
   `PIPELINE_DAILY_HISTORY_DAYS`), both in the `coinbase_api` pool, and `build_silver`; then `compact_bronze`
   (closed days' bronze partitions into one file per product-day and granularity), both in the 1-slot
   `silver_writer` pool;
2. `compute_risk` (valuation, PnL, VaR/ES three ways, drawdown, anomalies, VaR backtest, limit breaches) and
   `compute_factors` (factor returns and exposures);
3. `load_warehouse` (Postgres `raw`, upsert by key) then `build_dbt` (`dbt build` through the dbt CLI, see
   docs/orchestration.md for why not cosmos);
4. `export_report` (HTML + CSV) and `send_alerts`.

A **DeadlineAlert** fires when the run has not finished `PIPELINE_EOD_DEADLINE_HOURS` after the interval end.
Each task writes one run-log row (`gold.fact_pipeline_runs`). Logic lives in `etl/pipeline.py`.
"""


@dag(
    dag_id=spec.EOD_DAG,
    schedule=CronDataIntervalTimetable(spec.EOD_CRON, timezone="UTC"),
    start_date=spec.START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    deadline=eod_deadline(),
    tags=["risk", "end-of-day", "warehouse"],
    doc_md=DOC,
)
def risk_end_of_day():
    def ref():
        from etl.pipeline import TaskRef

        return TaskRef.from_context(get_current_context())

    def interval():
        """(start, end) of the run's daily interval; manual runs without a logical date get the last one."""
        from etl import pipeline

        return pipeline.run_interval(get_current_context(), spec.EOD_EVERY, spec.EOD_OFFSET)

    @task(pool=API_POOL)
    def validate_products() -> list[str]:
        from etl import pipeline

        return pipeline.validate_products(pool_slots=API_POOL_SLOTS, include_book=True, ref=ref())

    @task(pool=API_POOL, outlets=[BRONZE_CANDLES])
    def ingest_daily_history(product: str) -> dict:
        from etl import pipeline

        return pipeline.ingest_daily_history(product, pipeline.eod_as_of(interval()[0]),
                                             pool_slots=API_POOL_SLOTS, ref=ref())

    @task(pool=SILVER_POOL, outlets=[SILVER_BARS])
    def build_silver(ingested: list[dict]) -> dict:
        from etl import pipeline

        return pipeline.build_silver(ref=ref())

    @task(pool=SILVER_POOL)
    def compact_bronze() -> dict:
        from etl import pipeline

        return pipeline.compact_bronze(pipeline.eod_as_of(interval()[0]), ref=ref())

    @task(outlets=[RISK_OUTPUTS])
    def compute_risk() -> dict:
        from etl import pipeline

        return pipeline.compute_risk(pipeline.eod_as_of(interval()[0]), ref=ref())

    @task(outlets=[RISK_OUTPUTS])
    def compute_factors() -> dict:
        from etl import pipeline

        return pipeline.compute_factors(interval()[1], ref=ref())

    @task
    def load_warehouse() -> dict:
        from etl import pipeline

        return pipeline.load_warehouse(ref=ref())

    @task(outlets=[WAREHOUSE_GOLD])
    def build_dbt() -> dict:
        from etl import pipeline

        return pipeline.build_dbt(ref=ref())

    @task
    def export_report() -> str:
        from etl import pipeline

        return pipeline.export_report(pipeline.eod_as_of(interval()[0]), ref=ref())

    @task
    def send_alerts() -> int:
        from etl import pipeline

        return pipeline.send_alerts(pipeline.eod_as_of(interval()[0]), ref=ref())

    silver = build_silver(ingest_daily_history.expand(product=validate_products()))
    outputs = [compute_risk(), compute_factors()]
    silver >> outputs
    silver >> compact_bronze()
    dbt = build_dbt()
    outputs >> load_warehouse() >> dbt
    dbt >> [export_report(), send_alerts()]

risk_end_of_day()

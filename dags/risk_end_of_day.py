"""risk_end_of_day: after the UTC close, revalue portfolios, risk, factors, warehouse + dbt, report, alerts."""

from __future__ import annotations

from datetime import date

from airflow.sdk import task
from pipeline_common import (
    API_POOL,
    API_POOL_SLOTS,
    BRONZE_CANDLES,
    RISK_OUTPUTS,
    SILVER_BARS,
    SILVER_POOL,
    WAREHOUSE_GOLD,
    eod_deadline,
    pipeline_dag,
)

from etl.orchestration import spec, tasks  # light (no pandas)
from etl.orchestration.airflow_adapter import current_interval, current_ref
from etl.orchestration.intervals import day_end, eod_as_of

DOC = """
### End of day risk
Runs daily 10 minutes after the UTC close for the day that just ended (the data interval's start date):

1. `validate_products` (the universe plus every product the portfolios hold), then `ingest_daily_history`
   per product (the daily candles it lacks plus `PIPELINE_DAILY_OVERLAP_DAYS`; the first run backfills
   `PIPELINE_DAILY_HISTORY_DAYS`; and the as-of day's 1-minute candles the intraday runs had not fetched yet),
   both in the `coinbase_api` pool, and `build_silver`; then `compact_bronze`
   (closed days' bronze partitions into one file per product-day and granularity), both in the 1-slot
   `silver_writer` pool;
2. `compute_factors` (factor returns and exposures, whole days up to the as-of day's end), then the risk run
   (valuation, PnL, VaR/ES, drawdown, anomalies, VaR backtest, limit breaches, PnL attribution by factor, which reads the day's factors) in shards:
   `plan_risk_shards` (`PIPELINE_RISK_SHARDS`, or `PIPELINE_RISK_SHARD_PORTFOLIOS` per shard), one mapped
   `compute_risk_shard` per block of portfolios (any Celery worker; a failed one retries alone), then
   `compute_risk` adds the firm and product tables and commits every table at once;
3. `load_warehouse` (Postgres `raw`, upsert by key) then `build_dbt` (`dbt build` through the dbt CLI, see
   docs/orchestration.md for why not cosmos);
4. `export_report` (HTML + CSV) and `send_alerts`.

A **DeadlineAlert** fires when the run has not finished `PIPELINE_EOD_DEADLINE_HOURS` after the interval end.
Each task writes one run-log row (`gold.fact_pipeline_runs`). Logic lives in `etl/orchestration/tasks.py`.
"""


@pipeline_dag(spec.EOD_DAG, spec.EOD_CRON, max_active_runs=1, deadline=eod_deadline(),
              tags=["risk", "end-of-day", "warehouse"], doc_md=DOC)
def risk_end_of_day():
    def as_of() -> date:
        """The business day this run values (manual runs without a logical date get the last interval's)."""
        return eod_as_of(current_interval(spec.EOD_EVERY, spec.EOD_OFFSET)[0])

    @task(pool=API_POOL)
    def validate_products() -> list[str]:
        return tasks.validate_products(pool_slots=API_POOL_SLOTS, include_book=True, ref=current_ref())

    @task(pool=API_POOL, outlets=[BRONZE_CANDLES])
    def ingest_daily_history(product: str) -> dict:
        return tasks.ingest_daily_history(product, as_of(), pool_slots=API_POOL_SLOTS, ref=current_ref())

    @task(pool=SILVER_POOL, outlets=[SILVER_BARS])
    def build_silver(ingested: list[dict]) -> dict:
        return tasks.build_silver(ref=current_ref())

    @task(pool=SILVER_POOL)
    def compact_bronze() -> dict:
        return tasks.compact_bronze(as_of(), ref=current_ref())

    @task
    def plan_risk_shards() -> list[dict]:
        from airflow.sdk import conf

        return tasks.plan_risk_shards(max_map_length=conf.getint("core", "max_map_length"), ref=current_ref())

    @task
    def compute_risk_shard(shard: dict) -> dict:
        return tasks.compute_risk_shard(as_of(), shard["shard"], shard["shards"], inputs=shard.get("inputs"),
                                        ref=current_ref())

    @task(outlets=[RISK_OUTPUTS])
    def compute_risk(plan: list[dict]) -> dict:
        return tasks.compute_risk(as_of(), shards=len(plan), ref=current_ref())

    @task(outlets=[RISK_OUTPUTS])
    def compute_factors() -> dict:
        # whole days, up to the as-of day's end: not the interval's end (00:10), whose 10 minutes would replace the
        # next day's committed factor partitions on a rerun or backfill
        return tasks.compute_factors(day_end(as_of()), ref=current_ref())

    @task
    def load_warehouse() -> dict:
        return tasks.load_warehouse(ref=current_ref())

    @task(outlets=[WAREHOUSE_GOLD])
    def build_dbt() -> dict:
        return tasks.build_dbt(ref=current_ref())

    @task
    def export_report() -> str:
        return tasks.export_report(as_of(), ref=current_ref())

    @task
    def send_alerts() -> int:
        return tasks.send_alerts(as_of(), ref=current_ref())

    silver = build_silver(ingest_daily_history.expand(product=validate_products()))
    factors, plan = compute_factors(), plan_risk_shards()
    silver >> factors >> plan          # the risk run's PnL attribution reads the day's factor outputs
    risk = compute_risk(plan)
    compute_risk_shard.expand(shard=plan) >> risk    # commits only when every shard is done
    outputs = [risk, factors]
    silver >> compact_bronze()
    dbt = build_dbt()
    outputs >> load_warehouse() >> dbt
    dbt >> [export_report(), send_alerts()]

risk_end_of_day()

"""market_data_backfill: manual backfill of any products and window; the trigger form is the backfill tool."""

from __future__ import annotations

from airflow.sdk import task
from pipeline_common import (
    API_POOL,
    API_POOL_SLOTS,
    BACKFILL_PARAMS,
    BRONZE_CANDLES,
    SILVER_BARS,
    SILVER_POOL,
    pipeline_dag,
)

from etl.orchestration import spec, tasks  # light (no pandas)
from etl.orchestration.airflow_adapter import current_ref

DOC = """
### Backfill
Manual only. Fill in the trigger form (products, start, end, granularity, full refresh): the params are typed
and described, and `validate_params` checks the products against the instrument master and the window before
any API call, failing with a message that names the bad field. Then one `fetch_candles` per product (pool
`coinbase_api`) and `build_silver` (touched partitions, or everything with *full refresh*).
"""


@pipeline_dag(spec.BACKFILL_DAG, None, max_active_runs=2, params=BACKFILL_PARAMS,
              tags=["market-data", "backfill", "manual"], doc_md=DOC)
def market_data_backfill():
    @task
    def validate_params(params=None) -> list[dict]:
        """One fetch job per product, after checking the whole form (bad input fails at once, no retry)."""
        request = tasks.validate_backfill(dict(params or {}), ref=current_ref())
        return [{"product": p, "start": request["start"], "end": request["end"],
                 "granularity": request["granularity"]} for p in request["products"]]

    @task(pool=API_POOL, outlets=[BRONZE_CANDLES])
    def fetch_candles(job: dict) -> dict:
        return tasks.fetch_candles(job["product"], job["start"], job["end"], job["granularity"],
                                   pool_slots=API_POOL_SLOTS, ref=current_ref())

    @task(pool=SILVER_POOL, outlets=[SILVER_BARS])
    def build_silver(fetched: list[dict], params=None) -> dict:
        return tasks.build_silver(full_refresh=bool((params or {}).get("full_refresh")), ref=current_ref())

    build_silver(fetch_candles.expand(job=validate_params()))

market_data_backfill()

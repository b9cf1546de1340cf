"""The facts the DAGs and `etl` share: dag ids, schedules, pools, granularities and Asset URIs.

Plain constants (no Airflow, no I/O): the DAG files (dags/) build their timetables, pools and `Asset(...)`s
from these, and `etl` (the tasks' interval maths, the local Airflow runners' pool setup) reads the same names.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from etl.measures import LIMIT_TYPES  # noqa: F401  re-exported for dags/breach_action.py (etl.measures is stdlib only)

# ---- DAGs ---------------------------------------------------------------------------------------------------
INTRADAY_DAG = "market_data_intraday"
EOD_DAG = "risk_end_of_day"
BACKFILL_DAG = "market_data_backfill"
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)

# ---- schedules: the cron each DAG runs on and the same interval for the tasks' interval maths -----------------
INTRADAY_CRON = "*/5 * * * *"
INTRADAY_EVERY = timedelta(minutes=5)
EOD_CRON = "10 0 * * *"  # 10 minutes after the UTC close, for the day that just ended
EOD_EVERY, EOD_OFFSET = timedelta(days=1), timedelta(minutes=10)

# ---- candle granularities (seconds): what the exchange serves ---------------------------------------------
GRANULARITIES = (60, 300, 900, 3600, 21600, 86400)
DAILY = 86400

# ---- pools --------------------------------------------------------------------------------------------------
API_POOL = "coinbase_api"
# One silver writer at a time across all DAGs (build_silver, compact_bronze). Outside this pool (the CLI, other
# deployments) two writers resolve at their Delta commits (the later fails with a conflict, nothing half-written).
SILVER_POOL = "silver_writer"
SILVER_POOL_SLOTS = 1


def pools(api_pool_slots: int) -> dict[str, tuple[int, str]]:
    """Pool name -> (slots, description). `api_pool_slots`: PIPELINE_API_POOL_SLOTS (etl.settings); each API
    task paces at rate_limit_rps / slots, so the pool as a whole stays within the exchange's rate limit."""
    return {
        API_POOL: (api_pool_slots, "market-data API calls; each task paces at rate_limit_rps / slots"),
        SILVER_POOL: (SILVER_POOL_SLOTS, "one silver writer at a time: build_silver and compact_bronze"),
    }


# ---- Asset URIs (data handed between DAGs without sensors) ---------------------------------------------------
BRONZE_CANDLES_URI = "pipeline://bronze/candles"
BRONZE_TRADES_URI = "pipeline://bronze/trades"
SILVER_BARS_URI = "pipeline://silver/bars"
RISK_OUTPUTS_URI = "pipeline://outputs/risk"
WAREHOUSE_GOLD_URI = "pipeline://warehouse/gold"

"""What the DAGs share: `pipeline_dag` (start date, catch-up, default_args), the failure callback, pools, Assets,
backfill Params, the deadline.

The names and values that `etl` shares too (dag ids, schedules, pool names and sizes, granularities, Asset URIs)
live in etl.orchestration.spec; this module builds the Airflow objects from them.

Kept free of heavy imports (no pandas/pyarrow/psycopg at module level): every DAG file imports this at parse
time, and `python dags/<file>.py` must stay well under 2 s. The `etl` package is imported inside callbacks only.
Task defaults come from etl.settings (PIPELINE_TASK_RETRIES, PIPELINE_RETRY_DELAY_S, PIPELINE_MAX_RETRY_DELAY_S,
PIPELINE_TASK_TIMEOUT_MIN, PIPELINE_EOD_DEADLINE_HOURS, PIPELINE_API_POOL_SLOTS): a light import, no I/O.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetWatcher, CronDataIntervalTimetable, Param, dag

from etl.orchestration import spec
from etl.settings import get_settings

log = logging.getLogger(__name__)

_settings = get_settings()
TASK_RETRIES = _settings.task_retries                     # style guide: retries >= 2
RETRY_DELAY = timedelta(seconds=_settings.retry_delay_s)
MAX_RETRY_DELAY = timedelta(seconds=_settings.max_retry_delay_s)
TASK_TIMEOUT = timedelta(minutes=_settings.task_timeout_min)
# After the data interval's end; 0 = no deadline. `airflow dags test` in 3.3.2 crashes at the end of a
# successful run of a DAG with a deadline (it looks the serialized alert up as an id): the demo and the
# end-to-end test set 0; the scheduler path (standalone, docker-compose) keeps the alert.
EOD_DEADLINE = timedelta(hours=_settings.eod_deadline_hours)
# Concurrent API tasks. Each API task paces itself at rate_limit_rps / API_POOL_SLOTS, so the pool as a whole
# never exceeds the exchange's public limit (10 req/s) whatever the executor runs in parallel.
API_POOL_SLOTS = _settings.api_pool_slots

# ---- pools (names and sizes: etl.orchestration.spec) --------------------------------------------------------
API_POOL, SILVER_POOL = spec.API_POOL, spec.SILVER_POOL
POOLS: dict[str, tuple[int, str]] = spec.pools(API_POOL_SLOTS)

# ---- assets (hand data between DAGs without sensors; URIs: etl.orchestration.spec) --------------------------
BRONZE_CANDLES = Asset(spec.BRONZE_CANDLES_URI, extra={"layer": "bronze"})
SILVER_BARS = Asset(spec.SILVER_BARS_URI, extra={"layer": "silver", "tables": ["bars_5m", "bars_1d"]})
RISK_OUTPUTS = Asset(spec.RISK_OUTPUTS_URI, extra={"layer": "outputs"})
WAREHOUSE_GOLD = Asset(spec.WAREHOUSE_GOLD_URI, extra={"layer": "gold"})


def _fresh_trades_watchers() -> list[AssetWatcher]:
    from etl.stream.watch import FreshTradesTrigger  # light: Airflow's trigger base only, no pandas/pyarrow

    return [AssetWatcher(name="fresh_trades", trigger=FreshTradesTrigger(poll_s=30.0))]


# Fresh live trades: `python -m etl stream` is a service, not a task, so a watcher (the triggerer polls bronze for
# newly committed micro-batches) emits the events; `schedule=[BRONZE_TRADES]` reacts to them (docs/streaming.md).
BRONZE_TRADES = Asset(spec.BRONZE_TRADES_URI, extra={"layer": "bronze", "tables": ["trades", "ticker"]},
                      watchers=_fresh_trades_watchers())

# ---- backfill params (the web UI's trigger form) ------------------------------------------------------------
_PRODUCT = r"[A-Za-z0-9]+-[A-Za-z0-9]+"
BACKFILL_PARAMS: dict[str, Param] = {
    "products": Param(
        "BTC-USD,ETH-USD", type="string", minLength=3, pattern=rf"^\s*{_PRODUCT}(\s*,\s*{_PRODUCT})*\s*$",
        title="Products", description="Comma-separated product ids from the instrument master, e.g. BTC-USD,ETH-USD.",
    ),
    "start": Param(
        "2026-01-01T00:00:00+00:00", type="string", format="date-time", title="Start (UTC)",
        description="First bucket to fetch, ISO 8601 (inclusive).",
    ),
    "end": Param(
        "2026-01-02T00:00:00+00:00", type="string", format="date-time", title="End (UTC)",
        description="End of the window, ISO 8601 (exclusive); must be after start.",
    ),
    "granularity": Param(
        60, type="integer", enum=list(spec.GRANULARITIES), title="Granularity (seconds)",
        description="Candle size: 60 (intraday bars), 86400 (daily risk history), or 300/900/3600/21600.",
    ),
    "full_refresh": Param(
        False, type="boolean", title="Full refresh",
        description="Rebuild every silver partition instead of only the partitions this backfill touched.",
    ),
}


# ---- task conventions ----------------------------------------------------------------------------------------
def record_failure(context: Any) -> None:
    """on_failure_callback: the task failed for good (retries exhausted), record a `failed` run-log row.

    Attempts that will be retried are recorded as `up_for_retry` by the task functions themselves (etl.orchestration); this callback also
    covers failures that never reach the task function (timeouts, killed workers).
    """
    try:
        from etl.orchestration.airflow_adapter import TaskRef, record_failed

        exc = context.get("exception")
        record_failed(TaskRef.from_context(context), exc)
    except Exception:  # a callback must never mask the task's own failure
        log.exception("could not record the failure in the run log")


def record_retry(context: Any) -> None:
    """on_retry_callback: an attempt Airflow retries that the task function did not record as `up_for_retry` (its
    worker lost: killed, out of memory, heartbeat timed out; Airflow then runs this in the dag processor)."""
    try:
        from etl.orchestration.airflow_adapter import TaskRef
        from etl.orchestration.airflow_adapter import record_retry as record

        record(TaskRef.from_context(context), context.get("exception"))
    except Exception:  # a callback must never mask the task's own failure
        log.exception("could not record the retried attempt in the run log")


# The intraday DAG's tasks, whatever the other DAGs hold: the scheduler queues task instances by priority weight (in
# each pool, and for the executor's slots), and the default weight rule ("downstream": the task plus all below it)
# gives the longer end-of-day and backfill DAGs the higher weights (end of day's API tasks 11-12, intraday's 5-6),
# so each night the 5-minute runs waited behind every `ingest_daily_history` and the intraday risk of the buckets
# they waited through was never computed (catchup is off). An absolute weight above any other DAG's total puts them
# first; the others still take every slot the intraday run leaves free (tests/dags/test_dag_integrity.py).
INTRADAY_PRIORITY: dict[str, Any] = {"priority_weight": 1000, "weight_rule": "absolute"}

# How long one intraday run may hold its DAG (max_active_runs=1): one task attempt's timeout. Without it a stuck run
# held the 5-minute DAG for three attempts of TASK_TIMEOUT plus the retry delays (about 1.5 hours). A timed-out run
# fails (its unfinished tasks are stopped); the next interval's run fetches from bronze's newest candle.
INTRADAY_RUN_TIMEOUT = TASK_TIMEOUT


def record_run_failure(context: Any) -> None:
    """The DAGs' on_failure_callback: a run that timed out (`dagrun_timeout`) records a `failed` run-log row with
    task id `dagrun_timeout`. Airflow marks such a run's unfinished tasks skipped, so no task failure callback
    runs: without this row the stopped run left nothing in the run log. Other run failures: the tasks' own rows."""
    if context.get("reason") != "timed_out":
        return
    try:
        from etl.orchestration.airflow_adapter import TaskRef, record_failed

        dag = context.get("dag")
        dag_id = getattr(dag, "dag_id", None) or "unknown"
        timeout = getattr(dag, "dagrun_timeout", None)
        minutes = f"{timeout.total_seconds() / 60:g} min" if timeout else "its limit"
        record_failed(TaskRef(run_id=str(context.get("run_id") or "unknown"), dag_id=dag_id, task_id="dagrun_timeout"),
                      TimeoutError(f"{dag_id} run not finished within its dagrun_timeout ({minutes}): Airflow "
                                   f"stopped it and skipped its unfinished tasks; see the run's task logs"))
    except Exception:  # a callback must never raise into the dag processor
        log.exception("could not record the timed-out run in the run log")


DEFAULT_ARGS: dict[str, Any] = {
    "owner": "market-risk",
    "retries": TASK_RETRIES,
    "retry_delay": RETRY_DELAY,
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": MAX_RETRY_DELAY,
    "execution_timeout": TASK_TIMEOUT,
    "on_failure_callback": record_failure,
    "on_retry_callback": record_retry,
}


def pipeline_dag(dag_id: str, cron: str | None, task_args: dict[str, Any] | None = None, **kwargs: Any):
    """`@dag` with what every DAG of the pipeline shares: `cron` as UTC data intervals (None: triggered only), the
    start date of etl.orchestration.spec, no catch-up, DEFAULT_ARGS (plus `task_args`, e.g. INTRADAY_PRIORITY),
    `record_run_failure` as the run's failure callback;
    `kwargs`: the DAG's own (tags, doc_md...)."""
    schedule = CronDataIntervalTimetable(cron, timezone="UTC") if cron else None
    kwargs.setdefault("on_failure_callback", record_run_failure)
    return dag(dag_id=dag_id, schedule=schedule, start_date=spec.START_DATE, catchup=False,
               default_args={**DEFAULT_ARGS, **(task_args or {})}, **kwargs)


def eod_deadline():
    """A DeadlineAlert EOD_DEADLINE after the run was queued; None if 0.

    A scheduled run is queued at the end of its daily interval, so on time this is "EOD_DEADLINE after the
    interval's end". Counting from the queue time rather than the logical date keeps a run created late (the
    catch-up run Airflow creates when the DAG is first unpaused, a manual trigger of an old interval) from being
    "Missed" the moment it exists.
    """
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    if not EOD_DEADLINE:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=EOD_DEADLINE,
        # by import path: runs in the triggerer, where the dags folder is not importable but `etl` is
        callback=AsyncCallback("etl.orchestration.airflow_adapter.deadline_missed",
                               kwargs={"hours_after_interval_end": EOD_DEADLINE.total_seconds() / 3600}),
        name="eod_not_finished",
    )

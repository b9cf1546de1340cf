"""DAG integrity: the three DAGs import cleanly and follow the conventions of the style guide.

Structure only (no wall-clock asserts: parse time is measured in bench/bench_airflow.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
DAG_IDS = {"market_data_intraday", "risk_end_of_day", "market_data_backfill", "breach_action"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    mp.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
    # Airflow's bundle DagBag puts the dags folder on sys.path (shared module imports); the plain DagBag does not.
    mp.syspath_prepend(str(DAGS))
    from airflow.dag_processing.dagbag import DagBag

    yield DagBag(dag_folder=str(DAGS))
    mp.undo()


@pytest.fixture(scope="module")
def common(dagbag):
    """dags/pipeline_common.py as the DAG files imported it (from the dags folder, as Airflow puts it on the path)."""
    return sys.modules["pipeline_common"]


def test_all_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS


def test_file_name_is_dag_id(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id


def test_dag_level_conventions(dagbag):
    for dag in dagbag.dags.values():
        assert dag.start_date.tzinfo is not None and dag.start_date.utcoffset() == timedelta(0), dag.dag_id
        assert dag.catchup is False, dag.dag_id
        assert dag.tags, dag.dag_id
        assert dag.doc_md and len(dag.doc_md) > 100, dag.dag_id


def test_default_args_and_every_task_follow_the_style_guide(dagbag, common):
    for dag in dagbag.dags.values():
        args = dag.default_args
        assert args["retries"] >= 2
        assert args["retry_exponential_backoff"] == 2.0
        assert isinstance(args["max_retry_delay"], timedelta)
        assert isinstance(args["execution_timeout"], timedelta)
        assert args["on_failure_callback"] is common.record_failure
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.retries >= 2, where
            assert task.retry_exponential_backoff == 2.0, where
            assert task.max_retry_delay == common.MAX_RETRY_DELAY, where
            assert task.execution_timeout == common.TASK_TIMEOUT, where
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert common.record_failure in callbacks, where


def test_task_ids_are_verb_noun(dagbag):
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            verb, _, noun = task.task_id.partition("_")
            assert noun and verb.isalpha() and task.task_id.islower(), task.task_id


def test_api_tasks_use_the_rate_limited_pool_and_every_pool_is_defined(dagbag, common):
    defined = set(common.POOLS) | {"default_pool"}
    api_tasks = {"fetch_candles", "ingest_daily_history", "validate_products"}  # every task that calls the API
    silver_writers = {"build_silver", "compact_bronze"}
    seen = set()
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            assert task.pool in defined, f"{dag.dag_id}.{task.task_id} uses undefined pool {task.pool}"
            if task.task_id in api_tasks:
                assert task.pool == common.API_POOL, task.task_id
                seen.add(task.task_id)
            elif task.task_id in silver_writers:  # one silver writer at a time across DAGs (issue 12 item 2)
                assert task.pool == common.SILVER_POOL, task.task_id
            else:
                assert task.pool == "default_pool", task.task_id
    assert seen == api_tasks
    slots, description = common.POOLS[common.API_POOL]
    assert slots >= 1 and "rate" in description
    assert common.POOLS[common.SILVER_POOL][0] == 1


def test_demo_creates_every_pool(common):
    from etl.local import airflow_home

    assert airflow_home.pools() == common.POOLS


def test_intraday_shape(dagbag):
    dag = dagbag.dags["market_data_intraday"]
    assert dag.max_active_runs == 1
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("*/5 * * * *", "UTC")
    assert {t.task_id for t in dag.tasks} == {"validate_products", "fetch_candles", "build_silver",
                                              "compute_intraday_risk", "load_intraday_warehouse",
                                              "send_intraday_alerts"}
    assert dag.get_task("compute_intraday_risk").upstream_task_ids == {"build_silver"}
    for task_id in ("load_intraday_warehouse", "send_intraday_alerts"):
        assert dag.get_task(task_id).upstream_task_ids == {"compute_intraday_risk"}
    fetch = dag.get_task("fetch_candles")
    assert type(fetch).__name__ == "DecoratedMappedOperator"  # dynamic task mapping, one per product
    assert dag.get_task("build_silver").upstream_task_ids == {"fetch_candles"}
    assert [a.uri for a in dag.get_task("build_silver").outlets] == ["pipeline://silver/bars"]


def test_end_of_day_shape_and_deadline(dagbag, common):
    dag = dagbag.dags["risk_end_of_day"]
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("10 0 * * *", "UTC")
    assert dag.max_active_runs == 1
    assert {t.task_id for t in dag.tasks} == {
        "validate_products", "ingest_daily_history", "build_silver", "compute_risk", "compute_factors",
        "load_warehouse", "build_dbt", "export_report", "send_alerts", "compact_bronze", "plan_risk_shards",
        "compute_risk_shard",
    }
    assert dag.get_task("compact_bronze").upstream_task_ids == {"build_silver"}
    assert dag.get_task("load_warehouse").upstream_task_ids == {"compute_risk", "compute_factors"}
    assert dag.get_task("compute_factors").upstream_task_ids == {"build_silver"}
    assert dag.get_task("plan_risk_shards").upstream_task_ids == {"compute_factors"}  # the PnL attribution reads them
    assert dag.get_task("compute_risk_shard").upstream_task_ids == {"plan_risk_shards"}
    assert dag.get_task("compute_risk").upstream_task_ids == {"plan_risk_shards", "compute_risk_shard"}
    assert dag.get_task("build_dbt").upstream_task_ids == {"load_warehouse"}
    assert dag.get_task("export_report").upstream_task_ids == {"build_dbt"}
    (alert,) = dag.deadline
    assert alert.interval == common.EOD_DEADLINE  # after the run is queued: a late-created run is not "Missed"
    assert type(alert.reference).__name__ == "DagRunQueuedAtDeadline"
    assert alert.callback.path == "etl.orchestration.airflow_adapter.deadline_missed"  # importable in the triggerer
    from etl.orchestration.airflow_adapter import deadline_missed  # noqa: F401  (the path resolves)


def test_backfill_params_are_typed_described_and_validated(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["market_data_backfill"]
    assert dag.schedule is None and not dag.timetable.can_be_scheduled
    params = dag.params
    assert set(params.keys()) == {"products", "start", "end", "granularity", "full_refresh"}
    types = {name: params.get_param(name).schema["type"] for name in params.keys()}
    assert types == {"products": "string", "start": "string", "end": "string", "granularity": "integer",
                     "full_refresh": "boolean"}
    for name in params.keys():
        assert len(params.get_param(name).description) > 20, name
    with pytest.raises(ParamValidationError, match="61 is not one of"):
        params.get_param("granularity").resolve(61)
    with pytest.raises(ParamValidationError, match="does not match"):
        params.get_param("products").resolve("BTC USD;;")
    with pytest.raises(ParamValidationError, match="is not of type 'boolean'"):
        params.get_param("full_refresh").resolve("yes")
    assert params.get_param("products").resolve("BTC-USD, eth-usd") == "BTC-USD, eth-usd"


def test_no_sla_and_no_heavy_imports_at_module_level():
    heavy = {"pandas", "pyarrow", "psycopg2", "numpy", "sqlalchemy", "requests", "etl"}
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword):
                assert node.arg != "sla", f"{path.name}: sla= is gone in Airflow 3 (use DeadlineAlert)"
        for node in tree.body:  # module level only: imports inside tasks are the point
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                # stdlib-only: the one place settings are read, and the task functions and their Airflow adapter
                # (their stage modules load inside them; the parse test below checks what actually loads)
                if node.module == "etl.settings" or (node.module or "").startswith("etl.orchestration"):
                    continue
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & heavy, f"{path.name} imports {names & heavy} at module level"


def test_parsing_a_dag_file_loads_no_heavy_module():
    code = ("import sys, runpy; sys.path.insert(0, 'dags');"
            "[runpy.run_path(f'dags/{n}.py') for n in ('market_data_intraday', 'risk_end_of_day', "
            "'market_data_backfill', 'breach_action')];"
            "print(','.join(sorted(m for m in ('pandas', 'pyarrow', 'psycopg2', 'numpy', 'etl.bronze', 'etl.runlog')"
            " if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_ruff_airflow_rules_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "AIR", "dags"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_start_date_is_utc():
    from etl.orchestration import spec

    assert spec.START_DATE.tzinfo == UTC


def test_breach_action_waits_for_an_approval_then_records_the_action(dagbag):
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.dags["breach_action"]
    approve, record = dag.get_task("approve_action"), dag.get_task("record_action")
    assert isinstance(approve, ApprovalOperator) and record.upstream_task_ids == {"approve_action"}
    assert "{{ params.reason }}" in approve.body and approve.response_timeout is not None
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual only
    params = dag.params
    with pytest.raises(ParamValidationError, match="should be non-empty|is too short"):
        params.get_param("reason").resolve("")
    with pytest.raises(ParamValidationError, match="is not one of"):
        params.get_param("action").resolve("silence")
    assert all(params.get_param(k).description for k in params)
    # every limit type the platform breaches can be acted on, the liquidity-adjusted VaR limit (lvar) too
    from etl.measures import LIMIT_TYPES

    assert [params.get_param("limit_type").resolve(t) for t in LIMIT_TYPES] == list(LIMIT_TYPES)


def test_a_rerun_of_an_earlier_day_leaves_the_next_days_factor_outputs_whole(dagbag, simulator, data_dir,
                                                                             monkeypatch):
    """risk_end_of_day's compute_factors ran up to its data interval's end (00:10 after the as-of day), so each run
    also replaced the next day's factor partitions with its first 10 minutes (and no exposure snapshot): a rerun or
    backfill of day D, after D+1's run, cut D+1's committed factor returns to 10 of its 1,440 minutes and emptied
    its exposures (which D+2's PnL attribution reads). The run now covers whole days up to the as-of day's end, as
    `python -m etl run` does."""
    from datetime import datetime

    from etl.bronze import ingest
    from etl.commits import read_entry, read_manifest
    from etl.orchestration.airflow_adapter import TaskRef
    from etl.settings import get_settings
    from etl.storage import get_store

    products = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]
    for name, value in {"PIPELINE_PRODUCTS": ",".join(products), "PIPELINE_HISTORY_DAYS": "1",
                        "FACTOR_WINDOW": 240, "FACTOR_MIN_OBS": 30, "FACTOR_FORMATION_MINUTES": 120,
                        "FACTOR_HOLDING_MINUTES": 60, "FACTOR_MOMENTUM_MINUTES": "30,60,120"}.items():
        monkeypatch.setenv(name, str(value))
    ingest(products=products, start=datetime(2026, 3, 1, 18, tzinfo=UTC), end=datetime(2026, 3, 4, 0, 10, tzinfo=UTC),
           granularity=60, settings=get_settings())
    callable_ = dagbag.dags["risk_end_of_day"].get_task("compute_factors").python_callable

    def run_of(day: int) -> None:  # the scheduled run of as-of day 2026-03-<day>, as Airflow runs the task
        start = datetime(2026, 3, day, 0, 10, tzinfo=UTC)
        monkeypatch.setitem(callable_.__globals__, "current_interval", lambda *_: (start, start + timedelta(days=1)))
        monkeypatch.setitem(callable_.__globals__, "current_ref",
                            lambda: TaskRef(f"scheduled__{start:%Y-%m-%d}", "risk_end_of_day", "compute_factors"))
        callable_()

    def day_rows(day: str) -> dict[str, int]:
        store = get_store(get_settings())
        files = read_manifest(store, "factors")["files"]
        return {table: read_entry(store, files[f"{table}/date={day}"]).num_rows
                for table in ("factor_returns", "factor_exposures")}

    run_of(3)                                       # as of 03-03 (the run at 03-04 00:10)
    whole = day_rows("2026-03-03")
    assert whole["factor_returns"] > 1000 and whole["factor_exposures"] > 0
    run_of(2)                                       # then a rerun (or backfill) of 03-02
    assert day_rows("2026-03-03") == whole


def test_an_attempt_whose_worker_was_lost_is_in_the_run_log_with_what_happened(dagbag, data_dir):
    """A worker lost mid-task (killed, out of memory: a 2,500-portfolio risk shard peaks at 4.2 GB) never returns to
    the task function, so no run-log row came from it: Airflow runs the task's callbacks in the dag processor, with
    no exception. A retried attempt left no row at all (no on_retry_callback: the shard's lost attempt was not in
    fact_pipeline_runs nor failures.sql), the last one `failed (no exception)`. Both now have their row, saying the
    worker was lost."""
    import uuid

    import structlog
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import TaskInstance
    from airflow.callbacks.callback_requests import TaskCallbackRequest
    from airflow.dag_processing.processor import _execute_task_callbacks
    from airflow.utils.state import TaskInstanceState

    from etl import runlog
    from etl.settings import get_settings

    def lost(try_number: int, state: TaskInstanceState) -> None:   # as the scheduler asks the dag processor
        ti = TaskInstance(id=uuid.uuid4(), task_id="compute_risk_shard", dag_id="risk_end_of_day",
                          run_id="scheduled__2026-03-01T00:10:00+00:00", try_number=try_number,
                          dag_version_id=uuid.uuid4(), map_index=0)
        _execute_task_callbacks(dagbag, TaskCallbackRequest(
            filepath="risk_end_of_day.py", bundle_name="dags-folder", bundle_version=None, ti=ti,
            msg="Task Instance Heartbeat Timeout", task_callback_type=state), structlog.get_logger())

    lost(1, TaskInstanceState.UP_FOR_RETRY)
    lost(3, TaskInstanceState.FAILED)
    rows = runlog.read_all(get_settings()).sort_values("try_number")
    assert [(r.task_id, r.status, r.try_number) for r in rows.itertuples()] == [
        ("compute_risk_shard[0]", "up_for_retry", 1), ("compute_risk_shard[0]", "failed", 3)]
    assert all(m.startswith("WorkerLost: ") and "worker process was lost" in m for m in rows["message"])


def _scheduled_weights(dag) -> dict[str, tuple[str, int]]:
    """task id -> (pool, the priority weight the scheduler gives its task instances), from the serialized DAG as
    the scheduler reads it (TaskInstance applies the task's weight rule)."""
    import uuid

    from airflow.models.taskinstance import TaskInstance
    from airflow.serialization.serialized_objects import DagSerialization

    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    return {t.task_id: (t.pool, TaskInstance(task=t, run_id="r", map_index=0, dag_version_id=uuid.uuid4())
                        .priority_weight) for t in serialized.tasks}


def test_intraday_tasks_go_before_every_other_dags_tasks(dagbag):
    """The scheduler queues by priority weight, within a pool (coinbase_api, silver_writer) and for the executor's
    slots: the 5-minute intraday tasks must not wait behind the end-of-day or backfill tasks, whose default
    (downstream) weight grows with their longer DAGs, or the intraday risk of the buckets they wait through is
    never computed (catchup is off: only the latest interval runs)."""
    intraday = _scheduled_weights(dagbag.dags["market_data_intraday"])
    for dag_id in DAG_IDS - {"market_data_intraday"}:
        for task_id, (pool, weight) in _scheduled_weights(dagbag.dags[dag_id]).items():
            for mine, (my_pool, my_weight) in intraday.items():
                assert my_weight > weight, (f"market_data_intraday.{mine} ({my_pool}, weight {my_weight}) waits "
                                            f"behind {dag_id}.{task_id} ({pool}, weight {weight})")


def test_an_intraday_run_cannot_hold_the_dag_past_one_task_timeout_and_its_timeout_is_in_the_run_log(dagbag, common,
                                                                                                   data_dir):
    """With max_active_runs=1 and no dagrun_timeout, one stuck intraday run held the 5-minute DAG for up to three
    attempts of a task's 30-minute timeout plus the retry delays (about 1.5 hours: 18 buckets whose intraday risk
    and alerts were never computed). The run now fails after one task timeout (the next interval's run fetches from
    bronze's newest candle, so no candle is lost), and, as Airflow marks a timed-out run's unfinished tasks skipped
    (no task failure callback), the run log gets a `failed` row naming the timeout, as the deadline does."""
    import structlog
    from airflow.callbacks.callback_requests import DagCallbackRequest
    from airflow.dag_processing.processor import _execute_dag_callbacks

    from etl import runlog
    from etl.settings import get_settings

    dag = dagbag.dags["market_data_intraday"]
    assert dag.dagrun_timeout is not None and dag.dagrun_timeout <= common.TASK_TIMEOUT
    run_id = "scheduled__2026-03-01T10:00:00+00:00"
    _execute_dag_callbacks(dagbag, DagCallbackRequest(   # as the scheduler asks the dag processor on a timeout
        filepath="market_data_intraday.py", bundle_name="dags-folder", bundle_version=None,
        dag_id="market_data_intraday", run_id=run_id, msg="timed_out"), structlog.get_logger())
    rows = runlog.read_all(get_settings())
    assert [(r.dag_id, r.run_id, r.task_id, r.status) for r in rows.itertuples()] == [
        ("market_data_intraday", run_id, "dagrun_timeout", "failed")]
    assert "dagrun_timeout" in rows["message"][0] and "30" in rows["message"][0]

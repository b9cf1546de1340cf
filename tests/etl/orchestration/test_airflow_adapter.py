"""etl.orchestration.airflow_adapter: task runs, retries, the run's data interval from an Airflow context."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from etl.errors import ValidationError
from etl.orchestration import airflow_adapter, spec
from etl.orchestration.intervals import eod_as_of

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_will_retry_follows_airflow_max_tries():
    ref = airflow_adapter.TaskRef("r", "d", "t", try_number=2, max_tries=2, in_airflow=True)
    assert ref.will_retry
    assert not airflow_adapter.TaskRef("r", "d", "t", try_number=3, max_tries=2, in_airflow=True).will_retry
    assert not airflow_adapter.TaskRef.manual("t").will_retry


def test_importing_the_module_stays_light():
    """Airflow imports the adapter while parsing risk_end_of_day (the deadline callback's path), the DAGs
    import the task functions at parse time and the triggerer runs the callback: none may load pandas."""
    import subprocess
    import sys

    code = ("import sys, etl.orchestration.airflow_adapter, etl.orchestration.tasks; "
            "print(','.join(m for m in ('pandas', 'pyarrow', 'numpy', 'etl.runlog') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_run_interval_uses_the_data_interval_when_there_is_one():
    ctx = {"data_interval_start": T0 - timedelta(minutes=5), "data_interval_end": T0}
    assert airflow_adapter.run_interval(ctx, spec.INTRADAY_EVERY) == (T0 - timedelta(minutes=5), T0)


def test_manual_runs_without_logical_date_get_the_last_complete_interval():
    from types import SimpleNamespace

    # Airflow 3: a run triggered without a logical date has no data interval, only run_after
    ctx = {"data_interval_start": None, "data_interval_end": None,
           "dag_run": SimpleNamespace(run_after=datetime(2026, 3, 2, 12, 7, 31, tzinfo=UTC))}
    assert airflow_adapter.run_interval(ctx, spec.INTRADAY_EVERY) == (
        datetime(2026, 3, 2, 12, 0, tzinfo=UTC), datetime(2026, 3, 2, 12, 5, tzinfo=UTC))
    start, end = airflow_adapter.run_interval(ctx, spec.EOD_EVERY, spec.EOD_OFFSET)
    assert (start, end) == (datetime(2026, 3, 1, 0, 10, tzinfo=UTC), datetime(2026, 3, 2, 0, 10, tzinfo=UTC))
    assert eod_as_of(start) == date(2026, 3, 1)
    early = {"dag_run": SimpleNamespace(run_after=datetime(2026, 3, 2, 0, 5, tzinfo=UTC))}
    assert airflow_adapter.run_interval(early, spec.EOD_EVERY, spec.EOD_OFFSET)[0] == datetime(
        2026, 2, 28, 0, 10, tzinfo=UTC)
    with pytest.raises(ValidationError, match="neither a data interval"):
        airflow_adapter.run_interval({}, spec.INTRADAY_EVERY)

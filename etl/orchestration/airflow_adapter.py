"""What connects the task functions to Airflow: which task run this is (`TaskRef`), its run-log row
(`logged`, `record_failed`), the DAGs' callbacks (`deadline_missed`) and the run's data interval (`run_interval`).

Run-log statuses: `success`; `up_for_retry` when an attempt fails and Airflow will retry it; `failed` when the
last attempt fails (recorded by the DAGs' on_failure_callback through `record_failed`, or by `logged` when the
function runs outside Airflow), so a task that retries twice then fails leaves exactly three rows. A permanent
error (bad reference data or a bad setting: `PERMANENT`) is not retried: `logged` re-raises it in Airflow as
AirflowFailException, so the first attempt is the last and the message names the cause.

Light at import on purpose (no pandas or pyarrow: the run log loads inside the functions): Airflow imports this
module while parsing the end-of-day DAG, to check the deadline callback's import path, and runs that callback in
the triggerer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from etl.errors import ConfigError, ValidationError
from etl.orchestration.intervals import last_interval, utc
from etl.orchestration.spec import EOD_DAG
from etl.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Errors a retry cannot fix (the same files and settings fail the same way): the task fails at once.
PERMANENT = (ValidationError, ConfigError)


@dataclass(frozen=True)
class TaskRef:
    """Identifies a task run in the run log. `max_tries` is Airflow's: attempts beyond it are not retried."""

    run_id: str
    dag_id: str
    task_id: str
    try_number: int = 1
    max_tries: int = 0
    in_airflow: bool = False

    @classmethod
    def manual(cls, task_id: str, run_id: str | None = None) -> TaskRef:
        return cls(run_id=run_id or f"manual__{uuid.uuid4().hex[:12]}", dag_id="manual", task_id=task_id)

    @classmethod
    def from_context(cls, context: Any) -> TaskRef:
        """From an Airflow task context (`get_current_context()` or a callback's context)."""
        ti = context["ti"]
        task_id = ti.task_id
        map_index = getattr(ti, "map_index", -1)
        if map_index is not None and map_index >= 0:
            task_id = f"{task_id}[{map_index}]"
        dag_run = context.get("dag_run")
        run_id = context.get("run_id") or getattr(dag_run, "run_id", None) or getattr(ti, "run_id", "unknown")
        max_tries = getattr(ti, "max_tries", None)
        if max_tries is None:
            task = context.get("task") or getattr(ti, "task", None)
            max_tries = getattr(task, "retries", 0) or 0
        return cls(run_id=str(run_id), dag_id=ti.dag_id, task_id=task_id,
                   try_number=int(getattr(ti, "try_number", 1) or 1), max_tries=int(max_tries), in_airflow=True)

    @property
    def will_retry(self) -> bool:
        return self.in_airflow and self.try_number <= self.max_tries


def current_ref() -> TaskRef:
    """The running Airflow task's TaskRef (inside a task only)."""
    from airflow.sdk import get_current_context

    return TaskRef.from_context(get_current_context())


@contextmanager
def logged(ref: TaskRef, settings: Settings) -> Iterator[Any]:
    """Time the block and record one run-log row: success, up_for_retry, or failed (outside Airflow).

    In Airflow the last failed attempt is recorded by the on_failure_callback (`record_failed`), which also
    sees failures that never reach this code (timeouts, killed workers): recording it here too would double it.
    A PERMANENT error is the last attempt whatever the retries left: it leaves as AirflowFailException.
    """
    from etl import runlog

    def failure_status(exc: BaseException) -> str | None:
        if not ref.in_airflow:
            return "failed"
        if ref.will_retry and not isinstance(exc, PERMANENT):
            with suppress(AttributeError):   # the retry callback (`record_retry`) must not record it again
                exc.pipeline_run_logged = True
            return "up_for_retry"
        return None

    try:
        with runlog.task_run(ref.run_id, ref.dag_id, ref.task_id, settings, ref.try_number, failure_status) as rec:
            yield rec
    except PERMANENT as exc:
        if ref.in_airflow:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(str(exc)) from exc
        raise


# What a callback knows of an attempt no exception came back from: Airflow runs the callback of a task whose worker
# it lost (its heartbeat timed out) in the dag processor, with no exception in the context.
WORKER_LOST = ("WorkerLost: the attempt ended without an exception reaching the task: its worker process was lost "
               "(killed, out of memory, restarted) or its heartbeat timed out; see the task's log and the scheduler's")


def record_failed(ref: TaskRef, exc: BaseException | None, settings: Settings | None = None,
                  started_at: datetime | None = None, status: str = "failed") -> None:
    """Record the final failure of a task (the DAGs' on_failure_callback and the deadline callback call this), or
    with `status` "up_for_retry" an attempt Airflow retries that `logged` did not record (`record_retry`)."""
    from etl import runlog

    settings = settings or get_settings()
    if type(exc).__name__ == "AirflowFailException" and exc.__cause__ is not None:
        exc = exc.__cause__  # `logged` wrapped a PERMANENT error: record the error itself
    rec = runlog.RunRecord(run_id=ref.run_id, dag_id=ref.dag_id, task_id=ref.task_id, status=status,
                           try_number=ref.try_number,
                           message=f"{type(exc).__name__}: {exc}" if exc is not None else WORKER_LOST)
    if started_at is not None:
        rec.started_at = started_at
        rec.duration_s = max(0.0, (datetime.now(UTC) - started_at).total_seconds())
    runlog.record_safely(rec, settings)


def record_retry(ref: TaskRef, exc: BaseException | None, settings: Settings | None = None) -> None:
    """Record an attempt Airflow will retry, unless `logged` recorded it (an exception raised in the task function):
    a lost worker (no exception: the callback runs in the dag processor) or an error raised outside the function."""
    if exc is not None and getattr(exc, "pipeline_run_logged", False):
        return
    record_failed(ref, exc, settings, status="up_for_retry")


async def deadline_missed(context: dict | None = None, hours_after_interval_end: float | None = None,
                          **_: Any) -> None:
    """DeadlineAlert callback (runs in the triggerer): log an error and record a `failed` run-log row with
    task id `deadline`, so operations see the late run next to its tasks in `fact_pipeline_runs`."""
    context = context or {}
    dag_run = context.get("dag_run") or {}
    get = dag_run.get if isinstance(dag_run, dict) else lambda k, d=None: getattr(dag_run, k, d)
    dag_id = get("dag_id") or EOD_DAG
    run_id = get("dag_run_id") or get("run_id") or "unknown"
    deadline = (context.get("deadline") or {}).get("deadline_time")
    log.error("deadline missed: %s run %s has not finished by %s (%s h after its data interval end)",
              dag_id, run_id, deadline, hours_after_interval_end)
    record_failed(TaskRef(run_id=str(run_id), dag_id=str(dag_id), task_id="deadline"),
                  TimeoutError(f"run not finished by its deadline {deadline} "
                               f"({hours_after_interval_end} h after the data interval end)"))


def run_interval(context: Any, every: timedelta, offset: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The run's data interval, from an Airflow task context.

    Airflow 3 gives a manual run triggered without a logical date (UI "Trigger", `airflow dags trigger`) no data
    interval: such a run gets the last complete interval of the schedule (`every`, aligned on the epoch plus
    `offset`) before the moment it was requested (`dag_run.run_after`). Still no now(): a rerun of that run
    covers the same window.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return utc(start), utc(end)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None) or context.get("logical_date")
    if run_after is None:
        raise ValidationError("this run has neither a data interval nor a run_after time: trigger it with a "
                              "logical date")
    return last_interval(utc(run_after), every, offset)


def current_interval(every: timedelta, offset: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The running Airflow task's data interval (see `run_interval`)."""
    from airflow.sdk import get_current_context

    return run_interval(get_current_context(), every, offset)

"""etl/runlog.py: one Parquet row per task run under `{data}/runlog/date=.../`, read back whole; what `task_run`
records on success and on failure; credentials never reach a row (it ends up in gold.fact_pipeline_runs)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from etl import runlog
from etl.runlog import RunRecord, read_all, record, task_run
from etl.settings import get_settings


def test_a_record_is_one_file_in_its_day_and_reads_back(data_dir):
    rec = RunRecord(run_id="r1", dag_id="risk_end_of_day", task_id="compute_risk", rows_in=10, rows_out=4,
                    started_at=datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC), duration_s=1.5, message="ok",
                    try_number=2)
    path = record(rec)
    assert path == str(data_dir / "runlog" / "date=2026-01-31" / f"{rec.record_id}.parquet")
    rows = read_all()
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row.run_id, row.dag_id, row.task_id, row.status, row.rows_in, row.rows_out, row.duration_s, row.message,
            row.try_number, row.record_id) == ("r1", "risk_end_of_day", "compute_risk", "success", 10, 4, 1.5, "ok",
                                               2, rec.record_id)
    assert row.started_at == datetime(2026, 1, 31, 23, 59, 30, tzinfo=UTC)
    assert list(rows.columns) == runlog.SCHEMA.names


def test_no_log_yet_is_an_empty_frame_with_the_columns(data_dir):
    rows = read_all()
    assert rows.empty and list(rows.columns) == runlog.SCHEMA.names


def test_an_unknown_status_is_refused(data_dir):
    with pytest.raises(ValueError, match="run-log status 'done' is not one of"):
        record(RunRecord(run_id="r", dag_id="d", task_id="t", status="done"))
    assert read_all().empty


def test_messages_are_redacted_and_cut_to_2000_characters(data_dir):
    record(RunRecord(run_id="r", dag_id="d", task_id="t", message="password=hunter2 " + "x" * 3000))
    message = read_all()["message"].iat[0]
    assert message.startswith("password=*** xxx") and len(message) == 2000 and "hunter2" not in message


def test_task_run_times_the_block_and_records_what_it_filled(data_dir):
    with task_run("r1", "market_data_intraday", "fetch_candles") as rec:
        rec.rows_in, rec.rows_out, rec.message = 5, 3, "3 candles"
    row = read_all().iloc[0]
    assert (row.status, row.rows_in, row.rows_out, row.message, row.try_number) == ("success", 5, 3, "3 candles", 1)
    assert row.duration_s >= 0


def test_task_run_records_a_failure_and_raises_it(data_dir):
    with pytest.raises(RuntimeError, match="API down"), task_run("r1", "d", "fetch_candles", try_number=1,
                                                                 failure_status="up_for_retry"):
        raise RuntimeError("API down")
    with pytest.raises(RuntimeError), task_run("r1", "d", "fetch_candles", try_number=2):
        raise RuntimeError("API down again")
    with pytest.raises(KeyError), task_run("r1", "d", "other", failure_status=None):  # someone else records it
        raise KeyError("x")
    rows = read_all().sort_values("try_number")
    assert rows[["task_id", "status", "try_number", "message"]].values.tolist() == [
        ["fetch_candles", "up_for_retry", 1, "RuntimeError: API down"],
        ["fetch_candles", "failed", 2, "RuntimeError: API down again"]]


def test_a_run_log_that_cannot_be_written_never_hides_the_result(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the data root should be")
    settings = replace(get_settings(), data_dir=str(blocked))
    with caplog.at_level(logging.ERROR, logger="etl.runlog"), task_run("r1", "d", "t", settings=settings) as rec:
        rec.rows_out = 1
    assert "could not write the run-log row for d.t" in caplog.text

"""etl.orchestration.tasks without Airflow: backfill validation, run-log rows (success, retry, failure).

Against the real simulator HTTP server and a temporary data root; no mocks.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from etl import runlog
from etl.errors import SourceError, ValidationError
from etl.orchestration import tasks
from etl.orchestration.airflow_adapter import TaskRef, record_failed, record_retry
from etl.settings import get_settings

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(data_dir, simulator, monkeypatch):
    monkeypatch.setenv("PIPELINE_PRODUCTS", "BTC-USD,ETH-USD")
    monkeypatch.setenv("PIPELINE_HISTORY_DAYS", "1")
    monkeypatch.setenv("PIPELINE_OVERLAP_MINUTES", "15")
    return get_settings()


def rows(settings) -> list[dict]:
    df = runlog.read_all(settings).sort_values("started_at")
    return df[["dag_id", "task_id", "status", "rows_in", "rows_out", "try_number", "message"]].to_dict("records")


def test_paced_settings_split_the_rate_limit_across_pool_slots(settings):
    paced = tasks._paced(settings, 4)
    assert paced.rate_limit_rps == pytest.approx(settings.rate_limit_rps / 4)
    assert paced.rate_limit_burst == max(1, settings.rate_limit_burst // 4)
    assert tasks._paced(settings, 1) is settings


# ---- run log ------------------------------------------------------------------------------------------------
def test_fetch_candles_writes_bronze_and_one_success_row(settings):
    out = tasks.fetch_candles("BTC-USD", T0 - timedelta(hours=1), T0, 60, settings=settings)
    assert out["product"] == "BTC-USD"
    assert out["candles"] == 60 and out["quarantined"] == 0
    assert out["files"] == out["partitions"] == 1  # counts, not paths: the XCom stays small
    (row,) = rows(settings)
    assert (row["dag_id"], row["task_id"], row["status"]) == ("manual", "fetch_candles", "success")
    assert (row["rows_in"], row["rows_out"]) == (60, 60)
    assert "BTC-USD g=60" in row["message"]


def test_fetch_candles_logs_the_rows_received_in_and_the_rows_written_out(settings, make_simulator, monkeypatch):
    """Bad rows are quarantined and their page fetched again: `candles` counts the valid rows written, `quarantined`
    the bad ones. The run log said rows_in = candles and rows_out = candles - quarantined: fewer rows out than
    bronze holds (negative when a page was mostly bad)."""
    sim = make_simulator(seed=7, malformed_rate=0.5, rate_limit_rps=1000.0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    s = get_settings()
    out = tasks.fetch_candles("BTC-USD", T0 - timedelta(hours=6), T0, 60, settings=s)
    assert out["candles"] == 360 and out["quarantined"] > 0
    (row,) = rows(s)
    assert (row["rows_in"], row["rows_out"]) == (360 + out["quarantined"], 360)


def test_fetch_intraday_backfills_history_first_then_only_the_interval(settings):
    first = tasks.fetch_intraday("ETH-USD", T0 - timedelta(minutes=5), T0, settings=settings)
    assert first["candles"] == 24 * 60  # history_days=1 of 1-minute candles
    second = tasks.fetch_intraday("ETH-USD", T0, T0 + timedelta(minutes=5), settings=settings)
    assert second["candles"] == 5 + 15  # the interval plus the 15-minute overlap
    assert second["window"][0].startswith("2026-03-02 11:45")


def test_an_intraday_run_after_skipped_intervals_fetches_them_too(settings):
    """The intraday DAG has catchup off and one active run: after a run that outlasts its interval (retries, a
    30-minute task timeout), a pause or a scheduler outage, Airflow creates the next run for the latest interval
    and the intervals in between never run. Each run fetched only its own interval plus the 15-minute overlap, so
    the minutes between were never in bronze (here 45 of the hour: 9 of silver's 5-minute bars missing for good,
    the day's bar made of the minutes left). A run now reaches back to the newest candle bronze holds."""
    from tests.support.bronze import read_bronze

    tasks.fetch_intraday("BTC-USD", T0 - timedelta(minutes=5), T0, settings=settings)      # first run: history
    late = tasks.fetch_intraday("BTC-USD", T0 + timedelta(minutes=60), T0 + timedelta(minutes=65), settings=settings)
    minutes = read_bronze(["BTC-USD"], granularity=60, settings=settings, dedup=True)["bucket_start"]
    assert sorted(set(minutes[minutes >= T0])) == list(pd.date_range(T0, periods=65, freq="min", tz="UTC"))
    assert late["candles"] == 65 + 1 + 15   # back to the newest candle held (11:59), less the overlap
    # a run on time still fetches its interval plus the overlap
    assert tasks.fetch_intraday("BTC-USD", T0 + timedelta(minutes=65), T0 + timedelta(minutes=70),
                                settings=settings)["candles"] == 5 + 15


def test_an_end_of_day_run_for_a_day_before_the_history_fetches_that_days_whole_history(settings, monkeypatch):
    """A backfill (or manual run) of an old as-of day whose history window starts before the oldest daily candle
    bronze holds: it fetched only its last overlap days, so risk valued the day on the days bronze happened to hold
    (here 11 of the window's 30) where a clean run of that day fetches the whole window."""
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "30")
    s = get_settings()
    tasks.ingest_daily_history("BTC-USD", date(2026, 3, 1), settings=s)          # the first scheduled run
    old = tasks.ingest_daily_history("BTC-USD", date(2026, 2, 10), settings=s)   # then a backfill of 02-10
    assert old["window"][0].startswith("2026-01-12") and old["candles"] == 30     # its window [01-12, 02-11)
    # the day after the first run: only the overlap, as before
    assert tasks.ingest_daily_history("BTC-USD", date(2026, 3, 2), settings=s)["candles"] == 4


def test_the_end_of_day_run_completes_the_as_of_days_intraday_candles_before_silver(settings, data_dir, monkeypatch):
    """The end-of-day run (00:10) built silver on whatever 1-minute candles the intraday DAG had fetched by then: with
    the intraday runs of the day's last half hour late (or failed), the day's daily bar came from minutes that stop
    at 23:29, so risk valued the as-of day at the 23:29 close (is_complete false, nothing refused it), where a clean
    run has the 00:00 close. The end-of-day fetch now completes the day's 1-minute candles bronze lacks."""
    from etl.silver.read import read_bars

    day, end = date(2026, 3, 1), datetime(2026, 3, 2, tzinfo=UTC)

    def eod(cut: timedelta, root: str) -> tuple[dict, int]:
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir / root))
        s = get_settings()
        tasks.fetch_candles("BTC-USD", end - timedelta(days=1), end - cut, 60, settings=s)   # the intraday DAG's
        tasks.ingest_daily_history("BTC-USD", day, settings=s)
        tasks.build_silver(settings=s)
        (bar,) = read_bars("1d", ["BTC-USD"], day, day, settings=s)[["close", "n_candles", "is_complete"]].to_dict(
            "records")
        return bar, len(read_bars("5m", ["BTC-USD"], day, day, settings=s))

    clean = eod(timedelta(0), "clean")
    assert clean == ({**clean[0], "n_candles": 1440, "is_complete": True}, 288)
    assert eod(timedelta(minutes=30), "late") == clean


def test_validate_products_checks_master_and_source(settings):
    assert tasks.validate_products(settings=settings) == ["BTC-USD", "ETH-USD"]
    with pytest.raises(ValidationError, match=r"\['FOO-USD'\] are not in the instrument master"):
        tasks.validate_products("BTC-USD,FOO-USD", settings=settings)
    statuses = [r["status"] for r in rows(settings)]
    assert statuses == ["success", "failed"]


def test_a_failing_attempt_is_up_for_retry_in_airflow_and_failed_outside(settings, make_simulator, monkeypatch):
    broken = make_simulator(fail_rate=1.0, rate_limit_rps=1000.0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", broken.url)
    monkeypatch.setenv("PIPELINE_MAX_WAIT_S", "0.5")
    s = get_settings()
    ref = TaskRef(run_id="r1", dag_id="market_data_intraday", task_id="fetch_candles[0]",
                  try_number=1, max_tries=2, in_airflow=True)
    with pytest.raises(SourceError) as retried:
        tasks.fetch_candles("BTC-USD", T0 - timedelta(hours=1), T0, 60, ref=ref, settings=s)
    record_retry(ref, retried.value, s)  # Airflow's on_retry_callback: the function recorded it, not again
    last = TaskRef(**{**ref.__dict__, "try_number": 3})
    with pytest.raises(SourceError):  # last attempt: left to the on_failure_callback (record_failed)
        tasks.fetch_candles("BTC-USD", T0 - timedelta(hours=1), T0, 60, ref=last, settings=s)
    record_failed(last, RuntimeError("boom"), s)
    with pytest.raises(SourceError):  # outside Airflow the function records the failure itself
        tasks.fetch_candles("BTC-USD", T0 - timedelta(hours=1), T0, 60, settings=s)
    got = [(r["dag_id"], r["task_id"], r["status"], r["try_number"]) for r in rows(s)]
    assert got == [
        ("market_data_intraday", "fetch_candles[0]", "up_for_retry", 1),
        ("market_data_intraday", "fetch_candles[0]", "failed", 3),
        ("manual", "fetch_candles", "failed", 1),
    ]
    messages = [r["message"] for r in rows(s)]
    assert "SourceError" in messages[0] and messages[1] == "RuntimeError: boom"


def test_a_fetch_that_fails_before_the_api_call_is_the_tasks_failure(settings, data_dir):
    """The window of an intraday or end-of-day fetch depends on what bronze holds (its watermark): a failure reading
    it is the task's own, as any other: outside Airflow a `failed` run-log row; in Airflow a corrupt file (bad
    input, no retry fixes it) fails at once, left to the callback. It escaped the task's frame: no row, retried."""
    from airflow.sdk.exceptions import AirflowFailException

    from etl.integrity import CorruptFileError

    tasks.fetch_intraday("BTC-USD", T0 - timedelta(minutes=5), T0, settings=settings)
    tasks.ingest_daily_history("BTC-USD", date(2026, 3, 1), settings=settings)
    for f in (data_dir / "bronze" / "candles").rglob("*.parquet"):
        f.write_bytes(b"not parquet")
    before = len(rows(settings))
    with pytest.raises(CorruptFileError):
        tasks.fetch_intraday("BTC-USD", T0, T0 + timedelta(minutes=5), settings=settings)
    with pytest.raises(CorruptFileError):
        tasks.ingest_daily_history("BTC-USD", date(2026, 3, 2), settings=settings)
    in_airflow = TaskRef("r4", "risk_end_of_day", "ingest_daily_history[0]", try_number=1, max_tries=2,
                         in_airflow=True)
    with pytest.raises(AirflowFailException, match="not parquet|Parquet|corrupt"):
        tasks.ingest_daily_history("BTC-USD", date(2026, 3, 2), ref=in_airflow, settings=settings)
    got = [(r["dag_id"], r["task_id"], r["status"], r["message"].split(":")[0]) for r in rows(settings)[before:]]
    assert got == [("manual", "fetch_candles", "failed", "CorruptFileError"),
                   ("manual", "ingest_daily_history", "failed", "CorruptFileError")]


# ---- backfill form ------------------------------------------------------------------------------------------
GOOD = {"products": "btc-usd, ETH-USD", "start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00+00:00",
        "granularity": 300, "full_refresh": True}


def test_validate_backfill_normalises_a_good_form(settings):
    out = tasks.validate_backfill(GOOD, settings=settings)
    assert out == {"products": ["BTC-USD", "ETH-USD"], "start": "2026-03-01T00:00:00+00:00",
                   "end": "2026-03-02T00:00:00+00:00", "granularity": 300, "full_refresh": True}


@pytest.mark.parametrize("change, message", [
    ({"products": "BTC-USD,NOPE-USD"}, r"'products': \['NOPE-USD'\] not in the instrument master"),
    ({"products": " , "}, "'products' is empty"),
    ({"start": "yesterday"}, "'start'='yesterday' is not an ISO 8601 time"),
    ({"end": "2026-02-01T00:00:00Z"}, "end 2026-02-01T00:00:00\\+00:00 must be after start"),
    ({"granularity": 61}, r"'granularity'=61: expected one of \[60, 300"),
    ({"full_refresh": "yes"}, "'full_refresh'='yes': expected true or false"),
])
def test_validate_backfill_names_the_bad_field(settings, change, message):
    with pytest.raises(ValidationError, match=message):
        tasks.validate_backfill({**GOOD, **change}, settings=settings)


def test_bad_input_in_airflow_fails_at_once_and_the_callback_records_the_cause(settings):
    """Bad input (a form, the reference data, a setting) is no better on a retry: AirflowFailException on the
    first attempt, no up_for_retry row, and the callback's `failed` row names the error itself."""
    from airflow.sdk.exceptions import AirflowFailException

    ref = TaskRef("r2", "market_data_backfill", "validate_params", try_number=1, max_tries=2, in_airflow=True)
    with pytest.raises(AirflowFailException, match=r"'granularity'=7") as failed:
        tasks.validate_backfill({**GOOD, "granularity": 7}, ref=ref, settings=settings)
    assert isinstance(failed.value.__cause__, ValidationError)
    intraday = TaskRef("r3", "market_data_intraday", "validate_products", try_number=1, max_tries=2, in_airflow=True)
    with pytest.raises(AirflowFailException, match=r"\['FOO-USD'\] are not in the instrument master"):
        tasks.validate_products("BTC-USD,FOO-USD", ref=intraday, settings=settings)
    assert rows(settings) == []  # not "up_for_retry": nothing to retry, the callback records the failure
    record_failed(ref, failed.value, settings)
    (row,) = rows(settings)
    assert row["status"] == "failed" and row["message"].startswith("ValidationError: backfill param 'granularity'")


def test_book_products_add_what_the_portfolios_hold_and_their_conversions(settings):
    from etl.reference_set import Reference

    book = Reference(settings).needed_products()
    assert len(book) == len(set(book))
    assert {"ETH-BTC", "BTC-USD", "ETH-USD"} <= set(book)  # ETH-BTC is held: it needs BTC-USD to convert
    assert tasks.validate_products(include_book=True, settings=settings)[:2] == ["BTC-USD", "ETH-USD"]


def test_book_products_leave_out_the_delisted_ones(settings, tmp_path):
    """The source serves no candles for a delisted product (HTTP 400): the end-of-day run does not fetch it."""
    import dataclasses
    import shutil

    ref = Path(shutil.copytree(settings.reference_dir, tmp_path / "ref"))
    lines = (ref / "instruments.csv").read_text().splitlines()
    (ref / "instruments.csv").write_text("\n".join(
        [f"{lines[0]},delisted_on"] + [f"{r},{'2025-01-01' if r.startswith('LINK-USD,') else ''}" for r in lines[1:]])
        + "\n")
    from etl.reference_set import Reference

    book = Reference(dataclasses.replace(settings, reference_dir=ref)).needed_products()
    assert book == [p for p in Reference(settings).needed_products() if p != "LINK-USD"] and "LINK-USD" not in book


@pytest.mark.slow
def test_run_all_chains_every_stage_into_the_warehouse(pg_url, data_dir, simulator, tmp_path, monkeypatch):
    """`python -m etl run` in-process: real simulator, real Postgres (a warehouse emptied first: the database is
    the session's, and another test's intraday rows would name portfolios this book does not hold), real dbt."""
    from pathlib import Path

    from etl import db
    from tests.support.reference import small_reference

    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop schema if exists raw, staging, gold cascade")

    ref_dir = tmp_path / "reference"
    kept = small_reference(Path(__file__).resolve().parents[3] / "etl" / "reference_data", ref_dir,
                                ["BTC-USD", "ETH-USD"])
    for name, value in {"PIPELINE_DATABASE_URL": pg_url, "PIPELINE_REFERENCE_DIR": str(ref_dir),
                        "PIPELINE_STATE_DIR": str(tmp_path / "state"), "PIPELINE_PRODUCTS": "BTC-USD,ETH-USD",
                        "PIPELINE_HISTORY_DAYS": "1", "PIPELINE_DAILY_HISTORY_DAYS": "60"}.items():
        monkeypatch.setenv(name, value)
    s = get_settings()
    summary = tasks.run_all(as_of=date(2026, 3, 1), settings=s)
    assert "as_of=2026-03-01" in summary and "daily candles: 120" in summary
    assert "1-minute candles: 2880" in summary  # first run: history_days of 1-minute candles per product
    log = runlog.read_all(s)
    assert set(log["status"]) == {"success"}
    assert log["run_id"].nunique() == 1
    base = {t.split("[")[0] for t in log["task_id"]}
    assert base == {"validate_products", "validate_book_products", "ingest_daily_history", "fetch_candles",
                    "build_silver", "compute_risk", "compute_factors", "load_warehouse", "build_dbt",
                    "export_report", "send_alerts", "compact_bronze"}
    n = int(db.run_psql("select count(*) from gold.fact_risk_metrics where as_of_date = '2026-03-01'", url=pg_url))
    assert n == len(kept)  # one risk row per portfolio of the book, as of the requested day
    # the PnL attribution of every book and day sums to its daily PnL in gold
    attributed = int(db.run_psql("select count(distinct (portfolio_id, as_of_date)) from gold.fact_pnl_attribution",
                                 url=pg_url))
    off = int(db.run_psql("""
        select count(*) from gold.fact_pnl_daily as d
        left join (select portfolio_id, as_of_date, sum(explained_pnl) as explained
                   from gold.fact_pnl_attribution group by portfolio_id, as_of_date) as a using (portfolio_id, as_of_date)
        where d.daily_pnl is not null
          and (a.explained is null or abs(a.explained - d.daily_pnl) > 1e-9 * greatest(1, abs(d.daily_pnl)))""",
                          url=pg_url))
    with_pnl = int(db.run_psql("select count(*) from gold.fact_pnl_daily where daily_pnl is not null", url=pg_url))
    assert off == 0 and attributed == with_pnl > 0

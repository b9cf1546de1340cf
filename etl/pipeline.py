"""Task functions: what every Airflow task calls (one function per task), plus `run_all` for the CLI.

Each function does one stage's work through the stage module (etl.bronze, etl.silver, etl.risk, ...), records
one run-log row (run id, DAG, task, status, rows in/out, duration, message) and returns a small JSON-able dict
that Airflow keeps as the task's XCom. They run without Airflow too: pass no `ref` and the row is recorded
under the dag id "manual".

Run-log statuses: `success`; `up_for_retry` when an attempt fails and Airflow will retry it; `failed` when the
last attempt fails (recorded by the DAGs' on_failure_callback through `record_failed`, or here when the function
runs outside Airflow), so a task that retries twice then fails leaves exactly three rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from etl.errors import ValidationError
from etl.orchestration.spec import DAILY, EOD_DAG
from etl.settings import Settings, get_settings, parse_products

# Light at import on purpose (stage modules, pandas and pyarrow load inside the functions): Airflow imports this
# module while parsing the end-of-day DAG, to check the deadline callback's import path.

log = logging.getLogger(__name__)


# ---- which task run is this ---------------------------------------------------------------------------------
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


def _logged(ref: TaskRef, settings: Settings, retryable: bool = True):
    """Time the block and record one run-log row: success, up_for_retry, or failed (outside Airflow).

    In Airflow the last failed attempt is recorded by the on_failure_callback (`record_failed`), which also
    sees failures that never reach this code (timeouts, killed workers): recording it here too would double it.
    `retryable=False`: the task fails without retry on error (bad input), so its failure is the last attempt.
    """
    from etl import runlog

    if ref.will_retry and retryable:
        failure_status = "up_for_retry"
    elif not ref.in_airflow:
        failure_status = "failed"
    else:
        failure_status = None
    return runlog.task_run(ref.run_id, ref.dag_id, ref.task_id, settings, ref.try_number, failure_status)


def record_failed(ref: TaskRef, exc: BaseException | None, settings: Settings | None = None,
                  started_at: datetime | None = None) -> None:
    """Record the final failure of a task (the DAGs' on_failure_callback and the deadline callback call this)."""
    from etl import runlog

    settings = settings or get_settings()
    rec = runlog.RunRecord(run_id=ref.run_id, dag_id=ref.dag_id, task_id=ref.task_id, status="failed",
                           try_number=ref.try_number,
                           message=f"{type(exc).__name__}: {exc}" if exc is not None else "failed (no exception)")
    if started_at is not None:
        rec.started_at = started_at
        rec.duration_s = max(0.0, (datetime.now(UTC) - started_at).total_seconds())
    runlog.record_safely(rec, settings)


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


def _ref(ref: TaskRef | None, task_id: str) -> TaskRef:
    return ref or TaskRef.manual(task_id)


def _as_dict(summary: Any) -> dict:
    """A stage summary (dataclass or dict) as a JSON-able dict for XCom."""
    if dataclasses.is_dataclass(summary) and not isinstance(summary, type):
        raw = dataclasses.asdict(summary)
    elif isinstance(summary, dict):
        raw = dict(summary)
    else:
        return {"result": str(summary)}
    return {k: _jsonable(v) for k, v in raw.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# ---- windows (pure: no now()) -------------------------------------------------------------------------------
def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_interval(context: Any, every: timedelta, offset: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The run's data interval, from an Airflow task context.

    Airflow 3 gives a manual run triggered without a logical date (UI "Trigger", `airflow dags trigger`) no data
    interval: such a run gets the last complete interval of the schedule (`every`, aligned on the epoch plus
    `offset`) before the moment it was requested (`dag_run.run_after`). Still no now(): a rerun of that run
    covers the same window.
    """
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None:
        return _utc(start), _utc(end)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None) or context.get("logical_date")
    if run_after is None:
        raise ValidationError("this run has neither a data interval nor a run_after time: trigger it with a "
                              "logical date")
    return last_interval(_utc(run_after), every, offset)


def last_interval(moment: datetime, every: timedelta, offset: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The last complete [start, end) of a fixed schedule (`every`, epoch-aligned plus `offset`) ending at or
    before `moment`."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC) + offset
    end = epoch + ((_utc(moment) - epoch) // every) * every
    return end - every, end


def intraday_window(interval_start: datetime | str, interval_end: datetime | str, settings: Settings,
                    has_history: bool = True) -> tuple[datetime, datetime]:
    """The fetch window of an intraday run: its data interval, extended back by the overlap margin.

    With no history yet (first ever run) the window reaches back `history_days` from the interval end.
    """
    start, end = _utc(interval_start), _utc(interval_end)
    if end <= start:
        raise ValidationError(f"data interval [{start.isoformat()}, {end.isoformat()}) is empty")
    if not has_history:
        return end - timedelta(days=settings.history_days), end
    return start - timedelta(minutes=settings.overlap_minutes), end


def daily_window(as_of: date, settings: Settings) -> tuple[datetime, datetime]:
    """Daily candles for the risk history: `daily_history_days` days ending with the as-of day (inclusive)."""
    end = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1)
    return end - timedelta(days=settings.daily_history_days), end


def daily_history_start(product: str, as_of: date, settings: Settings) -> datetime:
    """Where an end-of-day fetch of daily candles starts: the window start on a first run (backfill), else the
    newest daily candle bronze holds minus `daily_overlap_days` (recent days are revised), never before the
    window start and always at least the overlap before the window end, so a rerun of an old day still fetches."""
    from etl.bronze import watermark

    window_start, end = daily_window(as_of, settings)
    mark = watermark(product, DAILY, settings)
    if mark is None or mark < window_start:
        return window_start
    newest = min(mark + timedelta(days=1), end)
    return max(window_start, newest - timedelta(days=settings.daily_overlap_days))


def eod_as_of(interval_start: datetime | str) -> date:
    """The business day an end-of-day run values: the day its data interval starts."""
    return _utc(interval_start).date()


def _as_date(as_of: date | str | None) -> date | None:
    """An as-of day given as a date or an ISO string (XCom and Airflow templates hand strings)."""
    return date.fromisoformat(as_of) if isinstance(as_of, str) else as_of


def has_history(product: str, granularity: int, settings: Settings) -> bool:
    """Whether bronze already holds finished batches of this product and granularity (else: first run)."""
    from etl.bronze import watermark

    return watermark(product, granularity, settings) is not None


# ---- progress in task logs ----------------------------------------------------------------------------------
class FetchProgress:
    """`on_page` callback of bronze.ingest that logs progress at a steady cadence (Airflow shows task logs, not the
    CLI's progress bar): the first page, then at most one line every `interval_s`, and the last page, e.g.
    `fetch BTC-USD g=60: 120/480 pages (25%), 36,000 candles, 9.8 pages/s, ETA 37s`.
    Rate = pages done / seconds since the first call's start; ETA = pages left / rate."""

    def __init__(self, label: str, interval_s: float, clock=time.monotonic) -> None:
        self.label, self.interval_s, self.clock = label, interval_s, clock
        self.started = clock()
        self.last_logged: float | None = None
        self.candles = 0

    def __call__(self, done: int, total: int, candles: int) -> None:
        self.candles += candles
        now = self.clock()
        due = self.last_logged is None or now - self.last_logged >= self.interval_s
        if not (due or done >= total):
            return
        self.last_logged = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else float("inf")
        log.info("fetch %s: %d/%d pages (%.0f%%), %s candles, %.1f pages/s, %s", self.label, done, total,
                 100.0 * done / max(total, 1), f"{self.candles:,}", rate,
                 "done" if done >= total else f"ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = round(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


# ---- tasks --------------------------------------------------------------------------------------------------
def book_products(settings: Settings) -> list[str]:
    """Products the risk run needs beyond the universe: every product held, plus `<CCY>-USD` for each non-USD
    quote or base currency (conversions), e.g. ETH-BTC held -> ETH-BTC and BTC-USD."""
    from etl import portfolios
    from etl.reference import load_instruments

    return portfolios.book_products(load_instruments(settings), portfolios.load_portfolios(settings),
                                    portfolios.load_positions(settings))


def validate_products(products: list[str] | str | None = None, *, include_book: bool = False,
                      pool_slots: int = 1, ref: TaskRef | None = None, settings: Settings | None = None) -> list[str]:
    """Check the products against the instrument master, then against the source (`/products/{id}`).

    `include_book`: add what the portfolios hold (end of day: risk needs a price for every position).
    `pool_slots`: as for fetch_candles (this task calls the API too, so it runs in the same pool).
    Returns the product ids in order. A product missing from the master or unknown/delisted at the source
    fails the task with a message naming it: the run must not silently shrink its universe.
    """
    from etl.reference import load_instruments
    from etl.source import validate_products as validate_products_at_source

    settings = settings or get_settings()
    ref = _ref(ref, "validate_products")
    wanted = parse_products(products) if products else list(settings.products)
    with _logged(ref, settings) as rec:
        if include_book:
            wanted = list(dict.fromkeys(wanted + book_products(settings)))
        rec.rows_in = len(wanted)
        known = set(load_instruments(settings)["product_id"])
        missing = [p for p in wanted if p not in known]
        if missing:
            raise ValidationError(f"product(s) {missing} are not in the instrument master "
                                  f"({settings.reference_dir}/instruments.csv): add them there or remove them "
                                  "from PIPELINE_PRODUCTS")
        checked = validate_products_at_source(wanted, _paced(settings, pool_slots))  # one API call per product
        ids = [p["id"] for p in checked]
        rec.rows_out = len(ids)
        rec.message = ",".join(ids)
    return ids


def fetch_candles(product: str, start: datetime | str | None, end: datetime | str | None,
                  granularity: int | None = None, *, pool_slots: int = 1, ref: TaskRef | None = None,
                  settings: Settings | None = None) -> dict:
    """Fetch one product's candles for [start, end) into bronze.

    `pool_slots`: how many API tasks may run at once; this task paces at rate_limit_rps / pool_slots so that
    all of them together stay under the exchange's limit.
    """
    from etl import bronze

    settings = settings or get_settings()
    ref = _ref(ref, "fetch_candles")
    granularity = int(granularity or settings.granularity)
    paced = _paced(settings, pool_slots)
    with _logged(ref, settings) as rec:
        summary = bronze.ingest(products=[product], start=_utc(start) if start else None,
                                end=_utc(end) if end else None, granularity=granularity, settings=paced,
                                batch_id=f"{_slug(ref.run_id)}-{_slug(ref.task_id)}-{product}-{granularity}",
                                on_page=FetchProgress(f"{product} g={granularity}", settings.progress_interval_s))
        rec.rows_in = summary.candles
        rec.rows_out = summary.candles - summary.quarantined
        rec.message = (f"{product} g={granularity} [{start}, {end}) requests={summary.requests} "
                       f"retries={summary.retries} http_429={summary.http_429} quarantined={summary.quarantined}")
    out = _as_dict(summary)
    # XCom stays small: counts instead of one path per partition (400 for a daily history)
    out["files"] = len(out.get("files") or [])
    out["partitions"] = len(out.get("partitions") or [])
    return {"product": product, **out}


def fetch_intraday(product: str, interval_start: datetime | str, interval_end: datetime | str, *,
                   pool_slots: int = 1, ref: TaskRef | None = None, settings: Settings | None = None) -> dict:
    """The intraday DAG's fetch: the data interval plus overlap, or `history_days` back on the first run."""
    settings = settings or get_settings()
    first = not has_history(product, settings.granularity, settings)
    start, end = intraday_window(interval_start, interval_end, settings, has_history=not first)
    return fetch_candles(product, start, end, settings.granularity, pool_slots=pool_slots,
                         ref=_ref(ref, "fetch_candles"), settings=settings)


def ingest_daily_history(product: str, as_of: date | str, *, pool_slots: int = 1, ref: TaskRef | None = None,
                         settings: Settings | None = None) -> dict:
    """Daily candles (granularity 86400) up to the as-of day, the risk history: only those bronze lacks plus
    `daily_overlap_days` (the first run backfills `daily_history_days`, see `daily_history_start`)."""
    settings = settings or get_settings()
    day = _as_date(as_of)
    _, end = daily_window(day, settings)
    start = daily_history_start(product, day, settings)
    return fetch_candles(product, start, end, DAILY, pool_slots=pool_slots,
                         ref=_ref(ref, "ingest_daily_history"), settings=settings)


def build_silver(full_refresh: bool = False, *, ref: TaskRef | None = None,
                 settings: Settings | None = None) -> dict:
    """Bronze -> silver 5-minute and daily bars (touched partitions, or all with full_refresh)."""
    from etl import silver

    settings = settings or get_settings()
    ref = _ref(ref, "build_silver")
    with _logged(ref, settings) as rec:
        summary = silver.build(full_refresh=full_refresh, settings=settings)
        rec.rows_in = summary.rows_in
        rec.rows_out = summary.rows_out
        rec.message = f"full_refresh={full_refresh} {summary}"[:500]
    return _as_dict(summary)


def compact_bronze(as_of: date | str | None = None, *, ref: TaskRef | None = None,
                   settings: Settings | None = None) -> dict:
    """Compact bronze partitions of the days up to the as-of day (closed days; default: before today, UTC)."""
    from etl import compaction

    settings = settings or get_settings()
    ref = _ref(ref, "compact_bronze")
    day = _as_date(as_of)
    with _logged(ref, settings) as rec:
        summary = compaction.compact(before=day + timedelta(days=1) if day else None, settings=settings)
        rec.rows_in, rec.rows_out = summary.rows_in, summary.rows_out
        rec.message = str(summary)[:500]
    return _as_dict(summary)


def compute_risk(as_of: date | str | None = None, *, ref: TaskRef | None = None,
                 settings: Settings | None = None) -> dict:
    """Valuation, PnL, VaR/ES, drawdown, anomalies, VaR backtest and limit checks for the as-of day."""
    from etl import risk

    settings = settings or get_settings()
    ref = _ref(ref, "compute_risk")
    day = _as_date(as_of)
    with _logged(ref, settings) as rec:
        summary = risk.run(as_of=day, settings=settings)
        rec.rows_in = summary.rows_in
        rec.rows_out = summary.rows_out
        rec.message = f"as_of={day} {summary}"[:500]
    return _as_dict(summary)


def compute_factors(end: datetime | str | None = None, *, ref: TaskRef | None = None,
                    settings: Settings | None = None) -> dict:
    """Factor returns and rolling exposures up to `end` (the data interval's end in the DAG)."""
    from etl import factors

    settings = settings or get_settings()
    ref = _ref(ref, "compute_factors")
    with _logged(ref, settings) as rec:
        summary = factors.run(settings=settings, end=_utc(end) if end else None)
        rec.rows_in = summary.rows_in
        rec.rows_out = sum(summary.rows.values())
        rec.message = f"end={end} {summary}"[:500]
    return _as_dict(summary)


def load_warehouse(*, ref: TaskRef | None = None, settings: Settings | None = None) -> dict:
    """Outputs, silver bars and the run log -> Postgres schema raw (upsert by key); dbt runs in build_dbt."""
    from etl import warehouse

    settings = settings or get_settings()
    ref = _ref(ref, "load_warehouse")
    with _logged(ref, settings) as rec:
        summary = warehouse.load(settings=settings, run_dbt=False)
        rec.rows_in = sum(summary.files.values())
        rec.rows_out = summary.total_rows
        rec.message = str(summary)[:500]
    return _as_dict(summary)


def build_dbt(command: str = "build", *, ref: TaskRef | None = None, settings: Settings | None = None) -> dict:
    """`dbt build` of raw -> staging -> gold (the dbt CLI through etl.warehouse.run_dbt)."""
    from etl import warehouse

    settings = settings or get_settings()
    ref = _ref(ref, "build_dbt")
    with _logged(ref, settings) as rec:
        warehouse.run_dbt(command, settings=settings)
        rec.message = f"dbt {command}: ok"
    return {"command": command}


def export_report(as_of: date | str | None = None, *, ref: TaskRef | None = None,
                  settings: Settings | None = None) -> str:
    """The HTML risk report (and CSVs) for the as-of day; returns its path."""
    settings = settings or get_settings()
    ref = _ref(ref, "export_report")
    day = _as_date(as_of)
    with _logged(ref, settings) as rec:
        from etl import report

        path = report.run(as_of=day, settings=settings)
        rec.rows_out = 1
        rec.message = f"as_of={day} report={path}"
    return str(path)


def send_alerts(as_of: date | str | None = None, *, ref: TaskRef | None = None,
                settings: Settings | None = None) -> int:
    """Limit-breach alerts for the as-of day (webhook/e-mail per settings); returns how many were sent."""
    settings = settings or get_settings()
    ref = _ref(ref, "send_alerts")
    day = _as_date(as_of)
    with _logged(ref, settings) as rec:
        from etl.report.alerts import send_alerts as _send

        sent = int(_send(day, settings))
        rec.rows_out = sent
        rec.message = f"as_of={day} alerts={sent}"
    return sent


# ---- intraday risk (market_data_intraday, after build_silver) -----------------------------------------------
def compute_intraday_risk(interval_start: datetime | str, *, ref: TaskRef | None = None,
                          settings: Settings | None = None) -> dict:
    """Revalue every portfolio at the run's 5-minute bucket (its data interval start): value, PnL since the
    previous close, exposures, VaR/ES on the last EOD scenario set, stale prices, limit checks."""
    from etl.risk import intraday

    settings = settings or get_settings()
    ref = _ref(ref, "compute_intraday_risk")
    with _logged(ref, settings) as rec:
        summary = intraday.run(interval_start, settings=settings)
        rec.rows_in = summary.portfolios
        rec.rows_out = summary.rows_out
        rec.message = str(summary)[:500]
    return _as_dict(summary)


def load_intraday_warehouse(*, ref: TaskRef | None = None, settings: Settings | None = None) -> dict:
    """The light path: reference data and the intraday outputs -> raw, then dbt build of the intraday models."""
    from etl.warehouse.loader import load_intraday

    settings = settings or get_settings()
    ref = _ref(ref, "load_intraday_warehouse")
    with _logged(ref, settings) as rec:
        summary = load_intraday(settings=settings)
        rec.rows_in = sum(summary.files.values())
        rec.rows_out = summary.total_rows
        rec.message = str(summary)[:500]
    return _as_dict(summary)


def send_intraday_alerts(interval_start: datetime | str, *, ref: TaskRef | None = None,
                         settings: Settings | None = None) -> int:
    """Alert the bucket's new intraday breaches (once per portfolio, limit and day) and record clearings."""
    from etl.risk import intraday

    settings = settings or get_settings()
    ref = _ref(ref, "send_intraday_alerts")
    with _logged(ref, settings) as rec:
        sent = int(intraday.send_alerts(interval_start, settings=settings))
        rec.rows_out = sent
        rec.message = f"bucket={interval_start} alerts={sent}"
    return sent


# ---- backfill -----------------------------------------------------------------------------------------------
def validate_backfill(params: dict, *, ref: TaskRef | None = None, settings: Settings | None = None) -> dict:
    """Check the backfill form (products in the instrument master, start < end, granularity); normalise it.

    Raises ValidationError naming the field, the bad value and what to enter instead.
    """
    from etl.reference import load_instruments
    from etl.source import VALID_GRANULARITIES

    settings = settings or get_settings()
    ref = _ref(ref, "validate_params")
    with _logged(ref, settings, retryable=False) as rec:  # the DAG fails bad input at once (no retry)
        products = parse_products(params.get("products") or "")
        if not products:
            raise ValidationError("backfill param 'products' is empty: enter a comma list such as BTC-USD,ETH-USD")
        known = set(load_instruments(settings)["product_id"])
        unknown = [p for p in products if p not in known]
        if unknown:
            raise ValidationError(f"backfill param 'products': {unknown} not in the instrument master "
                                  f"({settings.reference_dir}/instruments.csv); known: {sorted(known)}")
        start = _param_time(params, "start")
        end = _param_time(params, "end")
        if end <= start:
            raise ValidationError(f"backfill params: end {end.isoformat()} must be after start {start.isoformat()}")
        granularity = params.get("granularity", 60)
        try:
            granularity = int(granularity)
        except (TypeError, ValueError):
            granularity = -1
        if granularity not in VALID_GRANULARITIES:
            raise ValidationError(f"backfill param 'granularity'={params.get('granularity')!r}: "
                                  f"expected one of {list(VALID_GRANULARITIES)} seconds")
        full_refresh = params.get("full_refresh", False)
        if not isinstance(full_refresh, bool):
            raise ValidationError(f"backfill param 'full_refresh'={full_refresh!r}: expected true or false")
        out = {"products": products, "start": start.isoformat(), "end": end.isoformat(),
               "granularity": granularity, "full_refresh": full_refresh}
        rec.rows_in = rec.rows_out = len(products)
        rec.message = f"{','.join(products)} [{out['start']}, {out['end']}) g={granularity}"
    return out


def _param_time(params: dict, name: str) -> datetime:
    raw = params.get(name)
    try:
        return _utc(raw if isinstance(raw, datetime) else str(raw).strip())
    except ValueError:
        raise ValidationError(f"backfill param {name!r}={raw!r} is not an ISO 8601 time "
                              "(e.g. 2026-01-31T00:00:00+00:00)") from None


def _paced(settings: Settings, pool_slots: int) -> Settings:
    if pool_slots <= 1:
        return settings
    return dataclasses.replace(settings, rate_limit_rps=settings.rate_limit_rps / pool_slots,
                               rate_limit_burst=max(1, settings.rate_limit_burst // pool_slots))


def _brief(summary: dict) -> str:
    """One line per stage for `run_all`: the numeric fields, and row totals of per-table dicts."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        elif isinstance(value, dict) and value and all(isinstance(v, int) for v in value.values()):
            parts.append(f"{key}={sum(value.values())} in {len(value)} tables")
    return ", ".join(parts)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


# ---- the whole chain, in-process ----------------------------------------------------------------------------
def run_all(as_of: date | None = None, settings: Settings | None = None) -> str:
    """`python -m etl run`: the whole chain once, in this process, for the last complete UTC day.

    validate -> daily history -> intraday candles -> silver -> risk -> factors -> load + dbt -> report -> alerts.
    The intraday window ends at the current minute (the CLI may read the clock; the DAGs never do).
    """
    settings = settings or get_settings()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    as_of = as_of or (now.date() - timedelta(days=1))
    run_id = f"manual__{now.strftime('%Y%m%dT%H%M')}_{uuid.uuid4().hex[:6]}"

    def ref(task_id: str) -> TaskRef:
        return TaskRef(run_id=run_id, dag_id="manual", task_id=task_id)

    t0 = time.perf_counter()
    lines = [f"run {run_id} as_of={as_of}"]
    products = validate_products(ref=ref("validate_products"), settings=settings)
    lines.append(f"products: {len(products)} ({','.join(products)})")
    book = validate_products(include_book=True, ref=ref("validate_book_products"), settings=settings)
    daily = [ingest_daily_history(p, as_of, ref=ref(f"ingest_daily_history[{p}]"), settings=settings)
             for p in book]
    lines.append(f"daily candles: {sum(d.get('candles', 0) for d in daily)}")
    end = min(now, datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1))
    intraday = [fetch_intraday(p, end - timedelta(minutes=5), end, ref=ref(f"fetch_candles[{p}]"),
                               settings=settings) for p in products]
    lines.append(f"1-minute candles: {sum(d.get('candles', 0) for d in intraday)}")
    lines.append(f"silver: {_brief(build_silver(ref=ref('build_silver'), settings=settings))}")
    lines.append(f"compact: {_brief(compact_bronze(as_of, ref=ref('compact_bronze'), settings=settings))}")
    lines.append(f"risk: {_brief(compute_risk(as_of, ref=ref('compute_risk'), settings=settings))}")
    lines.append(f"factors: {_brief(compute_factors(end, ref=ref('compute_factors'), settings=settings))}")
    lines.append(f"warehouse: {_brief(load_warehouse(ref=ref('load_warehouse'), settings=settings))}")
    build_dbt(ref=ref("build_dbt"), settings=settings)
    lines.append("dbt build: ok")
    path = export_report(as_of, ref=ref("export_report"), settings=settings)
    lines.append(f"report: {path}")
    lines.append(f"alerts sent: {send_alerts(as_of, ref=ref('send_alerts'), settings=settings)}")
    lines.append(f"done in {time.perf_counter() - t0:.1f}s")
    return "\n".join(lines)

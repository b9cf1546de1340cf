"""Task functions: what every Airflow task calls (one function per task), plus `run_all` for the CLI.

Each function does one stage's work through the stage module (etl.bronze, etl.silver, etl.risk, ...) inside the
frame of `@task_function`: settings (default: from the environment), the task run (default: a manual run, dag id
"manual"), the run's reference data (etl.reference_set: passed in by `run_all`, else the task's own: each file read
once), one run-log row (run id, DAG, task, status, rows in/out, duration, message) and a small JSON-able result that
Airflow keeps as the task's XCom. They run without Airflow too.

Light at import (stage modules, pandas and pyarrow load inside the functions): the DAGs import it in tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from etl.errors import ValidationError
from etl.orchestration.airflow_adapter import TaskRef, logged
from etl.orchestration.intervals import (
    DAILY,
    as_date,
    daily_history_start,
    daily_window,
    day_tail_start,
    intraday_window,
    utc,
)
from etl.settings import Settings, get_settings, parse_products

log = logging.getLogger(__name__)


# ---- the frame every task shares ----------------------------------------------------------------------------
@dataclass
class TaskRun:
    """What a task function's body gets: the settings, its TaskRef, the run-log row it fills and the reference
    data."""

    settings: Settings
    ref: TaskRef
    rec: Any  # etl.runlog.RunRecord (imported lazily: pandas)
    reference: Any  # etl.reference_set.Reference (imported lazily: pandas)

    def record(self, rows_in: int | None = None, rows_out: int | None = None, message: str | None = None) -> None:
        """Fill the run-log row (what is not given keeps its default)."""
        if rows_in is not None:
            self.rec.rows_in = rows_in
        if rows_out is not None:
            self.rec.rows_out = rows_out
        if message is not None:
            self.rec.message = message


def task_function(task_id: str) -> Callable:
    """Decorate `body(run: TaskRun, *args, **kwargs)` into the task function `f(*args, ref=None, settings=None,
    reference=None, **kwargs)`: settings, ref and reference default as above, the body runs inside one run-log row
    (`logged`: bad input or settings fail the task at once, without retry), and its result comes back JSON-able
    (dataclasses as dicts)."""
    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def task(*args: Any, ref: TaskRef | None = None, settings: Settings | None = None, reference: Any = None,
                 **kwargs: Any) -> Any:
            from etl.reference_set import Reference

            settings = settings or get_settings()
            ref = ref or TaskRef.manual(task_id)
            with logged(ref, settings) as rec:
                result = body(TaskRun(settings, ref, rec, Reference.of(reference, settings)), *args, **kwargs)
            return _jsonable(result)
        return task
    return decorate


def _jsonable(value: Any) -> Any:
    """A stage summary (dataclass, dict, list, scalar) as JSON-able values for XCom; anything else as str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


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


# ---- market data --------------------------------------------------------------------------------------------
@task_function("validate_products")
def validate_products(run: TaskRun, products: list[str] | str | None = None, *, include_book: bool = False,
                      pool_slots: int = 1) -> list[str]:
    """Check the products against the instrument master, then against the source (`/products/{id}`).

    `include_book`: add what the portfolios hold (end of day: risk needs a price for every position).
    `pool_slots`: as for fetch_candles (this task calls the API too, so it runs in the same pool).
    Returns the product ids in order. A product missing from the master or unknown/delisted at the source
    fails the task with a message naming it: the run must not silently shrink its universe.
    """
    from etl.source import validate_products as validate_products_at_source

    settings = run.settings
    wanted = parse_products(products) if products else run.reference.products_to_ingest()
    if include_book:
        wanted = list(dict.fromkeys(wanted + run.reference.needed_products()))
    run.record(rows_in=len(wanted))
    known = set(run.reference.instruments["product_id"])
    missing = [p for p in wanted if p not in known]
    if missing:
        raise ValidationError(f"product(s) {missing} are not in the instrument master "
                              f"({settings.reference_dir}/instruments.csv): add them there or remove them "
                              "from PIPELINE_PRODUCTS (unset, it is what the book holds)")
    checked = validate_products_at_source(wanted, _paced(settings, pool_slots))  # one API call per product
    ids = [p["id"] for p in checked]
    run.record(rows_out=len(ids), message=",".join(ids))
    return ids


@task_function("fetch_candles")
def fetch_candles(run: TaskRun, product: str, start: datetime | str | None, end: datetime | str | None,
                  granularity: int | None = None, *, pool_slots: int = 1) -> dict:
    """Fetch one product's candles for [start, end) into bronze.

    `pool_slots`: how many API tasks may run at once; this task paces at rate_limit_rps / pool_slots so that
    all of them together stay under the exchange's limit.
    """
    return _fetch(run, product, start, end, int(granularity or run.settings.granularity), pool_slots)


def _fetch(run: TaskRun, product: str, start: datetime | str | None, end: datetime | str | None, granularity: int,
           pool_slots: int) -> dict:
    """The body of every fetch task (`fetch_candles`, `fetch_intraday`, `ingest_daily_history`)."""
    from etl import bronze

    settings, ref = run.settings, run.ref
    summary = bronze.ingest(products=[product], start=utc(start) if start else None,
                            end=utc(end) if end else None, granularity=granularity,
                            settings=_paced(settings, pool_slots),
                            batch_id=f"{_slug(ref.run_id)}-{_slug(ref.task_id)}-{product}-{granularity}",
                            on_page=FetchProgress(f"{product} g={granularity}", settings.progress_interval_s))
    # in: every row received (valid + quarantined); out: the valid rows written (`candles` excludes quarantined)
    run.record(summary.candles + summary.quarantined, summary.candles,
               f"{product} g={granularity} [{start}, {end}) requests={summary.requests} "
               f"retries={summary.retries} http_429={summary.http_429} quarantined={summary.quarantined}")
    # XCom stays small: counts instead of one path per partition (400 for a daily history)
    return {"product": product, **dataclasses.asdict(summary), "files": len(summary.files or []),
            "partitions": len(summary.partitions or [])}


# The fetch window depends on what bronze holds: reading it is part of the task (its failure too, with its run-log
# row), so the window is computed inside the task's frame.
@task_function("fetch_candles")
def fetch_intraday(run: TaskRun, product: str, interval_start: datetime | str, interval_end: datetime | str, *,
                   pool_slots: int = 1) -> dict:
    """The intraday DAG's fetch: the data interval plus overlap, or the history on the first run, or back to the
    newest candle bronze holds when intervals were skipped (`intraday_window`)."""
    from etl.bronze import watermark

    settings = run.settings
    newest = watermark(product, settings.granularity, settings)
    start, end = intraday_window(interval_start, interval_end, settings, has_history=newest is not None,
                                 newest=newest)
    return _fetch(run, product, start, end, settings.granularity, pool_slots)


@task_function("ingest_daily_history")
def ingest_daily_history(run: TaskRun, product: str, as_of: date | str, *, pool_slots: int = 1) -> dict:
    """Daily candles (granularity 86400) up to the as-of day, the risk history: only those bronze lacks plus
    `daily_overlap_days` (the first run backfills `daily_history_days`, see `daily_history_start`); then the
    as-of day's intraday candles from where bronze's stop to the day's end, when they stop inside the day
    (`day_tail_start`): the day's bar must not close where the intraday runs had got to."""
    from etl.bronze import watermark

    settings = run.settings
    day = as_date(as_of)
    _, end = daily_window(day, settings)
    start = daily_history_start(watermark(product, DAILY, settings), watermark(product, DAILY, settings, oldest=True),
                                day, settings)
    out = _fetch(run, product, start, end, DAILY, pool_slots)
    # the as-of day's intraday candles the intraday runs had not fetched yet (late, failed): else the day's bar
    # would close where they stopped
    tail = day_tail_start(watermark(product, settings.granularity, settings), day, settings)
    if tail is not None:
        daily = (run.rec.rows_in, run.rec.rows_out, run.rec.message)
        minutes = _fetch(run, product, tail, end, settings.granularity, pool_slots)
        run.record(daily[0] + run.rec.rows_in, daily[1] + run.rec.rows_out, f"{daily[2]}; {run.rec.message}")
        out["day_tail"] = {k: minutes[k] for k in ("granularity", "candles", "quarantined", "window")}
    return out


@task_function("build_silver")
def build_silver(run: TaskRun, full_refresh: bool = False) -> Any:
    """Bronze -> silver 5-minute and daily bars (touched partitions, or all with full_refresh)."""
    from etl import silver

    summary = silver.build(full_refresh=full_refresh, settings=run.settings, reference=run.reference)
    run.record(summary.rows_in, summary.rows_out, f"full_refresh={full_refresh} {summary}"[:500])
    return summary


@task_function("compact_bronze")
def compact_bronze(run: TaskRun, as_of: date | str | None = None) -> Any:
    """Compact bronze partitions of the days up to the as-of day (closed days; default: before today, UTC)."""
    from etl import compaction

    day = as_date(as_of)
    summary = compaction.compact(before=day + timedelta(days=1) if day else None, settings=run.settings)
    run.record(summary.rows_in, summary.rows_out, str(summary)[:500])
    return summary


# ---- end of day ---------------------------------------------------------------------------------------------
@task_function("compute_risk")
def compute_risk(run: TaskRun, as_of: date | str | None = None, shards: int | None = None,
                 run_key: str | None = None) -> Any:
    """Valuation, PnL, VaR/ES, drawdown, anomalies, VaR backtest and limit checks for the as-of day, committed
    at once. shards: the portfolios were computed by that many `compute_risk_shard` tasks of the run `run_key`
    (default: this task's run id): add the whole book's tables to theirs (etl.risk.shards); None: all here."""
    day = as_date(as_of)
    if shards is None:
        from etl.risk import run_risk

        summary = run_risk(as_of=day, settings=run.settings, reference=run.reference)
    else:
        from etl.risk.shards import commit_shards

        summary = commit_shards(day, shards, run_key or run.ref.run_id, run.settings, run.reference)
    run.record(summary.rows_in, summary.rows_out, f"as_of={day} {summary}"[:500])
    return summary


@task_function("plan_risk_shards")
def plan_risk_shards(run: TaskRun, max_map_length: int | None = None) -> list[dict]:
    """The risk shards of this run, one mapped `compute_risk_shard` each: [{"shard": i, "shards": n, "inputs":
    {table: version}}, ...], the versions every shard reads (etl.risk.shards.plan_inputs)."""
    from etl.risk.shards import plan_inputs, shard_count

    n = shard_count(len(run.reference.portfolios), run.settings, max_map_length)
    inputs = plan_inputs(run.settings)
    run.record(message=f"{n} risk shard(s) on {len(inputs)} table versions")
    return [{"shard": i, "shards": n, "inputs": inputs} for i in range(n)]


@task_function("compute_risk_shard")
def compute_risk_shard(run: TaskRun, as_of: date | str, shard: int, shards: int, run_key: str | None = None,
                       inputs: dict[str, int] | None = None) -> Any:
    """The per-portfolio risk tables of one shard into the run's uncommitted area (`compute_risk` commits), read
    at the table versions `inputs` the plan pinned."""
    from etl.risk.shards import run_shard

    day = as_date(as_of)
    done = run_shard(day, shard, shards, run_key or run.ref.run_id, run.settings, run.reference, inputs)
    run.record(len(done["portfolios"]), sum(done["rows"].values()),
               f"as_of={day} shard {shard + 1}/{shards}: {len(done['portfolios'])} portfolios")
    return {k: v for k, v in done.items() if k != "portfolios"}


@task_function("compute_factors")
def compute_factors(run: TaskRun, end: datetime | str | None = None) -> Any:
    """Factor returns and rolling exposures up to `end` (the data interval's end in the DAG)."""
    from etl.factors import run_factors

    summary = run_factors(settings=run.settings, end=utc(end) if end else None, reference=run.reference)
    run.record(summary.rows_in, sum(summary.rows.values()), f"end={end} {summary}"[:500])
    return summary


@task_function("load_warehouse")
def load_warehouse(run: TaskRun) -> Any:
    """Outputs, silver bars and the run log -> Postgres schema raw (upsert by key); dbt runs in build_dbt."""
    from etl.warehouse import load_warehouse as load_warehouse_stage

    summary = load_warehouse_stage(settings=run.settings, run_dbt=False, reference=run.reference)
    run.record(sum(summary.files.values()), summary.total_rows, str(summary)[:500])
    return summary


@task_function("build_dbt")
def build_dbt(run: TaskRun, command: str = "build") -> dict:
    """`dbt build` of raw -> staging -> gold (the dbt CLI through etl.warehouse.run_dbt)."""
    from etl import warehouse

    warehouse.run_dbt(command, settings=run.settings)
    run.record(message=f"dbt {command}: ok")
    return {"command": command}


@task_function("export_report")
def export_report(run: TaskRun, as_of: date | str | None = None) -> str:
    """The HTML risk report (and CSVs) for the as-of day; returns its path."""
    from etl.report import run_report

    day = as_date(as_of)
    path = run_report(as_of=day, settings=run.settings, run_id=run.ref.run_id)
    run.record(rows_out=1, message=f"as_of={day} report={path}")
    return str(path)


@task_function("send_alerts")
def send_alerts(run: TaskRun, as_of: date | str | None = None) -> int:
    """Limit-breach alerts for the as-of day (webhook/e-mail per settings); returns how many were sent."""
    from etl.report.alerts import send_alerts as send_report_alerts

    day = as_date(as_of)
    sent = int(send_report_alerts(day, run.settings))
    run.record(rows_out=sent, message=f"as_of={day} alerts={sent}")
    return sent


# ---- intraday risk (market_data_intraday, after build_silver) -----------------------------------------------
@task_function("compute_intraday_risk")
def compute_intraday_risk(run: TaskRun, interval_start: datetime | str) -> Any:
    """Revalue every portfolio at the run's 5-minute bucket (its data interval start): value, PnL since the
    previous close, exposures, VaR/ES on the last EOD scenario set, stale prices, limit checks."""
    from etl.risk.intraday_io import run_intraday_risk

    summary = run_intraday_risk(interval_start, settings=run.settings, reference=run.reference)
    run.record(summary.portfolios, summary.rows_out, str(summary)[:500])
    return summary


@task_function("load_intraday_warehouse")
def load_intraday_warehouse(run: TaskRun) -> Any:
    """The light path: reference data and the intraday outputs -> raw, then dbt build of the intraday models."""
    from etl.warehouse.loader import load_intraday

    summary = load_intraday(settings=run.settings, reference=run.reference)
    run.record(sum(summary.files.values()), summary.total_rows, str(summary)[:500])
    return summary


@task_function("send_intraday_alerts")
def send_intraday_alerts(run: TaskRun, interval_start: datetime | str) -> int:
    """Alert the bucket's new intraday breaches (once per portfolio, limit and day) and record clearings."""
    from etl.report import alerts

    sent = int(alerts.send_intraday_alerts(interval_start, settings=run.settings))
    run.record(rows_out=sent, message=f"bucket={interval_start} alerts={sent}")
    return sent


# ---- backfill -----------------------------------------------------------------------------------------------
@task_function("validate_params")
def validate_backfill(run: TaskRun, params: dict) -> dict:
    """Check the backfill form (products in the instrument master, start < end, granularity); normalise it.

    Raises ValidationError naming the field, the bad value and what to enter instead.
    """
    from etl.source import VALID_GRANULARITIES

    settings = run.settings
    products = parse_products(params.get("products") or "")
    if not products:
        raise ValidationError("backfill param 'products' is empty: enter a comma list such as BTC-USD,ETH-USD")
    known = set(run.reference.instruments["product_id"])
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
    run.record(len(products), len(products), f"{','.join(products)} [{out['start']}, {out['end']}) g={granularity}")
    return out


def _param_time(params: dict, name: str) -> datetime:
    raw = params.get(name)
    try:
        return utc(raw if isinstance(raw, datetime) else str(raw).strip())
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
    Every task shares one Reference: each reference file is read once per run.
    """
    from etl.reference_set import Reference

    settings = settings or get_settings()
    reference = Reference(settings)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    as_of = as_of or (now.date() - timedelta(days=1))
    run_id = f"manual__{now.strftime('%Y%m%dT%H%M')}_{uuid.uuid4().hex[:6]}"

    def ref(task_id: str) -> TaskRef:
        return TaskRef(run_id=run_id, dag_id="manual", task_id=task_id)

    t0 = time.perf_counter()
    lines = [f"run {run_id} as_of={as_of}"]
    products = validate_products(ref=ref("validate_products"), settings=settings, reference=reference)
    lines.append(f"products: {len(products)} ({','.join(products)})")
    book = validate_products(include_book=True, ref=ref("validate_book_products"), settings=settings,
                             reference=reference)
    daily = [ingest_daily_history(p, as_of, ref=ref(f"ingest_daily_history[{p}]"), settings=settings)
             for p in book]
    lines.append(f"daily candles: {sum(d.get('candles', 0) for d in daily)}")
    end = min(now, datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1))
    intraday = [fetch_intraday(p, end - timedelta(minutes=5), end, ref=ref(f"fetch_candles[{p}]"),
                               settings=settings) for p in products]
    lines.append(f"1-minute candles: {sum(d.get('candles', 0) for d in intraday)}")
    silver = build_silver(ref=ref("build_silver"), settings=settings, reference=reference)
    lines.append(f"silver: {_brief(silver)}")
    lines.append(f"compact: {_brief(compact_bronze(as_of, ref=ref('compact_bronze'), settings=settings))}")
    # factors first: the risk run's PnL attribution reads the day's factor outputs
    factors = compute_factors(end, ref=ref("compute_factors"), settings=settings, reference=reference)
    lines.append(f"factors: {_brief(factors)}")
    lines.append(f"risk: {_brief(compute_risk(as_of, ref=ref('compute_risk'), settings=settings, reference=reference))}")
    loaded = load_warehouse(ref=ref("load_warehouse"), settings=settings, reference=reference)
    lines.append(f"warehouse: {_brief(loaded)}")
    build_dbt(ref=ref("build_dbt"), settings=settings)
    lines.append("dbt build: ok")
    path = export_report(as_of, ref=ref("export_report"), settings=settings)
    lines.append(f"report: {path}")
    lines.append(f"alerts sent: {send_alerts(as_of, ref=ref('send_alerts'), settings=settings)}")
    lines.append(f"done in {time.perf_counter() - t0:.1f}s")
    return "\n".join(lines)

"""Intraday risk I/O: one run values one 5-minute bucket (etl.risk.intraday) and commits its two files.

Outputs (one partition per table per bucket): the Delta tables outputs/intraday_risk and
outputs/intraday_limit_breaches, partitions as_of_date=D/bucket=HHMM, committed together by one run record named
intraday/as_of_date=D (etl.commits); a rerun of the interval replaces both.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from etl import commits
from etl.lake import records_reads
from etl.portfolios import book_products
from etl.reference_set import Reference
from etl.risk.intraday import BREACH_TABLE, RISK_TABLE, bucket_of, check_bucket, compute
from etl.risk.runner import with_last_bars_of_delisted
from etl.risk.scenarios import load_scenarios, scenario_note
from etl.settings import get_settings
from etl.silver import read_bars
from etl.storage import get_store
from etl.warehouse.schema import check_output, to_arrow

log = logging.getLogger(__name__)


@dataclass
class IntradaySummary:
    bucket_start: str
    portfolios: int
    stale_products: int
    breaches: int
    new_breaches: int
    cleared: int
    scenario_as_of: str | None
    scenario_note: str = ""
    uncomputable: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_out(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        return (f"intraday risk at {self.bucket_start}: {self.portfolios} portfolios, {self.stale_products} stale "
                f"price(s), {self.breaches} limit breach(es) ({self.new_breaches} new, {self.cleared} cleared, "
                f"{self.uncomputable} uncomputable), {self.scenario_note}, {self.seconds:.2f}s")


def intraday_manifest(day: date) -> str:
    """The commit name of one UTC day's intraday outputs (etl.commits): each run adds its bucket's two partitions."""
    return f"intraday/as_of_date={day.isoformat()}"


def bucket_partition(bucket: pd.Timestamp) -> str:
    return f"as_of_date={bucket.date().isoformat()}/bucket={bucket.strftime('%H%M')}"


def committed_rows(store, table: str, bucket: pd.Timestamp) -> pd.DataFrame | None:
    """The committed rows of `table` for `bucket`, or None when that bucket's run has not committed."""
    manifest = commits.read_manifest(store, intraday_manifest(bucket.date())) or {"files": {}}
    entry = manifest["files"].get(f"{table}/{bucket_partition(bucket)}")
    return None if entry is None else commits.read_entry(store, entry).to_pandas()


def write_outputs(store, bucket: pd.Timestamp, tables: dict[str, pd.DataFrame]) -> None:
    """Commit the bucket's risk and breach rows together (one run record): a rerun replaces both."""
    parts = {(name, bucket_partition(bucket)): to_arrow(df) for name, df in tables.items()}
    for (name, _), part in parts.items():
        check_output(name, part.column_names)
    commits.publish(store, intraday_manifest(bucket.date()), "intraday", parts)


def previous_breaches(store, bucket: pd.Timestamp) -> pd.DataFrame | None:
    """The limit rows of the latest earlier committed run (today, else yesterday): the breaches open before this
    bucket."""
    for day in (bucket.date(), bucket.date() - timedelta(days=1)):
        manifest = commits.read_manifest(store, intraday_manifest(day)) or {"files": {}}
        prefix = f"{BREACH_TABLE}/as_of_date={day.isoformat()}/bucket="
        keys = sorted(k for k in manifest["files"] if k.startswith(prefix))
        if day == bucket.date():
            keys = [k for k in keys if k[len(prefix):] < bucket.strftime("%H%M")]
        if keys:
            return commits.read_entry(store, manifest["files"][keys[-1]]).to_pandas()
    return None


@records_reads
def run_intraday_risk(interval_start: datetime | str, settings=None, now: datetime | None = None,
                      reference: Reference | None = None) -> IntradaySummary:
    """Revalue every portfolio at the bucket starting at `interval_start` and write its two output files.
    A bucket later than `now` (default: the clock) is refused (ValidationError), nothing written.
    `reference`: the run's reference data (etl.reference_set; default: the files of `settings`)."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    bucket = bucket_of(interval_start)
    check_bucket(bucket, now or datetime.now(UTC))
    day = bucket.date()
    reference = Reference.of(reference, settings)
    instruments, portfolios, positions = reference.instruments, reference.portfolios, reference.positions
    quote_ccy = reference.quote_ccy
    store = get_store(settings)
    scenarios = load_scenarios(store, day - timedelta(days=1))
    # what the book holds and its conversions, plus the scenario set's products (held until today's snapshot)
    products = list(dict.fromkeys(book_products(instruments, portfolios, positions)
                                  + (scenarios.products if scenarios else [])))
    bars_5m = read_bars("5m", products=products, start=day - timedelta(days=1), end=day, settings=settings)
    bars_1d = read_bars("1d", products=products, start=day - timedelta(days=settings.daily_history_days),
                        end=day - timedelta(days=1), settings=settings)
    bars_1d["price_date"] = pd.to_datetime(bars_1d["price_date"]).astype("datetime64[ns]")
    # a holding carried past its delisting keeps its last close, however old (as the end-of-day run values it)
    bars_1d = with_last_bars_of_delisted(bars_1d, products, instruments, day - timedelta(days=1), settings)
    note = scenario_note(scenarios, day)
    if scenarios is None or scenarios.as_of < day - timedelta(days=1):
        log.warning("intraday risk at %s: %s", bucket.isoformat(), note)
    tables = compute(bucket, portfolios, positions, quote_ccy, bars_5m, bars_1d, scenarios,
                     previous_breaches(store, bucket))
    write_outputs(store, bucket, tables)
    risk, breaches = tables[RISK_TABLE], tables[BREACH_TABLE]
    status = breaches["status"]
    summary = IntradaySummary(
        bucket_start=bucket.isoformat(), portfolios=len(risk), stale_products=int(risk["stale_products"].sum()),
        breaches=int((status == "breach").sum()),
        new_breaches=int(((status == "breach") & (breaches["breached_at"] == breaches["bucket_start"])).sum()),
        cleared=int((status == "cleared").sum()), scenario_as_of=str(scenarios.as_of) if scenarios else None,
        scenario_note=note, uncomputable=int((breaches["breach_kind"] == "uncomputable").sum()),
        rows={name: len(df) for name, df in tables.items()}, seconds=time.perf_counter() - t0)
    log.info("%s", summary)
    return summary

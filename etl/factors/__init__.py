"""Factor risk model: market, liquidity, volatility and momentum factors with fast rolling exposures.

Modules: `universe_returns` (returns on a common grid), `buckets` (tercile membership with formation windows),
`factor_model` (factor returns, exposures, output frames), `rolling_ols` (the vectorised windowed OLS), `io` (silver in,
outputs out). docs/factor_model.md has the definitions and the output tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from etl.errors import DataNotFoundError
from etl.factors import io
from etl.factors.factor_model import FactorConfig, compute, output_tables
from etl.factors.rolling_ols import RollingOLSResult, rolling_ols
from etl.factors.universe_returns import universe_returns
from etl.lake import records_reads
from etl.reference_set import Reference
from etl.settings import Settings, get_settings
from etl.storage import get_store

__all__ = ["FactorConfig", "FactorSummary", "RollingOLSResult", "output_window", "rolling_ols", "run_factors"]

log = logging.getLogger(__name__)


@dataclass
class FactorSummary:
    start: datetime                   # first bucket written (UTC midnight)
    end: datetime                     # exclusive
    frequency_s: int
    products: list[str]
    rows_in: int                      # price rows read, warm-up included
    rows: dict[str, int] = field(default_factory=dict)   # rows written per output table
    dates: list[str] = field(default_factory=list)      # date partitions written
    rank_deficient_windows: int = 0

    def __str__(self) -> str:
        tables = ", ".join(f"{name} {n:,}" for name, n in self.rows.items())
        return (f"factors {self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC, {len(self.products)} "
                f"products at {self.frequency_s}s from {self.rows_in:,} price rows: {tables}; "
                f"{len(self.dates)} day(s), {self.rank_deficient_windows} rank-deficient windows")


def output_window(settings: Settings, config: FactorConfig, end: datetime | None = None
                  ) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """(read_start, out_start, end): outputs cover whole UTC days from end - history_days; reading starts a
    formation window plus a regression window earlier so the first output row sees full history when it exists.
    """
    step = pd.Timedelta(seconds=config.frequency_s)
    end_ts = pd.Timestamp(end or datetime.now(UTC))
    end_ts = (end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")).floor(step)
    out_start = (end_ts - pd.Timedelta(days=settings.history_days)).floor("D")
    read_start = (out_start - step * config.warmup_rows).floor(step * config.holding)
    return read_start, out_start, end_ts


@records_reads
def run_factors(settings: Settings | None = None, end: datetime | None = None, *,
        config: FactorConfig | None = None, reference: Reference | None = None) -> FactorSummary:
    """Factor returns, membership and exposures for the configured products up to `end` (default: now).

    `config` overrides the lengths taken from settings (formation, holding, momentum lookbacks, window).
    `reference`: the run's reference data (etl.reference_set; default: the files of `settings`).
    """
    settings = settings or get_settings()
    config = config or FactorConfig.from_settings(settings)
    read_start, out_start, end_ts = output_window(settings, config, end)
    reference = Reference.of(reference, settings)
    products = reference.products_to_ingest()
    prices = io.read_prices(settings, products, read_start.to_pydatetime(), end_ts.to_pydatetime())
    present = sorted(set(prices["product_id"]))
    if not len(prices) or not (prices["bucket_start"] >= out_start).any():
        raise DataNotFoundError(
            f"factors: no {config.frequency_s}s prices for {','.join(products)} between {out_start} and {end_ts}: "
            "run `python -m etl ingest` and `python -m etl silver` for that window first")
    if missing := sorted(set(products) - set(present)):
        log.warning("factors: no prices for %s in the window; they are left out of the universe", missing)

    universe = universe_returns(prices, config.frequency_s, read_start, end_ts, products=present,
                                rates=reference.conversion_pairs())
    result = compute(universe, config)
    covered = pd.date_range(out_start, end_ts - pd.Timedelta(microseconds=1), freq="D").strftime("%Y-%m-%d")
    rows, dates = io.write_outputs(get_store(settings), output_tables(result, start=out_start), list(covered))
    in_range = universe.times >= out_start
    return FactorSummary(
        start=out_start.to_pydatetime(), end=end_ts.to_pydatetime(), frequency_s=config.frequency_s,
        products=present, rows_in=len(prices), rows=rows, dates=dates,
        rank_deficient_windows=int(result.exposures.rank_deficient[in_range].sum()),
    )

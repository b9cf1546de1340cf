"""The risk engine's only I/O: read silver bars and the reference data, write the output tables.

Outputs go through the commit protocol (etl/commits.py): each table is a Delta table, one file per table per run
(`outputs/<table>/run_as_of_date=<D>/<run_id>.parquet`), all committed at once by the run record
`risk/as_of_date=<D>` in `outputs/_runs` (a killed run commits nothing; a rerun replaces the day whole). Every
risk_metrics row carries `risk_run_id`. History tables (portfolio_valuation, pnl_daily, var_backtest,
anomalies_daily) hold many days in the run's partition; every row carries its own key columns (hence the partition
column run_as_of_date, not as_of_date).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from etl import commits
from etl.errors import DataNotFoundError, ValidationError
from etl.factors import io as factor_io
from etl.lake import records_reads
from etl.portfolios import book_products
from etl.reference import DELISTED_ON
from etl.reference_set import Reference
from etl.risk import attribution, liquidity
from etl.risk.engine import (
    RiskParams,
    asset_carried_days,
    bar_days,
    carried_days,
    carried_scenarios,
    close_matrix,
    compute_tables,
    late_starters,
    limit_breaches,
    price_flags,
    release_freed_memory,
    stuck_closes,
)
from etl.risk.firm import FIRM_ID
from etl.risk.scenarios import SCENARIO_TABLES
from etl.settings import Settings, get_settings
from etl.storage import get_store
from etl.warehouse.schema import check_output, to_arrow

log = logging.getLogger(__name__)

TABLES = ("positions_valued", "portfolio_valuation", "pnl_daily", "risk_metrics", "asset_risk", "anomalies",
          "anomalies_daily", "var_backtest", "var_backtest_summary", "drawdowns", "correlations", "limit_breaches",
          "firm_risk", "risk_contributions", "stress_results", "var_model_comparison", "pnl_attribution",
          "liquidity_risk", "liquidity_positions")
TABLES += SCENARIO_TABLES  # the intraday revaluation's inputs (etl.risk.intraday)
# settings beside RiskParams that change a run's figures (the history window read, where the 5-minute bars come
# from, the percentile of the LVaR costs): recorded in the run record's params, applied again by `risk --reproduce`
RUN_SETTINGS = ("daily_history_days", "bars_source", "lvar_percentile", "max_carried_days", "max_unchanged_closes")


@dataclass
class RiskSummary:
    as_of: date
    portfolios: int
    positions: int                      # position rows valued on the as-of day
    products: list[str]
    lookback_days: int
    rows: dict[str, int] = field(default_factory=dict)
    breaches: int = 0
    seconds: float = 0.0

    @property
    def rows_in(self) -> int:
        return self.positions

    @property
    def rows_out(self) -> int:
        return sum(self.rows.values())

    def __str__(self) -> str:
        tables = ", ".join(f"{k}={v}" for k, v in self.rows.items())
        return (f"risk as of {self.as_of}: {self.portfolios} portfolios, {self.positions} positions, "
                f"{len(self.products)} products, lookback {self.lookback_days} days, {self.breaches} limit "
                f"breach(es), {self.seconds:.1f}s; rows: {tables}")


@records_reads
def run_risk(as_of: date | None = None, settings: Settings | None = None,
             reference: Reference | None = None) -> RiskSummary:
    """Compute and write every risk table for `as_of` (None = the last complete UTC day with daily bars for all
    the book's products). `reference`: the run's reference data (default: the files of `settings`)."""
    t0 = time.perf_counter()
    settings = settings or get_settings()
    inputs = load_inputs(as_of, settings, reference)
    tables = compute_tables(inputs.closes, inputs.quote_ccy, inputs.portfolios, inputs.positions, inputs.params,
                            inputs.bars_5m, inputs.has_bar, settings.max_carried_days)
    tables = finish_book_tables(inputs, finish_portfolio_tables(inputs, inputs.portfolios, tables, settings), settings)
    return commit_tables(inputs, tables, settings, t0)


@dataclass
class RiskInputs:
    """What a risk run reads for one as-of day (etl.risk.shards reads it once per shard)."""
    as_of: date
    params: RiskParams
    instruments: pd.DataFrame
    portfolios: pd.DataFrame
    positions: pd.DataFrame               # snapshots dated on or before as_of
    quote_ccy: dict[str, str]
    products: list[str]
    closes: pd.DataFrame                  # engine.close_matrix
    last_bar: pd.Series                   # product -> its last daily bar on or before as_of
    bars_5m: pd.DataFrame
    reference_digests: dict[str, str]     # Reference.digests: the reference files as read
    has_bar: pd.DataFrame | None = None   # engine.bar_days less engine.stuck_closes: which closes are a bar's price
                                          # (not carried forward, by close_matrix or by a stuck feed)


def load_inputs(as_of: date | None, settings: Settings, reference: Reference | None = None,
                params: RiskParams | None = None) -> RiskInputs:
    """The reference data and the silver bars of the as-of day's run (None: see run_risk), with `params` (default:
    from settings)."""
    params = params or RiskParams.from_settings(settings)
    reference = Reference.of(reference, settings)
    instruments, portfolios, positions = reference.instruments, reference.portfolios, reference.positions
    quote_ccy = reference.quote_ccy

    today = datetime.now(UTC).date()
    if as_of is not None and as_of >= today:  # its bars are the day so far: priced "on the day", not stale
        raise ValidationError(f"--as-of {as_of}: the UTC day has not ended (today is {today}), so its daily bars "
                              "are the day so far: its closes, PnL and VaR would rest on a partial day. Pick a "
                              f"day before {today} (the default is the last complete day); `python -m etl intraday` "
                              "gives the risk of the day in progress")
    # default as-of: read every daily bar up to yesterday (small: one row per product per day) and take the last
    # day all products have; an explicit as-of reads only the history window
    end = as_of or (today - timedelta(days=1))
    # the products held up to that day (snapshots after the as-of day are ignored: a product bought later is
    # no product this run needs, nor does its first close start every book's history)
    positions = positions[positions["as_of_date"] <= pd.Timestamp(end)]
    if positions.empty:
        raise DataNotFoundError(f"no position snapshot dated on or before {end} in "
                                f"{settings.reference_dir / 'positions.csv'}")
    products = sorted(book_products(instruments, portfolios, positions))
    # the history read: daily_history_days days up to and including the as-of day (the ingest's daily_window)
    start = None if as_of is None else end - timedelta(days=settings.daily_history_days - 1)
    bars = _read_bars("1d", products, start, end, settings)
    if bars.empty:
        raise DataNotFoundError(f"no daily bars for {products} between {start or 'the start'} and {end}: run "
                                f"python -m etl ingest --granularity 86400 and python -m etl silver first")
    bars["price_date"] = pd.to_datetime(bars["price_date"]).astype("datetime64[ns]")
    if as_of is None:  # a delisted product's bars stop for good: it does not hold the as-of date back
        last = bars.groupby("product_id")["price_date"].max().reindex(products)
        if last.isna().any():
            raise DataNotFoundError(f"no daily bars for {sorted(last[last.isna()].index)} up to {end}")
        listed = instruments.loc[instruments[DELISTED_ON].isna(), "product_id"]
        as_of = (last[last.index.isin(listed)] if last.index.isin(listed).any() else last).min().date()
        log.info("as-of date defaulted to %s (the last complete UTC day with bars for all listed products)", as_of)
    as_of_ts = pd.Timestamp(as_of)
    bars = bars[bars["price_date"] > as_of_ts - pd.Timedelta(days=settings.daily_history_days)]
    bars = with_last_bars_of_delisted(bars, products, instruments, as_of, settings)
    positions = positions[positions["as_of_date"] <= as_of_ts]
    if positions.empty:
        raise DataNotFoundError(f"no position snapshot dated on or before {as_of} in "
                                f"{settings.reference_dir / 'positions.csv'}")
    if len(held := sorted(book_products(instruments, portfolios, positions))) < len(products):
        products, bars = held, bars[bars["product_id"].isin(held)]   # the default as-of is before some snapshots
    closes = close_matrix(bars[bars["price_date"] <= as_of_ts], products, as_of_ts)
    closes.attrs["history_start"] = as_of_ts - pd.Timedelta(days=settings.daily_history_days - 1)  # late_starters
    # a close is a bar's price when the product has a bar that day whose close is not stuck (a run of identical
    # closes longer than RISK_MAX_UNCHANGED_CLOSES): both kinds of carried close are zero returns of no market
    has_bar = bar_days(bars, closes) & ~stuck_closes(closes, settings.max_unchanged_closes)
    bars_5m = _read_bars("5m", products, as_of - timedelta(days=1), as_of, settings)
    last_bar = bars[bars["price_date"] <= as_of_ts].groupby("product_id")["price_date"].max()
    return RiskInputs(as_of, params, instruments, portfolios, positions, quote_ccy, products, closes, last_bar,
                      bars_5m, reference.digests, has_bar)


def with_last_bars_of_delisted(bars: pd.DataFrame, products: list[str], instruments: pd.DataFrame, as_of: date,
                               settings: Settings) -> pd.DataFrame:
    """`bars` (the history window) plus the last daily bar of each product delisted on or before `as_of` that has
    none in the window: a holding carried past its delisting is valued at its last close (then flagged stale and
    delisted), however long ago that was, not refused for bars its source no longer serves."""
    delisted = instruments.set_index("product_id")[DELISTED_ON]
    gone = [p for p in products if p not in set(bars["product_id"])
            and pd.notna(delisted.get(p)) and delisted[p] <= pd.Timestamp(as_of)]
    if not gone:
        return bars
    older = _read_bars("1d", gone, None, as_of, settings)
    if older.empty:
        return bars
    older["price_date"] = pd.to_datetime(older["price_date"]).astype("datetime64[ns]")
    last = older.sort_values("price_date").groupby("product_id").tail(1)
    return pd.concat([bars, last], ignore_index=True)


def finish_portfolio_tables(inputs: RiskInputs, portfolios: pd.DataFrame, tables: dict[str, pd.DataFrame],
                            settings: Settings) -> dict[str, pd.DataFrame]:
    """The engine's tables of `portfolios` (the book or a shard of it) with where each price comes from, checked
    for non-finite values, and with their PnL attribution."""
    tables["positions_valued"] = price_flags(tables["positions_valued"], inputs.last_bar,
                                             inputs.instruments.set_index("product_id")[DELISTED_ON])
    _check_finite_values(tables["positions_valued"], settings)
    _carried_closes(inputs, portfolios, tables, settings)
    risk = tables["risk_metrics"]          # the product whose late first close cut every book's VaR lookback
    late = late_starters(inputs.closes) if (risk["lookback_days"] < inputs.params.var_lookback_days).any() else None
    risk["lookback_limited_by"] = pd.Series([late] * len(risk), index=risk.index, dtype="object")
    if late:
        log.warning("VaR lookback %s days, not %s: the history starts at %s", int(risk["lookback_days"].iloc[0]),
                    inputs.params.var_lookback_days, late)
    positions = inputs.positions[inputs.positions["portfolio_id"].isin(portfolios["portfolio_id"])]
    tables["pnl_attribution"] = _attribution(inputs.closes, inputs.quote_ccy, portfolios, positions,
                                             tables["pnl_daily"], settings,
                                             None if inputs.has_bar is None else ~inputs.has_bar)
    liquidity.liquidity_risk(tables, portfolios, inputs.as_of, settings, get_store(settings))
    return tables


def _carried_closes(inputs: RiskInputs, portfolios: pd.DataFrame, tables: dict[str, pd.DataFrame],
                    settings: Settings) -> None:
    """`carried_days` on positions_valued and risk_metrics (engine.carried_days: days of the VaR window whose
    close a holding rests on was carried forward, no daily bar); a book with more than RISK_MAX_CARRIED_DAYS has
    NULL VaR/ES (its var limit then uncomputable): zero returns of a halted product are not a calm market."""
    risk = tables["risk_metrics"]
    n_ret = int(risk["lookback_days"].iloc[0]) if len(risk) else 0
    carried = ~inputs.has_bar if inputs.has_bar is not None else pd.DataFrame(False, index=inputs.closes.index,
                                                                             columns=inputs.closes.columns)
    per_position, per_book = carried_days(tables["positions_valued"], carried, n_ret)
    tables["positions_valued"]["carried_days"] = per_position.astype("int64")
    risk["carried_days"] = risk["portfolio_id"].map(per_book).fillna(0).astype("int64")
    # the intraday revaluation re-uses this scenario set: it counts the carried days of the books as they are then
    if "scenario_returns" in tables:
        tables["scenario_returns"]["is_carried"] = carried_scenarios(tables["scenario_returns"], carried,
                                                                     inputs.quote_ccy)
        tables["scenario_portfolios"]["max_carried_days"] = settings.max_carried_days
    over = (risk["carried_days"] > settings.max_carried_days).to_numpy()
    if over.any():
        var_cols = [c for c in risk.columns if c.startswith(("var_", "es_"))]
        risk.loc[over, var_cols] = np.nan
        contrib = tables["risk_contributions"]          # no VaR/ES: no decomposition of it (its Euler sum must hold)
        tables["risk_contributions"] = contrib[~((contrib["scope"] == "portfolio")
                                                 & contrib["portfolio_id"].isin(risk.loc[over, "portfolio_id"]))]
        log.warning("VaR/ES of %s NULL: more than %s days of the %s-day VaR window rest on a carried-forward close "
                    "(RISK_MAX_CARRIED_DAYS)", ", ".join(map(str, risk.loc[over, "portfolio_id"])),
                    settings.max_carried_days, n_ret)
        tables["limit_breaches"] = limit_breaches(risk, portfolios)


def finish_book_tables(inputs: RiskInputs, tables: dict[str, pd.DataFrame], settings: Settings) -> dict[str, pd.DataFrame]:
    """The firm's tables once every portfolio's are in (one process, or the shards joined): the carried-close rule
    of `_carried_closes` for the firm, one USD book holding every position (its base currency converts nothing):
    `firm_risk.carried_days`, and past RISK_MAX_CARRIED_DAYS NULL VaR/ES, standalone sum and diversification
    benefit, and no firm-scope contributions."""
    carried = ~inputs.has_bar if inputs.has_bar is not None else pd.DataFrame(False, index=inputs.closes.index,
                                                                             columns=inputs.closes.columns)
    _carried_assets(inputs, carried, tables, settings)
    firm = tables.get("firm_risk")
    if firm is None or firm.empty:
        return tables
    n_ret = int(firm["lookback_days"].iat[0])
    held = tables["positions_valued"].assign(portfolio_id=FIRM_ID, base_currency="USD")
    _, per_firm = carried_days(held, carried, n_ret)
    firm["carried_days"] = int(per_firm.get(FIRM_ID, 0))
    if firm["carried_days"].iat[0] > settings.max_carried_days:
        figures = [c for c in firm.columns if c.startswith(("var_", "es_", "sum_standalone_", "diversification_"))]
        firm[figures] = np.nan
        contrib = tables["risk_contributions"]
        tables["risk_contributions"] = contrib[contrib["scope"] != "firm"]
        log.warning("firm VaR/ES NULL: %s days of the %s-day VaR window rest on a carried-forward close "
                    "(RISK_MAX_CARRIED_DAYS %s)", firm["carried_days"].iat[0], n_ret, settings.max_carried_days)
    return tables


ASSET_WINDOW_FIGURES = ("vol_20d", "vol_30d", "vol_ewma", "max_drawdown", "worst_daily_return",
                        "worst_daily_return_date")  # asset_risk's figures over returns of the VaR window


def _carried_assets(inputs: RiskInputs, carried: pd.DataFrame, tables: dict[str, pd.DataFrame],
                    settings: Settings) -> None:
    """The carried-close rule of `_carried_closes` for the products' own figures (engine.asset_carried_days):
    `asset_risk.carried_days` (its own close) and `correlations.carried_days` (either product's USD close); past
    RISK_MAX_CARRIED_DAYS the product's volatilities, drawdown and worst return (asset_risk and its drawdowns
    row) and the pair's correlation are NULL: zero returns of a halted product are not a calm, uncorrelated one."""
    asset, corr = tables.get("asset_risk"), tables.get("correlations")
    if asset is None or asset.empty:
        return
    n_ret = int(asset["lookback_days"].iat[0])
    own, pair = asset_carried_days(carried, inputs.quote_ccy, n_ret)
    asset["carried_days"] = asset["product_id"].map(own).fillna(0).astype("int64")
    over = asset.loc[asset["carried_days"] > settings.max_carried_days, "product_id"]
    if len(over):
        asset.loc[asset["product_id"].isin(over), list(ASSET_WINDOW_FIGURES)] = None
        dd = tables["drawdowns"]
        gone = (dd["entity_type"] == "asset") & dd["entity_id"].isin(over)
        dd.loc[gone, ["max_drawdown", "peak_date", "trough_date", "recovery_date"]] = None
        log.warning("volatility, drawdown and worst return of %s NULL: more than %s days of the %s-day window rest "
                    "on a carried-forward close (RISK_MAX_CARRIED_DAYS)", ", ".join(map(str, over)),
                    settings.max_carried_days, n_ret)
    if corr is not None and not corr.empty:
        a = pair.index.get_indexer(corr["product_id_a"])
        b = pair.columns.get_indexer(corr["product_id_b"])
        corr["carried_days"] = pair.to_numpy()[a, b]
        corr.loc[corr["carried_days"] > settings.max_carried_days, "correlation"] = np.nan


def commit_tables(inputs: RiskInputs, tables: dict[str, pd.DataFrame], settings: Settings,
                  t0: float, meta: dict | None = None) -> RiskSummary:
    """Write every table of the whole book and commit them with one run record (etl.commits), `meta` added to
    it."""
    as_of = inputs.as_of
    run_id = commits.new_run_id()
    tables["risk_metrics"]["risk_run_id"] = run_id
    partition = f"as_of_date={as_of.isoformat()}"
    summary = RiskSummary(as_of=as_of, portfolios=len(inputs.portfolios), positions=len(tables["positions_valued"]),
                          products=inputs.products,
                          lookback_days=int(tables["risk_metrics"]["lookback_days"].iloc[0]),
                          breaches=len(tables["limit_breaches"]))
    # each table leaves pandas as it becomes Arrow (memory: the backtest has millions of rows)
    parts = {}
    for name in TABLES:
        parts[(name, partition)] = to_arrow(tables.pop(name, pd.DataFrame()))
        release_freed_memory()                           # the frame's pages are not kept beside its Arrow copy
    for (name, _), part in parts.items():
        check_output(name, part.column_names)  # every column declared in etl/warehouse/tables.yml, and no other
    commits.publish(get_store(settings), commits.risk_manifest(as_of), "risk", parts, run_id=run_id,
                    meta={"as_of": as_of.isoformat(),
                          "portfolios": sorted(map(str, inputs.portfolios["portfolio_id"])),
                          # what `risk --reproduce` needs beside the table versions (etl/risk/reproduce.py)
                          "params": run_params(inputs.params, settings),
                          "reference": inputs.reference_digests, **(meta or {})})
    summary.rows = {name: part.num_rows for (name, _), part in parts.items()}
    summary.seconds = time.perf_counter() - t0
    log.info("%s", summary)
    return summary


def run_params(params: RiskParams, settings: Settings) -> dict:
    """The parameters a run's figures depend on, as its record names them: RiskParams and RUN_SETTINGS."""
    return {**asdict(params), **{k: getattr(settings, k) for k in RUN_SETTINGS}}


def _attribution(closes, quote_ccy, portfolios, positions, pnl_daily, settings: Settings,
                 carried: pd.DataFrame | None = None) -> pd.DataFrame:
    """The PnL attribution of pnl_daily's days from the committed factor outputs of those days and the day before
    (read here: the factor stage may have run before this one; days it has not finished get only a residual)."""
    first = pd.Timestamp(pnl_daily["as_of_date"].min()) - pd.Timedelta(days=1)
    days = [d.strftime("%Y-%m-%d") for d in pd.date_range(first, closes.index[-1], freq="D")]
    store = get_store(settings)
    factors = factor_io.read_days(store, days, {
        "factor_returns": ["factor_name", "bucket_start", "factor_return"],
        "factor_exposures": ["product_id", "factor_name", "as_of_date", "beta"]})
    return attribution.attribution_table(closes, quote_ccy, portfolios, positions, pnl_daily,
                                         factors["factor_returns"], factors["factor_exposures"], carried,
                                         frequency_s=settings.factor_frequency_s)


def _check_finite_values(positions: pd.DataFrame, settings: Settings) -> None:
    """A position whose market value overflows (e.g. quantity 1e308) is bad input, not a number: refuse the run
    (nothing is committed) naming the positions file row, rather than let inf/NaN hide a limit."""
    bad = positions[~np.isfinite(positions["market_value"].to_numpy(dtype="float64"))]
    if bad.empty:
        return
    row = bad.iloc[0]
    path = settings.reference_dir / "positions.csv"
    line = _position_line(path, row)
    raise ValidationError(f"{path}:{line}: non-finite value: market value of {row['portfolio_id']} "
                          f"{row['product_id']} (quantity {row['quantity']:g}) overflows on {pd.Timestamp(row['as_of_date']):%Y-%m-%d}; "
                          f"{len(bad)} position(s) affected. Fix the quantity; nothing was written")


def _position_line(path, row) -> str:
    """The file line of the snapshot row carried to the as-of day for (portfolio, product); '?' if not found."""
    from etl.reference import read_reference_csv

    df = read_reference_csv(path, ["portfolio_id", "product_id", "as_of_date"])
    dates = pd.to_datetime(df["as_of_date"], errors="coerce")
    hit = ((df["portfolio_id"] == str(row["portfolio_id"])) & (df["product_id"] == str(row["product_id"]))
           & (dates <= pd.Timestamp(row["as_of_date"])))
    return str(int(dates[hit].idxmax())) if hit.any() else "?"  # the index is the file line


def _read_bars(kind: str, products: list[str], start: date | None, end: date, settings: Settings) -> pd.DataFrame:
    from etl.silver import read_bars

    return read_bars(kind, products=products, start=start, end=end, settings=settings)

"""Assemble the risk tables from prices and the book (pandas in, pandas out; the maths is in the sibling modules).

`compute_tables` takes daily closes (one column per product, one row per calendar day), the book and the
parameters, and returns every output table as a DataFrame: its halves `portfolio_tables` (per portfolio, for any
subset of the book) and `book_tables` (firm and products) let etl.risk.shards split the book across tasks.
No storage here: `etl.risk.runner` reads and writes.
Portfolios are processed in groups by base currency (a handful): within a group all prices and returns are in that
currency, so VaR, PnL and the backtest agree with each other exactly. Each group is valued and backtested in chunks
of `PORTFOLIO_CHUNK` portfolios, so the (days x portfolios x assets) arrays stay small; every figure, the Monte Carlo
paths of the ES tests included, is the same whatever the chunk.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view
from scipy import sparse

from etl import measures
from etl.errors import ConfigError, DataNotFoundError
from etl.measures import BACKTEST_CONFIDENCES, CONFIDENCES
from etl.risk import (
    anomalies,
    backtest,
    book_var,
    contributions,
    drawdown,
    es_backtest,
    filtered,
    firm,
    risk_returns,
    stress,
    tails,
    valuation,
    var,
)
from etl.risk.scenarios import scenario_tables

log = logging.getLogger(__name__)

METHODS = measures.method_names("portfolio")   # every method of a portfolio is backtested
FILTERED = ("fhs_ewma", "garch_t")     # volatility-filtered historical simulation (etl.risk.filtered)
TEST_SIZE = 0.05                       # a backtest fails when its p-value is below this
MIN_VAR_OBS = 20          # fewest daily returns a VaR forecast may rest on (backtest days before that are skipped)
BACKTEST_CELLS = 4_000_000  # scenario losses (days x portfolios x scenarios) the backtest holds at once
DRAWDOWN_METRIC = "drawdown_from_peak"   # what a drawdown limit is checked on, end of day and intraday
PORTFOLIO_CHUNK = 100       # portfolios valued and backtested together (memory bound; the results do not depend on it)


@dataclass(frozen=True)
class RiskParams:
    annualization_days: int = 365
    var_lookback_days: int = 250
    ewma_lambda: float = 0.94
    mc_scenarios: int = 10_000
    mc_seed: int = 7
    mc_distribution: str = "t"
    mc_t_dof: float = 5.0
    anomaly_window: int = 60
    anomaly_threshold: float = 3.5
    backtest_days: int = 250
    garch_workers: int = 1                 # processes for the GARCH fits (1 = in this process)
    garch_refit_days: int = 50             # backtest: GARCH refitted on the data known every this many days
    es_simulations: int = 1000             # Acerbi-Szekely Z2: paths simulated under each model
    es_bootstrap: int = 1000               # McNeil-Frey: bootstrap resamples
    es_seed: int = 11
    stress_file: str | None = None         # stress scenario config (None: only the worst historical windows)
    tail_refit_days: int = 20              # backtest: the tail models refitted every this many days, rescaled between

    def __post_init__(self):
        """A setting outside its model's domain is refused before any work (a decay of 1.5 is a VaR of 1e23, a
        Student-t without a variance a VaR of 0), naming the setting."""
        tail = round(1 / (1 - max(CONFIDENCES)))                          # scenarios per one beyond the VaR
        rules = [("RISK_ANNUALIZATION_DAYS", self.annualization_days, self.annualization_days >= 1, ">= 1"),
                 ("RISK_VAR_LOOKBACK_DAYS", self.var_lookback_days, self.var_lookback_days >= MIN_VAR_OBS,
                  f">= {MIN_VAR_OBS} (the fewest returns a VaR rests on)"),
                 ("RISK_EWMA_LAMBDA", self.ewma_lambda, 0 < self.ewma_lambda < 1, "strictly between 0 and 1"),
                 ("RISK_MC_SCENARIOS", self.mc_scenarios, self.mc_scenarios >= tail,
                  f">= {tail} (one scenario beyond the {max(CONFIDENCES):.0%} VaR)"),
                 ("RISK_MC_DISTRIBUTION", self.mc_distribution, self.mc_distribution in ("normal", "t"),
                  "'normal' or 't'"),
                 ("RISK_MC_T_DOF", self.mc_t_dof, self.mc_distribution != "t" or 2 < self.mc_t_dof < np.inf,
                  "a finite number > 2 (a Student-t with a variance)"),
                 ("RISK_ANOMALY_WINDOW", self.anomaly_window, self.anomaly_window >= 2, ">= 2"),
                 ("RISK_ANOMALY_THRESHOLD", self.anomaly_threshold, self.anomaly_threshold > 0, "> 0"),
                 ("RISK_BACKTEST_DAYS", self.backtest_days, self.backtest_days >= 0, ">= 0")]
        for name, value, ok, expected in rules:
            if not ok:
                raise ConfigError(f"setting {name}={value!r} is out of range: expected {expected}")

    @classmethod
    def from_settings(cls, s) -> RiskParams:
        return cls(s.annualization_days, s.var_lookback_days, s.ewma_lambda, s.mc_scenarios, s.mc_seed,
                   s.mc_distribution, s.mc_t_dof, s.anomaly_window, s.anomaly_threshold, s.backtest_days,
                   s.garch_workers, s.garch_refit_days, s.es_simulations, s.es_bootstrap, s.es_seed,
                   s.stress_scenarios_file)


# ---- inputs ---------------------------------------------------------------------------------------------------
def close_matrix(bars: pd.DataFrame, products: list[str], as_of: pd.Timestamp) -> pd.DataFrame:
    """Daily closes (calendar days x products) up to as_of, forward-filled over missing days (a day without a bar
    keeps the previous close) and starting on the first day every product has a close."""
    missing = sorted(set(products) - set(bars["product_id"]))
    if missing:
        raise DataNotFoundError(f"no daily bars for {missing} up to {as_of.date()}: ingest daily candles "
                                f"(python -m etl ingest --granularity 86400) and run python -m etl silver")
    wide = bars.pivot_table(index="price_date", columns="product_id", values="close", aggfunc="last")
    wide = wide.reindex(columns=products)
    days = pd.date_range(wide.index.min(), as_of, freq="D")
    wide = wide.reindex(days)
    first_close = wide.apply(pd.Series.first_valid_index)                # product -> its first close (NaT: none)
    wide = wide.ffill()
    start = wide.notna().all(axis=1)
    if not start.any():
        raise DataNotFoundError(f"no day up to {as_of.date()} has a close for all of {products}")
    last_bar = bars.groupby("product_id")["price_date"].max().reindex(products)
    if (last_bar < as_of).all():
        raise DataNotFoundError(f"no daily bar on {as_of.date()} for any of {products} (latest "
                                f"{last_bar.max().date()}): ingest that day or pick an earlier --as-of")
    stale = wide.index[-1] - last_bar
    for product, lag in stale[stale > pd.Timedelta(0)].items():
        log.warning("%s has no daily bar on %s: valued at its last close, of %s (%s days earlier); the day is "
                    "incomplete unless instruments.csv declares it delisted", product, as_of.date(),
                    last_bar[product].date(), lag.days)
    out = wide.loc[start.idxmax():]
    out.attrs["first_close"] = pd.to_datetime(first_close)               # what started the history: late_starters
    return out


def late_starters(closes: pd.DataFrame) -> str | None:
    """The products whose first daily close starts the history of `closes` (close_matrix) while others have
    closes before it: 'ETH-BTC (first daily close 2026-02-19)', or None when no product started late. Closes
    before `closes.attrs["history_start"]` (the first day of the history window read; the runner sets it) are
    no earlier start: the last close of a product delisted before the window is older than every listed
    product's first close, which does not make them late."""
    first = closes.attrs.get("first_close")
    if first is None or first.empty:
        return None
    earliest = first.min()
    if closes.attrs.get("history_start") is not None:
        earliest = max(earliest, closes.attrs["history_start"])
    if not first.max() > earliest:
        return None
    return ", ".join(f"{p} (first daily close {d.date()})" for p, d in first[first == first.max()].items())


def bar_days(bars: pd.DataFrame, closes: pd.DataFrame) -> pd.DataFrame:
    """(days x products of `closes`) True where the product has its own daily bar, False where close_matrix carried
    the previous close forward."""
    seen = pd.Series(True, index=pd.MultiIndex.from_frame(bars[["price_date", "product_id"]])).groupby(level=[0, 1]).any()
    return seen.unstack(fill_value=False).reindex(index=closes.index, columns=closes.columns, fill_value=False) \
        .astype(bool)


def stuck_closes(closes: pd.DataFrame, max_unchanged: int) -> pd.DataFrame:
    """(days x products of `closes`) True on the repeated closes of a run of more than `max_unchanged` consecutive
    daily closes equal to the day before's (RISK_MAX_UNCHANGED_CLOSES): a feed publishing the same close day after
    day, with volume or not, is a stuck price, not a market that did not move (a product of this book repeats a
    close by chance about once in a thousand days, two in a row about once in a million). Those days are zero
    returns the VaR would rest on, so they count as carried (`carried_days`), as a halt's days do."""
    px = closes.to_numpy()
    same = np.zeros(px.shape, dtype=bool)
    same[1:] = px[1:] == px[:-1]
    out = np.zeros(px.shape, dtype=bool)
    for a in range(px.shape[1]):                       # per product: the length of the run each repeat is in
        col = same[:, a]
        if not col.any():
            continue
        run = np.cumsum(~col)                          # one id per run of repeats (and the close before it)
        length = np.bincount(run, weights=col)
        out[:, a] = col & (length[run] > max_unchanged)
    return pd.DataFrame(out, index=closes.index, columns=closes.columns)


def price_flags(positions_valued: pd.DataFrame, last_bar: pd.Series, delisted_on: pd.Series) -> pd.DataFrame:
    """The positions valued on the as-of day with where their value comes from: `price_date` (the oldest of the
    daily bars on or before the as-of day it rests on: the product's own, and the `<CCY>-USD` bars converting its
    quote currency to USD and USD to the portfolio's base currency), `is_stale` (that bar is older than the as-of
    day: a fresh ETH-BTC close converted at a week-old BTC-USD close is a week-old value) and `is_delisted` (the
    instrument master says the product stopped trading on or before the as-of day and that is all its staleness:
    its own last bar is of its delisting day or the day before, so its last close is the reference price, not a
    missing one, and the `<CCY>-USD` closes converting it are of the as-of day; a product whose bars stop days
    before its delisting, or converted at a stale rate, is stale and not excused). last_bar, delisted_on:
    product_id -> day (NaT while listed)."""
    as_of = pd.to_datetime(positions_valued["as_of_date"])
    own_date = pd.to_datetime(positions_valued["product_id"].map(last_bar))
    price_date = own_date
    rates_fresh = pd.Series(True, index=positions_valued.index)
    for ccy in (positions_valued["quote_currency"], positions_valued["base_currency"]):
        rate_date = pd.to_datetime((ccy + "-USD").where(ccy != "USD").map(last_bar))  # NaT: USD needs no rate
        price_date = price_date.where(~(rate_date < price_date), rate_date)
        rates_fresh &= ~(rate_date < as_of)
    delisted = pd.to_datetime(positions_valued["product_id"].map(delisted_on))
    explained = (delisted <= as_of) & (own_date >= delisted - pd.Timedelta(days=1)) & rates_fresh
    return positions_valued.assign(price_date=price_date, is_stale=(price_date < as_of).to_numpy(),
                                   is_delisted=explained.to_numpy())


def carried_days(positions_valued: pd.DataFrame, carried: pd.DataFrame, n_ret: int) -> tuple[np.ndarray, pd.Series]:
    """How many days of the VaR window (the last n_ret days of `carried`, whose returns the VaR rests on) a
    position's price rests on a carried-forward close: a day without a daily bar of its product, or of the
    `<CCY>-USD` pair converting its quote or its portfolio's base currency (a halt gives zero returns, not a calm
    market). carried: days x products, True where close_matrix forward-filled the close. Returns (per position row,
    per portfolio: the days on which any of its holdings is carried)."""
    window = carried.iloc[-n_ret:] if n_ret > 0 else carried.iloc[:0]
    none = np.zeros(len(window), dtype=bool)

    def days_of(product: str) -> np.ndarray:
        return window[product].to_numpy(dtype=bool) if product in window.columns else none
    pv = positions_valued
    keys = list(zip(pv["product_id"], pv["quote_currency"], pv["base_currency"], strict=True))
    masks = {k: days_of(k[0]) | (days_of(f"{k[1]}-USD") if k[1] != "USD" else none)
             | (days_of(f"{k[2]}-USD") if k[2] != "USD" else none) for k in set(keys)}
    rows = np.array([masks[k] for k in keys], dtype=bool).reshape(len(keys), len(window))
    per_book = pd.DataFrame(rows, index=pv["portfolio_id"].to_numpy()).groupby(level=0).any().sum(axis=1)
    return rows.sum(axis=1), per_book


def asset_carried_days(carried: pd.DataFrame, quote_ccy: dict[str, str], n_ret: int) -> tuple[pd.Series, pd.DataFrame]:
    """The carried days of the products' own figures over the VaR window (the last n_ret days of `carried`, as
    `carried_days`): (product -> the days its own close is carried: asset_risk, drawdowns, in its quote currency;
    products x products -> the days on which the USD close of either is carried, its own or its quote's
    `<CCY>-USD`: correlations, of USD returns)."""
    window = carried.iloc[-n_ret:] if n_ret > 0 else carried.iloc[:0]
    products = list(carried.columns)
    own = window.to_numpy(dtype=bool)
    none = np.zeros(len(window), dtype=bool)
    usd = np.column_stack([own[:, a] | (window[f"{quote_ccy.get(p, 'USD')}-USD"].to_numpy(dtype=bool)
                                        if f"{quote_ccy.get(p, 'USD')}-USD" in window.columns else none)
                           for a, p in enumerate(products)]) if products else own
    fresh = (~usd).astype(np.float64)
    either = len(window) - fresh.T @ fresh                 # days on which a or b (or both) is carried
    return (pd.Series(own.sum(axis=0), index=products, dtype="int64"),
            pd.DataFrame(np.rint(either).astype("int64"), index=products, columns=products))


def carried_scenarios(scenario_returns: pd.DataFrame, carried: pd.DataFrame, quote_ccy: dict[str, str]) -> np.ndarray:
    """Per scenario_returns row (base_currency, scenario_date, product_id): True when that scenario return rests
    on a carried-forward close of the product or of the `<CCY>-USD` pair converting its quote or the base currency
    (the masks of `carried_days`), so the intraday revaluation counts a book's carried days as the end-of-day run
    did (etl.risk.intraday)."""
    if scenario_returns.empty:
        return np.zeros(0, dtype=bool)
    flag = carried.stack()
    days = pd.to_datetime(scenario_returns["scenario_date"]).to_numpy()

    def at(products) -> np.ndarray:
        idx = pd.MultiIndex.from_arrays([days, np.asarray(products, dtype=object)])
        return flag.reindex(idx, fill_value=False).to_numpy(dtype=bool)
    product = scenario_returns["product_id"].astype(str)
    quote = product.map(quote_ccy)
    base = scenario_returns["base_currency"].astype(str)
    return at(product) | at((quote + "-USD").where(quote != "USD", "")) | at((base + "-USD").where(base != "USD", ""))


def usd_rates(closes: pd.DataFrame, currencies: set[str]) -> dict[str, np.ndarray]:
    """Value of one unit of each currency in USD per day: 1 for USD, else the close of <CCY>-USD."""
    out = {"USD": np.ones(len(closes))}
    for ccy in sorted(currencies - {"USD"}):
        product = f"{ccy}-USD"
        if product not in closes.columns:
            raise DataNotFoundError(f"cannot convert {ccy} to USD: no daily closes of {product}")
        out[ccy] = closes[product].to_numpy()
    return out


def snapshot_arrays(positions: pd.DataFrame, portfolio_ids: list[str], products: list[str],
                    days: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Carried-forward quantity and avg_cost arrays (T, P, A) from the position snapshots (zeros without any)."""
    if positions.empty:
        return np.zeros((len(days), len(portfolio_ids), len(products))), np.zeros((len(days), len(portfolio_ids),
                                                                                   len(products)))
    snap_days = np.sort(positions["as_of_date"].unique())
    k = np.searchsorted(snap_days, positions["as_of_date"].to_numpy())
    p = pd.Index(portfolio_ids).get_indexer(positions["portfolio_id"])
    a = pd.Index(products).get_indexer(positions["product_id"])
    shape = (len(snap_days), len(portfolio_ids), len(products))
    qty, cost = np.zeros(shape), np.zeros(shape)
    has = np.zeros(shape[:2], dtype=bool)
    qty[k, p, a] = positions["quantity"].to_numpy()
    cost[k, p, a] = positions["avg_cost"].to_numpy()
    has[k, p] = True
    day_values = days.to_numpy().astype(snap_days.dtype)
    return (valuation.carry_forward(snap_days, has, qty, day_values),
            valuation.carry_forward(snap_days, has, cost, day_values))


# ---- the computation ------------------------------------------------------------------------------------------
def compute_tables(closes: pd.DataFrame, quote_ccy: dict[str, str], portfolios: pd.DataFrame,
                   positions: pd.DataFrame, params: RiskParams,
                   bars_5m: pd.DataFrame | None = None,
                   has_bar: pd.DataFrame | None = None,
                   max_carried_days: int | None = None) -> dict[str, pd.DataFrame]:
    """Every risk output table for the last day of `closes` (the as-of date): `portfolio_tables` of the whole
    book plus its `book_tables`.

    closes: calendar days x products (quote currency), no NaN (see close_matrix); must include <CCY>-USD for every
    non-USD quote or base currency. quote_ccy: product -> quote currency. bars_5m: optional silver 5-minute bars
    (product_id, bucket_start, close) for intraday anomalies. has_bar: `bar_days` (None: every close is a bar's),
    for the daily anomalies and, with max_carried_days (RISK_MAX_CARRIED_DAYS; None: no limit), the stress betas:
    a product whose USD returns or the anchor's rest on more carried closes of the VaR window has no beta.
    """
    book = _Book.of(closes, quote_ccy, portfolios, positions, params, has_bar, max_carried_days)
    sigmas: dict[str, dict[str, np.ndarray]] = {}                          # filtered volatilities per currency
    return append_tables(_portfolio_tables(book, portfolios, positions, params, sigmas),
                         _book_tables(book, closes, portfolios, positions, params, bars_5m, sigmas, has_bar))


def portfolio_tables(closes: pd.DataFrame, quote_ccy: dict[str, str], portfolios: pd.DataFrame,
                     positions: pd.DataFrame, params: RiskParams, has_bar: pd.DataFrame | None = None,
                     max_carried_days: int | None = None) -> dict[str, pd.DataFrame]:
    """The per-portfolio tables of `portfolios`, a shard of the book: each row depends only on its own portfolio.
    positions: the whole book's, since the products the book holds fix the scenario sets and the Monte Carlo
    draws; the rows of other portfolios are ignored. has_bar, max_carried_days: as compute_tables."""
    book = _Book.of(closes, quote_ccy, portfolios, positions, params, has_bar, max_carried_days)
    return _portfolio_tables(book, portfolios, positions, params, {})


def book_tables(closes: pd.DataFrame, quote_ccy: dict[str, str], portfolios: pd.DataFrame, positions: pd.DataFrame,
                params: RiskParams, bars_5m: pd.DataFrame | None = None,
                has_bar: pd.DataFrame | None = None, max_carried_days: int | None = None) -> dict[str, pd.DataFrame]:
    """The tables of the whole book (firm_risk, the firm-scope risk_contributions and stress_results rows) and of
    the products (asset_risk, correlations, drawdowns, anomalies): cheap next to the portfolios'."""
    book = _Book.of(closes, quote_ccy, portfolios, positions, params, has_bar, max_carried_days)
    return _book_tables(book, closes, portfolios, positions, params, bars_5m, {}, has_bar)


def append_tables(tables: dict[str, pd.DataFrame], more: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """tables with the rows of `more` appended, table by table."""
    for name, df in more.items():
        tables[name] = pd.concat([tables[name], df], ignore_index=True) if name in tables else df
    return tables


@dataclass(frozen=True)
class _Book:
    """What every part of the computation shares: the days, the products the book holds, USD rates, the VaR
    lookback, the Monte Carlo draws and the stress scenarios."""
    days: pd.DatetimeIndex
    quote_ccy: dict[str, str]
    held: list[str]
    rates: dict[str, np.ndarray]
    close: np.ndarray                       # (T, A) the held products' closes, quote currency
    quote_usd: np.ndarray                   # (T, A) the USD value of one unit of each held product's quote
    n_ret: int
    hist_start: int
    z: np.ndarray
    scale: np.ndarray
    scenarios: stress.Scenarios
    usd_move_of: object
    carried: pd.DataFrame | None = None     # days x products: close carried forward (~has_bar), None: none is

    def carried_of(self, base: str) -> np.ndarray | None:
        """(T, A) where a held product's price in `base` rests on a carried close: its own, its quote's or
        base's `<CCY>-USD` (the masks of `carried_days`)."""
        if self.carried is None:
            return None
        none = np.zeros(len(self.days), dtype=bool)

        def of(product: str) -> np.ndarray:
            return self.carried[product].to_numpy(dtype=bool) if product in self.carried.columns else none
        rate = of(f"{base}-USD") if base != "USD" else none
        return np.column_stack([of(a) | (of(f"{self.quote_ccy[a]}-USD") if self.quote_ccy[a] != "USD" else none)
                                | rate for a in self.held])

    @classmethod
    def of(cls, closes, quote_ccy, portfolios, positions, params: RiskParams, has_bar=None,
           max_carried_days: int | None = None) -> _Book:
        scenarios = stress.load_scenarios(params.stress_file, set(quote_ccy))   # a bad file fails before any work
        days = closes.index
        t_all = len(days)
        held = sorted(positions["product_id"].unique())
        rates = usd_rates(closes, {quote_ccy[p] for p in held} | set(portfolios["base_currency"]))
        n_ret = min(params.var_lookback_days, t_all - 1)
        if n_ret < MIN_VAR_OBS and (late := late_starters(closes)):
            raise DataNotFoundError(f"only {t_all} days of closes up to {days[-1].date()}: the history starts at "
                                    f"{late}, which leaves {n_ret} daily returns; VaR needs at least {MIN_VAR_OBS}: "
                                    "value its holdings elsewhere until it has the history, or ingest its earlier "
                                    "daily candles if it traded before")
        if n_ret < MIN_VAR_OBS:
            raise DataNotFoundError(f"only {t_all} days of closes up to {days[-1].date()} for {held}: VaR needs at "
                                    f"least {MIN_VAR_OBS + 1}; ingest more daily history (PIPELINE_DAILY_HISTORY_DAYS)")
        z, scale = var.mc_draws(params.mc_scenarios, len(held), params.mc_seed, params.mc_distribution,
                                params.mc_t_dof)
        return cls(days, quote_ccy, held, rates, closes[held].to_numpy(),
                   np.column_stack([rates[quote_ccy[p]] for p in held]), n_ret,
                   max(0, t_all - params.backtest_days),                  # history tables cover this window
                   z, scale, stress.within(scenarios, days, warn=True),
                   _usd_moves(closes, rates, quote_ccy, n_ret,
                              None if has_bar is None or max_carried_days is None else ~has_bar, max_carried_days),
                   None if has_bar is None else ~has_bar.reindex(index=days, columns=closes.columns,
                                                                 fill_value=True).astype(bool))


def _portfolio_tables(b: _Book, portfolios: pd.DataFrame, positions: pd.DataFrame, params: RiskParams,
                      sigmas: dict[str, dict[str, np.ndarray]]) -> dict[str, pd.DataFrame]:
    pids = list(portfolios["portfolio_id"])
    base_of = dict(zip(portfolios["portfolio_id"], portfolios["base_currency"], strict=True))
    parts: dict[str, list[pd.DataFrame]] = {}
    for base in sorted(set(base_of.values())):
        ids = [pid for pid in pids if base_of[pid] == base]
        fx = b.quote_usd / b.rates[base][:, None]                          # quote -> base, (T, A)
        # prices in base currency as USD value / the base's USD rate: the base's own <CCY>-USD is then exactly 1
        # (x / x), where close x fx = x (1 / x) is 1 - 2^-53 on some days (a zero-return asset with noise)
        price = b.close * b.quote_usd / b.rates[base][:, None]
        for lo in range(0, len(ids), PORTFOLIO_CHUNK):                    # memory: (T, P, A) arrays per chunk
            chunk = ids[lo:lo + PORTFOLIO_CHUNK]
            qty, cost = snapshot_arrays(positions[positions["portfolio_id"].isin(chunk)], chunk, b.held, b.days)
            group = _group_tables(b.days, b.close, fx, price, qty, cost, chunk, b.held, base, b.z, b.scale, b.n_ret,
                                  b.hist_start, params, sigmas, b.scenarios, b.usd_move_of, b.carried_of(base))
            risk = group["risk_metrics"]        # in USD at the as-of close of <base>-USD: ranks books across currencies
            risk["var_99_hist_usd"] = risk["var_99_hist"] * b.rates[base][-1]
            if lo:                                                         # the currency's scenario set once
                del group["scenario_returns"], group["scenario_covariance"]
            group["positions_valued"]["quote_currency"] = group["positions_valued"]["product_id"].map(b.quote_ccy)
            for name, df in group.items():
                parts.setdefault(name, []).append(df)
    tables = {name: _concat(parts.pop(name)) for name in list(parts)}   # chunks freed
    release_freed_memory()
    if not tables["var_backtest_summary"].empty:
        tables["var_backtest_summary"] = tables["var_backtest_summary"].sort_values(
            ["portfolio_id", "method", "confidence"], ignore_index=True)
    tables["var_model_comparison"] = model_comparison(tables["var_backtest_summary"], tables.pop("es_backtest"))
    tables["limit_breaches"] = limit_breaches(tables["risk_metrics"], portfolios)
    # the limits this run checked, on each risk row: pages of the day measure utilisation against them, not
    # against dim_portfolio's (portfolios.csv as it is now)
    checked = portfolios.set_index("portfolio_id").reindex(tables["risk_metrics"]["portfolio_id"])
    for col in LIMITS_CHECKED:
        tables["risk_metrics"][f"checked_{col}"] = checked[col].to_numpy()
    return tables


def _book_tables(b: _Book, closes, portfolios, positions, params: RiskParams, bars_5m,
                 sigmas: dict[str, dict[str, np.ndarray]], has_bar=None) -> dict[str, pd.DataFrame]:
    pids = list(portfolios["portfolio_id"])
    usd_price = b.close * b.quote_usd
    qty, cost = snapshot_arrays(positions, pids, b.held, b.days[-1:])    # the book on the as-of day
    mv_usd = valuation.value_positions(qty, cost, b.close[-1:], b.quote_usd[-1:, None, :]).market_value[0]
    usd_sigmas = _filtered_sigmas(risk_returns.simple_returns(usd_price), "USD", params, sigmas)
    tables = firm.firm_tables(b.days, usd_price, mv_usd, pids, b.held, b.z, b.scale, b.n_ret,
                              {m: s for m, s in usd_sigmas.items() if m in FILTERED}, b.scenarios, b.usd_move_of,
                              b.carried_of("USD"))
    append_tables(tables, asset_tables(closes, b.rates, b.quote_ccy, b.n_ret, b.hist_start, params, has_bar))
    tables["anomalies"] = intraday_anomalies(bars_5m, b.days[-1], params)
    return tables


def _usd_moves(closes: pd.DataFrame, rates: dict[str, np.ndarray], quote_ccy: dict[str, str], n_ret: int,
               carried: pd.DataFrame | None = None, max_carried_days: int | None = None):
    """shocks {product: USD move} -> {product: USD move} for every product, unshocked ones through their beta to
    the anchor (BTC-USD) over the VaR lookback of USD returns (etl.risk.stress). carried: days x products, True
    where the close is carried forward: a beta resting on more than max_carried_days carried USD closes of the
    product or the anchor in the lookback (`asset_carried_days`, as a correlation) is unknown (NaN), not a slope
    shrunk by zero returns."""
    products = list(closes.columns)
    usd = closes.to_numpy() * np.column_stack([rates.get(quote_ccy.get(p, "USD"), np.ones(len(closes)))
                                               for p in products])
    r = risk_returns.simple_returns(usd)[-n_ret:]
    # no anchor prices in the run (no book needs them): the betas are unknown, not 0
    beta = stress.betas(r, products.index(stress.ANCHOR)) if stress.ANCHOR in products \
        else np.full(len(products), np.nan)
    if carried is not None and stress.ANCHOR in products:
        flags = carried.reindex(index=closes.index, columns=products, fill_value=False).astype(bool)
        _, pair = asset_carried_days(flags, quote_ccy, n_ret)
        unknown = (pair[stress.ANCHOR] > max_carried_days).to_numpy() & (np.asarray(products) != stress.ANCHOR)
        beta = np.where(unknown, np.nan, beta)

    def moves(shocks: dict[str, float]) -> dict[str, float]:
        return dict(zip(products, stress.hypothetical_moves(shocks, products, beta), strict=True))
    return moves


def _filtered_sigmas(asset_ret: np.ndarray, currency: str, params: RiskParams,
                     cache: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{method: one-step-ahead volatilities (T, A)} of the asset returns in one currency (computed once each).
    `garch_t_backtest` is out of sample: GARCH is refitted every `garch_refit_days` over the backtest window on
    the returns known then (each fit warm-started from the previous one), and its volatilities for the days up to
    the next refit come from that fit. `garch_t` (today's forecast) is the last fit, on all returns."""
    if currency not in cache:
        t = asset_ret.shape[0]
        first_f = max(MIN_VAR_OBS, t - params.backtest_days)
        refits = list(range(first_f, t, max(1, params.garch_refit_days))) + [t]
        backtest_sigma = np.zeros((t + 1, asset_ret.shape[1]))
        fit = None
        for k, k_next in zip(refits[:-1], refits[1:], strict=True):
            fit = filtered.fit_garch_t(asset_ret, workers=params.garch_workers, fit_rows=k,
                                       start=None if fit is None else fit.params)
            lo = 0 if k == first_f else k                                  # the first fit also scales older rows
            backtest_sigma[lo:k_next + 1] = fit.sigma[lo:k_next + 1]
        full = filtered.fit_garch_t(asset_ret, workers=params.garch_workers, start=None if fit is None else fit.params)
        cache[currency] = {"fhs_ewma": filtered.ewma_sigma(asset_ret, params.ewma_lambda), "garch_t": full.sigma,
                           "garch_t_backtest": backtest_sigma}
    return cache[currency]


def _group_tables(days, close, fx, price, qty, cost, pids, held, base, z, scale, n_ret, hist_start,
                  params: RiskParams, sigmas=None, scenarios=None, usd_move_of=None,
                  carried=None) -> dict[str, pd.DataFrame]:
    """All portfolio tables for portfolios sharing one base currency; price (T, A): the closes in that currency;
    carried (T, A): where it rests on a carried-forward close (stress windows; None: none does)."""
    as_of = days[-1]
    val = valuation.value_positions(qty, cost, close, fx[:, None, :])
    mv = val.market_value                                                  # (T, P, A)
    expo = valuation.exposures(mv)
    pnl = valuation.daily_pnl(qty, price[:, None, :])
    month = (days.year * 12 + days.month).to_numpy()
    mtd = valuation.month_to_date(pnl, month)
    port_ret = np.nan_to_num(valuation.portfolio_returns(pnl, expo["gross_exposure"]))  # empty book: flat
    asset_ret = risk_returns.simple_returns(price)                              # (T-1, A): row j = day j+1

    # ---- as-of metrics ----
    window = asset_ret[-n_ret:]
    exposure = np.ascontiguousarray(mv[-1].T)                              # (A, P)
    sig = _filtered_sigmas(asset_ret, base, params, {} if sigmas is None else sigmas)
    scen = book_var.Scenarios.last(asset_ret, n_ret, {m: sig[m] for m in FILTERED}, z, scale)
    metrics = book_var.book_var_es(scen, exposure, "portfolio")
    pr_window = port_ret[-n_ret:]
    gross_now = expo["gross_exposure"][-1]
    # a book holding nothing today has nothing to lose: drawdown 0, so no drawdown limit it could never clear
    pr_held = np.where(gross_now != 0, pr_window, 0.0)                  # (docs: "Empty portfolio")
    mdd = drawdown.max_drawdown(pr_held)
    risk = pd.DataFrame({"portfolio_id": pids, "as_of_date": as_of, "base_currency": base,
                         "market_value": expo["net_exposure"][-1], "gross_exposure": gross_now,
                         "net_exposure": expo["net_exposure"][-1], "concentration_pct": expo["concentration_pct"][-1],
                         **metrics})
    with np.errstate(invalid="ignore", divide="ignore"):
        for col in list(metrics):
            risk[f"{col}_pct"] = np.where(gross_now > 0, metrics[col] / np.where(gross_now > 0, gross_now, 1), np.nan)
    for m in measures.series_measures("portfolio"):
        risk[m.name] = getattr(risk_returns, m.function)(port_ret[1:], m.window, params.annualization_days)
    risk["vol_ewma"] = risk_returns.ewma_vol(pr_window, params.ewma_lambda, params.annualization_days)
    risk["max_drawdown"] = mdd.max_drawdown
    risk["drawdown_from_peak"] = drawdown.drawdown_series(pr_held)[-1]     # the drawdown limit's measure, now
    risk["lookback_days"] = n_ret
    risk["annualization_days"] = params.annualization_days   # what its vol_* are annualised with
    risk["daily_pnl"] = pnl[-1]
    risk["mtd_pnl"] = mtd[-1]
    risk["mc_scenarios"] = len(scale)
    risk["mc_distribution"] = params.mc_distribution

    dd_days = days[-n_ret - 1:]
    drawdowns = _drawdown_rows(mdd, pids, "portfolio", dd_days, as_of)

    # ---- history: valuation and PnL over the backtest window ----
    hist_days = days[hist_start:]
    p = len(pids)
    h = len(hist_days)
    kept = expo["gross_exposure"][hist_start:] > 0                         # (H, P): days the book held something
    kept[-1] = True                        # and every portfolio on the as-of day: an empty book is worth 0, not unknown
    # (H, P): wealth starts the close before the first history day (as drawdown_from_peak's window), its point dropped
    dd_hist = drawdown.drawdown_series(port_ret[hist_start:])[1:]
    frame = {"portfolio_id": np.tile(pids, h), "as_of_date": np.repeat(hist_days, p), "base_currency": base}
    valuation_df = pd.DataFrame({
        **frame,
        "market_value": expo["net_exposure"][hist_start:].ravel(),
        "unrealized_pnl": val.unrealized_pnl[hist_start:].sum(axis=-1).ravel(),
        **{k: v[hist_start:].ravel() for k, v in expo.items()},
        "drawdown": dd_hist.ravel(),
    })[kept.ravel()]
    # a day's PnL is that of the holdings at the previous close: a row where the book held something then or now
    # (the day it is closed out has its PnL); the price history's first day has no previous close, hence no PnL:
    # no row (docs/risk_conventions.md), not a NULL that would replace the PnL an earlier run, whose history
    # started earlier, computed for that day
    held_before = np.vstack([np.zeros((1, p), dtype=bool), expo["gross_exposure"][:-1] > 0])   # (T, P)
    priced = kept | held_before[hist_start:]
    priced[0] &= hist_start > 0
    pnl_df = pd.DataFrame({**frame, "daily_pnl": pnl[hist_start:].ravel(), "mtd_pnl": mtd[hist_start:].ravel(),
                           "daily_return": port_ret[hist_start:].ravel()})[priced.ravel()]

    # ---- positions valued on the as-of day ----
    pi, ai = np.nonzero(qty[-1])
    positions_df = pd.DataFrame({
        "portfolio_id": np.asarray(pids)[pi], "product_id": np.asarray(held)[ai], "as_of_date": as_of,
        "quantity": qty[-1][pi, ai], "avg_cost": cost[-1][pi, ai], "close": close[-1][ai],
        "market_value": mv[-1][pi, ai], "unrealized_pnl": val.unrealized_pnl[-1][pi, ai],
        "fx_rate": fx[-1][ai], "base_currency": base,
        # its term of the portfolio's daily_pnl: the previous close's quantity revalued (docs: "Daily PnL")
        "daily_pnl": (qty[-2][pi, ai] * (price[-1][ai] - price[-2][ai])) if len(days) > 1 else np.nan,
    })
    with np.errstate(invalid="ignore", divide="ignore"):
        positions_df["weight"] = positions_df["market_value"] / gross_now[pi]

    bt_rows, bt_summary, es_rows = _backtest_rows(days, asset_ret, mv, pnl, pids, base, params, sig)
    return {"risk_metrics": risk, "portfolio_valuation": valuation_df, "pnl_daily": pnl_df,
            "positions_valued": positions_df, "drawdowns": drawdowns, "var_backtest": bt_rows,
            "var_backtest_summary": bt_summary, "es_backtest": es_rows,
            "risk_contributions": contribution_rows(window, exposure, pids, held, as_of, base),
            "stress_results": stress.stress_rows(days, price, exposure, gross_now, pids, held, base,
                                                 scenarios or stress.Scenarios.empty(),
                                                 usd_move_of or (lambda shocks: dict.fromkeys(held, 0.0)),
                                                 carried=carried),
            # what the intraday revaluation re-uses: this scenario set, its covariance, each book's drawdown
            **scenario_tables(as_of, days[-n_ret:], window, held, base, pids, risk["drawdown_from_peak"].to_numpy(),
                              params)}


def contribution_rows(window: np.ndarray, exposure: np.ndarray, ids, held, as_of, currency: str,
                      scope: str = "portfolio") -> pd.DataFrame:
    """Euler components of each held position (exposure (A, P) != 0) in its portfolio's VaR/ES (etl.risk.contributions)."""
    cov = var.covariance(window)
    cols = {}
    for c in CONFIDENCES:
        cols[measures.column("component_var", c, "param")], cols[measures.column("marginal_var", c, "param")] = \
            contributions.parametric(cov, exposure, c)
    for c, comp in contributions.historical_es(window, exposure, CONFIDENCES).items():
        cols[measures.column("component_es", c, "hist")] = comp
    ai, pi = np.nonzero(exposure)
    return pd.DataFrame({"portfolio_id": np.asarray(ids)[pi], "product_id": np.asarray(held)[ai],
                         "as_of_date": as_of, "scope": scope, "exposure": exposure[ai, pi],
                         **{k: v[ai, pi] for k, v in cols.items()}, "currency": currency})


def _backtest_rows(days, asset_ret, mv, pnl, pids, base, params: RiskParams,
                   sig: dict) -> tuple[dict | pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Rolling out-of-sample backtest: the VaR/ES forecast made at the close of day f (holdings and the last N
    returns up to f; for the filtered methods the residuals up to f rescaled to the volatility forecast for f+1)
    against the PnL realised on day f+1. Rows are keyed by the realised day (as_of_date), as columns (`_concat`
    makes the table of all chunks at once). Also returns their summary (`backtest_summary`, from the arrays) and
    the ES backtests (Z2, exceedance residuals) of every portfolio x method x confidence.

    Cost is that of the model, not of re-simulation: Monte Carlo is scored by its model's exact quantile
    (var.mc_model_var_es); the scenario methods' losses (days x portfolios x N) are built for a chunk of portfolios
    at a time (memory bound) and only their largest losses are kept (var.loss_tail); the tail models are refitted
    every `tail_refit_days` and rescaled by the day's loss sd in between (_tail_backtest); the Z2 paths are drawn
    once per method and level and shared by all portfolios (es_backtest.z2_null_*)."""
    t_all = len(days)
    n = params.var_lookback_days
    first_f = max(MIN_VAR_OBS, t_all - 1 - params.backtest_days)
    f = np.arange(first_f, t_all - 1)                                      # forecast days
    if len(f) == 0:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()

    if "backtest" not in sig:      # the currency's cached volatilities also keep its scenarios, for the next chunk
        sig["backtest"] = _backtest_scenarios(asset_ret, f, n, sig)
    scenarios: dict[str, _Scenarios] = sig["backtest"]
    expo = mv[f]                                                           # (F, P, A)
    expo_t = np.swapaxes(expo, 1, 2)                                       # (F, A, P)
    realized = pnl[f + 1]                                                  # (F, P)
    held = np.abs(expo).sum(axis=-1) > 0                                   # (F, P): a book to forecast
    sigma = var.portfolio_sigma(scenarios["hist"].cov, expo_t)
    forecasts: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
    for c in BACKTEST_CONFIDENCES:
        forecasts[("param", c)] = var.parametric_var_es(sigma, c)
        forecasts[("mc", c)] = var.mc_model_var_es(sigma, c, params.mc_distribution, params.mc_t_dof)
    loss_sd = {"param": sigma, "mc": sigma}
    rng = np.random.default_rng(params.es_seed)
    z2_null: dict[tuple[str, float], np.ndarray] = {}
    for method in ("param", "mc"):
        u = rng.standard_normal((params.es_simulations, len(f)))          # the model's standardised innovation
        if method == "mc" and params.mc_distribution == "t":
            u *= np.sqrt((params.mc_t_dof - 2.0) / rng.chisquare(params.mc_t_dof, u.shape))
        for c in BACKTEST_CONFIDENCES:
            unit_var, unit_es = (var.parametric_var_es(1.0, c) if method == "param" else
                                 var.mc_model_var_es(1.0, c, params.mc_distribution, params.mc_t_dof))
            z2_null[(method, c)] = es_backtest.z2_null_scaled(u, unit_var, unit_es, 1 - c,
                                                              _valid(held, forecasts[(method, c)]), sigma)
    for method, sc in scenarios.items():
        forecasts.update(_scenario_backtest(method, sc, expo, held, rng, params, z2_null))
        # the sd of the day's scenario losses (hist: the parametric sigma itself)
        loss_sd[method] = sigma if method == "hist" else var.portfolio_sigma(sc.cov, expo_t)
    forecasts.update(_tail_backtest(scenarios["hist"], expo, held, sigma, rng, params, z2_null))
    loss_sd.update(dict.fromkeys(tails.METHODS, sigma))                  # the sd of the losses they are fitted to
    keys = [(method, c) for method in METHODS for c in BACKTEST_CONFIDENCES]
    hits = {(m, c): backtest.exceptions(forecasts[(m, c)][0], realized) for m, c in keys}
    cell = np.flatnonzero(held.ravel())                                   # (day, portfolio) cells with a book
    day, port = np.divmod(cell, len(pids))

    def stacked(per_key) -> list[np.ndarray]:                             # one column over every key's cells
        return [per_key(*key).ravel()[cell] for key in keys]

    realized_dates = days[f + 1].to_numpy()
    rows = {                                   # numpy columns as their pieces, joined once over all chunks
        "portfolio_id": _dictionary(pids, np.tile(port, len(keys))),
        "as_of_date": [realized_dates[day]] * len(keys),
        "forecast_date": [days[f].to_numpy()[day]] * len(keys),
        "method": _dictionary([m for m, _ in keys], np.repeat(np.arange(len(keys)), len(cell))),
        "confidence": [np.full(len(cell), c) for _, c in keys],
        "var_forecast": stacked(lambda m, c: forecasts[(m, c)][0]),
        "realized_pnl": [realized.ravel()[cell]] * len(keys),
        "is_exception": stacked(lambda m, c: hits[(m, c)]),
        "es_forecast": stacked(lambda m, c: forecasts[(m, c)][1]),
        "loss_sd": stacked(lambda m, c: loss_sd[m]),
        "base_currency": _dictionary([base], np.zeros(len(cell) * len(keys), dtype=np.int32)),
    }
    summary = _series_summary(keys, hits, {key: held & np.isfinite(forecasts[key][0]) for key in keys}, held,
                              realized_dates, pids, days[-1])
    valid = {key: _valid(held, forecasts[key]) for key in keys}
    z2 = np.concatenate([es_backtest.z2_stat(-realized, *forecasts[(m, c)], 1 - c, valid[(m, c)]) for m, c in keys])
    # every key's series side by side: one test, each group of series with k exceedances resampled together
    er = es_backtest.exceedance_residual_test(
        np.tile(-realized, len(keys)), *(np.hstack([forecasts[key][i] for key in keys]) for i in (0, 1)),
        np.hstack([loss_sd[m] for m, _ in keys]), params.es_bootstrap, params.es_seed,
        np.hstack([valid[key] for key in keys]))
    tests = pd.DataFrame({
        "portfolio_id": _str_column(pids, np.tile(np.arange(len(pids)), len(keys))),
        "method": _str_column([m for m, _ in keys], np.repeat(np.arange(len(keys)), len(pids))),
        "confidence": np.repeat([c for _, c in keys], len(pids)), "z2": z2,
        "z2_p": np.concatenate([es_backtest.z2_p_value(z2[i * len(pids):(i + 1) * len(pids)], z2_null[key])
                                for i, key in enumerate(keys)]),
        "exceedance_residual_n": er["n"], "exceedance_residual_mean": er["mean"],
        "exceedance_residual_t": er["t"], "exceedance_residual_p": er["p"]})
    return rows, summary, tests


def _dictionary(names, codes: np.ndarray) -> pa.DictionaryArray:
    """names[codes] as an Arrow dictionary array (`_concat` casts the chunks' to one string column: 5x faster
    than from Python strings). The codes are cast by numpy and wrapped: Arrow's checked cast is 60x slower."""
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int32)), pa.array(list(names), pa.string()))


def _str_column(names, codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """names[codes] as a pandas string column, built in Arrow from the codes."""
    return _strings([_dictionary(names, codes)])


def _strings(chunks: list[pa.DictionaryArray]) -> pd.api.extensions.ExtensionArray:
    return pd.array(pa.chunked_array(chunks).cast(pa.large_string()), dtype="str")


def _concat(parts: list) -> pd.DataFrame:
    """One table from the chunks' parts: DataFrames, or dicts of columns (lists of numpy pieces, or Arrow
    dictionary arrays) built into one DataFrame (each value copied once), each column freed from the parts as it
    is joined."""
    if not isinstance(parts[0], dict):
        return pd.concat(parts, ignore_index=True)
    columns = {}
    for name in list(parts[0]):
        chunks = [part.pop(name) for part in parts]
        columns[name] = (_strings(chunks) if isinstance(chunks[0], pa.Array) else
                         np.concatenate([piece for pieces in chunks for piece in pieces]))
        del chunks
        release_freed_memory()                   # the chunks' pages hold the next column instead of adding to it
    return pd.DataFrame(columns, copy=False)


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim from the process's own symbols, or None (another C library)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_memory() -> None:
    """Hand the pages of freed arrays back to the OS (glibc's malloc_trim; elsewhere nothing). glibc keeps freed
    memory for reuse, raising its mmap threshold after large frees, so a run's RSS would otherwise hold every
    chunk's arrays after they are joined (a quarter of the peak of `python -m etl risk` at 1,000 portfolios)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _series_summary(keys, hits: dict, scored: dict, held: np.ndarray, dates: np.ndarray, pids, as_of) -> pd.DataFrame:
    """`backtest_summary` of the backtest rows from their arrays: each key's exceptions (F, P) on the days it is
    scored (F, P: a book held and a VaR forecast made), realised on dates (F,); a series is one portfolio's held days
    (none held: no row), its window their first to last; only its scored days count (a day without a forecast
    is not a day without an exception: a model that never forecast has n_days 0 and no statistics)."""
    f_len, p = held.shape
    has = held.any(axis=0)                                                # (P,) series with a row
    first, last = held.argmax(axis=0), f_len - 1 - held[::-1].argmax(axis=0)
    cols, counts, previous = np.arange(p), [], {}

    def prev_of(mask: np.ndarray) -> np.ndarray:                          # each day's previous scored day, or -1
        seen = np.maximum.accumulate(np.where(mask, np.arange(f_len)[:, None], -1), axis=0)
        return np.vstack([np.full((1, p), -1), seen[:-1]])

    for key in keys:
        mask = scored[key]
        same = next((k for k in previous if np.array_equal(scored[k], mask)), None)   # most keys score alike
        prev = previous[key] = previous[same] if same is not None else prev_of(mask)
        pair = mask & (prev >= 0)
        h = hits[key] & mask
        before = h[np.maximum(prev, 0), cols]
        counts.append([(pair & ~before & ~h).sum(axis=0), (pair & ~before & h).sum(axis=0),
                       (pair & before & ~h).sum(axis=0), (pair & before & h).sum(axis=0)])
    counts = np.asarray(counts, dtype="float64").transpose(0, 2, 1)[:, has].reshape(-1, 4)   # (keys x P, 4)
    n_series = int(has.sum())
    out = pd.DataFrame({
        "portfolio_id": _str_column(np.asarray(pids)[has], np.tile(np.arange(n_series), len(keys))),
        "method": _str_column([m for m, _ in keys], np.repeat(np.arange(len(keys)), n_series)),
        "confidence": np.repeat([c for _, c in keys], n_series),
        "n_days": np.concatenate([scored[key].sum(axis=0)[has] for key in keys]).astype("int64"),
        "exceptions": np.concatenate([(hits[key] & scored[key]).sum(axis=0)[has] for key in keys]).astype("int64"),
        "window_start": np.tile(dates[first[has]], len(keys)), "window_end": np.tile(dates[last[has]], len(keys)),
    })
    return _coverage_tests(out, counts, as_of)


@dataclass(frozen=True)
class _Scenarios:
    """A scenario method's backtest windows (F, N, A), as the losses need them: the negated returns transposed
    (F, A, N) with 0 in the padding rows (before the history starts), the padding (F, N) and the covariance of the
    valid rows (F, A, A)."""
    neg_w: np.ndarray
    pad: np.ndarray
    cov: np.ndarray
    unscaled: np.ndarray | None = None   # (F, A) filtered: the window holds a move without volatility (filtered.unscaled)

    @classmethod
    def of(cls, w: np.ndarray) -> _Scenarios:
        """From the windows w (F, N, A), NaN rows padding."""
        pad = np.isnan(w).any(axis=2)
        return cls(np.ascontiguousarray(np.swapaxes(np.where(pad[..., None], 0.0, -w), 1, 2)), pad, var.covariance(w))

    @classmethod
    def rolling(cls, x: np.ndarray, f: np.ndarray, n: int, scale: np.ndarray | None = None,
                unscaled: np.ndarray | None = None) -> _Scenarios:
        """The windows of the rows f-n .. f-1 of x (T, A) (rows before 0 and NaN rows padding), each day's scaled
        by scale (F, A) if given (FHS: residuals to the day's volatilities): as `of` of those windows, built in
        one copy from the series and with the running-sum covariance (`var.rolling_covariance`; a scaled
        window's is s_a s_b cov(x)); unscaled (T, A): the rows whose residual has no value, to `unscaled` (F, A)."""
        valid = ~np.isnan(x).any(axis=1)
        padded = np.vstack([np.zeros((n - 1, x.shape[1])), np.where(valid[:, None], x, 0.0)])
        neg_w = np.ascontiguousarray(sliding_window_view(padded, n, axis=0)[f - 1])    # (F, A, N)
        np.negative(neg_w, out=neg_w)
        cov = var.rolling_covariance(x, f - 1, n)
        if scale is not None:
            neg_w *= scale[:, :, None]
            cov *= scale[:, :, None] * scale[:, None, :]
        pad = ~sliding_window_view(np.r_[np.zeros(n - 1, dtype=bool), valid], n)[f - 1]
        if unscaled is not None:
            unscaled = sliding_window_view(np.vstack([np.zeros((n - 1, x.shape[1]), dtype=bool), unscaled]), n,
                                           axis=0)[f - 1].any(axis=-1)
        return cls(neg_w, pad, cov, unscaled)


def _backtest_scenarios(asset_ret: np.ndarray, f: np.ndarray, n: int, sig: dict) -> dict[str, _Scenarios]:
    """Each scenario method's windows for the forecast days f: the N returns of days f-N+1 .. f (hist), or the
    residuals up to f rescaled to the volatility forecast for f+1 (filtered; volatilities from data up to f)."""
    out = {"hist": _Scenarios.rolling(asset_ret, f, n)}
    for method in FILTERED:
        s = sig.get(f"{method}_backtest", sig[method])
        out[method] = _Scenarios.rolling(filtered.standardised(asset_ret, s), f, n, s[f],
                                         filtered.unscaled(asset_ret, s))
    return out


def _valid(held: np.ndarray, forecast: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Backtest days that count: a book held and a finite VaR and ES forecast."""
    return held & np.isfinite(forecast[0]) & np.isfinite(forecast[1])


def _scenario_backtest(method: str, sc: _Scenarios, expo: np.ndarray, held: np.ndarray, rng: np.random.Generator,
                       params: RiskParams, z2_null: dict) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """VaR/ES forecasts {(method, c): (var (F, P), es (F, P))} of a scenario method (its windows `sc`, exposures
    expo (F, P, A)) and, into z2_null, its Z2 paths (M, P) per confidence. A Z2 path draws on each day a scenario
    uniformly among the day's valid ones, as a rank shared by all portfolios (each portfolio's own loss of that
    rank); only ranks among the `tail_rows` largest can exceed VaR, so only those draws are counted."""
    f_len, n = sc.pad.shape
    p = expo.shape[1]
    n_day = n - sc.pad.sum(axis=1)                                         # (F,) valid scenarios per day
    k = var.tail_rows(n, min(BACKTEST_CONFIDENCES))
    rank = np.floor(rng.random((params.es_simulations, f_len)) * n_day).astype(np.int64)
    path, day = np.nonzero(rank >= n_day - k)                              # the draws among the day's k largest
    slot = rank[path, day] - n_day[day] + k                                # their place among them
    draws = sparse.csr_matrix((np.ones(len(path)), (path, day * k + slot)), shape=(len(rank), f_len * k))
    out = {(method, c): (np.empty((f_len, p)), np.empty((f_len, p))) for c in BACKTEST_CONFIDENCES}
    nulls = {c: np.empty((len(rank), p)) for c in BACKTEST_CONFIDENCES}
    step = max(1, BACKTEST_CELLS // (f_len * n))
    counts = np.broadcast_to(n_day[:, None], (f_len, p))
    for lo in range(0, p, step):
        cols = slice(lo, lo + step)
        losses = expo[:, cols] @ sc.neg_w                                  # (F, Pc, N), scenarios last
        if sc.pad.any():
            np.copyto(losses, -np.inf, where=sc.pad[:, None, :])
        top = var.loss_tail(losses, k)
        # a book exposed to a move the filter cannot scale has no forecast that day (uncomputable, not scored)
        unknown = None if sc.unscaled is None else ((expo[:, cols] != 0) & sc.unscaled[:, None, :]).any(axis=-1)
        for c, (v, e) in var.var_es_from_tail(top, counts[:, cols], BACKTEST_CONFIDENCES, losses).items():
            if unknown is not None:
                v[unknown], e[unknown] = np.nan, np.nan
            out[(method, c)][0][:, cols], out[(method, c)][1][:, cols] = v, e
            nulls[c][:, cols] = es_backtest.z2_null_drawn(draws, top, v, e, 1 - c, _valid(held[:, cols], (v, e)))
    z2_null.update({(method, c): z for c, z in nulls.items()})
    return out


def _tail_backtest(sc: _Scenarios, expo: np.ndarray, held: np.ndarray, sigma: np.ndarray, rng: np.random.Generator,
                   params: RiskParams, z2_null: dict) -> dict[tuple[str, float], tuple[np.ndarray, np.ndarray]]:
    """Forecasts of the tail methods (etl.risk.tails) and into z2_null their Z2 paths. The forecast days are cut in
    blocks of `tail_refit_days`; in each block a portfolio's models are fitted once, to its historical scenario
    losses on the block's first day it holds something (its refit day r, all refits of a chunk in one vectorised
    fit), and on the block's day t the forecast is that model rescaled to the day's loss sd sigma_t (exact every
    day): VaR_t = VaR_r sigma_t / sigma_r, ES alike; a refit day without spread (sigma_r 0) rescales to nothing
    (NaN) unless sigma_t is 0 too. A Z2 path draws on each day one uniform U shared by all portfolios, the day's
    loss being each portfolio's model quantile at U (tails.tail_quantiles); the rescaling cancels in loss / ES, so
    a block's draws are scored with its fitted model; only U above the lowest confidence can exceed VaR (the
    quantiles increase), so only those are evaluated."""
    f_len, p = held.shape
    block = np.arange(f_len) // max(1, params.tail_refit_days)
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    first = np.minimum.reduceat(np.where(held, np.arange(f_len)[:, None], f_len), starts, axis=0)   # (B, P)
    refit = np.where(first < f_len, first, starts[:, None])
    cells = [(d, np.flatnonzero(refit[block[d]] == d)) for d in np.unique(refit)]      # each (block, portfolio) once
    losses = np.concatenate([np.where(sc.pad[d], np.nan, var.exposed_losses(expo[d, ports], sc.neg_w[d])) for d, ports in cells])
    at = (np.concatenate([np.full(len(ports), block[d]) for d, ports in cells]),
          np.concatenate([ports for _, ports in cells]))                  # the (block, portfolio) of each fit
    sigma_r = sigma[refit, np.arange(p)][block]                           # (F, P) the loss sd on the refit day
    with np.errstate(invalid="ignore", divide="ignore"):
        rescale = np.where(sigma_r > 0, sigma / np.where(sigma_r > 0, sigma_r, 1.0), np.where(sigma > 0, np.nan, 1.0))
    u = rng.random((params.es_simulations, f_len))
    day, path = np.nonzero(u.T > min(BACKTEST_CONFIDENCES))               # the draws in day order
    draws = sparse.csr_matrix((np.ones(len(path)), (path, np.arange(len(path)))), shape=(len(u), len(path)))
    bounds = np.searchsorted(day, np.r_[starts, f_len])                  # each block's draws
    out, nulls = {}, {}
    for method in tails.METHODS:
        fitted = tails.fit(method, losses)
        fit = tails.TailFit(method, {k: _scatter(at, v, (starts.size, p)) for k, v in fitted.params.items()})
        q = np.concatenate([tails.tail_quantiles(fit.take(b), u[path[lo:hi], day[lo:hi]])
                            for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))])   # (D, P)
        for c in BACKTEST_CONFIDENCES:
            v_r, e_r = fit.var_es(c)                                      # (B, P)
            v, e = out[(method, c)] = rescale * v_r[block], rescale * e_r[block]
            valid = _valid(held, (v, e))
            term = np.zeros_like(q)
            for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
                with np.errstate(invalid="ignore"):
                    hit = valid[day[lo:hi]] & (q[lo:hi] > v_r[b])
                term[lo:hi] = es_backtest.exceedance_ratio(q[lo:hi], e_r[b], hit)
            nulls[(method, c)] = es_backtest.z2_from_sums(np.asarray(draws @ term), valid.sum(axis=0), 1 - c)
    z2_null.update(nulls)
    return out


def _scatter(at: tuple[np.ndarray, np.ndarray], values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An array of `shape` holding values[i] at (at[0][i], at[1][i]) (every place is given one)."""
    out = np.empty(shape)
    out[at] = values
    return out


def backtest_summary(bt: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per portfolio x method x confidence: exceptions, Kupiec, Christoffersen, conditional coverage and
    the Basel traffic light over the backtest window; only the days with a VaR forecast count, as in
    `_series_summary`."""
    if bt.empty:
        return pd.DataFrame()
    keys = ["portfolio_id", "method", "confidence"]
    scored = np.isfinite(bt["var_forecast"].to_numpy(dtype="float64"))
    g = bt[[*keys, "as_of_date"]].assign(scored=scored, hit=bt["is_exception"].to_numpy(dtype=bool) & scored
                                         ).groupby(keys)               # only the columns it needs
    out = g.agg(n_days=("scored", "sum"), exceptions=("hit", "sum"),
                window_start=("as_of_date", "min"), window_end=("as_of_date", "max")).reset_index()
    # Christoffersen: transition counts of consecutive scored days within each series, all series at once
    series = g.ngroup().to_numpy()                                         # out's row of each bt row
    order = np.lexsort((bt["as_of_date"].to_numpy(), series))             # each series' days in order
    order = order[scored[order]]
    hits, series = bt["is_exception"].to_numpy()[order], series[order]
    same = np.r_[False, series[1:] == series[:-1]]                        # consecutive days of one series
    prev, cur = hits[:-1][same[1:]], hits[1:][same[1:]]
    sid = series[1:][same[1:]]
    code = 4 * sid + 2 * prev.astype(int) + cur.astype(int)
    counts = np.bincount(code, minlength=4 * len(out)).reshape(-1, 4).astype("float64")   # n00, n01, n10, n11
    return _coverage_tests(out, counts, as_of)


def _coverage_tests(out: pd.DataFrame, counts: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
    """The summary's statistics from each series' n_days, exceptions, confidence and transition counts (K, 4)."""
    lr_ind, p_ind = backtest.christoffersen_counts(*counts.T)
    conf = out["confidence"].to_numpy()
    lr_pof, p_pof = backtest.kupiec(out["n_days"], out["exceptions"], conf)
    lr_cc, p_cc = backtest.conditional_coverage(lr_pof, lr_ind)
    out["expected_exceptions"] = out["n_days"] * (1 - conf)
    out["kupiec_lr"], out["kupiec_p"] = lr_pof, p_pof
    out["christoffersen_ind_lr"], out["christoffersen_ind_p"] = lr_ind, p_ind
    out["cc_lr"], out["cc_p"] = lr_cc, p_cc
    out["traffic_light"] = backtest.traffic_light(out["exceptions"], out["n_days"], conf)
    out.insert(1, "as_of_date", as_of)
    return out


def model_comparison(summary: pd.DataFrame, es_tests: pd.DataFrame) -> pd.DataFrame:
    """One row per portfolio x method x confidence: the VaR backtests (Kupiec, Christoffersen independence,
    traffic light) and the ES backtests (Z2 p-value as es_test_p, McNeil-Frey exceedance residuals), each
    pass_* True when its p-value is at least TEST_SIZE (the light: green or yellow; exceedance residuals with fewer than
    2 exceedances: nothing to reject, a pass); `passes` = all of them."""
    if summary.empty:
        return pd.DataFrame()
    out = summary.merge(es_tests, on=["portfolio_id", "method", "confidence"], how="left", validate="1:1")
    out["christoffersen_p"] = out["christoffersen_ind_p"]
    out["es_test_p"] = out["z2_p"]
    out["pass_kupiec"] = out["kupiec_p"] >= TEST_SIZE
    out["pass_christoffersen"] = out["christoffersen_p"] >= TEST_SIZE
    out["pass_traffic_light"] = out["traffic_light"].isin(["green", "yellow"])   # no light (no scored day): no pass
    out["pass_z2"] = out["z2_p"] >= TEST_SIZE
    out["pass_exceedance_residual"] = ~(out["exceedance_residual_p"] < TEST_SIZE)
    tests = ["pass_kupiec", "pass_christoffersen", "pass_traffic_light", "pass_z2", "pass_exceedance_residual"]
    out["passes"] = out[tests].all(axis=1)
    return out[["portfolio_id", "as_of_date", "method", "confidence", "n_days", "exceptions", "expected_exceptions",
                "kupiec_p", "christoffersen_p", "cc_p", "traffic_light", "es_test_p", "z2", "z2_p",
                "exceedance_residual_n", "exceedance_residual_mean", "exceedance_residual_t",
                "exceedance_residual_p", *tests, "passes", "window_start", "window_end"]]


LIMITS_CHECKED = ("var_limit", "var_limit_metric", "concentration_limit", "drawdown_limit")   # recorded on risk_metrics as checked_<name>


def limit_breaches(risk: pd.DataFrame, portfolios: pd.DataFrame) -> pd.DataFrame:
    """Every limit a portfolio breaches on the as-of day: var (the metric named by var_limit_metric, base-currency
    amount), concentration (largest asset share of gross exposure) and drawdown (|drawdown_from_peak|: today's fall
    from the running peak over the lookback, as intraday checks it, versus a positive fraction).

    `breach_kind` is "exceeded" (value > limit) or "uncomputable": the metric is NaN or infinite, so the limit
    cannot be shown to hold and counts as breached (value NaN: unknown), never as passed. A portfolio holding
    nothing (gross exposure 0) breaches nothing: it has no largest asset, and its VaR and drawdown are 0. A NaN
    limit (empty in portfolios.csv) is no limit: nothing to breach.
    """
    m = risk.merge(portfolios[["portfolio_id", "var_limit", "concentration_limit", "drawdown_limit",
                               "var_limit_metric"]], on="portfolio_id")
    metric_cols = sorted(set(m["var_limit_metric"]))
    pick = pd.Index(metric_cols).get_indexer(m["var_limit_metric"])
    var_value = pd.Series(m[metric_cols].to_numpy(dtype="float64")[np.arange(len(m)), pick] if len(m) else [],
                          dtype="float64")
    checks = [
        ("var", m["var_limit_metric"], var_value, m["var_limit"]),
        ("concentration", "concentration_pct", m["concentration_pct"], m["concentration_limit"]),
        ("drawdown", DRAWDOWN_METRIC, -m["drawdown_from_peak"], m["drawdown_limit"]),
    ]
    empty = (m["gross_exposure"] == 0).to_numpy()            # NaN gross (an unpriced holding) is not empty
    rows = []
    for limit_type, metric, value, limit in checks:
        df = pd.DataFrame({"portfolio_id": m["portfolio_id"], "as_of_date": m["as_of_date"],
                           "limit_type": limit_type, "metric": metric, "value": value.to_numpy(),
                           "limit_value": limit.to_numpy(), "base_currency": m["base_currency"]})
        finite = np.isfinite(df["value"].to_numpy(dtype="float64"))
        df["breach_kind"] = np.where(finite, "exceeded", "uncomputable")
        df.loc[~finite, "value"] = np.nan
        rows.append(df[df["limit_value"].notna() & ((~finite & ~empty) | (df["value"] > df["limit_value"]))])
    out = pd.concat(rows, ignore_index=True)
    out["utilisation"] = out["value"] / out["limit_value"]
    return out


def _drawdown_rows(mdd: drawdown.MaxDrawdown, ids, entity_type: str, dd_days: pd.DatetimeIndex,
                   as_of) -> pd.DataFrame:
    has = mdd.max_drawdown < 0
    date_of = np.asarray(dd_days)
    return pd.DataFrame({
        "entity_type": entity_type, "entity_id": list(ids), "as_of_date": as_of,
        "max_drawdown": mdd.max_drawdown,
        "peak_date": pd.Series(np.where(has, date_of[mdd.peak], np.datetime64("NaT"))),
        "trough_date": pd.Series(np.where(has, date_of[mdd.trough], np.datetime64("NaT"))),
        "recovery_date": pd.Series(np.where(has & (mdd.recovery >= 0), date_of[np.maximum(mdd.recovery, 0)],
                                            np.datetime64("NaT"))),
        "window_start": dd_days[0], "window_end": dd_days[-1],
    })


def asset_tables(closes: pd.DataFrame, rates: dict[str, np.ndarray], quote_ccy: dict[str, str], n_ret: int,
                 hist_start: int, params: RiskParams, has_bar: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Per product (in its own quote currency): asset_risk, drawdowns, daily anomalies; correlations of USD returns.
    has_bar (`bar_days`; None: every close is a bar's): the daily anomalies score only the returns of days with a
    bar on the day and the day before, a carried close is no price move (and a move across a gap no one-day move)."""
    products = list(closes.columns)
    days = closes.index
    as_of = days[-1]
    px = closes.to_numpy()
    r = risk_returns.simple_returns(px)
    window = r[-n_ret:]
    worst = window.argmin(axis=0)
    mdd = drawdown.max_drawdown(window)
    asset = pd.DataFrame({
        "product_id": products, "as_of_date": as_of, "quote_currency": [quote_ccy.get(p, "") for p in products],
        "close": px[-1], "daily_return": r[-1], "log_return": risk_returns.log_returns(px[-2:])[0],
        **{m.name: getattr(risk_returns, m.function)(r, m.window, params.annualization_days)
           for m in measures.series_measures("asset")},
        "vol_ewma": risk_returns.ewma_vol(window, params.ewma_lambda, params.annualization_days),
        "max_drawdown": mdd.max_drawdown,
        "worst_daily_return": window[worst, np.arange(len(products))],
        "worst_daily_return_date": days[-n_ret:][worst],
        "lookback_days": n_ret,
    })
    usd = px * np.column_stack([rates.get(quote_ccy.get(p, "USD"), np.ones(len(days))) for p in products])
    corr = np.atleast_2d(np.corrcoef(risk_returns.simple_returns(usd)[-n_ret:], rowvar=False))  # 1 product: a scalar
    i, j = np.triu_indices(len(products), k=1)
    correlations = pd.DataFrame({"product_id_a": np.asarray(products)[i], "product_id_b": np.asarray(products)[j],
                                 "as_of_date": as_of, "correlation": corr[i, j], "n_obs": n_ret,
                                 "return_currency": "USD"})
    daily = r
    if has_bar is not None:
        seen = has_bar.reindex(index=days, columns=products, fill_value=False).to_numpy()
        daily = np.where(seen[1:] & seen[:-1], r, np.nan)                # no daily return: skipped, never 0
    z, how = anomalies.robust_z(daily, params.anomaly_window)
    flagged = np.abs(np.nan_to_num(z)) > params.anomaly_threshold
    flagged[: max(hist_start - 1, 0)] = False                             # only the recent (history) window
    ti, ai = np.nonzero(flagged)
    daily_anoms = pd.DataFrame({"product_id": np.asarray(products)[ai], "price_date": days[ti + 1],
                                "as_of_date": as_of, "return_value": r[ti, ai], "robust_z": z[ti, ai],
                                "scale_method": how[ti, ai], "window": params.anomaly_window,
                                "threshold": params.anomaly_threshold})
    return {"asset_risk": asset, "correlations": correlations, "anomalies_daily": daily_anoms,
            "drawdowns": _drawdown_rows(mdd, products, "asset", days[-n_ret - 1:], as_of)}


def intraday_anomalies(bars_5m: pd.DataFrame | None, as_of: pd.Timestamp, params: RiskParams) -> pd.DataFrame:
    """Robust z-scores of 5-minute close-to-close returns; rows flagged on the as-of day. Each product's return is
    taken between its consecutive bars (a gap spans the missing buckets); the window is the previous
    `anomaly_window` buckets of the grid (missing ones skipped)."""
    cols = ["product_id", "bucket_start", "as_of_date", "return_value", "robust_z", "scale_method", "close",
            "window", "threshold"]
    if bars_5m is None or bars_5m.empty:  # typed like the non-empty result so the file's schema never changes
        return pd.DataFrame({c: [] for c in cols}).astype({
            "product_id": "str", "bucket_start": "datetime64[us, UTC]", "as_of_date": "datetime64[ns]",
            "scale_method": "str", "window": "int64"})
    bars = bars_5m.sort_values(["product_id", "bucket_start"])
    ret = bars.groupby("product_id")["close"].pct_change()
    wide = bars.assign(ret=ret).pivot_table(index="bucket_start", columns="product_id", values="ret",
                                            aggfunc="last", dropna=False)
    # the full 5-minute grid: a bucket no product has (an outage) still takes its place in the window
    wide = wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="5min"))
    wide_close = bars.pivot_table(index="bucket_start", columns="product_id", values="close", aggfunc="last")
    wide_close = wide_close.reindex(index=wide.index, columns=wide.columns)
    z, how = anomalies.robust_z(wide.to_numpy(), params.anomaly_window)
    bucket_day = wide.index.tz_convert("UTC").normalize().tz_localize(None) if wide.index.tz is not None \
        else wide.index.normalize()
    on_day = np.asarray(bucket_day == as_of)[:, None]
    flagged = (np.abs(np.nan_to_num(z)) > params.anomaly_threshold) & on_day
    ti, ai = np.nonzero(flagged)
    return pd.DataFrame({"product_id": wide.columns.to_numpy()[ai], "bucket_start": wide.index[ti],
                         "as_of_date": as_of, "return_value": wide.to_numpy()[ti, ai], "robust_z": z[ti, ai],
                         "scale_method": how[ti, ai], "close": wide_close.to_numpy()[ti, ai],
                         "window": params.anomaly_window, "threshold": params.anomaly_threshold})

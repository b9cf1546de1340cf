"""Daily PnL explained by the factor model (market, liquidity, volatility, momentum) and the residual.

For portfolio p and day D (docs/risk_conventions.md, "PnL attribution"):
- exposure[p, D, f] = sum over products a of market_value[p, a, D-1] (base currency B) x (beta[a, f] -
  beta[B-USD, f]) of the factor model's daily snapshot of D-1 (the betas known at the start of D: no look-ahead).
  The model explains USD returns; a product's return in B is its USD return less B's (to first order), so B's own
  betas come off (0 for USD; a B book holding B-USD has no exposure). Without betas of B-USD that day the exposure
  is unknown: the book's PnL is all residual;
- factor_return[D, f] = prod over D's buckets of (1 + r_f) - 1 (the factor's compounded return over the UTC day),
  used only when the factor model's grid has finished D (it has a snapshot dated D) and every bucket of D has a
  return of f (a gap's move is in the day's PnL but in no bucket: no return, not the buckets left);
- explained_pnl = exposure x factor_return; residual = daily_pnl - sum of the explained, so the rows of one
  portfolio and day sum exactly to pnl_daily.daily_pnl. A product without betas adds nothing to the exposures (its
  PnL falls in the residual); nor does a position whose close (or a `<CCY>-USD` close converting it) is carried
  forward on D or D-1 (a halt: its PnL is 0, or the move across the gap); a day without factor data has only the
  residual row.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from etl.factors.factor_model import REGRESSION_FACTORS
from etl.risk import valuation
from etl.risk.engine import release_freed_memory, snapshot_arrays, usd_rates

log = logging.getLogger(__name__)

RESIDUAL = "residual"
PORTFOLIO_CHUNK = 100       # portfolios valued at once (memory bound; the rows do not depend on it)
COLUMNS = ["portfolio_id", "as_of_date", "factor_name", "exposure", "factor_return", "explained_pnl",
           "base_currency"]


def daily_factor_returns(factor_returns: pd.DataFrame, snapshot_days: pd.DatetimeIndex,
                         factors: tuple[str, ...] = REGRESSION_FACTORS, frequency_s: int | None = None) -> pd.DataFrame:
    """UTC days x factors: compounded return of each finished day (a day in `snapshot_days`), NaN otherwise.
    factor_returns: factor_name, bucket_start (UTC), factor_return (one row per bucket with a defined return).
    frequency_s: the grid's bucket length (FACTOR_FREQUENCY_S): a day missing a bucket's return of a factor (an
    outage: no return there nor at the bucket after it) has none for that factor, since the move across the gap
    is in the day's PnL but in no bucket; None: the buckets given are the day's."""
    fr = factor_returns[factor_returns["factor_name"].isin(factors)]
    day = pd.to_datetime(fr["bucket_start"], utc=True).dt.tz_localize(None).dt.normalize()
    by = np.log1p(fr["factor_return"].astype("float64")).groupby([day, fr["factor_name"]])
    daily = np.expm1(by.sum()).unstack("factor_name").reindex(columns=list(factors))
    if frequency_s is not None:
        buckets = by.count().unstack("factor_name").reindex(index=daily.index, columns=list(factors))
        daily[~(buckets >= 86400 // frequency_s)] = np.nan
    daily.index.name = None
    daily[~daily.index.isin(snapshot_days)] = np.nan
    return daily


def explain(pnl: np.ndarray, market_value_prev: np.ndarray, beta: np.ndarray,
            factor_return: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pnl (N,) of N portfolio-days; market_value_prev (N, A) base currency at the previous close; beta (N, A, F)
    valid at the start of the day (NaN = no estimate); factor_return (N, F) of the day (NaN = none).

    Returns exposure (N, F), explained (N, F), defined (N, F) bool (the day has the factor's return and a position
    held at the previous close has a beta on it) and residual (N,) = pnl - sum of the defined explained PnL."""
    has_beta = np.isfinite(beta)
    exposure = np.einsum("na,naf->nf", market_value_prev, np.where(has_beta, beta, 0.0))
    defined = np.isfinite(factor_return) & (has_beta & (market_value_prev != 0)[..., None]).any(axis=1)
    explained = np.where(defined, exposure * np.where(defined, factor_return, 0.0), 0.0)
    return exposure, explained, defined, pnl - explained.sum(axis=1)


def attribution_table(closes: pd.DataFrame, quote_ccy: dict[str, str], portfolios: pd.DataFrame,
                      positions: pd.DataFrame, pnl_daily: pd.DataFrame, factor_returns: pd.DataFrame,
                      exposures: pd.DataFrame, carried: pd.DataFrame | None = None,
                      frequency_s: int | None = None) -> pd.DataFrame:
    """pnl_attribution rows (COLUMNS) for every row of pnl_daily with a finite daily_pnl.

    closes, quote_ccy, portfolios, positions: as etl.risk.engine.compute_tables takes them; pnl_daily: its output.
    factor_returns: the factor model's bucket returns; exposures: its daily snapshots (product_id, factor_name,
    as_of_date, beta), both for the days of pnl_daily and the day before. carried: days x products, True where
    the close is carried forward (no daily bar, or stuck: etl.risk.runner's has_bar negated; None: none is): a
    position whose close or converting `<CCY>-USD` close is carried on D or D-1 has no exposure on D (its PnL, 0
    or a move across the gap, is residual). frequency_s: the factor grid's (FACTOR_FREQUENCY_S), for
    `daily_factor_returns`: a day missing a bucket has no factor return.
    """
    pnl_daily = pnl_daily[np.isfinite(pnl_daily["daily_pnl"].to_numpy(dtype="float64"))]
    if pnl_daily.empty:
        return pd.DataFrame(columns=COLUMNS)
    days = closes.index
    held = sorted(positions["product_id"].unique())
    pids = list(portfolios["portfolio_id"])
    base_of = dict(zip(portfolios["portfolio_id"], portfolios["base_currency"], strict=True))
    rates = usd_rates(closes, {quote_ccy[p] for p in held} | set(base_of.values()))

    t = days.get_indexer(pd.to_datetime(pnl_daily["as_of_date"]))
    p = pd.Index(pids).get_indexer(pnl_daily["portfolio_id"])
    if (t < 1).any() or (p < 0).any():
        raise ValueError("pnl_daily names a day or portfolio the closes or the book do not have")
    snap = pd.to_datetime(exposures["as_of_date"]).dt.tz_localize(None)
    factors = list(REGRESSION_FACTORS)
    beta_wide = (exposures.assign(as_of_date=snap).pivot_table(index=["as_of_date", "product_id"],
                                                               columns="factor_name", values="beta", aggfunc="last")
                 .reindex(columns=factors))
    full = pd.MultiIndex.from_product([days, held])
    beta = beta_wide.reindex(full).to_numpy().reshape(len(days), len(held), len(factors))   # (T, A, F), day = snapshot
    # the betas of each base currency's USD price (0 for USD), taken off the products' (C, T, F): PnL is in base
    currencies = sorted(set(base_of.values()))
    base_products = [f"{c}-USD" for c in currencies]
    base_beta = np.array(beta_wide.reindex(pd.MultiIndex.from_product([days, base_products])).to_numpy()
                         .reshape(len(days), len(currencies), len(factors)).transpose(1, 0, 2))
    base_beta[[c == "USD" for c in currencies]] = 0.0
    currency_of = pd.Index(currencies).get_indexer([base_of[q] for q in pids])     # portfolio -> its currency
    if len(exposures) and (unknown := [b for b in base_products if b != "USD-USD"
                                       and b not in set(exposures["product_id"])]):
        log.warning("pnl attribution: the factor model has no betas of %s: the PnL of books in %s is all residual "
                    "(add the pair to PIPELINE_PRODUCTS)", ", ".join(unknown),
                    ", ".join(b.removesuffix("-USD") for b in unknown))
    daily = daily_factor_returns(factor_returns, pd.DatetimeIndex(snap.unique()),
                                 frequency_s=frequency_s).reindex(days).to_numpy()
    # a carried close is no price move, the move across a gap no day's: (T, A) per product (own or quote's pair),
    # (C, T) per base currency; a position carried on D or D-1 is left out of D's exposure
    flag = (carried.reindex(index=days, columns=closes.columns, fill_value=False).astype(bool) if carried is not None
            else pd.DataFrame(False, index=days, columns=closes.columns))

    def flag_of(product: str) -> np.ndarray:
        return flag[product].to_numpy() if product in flag.columns else np.zeros(len(days), dtype=bool)
    product_carried = np.column_stack([flag_of(a) | (flag_of(f"{quote_ccy[a]}-USD") if quote_ccy[a] != "USD"
                                                     else False) for a in held]) if held else \
        np.zeros((len(days), 0), dtype=bool)
    base_carried = np.array([flag_of(f"{c}-USD") if c != "USD" else np.zeros(len(days), dtype=bool)
                             for c in currencies]).reshape(len(currencies), len(days))

    pnl = pnl_daily["daily_pnl"].to_numpy(dtype="float64")
    exposure, explained = np.empty((len(pnl), len(factors))), np.empty((len(pnl), len(factors)))
    defined, residual = np.empty((len(pnl), len(factors)), dtype=bool), np.empty(len(pnl))
    quote_usd = np.column_stack([rates[quote_ccy[a]] for a in held])[:, None, :]          # (T, 1, A)
    for lo in range(0, len(pids), PORTFOLIO_CHUNK):               # memory: (T, P, A) and (rows, A, F) per chunk
        chunk = pids[lo:lo + PORTFOLIO_CHUNK]
        rows = np.flatnonzero((p >= lo) & (p < lo + len(chunk)))
        qty, cost = snapshot_arrays(positions[positions["portfolio_id"].isin(chunk)], chunk, held, days)
        fx = quote_usd / np.column_stack([rates[base_of[q]] for q in chunk])[:, :, None]   # quote -> base, (T, P, A)
        mv = valuation.value_positions(qty, cost, closes[held].to_numpy(), fx).market_value
        net_beta = beta[t[rows] - 1] - base_beta[currency_of[p[rows]], t[rows] - 1][:, None, :]   # (rows, A, F)
        tr, cr = t[rows], currency_of[p[rows]]
        gap = (product_carried[tr] | product_carried[tr - 1]
               | (base_carried[cr, tr] | base_carried[cr, tr - 1])[:, None])                     # (rows, A)
        parts = explain(pnl[rows], np.where(gap, 0.0, mv[tr - 1, p[rows] - lo]), net_beta, daily[tr])
        for whole, part in zip((exposure, explained, defined, residual), parts, strict=True):
            whole[rows] = part
        del qty, cost, fx, mv, net_beta, parts
        release_freed_memory()                                     # the chunk's arrays, not kept for the next
    n, f = exposure.shape
    keys = {"portfolio_id": pnl_daily["portfolio_id"].to_numpy(), "as_of_date": pnl_daily["as_of_date"].to_numpy(),
            "base_currency": pnl_daily["base_currency"].to_numpy()}
    explained_rows = pd.DataFrame({
        **{k: np.repeat(v, f) for k, v in keys.items()}, "factor_name": np.tile(factors, n),
        "exposure": exposure.ravel(), "factor_return": daily[t].ravel(), "explained_pnl": explained.ravel(),
    })[defined.ravel()]
    residual_rows = pd.DataFrame({**keys, "factor_name": RESIDUAL, "exposure": np.nan, "factor_return": np.nan,
                                  "explained_pnl": residual})
    return (pd.concat([explained_rows, residual_rows], ignore_index=True)
            .sort_values(["portfolio_id", "as_of_date", "factor_name"], kind="stable", ignore_index=True)[COLUMNS])

"""Liquidity-adjusted VaR: VaR 99% (historical) plus what liquidating the book would cost, from the recorded order
books (silver/liquidity_5m, etl/silver/liquidity.py). Conventions in docs/risk_conventions.md.

Per position (quantity q, market value MV in the portfolio's base currency, fx = base per quote) on day D:
- exogenous (spread) cost = 1/2 x s x |MV|, s = the `lvar_percentile` percentile of D's 5-minute time-weighted
  relative spreads of the product (the cost of crossing from mid to the touch in a wide-spread moment),
- endogenous (impact) cost = liquidate |q| against each 5-minute bucket's recorded book (a long sells into the
  bids, a short buys the asks), best level first: sum of fill x |level price - best price| x fx (beyond the touch;
  the spread cost pays mid -> touch); the cost of the day is the same percentile over D's buckets,
- absorbed share = the smallest, over D's buckets, of (recorded quantity on the side / |q|), capped at 1. A
  position larger than a recorded book is `exceeds_depth`: its impact counts the part the book absorbs, never an
  extrapolation beyond the deepest recorded level.
Per portfolio: spread_cost and impact_cost sum its positions; lvar_99 = var_99_hist + spread_cost + impact_cost.
A held product without a recorded book on D is named in `products_without_book` and left out of the costs
(`book_coverage` = the share of the gross exposure the costs cover); a portfolio none of whose products has a book
has no row.
A portfolio's `lvar_limit` (portfolios.csv, optional: empty = no limit) adds a `lvar` limit breach when lvar_99
exceeds it, as etl/risk/engine.limit_breaches reports the others. A book holding something whose lvar_99 does not
cover it all (NaN, a product without a book, a position beyond the recorded depth, or no row) cannot clear its limit:
an `uncomputable` breach, unless the part covered already exceeds it.
"""

from __future__ import annotations

import logging
from datetime import date

import numpy as np
import pandas as pd

from etl.lake import Lake
from etl.settings import Settings
from etl.silver import increments
from etl.silver.liquidity import LIQUIDITY_DIR
from etl.storage import Store

log = logging.getLogger(__name__)

BOOK_COLUMNS = ["bucket_start", "spread_bps", "bid_prices", "bid_quantities", "ask_prices", "ask_quantities"]


def walk_book(quantity: float, prices: np.ndarray, quantities: np.ndarray) -> tuple[float, float]:
    """Liquidate `quantity` (> 0) against one side, best first: (cost beyond the best price in quote currency,
    share absorbed in [0, 1])."""
    fills = np.minimum(quantities, np.maximum(quantity - np.concatenate([[0.0], np.cumsum(quantities)[:-1]]), 0.0))
    cost = float(np.sum(fills * np.abs(prices - prices[0]))) if len(prices) else 0.0
    return cost, min(1.0, float(fills.sum()) / quantity)


def position_costs(quantity: float, market_value: float, fx: float, books: pd.DataFrame,
                   percentile: float) -> dict:
    """spread_cost, impact_cost (base currency), absorbed_share, exceeds_depth of one position against one
    product's buckets of the day (see the module docstring)."""
    spread = np.percentile(books["spread_bps"].to_numpy(dtype=float), percentile) * 1e-4
    out = {"spread_cost": 0.5 * spread * abs(market_value), "impact_cost": 0.0, "absorbed_share": 1.0}
    if quantity == 0:
        return out | {"exceeds_depth": False}
    prices, sizes = ("bid_prices", "bid_quantities") if quantity > 0 else ("ask_prices", "ask_quantities")
    walks = [walk_book(abs(quantity), np.asarray(p, dtype=float), np.asarray(q, dtype=float))
             for p, q in zip(books[prices], books[sizes], strict=True)]
    out["impact_cost"] = float(np.percentile([c for c, _ in walks], percentile)) * fx
    out["absorbed_share"] = min(s for _, s in walks)
    return out | {"exceeds_depth": out["absorbed_share"] < 1.0}


def liquidity_tables(positions_valued: pd.DataFrame, risk_metrics: pd.DataFrame, books: pd.DataFrame,
                     percentile: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per portfolio, per position) liquidity risk of the as-of day. books: silver liquidity rows of the day with
    a product_id column."""
    by_product = dict(tuple(books.groupby("product_id"))) if len(books) else {}
    rows = []
    for r in positions_valued.itertuples(index=False):
        if r.product_id in by_product:
            rows.append({"portfolio_id": r.portfolio_id, "product_id": r.product_id, "as_of_date": r.as_of_date,
                         "quantity": r.quantity, **position_costs(r.quantity, r.market_value, r.fx_rate,
                                                                  by_product[r.product_id], percentile)})
    detail = pd.DataFrame(rows, columns=["portfolio_id", "product_id", "as_of_date", "quantity", "spread_cost",
                                         "impact_cost", "absorbed_share", "exceeds_depth"])
    var99 = risk_metrics.set_index("portfolio_id")["var_99_hist"]
    out = []
    for pid, held in positions_valued.groupby("portfolio_id", sort=True):
        costs = detail[detail["portfolio_id"] == pid]
        if costs.empty:
            continue
        gross = held["market_value"].abs().sum()
        covered = held.loc[held["product_id"].isin(by_product), "market_value"].abs().sum()
        spread, impact = float(costs["spread_cost"].sum()), float(costs["impact_cost"].sum())
        missing = sorted(set(held.loc[held["quantity"] != 0, "product_id"]) - set(by_product))
        out.append({"portfolio_id": pid, "as_of_date": held["as_of_date"].iloc[0],
                    "var_99_hist": float(var99.get(pid, np.nan)), "spread_cost": spread, "impact_cost": impact,
                    "lvar_99": float(var99.get(pid, np.nan)) + spread + impact,
                    "exceeds_depth": bool(costs["exceeds_depth"].any()),
                    "min_absorbed_share": float(costs["absorbed_share"].min()),
                    "book_coverage": float(covered / gross) if gross else 1.0,
                    "products_without_book": ",".join(missing) or None})
    return pd.DataFrame(out, columns=["portfolio_id", "as_of_date", "var_99_hist", "spread_cost", "impact_cost",
                                      "lvar_99", "exceeds_depth", "min_absorbed_share", "book_coverage",
                                      "products_without_book"]), detail


def lvar_breaches(portfolio: pd.DataFrame, positions_valued: pd.DataFrame, portfolios: pd.DataFrame,
                  base_of: dict[str, str]) -> pd.DataFrame:
    """limit_breaches rows of limit type `lvar` (see the module docstring) for the portfolios holding something."""
    holding = positions_valued.groupby("portfolio_id", sort=True)["as_of_date"].first().reset_index()
    m = (portfolios.loc[portfolios["lvar_limit"].notna(), ["portfolio_id", "lvar_limit"]]
         .merge(holding, on="portfolio_id")
         .merge(portfolio[["portfolio_id", "lvar_99", "book_coverage", "exceeds_depth"]], on="portfolio_id",
                how="left"))
    value = m["lvar_99"].to_numpy(dtype="float64")
    # the costs of the products with a book only, or of the part of a position the recorded book absorbs, are a
    # lower bound: it can exceed the limit, never clear it
    exceeded = np.isfinite(value) & (value > m["lvar_limit"].to_numpy(dtype="float64"))
    whole = (np.isfinite(value) & (m["book_coverage"].to_numpy(dtype="float64") >= 1.0)
             & ~m["exceeds_depth"].fillna(True).to_numpy(dtype=bool))
    out = pd.DataFrame({"portfolio_id": m["portfolio_id"], "as_of_date": m["as_of_date"], "limit_type": "lvar",
                        "metric": "lvar_99", "value": np.where(exceeded | whole, value, np.nan),
                        "limit_value": m["lvar_limit"], "base_currency": m["portfolio_id"].map(base_of),
                        "breach_kind": np.where(exceeded, "exceeded", "uncomputable")})
    out = out[exceeded | ~whole]
    return out.assign(utilisation=out["value"] / out["limit_value"])


def read_books(store: Store, products: list[str], day: date) -> pd.DataFrame:
    """The silver liquidity rows of `day` for `products` (those with a partition), with product_id: every product's
    from ONE version of the table (a liquidity build committing meanwhile is not half seen; the version is the one
    the run records and `risk --reproduce` reads again)."""
    frames, files = [], Lake.of(store).files(LIQUIDITY_DIR) or []
    for product in products:
        rel = next(iter(increments.files_of(files, LIQUIDITY_DIR, product, day.isoformat())), None)
        if rel is not None:
            df = store.read_parquet(rel, columns=BOOK_COLUMNS).to_pandas()
            frames.append(df.assign(product_id=product))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["product_id", *BOOK_COLUMNS])


def liquidity_risk(tables: dict[str, pd.DataFrame], portfolios: pd.DataFrame, as_of: date, settings: Settings,
                   store: Store) -> None:
    """Add `liquidity_risk` and `liquidity_positions` for `as_of` to the risk tables and its `lvar` breaches to
    `limit_breaches` (the runner's one call)."""
    positions = tables["positions_valued"]
    books = read_books(store, sorted(positions["product_id"].unique()), as_of)
    portfolio, detail = liquidity_tables(positions, tables["risk_metrics"], books, settings.lvar_percentile)
    if books.empty:
        log.info("liquidity risk: no recorded order book on %s (run python -m etl stream): no LVaR", as_of)
    tables["liquidity_risk"], tables["liquidity_positions"] = portfolio, detail
    base_of = dict(zip(portfolios["portfolio_id"], portfolios["base_currency"], strict=True))
    breaches = lvar_breaches(portfolio, positions, portfolios, base_of)
    if len(breaches):
        tables["limit_breaches"] = pd.concat([tables["limit_breaches"], breaches], ignore_index=True)

"""Portfolios and position snapshots (reference data for the risk engine), validated on load.

Files are CSV under `settings.reference_dir`: `portfolios.csv` and `positions.csv` (samples ship in
etl/reference_data/). Every row is checked; all problems found are reported in one ValidationError whose lines read
"<file>:<line>: <rule>: ..." and nothing is loaded when any rule fails.

Positions are snapshots: the holdings of a portfolio on day D are the rows of its latest snapshot with
as_of_date <= D (carry forward). A product absent from a later snapshot has been closed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from etl import measures
from etl.reference import DELISTED_ON, fail, load_instruments, read_reference_csv
from etl.settings import Settings, get_settings

PORTFOLIO_COLUMNS = ["portfolio_id", "name", "base_currency", "var_limit", "concentration_limit", "drawdown_limit"]
# optional column: which risk_metrics column the var_limit is compared with (any VaR the engine computes, default below)
DEFAULT_VAR_LIMIT_METRIC = "var_99_hist"
POSITION_COLUMNS = ["portfolio_id", "product_id", "as_of_date", "quantity", "avg_cost"]


class _Problems:
    """Collects '<file>:<line>: <rule>: detail' messages and raises them together."""

    def __init__(self, path: Path, lines: pd.Index) -> None:
        self.path, self.lines = path, lines  # lines: the file line of each row (read_reference_csv's index)
        self.items: list[tuple[int, str]] = []

    def add(self, mask: pd.Series, rule: str, detail) -> None:
        for i in np.flatnonzero(mask.to_numpy()):
            self.items.append((int(self.lines[i]), f"{rule}: {detail(int(i))}"))

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        self.items.sort()
        fail([f"{self.path}:{line}: {msg}" for line, msg in self.items], what)  # records them under collecting()


def _number(df: pd.DataFrame, col: str, problems: _Problems, optional: bool = False) -> pd.Series:
    """The column as float64; every cell must be a finite number, or empty (NaN) when `optional`."""
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    if optional:
        bad &= df[col] != ""
    problems.add(bad, "non-numeric", lambda i: f"{col}={df[col].iat[i]!r} is not a finite number"
                 + (" (leave it empty for no such limit)" if optional else ""))
    return values.astype("float64")


def convertible_currencies(instruments: pd.DataFrame) -> set[str]:
    """The currencies an amount can be converted from or to: USD, and each with a <CCY>-USD product (valuation
    multiplies or divides by its close; etl.risk.engine.usd_rates)."""
    return {"USD"} | set(instruments.loc[instruments["quote_currency"] == "USD", "base_currency"])


def load_portfolios(settings: Settings | None = None, instruments: pd.DataFrame | None = None) -> pd.DataFrame:
    """Portfolios with limits: portfolio_id, name, base_currency, var_limit (amount in base currency, compared with
    `var_limit_metric`), concentration_limit (fraction of gross exposure), drawdown_limit (positive fraction: breach
    when |drawdown_from_peak| exceeds it), var_limit_metric, lvar_limit (optional column: amount in base currency,
    compared with the liquidity-adjusted VaR lvar_99). An empty limit is NaN: the portfolio has no such limit.
    `instruments`: already loaded (etl.reference_set)."""
    settings = settings or get_settings()
    path = settings.reference_dir / "portfolios.csv"
    df = read_reference_csv(path, PORTFOLIO_COLUMNS)
    if "var_limit_metric" not in df.columns:
        df["var_limit_metric"] = DEFAULT_VAR_LIMIT_METRIC
    df["var_limit_metric"] = df["var_limit_metric"].replace("", DEFAULT_VAR_LIMIT_METRIC)
    problems = _Problems(path, df.index)
    problems.add(df["portfolio_id"] == "", "missing portfolio_id", lambda i: "portfolio_id is empty")
    problems.add(df["portfolio_id"].duplicated() & (df["portfolio_id"] != ""), "duplicate portfolio_id",
                 lambda i: f"{df['portfolio_id'].iat[i]!r} appears earlier in the file")
    instruments = load_instruments(settings) if instruments is None else instruments
    convertible = convertible_currencies(instruments)
    problems.add(~df["base_currency"].isin(convertible), "unknown base_currency",
                 lambda i: f"{df['base_currency'].iat[i]!r}; expected one of {sorted(convertible)}")
    # the VaR measures risk writes, in base currency as the limit (not var_99_hist_usd, a ranking figure)
    var_metrics = measures.var_columns("portfolio")
    problems.add(~df["var_limit_metric"].isin(var_metrics), "unknown var_limit_metric",
                 lambda i: f"{df['var_limit_metric'].iat[i]!r}; expected one of {var_metrics}")
    out = df[["portfolio_id", "name", "base_currency"]].copy()
    if "lvar_limit" not in df.columns:
        df["lvar_limit"] = ""
    for col in ("var_limit", "concentration_limit", "drawdown_limit", "lvar_limit"):
        out[col] = _number(df, col, problems, optional=True)
    for col in ("var_limit", "lvar_limit"):
        problems.add(out[col] <= 0, f"{col} <= 0", lambda i, c=col: f"{c}={df[c].iat[i]}")
    for col in ("concentration_limit", "drawdown_limit"):
        bad = (out[col] <= 0) | (out[col] > 1)
        problems.add(bad, f"{col} outside (0, 1]", lambda i, c=col: f"{c}={df[c].iat[i]} must be a fraction")
    problems.raise_if_any("portfolios")
    out["var_limit_metric"] = df["var_limit_metric"]
    return out.reset_index(drop=True)


def load_positions(settings: Settings | None = None, instruments: pd.DataFrame | None = None,
                   portfolios: pd.DataFrame | None = None) -> pd.DataFrame:
    """Position snapshots: portfolio_id, product_id, as_of_date (datetime64 at midnight, a UTC day), quantity
    (signed: negative = short), avg_cost (> 0, in the product's quote currency). Sorted by portfolio, date, product.
    `instruments`, `portfolios`: already loaded (etl.reference_set)."""
    settings = settings or get_settings()
    path = settings.reference_dir / "positions.csv"
    df = read_reference_csv(path, POSITION_COLUMNS)
    problems = _Problems(path, df.index)
    instruments = load_instruments(settings) if instruments is None else instruments
    products = set(instruments["product_id"])
    portfolios = set((load_portfolios(settings, instruments) if portfolios is None else portfolios)["portfolio_id"])
    problems.add(~df["portfolio_id"].isin(portfolios), "unknown portfolio",
                 lambda i: f"{df['portfolio_id'].iat[i]!r} is not in portfolios.csv")
    problems.add(~df["product_id"].isin(products), "unknown product",
                 lambda i: f"{df['product_id'].iat[i]!r} is not in the instrument master (instruments.csv)")
    # a held product's value reaches the base currency through <QUOTE>-USD, as a portfolio's base currency does
    quote = df["product_id"].map(instruments.set_index("product_id")["quote_currency"])
    problems.add(quote.notna() & ~quote.isin(convertible_currencies(instruments)), "unconvertible quote_currency",
                 lambda i: f"{df['product_id'].iat[i]} is quoted in {quote.iat[i]} and the instrument master has no "
                           f"{quote.iat[i]}-USD to convert it: add that product to instruments.csv")
    dates = pd.to_datetime(df["as_of_date"], format="%Y-%m-%d", errors="coerce")
    problems.add(dates.isna(), "unparsable date", lambda i: f"as_of_date={df['as_of_date'].iat[i]!r}; use YYYY-MM-DD")
    delisted_on = df["product_id"].map(instruments.set_index("product_id")[DELISTED_ON])
    problems.add(dates > delisted_on, "position outlives its instrument",
                 lambda i: f"{df['product_id'].iat[i]} was delisted on {delisted_on.iat[i]:%Y-%m-%d} (instruments.csv) "
                           f"but this snapshot of {df['as_of_date'].iat[i]} still holds it: drop the row or correct "
                           f"{DELISTED_ON}")
    quantity = _number(df, "quantity", problems)
    avg_cost = _number(df, "avg_cost", problems)
    problems.add(quantity == 0, "quantity = 0", lambda i: "a zero position is not a holding; omit the row")
    problems.add(avg_cost <= 0, "avg_cost <= 0", lambda i: f"avg_cost={df['avg_cost'].iat[i]} must be positive")
    with np.errstate(over="ignore"):
        basis = (quantity * avg_cost).abs()
    problems.add(quantity.notna() & avg_cost.notna() & ~np.isfinite(basis), "non-finite value",
                 lambda i: f"quantity * avg_cost = {df['quantity'].iat[i]} * {df['avg_cost'].iat[i]} overflows")
    dup = df.assign(_d=dates).duplicated(["portfolio_id", "product_id", "_d"]) & dates.notna()
    problems.add(dup, "duplicate key", lambda i: f"({df['portfolio_id'].iat[i]}, {df['product_id'].iat[i]}, "
                                                 f"{df['as_of_date'].iat[i]}) appears earlier in the file")
    problems.raise_if_any("positions")
    out = pd.DataFrame({
        "portfolio_id": df["portfolio_id"], "product_id": df["product_id"],
        "as_of_date": dates.astype("datetime64[ns]"), "quantity": quantity, "avg_cost": avg_cost,
    })
    return out.sort_values(["portfolio_id", "as_of_date", "product_id"], ignore_index=True)


def book_products(instruments: pd.DataFrame, portfolios: pd.DataFrame, positions: pd.DataFrame) -> list[str]:
    """The products a risk run needs a price for: every product held (sorted), then `<CCY>-USD` for each non-USD
    quote or base currency (conversions), e.g. ETH-BTC held -> ETH-BTC and BTC-USD."""
    quote = dict(zip(instruments["product_id"], instruments["quote_currency"], strict=True))
    held = sorted(set(positions["product_id"]))
    currencies = {quote[p] for p in held if p in quote} | set(portfolios["base_currency"])
    return list(dict.fromkeys(held + sorted(f"{c}-USD" for c in currencies if c != "USD")))

"""The historical scenario set the end-of-day run persists for the intraday revaluation (etl.risk.intraday).

Per base currency: the last N daily asset returns in that currency (N, A), their sample covariance (A, A), and
each portfolio's drawdown from its peak at the close, written with the other risk outputs (`SCENARIO_TABLES`) and
read back, as the engine held them, by `load_scenarios`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd

from etl import commits
from etl.risk import var

log = logging.getLogger(__name__)

SCENARIO_TABLES = ("scenario_returns", "scenario_covariance", "scenario_portfolios")
SCENARIO_MAX_DAYS_BACK = 31


# ---- what the end-of-day run persists -------------------------------------------------------------------------
def scenario_tables(as_of, scenario_days: pd.DatetimeIndex, window: np.ndarray, products: list[str], base: str,
                    pids: list[str], drawdown_from_peak: np.ndarray, params) -> dict[str, pd.DataFrame]:
    """The EOD inputs of the intraday revaluation for one base currency. window (N, A): the historical
    scenarios (asset returns in `base`, row i = the return of scenario_days[i]); drawdown_from_peak (P,): each
    portfolio's drawdown from its running peak over the lookback at the close (risk_metrics), which the intraday
    drawdown continues."""
    n, a = window.shape
    prods = np.asarray(products)
    cov = var.covariance(window)
    i, j = np.divmod(np.arange(a * a), a)
    return {
        "scenario_returns": pd.DataFrame({
            "base_currency": base, "as_of_date": as_of, "scenario_date": np.repeat(scenario_days.to_numpy(), a),
            "asset_index": np.tile(np.arange(a), n), "product_id": np.tile(prods, n), "asset_return": window.ravel()}),
        "scenario_covariance": pd.DataFrame({
            "base_currency": base, "as_of_date": as_of, "product_id_a": prods[i], "product_id_b": prods[j],
            "covariance": cov.ravel()}),
        "scenario_portfolios": pd.DataFrame({
            "portfolio_id": pids, "base_currency": base, "as_of_date": as_of,
            "drawdown": drawdown_from_peak, "lookback_days": n,
            "mc_scenarios": params.mc_scenarios, "mc_seed": params.mc_seed,
            "mc_distribution": params.mc_distribution, "mc_t_dof": params.mc_t_dof}),
    }


@dataclass
class ScenarioSet:
    """The last EOD run's scenario set, as the engine held it (arrays in the engine's product order)."""

    as_of: date
    products: list[str]
    windows: dict[str, np.ndarray]          # base currency -> (N, A) asset returns
    covariances: dict[str, np.ndarray]      # base currency -> (A, A)
    drawdown: pd.Series                     # portfolio_id -> drawdown from peak at the EOD close (<= 0)
    mc: tuple[int, int, str, float]         # scenarios, seed, distribution, t dof of the EOD Monte Carlo
    # base currency -> (N, A) True where the scenario rests on a carried-forward close (engine.carried_scenarios),
    # and the EOD run's RISK_MAX_CARRIED_DAYS: a book holding more such days has no VaR/ES, as at end of day
    carried: dict[str, np.ndarray] = field(default_factory=dict)
    max_carried_days: int | None = None

    @classmethod
    def from_tables(cls, returns: pd.DataFrame, covariance: pd.DataFrame, portfolios: pd.DataFrame) -> ScenarioSet:
        as_of = pd.Timestamp(returns["as_of_date"].iloc[0]).date()
        order = returns.drop_duplicates("asset_index").sort_values("asset_index")
        products = list(order["product_id"])
        windows, covs, carried = {}, {}, {}
        for base, df in returns.groupby("base_currency"):
            wide = df.pivot(index="scenario_date", columns="asset_index", values="asset_return")
            windows[base] = np.ascontiguousarray(wide.sort_index().to_numpy()[:, np.argsort(wide.columns)])
            if "is_carried" in df.columns:   # a scenario set written before the flag: no carried days known
                flag = df.pivot(index="scenario_date", columns="asset_index", values="is_carried")
                carried[base] = flag.sort_index().to_numpy(dtype=bool)[:, np.argsort(flag.columns)]
        for base, df in covariance.groupby("base_currency"):
            wide = df.pivot(index="product_id_a", columns="product_id_b", values="covariance")
            covs[base] = np.ascontiguousarray(wide.loc[products, products].to_numpy())
        first = portfolios.iloc[0]
        mc = (int(first["mc_scenarios"]), int(first["mc_seed"]), str(first["mc_distribution"]),
              float(first["mc_t_dof"]))
        limit = int(first["max_carried_days"]) if "max_carried_days" in portfolios.columns else None
        return cls(as_of, products, windows, covs, portfolios.set_index("portfolio_id")["drawdown"], mc, carried,
                   limit)


def load_scenarios(store, before: date, max_days_back: int = SCENARIO_MAX_DAYS_BACK) -> ScenarioSet | None:
    """The scenario set of the latest committed EOD run dated <= `before` (None when there is none yet)."""
    for back in range(max_days_back + 1):
        d = before - timedelta(days=back)
        manifest = commits.read_manifest(store, commits.risk_manifest(d))
        if manifest is None:
            continue
        entries = [manifest["files"].get(f"{t}/as_of_date={d.isoformat()}") for t in SCENARIO_TABLES]
        if all(entries):
            tables = [commits.read_entry(store, e).to_pandas() for e in entries]
            if all(len(t) for t in tables):
                return ScenarioSet.from_tables(*tables)
        log.warning("scenario set as of %s is incomplete; trying an earlier EOD run", d)
    return None


def scenario_note(scenarios: ScenarioSet | None, day: date) -> str:
    """The scenario set a run used, or which one is missing (run log, summary and log line)."""
    expected = day - timedelta(days=1)
    if scenarios is None:
        return (f"scenario set MISSING: no committed end-of-day scenario set (risk outputs {', '.join(SCENARIO_TABLES)}) "
                f"dated {expected - timedelta(days=SCENARIO_MAX_DAYS_BACK)}..{expected}, VaR/ES uncomputable: run "
                f"`python -m etl risk --as-of {expected}`")
    if scenarios.as_of < expected:
        return f"scenario set STALE: as of {scenarios.as_of}, expected {expected}"
    return f"scenarios as of {scenarios.as_of}"

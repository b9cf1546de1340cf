"""What the pages show of a portfolio's risk, as data: the VaR/ES methods, the measures per method, and the KPI
cards of a portfolio and of the firm, each a name (the gold column or method suffix), a label and a unit.

The report (etl/report/html.py) and the cockpit (plugins/risk_cockpit/pages.py) iterate these lists and write no
row of their own, so a method or measure added here appears on both pages without editing a page. The risk
registry of methods and measures plugs in by making these functions read it instead of listing them here.
Units name how a number reads (etl/report/formatting.py `Formats.of`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measure:
    name: str   # the column of the page's row (gold's column name)
    label: str
    unit: str   # "currency" | "pnl" (a signed amount) | "fraction" | "number"


def methods() -> tuple[tuple[str, str], ...]:
    """(method, label) of the VaR/ES methods in a portfolio's risk table: columns `<measure>_<method>`."""
    return (("hist", "Historical"), ("param", "Parametric"), ("mc", "Monte Carlo"))


def method_measures() -> tuple[Measure, ...]:
    """The measures each method has (column prefix `<name>_`), in the order of the risk table's columns."""
    return (Measure("var_95", "VaR 95%", "currency"), Measure("var_99", "VaR 99%", "currency"),
            Measure("es_95", "ES 95%", "currency"), Measure("es_99", "ES 99%", "currency"))


def portfolio_kpis() -> tuple[Measure, ...]:
    """The KPI cards of a portfolio's day (the cockpit's portfolio page)."""
    return (Measure("market_value", "Market value", "currency"), Measure("daily_pnl", "PnL today", "pnl"),
            Measure("mtd_pnl", "PnL MTD", "pnl"), Measure("var_95_hist", "VaR 95% (hist)", "currency"),
            Measure("var_99_hist", "VaR 99% (hist)", "currency"), Measure("es_99_hist", "ES 99% (hist)", "currency"),
            Measure("vol_30d", "Vol 30d (ann.)", "fraction"), Measure("max_drawdown", "Max drawdown", "fraction"),
            Measure("concentration_pct", "Concentration", "fraction"))


def firm_kpis() -> tuple[Measure, ...]:
    """The firm's diversified VaR/ES cards (gold.fact_firm_risk, USD)."""
    return (Measure("var_95_hist", "Firm VaR 95% (hist)", "currency"),
            Measure("var_99_hist", "Firm VaR 99% (hist)", "currency"),
            Measure("es_99_hist", "Firm ES 99% (hist)", "currency"))

"""What the pages show of a portfolio's and the firm's day as KPI cards, each a name (the gold column), a label and
a unit; the measures among them come from the registry (etl/measures.py), so a measure added there appears on the
cockpit without editing a page (the VaR/ES tables of every method: `etl.measures.grid`).
Units name how a number reads (etl/report/formatting.py `Formats.of`).
"""

from __future__ import annotations

from dataclasses import dataclass

from etl import measures


@dataclass(frozen=True)
class Measure:
    name: str   # the column of the page's row (gold's column name)
    label: str
    unit: str   # "currency" | "pnl" (a signed amount) | "fraction" | "number"


def portfolio_kpis() -> tuple[Measure, ...]:
    """The KPI cards of a portfolio's day (the cockpit's portfolio page)."""
    return (Measure("market_value", "Market value", "currency"), Measure("daily_pnl", "PnL today", "pnl"),
            Measure("mtd_pnl", "PnL MTD", "pnl"), Measure("var_95_hist", "VaR 95% (hist)", "currency"),
            Measure("var_99_hist", "VaR 99% (hist)", "currency"), Measure("es_99_hist", "ES 99% (hist)", "currency"),
            *(Measure(m.name, m.label, "fraction" if "fraction" in m.unit else "number")
              for m in measures.plain_measures("portfolio")),
            Measure("concentration_pct", "Concentration", "fraction"))


def firm_kpis() -> tuple[Measure, ...]:
    """The firm's diversified VaR/ES cards (gold.fact_firm_risk, USD)."""
    return (Measure("var_95_hist", "Firm VaR 95% (hist)", "currency"),
            Measure("var_99_hist", "Firm VaR 99% (hist)", "currency"),
            Measure("es_99_hist", "Firm ES 99% (hist)", "currency"))

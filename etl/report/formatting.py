"""How numbers read in the HTML report and in the cockpit pages: money, percentages and counts, one rule each.

A missing value reads "–". What counts as missing is the caller's: pandas cells (None, NaN, NA) in the report
(etl/report/html.py), anything but a finite int or float in the cockpit's JSON-shaped page data
(plugins/risk_cockpit/pages.py). Pure Python: the cockpit pages import it without pandas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def money_decimals(currency: str | None) -> int:
    """Decimals of an amount in `currency`: cents in USD (or an amount without its currency), 8 (satoshis) in any
    other base currency, as the SQL reports round (sql/README.md): 0.00123456 BTC is not 0.00."""
    return 2 if currency in (None, "", "USD") else 8


@dataclass(frozen=True)
class Formats:
    is_value: Callable[[object], bool]  # False: the value is missing and reads "–"

    def money(self, v, currency: str | None = None, signed: bool = False) -> str:
        if not self.is_value(v):
            return "–"
        dp = money_decimals(currency)
        text = f"{float(v):+,.{dp}f}" if signed else f"{float(v):,.{dp}f}"
        return f"{text} {currency}" if currency else text

    def amount(self, v, currency: str | None, signed: bool = False) -> str:
        """`money` to the decimals of `currency` without naming it (a table whose row says its currency)."""
        return self.money(v, None, signed) if not self.is_value(v) else \
            self.money(v, currency, signed).removesuffix(f" {currency}" if currency else "")

    def pct(self, v, decimals: int = 1) -> str:
        return f"{float(v):.{decimals}%}" if self.is_value(v) else "–"

    def of(self, unit: str) -> Callable[[object], str]:
        """The reading of a unit of etl/report/shown.py: "currency", "pnl" (signed), "fraction", "number"."""
        return {"currency": self.money, "pnl": lambda v: self.money(v, signed=True), "fraction": self.pct,
                "number": self.number}[unit]

    def number(self, v) -> str:
        """Whole numbers with thousands separators, others to 2 decimals from 100 up, else 4 significant digits."""
        if not self.is_value(v):
            return "–"
        v = float(v)
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        return f"{v:,.2f}" if abs(v) >= 100 else f"{v:.4g}"

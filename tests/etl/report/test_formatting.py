"""How amounts read on the pages (etl/report/formatting.py) and in alert messages (etl/report/alerts.py)."""

from __future__ import annotations

import math

from etl.report import alerts
from etl.report.formatting import Formats

FORMATS = Formats(lambda v: isinstance(v, (int, float)) and math.isfinite(v))


def test_an_amount_in_a_crypto_base_currency_reads_to_the_satoshi_as_in_the_sql_reports():
    """sql/README.md: money to the cent, 8 decimals in a crypto base currency. The pages and the alerts read every
    amount to 2 decimals: a BTC book's VaR of 0.00123456 BTC (about 100 USD) read "0.00 BTC", a confident zero,
    while the SQL report of the same figure says 0.00123456."""
    assert FORMATS.money(0.00123456, "BTC") == "0.00123456 BTC"
    assert FORMATS.money(0.01, "BTC", signed=True) == "+0.01000000 BTC"
    assert FORMATS.money(1234.567, "USD") == "1,234.57 USD"
    assert FORMATS.money(1234.567) == "1,234.57"
    breach = {"portfolio_id": "P-BTC", "limit_type": "var", "metric": "var_99_hist", "value": 0.00123456,
              "limit_value": 0.001, "base_currency": "BTC", "as_of_date": "2026-01-31", "breach_kind": "exceeded"}
    assert "0.00123456 BTC (var_99_hist) vs limit 0.00100000 BTC" in alerts.message(breach)

"""The portfolio page's liquidity-adjusted VaR section from its page dict rows."""

from __future__ import annotations

import sys

from etl.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
from risk_cockpit.pages import liquidity_html  # noqa: E402


def test_liquidity_section_shows_costs_flags_and_excluded_products():
    html = liquidity_html([{"var_99_hist": 1000.0, "spread_cost": 2.5, "impact_cost": 7.25, "lvar_99": 1009.75,
                            "min_absorbed_share": 0.6, "exceeds_depth": True, "book_coverage": 0.5,
                            "products_without_book": "ETH-USD"}])
    assert 'id="liquidity-table"' in html and 'data-value="1009.75"' in html
    assert "<td>yes</td>" in html and "<td>ETH-USD</td>" in html
    assert "not built yet" in liquidity_html(None)
    assert 'id="liquidity-table-empty"' in liquidity_html([])

"""The HTML kit both pages are made of: escaping (names come from reference files), numbers, exact values, the page
frames, the templates shipped with the package, and pages that follow the lists of etl/report/shown.py."""

from __future__ import annotations

import math
import re
import sys
import tomllib
from pathlib import Path

import pandas as pd

from etl.report import html as report_html
from etl.report import kit, shown
from etl.report.formatting import Formats
from etl.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
from risk_cockpit import pages  # noqa: E402

EVIL = '<script>alert("x")</script> & \'Co\''


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


F = Formats(_finite)


def _text(fragment: str) -> str:
    """What a browser shows of escaped text: the entities decoded."""
    import html

    return html.unescape(fragment)


def test_every_value_is_escaped_unless_built_as_markup():
    rows = [{"name": EVIL, "pnl": -1234.5, "link": '<a href="x.html">detail</a>'}]
    cols = [kit.Column("name", EVIL), kit.Column("pnl", "PnL", fmt=lambda v: F.money(v, signed=True), signed=True),
            kit.Column("link", "Link", html=lambda r: r["link"])]
    out = kit.table(rows, cols, 'bad"id', is_value=_finite)
    assert "<script>" not in out and out.count("&lt;script&gt;") == 2  # the header and the cell
    assert re.search(r"<td>([^<]*)</td>", out).group(1) != EVIL and _text(re.search(r"<td>([^<]*)</td>",
                                                                                    out).group(1)) == EVIL
    assert 'id="bad&#34;id"' in out
    assert '<td><a href="x.html">detail</a></td>' in out  # markup this code built passes as is
    card = kit.kpi(EVIL, EVIL, "k")
    assert "<script>" not in card and _text(re.search(r'class="label">([^<]*)<', card).group(1)) == EVIL
    fig = kit.figure('<svg class="chart-svg"></svg>', "chart-x", EVIL)
    assert '<svg class="chart-svg"></svg>' in fig and "<script>" not in fig
    for part in (kit.empty(EVIL), kit.note(EVIL, "n")):
        assert "<script>" not in part and _text(re.search(r">([^<]*)</p>", part).group(1)) == EVIL


def test_a_table_reads_numbers_through_the_formats_and_carries_exact_values_on_request():
    rows = [{"p": "P1", "mv": 1234567.891, "pnl": 12.5, "share": 0.1234},
            {"p": None, "mv": None, "pnl": -0.25, "share": float("nan")}]
    cols = [kit.Column("p", "Portfolio"), kit.Column("mv", "Market value", fmt=F.money),
            kit.Column("pnl", "PnL", fmt=lambda v: F.money(v, signed=True), signed=True),
            kit.Column("share", "Share", fmt=F.pct)]
    plain = kit.table(rows, cols, "t", is_value=_finite)
    assert re.findall(r"<tr>(.*?)</tr>", plain)[1:] == [
        '<td>P1</td><td class="num">1,234,567.89</td><td class="num pos">+12.50</td><td class="num">12.3%</td>',
        '<td></td><td class="num">–</td><td class="num neg">-0.25</td><td class="num">–</td>']
    assert '<th>Portfolio</th><th class="num">Market value</th>' in plain
    exact = kit.table(rows, cols, "t", is_value=_finite, exact=True)
    assert '<td class="num" data-key="mv" data-value="1234567.891">1,234,567.89</td>' in exact
    assert '<td class="num" data-key="mv">–</td>' in exact  # a missing number has no exact value
    assert '<td data-key="p">P1</td>' in exact
    assert kit.kpi("VaR", "1.00", "var", "neg", 1.0) == (
        '<div class="kpi" id="kpi-var"><div class="label">VaR</div><div class="value neg" data-value="1.0">1.00'
        "</div></div>")


def test_the_report_and_the_cockpit_tables_render_through_the_kit_the_same_way():
    frame = pd.DataFrame({"portfolio_id": ["P1", EVIL], "daily_pnl": [5.0, float("nan")]})
    report = report_html.table(frame, [("portfolio_id", "Portfolio", None),
                                       ("daily_pnl", "PnL", lambda v: report_html.money(v, signed=True))],
                               "t", signed=("daily_pnl",))
    cockpit = pages.table([{"portfolio_id": "P1", "daily_pnl": 5.0}, {"portfolio_id": EVIL, "daily_pnl": None}],
                          [("portfolio_id", "Portfolio", None), ("daily_pnl", "PnL", "signed")], "t")
    assert re.sub(r' data-(key|value)="[^"]*"', "", cockpit) == report
    assert "&lt;script&gt;" in report and "<script>" not in report


def test_the_page_frames_share_the_stylesheet_and_keep_the_report_self_contained():
    report = kit.report_page(EVIL, "<h1>Report</h1>", "<p>body</p>")
    cockpit = kit.cockpit_page("Cockpit", "firm", "<p>body</p>", base="/risk", nav=pages.PAGES,
                               charts=[{"id": "c", "config": {"title": "</script><script>alert(1)"}}],
                               as_of="2026-01-31")
    css = (PROJECT_ROOT / "etl" / "report" / "templates" / "kit.css").read_text().strip()
    assert ".kpi .label" in css and f"<style>\n{css}</style>" in report and f"<style>\n{css}</style>" in cockpit
    assert "<body>\n" in report and "<script" not in report and "&lt;script&gt;" in report  # the title escaped
    assert cockpit.count("</script>") == 3 and "<\\/script><script>alert(1)" in cockpit  # JSON cannot close it
    assert '<a href="/risk/market?as_of=2026-01-31" id="nav-market" class="">Market</a>' in cockpit
    assert 'id="nav-firm" class="active"' in cockpit and '<a href="/risk/pipeline" id="nav-pipeline"' in cockpit


def test_the_templates_ship_with_the_package():
    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["etl"]
    root = PROJECT_ROOT / "etl"
    shipped = {p for pattern in data for p in root.glob(pattern)}
    templates = set((root / "report" / "templates").iterdir())
    assert {p.name for p in templates} >= {"kit.css", "kit.html", "page.html", "report.html", "cockpit.html"}
    assert templates <= shipped
    assert {Path(t).name for t in kit.ENV.list_templates()} == {p.name for p in templates}


def test_a_kpi_added_to_the_list_appears_on_the_cockpit(monkeypatch):
    """(methods: tests/etl/test_measures.py, a method added to the registry appears on both pages)"""
    monkeypatch.setattr(shown, "portfolio_kpis", lambda: (shown.Measure("semidev_60d", "Semi-dev 60d", "fraction"),))
    day = {"as_of": "2026-01-31", "day": {"semidev_60d": 0.0421}, "portfolio": {"portfolio_id": "P1"},
           "history": [], "backtest": [], "returns": {"bins": []}, "positions": [], "contributions": None,
           "backtest_summary": []}
    page = pages.portfolio(day, ["P1"])
    assert re.search(r'id="kpi-semidev-60d"><div class="label">Semi-dev 60d</div>'
                     r'<div class="value " data-value="0.0421">4.2%<', page)

"""The report and the cockpit pages on odd days, in headless Chromium at 1366x768 and 1920x1080.

Gold: the sample book cloned to 22 portfolios plus a BTC book (VaR 0.32 BTC), and intraday rows on the as-of day
and the day after. Checked: no table is wider than its box (scrollWidth <= clientWidth of each table's box and of
the page), a day without data reads "–" (never 0, never green), the intraday chart is the page's as-of day's, and
portfolios rank by VaR in USD. The cockpit pages are rendered from their page dicts to files (no server: the
layout of their tables does not depend on the Chart.js script); test_cockpit_airflow.py serves them for real.
"""

from __future__ import annotations

import re
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from etl.errors import IncompleteInputError
from etl.report import cockpit
from etl.report.gold import GoldReader
from tests.integration.test_cockpit import _reporting, _sql
from tests.support.browser_check import Chromium, find_chromium
from tests.support.env import pipeline_env
from tests.support.report_sample import AS_OF, create_gold, sample_book

sys.path.insert(0, str(Path(__file__).parents[2] / "plugins"))  # the plugin package, as Airflow loads it
from risk_cockpit import pages  # noqa: E402

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed: apt-get install chromium")

ARTIFACTS = "layout"  # screenshots under $PIPELINE_TEST_ARTIFACTS/layout/
NO_DATA = AS_OF + timedelta(days=1)
SIZES = ((1366, 768), (1920, 1080))
BTC_VAR_99 = 0.32


def _with_btc_book(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """A BTC-based book whose VaR 99% is 0.32 BTC (thousands of USD): last on raw numbers, not in USD. Its
    var_99_hist_usd is as the engine writes it (x the as-of BTC-USD close; tests/etl/risk/test_engine.py)."""
    def add(table: str, src: str, **values) -> None:
        row = frames[table][frames[table]["portfolio_id"] == src].tail(1).assign(portfolio_id="P-BTC", **values)
        frames[table] = pd.concat([frames[table], row], ignore_index=True)

    add("dim_portfolio", "P0001", name="Bitcoin book", base_currency="BTC", var_limit=1.0)
    add("fact_portfolio_valuation", "P0001", market_value=2.5, gross_exposure=2.5)
    add("fact_pnl_daily", "P0001", daily_pnl=0.01, mtd_pnl=0.05)
    risk = {c: BTC_VAR_99 for c in frames["fact_risk_metrics"] if c.startswith(("var_", "es_"))}
    prices = frames["fact_price_daily"]
    btc_close = prices.loc[(prices["product_id"] == "BTC-USD") & (prices["price_date"] == AS_OF), "close"].item()
    add("fact_risk_metrics", "P0001", **{**risk, "var_99_hist_usd": BTC_VAR_99 * btc_close})
    frames["fact_intraday_risk"] = pd.DataFrame({
        "portfolio_id": ["P0001", "P0002", "P0001"],
        "bucket_start": pd.to_datetime([f"{AS_OF} 09:00", f"{AS_OF} 09:00", f"{NO_DATA} 10:00"], utc=True),
        "market_value": [100.0, 50.0, 90.0], "intraday_pnl": [1.5, -0.5, 7.0], "gross_exposure": [120.0, 60.0, 99.0],
        "max_price_age_s": 0.0, "stale_product_ids": ""})
    return frames


@pytest.fixture(scope="module")
def gold(pg_url):
    from etl.db import scratch_database

    with scratch_database(pg_url, "page_layout") as url:
        create_gold(url, _with_btc_book(sample_book(AS_OF, 22)))
        yield url


@pytest.fixture(scope="module")
def pages_dir(gold, tmp_path_factory) -> Path:
    """The HTML report of AS_OF and of a day without data, and the cockpit pages of both days, as files."""
    from risk_cockpit import pages

    from etl.report import run_report

    out = tmp_path_factory.mktemp("pages")
    with pipeline_env(gold, out / "data") as mp:
        mp.setattr("etl.report.html.DETAIL_PAGES", 2)
        report = run_report(AS_OF, sql_dir=out / "no-sql")
        with pytest.raises(IncompleteInputError):
            run_report(NO_DATA, sql_dir=out / "no-sql")
    with GoldReader(_reporting(gold)) as reader:
        for day in (AS_OF, NO_DATA):
            (out / f"firm-{day}.html").write_text(pages.firm(cockpit.firm(reader, day)))
        ids = [f"P{i:04d}" for i in range(1, 23)]
        (out / "portfolio.html").write_text(pages.portfolio(cockpit.portfolio(reader, "P0001", AS_OF), ids))
        (out / "market.html").write_text(pages.market(cockpit.market(reader, AS_OF)))
        airflow_runs = [{"dag_id": "risk_end_of_day", "queued": 0, "running": 1, "success": 12, "failed": 2}]
        (out / "pipeline.html").write_text(pages.pipeline({**cockpit.pipeline(reader), "airflow_runs": airflow_runs}))
    (out / "report").symlink_to(report.parent.parent)
    return out


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def browser(request):
    with Chromium(*request.param) as b:
        yield b


def _pages(root: Path) -> list[Path]:
    report = root / "report" / AS_OF.isoformat()
    detail = sorted(report.glob("portfolio-*.html"))[0]
    return [report / "report.html", report / "portfolios.html", detail, root / f"firm-{AS_OF}.html",
            root / f"firm-{NO_DATA}.html", root / "portfolio.html", root / "market.html", root / "pipeline.html",
            root / "report" / NO_DATA.isoformat() / "report.html"]


def test_no_table_is_wider_than_its_box(browser, pages_dir, artifacts):
    checked = 0
    for path in _pages(pages_dir):
        page = browser.check(path.as_uri(), artifacts, name=f"layout-{browser.width}-{path.parent.name}-{path.stem}",
                             settle_s=0.2)
        assert page.overflowing == [], f"{path.name} at {browser.width}x{browser.height}: {page.overflowing}"
        checked += page.dom.count("<table")
    assert checked > 30  # every table of every page, not an empty page


def _kpi(dom: str, kpi_id: str) -> tuple[str, str]:
    """(class of the value, text) of a KPI card."""
    m = re.search(rf'id="kpi-{kpi_id}"><div class="label">[^<]*</div><div class="value ?([^"]*)"[^>]*>([^<]*)<', dom)
    assert m, f"no KPI {kpi_id}"
    return m.group(1).strip(), m.group(2)


def test_a_day_without_data_reads_dash_never_zero_or_green(browser, pages_dir):
    report = browser.check((pages_dir / "report" / NO_DATA.isoformat() / "report.html").as_uri(), settle_s=0.2)
    for kpi in ("book-usd", "daily-pnl-usd", "mtd-pnl-usd", "book-btc", "daily-pnl-btc", "breaches"):
        cls, text = _kpi(report.dom, kpi)
        assert text == "–" and "pos" not in cls, (kpi, cls, text)
    assert "0.00" not in report.dom.split('id="section-portfolios"')[1].split("</table>")[0]
    firm = browser.check((pages_dir / f"firm-{NO_DATA}.html").as_uri(), settle_s=0.2)
    for kpi in ("book-USD", "daily-pnl-USD", "mtd-pnl-USD", "book-BTC", "daily-pnl-BTC"):
        cls, text = _kpi(firm.dom, kpi)
        assert text == "–" and cls == "", (kpi, cls, text)
    assert "Limit breaches (–)" in firm.dom and "limit breaches unknown: the day is incomplete" in firm.dom
    table = firm.dom.split('id="portfolios-table"')[1].split("</table>")[0]
    cells = re.findall(r'data-key="(?:market_value|daily_pnl|mtd_pnl|var_\d+_hist|es_\d+_hist)"[^>]*>([^<]*)<', table)
    assert len(cells) == 23 * 6 and set(cells) == {"–"} and 'class="num pos"' not in table
    # the same page on a day with data: real numbers, signed and coloured
    cls, text = _kpi(browser.check((pages_dir / f"firm-{AS_OF}.html").as_uri(), settle_s=0.2).dom, "daily-pnl-BTC")
    assert (cls, text) == ("pos", "+0.01000000 BTC")   # satoshis, as the SQL reports


def test_the_intraday_chart_belongs_to_the_as_of_day(gold):
    with GoldReader(_reporting(gold)) as reader:
        on_day = cockpit.firm(reader, AS_OF)["intraday"]
        before = cockpit.firm(reader, AS_OF - timedelta(days=1))["intraday"]
    assert on_day["day"] == AS_OF.isoformat()
    assert [(r["bucket_start"][:16], r["intraday_pnl"], r["gross_exposure"]) for r in on_day["rows"]] == [
        (f"{AS_OF}T09:00", 1.0, 180.0)]  # the book's sum of that bucket; the next day's 10:00 row is not here
    assert before == {"available": False, "note": f"gold.fact_intraday_risk has no rows on {AS_OF - timedelta(1)}",
                      "latest_day": NO_DATA.isoformat()}
    html = pages.firm({**cockpit_firm_stub(), "intraday": before})
    assert 'id="chart-intraday' not in html
    assert f'the latest day with intraday rows is <a href="/risk/?as_of={NO_DATA}">{NO_DATA}</a>' in html


def cockpit_firm_stub() -> dict:
    return {"as_of": (AS_OF - timedelta(days=1)).isoformat(), "status": "complete", "missing": [], "breaches": [],
            "notes": [], "firm_risk": {"available": False, "note": "n/a"}, "totals": [], "worst_drawdowns": [],
            "portfolios": []}


def test_portfolios_rank_by_var_in_usd(gold, pages_dir):
    engine = dict(_sql(gold, "select portfolio_id, var_99_hist_usd from gold.fact_risk_metrics where as_of_date = %s",
                       (AS_OF,)))
    with GoldReader(_reporting(gold)) as reader:
        day = cockpit.portfolio_day(reader, AS_OF).set_index("portfolio_id")
    assert day["var_99_hist_usd"].to_dict() == engine   # the engine's figure as gold has it, never recomputed
    assert day.at["P-BTC", "var_99_hist_usd"] > 1_000 * day.at["P-BTC", "var_99_hist"]  # in USD, not BTC
    ranked = day["var_99_hist_usd"].sort_values(ascending=False).index.tolist()
    assert ranked.index("P-BTC") < len(ranked) - 1  # above USD books with a smaller USD VaR, not last
    firm = (pages_dir / f"firm-{AS_OF}.html").read_text()
    table = firm.split('id="portfolios-table"')[1].split("</table>")[0]
    assert re.findall(r'portfolio/([\w-]+)\?', table) == ranked
    # the report: breached books first, then the same USD order
    report = (pages_dir / "report" / AS_OF.isoformat() / "portfolios.html").read_text()
    order = re.findall(r"<tr><td>([\w-]+)</td>", report)
    counts = dict(_sql(gold, "select portfolio_id, count(*) from gold.fact_limit_breaches where as_of_date = %s "
                             "group by 1", (AS_OF,)))
    assert order == sorted(ranked, key=lambda p: (-counts.get(p, 0), ranked.index(p)))


"""The report against the real Postgres: a small sample gold schema read as the `reporting` role."""

from __future__ import annotations

import csv
import json
import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from etl.db import scratch_database
from etl.errors import DataNotFoundError, IncompleteInputError
from etl.report import html as report_html
from etl.report import latest_report, report_of_run, reports_dir, run_report
from etl.risk.backtest import traffic_light
from etl.settings import get_settings
from tests.support.env import pipeline_env
from tests.support.report_sample import AS_OF, create_gold, sample_frames

H2 = ("summary", "portfolios", "market", "pipeline-health", "data-notes")
H3 = ("summary-breaches", "summary-drawdowns", "market-volatility", "market-correlation", "market-factor-exposures",
      "market-anomalies", "pipeline-durations", "pipeline-rows", "pipeline-failures")


@pytest.fixture
def env(sample_gold_url, data_dir, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATABASE_URL", sample_gold_url)
    return data_dir


@pytest.fixture(scope="module")
def frames():
    return sample_frames(AS_OF)


def _write_sql_dir(d):
    (d / "risk").mkdir(parents=True)
    (d / "daily_pnl.sql").write_text(
        "-- Daily and month-to-date PnL per portfolio.\n"
        "select portfolio_id, daily_pnl, mtd_pnl from gold.fact_pnl_daily\n"
        "where as_of_date = :'as_of' order by portfolio_id\n")
    (d / "risk" / "who.sql").write_text(  # a literal % must stay a literal
        "select current_user as who, count(*) as n from gold.dim_portfolio where portfolio_id like 'P-%'\n")
    (d / "report_html").mkdir()
    (d / "report_html" / "private.sql").write_text("select 1 as private\n")
    return d


@pytest.fixture
def sql_dir(tmp_path):
    return _write_sql_dir(tmp_path / "sql")


@pytest.fixture(scope="module")
def report(sample_gold_url, tmp_path_factory):
    """One report run shared by the read-only assertions below (rendering charts is the slow part)."""
    root = tmp_path_factory.mktemp("report")
    with pipeline_env(sample_gold_url, root / "data"):
        path = run_report(sql_dir=_write_sql_dir(root / "sql"))  # no as_of: the latest day in gold
        return path, root / "data", reports_dir(get_settings())


def _ids(page: str, tag: str) -> set[str]:
    return set(re.findall(rf'<{tag} id="([^"]+)"', page))


def test_html_report_shows_every_section_with_numbers_from_gold(report, frames):
    path, data_root, reports = report
    assert path == data_root / "reports" / "2026-01-31" / "report.html"  # as_of defaulted to the latest day
    assert path.parent == reports / "2026-01-31"
    page = path.read_text()

    core_page = (path.parent / "portfolio-p-core.html").read_text()
    alt_page = (path.parent / "portfolio-p-alt.html").read_text()
    assert set(H2) <= _ids(page, "h2")
    assert set(H3) <= _ids(page, "h3")
    assert "portfolio-p-core" in _ids(core_page, "h3") and "portfolio-p-alt" in _ids(alt_page, "h3")
    # report.html: volatility, correlation, factor betas, anomalies, task durations; 4 charts per detail page
    assert page.count("<svg") == 5 and core_page.count("<svg") == alt_page.count("<svg") == 4
    for chart in ("chart-volatility", "chart-correlation", "chart-factor-exposures", "chart-anomalies",
                  "chart-durations"):
        assert f'id="{chart}"' in page
    for chart in ("chart-value-p-core", "chart-var-p-core"):
        assert f'id="{chart}"' in core_page
    for chart in ("chart-drawdown-p-alt", "chart-exposure-p-alt"):
        assert f'id="{chart}"' in alt_page
    assert 'href="portfolio-p-core.html"' in page and 'href="portfolio-p-alt.html"' in page
    # self-contained: no scripts, no external resources
    for html in (page, core_page, alt_page):
        assert "<script" not in html
        assert not re.search(r'(src|href)="(https?:)?//', html)
    # the first screen: status, then the summary
    assert page.index('id="status-banner"') < page.index('id="summary"')
    assert '<div class="status complete" id="as-of-status">2026-01-31: complete</div>' in page

    # summary numbers = sums of the gold rows of the day
    val = frames["fact_portfolio_valuation"]
    book = val.loc[val["as_of_date"] == AS_OF, "market_value"].sum()
    assert f'<div class="value ">{book:,.2f} USD</div>' in page
    pnl = frames["fact_pnl_daily"]
    day = pnl[pnl["as_of_date"] == AS_OF]
    assert f"{day['daily_pnl'].sum():+,.2f} USD" in page
    assert f"{day['mtd_pnl'].sum():+,.2f} USD" in page
    risk = frames["fact_risk_metrics"]
    # firm VaR is gold.fact_firm_risk's (not built here), never the sum of standalone VaRs
    assert f"{risk['var_99_hist'].sum():,.2f}" not in page
    assert re.search(r'id="kpi-firm-var".*?firm VaR not yet computed', page)
    core = risk.set_index("portfolio_id").loc["P-CORE"]
    assert f"{core['var_99_mc']:,.2f}" in core_page and f"{core['es_99_param']:,.2f}" in core_page
    kpi = re.search(r'id="kpi-breaches".*?class="value [^"]*">(\d+)<', page).group(1)
    assert kpi == "2"
    assert "FAILED" not in page and "OK: 4 task runs recorded, none failed" in page
    # breaches worst utilisation first, in their units: VaR in USD, concentration as a percentage
    b = frames["fact_limit_breaches"].set_index("portfolio_id")
    assert re.search(rf'id="summary-breaches-table".*?P-ALT.*?concentration.*?63\.9%.*?50\.0%.*?127\.8%.*?'
                     rf'P-CORE.*?var.*?{b.at["P-CORE", "value"]:,.2f} USD.*?3,500.00 USD', page, re.S)
    # worst drawdowns ranked on the limit's measure (drawdown from peak), the limit named next to it
    dd = risk.set_index("portfolio_id")
    assert re.search(rf'id="summary-drawdowns-table".*?Drawdown from peak.*?Limit \(on drawdown from peak\).*?'
                     rf'P-CORE.*?{dd.at["P-CORE", "drawdown_from_peak"]:.1%}.*?25\.0%.*?'
                     rf'P-ALT.*?{dd.at["P-ALT", "drawdown_from_peak"]:.1%}.*?20\.0%', page, re.S)

    # per portfolio: breaches, positions, traffic light computed from the backtest rows
    assert re.search(r'id="breaches-p-alt".*?concentration.*?63\.9%.*?50\.0%', alt_page, re.S)
    assert re.search(r'id="positions-p-core".*?SOL-USD.*?-50', core_page, re.S)
    bt = frames["fact_var_backtest"]
    core_99 = bt[(bt["portfolio_id"] == "P-CORE") & (bt["method"] == "hist") & np.isclose(bt["confidence"], 0.99)]
    zone = traffic_light(int(core_99["is_exception"].sum()), len(core_99), 0.99).item()  # the risk engine's rule
    assert f'<span class="badge zone-{zone}" id="zone-p-core">{zone.upper()}</span>' in core_page

    # market and pipeline tables
    assert re.search(r'id="volatility-table".*?SOL-USD.*?91\.0%.*?95\.0%', page, re.S)
    assert re.search(r'id="anomalies-table".*?SOL-USD.*?2026-01-31 03:05.*?\+6\.3.*?ETH-USD.*?-4\.1', page, re.S)
    assert re.search(r'id="failures-table".*?build_bars_5m.*?simulator returned 503', page, re.S)

    # the CSVs behind the page
    data_csv = pd.read_csv(path.parent / "data" / "positions.csv")
    assert len(data_csv) == 5 and set(data_csv["portfolio_id"]) == {"P-CORE", "P-ALT"}


def test_html_report_lists_the_days_suspect_prints_from_gold(report):
    page = report[0].read_text()
    assert '<p id="price-quality-count">1 print(s) flagged on 2026-01-31: 1 excluded from the bars, 0 accepted by ' \
           'override.</p>' in page
    table = re.search(r'<table id="price-quality-table".*?</table>', page, re.S).group(0)
    assert "SOL-USD" in table and "spike_revert" in table and "excluded" in table and "BTC-USD" not in table
    assert 'id="incomplete"' not in page  # SOL-USD's daily bar stands: its close does not rest on the print


def test_sql_reports_write_csv_and_markdown_as_reporting_role(report, frames):
    out = report[0].parent
    with open(out / "sql" / "daily_pnl.csv") as f:
        rows = list(csv.DictReader(f))
    pnl = frames["fact_pnl_daily"]
    expected = pnl[pnl["as_of_date"] == AS_OF].sort_values("portfolio_id")
    assert [r["portfolio_id"] for r in rows] == ["P-ALT", "P-CORE"]
    assert [float(r["mtd_pnl"]) for r in rows] == pytest.approx(expected["mtd_pnl"].tolist())
    with open(out / "sql" / "risk__who.csv") as f:
        assert list(csv.DictReader(f)) == [{"who": "reporting", "n": "2"}]
    assert not (out / "sql" / "report_html__private.csv").exists()

    md = (out / "sql_reports.md").read_text()
    assert md.startswith("# SQL reports as of 2026-01-31")
    assert "## daily_pnl\n\nDaily and month-to-date PnL per portfolio." in md
    assert "| portfolio_id | daily_pnl | mtd_pnl |" in md and "| P-ALT |" in md
    assert "| reporting | 2 |" in md


def test_report_on_a_day_without_risk_rows_is_incomplete_exit_3_with_a_red_banner(env, sql_dir):
    with pytest.raises(IncompleteInputError, match=r"gold\.fact_risk_metrics has no row for 2026-01-30 for "
                                                   r"portfolio\(s\) P-ALT, P-CORE"):
        run_report(date(2026, 1, 30), sql_dir=sql_dir)
    path = reports_dir(get_settings()) / "2026-01-30" / "report.html"
    page = path.read_text()
    assert page.index('<div id="incomplete"') < page.index("<h1")  # at the top, in red
    assert re.search(r'id="incomplete"[^>]*background:#b00020.*?INCOMPLETE.*?fact_risk_metrics has no row', page, re.S)
    assert "no anomalies on this day" in page
    assert "limit breaches on 2026-01-30 unknown: the day is incomplete" in page  # not "no breaches"
    assert re.search(r'id="kpi-breaches"><div class="label">Limit breaches</div><div class="value unknown">–<', page)
    detail = (path.parent / "portfolio-p-core.html").read_text()
    assert "no risk metrics on 2026-01-30" in detail
    assert "limit breaches on 2026-01-30 unknown: no risk metrics for this day" in detail
    assert set(H2) <= _ids(page, "h2")
    assert "2026-01-30: INCOMPLETE: gold.fact_risk_metrics has no row for 2026-01-30 for portfolio(s) " \
           "P-ALT, P-CORE" in page  # the status line says what the banner and exit code 3 say


def test_the_sql_reports_markdown_of_an_incomplete_day_says_incomplete_naming_what_is_missing(env, sql_dir):
    """On 2026-01-30 no portfolio has a risk row: the HTML opens INCOMPLETE and the run exits 3, but
    sql_reports.md, linked from the report and read on its own, showed that day's PnL tables with nothing saying
    the day lacks its VaR: a clean-looking report over missing data. It now opens with the same INCOMPLETE line."""
    with pytest.raises(IncompleteInputError):
        run_report(date(2026, 1, 30), sql_dir=sql_dir)
    md = (reports_dir(get_settings()) / "2026-01-30" / "sql_reports.md").read_text()
    head = md.split("\n## ", 1)[0]
    assert "**INCOMPLETE**" in head
    assert "gold.fact_risk_metrics has no row for 2026-01-30 for portfolio(s) P-ALT, P-CORE" in head
    assert "## daily_pnl" in md and "| P-ALT |" in md   # the rows gold has are still shown, under that line
    run_report(AS_OF, sql_dir=sql_dir)                    # a complete day: no such line
    assert "INCOMPLETE" not in (reports_dir(get_settings()) / AS_OF.isoformat() / "sql_reports.md").read_text()


def test_missing_breach_table_is_a_note_and_the_day_incomplete(pg_url, data_dir, monkeypatch, sql_dir):
    with scratch_database(pg_url, "report_nobreach") as url:
        create_gold(url, sample_frames(AS_OF), skip=("fact_limit_breaches", "fact_anomalies"))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError, match="gold.fact_limit_breaches cannot be read"):
            run_report(AS_OF, sql_dir=sql_dir)
    page = (reports_dir(get_settings()) / AS_OF.isoformat() / "report.html").read_text()
    assert re.search(r'<p class="note">gold\.fact_limit_breaches could not be read \(relation '
                     r'&quot;gold\.fact_limit_breaches&quot; does not exist\)', page)
    assert "gold.fact_anomalies is not available in the warehouse" in page
    assert re.search(r'id="kpi-breaches".*?class="value unknown">–<', page)
    assert 'id="incomplete"' in page
    assert set(H3) <= _ids(page, "h3")  # every other section still there


def test_no_gold_data_is_a_clear_error(pg_url, data_dir, monkeypatch, sql_dir):
    with scratch_database(pg_url, "report_empty") as url:
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(DataNotFoundError, match=r"gold\.fact_risk_metrics has no rows: run `python -m etl risk`"):
            run_report(sql_dir=sql_dir)


def test_reports_connect_as_reporting_and_cannot_write(env):
    import psycopg2

    from etl.report.gold import GoldReader
    from etl.warehouse import reporting_url

    with GoldReader(reporting_url(get_settings())) as reader:
        assert reader.query("select current_user as u")["u"].tolist() == ["reporting"]
        with pytest.raises(psycopg2.Error, match="read-only|permission denied"):
            reader.query("insert into gold.dim_exchange values ('x', 'y') returning 1")


def test_mapped_tasks_fold_into_one_row_and_retries_count_as_their_last_attempt():
    t = pd.Timestamp("2026-01-31 01:00", tz="UTC")
    runs = pd.DataFrame({
        "run_id": ["r1"] * 4, "dag_id": ["d"] * 4,
        "task_id": ["fetch_candles[0]", "fetch_candles[1]", "fetch_candles[1]", "compute_risk"],
        "status": ["success", "failed", "success", "success"], "rows_in": [10, 0, 20, 30],
        "rows_out": [1, 0, 2, 3], "started_at": [t, t, t + pd.Timedelta(minutes=1), t + pd.Timedelta(minutes=2)],
        "duration_s": [1.0, 9.0, 2.0, 4.0], "message": [""] * 4})
    folded = report_html.per_task(report_html.latest_task_status(runs)).set_index("task")
    assert folded.loc["fetch_candles", ["instances", "failed", "rows_in", "duration_s"]].tolist() == [2, 0, 30, 3.0]
    assert folded.loc["compute_risk", "instances"] == 1


def test_a_run_whose_task_is_up_for_retry_is_not_reported_ok():
    """The latest run's compute_risk attempt failed and Airflow will retry it: that run has not succeeded, and
    nothing failed for good either; the pipeline KPI says so instead of "OK"."""
    from etl.report.data import ReportData

    t = pd.Timestamp("2026-01-31 01:00", tz="UTC")
    runs = pd.DataFrame({
        "run_id": ["r1", "r1"], "dag_id": ["d", "d"], "task_id": ["fetch_candles", "compute_risk"],
        "status": ["success", "up_for_retry"], "rows_in": [10, 0], "rows_out": [10, 0],
        "started_at": [t, t + pd.Timedelta(minutes=1)], "duration_s": [1.0, 2.0], "message": ["", "RuntimeError"]})
    data = ReportData(as_of=AS_OF, frames={"runs": runs})
    cls, text = report_html.pipeline_status(data)
    assert (cls, text) == ("unknown", "RETRYING: 1 of 2 task runs recorded failed and will be retried")
    latest = report_html.section_pipeline(data).split('id="latest-run-table"')[1].split("</table>")[0]
    assert re.search(r"compute_risk<.*?>up_for_retry<", latest, re.S) and "success" in latest  # not "success"


def test_a_section_that_breaks_on_bad_data_becomes_a_note(frames):
    from etl.report.data import ReportData

    names = {"portfolios": "dim_portfolio", "valuation": "fact_portfolio_valuation", "pnl": "fact_pnl_daily",
             "risk": "fact_risk_metrics", "positions": "fact_positions", "breaches": "fact_limit_breaches"}
    data = {k: frames[v].copy() for k, v in names.items()}
    data["risk"] = data["risk"][data["risk"]["as_of_date"] == AS_OF]
    pos = data["positions"]
    data["positions"] = pos[pos["as_of_date"] == AS_OF].astype({"market_value": object})
    data["positions"].loc[data["positions"]["portfolio_id"] == "P-ALT", "market_value"] = "not a number"
    report_data = ReportData(as_of=AS_OF, frames=data)
    files = report_html.pages(report_data)
    page = files["report.html"]
    assert "the portfolio P-ALT section could not be drawn: ValueError" in page
    assert [f[:50] for f in report_data.failures] == ["the portfolio P-ALT section could not be drawn: Va"]
    assert 'id="portfolio-p-alt"' in files["portfolio-p-alt.html"]
    assert 'id="chart-exposure-p-core"' in files["portfolio-p-core.html"]
    assert 'id="market"' in page and "gold.fact_asset_risk is not available" in page


def test_report_files_are_readable_by_their_owner_only(report):
    _, _, reports = report
    modes = {p.relative_to(reports).as_posix(): p.stat().st_mode & 0o777 for p in [reports, *reports.rglob("*")]}
    assert any(name.endswith("report.html") for name in modes) and any(n.endswith(".csv") for n in modes)
    assert {m for n, m in modes.items() if (reports / n).is_dir()} == {0o700}
    assert {m for n, m in modes.items() if (reports / n).is_file()} == {0o600}


def test_a_future_incomplete_report_never_becomes_latest(env, sql_dir, monkeypatch):
    monkeypatch.setattr("etl.report.html.DETAIL_PAGES", 1)
    root = reports_dir(get_settings())
    assert latest_report() is None
    good = run_report(AS_OF, sql_dir=sql_dir, run_id="eod_run")
    assert json.loads((good.parent / "status.json").read_text()) == {
        "as_of": AS_OF.isoformat(), "complete": True, "problems": [], "run_id": "eod_run"}
    with pytest.raises(IncompleteInputError, match="report for 2027-06-01 is INCOMPLETE"):
        run_report(date(2027, 6, 1), sql_dir=sql_dir, run_id="mistake")       # a mistaken day in the future
    future = root / "2027-06-01" / "report.html"
    status = json.loads((future.parent / "status.json").read_text())
    assert status["complete"] is False and any("fact_risk_metrics has no row for 2027-06-01" in p
                                               for p in status["problems"])
    assert latest_report() == good                            # the complete report stays the default
    assert report_of_run("eod_run") == good and report_of_run("mistake") == future  # each run finds its own
    assert report_of_run("no_such_run") is None
    (good.parent / "status.json").unlink()                    # a report cut short before its status: not complete
    assert latest_report() == future                          # no complete report at all: the newest one


def test_a_rerun_leaves_no_csv_of_an_earlier_run_beside_the_report(pg_url, data_dir, monkeypatch, tmp_path):
    """The report folder after a rerun equals a clean run's: a gold table or SQL report that fails now leaves no CSV
    of the earlier run's rows (they would read as the day's data beside an INCOMPLETE report)."""
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "breaches.sql").write_text("select * from gold.fact_limit_breaches where as_of_date = :'as_of'\n")

    def files(out) -> set[str]:
        return {str(p.relative_to(out)) for p in out.rglob("*.csv")}

    with scratch_database(pg_url, "report_rerun_full") as url:
        create_gold(url, sample_frames(AS_OF))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        out = run_report(AS_OF, sql_dir=sql).parent
    assert {"data/breaches.csv", "sql/breaches.csv"} <= files(out)
    with scratch_database(pg_url, "report_rerun_nobreach") as url:
        create_gold(url, sample_frames(AS_OF), skip=("fact_limit_breaches",))
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        with pytest.raises(IncompleteInputError):
            run_report(AS_OF, sql_dir=sql)                                 # the rerun, over the earlier files
        rerun = files(out)
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(tmp_path / "clean"))
        with pytest.raises(IncompleteInputError):
            run_report(AS_OF, sql_dir=sql)                                 # a clean run of the same gold
        clean = files(reports_dir(get_settings()) / AS_OF.isoformat())
    assert "data/breaches.csv" not in rerun and "sql/breaches.csv" not in rerun
    assert rerun == clean


def test_a_failed_end_of_day_run_is_not_hidden_by_later_intraday_runs(pg_url, data_dir, monkeypatch, sql_dir):
    """The end-of-day run's compact_bronze failed; eleven intraday runs (every 5 minutes) succeeded after it. The
    Pipeline card said "OK" of the newest run of any DAG (an intraday one, and the EOD run was not even among the
    10 latest runs read); it reports the latest run of each DAG, as the cockpit's pipeline page does."""
    from datetime import UTC, datetime, time, timedelta

    frames = sample_frames(AS_OF)
    eod = frames["fact_pipeline_runs"]
    failed = {"run_id": "run-3", "dag_id": "eod_risk", "task_id": "compact_bronze", "status": "failed", "rows_in": 0,
              "rows_out": 0, "started_at": datetime.combine(AS_OF, time(1, 10), tzinfo=UTC), "duration_s": 2.0,
              "message": "OSError: disk full"}
    t0 = datetime.combine(AS_OF, time(1, 15), tzinfo=UTC)
    intraday = [{"run_id": f"intraday-{k}", "dag_id": "market_data_intraday", "task_id": "compute_intraday_risk",
                 "status": "success", "rows_in": 10, "rows_out": 2, "started_at": t0 + timedelta(minutes=5 * k),
                 "duration_s": 3.0, "message": ""} for k in range(11)]
    frames["fact_pipeline_runs"] = pd.concat([eod, pd.DataFrame([failed, *intraday])], ignore_index=True)
    with scratch_database(pg_url, "report_pipeline_card") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        page = run_report(AS_OF, sql_dir=sql_dir).read_text()
    card = re.search(r'id="kpi-pipeline".*?class="value ([^"]*)">([^<]*)<', page, re.S)
    assert card is not None and card.group(1).split() == ["neg"], card and card.group(0)
    assert card.group(2) == "FAILED: eod_risk: 1 of 5 task runs recorded"


def test_a_failing_sql_report_or_section_makes_the_report_incomplete_exit_3(env, sql_dir, monkeypatch):
    """A SQL report that fails (a mart not built) and a section that cannot be drawn are notes, and the other
    reports and sections are still written; but the day's report is not complete without them. It said "complete"
    (status.json, the status line: the cockpit's default report) and exited 0."""
    (sql_dir / "broken.sql").write_text("select * from gold.no_such_table\n")

    def broken_section(data):
        raise ValueError("bad figure")

    monkeypatch.setattr(report_html, "section_market", broken_section)
    with pytest.raises(IncompleteInputError) as err:
        run_report(AS_OF, sql_dir=sql_dir, run_id="eod_run")
    sql_problem = 'SQL report broken failed: UndefinedTable: relation "gold.no_such_table" does not exist'
    section_problem = "the market section could not be drawn: ValueError: bad figure"
    assert str(err.value).endswith(f" says so): {sql_problem}; {section_problem}")
    out = reports_dir(get_settings()) / AS_OF.isoformat()
    assert json.loads((out / "status.json").read_text()) == {
        "as_of": AS_OF.isoformat(), "complete": False, "problems": [sql_problem, section_problem], "run_id": "eod_run"}
    page = (out / "report.html").read_text()
    status = re.search(r'<div class="status (\w+)" id="as-of-status">([^<]*)</div>', page)
    assert status.group(1) == "incomplete" and status.group(2).endswith(f"; {section_problem}")
    assert 'id="incomplete"' in page and section_problem in page.split('id="incomplete"')[1].split("</div>")[0]
    assert 'id="market"' in page and 'id="summary"' in page                  # the rest of the page is written
    assert "SQL report broken failed" in page.split('id="data-notes"')[1]      # a note, not a crash
    assert (out / "sql" / "daily_pnl.csv").exists() and not (out / "sql" / "broken.csv").exists()
    assert re.search(r"## broken\n.*\*\*Failed:\*\* `UndefinedTable: relation \"gold.no_such_table\" does not exist",
                     (out / "sql_reports.md").read_text(), re.S)


def test_a_rerun_after_a_sql_report_is_removed_leaves_no_csv_of_it(env, tmp_path):
    """sql/old.sql was renamed (or removed) after the day's first report: the rerun left sql/old.csv, the earlier
    run's rows, beside the new report as if it were one of its SQL reports; a clean run has no such file."""
    sql = tmp_path / "sql"
    sql.mkdir()
    (sql / "pnl.sql").write_text("select portfolio_id, daily_pnl from gold.fact_pnl_daily where as_of_date = :'as_of'\n")
    (sql / "old.sql").write_text("select portfolio_id from gold.dim_portfolio\n")
    out = run_report(AS_OF, sql_dir=sql).parent
    assert (out / "sql" / "old.csv").exists()
    (sql / "old.sql").rename(sql / "renamed.sql")
    run_report(AS_OF, sql_dir=sql)
    assert sorted(p.name for p in (out / "sql").iterdir()) == ["pnl.csv", "renamed.csv"]
    assert "## old" not in (out / "sql_reports.md").read_text()


def test_report_and_cockpit_show_the_limits_the_run_checked_not_todays(pg_url, data_dir, monkeypatch, sql_dir):
    """P-CORE's VaR limit was 3,500 and its drawdown limit 25% when the run flagged its VaR breach; portfolios.csv
    has raised them to 5,000 and 90% since (gold.dim_portfolio). The day's pages showed the new limits beside the
    breach the old one fired (the breach table said 3,500, the portfolio's limits line 5,000), while the SQL VaR and
    drawdown reports of the same day show the run's. Every page now shows the limits the run checked."""
    import sys

    from etl.report import cockpit
    from etl.report.gold import GoldReader
    from etl.report.sql_reports import SQL_DIR, bind
    from etl.settings import PROJECT_ROOT
    from etl.warehouse import reporting_url

    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    from risk_cockpit import pages  # noqa: PLC0415

    frames = sample_frames(AS_OF)
    dim = frames["dim_portfolio"]
    dim.loc[dim["portfolio_id"] == "P-CORE", ["var_limit", "drawdown_limit"]] = [5_000.0, 0.9]
    with scratch_database(pg_url, "report_checked_limits") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            firm = cockpit.firm(reader, AS_OF)
            mine = cockpit.portfolio(reader, "P-CORE", AS_OF)
            var_sql = reader.query(*bind((SQL_DIR / "risk_exposure/var_es_by_portfolio.sql").read_text(), AS_OF))
    assert var_sql.set_index("portfolio_id").at["P-CORE", "var_limit"] == 3_500.0   # the run's, as the breach's

    core = next(p for p in firm["portfolios"] if p["portfolio_id"] == "P-CORE")
    assert (core["var_limit"], core["drawdown_limit"]) == (3_500.0, 0.25)
    worst = next(p for p in firm["worst_drawdowns"] if p["portfolio_id"] == "P-CORE")
    assert worst["drawdown_limit"] == 0.25
    assert (mine["day"]["var_limit"], mine["day"]["drawdown_limit"]) == (3_500.0, 0.25)
    assert "limit 25.0% on the drawdown from peak" in pages.portfolio(mine, ["P-ALT", "P-CORE"])

    page = path.read_text()
    assert re.search(r'id="summary-drawdowns-table".*?P-CORE.*?25\.0%', page, re.S)
    assert "90.0%" not in re.search(r'id="summary-drawdowns-table".*?</table>', page, re.S).group(0)
    detail = (path.parent / "portfolio-p-core.html").read_text()
    assert "Limits: var 3,500.00 USD on var_99_hist; concentration 60.0%; drawdown 25.0%" in detail
    assert " 5,000.00 USD" not in detail and "90.0%" not in detail


def test_report_and_cockpit_show_the_concentration_limit_the_run_checked_not_todays(pg_url, data_dir, monkeypatch,
                                                                                   sql_dir):
    """P-ALT breached its 50% concentration limit (63.9%, fact_limit_breaches); portfolios.csv has raised it to 99%
    since. The day's detail page said "Limits: ... concentration 99.0%" above the breach "63.9% / 50.0%", and the
    cockpit's exposure chart drew the 99% line, while its VaR and drawdown limits are the run's: the run now records
    the concentration limit it checked too (risk_metrics.checked_concentration_limit), and the pages show it."""
    import sys

    from etl.report import cockpit
    from etl.report.gold import GoldReader
    from etl.settings import PROJECT_ROOT
    from etl.warehouse import reporting_url

    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    from risk_cockpit import pages  # noqa: PLC0415

    frames = sample_frames(AS_OF)
    dim = frames["dim_portfolio"]
    dim.loc[dim["portfolio_id"] == "P-ALT", "concentration_limit"] = 0.99
    with scratch_database(pg_url, "report_checked_concentration") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            firm = cockpit.firm(reader, AS_OF)
            mine = cockpit.portfolio(reader, "P-ALT", AS_OF)
    assert next(p for p in firm["portfolios"] if p["portfolio_id"] == "P-ALT")["concentration_limit"] == 0.5
    assert mine["day"]["concentration_limit"] == 0.5
    page = pages.portfolio(mine, ["P-ALT", "P-CORE"])
    assert "concentration limit 50.0% of gross" in page and "99.0% of gross" not in page
    detail = (path.parent / "portfolio-p-alt.html").read_text()
    assert "Limits: var 2,500.00 USD on var_99_hist; concentration 50.0%; drawdown 20.0%" in detail
    assert "concentration 99.0%" not in detail


def test_a_past_day_of_a_book_whose_currency_changed_since_is_shown_in_the_currency_of_its_rows(
        pg_url, data_dir, monkeypatch, sql_dir):
    """P-ALT was a BTC book on AS_OF (its gold rows carry base_currency BTC) and is a USD book now (dim_portfolio).
    The report took dim_portfolio's currency: P-ALT's BTC book value and PnL were added to P-CORE's USD ones in one
    "Book value" KPI and its page read its figures as USD. They are shown in the currency of the day's rows."""
    frames = sample_frames(AS_OF)
    for name, df in frames.items():
        if name.startswith("fact_") and "portfolio_id" in df and name != "fact_risk_contributions":
            df["base_currency"] = df["portfolio_id"].map({"P-CORE": "USD", "P-ALT": "BTC"})
    frames["dim_portfolio"]["base_currency"] = "USD"
    with scratch_database(pg_url, "report_ccy_changed") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)
    page = path.read_text()
    assert {"kpi-book-btc", "kpi-book-usd"} <= set(re.findall(r'id="(kpi-book-[^"]+)"', page))
    assert "(P-ALT, BTC)" in (path.parent / "portfolio-p-alt.html").read_text()


def test_a_var_limit_on_another_measure_than_historical_var_99_is_shown_with_its_measure(pg_url, data_dir,
                                                                                        monkeypatch, sql_dir):
    """P-ALT's VaR limit of 2,500 is on var_99_param (portfolios.csv var_limit_metric, recorded on its risk row as
    checked_var_limit_metric). The Firm page showed "VaR limit 2,500.00" in the column after "VaR 99%" (historical)
    and the report's page "Limits: var 2,500.00 USD": a reader compares the limit with a figure it is not checked
    on. Both now name the measure the limit is on."""
    from etl.report import cockpit
    from etl.report.gold import GoldReader
    from etl.warehouse import reporting_url
    from plugins.risk_cockpit import pages

    frames = sample_frames(AS_OF)
    risk = frames["fact_risk_metrics"]
    risk.loc[risk["portfolio_id"] == "P-ALT", "checked_var_limit_metric"] = "var_99_param"
    with scratch_database(pg_url, "report_var_metric") as url:
        create_gold(url, frames)
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        path = run_report(AS_OF, sql_dir=sql_dir)
        with GoldReader(reporting_url(get_settings())) as reader:
            page = pages.firm(cockpit.firm(reader, AS_OF))
    table = re.search(r'<table id="portfolios-table">(.*?)</table>', page, re.S).group(1)
    row = re.search(r'<tr>(?:(?!</tr>).)*?/portfolio/P-ALT(?:(?!</tr>).)*</tr>', table, re.S).group(0)
    assert re.search(r'data-value="2500.0">2,500\.00 \(var_99_param\)<', row), row
    detail = (path.parent / "portfolio-p-alt.html").read_text()
    assert "var 2,500.00 USD on var_99_param" in detail

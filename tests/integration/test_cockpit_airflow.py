"""The risk cockpit through a real Airflow 3.3.2 API server (plugins_folder = plugins/), over HTTP and in
headless Chromium (Playwright driving Debian's /usr/bin/chromium).

HTTP: every route refuses a request without a valid Airflow JWT (401 none or expired, 403 invalid); with one,
`/risk/api/summary` is the contract JSON with gold's numbers. Browser: log in to the Airflow UI, open "Risk"
from the navigation, check each page's numbers against gold queried here, that charts rendered and that no
console error occurred; a second, unauthenticated browser is refused. Screenshots go to
`$PIPELINE_TEST_ARTIFACTS/cockpit/` (default `.state/test-artifacts/cockpit/`).
"""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import pytest
import requests

from tests.integration.test_cockpit import _sql  # one statement on its own connection

pytestmark = pytest.mark.slow

AS_OF = date(2026, 1, 31)
N = 22
RUN_ID = "scheduled__2026-02-01T00:10:00+00:00"
FUTURE, FUTURE_RUN_ID = date(2027, 6, 1), "manual__future"  # a run whose export_report row gold does not have yet
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = "cockpit"


@pytest.fixture(scope="module")
def cockpit(pg_url, tmp_path_factory):
    """Gold for 22 portfolios, that day's HTML report, one run-log row pointing at it, and an API server."""
    from etl.db import scratch_database
    from etl.errors import IncompleteInputError
    from etl.report import run_report
    from tests.support.cockpit_server import api_server
    from tests.support.report_sample import create_gold, sample_book

    data = tmp_path_factory.mktemp("cockpit-data")
    state = tmp_path_factory.mktemp("cockpit-state")
    with scratch_database(pg_url, "cockpit_af") as url, pytest.MonkeyPatch.context() as mp:
        create_gold(url, sample_book(AS_OF, N))
        mp.setenv("PIPELINE_DATABASE_URL", url)
        mp.setenv("PIPELINE_DATA_DIR", str(data))
        mp.setattr("etl.report.html.DETAIL_PAGES", 2)  # the per-run link needs report.html, not 22 chart pages
        report = run_report(AS_OF, sql_dir=tmp_path_factory.mktemp("no-sql"))
        with pytest.raises(IncompleteInputError):  # a mistaken future day: must not become the default report
            run_report(FUTURE, sql_dir=tmp_path_factory.mktemp("no-sql"), run_id=FUTURE_RUN_ID)
        _sql(url, "insert into gold.fact_pipeline_runs (run_id, dag_id, task_id, status, started_at, message) "
                  "values (%s, 'risk_end_of_day', 'export_report', 'success', '2026-02-01 00:12+00', %s)",
             (RUN_ID, f"report={report}"))
        docs = state / "dbt" / "target" / "static_index.html"
        docs.parent.mkdir(parents=True)
        docs.write_text("<!DOCTYPE html><title>dbt Docs</title><p>docs</p>")
        with api_server(url, state, data_dir=str(data)) as server:
            yield server, url, report, docs


@pytest.fixture(scope="module")
def token(cockpit) -> str:
    return cockpit[0].token()


def _forged(token: str, secret: str, **claims) -> str:
    import jwt

    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False}) | claims
    return jwt.encode(payload, secret, algorithm=header["alg"], headers={"kid": header.get("kid")})


PROTECTED = ("/risk/", "/risk/api/summary", "/risk/api/firm", "/risk/portfolio/P0001", "/risk/api/market",
             "/risk/pipeline", "/risk/static/chart.umd.min.js", "/risk/docs", "/risk/report",
             f"/risk/run/risk_end_of_day/{RUN_ID}")


def test_every_route_refuses_a_request_without_a_valid_airflow_token(cockpit, token):
    server = cockpit[0]
    expired = _forged(token, server.jwt_secret, exp=int(time.time()) - 60)
    other_key = _forged(token, "another-secret-" * 5)
    for path in PROTECTED:
        url = server.url + path
        assert requests.get(url, timeout=30).status_code == 401, path
        assert requests.get(url, headers={"Authorization": "Bearer not-a-jwt"}, timeout=30).status_code == 403
        assert requests.get(url, headers={"Authorization": f"Bearer {other_key}"}, timeout=30).status_code == 403
        assert requests.get(url, headers={"Authorization": f"Bearer {expired}"}, timeout=30).status_code == 401
        assert requests.get(url, cookies={"_token": other_key}, timeout=30).status_code == 403
        assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                            allow_redirects=False).status_code in (200, 303), path
    page = requests.get(server.url + "/risk/", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 401 and "log in to Airflow" in page.text and "chart-data" not in page.text


def test_summary_json_over_http_equals_gold(cockpit, token):
    server, url = cockpit[0], cockpit[1]
    r = requests.get(f"{server.url}/risk/api/summary", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    s = r.json()
    assert (s["as_of"], s["status"]) == ("2026-01-31", "complete")
    rows = _sql(url, """
        select p.portfolio_id, v.market_value, d.daily_pnl, r.var_95_hist, r.var_99_hist
        from gold.dim_portfolio p
        join gold.fact_portfolio_valuation v using (portfolio_id)
        join gold.fact_pnl_daily d using (portfolio_id, as_of_date)
        join gold.fact_risk_metrics r using (portfolio_id, as_of_date)
        where v.as_of_date = %s order by 1""", (AS_OF,))
    keys = ("portfolio_id", "market_value", "daily_pnl", "var_95_hist", "var_99_hist")
    assert [tuple(p[k] for k in keys) for p in s["portfolios"]] == rows
    breaches = _sql(url, "select portfolio_id, limit_type, value, limit_value, value / limit_value "
                         "from gold.fact_limit_breaches where as_of_date = %s", (AS_OF,))
    got = {tuple(b[k] for k in ("portfolio_id", "limit_type", "value", "limit_value")): b["utilisation"]
           for b in s["breaches"]}
    assert got == {r[:4]: pytest.approx(r[4]) for r in breaches}
    # the UI's own session cookie works the same way, and a day can be asked for
    again = requests.get(f"{server.url}/risk/api/summary?as_of=2026-01-31", cookies={"_token": token}, timeout=30)
    assert again.json() == s
    bad = requests.get(f"{server.url}/risk/api/summary?as_of=31/01/2026", cookies={"_token": token}, timeout=30)
    assert bad.status_code == 400 and bad.json()["detail"].startswith("query.as_of:")


def test_the_pipeline_page_counts_the_dag_runs_airflow_counts(cockpit, token):
    """Gold's run log never sees a run stopped half-way; the page's run counts are Airflow's own (its metadata DB),
    so an interrupted run shows as running until a local runner marks it failed (fail_unfinished_runs), then as
    failed."""
    import sqlite3
    import uuid
    from contextlib import closing

    from etl.local.airflow_home import fail_unfinished_runs

    server = cockpit[0]
    airflow_db = server.home / "airflow.db"
    runs = [("risk_end_of_day", "manual__interrupted", "running"), ("risk_end_of_day", "manual__earlier", "failed"),
            ("market_data_intraday", "manual__done", "success")]
    with closing(sqlite3.connect(airflow_db)) as conn, conn:
        conn.executemany("insert into dag_run (dag_id, run_id, run_type, run_after, state, triggered_by) "
                         "values (?, ?, 'manual', '2026-02-01 00:10:00', ?, 'TEST')", runs)
        conn.execute("insert into task_instance (id, task_id, dag_id, run_id, try_number, pool, pool_slots, state) "
                     "values (?, 'compute_risk', 'risk_end_of_day', 'manual__interrupted', 1, 'default_pool', 1, "
                     "'running')", (uuid.uuid4().hex,))

    def counts() -> dict:
        r = requests.get(f"{server.url}/risk/api/pipeline", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        return {c.pop("dag_id"): c for c in r.json()["airflow_runs"]}

    try:
        assert counts() == {"market_data_intraday": {"queued": 0, "running": 0, "success": 1, "failed": 0},
                            "risk_end_of_day": {"queued": 0, "running": 1, "success": 0, "failed": 1}}
        page = requests.get(f"{server.url}/risk/pipeline", cookies={"_token": token}, timeout=30).text
        assert 'id="airflow-runs-table"' in page
        assert fail_unfinished_runs({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_db}"},
                                    test_runs=True) == 1
        assert counts()["risk_end_of_day"] == {"queued": 0, "running": 0, "success": 0, "failed": 2}
        with closing(sqlite3.connect(airflow_db)) as conn:
            assert conn.execute("select state from task_instance where run_id = 'manual__interrupted'").fetchall() \
                == [("failed",)]
    finally:
        with closing(sqlite3.connect(airflow_db)) as conn, conn:
            for table in ("task_instance", "dag_run"):
                conn.executemany(f"delete from {table} where run_id = ?", [(run_id,) for _, run_id, _ in runs])


def test_plugin_is_registered_with_nav_entry_and_per_run_link(cockpit, token):
    server, report, docs = cockpit[0], cockpit[2], cockpit[3]
    auth = {"Authorization": f"Bearer {token}"}
    plugins = requests.get(f"{server.url}/api/v2/plugins", headers=auth, timeout=30).json()["plugins"]
    (mine,) = [p for p in plugins if p["name"] == "risk_cockpit"]
    assert mine["fastapi_apps"][0]["url_prefix"] == "/risk"
    views = {v["name"]: v for v in mine["external_views"]}
    assert (views["Risk"]["href"], views["Risk"]["destination"]) == ("/risk/", "nav")
    assert views["Risk report"]["destination"] == "dag_run"
    link = views["Risk report"]["href"].replace("{DAG_ID}", "risk_end_of_day").replace("{RUN_ID}", RUN_ID)
    r = requests.get(server.url + link, headers=auth, timeout=30)
    assert r.status_code == 200 and r.url.endswith("/risk/report/2026-01-31/report.html")
    assert r.content == Path(report).read_bytes()
    latest = requests.get(f"{server.url}/risk/report", headers=auth, timeout=30)
    assert latest.status_code == 200 and latest.url.endswith("/risk/report/2026-01-31/report.html")
    own = requests.get(f"{server.url}/risk/run/manual/{FUTURE_RUN_ID}", headers=auth, timeout=30)
    assert own.status_code == 200 and own.url.endswith("/risk/report/2027-06-01/report.html")
    missing = requests.get(f"{server.url}/risk/run/risk_end_of_day/manual__x", headers=auth, timeout=30)
    assert missing.status_code == 404 and "No report for this run" in missing.text
    assert requests.get(f"{server.url}/risk/docs", headers=auth, timeout=30).content == docs.read_bytes()
    escape = requests.get(f"{server.url}/risk/report/2026-01-31/..%2F..%2F..%2Fetc%2Fpasswd", headers=auth,
                          timeout=30)
    assert escape.status_code == 404


def test_a_bad_or_missing_report_file_is_a_404_that_names_no_server_path(cockpit, token):
    """Issue 29 item 3: `%00` in a report file name was a 500; a missing day's 404 showed the reports folder."""
    server, data = cockpit[0], str(Path(cockpit[2]).parents[1])
    auth = {"Authorization": f"Bearer {token}"}
    nul = requests.get(f"{server.url}/risk/report/2026-01-31/%00", headers=auth, timeout=30)
    assert (nul.status_code, nul.json()) == (404, {"detail": "'\\x00' is not a file of the 2026-01-31 report"})
    gone = requests.get(f"{server.url}/risk/report/2026-01-30", headers=auth, timeout=30)
    assert (gone.status_code, gone.json()) == (
        404, {"detail": "no HTML report for 2026-01-30: run `python -m etl report --as-of 2026-01-30`"})
    assert data not in gone.text and data not in nul.text


# ---- in the browser ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _values(frame, selector: str) -> list[float | None]:
    """The exact numbers behind the cells (`data-value`; None for an empty cell)."""
    return [None if v is None else float(v)
            for v in frame.eval_on_selector_all(selector, "els => els.map(e => e.dataset.value)")]


def _charts_drawn(frame) -> int:
    """Charts whose every dataset has drawn elements (Chart.js ran and laid out real data)."""
    frame.wait_for_function("document.body.dataset.chartsRendered !== undefined")
    return frame.evaluate("""Object.values(window.cockpitCharts).filter(c =>
        c.data.datasets.length && c.data.datasets.every((d, i) => c.getDatasetMeta(i).data.length > 0)
        && c.width > 0).length""")


def _overflowing(frame) -> list:
    """Tables wider than their box in this frame (tests/support/browser_check.py): none may hide behind a scroll."""
    from tests.support.browser_check import OVERFLOWING_JS

    return frame.evaluate(OVERFLOWING_JS)


def _login(page, server) -> None:
    page.goto(server.url + "/")
    page.fill("input[name=username]", server.username)
    page.fill("input[type=password]", server.password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)


def test_cockpit_in_the_airflow_ui_shows_golds_numbers(cockpit, chromium, artifacts):
    server, url = cockpit[0], cockpit[1]
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{m.location.get('url')}: {m.text}")
            if m.type == "error" and "/risk/" in (m.location.get("url") or "") else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    _login(page, server)  # through Airflow's own login page, then open the cockpit from the navigation
    page.get_by_role("link", name="Risk").first.click()
    page.wait_for_url("**/plugin/risk")
    frame_el = page.wait_for_selector("iframe")
    frame = frame_el.content_frame()
    frame.wait_for_selector("#status")
    assert frame.url.endswith("/risk/")

    # Firm
    assert frame.inner_text("#status") == "2026-01-31: complete"
    (n_breaches, worst), = _sql(url, "select count(*), max(value / limit_value) from gold.fact_limit_breaches "
                                     "where as_of_date = %s", (AS_OF,))
    assert frame.locator("#breaches-table tbody tr").count() == n_breaches
    assert _values(frame, "#breaches-table td[data-key=utilisation]")[0] == pytest.approx(worst, rel=1e-12)
    (mv, pnl, mtd), = _sql(url, "select sum(market_value), sum(daily_pnl), sum(mtd_pnl) from "
                                "gold.fact_portfolio_valuation join gold.fact_pnl_daily using (portfolio_id, "
                                "as_of_date) where as_of_date = %s", (AS_OF,))
    for kpi, expected in (("book-USD", mv), ("daily-pnl-USD", pnl), ("mtd-pnl-USD", mtd)):
        assert _values(frame, f"#kpi-{kpi} .value") == [pytest.approx(expected)]
        assert f"{expected:,.2f}".lstrip("-") in frame.inner_text(f"#kpi-{kpi} .value")
    assert frame.inner_text("#firm-var-note") == "firm VaR not yet computed (gold.fact_firm_risk is not built)"
    var99 = _sql(url, "select var_99_hist from gold.fact_risk_metrics where as_of_date = %s "
                      "order by var_99_hist desc", (AS_OF,))
    assert _values(frame, "#portfolios-table td[data-key=var_99_hist]") == [v for (v,) in var99]
    assert _charts_drawn(frame) == 2  # breach utilisation, its history (no intraday table in this gold)
    assert _overflowing(frame) == []  # in Airflow's iframe at 1366 px: every table fits its box
    page.screenshot(path=str(artifacts / "cockpit-firm.png"))

    # Portfolio: the first in the breach list
    frame.click("#breaches-table tbody tr:first-child a")
    frame.wait_for_selector("#positions-table")
    pid = frame.eval_on_selector("#portfolio-select", "s => s.value")
    positions = _sql(url, "select market_value from gold.fact_positions where portfolio_id = %s and as_of_date = %s "
                          "order by abs(market_value) desc", (pid, AS_OF))
    assert _values(frame, "#positions-table td[data-key=market_value]") == [v for (v,) in positions]
    (var95, es99), = _sql(url, "select var_95_hist, es_99_hist from gold.fact_risk_metrics where portfolio_id = %s "
                               "and as_of_date = %s", (pid, AS_OF))
    assert _values(frame, "#kpi-var-95-hist .value") == [var95] and _values(frame, "#kpi-es-99-hist .value") == [es99]
    exc = _sql(url, "select exceptions from gold.fact_var_model_comparison where portfolio_id = %s "
                    "and as_of_date = %s order by method, confidence", (pid, AS_OF))
    assert _values(frame, "#backtest-table td[data-key=exceptions]") == [float(v) for (v,) in exc]
    assert _charts_drawn(frame) == 5  # value/PnL, drawdown, VaR vs PnL, returns, exposure
    assert _overflowing(frame) == []
    page.screenshot(path=str(artifacts / "cockpit-portfolio.png"))

    # Market
    frame.click("#nav-market")
    frame.wait_for_selector("#volatility-table")
    vols = _sql(url, "select vol_30d from gold.fact_asset_risk where as_of_date = %s order by vol_30d desc", (AS_OF,))
    assert _values(frame, "#volatility-table td[data-key=vol_30d]") == [v for (v,) in vols]
    closes = _sql(url, "select close from gold.fact_price_daily where price_date = %s order by product_id", (AS_OF,))
    assert _values(frame, "#prices-table td[data-key=close]") == [v for (v,) in closes]
    assert frame.locator("#anomalies-table tbody tr").count() == 2
    assert _charts_drawn(frame) == 3  # prices, volatility, anomalies
    assert _overflowing(frame) == []
    page.screenshot(path=str(artifacts / "cockpit-market.png"))

    # Pipeline
    frame.click("#nav-pipeline")
    frame.wait_for_selector("#runs-table")
    rows_out = _sql(url, "select sum(rows_out) from gold.fact_pipeline_runs group by run_id "
                         "order by min(started_at) desc")
    assert _values(frame, "#runs-table td[data-key=rows_out]") == [None if v is None else float(v) for (v,) in rows_out]
    assert frame.locator("#audit-table tbody tr").count() == _sql(url, "select count(*) from "
                                                                       "gold.fact_pipeline_runs")[0][0]
    assert _charts_drawn(frame) == 3  # rows, seconds per run, durations
    assert _overflowing(frame) == []
    page.screenshot(path=str(artifacts / "cockpit-pipeline.png"))

    # the same page opened directly (what the iframe shows), full height, for the artefacts
    direct = context.new_page()
    direct.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    direct.goto(server.url + "/risk/")
    direct.wait_for_function("document.body.dataset.chartsRendered === '2'")
    direct.screenshot(path=str(artifacts / "cockpit-firm-full.png"), full_page=True)
    assert errors == []
    context.close()


def test_an_unauthenticated_browser_is_refused(cockpit, chromium, artifacts):
    server = cockpit[0]
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    response = page.goto(server.url + "/risk/")
    assert response.status == 401
    assert page.inner_text("#refused").startswith("401")
    assert page.locator("canvas").count() == 0 and page.locator("#breaches-table").count() == 0
    assert page.goto(server.url + "/risk/api/summary").status == 401
    page.goto(server.url + "/plugin/risk")  # the UI route sends a stranger to the login page
    page.wait_for_url("**/auth/login**")
    page.screenshot(path=str(artifacts / "cockpit-refused.png"))
    context.close()


def test_a_logged_in_user_acknowledges_a_breach_and_gold_records_who_and_why(cockpit, chromium, artifacts):
    """Through the Firm page's form: the action lands in gold.fact_breach_actions under the Airflow user (a
    `by_user` field in the form is ignored) and the page shows "acknowledged by admin: reason". Without a login,
    or posted from another site, it is refused and gold is unchanged."""
    server, url = cockpit[0], cockpit[1]
    (pid, limit_type, since), = _sql(url, """
        select portfolio_id, limit_type, as_of_date from gold.fact_limit_breaches where as_of_date = %s
        order by value / limit_value desc limit 1""", (AS_OF,))
    form = {"portfolio_id": pid, "limit_type": limit_type, "breach_began": since.isoformat(), "action": "acknowledge",
            "reason": "stranger", "valid_until": date.today().isoformat(), "as_of": AS_OF.isoformat()}

    stranger = chromium.new_context()
    assert stranger.request.post(server.url + "/risk/breach_action", form=form).status == 401
    stranger.close()

    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    _login(page, server)
    evil = page.request.post(server.url + "/risk/breach_action", form=form, headers={"Origin": "http://evil.example"})
    assert evil.status == 403 and "cross-site" in evil.json()["detail"]
    assert "fact_breach_actions" not in {t for (t,) in _sql(url, "select table_name from information_schema.tables "
                                                                 "where table_schema = 'gold'")}

    page.goto(f"{server.url}/risk/?as_of={AS_OF}")
    row = page.locator("#breaches-table tbody tr").first
    assert row.locator("td[data-key=portfolio_id], a").first.inner_text() == pid
    row.locator("summary").click()
    row.locator("input[name=reason]").fill("hedge booked for Monday")
    page.evaluate("""() => { const f = document.querySelector('#breaches-table tbody tr form');
        const i = document.createElement('input'); i.type = 'hidden'; i.name = 'by_user'; i.value = 'mallory';
        f.appendChild(i); }""")
    with page.expect_navigation(timeout=300_000):  # the action is built into gold before the page comes back
        row.locator("button[type=submit]").click()
    ack = page.locator("#breaches-table tbody tr").first.locator(".ack")
    assert ack.inner_text().startswith("acknowledged by admin: hedge booked for Monday (until ")
    page.screenshot(path=str(artifacts / "cockpit-acknowledged.png"))
    rows = _sql(url, "select portfolio_id, limit_type, breach_began, action, by_user, reason from "
                     "gold.fact_breach_actions")
    assert rows == [(pid, limit_type, since, "acknowledge", "admin", "hedge booked for Monday")]
    summary = page.request.get(f"{server.url}/risk/api/summary?as_of={AS_OF}").json()
    worst = summary["breaches"][0]
    assert (worst["portfolio_id"], worst["action"]["by_user"], worst["days"]) == (pid, "admin", 1)
    context.close()

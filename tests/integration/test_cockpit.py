"""The cockpit's page data (etl.report.cockpit) against gold queried independently, on a real Postgres.

The HTTP and browser checks through a real Airflow API server are in test_cockpit_airflow.py (slow).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import psycopg2
import pytest

from etl.report import cockpit
from etl.report.gold import GoldReader
from tests.support.report_sample import create_gold, sample_book

sys.path.insert(0, str(Path(__file__).parents[2] / "plugins"))  # the plugin package, as Airflow loads it
from risk_cockpit import pages  # noqa: E402

AS_OF = date(2026, 1, 31)
N = 22


def _reporting(url: str) -> str:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u._replace(netloc="reporting@" + u.netloc.rsplit("@", 1)[-1]).geturl()


def _with_attribution(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """fact_pnl_attribution: each day's PnL split 60% market, -10% momentum, the residual the rest (residual
    first, so the page's order is its own)."""
    pnl = frames["fact_pnl_daily"].dropna(subset=["daily_pnl"])
    parts = [pnl.assign(factor_name=f, explained_pnl=pnl["daily_pnl"] * w)
             for f, w in (("residual", 0.5), ("market", 0.6), ("momentum_hml", -0.1))]
    cols = ["portfolio_id", "as_of_date", "factor_name", "explained_pnl"]
    return {**frames, "fact_pnl_attribution": pd.concat(parts, ignore_index=True)[cols]}


@pytest.fixture(scope="module")
def gold(pg_url):
    """A scratch warehouse with the sample book cloned to 22 portfolios; yields (owner URL, reporting URL)."""
    from etl.db import scratch_database

    with scratch_database(pg_url, "cockpit") as url:
        create_gold(url, _with_attribution(sample_book(AS_OF, N)))
        yield url, _reporting(url)


@pytest.fixture
def reader(gold):
    with GoldReader(gold[1]) as r:
        yield r


def _sql(url: str, sql: str, params=None) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def test_summary_is_the_contract_json_with_golds_numbers(reader, gold):
    s = cockpit.summary(reader)
    assert s["as_of"] == "2026-01-31" and s["status"] == "complete"
    assert {"as_of", "status", "breaches", "portfolios"} <= set(s)
    expected = _sql(gold[0], """
        select p.portfolio_id, v.market_value, d.daily_pnl, r.var_95_hist, r.var_99_hist
        from gold.dim_portfolio p
        join gold.fact_portfolio_valuation v on v.portfolio_id = p.portfolio_id and v.as_of_date = %s
        join gold.fact_pnl_daily d on d.portfolio_id = p.portfolio_id and d.as_of_date = %s
        join gold.fact_risk_metrics r on r.portfolio_id = p.portfolio_id and r.as_of_date = %s
        order by 1""", (AS_OF, AS_OF, AS_OF))
    assert len(expected) == N
    got = [tuple(p[k] for k in ("portfolio_id", "market_value", "daily_pnl", "var_95_hist", "var_99_hist"))
           for p in s["portfolios"]]
    assert got == [tuple(r) for r in expected]  # exactly, not approximately: the same numbers as gold
    breaches = _sql(gold[0], "select portfolio_id, limit_type, value, limit_value from gold.fact_limit_breaches "
                             "where as_of_date = %s", (AS_OF,))
    assert len(s["breaches"]) == len(breaches) > 0
    assert {(b["portfolio_id"], b["limit_type"], b["value"], b["limit_value"]) for b in s["breaches"]} == set(breaches)
    for b in s["breaches"]:
        assert b["utilisation"] == pytest.approx(b["value"] / b["limit_value"], rel=1e-12)
        assert b["scope"] == "eod" and b["unit"] == {"var": "currency", "concentration": "fraction"}[b["limit_type"]]
    utils = [b["utilisation"] for b in s["breaches"]]
    assert utils == sorted(utils, reverse=True)  # worst first


def test_an_unknown_day_is_incomplete_and_says_what_is_missing(reader):
    s = cockpit.summary(reader, AS_OF + timedelta(days=1))
    assert s["status"] == "incomplete"
    assert s["missing"][0].startswith("gold.fact_portfolio_valuation: no row for P0001, P0002, P0003, P0004, "
                                      "P0005 and 17 more")
    assert all(p["var_99_hist"] is None for p in s["portfolios"])


def test_without_the_breach_table_no_page_says_complete_or_no_breaches(gold, reader):
    """gold.fact_limit_breaches missing: breaches are unknown, not none. The Firm page, like the summary JSON, is
    incomplete and names it, and never says "no limit breached"."""
    from plugins.risk_cockpit import pages

    _sql(gold[0], "alter table gold.fact_limit_breaches rename to fact_limit_breaches_away")
    try:
        s, f = cockpit.summary(reader), cockpit.firm(reader)
        for d in (s, f):
            assert d["status"] == "incomplete" and d["missing"] == ["gold.fact_limit_breaches is missing"]
        html = pages.firm(f)
        assert "no limit breached" not in html and "limit breaches unknown: the day is incomplete" in html
    finally:
        _sql(gold[0], "alter table gold.fact_limit_breaches_away rename to fact_limit_breaches")


def test_firm_var_is_never_the_sum_of_standalone_vars(gold, reader):
    f = cockpit.firm(reader)
    assert f["firm_risk"] == {"available": False,
                              "note": "firm VaR not yet computed (gold.fact_firm_risk is not built)"}
    _sql(gold[0], """create table gold.fact_firm_risk as select %s::date as as_of_date, 1000.0::float8 as
                     var_95_hist, 1500.0::float8 as var_99_hist, 1200.0::float8 as es_95_hist,
                     1800.0::float8 as es_99_hist, 2500.0::float8 as sum_standalone_var_99_hist,
                     1000.0::float8 as diversification_benefit;
                     grant select on gold.fact_firm_risk to reporting""", (AS_OF,))
    try:
        fr = cockpit.firm(reader)["firm_risk"]
        assert fr["available"] and fr["var_99_hist"] == 1500.0 and fr["diversification_benefit"] == 1000.0
        assert cockpit.firm_risk(reader, AS_OF - timedelta(days=1)) == {
            "available": False, "note": "firm VaR not yet computed for 2026-01-30"}
    finally:
        _sql(gold[0], "drop table gold.fact_firm_risk")


def test_firm_limit_utilisation_and_day_over_day_changes(gold, reader):
    """Firm VaR 99% against the firm limit of gold.dim_firm_limit, and firm VaR and book PnL against the day before."""
    assert cockpit.firm(reader)["firm_risk"].get("limits") is None
    _sql(gold[0], """create table gold.fact_firm_risk as
                     select d::date as as_of_date, v::float8 as var_95_hist, (v * 1.5)::float8 as var_99_hist,
                            v::float8 as es_95_hist, v::float8 as es_99_hist,
                            v::float8 as sum_standalone_var_99_hist, 0.0::float8 as diversification_benefit
                     from unnest(array[%s, %s]::date[], array[1000.0, 1100.0]) as x(d, v);
                     create table gold.dim_firm_limit as select 'firm_var_99'::text as limit_id,
                            'var_99_hist'::text as metric, 1500.0::float8 as limit_value, 'USD'::text as currency;
                     grant select on gold.fact_firm_risk, gold.dim_firm_limit to reporting""",
         (AS_OF - timedelta(days=3), AS_OF))
    try:
        f = cockpit.firm(reader)
        fr = f["firm_risk"]
        assert fr["limits"] == [{"limit_id": "firm_var_99", "metric": "var_99_hist", "limit_value": 1500.0,
                                 "currency": "USD", "value": 1650.0, "utilisation": pytest.approx(1.1),
                                 "uncomputable": False}]
        assert (fr["prev_as_of_date"], fr["var_99_hist_change"]) == ("2026-01-28", pytest.approx(150.0))
        (pnl, prev), = _sql(gold[0], """select sum(daily_pnl) filter (where as_of_date = %s),
                                               sum(daily_pnl) filter (where as_of_date = %s)
                                        from gold.fact_pnl_daily""", (AS_OF, AS_OF - timedelta(days=1)))
        assert f["totals"][0]["daily_pnl_change"] == pytest.approx(pnl - prev)
        from plugins.risk_cockpit import pages

        html = pages.firm(f)
        assert html.index('id="kpi-firm-limit-firm_var_99"') < html.index('id="breaches"')  # the first screen
        assert 'data-value="1.1' in html and 'id="kpi-firm-var-99-change"' in html
    finally:
        _sql(gold[0], "drop table gold.fact_firm_risk, gold.dim_firm_limit")


def test_a_firm_var_null_for_carried_closes_is_an_uncomputable_firm_limit_not_a_blank(gold, reader):
    """The firm's VaR is NULL when too many days of its window rest on carried closes (firm_risk.carried_days):
    the firm limit on it is `uncomputable` (red, like a book's var limit then), and the page says why, never
    an empty card that reads as within the limit."""
    from plugins.risk_cockpit import pages

    _sql(gold[0], """create table gold.fact_firm_risk as select %s::date as as_of_date, null::float8 as var_95_hist,
                            null::float8 as var_99_hist, null::float8 as es_95_hist, null::float8 as es_99_hist,
                            null::float8 as sum_standalone_var_99_hist, null::float8 as diversification_benefit,
                            12::bigint as carried_days, 30::bigint as lookback_days;
                     create table gold.dim_firm_limit as select 'firm_var_99'::text as limit_id,
                            'var_99_hist'::text as metric, 1500.0::float8 as limit_value, 'USD'::text as currency;
                     grant select on gold.fact_firm_risk, gold.dim_firm_limit to reporting""", (AS_OF,))
    try:
        f = cockpit.firm(reader)
        assert f["firm_risk"]["limits"] == [{"limit_id": "firm_var_99", "metric": "var_99_hist", "limit_value": 1500.0,
                                             "currency": "USD", "value": None, "utilisation": None,
                                             "uncomputable": True}]
        html = pages.firm(f)
        card = html[html.index('id="kpi-firm-limit-firm_var_99"') - 200:html.index('id="kpi-firm-limit-firm_var_99"') + 300]
        assert "uncomputable" in card and "neg" in card
        assert "12 of the 30 days of the VaR window rest on a carried-forward close" in html
    finally:
        _sql(gold[0], "drop table gold.fact_firm_risk, gold.dim_firm_limit")


def test_firm_page_totals_and_worst_drawdowns(reader, gold):
    f = cockpit.firm(reader)
    (mv, pnl, mtd), = _sql(gold[0], "select sum(v.market_value), sum(d.daily_pnl), sum(d.mtd_pnl) "
                                    "from gold.fact_portfolio_valuation v join gold.fact_pnl_daily d "
                                    "using (portfolio_id, as_of_date) where as_of_date = %s", (AS_OF,))
    (t,) = f["totals"]
    assert (t["currency"], t["portfolios"]) == ("USD", N)
    assert t["market_value"] == pytest.approx(mv) and t["daily_pnl"] == pytest.approx(pnl)
    assert t["mtd_pnl"] == pytest.approx(mtd)
    worst = _sql(gold[0], "select min(drawdown_from_peak) from gold.fact_risk_metrics where as_of_date = %s",
                 (AS_OF,))   # ranked on the drawdown limit's measure
    assert f["worst_drawdowns"][0]["drawdown_from_peak"] == worst[0][0] and len(f["worst_drawdowns"]) == 5
    assert f["intraday"]["available"] is False
    assert "intraday limit breaches are not in gold yet: end-of-day breaches only" in f["notes"]


def test_breach_since_is_the_first_day_of_the_unbroken_run(gold, reader):
    """P0001's VaR limit also breached on the two days before (and once, a week earlier, after a gap)."""
    _sql(gold[0], """insert into gold.fact_limit_breaches (portfolio_id, as_of_date, limit_type, value,
                                                         limit_value, metric, breach_kind, utilisation, base_currency)
                     select portfolio_id, d::date, limit_type, value, limit_value, metric, breach_kind, utilisation,
                            base_currency
                     from gold.fact_limit_breaches, unnest(array[%s, %s, %s]::date[]) as d
                     where portfolio_id = 'P0001' and as_of_date = %s""",
         (AS_OF - timedelta(days=1), AS_OF - timedelta(days=2), AS_OF - timedelta(days=7), AS_OF))
    try:
        found, _ = cockpit.breaches(reader, AS_OF)
        mine = next(b for b in found if b["portfolio_id"] == "P0001" and b["limit_type"] == "var")
        assert mine["since"] == "2026-01-29"
        other = next(b for b in found if b["portfolio_id"] == "P0003")
        assert other["since"] == "2026-01-31"
    finally:
        _sql(gold[0], "delete from gold.fact_limit_breaches where as_of_date < %s", (AS_OF,))


def test_intraday_breaches_are_read_when_the_table_exists(gold, reader):
    _sql(gold[0], """create table gold.fact_intraday_breaches (portfolio_id text, bucket_start timestamptz,
                     limit_type text, metric text, value float8, limit_value float8);
                     insert into gold.fact_intraday_breaches values
                       ('P0002', %(d)s::date + interval '9 hours', 'var', 'var_99', 2600, 2500),
                       ('P0002', %(d)s::date + interval '10 hours', 'var', 'var_99', 3000, 2500);
                     grant select on gold.fact_intraday_breaches to reporting""", {"d": AS_OF})
    try:
        found, notes = cockpit.breaches(reader, AS_OF)
        intra = [b for b in found if b["scope"] == "intraday"]
        assert len(intra) == 1 and notes == []
        b = intra[0]
        assert (b["value"], b["limit_value"], b["utilisation"]) == (3000, 2500, 1.2)  # the latest bucket
        assert b["since"].startswith("2026-01-31T09:00")                              # since the first one
    finally:
        _sql(gold[0], "drop table gold.fact_intraday_breaches")


def test_an_intraday_breach_that_cleared_is_not_shown_as_open(gold, reader):
    """gold.fact_intraday_limit_breaches as the intraday run writes it: a `breach` row per bucket in breach, then one
    `cleared` row (with cleared_at) at the first bucket back under. A cleared breach is over, not a breach at its
    last value; one that breached again is shown from the bucket its current episode began."""
    _sql(gold[0], """create table gold.fact_intraday_limit_breaches (portfolio_id text, bucket_start timestamptz,
                     limit_type text, metric text, value float8, limit_value float8, status text,
                     breached_at timestamptz, cleared_at timestamptz);
                     insert into gold.fact_intraday_limit_breaches values
                       ('P0002', %(d)s::date + interval '9 hours', 'var', 'var_99', 2600, 2500, 'breach',
                        %(d)s::date + interval '9 hours', null),
                       ('P0002', %(d)s::date + interval '9 hours 5 minutes', 'var', 'var_99', 3000, 2500, 'breach',
                        %(d)s::date + interval '9 hours', null),
                       ('P0002', %(d)s::date + interval '9 hours 10 minutes', 'var', 'var_99', 2000, 2500, 'cleared',
                        %(d)s::date + interval '9 hours', %(d)s::date + interval '9 hours 10 minutes'),
                       ('P0004', %(d)s::date + interval '9 hours', 'var', 'var_99', 2600, 2500, 'breach',
                        %(d)s::date + interval '9 hours', null),
                       ('P0004', %(d)s::date + interval '9 hours 5 minutes', 'var', 'var_99', 2000, 2500, 'cleared',
                        %(d)s::date + interval '9 hours', %(d)s::date + interval '9 hours 5 minutes'),
                       ('P0004', %(d)s::date + interval '10 hours', 'var', 'var_99', 2750, 2500, 'breach',
                        %(d)s::date + interval '10 hours', null);
                     grant select on gold.fact_intraday_limit_breaches to reporting""", {"d": AS_OF})
    try:
        found, _ = cockpit.breaches(reader, AS_OF)
        intra = [(b["portfolio_id"], b["value"], b["since"][11:16]) for b in found if b["scope"] == "intraday"]
        assert intra == [("P0004", 2750, "10:00")]  # P0002 is back under its limit since 09:10
    finally:
        _sql(gold[0], "drop table gold.fact_intraday_limit_breaches")


def test_portfolio_page_numbers_and_parameterised_ids(reader, gold):
    p = cockpit.portfolio(reader, "P0002")
    pos = _sql(gold[0], "select product_id, market_value from gold.fact_positions where portfolio_id = 'P0002' "
                        "and as_of_date = %s order by abs(market_value) desc", (AS_OF,))
    assert [(r["product_id"], r["market_value"]) for r in p["positions"]] == pos
    assert sum(r["share_of_gross"] for r in p["positions"]) == pytest.approx(1.0)
    hist = _sql(gold[0], "select count(*), min(market_value) from gold.fact_portfolio_valuation "
                         "where portfolio_id = 'P0002'")
    assert len(p["history"]) == hist[0][0]
    assert min(r["drawdown"] for r in p["history"]) <= 0 and max(r["drawdown"] for r in p["history"]) == 0
    exc = _sql(gold[0], "select method, confidence, n_days, exceptions from gold.fact_var_model_comparison "
                        "where portfolio_id = 'P0002' and as_of_date = %s order by 1, 2", (AS_OF,))
    assert [(r["method"], r["confidence"], r["days"], r["exceptions"]) for r in p["backtest_summary"]] == exc
    rd = p["returns"]
    assert sum(rd["counts"]) == hist[0][0] - 1 and rd["low"] < 0 < rd["high"]
    assert cockpit.portfolio(reader, "P0002' or '1'='1") is None  # a parameter, never SQL


def test_a_day_without_a_var_forecast_is_a_gap_in_the_backtest_chart_not_an_error(reader, gold):
    """The engine writes a backtest row with a NULL forecast on a day its VaR was uncomputable (it does not count
    that day): the portfolio page draws the day as a gap in the -VaR line, it does not fail."""
    day = AS_OF - timedelta(days=3)
    (old, hit), = _sql(gold[0], "select var_forecast, is_exception from gold.fact_var_backtest where portfolio_id "
                                "= 'P0002' and method = 'hist' and confidence = 0.99 and as_of_date = %s", (day,))
    _sql(gold[0], "update gold.fact_var_backtest set var_forecast = null, is_exception = false where "
                  "portfolio_id = 'P0002' and method = 'hist' and confidence = 0.99 and as_of_date = %s", (day,))
    try:
        html = pages.portfolio(cockpit.portfolio(reader, "P0002"), ["P0002"])
        charts = json.loads(re.search(r'id="chart-data">(.*?)</script>', html, re.S).group(1))
        (config,) = [c["config"] for c in charts if c["id"] == "chart-var"]
        labels = config["data"]["labels"]
        (line,) = [s for s in config["data"]["datasets"] if s["label"] == "-VaR 99%"]
        assert line["data"][labels.index(day.isoformat())] is None
        assert line["data"][labels.index(AS_OF.isoformat())] < 0
    finally:
        _sql(gold[0], "update gold.fact_var_backtest set var_forecast = %s, is_exception = %s where portfolio_id = "
                      "'P0002' and method = 'hist' and confidence = 0.99 and as_of_date = %s", (old, hit, day))


def test_portfolio_page_stacks_the_daily_pnl_by_factor(reader, gold):
    p = cockpit.portfolio(reader, "P0002")
    a = p["attribution"]
    assert list(a["factors"]) == ["market", "momentum_hml", "residual"]      # the model's order, residual last
    pnl = dict(_sql(gold[0], "select as_of_date::text, daily_pnl from gold.fact_pnl_daily "
                             "where portfolio_id = 'P0002' and daily_pnl is not null"))
    assert a["days"] == sorted(pnl) and len(a["days"]) > 30
    for i, day in enumerate(a["days"]):
        assert sum(v[i] for v in a["factors"].values()) == pytest.approx(pnl[day], rel=1e-12)
        assert a["factors"]["market"][i] == pytest.approx(0.6 * pnl[day], rel=1e-12)
    html = pages.portfolio(p, ["P0001", "P0002"])
    charts = json.loads(re.search(r'id="chart-data">(.*?)</script>', html, re.S).group(1))
    (config,) = [c["config"] for c in charts if c["id"] == "chart-attribution"]
    assert config["type"] == "bar" and config["options"]["scales"]["y"]["stacked"] is True
    assert [(s["label"], s["stack"]) for s in config["data"]["datasets"]] == [
        ("market", "pnl"), ("momentum_hml", "pnl"), ("residual", "pnl")]
    assert config["data"]["datasets"][0]["data"] == a["factors"]["market"]


def test_market_and_pipeline_pages(reader, gold):
    m = cockpit.market(reader)
    vol = _sql(gold[0], "select product_id, vol_30d from gold.fact_asset_risk where as_of_date = %s "
                        "order by vol_30d desc", (AS_OF,))
    assert [(v["product_id"], v["vol_30d"]) for v in m["volatility"]] == vol
    c = m["correlation"]
    assert c["products"] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    assert [c["matrix"][i][i] for i in range(3)] == pytest.approx([1.0, 1.0, 1.0])
    assert [a["product_id"] for a in m["anomalies"]] == ["SOL-USD", "ETH-USD"]  # |z| 6.3 then 4.1
    assert [(q["product_id"], q["granularity"], q["rule"], q["decision"]) for q in m["price_quality"]] == \
        _sql(gold[0], "select product_id, granularity, rule, decision from gold.fact_price_quality "
                      "where flag_date = %s", (AS_OF,)) == [("SOL-USD", 300, "spike_revert", "excluded")]
    pl = cockpit.pipeline(reader)
    (n_runs,), = _sql(gold[0], "select count(distinct run_id) from gold.fact_pipeline_runs")
    assert len(pl["runs"]) == n_runs
    # run-1's build_bars_5m failed then succeeded: the last status per DAG is the latest run, all tasks ok
    assert pl["last_status"] == [{"dag_id": "eod_risk", "run_id": "run-3", "started_at": pl["runs"][0]["started_at"],
                                  "status": "success", "tasks": 4, "failed_tasks": 0}]
    bars = next(r for r in pl["durations"] if r["task"] == "build_bars_5m")
    (mean, p95), = _sql(gold[0], "select avg(duration_s), percentile_cont(0.95) within group (order by duration_s)"
                                 " from gold.fact_pipeline_runs where task_id = 'build_bars_5m'")
    assert (bars["mean_s"], bars["p95_s"]) == (pytest.approx(mean), pytest.approx(p95))


def test_a_run_whose_last_attempt_is_up_for_retry_is_not_a_success(gold, reader):
    """The pipeline page's last status per DAG: a run whose task's latest attempt failed and waits for its retry
    has not succeeded (nor failed for good)."""
    _sql(gold[0], """insert into gold.fact_pipeline_runs (run_id, dag_id, task_id, status, started_at, duration_s)
                     select 'run-9', 'eod_risk', 'compute_risk', 'up_for_retry', max(started_at) + interval '1 hour', 1
                     from gold.fact_pipeline_runs""")
    try:
        (last,) = cockpit.pipeline(reader)["last_status"]
        assert (last["run_id"], last["status"], last["failed_tasks"]) == ("run-9", "up_for_retry", 0)
    finally:
        _sql(gold[0], "delete from gold.fact_pipeline_runs where run_id = 'run-9'")


def test_intraday_pnl_and_exposure_are_book_sums_per_bucket(gold, reader):
    """...and a book valued on prices older than RISK_INTRADAY_MAX_PRICE_AGE_S (1 h) is flagged, not fresh."""
    from plugins.risk_cockpit import pages

    _sql(gold[0], """create table gold.fact_intraday_risk (portfolio_id text, bucket_start timestamptz,
                     market_value float8, intraday_pnl float8, gross_exposure float8, scenario_as_of_date date,
                     max_price_age_s float8, stale_product_ids text);
                     insert into gold.fact_intraday_risk values
                       ('P0001', '2026-02-01 09:00+00', 100, 1.5, 120, '2026-01-31', 0, ''),
                       ('P0002', '2026-02-01 09:00+00', 50, -0.5, 60, '2026-01-31', 7200, 'SOL-USD'),
                       ('P0001', '2026-02-01 09:05+00', 101, 2.5, 121, '2026-01-31', 4000, 'BTC-USD'),
                       ('P0002', '2026-02-01 09:05+00', 51, -0.4, 61, '2026-01-31', 300, 'SOL-USD'),
                       ('P0001', '2026-01-31 23:55+00', 99, 9.0, 119, '2026-01-30', 0, '');
                     grant select on gold.fact_intraday_risk to reporting""")
    try:
        intra = cockpit.intraday(reader, date(2026, 2, 1))
        assert intra["available"] and intra["day"] == "2026-02-01"  # the as-of day's buckets only
        assert [(r["bucket_start"][11:16], r["intraday_pnl"], r["gross_exposure"], r["stale_books"])
                for r in intra["rows"]] == [("09:00", 1.0, 180.0, 1), ("09:05", 2.1, 182.0, 1)]
        assert [r["intraday_pnl"] for r in cockpit.intraday(reader, AS_OF)["rows"]] == [9.0]
        assert [(b["portfolio_id"], b["max_price_age_s"], b["stale_product_ids"]) for b in intra["stale_books"]] == [
            ("P0001", 4000.0, "BTC-USD")]                       # the last bucket: P0002's prices are fresh again
        assert ('<div class="status stale" id="intraday-stale">STALE intraday valuation (prices older than 1 h): '
                'P0001 (prices 1.1 h old: BTC-USD); the book totals below include them</div>') == \
            pages.intraday_stale(intra)
        assert cockpit.intraday(reader, date(2026, 2, 1), max_price_age_s=5000)["stale_books"] == []
        assert intra["scenario_note"] is None                      # the previous close's scenario set
        # the latest bucket without a scenario set: the cockpit names the missing one
        _sql(gold[0], "update gold.fact_intraday_risk set scenario_as_of_date = null "
                      "where bucket_start = '2026-02-01 09:05+00'")
        assert cockpit.intraday(reader, AS_OF)["scenario_note"] is None  # the as-of day's own last bucket is fine
        assert cockpit.intraday(reader, date(2026, 2, 1))["scenario_note"] == (
            "Intraday VaR/ES at 2026-02-01 09:05 UTC are uncomputable: the end-of-day scenario set as of 2026-01-31 "
            "is missing (VaR limits count as breached); run the end-of-day risk for that day")
        _sql(gold[0], "update gold.fact_intraday_risk set scenario_as_of_date = '2026-01-20' "
                      "where bucket_start = '2026-02-01 09:05+00'")
        assert "stale end-of-day scenario set as of 2026-01-20; the one as of 2026-01-31 is missing" in \
            cockpit.intraday(reader, date(2026, 2, 1))["scenario_note"]
    finally:
        _sql(gold[0], "drop table gold.fact_intraday_risk")


def test_intraday_book_totals_never_add_books_of_different_currencies(gold, reader):
    """A BTC-based book's value and PnL are in BTC: the intraday totals are per base currency, as the EOD ones."""
    from plugins.risk_cockpit import pages

    _sql(gold[0], """update gold.dim_portfolio set base_currency = 'BTC' where portfolio_id = 'P0003';
                     create table gold.fact_intraday_risk (portfolio_id text, bucket_start timestamptz,
                     market_value float8, intraday_pnl float8, gross_exposure float8, max_price_age_s float8,
                     stale_product_ids text);
                     insert into gold.fact_intraday_risk values
                       ('P0001', '2026-02-01 09:00+00', 100000, 1500, 120000, 0, ''),
                       ('P0002', '2026-02-01 09:00+00', 50000, -500, 60000, 0, ''),
                       ('P0003', '2026-02-01 09:00+00', 2.5, 0.01, 2.5, 0, ''),
                       ('P0001', '2026-02-01 09:05+00', 101000, 2500, 121000, 0, ''),
                       ('P0003', '2026-02-01 09:05+00', 2.6, 0.02, 2.6, 0, '');
                     grant select on gold.fact_intraday_risk to reporting""")
    try:
        intra = cockpit.intraday(reader, date(2026, 2, 1))
        assert [(r["bucket_start"][11:16], r["currency"], r["intraday_pnl"], r["gross_exposure"])
                for r in intra["rows"]] == [("09:00", "BTC", 0.01, 2.5), ("09:00", "USD", 1000.0, 180000.0),
                                            ("09:05", "BTC", 0.02, 2.6), ("09:05", "USD", 2500.0, 121000.0)]
        charts = json.loads(re.search(r'id="chart-data">(.*?)</script>',
                                      pages.firm(cockpit.firm(reader, date(2026, 2, 1))), re.S).group(1))
        intraday_charts = {c["id"]: c["config"] for c in charts if c["id"].startswith("chart-intraday")}
        assert sorted(intraday_charts) == ["chart-intraday-BTC", "chart-intraday-USD"]
        btc = intraday_charts["chart-intraday-BTC"]
        assert "(BTC)" in btc["options"]["plugins"]["title"]["text"]
        assert [d["data"] for d in btc["data"]["datasets"]] == [[0.01, 0.02], [2.5, 2.6]]
    finally:
        _sql(gold[0], "drop table gold.fact_intraday_risk; "
                      "update gold.dim_portfolio set base_currency = 'USD' where portfolio_id = 'P0003'")


def test_an_intraday_total_is_missing_when_a_book_lacks_the_figure(gold, reader):
    """A book holding a product with no price at all has NULL intraday figures (never 0): the book total of that
    bucket is missing too, not the sum of the other books; the next bucket, priced again, has its total."""
    _sql(gold[0], """create table gold.fact_intraday_risk (portfolio_id text, bucket_start timestamptz,
                     market_value float8, intraday_pnl float8, gross_exposure float8, max_price_age_s float8,
                     stale_product_ids text);
                     insert into gold.fact_intraday_risk values
                       ('P0001', '2026-02-01 09:00+00', 100, 1.5, 120, 0, ''),
                       ('P0002', '2026-02-01 09:00+00', null, null, null, null, 'SOL-USD'),
                       ('P0001', '2026-02-01 09:05+00', 101, 2.5, 121, 0, ''),
                       ('P0002', '2026-02-01 09:05+00', 51, -0.4, 61, 0, '');
                     grant select on gold.fact_intraday_risk to reporting""")
    try:
        rows = cockpit.intraday(reader, date(2026, 2, 1))["rows"]
        assert [(r["bucket_start"][11:16], r["market_value"], r["intraday_pnl"], r["gross_exposure"])
                for r in rows] == [("09:00", None, None, None), ("09:05", 152.0, 2.1, 182.0)]
    finally:
        _sql(gold[0], "drop table gold.fact_intraday_risk")


def test_the_pnl_change_is_missing_when_the_previous_days_pnl_is_partial(gold, reader):
    """The previous day's book PnL with one portfolio's PnL NULL is not the book's PnL: no day-over-day change."""
    prev = AS_OF - timedelta(days=1)
    (old,), = _sql(gold[0], "select daily_pnl from gold.fact_pnl_daily where portfolio_id = 'P0003' "
                            "and as_of_date = %s", (prev,))
    _sql(gold[0], "update gold.fact_pnl_daily set daily_pnl = null where portfolio_id = 'P0003' "
                  "and as_of_date = %s", (prev,))
    try:
        (t,) = cockpit.firm(reader)["totals"]
        assert t["daily_pnl"] is not None and t["daily_pnl_change"] is None
    finally:
        _sql(gold[0], "update gold.fact_pnl_daily set daily_pnl = %s where portfolio_id = 'P0003' "
                      "and as_of_date = %s", (old, prev))


def test_a_total_is_missing_when_a_portfolio_lacks_the_figure(gold, reader):
    """A partial sum is not the book's value: P0003 without its valuation makes the book value missing (the page
    reads "–"), while the PnL total, which every portfolio has, stays the sum."""
    _sql(gold[0], "update gold.fact_portfolio_valuation set as_of_date = '2000-01-01' "
                  "where portfolio_id = 'P0003' and as_of_date = %s", (AS_OF,))
    try:
        (t,) = cockpit.firm(reader)["totals"]
        (pnl,), = _sql(gold[0], "select sum(daily_pnl) from gold.fact_pnl_daily where as_of_date = %s", (AS_OF,))
        assert t["market_value"] is None and t["daily_pnl"] == pytest.approx(pnl)
    finally:
        _sql(gold[0], "update gold.fact_portfolio_valuation set as_of_date = %s "
                      "where portfolio_id = 'P0003' and as_of_date = '2000-01-01'", (AS_OF,))


def test_the_return_distributions_anomaly_band_is_the_engines_threshold_and_robust_z(monkeypatch):
    """The band is where the engine's robust z (etl.risk.anomalies: 0.6745 (x - median) / MAD) passes the anomaly
    threshold the engine flags at (RISK_ANOMALY_THRESHOLD), not a threshold of the cockpit's own: with the setting
    at 2.5 a return of robust z 3 is outside the band and counted, as the engine would flag it."""
    from etl.risk.anomalies import MAD_CONSTANT

    monkeypatch.setenv("RISK_ANOMALY_THRESHOLD", "2.5")
    r = pd.Series([0.01, -0.01, 0.02, -0.02, 0.0, 0.01, -0.01, 0.0, 0.03, -0.03])
    med = float(r.median())
    mad = float((r - med).abs().median())
    spike = med + 3.0 * mad / MAD_CONSTANT                       # robust z = 3: flagged at 2.5, not at 3.5
    r = pd.concat([r, pd.Series([spike])], ignore_index=True)
    got = cockpit.return_distribution(r)
    med, mad = float(r.median()), float((r - r.median()).abs().median())
    z = MAD_CONSTANT * (r - med) / mad
    assert got["low"] == pytest.approx(med - 2.5 * mad / MAD_CONSTANT, rel=1e-12)
    assert got["high"] == pytest.approx(med + 2.5 * mad / MAD_CONSTANT, rel=1e-12)
    assert got["outliers"] == int((z.abs() > 2.5).sum()) >= 1


def test_the_pnl_of_a_day_the_book_was_closed_out_is_in_the_portfolio_pages_history(reader, gold):
    """A book sold everything at the close of D: the engine writes D's PnL (what it held at D-1, revalued) but no
    valuation row for D (it held nothing at D's close). The portfolio page's history was the valuation rows with
    their PnL, so D's PnL and return were missing from the PnL chart and the return distribution, while the HTML
    report's chart (every fact_pnl_daily row) showed it. The history now has every day of either table."""
    day = AS_OF - timedelta(days=3)
    key = "portfolio_id = 'P0002' and as_of_date = %s"
    (pnl, ret), = _sql(gold[0], f"select daily_pnl, daily_return from gold.fact_pnl_daily where {key}", (day,))
    before = cockpit.portfolio(reader, "P0002")
    _sql(gold[0], f"create table gold.t3_closed_out as select * from gold.fact_portfolio_valuation where {key}",
         (day,))
    _sql(gold[0], f"delete from gold.fact_portfolio_valuation where {key}", (day,))
    try:
        p = cockpit.portfolio(reader, "P0002")
    finally:
        _sql(gold[0], "insert into gold.fact_portfolio_valuation select * from gold.t3_closed_out")
        _sql(gold[0], "drop table gold.t3_closed_out")
    (row,) = [r for r in p["history"] if r["as_of_date"] == day.isoformat()]
    assert (row["daily_pnl"], row["daily_return"], row["market_value"]) == (pnl, ret, None)
    assert [r["as_of_date"] for r in p["history"]] == [r["as_of_date"] for r in before["history"]]
    assert p["returns"] == before["returns"]

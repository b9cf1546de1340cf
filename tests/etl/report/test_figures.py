"""Compute once, read after: every figure the cockpit and the HTML report show is a gold row as the risk engine
computed it. A risk run of the real engine (etl.risk.engine.compute_tables) on a small book, its tables as the
gold marts select them (etl/warehouse/tables.yml `gold:` -> `from:`), the pages rendered from gold, and each
number shown compared with the gold row it comes from (queried here independently of the pages' code)."""

from __future__ import annotations

import json
import re
import sys
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from etl import db
from etl.report import cockpit, html
from etl.report.completeness import Completeness
from etl.report.data import load_report_data
from etl.report.figures import correlation_matrix
from etl.report.gold import GoldReader
from etl.risk.engine import RiskParams, compute_tables, price_flags
from etl.settings import PROJECT_ROOT
from etl.warehouse.schema import GOLD, TABLES
from tests.support.report_sample import create_gold

sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
from risk_cockpit import pages  # noqa: E402

DAYS = pd.date_range("2026-01-01", periods=90, freq="D")
AS_OF = DAYS[-1].date()
QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "SOL-USD": "USD"}
PORTFOLIOS = pd.DataFrame({  # a USD book and a BTC-based one: contributions in two currencies and two scopes
    "portfolio_id": ["PUSD", "PBTC"], "name": ["USD book", "BTC book"], "base_currency": ["USD", "BTC"],
    "var_limit": [1e9, 1e9], "concentration_limit": [1.0, 1.0], "drawdown_limit": [0.01, 0.9],
    "var_limit_metric": ["var_99_hist", "var_99_hist"]})
BOOK = pd.DataFrame({"portfolio_id": ["PUSD", "PUSD", "PUSD", "PBTC", "PBTC"],
                     "product_id": ["BTC-USD", "ETH-USD", "SOL-USD", "ETH-USD", "SOL-USD"],
                     "as_of_date": pd.Timestamp("2025-12-01"), "quantity": [0.5, 10.0, -100.0, 20.0, 300.0],
                     "avg_cost": [60_000.0, 3_000.0, 150.0, 2_900.0, 140.0]})


PAGE_SOURCES = ("positions_valued", "portfolio_valuation", "pnl_daily", "risk_metrics", "asset_risk", "var_backtest",
                "limit_breaches", "correlations", "firm_risk", "risk_contributions", "drawdowns",
                "var_model_comparison")


def _closes() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    r = rng.standard_normal((len(DAYS), 3)) * [0.03, 0.04, 0.06]
    return pd.DataFrame(np.exp(np.cumsum(r, axis=0)) * [60_000.0, 3_000.0, 150.0], index=DAYS, columns=list(QUOTE))


def gold_frames() -> dict[str, pd.DataFrame]:
    """The engine's tables for AS_OF as gold holds them, plus the dimensions and daily prices they refer to."""
    closes = _closes()
    tables = compute_tables(closes, QUOTE, PORTFOLIOS, BOOK, RiskParams(var_lookback_days=60, backtest_days=40,
                                                                         mc_scenarios=1000))
    last_bar = pd.Series(closes.index[-1], index=closes.columns)
    tables["positions_valued"] = price_flags(tables["positions_valued"], last_bar,
                                             pd.Series(pd.NaT, index=closes.columns))
    raw = {t.name: t for t in TABLES}
    frames = {"fact_anomalies": pd.DataFrame({"product_id": pd.Series(dtype=str), "return_value": pd.Series(
        dtype=float), "robust_z": pd.Series(dtype=float), "bucket_start": pd.Series(dtype="datetime64[ns, UTC]")})}
    for model, spec in GOLD.items():
        source = spec.get("from")
        if source in PAGE_SOURCES:
            cols = [c for c in raw[source].column_names if c in tables[source] and c not in spec.get("exclude", ())]
            frames[model] = tables[source][cols]
    prices = closes.stack().rename("close").reset_index().set_axis(["price_date", "product_id", "close"], axis=1)
    prices["daily_return"] = prices.groupby("product_id")["close"].pct_change()   # as the fact_price_daily mart
    frames["fact_price_daily"] = prices.assign(price_date=prices["price_date"].dt.date)
    frames["dim_portfolio"] = PORTFOLIOS.assign(is_current=True)  # as gold has it
    frames["dim_symbol"] = pd.DataFrame({"product_id": list(QUOTE), "base_currency": ["BTC", "ETH", "SOL"],
                                         "quote_currency": "USD", "exchange_id": "coinbase", "asset_class": "crypto",
                                         "delisted_on": pd.Series(pd.NaT, index=range(3), dtype="datetime64[ns]")})
    frames["fact_factor_exposures"] = pd.DataFrame({"product_id": ["BTC-USD"], "factor_name": ["market"],
                                                    "beta": [1.0], "r_squared": [0.9],
                                                    "bucket_start": [pd.Timestamp(AS_OF, tz="UTC")]})
    for name, df in frames.items():  # dates as Postgres dates, as dbt's marts type them
        frames[name] = df.assign(**{c: pd.to_datetime(df[c]).dt.date for c in df.columns
                                    if c.endswith(("_date", "date_day")) and df[c].dtype.kind == "M"})
    return frames


@pytest.fixture(scope="module")
def gold(pg_url):
    with db.scratch_database(pg_url, "figures") as url:
        create_gold(url, gold_frames())
        u = urlparse(url)
        yield url, u._replace(netloc="reporting@" + u.netloc.rsplit("@", 1)[-1]).geturl()


@pytest.fixture
def reader(gold):
    with GoldReader(gold[1]) as r:
        yield r


def q(url: str, sql: str, params=None) -> pd.DataFrame:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])


def data_values(page: str, table_id: str, key: str) -> list[float]:
    """The exact numbers (data-value) of one column of one cockpit table, in row order."""
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    return [float(v) for v in re.findall(rf'data-key="{key}" data-value="([^"]+)"', body)]


def chart_data(page: str, chart_id: str) -> dict:
    charts = json.loads(re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page,
                                  re.S).group(1))
    return next(c["config"] for c in charts if c["id"] == chart_id)


def test_correlation_matrix_is_golds_pairs_in_both_orders():
    pairs = pd.DataFrame({"product_id_a": ["A", "A", "B"], "product_id_b": ["B", "C", "C"],
                          "correlation": [0.5, -0.2, np.nan]})
    m = correlation_matrix(pairs)
    assert list(m.index) == list(m.columns) == ["A", "B", "C"]
    np.testing.assert_array_equal(m.to_numpy(), [[1.0, 0.5, -0.2], [0.5, 1.0, np.nan], [-0.2, np.nan, 1.0]])
    assert correlation_matrix(pairs.iloc[:0]).empty


def rendered(reader, name: str):
    """The cockpit page `name` of AS_OF: its data (what the API returns) and its HTML."""
    d = getattr(cockpit, name)(reader, AS_OF)
    return d, getattr(pages, name)(d)


def test_the_firm_page_shows_golds_figures_and_the_drawdown_limits_measure(gold, reader):
    url, (d, page) = gold[0], rendered(reader, "firm")
    risk = q(url, "select * from gold.fact_risk_metrics where as_of_date = %s order by drawdown_from_peak, "
                  "portfolio_id", (AS_OF,))
    # worst drawdowns: ranked on the measure the limit is checked on, each figure gold's
    assert [(r["portfolio_id"], r["drawdown_from_peak"], r["max_drawdown"], r["lookback_days"])
            for r in d["worst_drawdowns"]] == list(risk[["portfolio_id", "drawdown_from_peak", "max_drawdown",
                                                        "lookback_days"]].itertuples(index=False, name=None))
    assert data_values(page, "drawdowns-table", "drawdown_from_peak") == risk["drawdown_from_peak"].tolist()
    assert data_values(page, "drawdowns-table", "max_drawdown") == risk["max_drawdown"].tolist()
    assert "Limit (on drawdown from peak)" in page
    # the portfolio table: every number is the day's gold row
    day = q(url, """select r.portfolio_id, v.market_value, d.daily_pnl, d.mtd_pnl, r.var_95_hist, r.var_99_hist,
                           r.es_99_hist, v.concentration_pct, r.max_drawdown
                    from gold.fact_risk_metrics as r
                    join gold.fact_portfolio_valuation as v using (portfolio_id, as_of_date)
                    join gold.fact_pnl_daily as d using (portfolio_id, as_of_date)
                    where r.as_of_date = %s""", (AS_OF,)).set_index("portfolio_id")
    shown = re.findall(r'<a href="[^"]*/portfolio/(\w+)[^"]*">', re.search(
        r'<table id="portfolios-table">(.*?)</table>', page, re.S).group(1))
    for key in day.columns:
        assert data_values(page, "portfolios-table", key) == day.loc[shown, key].tolist(), key
    # the drawdown breach: gold's row, metric drawdown_from_peak, value |drawdown_from_peak|
    breach = q(url, "select portfolio_id, metric, value, limit_value from gold.fact_limit_breaches "
                    "where limit_type = 'drawdown'")
    assert breach.values.tolist() == [["PUSD", "drawdown_from_peak",
                                       -risk.set_index("portfolio_id").at["PUSD", "drawdown_from_peak"], 0.01]]
    got = [b for b in d["breaches"] if b["limit_type"] == "drawdown"]
    assert [(b["portfolio_id"], b["metric"], b["value"], b["limit_value"]) for b in got] == \
        [tuple(r) for r in breach.values.tolist()]
    assert '<td data-key="metric">drawdown_from_peak</td>' in page
    # contributions to the firm: scope firm, USD, gold's rows
    firm = q(url, """select portfolio_id, product_id, component_var_99_param, component_es_99_hist
                     from gold.fact_risk_contributions where scope = 'firm' and as_of_date = %s
                     order by component_var_99_param desc, portfolio_id, product_id""", (AS_OF,))
    assert {(r["scope"], r["currency"]) for r in d["contributions"]} == {("firm", "USD")}
    assert [(r["portfolio_id"], r["product_id"], r["component_var_99_param"], r["component_es_99_hist"])
            for r in d["contributions"]] == list(firm.itertuples(index=False, name=None))
    assert "Risk contributions to the firm's VaR/ES, largest first (scope firm, USD)" in page
    assert data_values(page, "contributions-table", "component_var_99_param") == firm["component_var_99_param"].tolist()


@pytest.mark.parametrize("pid, ccy", [("PBTC", "BTC"), ("PUSD", "USD")])
def test_the_portfolio_page_shows_golds_series_and_its_own_scope(gold, reader, pid, ccy):
    url = gold[0]
    d = cockpit.portfolio(reader, pid, AS_OF)
    page = pages.portfolio(d, ["PBTC", "PUSD"])
    hist = q(url, """select v.as_of_date, v.market_value, d.daily_pnl, v.drawdown, d.daily_return
                     from gold.fact_portfolio_valuation as v
                     left join gold.fact_pnl_daily as d using (portfolio_id, as_of_date)
                     where v.portfolio_id = %s order by v.as_of_date""", (pid,))
    for col in ("market_value", "daily_pnl", "drawdown", "daily_return"):
        assert [r[col] for r in d["history"]] == hist[col].tolist(), col
    # the charts plot those rows, not a recomputation
    assert chart_data(page, "chart-drawdown")["data"]["datasets"][0]["data"] == hist["drawdown"].tolist()
    assert chart_data(page, "chart-value")["data"]["datasets"][0]["data"] == hist["market_value"].tolist()
    counts, _ = np.histogram(hist["daily_return"].dropna(), bins=30)
    assert d["returns"]["counts"] == counts.tolist()
    # KPIs: the day's gold figures, the drawdown limit's measure among them
    risk = q(url, "select * from gold.fact_risk_metrics where portfolio_id = %s", (pid,)).iloc[0]
    for key in ("var_95_hist", "var_99_hist", "es_99_hist", "vol_30d", "max_drawdown", "drawdown_from_peak"):
        assert re.search(rf'id="kpi-{key.replace("_", "-")}".*?data-value="{re.escape(repr(float(risk[key])))}"',
                         page), key
    assert f"on the drawdown from peak over {risk['lookback_days']} days" in page
    # the backtest table: the engine's summary of the day, not a recount of the rows charted
    bt = q(url, "select method, confidence, n_days, exceptions, expected_exceptions, traffic_light "
                "from gold.fact_var_model_comparison where portfolio_id = %s order by method, confidence", (pid,))
    assert len(bt) == 24                                                   # 8 methods x 3 levels
    for key, col in (("days", "n_days"), ("exceptions", "exceptions"), ("expected", "expected_exceptions"),
                     ("confidence", "confidence")):
        assert data_values(page, "backtest-table", key) == bt[col].astype(float).tolist(), key
    # no scored day (n_days 0): no light, an empty cell
    assert re.findall(r'<td data-key="traffic_light">(\w*)</td>', page) == bt["traffic_light"].fillna("").tolist()
    # positions: share of gross is gold's |weight|
    pos = q(url, "select product_id, market_value, abs(weight) as share from gold.fact_positions "
                 "where portfolio_id = %s and as_of_date = %s order by abs(market_value) desc", (pid, AS_OF))
    assert data_values(page, "positions-table", "share_of_gross") == pos["share"].tolist()
    # contributions: only the portfolio's own scope, in its base currency; none of the firm-scope figures
    contrib = q(url, """select scope, product_id, currency, component_var_99_param from gold.fact_risk_contributions
                        where portfolio_id = %s and as_of_date = %s order by component_var_99_param desc""",
                (pid, AS_OF))
    own = contrib[contrib["scope"] == "portfolio"]
    assert {(r["scope"], r["currency"]) for r in d["contributions"]} == {("portfolio", ccy)}
    assert [(r["product_id"], r["component_var_99_param"]) for r in d["contributions"]] == \
        list(own[["product_id", "component_var_99_param"]].itertuples(index=False, name=None))
    assert data_values(page, "contributions-table", "component_var_99_param") == own["component_var_99_param"].tolist()
    assert chart_data(page, "chart-contributions")["data"]["datasets"][0]["data"] == \
        own["component_var_99_param"].tolist()
    assert f"(scope portfolio, {ccy})" in page
    firm_values = set(contrib.loc[contrib["scope"] == "firm", "component_var_99_param"])
    assert firm_values and not firm_values & set(data_values(page, "contributions-table", "component_var_99_param"))


def test_the_market_page_shows_the_engines_correlations_and_golds_returns(gold, reader):
    url, (d, page) = gold[0], rendered(reader, "market")
    pairs = q(url, "select product_id_a, product_id_b, correlation, n_obs, return_currency "
                   "from gold.fact_correlations where as_of_date = %s", (AS_OF,))
    c = d["correlation"]
    assert c["products"] == ["BTC-USD", "ETH-USD", "SOL-USD"] and len(pairs) == 3
    for r in pairs.itertuples():
        i, j = c["products"].index(r.product_id_a), c["products"].index(r.product_id_b)
        assert c["matrix"][i][j] == c["matrix"][j][i] == r.correlation
        assert f'data-value="{r.correlation!r}"' in page
    assert (c["n_obs"], c["return_currency"]) == (60, "USD")
    assert "Correlation of daily USD returns (60 days, as the risk engine stored it)" in page
    # the engine's own figure: simple USD returns over the VaR lookback
    r = _closes().pct_change().iloc[-60:]
    assert pairs.set_index(["product_id_a", "product_id_b"]).at[("BTC-USD", "SOL-USD"), "correlation"] == \
        pytest.approx(r["BTC-USD"].corr(r["SOL-USD"]), rel=1e-12)
    prices = q(url, "select product_id, close, daily_return from gold.fact_price_daily where price_date = %s "
                    "order by product_id", (AS_OF,))
    assert data_values(page, "prices-table", "close") == prices["close"].tolist()
    assert data_values(page, "prices-table", "change_1d") == prices["daily_return"].tolist()
    vol = q(url, "select vol_30d, max_drawdown from gold.fact_asset_risk where as_of_date = %s "
                 "order by vol_30d desc", (AS_OF,))
    assert data_values(page, "volatility-table", "vol_30d") == vol["vol_30d"].tolist()


def test_the_html_report_shows_golds_figures(gold, reader):
    url = gold[0]
    data = load_report_data(reader, AS_OF, Completeness(AS_OF))  # the figures, on a day taken as complete
    out = html.pages(data)
    report = out["report.html"]
    risk = q(url, "select portfolio_id, drawdown_from_peak, max_drawdown from gold.fact_risk_metrics "
                  "order by drawdown_from_peak", ())
    table = re.search(r'id="summary-drawdowns-table">(.*?)</table>', report, re.S).group(1)
    rows = re.findall(r"<tr><td>(\w+)</td><td[^>]*>([^<]+)</td><td[^>]*>([^<]+)</td><td[^>]*>([^<]+)</td>", table)
    assert rows == [(r.portfolio_id, html.pct(r.drawdown_from_peak), html.pct(lim), html.pct(r.max_drawdown))
                    for r, lim in zip(risk.itertuples(), [0.01 if p == "PUSD" else 0.9 for p in risk["portfolio_id"]],
                                      strict=True)]
    assert "Limit (on drawdown from peak)" in report and html.e(html.DRAWDOWN_MEASURE) in report
    assert "Correlation of daily USD returns, last 60 days" in report      # the engine's convention, named
    stored = q(url, "select correlation from gold.fact_correlations order by product_id_a, product_id_b")
    assert data.get("correlations")["correlation"].tolist() == stored["correlation"].tolist()
    detail = out["portfolio-pbtc.html"]
    pos = q(url, "select product_id, abs(weight) as share from gold.fact_positions where portfolio_id = 'PBTC' "
                 "order by abs(weight) desc")
    shares = re.findall(r"<td>(\w+-USD)</td>.*?<td class=\"num\">([\d.]+%)</td></tr>",
                        re.search(r'id="positions-pbtc">(.*?)</table>', detail, re.S).group(1))
    assert shares == [(r.product_id, html.pct(r.share)) for r in pos.itertuples()]
    assert "(drawdown: on the drawdown from peak)" in detail
    bt = q(url, "select traffic_light, n_days from gold.fact_var_model_comparison where portfolio_id = 'PBTC' "
                "and method = 'hist' and confidence = 0.99")
    assert f'(hist VaR 99%, last {bt["n_days"].iat[0]} days): <span class="badge zone-{bt["traffic_light"].iat[0]}"' \
        in detail


def _cell_texts(page: str, table_id: str, key: str) -> list[str]:
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    return re.findall(rf'<td[^>]*data-key="{key}"[^>]*>([^<]*)</td>', body)


def test_the_portfolio_tables_read_a_btc_books_amounts_to_the_satoshi(gold, reader):
    """The Firm page's and the report's portfolio tables read every amount to the cent whatever the book's currency:
    PBTC's VaR 99% of 0.0123... BTC (gold's row) read 0.01, its book value 2 decimals of BTC. An amount of a book in a
    currency other than USD reads with 8 decimals (etl.report.formatting.money_decimals), as on its own page."""
    from etl.report.formatting import Formats
    fmt = Formats(lambda v: v is not None and not pd.isna(v))
    url, (_, page) = gold[0], rendered(reader, "firm")
    day = q(url, """select r.portfolio_id, v.market_value, r.var_99_hist from gold.fact_risk_metrics as r
                    join gold.fact_portfolio_valuation as v using (portfolio_id, as_of_date)
                    where r.as_of_date = %s""", (AS_OF,)).set_index("portfolio_id")
    ccy = {"PUSD": "USD", "PBTC": "BTC"}
    shown = re.findall(r'<a href="[^"]*/portfolio/(\w+)[^"]*">', re.search(
        r'<table id="portfolios-table">(.*?)</table>', page, re.S).group(1))
    for key in ("market_value", "var_99_hist"):
        assert _cell_texts(page, "portfolios-table", key) == \
            [fmt.money(day.at[p, key], ccy[p]).removesuffix(f" {ccy[p]}") for p in shown], key
    data = load_report_data(reader, AS_OF, Completeness(AS_OF))
    report = html.pages(data)["portfolios.html"]
    body = re.search(r'<table id="all-portfolios-table">(.*?)</table>', report, re.S) or \
        re.search(r"<table[^>]*>(.*?)</table>", report, re.S)
    rows = {m[0]: m[1] for m in re.findall(r"<tr><td>(\w+)</td>(.*?)</tr>", body.group(1), re.S)}
    assert fmt.money(day.at["PBTC", "var_99_hist"], "BTC").removesuffix(" BTC") in rows["PBTC"]
    assert fmt.money(day.at["PUSD", "var_99_hist"], "USD").removesuffix(" USD") in rows["PUSD"]


def test_the_cockpit_portfolio_page_reads_a_btc_books_tables_to_the_satoshi(gold, reader):
    """PBTC's page said its VaR/ES by method, market values and contributions are in BTC but read them to the cent:
    a VaR 99% (hist) of 0.156... BTC read 0.16, its KPI above it 8 decimals. Every amount of its tables reads to
    the decimals of the book's currency."""
    from etl.report.formatting import Formats
    fmt = Formats(lambda v: v is not None and not pd.isna(v))
    url = gold[0]
    page = pages.portfolio(cockpit.portfolio(reader, "PBTC", AS_OF), ["PBTC", "PUSD"])
    risk = q(url, "select * from gold.fact_risk_metrics where portfolio_id = 'PBTC' and as_of_date = %s",
             (AS_OF,)).iloc[0]
    body = re.search(r'<table id="risk-methods">(.*?)</table>', page, re.S).group(1)
    assert f">{fmt.money(risk['var_99_hist'], 'BTC').removesuffix(' BTC')}</td>" in body
    pos = q(url, "select product_id, market_value from gold.fact_positions where portfolio_id = 'PBTC' "
                 "and as_of_date = %s", (AS_OF,))
    shown = _cell_texts(page, "positions-table", "market_value")
    assert sorted(shown) == sorted(fmt.money(v, "BTC").removesuffix(" BTC") for v in pos["market_value"])
    contrib = q(url, "select component_var_99_param from gold.fact_risk_contributions where portfolio_id = 'PBTC' "
                     "and scope = 'portfolio' and as_of_date = %s", (AS_OF,))
    assert sorted(_cell_texts(page, "contributions-table", "component_var_99_param")) == \
        sorted(fmt.money(v, "BTC").removesuffix(" BTC") for v in contrib["component_var_99_param"])


def test_the_report_portfolio_page_reads_a_btc_books_tables_to_the_satoshi(gold, reader):
    """The report's page of PBTC read its VaR/ES by method and its positions' BTC market values to the cent."""
    from etl.report.formatting import Formats
    fmt = Formats(lambda v: v is not None and not pd.isna(v))
    url = gold[0]
    detail = html.pages(load_report_data(reader, AS_OF, Completeness(AS_OF)))["portfolio-pbtc.html"]
    risk = q(url, "select * from gold.fact_risk_metrics where portfolio_id = 'PBTC' and as_of_date = %s",
             (AS_OF,)).iloc[0]
    body = re.search(r'<table id="risk-pbtc">(.*?)</table>', detail, re.S).group(1)
    assert f">{fmt.money(risk['var_99_hist'], 'BTC').removesuffix(' BTC')}</td>" in body
    pos = q(url, "select market_value from gold.fact_positions where portfolio_id = 'PBTC' and as_of_date = %s",
            (AS_OF,))
    body = re.search(r'<table id="positions-pbtc">(.*?)</table>', detail, re.S).group(1)
    for v in pos["market_value"]:
        assert f">{fmt.money(v, 'BTC').removesuffix(' BTC')}</td>" in body

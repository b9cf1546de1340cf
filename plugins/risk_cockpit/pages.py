"""HTML of the cockpit pages, rendered from the page dicts of `etl.report.cockpit` (the same the JSON serves).

Numbers are written into the page by the server (each numeric cell carries its exact value in `data-value`),
charts are Chart.js configurations in a `<script type="application/json" id="chart-data">` block that
static/cockpit.js turns into canvases. No CDN: Chart.js is vendored under static/. The parts (stylesheet, KPI
card, table, chart frame, page frame) are the report's HTML kit (etl/report/kit.py); the rows of risk figures
come from etl/report/shown.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from etl import measures
from etl.report import kit, shown
from etl.report.formatting import Formats
from etl.report.kit import GAIN, LOSS, SERIES, VAR95, VAR99, e

BASE = "/risk"
PAGE_SIZE = 50
BREACH_ROWS = 50  # the Firm page lists the worst 50 breaches; the JSON has them all
REFRESH_S = 300  # the Firm page's intraday chart refreshes itself every 5 minutes


# ---- formatting ------------------------------------------------------------------------------------------------
def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_FORMATS = Formats(_ok)
money, pct, num = _FORMATS.money, _FORMATS.pct, _FORMATS.number


def sign_class(v) -> str:
    return kit.sign_class(v, _ok)


def breach_value(v, unit: str, ccy: str) -> str:
    """A limit or a breaching value in its unit: money in the base currency, fractions as percentages."""
    return pct(v) if unit == "fraction" else money(v, ccy)


FORMATS = {"money": money, "price": money, "signed": lambda v: money(v, signed=True), "pct": pct, "pct2": lambda v: pct(v, 2),
           "num": num, "z": lambda v: f"{v:+.1f}" if _ok(v) else "–",
           "s": lambda v: f"{v:,.1f}" if _ok(v) else "–"}


def _ts(v) -> str:
    """An ISO timestamp as its UTC minute."""
    return str(v)[:16].replace("T", " ") if v else "–"


# amounts in the currency of their row (`base_currency`): to the cent in USD, to the satoshi in BTC (money_decimals)
ROW_CURRENCY = {"ccy": False, "signed_ccy": True}


def _column(key: str, header: str, f, ccy: str | None = None) -> kit.Column:
    if ccy is not None and f in ("money", "signed"):   # the table's amounts are in `ccy`: its decimals
        return kit.Column(key, header, fmt=lambda v: _FORMATS.amount(v, ccy, f == "signed"), signed=f == "signed")
    if callable(f):
        return kit.Column(key, header, html=f)
    if f == "ts":
        return kit.Column(key, header, text=_ts)
    if f in ROW_CURRENCY:
        signed = ROW_CURRENCY[f]
        return kit.Column(key, header, fmt=lambda v, ccy: _FORMATS.amount(v, ccy, signed), signed=signed,
                          currency="base_currency")
    if f in FORMATS:
        return kit.Column(key, header, fmt=FORMATS[f], signed=f == "signed")
    return kit.Column(key, header)


def table(rows: list[dict], cols: Iterable[tuple], table_id: str, empty: str = "nothing to show",
          ccy: str | None = None) -> str:
    """cols: (key, header, format) with format None (text), "ts" (a timestamp), a FORMATS key, or a
    callable(row) -> html. Every cell names its column and every number carries its exact value (data-*).
    `ccy`: the currency of the table's "money"/"signed" amounts (to its decimals: 8 in BTC)."""
    if not rows:
        return kit.empty(empty, f"{table_id}-empty")
    return kit.table(rows, [_column(*c, ccy=ccy) for c in cols], table_id, is_value=_ok, exact=True)


def methods_table(row: dict, scope: str, table_id: str, ccy: str | None = None) -> str:
    """VaR/ES of every method the registry (etl/measures.py) computes in `scope`, one row per method with a figure."""
    headers, methods = measures.grid(scope)
    rows = [{"method": m.label, **{key: row.get(col) for key, col in cols.items()}} for m, cols in methods
            if any(_ok(row.get(col)) for col in cols.values())]
    return table(rows, [("method", "Method", None), *[(key, label, "money") for key, label in headers]], table_id,
                 empty="no VaR/ES figures for this day", ccy=ccy)


def kpi(label: str, value: str, kpi_id: str, raw=None, cls: str = "") -> str:
    return kit.kpi(label, value, kpi_id, cls, raw if _ok(raw) else None)


def chart(chart_id: str, title: str, config: dict, charts: list[dict], height: int = 260,
          refresh: str | None = None) -> str:
    """A canvas and its Chart.js config (added to `charts`, which the page embeds as JSON)."""
    config.setdefault("options", {}).update({"responsive": True, "maintainAspectRatio": False, "animation": False})
    if config["options"].get("indexAxis") == "y":  # one bar per row: label every one
        config["options"].setdefault("scales", {}).setdefault("y", {})["ticks"] = {"autoSkip": False}
    config["options"].setdefault("plugins", {})["title"] = {"display": True, "text": title}
    charts.append({"id": chart_id, "config": config, "refresh": refresh})
    return kit.canvas(chart_id, height)


def _link(path: str, text: str, as_of: str | None = None) -> str:
    q = f"?as_of={e(as_of)}" if as_of else ""
    return f'<a href="{BASE}{path}{q}">{e(text)}</a>'


def portfolio_link(r: dict, as_of: str | None = None) -> str:
    pid = str(r["portfolio_id"])
    return _link(f"/portfolio/{quote(pid, safe='')}", pid, as_of)


# ---- the frame ---------------------------------------------------------------------------------------------------
PAGES = (("/", "firm", "Firm"), ("/portfolio", "portfolio", "Portfolio"), ("/market", "market", "Market"),
         ("/pipeline", "pipeline", "Pipeline"))


def layout(title: str, active: str, body: str, charts: list[dict] | None = None, as_of: str | None = None,
           refresh_url: str | None = None) -> str:
    return kit.cockpit_page(title, active, body, base=BASE, nav=PAGES, charts=charts, as_of=as_of,
                            refresh_url=refresh_url, refresh_s=REFRESH_S)


def status_banner(d: dict) -> str:
    """The as-of status: complete, or INCOMPLETE with what is missing (fail closed: never a green page over
    missing data); then STALE naming the delisted holdings valued at their last close."""
    stale = "; ".join(d.get("stale") or [])
    flag = f'<div class="status stale" id="stale">STALE: {e(stale)}</div>' if stale else ""
    missing = None if d.get("status") == "complete" else "; ".join(d.get("missing") or [])
    return kit.status("status", d["as_of"], missing) + flag


def intraday_stale(intra: dict) -> str:
    """The books of the latest intraday bucket valued on prices older than the setting: named, with the age,
    so their value is not read as a fresh number ('' when none)."""
    books = intra.get("stale_books") or []
    if not books:
        return ""
    limit = intra.get("max_price_age_s") or 0
    return (f'<div class="status stale" id="intraday-stale">STALE intraday valuation (prices older than '
            f'{limit / 3600:g} h): {e("; ".join(_stale_book(b) for b in books))}; the book totals below include '
            'them</div>')


def _stale_book(b: dict) -> str:
    """'P001 (prices 1.1 h old: BTC-USD)', or '(a held product has no price...)' when the age is unknown."""
    age = b.get("max_price_age_s")
    products = f': {b["stale_product_ids"]}' if b.get("stale_product_ids") else ""
    return (f'{b["portfolio_id"]} ('
            f'{"a held product has no price" if age is None else f"prices {age / 3600:.1f} h old"}{products})')


def price_of(r: dict) -> str:
    """The day of a position's close, flagged `stale` when it is before the as-of day."""
    day = e(str(r.get("price_date") or "")[:10])
    return f'{day} <span class="badge stale">stale</span>' if r.get("is_stale") else day


def notes(items: Iterable[str]) -> str:
    return "".join(f'<p class="note">{e(n)}</p>' for n in items if n)


# ---- Firm --------------------------------------------------------------------------------------------------------
def breaches_html(d: dict, charts: list[dict] | None = None) -> str:
    as_of = d["as_of"]
    cols = [("scope", "When", lambda r: f'<span class="scope-{e(r["scope"])}">'
                                         f'{"intraday" if r["scope"] == "intraday" else "EOD"}</span>'),
            ("portfolio_id", "Portfolio", lambda r: portfolio_link(r, as_of)), ("limit_type", "Limit", None),
            ("metric", "Metric", None),
            ("value", "Value", lambda r: _cell(r["value"], breach_value(r["value"], r["unit"], r["currency"]))),
            ("limit_value", "Limit value",
             lambda r: _cell(r["limit_value"], breach_value(r["limit_value"], r["unit"], r["currency"]))),
            ("utilisation", "Utilisation", "pct"), ("since", "Since", "ts"), ("days", "Days", "num"),
            ("action", "Action", lambda r: breach_action_html(r, as_of))]
    shown = d["breaches"][:BREACH_ROWS]
    known = d.get("status") == "complete"  # on an incomplete day, no breach found is not "no breach"
    count = len(d["breaches"]) if known or d["breaches"] else "–"
    out = [f'<h2 id="breaches">Limit breaches ({count})</h2>',
           table(shown, cols, "breaches-table", "no limit breached on this day" if known else
                 "limit breaches unknown: the day is incomplete")]
    if len(d["breaches"]) > len(shown):
        out.append(f'<p id="breaches-more">{len(d["breaches"]) - len(shown)} more (lower utilisation): '
                   f'<a href="{BASE}/api/summary?as_of={e(as_of)}">all breaches as JSON</a></p>')
    if charts is not None and d["breaches"]:
        top = d["breaches"][:20]
        out.append(chart("chart-breaches", "Utilisation of the breached limits (100% = at the limit)", {
            "type": "bar", "data": {"labels": [f'{b["portfolio_id"]} {b["limit_type"]}' for b in top],
                                    "datasets": [{"label": "utilisation", "data": [b["utilisation"] for b in top],
                                                  "backgroundColor": LOSS}]},
            "options": {"indexAxis": "y", "scales": {"x": {"ticks": {"format": {"style": "percent"}}}}}},
            charts, height=60 + 22 * len(top)))
        out.append(breach_history_chart(d["breaches"], charts))
    return "\n".join(out)


def breach_action_html(r: dict, as_of: str) -> str:
    """Who acknowledged the breach (or raised its limit), why and until when; else a form to do so (end-of-day
    breaches: an action names the day the breach began). The user is the logged-in one, never a form field."""
    a = r.get("action")
    if a:
        what = ("acknowledged" if a["action"] == "acknowledge" else
                f'limit raised to {breach_value(a["new_limit_value"], r["unit"], r["currency"])}')
        return (f'<span class="ack" data-by="{e(a["by_user"])}">{e(what)} by {e(a["by_user"])}: {e(a["reason"])} '
                f'(until {e(a["valid_until"])})</span>')
    if r["scope"] != "eod" or not r.get("since"):
        return "–"
    until = (datetime.now(UTC).date() + timedelta(days=7)).isoformat()
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(v)}">' for k, v in (
        ("portfolio_id", r["portfolio_id"]), ("limit_type", r["limit_type"]), ("breach_began", r["since"]),
        ("as_of", as_of)))
    return (f'<details class="act"><summary>Acknowledge…</summary><form method="post" action="{BASE}/breach_action">'
            f'{hidden}<select name="action"><option value="acknowledge">acknowledge</option>'
            '<option value="raise_limit">raise limit to</option></select>'
            '<input name="new_limit_value" type="number" step="any" placeholder="new limit" size="8">'
            '<input name="reason" required maxlength="500" placeholder="reason">'
            f'<label>until <input name="valid_until" type="date" value="{until}" required></label>'
            '<button type="submit">Record</button></form></details>')


def breach_history_chart(breaches: list[dict], charts: list[dict], top: int = 5) -> str:
    """Utilisation per day since each of the `top` worst end-of-day breaches began."""
    shown = [b for b in breaches if b.get("history")][:top]
    if not shown:
        return ""
    days = sorted({h[0] for b in shown for h in b["history"]})
    sets = []
    for i, b in enumerate(shown):
        by_day = dict(map(tuple, b["history"]))
        sets.append({"label": f'{b["portfolio_id"]} {b["limit_type"]}', "data": [by_day.get(x) for x in days],
                     "borderColor": SERIES[i % len(SERIES)], "spanGaps": False, "pointRadius": 2})
    return chart("chart-breach-history", "Utilisation of the worst breaches since each began (100% = at the limit)",
                 {"type": "line", "data": {"labels": days, "datasets": sets},
                  "options": {"scales": {"y": {"ticks": {"format": {"style": "percent"}}}}}}, charts)


def _cell(raw, text: str) -> str:
    data = f' data-value="{e(repr(float(raw)))}"' if _ok(raw) else ""
    return f'<span class="num"{data}>{e(text)}</span>'


def firm_risk_html(fr: dict) -> str:
    if not fr.get("available"):
        return f'<p class="note" id="firm-var-note">{e(fr["note"])}</p>'
    carried = ""
    if fr.get("carried_days"):               # firm_risk.carried_days: its VaR rests on (or, NULL, refused for) them
        carried = (f'<div class="status stale" id="firm-var-carried">STALE: {fr["carried_days"]} of the {fr.get("lookback_days")} '
                   'days of the VaR window rest on a carried-forward close'
                   + (': firm VaR/ES uncomputable (more than RISK_MAX_CARRIED_DAYS)</div>'
                      if fr.get("var_99_hist") is None else '</div>'))
    k = [kpi(m.label, _FORMATS.of(m.unit)(fr.get(m.name)), f'firm-{m.name.removesuffix("_hist").replace("_", "-")}',
             fr.get(m.name)) for m in shown.firm_kpis()]
    k += [kpi(f'VaR 99% vs {fr.get("prev_as_of_date") or "previous day"}', money(fr.get("var_99_hist_change"),
             signed=True), "firm-var-99-change", fr.get("var_99_hist_change"))]
    if _ok(fr.get("sum_standalone_var_99_hist")):
        k.append(kpi("Sum of standalone VaR 99%", money(fr["sum_standalone_var_99_hist"]), "sum-standalone",
                     fr["sum_standalone_var_99_hist"]))
    if _ok(fr.get("diversification_benefit")):
        k.append(kpi("Diversification benefit", money(fr["diversification_benefit"]), "diversification",
                     fr["diversification_benefit"]))
    return (f'{carried}<div class="kpis" id="firm-risk">{"".join(k)}</div>'
            f'<h3 id="firm-var-by-method">Firm VaR and ES by method (USD)</h3>{methods_table(fr, "firm", "firm-methods")}')


def firm_limits_html(fr: dict) -> str:
    """The firm-level limits (gold.dim_firm_limit) and their utilisation, first on the page; red when breached."""
    limits = fr.get("limits")
    if not fr.get("available") or limits is None:
        note = fr.get("note") if not fr.get("available") else "no firm limit: gold.dim_firm_limit is not built"
        return f'<p class="note" id="firm-limit-note">{e(note)}</p>'
    k = []
    for lim in limits:
        u = lim["utilisation"]
        if lim.get("uncomputable"):          # no figure to check: a breach of its own kind, never a blank card
            k.append(kpi(f'Firm limit {lim["metric"]} (no figure, limit {money(lim["limit_value"])})',
                         "uncomputable", f'firm-limit-{lim["limit_id"]}', None, "neg"))
            continue
        k.append(kpi(f'Firm limit {lim["metric"]} ({money(lim["value"])} of {money(lim["limit_value"])})',
                     pct(u), f'firm-limit-{lim["limit_id"]}', u, "neg" if _ok(u) and u > 1 else ""))
    return f'<div class="kpis" id="firm-limits">{"".join(k)}</div>' if k else \
        '<p class="note" id="firm-limit-note">no firm limit in the reference data (firm_limits.csv)</p>'


def firm(d: dict, page: int = 1) -> str:
    charts: list[dict] = []
    as_of = d["as_of"]
    body = [f"<h1>Firm risk as of {e(as_of)}</h1>", status_banner(d), firm_limits_html(d["firm_risk"]),
            breaches_html(d, charts)]
    body.append('<h2 id="firm-var">Firm VaR and ES (diversified, USD)</h2>')
    body.append(firm_risk_html(d["firm_risk"]))
    body.append('<h2 id="pnl">PnL and book value</h2><div class="kpis">')
    for t in d["totals"]:
        ccy = t["currency"] or "USD"
        body.append(kpi(f"Book value ({ccy})", money(t["market_value"], ccy), f"book-{ccy}", t["market_value"]))
        for key, label in (("daily_pnl", "PnL today"), ("daily_pnl_change", "PnL vs previous day"),
                           ("mtd_pnl", "PnL MTD")):
            v = t[key]
            body.append(kpi(f"{label} ({ccy})", money(v, ccy, signed=True), f"{key.replace('_', '-')}-{ccy}", v,
                            sign_class(v)))
    body.append("</div>")
    body.append('<h2 id="drawdowns">Worst drawdowns from peak</h2>')
    body.append(table(d["worst_drawdowns"], [("portfolio_id", "Portfolio", lambda r: portfolio_link(r, as_of)),
                                             ("name", "Name", None),
                                             ("drawdown_from_peak", "Drawdown from peak", "pct"),
                                             ("drawdown_limit", "Limit (on drawdown from peak)", "pct"),
                                             ("lookback_days", "Window (days)", "num"),
                                             ("max_drawdown", "Max drawdown", "pct")], "drawdowns-table"))
    body.append(contributions_html(d.get("contributions"), "firm", "USD"))
    body.append('<h2 id="intraday">Intraday PnL and exposure</h2>')
    intra = d["intraday"]
    if intra.get("available"):
        body.append(intraday_stale(intra))
        for ccy in sorted({r["currency"] for r in intra["rows"]}):  # one chart per base currency: never added up
            body.append(chart(f"chart-intraday-{ccy}",
                              f"Book intraday PnL and gross exposure ({ccy}), {intra['day']} (UTC)",
                              intraday_config(intra, ccy), charts, refresh="intraday"))
        if intra.get("scenario_note"):
            body.append(f'<p class="note" id="intraday-scenarios">{e(intra["scenario_note"])}</p>')
    else:
        later = intra.get("latest_day")
        link = f": the latest day with intraday rows is {_link('/', later, later)}" if later and later != as_of else ""
        body.append(f'<p class="note" id="intraday-note">{e(intra["note"])}{link}</p>')
    body.append(notes(d.get("notes", [])))
    rows = sorted(d["portfolios"], key=lambda r: -(r["var_99_hist_usd"] if _ok(r.get("var_99_hist_usd")) else -1))
    pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
    page = min(page, pages)
    shown = rows[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    body.append(f'<h2 id="portfolios">Portfolios ({len(rows)}, largest VaR 99% in USD first)</h2>')
    body.append(table(shown, [("portfolio_id", "Portfolio", lambda r: portfolio_link(r, as_of)),
                              ("name", "Name", None), ("base_currency", "Ccy", None),
                              ("market_value", "Market value", "ccy"), ("daily_pnl", "PnL today", "signed_ccy"),
                              ("mtd_pnl", "PnL MTD", "signed_ccy"), ("var_95_hist", "VaR 95%", "ccy"),
                              ("var_99_hist", "VaR 99%", "ccy"), ("es_99_hist", "ES 99%", "ccy"),
                              ("var_limit", "VaR limit (on)", _var_limit), ("concentration_pct", "Concentration", "pct"),
                              ("max_drawdown", "Max drawdown", "pct")], "portfolios-table"))
    if pages > 1:
        links = " ".join(f'<a href="{BASE}/?as_of={e(as_of)}&amp;page={p}">{p}</a>' if p != page
                         else f"<strong>{p}</strong>" for p in range(1, pages + 1))
        body.append(f'<nav class="pager" id="pager">page {links}</nav>')
    return layout(f"Risk cockpit: firm {as_of}", "firm", "\n".join(body), charts, as_of,
                  refresh_url=f"{BASE}/api/firm?as_of={as_of}")


def _var_limit(r: dict) -> str:
    """The VaR limit the day's run checked and the measure it is on (var_limit_metric: not necessarily the VaR 99%
    (hist) beside it)."""
    text = _FORMATS.amount(r.get("var_limit"), r.get("base_currency"))
    metric = r.get("var_limit_metric")
    return _cell(r.get("var_limit"), f"{text} ({metric})" if metric and _ok(r.get("var_limit")) else text)


def intraday_config(intra: dict, ccy: str) -> dict:
    rows = [r for r in intra["rows"] if r["currency"] == ccy]
    return {"type": "line", "data": {
        "labels": [str(r["bucket_start"])[11:16] for r in rows],
        "datasets": [{"label": "intraday PnL", "data": [r["intraday_pnl"] for r in rows], "borderColor": SERIES[0],
                      "yAxisID": "y", "pointRadius": 0},
                     {"label": "gross exposure", "data": [r["gross_exposure"] for r in rows],
                      "borderColor": SERIES[1], "yAxisID": "y1", "pointRadius": 0}]},
        "options": {"scales": {"y": {"title": {"display": True, "text": f"PnL ({ccy})"}},
                               "y1": {"position": "right", "grid": {"drawOnChartArea": False},
                                      "title": {"display": True, "text": f"gross exposure ({ccy})"}}}}}


# ---- Portfolio ---------------------------------------------------------------------------------------------------
def portfolio(d: dict, ids: list[str]) -> str:
    charts: list[dict] = []
    as_of, p, day = d["as_of"], d["portfolio"], d["day"] or {}
    pid, ccy = str(p["portfolio_id"]), p.get("base_currency") or "USD"
    options = "".join(f'<option value="{e(i)}"{" selected" if i == pid else ""}>{e(i)}</option>' for i in ids)
    body = [f'<h1>Portfolio {e(pid)} <small>{e(p.get("name"))}, {e(ccy)}, as of {e(as_of)}</small></h1>',
            f'<label>portfolio <select id="portfolio-select" data-nav="{BASE}/portfolio/" '
            f'data-as-of="{e(as_of)}">{options}</select></label>', status_banner(d), '<div class="kpis">']
    for m in shown.portfolio_kpis():
        body.append(kpi(m.label, _FORMATS.of(m.unit)(day.get(m.name)), m.name.replace("_", "-"), day.get(m.name)))
    body.append(f'</div><h2 id="var-by-method">VaR and ES by method ({e(ccy)})</h2>')
    body.append(methods_table(day, "portfolio", "risk-methods", ccy))
    body.append("<div class=\"grid2\">")
    h = d["history"]
    dates = [r["as_of_date"] for r in h]
    body.append(chart("chart-value", f"Market value and daily PnL ({ccy})", {"type": "bar", "data": {
        "labels": dates, "datasets": [
            {"type": "line", "label": "market value", "data": [r["market_value"] for r in h],
             "borderColor": SERIES[0], "yAxisID": "y1", "pointRadius": 0},
            {"label": "daily PnL", "data": [r["daily_pnl"] for r in h], "yAxisID": "y",
             "backgroundColor": [GAIN if (r["daily_pnl"] or 0) >= 0 else LOSS for r in h]}]},
        "options": {"scales": {"y": {"title": {"display": True, "text": "daily PnL"}},
                               "y1": {"position": "right", "grid": {"drawOnChartArea": False},
                                      "title": {"display": True, "text": "market value"}}}}}, charts))
    body.append(chart("chart-drawdown", f"Drawdown from running peak (underwater); limit "
                                        f"{pct(day.get('drawdown_limit'))} on the drawdown from peak over "
                                        f"{day.get('lookback_days') or '–'} days", {
        "type": "line", "data": {"labels": dates, "datasets": [
            {"label": "drawdown", "data": [r["drawdown"] for r in h], "borderColor": LOSS, "fill": "origin",
             "backgroundColor": "rgba(198,40,40,.25)", "pointRadius": 0}]},
        "options": {"scales": {"y": {"max": 0, "ticks": {"format": {"style": "percent"}}}}}}, charts))
    bt = [r for r in d["backtest"] if r["method"] == "hist"] or d["backtest"]
    if bt:
        method = bt[0]["method"]
        days = sorted({r["as_of_date"] for r in bt})
        realised = {r["as_of_date"]: r["realized_pnl"] for r in bt}
        sets = [{"label": "realised PnL", "data": [realised[x] for x in days], "backgroundColor": "#90a4ae"}]
        for conf, color in ((0.95, VAR95), (0.99, VAR99)):
            mine = {r["as_of_date"]: r for r in bt if abs(r["confidence"] - conf) < 1e-9}
            if not mine:
                continue
            sets.append({"type": "line", "label": f"-VaR {conf:.0%}", "borderColor": color, "pointRadius": 0,
                         "data": [-mine[x]["var_forecast"] if x in mine and _ok(mine[x]["var_forecast"]) else None
                                  for x in days]})  # no forecast that day (uncomputable VaR): a gap
            sets.append({"type": "line", "label": f"exception vs VaR {conf:.0%}", "showLine": False,
                         "pointStyle": "crossRot", "pointRadius": 6, "borderColor": color,
                         "data": [mine[x]["realized_pnl"] if x in mine and mine[x]["is_exception"] else None
                                  for x in days]})
        body.append(chart("chart-var", f"{method} VaR vs realised PnL, exceptions marked ({ccy})",
                          {"type": "bar", "data": {"labels": days, "datasets": sets}}, charts))
    else:
        body.append('<p class="empty">no VaR backtest rows</p>')
    rd = d["returns"]
    if rd["bins"]:
        colors = [LOSS if (rd["low"] is not None and (b < rd["low"] or b > rd["high"])) else SERIES[0]
                  for b in rd["bins"]]
        body.append(chart("chart-returns", f"Daily return distribution; anomaly band {pct(rd['low'], 2)} .. "
                                           f"{pct(rd['high'], 2)} (|robust z| > 3.5 in red)", {
            "type": "bar", "data": {"labels": [f"{b:.2%}" for b in rd["bins"]],
                                    "datasets": [{"label": "days", "data": rd["counts"], "backgroundColor": colors}]}},
            charts))
    pos = d["positions"]
    if pos:
        body.append(chart("chart-exposure", f"Exposure by asset ({ccy}); concentration limit "
                                            f"{pct(day.get('concentration_limit'))} of gross", {
            "type": "bar", "data": {"labels": [r["product_id"] for r in pos], "datasets": [
                {"label": "market value", "data": [r["market_value"] for r in pos],
                 "backgroundColor": [SERIES[0] if r["market_value"] >= 0 else LOSS for r in pos]}]},
            "options": {"indexAxis": "y"}}, charts, height=80 + 24 * len(pos)))
    if d["contributions"]:
        c = d["contributions"]
        body.append(chart("chart-contributions", f"Component VaR 99% (parametric) by asset (scope portfolio, {ccy})", {
            "type": "bar", "data": {"labels": [r["product_id"] for r in c], "datasets": [
                {"label": "component VaR 99%", "data": [r["component_var_99_param"] for r in c],
                 "backgroundColor": SERIES[3]}]}, "options": {"indexAxis": "y"}}, charts, height=80 + 24 * len(c)))
    attribution = d.get("attribution")
    if attribution and attribution["days"]:
        body.append(chart("chart-attribution", f"Daily PnL by factor ({ccy}): exposure at the previous close x the "
                                               "factor's return of the day; the residual is the rest", {
            "type": "bar", "data": {"labels": attribution["days"], "datasets": [
                {"label": f, "data": values, "stack": "pnl",
                 "backgroundColor": "#90a4ae" if f == "residual" else SERIES[i % len(SERIES)]}
                for i, (f, values) in enumerate(attribution["factors"].items())]},
            "options": {"scales": {"x": {"stacked": True}, "y": {"stacked": True}}}}, charts))
    body.append("</div>")
    body.append('<h2 id="backtest">VaR backtest</h2>')
    body.append(table(d["backtest_summary"], [("method", "Method", None), ("confidence", "Confidence", "pct"),
                                              ("days", "Days", "num"), ("exceptions", "Exceptions", "num"),
                                              ("expected", "Expected", "num"), ("traffic_light", "Zone", None)],
                      "backtest-table"))
    body.append('<h2 id="positions">Exposures and concentration</h2>')
    body.append(table(pos, [("product_id", "Asset", None), ("quantity", "Quantity", "num"),
                            ("close", "Close", "price"), ("price_date", "Close of", price_of),  # quote currency
                            ("market_value", f"Market value ({ccy})", "money"),
                            ("unrealized_pnl", f"Unrealised PnL ({ccy})", "signed"),
                            ("share_of_gross", "Share of gross", "pct")], "positions-table", ccy=ccy))
    body.append(contributions_html(d["contributions"], "portfolio", ccy))
    body.append(liquidity_html(d.get("liquidity"), ccy))
    return layout(f"Risk cockpit: {pid} {as_of}", "portfolio", "\n".join(body), charts, as_of)


def contributions_html(rows: list[dict] | None, scope: str, ccy: str) -> str:
    """Euler contributions of one scope as gold stores them: `portfolio` (to the portfolio's own VaR/ES, its base
    currency) or `firm` (the largest ones to the firm's, USD); the heading says which."""
    what = "to the firm's VaR/ES, largest first" if scope == "firm" else "to the portfolio's VaR/ES"
    head = f'<h2 id="contributions">Risk contributions {what} (scope {e(scope)}, {e(ccy)})</h2>'
    if rows is None:
        return head + '<p class="note">gold.fact_risk_contributions is not built yet</p>'
    cols = [("portfolio_id", "Portfolio", None)] if scope == "firm" else []
    return head + table(rows, [*cols, ("product_id", "Asset", None),
                               ("component_var_99_param", f"Component VaR 99% (param, {ccy})", "money"),
                               ("component_es_99_hist", f"Component ES 99% (hist, {ccy})", "money"),
                               ("marginal_var_99_param", "Marginal VaR 99%", "num")], "contributions-table", ccy=ccy)


def liquidity_html(rows: list[dict] | None, ccy: str | None = None) -> str:
    """Liquidity-adjusted VaR of the day (docs/risk_conventions.md): VaR 99% plus spread and impact costs."""
    head = '<h2 id="liquidity">Liquidity-adjusted VaR</h2>'
    if rows is None:
        return head + '<p class="note">gold.fact_liquidity_risk is not built yet</p>'
    return head + table(rows, [
        ("var_99_hist", "VaR 99% (hist)", "money"), ("spread_cost", "Spread cost", "money"),
        ("impact_cost", "Impact cost", "money"), ("lvar_99", "LVaR 99%", "money"),
        ("min_absorbed_share", "Smallest share absorbed", "pct"),
        ("exceeds_depth", "Exceeds depth", lambda r: "yes" if r.get("exceeds_depth") else "no"),
        ("book_coverage", "Exposure with a book", "pct"),
        ("products_without_book", "Without a book (excluded)", lambda r: e(r.get("products_without_book") or "–"))],
        "liquidity-table", empty="no recorded order book for this portfolio's products on this day "
                                 "(python -m etl stream records them)", ccy=ccy)


# ---- Market ------------------------------------------------------------------------------------------------------
def _corr_color(v) -> str:
    if not _ok(v):
        return "#fff"
    a = min(abs(v), 1.0)
    return f"rgba(198,40,40,{a:.2f})" if v >= 0 else f"rgba(31,78,121,{a:.2f})"


def market(d: dict) -> str:
    charts: list[dict] = []
    as_of = d["as_of"]
    body = [f"<h1>Market as of {e(as_of)}</h1>", '<div class="grid2">']
    ph = d["price_history"]
    if ph["dates"]:
        body.append(chart("chart-prices", "Prices rebased to 100 at the start of the window", {
            "type": "line", "data": {"labels": ph["dates"], "datasets": [
                {"label": p, "data": s, "borderColor": SERIES[i % len(SERIES)], "pointRadius": 0}
                for i, (p, s) in enumerate(ph["rebased"].items())]}}, charts))
    vols = [v for v in d["volatility"] if _ok(v.get("vol_30d"))]
    if vols:
        body.append(chart("chart-vol", "30-day annualised volatility ranking", {
            "type": "bar", "data": {"labels": [v["product_id"] for v in vols], "datasets": [
                {"label": "vol 30d", "data": [v["vol_30d"] for v in vols], "backgroundColor": SERIES[0]}]},
            "options": {"indexAxis": "y", "scales": {"x": {"ticks": {"format": {"style": "percent"}}}}}},
            charts, height=80 + 22 * len(vols)))
    an = d["anomalies"]
    if an:
        products = sorted({a["product_id"] for a in an})
        body.append(chart("chart-anomalies", "Return anomalies of the day (robust z)", {
            "type": "scatter", "data": {"datasets": [
                {"label": p, "backgroundColor": SERIES[i % len(SERIES)],
                 "data": [{"x": int(a["bucket_start"][11:13]) + int(a["bucket_start"][14:16]) / 60,
                           "y": a["robust_z"]} for a in an if a["product_id"] == p]}
                for i, p in enumerate(products)]},
            "options": {"scales": {"x": {"min": 0, "max": 24, "title": {"display": True, "text": "hour (UTC)"}},
                                   "y": {"title": {"display": True, "text": "robust z"}}}}}, charts))
    body.append("</div>")
    body.append('<h2 id="prices">Latest prices</h2>')
    body.append(table(d["prices"], [("product_id", "Product", None), ("price_date", "Day", None),
                                    ("close", "Close", "money"), ("change_1d", "1-day change", "pct2")],
                      "prices-table"))
    body.append('<h2 id="volatility">Volatility ranking</h2>')
    body.append(table(d["volatility"], [("product_id", "Product", None), ("vol_30d", "Vol 30d", "pct"),
                                        ("vol_20d", "Vol 20d", "pct"), ("vol_ewma", "Vol EWMA", "pct"),
                                        ("max_drawdown", "Max drawdown", "pct"),
                                        ("worst_daily_return", "Worst day", "pct")], "volatility-table"))
    c = d["correlation"]
    body.append(f'<h2 id="correlation">Correlation of daily {e(c.get("return_currency") or "USD")} returns '
                f'({e(c.get("n_obs") or "–")} days, as the risk engine stored it)</h2>')
    if c["products"]:
        head = "".join(f"<th>{e(p)}</th>" for p in c["products"])
        rows = "".join(f"<tr><th>{e(p)}</th>" + "".join(
            f'<td class="num" style="background:{_corr_color(v)}" '
            f'data-value="{e(repr(v)) if _ok(v) else ""}">{v:.2f}</td>' if _ok(v) else "<td>–</td>" for v in row)
            + "</tr>" for p, row in zip(c["products"], c["matrix"], strict=True))
        body.append(f'<div class="table-wrap"><table id="correlation-table"><thead><tr><th></th>{head}</tr>'
                    f"</thead><tbody>{rows}</tbody></table></div>")
    else:
        body.append('<p class="empty">no correlations stored for this day</p>')
    body.append('<h2 id="anomalies">Anomalies</h2>')
    body.append(table(an, [("product_id", "Product", None), ("bucket_start", "Bucket (UTC)", "ts"),
                           ("return_value", "Return", "pct2"), ("robust_z", "Robust z", "z")], "anomalies-table",
                      "no anomalies on this day"))
    pq = d.get("price_quality", [])
    excluded = sum(r["decision"] == "excluded" for r in pq)
    body.append(f'<h2 id="price-quality">Suspect prints: {len(pq)} flagged, {excluded} excluded</h2>')
    body.append(table(pq, [("product_id", "Product", None), ("granularity", "Candle (s)", None),
                           ("bucket_start", "Bucket (UTC)", "ts"), ("rule", "Rule", None),
                           ("decision", "Decision", None), ("evidence", "Evidence", None)], "price-quality-table",
                      "no print flagged by the quality gate on this day"))
    body.append('<h2 id="factors">Factor exposures (latest betas)</h2>')
    body.append(table(d["factors"], [("product_id", "Product", None), ("factor_name", "Factor", None),
                                     ("beta", "Beta", "num"), ("r_squared", "R²", "num")], "factors-table"))
    return layout(f"Risk cockpit: market {as_of}", "market", "\n".join(body), charts, as_of)


# ---- Pipeline ----------------------------------------------------------------------------------------------------
RUN_STATES = ("queued", "running", "success", "failed")  # DagRunState


def pipeline(d: dict) -> str:
    charts: list[dict] = []
    body = ["<h1>Pipeline health</h1>", '<h2 id="airflow-runs">DAG runs in Airflow</h2>',
            table(d["airflow_runs"], [("dag_id", "DAG", None), *((s, s.capitalize(), "num") for s in RUN_STATES)],
                  "airflow-runs-table", "no DAG runs in Airflow"),
            '<h2 id="last-status">Last status per DAG</h2>',
            table(d["last_status"], [("dag_id", "DAG", None), ("run_id", "Last run", None),
                                     ("started_at", "Started (UTC)", "ts"), ("status", "Status", None),
                                     ("tasks", "Tasks", "num"), ("failed_tasks", "Failed", "num")],
                  "status-table", "no runs recorded"), '<div class="grid2">']
    runs = list(reversed(d["runs"]))
    if runs:
        labels = [f'{r["dag_id"]} {str(r["started_at"])[5:16]}' for r in runs]
        body.append(chart("chart-rows", "Rows processed per run (out)", {"type": "bar", "data": {
            "labels": labels, "datasets": [{"label": "rows out", "data": [r["rows_out"] for r in runs],
                                            "backgroundColor": SERIES[0]}]}}, charts))
        body.append(chart("chart-run-seconds", "Task seconds per run over time", {"type": "line", "data": {
            "labels": labels, "datasets": [{"label": "task seconds", "data": [r["task_seconds"] for r in runs],
                                            "borderColor": SERIES[1]}]}}, charts))
    dur = d["durations"]
    if dur:
        body.append(chart("chart-durations", "Task duration: mean and p95 (seconds, last 30 days)", {
            "type": "bar", "data": {"labels": [f'{r["dag_id"]}.{r["task"]}' for r in dur], "datasets": [
                {"label": "mean", "data": [r["mean_s"] for r in dur], "backgroundColor": SERIES[0]},
                {"label": "p95", "data": [r["p95_s"] for r in dur], "backgroundColor": SERIES[1]}]},
            "options": {"indexAxis": "y"}}, charts, height=80 + 26 * len(dur)))
    body.append("</div>")
    body.append('<h2 id="durations">Task durations</h2>')
    body.append(table(dur, [("dag_id", "DAG", None), ("task", "Task", None), ("attempts", "Attempts", "num"),
                            ("mean_s", "Mean s", "s"), ("p95_s", "p95 s", "s")], "durations-table"))
    body.append('<h2 id="runs">Runs</h2>')
    body.append(table(d["runs"], [("run_id", "Run", None), ("dag_id", "DAG", None),
                                  ("started_at", "Started (UTC)", "ts"), ("task_attempts", "Attempts", "num"),
                                  ("failed", "Failed", "num"), ("rows_in", "Rows in", "num"),
                                  ("rows_out", "Rows out", "num"), ("task_seconds", "Task seconds", "s")],
                      "runs-table"))
    body.append('<h2 id="audit">Audit (latest task attempts)</h2>')
    body.append(table(d["audit"], [("started_at", "Started (UTC)", "ts"), ("dag_id", "DAG", None),
                                   ("run_id", "Run", None), ("task_id", "Task", None), ("status", "Status", None),
                                   ("rows_in", "Rows in", "num"), ("rows_out", "Rows out", "num"),
                                   ("duration_s", "Seconds", "s"), ("message", "Message", None)], "audit-table"))
    return layout("Risk cockpit: pipeline", "pipeline", "\n".join(body), charts)


# ---- refusals and gaps -------------------------------------------------------------------------------------------
def refused(status: int, detail: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Not logged in</title></head>'
            f'<body><h1 id="refused">{status}: {e(detail)}</h1><p>The risk cockpit is for logged-in Airflow users: '
            f'<a href="/">log in to Airflow</a> and open Risk from the navigation.</p></body></html>')


def no_run_report(dag_id: str, run_id: str) -> str:
    body = (f"<h1>No report for this run</h1><p>Run {e(run_id)} of {e(dag_id)} recorded no successful "
            f"export_report task in gold.fact_pipeline_runs (only risk_end_of_day runs write a report, and "
            f"the run log reaches gold at the next load).</p><p>{_link('/report', 'The latest report')}</p>")
    return layout("Risk cockpit: no report", "", body)


def no_docs(path) -> str:
    body = (f"<h1>dbt docs not generated yet</h1><p>{e(path)} does not exist: run <code>make docs</code> "
            f"(or <code>python -m etl docs</code>) and reload.</p>")
    return layout("Risk cockpit: dbt docs", "", body)

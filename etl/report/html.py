"""The HTML risk report: one self-contained file (inline CSS and SVG charts, no scripts, no external requests).

Layout (ids are stable: tests and bookmarks rely on them):
  h2#summary            book value, daily/MTD PnL, VaR/ES totals, breaches, pipeline status
  h2#portfolios         one h3#portfolio-<id> per portfolio: limits and breaches, risk table, value/PnL,
                        underwater drawdown, VaR vs realised PnL with the traffic-light zone, exposure by asset
  h2#market             h3#market-volatility, #market-correlation, #market-factor-exposures, #market-anomalies,
                        #market-price-quality (prints the quality gate flagged on the day)
  h2#pipeline-health    h3#pipeline-durations, #pipeline-rows, #pipeline-failures
  h2#data-notes         gold tables that were missing or empty

The parts (stylesheet, KPI card, table, chart frame, page frame) are the HTML kit the cockpit shares
(etl/report/kit.py); the methods and measures listed come from the registry (etl/measures.py).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from etl import measures
from etl.measures import FRACTION_LIMITS, LIMIT_TYPES
from etl.report import charts, kit
from etl.report.data import ReportData
from etl.report.figures import correlation_matrix, total
from etl.report.formatting import Formats
from etl.report.kit import e

log = logging.getLogger(__name__)

DRAWDOWN_MEASURE = ("Drawdown limits are checked on the drawdown from peak: today's fall of the portfolio's wealth "
                    "(its daily returns on gross exposure, compounded) from its running peak over the VaR lookback; "
                    "max drawdown is the deepest fall in that window.")
FIRST_SCREEN_BREACHES = 10  # the worst breaches on the first screen; all of them in data/breaches.csv
PORTFOLIO_ROWS = 50         # rows of the report's portfolio table; every portfolio is in portfolios.html
DETAIL_PAGES = 50           # portfolios with a detail page (breached first, then largest VaR 99%)



# ---- formatting ------------------------------------------------------------------------------------------------
def _isnum(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and not pd.isna(v)


_FORMATS = Formats(_isnum)
money, pct, number = _FORMATS.money, _FORMATS.pct, _FORMATS.number


def amount(v) -> str:
    """A `table` format: money to the decimals of the row's currency (the table's `currency` column)."""
    return money(v)


def signed_amount(v) -> str:
    """A `table` format: signed money to the decimals of the row's currency (the table's `currency` column)."""
    return money(v, signed=True)


def seconds(v) -> str:
    return f"{float(v):,.1f}" if _isnum(v) else "–"


def utc_minute(v) -> str:
    return pd.Timestamp(v).tz_convert("UTC").strftime("%Y-%m-%d %H:%M") if _isnum(v) else "–"


def limit_value(limit_type: str, v) -> str:
    """Limits and breach values in their natural unit: VaR in money, concentration and drawdown as a percentage."""
    if not _isnum(v):
        return "–"
    return pct(v) if limit_type in FRACTION_LIMITS and abs(float(v)) <= 5 else number(v)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _sign_class(v) -> str:
    return kit.sign_class(v, _isnum)


Column = tuple[str, str, Callable | None]  # (column, header, formatter -> str); numeric when a formatter is given


def table(df: pd.DataFrame, columns: Iterable[Column], table_id: str | None = None, signed: Iterable[str] = (),
          raw: Iterable[str] = (), currency: str | None = None) -> str:
    """The kit's table of a frame's rows. `raw`: columns whose cells are trusted HTML built by this module (links).
    A cell of format `amount` / `signed_amount` reads to the decimals of its row's currency (column `currency`)."""
    by_row = currency is not None and currency in df.columns

    def column(c: str, h: str, f) -> kit.Column:
        if f in (amount, signed_amount) and by_row:
            return kit.Column(c, h, fmt=lambda v, ccy, s=f is signed_amount: _FORMATS.amount(v, ccy, s),
                              signed=c in set(signed), currency=currency)
        return kit.Column(c, h, fmt=f, signed=c in set(signed), html=(lambda r, c=c: r[c]) if c in set(raw) else None)

    cols = [column(c, h, f) for c, h, f in columns if c in df.columns]
    keys = [c.key for c in cols]
    frame = df[keys + ([currency] if by_row and currency not in keys else [])].astype(object)
    rows = frame.where(frame.notna(), None).to_dict("records")  # missing (NaN, NA, NaT) reads as nothing or "–"
    return kit.table(rows, cols, table_id, is_value=_isnum)


def missing(table_name: str) -> str:
    return kit.note(f"gold.{table_name} is not available in the warehouse: this part is left out.")


# ---- analysis helpers (small, pure) ----------------------------------------------------------------------------
def normalise_confidence(series: pd.Series) -> pd.Series:
    c = series.astype(float)
    return c.where(c <= 1, c / 100.0)


def pick_method(backtest: pd.DataFrame) -> str:
    """The VaR method to chart: historical when present (the one limits are usually set on), else the first."""
    methods = sorted(backtest["method"].astype(str).unique())
    for preferred in ("hist", "historical", "historic"):
        if preferred in methods:
            return preferred
    return methods[0]


def backtest_zones(data: ReportData, pid: str) -> pd.DataFrame:
    """The engine's backtest of the day per method x confidence (gold.fact_var_model_comparison): days, exceptions,
    expected exceptions and the Basel traffic-light zone, as the risk run computed them."""
    cols = {"method": "method", "confidence": "confidence", "n_days": "n_obs", "exceptions": "exceptions",
            "expected_exceptions": "expected", "traffic_light": "zone"}
    comparison = data.get("model_comparison")
    if comparison is None:
        return pd.DataFrame(columns=list(cols.values()))
    mine = comparison[comparison["portfolio_id"].astype(str) == pid]
    return mine[list(cols)].rename(columns=cols).assign(confidence=lambda d: normalise_confidence(d["confidence"]))


def latest_task_status(runs: pd.DataFrame) -> pd.DataFrame:
    """The last record of each task in each run (a task retried into success counts as success), with `task`:
    the task id without the map index of mapped tasks (`fetch_candles[3]` -> `fetch_candles`)."""
    r = runs.assign(started_at=pd.to_datetime(runs["started_at"], utc=True),
                    task=runs["task_id"].astype(str).str.replace(r"\[\d+\]$", "", regex=True),
                    failed=runs["status"].astype(str) == "failed",
                    retrying=runs["status"].astype(str) == "up_for_retry")
    return r.sort_values("started_at").groupby(["run_id", "task_id"], as_index=False).tail(1)


def per_task(last: pd.DataFrame) -> pd.DataFrame:
    """Mapped task instances folded into one row per run and task: instances, failures, rows, seconds (summed)."""
    return (last.groupby(["run_id", "task"], as_index=False, sort=False)
            .agg(started_at=("started_at", "min"), dag_id=("dag_id", "first"), instances=("task_id", "size"),
                 failed=("failed", "sum"), retrying=("retrying", "sum"), rows_in=("rows_in", "sum"),
                 rows_out=("rows_out", "sum"), duration_s=("duration_s", "sum")))


# ---- sections --------------------------------------------------------------------------------------------------
def _portfolio_list(data: ReportData) -> pd.DataFrame:
    """dim_portfolio's current books and any retired one with numbers on the as-of day, plus any portfolio that
    has numbers but no dimension row (shown with defaults)."""
    dims = data.get("portfolios")
    cols = ["portfolio_id", "name", "base_currency", "var_limit", "concentration_limit", "drawdown_limit"]
    dims = pd.DataFrame(columns=cols) if dims is None else dims.copy()
    seen = set(dims["portfolio_id"].astype(str))
    if "is_current" in dims:
        valued: set[str] = set()
        for name in ("valuation", "risk", "positions"):
            df = _on_day(data.get(name), data.as_of)
            if df is not None:
                valued |= set(df["portfolio_id"].astype(str))
        dims = dims[dims["is_current"].fillna(True).astype(bool) | dims["portfolio_id"].astype(str).isin(valued)]
    extra = set()
    for name in ("valuation", "risk", "positions"):
        df = data.get(name)
        if df is not None and not df.empty:
            extra |= set(df["portfolio_id"].astype(str)) - seen
    if extra:
        dims = pd.concat([dims, pd.DataFrame({"portfolio_id": sorted(extra)})], ignore_index=True)
    dims["portfolio_id"] = dims["portfolio_id"].astype(str)
    dims["name"] = dims["name"].where(dims["name"].notna(), dims["portfolio_id"]) if "name" in dims else dims[
        "portfolio_id"]
    if "base_currency" not in dims:
        dims["base_currency"] = None
    day_ccy = _day_currency(data)   # the currency the day's figures are in, not dim_portfolio's (today's)
    dims["base_currency"] = dims["portfolio_id"].map(day_ccy).where(lambda c: c.notna(), dims["base_currency"])
    dims["base_currency"] = dims["base_currency"].where(dims["base_currency"].notna(), "USD")
    return _checked_limits(dims, data.get("risk")).sort_values("portfolio_id").reset_index(drop=True)


def _day_currency(data: ReportData) -> pd.Series:
    """portfolio_id -> the base currency the as-of day's gold rows carry (valuation, else PnL, else risk: as the
    cockpit's portfolio_day), written by that day's run; a book's currency may have changed in portfolios.csv since."""
    out = pd.Series(dtype=object)
    for name in ("risk", "pnl", "valuation"):        # the later ones win
        df = _on_day(data.get(name), data.as_of)
        if df is not None and "base_currency" in df:
            df = df[df["base_currency"].notna()]
            out = pd.concat([out, df.set_index(df["portfolio_id"].astype(str))["base_currency"]])
            out = out[~out.index.duplicated(keep="last")]
    return out


CHECKED_LIMITS = ("var_limit", "var_limit_metric", "concentration_limit", "drawdown_limit")   # risk_metrics.checked_<name> (the engine's)


def _checked_limits(dims: pd.DataFrame, risk: pd.DataFrame | None) -> pd.DataFrame:
    """dims with the limits the day's risk run checked (risk_metrics.checked_*, as the cockpit's portfolio_day and
    the SQL reports show them) in place of dim_portfolio's, which are portfolios.csv as it is now: a past day's
    breach is shown against the limit that fired it. None without a risk row of the day."""
    risk = pd.DataFrame(columns=["portfolio_id"]) if risk is None else risk
    run = risk.astype({"portfolio_id": str}).set_index("portfolio_id")
    for col in CHECKED_LIMITS:
        checked = run[f"checked_{col}"] if f"checked_{col}" in run else pd.Series(dtype=object)
        dims[col] = dims["portfolio_id"].map(checked)
    return dims


def _on_day(df: pd.DataFrame | None, as_of: date) -> pd.DataFrame | None:
    if df is None:
        return None
    return df[pd.to_datetime(df["as_of_date"]).dt.date == as_of]


def summary_frame(data: ReportData, portfolios: pd.DataFrame) -> pd.DataFrame:
    """One row per portfolio with the headline numbers of the as-of day."""
    out = portfolios[[c for c in ("portfolio_id", "name", "base_currency", "drawdown_limit")
                      if c in portfolios]].copy()
    val = _on_day(data.get("valuation"), data.as_of)
    pnl = _on_day(data.get("pnl"), data.as_of)
    risk = data.get("risk")
    breaches = data.get("breaches")
    if val is not None:
        out = out.merge(val[["portfolio_id", "market_value"]].astype({"portfolio_id": str}), how="left")
    if pnl is not None:
        out = out.merge(pnl[["portfolio_id", "daily_pnl", "mtd_pnl"]].astype({"portfolio_id": str}), how="left")
    if risk is not None:
        keep = [c for c in ("var_95_hist", "var_99_hist", "es_95_hist", "es_99_hist", "max_drawdown",
                            "drawdown_from_peak", "var_99_hist_usd") if c in risk]
        out = out.merge(risk[["portfolio_id", *keep]].astype({"portfolio_id": str}), how="left")
    if breaches is not None:
        counts = breaches.astype({"portfolio_id": str}).groupby("portfolio_id").size().rename("breaches")
        out = out.merge(counts, how="left", left_on="portfolio_id", right_index=True)
        known = out["breaches"].notna() | (out["var_99_hist"].notna() if "var_99_hist" in out else False)
        out["breaches"] = out["breaches"].fillna(0).where(known)  # no risk row that day: unknown, not 0
    return out


def pipeline_status(data: ReportData) -> tuple[str, str]:
    """(css class, text) for the latest run of each DAG, the worst first: a failed end-of-day run is not hidden by
    the intraday runs (every 5 minutes) that started after it. The DAG is named when there are several."""
    runs = data.get("runs")
    if runs is None:
        return "unknown", "unknown (no run log in gold)"
    if runs.empty:
        return "unknown", "no runs recorded"
    last = latest_task_status(runs)
    ends = last.groupby(["dag_id", "run_id"], as_index=False)["started_at"].max().sort_values("started_at")
    newest = ends.groupby("dag_id").tail(1)
    failed, retrying, ok = [], [], []
    for dag_id, run_id in zip(newest["dag_id"], newest["run_id"], strict=True):
        tasks = last[last["run_id"] == run_id]
        dag = f"{dag_id}: " if len(newest) > 1 else ""
        if n := int(tasks["failed"].sum()):
            failed.append(f"{dag}{n} of {len(tasks)} task runs recorded")
        elif n := int(tasks["retrying"].sum()):  # its last attempt failed and Airflow retries it: not (yet) OK
            retrying.append(f"{dag}{n} of {len(tasks)} task runs recorded failed and will be retried")
        else:  # counts what gold holds: the run's own load, dbt, report and alert tasks come with the next load
            ok.append(f"{dag}{len(tasks)} task runs recorded, none failed")
    if failed:
        return "bad", "FAILED: " + "; ".join(failed)
    if retrying:
        return "unknown", "RETRYING: " + "; ".join(retrying)
    return "ok", "OK: " + "; ".join(ok)


def status_banner(data: ReportData) -> str:
    """The as-of status line: complete, or INCOMPLETE naming what is missing or could not be shown (never a green
    page over gaps)."""
    fs = data.first_screen
    if not fs:
        return ""
    if fs.get("status") == "complete" and not data.failures:
        return kit.status("as-of-status", data.as_of)
    return kit.status("as-of-status", data.as_of,
                      "; ".join([*(fs.get("missing") or []), *data.failures]) or "inputs missing")


def _breach_rows(data: ReportData) -> pd.DataFrame | None:
    """The day's breaches worst first: the cockpit's list (with since/scope), else gold's rows as they are."""
    found = data.first_screen.get("breaches")
    if found is not None:
        return pd.DataFrame(found, columns=["portfolio_id", "limit_type", "metric", "value", "limit_value",
                                            "utilisation", "since", "scope", "unit", "currency"])
    b = data.get("breaches")
    if b is None:
        return None
    b = b.assign(utilisation=b["value"].astype(float) / b["limit_value"].astype(float), since=None, scope="eod",
                 unit=[("fraction" if t in FRACTION_LIMITS else "currency") for t in b["limit_type"]],
                 currency=b["base_currency"] if "base_currency" in b else "USD")
    return b.sort_values("utilisation", ascending=False)


def _in_unit(v, unit: str, currency: str) -> str:
    return pct(v) if unit == "fraction" else money(v, currency)


def first_screen(data: ReportData, summary: pd.DataFrame) -> str:
    """KPIs (firm VaR, not the sum; PnL; breach count; pipeline), the worst breaches with utilisation and
    units, and the worst drawdowns: everything a risk manager needs before scrolling."""
    kpis = []
    fr = data.first_screen.get("firm_risk") or {}
    if fr.get("available"):
        for col, label in (("var_99_hist", "Firm VaR 99% (diversified)"), ("es_99_hist", "Firm ES 99%")):
            kpis.append(kit.kpi(label, money(fr.get(col), "USD"), f"firm-{slug(col)}"))
    else:
        kpis.append(kit.kpi("Firm VaR 99%", "firm VaR not yet computed", "firm-var", "unknown small"))
    currencies = summary["base_currency"].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    for ccy in currencies.index:
        g = summary[summary["base_currency"] == ccy]
        suffix = "" if summary["base_currency"].nunique() == 1 else f" ({ccy})"
        k = slug(ccy)
        if "market_value" in g:
            kpis.append(kit.kpi(f"Book value{suffix}", money(total(g["market_value"]), ccy), f"book-{k}"))
        if "daily_pnl" in g:
            v = total(g["daily_pnl"])
            kpis.append(kit.kpi(f"Daily PnL{suffix}", money(v, ccy, signed=True), f"daily-pnl-{k}", _sign_class(v)))
            v = total(g["mtd_pnl"])
            kpis.append(kit.kpi(f"MTD PnL{suffix}", money(v, ccy, signed=True), f"mtd-pnl-{k}", _sign_class(v)))
    rows = _breach_rows(data)
    known = data.first_screen.get("status") == "complete"  # on an incomplete day, none found is not "none"
    if rows is None or (rows.empty and not known):
        kpis.append(kit.kpi("Limit breaches", "–", "breaches", "unknown"))
    else:
        kpis.append(kit.kpi("Limit breaches", str(len(rows)), "breaches", "neg" if len(rows) else "pos"))
    cls, text = pipeline_status(data)
    kpis.append(kit.kpi("Pipeline", text, "pipeline", "neg" if cls == "bad" else ""))
    parts = [f'<div class="kpis">{"".join(kpis)}</div>', '<div class="first-screen">', "<div>",
             f'<h3 id="summary-breaches">Limit breaches{"" if rows is None else f" ({len(rows)})"}</h3>']
    if rows is None:
        parts.append(missing("fact_limit_breaches"))
    elif rows.empty:
        parts.append(kit.empty(f"no limit breaches on {data.as_of}" if known else
                           f"limit breaches on {data.as_of} unknown: the day is incomplete"))
    else:
        top = rows.head(FIRST_SCREEN_BREACHES)
        top = top.assign(
            value_fmt=[_in_unit(v, u, c) for v, u, c in zip(top["value"], top["unit"], top["currency"], strict=True)],
            limit_fmt=[_in_unit(v, u, c) for v, u, c in zip(top["limit_value"], top["unit"], top["currency"],
                                                              strict=True)],
            when=["intraday" if s == "intraday" else "EOD" for s in top["scope"]],
            since_fmt=[str(v)[:16].replace("T", " ") if _isnum(v) else "–" for v in top["since"]])
        parts.append(table(top, [("when", "When", None), ("portfolio_id", "Portfolio", None),
                                 ("limit_type", "Limit", None), ("metric", "Measure", None),
                                 ("value_fmt", "Value", None),
                                 ("limit_fmt", "Limit value", None), ("utilisation", "Utilisation", pct),
                                 ("since_fmt", "Since", None)], table_id="summary-breaches-table"))
        if len(rows) > len(top):
            parts.append(f"<p>{len(rows) - len(top)} more in data/breaches.csv and the risk cockpit.</p>")
    parts.append('</div><div><h3 id="summary-drawdowns">Worst drawdowns from peak</h3>')
    dd = summary.dropna(subset=["drawdown_from_peak"]) if "drawdown_from_peak" in summary else summary.iloc[:0]
    if dd.empty:
        parts.append(kit.empty("no drawdown figures for this day"))
    else:
        parts.append(table(dd.sort_values("drawdown_from_peak").head(5),
                           [("portfolio_id", "Portfolio", None), ("drawdown_from_peak", "Drawdown from peak", pct),
                            ("drawdown_limit", "Limit (on drawdown from peak)", pct),
                            ("max_drawdown", "Max drawdown", pct)], table_id="summary-drawdowns-table"))
        parts.append(f"<p>{e(DRAWDOWN_MEASURE)}</p>")
    parts.append("</div></div>")
    if fr.get("available"):
        parts += ['<h3 id="firm-var-by-method">Firm VaR and ES by method</h3>',
                  _methods_table(fr, "firm", "USD", "firm-methods")]
    return "\n".join(parts)


def section_summary(data: ReportData, portfolios: pd.DataFrame, summary: pd.DataFrame) -> str:
    parts = ['<section id="section-summary"><h2 id="summary">Summary</h2>', first_screen(data, summary)]
    parts.append("<p>VaR and ES: 1-day horizon, historical method, positive loss amounts in the portfolio's "
                 "currency. The firm figure is the whole book as one portfolio (diversified), never the sum of "
                 "the portfolios' standalone VaRs.</p></section>")
    return "\n".join(parts)


def _detail_order(summary: pd.DataFrame) -> pd.DataFrame:
    """Portfolios with breaches first, then the largest VaR 99% in USD (the engine's var_99_hist_usd: books of
    different currencies compare): the order of the table and of detail pages."""
    key = summary.assign(_b=summary["breaches"] if "breaches" in summary else 0,
                         _v=summary["var_99_hist_usd"] if "var_99_hist_usd" in summary else 0)
    return key.sort_values(["_b", "_v", "portfolio_id"], ascending=[False, False, True]).drop(columns=["_b", "_v"])


def detail_file(pid: str) -> str:
    return f"portfolio-{slug(pid)}.html"


def section_portfolios(summary: pd.DataFrame, detailed: set[str]) -> str:
    """A bounded table (PORTFOLIO_ROWS, breached first) linking each portfolio's detail page; every portfolio
    is in portfolios.html. The report's size does not grow with the book beyond these bounds."""
    ordered = _detail_order(summary)
    shown = ordered.head(PORTFOLIO_ROWS).assign(
        detail=lambda d: [f'<a href="{detail_file(p)}">detail</a>' if p in detailed else "cockpit"
                          for p in d["portfolio_id"]])
    parts = ['<section id="section-portfolios"><h2 id="portfolios">Portfolios</h2>',
             f"<p>{len(summary)} portfolios; {len(shown)} shown here (breached first, then largest VaR 99% in USD); "
             f'all in <a href="portfolios.html" id="all-portfolios">portfolios.html</a>. Each detail page holds '
             "limits, VaR/ES by method, value and PnL, drawdown, VaR backtest and exposures.</p>",
             _portfolio_table(shown, "summary-table"), "</section>"]
    return "\n".join(parts)


def _portfolio_table(df: pd.DataFrame, table_id: str, link: bool = True) -> str:
    cols = [("portfolio_id", "Portfolio", None), ("name", "Name", None), ("base_currency", "Ccy", None),
            ("market_value", "Market value", amount), ("daily_pnl", "Daily PnL", signed_amount),
            ("mtd_pnl", "MTD PnL", signed_amount), ("var_95_hist", "VaR 95%", amount),
            ("var_99_hist", "VaR 99%", amount), ("es_95_hist", "ES 95%", amount), ("es_99_hist", "ES 99%", amount),
            ("max_drawdown", "Max drawdown", pct), ("breaches", "Breaches", number)]
    if link:
        cols.append(("detail", "Detail", None))
    return table(df, cols, table_id=table_id, signed=("daily_pnl", "mtd_pnl"), raw=("detail",),
                 currency="base_currency")


def _portfolio_breaches(data: ReportData, pid: str) -> str:
    breaches = data.get("breaches")
    if breaches is None:
        return missing("fact_limit_breaches")
    mine = breaches[breaches["portfolio_id"].astype(str) == pid]
    if mine.empty:
        risk = data.get("risk")
        if risk is None or not (risk["portfolio_id"].astype(str) == pid).any():  # not computed: unknown, not none
            return kit.empty(f"limit breaches on {data.as_of} unknown: no risk metrics for this day")
        return kit.empty(f"no limit breaches on {data.as_of}")
    mine = mine.assign(value_fmt=[limit_value(t, v) for t, v in zip(mine["limit_type"], mine["value"], strict=True)],
                       limit_fmt=[limit_value(t, v)
                                  for t, v in zip(mine["limit_type"], mine["limit_value"], strict=True)])
    return table(mine, [("limit_type", "Limit", None), ("metric", "Metric", None), ("value_fmt", "Value", None),
                        ("limit_fmt", "Limit value", None)], table_id=f"breaches-{slug(pid)}")


def _methods_table(row, scope: str, ccy: str, table_id: str) -> str:
    """VaR/ES of every method the registry (etl/measures.py) computes in `scope`, one row per method with a figure."""
    headers, methods = measures.grid(scope)
    rows = [{"method": m.label, **{key: row.get(col) for key, col in cols.items()}} for m, cols in methods
            if any(_isnum(row.get(col)) for col in cols.values())]
    if not rows:
        return kit.empty("no VaR/ES figures for this day")
    return table(pd.DataFrame(rows), [("method", "Method", None),
                                      *[(key, f"{label} ({ccy})", lambda v: _FORMATS.amount(v, ccy))
                                        for key, label in headers]],
                 table_id=table_id)


def _risk_table(risk_row: pd.Series, ccy: str, pid: str) -> str:
    """VaR/ES by method, then the portfolio's plain measures (etl/measures.py)."""
    out = _methods_table(risk_row, "portfolio", ccy, f"risk-{slug(pid)}")
    extras = [f"{m.label}: {pct(risk_row.get(m.name)) if 'fraction' in m.unit else number(risk_row.get(m.name))}"
              for m in measures.plain_measures("portfolio") if m.name in risk_row]
    if "lookback_days" in risk_row:
        extras.append(f"lookback days: {number(risk_row.get('lookback_days'))}")
    return out + (f"<p>{e('; '.join(extras))} (volatilities annualised)</p>" if extras else "")


def _rows(data: ReportData, key: str, table_name: str, none_text: str, parts: list[str],
          portfolio_id: str | None = None) -> pd.DataFrame | None:
    """The rows of `data[key]` (of one portfolio if given); None, with the note why appended to `parts`, when the
    table is missing or has none."""
    frame = data.get(key)
    if frame is None:
        parts.append(missing(table_name))
        return None
    if portfolio_id is not None:
        frame = frame[frame["portfolio_id"].astype(str) == portfolio_id]
    if frame.empty:
        parts.append(kit.empty(none_text))
        return None
    return frame


def section_portfolio(data: ReportData, p: pd.Series) -> str:
    pid, ccy, name = str(p["portfolio_id"]), str(p["base_currency"]), str(p["name"])
    sid = slug(pid)
    limits = {t: p.get(f"{t}_limit") for t in LIMIT_TYPES}
    parts = [f'<section class="portfolio" id="section-portfolio-{sid}">',
             f'<h3 id="portfolio-{sid}">{e(name)} <small>({e(pid)}, {e(ccy)})</small></h3>',
             "<p>Limits: " + e("; ".join(f"{t} {limit_value(t, v) if t in FRACTION_LIMITS else money(v, ccy)}"
                                         + (f" on {p.get('var_limit_metric')}"   # the measure it is checked on
                                            if t == "var" and _isnum(v) and isinstance(p.get("var_limit_metric"), str)
                                            else "")
                                         for t, v in limits.items())) + " (drawdown: on the drawdown from peak)</p>",
             f'<h4 id="portfolio-{sid}-breaches">Limit breaches on {data.as_of}</h4>',
             _portfolio_breaches(data, pid)]

    parts.append(f'<h4 id="portfolio-{sid}-risk">VaR and ES</h4>')
    mine = _rows(data, "risk", "fact_risk_metrics", f"no risk metrics on {data.as_of}", parts, pid)
    if mine is not None:
        parts.append(_risk_table(mine.iloc[0], ccy, pid))

    val, pnl = data.get("valuation"), data.get("pnl")
    parts.append(f'<h4 id="portfolio-{sid}-value">Value and PnL</h4>')
    my_val = None if val is None else val[val["portfolio_id"].astype(str) == pid]
    my_pnl = None if pnl is None else pnl[pnl["portfolio_id"].astype(str) == pid]
    if val is None:
        parts.append(missing("fact_portfolio_valuation"))
    elif my_val.empty:
        parts.append(kit.empty("no valuation history"))
    else:
        parts.append(kit.figure(charts.value_and_pnl(my_val, my_pnl, ccy, f"{name}: market value and daily PnL ({ccy})"),
                            f"chart-value-{sid}", f"Market value and daily PnL up to {data.as_of}, in {ccy}."))
        parts.append(f'<h4 id="portfolio-{sid}-drawdown">Drawdown (underwater)</h4>')
        dd_limit = float(limits["drawdown"]) if _isnum(limits["drawdown"]) else None
        parts.append(kit.figure(charts.underwater(my_val, f"{name}: drawdown from running peak", dd_limit),
                            f"chart-drawdown-{sid}", f"The risk engine's daily drawdown from peak (0% = at a high). "
                                                     f"{DRAWDOWN_MEASURE}"))

    parts.append(f'<h4 id="portfolio-{sid}-backtest">VaR vs realised PnL</h4>')
    mine = _rows(data, "backtest", "fact_var_backtest", "no VaR backtest rows", parts, pid)
    if mine is not None:
        mine = mine.assign(confidence=normalise_confidence(mine["confidence"]))
        method = pick_method(mine)
        chosen = mine[mine["method"].astype(str) == method]
        summ = backtest_zones(data, pid)
        z = summ[(summ["method"] == method) & np.isclose(summ["confidence"], 0.99)]
        zone = z["zone"].iat[0] if not z.empty and pd.notna(z["zone"].iat[0]) else "n/a"   # no scored day: none
        n_days = int(z["n_obs"].iat[0]) if not z.empty else 0
        parts.append(f'<p>Traffic light ({e(method)} VaR 99%, last {n_days} days): '
                     f'<span class="badge zone-{e(zone)}" id="zone-{sid}">{e(zone.upper())}</span></p>')
        parts.append(kit.figure(charts.var_vs_pnl(chosen, ccy, f"{name}: {method} VaR vs realised daily PnL ({ccy})"),
                            f"chart-var-{sid}", "Bars: realised PnL; lines: minus the VaR forecast; "
                                                "crosses: exceptions (loss beyond VaR)."))
        parts.append(table(summ, [("method", "Method", None), ("confidence", "Confidence", lambda v: pct(v, 0)),
                                  ("n_obs", "Days", number), ("exceptions", "Exceptions", number),
                                  ("expected", "Expected", lambda v: f"{v:.1f}"), ("zone", "Zone", None)],
                           table_id=f"backtest-{sid}"))

    parts.append(f'<h4 id="portfolio-{sid}-exposure">Exposure and concentration by asset</h4>')
    mine = _rows(data, "positions", "fact_positions", f"no positions on {data.as_of}", parts, pid)
    if mine is not None:
        conc = float(limits["concentration"]) if _isnum(limits["concentration"]) else None
        parts.append(kit.figure(charts.exposure_by_asset(mine, ccy, f"{name}: exposure by asset ({ccy})", conc),
                            f"chart-exposure-{sid}", f"Market value per asset on {data.as_of}."))
        mine = mine.assign(share=mine["weight"].astype(float).abs(), close_of=_close_of(mine))
        parts.append(table(mine.sort_values("share", ascending=False), [
            ("product_id", "Asset", None), ("quantity", "Quantity", number), ("avg_cost", "Avg cost", money),
            ("close", "Close", money), ("close_of", "Close of", None),
            ("market_value", f"Market value ({ccy})", lambda v: _FORMATS.amount(v, ccy)),
            ("unrealized_pnl", f"Unrealised PnL ({ccy})", lambda v: _FORMATS.amount(v, ccy, signed=True)),
            ("share", "Share of gross", pct)], table_id=f"positions-{sid}", signed=("unrealized_pnl",)))
    parts.append("</section>")
    return "\n".join(parts)


def _close_of(positions: pd.DataFrame) -> pd.Series:
    """The day of each position's close, '<day> (stale)' when it is before the as-of day (etl.risk.engine.price_flags)."""
    if "price_date" not in positions:
        return pd.Series("", index=positions.index)
    day = positions["price_date"].astype(str).str[:10]
    stale = positions["is_stale"].fillna(False).astype(bool) if "is_stale" in positions else False
    return day.where(~stale, day + " (stale)")


def section_market(data: ReportData) -> str:
    parts = ['<section id="section-market"><h2 id="market">Market</h2>',
             '<h3 id="market-volatility">Volatility ranking</h3>']
    ar = _rows(data, "asset_risk", "fact_asset_risk", f"no asset risk rows on {data.as_of}", parts)
    if ar is not None:
        col = next((c for c in ("vol_30d", "vol_20d", "vol_ewma") if c in ar and ar[c].notna().any()), None)
        if col is None:
            parts.append(kit.empty("no volatility figures"))
        else:
            parts.append(kit.figure(charts.volatility_ranking(ar, col, f"Annualised volatility ({col}) on {data.as_of}"),
                                "chart-volatility", "Assets ranked by annualised volatility."))
            parts.append(table(ar.sort_values(col, ascending=False), [
                ("product_id", "Asset", None), ("vol_20d", "Vol 20d", pct), ("vol_30d", "Vol 30d", pct),
                ("vol_ewma", "Vol EWMA", pct), ("max_drawdown", "Max drawdown", pct),
                ("worst_daily_return", "Worst daily return", pct)], table_id="volatility-table"))

    parts.append('<h3 id="market-correlation">Correlation of daily returns</h3>')
    pairs = data.get("correlations")
    if pairs is None:
        parts.append(missing("fact_correlations"))
    else:
        corr = correlation_matrix(pairs)
        if corr.shape[0] < 2:
            parts.append(kit.empty(f"no correlations stored for {data.as_of}"))
        else:
            n, ccy = int(pairs["n_obs"].max()), pairs["return_currency"].iat[0]
            parts.append(kit.figure(charts.heatmap(corr, f"Correlation of daily {ccy} returns, last {n} days",
                                               "correlation", vmin=-1, vmax=1),
                                "chart-correlation", f"Pearson correlation of simple daily {ccy} returns over the "
                                                     "VaR lookback, as the risk engine stored it.", narrow=True))

    parts.append('<h3 id="market-factor-exposures">Factor exposures</h3>')
    fx = _rows(data, "factor_exposures", "fact_factor_exposures", f"no factor exposures up to {data.as_of}", parts)
    if fx is not None:
        betas = fx.pivot_table(index="product_id", columns="factor_name", values="beta", aggfunc="last")
        last_at = pd.to_datetime(fx["bucket_start"], utc=True).max()
        parts.append(kit.figure(charts.heatmap(betas, f"Factor betas (latest snapshot up to {data.as_of})", "beta"),
                            "chart-factor-exposures", f"Latest rolling betas per asset and factor (as of {last_at})."))

    parts.append('<h3 id="market-anomalies">Anomalies</h3>')
    an = _rows(data, "anomalies", "fact_anomalies", "no anomalies on this day", parts)
    if an is not None:
        parts.append(kit.figure(charts.anomalies_timeline(an, f"Return anomalies on {data.as_of} ({len(an)} flagged)",
                                                      data.as_of),
                            "chart-anomalies", "Flagged bars by time and asset."))
        top = an.assign(absz=an["robust_z"].astype(float).abs()).sort_values("absz", ascending=False).head(25)
        parts.append(table(top, [("product_id", "Asset", None), ("bucket_start", "Bucket start (UTC)", utc_minute),
                                 ("return_value", "Return", lambda v: pct(v, 2)),
                                 ("robust_z", "Robust z", lambda v: f"{float(v):+.1f}")], table_id="anomalies-table"))

    parts.append('<h3 id="market-price-quality">Suspect prints</h3>')
    pq = _rows(data, "price_quality", "fact_price_quality", f"no print flagged by the quality gate on {data.as_of}",
               parts)
    if pq is not None:
        excluded = int((pq["decision"] == "excluded").sum())
        parts.append(f'<p id="price-quality-count">{len(pq)} print(s) flagged on {e(data.as_of)}: {excluded} '
                     f"excluded from the bars, {len(pq) - excluded} accepted by override.</p>")
        parts.append(table(pq, [("product_id", "Asset", None), ("granularity", "Candle (s)", number),
                                ("bucket_start", "Bucket start (UTC)", utc_minute), ("rule", "Rule", None),
                                ("decision", "Decision", None), ("evidence", "Evidence", None)],
                           table_id="price-quality-table"))
    parts.append("</section>")
    return "\n".join(parts)


def section_pipeline(data: ReportData) -> str:
    parts = ['<section id="section-pipeline"><h2 id="pipeline-health">Pipeline health</h2>']
    runs = data.get("runs")
    if runs is None:
        parts.append(missing("fact_pipeline_runs"))
        return "\n".join([*parts, "</section>"])
    if runs.empty:
        parts.append(kit.empty("no pipeline runs recorded"))
        return "\n".join([*parts, "</section>"])
    last = latest_task_status(runs)
    tasks = per_task(last)
    starts = tasks.groupby("run_id")["started_at"].min().sort_values()
    dags = tasks.groupby("run_id")["dag_id"].first()
    labels = {r: f"{dags[r]} {t:%m-%d %H:%M}" for r, t in starts.items()}
    order = tasks.groupby("task")["started_at"].min().sort_values().index  # tasks in pipeline order
    grid = tasks.assign(run=tasks["run_id"].map(labels))
    durations = grid.pivot_table(index="task", columns="run", values="duration_s", aggfunc="sum")
    failed = grid.pivot_table(index="task", columns="run", values="failed", aggfunc="sum") > 0
    columns = [labels[r] for r in starts.index]
    durations = durations.reindex(index=order, columns=columns)
    failed = failed.reindex(index=order, columns=columns)
    parts.append('<h3 id="pipeline-durations">Task durations over recent runs</h3>')
    parts.append(kit.figure(charts.task_durations(durations, failed, f"Task seconds, last {len(columns)} runs"),
                        "chart-durations", "Seconds per task (mapped instances summed) and run (DAG, start time "
                                           "UTC); red outline: the task failed in that run."))

    per_run = (tasks.groupby("run_id", as_index=False)
               .agg(started_at=("started_at", "min"), dag_id=("dag_id", "first"), tasks=("task", "size"),
                    failed=("failed", "sum"), rows_in=("rows_in", "sum"), rows_out=("rows_out", "sum"),
                    duration_s=("duration_s", "sum"))
               .sort_values("started_at", ascending=False))
    newest = per_run["run_id"].iloc[0]
    per_run["started_at"] = per_run["started_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
    parts.append('<h3 id="pipeline-rows">Rows processed</h3>')
    parts.append(table(per_run, [("run_id", "Run", None), ("dag_id", "DAG", None),
                                 ("started_at", "Started (UTC)", None), ("tasks", "Tasks", number),
                                 ("failed", "Failed", number), ("rows_in", "Rows in", number),
                                 ("rows_out", "Rows out", number), ("duration_s", "Task seconds", seconds)],
                       table_id="runs-table"))
    latest = tasks[tasks["run_id"] == newest].sort_values("started_at")
    latest = latest.assign(status=np.select([latest["failed"] > 0, latest["retrying"] > 0],
                                            ["failed", "up_for_retry"], "success"))
    parts.append(f"<p>Tasks of the latest run {e(newest)}:</p>")
    parts.append(table(latest, [("task", "Task", None), ("instances", "Instances", number),
                                ("status", "Status", None), ("rows_in", "Rows in", number),
                                ("rows_out", "Rows out", number), ("duration_s", "Seconds", seconds)],
                       table_id="latest-run-table"))
    parts.append('<h3 id="pipeline-failures">Failures</h3>')
    failures = runs[runs["status"].astype(str) == "failed"].copy()
    if failures.empty:
        parts.append(kit.empty("no failed task attempts in the recent runs"))
    else:
        failures["started_at"] = pd.to_datetime(failures["started_at"], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S")
        parts.append(table(failures.sort_values("started_at", ascending=False),
                           [("run_id", "Run", None), ("task_id", "Task", None),
                            ("started_at", "Started (UTC)", None), ("message", "Message", None)],
                           table_id="failures-table"))
    parts.append("</section>")
    return "\n".join(parts)


def section_notes(data: ReportData, extra: Iterable[str] = ()) -> str:
    notes = [*data.notes, *extra]
    body = "".join(f'<p class="note">{e(n)}</p>' for n in notes) if notes else kit.empty("all gold tables were read")
    return f'<section id="section-notes"><h2 id="data-notes">Data notes</h2>{body}</section>'


def _guarded(build: Callable[[], str], fallback_heading: str, what: str, notes: list[str]) -> str:
    """One section's HTML; if it fails on unexpected data, its heading and a note instead of no report at all."""
    try:
        return build()
    except Exception as exc:  # a broken chart must not cost the risk manager the whole morning report
        log.exception("report: the %s section failed", what)
        note = f"the {what} section could not be drawn: {type(exc).__name__}: {exc}"
        if note not in notes:
            notes.append(note)
        return f'{fallback_heading}<p class="note">{e(note)}</p>'


def render(data: ReportData, links: dict[str, str] | None = None, extra_notes: Iterable[str] = (),
           generated_at: datetime | None = None) -> str:
    """report.html alone (see `pages` for the portfolio pages beside it)."""
    return pages(data, links, extra_notes, generated_at)["report.html"]


def pages(data: ReportData, links: dict[str, str] | None = None, extra_notes: Iterable[str] = (),
          generated_at: datetime | None = None) -> dict[str, str]:
    """report.html, portfolios.html (every portfolio) and one portfolio-<id>.html per detailed portfolio.

    report.html is bounded whatever the book's size: the first screen, PORTFOLIO_ROWS table rows, market and
    pipeline sections; per-portfolio charts live on the DETAIL_PAGES detail pages (relative links, offline).
    `links` (label -> relative href) appear in the header, e.g. the CSVs next to the file.
    """
    generated_at = generated_at or datetime.now(UTC)
    portfolios = _portfolio_list(data)
    summary = summary_frame(data, portfolios)
    nav = "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in (
        ("summary", "Summary"), ("portfolios", "Portfolios"), ("market", "Market"),
        ("pipeline-health", "Pipeline health"), ("data-notes", "Data notes")))
    link_html = " · ".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in (links or {}).items())
    failures = data.failures  # a section that fails is listed there: the status line (built last) names it
    detailed = _detail_order(summary)["portfolio_id"].head(DETAIL_PAGES).tolist() if not summary.empty else []
    out: dict[str, str] = {}
    back = f'<a href="report.html">Risk report as of {data.as_of}</a> · <a href="portfolios.html">all portfolios</a>'
    for _, p in portfolios[portfolios["portfolio_id"].isin(detailed)].iterrows():
        body = _guarded(lambda p=p: section_portfolio(data, p),
                        f'<h3 id="portfolio-{slug(p["portfolio_id"])}">{e(p["portfolio_id"])}</h3>',
                        f"portfolio {p['portfolio_id']}", failures)
        out[detail_file(p["portfolio_id"])] = kit.report_page(f"{p['portfolio_id']}: risk as of {data.as_of}",
                                                    f"<h1>{e(p['portfolio_id'])} as of {data.as_of}</h1>{back}",
                                                    body)
    everything = _detail_order(summary).assign(
        detail=lambda d: [f'<a href="{detail_file(p)}">detail</a>' if p in set(detailed) else ""
                          for p in d["portfolio_id"]])
    out["portfolios.html"] = kit.report_page(f"Portfolios as of {data.as_of}", f"<h1>All portfolios as of {data.as_of}</h1>"
                                   f'<a href="report.html">Risk report</a>',
                                   _portfolio_table(everything, "all-portfolios-table"))
    summary_html = _guarded(lambda: section_summary(data, portfolios, summary),
                            '<h2 id="summary">Summary</h2>', "summary", failures)
    portfolios_html = _guarded(lambda: section_portfolios(summary, set(detailed)), '<h2 id="portfolios">Portfolios'
                               "</h2>", "portfolios", failures)
    market_html = _guarded(lambda: section_market(data), '<h2 id="market">Market</h2>', "market", failures)
    pipeline_html = _guarded(lambda: section_pipeline(data), '<h2 id="pipeline-health">Pipeline health</h2>',
                             "pipeline health", failures)
    header = (f'<h1 id="title">Risk report as of {data.as_of}</h1>\n'
              f"<div>Generated {generated_at:%Y-%m-%d %H:%M} UTC from the gold schema. {link_html}</div>\n"
              f"<nav>{nav}</nav>")
    body = f"""<!-- ==== status banner: the as-of completeness status (keep this block first) ==== -->
<section id="status-banner">{status_banner(data)}</section>
<!-- ==== end of status banner ==== -->
{summary_html}
{portfolios_html}
{market_html}
{pipeline_html}
{section_notes(data, [*extra_notes, *failures])}"""
    out["report.html"] = kit.report_page(f"Risk report {data.as_of}", header, body)
    return out

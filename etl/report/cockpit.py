"""The risk cockpit's data: one JSON-ready dict per page, read from gold as the `reporting` role.

Every query is parameterised (`%(as_of)s`, `%(portfolio_id)s`); nothing from a request is pasted into SQL. The
Airflow plugin (`plugins/risk_cockpit/`) renders these dicts as pages and serves them as JSON; the HTML report
uses `summary`, `breaches` and `firm_risk` for its first screen, so both say the same thing.

Pages: `summary` (the contract JSON of `/risk/api/summary`), `firm`, `portfolio`, `market`, `pipeline`.
Tables that another piece of work adds later (`fact_firm_risk`, intraday breaches, `fact_intraday_risk`,
`fact_risk_contributions`) are optional: when absent the page says so instead of inventing a number.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from etl import measures
from etl.errors import some
from etl.measures import FRACTION_LIMITS
from etl.report.completeness import beyond_rows, committed_run
from etl.report.figures import correlation_matrix, total
from etl.report.gold import GoldReader
from etl.risk.anomalies import MAD_CONSTANT
from etl.settings import get_settings

HISTORY_DAYS = 365
ATTRIBUTION_ORDER = ("market", "liquidity_hml", "volatility_hml", "momentum_hml", "residual")  # stacking order
BACKTEST_DAYS = 250
PRICE_DAYS = 90             # market: the rebased price history
FIRM_CONTRIBUTION_ROWS = 20  # firm: the largest contributions to the firm's VaR
DURATION_DAYS = 30          # pipeline: task durations over this many days
AUDIT_ROWS = 50
CONTRIBUTION_COLUMNS = ("scope, portfolio_id, product_id, currency, component_var_99_param, component_es_99_hist, "
                        "marginal_var_99_param")
FIRM_NOT_COMPUTED = "firm VaR not yet computed"
INTRADAY_BREACH_TABLES = ("fact_intraday_breaches", "fact_intraday_limit_breaches")


# ---- plumbing ----------------------------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    """numpy/pandas scalars, dates and NaN -> plain JSON values (NaN -> None)."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, pd.Timestamp):
        return None if pd.isna(v) else v.isoformat()
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if v is None or v is pd.NaT or (not isinstance(v, (str, bool, int)) and pd.isna(v)):
        return None
    return v


def records(df: pd.DataFrame | None) -> list[dict]:
    return [] if df is None else [jsonable(r) for r in df.to_dict("records")]


def tables(reader: GoldReader) -> set[str]:
    """Names of the relations in schema gold (for the optional tables)."""
    df = reader.query("select table_name from information_schema.tables where table_schema = 'gold'")
    return set(df["table_name"])


def columns(reader: GoldReader, table: str) -> set[str]:
    df = reader.query("select column_name from information_schema.columns where table_schema = 'gold' "
                      "and table_name = %(t)s", {"t": table})
    return set(df["column_name"])


def sql_total(col: str) -> str:
    """etl.report.figures.total in SQL: the sum over the group's rows, NULL when any of them lacks the figure (SQL's
    sum skips NULLs: a partial sum is not the book's figure)."""
    return f"case when count({col}) = count(*) then sum({col}) end"


def latest_as_of(reader: GoldReader) -> date:
    return reader.latest_as_of()


RISK_COLUMNS = ", ".join(f"r.{c}" for c in measures.columns("portfolio"))   # every method and measure

# ---- the figures every page shares --------------------------------------------------------------------------------
PORTFOLIO_DAY_SQL = f"""
    select p.portfolio_id, p.name,
           -- the currency the day's figures are in (each row's, as the run wrote it), not dim_portfolio's: today's
           coalesce(v.base_currency, d.base_currency, r.base_currency, p.base_currency) as base_currency,
           -- the limits the day's risk run checked (its breaches' limit_value), not dim_portfolio's: today's
           r.checked_var_limit as var_limit, r.checked_var_limit_metric as var_limit_metric,
           r.checked_concentration_limit as concentration_limit, r.checked_drawdown_limit as drawdown_limit,
           v.market_value, v.gross_exposure, v.net_exposure, v.concentration_pct,
           d.daily_pnl, d.mtd_pnl,
           {RISK_COLUMNS}, r.lookback_days, r.var_99_hist_usd
    from gold.dim_portfolio as p
    left join gold.fact_portfolio_valuation as v on v.portfolio_id = p.portfolio_id and v.as_of_date = %(as_of)s
    left join gold.fact_pnl_daily as d on d.portfolio_id = p.portfolio_id and d.as_of_date = %(as_of)s
    left join gold.fact_risk_metrics as r on r.portfolio_id = p.portfolio_id and r.as_of_date = %(as_of)s
    where p.portfolio_id = %(portfolio_id)s
       or %(portfolio_id)s::text is null  -- the current books, and a retired one on a day it has figures of
          and (p.is_current or v.portfolio_id is not null or d.portfolio_id is not null or r.portfolio_id is not null)
    order by p.portfolio_id"""


def portfolio_day(reader: GoldReader, as_of: date, portfolio_id: str | None = None) -> pd.DataFrame:
    """One row per current portfolio of dim_portfolio (plus a retired one with figures on the day; or just
    `portfolio_id`) with its valuation, PnL and risk of the day (NULL when missing), and the engine's
    `var_99_hist_usd` to rank books of different currencies. `var_limit`, `var_limit_metric`, `concentration_limit`
    and `drawdown_limit` are those the day's risk run checked (risk_metrics.checked_*; NULL without a risk row), so a past day's breach
    is shown against the limit that fired it, not against portfolios.csv as it is now."""
    return reader.query(PORTFOLIO_DAY_SQL, {"as_of": as_of, "portfolio_id": portfolio_id})


def completeness(day: pd.DataFrame) -> tuple[str, list[str]]:
    """'complete' when every portfolio has its valuation, PnL and risk rows for the day; else 'incomplete' and
    what is missing (one line per gold table, naming up to five portfolios). A risk row is told by lookback_days,
    never NULL in it: its VaR may be (uncomputable), which the report's check does not call missing either."""
    if day.empty:
        return "incomplete", ["gold.dim_portfolio has no portfolios"]
    missing = []
    for col, table in (("market_value", "fact_portfolio_valuation"), ("daily_pnl", "fact_pnl_daily"),
                       ("lookback_days", "fact_risk_metrics")):
        ids = day.loc[day[col].isna(), "portfolio_id"].astype(str).tolist()
        if ids:
            missing.append(f"gold.{table}: no row for {some(ids)}")
    return ("incomplete" if missing else "complete"), missing


def day_status(reader: GoldReader, as_of: date, day: pd.DataFrame) -> tuple[str, list[str], list[str]]:
    """(status, missing, stale): `completeness` plus the report's checks beyond one row per portfolio, as it says
    them (etl.report.completeness.beyond_rows): gold holding an older risk run than the one committed, a listed
    holding without a close of the day (a delisted one is stale), a price resting on an excluded print; and
    gold.fact_limit_breaches there to read (every page that shows breaches asks this)."""
    status, missing = completeness(day)
    settings = get_settings()
    manifest, unread = committed_run(as_of, settings)
    problems, stale = beyond_rows(reader, as_of, settings, manifest)
    problems = [*unread, *problems]
    if "fact_limit_breaches" not in tables(reader):  # unknown breaches are not "no breaches": fail closed
        problems.append("gold.fact_limit_breaches is missing")
    return ("incomplete" if problems else status), [*missing, *problems], stale


BREACHES_SQL = """
    with days as (
        select distinct portfolio_id, limit_type, as_of_date from gold.fact_limit_breaches
        where as_of_date <= %(as_of)s  -- all the history gold holds: a breach began when it began
    ),
    streaks as (  -- consecutive breach days share as_of_date - row_number
        select portfolio_id, limit_type, as_of_date,
               as_of_date - (row_number() over (partition by portfolio_id, limit_type order by as_of_date))::int
                   as streak
        from days
    ),
    since as (
        select portfolio_id, limit_type, min(as_of_date) as since
        from streaks group by portfolio_id, limit_type, streak
        having max(as_of_date) = %(as_of)s
    )
    select b.portfolio_id, b.limit_type, b.metric, b.value, b.limit_value,
           b.value / nullif(b.limit_value, 0) as utilisation, s.since, %(as_of)s::date - s.since + 1 as days,
           coalesce(b.base_currency, p.base_currency) as base_currency  -- the breach's, not today's dim_portfolio
    from gold.fact_limit_breaches as b
    left join since as s using (portfolio_id, limit_type)
    left join gold.dim_portfolio as p using (portfolio_id)
    where b.as_of_date = %(as_of)s {scope}
    order by utilisation desc nulls last, b.portfolio_id, b.limit_type"""


def breaches(reader: GoldReader, as_of: date) -> tuple[list[dict], list[str]]:
    """The day's limit breaches, worst utilisation first: end of day from gold.fact_limit_breaches, intraday
    from an intraday breach table (or a `scope` column) when the intraday work has added one.

    Each: portfolio_id, limit_type, metric, value, limit_value, utilisation (value / limit), since (first day of
    the unbroken run of daily breaches, or the first intraday bucket), scope ('eod' | 'intraday'), unit
    ('currency' = the portfolio's base currency, 'fraction' = shown as a percentage), currency.
    Returns (breaches, notes).
    """
    names = tables(reader)
    notes: list[str] = []
    out: list[dict] = []
    if "fact_limit_breaches" not in names:
        return [], ["gold.fact_limit_breaches is missing: limit breaches unknown"]
    has_scope = "scope" in columns(reader, "fact_limit_breaches")
    df = reader.query(BREACHES_SQL.format(scope="and coalesce(b.scope, 'eod') = 'eod'" if has_scope else ""),
                      {"as_of": as_of})
    out += with_actions(reader, as_of, [_breach(r, "eod") for r in df.to_dict("records")])
    intraday = next((t for t in INTRADAY_BREACH_TABLES if t in names), None)
    if has_scope:
        df = reader.query("""
            select b.portfolio_id, b.limit_type, b.metric, b.value, b.limit_value,
                   b.value / nullif(b.limit_value, 0) as utilisation, b.as_of_date as since,
                   coalesce(b.base_currency, p.base_currency) as base_currency
            from gold.fact_limit_breaches as b left join gold.dim_portfolio as p using (portfolio_id)
            where b.as_of_date = %(as_of)s and b.scope = 'intraday'""", {"as_of": as_of})
        out += [_breach(r, "intraday") for r in df.to_dict("records")]
    elif intraday is not None:
        out += _intraday_breaches(reader, intraday, as_of)
    else:
        notes.append("intraday limit breaches are not in gold yet: end-of-day breaches only")
    out.sort(key=lambda b: -(b["utilisation"] if b["utilisation"] is not None else -math.inf))
    return out, notes


def _breach(r: dict, scope: str) -> dict:
    unit = "fraction" if str(r["limit_type"]) in FRACTION_LIMITS else "currency"
    return jsonable({"portfolio_id": r["portfolio_id"], "limit_type": r["limit_type"], "metric": r.get("metric"),
                     "value": r["value"], "limit_value": r["limit_value"], "utilisation": r["utilisation"],
                     "since": r.get("since"), "days": r.get("days"), "scope": scope, "unit": unit,
                     "currency": r.get("base_currency") or "USD"})


def with_actions(reader: GoldReader, as_of: date, eod: list[dict]) -> list[dict]:
    """End-of-day breaches with `action` (the latest still-valid action of gold.fact_breach_actions on this breach:
    portfolio, limit type and the day it began; None if none) and `history` (its utilisation each day since it
    began: [as_of_date, utilisation])."""
    if not eod:
        return eod
    acts = active_actions(reader, as_of)
    by_key = {(a["portfolio_id"], a["limit_type"], jsonable(a["breach_began"])): jsonable(a)
              for a in acts.to_dict("records")}
    hist = reader.query("""
        select portfolio_id, limit_type, as_of_date, max(value / nullif(limit_value, 0)) as utilisation
        from gold.fact_limit_breaches
        where as_of_date <= %(as_of)s and as_of_date >= %(first)s
        group by 1, 2, 3 order by 1, 2, 3""",
                        {"as_of": as_of, "first": min((b["since"] for b in eod if b["since"]), default=as_of)})
    series = {k: g[["as_of_date", "utilisation"]] for k, g in hist.groupby(["portfolio_id", "limit_type"])}
    for b in eod:
        b["action"] = by_key.get((b["portfolio_id"], b["limit_type"], b["since"]))
        h = series.get((b["portfolio_id"], b["limit_type"]))
        b["history"] = [] if h is None or not b["since"] else \
            [jsonable(r) for r in h[h["as_of_date"].astype(str) >= b["since"]].itertuples(index=False)]
    return eod


def active_actions(reader: GoldReader, as_of: date) -> pd.DataFrame:
    """The latest action per (portfolio_id, limit_type, breach_began) still valid on `as_of` (empty while
    gold.fact_breach_actions is not built): by_user, action, reason, acted_at, valid_until, utilisation_at_action,
    new_limit_value."""
    if "fact_breach_actions" not in tables(reader):
        return pd.DataFrame()
    return reader.query("""
        select distinct on (portfolio_id, limit_type, breach_began)
               portfolio_id, limit_type, breach_began, action, by_user, reason, acted_at, valid_until,
               utilisation_at_action, new_limit_value
        from gold.fact_breach_actions
        where valid_until >= %(as_of)s and breach_began <= %(as_of)s
        order by portfolio_id, limit_type, breach_began, acted_at desc""", {"as_of": as_of})


def _intraday_breaches(reader: GoldReader, table: str, as_of: date) -> list[dict]:
    """The breaches of the day still open at their latest row: rows keyed portfolio x limit type x bucket, read
    generically (`bucket_start` or `breached_at` for the time; a row with a `cleared_at` ends the breach, as the
    intraday run's `cleared` row does). `since`: the first bucket of the day of the open episode."""
    cols = columns(reader, table)
    when = next((c for c in ("bucket_start", "breached_at", "detected_at") if c in cols), None)
    if when is None or not {"portfolio_id", "limit_type", "value", "limit_value"} <= cols:
        return []
    over = "b.cleared_at is not null" if "cleared_at" in cols else "false"
    ccy = "coalesce(b.base_currency, p.base_currency)" if "base_currency" in cols else "p.base_currency"
    metric = "b.metric" if "metric" in cols else "null"
    df = reader.query(f"""
        with day as (
            select b.*, b.{when} as at, {over} as over from gold.{table} as b
            where b.{when} >= %(as_of)s::date and b.{when} < %(as_of)s::date + 1
        ),
        cleared as (select portfolio_id, limit_type, max(at) as at from day where over group by 1, 2),
        first as (  -- the open episode began after the breach last cleared
            select d.portfolio_id, d.limit_type, min(d.at) as since
            from day as d left join cleared as c using (portfolio_id, limit_type)
            where c.at is null or d.at > c.at group by 1, 2
        ),
        latest as (
            select distinct on (b.portfolio_id, b.limit_type) b.*, {metric} as metric_
            from day as b order by b.portfolio_id, b.limit_type, b.at desc
        )
        select b.portfolio_id, b.limit_type, b.metric_ as metric, b.value, b.limit_value,
               b.value / nullif(b.limit_value, 0) as utilisation, f.since, {ccy} as base_currency
        from latest as b join first as f using (portfolio_id, limit_type)
        left join gold.dim_portfolio as p using (portfolio_id)
        where not b.over""", {"as_of": as_of})
    return [_breach(r, "intraday") for r in df.to_dict("records")]


def firm_risk(reader: GoldReader, as_of: date) -> dict:
    """The diversified firm VaR/ES of the day from gold.fact_firm_risk, or `{"note": FIRM_NOT_COMPUTED}`.

    Never the sum of standalone VaRs: that overstates the firm's risk by the diversification benefit.
    """
    if "fact_firm_risk" not in tables(reader):
        return {"available": False, "note": f"{FIRM_NOT_COMPUTED} (gold.fact_firm_risk is not built)"}
    df = reader.query("select * from gold.fact_firm_risk where as_of_date = %(as_of)s", {"as_of": as_of})
    if df.empty:
        return {"available": False, "note": f"{FIRM_NOT_COMPUTED} for {as_of}"}
    out = {"available": True, **jsonable(df.iloc[0].to_dict())}
    prev = reader.query("""
        select as_of_date, var_99_hist from gold.fact_firm_risk where as_of_date < %(as_of)s
        order by as_of_date desc limit 1""", {"as_of": as_of})
    out["prev_as_of_date"] = jsonable(prev["as_of_date"].iat[0]) if not prev.empty else None
    out["var_99_hist_change"] = (jsonable(out["var_99_hist"] - float(prev["var_99_hist"].iat[0]))
                                 if not prev.empty and out["var_99_hist"] is not None else None)
    out["limits"] = firm_limits(reader, out)
    return out


def firm_limits(reader: GoldReader, risk: dict) -> list[dict] | None:
    """Each firm-level limit of gold.dim_firm_limit against the day's firm figure it names: limit_id, metric,
    value, limit_value, utilisation (None when the figure is missing), uncomputable (the figure is missing); None
    while the table is not built."""
    if "dim_firm_limit" not in tables(reader):
        return None
    rows = reader.query("select limit_id, metric, limit_value, currency from gold.dim_firm_limit order by limit_id")
    out = []
    for r in rows.to_dict("records"):
        value = risk.get(r["metric"])
        # no figure (NULL: it rests on too many carried closes) is an uncomputable limit, as a book's var limit
        out.append(jsonable({**r, "value": value,
                             "utilisation": value / r["limit_value"] if value is not None else None,
                             "uncomputable": value is None}))
    return out


# ---- pages -------------------------------------------------------------------------------------------------------
def summary(reader: GoldReader, as_of: date | None = None) -> dict:
    """`GET /risk/api/summary` (../shared/CONTRACT.md): as_of, status, breaches, portfolios."""
    as_of = as_of or latest_as_of(reader)
    day = portfolio_day(reader, as_of)
    status, missing, stale = day_status(reader, as_of, day)
    found, notes = breaches(reader, as_of)
    cols = ["portfolio_id", "market_value", "daily_pnl", "var_95_hist", "var_99_hist"]
    return {"as_of": as_of.isoformat(), "status": status, "missing": missing, "stale": stale, "breaches": found,
            "portfolios": records(day[cols]), "notes": notes}


def firm(reader: GoldReader, as_of: date | None = None) -> dict:
    """Breaches first, firm VaR/ES, PnL today and MTD, worst drawdowns, the day's intraday PnL and exposure."""
    as_of = as_of or latest_as_of(reader)
    day = portfolio_day(reader, as_of)
    status, missing, stale = day_status(reader, as_of, day)
    found, notes = breaches(reader, as_of)
    totals = (day.groupby("base_currency", dropna=False)
              .agg(portfolios=("portfolio_id", "size"), market_value=("market_value", total),
                   daily_pnl=("daily_pnl", total), mtd_pnl=("mtd_pnl", total),
                   gross_exposure=("gross_exposure", total))
              .reset_index().rename(columns={"base_currency": "currency"}))
    prev = reader.query(f"""  -- the book's PnL of the previous day gold has, per currency: PnL day over day
        select coalesce(d.base_currency, p.base_currency) as currency, {sql_total("d.daily_pnl")} as prev_daily_pnl
        from gold.fact_pnl_daily as d left join gold.dim_portfolio as p using (portfolio_id)
        where d.as_of_date = (select max(as_of_date) from gold.fact_pnl_daily where as_of_date < %(as_of)s)
        group by 1""", {"as_of": as_of})
    totals = totals.merge(prev, on="currency", how="left")
    totals["daily_pnl_change"] = totals["daily_pnl"].astype(float) - totals["prev_daily_pnl"].astype(float)
    # ranked on the measure the drawdown limit is checked on (docs/risk_conventions.md "Drawdown")
    worst = day.dropna(subset=["drawdown_from_peak"]).sort_values("drawdown_from_peak").head(5)
    return {"page": "firm", "as_of": as_of.isoformat(), "status": status, "missing": missing, "stale": stale,
            "breaches": found, "notes": notes, "firm_risk": firm_risk(reader, as_of), "totals": records(totals),
            "worst_drawdowns": records(worst[["portfolio_id", "name", "drawdown_from_peak", "drawdown_limit",
                                              "lookback_days", "max_drawdown"]]),
            "contributions": firm_contributions(reader, as_of), "intraday": intraday(reader, as_of),
            "portfolios": records(day)}


def firm_contributions(reader: GoldReader, as_of: date) -> list[dict] | None:
    """The FIRM_CONTRIBUTION_ROWS largest positions' Euler contributions to the firm's VaR/ES (scope firm, USD),
    as the engine stored them; None while gold.fact_risk_contributions is not built."""
    if "fact_risk_contributions" not in tables(reader):
        return None
    return records(reader.query(f"""
        select {CONTRIBUTION_COLUMNS} from gold.fact_risk_contributions
        where scope = 'firm' and as_of_date = %(as_of)s
        order by component_var_99_param desc nulls last, portfolio_id, product_id
        limit {FIRM_CONTRIBUTION_ROWS}""", {"as_of": as_of}))


def intraday(reader: GoldReader, as_of: date, max_price_age_s: float | None = None) -> dict:
    """Book-wide intraday PnL and gross exposure per 5-minute bucket of the as-of day and base currency (`currency`:
    a BTC book's figures are in BTC, never added to USD ones; NULL when a book of the bucket lacks the figure), from
    gold.fact_intraday_risk, with the books of the day's last bucket valued on a price older than `max_price_age_s`
    (default RISK_INTRADAY_MAX_PRICE_AGE_S) or on none (`stale_books`: the page flags them rather than show their value as a
    fresh number). A day without intraday rows has no chart: `latest_day` names the latest day that has them (today
    while the intraday DAG runs), so the page links there instead of showing another day's chart."""
    if "fact_intraday_risk" not in tables(reader):
        return {"available": False, "note": "gold.fact_intraday_risk is not built yet: no intraday chart"}
    max_age = get_settings().intraday_max_price_age_s if max_price_age_s is None else max_price_age_s
    # the currency each row's figures are in (the intraday run's), not dim_portfolio's, which is today's
    row_ccy = "r.base_currency, " if "base_currency" in columns(reader, "fact_intraday_risk") else ""
    df = reader.query(f"""
        select r.bucket_start, coalesce({row_ccy}p.base_currency, 'USD') as currency,
               {sql_total("r.intraday_pnl")} as intraday_pnl, {sql_total("r.gross_exposure")} as gross_exposure,
               {sql_total("r.market_value")} as market_value,
               count(*) filter (where r.max_price_age_s is null or r.max_price_age_s > %(max_age)s) as stale_books
        from gold.fact_intraday_risk as r left join gold.dim_portfolio as p using (portfolio_id)
        where r.bucket_start >= %(as_of)s::date and r.bucket_start < %(as_of)s::date + 1
        group by 1, 2 order by 1, 2""", {"as_of": as_of, "max_age": max_age})
    if df.empty:
        latest = reader.query("select max(bucket_start)::date as d from gold.fact_intraday_risk")["d"].iat[0]
        return {"available": False, "note": f"gold.fact_intraday_risk has no rows on {as_of}",
                "latest_day": jsonable(latest)}
    last = df["bucket_start"].iloc[-1]
    stale = reader.query("""
        select portfolio_id, bucket_start, market_value, max_price_age_s, stale_product_ids
        from gold.fact_intraday_risk
        where bucket_start = %(last)s and (max_price_age_s is null or max_price_age_s > %(max_age)s)
        order by portfolio_id""", {"last": last, "max_age": max_age})
    return {"available": True, "day": pd.Timestamp(df["bucket_start"].iloc[0]).date().isoformat(),
            "rows": records(df), "scenario_note": _scenario_note(reader, last), "max_price_age_s": max_age,
            "stale_books": records(stale)}


def _scenario_note(reader: GoldReader, bucket_start) -> str | None:
    """Which end-of-day scenario set the intraday VaR of `bucket_start` (the chart's last bucket) lacks (missing or
    stale), else None."""
    if "scenario_as_of_date" not in columns(reader, "fact_intraday_risk"):
        return None
    r = reader.query("""
        select bucket_start, max(scenario_as_of_date) as scenario_as_of_date
        from gold.fact_intraday_risk
        where bucket_start = %(bucket_start)s
        group by 1""", {"bucket_start": bucket_start}).iloc[0]
    bucket = pd.to_datetime(r["bucket_start"], utc=True)
    expected = (bucket.normalize() - pd.Timedelta(days=1)).date()
    when = bucket.strftime("%Y-%m-%d %H:%M UTC")
    if pd.isna(r["scenario_as_of_date"]):
        return (f"Intraday VaR/ES at {when} are uncomputable: the end-of-day scenario set as of {expected} is "
                "missing (VaR limits count as breached); run the end-of-day risk for that day")
    if pd.Timestamp(r["scenario_as_of_date"]).date() < expected:
        return (f"Intraday VaR/ES at {when} use the stale end-of-day scenario set as of "
                f"{pd.Timestamp(r['scenario_as_of_date']).date()}; the one as of {expected} is missing")
    return None


def portfolio(reader: GoldReader, portfolio_id: str, as_of: date | None = None) -> dict | None:
    """One portfolio: the day's status (status, missing, stale: the Firm page's), value and PnL, VaR trend with realised PnL and exceptions, backtest table, exposures and
    concentration, contributions and liquidity-adjusted VaR (when built), drawdown curve, return distribution with
    the anomaly threshold.
    None when the portfolio is not in gold.dim_portfolio."""
    as_of = as_of or latest_as_of(reader)
    p = {"as_of": as_of, "portfolio_id": portfolio_id}
    dim = reader.query("select * from gold.dim_portfolio where portfolio_id = %(portfolio_id)s", p)
    if dim.empty:
        return None
    me = portfolio_day(reader, as_of, portfolio_id)
    # the day's status, as the Firm page and every page of the HTML report say it: a book's figures of an incomplete
    # day are never shown as if complete
    status, missing, stale = day_status(reader, as_of, portfolio_day(reader, as_of))
    hist = reader.query(f"""  -- every day of either table: the day a book is closed out has PnL, no valuation
        with v as (
            select * from gold.fact_portfolio_valuation where portfolio_id = %(portfolio_id)s
        ),
        d as (
            select * from gold.fact_pnl_daily where portfolio_id = %(portfolio_id)s
        )
        select as_of_date, v.market_value, d.daily_pnl, v.drawdown, d.daily_return
        from v full join d using (portfolio_id, as_of_date)
        where as_of_date <= %(as_of)s and as_of_date > %(as_of)s::date - {HISTORY_DAYS}
        order by as_of_date""", p)
    bt = reader.query(f"""
        select as_of_date, method, confidence, var_forecast, realized_pnl, is_exception
        from gold.fact_var_backtest
        where portfolio_id = %(portfolio_id)s and as_of_date <= %(as_of)s
          and as_of_date > %(as_of)s::date - {BACKTEST_DAYS}
        order by method, confidence, as_of_date""", p)
    bt["confidence"] = bt["confidence"].astype(float).where(bt["confidence"].astype(float) <= 1,
                                                            bt["confidence"].astype(float) / 100)
    summary_bt = reader.frame("fact_var_model_comparison", """  -- the engine's backtest of the day, not a recount
        select method, confidence, n_days as days, exceptions, expected_exceptions as expected, traffic_light
        from gold.fact_var_model_comparison where portfolio_id = %(portfolio_id)s and as_of_date = %(as_of)s
        order by method, confidence""", p)
    positions = reader.query("""
        select product_id, quantity, avg_cost, close, price_date, is_stale, market_value, unrealized_pnl,
               abs(weight) as share_of_gross
        from gold.fact_positions where portfolio_id = %(portfolio_id)s and as_of_date = %(as_of)s
        order by abs(market_value) desc""", p)
    contrib = None
    if "fact_risk_contributions" in tables(reader):
        contrib = records(reader.query(f"""
            select {CONTRIBUTION_COLUMNS} from gold.fact_risk_contributions
            where scope = 'portfolio' and portfolio_id = %(portfolio_id)s and as_of_date = %(as_of)s
            order by component_var_99_param desc nulls last""", p))
    liquidity = None
    if "fact_liquidity_risk" in tables(reader):
        liquidity = records(reader.query("""
            select * from gold.fact_liquidity_risk where portfolio_id = %(portfolio_id)s and as_of_date = %(as_of)s""",
            p))
    return {"page": "portfolio", "as_of": as_of.isoformat(), "status": status, "missing": missing, "stale": stale,
            "portfolio": records(dim)[0], "liquidity": liquidity,
            "day": records(me)[0] if not me.empty else None, "history": records(hist),
            "backtest": records(bt), "backtest_summary": records(summary_bt), "positions": records(positions),
            "contributions": contrib, "attribution": pnl_attribution(reader, p),
            "returns": return_distribution(hist["daily_return"])}


def pnl_attribution(reader: GoldReader, p: dict) -> dict | None:
    """{"days": [...], "factors": {factor_name: explained PnL per day (None where the day has no row)}} of one
    portfolio over the history window, factors in ATTRIBUTION_ORDER (residual last); None when the table is not built."""
    if "fact_pnl_attribution" not in tables(reader):
        return None
    rows = reader.query(f"""
        select as_of_date, factor_name, explained_pnl from gold.fact_pnl_attribution
        where portfolio_id = %(portfolio_id)s and as_of_date <= %(as_of)s
          and as_of_date > %(as_of)s::date - {HISTORY_DAYS}""", p)
    wide = rows.pivot_table(index="as_of_date", columns="factor_name", values="explained_pnl", aggfunc="sum")
    order = [f for f in ATTRIBUTION_ORDER if f in wide.columns] + sorted(set(wide.columns) - set(ATTRIBUTION_ORDER))
    return {"days": [jsonable(d) for d in wide.index],
            "factors": {f: [jsonable(v) for v in wide[f]] for f in order}}


def return_distribution(returns: pd.Series, bins: int = 30) -> dict:
    """Histogram of daily returns and the anomaly band: where the engine's robust z (etl.risk.anomalies: 0.6745 x
    (x - median) / MAD) passes the threshold it flags at (RISK_ANOMALY_THRESHOLD), i.e. median +- threshold x MAD /
    0.6745; the returns outside it are counted."""
    r = returns.astype(float).dropna()
    if len(r) < 2:
        return {"bins": [], "counts": [], "low": None, "high": None, "outliers": 0}
    threshold = get_settings().anomaly_threshold
    med = float(r.median())
    mad = float((r - med).abs().median()) / MAD_CONSTANT
    low, high = med - threshold * mad, med + threshold * mad
    counts, edges = np.histogram(r, bins=bins)
    return jsonable({"bins": [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)],
                     "counts": counts.tolist(), "low": low, "high": high,
                     "outliers": int(((r < low) | (r > high)).sum()) if mad > 0 else 0})


def market(reader: GoldReader, as_of: date | None = None) -> dict:
    """Latest prices with the day's return, 30-day vol ranking, the engine's correlations (gold.fact_correlations),
    anomalies of the day, factor betas, the day's prints flagged by the market-data quality gate."""
    as_of = as_of or latest_as_of(reader)
    p = {"as_of": as_of}
    prices = reader.query(f"""
        select product_id, price_date, close, daily_return from gold.fact_price_daily
        where price_date <= %(as_of)s and price_date > %(as_of)s::date - {PRICE_DAYS + 1}
        order by product_id, price_date""", p)
    latest = (prices.groupby("product_id").tail(1).rename(columns={"daily_return": "change_1d"})
              .sort_values("product_id"))
    vols = reader.query("""
        select product_id, vol_20d, vol_30d, vol_ewma, max_drawdown, worst_daily_return
        from gold.fact_asset_risk where as_of_date = %(as_of)s order by vol_30d desc nulls last""", p)
    pairs = reader.frame("fact_correlations", """
        select product_id_a, product_id_b, correlation, n_obs, return_currency from gold.fact_correlations
        where as_of_date = %(as_of)s""", p)
    corr = correlation_matrix(pairs) if pairs is not None else pd.DataFrame()
    anomalies = reader.query("""
        select product_id, bucket_start, return_value, robust_z from gold.fact_anomalies
        where bucket_start >= %(as_of)s::date and bucket_start < %(as_of)s::date + 1
        order by abs(robust_z) desc""", p)
    factors = reader.query("""
        select distinct on (product_id, factor_name) product_id, factor_name, beta, r_squared, bucket_start
        from gold.fact_factor_exposures
        where bucket_start < %(as_of)s::date + 1 and bucket_start >= %(as_of)s::date - 7
        order by product_id, factor_name, bucket_start desc""", p)
    suspect = reader.frame("fact_price_quality", """
        select product_id, granularity, bucket_start, rule, decision, evidence from gold.fact_price_quality
        where flag_date = %(as_of)s order by bucket_start, product_id, granularity""", p)
    history = prices.pivot_table(index="price_date", columns="product_id", values="close").sort_index()
    return {"page": "market", "as_of": as_of.isoformat(),
            "prices": records(latest),
            "price_history": {"dates": [d.isoformat() for d in history.index],
                              "rebased": {str(c): jsonable((100 * history[c] / history[c].dropna().iloc[0]).tolist())
                                          for c in history.columns if history[c].notna().any()}},
            "volatility": records(vols),
            "correlation": {"products": [str(c) for c in corr.columns],
                            "matrix": jsonable(corr.to_numpy().tolist()),
                            "n_obs": jsonable(pairs["n_obs"].max()) if pairs is not None and len(pairs) else None,
                            "return_currency": (str(pairs["return_currency"].iat[0])
                                                if pairs is not None and len(pairs) else None)},
            "anomalies": records(anomalies), "factors": records(factors),
            "price_quality": [] if suspect is None else records(suspect)}


def pipeline(reader: GoldReader) -> dict:
    """Rows processed per run, task durations over time (mean and p95 per task), last status per DAG, audit."""
    per_run = reader.query("""
        select run_id, dag_id, min(started_at) as started_at, count(*) as task_attempts,
               sum(rows_in) as rows_in, sum(rows_out) as rows_out, sum(duration_s) as task_seconds,
               count(*) filter (where status = 'failed') as failed
        from gold.fact_pipeline_runs
        group by run_id, dag_id order by started_at desc limit 100""")
    durations = reader.query(f"""
        select regexp_replace(task_id, '\\[\\d+\\]$', '') as task, dag_id, count(*) as attempts,
               avg(duration_s) as mean_s,
               percentile_cont(0.95) within group (order by duration_s) as p95_s
        from gold.fact_pipeline_runs
        where started_at > (select max(started_at) from gold.fact_pipeline_runs) - interval '{DURATION_DAYS} days'
        group by 1, 2 order by dag_id, min(started_at)""")
    last_status = reader.query("""
        with runs as (
            select dag_id, run_id, min(started_at) as started_at, max(started_at) as last_at
            from gold.fact_pipeline_runs group by dag_id, run_id
        ),
        last_run as (select distinct on (dag_id) dag_id, run_id, started_at from runs order by dag_id, last_at desc),
        last_attempt as (  -- a task retried into success counts as success
            select distinct on (r.run_id, r.task_id) r.dag_id, r.run_id, r.status
            from gold.fact_pipeline_runs as r join last_run using (run_id)
            order by r.run_id, r.task_id, r.started_at desc
        )
        select l.dag_id, l.run_id, lr.started_at,
               case when bool_or(status = 'failed') then 'failed'
                    when bool_or(status = 'up_for_retry') then 'up_for_retry'  -- failed, to be retried: not done
                    else 'success' end as status,
               count(*) as tasks, count(*) filter (where status = 'failed') as failed_tasks
        from last_attempt as l join last_run as lr using (dag_id, run_id)
        group by l.dag_id, l.run_id, lr.started_at order by l.dag_id""")
    audit = reader.query(f"""
        select run_id, dag_id, task_id, status, rows_in, rows_out, started_at, duration_s, message
        from gold.fact_pipeline_runs order by started_at desc limit {AUDIT_ROWS}""")
    return {"page": "pipeline", "runs": records(per_run), "durations": records(durations),
            "last_status": records(last_status), "audit": records(audit)}


def report_for_run(reader: GoldReader, run_id: str) -> str | None:
    """The report path recorded by a run's successful export_report task (its message holds `report=<path>`)."""
    df = reader.query("""
        select message from gold.fact_pipeline_runs
        where run_id = %(run_id)s and task_id = 'export_report' and status = 'success'
        order by started_at desc limit 1""", {"run_id": run_id})
    if df.empty or "report=" not in str(df["message"].iat[0]):
        return None
    return str(df["message"].iat[0]).split("report=", 1)[1].strip()

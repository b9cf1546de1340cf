"""What the HTML report shows, read from gold in one go (small frames: one as-of date plus recent history)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from etl.report import cockpit
from etl.report.completeness import Completeness
from etl.report.gold import GoldReader

HISTORY_DAYS = 365          # value/PnL/drawdown charts
BACKTEST_DAYS = 250         # VaR vs realised PnL (the Basel window)
RECENT_RUNS = 10            # pipeline health: this many latest runs

QUERIES: dict[str, tuple[str, str]] = {
    # name: (gold table, SQL)
    "portfolios": ("dim_portfolio", "select * from gold.dim_portfolio order by portfolio_id"),
    "valuation": ("fact_portfolio_valuation", f"""
        select * from gold.fact_portfolio_valuation
        where as_of_date <= %(as_of)s and as_of_date > %(as_of)s::date - {HISTORY_DAYS}
        order by portfolio_id, as_of_date"""),
    "pnl": ("fact_pnl_daily", f"""
        select * from gold.fact_pnl_daily
        where as_of_date <= %(as_of)s and as_of_date > %(as_of)s::date - {HISTORY_DAYS}
        order by portfolio_id, as_of_date"""),
    "risk": ("fact_risk_metrics", """
        select * from gold.fact_risk_metrics where as_of_date = %(as_of)s order by portfolio_id"""),
    "backtest": ("fact_var_backtest", f"""
        select * from gold.fact_var_backtest
        where as_of_date <= %(as_of)s and as_of_date > %(as_of)s::date - {BACKTEST_DAYS}
        order by portfolio_id, method, confidence, as_of_date"""),
    "model_comparison": ("fact_var_model_comparison", """
        select * from gold.fact_var_model_comparison where as_of_date = %(as_of)s
        order by portfolio_id, method, confidence"""),
    "positions": ("fact_positions", """
        select * from gold.fact_positions where as_of_date = %(as_of)s order by portfolio_id, product_id"""),
    "asset_risk": ("fact_asset_risk", """
        select * from gold.fact_asset_risk where as_of_date = %(as_of)s order by product_id"""),
    "correlations": ("fact_correlations", """
        select * from gold.fact_correlations where as_of_date = %(as_of)s order by product_id_a, product_id_b"""),
    "factor_exposures": ("fact_factor_exposures", """
        select distinct on (product_id, factor_name) *
        from gold.fact_factor_exposures
        where bucket_start < %(as_of)s::date + 1 and bucket_start >= %(as_of)s::date - 7
        order by product_id, factor_name, bucket_start desc"""),
    "anomalies": ("fact_anomalies", """
        select * from gold.fact_anomalies
        where bucket_start >= %(as_of)s::date and bucket_start < %(as_of)s::date + 1
        order by bucket_start, product_id"""),
    "price_quality": ("fact_price_quality", """
        select * from gold.fact_price_quality where flag_date = %(as_of)s
        order by bucket_start, product_id, granularity"""),
    "breaches": ("fact_limit_breaches", """
        select * from gold.fact_limit_breaches where as_of_date = %(as_of)s order by portfolio_id, limit_type"""),
    # the latest runs, plus the latest of each DAG: intraday runs every 5 minutes must not push out the end of day's
    "runs": ("fact_pipeline_runs", f"""
        with by_run as (
            select dag_id, run_id, max(started_at) as last_at from gold.fact_pipeline_runs group by dag_id, run_id
        ),
        recent as (
            (select run_id from by_run order by last_at desc limit {RECENT_RUNS})
            union
            (select distinct on (dag_id) run_id from by_run order by dag_id, last_at desc)
        )
        select r.* from gold.fact_pipeline_runs as r
        inner join recent using (run_id)
        order by r.started_at"""),
}


@dataclass
class ReportData:
    as_of: date
    frames: dict[str, pd.DataFrame | None]
    notes: list[str] = field(default_factory=list)
    # the first screen, computed as the cockpit computes it (etl.report.cockpit): status ('complete' |
    # 'incomplete'), missing, breaches (worst utilisation first, with since/scope/unit), firm_risk
    first_screen: dict = field(default_factory=dict)
    # what the report could not show: SQL reports that failed (run_report), sections that could not be drawn
    # (html.pages). The day's report is not complete over them, as over a missing input.
    failures: list[str] = field(default_factory=list)

    def get(self, name: str) -> pd.DataFrame | None:
        """The frame, or None when its gold table is missing."""
        return self.frames.get(name)


def load_report_data(reader: GoldReader, as_of: date, status: Completeness) -> ReportData:
    """`status`: the report's completeness check of the day, which the first screen's status line repeats."""
    frames = {name: reader.frame(table, sql, {"as_of": as_of}) for name, (table, sql) in QUERIES.items()}
    screen = first_screen(reader, as_of, status)
    return ReportData(as_of=as_of, frames=frames, notes=[*reader.notes, *screen.get("notes", [])],
                      first_screen=screen)


def first_screen(reader: GoldReader, as_of: date, check: Completeness) -> dict:
    """Breaches and firm VaR of the day from the cockpit's queries (so report and cockpit agree), the status from
    the report's own `check` (so the status line never says complete under the INCOMPLETE banner);
    `{"error": ...}` when the gold tables they need are missing (the report then says so)."""
    import psycopg2

    status, missing = ("complete" if check.complete else "incomplete"), list(check.problems)
    try:
        found, notes = cockpit.breaches(reader, as_of)
        if "fact_limit_breaches" not in cockpit.tables(reader):  # unknown, not zero (`check` says so already)
            found = None
        return {"status": status, "missing": missing, "breaches": found, "notes": notes,
                "firm_risk": cockpit.firm_risk(reader, as_of)}
    except psycopg2.Error as exc:
        first = str(exc).strip().splitlines()[0]
        return {"status": "incomplete", "missing": [first], "breaches": None, "notes": [],
                "firm_risk": {"available": False, "note": cockpit.FIRM_NOT_COMPUTED}, "error": first}

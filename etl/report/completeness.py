"""Is the as-of day complete and fresh in gold? `report` and alerts ask before they say anything is fine.

Checks, for the as-of day D (each failure is one line naming the table or file and what to run):
1. gold.dim_portfolio has current portfolios (is_current: a retired book is not required), plus those the
   committed risk run valued;
2. gold.fact_portfolio_valuation, fact_pnl_daily and fact_risk_metrics have a row for D for every portfolio;
3. gold.fact_limit_breaches can be read (no table = breaches unknown, never "0 breaches");
4. fresh: when the data store holds the risk commit for D (its run record in outputs/_runs), gold's
   fact_risk_metrics rows for D carry that commit's run id (else a newer risk run is not loaded/built yet).
5. priced: every holding of D in gold.fact_positions is valued at a close of D; one whose product, or the
   <CCY>-USD pair converting it, has no daily bar on D (is_stale) fails it, naming the product, its last bar and the portfolios holding it, unless the
   instrument master declares the product delisted (is_delisted): then it is a notice (valued at its last close,
   flagged stale on every page), not a failure. Likewise a product held at the close of D-1 by a portfolio that
   sold it on D (D's PnL revalues it at D's close, though no position row of D shows it).
6. no close of a product held on D or at the close of D-1 (in D's PnL), or of a <CCY>-USD pair converting such a
   holding, in the risk history of D rests on a print the market-data quality gate excluded (`suspect_prices`, docs/data_quality.md).
7. (a notice, not a failure) a portfolio whose VaR window holds days on which a held price is carried forward
   (risk_metrics.carried_days > 0: a halt, zero returns) is named with the products and days on every page and in
   the cockpit; past RISK_MAX_CARRIED_DAYS the risk run has made its VaR/ES NULL (an uncomputable var limit).
   So is a lookback cut short by a product whose first daily close starts the history (risk_metrics.lookback_limited_by).
An incomplete day makes `report` exit 3 (IncompleteInputError) after writing its HTML with a red INCOMPLETE banner.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta

from etl import commits
from etl.errors import PipelineError
from etl.report.gold import GoldReader
from etl.settings import Settings
from etl.storage import get_store

log = logging.getLogger(__name__)

PER_PORTFOLIO = ("fact_portfolio_valuation", "fact_pnl_daily", "fact_risk_metrics")


@dataclass
class Completeness:
    as_of: date
    problems: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)   # true but worth a flag (delisted holdings): not a failure

    @property
    def complete(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.complete:
            return f"inputs for {self.as_of} complete"
        return f"inputs for {self.as_of} INCOMPLETE: " + "; ".join(self.problems)


def _ids(reader: GoldReader, table: str, sql: str, as_of: date) -> set[str] | None:
    df = reader.frame(table, sql, {"as_of": as_of})
    return None if df is None else {str(v) for v in df.iloc[:, 0].dropna()}


def check(reader: GoldReader, as_of: date, settings: Settings) -> Completeness:
    """Every input `report` and alerts need for `as_of`, present and fresh (see the module docstring)."""
    out = Completeness(as_of)
    manifest, out.problems = committed_run(as_of, settings)
    # the books of today's portfolios.csv (a retired book stays in dim_portfolio for its history, is_current false)
    portfolios = _ids(reader, "dim_portfolio", "select portfolio_id from gold.dim_portfolio where is_current", as_of)
    if portfolios is None:
        out.problems.append("gold.dim_portfolio cannot be read: run `python -m etl load`")
        portfolios = set()
    portfolios |= set((manifest or {}).get("portfolios", []))
    if not portfolios:
        out.problems.append("gold.dim_portfolio has no portfolios: run `python -m etl load`")
    for table in PER_PORTFOLIO:
        have = _ids(reader, table, f"select distinct portfolio_id from gold.{table} where as_of_date = %(as_of)s",
                    as_of)
        if have is None:
            out.problems.append(f"gold.{table} cannot be read")
        elif missing := sorted(portfolios - have):
            out.problems.append(f"gold.{table} has no row for {as_of} for portfolio(s) {', '.join(missing)}: run "
                                f"`python -m etl risk --as-of {as_of}` then `python -m etl load`")
    if _ids(reader, "fact_limit_breaches", "select portfolio_id from gold.fact_limit_breaches limit 1", as_of) is None:
        out.problems.append("gold.fact_limit_breaches cannot be read: limit breaches are unknown")
    problems, notices = beyond_rows(reader, as_of, settings, manifest)
    out.problems += problems
    out.notices += notices
    if out.problems:
        log.error("%s", out)
    if out.notices:
        log.warning("inputs for %s: %s", as_of, "; ".join(out.notices))
    return out


def committed_run(as_of: date, settings: Settings) -> tuple[dict | None, list[str]]:
    """(the manifest of the risk run committed for `as_of` or None, [the problem when it cannot be read])."""
    try:
        return commits.read_manifest(get_store(settings), commits.risk_manifest(as_of)), []
    except (PipelineError, OSError) as exc:
        return None, [str(exc)]


def beyond_rows(reader: GoldReader, as_of: date, settings: Settings, manifest: dict | None
                ) -> tuple[list[str], list[str]]:
    """(problems, notices) of checks 4-6 (fresh, priced, no suspect print): what a day can lack although every
    portfolio has its rows. `manifest`: the committed risk run of `as_of` (committed_run). The cockpit's status
    asks these too, so report, alerts and cockpit never disagree on a day."""
    problems, notices = stale_holdings(reader, as_of)
    carried_problems, carried = carried_closes(reader, as_of)
    problems, notices = problems + carried_problems, notices + carried
    if manifest is not None:
        runs = _ids(reader, "fact_risk_metrics", "select distinct risk_run_id from gold.fact_risk_metrics "
                    "where as_of_date = %(as_of)s", as_of)
        if runs is not None and runs and runs != {manifest["run_id"]}:
            problems.append(f"gold.fact_risk_metrics for {as_of} is stale: it holds risk run(s) "
                            f"{', '.join(sorted(runs))} but run {manifest['run_id']} is committed "
                            f"({commits.RUNS}, {commits.risk_manifest(as_of)}): run `python -m etl load`")
        elif runs is None:
            problems.append("gold.fact_risk_metrics has no risk_run_id column: run `python -m etl load`")
    return problems + suspect_prices(reader, as_of, settings), notices


STALE_SQL = """
    select product_id, max(price_date) as last_bar, bool_and(is_delisted) as is_delisted,
           string_agg(distinct portfolio_id, ', ' order by portfolio_id) as portfolios
    from gold.fact_positions where as_of_date = %(as_of)s and is_stale
    group by product_id order by product_id"""


def stale_holdings(reader: GoldReader, as_of: date) -> tuple[list[str], list[str]]:
    """(problems, notices) of the holdings of `as_of` valued at a close from an earlier day: a listed product
    without a bar on the day is a problem (the day is incomplete); a delisted one is a notice."""
    df = reader.frame("fact_positions", STALE_SQL, {"as_of": as_of})
    if df is None:
        return [f"gold.fact_positions (with price_date, is_stale) cannot be read: whether every holding has a "
                f"close on {as_of} is unknown: run `python -m etl load`"], []
    problems, notices = [], []
    for r in df.itertuples(index=False):
        if r.is_delisted:
            notices.append(f"{r.product_id} is delisted: valued at its last close, of {r.last_bar} (stale), in "
                           f"portfolio(s) {r.portfolios}")
        else:
            # price_date is the oldest bar the value rests on: the product's own or a <CCY>-USD rate's
            problems.append(f"{r.product_id} has no daily bar on {as_of}, or the <CCY>-USD pair converting it has "
                            f"none (last bar {r.last_bar}), held by portfolio(s) {r.portfolios}: ingest the missing "
                            f"daily candles (`python -m etl ingest --products {r.product_id} --granularity 86400`, or "
                            f"the pair's, then `silver`, `risk --as-of {as_of}`, `load`), or if it was delisted set "
                            "delisted_on in instruments.csv (a delisting excuses a holding only when its last bar is of "
                            "its delisted_on day or the day before, and the <CCY>-USD pairs converting it have a bar on "
                            "the day)")
    return problems + stale_previous_holdings(reader, as_of), notices


CARRIED_SQL = """
    select r.portfolio_id, r.carried_days, r.lookback_days,
           (select string_agg(p.product_id || ' (' || p.carried_days || ' days)', ', ' order by p.product_id)
            from gold.fact_positions as p
            where p.portfolio_id = r.portfolio_id and p.as_of_date = r.as_of_date and p.carried_days > 0) as products
    from gold.fact_risk_metrics as r
    where r.as_of_date = %(as_of)s and r.carried_days > 0
    order by r.portfolio_id"""


def carried_closes(reader: GoldReader, as_of: date) -> tuple[list[str], list[str]]:
    """(problems, notices): one notice per portfolio whose VaR window holds days on which a held price is a close
    carried forward (no daily bar: a halt, or a stuck close repeated past RISK_MAX_UNCHANGED_CLOSES: zero returns;
    risk_metrics.carried_days), naming the products and days.
    Not a failure (a genuine halt has no fix); past RISK_MAX_CARRIED_DAYS the risk run made the VaR NULL."""
    df = reader.frame("fact_risk_metrics", CARRIED_SQL, {"as_of": as_of})
    if df is None:
        return [f"gold.fact_risk_metrics or gold.fact_positions (with carried_days) cannot be read: whether the VaR "
                f"of {as_of} rests on carried-forward closes is unknown: run `python -m etl load`"], []
    notices = [f"VaR of {r.portfolio_id} rests on closes carried forward (no daily bar, or a stuck close) on "
               f"{r.carried_days} of the "
               f"{r.lookback_days} days of its window: {r.products}; above RISK_MAX_CARRIED_DAYS its VaR/ES are NULL"
               for r in df.itertuples(index=False)]
    short = reader.frame("fact_risk_metrics", SHORT_SQL, {"as_of": as_of})
    if short is None:
        return [f"gold.fact_risk_metrics (with lookback_limited_by) cannot be read: whether the VaR of {as_of} rests "
                f"on the configured lookback is unknown: run `python -m etl load`"], notices
    return [], notices + [f"VaR of every portfolio rests on {r.lookback_days} daily returns, fewer than "
                          f"RISK_VAR_LOOKBACK_DAYS: the price history starts at {r.lookback_limited_by}"
                          for r in short.itertuples(index=False)]


# a product listed recently starts the price history of the run (etl.risk.engine.late_starters)
SHORT_SQL = """
    select distinct lookback_days, lookback_limited_by from gold.fact_risk_metrics
    where as_of_date = %(as_of)s and lookback_limited_by is not null order by lookback_days"""


# The products (and <CCY>-USD pairs converting them) held at the previous close by a portfolio that no longer holds
# them on D: D's PnL revalues them at D's close (valuation.daily_pnl) although no position row of D shows it.
PREVIOUS_SQL = """
with prev as (
    select p.portfolio_id, p.product_id, s.quote_currency,
           coalesce(p.base_currency, d.base_currency) as base_currency  -- the row's (its run's), not today's
    from gold.fact_positions as p
    left join gold.dim_symbol as s on s.product_id = p.product_id
    left join gold.dim_portfolio as d on d.portfolio_id = p.portfolio_id
    where p.as_of_date = %(as_of)s::date - 1
      and not exists (select 1 from gold.fact_positions as n where n.as_of_date = %(as_of)s
                      and n.portfolio_id = p.portfolio_id and n.product_id = p.product_id)
),
needs as (
    select portfolio_id, product_id, product_id as held from prev
    union select portfolio_id, quote_currency || '-USD', product_id from prev where quote_currency <> 'USD'
    union select portfolio_id, base_currency || '-USD', product_id from prev where base_currency <> 'USD'
)
select n.held as product_id, min(b.last_bar) as last_bar,
       string_agg(distinct n.portfolio_id, ', ' order by n.portfolio_id) as portfolios
from needs as n
left join gold.dim_symbol as s on s.product_id = n.held
left join lateral (select max(price_date) as last_bar from gold.fact_price_daily as f
                   where f.product_id = n.product_id and f.price_date <= %(as_of)s) as b on true
where (s.delisted_on is null or s.delisted_on > %(as_of)s)
  and not exists (select 1 from gold.fact_price_daily as f
                  where f.product_id = n.product_id and f.price_date = %(as_of)s)
group by n.held order by n.held"""


def stale_previous_holdings(reader: GoldReader, as_of: date) -> list[str]:
    """One problem per product held at the close of the day before `as_of` (gold.fact_positions of that day) by a
    portfolio that sold it on `as_of`, when it, or a <CCY>-USD pair converting it, has no daily bar on `as_of`
    (and it is not delisted by then): that PnL of `as_of` revalues it at an earlier close."""
    df = reader.frame("fact_positions", PREVIOUS_SQL, {"as_of": as_of})
    if df is None:
        return [f"gold.fact_positions, gold.dim_symbol (with delisted_on) or gold.fact_price_daily cannot be read: "
                f"whether the PnL of {as_of} rests on closes of {as_of} is unknown: run `python -m etl load`"]
    previous = as_of - timedelta(days=1)
    return [f"{r.product_id}, held at the close of {previous} by portfolio(s) {r.portfolios}, has no daily bar on "
            f"{as_of}, or the <CCY>-USD pair converting it has none (last bar {r.last_bar}): their PnL of {as_of} "
            f"revalues it at an earlier close; ingest the missing daily candles (`python -m etl ingest --products "
            f"{r.product_id} --granularity 86400`, or the pair's, then `silver`, `risk --as-of {as_of}`, `load`), "
            "or if it was delisted set delisted_on in instruments.csv"
            for r in df.itertuples(index=False)]


# An excluded print of a product held on D or at the close of D-1 (its PnL of D), or of a <CCY>-USD pair converting
# a holding (its quote currency, or its portfolio's base currency), that a close of the risk history (D and the days
# before it that risk reads) rests on: the exclusion left the product without a daily bar that day, the print was
# the day's last candle (the close), or it is the latest print, unconfirmed.
_SUSPECT_SQL = """
with held as (
    select p.product_id, s.quote_currency,
           coalesce(p.base_currency, d.base_currency) as base_currency  -- the row's (its run's), not today's
    from gold.fact_positions as p
    left join gold.dim_symbol as s on s.product_id = p.product_id
    left join gold.dim_portfolio as d on d.portfolio_id = p.portfolio_id
    where p.as_of_date = %(as_of)s
       or p.as_of_date = %(as_of)s::date - 1  -- held at the previous close: in the day's PnL
),
priced as (
    select product_id from held
    union select quote_currency || '-USD' from held where quote_currency <> 'USD'
    union select base_currency || '-USD' from held where base_currency <> 'USD'
)
select q.product_id, q.granularity, q.bucket_start, q.flag_date, q.rule, q.evidence
from gold.fact_price_quality as q
where q.flag_date <= %(as_of)s
  and q.flag_date > %(as_of)s::date - %(days)s
  and q.decision = 'excluded'
  and q.product_id in (select product_id from priced)
  and (
      q.rule = 'jump_unconfirmed'
      or not exists (select 1 from gold.fact_price_daily as d
                     where d.product_id = q.product_id and d.price_date = q.flag_date)
      or (q.granularity < 86400
          and q.bucket_start + make_interval(secs => q.granularity::int)
              >= (q.flag_date + 1)::timestamp at time zone 'UTC')
  )
order by q.product_id, q.bucket_start, q.granularity
"""


def suspect_prices(reader: GoldReader, as_of: date, settings: Settings) -> list[str]:
    """One problem per excluded print (gold.fact_price_quality) that a held product's price in the risk history of
    `as_of` rests on, naming product, day, rule and evidence, and the ways out."""
    df = reader.frame("fact_price_quality", _SUSPECT_SQL, {"as_of": as_of, "days": settings.daily_history_days})
    if df is None:
        return ["gold.fact_price_quality cannot be read: whether prices are suspect is unknown; run `python -m etl "
                "load`"]
    # a granularity_mismatch is against finer candles bronze has (the intraday ones): when they stop before the
    # day's end, the day has no bar until they are fetched again over the whole day (docs/silver.md)
    return [f"price of {r.product_id} on {r.flag_date} rests on a suspect print: rule {r.rule} ({r.granularity}s "
            f"candle at {r.bucket_start:%Y-%m-%d %H:%M} UTC: {r.evidence}); it was excluded. If the print is "
            f"genuine, accept it in price_overrides.csv (check with `python -m etl reference validate`); if not, "
            f"fetch the day's finer candles (`python -m etl ingest --products {r.product_id} --granularity "
            f"{settings.granularity if r.rule == 'granularity_mismatch' else 300} --start {r.flag_date} "
            f"--end {r.flag_date + timedelta(days=1)}`) or wait for the next candle; then run "
            f"`python -m etl silver`, `python -m etl risk --as-of {as_of}` and `python -m etl load`"
            for r in df.itertuples(index=False)]


def banner(result: Completeness) -> str:
    """The red INCOMPLETE banner put at the top of the HTML report, then the amber STALE one for the notices
    ('' when complete without notices)."""
    out = ""
    if not result.complete:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in result.problems)
        out += ('<div id="incomplete" role="alert" style="background:#b00020;color:#fff;padding:12px 20px;'
                'font:600 15px/1.4 system-ui,sans-serif">'
                f'<strong style="font-size:20px">INCOMPLETE</strong> &mdash; inputs for {result.as_of} are missing '
                f'or stale, or the report could not show them; no figure below may be read as complete (a missing '
                f'row is not a zero):<ul>{items}</ul>'
                '</div>')
    if result.notices:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in result.notices)
        out += ('<div id="stale" role="status" style="background:#ffb300;color:#000;padding:12px 20px;'
                'font:600 15px/1.4 system-ui,sans-serif"><strong style="font-size:20px">STALE</strong> &mdash; '
                f'some holdings of {result.as_of} are valued at an earlier close:<ul>{items}</ul></div>')
    return out


def with_banner(page: str, result: Completeness) -> str:
    """`page` with the banners right after <body> (the HTML renderer itself is unchanged)."""
    text = banner(result)
    return page.replace("<body>", "<body>\n" + text, 1) if text else page

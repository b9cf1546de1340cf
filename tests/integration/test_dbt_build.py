"""load_warehouse() + dbt build on a small realistic data set in the real Postgres: gold values, dbt tests catching bad
raw rows, the bars model, the reporting role, every SQL report and the docs site."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import cli, db
from etl.report.sql_reports import bind
from etl.settings import PROJECT_ROOT, get_settings
from etl.storage import get_store
from etl.warehouse import WarehouseError, docs, load_warehouse, reporting_url, run_dbt
from etl.warehouse.schema import GOLD
from tests.support import warehouse_sample as sample
from tests.support.env import pipeline_env
from tests.support.silver_sample import commit_silver, silver_file

pytestmark = pytest.mark.slow

DAYS = 4
FIRST_DAY = date(2026, 1, 1)
SQL_DIR = PROJECT_ROOT / "sql"
REPORTS = sorted(p for d in ("daily_pnl", "risk_exposure", "market", "pipeline_health")
                 for p in (SQL_DIR / d).glob("*.sql"))


@pytest.fixture(scope="module")
def gold(pg_url, tmp_path_factory):
    """The sample data set loaded and built once for the module (dbt build is the slow part)."""
    root = tmp_path_factory.mktemp("warehouse")
    with pipeline_env(pg_url, root / "data", PIPELINE_STATE_DIR=root / "state",
                      PIPELINE_REFERENCE_DIR=sample.write_reference(root / "reference")):
        with db.connect(url=pg_url) as conn, conn.cursor() as cur:
            cur.execute("drop schema if exists raw, staging, gold cascade")
        counts = sample.write_sample(get_settings(), first_day=FIRST_DAY, days=DAYS)
        summary = load_warehouse()
        yield {"counts": counts, "summary": summary, "url": pg_url}


def query(sql: str, params=None, url: str | None = None) -> list[tuple]:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def build_fails(changes: list[str], select: str) -> str:
    """Apply `changes` to raw (each statement changes one row), `dbt build --select` them; the build's error."""
    with db.connect() as conn, conn.cursor() as cur:
        for sql in changes:
            cur.execute(sql)
            assert cur.rowcount == 1
    with pytest.raises(WarehouseError) as err:
        run_dbt("build", select=select)
    return str(err.value)


def test_gold_star_schema_holds_the_loaded_data(gold):
    assert gold["summary"].dbt == "build ok"
    expected = {
        "fact_price_bars": 3 * 288 * DAYS, "fact_price_daily": 3 * DAYS, "fact_positions": 4 * DAYS,
        "fact_portfolio_valuation": 2 * DAYS, "fact_pnl_daily": 2 * DAYS, "fact_risk_metrics": 2 * DAYS,
        "fact_var_backtest": gold["counts"]["var_backtest"], "fact_factor_returns": gold["counts"]["factor_returns"],
        "fact_factor_exposures": 2 * 3 * DAYS, "fact_anomalies": 6, "fact_limit_breaches": gold["counts"]["limit_breaches"],
        "fact_pipeline_runs": 4, "fact_drawdowns": (2 + 3) * (DAYS - 1), "fact_anomalies_daily": 3,
        "dim_date": DAYS, "dim_portfolio": 2,
        "fact_intraday_risk": 2 * sample.INTRADAY_BUCKETS,
        "fact_intraday_limit_breaches": gold["counts"]["intraday_limit_breaches"],
    }
    built = {r[0] for r in query("select table_name from information_schema.tables where table_schema = 'gold'")}
    assert built == set(GOLD)  # every declared mart is built, and nothing else
    assert {t: query(f"select count(*) from gold.{t}")[0][0] for t in expected} == expected
    # the daily bar is the day's 5-minute bars aggregated; valuation = quantity x close
    (o, h, lo, c, v), = query("select open, high, low, close, volume from gold.fact_price_daily "
                             "where product_id = 'BTC-USD' and price_date = '2026-01-02'")
    (bo, bh, bl, bc, bv), = query(
        "select (array_agg(open order by bucket_start))[1], max(high), min(low), "
        "(array_agg(close order by bucket_start desc))[1], sum(volume) from gold.fact_price_bars "
        "where product_id = 'BTC-USD' and bar_date = '2026-01-02'")
    assert (o, h, lo, c) == (bo, bh, bl, bc) and v == pytest.approx(bv)
    (mv,), = query("select market_value from gold.fact_portfolio_valuation "
                   "where portfolio_id = 'P001' and as_of_date = '2026-01-02'")
    assert mv == pytest.approx(1.5 * c)
    daily_return = query("select daily_return from gold.fact_price_daily where product_id = 'BTC-USD' "
                         "order by price_date")
    assert daily_return[0] == (None,) and daily_return[2][0] == pytest.approx(
        query("select close from gold.fact_price_daily where product_id = 'BTC-USD' and price_date = '2026-01-03'"
              )[0][0] / c - 1)
    assert query("select count(*) filter (where is_failure) from gold.fact_pipeline_runs") == [(1,)]
    assert query("select portfolio_id, n_positions from gold.dim_portfolio order by 1") == [("P001", 1), ("P002", 3)]


def test_drawdowns_follow_the_closes_and_daily_anomalies_keep_the_latest_run(gold):
    closes = query("select price_date, close from gold.fact_price_daily where product_id = 'BTC-USD' "
                   "order by price_date")
    days = [d for d, _ in closes]
    for i in range(1, DAYS):  # as of each day: wealth from the first day's close, worst fall from a running peak
        wealth = [c / closes[0][1] for _, c in closes[:i + 1]]
        peaks = [max(wealth[:j + 1]) for j in range(len(wealth))]
        dd = [w / p - 1 for w, p in zip(wealth, peaks, strict=True)]
        trough = dd.index(min(dd))
        peak = wealth.index(peaks[trough])
        back = [j for j in range(trough + 1, len(wealth)) if wealth[j] >= peaks[trough]]
        if min(dd) < 0:
            recovery = days[back[0]] if back else None
            expected = (pytest.approx(min(dd)), days[peak], days[trough], recovery, recovery is not None,
                        (days[trough] - days[peak]).days)
        else:
            expected = (0.0, None, None, None, None, None)
        got = query("select entity_id, product_id, portfolio_id, max_drawdown, peak_date, trough_date, recovery_date, "
                    "is_recovered, drawdown_days from gold.fact_drawdowns where as_of_date = %s "
                    "and entity_id in ('BTC-USD', 'P001') order by entity_type", (days[i],))
        assert [r[3:] for r in got] == [expected, expected], days[i]  # P001 holds only BTC: the same drawdown
        assert [r[:3] for r in got] == [("BTC-USD", "BTC-USD", None), ("P001", None, "P001")]

    # each product's largest daily move, flagged by every later run: one row per product, the latest run's
    anomalies = query("select product_id, price_date, return_value, robust_z, direction, scale_method, "
                      "flagged_as_of_date from gold.fact_anomalies_daily order by product_id")
    for product, price_date, value, z, direction, how, flagged_as_of in anomalies:
        moves = query("select price_date, daily_return from gold.fact_price_daily where product_id = %s "
                      "and daily_return is not null order by abs(daily_return) desc limit 1", (product,))
        assert (price_date, value) == (moves[0][0], pytest.approx(moves[0][1])), product
        assert direction == ("up" if value > 0 else "down") and flagged_as_of == date(2026, 1, DAYS)
        assert (abs(z), how) == ((float("inf"), "none") if product == "SOL-USD" else (4.2, "mad"))
    assert [a[0] for a in anomalies] == ["BTC-USD", "ETH-USD", "SOL-USD"]


def test_the_drawdown_report_ranks_portfolios_worst_first(gold):
    sql = (SQL_DIR / "risk_exposure" / "drawdowns.sql").read_text()
    rows = query(*bind(sql, date(2026, 1, 3)), url=reporting_url())
    expected = query("select portfolio_id, max_drawdown from gold.fact_drawdowns where entity_type = 'portfolio' "
                     "and as_of_date = '2026-01-03' order by max_drawdown, portfolio_id")
    # the report rounds fractions to 4 decimals (sql/README.md)
    assert [(r[1], float(r[4])) for r in rows] == [(p, round(mdd, 4)) for p, mdd in expected] and len(rows) == 2
    # the limit is checked on the drawdown from the running peak (the sample's -0.05), not on max_drawdown
    assert [(float(r[6]), float(r[7])) for r in rows] == [(0.1, -0.05)] * 2  # drawdown_limit 0.5
    assert query(*bind(sql, None), url=reporting_url())[0][0] == date(2026, 1, DAYS)


def test_the_var_report_ranks_by_the_engines_usd_var_carried_to_gold(gold):
    sql = (SQL_DIR / "risk_exposure" / "var_es_by_portfolio.sql").read_text()
    rows = query(*bind(sql, date(2026, 1, 3)), url=reporting_url())
    expected = query("select portfolio_id, var_99_hist_usd from gold.fact_risk_metrics "
                     "where as_of_date = '2026-01-03' order by var_99_hist_usd desc, portfolio_id")
    assert len(expected) == 2 and all(usd is not None for _, usd in expected)   # raw -> gold keeps the column
    # the report reads the engine's figure (cents), largest first, as its last column
    assert [(r[1], float(r[-1])) for r in rows] == [(p, round(usd, 2)) for p, usd in expected]
    # the utilisation is of the column the limit the run checked names, whichever registered method (here Monte
    # Carlo for one book)
    pid = rows[0][1]
    day = "as_of_date = '2026-01-03' and portfolio_id = %s"
    (limit, named), = query(f"select checked_var_limit, checked_var_limit_metric from gold.fact_risk_metrics "
                            f"where {day}", (pid,))

    def name_metric(metric: str) -> None:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(f"update gold.fact_risk_metrics set checked_var_limit_metric = %s where {day}", (metric, pid))
            assert cur.rowcount == 1

    name_metric("var_99_mc")
    try:
        util = {r[1]: r[-2] for r in query(*bind(sql, date(2026, 1, 3)), url=reporting_url())}
        figures = dict(query("select portfolio_id, var_99_mc from gold.fact_risk_metrics "
                             "where as_of_date = '2026-01-03'"))
    finally:
        name_metric(named)
    assert figures[pid] is not None and float(util[pid]) == round(figures[pid] / limit, 4)


def test_a_rerun_loads_nothing_and_the_bars_pick_up_a_rewritten_partition(gold):
    assert load_warehouse(run_dbt=False).total_rows == 0
    store = get_store()
    table = pq.read_table(silver_file(Path(store.root), "silver/bars_5m/product_id=ETH-USD/date=2026-01-03/part-0.parquet"))
    bumped = {c: pa.array([3333.0] * table.num_rows) for c in ("open", "high", "low", "close", "vwap")}
    for name, values in bumped.items():
        table = table.set_column(table.column_names.index(name), name, values)
    commit_silver(store, "silver/bars_5m", [({"product_id": "ETH-USD", "date": "2026-01-03"}, table)])  # silver rebuilt it
    assert load_warehouse(run_dbt=False).rows["bars_5m"] == 288
    run_dbt("build", select="fact_price_bars")
    assert query("select count(*) from gold.fact_price_bars")[0][0] == 3 * 288 * DAYS
    assert query("select count(*), min(close), max(close) from gold.fact_price_bars "
                 "where product_id = 'ETH-USD' and bar_date = '2026-01-03'") == [(288, 3333.0, 3333.0)]
    # every gold model is rebuilt from raw: a bar gone from raw (the quality gate removed it later) is gone from gold
    key = "product_id = 'ETH-USD' and bucket_start = '2026-01-03 00:00+00'"
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"delete from raw.bars_5m where {key} returning *")
        (row,) = cur.fetchall()
    try:
        run_dbt("build", select="fact_price_bars")
        assert query(f"select count(*) from gold.fact_price_bars where {key}") == [(0,)]
    finally:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(f"insert into raw.bars_5m values ({', '.join(['%s'] * len(row))})", row)
        run_dbt("build", select="fact_price_bars")


def test_a_negative_price_a_zero_quantity_or_a_bad_drawdown_in_raw_fails_the_named_tests(gold):
    drawdown_key = "entity_type = 'portfolio' and entity_id = 'P002' and as_of_date = '2026-01-03'"
    (mdd, peak), = query(f"select max_drawdown, peak_date from raw.drawdowns where {drawdown_key}")
    intraday_key = "portfolio_id = 'P002' and bucket_start = '2026-01-04 23:55+00'"
    (var_99, gross), = query(f"select var_99, gross_exposure from raw.intraday_risk where {intraday_key}")
    assert peak is not None
    restore = [
        "update raw.bars_1d set close = -close where product_id = 'BTC-USD' and price_date = '2026-01-02'",
        "update raw.positions_valued set quantity = 0 where portfolio_id = 'P002' and product_id = 'SOL-USD' "
        "and as_of_date = '2026-01-03' returning avg_cost",
        # a positive drawdown whose peak comes after its trough
        f"update raw.drawdowns set max_drawdown = 0.25, peak_date = trough_date + 1 where {drawdown_key}",
        # an intraday row whose VaR 99 is below its VaR 95 and whose gross is not long + short (gold is
        # rebuilt from raw: a changed raw row is picked up)
        f"update raw.intraday_risk set var_99 = var_95 / 2, gross_exposure = gross_exposure + 1, loaded_at = now() "
        f"where {intraday_key}",
    ]
    try:
        message = build_fails(restore, "fact_price_daily fact_positions fact_drawdowns fact_intraday_risk")
        assert "at_least_fact_intraday_risk_var_99__var_95" in message
        assert "reconciles_to_sum_fact_intraday_risk_gross_exposure" in message
        assert "test.crypto_warehouse.positive_fact_price_daily_close" in message
        assert "test.crypto_warehouse.non_zero_fact_positions_quantity" in message
        assert "ohlc_consistent_fact_price_daily" in message  # a negative close also breaks low <= close
        assert "in_range_fact_drawdowns_max_drawdown__0___1" in message
        assert "ordered_fact_drawdowns_window_start__peak_date__trough_date__recovery_date" in message
        assert "unique_combination_fact_price_daily" not in message
        assert "unique_combination_fact_drawdowns" not in message
    finally:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute("update raw.bars_1d set close = -close where product_id = 'BTC-USD' "
                        "and price_date = '2026-01-02'")
            cur.execute("update raw.positions_valued set quantity = 100 where portfolio_id = 'P002' "
                        "and product_id = 'SOL-USD' and as_of_date = '2026-01-03'")
            cur.execute(f"update raw.drawdowns set max_drawdown = %s, peak_date = %s where {drawdown_key}",
                        (mdd, peak))
            cur.execute(f"update raw.intraday_risk set var_99 = %s, gross_exposure = %s, loaded_at = now() "
                        f"where {intraday_key}", (var_99, gross))
        run_dbt("build", select="fact_price_daily fact_positions fact_drawdowns fact_intraday_risk")


def test_risk_depth_tables_reconcile_and_a_broken_contribution_fails_the_custom_test(gold):
    counts = {t: query(f"select count(*) from gold.{t}")[0][0] for t in (
        "fact_firm_risk", "fact_risk_contributions", "fact_stress_results", "fact_var_model_comparison")}
    assert counts == {"fact_firm_risk": DAYS, "fact_risk_contributions": 2 * 4 * DAYS,
                      "fact_stress_results": 2 * (2 + 1) * DAYS,
                      "fact_var_model_comparison": gold["counts"]["var_model_comparison"]}
    # the components of a portfolio sum to its VaR (portfolio scope) and of the whole book to the firm's
    rows = query("select c.portfolio_id, c.as_of_date, sum(c.component_var_99_param), min(m.var_99_param) "
                 "from gold.fact_risk_contributions c join gold.fact_risk_metrics m using (portfolio_id, as_of_date) "
                 "where c.scope = 'portfolio' group by 1, 2")
    assert len(rows) == 2 * DAYS and all(abs(a - b) < 1e-6 * b for *_, a, b in rows)
    (div, firm, total), = query("select diversification_benefit, var_99_hist, sum_standalone_var_99_hist "
                                "from gold.fact_firm_risk where as_of_date = '2026-01-03'")
    assert div == pytest.approx(total - firm) and firm > 0
    key = "scope = 'firm' and portfolio_id = 'P002' and product_id = 'ETH-USD' and as_of_date = '2026-01-03'"
    try:
        message = build_fails([f"update raw.risk_contributions set component_var_99_param = component_var_99_param "
                               f"+ 100 where {key}"], "fact_risk_contributions")
        assert "contributions_reconcile_fact_risk_contributions_component_var_99_param" in message
        assert "component_var_95_param" not in message
    finally:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(f"update raw.risk_contributions set component_var_99_param = component_var_99_param - 100 "
                        f"where {key}")
        run_dbt("build", select="fact_risk_contributions")


def test_failed_dbt_build_keeps_previous_gold(gold, capsys):
    """Write-audit-publish: a build whose tests fail (an overflowing position breaks reconciles_to_sum) publishes
    nothing, not even the models built before the failing test; a passing build then swaps in whole, and the
    reporting role still reads the new gold (grants survive the swap)."""
    breaches = "select portfolio_id, as_of_date, limit_type, value, limit_value from gold.fact_limit_breaches order by 1, 2, 3"
    before = query(breaches)
    valuation = query("select sum(market_value) from gold.fact_portfolio_valuation")
    assert before, "the sample has breaches"
    day = "portfolio_id = 'P002' and product_id = 'SOL-USD' and as_of_date = '2026-01-03'"
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(f"update raw.positions_valued set market_value = 'Infinity' where {day}")  # 1e308 * close
        cur.execute("update raw.limit_breaches set limit_value = limit_value * 2")  # would change gold if published
    try:
        with pytest.raises(WarehouseError) as err:
            run_dbt("build")
        assert "reconciles_to_sum_fact_portfolio_valuation" in str(err.value)
        assert "Gold was not published" in str(err.value)
        # the advice publishes through write-audit-publish, never a bare `dbt build` that writes gold directly
        assert "rerun with `python -m etl load --dbt-only`" in str(err.value)
        assert ".venv/bin/dbt" not in str(err.value)
        assert query(breaches) == before and query(breaches, url=reporting_url()) == before
        assert query("select sum(market_value) from gold.fact_portfolio_valuation") == valuation
    finally:
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(f"update raw.positions_valued set market_value = quantity * close where {day}")
            cur.execute("update raw.limit_breaches set limit_value = limit_value / 2")
    oid = query("select 'gold.fact_limit_breaches'::regclass::oid")
    raw_rows = query("select count(*) from raw.bars_5m")
    assert cli.main(["load", "--dbt-only"]) == 0                   # the advised command: a passing build swaps in
    assert "warehouse load: 0 rows from 0 files" in capsys.readouterr().out and \
        query("select count(*) from raw.bars_5m") == raw_rows      # gold only: raw was not loaded
    assert query("select 'gold.fact_limit_breaches'::regclass::oid") != oid
    assert query(breaches, url=reporting_url()) == before           # grants survive the swap
    assert query("select count(*) from pg_namespace where nspname like 'gold\\_\\_%'") == [(0,)]


def test_reporting_role_reads_gold_and_nothing_else(gold):
    url = reporting_url()
    assert query("select count(*) from gold.fact_price_daily", url=url) == [(3 * DAYS,)]
    for sql in ("select * from raw.bars_5m limit 1", "select * from staging.stg_silver__bars_5m limit 1",
                "set transaction read write; delete from gold.fact_price_daily",
                "set transaction read write; insert into raw.bars_1d (product_id, price_date) values ('X', now())"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            query(sql, url=url)


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: str(p.relative_to(SQL_DIR)))
def test_every_sql_report_runs_as_reporting(gold, path: Path):
    sql = path.read_text()
    assert "gold." in sql and "raw." not in sql and "staging." not in sql
    latest = query(*bind(sql, None), url=reporting_url())
    dated = query(*bind(sql, date(2026, 1, 3)), url=reporting_url())
    assert latest and dated  # the sample has rows for every report
    numbers = [v for row in latest + dated for v in row if isinstance(v, Decimal | float)]
    unrounded = [v for v in numbers if round(v, 8) != v]  # a 17-digit float is not a report figure
    assert unrounded == [], path



def test_a_report_value_matches_gold(gold):
    sql = (SQL_DIR / "daily_pnl" / "daily_and_mtd.sql").read_text()
    rows = {r[1]: r for r in query(*bind(sql, date(2026, 1, 3)), url=reporting_url())}
    expected = dict(query("select portfolio_id, round(mtd_pnl::numeric, 2) from gold.fact_pnl_daily "
                          "where as_of_date = '2026-01-03'"))  # the sample's books are in USD: to the cent
    assert {pid: r[5] for pid, r in rows.items()} == expected


def test_docs_site_is_generated(gold):
    path = docs()
    assert path.name == "static_index.html" and path.exists()
    html = path.read_text()
    assert "fact_price_bars" in html and "source.crypto_warehouse.silver.bars_5m" in html

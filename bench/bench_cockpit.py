"""The risk cockpit's page times through a real Airflow API server, and the HTML report's size.

- `cockpit_<page>_<n>p` for page in firm, portfolio, market, pipeline, summary (the JSON): the median time of
  an authenticated GET of the page from the plugin mounted in `airflow api-server` (token validation, the
  gold queries as `reporting`, rendering), on the sample book cloned to n portfolios (22 = the demo book's
  size; 1,000 in full mode). Baseline: the same gold rows fetched with plain psycopg2 (connect as `reporting`,
  run the page's SQL, fetchall), measured in the same run. Target: under 1 s per page (for 1,000 portfolios
  too: "usable" = the same 1 s bound).
- `report_html_<n>p` (full mode): `python -m etl report` for n = 22 and 1,000; ours_s = its wall time,
  size_bytes = report.html. Baseline: the 22-portfolio file; ratio = size growth / portfolio growth (< 1 is
  sub-linear). Target: report.html < 1.5 MB and growth sub-linear.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from bench_warehouse import environment  # one helper for a scoped environment

ROOT = Path(__file__).resolve().parent.parent
AS_OF = date(2026, 1, 31)
PAGES = {"firm": "/risk/", "portfolio": "/risk/portfolio/P0001", "market": "/risk/market",
         "pipeline": "/risk/pipeline", "summary": "/risk/api/summary"}


def _baseline_sql() -> dict[str, list[tuple[str, dict]]]:
    """The SQL each page runs, as plain statements (what a hand-written query of the same data costs)."""
    from etl.report import cockpit as c

    p = {"as_of": AS_OF, "portfolio_id": "P0001"}
    day = (c.PORTFOLIO_DAY_SQL, {**p, "portfolio_id": None})
    breaches = (c.BREACHES_SQL.format(scope=""), p)
    return {
        "summary": [day, breaches],
        "firm": [day, breaches],
        "portfolio": [(c.PORTFOLIO_DAY_SQL, p), ("""select v.as_of_date, v.market_value, d.daily_pnl from gold.fact_portfolio_valuation v
                              left join gold.fact_pnl_daily d using (portfolio_id, as_of_date)
                              where v.portfolio_id = %(portfolio_id)s and v.as_of_date <= %(as_of)s""", p),
                      ("""select * from gold.fact_var_backtest where portfolio_id = %(portfolio_id)s
                          and as_of_date <= %(as_of)s and as_of_date > %(as_of)s::date - 250""", p),
                      ("""select * from gold.fact_positions where portfolio_id = %(portfolio_id)s
                          and as_of_date = %(as_of)s""", p)],
        "market": [("""select product_id, price_date, close from gold.fact_price_daily
                       where price_date <= %(as_of)s and price_date > %(as_of)s::date - 91""", p),
                   ("select * from gold.fact_asset_risk where as_of_date = %(as_of)s", p),
                   ("""select * from gold.fact_anomalies where bucket_start >= %(as_of)s::date
                       and bucket_start < %(as_of)s::date + 1""", p),
                   ("""select * from gold.fact_factor_exposures where bucket_start < %(as_of)s::date + 1
                       and bucket_start >= %(as_of)s::date - 7""", p)],
        "pipeline": [("select * from gold.fact_pipeline_runs order by started_at desc", {})],
    }


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _pages(url: str, reporting: str, n: int, repeats: int) -> dict:
    import psycopg2
    import requests

    from tests.support.cockpit_server import api_server

    out = {}
    state = Path(tempfile.mkdtemp(prefix="bench-cockpit-"))
    with api_server(url, state) as server:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {server.token()}"
        sql = _baseline_sql()
        for page, path in PAGES.items():
            def get(path=path):
                r = session.get(server.url + path, timeout=60)
                r.raise_for_status()

            def plain(page=page):
                with psycopg2.connect(reporting) as conn, conn.cursor() as cur:
                    for stmt, params in sql[page]:
                        cur.execute(stmt, params)
                        cur.fetchall()
                conn.close()

            get()  # warm: the first request imports pandas and the page modules in the server
            ours = _median(get, repeats)
            base = _median(plain, repeats)
            out[f"cockpit_{page}_{n}p"] = {
                "ours_s": round(ours, 4), "baseline": "the page's gold rows by plain psycopg2 (connect as "
                                                      "reporting, execute, fetchall)",
                "baseline_s": round(base, 4), "ratio": round(base / ours, 3),
                "ratio_means": "baseline_s / ours_s (share of the page time that is fetching its rows)",
                "target": "ours_s < 1.0", "meets_target": ours < 1.0, "portfolios": n, "repeats": repeats,
                "input": f"sample book cloned to {n} portfolios, as of {AS_OF}, median of {repeats} requests",
                "command": f"GET {path} from airflow api-server (bearer token)",
                "baseline_command": "psycopg2.connect(reporting URL), cursor.execute(the page's SQL), fetchall()"}
    return out


def _reporting(url: str) -> str:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u._replace(netloc="reporting@" + u.netloc.rsplit("@", 1)[-1]).geturl()


def _report(url: str, n: int) -> tuple[float, int, int]:
    """Wall time of `report` for the book, the size of report.html, and of all its HTML files."""
    from etl.report import run_report

    data = tempfile.mkdtemp(prefix="bench-report-")
    with environment(PIPELINE_DATABASE_URL=url, PIPELINE_DATA_DIR=data):
        t0 = time.perf_counter()
        path = run_report(AS_OF, sql_dir=Path(tempfile.mkdtemp(prefix="no-sql-")))
        wall = time.perf_counter() - t0
    return wall, path.stat().st_size, sum(f.stat().st_size for f in path.parent.glob("*.html"))


def run(quick: bool) -> dict:
    from etl import db
    from etl.settings import get_settings
    from tests.support.report_sample import create_gold, sample_book

    server = db.database_url(get_settings())
    sizes = (22,) if quick else (22, 1000)
    results: dict = {}
    reports: dict[int, tuple[float, int, int]] = {}
    for n in sizes:
        with db.scratch_database(server, f"bench_cockpit_{n}") as url:
            create_gold(url, sample_book(AS_OF, n))
            results |= _pages(url, _reporting(url), n, repeats=3 if quick else 15)
            if not quick:
                reports[n] = _report(url, n)
    if reports:
        base_n, (base_s, base_size, _) = 22, reports[22]
        for n, (wall, size, total) in reports.items():
            growth = (size / base_size) / (n / base_n)
            results[f"report_html_{n}p"] = {
                "ours_s": round(wall, 2), "baseline": "report.html of the 22-portfolio book",
                "baseline_s": round(base_s, 2), "ratio": round(growth, 4),
                "ratio_means": "(size / size at 22) / (portfolios / 22): below 1 = sub-linear growth",
                "target": "size_bytes < 1.5 MB and ratio < 1 (1.0 at 22 by definition)",
                "meets_target": size < 1.5e6 and (n == base_n or growth < 1.0), "size_bytes": size,
                "all_html_bytes": total, "portfolios": n, "input": f"sample book cloned to {n} portfolios, as of {AS_OF}",
                "command": f"python -m etl report --as-of {AS_OF} (in-process: etl.report.run_report)",
                "baseline_command": f"python -m etl report --as-of {AS_OF} on the 22-portfolio book"}
    return results

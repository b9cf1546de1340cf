"""Bringing your own book (issue 32): a book of products the shipped sample does not have, PIPELINE_PRODUCTS
unset, one limit left empty, driven through the CLI stages (reference validate, ingest, silver, risk, load,
report) against the real simulator (`--universe`: SYN...-USD products) and the real Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from etl import db
from etl.settings import PROJECT_ROOT
from tests.support.reference import write_book

pytestmark = pytest.mark.slow

AS_OF = date(2026, 3, 1)
HELD = {"SYN001-USD": 50_000.0, "SYN005-USD": 300.0, "ETH-BTC": 12.0}  # product -> quantity
CONVERSION = "BTC-USD"  # ETH-BTC is quoted in BTC: valuation needs BTC-USD, which the book does not hold


def _write_book(folder: Path) -> Path:
    return write_book(
        folder,
        "SYN001-USD,SYN001,USD,coinbase,crypto_alt,Synthetic 1\n"
        "SYN005-USD,SYN005,USD,coinbase,crypto_alt,Synthetic 5\n"
        "ETH-BTC,ETH,BTC,coinbase,crypto_major,Ether / Bitcoin\n"
        "BTC-USD,BTC,USD,coinbase,crypto_major,Bitcoin / US Dollar\n",
        "portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"  # no drawdown limit: empty
        "ALTS,Synthetic alts and a cross,USD,1e12,0.99,\n",
        "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
        + "".join(f"ALTS,{p},2026-01-01,{q},1\n" for p, q in HELD.items()))


def test_an_own_book_outside_the_default_products_runs_every_stage(make_simulator, pg_url, tmp_path):
    sim = make_simulator(universe=5, rate_limit_rps=1000.0, burst=1000)
    book = _write_book(tmp_path / "book")
    data = tmp_path / "data"
    with db.scratch_database(pg_url, "own_book") as url:
        env = {**os.environ, "PIPELINE_REFERENCE_DIR": str(book), "PIPELINE_PRODUCTS": "",
               "PIPELINE_DATA_DIR": str(data), "PIPELINE_STATE_DIR": str(tmp_path / "state"),
               "PIPELINE_DATABASE_URL": url, "PIPELINE_SOURCE": "simulator", "COINBASE_API_URL": sim.url,
               "PIPELINE_ENV_FILE": str(tmp_path / "none.env")}

        def cli(*args: str) -> subprocess.CompletedProcess:
            proc = subprocess.run([sys.executable, "-m", "etl", *args], capture_output=True, text=True,
                                  cwd=PROJECT_ROOT, env=env)
            assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
            return proc

        assert cli("reference", "validate").stdout.startswith(f"ok: {book}: 4 instruments, 1 exchanges, 1 portfolios")
        cli("ingest", "--granularity", "86400", "--start", "2026-01-01T00:00:00Z", "--end", "2026-03-02T00:00:00Z")
        cli("ingest", "--start", "2026-03-01T22:00:00Z", "--end", "2026-03-02T00:00:00Z")
        candles = {p.name.split("=", 1)[1] for p in (data / "bronze" / "candles").glob("product_id=*")}
        assert candles == set(HELD) | {CONVERSION}  # the book's products and its conversion pair, nothing else
        cli("silver")
        cli("risk", "--as-of", AS_OF.isoformat())
        cli("load")
        report = Path(cli("report", "--as-of", AS_OF.isoformat()).stdout.strip().splitlines()[-1])
        assert report.name == "report.html" and report.parent.name == AS_OF.isoformat()

        def query(sql: str) -> pd.DataFrame:
            with db.connect(url=url) as conn, conn.cursor() as cur:
                cur.execute(sql)
                return pd.DataFrame(cur.fetchall(), columns=[c[0] for c in cur.description])

        limits = query("select var_limit, concentration_limit, drawdown_limit from gold.dim_portfolio")
        assert limits.to_dict("records") == [{"var_limit": 1e12, "concentration_limit": 0.99, "drawdown_limit": None}]
        assert query("select count(*) as n from gold.fact_limit_breaches")["n"].iat[0] == 0
        # the book's value, independently: quantity x close in USD (ETH-BTC converted at BTC-USD's close)
        close = query(f"select product_id, close from gold.fact_price_daily where price_date = '{AS_OF}'") \
            .set_index("product_id")["close"]
        usd = {p: close[p] * (close[CONVERSION] if p == "ETH-BTC" else 1.0) for p in HELD}
        value = query(f"select market_value from gold.fact_portfolio_valuation where as_of_date = '{AS_OF}'")
        assert value["market_value"].iat[0] == pytest.approx(sum(q * usd[p] for p, q in HELD.items()), rel=1e-9)
        risk = query(f"select var_99_hist, lookback_days from gold.fact_risk_metrics where as_of_date = '{AS_OF}'")
        assert len(risk) == 1 and risk["var_99_hist"].iat[0] > 0 and risk["lookback_days"].iat[0] >= 55

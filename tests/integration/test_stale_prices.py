"""A held product whose daily bars stop 7 days before the as-of day, on real Coinbase candles replayed by the
simulator, through the whole chain (`ingest` -> `silver` -> `risk` -> `load` with dbt -> `report`), compared with
the clean replay.

The only long real recording is BTC-USD's 5-minute candles (../shared/data/coinbase/, 2025-07-01 .. 2026-01-22).
The book needs a second product that keeps trading: WBTC-USD (wrapped bitcoin, which tracks BTC) replays the same
candles. Portfolio S holds BTC-USD, M both, W WBTC-USD, E nothing (an empty book: valid, worth 0).

- clean replay: `report` exits 0, the day complete (E included);
- BTC-USD stops 7 days early: `report` exits 3 naming BTC-USD, its last bar and the portfolios S and M;
- the instrument master then delists BTC-USD on its last bar: `report` exits 0, the BTC-USD holdings valued at
  that day's real close and flagged stale in gold and on the report's pages.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from etl import db
from etl.cli import main
from etl.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

REAL = next((p / "shared/data/coinbase" for p in Path(__file__).resolve().parents
             if (p / "shared/data/coinbase").is_dir()), None)
RECORDING = "BTC-USD_300s_2025-07-01_2026-01-22.csv"
AS_OF = date(2026, 1, 21)                  # the last full day of the recording
LAST_BAR = AS_OF - timedelta(days=7)
FIRST = date(2025, 9, 1)
SETTINGS = {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "30", "RISK_VAR_LOOKBACK_DAYS": "60",
            "PIPELINE_DAILY_HISTORY_DAYS": "150", "PIPELINE_PRODUCTS": "BTC-USD,WBTC-USD", "PIPELINE_SOURCE": "simulator"}


def _reference(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(PROJECT_ROOT / "etl/reference_data/exchanges.csv", folder / "exchanges.csv")
    (folder / "instruments.csv").write_text(
        "product_id,base_currency,quote_currency,exchange_id,asset_class,display_name,delisted_on\n"
        "BTC-USD,BTC,USD,coinbase,crypto_major,Bitcoin / US Dollar,\n"
        "WBTC-USD,WBTC,USD,coinbase,crypto_major,Wrapped Bitcoin / US Dollar,\n")
    (folder / "portfolios.csv").write_text(
        "portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
        "E,Empty book,USD,100000,0.6,0.9\nM,Both,USD,100000,0.6,0.9\nS,Stops early,USD,100000,1,0.9\n"
        "W,Keeps trading,USD,100000,1,0.9\n")
    (folder / "positions.csv").write_text(
        "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
        "M,BTC-USD,2025-09-01,1,100000\nM,WBTC-USD,2025-09-01,1,100000\n"
        "S,BTC-USD,2025-09-01,2,100000\nW,WBTC-USD,2025-09-01,3,100000\n")
    return folder


def _replay(folder: Path, stop: date | None) -> Path:
    """BTC-USD's real candles as BTC-USD (up to the end of `stop` when given) and as WBTC-USD (all of them)."""
    folder.mkdir()
    candles = pd.read_csv(REAL / RECORDING)
    candles.to_csv(folder / "WBTC-USD_300s_real-BTC-USD.csv", index=False)
    if stop is not None:
        candles = candles[pd.to_datetime(candles["timestamp"]).dt.date <= stop]
    candles.to_csv(folder / RECORDING, index=False)
    return folder


def _chain(root: Path, sim_url: str, url: str, monkeypatch) -> None:
    for key, value in {**SETTINGS, "PIPELINE_DATA_DIR": str(root / "data"), "PIPELINE_STATE_DIR": str(root / "state"),
                       "PIPELINE_DATABASE_URL": url, "PIPELINE_REFERENCE_DIR": str(root / "ref"),
                       "COINBASE_API_URL": sim_url}.items():
        monkeypatch.setenv(key, value)
    assert main(["ingest", "--granularity", "86400", "--start", f"{FIRST}T00:00:00Z",
                 "--end", f"{AS_OF + timedelta(days=1)}T00:00:00Z"]) == 0
    assert main(["silver"]) == 0
    _risk_and_load()


def _risk_and_load() -> None:
    assert main(["risk", "--as-of", str(AS_OF)]) == 0
    assert main(["load"]) == 0


def _gold(url: str, sql: str) -> list[tuple]:
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.mark.skipif(REAL is None, reason="../shared/data/coinbase/ is not beside the checkout")
def test_a_product_that_stops_7_days_early_makes_the_day_incomplete_unless_delisted(
        tmp_path, pg_url, make_simulator, monkeypatch, capsys):
    # ---- the clean replay: complete, the empty book included -------------------------------------------------------
    clean = tmp_path / "clean"
    clean.mkdir()
    _reference(clean / "ref")
    sim = make_simulator(replay_dir=str(_replay(clean / "replay", None)), rate_limit_rps=0)
    with db.scratch_database(pg_url, "stale_clean") as url:
        _chain(clean, sim.url, url, monkeypatch)
        capsys.readouterr()
        assert main(["report", "--as-of", str(AS_OF)]) == 0, capsys.readouterr().err
        stale_rows = _gold(url, "select count(*) from gold.fact_positions where is_stale")
        empty = _gold(url, f"select market_value, gross_exposure from gold.fact_portfolio_valuation "
                           f"where portfolio_id = 'E' and as_of_date = '{AS_OF}'")
        empty_breaches = _gold(url, "select count(*) from gold.fact_limit_breaches where portfolio_id = 'E'")
    assert stale_rows == [(0,)] and empty == [(0.0, 0.0)] and empty_breaches == [(0,)]

    # ---- BTC-USD stops 7 days before the as-of day: refused, naming product, last bar, portfolios -----------------
    root = tmp_path / "stale"
    root.mkdir()
    ref = _reference(root / "ref")
    sim = make_simulator(replay_dir=str(_replay(root / "replay", LAST_BAR)), rate_limit_rps=0)
    with db.scratch_database(pg_url, "stale_stops") as url:
        _chain(root, sim.url, url, monkeypatch)
        capsys.readouterr()
        assert main(["report", "--as-of", str(AS_OF)]) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: report for {AS_OF} is INCOMPLETE (")
        assert (f"BTC-USD has no daily bar on {AS_OF}, or the <CCY>-USD pair converting it has none (last bar "
                f"{LAST_BAR}), held by portfolio(s) M, S: ingest the missing daily candles") in err
        assert "WBTC-USD" not in err and "portfolio(s) E" not in err

        # ---- delisted on its last bar: valued at that day's real close, flagged stale, the day complete -----------
        rows = list(csv.reader((ref / "instruments.csv").read_text().splitlines()))
        rows[1][-1] = LAST_BAR.isoformat()
        (ref / "instruments.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
        _risk_and_load()
        capsys.readouterr()
        assert main(["report", "--as-of", str(AS_OF)]) == 0, capsys.readouterr().err
        positions = _gold(url, f"select portfolio_id, product_id, close, market_value, price_date, is_stale, "
                               f"is_delisted from gold.fact_positions where as_of_date = '{AS_OF}' "
                               "order by portfolio_id, product_id")
        delisted_on = _gold(url, "select product_id, delisted_on from gold.dim_symbol order by product_id")
    real = pd.read_csv(REAL / RECORDING, parse_dates=["timestamp"])
    last_close = real.loc[real["timestamp"].dt.date == LAST_BAR, "close"].iloc[-1]      # 23:55 of its last day
    as_of_close = real.loc[real["timestamp"].dt.date == AS_OF, "close"].iloc[-1]
    assert positions == [
        ("M", "BTC-USD", last_close, last_close, LAST_BAR, True, True),
        ("M", "WBTC-USD", as_of_close, as_of_close, AS_OF, False, False),
        ("S", "BTC-USD", last_close, 2 * last_close, LAST_BAR, True, True),
        ("W", "WBTC-USD", as_of_close, 3 * as_of_close, AS_OF, False, False),
    ]
    assert delisted_on == [("BTC-USD", LAST_BAR), ("WBTC-USD", None)]
    reports = root / "data" / "reports" / AS_OF.isoformat()
    for page in sorted(reports.glob("*.html")):
        text = page.read_text()
        assert 'id="stale"' in text and 'id="incomplete"' not in text, page.name
        assert f"BTC-USD is delisted: valued at its last close, of {LAST_BAR} (stale), in portfolio(s) M, S" in text

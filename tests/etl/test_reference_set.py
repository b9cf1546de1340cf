"""etl/reference_set.py: one Reference per run, passed down, parses every reference file once; the frames are the
loaders' own; a new run reads the files again. The count comes from the one reader every file goes through
(etl.reference.read_reference_csv), wrapped wherever a module holds it."""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from datetime import date

import numpy as np
import pandas as pd
import pytest

from etl import db, reference
from etl.orchestration import tasks
from etl.portfolios import load_portfolios, load_positions
from etl.reference_check import validate_reference
from etl.reference_set import Reference
from etl.settings import get_settings
from tests.conftest import REFERENCE_DATA
from tests.support.silver_sample import write_daily_bars

AS_OF = date(2026, 3, 31)
QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "ETH-BTC": "BTC"}


@pytest.fixture
def reads(monkeypatch) -> Counter:
    """file name -> how many times read_reference_csv parsed it from now on."""
    real, counts = reference.read_reference_csv, Counter()

    def counting(path, required):
        counts[path.name] += 1
        return real(path, required)

    holders = [m for m in list(sys.modules.values()) if getattr(m, "read_reference_csv", None) is real]
    assert {m.__name__ for m in holders} >= {"etl.reference", "etl.portfolios", "etl.risk.stress"}
    for module in holders:
        monkeypatch.setattr(module, "read_reference_csv", counting)
    return counts


@pytest.fixture
def book(data_dir, book_reference, pg_url, tmp_path, monkeypatch):
    """Daily bars to AS_OF, a book of three portfolios with a firm limit, a clean warehouse."""
    ref = book_reference(
        "portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
        "U1,Long BTC short ETH,USD,1000,0.9,0.9\nU2,ETH-BTC,USD,1000000,0.5,0.9\nB1,ETH in BTC,BTC,100,0.9,0.5\n",
        "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
        "U1,BTC-USD,2026-01-01,2,50000\nU1,ETH-USD,2026-01-01,-30,2500\nU2,ETH-BTC,2026-01-01,100,0.04\n"
        "B1,ETH-USD,2026-01-01,20,2800\n")
    shutil.copy(REFERENCE_DATA / "firm_limits.csv", ref / "firm_limits.csv")
    for key, value in {"RISK_MC_SCENARIOS": "1000", "RISK_BACKTEST_DAYS": "30", "RISK_VAR_LOOKBACK_DAYS": "60",
                       "PIPELINE_DAILY_HISTORY_DAYS": "100", "PIPELINE_DATABASE_URL": pg_url,
                       "PIPELINE_STATE_DIR": str(tmp_path / "state")}.items():
        monkeypatch.setenv(key, value)
    days = pd.date_range("2025-12-01", AS_OF, freq="D")
    rng = np.random.default_rng(3)
    start = np.array([60000.0, 0.05, 3000.0])  # BTC-USD, ETH-BTC, ETH-USD
    closes = pd.DataFrame(start * np.exp(np.cumsum(rng.standard_normal((len(days), 3)) * 0.02, axis=0)),
                          index=days, columns=sorted(QUOTE))
    write_daily_bars(data_dir, closes, QUOTE)
    with db.connect(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("drop schema if exists raw, staging, gold cascade")
    return ref


EACH_ONCE = Counter({"exchanges.csv": 1, "instruments.csv": 1, "portfolios.csv": 1, "positions.csv": 1,
                     "firm_limits.csv": 1, "stress_scenarios.csv": 1})


def test_a_risk_run_and_a_load_sharing_one_reference_parse_each_file_once(book, reads):
    settings = get_settings()
    ref = Reference(settings)
    risk = tasks.compute_risk(AS_OF, settings=settings, reference=ref)
    loaded = tasks.load_warehouse(settings=settings, reference=ref)
    assert reads == EACH_ONCE
    assert risk["portfolios"] == 3 and risk["positions"] == 4
    assert {k: loaded["rows"][k] for k in ("exchanges", "instruments", "portfolios", "positions", "firm_limits")} \
        == {"exchanges": 1, "instruments": len(ref.instruments), "portfolios": 3, "positions": 4, "firm_limits": 1}
    with db.connect(url=settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("select portfolio_id, product_id, quantity from raw.positions order by 1, 2")
        assert cur.fetchall() == [("B1", "ETH-USD", 20.0), ("U1", "BTC-USD", 2.0), ("U1", "ETH-USD", -30.0),
                                  ("U2", "ETH-BTC", 100.0)]
    fresh = Reference(settings)  # the stages shared the frames and changed none of them
    for frame in ("exchanges", "instruments", "portfolios", "positions", "firm_limits"):
        pd.testing.assert_frame_equal(getattr(ref, frame), getattr(fresh, frame))


def test_each_task_without_a_reference_reads_the_files_itself_and_sees_an_edit(book, reads):
    """Airflow runs each task in its own process: a task not handed a Reference builds its own (the files as they
    are then), so an edited positions file reaches the next task."""
    settings = get_settings()
    tasks.compute_risk(AS_OF, settings=settings)
    assert reads == EACH_ONCE - Counter(["firm_limits.csv"])  # the risk run needs no firm limit
    (book / "positions.csv").write_text((book / "positions.csv").read_text() + "U2,BTC-USD,2026-02-01,1,60000\n")
    loaded = tasks.load_warehouse(settings=settings)
    assert loaded["rows"]["positions"] == 5
    assert reads == EACH_ONCE + EACH_ONCE - Counter(["firm_limits.csv", "stress_scenarios.csv"])


def test_the_frames_are_the_loaders_own_and_validation_reads_each_file_once(reads):
    assert validate_reference() == []
    assert reads == EACH_ONCE  # no price_overrides.csv in the shipped folder
    ref = Reference(get_settings())
    pd.testing.assert_frame_equal(ref.positions, load_positions())
    pd.testing.assert_frame_equal(ref.portfolios, load_portfolios())
    assert ref.positions is ref.positions  # read once, then shared
    assert ref.quote_ccy["ETH-BTC"] == "BTC" and Reference.of(ref) is ref


def test_a_silver_build_parses_the_instrument_master_once_for_its_overrides_and_quotes(
        data_dir, reference_copy, monkeypatch, reads):
    (reference_copy / "price_overrides.csv").write_text(
        "product_id,granularity,bucket_start,accepted_by,accepted_at,reason\n"
        "BTC-USD,60,2026-01-05T00:01:00Z,ops,2026-01-06T09:00:00Z,exchange-wide move\n")
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(reference_copy))
    tasks.build_silver(settings=get_settings())
    assert reads == Counter({"exchanges.csv": 1, "instruments.csv": 1, "price_overrides.csv": 1})

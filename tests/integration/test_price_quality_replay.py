"""Bad prints through the whole chain: real Coinbase BTC-USD candles replayed by the simulator with injected faults,
then `ingest`, `silver`, `risk`, `load` and `report` as a user runs them, each compared with the clean replay:
either gold's figures equal the clean run's (the print excluded and recorded) or `report` exits 3 naming the cause.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from etl import db
from etl.settings import PROJECT_ROOT
from tests.etl.silver.test_price_quality import BTC_FILE, CRASH, daily_candles, freeze, real_candles, spike

pytestmark = pytest.mark.slow

AS_OF = date(2025, 10, 12)
DAILY_FROM, INTRADAY_FROM, END = "2025-07-10", "2025-10-10", "2025-10-13"  # the crash of 10-10 is in the window
SETTINGS = {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "25", "RISK_VAR_LOOKBACK_DAYS": "60",
            "PIPELINE_DAILY_HISTORY_DAYS": "90", "PIPELINE_PRODUCTS": "BTC-USD,ETH-USD", "PIPELINE_SOURCE": "simulator"}
FIGURES = ("fact_risk_metrics", "fact_portfolio_valuation", "fact_pnl_daily", "fact_positions", "fact_price_daily")
VOLATILE = {"loaded_at", "risk_run_id", "source_file"}
LAG = pd.Timedelta(days=9)  # ETH-USD's candles are BTC-USD's of 9 days before (real data starts 2025-07-01)


def _lagged(frame: pd.DataFrame) -> pd.DataFrame:
    """ETH-USD for the book's second product (the risk engine needs two): BTC-USD's clean candles 9 days earlier,
    scaled to 1/30 (real moves, a different path; no fault is ever injected into it)."""
    return frame.assign(bucket_start=frame["bucket_start"] + LAG,
                        **{c: frame[c] / 30 for c in ("open", "high", "low", "close")})


def _world(root: Path, url: str, five_min: pd.DataFrame, daily: pd.DataFrame, eth: tuple) -> dict:
    """The replay folder, a one-portfolio BTC-USD + ETH-USD book and the environment of one world."""
    replay = root / "replay"
    replay.mkdir(parents=True)
    for product, frames in (("BTC-USD", (five_min, daily)), ("ETH-USD", eth)):
        for frame, g in zip(frames, (300, 86_400), strict=True):
            out = frame.assign(timestamp=frame["bucket_start"].dt.strftime("%Y-%m-%d %H:%M:%S"))
            out[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(replay / f"{product}_{g}s_x.csv",
                                                                               index=False)
    ref = root / "ref"
    ref.mkdir()
    for name in ("instruments.csv", "exchanges.csv"):
        shutil.copy(PROJECT_ROOT / "etl/reference_data" / name, ref / name)
    (ref / "portfolios.csv").write_text("portfolio_id,name,base_currency,var_limit,concentration_limit,"
                                        "drawdown_limit,var_limit_metric\nP001,BTC Core,USD,400000,1.0,0.9,\n")
    (ref / "positions.csv").write_text("portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
                                       "P001,BTC-USD,2025-07-01,2.0,60000\nP001,ETH-USD,2025-07-01,20.0,3000\n")
    return {"replay": replay, "env": {**os.environ, **SETTINGS, "PIPELINE_DATA_DIR": str(root / "data"),
                                      "PIPELINE_STATE_DIR": str(root / "state"), "PIPELINE_DATABASE_URL": url,
                                      "PIPELINE_REFERENCE_DIR": str(ref)}}


def _etl(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", *args], cwd=PROJECT_ROOT, env=env, text=True,
                          capture_output=True, timeout=900)


def _chain(env: dict) -> subprocess.CompletedProcess:
    products = SETTINGS["PIPELINE_PRODUCTS"]
    for args in (("ingest", "--products", products, "--granularity", "86400", "--start", DAILY_FROM, "--end", END),
                 ("ingest", "--products", products, "--granularity", "300", "--start", INTRADAY_FROM, "--end", END),
                 ("silver",), ("risk", "--as-of", str(AS_OF)), ("load",)):
        res = _etl(env, *args)
        assert res.returncode == 0, f"{args}: {res.stderr[-3000:]}"
    return _etl(env, "report", "--as-of", str(AS_OF))


def _gold(url: str, tables) -> dict[str, pd.DataFrame]:
    out = {}
    with db.connect(url=url) as conn, conn.cursor() as cur:
        for t in tables:
            cur.execute(f"select * from gold.{t}")
            df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
            df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
            out[t] = df.sort_values(list(df.columns[:3]), ignore_index=True)
    return out


@pytest.fixture(scope="module")
def runs(pg_url, tmp_path_factory):
    from etl.simulator import Simulator, SimulatorConfig

    real = real_candles(BTC_FILE)
    real = real[real["bucket_start"].between(INTRADAY_FROM, END, inclusive="left")].reset_index(drop=True)
    everything = real_candles(BTC_FILE)
    history = everything[everything["bucket_start"].between(DAILY_FROM, END, inclusive="left")]
    daily = daily_candles(history.reset_index(drop=True))
    early = everything[everything["bucket_start"] < pd.Timestamp(END, tz="UTC") - LAG]
    eth = (_lagged(early[early["bucket_start"] >= pd.Timestamp(INTRADAY_FROM, tz="UTC") - LAG]),
           _lagged(daily_candles(early.reset_index(drop=True))))
    eth = tuple(f.assign(product_id="ETH-USD") for f in eth)
    worlds = {
        "clean": (real, daily),
        # the bad prints have a daily bar standing beside them: the figures must equal the clean run's
        "excluded": (spike(real, "2025-10-12 12:00", 50), spike(daily, "2025-10-11", 1000)),
        # a 1000x daily close on a day with daily candles only, and the as-of day's last half hour frozen
        "refused": (freeze(real, "2025-10-12 23:30", 6), spike(daily, "2025-09-15", 1000)),
    }
    seen = {}
    for name, (five_min, day_candles) in worlds.items():
        root = tmp_path_factory.mktemp(name)
        with db.scratch_database(pg_url, f"pq_{name}") as url:
            world = _world(root, url, five_min, day_candles, eth)
            sim = Simulator(SimulatorConfig(port=0, replay_dir=str(world["replay"]), rate_limit_rps=0,
                                            burst=1000)).start()
            try:
                env = {**world["env"], "COINBASE_API_URL": sim.url}
                report = _chain(env)
                seen[name] = {"report": report, "gold": _gold(url, (*FIGURES, "fact_price_quality")),
                              "bars_5m": _gold(url, ("fact_price_bars",))["fact_price_bars"]}
            finally:
                sim.stop()
    return seen


def test_clean_replay_is_complete_with_the_crash_bars_untouched(runs):
    clean = runs["clean"]
    assert clean["report"].returncode == 0, clean["report"].stderr[-3000:]
    assert clean["gold"]["fact_price_quality"].empty
    bars = clean["bars_5m"][clean["bars_5m"]["product_id"] == "BTC-USD"]
    crash = bars[pd.to_datetime(bars["bucket_start"], utc=True).between(*CRASH)]
    real = real_candles(BTC_FILE)
    expected = real[real["bucket_start"].between(*CRASH)]
    assert len(crash) == 6
    assert crash[["open", "high", "low", "close"]].to_numpy().tolist() == \
        expected[["open", "high", "low", "close"]].to_numpy().tolist()


def test_excluded_prints_leave_every_figure_equal_to_the_clean_run_and_are_recorded_in_gold(runs):
    bad, clean = runs["excluded"], runs["clean"]
    assert bad["report"].returncode == 0, bad["report"].stderr[-3000:]
    for table in FIGURES:
        if table == "fact_price_daily":  # the spike's 5-minute candle is gone from the day's high and volume
            cols = ["product_id", "price_date", "open", "low", "close"]
            pd.testing.assert_frame_equal(bad["gold"][table][cols], clean["gold"][table][cols], obj=table)
        else:
            pd.testing.assert_frame_equal(bad["gold"][table], clean["gold"][table], obj=table)
    q = bad["gold"]["fact_price_quality"].sort_values("bucket_start", ignore_index=True)
    assert list(zip(q["granularity"], q["bucket_start"].astype(str), q["rule"], q["decision"], strict=True)) == [
        (86_400, "2025-10-11 00:00:00+00:00", "spike_revert", "excluded"),
        (300, "2025-10-12 12:00:00+00:00", "spike_revert", "excluded")]
    assert all("log from the previous close" in e for e in q["evidence"])
    btc = bad["bars_5m"][bad["bars_5m"]["product_id"] == "BTC-USD"]
    assert pd.Timestamp("2025-10-12 12:00", tz="UTC") not in set(pd.to_datetime(btc["bucket_start"], utc=True))


def test_a_close_resting_on_an_excluded_print_makes_report_exit_3_naming_product_day_and_rule(runs):
    res = runs["refused"]["report"]
    assert res.returncode == 3, res.stderr[-3000:]
    assert "price of BTC-USD on 2025-09-15 rests on a suspect print: rule spike_revert (86400s candle at " \
           "2025-09-15 00:00 UTC" in res.stderr
    assert "price of BTC-USD on 2025-10-12 rests on a suspect print: rule frozen_zero_volume (300s candle at " \
           "2025-10-12 23:55 UTC" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: report for {AS_OF} is INCOMPLETE")
    # and the 1000x close reached no figure: no daily bar that day, VaR in the clean run's range
    refused, clean = runs["refused"]["gold"], runs["clean"]["gold"]
    daily = refused["fact_price_daily"]
    assert date(2025, 9, 15) not in set(daily.loc[daily["product_id"] == "BTC-USD", "price_date"])
    ratio = refused["fact_risk_metrics"]["var_99_param"].iat[0] / clean["fact_risk_metrics"]["var_99_param"].iat[0]
    assert 0.8 < ratio < 1.25

"""The market-data quality gate: real Coinbase candles pass untouched, injected bad prints are caught, kept out of
the bars and recorded; a spike across a day edge gives the same files incrementally and in a full refresh."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from etl.errors import ValidationError
from etl.reference import load_price_overrides
from etl.reference_check import validate_reference
from etl.settings import get_settings
from etl.silver import build, read_bars, read_candles
from etl.silver.price_quality import RULES, gate
from tests.etl.silver.test_incremental import FUTURE, SHARED_DATA, minute_candles, silver_files, write_batch
from tests.support.silver_sample import silver_frame

BTC_FILE = SHARED_DATA / "BTC-USD_300s_2025-07-01_2026-01-22.csv"
CRASH = (pd.Timestamp("2025-10-10 21:10", tz="UTC"), pd.Timestamp("2025-10-10 21:35", tz="UTC"))
WINDOW = (datetime(2025, 10, 8, tzinfo=UTC), datetime(2025, 10, 14, tzinfo=UTC))


def real_candles(path: Path) -> pd.DataFrame:
    """A real Coinbase CSV as candles of granularity 300 (either column order, naive UTC timestamps)."""
    df = pd.read_csv(path)
    return pd.DataFrame({"product_id": path.name.split("_")[0],
                         "bucket_start": pd.to_datetime(df["timestamp"], utc=True),
                         **{c: df[c].astype(float) for c in ("open", "high", "low", "close", "volume")},
                         "granularity": 300}).sort_values("bucket_start", ignore_index=True)


def daily_candles(five_min: pd.DataFrame) -> pd.DataFrame:
    """The daily candles Coinbase would serve for the same trades: the UTC day's OHLCV of its 5-minute candles."""
    day = five_min.groupby(five_min["bucket_start"].dt.floor("D"))
    out = day.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                  volume=("volume", "sum")).reset_index()
    return out.assign(product_id=five_min["product_id"].iat[0], granularity=86_400)


def as_table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df[["product_id", "bucket_start", "granularity", "open", "high", "low", "close",
                                    "volume"]], preserve_index=False)


def spike(df: pd.DataFrame, at: str, factor: float) -> pd.DataFrame:
    """close = high = factor x the real close at bucket `at` (a bad print; the next candle is real again)."""
    df = df.copy()
    i = df.index[df["bucket_start"] == pd.Timestamp(at, tz="UTC")][0]
    df.loc[i, ["close", "high"]] = df.at[i, "close"] * factor
    return df


def freeze(df: pd.DataFrame, start: str, n: int) -> pd.DataFrame:
    """n candles from `start` frozen at the previous close with zero volume (a feed carrying a price forward)."""
    df = df.copy()
    i = df.index[df["bucket_start"] == pd.Timestamp(start, tz="UTC")][0]
    df.loc[i:i + n - 1, ["open", "high", "low", "close"]] = df.at[i - 1, "close"]
    df.loc[i:i + n - 1, "volume"] = 0.0
    return df


# ---- the rules on real candles -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(SHARED_DATA.glob("*-USD_300s_*.csv")), ids=lambda p: p.name)
def test_real_coinbase_candles_flag_nothing(path):
    candles = real_candles(path)
    both = pd.concat([candles, daily_candles(candles)], ignore_index=True)  # so granularity_mismatch runs too
    suspect, flags = gate(as_table(both))
    assert flags.num_rows == 0 and not suspect.any(), flags.to_pandas()[["bucket_start", "rule", "evidence"]]


def test_the_2025_10_10_crash_is_real_and_not_flagged():
    candles = real_candles(BTC_FILE)
    crash = candles[candles["bucket_start"].between(*CRASH)]
    moves = np.diff(np.log(crash["close"].to_numpy()))
    assert moves.min() < -0.03 and moves.max() > 0.039  # -3% then +4% in consecutive bars: the real thing
    assert ((crash["high"] - crash["low"]) / crash["low"]).max() > 0.045
    suspect, _ = gate(as_table(candles))
    assert not suspect[crash.index].any()


def test_each_injected_fault_is_caught_by_its_rule_with_evidence():
    real = real_candles(BTC_FILE)
    real = real[real["bucket_start"].between("2025-09-01", "2025-11-01", inclusive="left")].reset_index(drop=True)
    daily = daily_candles(real)
    bad_daily = spike(daily, "2025-10-11", 1000)
    bad_5m = freeze(spike(spike(real, "2025-10-12 12:00", 50), "2025-10-31 23:55", 1000), "2025-10-09 15:00", 6)

    _, flags = gate(as_table(pd.concat([bad_5m, bad_daily], ignore_index=True)))
    got = flags.to_pandas()
    got = {(int(r.granularity), r.bucket_start.strftime("%m-%d %H:%M")): r for r in got.itertuples()}
    frozen = {(300, f"10-09 15:{m:02d}") for m in range(0, 30, 5)}
    assert set(got) == {(86_400, "10-11 00:00"), (300, "10-12 12:00"), (300, "10-31 23:55"), (86_400, "10-31 00:00"),
                        *frozen}
    assert got[(86_400, "10-11 00:00")].rule == "spike_revert"
    assert got[(86_400, "10-11 00:00")].failed_rules == "spike_revert,granularity_mismatch"
    assert re.search(r"^close 1\.1\d+e\+08: \+6\.\d{3} log from the previous close 112980\.28, then -6\.\d{3} back",
                     got[(86_400, "10-11 00:00")].evidence)  # ln 1000 = 6.908, plus or minus the day's real move
    assert got[(300, "10-12 12:00")].rule == "spike_revert"
    assert re.search(r": \+3\.9\d\d log from", got[(300, "10-12 12:00")].evidence)  # ln 50 = 3.912
    assert got[(300, "10-31 23:55")].rule == "jump_unconfirmed"        # the latest print: no next candle yet
    assert got[(86_400, "10-31 00:00")].rule == "granularity_mismatch"  # the real daily close vs the bad last 5m
    assert {got[k].rule for k in frozen} == {"frozen_zero_volume"}
    assert got[(300, "10-12 12:00")].reference_close == real.loc[
        real["bucket_start"] == pd.Timestamp("2025-10-12 11:55", tz="UTC"), "close"].iat[0]


# ---- replayed through the simulator, bronze and silver: the bars equal the clean replay's minus the bad prints ----
def _replay(make_simulator, monkeypatch, tmp_path: Path, name: str, five_min: pd.DataFrame, daily: pd.DataFrame,
            data_dir: Path) -> None:
    from etl.bronze import ingest

    replay = tmp_path / f"replay-{name}"
    replay.mkdir()
    for frame, g in ((five_min, 300), (daily, 86_400)):
        out = frame.assign(timestamp=frame["bucket_start"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        out[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(replay / f"BTC-USD_{g}s_{name}.csv",
                                                                           index=False)
    sim = make_simulator(replay_dir=str(replay), rate_limit_rps=0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir))
    for g in (300, 86_400):
        ingest(products=["BTC-USD"], start=WINDOW[0], end=WINDOW[1], granularity=g, source="simulator")
    build(now=FUTURE)


def test_replayed_faults_are_excluded_and_recorded_and_the_rest_equals_the_clean_replay(
        data_dir, make_simulator, monkeypatch, tmp_path):
    real = real_candles(BTC_FILE)
    real = real[real["bucket_start"].between(*WINDOW, inclusive="left")].reset_index(drop=True)
    daily = daily_candles(real)
    _replay(make_simulator, monkeypatch, tmp_path, "clean", real, daily, tmp_path / "clean")
    clean_5m, clean_1d = read_bars("5m"), read_bars("1d")
    clean_candles = read_candles(["BTC-USD"], granularity=300, now=FUTURE)
    assert not (tmp_path / "clean/silver/price_quality").exists()  # nothing flagged on real data
    crash = clean_5m[clean_5m["bucket_start"].between(*CRASH)]
    raw_crash = real[real["bucket_start"].between(*CRASH)]
    np.testing.assert_array_equal(crash[["open", "high", "low", "close"]].to_numpy(),
                                  raw_crash[["open", "high", "low", "close"]].to_numpy())  # untouched

    bad_5m = freeze(spike(real, "2025-10-12 12:00", 50), "2025-10-09 15:00", 6)
    _replay(make_simulator, monkeypatch, tmp_path, "faulty", bad_5m, spike(daily, "2025-10-11", 1000), data_dir)
    bars_5m, bars_1d = read_bars("5m"), read_bars("1d")

    excluded = {pd.Timestamp("2025-10-12 12:00", tz="UTC"), *pd.date_range("2025-10-09 15:00", periods=6, freq="5min",
                                                                          tz="UTC")}
    expected = clean_5m[~clean_5m["bucket_start"].isin(excluded)].reset_index(drop=True)
    pd.testing.assert_frame_equal(bars_5m, expected)                   # the bad 5-minute prints kept out, no other
    pd.testing.assert_frame_equal(read_candles(["BTC-USD"], granularity=300, now=FUTURE),  # the factors' reader too
                                  clean_candles[~clean_candles["bucket_start"].isin(excluded)].reset_index(drop=True))
    pd.testing.assert_frame_equal(bars_1d[["price_date", "open", "close"]], clean_1d[["price_date", "open", "close"]])
    same = ~bars_1d["price_date"].isin(pd.to_datetime(["2025-10-09", "2025-10-12"]))
    pd.testing.assert_frame_equal(bars_1d[same].reset_index(drop=True), clean_1d[same].reset_index(drop=True))
    assert bars_1d["high"].max() < 130_000  # the 1000x daily close and the 50x spike reach no daily bar

    flags = silver_frame(data_dir, "silver/price_quality").sort_values(["bucket_start", "granularity"])
    assert list(zip(flags["granularity"], flags["bucket_start"].dt.strftime("%m-%d %H:%M"), flags["rule"],
                    strict=True)) == [
        *[(300, f"10-09 15:{m:02d}", "frozen_zero_volume") for m in range(0, 30, 5)],
        (86_400, "10-11 00:00", "spike_revert"), (300, "10-12 12:00", "spike_revert")]
    assert set(flags["decision"]) == {"excluded"}
    summary = build(full_refresh=True, now=FUTURE)
    assert summary.suspect == 8 and summary.suspect_by_rule == {
        "spike_revert": 2, "jump_unconfirmed": 0, "jump_unanchored": 0, "granularity_mismatch": 0,
        "frozen_zero_volume": 6}
    assert "suspect               8  (spike_revert=2, frozen_zero_volume=6; 0 accepted by override)" in str(summary)


# ---- a spike across a day edge: incremental == full refresh; an accepted print goes back into the bars ----------
def test_spike_at_a_day_edge_is_confirmed_by_the_next_day_and_incremental_equals_full_refresh(data_dir):
    start = datetime(2026, 1, 5, tzinfo=UTC)
    candles = minute_candles("BTC-USD", start, 2 * 1440, step=300)[:2 * 288]
    candles.loc[287, ["close", "high"]] *= 40  # 2026-01-05 23:55, reverted by 2026-01-06 00:00
    write_batch(data_dir, candles[:288], "day1", start + timedelta(days=1))
    first = build(now=FUTURE)
    assert first.suspect_by_rule["jump_unconfirmed"] == 1  # the day's last print, unconfirmed so far
    assert read_bars("5m")["bucket_start"].max() == pd.Timestamp("2026-01-05 23:50", tz="UTC")

    write_batch(data_dir, candles[288:], "day2", start + timedelta(days=2))
    second = build(now=FUTURE)
    assert second.partitions == 2 and second.suspect_by_rule["spike_revert"] == 1  # day 1 rebuilt as context
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental
    flags = silver_frame(data_dir, "silver/price_quality")
    assert list(flags["rule"]) == ["spike_revert"] and "then -3.690 back to 99.059268" in flags["evidence"].iat[0]


def test_daily_candles_built_day_by_day_equal_a_full_refresh_and_a_spikes_way_back_is_not_unconfirmed(data_dir):
    daily = minute_candles("BTC-USD", datetime(2026, 1, 1, tzinfo=UTC), 10, step=86_400, seed=5)
    daily.loc[8, ["close", "high"]] *= 1000  # 2026-01-09; 2026-01-10, the latest, comes back
    flagged = []
    for i in range(10):  # one batch a day, a build after each, as the end-of-day DAG does
        write_batch(data_dir, daily.iloc[[i]], f"d{i}", datetime(2026, 1, 2 + i, tzinfo=UTC))
        build(now=FUTURE)
        flags = silver_frame(data_dir, "silver/price_quality")
        flagged.append(sorted(zip(flags["bucket_start"].dt.day, flags["rule"], strict=True)) if len(flags) else [])
    assert flagged[8] == [(9, "jump_unconfirmed")]  # held out while unconfirmed
    assert flagged[9] == [(9, "spike_revert")]      # confirmed a spike; the day after it is the way back, kept
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental
    assert list(read_bars("1d")["price_date"].dt.day) == [1, 2, 3, 4, 5, 6, 7, 8, 10]



def test_a_bad_first_print_or_one_after_a_gap_is_held_out_once_the_next_candle_comes(data_dir):
    """A 1000x daily close with no candle the day before (the series' first; the first after a missing day) has
    no previous close for spike_revert to judge it by: it used to become a daily bar, and the history started (or
    went on) at a price nobody traded at. The next candle jumping back beyond the threshold flags it
    `jump_unanchored`; day by day equals a full refresh."""
    daily = minute_candles("BTC-USD", datetime(2026, 1, 1, tzinfo=UTC), 12, step=86_400, seed=5)
    daily.loc[[0, 7], ["close", "high"]] *= 1000  # 2026-01-01, the first; 2026-01-08, after 01-07 is missing
    daily = daily.drop(index=6)
    for i in range(len(daily)):  # one batch a day, a build after each, as the end-of-day DAG does
        write_batch(data_dir, daily.iloc[[i]], f"d{i}", daily["bucket_start"].iat[i] + timedelta(days=1))
        build(now=FUTURE)
    flags = silver_frame(data_dir, "silver/price_quality").sort_values("bucket_start")
    assert list(zip(flags["bucket_start"].dt.day, flags["rule"], strict=True)) == [(1, "jump_unanchored"),
                                                                                    (8, "jump_unanchored")]
    assert flags["evidence"].iat[0] == ("close 99919.839: no previous candle within a day, then -6.909 log to the next "
                                        "close 99.787597; threshold 0.501")
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental
    bars = read_bars("1d")
    assert list(bars["price_date"].dt.day) == [2, 3, 4, 5, 6, 9, 10, 11, 12] and bars["close"].max() < 200


def test_a_day_whose_minute_candles_were_cut_short_takes_its_close_from_the_daily_candle(data_dir):
    """The 1-minute fetch of 2026-01-05 stopped at 10:00 (nothing after it), the daily candles were fetched: the
    day's bar used to come from the 600 minute candles (the finest present), so its close was the 09:59 price, and
    the risk run valued the day at it. The daily candle, the exchange's record of the whole day, gives the day's
    bar until the rest of the minutes arrive; then they do, with the same close. Incremental equals full refresh."""
    day = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", day, 1440, seed=3)
    minutes.loc[600:, ["open", "high", "low", "close"]] *= 1.2  # the afternoon trades 20% higher
    daily = minute_candles("BTC-USD", day - timedelta(days=3), 4, step=86_400, seed=5)
    daily.loc[3, ["open", "high", "low", "close", "volume"]] = [
        minutes["open"].iat[0], minutes["high"].max(), minutes["low"].min(), minutes["close"].iat[-1],
        minutes["volume"].sum()]
    write_batch(data_dir, daily, "daily", day + timedelta(days=1))
    write_batch(data_dir, minutes[:600], "morning", day + timedelta(hours=10))
    build(now=FUTURE)
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (minutes["close"].iat[-1], 86_400, 1)
    assert read_bars("5m", start=day.date(), end=day.date())["bucket_start"].max() == pd.Timestamp(
        "2026-01-05 09:55", tz="UTC")  # the 5-minute bars of the morning still come from its minutes

    write_batch(data_dir, minutes[600:], "afternoon", day + timedelta(days=1))
    build(now=FUTURE)
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (minutes["close"].iat[-1], 60, 1440)
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental
    assert not (data_dir / "silver/price_quality").exists()  # nothing suspect: the candles agree

def test_a_day_whose_last_minute_candles_were_quarantined_takes_its_close_from_the_daily_candle(data_dir):
    """The last 15 minute candles of 2026-01-05 carry a volume of 1e306 (finite: past bronze's checks at the door)
    and are quarantined (`traded_value_finite`); the day's last 15 minutes traded 5% higher, as its daily candle
    says. With the next day's minutes fetched, the minutes were taken to cover the day's end: the daily candle was
    excluded as `granularity_mismatch` against the 23:44 close, and the day's bar closed there, 5% off the
    exchange's close, with nothing in the report to say so. A quarantined candle is not a minute without trades:
    the minutes are cut short, the daily candle gives the bar."""
    day = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", day, 1440 + 60, seed=3)
    minutes.loc[1425:, ["open", "high", "low", "close"]] *= 1.05   # 23:45 onwards trades 5% higher
    daily = minute_candles("BTC-USD", day - timedelta(days=3), 4, step=86_400, seed=5)
    daily.loc[3, ["open", "high", "low", "close", "volume"]] = [
        minutes["open"].iat[0], minutes["high"].iloc[:1440].max(), minutes["low"].iloc[:1440].min(),
        minutes["close"].iat[1439], minutes["volume"].iloc[:1440].sum()]
    minutes.loc[1425:1439, "volume"] = 1e306
    write_batch(data_dir, daily, "daily", day + timedelta(days=1))
    write_batch(data_dir, minutes, "minutes", day + timedelta(days=1, hours=1))
    summary = build(now=FUTURE)
    assert summary.quarantined_by_rule["traded_value_finite"] == 15
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (daily["close"].iat[3], 86_400, 1)
    assert not (data_dir / "silver/price_quality").exists()  # the daily candle is not suspect: the minutes are cut
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental


def test_a_day_whose_minutes_stop_early_before_the_next_days_gets_no_close_from_them_against_its_daily_candle(
        data_dir, reference_copy, monkeypatch):
    """The intraday fetches of 2026-01-05 stopped at 10:00 (an outage; the scheduler does not catch up) and resumed
    at 02:00 the next day; the afternoon traded 20% higher, as the day's daily candle says. The next day's minutes
    made the 600 minutes count as covering the day: the daily candle was excluded as `granularity_mismatch` and the
    day closed at the 09:59 price, a daily bar like any other, and the report said complete. A daily candle that
    contradicts minutes stopping before the day's end leaves the close in dispute: no bar from those minutes (the
    report names the excluded print); accepted by override, the daily candle gives the bar."""
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(reference_copy))
    day = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", day, 1440 + 180, seed=3)
    minutes.loc[600:, ["open", "high", "low", "close"]] *= 1.2
    daily = minute_candles("BTC-USD", day - timedelta(days=3), 4, step=86_400, seed=5)
    daily.loc[3, ["open", "high", "low", "close", "volume"]] = [
        minutes["open"].iat[0], minutes["high"].iloc[:1440].max(), minutes["low"].iloc[:1440].min(),
        minutes["close"].iat[1439], minutes["volume"].iloc[:1440].sum()]
    write_batch(data_dir, daily, "daily", day + timedelta(days=1, hours=3))
    write_batch(data_dir, pd.concat([minutes[:600], minutes[1440 + 120:]]), "minutes", day + timedelta(days=1, hours=3))
    build(now=FUTURE)
    flags = silver_frame(data_dir, "silver/price_quality")
    assert list(zip(flags["granularity"], flags["rule"], strict=True)) == [(86_400, "granularity_mismatch")]
    bars = read_bars("1d").set_index("price_date")
    assert pd.Timestamp("2026-01-05") not in bars.index   # no close rather than the 09:59 price
    assert read_bars("5m", start=day.date(), end=day.date())["bucket_start"].max() == pd.Timestamp(
        "2026-01-05 09:55", tz="UTC")  # the 5-minute bars of the morning still come from its minutes
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental

    (reference_copy / "price_overrides.csv").write_text(
        "product_id,granularity,bucket_start,accepted_by,accepted_at,reason\n"
        "BTC-USD,86400,2026-01-05T00:00:00Z,risk-ops,2026-01-06T09:00:00Z,intraday feed outage 10:00-02:00\n")
    build(now=FUTURE)
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (daily["close"].iat[3], 86_400, 1)


def test_a_day_whose_minutes_stop_early_while_its_5_minute_candles_go_on_does_not_close_at_the_last_minute(data_dir):
    """2026-01-05's 1-minute candles stop at 09:59 (the next day's follow) while its 5-minute candles (a backfill at
    300 s) cover the whole day, the afternoon 20% higher. The next day's minutes made the 600 minutes count as
    covering the day: its bar came from them (the finest present) and closed at the 09:59 price, though bronze held
    5-minute candles traded after it up to 23:55, and once the daily candle came it was excluded as
    `granularity_mismatch` against that 09:59 close (the day had no bar, the report naming a good print). Finer
    candles that stop before a coarser candle of the same day ends do not cover the day: the bar comes from the
    5-minute candles, then from the daily candle, both with the exchange's close. Incremental equals full refresh."""
    day = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", day, 1440 + 60, seed=3)
    minutes.loc[600:, ["open", "high", "low", "close"]] *= 1.2
    whole = minutes.iloc[:1440]
    five = whole.groupby(np.arange(1440) // 5).agg(
        bucket_start=("bucket_start", "first"), open=("open", "first"), high=("high", "max"), low=("low", "min"),
        close=("close", "last"), volume=("volume", "sum")).assign(product_id="BTC-USD", granularity=300)
    write_batch(data_dir, pd.concat([minutes[:600], minutes[1440:]]), "minutes", day + timedelta(days=1, hours=1))
    write_batch(data_dir, five, "five", day + timedelta(days=1, hours=2))
    build(now=FUTURE)
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (whole["close"].iat[-1], 300, 288)
    assert not (data_dir / "silver/price_quality").exists()
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental

    daily = minute_candles("BTC-USD", day - timedelta(days=3), 4, step=86_400, seed=5)
    daily.loc[3, ["open", "high", "low", "close", "volume"]] = [
        whole["open"].iat[0], whole["high"].max(), whole["low"].min(), whole["close"].iat[-1], whole["volume"].sum()]
    write_batch(data_dir, daily, "daily", day + timedelta(days=1, hours=3))
    build(now=FUTURE)
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (daily["close"].iat[3], 86_400, 1)
    assert not (data_dir / "silver/price_quality").exists()  # the daily candle agrees with the 5-minute candles
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental


def test_a_daily_candle_fetched_during_its_day_does_not_replace_the_later_minutes(data_dir):
    """Today's daily candle fetched at 10:00 is the day so far; the minutes fetched at 15:00 go further (20% higher
    since): today's bar is the minutes', not the older daily candle's, though the minutes end before the day does."""
    day = datetime(2026, 1, 5, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", day, 900, seed=3)
    minutes.loc[600:, ["open", "high", "low", "close"]] *= 1.2
    daily = minute_candles("BTC-USD", day - timedelta(days=3), 4, step=86_400, seed=5)
    daily.loc[3, ["open", "high", "low", "close", "volume"]] = [
        minutes["open"].iat[0], minutes["high"].iloc[:600].max(), minutes["low"].iloc[:600].min(),
        minutes["close"].iat[599], minutes["volume"].iloc[:600].sum()]
    write_batch(data_dir, daily, "daily", day + timedelta(hours=10))
    write_batch(data_dir, minutes, "minutes", day + timedelta(hours=15))
    build(now=day + timedelta(hours=15))
    bar = read_bars("1d").set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"], bar["n_candles"]) == (minutes["close"].iat[-1], 60, 900)


def test_an_accepted_print_goes_back_into_the_bars_and_the_decision_is_recorded(data_dir, reference_copy,
                                                                                monkeypatch):
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(reference_copy))
    start = datetime(2026, 1, 5, tzinfo=UTC)
    candles = minute_candles("BTC-USD", start, 3 * 288, step=300)
    candles.loc[300, ["close", "high"]] *= 40  # 2026-01-06 01:00
    write_batch(data_dir, candles, "b1", start + timedelta(days=3))
    build(now=FUTURE)
    assert pd.Timestamp("2026-01-06 01:00", tz="UTC") not in set(read_bars("5m")["bucket_start"])

    (reference_copy / "price_overrides.csv").write_text(
        "product_id,granularity,bucket_start,accepted_by,accepted_at,reason\n"
        "BTC-USD,300,2026-01-06T01:00:00Z,risk-ops,2026-01-07T09:00:00Z,auction print confirmed by the exchange\n")
    assert validate_reference(reference_copy) == []
    summary = build(now=FUTURE)  # the override alone rebuilds its day (and the days around it)
    assert summary.partitions == 3 and summary.accepted == 1
    bar = read_bars("5m").set_index("bucket_start").loc[pd.Timestamp("2026-01-06 01:00", tz="UTC")]
    assert bar["close"] == candles.at[300, "close"]
    flag = silver_frame(data_dir, "silver/price_quality").iloc[0]
    assert (flag["decision"], flag["accepted_by"], flag["override_reason"]) == (
        "accepted_by_override", "risk-ops", "auction print confirmed by the exchange")
    assert flag["accepted_at"] == pd.Timestamp("2026-01-07 09:00", tz="UTC")
    assert build(now=FUTURE).partitions == 0


def test_reference_validate_names_every_bad_override_row(reference_copy):
    path = reference_copy / "price_overrides.csv"
    path.write_text("product_id,granularity,bucket_start,accepted_by,accepted_at,reason\n"
                    "NOPE-USD,300,2026-01-06T01:00:00Z,ops,2026-01-07T09:00:00Z,why\n"
                    "BTC-USD,120,2026-01-06T01:00:00Z,ops,2026-01-07T09:00:00Z,why\n"
                    "BTC-USD,300,2026-01-06T01:02:00Z,ops,2026-01-07T09:00:00Z,why\n"
                    "BTC-USD,300,2026-01-06T01:05:00Z,,yesterday,\n")
    assert validate_reference(reference_copy) == [
        f"{path}:2: unknown product 'NOPE-USD': not in the instrument master",
        f"{path}:3: granularity '120' must be 60, 300, 900, 3600, 21600 or 86400",
        f"{path}:4: bucket_start '2026-01-06T01:02:00Z' must be an ISO 8601 UTC time on the 300s grid (as in "
        "silver/price_quality)",
        f"{path}:5: accepted_at 'yesterday' must be an ISO 8601 UTC time",
        f"{path}:5: accepted_by and reason are required (who accepted the print, and why)",
    ]
    with pytest.raises(ValidationError, match=r"5 invalid row\(s\) in price_overrides.csv; nothing loaded"):
        load_price_overrides(dataclasses.replace(get_settings(), reference_dir=reference_copy))


def test_rules_are_the_documented_ones():
    doc = (Path(__file__).resolve().parents[3] / "docs/data_quality.md").read_text()
    assert all(f"`{rule}`" in doc for rule in RULES)


def test_a_daily_close_the_gate_holds_out_is_not_brought_back_by_minutes_that_agree_with_it(data_dir):
    """A feed prints BTC-USD 100x for the whole of 2026-01-03, its minute candles and its daily candle alike, and
    back the next day. Minute by minute it is one jump up and one down (no single-candle spike); day by day the
    daily candle is a spike and `spike_revert` excludes it. But the day's bar came from the minutes (the finest
    candles present), at the same 100x close: the risk history held a price the gate had held out, and the report,
    seeing the day's bar standing, said complete. Now the day has no daily bar (as when its only candle is
    excluded; the report names the print): the minutes that agree with an excluded daily close do not replace it.
    The other days' bars are those of the clean data; incremental equals full refresh."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    minutes = minute_candles("BTC-USD", start, 5 * 1440, seed=3)
    bad_day = minutes["bucket_start"].dt.day == 3
    minutes.loc[bad_day, ["open", "high", "low", "close"]] *= 100
    daily = daily_candles(minutes).assign(product_id="BTC-USD")
    write_batch(data_dir, pd.concat([daily, minutes], ignore_index=True), "all", start + timedelta(days=6))
    build(now=FUTURE)
    flags = silver_frame(data_dir, "silver/price_quality")
    assert list(zip(flags["bucket_start"], flags["granularity"], flags["rule"], flags["decision"], strict=True)) \
        == [(pd.Timestamp("2026-01-03", tz="UTC"), 86_400, "spike_revert", "excluded")]
    bars = read_bars("1d").set_index("price_date")
    assert list(bars.index.day) == [1, 2, 4, 5], bars["close"]
    clean = daily.set_index(daily["bucket_start"].dt.day)["close"]
    assert bars["close"].tolist() == clean.loc[[1, 2, 4, 5]].tolist()
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental


def test_a_finished_day_without_a_daily_candle_whose_minutes_stop_early_is_not_a_fresh_close_for_risk(
        data_dir, book_reference, monkeypatch):
    """BTC-USD's 1-minute fetch of 2026-01-05 stopped at 10:00 (nothing after it, no daily candle fetched); the
    afternoon traded 20% higher. The day's bar came from the 600 minutes, closing at the 09:59 price, with only
    is_complete = false to say so: the risk run read it as the day's close (price_date 2026-01-05, not stale), so
    the report's completeness check was green over a day whose close nobody knows. As with a daily candle against
    such minutes, they make no daily bar: the risk run values the holding at the last close it has, flagged stale
    (the report names the product and the day). Incremental equals full refresh; once the daily candle is fetched
    it gives the bar."""
    from etl.commits import read_entry, read_manifest, risk_manifest
    from etl.risk import run_risk
    from etl.storage import Store

    book_reference("portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
                   "P1,BTC and ETH,USD,1000000,1,1\n",
                   "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
                   "P1,BTC-USD,2025-10-01,1,90\nP1,ETH-USD,2025-10-01,1,90\n")
    for key, value in {"RISK_MC_SCENARIOS": "200", "RISK_BACKTEST_DAYS": "5", "RISK_VAR_LOOKBACK_DAYS": "20",
                       "PIPELINE_DAILY_HISTORY_DAYS": "40"}.items():
        monkeypatch.setenv(key, value)
    day = datetime(2026, 1, 5, tzinfo=UTC)
    history = [minute_candles(p, day - timedelta(days=40), 40, step=86_400, seed=s)
               for p, s in (("BTC-USD", 5), ("ETH-USD", 6))]
    eth_day = minute_candles("ETH-USD", day, 1, step=86_400, seed=7)
    minutes = minute_candles("BTC-USD", day, 1440, seed=3)
    minutes.loc[600:, ["open", "high", "low", "close"]] *= 1.2  # the afternoon trades 20% higher
    write_batch(data_dir, pd.concat([*history, eth_day], ignore_index=True), "daily", day + timedelta(days=1))
    write_batch(data_dir, minutes[:600], "morning", day + timedelta(hours=10))
    build(now=FUTURE)
    run_risk(as_of=day.date(), settings=get_settings())
    store = Store.from_uri(str(data_dir))
    manifest = read_manifest(store, risk_manifest(day.date()))
    pos = read_entry(store, manifest["files"][f"positions_valued/as_of_date={day.date()}"]).to_pandas() \
        .set_index("product_id")
    assert (pd.Timestamp(pos.at["BTC-USD", "price_date"]), bool(pos.at["BTC-USD", "is_stale"])) == (
        pd.Timestamp("2026-01-04"), True)
    assert (pd.Timestamp(pos.at["ETH-USD", "price_date"]), bool(pos.at["ETH-USD", "is_stale"])) == (
        pd.Timestamp("2026-01-05"), False)
    assert pd.Timestamp("2026-01-05") not in set(read_bars("1d", ["BTC-USD"])["price_date"])
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental

    # the daily candle, fetched after the day, is the exchange's record of the whole day: it gives the bar
    whole = minutes.iloc[[0]].assign(granularity=86_400, high=minutes["high"].max(), low=minutes["low"].min(),
                                     close=minutes["close"].iat[-1], volume=minutes["volume"].sum())
    write_batch(data_dir, whole, "daily-btc", day + timedelta(days=1, hours=1))
    build(now=FUTURE)
    bar = read_bars("1d", ["BTC-USD"]).set_index("price_date").loc[pd.Timestamp("2026-01-05")]
    assert (bar["close"], bar["source_granularity"]) == (minutes["close"].iat[-1], 86_400)


def test_a_day_built_while_open_loses_its_bar_from_minutes_that_stop_early_once_it_is_over(data_dir):
    """Silver ran at 10:05 on 2026-01-05 (the day's bar is the day so far, from its 600 minutes), then the fetches
    failed: no new bronze. The next build, after the day ended, rebuilds it (its record says it was open): its
    minutes no longer make a bar, as a full refresh says."""
    day = datetime(2026, 1, 5, tzinfo=UTC)
    daily = minute_candles("BTC-USD", day - timedelta(days=3), 3, step=86_400, seed=5)
    write_batch(data_dir, daily, "daily", day)
    write_batch(data_dir, minute_candles("BTC-USD", day, 600, seed=3), "morning", day + timedelta(hours=10))
    build(now=day + timedelta(hours=10, minutes=5))
    assert read_bars("1d").set_index("price_date").at[pd.Timestamp("2026-01-05"), "n_candles"] == 600
    assert build(now=day + timedelta(hours=11)).partitions == 0  # still open, nothing new: nothing to rebuild
    assert build(now=FUTURE).partitions > 0
    assert list(read_bars("1d")["price_date"].dt.day) == [2, 3, 4]
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental


def test_the_latest_candle_after_a_missing_day_is_judged_against_the_close_before_the_gap(data_dir):
    """BTC-USD's daily candle of 2026-01-09 is missing and the latest, 2026-01-10's, closes 1000x off. With no
    previous candle within a day it was not `jump_unconfirmed`, and with no next candle not `jump_unanchored`: no
    rule judged it and it became the day's bar (a close of 100,000 for the risk run, and nothing for the report to
    name). It is judged against the close before the gap (2026-01-08, two days before: inside the context silver
    reads) and held out as `jump_unconfirmed`; once the next candle comes it is `jump_unanchored`, as before."""
    daily = minute_candles("BTC-USD", datetime(2026, 1, 1, tzinfo=UTC), 11, step=86_400, seed=5)
    daily.loc[9, ["close", "high"]] *= 1000  # 2026-01-10
    daily = daily.drop(index=8)               # 2026-01-09 missing
    write_batch(data_dir, daily.iloc[:-1], "d1", datetime(2026, 1, 11, tzinfo=UTC))
    build(now=FUTURE)
    assert (data_dir / "silver/price_quality").exists(), read_bars("1d")["close"].max()  # was: no flag, a bar
    flags = silver_frame(data_dir, "silver/price_quality")
    assert list(zip(flags["bucket_start"].dt.day, flags["rule"], strict=True)) == [(10, "jump_unconfirmed")]
    assert "from the previous close 99.7" in flags["evidence"].iat[0]
    bars = read_bars("1d")
    assert list(bars["price_date"].dt.day) == [1, 2, 3, 4, 5, 6, 7, 8] and bars["close"].max() < 200
    write_batch(data_dir, daily.iloc[[-1]], "d2", datetime(2026, 1, 12, tzinfo=UTC))  # 2026-01-11, back at 100
    build(now=FUTURE)
    flags = silver_frame(data_dir, "silver/price_quality")
    assert list(zip(flags["bucket_start"].dt.day, flags["rule"], strict=True)) == [  # as before this fix
        (10, "jump_unanchored"), (11, "jump_unconfirmed")]
    incremental = silver_files(data_dir)
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == incremental

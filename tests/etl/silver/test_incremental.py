"""Silver: bars equal brute-force aggregations, late data, reruns, full refresh == incremental, quality, real data."""

from __future__ import annotations

import json
import posixpath
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.errors import ValidationError
from etl.lake import Lake
from etl.silver import bars as bars_module
from etl.silver import build, read_bars, read_candles
from etl.silver.bars import aggregate, latest_per_key
from etl.silver.incremental import SILVER_TABLES
from etl.storage import Store
from tests.support.delta_reader import EXTENSION, duckdb_frame
from tests.support.silver_sample import silver_file, silver_read

# ../shared/ beside the project root (found upward, so a git worktree one level deeper finds it too)
SHARED_DATA = next(p / "shared/data/coinbase" for p in Path(__file__).resolve().parents
                   if (p / "shared/data/coinbase").is_dir())
REAL_FILE = SHARED_DATA / "BTC-USD_300s_2025-07-01_2026-01-22.csv"
FUTURE = datetime(2030, 1, 1, tzinfo=UTC)  # `now` for builds whose data must not trip not_in_future
T0 = datetime(2026, 1, 5, tzinfo=UTC)


# ---- helpers: bronze written the way etl/bronze.py writes it (columns and paths of CONTRACT.md) ------------------
def write_batch(data_dir: Path, candles: pd.DataFrame, batch_id: str, ingested_at: datetime,
                commit: bool = True) -> list[str]:
    """One bronze batch: a Parquet file per (product, date) partition, then its Delta commit (none when `commit`
    is False: a batch whose writer died before committing)."""
    from etl import candles as table

    store = Store.from_uri(str(data_dir))
    candles = candles.copy()
    candles["bucket_start"] = pd.to_datetime(candles["bucket_start"], utc=True)
    if "granularity" not in candles:
        candles["granularity"] = 60
    files = []
    for (product, day), part in candles.groupby(["product_id", candles["bucket_start"].dt.strftime("%Y-%m-%d")]):
        n = len(part)
        rows = pa.table({
            "bucket_start": pa.array(part["bucket_start"], pa.timestamp("us", tz="UTC")),
            **{c: pa.array(part[c].to_numpy(dtype=float)) for c in ("open", "high", "low", "close", "volume")},
            "granularity": pa.array(part["granularity"].to_numpy(dtype=np.int64)),
            "raw": pa.array(["[]"] * n), "batch_id": pa.array([batch_id] * n),
            "ingested_at": pa.array([ingested_at] * n, pa.timestamp("us", tz="UTC")),
            "source": pa.array(["test"] * n),
        })
        files.append(table.write_file(store, product, day, f"{batch_id}.parquet", rows))
    rels = [f"{table.CANDLES_DIR}/{f.path}" for f in files]
    if commit:
        commit_batch(data_dir, rels, batch_id)
    return rels


def commit_batch(data_dir: Path, rels: list[str], batch_id: str) -> int:
    """Commit a batch's files (paths relative to the data root) to the bronze table, as an ingest does last."""
    from etl import candles as table
    from etl.lake import DataFile, Lake

    store = Store.from_uri(str(data_dir))
    files = [DataFile(posixpath.relpath(rel, table.CANDLES_DIR), (data_dir / rel).stat().st_size,
                      dict(zip(table.KEYS, table.partition_of(rel), strict=True)),
                      pq.ParquetFile(data_dir / rel).metadata.num_rows) for rel in rels]
    return table.commit(store, Lake(str(data_dir)), files, {table.BATCH_ID: batch_id})


def minute_candles(product: str, start: datetime, minutes: int, seed: int = 0, step: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, minutes)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 5e-4, minutes)) * close
    return pd.DataFrame({
        "product_id": product,
        "bucket_start": [start + timedelta(seconds=step * i) for i in range(minutes)],
        "open": open_, "high": np.maximum(open_, close) + spread, "low": np.minimum(open_, close) - spread,
        "close": close, "volume": rng.uniform(0.1, 5, minutes), "granularity": step,
    })


def silver_files(data_dir: Path) -> dict[str, bytes]:
    """The current file of each partition of the silver tables (from their logs; one per partition), named
    `<partition>/part-0.parquet` -> its bytes."""
    store, files = Store.from_uri(str(data_dir)), {}
    for table in SILVER_TABLES:
        folders = [posixpath.dirname(f) for f in Lake.of(store).files(table) or []]
        assert len(folders) == len(set(folders)), f"{table}: a partition with two files"
        files |= {posixpath.join(folder[len("silver/"):], "part-0.parquet"): (data_dir / f).read_bytes()
                  for folder, f in zip(folders, Lake.of(store).files(table) or [], strict=True)}
    return dict(sorted(files.items()))


# ---- the maths: every bar equals a brute-force aggregation of its candles ----------------------------------------
def brute_force(rows: list[dict], bar_seconds: int, granularities: tuple[int, ...]) -> dict:
    latest: dict = {}
    for r in rows:  # dedup: latest ingestion, then greatest batch id
        key = (r["product_id"], r["granularity"], r["ts"])
        if key not in latest or (r["ingested"], r["batch"]) > (latest[key]["ingested"], latest[key]["batch"]):
            latest[key] = r
    bars = defaultdict(list)
    for r in latest.values():
        if r["granularity"] in granularities:
            bars[(r["product_id"], r["ts"] // bar_seconds * bar_seconds)].append(r)
    out = {}
    for key, members in bars.items():
        finest = min(m["granularity"] for m in members)
        members = sorted((m for m in members if m["granularity"] == finest), key=lambda m: m["ts"])
        volume = sum(m["volume"] for m in members)
        typical = [(m["high"] + m["low"] + m["close"]) / 3 for m in members]
        vwap = (sum(m["volume"] * t for m, t in zip(members, typical, strict=True)) / volume if volume > 0
                else sum(typical) / len(typical))
        out[key] = {"open": members[0]["open"], "high": max(m["high"] for m in members),
                    "low": min(m["low"] for m in members), "close": members[-1]["close"], "volume": volume,
                    "vwap": vwap, "n_candles": len(members), "is_complete": len(members) * finest == bar_seconds,
                    "first": members[0]["ts"], "last": members[-1]["ts"], "granularity": finest}
    return out


candle_rows = st.lists(st.fixed_dictionaries({
    "product_id": st.sampled_from(["BTC-USD", "ETH-USD"]),
    "granularity": st.sampled_from([60, 60, 60, 300, 86400]),
    "slot": st.integers(0, 40),                 # minutes after 23:40, so bars cross midnight
    "ingested": st.integers(0, 3), "batch": st.sampled_from(["b1", "b2"]),
    "open": st.floats(1, 1e5), "high": st.floats(1, 1e5), "low": st.floats(1, 1e5), "close": st.floats(1, 1e5),
    "volume": st.sampled_from([0.0, 0.5, 1.25, 3.0, 1e-8, 250.0]),
}), min_size=1, max_size=60)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candle_rows)
def test_every_bar_equals_brute_force_aggregation(rows):
    base = int(datetime(2026, 1, 1, 23, 40, tzinfo=UTC).timestamp())
    for r in rows:  # align each candle to its granularity, as the exchange does
        r["ts"] = (base + 60 * r["slot"]) // r["granularity"] * r["granularity"]
    table = pa.table({
        "product_id": [r["product_id"] for r in rows],
        "bucket_start": pa.array([r["ts"] * 1_000_000 for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
        **{m: [float(r[m]) for r in rows] for m in ("open", "high", "low", "close", "volume")},
        "granularity": pa.array([r["granularity"] for r in rows], pa.int64()),
        "ingested_at": pa.array([r["ingested"] for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
        "batch_id": [r["batch"] for r in rows],
    })
    unique = latest_per_key(table)
    for bar_seconds, grans in ((300, (60, 300)), (86400, (60, 300, 900, 3600, 21600, 86400))):
        expected = brute_force(rows, bar_seconds, grans)
        got = aggregate(unique, bar_seconds, grans).to_pylist()
        assert len(got) == len(expected)
        keys = [(b["product_id"], b["bar_start"] // 1_000_000) for b in got]
        assert keys == sorted(expected)  # sorted by product, then time
        for key, bar in zip(keys, got, strict=True):
            want = expected[key]
            for m in ("open", "high", "low", "close", "n_candles", "is_complete"):
                assert bar[m] == want[m], (key, m)
            assert bar["volume"] == pytest.approx(want["volume"], rel=1e-12)
            assert bar["vwap"] == pytest.approx(want["vwap"], rel=1e-9)
            assert bar["source_granularity"] == want["granularity"]
            assert int(bar["first_candle_at"].timestamp()) == want["first"]
            assert int(bar["last_candle_at"].timestamp()) == want["last"]
        # chunked streaming gives the very same bits wherever the chunks end (full refresh == incremental)
        default = bars_module.CHUNK_ROWS
        try:
            for chunk_rows in (1, 3, 7):
                bars_module.CHUNK_ROWS = chunk_rows
                assert aggregate(latest_per_key(table), bar_seconds, grans).to_pylist() == got
        finally:
            bars_module.CHUNK_ROWS = default


# ---- incremental build --------------------------------------------------------------------------------------------
def test_build_writes_partitioned_bars_with_contract_columns(data_dir):
    candles = minute_candles("BTC-USD", T0, 2 * 1440)
    candles = candles.drop(index=[7, 8]).reset_index(drop=True)  # a gap: bucket 00:05 has 3 of 5 candles
    write_batch(data_dir, candles, "b1", T0 + timedelta(days=2))
    summary = build(now=FUTURE)

    assert summary.rows_in == 2 * 1440 - 2 and summary.rows_out == 2 * 288 and summary.partitions == 2
    assert summary.incomplete_bars == 1 and summary.gaps == 1 and summary.quarantined == 0
    files = silver_files(data_dir)
    assert set(files) == {"bars_5m/product_id=BTC-USD/date=2026-01-05/part-0.parquet",
                          "bars_5m/product_id=BTC-USD/date=2026-01-06/part-0.parquet",
                          "bars_1d/product_id=BTC-USD/year=2026/part-0.parquet"}
    bars = read_bars("5m", ["BTC-USD"])
    assert list(bars.columns[:13]) == ["product_id", "bucket_start", "open", "high", "low", "close", "volume",
                                       "vwap", "n_candles", "is_complete", "quote_currency", "first_candle_at",
                                       "last_candle_at"]
    assert str(bars["bucket_start"].dtype) == "datetime64[us, UTC]"
    gap = bars.iloc[1]
    assert gap["n_candles"] == 3 and not gap["is_complete"] and gap["quote_currency"] == "USD"
    assert gap["first_candle_at"] == pd.Timestamp("2026-01-05 00:05", tz="UTC")
    assert gap["last_candle_at"] == pd.Timestamp("2026-01-05 00:09", tz="UTC")
    daily = read_bars("1d")
    assert list(daily["price_date"]) == [pd.Timestamp("2026-01-05"), pd.Timestamp("2026-01-06")]
    day1 = candles[candles["bucket_start"] < T0 + timedelta(days=1)]
    assert daily["open"].iat[0] == day1["open"].iat[0] and daily["close"].iat[0] == day1["close"].iat[-1]
    assert daily["high"].iat[0] == day1["high"].max() and daily["low"].iat[0] == day1["low"].min()
    assert daily["volume"].iat[0] == pytest.approx(day1["volume"].sum(), rel=1e-12)
    assert list(daily["n_candles"]) == [1438, 1440] and list(daily["is_complete"]) == [False, True]
    run_log = list((data_dir / "silver/_quality").glob("*.json"))
    assert len(run_log) == 1 and json.loads(run_log[0].read_text())["rows_out"] == 576


def test_late_correction_changes_exactly_its_bar(data_dir):
    write_batch(data_dir, minute_candles("BTC-USD", T0, 2 * 1440), "b1", T0 + timedelta(days=2))
    build(now=FUTURE)
    before_files, before_5m, before_1d = silver_files(data_dir), read_bars("5m"), read_bars("1d")

    corrected = minute_candles("BTC-USD", T0, 2 * 1440).iloc[[1440 + 603]]  # day 2, 10:03
    corrected = corrected.assign(close=corrected["close"] * 1.01, high=corrected["high"] * 1.02, volume=9.0)
    write_batch(data_dir, corrected, "b2", T0 + timedelta(days=3))
    summary = build(now=FUTURE)

    # the corrected day and the day before (the quality gate's context reaches one day either side); the day
    # before is rewritten with the same bytes
    assert summary.batches == 1 and summary.partitions == 2 and summary.rows_in == 2881 and summary.duplicates == 1
    after_files, after_5m, after_1d = silver_files(data_dir), read_bars("5m"), read_bars("1d")
    changed = {f for f in after_files if after_files[f] != before_files.get(f)}
    assert changed == {"bars_5m/product_id=BTC-USD/date=2026-01-06/part-0.parquet",
                       "bars_1d/product_id=BTC-USD/year=2026/part-0.parquet"}
    diff = (after_5m.drop(columns="vwap") != before_5m.drop(columns="vwap")).any(axis=1)
    assert list(after_5m.loc[diff, "bucket_start"]) == [pd.Timestamp("2026-01-06 10:00", tz="UTC")]
    bar = after_5m.loc[diff].iloc[0]
    assert bar["high"] == corrected["high"].iat[0] and bar["n_candles"] == 5
    assert (after_1d["price_date"] != before_1d["price_date"]).sum() == 0
    assert after_1d["volume"].iat[0] == before_1d["volume"].iat[0]          # the other day untouched
    assert after_1d["volume"].iat[1] > before_1d["volume"].iat[1]


def test_rerun_is_idempotent(data_dir):
    write_batch(data_dir, minute_candles("ETH-USD", T0, 600), "b1", T0 + timedelta(days=1))
    build(now=FUTURE)
    first = silver_files(data_dir)
    again = build(now=FUTURE)
    assert again.batches == 0 and again.partitions == 0 and again.rows_in == 0
    assert silver_files(data_dir) == first
    refresh = build(full_refresh=True, now=FUTURE)
    assert refresh.partitions == 1 and refresh.rows_out == 120
    assert silver_files(data_dir) == first
    assert len(read_bars("5m")) == 120  # no duplicates after three runs


def test_full_refresh_gives_the_same_bytes_as_incremental(tmp_path, monkeypatch):
    incremental, full = tmp_path / "inc", tmp_path / "full"
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(incremental))
    batches = [
        (pd.concat([minute_candles("BTC-USD", T0, 1500), minute_candles("ETH-BTC", T0, 300, seed=1)]), "b1"),
        (minute_candles("BTC-USD", T0 + timedelta(minutes=1490), 400, seed=2), "b2"),  # overlap: revisions
        (minute_candles("BTC-USD", T0 - timedelta(days=40), 3, seed=3, step=86400), "b3"),  # daily history
        (minute_candles("ETH-BTC", T0 + timedelta(minutes=5), 3, seed=4).assign(low=-1.0), "b4"),  # quarantined
    ]
    for i, (candles, batch) in enumerate(batches):
        write_batch(incremental, candles, batch, T0 + timedelta(days=2, hours=i))
        build(now=FUTURE)
    shutil.copytree(incremental / "bronze", full / "bronze")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(full))
    summary = build(full_refresh=True, now=FUTURE)

    assert summary.quarantined_by_rule["price_positive"] == 3
    inc_files, full_files = silver_files(incremental), silver_files(full)
    assert sorted(inc_files) == [
        "bars_1d/product_id=BTC-USD/year=2025/part-0.parquet", "bars_1d/product_id=BTC-USD/year=2026/part-0.parquet",
        # no ETH-BTC daily bar: its minutes of 2026-01-05 stop at 05:00, the day is over and has no daily candle
        "bars_5m/product_id=BTC-USD/date=2026-01-05/part-0.parquet",
        "bars_5m/product_id=BTC-USD/date=2026-01-06/part-0.parquet",
        "bars_5m/product_id=ETH-BTC/date=2026-01-05/part-0.parquet",
        "quarantine/product_id=ETH-BTC/date=2026-01-05/part-0.parquet",
    ]
    assert inc_files.keys() == full_files.keys()
    assert all(inc_files[f] == full_files[f] for f in inc_files)


def test_quality_rules_quarantine_with_their_names(data_dir):
    candles = minute_candles("BTC-USD", T0, 10)
    broken = {0: ("price_positive", {"open": -1.0}), 1: ("low_le_open", {"low": 1e9, "high": 2e9}),
              2: ("low_le_close", {"close": 1.0, "open": 1e9, "high": 2e9}),
              3: ("high_ge_open", {"open": 1e9}), 4: ("high_ge_close", {"close": 1e9}),
              5: ("volume_non_negative", {"volume": -3.0}), 6: ("finite_values", {"close": np.nan})}
    for i, (_, values) in broken.items():
        for col, v in values.items():
            candles.loc[i, col] = v
    future = minute_candles("BTC-USD", T0 + timedelta(hours=2), 1).assign(bucket_start=[T0 + timedelta(hours=2)])
    write_batch(data_dir, pd.concat([candles, future]), "b1", T0)
    summary = build(now=T0 + timedelta(hours=1))

    expected = {rule: 1 for rule, _ in broken.values()} | {"not_in_future": 1}
    assert {r: n for r, n in summary.quarantined_by_rule.items() if n} == expected
    quarantine = pq.read_table(silver_file(data_dir, "silver/quarantine/product_id=BTC-USD/date=2026-01-05/part-0.parquet"))
    assert quarantine.column("rule").to_pylist() == [broken[i][0] for i in range(7)] + ["not_in_future"]
    assert quarantine.column("batch_id").to_pylist() == ["b1"] * 8
    assert "low_le_close" in quarantine.column("failed_rules")[2].as_py()
    bars = read_bars("5m")  # bucket 00:00 lost all five candles (absent), bucket 00:05 kept three
    assert list(bars["bucket_start"]) == [pd.Timestamp(T0 + timedelta(minutes=5))]
    assert list(bars["n_candles"]) == [3] and not bars["is_complete"].iat[0]
    clean = read_candles(now=T0 + timedelta(hours=1))
    assert len(clean) == 3 and not clean["close"].isna().any()


def test_a_volume_whose_traded_value_overflows_is_quarantined_not_an_infinite_vwap(data_dir):
    """A finite but absurd volume (1e308, or 1e306 twice in a day at a price of 100) passed every row rule and
    became an infinite (or NaN) volume and VWAP in the 5-minute and daily bars. A candle whose volume, or
    volume x high, would overflow summed over a day of candles of its granularity is quarantined."""
    candles = minute_candles("BTC-USD", T0, 10)
    candles.loc[1, "volume"] = 1e308
    candles.loc[[6, 7], "volume"] = 1e306
    write_batch(data_dir, candles, "b1", T0 + timedelta(minutes=10))
    summary = build(now=T0 + timedelta(minutes=10))  # the day so far
    assert {r: n for r, n in summary.quarantined_by_rule.items() if n} == {"traded_value_finite": 3}
    for kind, n_candles in (("5m", [4, 3]), ("1d", [7])):
        bars = read_bars(kind)
        assert bars["n_candles"].tolist() == n_candles
        assert np.isfinite(bars[["volume", "vwap"]].to_numpy()).all()
    keep = candles.drop(index=[1, 6, 7])
    assert read_bars("1d")["volume"].iat[0] == pytest.approx(keep["volume"].sum(), rel=1e-12)


def test_unknown_product_names_the_product_and_the_master_file(data_dir):
    write_batch(data_dir, minute_candles("FOO-USD", T0, 5), "b1", T0)
    with pytest.raises(ValidationError, match=r"FOO-USD.*instruments\.csv"):
        build(now=FUTURE)


def test_read_candles_deduplicates_and_filters(data_dir):
    candles = minute_candles("BTC-USD", T0, 20)
    write_batch(data_dir, candles, "b1", T0)
    write_batch(data_dir, candles.iloc[[4]].assign(close=123.0, high=999.0), "b2", T0 + timedelta(minutes=5))
    got = read_candles(["BTC-USD"], start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=6))
    assert list(got.columns) == ["product_id", "bucket_start", "open", "high", "low", "close", "volume"]
    assert len(got) == 5 and got["close"].iat[2] == 123.0
    assert read_candles(["ETH-USD"]).empty
    assert read_bars("5m", ["BTC-USD"]).empty  # nothing built yet


# ---- the real-data check --------------------------------------------------------------------------------------------
def test_real_btc_5m_candles_give_the_daily_bars_of_an_independent_aggregation(data_dir):
    raw = pd.read_csv(REAL_FILE)
    candles = raw.assign(product_id="BTC-USD", bucket_start=pd.to_datetime(raw["timestamp"], utc=True),
                         granularity=300)
    fetched = datetime(2026, 1, 22, 19, 40, tzinfo=UTC)  # during its last day: that day's bar is the day so far
    write_batch(data_dir, candles, "real", fetched)
    summary = build(now=fetched)
    assert summary.quarantined == 0 and summary.rows_in == len(raw)

    expected = duckdb.sql(f"""
        select cast(timestamp as date) as day, first(open order by timestamp) as open, max(high) as high,
               min(low) as low, last(close order by timestamp) as close, sum(volume) as volume,
               sum(volume * (high + low + close) / 3) / sum(volume) as vwap, count(*) as n
        from read_csv('{REAL_FILE}', timestampformat='%Y-%m-%d %H:%M:%S') group by all order by day
    """).df()
    daily = read_bars("1d", ["BTC-USD"])
    assert len(daily) == len(expected) == 206
    assert list(daily["price_date"].dt.date) == list(pd.to_datetime(expected["day"]).dt.date)
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(daily[col].to_numpy(), expected[col].to_numpy())
    np.testing.assert_allclose(daily["volume"], expected["volume"], rtol=1e-12)
    np.testing.assert_allclose(daily["vwap"], expected["vwap"], rtol=1e-12)
    np.testing.assert_array_equal(daily["n_candles"], expected["n"])
    assert (daily["source_granularity"] == 300).all()
    gap_day = daily.set_index(daily["price_date"].dt.date).loc[date(2025, 10, 25)]
    assert gap_day["n_candles"] == 288 - 70 and not gap_day["is_complete"]
    assert daily["is_complete"].sum() == (expected["n"] == 288).sum()

    bars = read_bars("5m", start=date(2025, 7, 1), end=date(2025, 7, 1))  # 300s candles pass through as bars
    assert len(bars) == 288 and bars["is_complete"].all() and (bars["n_candles"] == 1).all()
    np.testing.assert_array_equal(bars["close"].to_numpy(), raw["close"].to_numpy()[:288])


# ---- end to end through the real simulator (HTTP) and the real bronze module ------------------------------------------
def test_5m_bars_from_ingested_1m_candles_equal_the_exchange_own_5m_candles(data_dir, simulator):
    from etl.bronze import ingest
    from etl.simulator import candles as model_candles

    start, end = datetime(2026, 1, 5, 22, tzinfo=UTC), datetime(2026, 1, 6, 2, tzinfo=UTC)  # crosses midnight
    ingest(products=["ETH-USD"], start=start, end=end, granularity=60, source="simulator")
    summary = build(now=FUTURE)
    assert summary.batches == 1 and summary.partitions == 2 and summary.quarantined == 0

    own = model_candles(simulator.config.seed, "ETH-USD", int(start.timestamp()), int(end.timestamp()), 300)
    bars = read_bars("5m", ["ETH-USD"])
    assert len(bars) == len(own) == 48
    np.testing.assert_array_equal(bars["bucket_start"].astype("int64") // 10**6, own["time"].to_numpy())
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(bars[col].to_numpy(), own[col].to_numpy())
    np.testing.assert_allclose(bars["volume"].to_numpy(), own["volume"].to_numpy(), rtol=1e-9)


def test_real_file_replayed_through_bronze_gives_the_same_daily_bars(data_dir, make_simulator, monkeypatch, tmp_path):
    from etl.bronze import ingest

    replay = tmp_path / "replay"
    replay.mkdir()
    shutil.copy(REAL_FILE, replay / REAL_FILE.name)
    sim = make_simulator(replay_dir=str(replay), rate_limit_rps=0, burst=1000)
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    ingest(products=["BTC-USD"], start=datetime(2025, 12, 1, tzinfo=UTC), end=datetime(2026, 1, 1, tzinfo=UTC),
           granularity=300, source="simulator")
    build(now=FUTURE)

    raw = pd.read_csv(REAL_FILE, parse_dates=["timestamp"])
    december = raw[(raw["timestamp"] >= "2025-12-01") & (raw["timestamp"] < "2026-01-01")]
    expected = december.groupby(december["timestamp"].dt.date).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
        volume=("volume", "sum"), n=("open", "size"))
    daily = read_bars("1d", ["BTC-USD"])
    assert list(daily["price_date"].dt.date) == list(expected.index)
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(daily[col].to_numpy(), expected[col].to_numpy())
    np.testing.assert_allclose(daily["volume"].to_numpy(), expected["volume"].to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(daily["n_candles"].to_numpy(), expected["n"].to_numpy())


def test_simulator_late_corrections_change_exactly_the_revised_bars(data_dir, make_simulator, monkeypatch):
    from etl.bronze import ingest

    now = datetime(2026, 1, 7, 12, 0, tzinfo=UTC)
    sim = make_simulator(rate_limit_rps=0, burst=1000, late_corrections=True, now=lambda: now.timestamp())
    monkeypatch.setenv("COINBASE_API_URL", sim.url)
    ingest(products=["SOL-USD"], start=now - timedelta(hours=1), end=now, granularity=60, source="simulator", now=now)
    build(now=now)
    before = read_bars("5m", ["SOL-USD"])
    ingest(products=["SOL-USD"], start=now - timedelta(minutes=15), end=now, granularity=60, source="simulator",
           now=now)  # the overlap re-fetch: the last 10 minutes come back revised
    summary = build(now=now)
    after = read_bars("5m", ["SOL-USD"])

    assert sim.stats["late_corrected"] > 0 and summary.duplicates == 15
    changed = after.loc[(after["close"] != before["close"]) | (after["volume"] != before["volume"]), "bucket_start"]
    assert list(changed) == [pd.Timestamp("2026-01-07 11:50", tz="UTC"), pd.Timestamp("2026-01-07 11:55", tz="UTC")]
    candles = read_candles(["SOL-USD"], now=now)  # the latest version of every candle
    expected = candles.groupby(candles["bucket_start"].dt.floor("5min")).agg(
        close=("close", "last"), volume=("volume", "sum"), high=("high", "max"))
    np.testing.assert_array_equal(after["close"].to_numpy(), expected["close"].to_numpy())
    np.testing.assert_array_equal(after["high"].to_numpy(), expected["high"].to_numpy())
    np.testing.assert_allclose(after["volume"].to_numpy(), expected["volume"].to_numpy(), rtol=1e-12)


def test_a_bronze_batch_without_manifest_is_not_taken_in_and_full_refresh_agrees(tmp_path, monkeypatch):
    incremental, full = tmp_path / "inc", tmp_path / "full"
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(incremental))
    write_batch(incremental, minute_candles("BTC-USD", T0, 1440), "b1", T0 + timedelta(days=1))
    build(now=FUTURE)
    before = silver_files(incremental)
    # b2 is still being written (or its writer died): its files are there, its commit is not
    revised = minute_candles("BTC-USD", T0, 2 * 1440, seed=9)
    write_batch(incremental, revised, "b2", T0 + timedelta(days=2), commit=False)
    write_batch(incremental, minute_candles("ETH-USD", T0, 10), "b3", T0 + timedelta(days=2))
    build(now=FUTURE)
    inc_files = silver_files(incremental)
    assert {f: b for f, b in inc_files.items() if "BTC-USD" in f} == before  # b2 not taken half-way
    shutil.copytree(incremental / "bronze", full / "bronze")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(full))
    build(full_refresh=True, now=FUTURE)
    assert silver_files(full) == inc_files


@pytest.fixture
def tokyo_local_time(monkeypatch):
    """The process's local zone is UTC+9: a naive datetime read as local time would be 9 hours off."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_now_is_utc_in_read_candles_and_build(data_dir, tokyo_local_time):
    write_batch(data_dir, minute_candles("BTC-USD", T0, 10), "b1", T0)
    naive_now = (T0 + timedelta(hours=1)).replace(tzinfo=None)  # 01:00 UTC, after every candle
    assert len(read_candles(now=naive_now)) == 10
    summary = build(now=naive_now)
    assert summary.quarantined == 0 and summary.rows_out == 2


# ---- the rebuild route against the incremental route and the output of the code before it ------------------------
def silver_digest(data_dir: Path) -> str:
    """sha256 over every silver file's path and values, in path order. Floats are taken to 9 significant digits:
    their last bits differ between CPUs (summation order of the vectorised kernels), the values do not."""
    import hashlib

    digest = hashlib.sha256()
    for rel, data in silver_files(data_dir).items():
        table = pq.read_table(pa.BufferReader(data))
        digest.update(rel.encode())
        for name in table.column_names:
            values = table[name].to_pylist()
            text = [f"{v:.9g}" if isinstance(v, float) else repr(v) for v in values]
            digest.update(f"{name}:{'|'.join(text)}\n".encode())
    return digest.hexdigest()


# The digest of the silver that the code before the one-pass rebuild (commit 32d556a) wrote from this
# bronze, taken on the same machine as the code on main.
# (since the daily bars of ETH-BTC and ETH-USD for 2026-01-01, whose minutes stop at 02:50 and 05:00 with no daily
# candle, are gone: price_quality.uncovered_in_daily_bars; every other value as before)
BEFORE_DIGEST = "d9a8cfd2b29278fe29aa98730ce7622bd5ba48c22409a96c78850bf00f3052fe"


def test_rebuild_and_incremental_routes_write_the_values_the_previous_code_wrote(tmp_path, monkeypatch):
    incremental, full = tmp_path / "inc", tmp_path / "full"
    new_year = datetime(2025, 12, 31, 22, tzinfo=UTC)
    batches = [  # several products, a year boundary, revisions, 5-minute and daily candles, quarantined rows
        pd.concat([minute_candles("BTC-USD", new_year, 300, seed=1), minute_candles("ETH-BTC", new_year, 290, seed=2),
                   minute_candles("ETH-USD", new_year + timedelta(minutes=3), 200, seed=3).drop(index=[5, 6, 90])]),
        minute_candles("BTC-USD", new_year + timedelta(minutes=250), 100, seed=4),
        pd.concat([minute_candles("BTC-USD", new_year - timedelta(days=30), 40, seed=5, step=86400),
                   minute_candles("ETH-USD", new_year + timedelta(hours=5), 24, seed=6, step=300)]),
        minute_candles("ETH-BTC", new_year + timedelta(minutes=100), 12, seed=7).assign(low=-1.0),
        minute_candles("ETH-USD", new_year + timedelta(minutes=40), 30, seed=8).assign(volume=0.0),
    ]
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(incremental))
    for i, candles in enumerate(batches):  # the same batches into both roots: incremental builds fold their bronze
        write_batch(full, candles, f"b{i}", new_year + timedelta(days=2, hours=i))
        write_batch(incremental, candles, f"b{i}", new_year + timedelta(days=2, hours=i))
        build(now=FUTURE)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(full))
    summary = build(full_refresh=True, now=FUTURE)

    assert summary.quarantined == 12 and summary.duplicates == 50 + 12 + 30
    assert silver_files(full) == silver_files(incremental)
    assert silver_digest(full) == BEFORE_DIGEST


# ---- worker processes: the same files as one process, and a failed worker commits nothing ------------------------
def two_products_over_new_year() -> pd.DataFrame:
    new_year = datetime(2025, 12, 31, 23, tzinfo=UTC)  # 4 (product, year) chunks
    return pd.concat([minute_candles("BTC-USD", new_year, 180, seed=1), minute_candles("ETH-USD", new_year, 150, seed=2)])


def test_two_worker_processes_write_the_files_one_process_writes(tmp_path, monkeypatch):
    from etl.silver import incremental

    monkeypatch.setattr(incremental, "POOL_MIN_FILES", 0)  # a pool even for this small bronze
    one, two = tmp_path / "one", tmp_path / "two"
    write_batch(one, two_products_over_new_year(), "b1", T0)
    write_batch(one, minute_candles("BTC-USD", datetime(2026, 1, 1, tzinfo=UTC), 20, seed=3), "b2",
                T0 + timedelta(hours=1))  # revisions: the later batch wins
    shutil.copytree(one / "bronze", two / "bronze")
    summaries = {}
    for root, workers in ((one, "1"), (two, "2")):
        monkeypatch.setenv("PIPELINE_DATA_DIR", str(root))
        monkeypatch.setenv("PIPELINE_SILVER_WORKERS", workers)
        summaries[workers] = build(full_refresh=True, now=FUTURE)

    assert summaries["2"].partitions == 4 and summaries["2"].duplicates == 20 and summaries["2"].rows_out == 66
    for name in ("rows_in", "rows_out", "bars_1d", "duplicates", "partitions", "incomplete_bars"):
        assert getattr(summaries["1"], name) == getattr(summaries["2"], name), name
    assert silver_files(one) == silver_files(two)
    assert silver_read(one) == silver_read(two)


def test_a_failed_worker_leaves_the_previous_complete_state(data_dir, monkeypatch):
    from etl.silver import incremental

    monkeypatch.setattr(incremental, "POOL_MIN_FILES", 0)
    monkeypatch.setenv("PIPELINE_SILVER_WORKERS", "2")
    write_batch(data_dir, two_products_over_new_year(), "b1", T0)
    build(full_refresh=True, now=FUTURE)
    before_files, before_state = silver_files(data_dir), silver_read(data_dir)
    write_batch(data_dir, minute_candles("ETH-USD", datetime(2026, 1, 3, tzinfo=UTC), 30, seed=4), "b2", T0)
    blocked = data_dir / "silver/bars_5m/product_id=ETH-USD/date=2026-01-03"
    blocked.write_text("")  # a file where the worker must make the new day's folder: its write fails

    with pytest.raises(OSError):
        build(full_refresh=True, now=FUTURE)
    assert silver_read(data_dir) == before_state  # the commit never happened
    assert silver_files(data_dir) == before_files  # every file of the previous build, with its data

    blocked.unlink()
    summary = build(full_refresh=True, now=FUTURE)
    assert summary.partitions == 5
    assert "ETH-USD/2026-01-03" in silver_read(data_dir)["partitions"]
    assert len(read_bars("5m").query("product_id == 'ETH-USD'")) == 30 + 6


def test_worker_processes_die_with_a_killed_build():
    import psutil

    # two workers busy on a chunk each, then the build is SIGKILLed: no writer may outlive it (and its lock)
    script = "import time\nfrom etl.silver.incremental import _pool\nwith _pool(2) as m:\n    list(m(time.sleep, [60, 60]))"
    build_proc = subprocess.Popen([sys.executable, "-c", script])
    workers: list[psutil.Process] = []
    for _ in range(600):
        workers = [p for p in psutil.Process(build_proc.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        if len(workers) == 2:
            break
        time.sleep(0.05)
    assert len(workers) == 2, "the pool never started its two workers"
    build_proc.kill()
    build_proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []


@pytest.mark.skipif(EXTENSION is None, reason="duckdb-ext-delta is not installed (requirements-dev.txt)")
def test_duckdb_reads_exactly_the_committed_daily_bars_after_a_rebuild(data_dir):
    """A late batch rebuilds the year file: the superseded file stays on disk (time travel until vacuum), and
    DuckDB's delta reader, like read_bars, reads only the committed one."""
    write_batch(data_dir, minute_candles("BTC-USD", T0, 2 * 1440), "b1", T0 + timedelta(days=2))
    build(now=FUTURE)
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(days=1), 60, seed=9), "b2", T0 + timedelta(days=3))
    build(now=FUTURE)
    on_disk = list((data_dir / "silver/bars_1d").rglob("*.parquet"))
    assert len(on_disk) == 2 and len(Lake.of(Store.from_uri(str(data_dir))).files("silver/bars_1d")) == 1

    ours = read_bars("1d")
    theirs = duckdb_frame(str(data_dir / "silver/bars_1d"), exclude=("year",)).sort_values("price_date",
                                                                                         ignore_index=True)
    assert len(theirs) == len(ours) == 2
    columns = ["product_id", "open", "high", "low", "close", "volume", "vwap", "n_candles", "is_complete"]
    pd.testing.assert_frame_equal(theirs[columns], ours[columns], check_dtype=False)
    assert list(pd.to_datetime(theirs["price_date"])) == list(ours["price_date"])


def test_a_build_dying_between_its_tables_commits_is_repaired_by_the_next_build(data_dir, tmp_path, monkeypatch):
    """The build commits bars_5m, then dies before bars_1d (its last table, which records what it read): readers
    see the new 5-minute bars and the old daily bars; the next build finds the old record, rebuilds the same
    partitions, and silver equals a clean build of the same bronze."""
    write_batch(data_dir, minute_candles("BTC-USD", T0, 2 * 1440), "b1", T0 + timedelta(days=2))
    build(now=FUTURE)
    recorded = silver_read(data_dir)
    write_batch(data_dir, minute_candles("BTC-USD", T0 + timedelta(days=1), 60, seed=9), "b2", T0 + timedelta(days=3))
    commit = Lake.commit_files

    def dies_before_the_last(self, rel, *args, **kwargs):
        if rel == "silver/bars_1d":
            raise KeyboardInterrupt("killed")
        return commit(self, rel, *args, **kwargs)

    monkeypatch.setattr(Lake, "commit_files", dies_before_the_last)
    with pytest.raises(KeyboardInterrupt):
        build(now=FUTURE)
    monkeypatch.setattr(Lake, "commit_files", commit)
    assert silver_read(data_dir) == recorded                      # the record did not move
    assert build(now=FUTURE).partitions == 2                     # so the same partitions are rebuilt

    clean = tmp_path / "clean"
    shutil.copytree(data_dir / "bronze", clean / "bronze")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(clean))
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == silver_files(clean)


def test_a_bronze_partition_quarantined_whole_by_compaction_leaves_silver_as_a_full_refresh_leaves_it(
        data_dir, tmp_path, monkeypatch):
    """incremental.py's docstring: the partitions to rebuild come from "the files added or removed since the bronze
    version it last processed (... a compaction or a quarantined file is a change too)", and "a full refresh writes
    the same bytes as incremental runs". `python -m etl compact` quarantines every file of a partition (both
    corrupt) and removes them from bronze; the next incremental build drops the partition from its plan
    (`& parts.keys()`: it has no bronze file left) and never removes its silver bars, which a full refresh does."""
    from etl import candles
    from etl.compaction import compact
    from etl.storage import get_store
    from tests.etl.test_integrity import flip_page_bytes

    b1 = write_batch(data_dir, minute_candles("ETH-USD", T0, 600), "b1", T0 + timedelta(days=1))
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(days=1), 600, seed=1), "b0", T0 + timedelta(days=2))
    build(now=FUTURE)
    b2 = write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=300), 300, seed=2), "b2",
                     T0 + timedelta(days=3))
    for rel in (*b1, *b2):           # both files of 2026-01-05 go bad on disk (bit rot, a bad copy)
        flip_page_bytes(data_dir / rel)
    done = compact(before=date(2026, 1, 10))
    assert len(done.bad_files) == 2                                          # both quarantined, out of bronze
    assert not [f for f in candles.files(Lake.of(get_store())) if "date=2026-01-05" in f]

    build(now=FUTURE)                                                       # incremental: takes in the change
    incremental = silver_files(data_dir)
    full = tmp_path / "full"
    shutil.copytree(data_dir / "bronze", full / "bronze")
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(full))
    build(full_refresh=True, now=FUTURE)
    refreshed = silver_files(full)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(data_dir))
    days = sorted({str(d)[:10] for d in read_bars("5m")["bucket_start"]})
    assert sorted(incremental) == sorted(refreshed), (
        f"incremental silver holds {sorted(set(incremental) - set(refreshed))} that the full refresh of the same "
        f"bronze does not; 5-minute bars on days {days}")


def test_a_compact_vacuuming_silver_while_a_build_runs_does_not_fail_the_build(data_dir, tmp_path, monkeypatch):
    """docs/commit_protocol.md: `compact` "vacuums every Delta table past PIPELINE_LAKE_RETENTION_DAYS", silver
    included, and a silver build fails only when "another build committed to that table meanwhile". Past the
    retention every daily compact finds superseded silver files to delete, and delta-rs' vacuum then commits (VACUUM
    START/END: no row changes) to bars_5m and bars_1d. A build running meanwhile (the intraday DAG builds silver
    every 5 minutes) committed on top of the version it loaded, without retry: it failed with LakeConflict ("a
    concurrent writer changed the rows this commit replaces") after its first tables' commits, leaving price_quality
    new and the bars old. It must commit, and equal a clean build of the same bronze."""
    import os

    from etl.settings import PROJECT_ROOT
    from etl.silver import incremental

    write_batch(data_dir, minute_candles("ETH-USD", T0, 600), "b1", T0 + timedelta(days=1))
    build(now=FUTURE)
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=100), 300, seed=2), "b2",
                T0 + timedelta(days=2))
    build(now=FUTURE)                                  # superseded 5-minute and year files: vacuum has work
    write_batch(data_dir, minute_candles("ETH-USD", T0 + timedelta(minutes=200), 300, seed=3), "b3",
                T0 + timedelta(days=3))
    plan, compacted = incremental._plan, []

    def compact_meanwhile(*args, **kwargs):           # after the build loaded the silver tables, before it writes
        if not compacted:
            env = {**os.environ, "PIPELINE_LAKE_RETENTION_DAYS": "0"}
            compacted.append(subprocess.run([sys.executable, "-m", "etl", "compact", "--before", "2026-01-01"],
                                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300))
        return plan(*args, **kwargs)

    monkeypatch.setattr(incremental, "_plan", compact_meanwhile)
    summary = build(now=FUTURE)
    assert compacted[0].returncode == 0, compacted[0].stderr[-2000:]
    assert "0 Delta file(s) vacuumed" not in compacted[0].stdout + compacted[0].stderr
    assert summary.partitions == 1
    clean = tmp_path / "clean"
    shutil.copytree(data_dir / "bronze", clean / "bronze")
    monkeypatch.setattr(incremental, "_plan", plan)
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(clean))
    build(full_refresh=True, now=FUTURE)
    assert silver_files(data_dir) == silver_files(clean)

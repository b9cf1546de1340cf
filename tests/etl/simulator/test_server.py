"""The exchange simulator against the Coinbase contract (COINBASE.md), through its real HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from etl.errors import ConfigError, ValidationError
from etl.settings import DEFAULT_PRODUCTS, PROJECT_ROOT
from etl.simulator import (
    LATE_CORRECTION_MINUTES,
    UNIVERSE,
    Simulator,
    SimulatorConfig,
    aggregate,
    candle_arrays,
    candles,
)
from etl.simulator.server import MSG_TOO_MANY

REAL_DATA = Path(__file__).resolve().parents[4] / "shared/data/coinbase"  # beside the checkout, as in CI
T0 = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp())  # a Monday, 00:00 UTC
NOW = T0 + 3 * 86_400 + 12 * 3600 + 7 * 60 + 30         # the fixed clock: 2026-01-08 12:07:30
PRODUCT_FIELDS = {"id", "base_currency", "quote_currency", "quote_increment", "base_increment", "display_name",
                  "min_market_funds", "margin_enabled", "post_only", "limit_only", "cancel_only", "status",
                  "status_message", "trading_disabled", "fx_stablecoin", "auction_mode"}


@pytest.fixture
def sim(make_simulator):
    """Fault-free, unthrottled, with the clock fixed at NOW."""
    return make_simulator(rate_limit_rps=0, now=lambda: NOW)


def get(sim, path: str, **params) -> requests.Response:
    return requests.get(f"{sim.url}{path}", params=params, timeout=10)


def fetch(sim, product: str, start: int, end: int, granularity: int) -> list[list]:
    response = get(sim, f"/products/{product}/candles", granularity=granularity, start=start, end=end)
    assert response.status_code == 200, response.text
    return response.json()


def model_rows(product: str, start: int, end_inclusive: int, granularity: int) -> list[list]:
    """What the server should answer, from the pure model: newest first, wire order."""
    frame = candles(42, product, start, end_inclusive + 1, granularity)
    return frame[["time", "low", "high", "open", "close", "volume"]].iloc[::-1].to_numpy().tolist()


# ---- products ------------------------------------------------------------------------------------------------
def test_products_lists_the_universe_with_every_contract_field(sim):
    response = get(sim, "/products")
    assert response.status_code == 200
    products = {p["id"]: p for p in response.json()}
    assert set(DEFAULT_PRODUCTS) | {"ETH-BTC", "LUNA-USD", "XYZ-USD"} <= set(products)
    for product in products.values():
        assert PRODUCT_FIELDS <= set(product)
        assert isinstance(product["trading_disabled"], bool) and isinstance(product["quote_increment"], str)
    assert products["ETH-BTC"]["quote_currency"] == "BTC" and products["ETH-BTC"]["base_currency"] == "ETH"
    assert products["LUNA-USD"]["status"] == "delisted"
    assert products["XYZ-USD"]["trading_disabled"] is True and products["XYZ-USD"]["status"] == "online"
    assert products["BTC-USD"]["status"] == "online" and products["BTC-USD"]["trading_disabled"] is False


def test_one_product_and_unknown_product(sim):
    response = get(sim, "/products/ETH-USD")
    assert response.status_code == 200 and response.json()["id"] == "ETH-USD"
    for path in ("/products/FOO-USD", "/products/FOO-USD/candles"):
        response = get(sim, path)
        assert (response.status_code, response.json()) == (404, {"message": "NotFound"})


def test_products_subset_hides_the_others(make_simulator):
    sim = make_simulator(products=("BTC-USD", "ETH-USD"), rate_limit_rps=0)
    assert [p["id"] for p in get(sim, "/products").json()] == ["BTC-USD", "ETH-USD"]
    assert get(sim, "/products/SOL-USD/candles").status_code == 404


def test_unknown_paths_methods_and_head_get_404_json(sim):
    response = get(sim, "/nope")
    assert (response.status_code, response.json()) == (404, {"message": "NotFound"})
    response = requests.post(f"{sim.url}/products", data="x", timeout=10)
    assert (response.status_code, response.json()) == (404, {"message": "NotFound"})
    response = requests.head(f"{sim.url}/products", timeout=10)
    assert response.status_code == 404 and response.headers["Content-Type"].startswith("application/json")
    assert sim.stats["served_4xx"] == 3


def test_time_endpoint_follows_the_clock(sim):
    body = get(sim, "/time").json()
    assert body["epoch"] == NOW and body["iso"] == "2026-01-08T12:07:30Z"


# ---- candles: format and errors -----------------------------------------------------------------------------
def test_candles_are_numeric_arrays_newest_first_with_end_inclusive(sim):
    start = T0 + 3600
    response = get(sim, "/products/BTC-USD/candles", granularity=60, start=start, end=start + 299 * 60)
    rows = response.json()
    assert response.status_code == 200 and len(rows) == 300  # BTC never skips a minute
    assert all(len(r) == 6 and isinstance(r[0], int) and all(isinstance(x, float) for x in r[1:]) for r in rows)
    times = [r[0] for r in rows]
    assert times == sorted(times, reverse=True) and times[0] == start + 299 * 60 and times[-1] == start
    arr = np.array(rows)
    low, high, open_, close, volume = arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], arr[:, 5]
    assert (low <= np.minimum(open_, close)).all() and (high >= np.maximum(open_, close)).all()
    assert (volume > 0).all()
    assert rows == model_rows("BTC-USD", start, start + 299 * 60, 60)


def test_more_than_300_buckets_is_rejected(sim):
    for granularity in (60, 86_400):
        response = get(sim, "/products/BTC-USD/candles", granularity=granularity, start=T0,
                       end=T0 + 300 * granularity)
        assert (response.status_code, response.json()) == (400, {"message": MSG_TOO_MANY})
    assert MSG_TOO_MANY == ("granularity too small for the requested time range. Count of aggregations "
                            "requested exceeds 300")


@pytest.mark.parametrize("granularity", ["120", "abc", "0", "86401"])
def test_unsupported_granularity(sim, granularity):
    response = get(sim, "/products/BTC-USD/candles", granularity=granularity, start=T0, end=T0 + 3600)
    assert (response.status_code, response.json()) == (400, {"message": "Unsupported granularity"})


def test_delisted_product_candles_are_refused(sim):
    response = get(sim, "/products/LUNA-USD/candles", granularity=60, start=T0, end=T0 + 600)
    assert (response.status_code, response.json()) == (400, {"message": "Not allowed for delisted products"})
    assert get(sim, "/products/LUNA-USD").json()["status"] == "delisted"


def test_trading_disabled_product_still_serves_history(sim):
    assert len(fetch(sim, "XYZ-USD", T0, T0 + 299 * 60, 60)) > 200


def test_bad_times_are_400_with_a_message(sim):
    response = get(sim, "/products/BTC-USD/candles", granularity=60, start="yesterday", end=T0)
    assert response.status_code == 400 and "start" in response.json()["message"]
    response = get(sim, "/products/BTC-USD/candles", granularity=60, start=T0 + 600, end=T0)
    assert (response.status_code, response.json()) == (400, {"message": "start must be before end"})


def test_iso_and_unix_times_are_the_same_window(sim):
    iso = fetch(sim, "ETH-USD", "2026-01-05T01:00:00Z", "2026-01-05T02:00:00+00:00", 300)
    naive = fetch(sim, "ETH-USD", "2026-01-05T01:00:00", "2026-01-05 02:00:00", 300)
    unix = fetch(sim, "ETH-USD", T0 + 3600, T0 + 7200, 300)
    assert iso == naive == unix and len(unix) == 13


def test_start_is_rounded_down_to_its_bucket(sim):
    rows = fetch(sim, "BTC-USD", T0 + 3600 + 100, T0 + 3600 + 900, 300)
    assert [r[0] for r in rows] == [T0 + 3600 + 900, T0 + 3600 + 600, T0 + 3600 + 300, T0 + 3600]


@pytest.mark.parametrize("params", [{}, {"start": T0}, {"end": T0 + 3600}])
def test_missing_start_or_end_returns_the_300_buckets_ending_now(sim, params):
    response = get(sim, "/products/BTC-USD/candles", granularity=300, **params)
    rows = response.json()
    newest = NOW // 300 * 300
    assert response.status_code == 200 and len(rows) == 300
    assert rows[0][0] == newest and rows[-1][0] == newest - 299 * 300


def test_nothing_after_now_and_the_forming_bucket_is_partial(sim):
    rows = fetch(sim, "SOL-USD", NOW - 1800, NOW + 3600, 300)  # 11:37:30 is in the 11:35 bucket
    forming = NOW // 300 * 300  # 12:05, with minutes 12:05, 12:06, 12:07 started
    assert rows[0][0] == forming
    minutes_t, minutes_v = candle_arrays(42, "SOL-USD", forming, NOW + 1, 60)
    assert len(minutes_t) == 3
    agg_t, agg_v = aggregate(minutes_t, minutes_v, 300)
    assert rows[0] == [int(agg_t[0]), *agg_v[0].tolist()]
    full = candles(42, "SOL-USD", forming, forming + 300, 300)
    assert rows[0][5] < full["volume"].iloc[0]  # the completed bucket will have more volume
    assert rows[1:] == model_rows("SOL-USD", (NOW - 1800) // 300 * 300, forming - 1, 300)


# ---- determinism and aggregation ----------------------------------------------------------------------------
def test_candles_do_not_depend_on_how_windows_are_split_ordered_or_repeated(sim, make_simulator):
    start = T0 + 86_400 - 150 * 60  # straddles midnight: two cached days
    whole = fetch(sim, "AVAX-USD", start, start + 299 * 60, 60)
    second = fetch(sim, "AVAX-USD", start + 100 * 60, start + 299 * 60, 60)
    first = fetch(sim, "AVAX-USD", start, start + 99 * 60, 60)
    assert second + first == whole
    assert fetch(sim, "AVAX-USD", start, start + 299 * 60, 60) == whole
    other = make_simulator(rate_limit_rps=0, now=lambda: NOW)  # a fresh server, same seed
    assert fetch(other, "AVAX-USD", start, start + 299 * 60, 60) == whole
    reseeded = make_simulator(rate_limit_rps=0, now=lambda: NOW, seed=7)
    assert fetch(reseeded, "AVAX-USD", start, start + 299 * 60, 60) != whole


def test_the_model_is_pure_across_split_calls():
    whole = candles(42, "DOT-USD", T0, T0 + 2 * 86_400, 60)
    parts = pd.concat([candles(42, "DOT-USD", T0 + 86_400, T0 + 2 * 86_400, 60),
                       candles(42, "DOT-USD", T0, T0 + 86_400, 60)]).sort_values("time", ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts)


@pytest.mark.parametrize("product", ["BTC-USD", "ATOM-USD"])
def test_five_minute_candles_aggregate_the_one_minute_candles(sim, product):
    start = T0 + 6 * 3600
    five = fetch(sim, product, start, start + 59 * 300, 300)
    ones = np.array(fetch(sim, product, start, start + 299 * 60, 60))[::-1]
    buckets = ones[:, 0] // 300 * 300
    assert len(five) == len(np.unique(buckets))
    for row in five:
        minute = ones[buckets == row[0]]
        assert row[1] == minute[:, 1].min() and row[2] == minute[:, 2].max()
        assert row[3] == minute[0, 3] and row[4] == minute[-1, 4]
        assert row[5] == pytest.approx(minute[:, 5].sum(), rel=1e-12)


def test_hourly_and_daily_candles_aggregate_the_one_minute_candles():
    minutes = candles(42, "LINK-USD", T0, T0 + 86_400, 60)
    for granularity in (3600, 21_600, 86_400):
        coarse = candles(42, "LINK-USD", T0, T0 + 86_400, granularity)
        grouped = minutes.groupby(minutes["time"] // granularity * granularity)
        expected = pd.DataFrame({"time": grouped["time"].first() // granularity * granularity,
                                 "low": grouped["low"].min(), "high": grouped["high"].max(),
                                 "open": grouped["open"].first(), "close": grouped["close"].last(),
                                 "volume": grouped["volume"].sum()}).reset_index(drop=True)
        pd.testing.assert_frame_equal(coarse, expected, rtol=1e-12)


def test_illiquid_products_skip_minutes_and_majors_do_not():
    day = (T0, T0 + 86_400)
    assert len(candles(42, "BTC-USD", *day, 60)) == 1440
    atom = candles(42, "ATOM-USD", *day, 60)
    assert 0.75 * 1440 < len(atom) < 0.85 * 1440  # missing_prob 0.20
    assert UNIVERSE["ATOM-USD"].missing_prob == 0.20 and UNIVERSE["BTC-USD"].missing_prob == 0.0


def test_cross_pair_follows_its_legs():
    eth = candles(42, "ETH-USD", T0, T0 + 86_400, 60)
    btc = candles(42, "BTC-USD", T0, T0 + 86_400, 60)
    cross = candles(42, "ETH-BTC", T0, T0 + 86_400, 60).set_index("time")
    implied = (eth.set_index("time")["close"] / btc.set_index("time")["close"]).loc[cross.index]
    assert np.allclose(cross["close"], implied, rtol=2e-3)
    daily = candles(42, "ETH-BTC", T0 - 30 * 86_400, T0, 86_400)["close"].to_numpy()
    legs = (candles(42, "ETH-USD", T0 - 30 * 86_400, T0, 86_400)["close"]
            / candles(42, "BTC-USD", T0 - 30 * 86_400, T0, 86_400)["close"]).to_numpy()
    assert np.allclose(daily, legs, rtol=3e-4)  # day closes sit on the legs' anchors (up to rounding)


# ---- calibration --------------------------------------------------------------------------------------------
def test_realised_vol_of_a_year_of_daily_closes_matches_the_targets():
    end = T0
    ratios = {}
    for product in DEFAULT_PRODUCTS:
        closes = candles(42, product, end - 366 * 86_400, end, 86_400)["close"].to_numpy()
        assert len(closes) == 366
        realised = np.diff(np.log(closes)).std(ddof=1) * np.sqrt(365)
        ratios[product] = realised / UNIVERSE[product].annual_vol
    assert all(0.8 < r < 1.2 for r in ratios.values()), ratios
    assert 0.85 < np.mean(list(ratios.values())) < 1.15, ratios  # one regime is shared: the mean moves too
    targets = {p: UNIVERSE[p].annual_vol for p in ("BTC-USD", "ETH-USD", "SOL-USD")}
    assert targets["BTC-USD"] == 0.45 and 0.65 <= targets["ETH-USD"] <= 0.70 and targets["SOL-USD"] > 0.80


def test_universe_spreads_betas_volumes_and_prices():
    specs = [UNIVERSE[p] for p in DEFAULT_PRODUCTS]
    betas = [s.beta for s in specs]
    assert min(betas) <= 0.7 and max(betas) >= 1.5
    volumes = [s.daily_volume_usd for s in specs]
    assert max(volumes) / min(volumes) > 100
    assert all(0.9 <= s.annual_vol <= 1.3 for s in specs if s.id not in ("BTC-USD", "ETH-USD", "SOL-USD", "LTC-USD"))
    # realised USD volume follows the liquidity level (lognormal noise keeps the mean)
    for product in ("BTC-USD", "ATOM-USD"):
        week = candles(42, product, T0, T0 + 7 * 86_400, 86_400)
        usd = (week["volume"] * week["close"]).mean()
        assert 0.5 < usd / UNIVERSE[product].daily_volume_usd < 2.0


# ---- faults -------------------------------------------------------------------------------------------------
def test_fail_rate_gives_random_json_5xx_at_roughly_the_rate(make_simulator):
    sim = make_simulator(rate_limit_rps=0, fail_rate=0.3, now=lambda: NOW)
    statuses = []
    with requests.Session() as session:
        for _ in range(200):
            response = session.get(f"{sim.url}/products/BTC-USD/candles",
                                   params={"granularity": 60, "start": T0, "end": T0 + 600}, timeout=10)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                assert set(response.json()) == {"message"}
            else:
                assert response.json() == model_rows("BTC-USD", T0, T0 + 600, 60)  # faults never touch values
    failures = [s for s in statuses if s != 200]
    assert set(failures) <= {500, 502, 503, 504} and len(set(failures)) > 1
    assert 0.2 < len(failures) / len(statuses) < 0.4
    assert sim.stats["served_5xx"] == len(failures) and sim.stats["served_200"] == 200 - len(failures)


def test_rate_limit_429_after_the_burst_and_recovery_after_refill(make_simulator):
    sim = make_simulator(rate_limit_rps=1.0, burst=5)  # slow refill: a loaded machine cannot refill mid-test
    with requests.Session() as session:
        statuses = [session.get(f"{sim.url}/products", timeout=10).status_code for _ in range(8)]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        refused = session.get(f"{sim.url}/products", timeout=10)
        assert (refused.status_code, refused.json()) == (429, {"message": "Public rate limit exceeded"})
        time.sleep(1.2)  # 1 token/s: one token back
        assert session.get(f"{sim.url}/products", timeout=10).status_code == 200
    assert sim.stats["served_429"] >= 2 and sim.stats["served_200"] == 6


def test_latency_is_added_without_serialising_clients(make_simulator):
    sim = make_simulator(rate_limit_rps=0, latency_ms=300)
    began = time.perf_counter()
    assert get(sim, "/products/BTC-USD").status_code == 200
    assert time.perf_counter() - began >= 0.3  # a lower bound: the server slept that long
    sim.reset_stats()
    threads = [threading.Thread(target=get, args=(sim, "/products")) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = sim.stats
    assert stats["served_200"] == 6 and stats["max_in_flight"] >= 2


def test_malformed_bodies_fail_parsing_or_have_bad_rows(make_simulator):
    sim = make_simulator(rate_limit_rps=0, malformed_rate=1.0, now=lambda: NOW)
    kinds = set()
    for i in range(30):
        response = get(sim, "/products/BTC-USD/candles", granularity=60, start=T0 + i * 60, end=T0 + i * 60 + 600)
        assert response.status_code == 200
        try:
            rows = json.loads(response.text)
        except json.JSONDecodeError:
            kinds.add("truncated")
            continue
        bad = [r for r in rows if len(r) != 6 or not all(isinstance(x, (int, float)) for x in r)]
        assert len(bad) == 1
        kinds.add("wrong_arity" if len(bad[0]) != 6 else "string_number")
    assert kinds == {"truncated", "wrong_arity", "string_number"}
    with pytest.raises(json.JSONDecodeError):
        json.loads(get(sim, "/products").text)
    stats = sim.stats
    assert stats["malformed"] == 31 and sum(stats["malformed_by_kind"].values()) == 31


def test_late_corrections_revise_only_recent_candles_and_only_on_a_later_fetch(make_simulator):
    sim = make_simulator(rate_limit_rps=0, late_corrections=True, now=lambda: NOW)
    start = NOW // 60 * 60 - 60 * 60
    first = fetch(sim, "ETH-USD", start, NOW, 60)
    assert first == model_rows("ETH-USD", start, NOW, 60)  # first fetch: pure candles
    second = fetch(sim, "ETH-USD", start, NOW, 60)
    recent = NOW - LATE_CORRECTION_MINUTES * 60
    changed = [(a, b) for a, b in zip(first, second, strict=True) if a != b]
    assert changed and all(b[0] >= recent for _, b in changed)
    assert len(changed) == sum(1 for r in first if r[0] >= recent)
    for old, new in changed:
        assert new[4] != old[4] and new[5] > old[5] and new[1] <= new[4] <= new[2]
    assert fetch(sim, "ETH-USD", start, NOW, 60) == second  # the revision itself is deterministic


def test_fault_free_simulator_never_revises(sim):
    assert fetch(sim, "ETH-USD", NOW - 600, NOW, 60) == fetch(sim, "ETH-USD", NOW - 600, NOW, 60)


def test_invalid_configs_are_config_errors():
    with pytest.raises(ConfigError, match=r"FOO-USD.*known: .*BTC-USD"):
        Simulator(SimulatorConfig(products=("BTC-USD", "FOO-USD")))
    with pytest.raises(ConfigError, match="fail_rate"):
        Simulator(SimulatorConfig(fail_rate=1.5))
    with Simulator(SimulatorConfig(port=0)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match=f"port {port} is in use: .*pass --port or stop the other process"):
            Simulator(SimulatorConfig(port=port)).start()


# ---- replay -------------------------------------------------------------------------------------------------
def test_replay_serves_the_recorded_files(make_simulator):
    sim = make_simulator(replay_dir=str(REAL_DATA), rate_limit_rps=0)
    assert [p["id"] for p in get(sim, "/products").json()] == ["BTC-USD", "ETH-USD", "SOL-USD"]
    recorded = pd.read_csv(REAL_DATA / "ETH-USD_300s_2026-02-19.csv", parse_dates=["timestamp"])
    recorded["time"] = recorded["timestamp"].astype("datetime64[s]").astype("int64")
    start, end = int(recorded["time"].iloc[10]), int(recorded["time"].iloc[59])
    rows = fetch(sim, "ETH-USD", start, end, 300)
    expected = recorded.iloc[10:60][["time", "low", "high", "open", "close", "volume"]].iloc[::-1]
    assert rows == expected.to_numpy().tolist()
    # the long BTC file, with its 70-candle gap on 2025-10-25 kept as a gap
    btc = pd.read_csv(REAL_DATA / "BTC-USD_300s_2025-07-01_2026-01-22.csv", parse_dates=["timestamp"])
    day = btc[btc["timestamp"].dt.date == pd.Timestamp("2025-10-25").date()]
    served = fetch(sim, "BTC-USD", "2025-10-25T00:00:00Z", "2025-10-25T23:55:00Z", 300)
    assert len(served) == len(day) == 288 - 70


def test_replay_aggregates_to_coarser_granularities_and_refuses_finer(make_simulator):
    sim = make_simulator(replay_dir=str(REAL_DATA), rate_limit_rps=0)
    btc = pd.read_csv(REAL_DATA / "BTC-USD_300s_2025-07-01_2026-01-22.csv", parse_dates=["timestamp"])
    hour = btc[(btc["timestamp"] >= "2025-08-01 10:00") & (btc["timestamp"] < "2025-08-01 11:00")]
    rows = fetch(sim, "BTC-USD", "2025-08-01T10:00:00Z", "2025-08-01T10:00:00Z", 3600)
    assert rows[0][0] == int(datetime(2025, 8, 1, 10, tzinfo=UTC).timestamp())
    assert rows[0][1:5] == [hour["low"].min(), hour["high"].max(), hour["open"].iloc[0], hour["close"].iloc[-1]]
    assert rows[0][5] == pytest.approx(hour["volume"].sum())
    daily = fetch(sim, "BTC-USD", "2025-07-01", "2025-12-31", 86_400)
    assert len(daily) == 184
    response = get(sim, "/products/BTC-USD/candles", granularity=60, start="2025-08-01T10:00:00Z",
                   end="2025-08-01T11:00:00Z")
    assert response.status_code == 400 and "finer than the recorded" in response.json()["message"]
    assert get(sim, "/products/DOGE-USD/candles").status_code == 404


def test_replay_reads_epoch_and_iso_timestamps_and_rejects_bad_rows(tmp_path, make_simulator):
    (tmp_path / "ABC-USD_60s_epoch.csv").write_text(
        "volume,close,open,high,low,timestamp\n1.5,10.5,10.0,11.0,9.5,1767225600\n2.0,10.7,10.5,10.9,10.4,1767225660\n")
    (tmp_path / "ABC-USD_60s_iso.csv").write_text(
        "timestamp,open,high,low,close,volume\n2026-01-01T00:02:00Z,10.7,10.8,10.6,10.65,3.0\n")
    sim = make_simulator(replay_dir=str(tmp_path), rate_limit_rps=0)
    assert get(sim, "/products/ABC-USD").json()["quote_currency"] == "USD"
    assert fetch(sim, "ABC-USD", 1767225600, 1767225720, 60) == [
        [1767225720, 10.6, 10.8, 10.7, 10.65, 3.0], [1767225660, 10.4, 10.9, 10.5, 10.7, 2.0],
        [1767225600, 9.5, 11.0, 10.0, 10.5, 1.5]]
    assert fetch(sim, "ABC-USD", 1767225600, 1767225600, 300) == [[1767225600, 9.5, 11.0, 10.0, 10.65, 6.5]]
    (tmp_path / "ABC-USD_60s_bad.csv").write_text("timestamp,open,high,low,close,volume\n"
                                                  "2026-01-01 00:03:00,10.7,10.8,10.9,10.65,3.0\n")
    with pytest.raises(ValidationError, match=r"ABC-USD_60s_bad.csv:2: low > high"):
        Simulator(SimulatorConfig(replay_dir=str(tmp_path), port=0))
    with pytest.raises(ConfigError, match="is not a directory"):
        Simulator(SimulatorConfig(replay_dir=str(tmp_path / "ABC-USD_60s_iso.csv"), port=0))
    with pytest.raises(ConfigError, match="no replay files"):
        Simulator(SimulatorConfig(replay_dir=str(tmp_path.parent), port=0))


@pytest.mark.parametrize("rows, message", [
    ("2026-01-01 00:00:00,10,11,9,10.5,1\n2026-01-01 00:01:00,10,inf,9,10.5,1\n",
     r"ABC-USD_60s_x.csv:3: a value is not a finite number"),
    ("2026-01-01 00:00:00,10,11,9,10.5,nan\n", r"ABC-USD_60s_x.csv:2: a value is not a finite number"),
    ("2026-01-01 00:00:00,10,11,9,10.5,1\n2026-01-01 00:01:00,10,11,9,10.5,1\n"
     "2026-01-01 00:00:00,10,11,9,10.6,2\n",
     r"ABC-USD_60s_x.csv:4: timestamp repeated within the file \(first at line 2\)"),
], ids=["inf", "nan", "duplicate-timestamp"])
def test_replay_rejects_non_finite_values_and_duplicate_timestamps(tmp_path, rows, message):
    """Issue 12 item 7: replay CSVs with inf/NaN or a repeated timestamp fail with file:line."""
    (tmp_path / "ABC-USD_60s_x.csv").write_text("timestamp,open,high,low,close,volume\n" + rows)
    with pytest.raises(ValidationError, match=message):
        Simulator(SimulatorConfig(replay_dir=str(tmp_path), port=0))


def test_cli_replay_with_inf_exits_2_naming_file_and_line(tmp_path):
    (tmp_path / "ABC-USD_60s_x.csv").write_text("timestamp,open,high,low,close,volume\n"
                                                "2026-01-01 00:00:00,10,Infinity,9,10.5,1\n")
    result = run_cli("--replay", str(tmp_path), "--port", "0")
    assert result.returncode == 2 and "ABC-USD_60s_x.csv:2: a value is not a finite number" in result.stderr
    assert "Traceback" not in result.stderr


# ---- command line -------------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl", "simulator", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_unknown_product_is_a_one_line_error():
    result = run_cli("--port", "0", "--products", "BTC-USD,FOO-USD")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "FOO-USD" in lines[0] and "BTC-USD" in lines[0] and "Traceback" not in result.stderr


def test_cli_port_in_use_is_a_one_line_error(make_simulator):
    port = make_simulator().url.rsplit(":", 1)[1]
    result = run_cli("--port", port)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert f"port {port} is in use" in lines[0] and "pass --port" in lines[0]


def test_a_forming_bucket_without_a_trade_yet_has_no_candle(make_simulator):
    minutes = set(candles(42, "ATOM-USD", T0, T0 + 86_400, 60)["time"].tolist())
    bucket = next(t for t in range(T0, T0 + 86_400, 300) if t not in minutes and t + 60 in minutes)
    sim = make_simulator(rate_limit_rps=0, now=lambda: bucket + 30)
    rows = fetch(sim, "ATOM-USD", bucket - 3000, bucket + 3000, 300)
    assert rows[0][0] < bucket  # the completed bucket will exist, the forming one has no trade yet
    assert not candles(42, "ATOM-USD", bucket, bucket + 300, 300).empty


# ---- the whole universe (issue 14) ------------------------------------------------------------------------------
def test_universe_products_are_calibrated_and_stable():
    from etl.simulator.universe import MARKET_VOL, synthetic_products

    specs = synthetic_products(250)
    assert len(specs) == 250 and not set(specs) & set(UNIVERSE)
    assert list(synthetic_products(10)) == list(specs)[:10]  # product i does not depend on N
    vols = np.array([s.annual_vol for s in specs.values()])
    betas = np.array([s.beta for s in specs.values()])
    volumes = np.log10([s.daily_volume_usd for s in specs.values()])
    missing = np.array([s.missing_prob for s in specs.values()])
    assert 0.4 <= vols.min() and vols.max() <= 2.0 and 0.7 < np.median(vols) < 1.1
    assert 0.3 <= betas.min() and betas.max() <= 1.8 and bool((betas * MARKET_VOL < vols).all())
    assert volumes.max() - volumes.min() > 4  # majors to a long illiquid tail
    assert np.corrcoef(volumes, vols)[0, 1] < -0.3  # small products are the volatile ones
    assert np.corrcoef(volumes, missing)[0, 1] < -0.9 and (missing >= 0.3).sum() >= 25  # illiquid miss minutes
    listed = [s for s in specs.values() if s.listed_on]
    delisted = [s for s in specs.values() if s.status == "delisted"]
    assert 20 <= len(listed) <= 60 and 3 <= len(delisted) <= 15  # some listed mid-history, a few delisted
    assert all(s.delisted_on and s.trading_disabled for s in delisted)


def test_universe_candles_respect_listing_delisting_and_missing_minutes():
    from etl.simulator.universe import synthetic_products

    specs = synthetic_products(30)
    late = next(s for s in specs.values() if s.listed_on and not s.delisted_on)
    listed = int(datetime(late.listed_on.year, late.listed_on.month, late.listed_on.day, tzinfo=UTC).timestamp())
    daily = candles(42, late.id, listed - 10 * 86_400, listed + 10 * 86_400, 86_400)
    assert daily["time"].min() == listed and len(daily) == 10  # nothing before the listing day
    gone = next(s for s in specs.values() if s.delisted_on)
    stop = int(datetime(gone.delisted_on.year, gone.delisted_on.month, gone.delisted_on.day, tzinfo=UTC).timestamp())
    assert candles(42, gone.id, stop - 5 * 86_400, stop + 5 * 86_400, 86_400)["time"].max() == stop - 86_400
    thin = max(specs.values(), key=lambda s: s.missing_prob if not (s.listed_on or s.delisted_on) else 0)
    minutes = candles(42, thin.id, T0, T0 + 2 * 86_400, 60)
    assert abs(1 - len(minutes) / 2880 - thin.missing_prob) < 0.05
    # realised vol of three years of daily closes near the target, like the hand-set products
    steady = [s for s in specs.values() if not (s.listed_on or s.delisted_on)][:3]
    for spec in steady:
        closes = candles(42, spec.id, T0 - 3 * 365 * 86_400, T0, 86_400)["close"].to_numpy()
        realised = np.diff(np.log(closes)).std(ddof=1) * np.sqrt(365)
        assert 0.75 < realised / spec.annual_vol < 1.25, (spec.id, realised, spec.annual_vol)


def test_universe_is_served_in_the_same_contract(make_simulator):
    sim = make_simulator(rate_limit_rps=0, now=lambda: NOW, universe=30)
    listed = {p["id"]: p for p in get(sim, "/products").json()}
    assert len(listed) == len(UNIVERSE) + 30 and "SYN030-USD" in listed and "SYN031-USD" not in listed
    assert all(set(p) >= PRODUCT_FIELDS for p in listed.values())
    assert listed["SYN012-USD"]["status"] == "delisted"
    refused = get(sim, "/products/SYN012-USD/candles", granularity=60, start=T0, end=T0 + 600)
    assert refused.status_code == 400 and refused.json()["message"] == "Not allowed for delisted products"
    assert fetch(sim, "SYN001-USD", T0, T0 + 3600, 60) == model_rows("SYN001-USD", T0, T0 + 3600, 60)
    from etl.simulator.universe import synthetic_products

    late = synthetic_products(30)["SYN010-USD"]
    day = int(datetime(late.listed_on.year, late.listed_on.month, late.listed_on.day, tzinfo=UTC).timestamp())
    assert fetch(sim, "SYN010-USD", day - 300 * 60, day - 60, 60) == []  # not listed yet: no candles
    assert len(fetch(sim, "SYN010-USD", day, day + 299 * 60, 60)) > 0
    default = make_simulator(rate_limit_rps=0, now=lambda: NOW)  # without --universe: only the hand-set products
    assert len(get(default, "/products").json()) == len(UNIVERSE)


def test_universe_setting_and_flag():
    import os

    from etl.cli import build_parser
    from etl.settings import get_settings

    assert build_parser().parse_args(["simulator", "--universe", "250"]).universe == 250
    old = os.environ.get("SIMULATOR_UNIVERSE")
    os.environ["SIMULATOR_UNIVERSE"] = "12"
    try:
        assert get_settings().simulator_universe == 12
    finally:
        os.environ.pop("SIMULATOR_UNIVERSE") if old is None else os.environ.__setitem__("SIMULATOR_UNIVERSE", old)
    with pytest.raises(ConfigError, match="universe=-1"):
        Simulator(SimulatorConfig(port=0, universe=-1))

"""Factor model: universe returns, tercile buckets on a hand-built universe, no look-ahead, collinearity, and the
whole stage from simulator candles through bronze and silver to the output files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from etl import cli
from etl.commits import read_entry, read_manifest
from etl.errors import DataNotFoundError
from etl.factors import FactorConfig, run_factors
from etl.factors.buckets import terciles
from etl.factors.factor_model import (
    FACTOR_NAMES,
    compute,
    daily_snapshot,
    exposures,
    factor_returns,
    membership_frame,
)
from etl.factors.rolling_ols import rolling_ols
from etl.factors.universe_returns import Universe, universe_returns
from etl.settings import get_settings
from etl.simulator import candles as simulated_candles
from etl.storage import Store, get_store

T0 = pd.Timestamp("2026-03-02", tz="UTC")
SMALL = FactorConfig(frequency_s=60, window=240, min_obs=30, formation_minutes=120, holding_minutes=60,
                     momentum_minutes=(30, 60, 120))


def candle_frame(products: list[str], start: pd.Timestamp, end: pd.Timestamp, seed: int = 42) -> pd.DataFrame:
    frames = []
    for product in products:
        c = simulated_candles(seed, product, int(start.timestamp()), int(end.timestamp()), 60)
        frames.append(pd.DataFrame({"product_id": product, "bucket_start": pd.to_datetime(c["time"], unit="s", utc=True),
                                    "close": c["close"], "volume": c["volume"]}))
    return pd.concat(frames, ignore_index=True)


# ---- universe returns --------------------------------------------------------------------------------------------
def test_missing_buckets_give_nan_returns_not_zero_or_forward_filled():
    times = pd.date_range(T0, periods=6, freq="60s")
    bars = pd.DataFrame({
        "product_id": ["A"] * 6 + ["B"] * 5,
        "bucket_start": list(times) + list(times.delete(3)),
        "close": [10, 11, 12, 13, 14, 15] + [100, 110, 121, 99, 90],   # B has no candle at row 3
        "volume": [1.0] * 6 + [2.0] * 5,
    })
    u = universe_returns(bars, 60, T0, T0 + pd.Timedelta(minutes=6))
    assert u.products == ["A", "B"]
    np.testing.assert_allclose(u.returns[:, 0], [np.nan, 0.1, 1 / 11, 1 / 12, 1 / 13, 1 / 14])
    np.testing.assert_allclose(u.returns[:, 1], [np.nan, 0.1, 0.1, np.nan, np.nan, 90 / 99 - 1])
    np.testing.assert_allclose(u.traded_value[:, 1], [200, 220, 242, np.nan, 198, 180])


def test_an_infinite_close_or_volume_is_missing_not_an_infinite_return_or_factor(caplog):
    """A stray candle with close or volume inf (as with close <= 0) is treated as missing, logged: it was an inf
    return and an inf then NaN market factor, so the factor returns and every beta on them were numbers from it."""
    times = pd.date_range(T0, periods=4, freq="60s")
    bars = pd.DataFrame({"product_id": ["A"] * 4 + ["B"] * 4, "bucket_start": list(times) * 2,
                         "close": [10, np.inf, 12, 13] + [100, 110, 121, 133.1],
                         "volume": [1.0] * 4 + [2.0, np.inf, 2.0, 2.0]})
    with caplog.at_level("WARNING", logger="etl.factors.universe_returns"):
        u = universe_returns(bars, 60, T0, T0 + pd.Timedelta(minutes=4))
    np.testing.assert_allclose(u.returns[:, 0], [np.nan, np.nan, np.nan, 13 / 12 - 1])
    np.testing.assert_allclose(u.returns[:, 1], [np.nan, np.nan, np.nan, 0.1])
    assert np.isnan(u.traded_value[1]).all() and np.isfinite(u.traded_value[[0, 2, 3]]).all()
    assert "2 rows with" in caplog.text


def test_traded_value_is_in_usd_so_a_product_quoted_in_btc_ranks_on_the_same_scale_as_the_usd_ones():
    """The liquidity factor ranks products by average traded value, market_vw weights by it. It was volume x close in
    each product's quote currency: ETH-BTC's 50 ETH at 0.05 BTC is 2.5 (BTC), beside SOL-USD's 1,000 (USD), so the
    ETH-BTC book worth 250,000 USD ranked the least liquid. Traded value is in USD (x the same bucket's
    <QUOTE>-USD close, as every USD figure of the engine); without that close it is unknown (NaN), not a quote amount."""
    times = pd.date_range(T0, periods=3, freq="60s")
    bars = pd.DataFrame({
        "product_id": ["BTC-USD"] * 3 + ["ETH-BTC"] * 3 + ["SOL-USD"] * 3 + ["XRP-EUR"] * 3,
        "bucket_start": list(times) * 4,
        "close": [100_000.0, 101_000.0, 99_000.0] + [0.05, 0.051, 0.05] + [100.0, 101.0, 102.0] + [1.0] * 3,
        "volume": [1.0] * 3 + [50.0] * 3 + [10.0] * 3 + [5.0] * 3})
    u = universe_returns(bars, 60, T0, T0 + pd.Timedelta(minutes=3))
    tv = pd.DataFrame(u.traded_value, columns=u.products)
    np.testing.assert_allclose(tv["ETH-BTC"], [50 * 0.05 * 100_000, 50 * 0.051 * 101_000, 50 * 0.05 * 99_000])
    np.testing.assert_allclose(tv["SOL-USD"], [1000.0, 1010.0, 1020.0])
    assert tv["XRP-EUR"].isna().all()                                      # no EUR-USD close: unknown
    assert tv["ETH-BTC"].mean() > tv["SOL-USD"].mean()


def test_returns_are_in_usd_so_a_product_quoted_in_btc_moves_with_the_market_it_is_averaged_into():
    """The market factor averages the products' returns, and the attribution applies each product's betas to
    positions valued in the book's currency. ETH-BTC's return was its move against BTC: BTC and ETH both down 10%
    in USD read 0% for ETH-BTC, pulling the market factor towards 0 and giving it no beta on a market it follows.
    Every return is in USD, as the engine's correlations: (1 + r_ETH-BTC)(1 + r_BTC-USD) - 1 on the same buckets;
    NaN where a bucket lacks the <QUOTE>-USD close."""
    times = pd.date_range(T0, periods=4, freq="60s")
    bars = pd.DataFrame({
        "product_id": ["BTC-USD"] * 4 + ["ETH-BTC"] * 3 + ["ETH-USD"] * 4,
        "bucket_start": list(times) + list(times[[0, 1, 3]]) + list(times),
        "close": [100_000.0, 90_000.0, 90_000.0, 99_000.0] + [0.05, 0.05, 0.05]
        + [5_000.0, 4_500.0, 4_500.0, 4_950.0],
        "volume": [1.0] * 11})
    u = universe_returns(bars, 60, T0, T0 + pd.Timedelta(minutes=4))
    r = pd.DataFrame(u.returns, columns=u.products)
    np.testing.assert_allclose(r["ETH-BTC"], [np.nan, -0.1, np.nan, np.nan])      # a gap: NaN, not a return
    np.testing.assert_allclose(r["ETH-BTC"][:2], r["ETH-USD"][:2])


# ---- buckets ---------------------------------------------------------------------------------------------------
def test_terciles_rank_ascending_break_ties_by_product_order_and_skip_unranked():
    rank, bucket, n = terciles(np.array([[3.0, 1.0, np.nan, 2.0, 5.0, 4.0, 0.0],
                                         [1.0, 1.0, 1.0, np.nan, np.nan, np.nan, np.nan],
                                         [1.0, 2.0, np.nan, np.nan, np.nan, np.nan, np.nan]]))
    assert n.tolist() == [6, 3, 2]
    assert rank[0].tolist() == [3, 1, -1, 2, 5, 4, 0]
    assert bucket[0].tolist() == [1, 0, -1, 1, 2, 2, 0]
    assert bucket[1].tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert bucket[2].tolist() == [-1] * 7   # fewer than three ranked products: no buckets


def hand_built_universe() -> Universe:
    """Six products; formation rows 0..3 make each style order different, rows 4..7 are the holding period.

    r_i(t) = b_i f(t) + d_i: beta to the market is b_i / mean(b) (increasing A..F); momentum over lookbacks 2 and
    4 is 0.03 b_i + 6 d_i (decreasing A..F); traded values put C, A lowest and F, D highest.
    """
    products = list("ABCDEF")
    b = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    d = np.array([0.05, 0.04, 0.03, 0.02, 0.01, 0.0])
    f = np.array([0.01, -0.02, 0.015, 0.005])
    returns = np.full((8, 6), np.nan)
    returns[:4] = f[:, None] * b + d
    returns[4:] = np.arange(1, 25).reshape(4, 6) / 1000.0
    returns[6, 5] = np.nan                               # F has no return at row 6
    traded_value = np.tile([2.0, 4.0, 1.0, 6.0, 3.0, 5.0], (8, 1))
    times = pd.date_range(T0, periods=8, freq="60s")
    return Universe(times=times, products=products, close=np.full((8, 6), np.nan), returns=returns,
                    traded_value=traded_value)


def test_buckets_on_a_hand_built_universe():
    config = FactorConfig(frequency_s=60, window=4, min_obs=3, formation_minutes=4, holding_minutes=4,
                          momentum_minutes=(2, 4))
    u = hand_built_universe()
    returns, membership = factor_returns(u, config)

    assert (membership.bucket[:, 0] == -1).all()        # the first period has no formation window before it
    groups = membership_frame(replace_result(u, config, returns, membership)).groupby(["factor_group", "bucket"])
    members = {key: "".join(sorted(frame["product_id"])) for key, frame in groups}
    assert members == {
        ("liquidity", "low"): "AC", ("liquidity", "mid"): "BE", ("liquidity", "high"): "DF",
        ("volatility", "low"): "AB", ("volatility", "mid"): "CD", ("volatility", "high"): "EF",
        ("momentum", "low"): "EF", ("momentum", "mid"): "CD", ("momentum", "high"): "AB",
    }
    frame = membership_frame(replace_result(u, config, returns, membership))
    assert (frame["formation_start"] == T0).all() and (frame["holding_start"] == T0 + pd.Timedelta(minutes=4)).all()
    assert set(frame["factor_name"]) == {f"{g}_{b}" for g in ("liquidity", "volatility", "momentum")
                                         for b in ("low", "mid", "high")}

    col = {name: returns[:, i] for i, name in enumerate(FACTOR_NAMES)}
    r = u.returns
    assert np.isnan(col["liquidity_low"][:4]).all() and np.isfinite(col["market"][1:4]).all()
    assert col["market"][5] == pytest.approx(r[5].mean())
    assert col["liquidity_low"][5] == pytest.approx((r[5, 0] + r[5, 2]) / 2)
    assert col["volatility_high"][6] == pytest.approx(r[6, 4])        # F is missing at row 6: E alone
    assert col["momentum_hml"][5] == pytest.approx(r[5, :2].mean() - r[5, 4:].mean())
    tv = np.array([2.0, 4.0, 1.0, 6.0, 3.0, 5.0])
    assert col["market_vw"][5] == pytest.approx((r[5] * tv).sum() / tv.sum())


def replace_result(u, config, returns, membership):
    """A FactorResult without exposures, for the membership frame."""
    from etl.factors.factor_model import FactorResult

    return FactorResult(universe=u, config=config, factor_names=FACTOR_NAMES, factor_returns=returns,
                        membership=membership, exposures=None)


# ---- no look-ahead and collinearity --------------------------------------------------------------------------
def test_shuffling_future_data_does_not_change_the_past():
    products = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD"]
    start, end = T0, T0 + pd.Timedelta(days=1)
    bars = candle_frame(products, start, end)
    cut = T0 + pd.Timedelta(hours=15, minutes=17)
    shuffled = bars.copy()
    rng = np.random.default_rng(0)
    for product in products:  # permute each product's own future candles in time
        future = (bars["product_id"] == product) & (bars["bucket_start"] >= cut)
        values = bars.loc[future, ["close", "volume"]].to_numpy()
        shuffled.loc[future, ["close", "volume"]] = values[rng.permutation(len(values))]

    a = compute(universe_returns(bars, 60, start, end), SMALL)
    b = compute(universe_returns(shuffled, 60, start, end), SMALL)
    past = np.asarray(a.universe.times < cut)
    assert not np.allclose(a.factor_returns[~past], b.factor_returns[~past], equal_nan=True)  # the future did change
    np.testing.assert_array_equal(a.factor_returns[past], b.factor_returns[past])
    first_future_period = -(-int(past.sum()) // SMALL.holding)
    np.testing.assert_array_equal(a.membership.bucket[:, :first_future_period], b.membership.bucket[:, :first_future_period])
    for name in ("beta", "alpha", "r_squared", "r_squared_adj"):  # bit-equal, not merely close
        np.testing.assert_array_equal(getattr(a.exposures, name)[past], getattr(b.exposures, name)[past],
                                      err_msg=name)
    np.testing.assert_array_equal(a.exposures.n_obs[past], b.exposures.n_obs[past])
    assert np.isfinite(a.exposures.beta[past][-1]).all()


def test_market_plus_every_bucket_is_rank_deficient_but_market_plus_spreads_is_not():
    rng = np.random.default_rng(1)
    n, products = 2000, list("ABCDEF")
    returns = rng.standard_t(4, (n, 6)) * 1e-3 + rng.standard_t(4, (n, 1)) * 1e-3   # no gaps: buckets are full
    u = Universe(times=pd.date_range(T0, periods=n, freq="60s"), products=products, close=np.full((n, 6), np.nan),
                 returns=returns, traded_value=np.abs(rng.normal(size=(n, 6))))
    config = replace(SMALL, window=240)
    factors, _ = factor_returns(u, config)
    naive = replace(config, regression_factors=("market", "liquidity_low", "liquidity_mid", "liquidity_high"))
    naive_fit = exposures(u, factors, naive)
    chosen_fit = exposures(u, factors, config)

    formed = np.isfinite(factors[:, FACTOR_NAMES.index("liquidity_low")])
    full_windows = np.convolve(formed, np.ones(config.window), "full")[:n] == config.window
    assert naive_fit.rank_deficient[full_windows].all()                 # market = mean of the three buckets
    assert np.isfinite(naive_fit.beta[full_windows]).all()              # ... and still no exception, no NaN
    assert not chosen_fit.rank_deficient.any()
    assert np.isfinite(chosen_fit.beta[full_windows]).all()
    # the fallback still gives the least-squares fit: R-squared equals that of the equivalent full-rank model
    check = rolling_ols(returns[:, 0], factors[:, [FACTOR_NAMES.index(c) for c in
                                                  ("liquidity_low", "liquidity_mid", "liquidity_high")]],
                        config.window, config.min_obs, expanding=True)
    np.testing.assert_allclose(naive_fit.r_squared[full_windows, 0], check.r_squared[full_windows], atol=1e-9)


# ---- the stage end to end --------------------------------------------------------------------------------------
PRODUCTS = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD"]
END = datetime(2026, 3, 3, 6, 0, tzinfo=UTC)


def read_output(data_dir, table: str) -> pd.DataFrame:
    """The committed rows of `table`, day by day (the Delta table keeps superseded files for time travel)."""
    store = Store.from_uri(str(data_dir))
    files = read_manifest(store, "factors")["files"]
    keys = sorted(k for k in files if k.startswith(f"{table}/date="))
    return pd.concat([read_entry(store, files[k]).to_pandas().assign(date=k.split("=")[1]) for k in keys],
                     ignore_index=True)


def test_run_from_simulator_candles_writes_daily_partitions(simulator, data_dir, monkeypatch):
    from etl.bronze import ingest
    from etl.silver import build, read_candles

    monkeypatch.setenv("PIPELINE_PRODUCTS", ",".join(PRODUCTS))
    monkeypatch.setenv("PIPELINE_HISTORY_DAYS", "1")
    settings = get_settings()
    read_start = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)   # output day start minus formation and window
    ingest(products=PRODUCTS, start=read_start, end=END, granularity=60, settings=settings)

    summary = run_factors(settings, end=END, config=SMALL)
    assert summary.start == datetime(2026, 3, 2, tzinfo=UTC) and summary.dates == ["2026-03-02", "2026-03-03"]
    assert 0.9 * 4 * 36 * 60 < summary.rows_in <= 4 * 36 * 60           # 36 hours of minutes, warm-up included
    assert "factors 2026-03-02 00:00 .. 2026-03-03 06:00 UTC, 4 products" in str(summary)

    returns = read_output(data_dir, "factor_returns")
    assert list(returns.columns[:3]) == ["factor_name", "bucket_start", "factor_return"]
    assert returns["bucket_start"].min() >= pd.Timestamp("2026-03-02", tz="UTC")
    assert returns["bucket_start"].max() == pd.Timestamp("2026-03-03 05:59", tz="UTC")
    assert (returns["date"] == returns["bucket_start"].dt.strftime("%Y-%m-%d")).all()
    assert set(returns["factor_name"]) == set(FACTOR_NAMES)
    assert not returns.duplicated(["factor_name", "bucket_start"]).any()

    # the market factor is the plain average of the products' 1-minute returns
    candles = read_candles(PRODUCTS, datetime(2026, 3, 2, 11, 59, tzinfo=UTC), datetime(2026, 3, 2, 12, 0, tzinfo=UTC),
                           settings=settings).pivot(index="bucket_start", columns="product_id", values="close")
    expected = (candles.iloc[1] / candles.iloc[0] - 1).mean()
    noon = returns[(returns["factor_name"] == "market") & (returns["bucket_start"] == candles.index[1])]
    assert noon["factor_return"].item() == pytest.approx(expected, rel=1e-12)

    membership = read_output(data_dir, "factor_membership")
    assert len(membership) == 30 * 3 * 4                               # 30 hourly periods x 3 groups x 4 products
    per_period = membership.groupby(["holding_start", "factor_group"])["bucket"].agg(lambda b: "".join(sorted(b)))
    assert set(per_period) == {"highlowlowmid"}                      # 4 products: 2 low, 1 mid, 1 high
    assert (membership["formation_end"] == membership["holding_start"]).all()

    full = read_output(data_dir, "factor_exposures_full")
    snapshot = read_output(data_dir, "factor_exposures")
    assert {"product_id", "factor_name", "bucket_start", "beta", "r_squared", "r_squared_adj", "n_obs"} <= set(snapshot)
    assert len(snapshot) == 4 * 4 and set(snapshot["as_of_date"].astype(str)) == {"2026-03-02"}  # 03-03 incomplete
    assert (snapshot["bucket_start"] == pd.Timestamp("2026-03-02 23:59", tz="UTC")).all()
    assert (snapshot["n_obs"] > SMALL.min_obs).all() and snapshot["beta"].notna().all()
    at_close = full[full["bucket_start"] == pd.Timestamp("2026-03-02 23:59", tz="UTC")]
    merged = snapshot.merge(at_close, on=["product_id", "factor_name", "bucket_start"], suffixes=("", "_full"))
    assert len(merged) == 16 and (merged["beta"] == merged["beta_full"]).all()
    market_beta = snapshot.loc[snapshot["factor_name"] == "market", "beta"]
    assert market_beta.between(0.2, 3.0).all()                         # simulated coins all load on the market

    before = {t: read_output(data_dir, t) for t in ("factor_returns", "factor_exposures")}
    again = run_factors(settings, end=END, config=SMALL)                       # idempotent rerun
    assert again.rows == summary.rows
    for table, frame in before.items():
        pd.testing.assert_frame_equal(read_output(data_dir, table), frame)

    # the same run from the command line: `factors --end ISO` (historical data), the same committed outputs
    for name, value in {"FACTOR_WINDOW": SMALL.window, "FACTOR_MIN_OBS": SMALL.min_obs,
                        "FACTOR_FORMATION_MINUTES": SMALL.formation_minutes,
                        "FACTOR_HOLDING_MINUTES": SMALL.holding_minutes,
                        "FACTOR_MOMENTUM_MINUTES": ",".join(map(str, SMALL.momentum_minutes))}.items():
        monkeypatch.setenv(name, str(value))
    assert cli.main(["factors", "--end", "2026-03-03T06:00:00Z"]) == 0
    manifest = read_manifest(get_store(get_settings()), "factors")
    assert manifest["run_id"] != "" and all(e["run_id"] == manifest["run_id"] for e in manifest["files"].values())
    for table, frame in before.items():
        pd.testing.assert_frame_equal(read_output(data_dir, table), frame)

    # 5-minute bars from silver instead of 1-minute candles
    build(settings=settings)
    monkeypatch.setenv("FACTOR_FREQUENCY_S", "300")
    five = run_factors(get_settings(), end=END, config=replace(SMALL, frequency_s=300, window=48, min_obs=12))
    assert five.frequency_s == 300 and five.rows["factor_returns"] > 0
    bars = read_output(data_dir, "factor_returns")
    assert (bars["bucket_start"].dt.minute % 5 == 0).all()


def test_run_without_prices_says_what_to_do(data_dir):
    with pytest.raises(DataNotFoundError, match="python -m etl ingest"):
        run_factors(get_settings(), end=END, config=SMALL)


def test_factors_end_from_the_cli_sets_the_window(data_dir, capsys):
    assert cli.main(["factors", "--end", "2026-03-03T06:00:00Z"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: factors: no 60s prices") and "and 2026-03-03 06:00:00+00:00" in err
    assert "\n" not in err


def test_exposures_equal_statsmodels_on_the_model_factors():
    """The model's wiring (factor columns, constant, expanding start, min_obs, NaN rows of the first holding period
    and of gaps) against statsmodels RollingOLS on the same factor columns, within 1e-9."""
    import statsmodels.api as sm
    from statsmodels.regression.rolling import RollingOLS

    rng = np.random.default_rng(4)
    n, products = 900, list("ABCDEF")
    returns = rng.standard_t(4, (n, 6)) * 1e-3 + rng.standard_t(4, (n, 1)) * 1e-3
    returns[rng.random((n, 6)) < 0.03] = np.nan
    returns[400:430, 2] = np.nan                                        # a gap in one product
    u = Universe(times=pd.date_range(T0, periods=n, freq="60s"), products=products, close=np.full((n, 6), np.nan),
                 returns=returns, traded_value=np.abs(rng.normal(size=(n, 6))))
    factors, _ = factor_returns(u, SMALL)
    fit = exposures(u, factors, SMALL)
    X = sm.add_constant(factors[:, [FACTOR_NAMES.index(f) for f in SMALL.regression_factors]], has_constant="add")
    for j in (0, 2):
        ref = RollingOLS(returns[:, j], X, SMALL.window, min_nobs=SMALL.min_obs, expanding=True).fit()
        ours = np.column_stack([fit.alpha[:, j], fit.beta[:, j]])
        assert np.array_equal(np.isnan(ours), np.isnan(ref.params)) and np.isfinite(ours).any()
        np.testing.assert_allclose(ours, ref.params, rtol=0, atol=1e-9)
        np.testing.assert_allclose(fit.r_squared[:, j], ref.rsquared, rtol=0, atol=1e-9)
        np.testing.assert_allclose(fit.r_squared_adj[:, j], ref.rsquared_adj, rtol=0, atol=1e-9)
        defined = np.isfinite(fit.alpha[:, j])
        np.testing.assert_array_equal(fit.n_obs[defined, j], ref.nobs[defined])


def test_a_minimum_of_observations_larger_than_the_window_is_refused_not_lowered_to_it():
    """docs/factor_model.md: below FACTOR_MIN_OBS observations the estimates are NaN. With FACTOR_MIN_OBS=60 and
    FACTOR_WINDOW=30 the minimum was silently lowered to the window: betas on 30 observations were written (and
    priced the PnL attribution) although the configured minimum is 60. Now the configuration is refused, naming
    both settings, before anything is estimated."""
    from etl.errors import ConfigError

    rng = np.random.default_rng(4)
    n = 300
    returns = rng.standard_t(4, (n, 6)) * 1e-3 + rng.standard_t(4, (n, 1)) * 1e-3
    u = Universe(times=pd.date_range(T0, periods=n, freq="60s"), products=list("ABCDEF"),
                 close=np.full((n, 6), np.nan), returns=returns, traded_value=np.abs(rng.normal(size=(n, 6))))
    config = replace(SMALL, window=30, min_obs=60)
    factors, _ = factor_returns(u, config)
    with pytest.raises(ConfigError, match=r"FACTOR_MIN_OBS=60 .*FACTOR_WINDOW=30"):
        exposures(u, factors, config)
    fit = exposures(u, factors, replace(SMALL, window=30, min_obs=30))     # a minimum the window can hold
    assert np.isfinite(fit.beta).any() and (fit.n_obs[np.isfinite(fit.alpha)] >= 30).all()


def test_a_formation_window_shorter_than_the_minimum_of_observations_is_refused_not_an_empty_model():
    """A product is ranked with at least FACTOR_MIN_OBS returns in the formation window (docs/factor_model.md). A
    formation window of 20 rows under FACTOR_MIN_OBS=30 can never hold them: no product was ever ranked, every
    high-minus-low factor was undefined, no beta was estimated, and the stage ran green writing empty membership and
    exposures (the attribution then explained nothing). Now the configuration is refused, naming the settings."""
    from etl.errors import ConfigError

    rng = np.random.default_rng(4)
    n = 300
    returns = rng.standard_t(4, (n, 6)) * 1e-3 + rng.standard_t(4, (n, 1)) * 1e-3
    u = Universe(times=pd.date_range(T0, periods=n, freq="60s"), products=list("ABCDEF"),
                 close=np.full((n, 6), np.nan), returns=returns, traded_value=np.abs(rng.normal(size=(n, 6))))
    with pytest.raises(ConfigError, match=r"FACTOR_FORMATION_MINUTES=20 .*FACTOR_MIN_OBS=30"):
        factor_returns(u, replace(SMALL, formation_minutes=20, min_obs=30))
    _, membership = factor_returns(u, replace(SMALL, formation_minutes=30, min_obs=30,
                                                 momentum_minutes=(30,)))        # exactly enough rows
    assert (membership.bucket >= 0).any()


def test_a_momentum_lookback_longer_than_the_formation_window_is_refused_not_cut_to_it():
    """Momentum sums a product's returns over the last h minutes of each lookback (docs/factor_model.md), ranked on
    the formation window. A lookback of 240 minutes with a formation window of 120 was cut to 120 without a word: the
    signal summed (30, 60, 120, 120) minutes, not the (30, 60, 120, 240) configured. Now refused, naming the
    settings."""
    from etl.errors import ConfigError

    rng = np.random.default_rng(4)
    n = 300
    u = Universe(times=pd.date_range(T0, periods=n, freq="60s"), products=list("ABCDEF"),
                 close=np.full((n, 6), np.nan), returns=rng.standard_t(4, (n, 6)) * 1e-3,
                 traded_value=np.abs(rng.normal(size=(n, 6))))
    with pytest.raises(ConfigError, match=r"FACTOR_MOMENTUM_MINUTES=30,60,120,240 .*FACTOR_FORMATION_MINUTES=120"):
        factor_returns(u, replace(SMALL, momentum_minutes=(30, 60, 120, 240)))
    factor_returns(u, replace(SMALL, momentum_minutes=(30, 60, 120)))             # within the window: fine


def test_a_rerun_replaces_every_day_it_covers_even_a_table_it_leaves_empty_there(simulator, data_dir, monkeypatch):
    """The book stops holding two of the four products: the rerun ranks two, too few for terciles, so its membership
    is empty, and so are its exposures (the spreads regressed on are undefined). The days it covers must be its own
    in every table - not the previous run's buckets and betas (of four products) beside this run's factor returns
    (of two), which the PnL attribution would read as one run."""
    from etl.bronze import ingest

    monkeypatch.setenv("PIPELINE_PRODUCTS", ",".join(PRODUCTS))
    monkeypatch.setenv("PIPELINE_HISTORY_DAYS", "1")
    ingest(products=PRODUCTS, start=datetime(2026, 3, 1, 18, 0, tzinfo=UTC), end=END, granularity=60,
           settings=get_settings())
    run_factors(get_settings(), end=END, config=SMALL)
    assert set(read_output(data_dir, "factor_membership")["product_id"]) == set(PRODUCTS)

    monkeypatch.setenv("PIPELINE_PRODUCTS", ",".join(PRODUCTS[:2]))
    again = run_factors(get_settings(), end=END, config=SMALL)
    assert again.products == PRODUCTS[:2] and again.rows["factor_membership"] == 0
    manifest = read_manifest(Store.from_uri(str(data_dir)), "factors")
    covered = {k: e for k, e in manifest["files"].items() if k.split("/date=")[1] in again.dates}
    assert {k.split("/")[0] for k in covered} == {"factor_returns", "factor_membership", "factor_exposures_full",
                                                  "factor_exposures"}
    assert all(e["run_id"] == manifest["run_id"] for e in covered.values())
    assert read_output(data_dir, "factor_membership").empty and read_output(data_dir, "factor_exposures").empty
    assert set(read_output(data_dir, "factor_returns")["factor_name"]) == {"market", "market_vw"}


def test_a_books_conversion_pair_is_a_rate_regressed_on_the_factors_not_an_asset_building_them(
        book_reference, data_dir, monkeypatch):
    """A EUR book makes the pipeline ingest EUR-USD (a currency rate, to convert amounts), and the factor stage took
    every ingested product for its universe: the market factor averaged EUR-USD's returns with the coins', and the
    liquidity, volatility and momentum terciles ranked it as a coin (its large FX volume, its near-zero beta), so
    every factor return and every coin's beta moved with the book's base currency. The universe is the assets:
    a conversion pair no book holds builds no factor and is in no bucket; it still gets its betas on the factors
    (the attribution explains a EUR book's PnL with them). Checked against the model computed without the pair."""
    coins = ["ADA-USD", "BTC-USD", "DOGE-USD", "ETH-USD", "SOL-USD", "XRP-USD"]
    ref = book_reference("portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
                         "E1,Euro book,EUR,400000,0.9,0.9\n",
                         "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
                         + "".join(f"E1,{p},2026-03-01,1,1\n" for p in coins))
    with (ref / "instruments.csv").open("a") as f:
        f.write("EUR-USD,EUR,USD,coinbase,fx,Euro / US Dollar\n")
    monkeypatch.delenv("PIPELINE_PRODUCTS", raising=False)
    monkeypatch.setenv("PIPELINE_HISTORY_DAYS", "1")
    end = pd.Timestamp("2026-03-03", tz="UTC")
    start = pd.Timestamp("2026-03-01 18:00", tz="UTC")
    crypto = candle_frame(coins, start, end)
    times = pd.date_range(start, end, freq="60s", inclusive="left")
    rng = np.random.default_rng(7)
    eur = pd.DataFrame({"product_id": "EUR-USD", "bucket_start": times,
                        "close": 1.08 * np.exp(np.cumsum(rng.normal(0, 2e-4, len(times)))),
                        "volume": 5e7})
    asked = []

    def read_prices(settings, products, lo, hi):
        asked.append(list(products))
        frame = pd.concat([crypto, eur], ignore_index=True)
        return frame[frame["product_id"].isin(products) & (frame["bucket_start"] >= lo) & (frame["bucket_start"] < hi)]

    monkeypatch.setattr("etl.factors.io.read_prices", read_prices)
    summary = run_factors(get_settings(), end=end.to_pydatetime(), config=SMALL)
    assert asked == [[*coins, "EUR-USD"]] and "EUR-USD" in summary.products   # ingested and regressed

    alone = compute(universe_returns(crypto, 60, start, end), SMALL)        # the model of the assets alone
    got = read_output(data_dir, "factor_returns").pivot(index="bucket_start", columns="factor_name",
                                                        values="factor_return")
    want = pd.DataFrame(alone.factor_returns, index=alone.universe.times, columns=list(FACTOR_NAMES))
    want = want[want.index >= pd.Timestamp("2026-03-02", tz="UTC")]
    pd.testing.assert_frame_equal(got[list(FACTOR_NAMES)], want.dropna(how="all"), check_names=False,
                                  check_freq=False, check_index_type=False, rtol=1e-12)

    membership = read_output(data_dir, "factor_membership")
    assert "EUR-USD" not in set(membership["product_id"]) and set(membership["n_ranked"]) == {6}

    snapshot = read_output(data_dir, "factor_exposures")
    def betas(frame):
        return frame.astype({"product_id": str, "factor_name": str}).set_index(["product_id", "factor_name"])[
            "beta"].sort_index()

    expected = daily_snapshot(alone, start=pd.Timestamp("2026-03-02", tz="UTC"))
    pd.testing.assert_series_equal(betas(snapshot[snapshot["product_id"] != "EUR-USD"]), betas(expected),
                                   check_names=False, rtol=1e-9)
    eur_betas = snapshot[snapshot["product_id"] == "EUR-USD"]
    assert len(eur_betas) == 4 and eur_betas["beta"].notna().all()            # the rate keeps its betas


def test_a_day_whose_prices_stop_at_noon_gets_no_snapshot_the_attribution_would_take_for_the_whole_day():
    """The factor run ends at midnight (the end-of-day schedule) but silver's candles stop at noon (an outage, a
    late ingest). The grid reached the day's last bucket, so the day got its snapshot, taken at the last bucket
    whose window still held enough returns (23:59 with the default day-long window): the attribution took the day as finished and compounded half a day of
    factor returns against the PnL of the whole day, explaining a number with nothing flagged. A day gets its
    snapshot only when the prices reach its last bucket; the rerun after the backfill writes it."""
    day = pd.Timestamp("2026-03-02", tz="UTC")
    start = day - pd.Timedelta(hours=6)
    products = ["ADA-USD", "BTC-USD", "DOGE-USD", "ETH-USD", "SOL-USD", "XRP-USD"]
    full = candle_frame(products, start, day + pd.Timedelta(days=1))
    half = full[full["bucket_start"] < day + pd.Timedelta(hours=12)]
    end = day + pd.Timedelta(days=1)

    snapshot = daily_snapshot(compute(universe_returns(full, 60, start, end), SMALL), start=day)
    assert set(snapshot["as_of_date"].astype(str)) == {"2026-03-02"}       # prices to 23:59: the day is finished
    cut = compute(universe_returns(half, 60, start, end), SMALL)
    assert daily_snapshot(cut, start=day).empty                           # but half a day is not the day

"""The risk engine end to end: silver-shaped Parquet in a temporary data root -> every output table, checked
against independent pandas/numpy computations on the same prices."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import linalg, special, stats

from etl.commits import read_entry, read_manifest, risk_manifest
from etl.errors import ConfigError, DataNotFoundError, ValidationError
from etl.lake import Lake
from etl.portfolios import load_portfolios, load_positions
from etl.reference import load_instruments
from etl.risk import run_risk
from etl.risk.engine import RiskParams, compute_tables, intraday_anomalies
from etl.settings import get_settings
from etl.silver.incremental import BARS_1D_DIR
from etl.storage import Store
from tests.support.delta_reader import duckdb_frame
from tests.support.silver_sample import commit_silver, remove_product, write_5m_bars, write_daily_bars

AS_OF = date(2026, 3, 31)
DAYS = pd.date_range("2025-12-01", AS_OF, freq="D")
START = {"BTC-USD": 60000.0, "ETH-USD": 3000.0, "ETH-BTC": 0.05}
VOL = {"BTC-USD": 0.025, "ETH-USD": 0.035, "ETH-BTC": 0.02}
QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "ETH-BTC": "BTC"}


def _closes() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    cols = sorted(START)
    r = rng.standard_normal((len(DAYS), len(cols))) * np.array([VOL[c] for c in cols])
    return pd.DataFrame(np.array([START[c] for c in cols]) * np.exp(np.cumsum(r, axis=0)), index=DAYS, columns=cols)


def _write_silver(root, closes: pd.DataFrame, spike_at: pd.Timestamp) -> None:
    write_daily_bars(root, closes, QUOTE, spread=0.01, volume=10.0)
    for product in closes.columns:
        c = closes[product].to_numpy()
        # 5-minute bars for the last two days: a gentle random walk, and one spike in BTC-USD on the as-of day
        buckets = pd.date_range(pd.Timestamp(AS_OF) - pd.Timedelta(days=1), periods=2 * 288, freq="5min", tz="UTC")
        rng = np.random.default_rng(len(product))
        r = rng.standard_normal(len(buckets)) * 0.001
        if product == "BTC-USD":
            r[buckets == spike_at] = 0.03
        write_5m_bars(root, product, QUOTE[product], buckets, c[-1] * np.exp(np.cumsum(r)))


@pytest.fixture
def risk_env(data_dir, book_reference, monkeypatch):
    book_reference(
        "portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
        "U1,Long BTC short ETH,USD,1000,0.9,0.9\n"
        "U2,ETH-BTC rebalanced,USD,1000000,0.5,0.9\n"
        "B1,ETH in BTC terms,BTC,100,0.9,0.01\n",
        "portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
        "U1,BTC-USD,2025-06-01,2,50000\nU1,ETH-USD,2025-06-01,-30,2500\n"
        "U2,ETH-BTC,2025-06-01,100,0.04\nU2,ETH-BTC,2026-03-10,150,0.045\nU2,BTC-USD,2026-03-10,0.5,60000\n"
        "B1,ETH-USD,2025-06-01,20,2800\n")
    for key, value in {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "60",
                       "RISK_VAR_LOOKBACK_DAYS": "60", "PIPELINE_DAILY_HISTORY_DAYS": "150"}.items():
        monkeypatch.setenv(key, value)
    closes = _closes()
    spike = pd.Timestamp(AS_OF, tz="UTC") + pd.Timedelta(hours=13, minutes=5)
    _write_silver(data_dir, closes, spike)
    return {"data": data_dir, "closes": closes, "spike": spike}


def _read(data_dir, table: str) -> pd.DataFrame:
    """The committed rows of `table` for AS_OF (the risk run's manifest names them)."""
    store = Store.from_uri(str(data_dir))
    manifest = read_manifest(store, risk_manifest(AS_OF))
    return read_entry(store, manifest["files"][f"{table}/as_of_date={AS_OF}"]).to_pandas()


def test_a_risk_run_records_the_version_of_silver_bars_it_read(risk_env):
    """read_bars reads silver through the Delta log, so the run record names the bars' version: a later silver
    commit moves the table on, not what the record says the run read."""
    store = Store.from_uri(str(risk_env["data"]))
    lake = Lake.of(store)
    read = lake.version(BARS_1D_DIR)
    run_risk(as_of=AS_OF, settings=get_settings())
    _drop_last_days(risk_env["data"], "ETH-USD", 7)  # silver moves on after the run
    inputs = read_manifest(store, risk_manifest(AS_OF))["inputs"]
    assert inputs[BARS_1D_DIR] == read and lake.version(BARS_1D_DIR) > read


def test_run_writes_every_table_and_the_numbers_agree(risk_env):
    data, closes = risk_env["data"], risk_env["closes"]
    summary = run_risk(as_of=None, settings=get_settings())                      # as-of defaults to the last bar day
    assert summary.as_of == AS_OF
    assert summary.products == ["BTC-USD", "ETH-BTC", "ETH-USD"]
    assert "risk as of 2026-03-31: 3 portfolios" in str(summary)
    for table, n in summary.rows.items():
        assert len(_read(data, table)) == n
    btc, eth, ethbtc = closes["BTC-USD"], closes["ETH-USD"], closes["ETH-BTC"]
    d, d1 = pd.Timestamp(AS_OF), pd.Timestamp(AS_OF) - pd.Timedelta(days=1)

    pos = _read(data, "positions_valued").set_index(["portfolio_id", "product_id"])
    assert pos.loc[("U2", "ETH-BTC"), "quantity"] == 150                      # the 2026-03-10 snapshot carried on
    assert pos.loc[("U2", "ETH-BTC"), "market_value"] == pytest.approx(150 * ethbtc[d] * btc[d], rel=1e-12)
    assert pos.loc[("U2", "ETH-BTC"), "unrealized_pnl"] == pytest.approx(150 * (ethbtc[d] - 0.045) * btc[d],
                                                                         rel=1e-12)
    assert pos.loc[("B1", "ETH-USD"), "market_value"] == pytest.approx(20 * eth[d] / btc[d], rel=1e-12)
    assert pos.loc[("U1", "ETH-USD"), "market_value"] == pytest.approx(-30 * eth[d], rel=1e-12)

    pnl = _read(data, "pnl_daily").set_index(["portfolio_id", "as_of_date"])
    u1 = (2 * btc.diff() - 30 * eth.diff())
    assert pnl.loc[("U1", AS_OF), "daily_pnl"] == pytest.approx(u1[d], rel=1e-12)
    assert pnl.loc[("U1", AS_OF), "mtd_pnl"] == pytest.approx(u1["2026-03-01":"2026-03-31"].sum(), rel=1e-9)
    u2_day = date(2026, 3, 10)                                  # rebalance day: yesterday's holdings earn the PnL
    u2 = 100 * (ethbtc * btc).diff()
    assert pnl.loc[("U2", u2_day), "daily_pnl"] == pytest.approx(u2[pd.Timestamp(u2_day)], rel=1e-12)
    val = _read(data, "portfolio_valuation")
    assert val["as_of_date"].nunique() == 60 and val["as_of_date"].max() == AS_OF

    # historical VaR: today's U1 book revalued over the last 60 daily returns
    rets = closes[["BTC-USD", "ETH-USD"]].pct_change().iloc[-60:]
    losses = -(rets["BTC-USD"] * 2 * btc[d] - rets["ETH-USD"] * 30 * eth[d])
    risk = _read(data, "risk_metrics").set_index("portfolio_id")
    assert risk.loc["U1", "var_95_hist"] == pytest.approx(np.quantile(losses, 0.95), rel=1e-12)
    assert risk.loc["U1", "es_99_hist"] == pytest.approx(losses[losses >= np.quantile(losses, 0.99)].mean(),
                                                         rel=1e-12)
    assert risk.loc["U1", "var_95_hist_pct"] == pytest.approx(
        risk.loc["U1", "var_95_hist"] / (2 * btc[d] + 30 * eth[d]), rel=1e-12)
    assert risk.loc["U1", "lookback_days"] == 60
    # B1 holds ETH measured in BTC: its VaR uses ETH-USD / BTC-USD returns, in BTC
    eth_in_btc = (eth / btc).pct_change().iloc[-60:]
    b1_losses = -(eth_in_btc * 20 * eth[d] / btc[d])
    assert risk.loc["B1", "var_99_hist"] == pytest.approx(np.quantile(b1_losses, 0.99), rel=1e-12)
    # Cornish-Fisher on the same losses, moments by hand; 60 losses leave 6 above the 90% threshold: no EVT figure
    sd, skew, kurt = losses.std(ddof=1), stats.skew(losses), stats.kurtosis(losses)
    z = stats.norm.ppf(0.99)
    z_cf = z + (z * z - 1) * skew / 6 + (z ** 3 - 3 * z) * kurt / 24 - (2 * z ** 3 - 5 * z) * skew ** 2 / 36
    assert risk.loc["U1", "var_99_param_cf"] == pytest.approx(sd * z_cf, rel=1e-9)
    assert np.isfinite(risk[["var_99_param_t", "es_99_param_t"]].to_numpy()).all()
    assert risk[["var_99_evt_gpd", "es_99_evt_gpd", "var_995_evt_gpd"]].isna().all().all()

    # backtest: the forecast made at the close of D-1 against the PnL of D
    bt = _read(data, "var_backtest")
    row = bt[(bt.portfolio_id == "U1") & (bt.method == "hist") & (bt.confidence == 0.99)
             & (bt.as_of_date == AS_OF)].iloc[0]
    prev_rets = closes[["BTC-USD", "ETH-USD"]].pct_change().loc[:d1].iloc[-60:]
    prev_losses = -(prev_rets["BTC-USD"] * 2 * btc[d1] - prev_rets["ETH-USD"] * 30 * eth[d1])
    assert row["var_forecast"] == pytest.approx(np.quantile(prev_losses, 0.99), rel=1e-12)
    assert row["realized_pnl"] == pytest.approx(u1[d], rel=1e-12)
    assert row["forecast_date"] == d1.date()
    assert row["is_exception"] == (-u1[d] > row["var_forecast"])
    assert set(bt["method"]) == {"hist", "param", "mc", "fhs_ewma", "garch_t", "param_cf", "param_t", "evt_gpd"}
    assert set(bt["confidence"]) == {0.95, 0.975, 0.99}
    assert bt.loc[bt.method == "evt_gpd", "var_forecast"].isna().all()              # uncomputable, never a number
    summ = _read(data, "var_backtest_summary")
    assert len(summ) == 3 * 8 * 3
    u1_hist = bt[(bt.portfolio_id == "U1") & (bt.method == "hist") & (bt.confidence == 0.99)]
    s = summ[(summ.portfolio_id == "U1") & (summ.method == "hist") & (summ.confidence == 0.99)].iloc[0]
    assert s["exceptions"] == u1_hist["is_exception"].sum() and s["n_days"] == 60

    breaches = _read(data, "limit_breaches")
    assert {("U1", "var"), ("U2", "concentration"), ("B1", "drawdown")} <= set(
        zip(breaches["portfolio_id"], breaches["limit_type"], strict=True))

    anomalies = _read(data, "anomalies")
    hit = anomalies[(anomalies.product_id == "BTC-USD")]
    assert risk_env["spike"] in set(hit["bucket_start"])
    assert (hit["robust_z"].abs() > 3.5).all()
    corr = _read(data, "correlations")
    assert len(corr) == 3
    dd = _read(data, "drawdowns")
    assert set(dd["entity_type"]) == {"portfolio", "asset"}
    assert (dd["max_drawdown"] <= 0).all()

    again = run_risk(as_of=AS_OF, settings=get_settings())                         # rerun replaces, never appends
    assert again.rows == summary.rows


@pytest.mark.parametrize(("params", "setting"), [
    ({"ewma_lambda": 1.5}, "RISK_EWMA_LAMBDA=1.5"), ({"ewma_lambda": 0.0}, "RISK_EWMA_LAMBDA=0.0"),
    ({"var_lookback_days": 5}, "RISK_VAR_LOOKBACK_DAYS=5"), ({"backtest_days": -3}, "RISK_BACKTEST_DAYS=-3"),
    ({"mc_scenarios": 99}, "RISK_MC_SCENARIOS=99"), ({"mc_distribution": "cauchy"}, "RISK_MC_DISTRIBUTION='cauchy'"),
    ({"mc_t_dof": 2.0}, "RISK_MC_T_DOF=2.0"), ({"mc_t_dof": float("nan")}, "RISK_MC_T_DOF=nan"),
    ({"annualization_days": 0}, "RISK_ANNUALIZATION_DAYS=0"), ({"anomaly_window": 1}, "RISK_ANOMALY_WINDOW=1"),
    ({"anomaly_threshold": 0.0}, "RISK_ANOMALY_THRESHOLD=0.0"),
])
def test_a_parameter_outside_its_model_is_refused_naming_the_setting(params, setting):
    # before: a decay of 1.5 gave an EWMA VaR of 5e23, a lookback of -5 asked for more history, -3 backtest days
    # or a NaN dof ended in an IndexError, 0 annualisation days in volatilities of 0
    with pytest.raises(ConfigError, match=f"^setting {re.escape(setting)} is out of range: expected "):
        RiskParams(**params)
    assert RiskParams(mc_scenarios=100, mc_distribution="normal", mc_t_dof=1.0, backtest_days=0)  # the bounds pass


def test_missing_bars_for_a_held_product(risk_env):
    remove_product(risk_env["data"], BARS_1D_DIR, "ETH-BTC")
    with pytest.raises(DataNotFoundError, match=r"no daily bars for \['ETH-BTC'\]"):
        run_risk(as_of=AS_OF, settings=get_settings())


def test_sample_book_breaches_each_limit_type_on_simulated_prices():
    """The shipped book on prices with the simulator's volatilities (BTC ~45%, ETH ~70%, alts higher)."""
    instruments = load_instruments()
    products = list(instruments["product_id"])
    annual = {"BTC-USD": 0.45, "ETH-USD": 0.7, "ETH-BTC": 0.4}
    vol = np.array([annual.get(p, 0.95) for p in products]) / np.sqrt(365)
    rng = np.random.default_rng(42)
    days = pd.date_range("2025-10-01", "2026-11-20", freq="D")
    market = rng.standard_normal((len(days), 1)) * 0.02
    r = 0.6 * market + rng.standard_normal((len(days), len(products))) * vol
    start = {"BTC-USD": 90000, "ETH-USD": 3000, "SOL-USD": 150, "XRP-USD": 2.2, "ADA-USD": 0.65, "DOGE-USD": 0.18,
             "AVAX-USD": 30, "LINK-USD": 16, "DOT-USD": 6, "LTC-USD": 95, "UNI-USD": 9, "ATOM-USD": 6, "ETH-BTC": 0.034}
    closes = pd.DataFrame(np.exp(np.cumsum(r, axis=0)) * np.array([start[p] for p in products]), index=days,
                          columns=products)
    tables = compute_tables(closes, dict(zip(products, instruments["quote_currency"], strict=True)),
                            load_portfolios(), load_positions(), RiskParams(mc_scenarios=1000, backtest_days=30))
    breaches = tables["limit_breaches"]
    assert set(breaches["limit_type"]) == {"var", "concentration", "drawdown"}
    assert 3 <= breaches["portfolio_id"].nunique() <= 8                       # a few, not the whole book
    risk = tables["risk_metrics"]
    assert len(risk) == 22 and risk[["var_99_hist", "var_99_param", "var_99_mc"]].gt(0).all().all()
    assert (risk["es_99_hist"] >= risk["var_99_hist"]).all()
    fat = risk[[f"{k}_{c}_{m}" for m in ("param_cf", "param_t") for c in (95, 99) for k in ("var", "es")]].to_numpy()
    assert np.isfinite(fat).all() and (fat > 0).all()
    # these prices are Gaussian: a few books' 25 exceedances fit xi <= -1 (no MLE), uncomputable; the rest finite
    evt = risk[[f"{k}_{c}_evt_gpd" for c in (95, 99, 995) for k in ("var", "es")]]
    computable = evt.notna().all(axis=1)
    assert computable.sum() >= 18 and (evt.isna().all(axis=1) | computable).all()
    assert (evt[computable] > 0).all().all()
    assert (risk["es_995_evt_gpd"] >= risk["var_995_evt_gpd"])[computable].all()
    assert (risk["var_995_evt_gpd"] > risk["var_99_evt_gpd"])[computable].all()
    comparison = tables["var_model_comparison"]
    assert {"param_cf", "param_t", "evt_gpd"} <= set(comparison["method"])


def test_close_matrix_fills_gaps_and_refuses_an_as_of_without_bars():
    from etl.risk.engine import close_matrix

    bars = pd.DataFrame({"product_id": ["A", "A", "A", "B", "B"],
                         "price_date": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-04",
                                                       "2026-01-02", "2026-01-04"]),
                         "close": [1.0, 2.0, 4.0, 10.0, 40.0]})
    closes = close_matrix(bars, ["A", "B"], pd.Timestamp("2026-01-04"))
    assert list(closes.index.strftime("%d")) == ["02", "03", "04"]          # from the first day both have a close
    assert closes.loc["2026-01-03"].tolist() == [2.0, 10.0]                   # a missing day keeps the last close
    with pytest.raises(DataNotFoundError, match="no daily bar on 2026-01-06 for any of"):
        close_matrix(bars, ["A", "B"], pd.Timestamp("2026-01-06"))
    with pytest.raises(DataNotFoundError, match=r"no daily bars for \['C'\]"):
        close_matrix(bars, ["A", "C"], pd.Timestamp("2026-01-04"))


def test_intraday_window_is_the_previous_buckets_of_the_grid():
    """A 25-bucket outage of every product just before a spike: the spike's window is the previous 60 buckets of
    the 5-minute grid (35 of them with returns), not the previous 60 rows that happen to exist."""
    grid = pd.date_range(pd.Timestamp(AS_OF) - pd.Timedelta(hours=6), pd.Timestamp(AS_OF) + pd.Timedelta(hours=2),
                         freq="5min", tz="UTC", inclusive="left")
    spike = pd.Timestamp(AS_OF, tz="UTC") + pd.Timedelta(hours=1)
    outage = (grid >= spike - pd.Timedelta(minutes=125)) & (grid < spike)
    rng = np.random.default_rng(9)
    frames = []
    for product in ("BTC-USD", "ETH-USD"):
        r = rng.standard_normal(len(grid)) * 0.001
        r[grid == spike] = 0.05
        frames.append(pd.DataFrame({"product_id": product, "bucket_start": grid, "close": 100 * np.exp(np.cumsum(r))})
                      [~outage])
    bars = pd.concat(frames, ignore_index=True)
    out = intraday_anomalies(bars, pd.Timestamp(AS_OF), RiskParams())
    row = out[(out["product_id"] == "BTC-USD") & (out["bucket_start"] == spike)].iloc[0]
    btc = bars[bars["product_id"] == "BTC-USD"].set_index("bucket_start")["close"]
    ret = btc.pct_change()
    window = ret[(ret.index >= spike - pd.Timedelta(minutes=300)) & (ret.index < spike)].dropna()
    assert len(window) == 35                                                 # 60 grid buckets, 25 missing
    med = window.median()
    mad = stats.median_abs_deviation(window.to_numpy(), scale=1.0)
    assert row["robust_z"] == pytest.approx(0.6745 * (ret[spike] - med) / mad, rel=1e-12)


# ---- compute_tables against independent pandas/scipy computations (no I/O) -----------------------------------
BOOK = pd.DataFrame({"portfolio_id": ["U1", "U1", "B1"], "product_id": ["BTC-USD", "ETH-USD", "ETH-BTC"],
                     "as_of_date": pd.to_datetime(["2025-12-01"] * 3), "quantity": [2.0, -30.0, 40.0],
                     "avg_cost": [50000.0, 2500.0, 0.04]})
PORTFOLIOS = pd.DataFrame({"portfolio_id": ["U1", "B1"], "name": ["u", "b"], "base_currency": ["USD", "BTC"],
                           "var_limit": [1e12, 1e12], "concentration_limit": [1.0, 1.0],
                           "drawdown_limit": [1.0, 1.0], "var_limit_metric": ["var_99_hist"] * 2})
SMALL_PARAMS = RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=3000)


def _u1_pnl_and_returns(closes: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """U1 holds 2 BTC and -30 ETH throughout: PnL and the return on the previous day's gross exposure."""
    pnl = 2 * closes["BTC-USD"].diff() - 30 * closes["ETH-USD"].diff()
    gross = 2 * closes["BTC-USD"] + 30 * closes["ETH-USD"]
    return pnl, pnl / gross.shift(1)


def test_compute_tables_vol_var_and_backtest_against_independent_oracles():
    closes = _closes()
    tables = compute_tables(closes, QUOTE, PORTFOLIOS, BOOK, SMALL_PARAMS)
    risk = tables["risk_metrics"].set_index("portfolio_id")
    d = closes.index[-1]
    pnl, ret = _u1_pnl_and_returns(closes)

    # volatility: pandas rolling std (ddof=1) x sqrt(365); EWMA by the direct recursion S = lam S + r^2, W = lam W + 1
    for w in (20, 30):
        assert risk.loc["U1", f"vol_{w}d"] == pytest.approx(ret.rolling(w).std().iloc[-1] * np.sqrt(365), rel=1e-12)
    s = n = 0.0
    for r in ret.iloc[-60:]:
        s, n = 0.94 * s + r * r, 0.94 * n + 1.0
    assert risk.loc["U1", "vol_ewma"] == pytest.approx(np.sqrt(s / n * 365), rel=1e-12)
    asset = tables["asset_risk"].set_index("product_id")
    eth_btc = closes["ETH-BTC"].pct_change()
    assert asset.loc["ETH-BTC", "vol_30d"] == pytest.approx(eth_btc.rolling(30).std().iloc[-1] * np.sqrt(365),
                                                            rel=1e-12)

    # delta-normal: hand-built covariance of the last 60 returns, scipy's normal quantile and density
    rets = closes[["BTC-USD", "ETH-USD"]].pct_change().iloc[-60:]
    e = np.array([2 * closes.loc[d, "BTC-USD"], -30 * closes.loc[d, "ETH-USD"]])
    dev = rets - rets.mean()
    cov = dev.T.to_numpy() @ dev.to_numpy() / (len(rets) - 1)
    sigma = np.sqrt(e @ cov @ e)
    for c in (0.95, 0.99):
        k = round(100 * c)
        assert risk.loc["U1", f"var_{k}_param"] == pytest.approx(stats.norm.ppf(c) * sigma, rel=1e-12)
        assert risk.loc["U1", f"es_{k}_param"] == pytest.approx(sigma * stats.norm.pdf(stats.norm.ppf(c)) / (1 - c),
                                                                rel=1e-12)
    # Monte Carlo: the same seeded draws (rows: scenarios, columns: held products in sorted order) through scipy's
    # matrix square root
    rng = np.random.default_rng(SMALL_PARAMS.mc_seed)
    z = rng.standard_normal((SMALL_PARAMS.mc_scenarios, 3))
    scale = np.sqrt(3.0 / rng.chisquare(5.0, SMALL_PARAMS.mc_scenarios))
    all_rets = closes[["BTC-USD", "ETH-BTC", "ETH-USD"]].assign(**{"ETH-BTC": closes["ETH-BTC"] * closes["BTC-USD"]})
    full_cov = np.cov(all_rets.pct_change().iloc[-60:].to_numpy(), rowvar=False)
    mc_losses = -(scale[:, None] * (z @ linalg.sqrtm(full_cov).real)) @ np.array([e[0], 0.0, e[1]])
    assert risk.loc["U1", "var_99_mc"] == pytest.approx(np.quantile(mc_losses, 0.99), rel=1e-9)
    tail = mc_losses[mc_losses >= np.quantile(mc_losses, 0.99)]
    assert risk.loc["U1", "es_99_mc"] == pytest.approx(tail.mean(), rel=1e-9)

    # backtest statistics from the rows by hand: Kupiec, and Christoffersen from pandas-shifted transition counts
    bt = tables["var_backtest"]
    rows = bt[(bt.portfolio_id == "U1") & (bt.method == "hist") & (bt.confidence == 0.95)].sort_values("as_of_date")
    hits = rows["is_exception"].to_numpy()
    n, x = len(hits), hits.sum()
    summ = tables["var_backtest_summary"].set_index(["portfolio_id", "method", "confidence"]).loc[("U1", "hist", 0.95)]
    ph = x / n
    kupiec = -2 * ((n - x) * np.log(0.95) + x * np.log(0.05) - (n - x) * np.log(1 - ph) - x * np.log(ph))
    assert n == 40 and 0 < x < n and summ["kupiec_lr"] == pytest.approx(kupiec, rel=1e-9)
    prev, cur = pd.Series(hits).shift(1).iloc[1:].astype(bool), pd.Series(hits).iloc[1:]
    n00, n01 = int((~prev & ~cur).sum()), int((~prev & cur).sum())
    n10, n11 = int((prev & ~cur).sum()), int((prev & cur).sum())
    pi0, pi = n01 / (n00 + n01), (n01 + n11) / (n - 1)
    pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
    unrestricted = special.xlogy(n00, 1 - pi0) + special.xlogy(n01, pi0) + special.xlogy(n10, 1 - pi1) \
        + special.xlogy(n11, pi1)
    ind = -2 * ((n00 + n10) * np.log(1 - pi) + (n01 + n11) * np.log(pi) - unrestricted)
    assert summ["christoffersen_ind_lr"] == pytest.approx(ind, rel=1e-9, abs=1e-12)
    assert summ["cc_p"] == pytest.approx(stats.chi2.sf(kupiec + ind, 2), rel=1e-9)


def test_var_99_in_usd_is_the_base_currency_var_times_the_as_of_base_usd_close():
    """The one USD figure pages rank books by: B1 (BTC base, 40 ETH-BTC) and U1 (USD base), by hand."""
    closes = _closes()
    risk = compute_tables(closes, QUOTE, PORTFOLIOS, BOOK, SMALL_PARAMS)["risk_metrics"].set_index("portfolio_id")
    d = closes.index[-1]
    # B1 in BTC: its ETH-BTC position's historical losses over the last 60 returns, numpy's linear quantile
    losses = -(40 * closes.loc[d, "ETH-BTC"]) * closes["ETH-BTC"].pct_change().iloc[-60:].to_numpy()
    var_btc = np.quantile(losses, 0.99)
    assert risk.loc["B1", "var_99_hist"] == pytest.approx(var_btc, rel=1e-12)
    assert risk.loc["B1", "var_99_hist_usd"] == pytest.approx(var_btc * closes.loc[d, "BTC-USD"], rel=1e-12)
    assert risk.loc["U1", "var_99_hist_usd"] == risk.loc["U1", "var_99_hist"]        # a USD book: x 1


def test_backtest_forecasts_do_not_look_ahead():
    """Changing the last close changes today's VaR but no forecast made before today; the forecast made yesterday
    is compared with today's PnL."""
    closes = _closes()
    base = compute_tables(closes, QUOTE, PORTFOLIOS, BOOK, SMALL_PARAMS)
    bumped = closes.copy()
    bumped.iloc[-1] *= [1.2, 0.7, 1.3]
    moved = compute_tables(bumped, QUOTE, PORTFOLIOS, BOOK, SMALL_PARAMS)
    a, b = base["var_backtest"], moved["var_backtest"]
    assert a["forecast_date"].max() == closes.index[-2] and (a["as_of_date"] - a["forecast_date"]).eq(
        pd.Timedelta(days=1)).all()
    np.testing.assert_array_equal(a["var_forecast"].to_numpy(), b["var_forecast"].to_numpy())
    last = a["as_of_date"] == closes.index[-1]
    assert (a.loc[last, "realized_pnl"] != b.loc[last, "realized_pnl"]).all()
    np.testing.assert_array_equal(a.loc[~last, "realized_pnl"].to_numpy(), b.loc[~last, "realized_pnl"].to_numpy())
    for col in ("var_99_hist", "var_99_param", "var_99_mc"):
        assert (base["risk_metrics"][col] != moved["risk_metrics"][col]).all()


def test_nan_metric_is_uncomputable_breach():
    """A NaN or infinite metric breaches its limit as 'uncomputable' (value unknown), never passes silently; an
    empty book (gross exposure 0, concentration NaN: no largest asset) breaches nothing."""
    from etl.report.alerts import message
    from etl.risk.engine import limit_breaches

    risk = pd.DataFrame({
        "portfolio_id": ["NAN", "INF", "OVER", "OK", "EMPTY"], "as_of_date": [pd.Timestamp(AS_OF)] * 5,
        "base_currency": ["USD"] * 5, "var_99_hist": [np.nan, 10.0, 500.0, 10.0, 0.0],
        "gross_exposure": [np.nan, 1e4, 1e4, 1e4, 0.0],
        "concentration_pct": [0.1, np.inf, 0.1, 0.1, np.nan],
        "drawdown_from_peak": [-0.1, -0.1, -0.1, -0.1, 0.0]})
    portfolios = pd.DataFrame({"portfolio_id": ["NAN", "INF", "OVER", "OK", "EMPTY"], "var_limit": [100.0] * 5,
                               "concentration_limit": [0.5] * 5, "drawdown_limit": [0.5] * 5,
                               "var_limit_metric": ["var_99_hist"] * 5})
    out = limit_breaches(risk, portfolios).sort_values(["portfolio_id", "limit_type"])
    got = [(r.portfolio_id, r.limit_type, r.breach_kind, None if np.isnan(r.value) else r.value)
           for r in out.itertuples()]
    assert got == [("INF", "concentration", "uncomputable", None), ("NAN", "var", "uncomputable", None),
                   ("OVER", "var", "exceeded", 500.0)]
    text = message({**out.iloc[1].to_dict(), "value": None, "as_of_date": AS_OF})
    assert "UNCOMPUTABLE" in text and "NAN var limit" in text


def test_the_drawdown_limit_is_checked_on_the_current_drawdown_from_the_running_peak():
    """One long BTC position, so the book's wealth is the price over its first close: 100 for ten days, down to 60
    (max drawdown -40%), a new peak at 120, then 90 on the as-of day: 90 / 120 - 1 = -25% below the running peak.
    A 30% limit holds (|max_drawdown| 40% would have breached it forever); a 20% limit is breached at 25%."""
    days = pd.date_range("2026-01-01", periods=30, freq="D")
    price = np.r_[[100.0] * 10, [60.0] * 5, np.linspace(70, 120, 6), [120.0] * 8, [90.0]]
    closes = pd.DataFrame({"BTC-USD": price}, index=days)
    portfolios = pd.DataFrame({"portfolio_id": ["HOLDS", "BREACH"], "name": ["h", "b"], "base_currency": ["USD"] * 2,
                               "var_limit": [1e12] * 2, "concentration_limit": [1.0] * 2,
                               "drawdown_limit": [0.3, 0.2], "var_limit_metric": ["var_99_hist"] * 2})
    book = pd.DataFrame({"portfolio_id": ["HOLDS", "BREACH"], "product_id": ["BTC-USD"] * 2,
                         "as_of_date": pd.to_datetime(["2025-12-01"] * 2), "quantity": [1.0, 3.0],
                         "avg_cost": [100.0] * 2})
    tables = compute_tables(closes, {"BTC-USD": "USD"}, portfolios, book, RiskParams(mc_scenarios=500,
                                                                                       backtest_days=20))
    risk = tables["risk_metrics"].set_index("portfolio_id")
    assert risk["max_drawdown"].tolist() == pytest.approx([-0.4, -0.4])
    assert risk["drawdown_from_peak"].tolist() == pytest.approx([90 / 120 - 1] * 2)
    breach = tables["limit_breaches"].query("limit_type == 'drawdown'")
    assert breach[["portfolio_id", "metric", "breach_kind"]].values.tolist() == [
        ["BREACH", "drawdown_from_peak", "exceeded"]]
    assert (breach["value"].iat[0], breach["limit_value"].iat[0], breach["utilisation"].iat[0]) == \
        pytest.approx((0.25, 0.2, 1.25))
    # the intraday revaluation continues the same measure from the close
    dd = tables["scenario_portfolios"].set_index("portfolio_id")["drawdown"]
    assert dd.to_dict() == pytest.approx(risk["drawdown_from_peak"].to_dict())


def test_overflowing_position_is_rejected_with_file_and_line(risk_env):
    ref = get_settings().reference_dir
    with open(ref / "positions.csv", "a") as f:
        f.write("U1,ETH-USD,2026-03-20,1e308,2500\n")                          # line 8: 1e308 * 2500 = inf
    with pytest.raises(ValidationError, match=r"positions\.csv:8: non-finite value: quantity \* avg_cost"):
        load_positions(get_settings())


def test_market_value_overflow_refuses_the_risk_run_and_commits_nothing(risk_env):
    ref = get_settings().reference_dir
    with open(ref / "positions.csv", "a") as f:
        f.write("U1,BTC-USD,2026-03-20,1e304,1\n")                      # a finite cost basis, an infinite value
    with pytest.raises(ValidationError, match=r"positions\.csv:8: non-finite value: market value of U1 BTC-USD"):
        run_risk(as_of=AS_OF, settings=get_settings())
    assert read_manifest(Store.from_uri(str(risk_env["data"])), risk_manifest(AS_OF)) is None


def test_duckdb_reads_exactly_the_committed_risk_rows_after_a_rerun(risk_env):
    """Issue 31 item 5: an independent Delta reader gets our rows, not the superseded run's files beside them."""
    first = run_risk(as_of=AS_OF, settings=get_settings())
    run_risk(as_of=AS_OF, settings=get_settings())   # the rerun supersedes every partition of the day
    on_disk = list((risk_env["data"] / "outputs/risk_metrics").rglob("*.parquet"))
    ours = _read(risk_env["data"], "risk_metrics").sort_values("portfolio_id", ignore_index=True)
    assert len(on_disk) == 2 and len(ours) == first.portfolios == 3
    theirs = duckdb_frame(str(risk_env["data"] / "outputs/risk_metrics")).sort_values("portfolio_id",
                                                                                     ignore_index=True)
    theirs["as_of_date"] = theirs["as_of_date"].dt.date   # DuckDB's frames hold a DATE as a timestamp
    text = ours["lookback_limited_by"]                     # NULL text: None in DuckDB's frame, NaN in pandas'
    ours["lookback_limited_by"] = text.astype(object).where(text.notna(), None)
    pd.testing.assert_frame_equal(theirs, ours, check_dtype=False)


def test_an_empty_portfolio_is_worth_zero_breaches_nothing_and_leaves_the_others_unchanged(risk_env):
    """docs/risk_conventions.md "Empty portfolio": a portfolio with no positions gets its as-of rows (market
    value 0, PnL 0, VaR 0), no limit breach, and every other portfolio's figures equal the run without it."""
    clean = run_risk(as_of=AS_OF, settings=get_settings())
    before = {t: _read(risk_env["data"], t) for t in ("portfolio_valuation", "pnl_daily", "risk_metrics",
                                                      "limit_breaches", "positions_valued")}
    with open(get_settings().reference_dir / "portfolios.csv", "a") as f:
        f.write("P999,Empty book,USD,1000,0.5,0.5\n")
    summary = run_risk(as_of=AS_OF, settings=get_settings())
    assert summary.portfolios == clean.portfolios + 1 and summary.breaches == clean.breaches
    val = _read(risk_env["data"], "portfolio_valuation")
    p999 = val[val["portfolio_id"] == "P999"]
    assert p999["as_of_date"].tolist() == [AS_OF]                     # the as-of day only: it never held anything
    assert p999[["market_value", "gross_exposure", "unrealized_pnl"]].to_numpy().tolist() == [[0.0, 0.0, 0.0]]
    assert np.isnan(p999["concentration_pct"].iat[0])                 # no largest asset: NULL, not a breach
    pnl = _read(risk_env["data"], "pnl_daily")
    assert pnl.loc[pnl["portfolio_id"] == "P999", "daily_pnl"].tolist() == [0.0]
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert risk.loc["P999", ["var_95_hist", "var_99_hist", "var_99_param", "var_99_mc", "max_drawdown"]].eq(0).all()
    assert "P999" not in set(_read(risk_env["data"], "limit_breaches")["portfolio_id"])
    for table, df in before.items():
        after = _read(risk_env["data"], table)
        after = after[after["portfolio_id"] != "P999"].drop(columns=["risk_run_id"], errors="ignore")
        pd.testing.assert_frame_equal(after.reset_index(drop=True),
                                      df.drop(columns=["risk_run_id"], errors="ignore").reset_index(drop=True))


def _drop_last_days(data_dir, product: str, days: int) -> None:
    """The product's daily bars stop `days` days before the as-of day."""
    store = Store.from_uri(str(data_dir))
    for rel in Lake.of(store).files(BARS_1D_DIR):
        if f"/product_id={product}/" in rel:
            table = pq.read_table(data_dir / rel)
            keep = pa.array(pd.to_datetime(table["price_date"].to_pandas()) <= pd.Timestamp(AS_OF) - pd.Timedelta(days=days))
            commit_silver(store, BARS_1D_DIR, [({"product_id": product, "year": rel.split("/year=")[1][:4]},
                                                table.filter(keep))])


def test_a_holding_without_a_bar_on_the_as_of_day_is_flagged_stale_or_delisted(risk_env):
    """ETH-USD's bars stop 7 days early: its positions are valued at the close of its last bar and flagged
    is_stale (the report then refuses the day, tests/integration/test_stale_prices.py); once the instrument master
    delists it on that day, is_delisted too (valued at the last price, the day complete)."""
    _drop_last_days(risk_env["data"], "ETH-USD", 7)
    last = pd.Timestamp(AS_OF) - pd.Timedelta(days=7)
    eth_last = risk_env["closes"].loc[last, "ETH-USD"]
    assert run_risk(as_of=None, settings=get_settings()).as_of == last.date()  # listed: the last day all have
    run_risk(as_of=AS_OF, settings=get_settings())
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    eth = pos.xs("ETH-USD", level="product_id")
    assert eth["close"].tolist() == [eth_last, eth_last]
    assert eth.loc["U1", "market_value"] == pytest.approx(-30 * eth_last, rel=1e-12)
    assert (eth["price_date"] == last.date()).all() and eth["is_stale"].all() and not eth["is_delisted"].any()
    fresh = pos.drop(index="ETH-USD", level="product_id")
    assert (fresh["price_date"] == AS_OF).all() and not fresh["is_stale"].any()

    ref = get_settings().reference_dir
    lines = (ref / "instruments.csv").read_text().splitlines()
    (ref / "instruments.csv").write_text("\n".join(
        [f"{lines[0]},delisted_on"] + [f"{r},{last.date() if r.startswith('ETH-USD,') else ''}" for r in lines[1:]])
        + "\n")
    assert run_risk(as_of=None, settings=get_settings()).as_of == AS_OF   # the delisted product holds nothing back
    pos = _read(risk_env["data"], "positions_valued")
    eth = pos[pos["product_id"] == "ETH-USD"]
    assert eth["is_stale"].all() and eth["is_delisted"].all() and eth["close"].eq(eth_last).all()
    assert not pos.loc[pos["product_id"] != "ETH-USD", "is_delisted"].any()


def test_portfolio_chunks_do_not_change_any_table(monkeypatch):
    """Portfolios are valued and backtested in chunks (memory): one portfolio per chunk gives the same tables,
    Monte Carlo paths and bootstrap p-values included (they are drawn per model and level, not per portfolio)."""
    import etl.risk.engine as engine

    params = RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=2000, es_simulations=300,
                        es_bootstrap=300)
    book = pd.concat([BOOK, BOOK.assign(portfolio_id="U2", quantity=BOOK["quantity"] * -0.5)], ignore_index=True)
    portfolios = pd.concat([PORTFOLIOS, PORTFOLIOS.iloc[:1].assign(portfolio_id="U2")], ignore_index=True)
    whole = compute_tables(_closes(), QUOTE, portfolios, book, params)
    monkeypatch.setattr(engine, "PORTFOLIO_CHUNK", 1)
    chunked = compute_tables(_closes(), QUOTE, portfolios, book, params)
    assert set(whole) == set(chunked)
    for name, df in whole.items():
        keys = [c for c in ("portfolio_id", "product_id", "method", "confidence", "as_of_date", "scenario_id",
                            "scenario_date", "asset_index", "product_id_a", "product_id_b", "entity_id",
                            "limit_type", "bucket_start", "price_date", "scope") if c in df.columns]
        a = df.sort_values(keys).reset_index(drop=True) if keys else df
        b = chunked[name].sort_values(keys).reset_index(drop=True) if keys else chunked[name]
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, obj=name)


def test_a_single_product_has_its_asset_risk_and_no_correlation_pairs():
    """One product: np.corrcoef returns a scalar; the asset tables still build, with no correlation rows."""
    from etl.risk.engine import asset_tables

    days = pd.date_range("2026-01-01", periods=40, freq="D")
    closes = pd.DataFrame({"BTC-USD": 100 * np.exp(np.cumsum(np.random.default_rng(1).normal(0, 0.02, 40)))},
                          index=days)
    out = asset_tables(closes, {}, {"BTC-USD": "USD"}, 30, 0, RiskParams())
    assert out["correlations"].empty
    assert out["asset_risk"]["product_id"].tolist() == ["BTC-USD"]
    assert out["asset_risk"]["close"].iat[0] == closes["BTC-USD"].iat[-1]


def test_a_var_limit_on_an_uncomputable_evt_figure_is_an_uncomputable_breach():
    """60 losses leave 6 above the EVT threshold: var_99_evt_gpd is NaN, so a limit on it cannot be shown to hold;
    the same limit on the Student-t figure is a number and holds."""
    portfolios = PORTFOLIOS.assign(var_limit_metric=["var_99_evt_gpd", "var_99_param_t"])
    tables = compute_tables(_closes(), QUOTE, portfolios, BOOK, SMALL_PARAMS)
    var_rows = tables["limit_breaches"].query("limit_type == 'var'")
    assert list(zip(var_rows["portfolio_id"], var_rows["metric"], var_rows["breach_kind"], strict=True)) == [
        ("U1", "var_99_evt_gpd", "uncomputable")]
    assert np.isfinite(tables["risk_metrics"].set_index("portfolio_id").at["B1", "var_99_param_t"])


def test_tail_backtest_refits_every_k_days_and_rescales_by_the_days_loss_sd():
    """tail_refit_days = k: a block's models are fitted on its first day the portfolio holds something and
    rescaled on its other days by the day's loss sd: each forecast is the fit of the refit day's losses (by
    einsum, an independent sum) times sd_t / sd_r; with k = 1 each day's own fit (the full refit)."""
    from etl.risk import tails
    from etl.risk.engine import BACKTEST_CONFIDENCES, _Scenarios, _tail_backtest
    from etl.risk.var import portfolio_sigma

    rng = np.random.default_rng(6)
    t_days, n, a, k = 23, 250, 3, 5
    w = rng.standard_t(4, (t_days, n, a)) * 0.02
    expo = rng.normal(0, 1000, (t_days, 4, a))
    expo[:7, 3] = 0.0                                                 # portfolio 3 holds from day 7 (block 5..9)
    held = np.abs(expo).sum(axis=-1) > 0
    sc = _Scenarios.of(w)
    sigma = portfolio_sigma(sc.cov, np.swapaxes(expo, 1, 2))
    every_day, strided = (_tail_backtest(sc, expo, held, sigma, np.random.default_rng(9),
                                         RiskParams(es_simulations=200, tail_refit_days=d), {}) for d in (1, k))
    losses = -np.einsum("tna,tka->tkn", w, expo)                      # (T, P, N)
    sd = losses.std(axis=-1, ddof=1)
    refit = np.repeat(np.arange(0, t_days, k), k)[:t_days, None] * np.ones((1, 4), int)
    refit[5:10, 3] = 7
    ti, pi = np.nonzero(held)
    for method in tails.METHODS:
        daily = tails.fit(method, losses)
        for c in BACKTEST_CONFIDENCES:
            v, e = daily.var_es(c)
            np.testing.assert_allclose(every_day[(method, c)][0][held], v[held], rtol=1e-6)
            np.testing.assert_allclose(every_day[(method, c)][1][held], e[held], rtol=1e-6)
            r = refit[ti, pi]
            scale = sd[ti, pi] / sd[r, pi]
            np.testing.assert_allclose(strided[(method, c)][0][held], v[r, pi] * scale, rtol=1e-6)
            np.testing.assert_allclose(strided[(method, c)][1][held], e[r, pi] * scale, rtol=1e-6)
    assert np.isfinite(strided[("param_t", 0.99)][0][held]).all()


def test_the_backtest_summary_from_the_engines_arrays_equals_the_summary_of_its_rows():
    """The engine summarises each series from its (day x portfolio) arrays; `backtest_summary` of the var_backtest
    rows (a groupby over the series) gives the same table, with a book that holds nothing for a while (its
    neighbouring held days count as consecutive) and one that holds nothing at all in the window (no rows)."""
    from etl.risk.engine import backtest_summary

    closes = _closes()
    gap = pd.DataFrame({"portfolio_id": "U3", "product_id": ["BTC-USD", "BTC-USD", "BTC-USD"],
                        "as_of_date": pd.to_datetime(["2025-12-01", "2026-03-01", "2026-03-12"]),
                        "quantity": [1.0, 0.0, -1.5], "avg_cost": 50000.0})
    gone = pd.DataFrame({"portfolio_id": "U4", "product_id": ["ETH-USD", "ETH-USD"],
                         "as_of_date": pd.to_datetime(["2025-12-01", "2026-01-02"]), "quantity": [3.0, 0.0],
                         "avg_cost": 2500.0})
    book = pd.concat([BOOK, gap, gone], ignore_index=True)
    portfolios = pd.concat([PORTFOLIOS, PORTFOLIOS.iloc[:1].assign(portfolio_id="U3"),
                            PORTFOLIOS.iloc[:1].assign(portfolio_id="U4")], ignore_index=True)
    params = RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=2000, es_simulations=200,
                        es_bootstrap=200)
    tables = compute_tables(closes, QUOTE, portfolios, book, params)
    bt = tables["var_backtest"]
    u3 = bt[(bt["portfolio_id"] == "U3") & (bt["method"] == "hist") & (bt["confidence"] == 0.95)]
    assert 0 < len(u3) < params.backtest_days and "U4" not in set(bt["portfolio_id"])   # a gap; U4 has no rows
    expected = backtest_summary(bt, closes.index[-1]).sort_values(["portfolio_id", "method", "confidence"],
                                                                     ignore_index=True)
    got = tables["var_backtest_summary"]
    assert set(got["portfolio_id"]) == {"U1", "B1", "U3"}
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_freed_arrays_go_back_to_the_os_when_released():
    """glibc keeps freed array memory for reuse (after a large free it stops mapping arrays of that size on their
    own, and memory below a live block cannot shrink the heap); release_freed_memory hands it back, so a run's
    peak RSS is what it holds, not what it once held (the per-chunk arrays of the backtest and the attribution)."""
    import psutil

    from etl.risk.engine import _malloc_trim, release_freed_memory

    if _malloc_trim() is None:
        pytest.skip("not glibc: its allocator's behaviour is what this checks")
    rss = psutil.Process().memory_info
    np.ones(1 << 20)                                          # an 8 MB array freed: glibc raises its mmap threshold
    arrays, kept = [], []
    for _ in range(60):                                       # 60 x 4 MB from the heap, each below a live block
        arrays.append(np.ones(1 << 19))
        kept.append(np.ones(1 << 15))
    held = rss().rss
    del arrays                                                # freed, yet resident while glibc keeps it for reuse
    release_freed_memory()
    assert held - rss().rss > 200 * 2**20                     # released: most of the 240 MB left the RSS
    assert len(kept) == 60


def test_backtest_windows_from_the_series_equal_the_windows_themselves():
    """_Scenarios.rolling (one copy from the series, running-sum covariance) against _Scenarios.of the explicit
    windows (padding before row 0 and a NaN row; FHS scaled per day and asset): the same losses' inputs bit for
    bit, the covariance to 1e-13 of its largest entry."""
    from numpy.lib.stride_tricks import sliding_window_view

    from etl.risk.engine import _Scenarios

    rng = np.random.default_rng(4)
    x = rng.standard_t(4, (120, 6)) * 0.02
    x[50] = np.nan
    n, f = 60, np.arange(20, 120)
    scale = rng.uniform(0.5, 2.0, (len(f), 6))
    padded = np.vstack([np.full((n - 1, 6), np.nan), x])
    w = np.swapaxes(sliding_window_view(padded, n, axis=0), 1, 2)[f - 1]          # (F, N, A): rows f-n .. f-1
    for s, windows in ((None, w), (scale, w * scale[:, None, :])):
        got, want = _Scenarios.rolling(x, f, n, s), _Scenarios.of(windows)
        np.testing.assert_array_equal(got.neg_w, want.neg_w)
        np.testing.assert_array_equal(got.pad, want.pad)
        np.testing.assert_allclose(got.cov, want.cov, rtol=0, atol=1e-13 * np.abs(want.cov).max())


def test_the_first_day_of_a_short_history_has_no_pnl_row(risk_env, monkeypatch):
    """A history shorter than the backtest window starts the PnL rows on its first day, which has no previous
    close: that day gets no row (not a NULL PnL that would replace the PnL an earlier run computed for it, and then
    disagree with that run's attribution in gold)."""
    monkeypatch.setenv("RISK_BACKTEST_DAYS", "250")
    run_risk(as_of=AS_OF, settings=get_settings())
    pnl, val = _read(risk_env["data"], "pnl_daily"), _read(risk_env["data"], "portfolio_valuation")
    first = val["as_of_date"].min()
    assert first == DAYS[0].date()                                  # the history starts on the first day
    assert pnl["daily_pnl"].notna().all() and not (pnl["as_of_date"] == first).any()
    assert set(pnl["as_of_date"]) == set(val["as_of_date"]) - {first}


# ---- edge cases of the conventions: short histories, books closed out, days without a forecast ----------------
FAT_TAILED_QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "SOL-USD": "USD", "ETH-BTC": "BTC"}


def _fat_tailed_closes(days: int, seed: int = 3) -> pd.DataFrame:
    """Student-t(4) daily moves of BTC, ETH, SOL in USD and ETH-BTC, from 2026-01-01."""
    rng = np.random.default_rng(seed)
    r = rng.standard_t(4, size=(days, 3)) * 0.03
    px = 100 * np.cumprod(1 + r, axis=0)
    idx = pd.date_range("2026-01-01", periods=days, freq="D")
    out = pd.DataFrame({"BTC-USD": px[:, 0] * 300, "ETH-USD": px[:, 1] * 20, "SOL-USD": px[:, 2]}, index=idx)
    out["ETH-BTC"] = out["ETH-USD"] / out["BTC-USD"] * (1 + rng.normal(0, 0.001, days))
    return out


def _portfolios(ids, bases) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"portfolio_id": ids, "name": ids, "base_currency": bases, "var_limit": [1e12] * n,
                         "concentration_limit": [1.0] * n, "drawdown_limit": [1.0] * n,
                         "var_limit_metric": ["var_99_hist"] * n})


def _book(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["portfolio_id", "product_id", "as_of_date", "quantity", "avg_cost"]).assign(
        as_of_date=lambda d: pd.to_datetime(d["as_of_date"]))


def test_garch_backtest_forecasts_do_not_use_returns_after_their_forecast_day_in_a_short_history():
    """docs/risk_conventions.md: the filtered backtest is out of sample, sigma_t from returns before t only.
    With a history shorter than backtest_days + 75 days, GARCH's backcast (0.94^i mean of the FIRST 75 squared
    returns of the whole series, etl.risk.filtered.garch_filter) contains returns realised after early forecast
    days: moving only the as-of close changes garch_t forecasts made days earlier (hist, param, fhs_ewma do not)."""
    closes = _fat_tailed_closes(45)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "ETH-USD", "2025-12-01", -30.0, 1.0)])
    params = RiskParams(var_lookback_days=250, backtest_days=250, mc_scenarios=500)
    a = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, params)["var_backtest"]
    bumped = closes.copy()
    bumped.iloc[-1] *= [1.3, 0.8, 1.2, 0.9]
    b = compute_tables(bumped, FAT_TAILED_QUOTE, pf, book, params)["var_backtest"]
    earlier = a["forecast_date"] < closes.index[-2]        # forecasts made before the bumped close was known
    for method in ("hist", "fhs_ewma", "garch_t"):
        sel = earlier & (a["method"] == method)
        assert sel.sum() > 0
        np.testing.assert_array_equal(a.loc[sel, "var_forecast"].to_numpy(), b.loc[sel, "var_forecast"].to_numpy(),
                                      err_msg=f"{method} forecasts moved with a later close")


def test_a_book_closed_out_on_the_as_of_day_is_empty_and_breaches_no_limit():
    """docs/risk_conventions.md "Empty portfolio (no positions, or none held on the as-of day)": a risk row with
    VaR/ES 0 and max drawdown 0, and it breaches no limit. Book X held 1 BTC from 100 down to 50 and its snapshot
    of the as-of day closes it (quantity 0): gross exposure 0 today. The engine still reports max_drawdown -0.5 /
    drawdown_from_peak -0.5 and a drawdown breach (0.5 > 0.3) - one that can never clear while the old peak stays
    in the lookback, since a book holding nothing has no returns."""
    days = pd.date_range("2026-01-01", periods=30, freq="D")
    price = np.r_[[100.0] * 10, np.linspace(95, 50, 19), [50.0]]
    closes = pd.DataFrame({"BTC-USD": price, "ETH-USD": price[::-1] + 1}, index=days)
    pf = _portfolios(["X"], ["USD"]).assign(drawdown_limit=0.3)
    book = _book([("X", "BTC-USD", "2025-12-01", 1.0, 100.0), ("X", "ETH-USD", "2025-12-01", 0.0, 1.0),
                  ("X", "BTC-USD", str(days[-1].date()), 0.0, 100.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "ETH-USD": "USD"}, pf, book,
                       RiskParams(mc_scenarios=500, backtest_days=20))
    risk = t["risk_metrics"].iloc[0]
    assert risk["gross_exposure"] == 0 and t["positions_valued"].empty
    assert t["limit_breaches"].empty, t["limit_breaches"][["limit_type", "metric", "value", "limit_value"]].to_dict("records")
    assert risk["max_drawdown"] == 0


def test_mtd_pnl_of_a_month_the_price_history_starts_inside_is_unknown_not_a_partial_sum():
    """docs/risk_conventions.md: MTD = sum of daily PnL from the first day of D's month to D; the first day of the
    price history has no PnL (unknown, so a run whose history starts later must not replace an earlier run's
    figures with an unknown). Two runs of the same book to the same as-of day, one whose history starts on
    2025-12-01, one on 2026-01-10: for 2026-01-20 both have the same daily_pnl, but the short run's mtd_pnl is
    the sum from 01-11 only (the PnL of 01-01..01-10 treated as 0) - a confident wrong MTD instead of NULL."""
    closes = _fat_tailed_closes(80).set_axis(pd.date_range("2025-12-01", periods=80, freq="D"))
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-11-01", 2.0, 1.0), ("U", "ETH-USD", "2025-11-01", -30.0, 1.0)])
    params = RiskParams(var_lookback_days=20, backtest_days=80, mc_scenarios=500)
    long = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, params)["pnl_daily"].set_index("as_of_date")
    short = compute_tables(closes.loc["2026-01-10":], FAT_TAILED_QUOTE, pf, book, params)["pnl_daily"].set_index("as_of_date")
    d = pd.Timestamp("2026-01-20")
    assert short.loc[d, "daily_pnl"] == pytest.approx(long.loc[d, "daily_pnl"], rel=1e-12)
    true_mtd = (2 * closes["BTC-USD"].diff() - 30 * closes["ETH-USD"].diff()).loc["2026-01-01":d].sum()
    assert long.loc[d, "mtd_pnl"] == pytest.approx(true_mtd, rel=1e-9)
    got = short.loc[d, "mtd_pnl"]
    assert np.isnan(got) or got == pytest.approx(true_mtd, rel=1e-9), (got, true_mtd)


def test_the_pnl_of_the_day_a_book_is_closed_out_has_its_pnl_daily_row():
    """docs/risk_conventions.md: daily PnL of D = holdings at the end of D-1 revalued (on a rebalance day the PnL
    belongs to the previous holdings); pnl_daily has a row per portfolio and day of the history window (only the
    price history's first day has none). U holds 2 BTC until its 2026-02-10 snapshot closes the position (and
    buys 1 BTC again on 02-20): the PnL of 02-10 is 2 x (BTC(02-10) - BTC(02-09)) - var_backtest scores it as the
    realised PnL of 02-10 and mtd_pnl counts it - but pnl_daily has no 02-10 row (rows are kept only where the
    book holds something at the END of the day), so pnl_daily no longer sums to mtd_pnl."""
    closes = _fat_tailed_closes(60)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "BTC-USD", "2026-02-10", 0.0, 1.0),
                  ("U", "BTC-USD", "2026-02-20", 1.0, 1.0)])
    t = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, RiskParams(var_lookback_days=30, backtest_days=60, mc_scenarios=500))
    pnl = t["pnl_daily"].set_index("as_of_date")
    d = pd.Timestamp("2026-02-10")
    hand = 2 * (closes.loc[d, "BTC-USD"] - closes.loc[d - pd.Timedelta(days=1), "BTC-USD"])
    bt = t["var_backtest"].query("method == 'hist' and confidence == 0.99").set_index("as_of_date")
    assert bt.loc[d, "realized_pnl"] == pytest.approx(hand, rel=1e-12)     # the backtest has it
    feb = pnl.loc["2026-02-01":"2026-02-28"]
    assert feb["daily_pnl"].sum() == pytest.approx(feb["mtd_pnl"].iloc[-1], rel=1e-9), "pnl_daily does not sum to MTD"
    assert d in pnl.index and pnl.loc[d, "daily_pnl"] == pytest.approx(hand, rel=1e-12)


def test_the_stored_drawdown_series_ends_at_drawdown_from_peak_when_the_windows_are_the_same_returns():
    """docs/risk_conventions.md (Drawdown): wealth starts at 1 the day before the first return of the window;
    portfolio_valuation's drawdown is the series over the history window and pages chart it with pnl_daily's
    daily_return "as stored". With backtest_days = var_lookback_days = 30, pnl_daily holds exactly the 30 returns
    of the VaR lookback (days 20..49), so the stored drawdown of the as-of day must equal risk_metrics'
    drawdown_from_peak (the compounded stored returns, by hand: 0.5 / 1 - 1 = -50%). The engine starts the
    history series' wealth ON the first history day (engine.py dd_hist = drawdown_series(port_ret[hist_start +
    1:])), dropping the first stored return: the chart shows 0 where the limit sees -50%."""
    days = pd.date_range("2026-01-01", periods=50, freq="D")
    price = np.r_[[100.0] * 20, [50.0] * 30]                    # falls on day index 20, the first history day
    closes = pd.DataFrame({"BTC-USD": price, "ETH-USD": 10 + np.arange(50.0)}, index=days)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 1.0, 100.0), ("U", "ETH-USD", "2025-12-01", 0.0, 1.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "ETH-USD": "USD"}, pf, book,
                       RiskParams(var_lookback_days=30, backtest_days=30, mc_scenarios=500))
    risk = t["risk_metrics"].iloc[0]
    pnl = t["pnl_daily"].set_index("as_of_date")["daily_return"]
    assert len(pnl) == 30 and risk["lookback_days"] == 30
    by_hand = np.prod(1 + pnl.to_numpy()) - 1                     # no new peak after the start: the drawdown
    assert risk["drawdown_from_peak"] == pytest.approx(by_hand) == pytest.approx(-0.5)
    stored = t["portfolio_valuation"].set_index("as_of_date")["drawdown"]
    assert stored.iloc[-1] == pytest.approx(risk["drawdown_from_peak"]), (stored.iloc[-1], risk["drawdown_from_peak"])


def test_a_book_closed_out_on_the_as_of_day_keeps_its_drawdown_history_but_is_not_in_drawdown():
    """docs/risk_conventions.md (Drawdown, Empty portfolio): with equal windows portfolio_valuation's as-of
    drawdown is drawdown_from_peak, except for a book holding nothing that day: its valuation series is the wealth
    history (computed here by hand, the close-out day's PnL included), its risk row 0, and no drawdown breach."""
    idx = pd.date_range("2026-01-01", periods=31, freq="D")
    btc = np.r_[np.full(20, 100.0), 100, 120, 90, 80, 85, 70, 72, 71, 75, 60, 65]
    closes = pd.DataFrame({"BTC-USD": btc, "ETH-USD": 10 + np.arange(31) * 0.1}, index=idx)
    pf = _portfolios(["C"], ["USD"]).assign(drawdown_limit=0.05)
    book = _book([("C", "BTC-USD", "2025-12-01", 1.0, 1.0), ("C", "BTC-USD", "2026-01-31", 0.0, 1.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "ETH-USD": "USD"}, pf, book,
                       RiskParams(var_lookback_days=30, backtest_days=30, mc_scenarios=500))
    wealth = btc[1:] / btc[0]                           # held 1 BTC to the close-out: r = PnL / previous gross
    by_hand = wealth / np.maximum.accumulate(np.r_[1.0, wealth])[1:] - 1
    stored = t["portfolio_valuation"].set_index("as_of_date")["drawdown"]
    np.testing.assert_allclose(stored.to_numpy(), by_hand, rtol=1e-12)
    assert stored.iloc[-1] == pytest.approx(65 / 120 - 1)                 # the day of the close-out
    risk = t["risk_metrics"].iloc[0]
    assert risk["gross_exposure"] == 0 and risk["drawdown_from_peak"] == 0 and risk["max_drawdown"] == 0
    assert t["limit_breaches"].empty


def test_backtest_days_without_a_forecast_do_not_count_in_the_var_backtest_summary():
    """docs/risk_conventions.md (fat tails): evt_gpd is uncomputable (NaN) with fewer than 15 exceedances, "so ...
    a backtest day without it does not count"; Kupiec with n = 0 days is NaN. With a 60-day lookback every evt_gpd
    forecast is NaN, yet var_backtest_summary / var_model_comparison count all 40 held days as days without an
    exception: n_days 40, 0 exceptions, Kupiec p 0.37 at 99% (pass_kupiec True) and a GREEN traffic light for a
    model that never produced a forecast (the ES tests, by contrast, leave those days out: z2 NaN)."""
    closes = _fat_tailed_closes(120)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-12-01", 2.0, 1.0), ("U", "ETH-USD", "2025-12-01", -30.0, 1.0)])
    t = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, RiskParams(var_lookback_days=60, backtest_days=40, mc_scenarios=500))
    bt = t["var_backtest"].query("method == 'evt_gpd'")
    assert len(bt) and bt["var_forecast"].isna().all()                   # never a forecast
    comp = t["var_model_comparison"].query("method == 'evt_gpd'").set_index("confidence")
    assert np.isnan(comp.loc[0.99, "z2"])                                 # the ES test leaves the days out
    summary = t["var_backtest_summary"].query("method == 'evt_gpd'").set_index("confidence")
    got = summary.loc[0.99, ["n_days", "exceptions", "kupiec_p", "traffic_light"]].to_dict()
    assert summary.loc[0.99, "n_days"] == 0 and np.isnan(summary.loc[0.99, "kupiec_p"]), got
    assert not comp.loc[0.99, "pass_kupiec"], got
    # no scored day, no light: not green, and not 'red' either (binom.cdf(0, 0, p) = 1 read as rejected)
    assert pd.isna(summary.loc[0.99, "traffic_light"]) and pd.isna(comp.loc[0.99, "traffic_light"]), got
    assert not comp.loc[0.99, "pass_traffic_light"] and not comp.loc[0.99, "passes"], got


def test_a_filtered_backtest_forecast_is_never_0_for_a_position_that_moves():
    """NEW-USD does not move for its first 59 returns. GARCH fitted (every 50 days) on rows where it never moved
    gives it volatility 0 until the refit that sees it move, and EWMA's volatility before its first move is 0: the
    residuals r / 0 were set to 0, dropping those moves, and the garch_t forecast of a book holding only NEW was 0
    (exceptions against a VaR of 0 while it lost up to 7% a day), as was fhs_ewma's the day after the first move.
    While such a move is in the 40-day window the book's filtered forecasts are uncomputable (NaN, not scored),
    after it they are back; a book without NEW keeps every forecast."""
    rng = np.random.default_rng(5)
    days = 160
    idx = pd.date_range("2026-01-01", periods=days, freq="D")
    btc = 30000 * np.cumprod(1 + rng.standard_t(4, days) * 0.03)
    new = np.r_[np.full(60, 50.0), 50.0 * np.cumprod(1 + rng.standard_t(4, days - 60) * 0.03)]
    closes = pd.DataFrame({"BTC-USD": btc, "NEW-USD": new}, index=idx)
    pf = _portfolios(["N", "B"], ["USD", "USD"])
    book = _book([("N", "NEW-USD", "2025-12-01", 100.0, 1.0), ("B", "BTC-USD", "2025-12-01", 0.2, 1.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "NEW-USD": "USD"}, pf, book,
                       RiskParams(var_lookback_days=40, backtest_days=120, mc_scenarios=500))
    bt = t["var_backtest"].query("confidence == 0.99").pivot_table(
        index=["portfolio_id", "forecast_date"], columns="method", values="var_forecast", dropna=False)
    n = bt.loc["N"]
    f = idx.get_indexer(n.index)                                           # forecast day f: returns rows f-40..f-1
    moved = f >= 60                                                        # NEW's first move: return row 59
    assert (n.loc[~moved] == 0).all().all()                             # nothing moved: 0 is right
    for method in ("fhs_ewma", "garch_t"):
        assert not (moved & (n[method] == 0)).any(), n.loc[moved & (n[method] == 0), method]
    # fhs_ewma: row 59 (EWMA volatility 0) in the window; garch_t: rows 59-88, the fit on rows 0-38 saw no move
    # until the refit on rows 0-88 (refits at 39, 89, 139)
    np.testing.assert_array_equal(n["fhs_ewma"].isna().to_numpy(), moved & (f <= 99))
    np.testing.assert_array_equal(n["garch_t"].isna().to_numpy(), moved & (f <= 128))
    assert (n.loc[moved & (f > 128), ["fhs_ewma", "garch_t"]] > 0).all().all()
    assert bt.loc["B", ["hist", "fhs_ewma", "garch_t"]].notna().all().all()   # a book without NEW: every forecast
    summary = t["var_backtest_summary"].query("confidence == 0.99").set_index(["portfolio_id", "method"])
    assert summary.loc[("N", "garch_t"), "n_days"] == n["garch_t"].notna().sum()   # the uncomputable days not scored


def test_a_holding_converted_at_a_stale_rate_is_flagged_stale(risk_env):
    """BTC-USD's bars stop 7 days early. ETH-BTC has a bar on the as-of day, but its USD value rests on BTC-USD's
    close of 7 days ago (U2), and so does every amount of the BTC-based portfolio B1 (its ETH-USD holding divided
    by BTC-USD): those rows are is_stale, dated at the stale rate's bar, like the BTC-USD holdings themselves."""
    _drop_last_days(risk_env["data"], "BTC-USD", 7)
    last = pd.Timestamp(AS_OF) - pd.Timedelta(days=7)
    run_risk(as_of=AS_OF, settings=get_settings())
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    stale = [("U1", "BTC-USD"), ("U2", "BTC-USD"), ("U2", "ETH-BTC"), ("B1", "ETH-USD")]
    assert pos.loc[stale, "is_stale"].all() and (pos.loc[stale, "price_date"] == last.date()).all()
    fresh = pos.loc[[("U1", "ETH-USD")]]
    assert not fresh["is_stale"].any() and (fresh["price_date"] == AS_OF).all()


def test_an_as_of_day_that_has_not_ended_is_refused_not_valued_at_its_partial_close(data_dir, book_reference,
                                                                                  monkeypatch):
    """`risk --as-of <today>`: silver's bar of a day not over yet is the day so far (its close a mid-day price, its
    return a part of a day), and nothing downstream can tell: the positions are priced on the as-of day (not
    stale), so the report would call the day complete. The run is refused, naming the day, and commits nothing;
    the day before (over) runs, and stays the default."""
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    days = pd.date_range(today - timedelta(days=60), today, freq="D")
    rng = np.random.default_rng(3)
    closes = pd.DataFrame({p: START[p] * np.exp(np.cumsum(rng.standard_normal(len(days)) * VOL[p]))
                           for p in ("BTC-USD", "ETH-USD")}, index=days)
    write_daily_bars(data_dir, closes, QUOTE)
    book_reference("portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit\n"
                   "U1,Long BTC,USD,1000000,1,1\n",
                   "portfolio_id,product_id,as_of_date,quantity,avg_cost\nU1,BTC-USD,2025-01-01,1,50000\n"
                   "U1,ETH-USD,2025-01-01,2,2500\n")
    for key, value in {"RISK_MC_SCENARIOS": "200", "RISK_BACKTEST_DAYS": "20", "RISK_VAR_LOOKBACK_DAYS": "20",
                       "PIPELINE_DAILY_HISTORY_DAYS": "50"}.items():
        monkeypatch.setenv(key, value)
    store = Store.from_uri(str(data_dir))
    with pytest.raises(ValidationError, match=rf"--as-of {today}: the UTC day has not ended"):
        run_risk(as_of=today, settings=get_settings())
    assert read_manifest(store, risk_manifest(today)) is None
    yesterday = today - timedelta(days=1)
    assert run_risk(as_of=None, settings=get_settings()).as_of == yesterday
    assert read_manifest(store, risk_manifest(yesterday)) is not None


def test_a_book_holding_only_its_own_base_currency_has_no_risk_and_no_pnl():
    """docs/risk_conventions.md "Currency": in a BTC-based portfolio BTC-USD has zero return. Its base price was
    close x (1 / close), which is 1 - 2^-53 on some days (21 of these 121): returns of +-1e-16 made PnL noise,
    backtest exceptions (garch_t red) and the fat-tail fits of a flat book NaN (an uncomputable VaR limit)."""
    closes = _closes()
    btc = closes["BTC-USD"].to_numpy()
    assert (btc * (1 / btc) != 1.0).any()                             # the rounding this book meets
    tables = compute_tables(closes, QUOTE, _portfolios(["B"], ["BTC"]),
                            _book([("B", "BTC-USD", "2025-12-01", 3.0, 60000.0)]),
                            RiskParams(var_lookback_days=60, backtest_days=60, mc_scenarios=500,
                                       es_simulations=100, es_bootstrap=100))
    assert (tables["pnl_daily"]["daily_pnl"] == 0).all()
    risk = tables["risk_metrics"]
    figures = [c for c in risk.columns if c.startswith(("var_", "es_")) and not c.endswith("_usd")]
    assert (risk[figures] == 0).all(axis=None), risk[figures].T
    assert risk["vol_20d"].iloc[0] == 0 and risk["max_drawdown"].iloc[0] == 0
    assert not tables["var_backtest"]["is_exception"].any()
    assert tables["limit_breaches"].empty


def _delist(product: str, day: pd.Timestamp) -> None:
    """instruments.csv declares `product` (only) delisted on `day`."""
    path = get_settings().reference_dir / "instruments.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["delisted_on"] = np.where(df["product_id"] == product, str(day.date()), "")
    df.to_csv(path, index=False)


def test_a_delisted_holding_is_not_excused_when_its_bars_stop_before_its_delisting(risk_env):
    """ETH-USD's bars stop 7 days before the as-of day but instruments.csv delists it only 2 days before: for 5
    days it was listed with no price. Its value rests on a close that is not its delisting close, so the holding is
    stale and not excused as delisted (the report refuses the day). It was flagged is_delisted, and the day complete
    with a week-old price. Delisted on the day after its last bar (the first day without candles, as the
    simulator's delisting) or on that bar's day, it is excused."""
    _drop_last_days(risk_env["data"], "ETH-USD", 7)
    last = pd.Timestamp(AS_OF) - pd.Timedelta(days=7)
    _delist("ETH-USD", pd.Timestamp(AS_OF) - pd.Timedelta(days=2))
    run_risk(as_of=AS_OF, settings=get_settings())
    eth = _read(risk_env["data"], "positions_valued").query("product_id == 'ETH-USD'")
    assert len(eth) == 2 and eth["is_stale"].all() and (eth["price_date"] == last.date()).all()
    assert not eth["is_delisted"].any(), "5 listed days without a price are excused as a delisting"
    for day in (last, last + pd.Timedelta(days=1)):
        _delist("ETH-USD", day)
        run_risk(as_of=AS_OF, settings=get_settings())
        eth = _read(risk_env["data"], "positions_valued").query("product_id == 'ETH-USD'")
        assert eth["is_stale"].all() and eth["is_delisted"].all()


def test_a_delisted_holding_converted_at_a_stale_rate_is_not_excused_as_delisted(risk_env):
    """ETH-BTC is delisted on its last bar, 3 days before the as-of day: valued at its last close, is_delisted, the
    day complete. But when BTC-USD, which converts it to USD and is listed, has no bar on the as-of day either, the
    value also rests on a stale BTC-USD close: that staleness is not the delisting's, so the row is not excused
    (is_delisted False: the report refuses the day naming ETH-BTC). It was excused as delisted."""
    last = pd.Timestamp(AS_OF) - pd.Timedelta(days=3)
    _drop_last_days(risk_env["data"], "ETH-BTC", 3)
    _delist("ETH-BTC", last)
    run_risk(as_of=AS_OF, settings=get_settings())
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    assert pos.loc[("U2", "ETH-BTC"), "is_stale"] and pos.loc[("U2", "ETH-BTC"), "is_delisted"]   # excused
    _drop_last_days(risk_env["data"], "BTC-USD", 1)
    run_risk(as_of=AS_OF, settings=get_settings())
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    row = pos.loc[("U2", "ETH-BTC")]
    assert row["is_stale"] and row["price_date"] == last.date()
    assert not row["is_delisted"], "a stale BTC-USD rate is excused by ETH-BTC's delisting"


def test_a_holding_delisted_before_the_history_window_is_valued_at_its_last_close(risk_env, monkeypatch):
    """docs/risk_conventions.md: a delisted holding is valued at its last close, flagged stale, the day complete.
    ETH-USD is delisted 75 days before the as-of day and still held (U1, B1 carry their 2025 snapshots): with a
    60-day history window its last bar is older than the window read, and the whole run was refused with "no daily
    bars for ['ETH-USD'] ... ingest daily candles" (which the source refuses for a delisted product). Now the run
    reads the delisted product's last bar and values it at that close, as when it is inside the window."""
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "60")
    monkeypatch.setenv("RISK_VAR_LOOKBACK_DAYS", "30")
    monkeypatch.setenv("RISK_BACKTEST_DAYS", "30")
    delisted = pd.Timestamp(AS_OF) - pd.Timedelta(days=75)
    _drop_last_days(risk_env["data"], "ETH-USD", 75)
    _delist("ETH-USD", delisted)
    eth_last = risk_env["closes"].loc[delisted, "ETH-USD"]
    summary = run_risk(as_of=AS_OF, settings=get_settings())
    assert summary.as_of == AS_OF
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    eth = pos.xs("ETH-USD", level="product_id")
    assert eth["close"].tolist() == [eth_last, eth_last]
    assert eth.loc["U1", "market_value"] == pytest.approx(-30 * eth_last, rel=1e-12)
    assert (eth["price_date"] == delisted.date()).all() and eth["is_stale"].all() and eth["is_delisted"].all()
    assert run_risk(as_of=None, settings=get_settings()).as_of == AS_OF       # the default as-of too


def test_each_risk_row_records_the_annualisation_its_volatilities_use():
    """Pages that annualise a figure of their own (sql/daily_pnl/performance_summary.sql's Sharpe) read the days per
    year from the risk row, so they agree with the run's vol_* whatever RISK_ANNUALIZATION_DAYS is."""
    from etl.risk import risk_returns

    closes = _fat_tailed_closes(60)
    pf = _portfolios(["U"], ["USD"])
    book = _book([("U", "BTC-USD", "2025-01-01", 2.0, 1.0)])
    t = compute_tables(closes, FAT_TAILED_QUOTE, pf, book,
                       RiskParams(annualization_days=252, var_lookback_days=30, backtest_days=20, mc_scenarios=500))
    risk = t["risk_metrics"].iloc[0]
    r = t["pnl_daily"].sort_values("as_of_date")["daily_return"].to_numpy()
    assert risk["annualization_days"] == 252
    assert risk["vol_20d"] == pytest.approx(float(risk_returns.window_vol(r[-20:, None], 20, 1)[0]) * np.sqrt(252))


def test_each_positions_pnl_of_the_day_is_its_share_of_the_portfolios_daily_pnl():
    """docs/risk_conventions.md "Daily PnL": the PnL of day D is the holdings at the end of D-1 revalued, prices in
    base currency. positions_valued's daily_pnl is each position's term of that sum: q(D-1) x (price(D) -
    price(D-1)), so on a rebalance day it is the previous quantity's (SOL bought up on D earns nothing on D), a
    cross-quoted product's move includes its quote's (ETH-BTC in a USD book), and a BTC book's includes BTC's;
    the positions of a book that closed nothing on D add up to its pnl_daily.daily_pnl exactly."""
    closes = _fat_tailed_closes(40)
    d = closes.index
    pf = _portfolios(["U", "B"], ["USD", "BTC"])
    book = _book([("U", "SOL-USD", "2025-12-01", 10.0, 1.0), ("U", "ETH-BTC", "2025-12-01", 3.0, 0.01),
                  ("U", "SOL-USD", str(d[-1].date()), 25.0, 1.0), ("U", "ETH-BTC", str(d[-1].date()), 3.0, 0.01),
                  ("B", "ETH-USD", "2025-12-01", 2.0, 1.0), ("B", "SOL-USD", "2025-12-01", -5.0, 1.0)])
    t = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, RiskParams(var_lookback_days=20, backtest_days=10,
                                                                      mc_scenarios=500))
    pos = t["positions_valued"].set_index(["portfolio_id", "product_id"])["daily_pnl"]
    pnl = t["pnl_daily"].query("as_of_date == @d[-1]").set_index("portfolio_id")["daily_pnl"]
    c, p = closes.iloc[-1], closes.iloc[-2]
    assert pos[("U", "SOL-USD")] == pytest.approx(10.0 * (c["SOL-USD"] - p["SOL-USD"]), rel=1e-12)
    assert pos[("U", "ETH-BTC")] == pytest.approx(
        3.0 * (c["ETH-BTC"] * c["BTC-USD"] - p["ETH-BTC"] * p["BTC-USD"]), rel=1e-12)
    assert pos[("B", "ETH-USD")] == pytest.approx(
        2.0 * (c["ETH-USD"] / c["BTC-USD"] - p["ETH-USD"] / p["BTC-USD"]), rel=1e-12)
    assert pos.groupby(level="portfolio_id").sum().to_dict() == pytest.approx(pnl.to_dict(), rel=1e-12)


def test_each_risk_row_records_the_limits_the_run_checked_its_breaches_against():
    """The VaR and drawdown reports of a day divide by these (dim_portfolio holds today's portfolios.csv): on a
    breach row the same limit_value, on every risk row the limit, its metric and the drawdown limit."""
    closes = _fat_tailed_closes(60)
    pf = _portfolios(["U", "V"], ["USD", "USD"]).assign(var_limit=[1.0, 1e12], drawdown_limit=[0.3, 0.5],
                                                        var_limit_metric=["var_99_hist", "var_95_param"],
                                                        concentration_limit=[0.9, 0.8])
    book = _book([("U", "BTC-USD", "2025-01-01", 2.0, 1.0), ("V", "ETH-USD", "2025-01-01", 3.0, 1.0)])
    t = compute_tables(closes, FAT_TAILED_QUOTE, pf, book, RiskParams(var_lookback_days=30, backtest_days=20,
                                                                      mc_scenarios=500))
    risk = t["risk_metrics"].set_index("portfolio_id")
    cols = ["checked_var_limit", "checked_var_limit_metric", "checked_concentration_limit", "checked_drawdown_limit"]
    assert risk[cols].values.tolist() == [[1.0, "var_99_hist", 0.9, 0.3], [1e12, "var_95_param", 0.8, 0.5]]
    breach = t["limit_breaches"].query("limit_type == 'var'").set_index("portfolio_id")
    assert breach.at["U", "limit_value"] == risk.at["U", "checked_var_limit"]
    assert breach.at["U", "utilisation"] == pytest.approx(risk.at["U", "var_99_hist"] / risk.at["U", "checked_var_limit"])


def test_a_day_without_a_bar_is_skipped_by_the_daily_anomalies_not_scored_as_a_zero_return():
    """A steady product (1% a day, tiny noise) misses one daily bar. Forward-filled, that day became a 0% return
    flagged as an anomaly (a row on a day with no bar at all) and the day after a two-day move scored as one day's;
    both enter later windows. The daily return needs a bar on the day and the day before: the missing day and the
    day after have none, are not scored and are skipped in the windows, as the anomalies convention says."""
    from etl.risk import anomalies
    from etl.risk.engine import asset_tables, bar_days, close_matrix

    days = pd.date_range("2026-01-01", periods=120, freq="D")
    r = 0.01 + np.random.default_rng(3).normal(0, 1e-4, len(days))
    px = 100 * np.cumprod(1 + r)
    gap = days[90]
    keep = days != gap
    bars = pd.DataFrame({"product_id": "A-USD", "price_date": days[keep], "close": px[keep]})
    closes = close_matrix(bars, ["A-USD"], days[-1])
    out = asset_tables(closes, {}, {"A-USD": "USD"}, 60, 0, RiskParams(), bar_days(bars, closes))["anomalies_daily"]
    assert out.empty, out[["price_date", "return_value", "robust_z"]]
    # the scores themselves: the daily returns with the two undefined ones missing, windows skipping them
    daily = pd.Series(px[keep], index=days[keep]).reindex(days)
    ret = (daily / daily.shift(1) - 1).to_numpy()[1:, None]
    z, _ = anomalies.robust_z(ret, 60)
    ok = ~np.isnan(z[:, 0])
    assert np.abs(z[ok, 0]).max() < 3.5


def test_the_risk_run_reads_exactly_the_documented_history_window(risk_env, monkeypatch):
    """docs/risk_conventions.md: the history read is PIPELINE_DAILY_HISTORY_DAYS days up to the as-of date (the
    ingest's window, orchestration.intervals.daily_window). The run read 5 days more whenever silver had them, so
    the figures over the whole price history (stress worst windows, the EWMA seed, the GARCH fits) rested on days
    a first run, which backfills exactly the window, never has. Now they are the figures of the 60 days."""
    from etl.risk.runner import load_inputs

    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "60")
    monkeypatch.setenv("RISK_VAR_LOOKBACK_DAYS", "30")
    monkeypatch.setenv("RISK_BACKTEST_DAYS", "30")
    settings = get_settings()
    inputs = load_inputs(AS_OF, settings)
    first = pd.Timestamp(AS_OF) - pd.Timedelta(days=59)
    assert inputs.closes.index[0] == first and len(inputs.closes) == 60
    run_risk(as_of=AS_OF, settings=settings)
    window = risk_env["closes"].loc[first:, inputs.products]
    expected = compute_tables(window, inputs.quote_ccy, inputs.portfolios, inputs.positions, inputs.params)
    got = _read(risk_env["data"], "stress_results").set_index(["portfolio_id", "scenario_id"]).sort_index()
    want = expected["stress_results"].set_index(["portfolio_id", "scenario_id"]).sort_index()
    assert got.loc[:, "pnl"].to_numpy() == pytest.approx(want.loc[got.index, "pnl"].to_numpy(), rel=1e-9)
    assert got["window_start"].dropna().min() >= first.date()
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id").sort_index()
    ref = expected["risk_metrics"].set_index("portfolio_id").loc[risk.index]
    for col in ("var_99_fhs_ewma", "var_99_garch_t"):
        assert risk[col].to_numpy() == pytest.approx(ref[col].to_numpy(), rel=1e-6), col


def _drop_days(data_dir, product: str, first: pd.Timestamp, last: pd.Timestamp) -> None:
    """The product has no daily bar from `first` to `last` (a trading halt inside the history)."""
    store = Store.from_uri(str(data_dir))
    for rel in Lake.of(store).files(BARS_1D_DIR):
        if f"/product_id={product}/" in rel:
            table = pq.read_table(data_dir / rel)
            day = pd.to_datetime(table["price_date"].to_pandas())
            keep = pa.array(~((day >= first) & (day <= last)))
            commit_silver(store, BARS_1D_DIR, [({"product_id": product, "year": rel.split("/year=")[1][:4]},
                                                table.filter(keep))])


def _run_and_count_ten_carried_eth_days(data_dir) -> None:
    """Run risk (RISK_MAX_CARRIED_DAYS 10, set by the caller) and check ETH-USD's 10 carried days are counted on
    its positions and the books holding it (U1, B1), their VaR still computed at the threshold."""
    run_risk(as_of=AS_OF, settings=get_settings())
    pos = _read(data_dir, "positions_valued").set_index(["portfolio_id", "product_id"])
    assert pos["carried_days"].to_dict() == {k: 10 if k[1] == "ETH-USD" else 0 for k in pos.index}
    risk = _read(data_dir, "risk_metrics").set_index("portfolio_id")
    assert risk["carried_days"].to_dict() == {"U1": 10, "U2": 0, "B1": 10}
    assert risk["var_99_hist"].notna().all()


def test_a_holding_halted_inside_the_var_window_is_counted_and_past_the_threshold_its_var_is_uncomputable(
        risk_env, monkeypatch):
    """ETH-USD has no daily bar for 10 days inside the 60-day VaR window but one on the as-of day: its closes are
    carried forward (10 zero returns), so the VaR of the books holding it rests on a price that did not move. The
    positions and the books say how many days of the window rest on a carried close (`carried_days`); past
    RISK_MAX_CARRIED_DAYS the book's VaR/ES are NULL and its var limit uncomputable, never a confident figure."""
    run_risk(as_of=AS_OF, settings=get_settings())
    clean = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert (clean["carried_days"] == 0).all() and clean["var_99_hist"].notna().all()
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    _drop_days(risk_env["data"], "ETH-USD", halt, halt + pd.Timedelta(days=9))

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "10")                    # at the threshold: counted, still computed
    _run_and_count_ten_carried_eth_days(risk_env["data"])

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    var_cols = [c for c in risk.columns if c.startswith(("var_", "es_"))]
    assert risk.loc[["U1", "B1"], var_cols].isna().all().all()
    hist = ["var_95_hist", "var_99_hist", "es_95_hist", "es_99_hist"]   # a book not holding it keeps its figures
    assert risk.loc["U2", hist].tolist() == pytest.approx(clean.loc["U2", hist].tolist(), rel=1e-12)
    breaches = _read(risk_env["data"], "limit_breaches")
    var_breach = breaches[breaches["limit_type"] == "var"].set_index("portfolio_id")
    assert set(var_breach.index) >= {"U1", "B1"}
    assert (var_breach.loc[["U1", "B1"], "breach_kind"] == "uncomputable").all()


def test_a_price_stuck_with_prints_inside_the_var_window_counts_as_carried_like_a_halt(risk_env, monkeypatch):
    """ETH-USD's feed keeps publishing the same close for 10 days inside the 60-day VaR window, with volume (a
    stuck price with prints, not a missing bar): every one of those days has a bar, so nothing used to say the
    VaR of the books holding it rests on 10 zero returns. A run of identical daily closes longer than
    RISK_MAX_UNCHANGED_CLOSES (3; these products repeat a close by chance about once in a thousand days) is a
    stuck feed: its repeated closes count as carried, as the days of a halt do."""
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    stuck = risk_env["closes"][["ETH-USD"]].copy()
    stuck.loc[halt:halt + pd.Timedelta(days=9), "ETH-USD"] = stuck.loc[halt - pd.Timedelta(days=1), "ETH-USD"]
    write_daily_bars(risk_env["data"], stuck, QUOTE, spread=0.01, volume=10.0)   # bars with volume on every day
    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "10")
    _run_and_count_ten_carried_eth_days(risk_env["data"])
    assert _read(risk_env["data"], "firm_risk")["carried_days"].iat[0] == 10

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert risk.loc[["U1", "B1"], ["var_99_hist", "es_99_hist"]].isna().all().all()
    assert risk.loc["U2", "var_99_hist"] > 0

    monkeypatch.setenv("RISK_MAX_UNCHANGED_CLOSES", "10")               # a run this long is tolerated: no flag
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert (risk["carried_days"] == 0).all() and risk["var_99_hist"].notna().all()


def test_a_halted_products_volatility_drawdown_and_correlations_are_flagged_and_past_the_threshold_null(
        risk_env, monkeypatch):
    """ETH-USD halted 10 days inside the 60-day window: its asset_risk volatilities, drawdown and worst return, its
    drawdowns row and its correlations rest on 10 carried zero returns. asset_risk says how many
    (`carried_days`), correlations the days on which either product's USD close is carried; past
    RISK_MAX_CARRIED_DAYS these figures are NULL, as a book's VaR is, never a confident calm figure."""
    run_risk(as_of=AS_OF, settings=get_settings())
    clean_asset = _read(risk_env["data"], "asset_risk").set_index("product_id")
    clean_corr = _read(risk_env["data"], "correlations").set_index(["product_id_a", "product_id_b"])
    assert (clean_asset["carried_days"] == 0).all() and (clean_corr["carried_days"] == 0).all()
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    _drop_days(risk_env["data"], "ETH-USD", halt, halt + pd.Timedelta(days=9))

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "10")                    # at the threshold: counted, still computed
    run_risk(as_of=AS_OF, settings=get_settings())
    asset = _read(risk_env["data"], "asset_risk").set_index("product_id")
    assert asset["carried_days"].to_dict() == {"BTC-USD": 0, "ETH-BTC": 0, "ETH-USD": 10}
    assert asset.loc["ETH-USD", "vol_30d"] > 0
    corr = _read(risk_env["data"], "correlations").set_index(["product_id_a", "product_id_b"])
    assert corr["carried_days"].to_dict() == {("BTC-USD", "ETH-BTC"): 0, ("BTC-USD", "ETH-USD"): 10,
                                              ("ETH-BTC", "ETH-USD"): 10}
    assert corr["correlation"].notna().all()

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    asset = _read(risk_env["data"], "asset_risk").set_index("product_id")
    window = ["vol_20d", "vol_30d", "vol_ewma", "max_drawdown", "worst_daily_return", "worst_daily_return_date"]
    assert asset.loc["ETH-USD", window].isna().all(), asset.loc["ETH-USD", window]
    assert asset.loc["ETH-USD", "close"] == pytest.approx(risk_env["closes"]["ETH-USD"].iloc[-1], rel=1e-12)
    for product in ("BTC-USD", "ETH-BTC"):                               # the others keep their figures
        assert asset.loc[product, window[:5]].tolist() == pytest.approx(clean_asset.loc[product, window[:5]].tolist(),
                                                                        rel=1e-12)
    dd = _read(risk_env["data"], "drawdowns")
    eth = dd[(dd["entity_type"] == "asset") & (dd["entity_id"] == "ETH-USD")].iloc[0]
    assert pd.isna(eth["max_drawdown"]) and pd.isna(eth["peak_date"]) and pd.isna(eth["trough_date"])
    corr = _read(risk_env["data"], "correlations").set_index(["product_id_a", "product_id_b"])
    assert corr.loc[[("BTC-USD", "ETH-USD"), ("ETH-BTC", "ETH-USD")], "correlation"].isna().all()
    assert corr.loc[("BTC-USD", "ETH-BTC"), "correlation"] == pytest.approx(
        clean_corr.loc[("BTC-USD", "ETH-BTC"), "correlation"], rel=1e-12)


def test_the_firm_holding_a_halted_product_past_the_threshold_has_no_var_either(risk_env, monkeypatch):
    """The firm is one USD book holding every position: ETH-USD halted 10 days inside the VaR window puts 10
    zero returns under the firm's figures too. `firm_risk.carried_days` counts them (as `risk_metrics` does for a
    book); past RISK_MAX_CARRIED_DAYS the firm's VaR/ES, the standalone sum and the diversification benefit are
    NULL and it has no firm-scope contributions (a confident firm VaR on a price that did not move, beside books
    whose VaR is refused, was one figure with two conventions)."""
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    _drop_days(risk_env["data"], "ETH-USD", halt, halt + pd.Timedelta(days=9))
    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "10")                    # at the threshold: counted, still computed
    run_risk(as_of=AS_OF, settings=get_settings())
    firm = _read(risk_env["data"], "firm_risk").iloc[0]
    assert firm["carried_days"] == 10 and firm["var_99_hist"] > 0 and firm["diversification_benefit"] == \
        pytest.approx(firm["sum_standalone_var_99_hist"] - firm["var_99_hist"])
    contrib = _read(risk_env["data"], "risk_contributions")
    assert (contrib["scope"] == "firm").any()

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    firm = _read(risk_env["data"], "firm_risk").iloc[0]
    figures = [c for c in firm.index if c.startswith(("var_", "es_", "sum_standalone_", "diversification_benefit"))]
    assert firm["carried_days"] == 10 and firm[figures].isna().all(), firm[figures].dropna()
    assert firm["market_value"] > 0                                      # what it holds is still known
    contrib = _read(risk_env["data"], "risk_contributions")
    assert not (contrib["scope"] == "firm").any()
    assert (contrib["scope"] == "portfolio").any()                       # U2 holds no ETH-USD: its rows stay


def test_a_newly_listed_product_that_shortens_the_history_is_named_with_the_lookback_it_leaves(risk_env):
    """ETH-BTC (held by U2 only) lists 40 days before the as-of day: the history of every book starts at its first
    close, so the 60-day VaR rests on 40 returns; risk_metrics names the product that cut the lookback. Listed 10
    days before, too few returns remain: the error names ETH-BTC and its first close, not every held product."""
    listed = pd.Timestamp(AS_OF) - pd.Timedelta(days=40)
    _drop_days(risk_env["data"], "ETH-BTC", DAYS[0], listed - pd.Timedelta(days=1))
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert risk["lookback_days"].eq(40).all()
    assert risk["lookback_limited_by"].eq(f"ETH-BTC (first daily close {listed.date()})").all()

    late = pd.Timestamp(AS_OF) - pd.Timedelta(days=10)
    _drop_days(risk_env["data"], "ETH-BTC", listed, late - pd.Timedelta(days=1))
    with pytest.raises(DataNotFoundError) as err:
        run_risk(as_of=AS_OF, settings=get_settings())
    assert f"ETH-BTC (first daily close {late.date()})" in str(err.value)
    assert "ETH-USD" not in str(err.value) and "BTC-USD" not in str(err.value)


def test_a_snapshot_dated_after_the_as_of_day_is_ignored_not_a_product_every_book_needs(risk_env):
    """docs/risk_conventions.md: "Snapshots after the as-of date are ignored." A snapshot dated the day after the
    as-of day buys SOL-USD, listed 30 days before the as-of day: the products the run priced came from every
    snapshot, so SOL-USD, held by no book on the as-of day, started the history of every book (lookback 30, not 60,
    `lookback_limited_by` naming it) and every VaR changed; listed after the as-of day, it failed the run ("no
    daily bars for ['SOL-USD']"). Now the run prices what the snapshots dated on or before the as-of day hold: the
    figures are those of the run without that snapshot."""
    from etl.settings import get_settings as settings_now

    run_risk(as_of=AS_OF, settings=get_settings())
    clean = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id").sort_index()
    ref = settings_now().reference_dir
    (ref / "positions.csv").write_text((ref / "positions.csv").read_text() + "U1,SOL-USD,2026-04-01,10,150\n")
    listed = pd.Timestamp(AS_OF) - pd.Timedelta(days=30)
    sol = pd.DataFrame({"SOL-USD": 150.0}, index=pd.date_range(listed, AS_OF, freq="D"))
    write_daily_bars(risk_env["data"], sol, {"SOL-USD": "USD"})
    for stage in ("listed before", "listed after"):
        run_risk(as_of=AS_OF, settings=get_settings())
        risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id").sort_index()
        assert risk["lookback_days"].eq(60).all() and risk["lookback_limited_by"].isna().all(), stage
        for col in ("var_99_hist", "es_99_hist", "var_99_param"):
            assert risk[col].tolist() == pytest.approx(clean[col].tolist(), rel=1e-12), (stage, col)
        assert "SOL-USD" not in set(_read(risk_env["data"], "positions_valued")["product_id"])
        remove_product(risk_env["data"], BARS_1D_DIR, "SOL-USD")        # then not listed by the as-of day at all


def test_a_holding_delisted_before_the_history_window_is_not_a_reason_the_lookback_is_short(risk_env, monkeypatch):
    """The 40-day history window (PIPELINE_DAILY_HISTORY_DAYS) leaves 39 returns of the 60-day VaR lookback, for
    every product alike: no product started late, so lookback_limited_by is NULL (as in the run without the
    delisted holding). ETH-USD, delisted 60 days before the as-of day and still held, is valued at its last close,
    a bar older than the window; that older first close made every listed product look listed late:
    lookback_limited_by named BTC-USD and ETH-BTC "(first daily close <the window's first day>)", a STALE notice
    on every book."""
    for key, value in {"PIPELINE_DAILY_HISTORY_DAYS": "40", "RISK_VAR_LOOKBACK_DAYS": "60",
                       "RISK_BACKTEST_DAYS": "30"}.items():
        monkeypatch.setenv(key, value)
    run_risk(as_of=AS_OF, settings=get_settings())
    clean = _read(risk_env["data"], "risk_metrics")
    assert clean["lookback_days"].eq(39).all() and clean["lookback_limited_by"].isna().all()
    delisted = pd.Timestamp(AS_OF) - pd.Timedelta(days=60)
    _drop_days(risk_env["data"], "ETH-USD", delisted + pd.Timedelta(days=1), pd.Timestamp(AS_OF))
    _delist("ETH-USD", delisted)
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics")
    assert risk["lookback_days"].eq(39).all()
    assert risk["lookback_limited_by"].isna().all(), risk["lookback_limited_by"].tolist()

    listed = pd.Timestamp(AS_OF) - pd.Timedelta(days=30)          # a product listed inside the window still is named
    _drop_days(risk_env["data"], "ETH-BTC", DAYS[0], listed - pd.Timedelta(days=1))
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics")
    assert risk["lookback_days"].eq(30).all()
    assert risk["lookback_limited_by"].eq(f"ETH-BTC (first daily close {listed.date()})").all()


def test_a_first_move_after_a_flat_history_gives_no_confident_garch_var():
    """NEW-USD's close does not move for 78 days, then rises 10% on the as-of day. GARCH fitted on that history
    gives it a volatility of ~1e-6 (its floor), so the move's residual is ~1e5 standard deviations: rescaled to
    tomorrow's volatility, the short book's garch_t VaR was ~540x its position and the long book's 0, while
    fhs_ewma (volatility exactly 0) said uncomputable. A residual no volatility forecast explains is as unscaled
    as one over a volatility of 0: both books' filtered VaRs are NULL (uncomputable), the other methods and a
    book without NEW keep theirs."""
    rng = np.random.default_rng(5)
    days = 80
    idx = pd.date_range("2026-01-01", periods=days, freq="D")
    btc = 30000 * np.cumprod(1 + rng.standard_t(4, days) * 0.03)
    closes = pd.DataFrame({"BTC-USD": btc, "NEW-USD": np.r_[np.full(days - 1, 50.0), 55.0]}, index=idx)
    pf = _portfolios(["L", "S", "B"], ["USD"] * 3)
    book = _book([("L", "NEW-USD", "2025-12-01", 100.0, 1.0), ("S", "NEW-USD", "2025-12-01", -100.0, 1.0),
                  ("B", "BTC-USD", "2025-12-01", 0.2, 1.0)])
    t = compute_tables(closes, {"BTC-USD": "USD", "NEW-USD": "USD"}, pf, book,
                       RiskParams(var_lookback_days=40, backtest_days=30, mc_scenarios=500))
    risk = t["risk_metrics"].set_index("portfolio_id")
    filtered_cols = [f"{m}_{c}_{method}" for m in ("var", "es") for c in (95, 99) for method in ("fhs_ewma", "garch_t")]
    assert risk.loc[["L", "S"], filtered_cols].isna().all().all(), risk.loc[["L", "S"], filtered_cols]
    assert 0 < risk.loc["S", "var_99_hist"] <= 0.1 * 5500                 # the short's worst day: the 10% rise
    assert risk.loc[["L", "S"], ["var_99_param", "var_99_mc"]].notna().all().all()
    assert risk.loc["B", filtered_cols].notna().all()


def test_a_book_whose_var_is_null_for_a_halt_has_no_hypothetical_stress_resting_on_the_halts_zero_returns(
        risk_env, monkeypatch):
    """ETH-USD halted 10 days inside the 60-day VaR window: the beta to BTC-USD that moves it in the hypothetical
    stress scenarios is an OLS slope over the same window of returns the VaR rests on, 10 of them carried zeros, so
    it shrinks toward 0 and a BTC -30% shock moved the book by a confident, calmer PnL while its VaR/ES were NULL.
    Past RISK_MAX_CARRIED_DAYS that beta is unknown (as without BTC prices): the books (and the firm) holding
    ETH-USD have no row for the scenarios that move it through it; the scenario shocking ETH itself needs no beta
    and stays; a book not holding it keeps its rows unchanged."""
    run_risk(as_of=AS_OF, settings=get_settings())
    key = ["scope", "portfolio_id", "scenario_id"]
    clean = _read(risk_env["data"], "stress_results").set_index(key).sort_index()
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    _drop_days(risk_env["data"], "ETH-USD", halt, halt + pd.Timedelta(days=9))
    hypothetical = set(clean.loc[clean["scenario_type"] == "hypothetical"].index.get_level_values("scenario_id"))
    assert {"btc_minus_30", "eth_minus_40_btc_minus_20"} <= hypothetical

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "10")                    # at the threshold: still computed
    run_risk(as_of=AS_OF, settings=get_settings())
    at = _read(risk_env["data"], "stress_results").set_index(key).sort_index()
    assert ("portfolio", "U1", "btc_minus_30") in at.index and ("firm", "FIRM", "btc_minus_30") in at.index

    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    got = _read(risk_env["data"], "stress_results").set_index(key).sort_index()
    hyp = got[got["scenario_type"] == "hypothetical"]
    for book in (("portfolio", "U1"), ("portfolio", "B1"), ("firm", "FIRM")):
        assert set(hyp.loc[book].index) == {"eth_minus_40_btc_minus_20"}, (book, hyp.loc[book].index.tolist())
    assert set(hyp.loc[("portfolio", "U2")].index) == hypothetical
    # no beta in them: the halted run's figures are the clean run's revaluation at the same closes
    u2 = hyp.loc[[("portfolio", "U2", s) for s in sorted(hypothetical)]]
    assert u2["pnl"].to_numpy() == pytest.approx(clean.loc[u2.index, "pnl"].to_numpy(), rel=1e-12)
    historical = got[got["scenario_type"] == "historical"]           # the windows of the price history stay
    assert {("portfolio", "U1"), ("portfolio", "B1"), ("firm", "FIRM")} <= set(historical.index.droplevel(2))
    # ... searched among those from and to a bar's close of ETH-USD (stress: a window on a carried close is none)
    halted = pd.date_range(halt, halt + pd.Timedelta(days=9))
    for book in (("portfolio", "U1"), ("portfolio", "B1"), ("firm", "FIRM")):
        for w in ("worst_1d", "worst_5d"):
            row = historical.loc[(*book, w)]
            before = pd.Timestamp(row["window_start"]) - pd.Timedelta(days=1)
            assert before not in halted and pd.Timestamp(row["window_end"]) not in halted, (book, w)


def test_a_book_not_holding_the_halted_anchor_gets_no_stress_through_a_beta_estimated_on_its_carried_closes(
        risk_env, monkeypatch):
    """BTC-USD, the anchor of the hypothetical betas, is halted 10 days inside the 60-day window. E1 holds only
    ETH-USD (USD): none of its closes is carried, so its VaR stands, but a BTC -30% shock moved its ETH by a beta
    to BTC estimated on 10 of BTC's carried zero returns: a confident PnL resting on a price that did not move.
    Past RISK_MAX_CARRIED_DAYS that beta is unknown, as without BTC prices: no row for the scenarios that move
    ETH through it; a scenario shocking ETH itself needs no beta and stays (hand value: MV x -40%)."""
    ref = Path(os.environ["PIPELINE_REFERENCE_DIR"])
    with open(ref / "portfolios.csv", "a") as f:
        f.write("E1,ETH only,USD,1000000,0.9,0.9\n")
    with open(ref / "positions.csv", "a") as f:
        f.write("E1,ETH-USD,2025-06-01,5,2500\n")
    monkeypatch.setenv("RISK_MAX_CARRIED_DAYS", "9")
    run_risk(as_of=AS_OF, settings=get_settings())
    clean = _read(risk_env["data"], "stress_results").set_index(["scope", "portfolio_id", "scenario_id"])
    assert ("portfolio", "E1", "btc_minus_30") in clean.index
    halt = pd.Timestamp(AS_OF) - pd.Timedelta(days=20)
    _drop_days(risk_env["data"], "BTC-USD", halt, halt + pd.Timedelta(days=9))
    run_risk(as_of=AS_OF, settings=get_settings())
    risk = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    assert risk.loc["E1", "carried_days"] == 0 and risk.loc["E1", "var_99_hist"] > 0
    got = _read(risk_env["data"], "stress_results").set_index(["scope", "portfolio_id", "scenario_id"]).sort_index()
    e1 = got.loc[("portfolio", "E1")]
    assert set(e1[e1["scenario_type"] == "hypothetical"].index) == {"eth_minus_40_btc_minus_20"}, e1.index.tolist()
    mv = 5 * risk_env["closes"]["ETH-USD"].iloc[-1]
    assert e1.loc["eth_minus_40_btc_minus_20", "pnl"] == pytest.approx(-0.4 * mv, rel=1e-12)

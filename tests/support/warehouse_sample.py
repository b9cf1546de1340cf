"""A small, internally consistent data set in the storage layout, for the warehouse tests and benchmark.

Writes silver bars (5-minute and daily), every risk/factor output table with its contract columns (plus the
extras the risk engine writes), a run log, and reference CSVs (portfolios, positions, instruments, exchanges).
The numbers obey the rules the gold tests check (OHLC consistency, exposures = sum of position values,
VaR 99 >= VaR 95, ES >= VaR), so `dbt build` passes on it unless a test breaks them on purpose.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from etl import commits, runlog
from etl.risk import drawdown
from etl.settings import PROJECT_ROOT, Settings
from etl.storage import Store, get_store
from etl.warehouse import schema
from tests.support.silver_sample import commit_silver

PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START_PRICES = {"BTC-USD": 90_000.0, "ETH-USD": 3_000.0, "SOL-USD": 150.0}
PORTFOLIOS = pd.DataFrame({
    "portfolio_id": ["P001", "P002"], "name": ["BTC Core", "Long/short majors"], "base_currency": ["USD", "USD"],
    "var_limit": [5_000.0, 1_000.0], "concentration_limit": [0.9, 0.5], "drawdown_limit": [0.5, 0.5],
})
POSITIONS = pd.DataFrame({  # snapshot dated before the sample window: held throughout
    "portfolio_id": ["P001", "P002", "P002", "P002"], "product_id": ["BTC-USD", "BTC-USD", "ETH-USD", "SOL-USD"],
    "as_of_date": ["2025-12-01"] * 4, "quantity": [1.5, 0.5, -10.0, 100.0],
    "avg_cost": [80_000.0, 85_000.0, 3_200.0, 140.0],
})
METHODS = ("hist", "param", "mc")


def write_reference(folder: Path) -> Path:
    """Reference CSVs for the sample: the project's instruments/exchanges plus the sample portfolios."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("instruments.csv", "exchanges.csv"):
        shutil.copy(PROJECT_ROOT / "etl" / "reference_data" / name, folder / name)
    PORTFOLIOS.to_csv(folder / "portfolios.csv", index=False)
    POSITIONS.to_csv(folder / "positions.csv", index=False)
    return folder


def bars_5m(first_day: date, days: int, products=PRODUCTS, seed: int = 1) -> pd.DataFrame:
    """Random-walk 5-minute OHLCV bars (UTC), consistent: low <= open, close <= high."""
    rng = np.random.default_rng(seed)
    n = days * 288
    start = pd.Timestamp(first_day, tz="UTC")
    buckets = pd.date_range(start, periods=n, freq="5min")
    frames = []
    for product in products:
        close = START_PRICES.get(product, 100.0) * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
        open_ = np.r_[close[0], close[:-1]]
        spread = np.abs(rng.normal(0, 0.001, n))
        high = np.maximum(open_, close) * (1 + spread)
        low = np.minimum(open_, close) * (1 - spread)
        volume = rng.uniform(1, 50, n)
        frames.append(pd.DataFrame({
            "product_id": product, "bucket_start": buckets, "open": open_, "high": high, "low": low, "close": close,
            "volume": volume, "vwap": (open_ + close + high + low) / 4, "n_candles": np.int64(5), "is_complete": True,
            "quote_currency": "USD", "first_candle_at": buckets, "last_candle_at": buckets + pd.Timedelta("4min"),
        }))
    return pd.concat(frames, ignore_index=True)


def daily_from_5m(b5: pd.DataFrame) -> pd.DataFrame:
    day = b5["bucket_start"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
    g = b5.assign(price_date=day, pv=b5["vwap"] * b5["volume"]).groupby(["product_id", "price_date"], sort=True)
    out = g.agg(open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
                volume=("volume", "sum"), pv=("pv", "sum"), n_candles=("n_candles", "sum")).reset_index()
    out["vwap"] = out.pop("pv") / out["volume"]
    out["is_complete"] = True
    out["quote_currency"] = "USD"
    return out


def risk_outputs(daily: pd.DataFrame, b5: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Risk output tables for every day of `daily`, consistent with POSITIONS valued at the daily closes."""
    pos = POSITIONS.drop(columns="as_of_date").merge(daily[["product_id", "price_date", "close"]], on="product_id")
    pos = pos.rename(columns={"price_date": "day"}).sort_values(["portfolio_id", "day", "product_id"])
    pos["market_value"] = pos["quantity"] * pos["close"]
    pos["unrealized_pnl"] = pos["quantity"] * (pos["close"] - pos["avg_cost"])
    gross = pos.assign(a=pos["market_value"].abs()).groupby(["portfolio_id", "day"])["a"].transform("sum")
    pos["weight"] = pos["market_value"] / gross
    pos["fx_rate"], pos["base_currency"] = 1.0, "USD"
    # PnL of day t: holdings revalued from the previous close (quantities are constant here)
    prev = pos.groupby(["portfolio_id", "product_id"])["close"].shift()
    pos["daily_pnl"] = pos["quantity"] * (pos["close"] - prev)
    positions = pos.rename(columns={"day": "as_of_date"})[
        ["portfolio_id", "product_id", "as_of_date", "quantity", "avg_cost", "close", "market_value",
         "unrealized_pnl", "weight", "fx_rate", "base_currency", "daily_pnl"]]

    mv = pos["market_value"]
    val = pos.assign(gross=mv.abs(), long=mv.clip(lower=0), short=(-mv).clip(lower=0)).groupby(
        ["portfolio_id", "day"]).agg(market_value=("market_value", "sum"), unrealized_pnl=("unrealized_pnl", "sum"),
                                     gross_exposure=("gross", "sum"), long_exposure=("long", "sum"),
                                     short_exposure=("short", "sum"), largest=("gross", "max")).reset_index()
    val["net_exposure"] = val["market_value"]
    val["concentration_pct"] = val.pop("largest") / val["gross_exposure"]
    val["base_currency"] = "USD"
    valuation = val.rename(columns={"day": "as_of_date"})

    pnl = pos.assign(p=pos["quantity"] * (pos["close"] - prev)).groupby(["portfolio_id", "day"])["p"].sum(
        min_count=1).reset_index(name="daily_pnl")
    month = pnl["day"].dt.to_period("M")
    pnl["mtd_pnl"] = pnl.assign(m=month, z=pnl["daily_pnl"].fillna(0)).groupby(["portfolio_id", "m"])["z"].cumsum()
    pnl["base_currency"] = "USD"
    pnl_daily = pnl.rename(columns={"day": "as_of_date"})

    risk = valuation[["portfolio_id", "as_of_date", "gross_exposure", "base_currency"]].copy()
    g = risk["gross_exposure"].to_numpy()
    for i, method in enumerate(METHODS):
        bump = 1 + 0.05 * i
        risk[f"var_95_{method}"], risk[f"var_99_{method}"] = 0.030 * g * bump, 0.045 * g * bump
        risk[f"es_95_{method}"], risk[f"es_99_{method}"] = 0.040 * g * bump, 0.055 * g * bump
    risk["vol_20d"], risk["vol_30d"], risk["vol_ewma"] = 0.55, 0.6, 0.5
    risk["max_drawdown"], risk["drawdown_from_peak"], risk["lookback_days"] = -0.12, -0.05, 250
    risk["mc_scenarios"], risk["mc_distribution"] = 10_000, "t"
    risk["var_99_hist_usd"] = risk["var_99_hist"]        # USD books: x 1
    limits = PORTFOLIOS.set_index("portfolio_id")                     # the limits the run checked
    risk["checked_var_limit"] = risk["portfolio_id"].map(limits["var_limit"])
    risk["checked_var_limit_metric"] = "var_99_hist"
    risk["checked_drawdown_limit"] = risk["portfolio_id"].map(limits["drawdown_limit"])
    risk["annualization_days"] = 365

    asset = daily[["product_id", "price_date", "close"]].rename(columns={"price_date": "as_of_date"})
    asset["daily_return"] = asset.groupby("product_id")["close"].pct_change()
    asset["vol_20d"], asset["vol_30d"], asset["vol_ewma"] = 0.7, 0.72, 0.65
    asset["max_drawdown"], asset["worst_daily_return"], asset["lookback_days"] = -0.2, -0.08, 250
    asset["quote_currency"] = "USD"

    rets = b5.assign(r=b5.groupby("product_id")["close"].pct_change()).dropna(subset=["r"])
    top = rets.assign(size=rets["r"].abs()).sort_values("size").groupby("product_id").tail(2)  # 2 largest moves
    anomalies = pd.DataFrame({
        "product_id": top["product_id"], "bucket_start": top["bucket_start"],
        "as_of_date": top["bucket_start"].dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize(),
        "return_value": top["r"], "robust_z": np.sign(top["r"]) * 4.2, "scale_method": "mad",
        "close": top["close"], "threshold": 3.5,
    })

    bt = []
    for method in METHODS:
        for conf, col in ((0.95, f"var_95_{method}"), (0.99, f"var_99_{method}")):
            fc = risk[["portfolio_id", "as_of_date", col]].rename(columns={col: "var_forecast"})
            fc = fc.merge(pnl_daily[["portfolio_id", "as_of_date", "daily_pnl"]], on=["portfolio_id", "as_of_date"])
            fc = fc.dropna(subset=["daily_pnl"]).rename(columns={"daily_pnl": "realized_pnl"})
            fc["method"], fc["confidence"] = method, conf
            fc["is_exception"] = fc["realized_pnl"] < -fc["var_forecast"]
            fc["forecast_date"] = fc["as_of_date"] - pd.Timedelta(days=1)
            fc["base_currency"] = "USD"
            bt.append(fc)
    var_backtest = pd.concat(bt, ignore_index=True)

    conc = valuation.merge(PORTFOLIOS, on="portfolio_id")
    conc = conc[conc["concentration_pct"] > conc["concentration_limit"]]
    limit_breaches = pd.DataFrame({
        "portfolio_id": conc["portfolio_id"], "as_of_date": conc["as_of_date"], "limit_type": "concentration",
        "metric": "concentration_pct", "value": conc["concentration_pct"], "limit_value": conc["concentration_limit"],
        "base_currency": "USD",
    })
    summaries = []  # one per daily run: the backtest window up to that day
    for day in sorted(var_backtest["as_of_date"].unique()):
        grouped = var_backtest[var_backtest["as_of_date"] <= day].groupby(["portfolio_id", "method", "confidence"])
        summaries.append(grouped.agg(n_days=("is_exception", "size"), exceptions=("is_exception", "sum"),
                                     window_start=("as_of_date", "min"), window_end=("as_of_date", "max"))
                         .reset_index().assign(as_of_date=day))
    summary = pd.concat(summaries, ignore_index=True)
    summary["expected_exceptions"] = summary["n_days"] * (1 - summary["confidence"])
    summary["kupiec_p"], summary["cc_p"] = 0.5, 0.4
    summary["traffic_light"] = np.where(summary["exceptions"] > 1, "yellow", "green")

    # each day's run stores the correlations of the returns up to that day (from the second return on)
    wide = daily.pivot(index="price_date", columns="product_id", values="close").pct_change()
    pairs = [(a, b) for a in wide.columns for b in wide.columns if a < b]
    correlations = pd.concat([pd.DataFrame({
        "product_id_a": [a for a, _ in pairs], "product_id_b": [b for _, b in pairs], "as_of_date": wide.index[i],
        "correlation": [corr.at[a, b] for a, b in pairs], "n_obs": i, "return_currency": "USD"})
        for i in range(2, len(wide)) for corr in [wide.iloc[1:i + 1].corr()]]
        or [pd.DataFrame(columns=["product_id_a", "product_id_b", "as_of_date", "correlation", "n_obs",
                                  "return_currency"])], ignore_index=True)   # one return: no correlation yet
    # portfolio return of day t = PnL(t) / gross exposure(t-1), as the risk engine defines it
    prev_gross = valuation.groupby("portfolio_id")["gross_exposure"].shift()
    port_ret = (pnl_daily.set_index(["portfolio_id", "as_of_date"])["daily_pnl"]
                / prev_gross.set_axis(pd.MultiIndex.from_frame(valuation[["portfolio_id", "as_of_date"]])))
    drawdowns = pd.concat([_drawdown_rows(port_ret.unstack("portfolio_id"), "portfolio"),
                           _drawdown_rows(wide, "asset")], ignore_index=True)
    return {"positions_valued": positions, "portfolio_valuation": valuation, "pnl_daily": pnl_daily,
            "risk_metrics": risk, "asset_risk": asset, "anomalies": anomalies, "var_backtest": var_backtest,
            "limit_breaches": limit_breaches, "var_backtest_summary": summary, "correlations": correlations,
            "drawdowns": drawdowns, "anomalies_daily": daily_anomalies(wide),
            **risk_depth_outputs(positions, risk, summary)}


def risk_depth_outputs(positions: pd.DataFrame, risk: pd.DataFrame, summary: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """firm_risk, risk_contributions, stress_results, var_model_comparison consistent with the risk rows: each
    position carries its share of gross exposure of every portfolio (firm) figure, so the contributions reconcile;
    the firm figures are 0.8 x the sum of the portfolios' (a diversification benefit of 20%)."""
    figures = ["var_95_param", "var_99_param", "es_95_hist", "es_99_hist", "var_95_hist", "var_99_hist"]
    firm = risk.groupby("as_of_date")[figures].sum().reset_index()
    firm["sum_standalone_var_99_hist"] = firm["var_99_hist"]
    firm[figures] *= 0.8
    firm["diversification_benefit"] = firm["sum_standalone_var_99_hist"] - firm["var_99_hist"]
    firm["currency"] = "USD"
    pos = positions[["portfolio_id", "product_id", "as_of_date", "market_value"]].copy()
    size = pos["market_value"].abs()
    parts = []
    for scope, keys, totals in (("portfolio", ["portfolio_id", "as_of_date"], risk), ("firm", ["as_of_date"], firm)):
        share = size / size.groupby([pos[k] for k in keys]).transform("sum")
        merged = pos.assign(share=share).merge(totals[keys + figures], on=keys)
        part = merged[["portfolio_id", "product_id", "as_of_date"]].assign(scope=scope, exposure=merged["market_value"])
        for kind, src in (("component_var_95_param", "var_95_param"), ("component_var_99_param", "var_99_param"),
                          ("component_es_95_hist", "es_95_hist"), ("component_es_99_hist", "es_99_hist")):
            part[kind] = merged["share"] * merged[src]
        part["marginal_var_99_param"] = part["component_var_99_param"] / part["exposure"]
        parts.append(part)
    contributions = pd.concat(parts, ignore_index=True)
    gross = risk[["portfolio_id", "as_of_date", "gross_exposure"]]
    stress_rows = []
    for sid, kind, move in (("worst_1d", "historical", -0.12), ("btc_minus_30", "hypothetical", -0.3)):
        stress_rows.append(gross.assign(scope="portfolio", scenario_id=sid, scenario_type=kind,
                                        pnl=move * gross["gross_exposure"], pnl_pct=move))
        g = gross.groupby("as_of_date")["gross_exposure"].sum().reset_index()
        stress_rows.append(g.assign(portfolio_id="FIRM", scope="firm", scenario_id=sid, scenario_type=kind,
                                    pnl=move * g["gross_exposure"], pnl_pct=move))
    stress = pd.concat(stress_rows, ignore_index=True).drop(columns="gross_exposure")
    comparison = summary[["portfolio_id", "as_of_date", "method", "confidence", "n_days", "exceptions", "kupiec_p",
                          "traffic_light"]].assign(christoffersen_p=0.6, es_test_p=0.3)
    comparison["passes"] = comparison["traffic_light"] != "red"
    return {"firm_risk": firm, "risk_contributions": contributions, "stress_results": stress,
            "var_model_comparison": comparison}


def _drawdown_rows(returns: pd.DataFrame, entity_type: str) -> pd.DataFrame:
    """drawdowns as the risk engine writes them, one as-of day per day after the first: the window starts on the
    first day (wealth 1) and takes every return up to the as-of day. `returns`: days x entities, first row NaN."""
    days = returns.index
    frames = []
    for i in range(1, len(days)):
        mdd = drawdown.max_drawdown(returns.iloc[1:i + 1].to_numpy())
        window = np.asarray(days[:i + 1])
        has = mdd.max_drawdown < 0
        frames.append(pd.DataFrame({
            "entity_type": entity_type, "entity_id": list(returns.columns), "as_of_date": days[i],
            "max_drawdown": mdd.max_drawdown,
            "peak_date": np.where(has, window[mdd.peak], np.datetime64("NaT")),
            "trough_date": np.where(has, window[mdd.trough], np.datetime64("NaT")),
            "recovery_date": np.where(has & (mdd.recovery >= 0), window[np.maximum(mdd.recovery, 0)],
                                      np.datetime64("NaT")),
            "window_start": days[0], "window_end": days[i],
        }))
    return pd.concat(frames, ignore_index=True)


def daily_anomalies(returns: pd.DataFrame) -> pd.DataFrame:
    """anomalies_daily as the risk engine writes them: each as-of day's file repeats every flagged day up to it.
    The flagged day of a product is its largest absolute daily return; SOL-USD's is scored against a flat window
    (scale_method none, robust_z = +-inf) so the infinite z-score path is exercised too."""
    long = returns.stack().dropna().rename("return_value").reset_index()       # price_date, product_id, return
    flagged = long.loc[long["return_value"].abs().groupby(long["product_id"]).idxmax()].reset_index(drop=True)
    flat = flagged["product_id"] == "SOL-USD"
    flagged["robust_z"] = np.sign(flagged["return_value"]) * np.where(flat, np.inf, 4.2)
    flagged["scale_method"] = np.where(flat, "none", "mad")
    flagged["window"], flagged["threshold"] = 60, 3.5
    runs = [flagged[flagged["price_date"] <= day].assign(as_of_date=day) for day in returns.index[1:]]
    return pd.concat(runs, ignore_index=True)


def factor_outputs(b5: pd.DataFrame) -> dict[str, pd.DataFrame]:
    wide = b5.pivot(index="bucket_start", columns="product_id", values="close").pct_change().iloc[1:]
    market = wide.mean(axis=1)
    factor_returns = pd.concat([
        pd.DataFrame({"factor_name": "market", "bucket_start": wide.index, "factor_return": market.to_numpy()}),
        pd.DataFrame({"factor_name": "btc_spread", "bucket_start": wide.index,
                      "factor_return": (wide["BTC-USD"] - market).to_numpy()}),
    ], ignore_index=True)
    last = wide.groupby(wide.index.normalize()).tail(1).index   # the day's last timestamp
    rows = []
    for factor in ("market", "btc_spread"):
        for product in wide.columns:
            rows.append(pd.DataFrame({"product_id": product, "factor_name": factor, "bucket_start": last,
                                      "beta": 1.0 if factor == "market" else 0.1, "r_squared": 0.6,
                                      "r_squared_adj": 0.59, "n_obs": np.int64(287)}))
    days = sorted(set(wide.index.normalize().date))
    membership = pd.DataFrame([(d, "market", p, 1 / len(wide.columns)) for d in days for p in wide.columns],
                              columns=["date", "factor_name", "product_id", "weight"])
    return {"factor_returns": factor_returns, "factor_exposures": pd.concat(rows, ignore_index=True),
            "factor_membership": membership}


def declared(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """The sample frame of output `name` with the columns of its declaration (etl/warehouse/tables.yml), in
    declaration order then its not_loaded ones: a declared column the sample gives no value is NULL of its declared
    type, so a new column needs only its declaration (plus a value here if a test needs one)."""
    spec = schema.BY_NAME.get(name)
    if spec is None:
        return df
    out = df.copy()
    for col in spec.columns:
        if col.name not in out:
            out[col.name] = pd.Series([None] * len(out), dtype=pd.ArrowDtype(col.arrow_type), index=out.index)
    order = [c for c in spec.column_names if c in out] + [c for c in out if c not in spec.column_names]
    return out[order]


def write_silver(store: Store, b5: pd.DataFrame, daily: pd.DataFrame, year: int) -> None:
    """The 5-minute bars as silver bars_5m (one file per product per day) and the daily bars as bars_1d."""
    b5_day = b5["bucket_start"].dt.strftime("%Y-%m-%d")
    commit_silver(store, "silver/bars_5m", [
        ({"product_id": product, "date": day}, pa.Table.from_pandas(part.drop(columns="product_id"), preserve_index=False))
        for (product, day), part in b5.groupby(["product_id", b5_day])])
    commit_silver(store, "silver/bars_1d", [
        ({"product_id": product, "year": str(year)},
         pa.Table.from_pandas(part.drop(columns="product_id"), preserve_index=False))
        for product, part in daily.groupby("product_id")])


def write_sample(settings: Settings, first_day: date = date(2026, 1, 1), days: int = 4) -> dict[str, int]:
    """Write the whole sample under the settings' data dir; returns rows written per table."""
    store = get_store(settings)
    b5 = bars_5m(first_day, days)
    daily = daily_from_5m(b5)
    counts: dict[str, int] = {"bars_5m": len(b5), "bars_1d": len(daily)}
    write_silver(store, b5, daily, first_day.year)
    tables = {name: declared(name, df) for name, df in {**risk_outputs(daily, b5), **factor_outputs(b5)}.items()}
    factor_parts: dict[tuple[str, str], pa.Table] = {}
    risk_parts: dict[str, dict[tuple[str, str], pa.Table]] = {}
    for name, df in tables.items():
        counts[name] = len(df)
        if name.startswith("factor_"):
            key = df["date"] if "date" in df else df["bucket_start"].dt.strftime("%Y-%m-%d")
        else:  # as the risk engine does: the as-of partition holds its day (history tables could hold more)
            key = (df["as_of_date"] if "as_of_date" in df else df["bucket_start"]).astype(str).str[:10]
        for value, part in df.groupby(key.astype(str)):
            if name.startswith("factor_"):
                factor_parts[(name, f"date={value}")] = pa.Table.from_pandas(part, preserve_index=False)
            else:
                risk_parts.setdefault(value, {})[(name, f"as_of_date={value}")] = part
    # committed as the stages commit them (etl/commits.py): one manifest per risk as-of day, one for factors
    for day, parts in sorted(risk_parts.items()):
        run_id = commits.new_run_id()
        if ("risk_metrics", f"as_of_date={day}") in parts:
            parts[("risk_metrics", f"as_of_date={day}")] = parts[("risk_metrics", f"as_of_date={day}")].assign(
                risk_run_id=run_id)
        commits.publish(store, commits.risk_manifest(date.fromisoformat(day)), "risk",
                        {k: pa.Table.from_pandas(v, preserve_index=False) for k, v in parts.items()}, run_id=run_id)
    commits.publish(store, "factors", "factors", factor_parts)
    started = datetime.combine(first_day + timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    for i, (task, status) in enumerate([("fetch_candles", "success"), ("build_bars", "success"),
                                        ("compute_risk", "failed"), ("compute_risk", "success")]):
        runlog.record(runlog.RunRecord(run_id="sample-run", dag_id="market_risk", task_id=task, status=status,
                                       rows_in=100 * (i + 1), rows_out=90 * (i + 1),
                                       started_at=started + timedelta(minutes=i), duration_s=1.5 + i,
                                       message="boom" if status == "failed" else "ok", try_number=1 + (i == 3)),
                      settings)
    counts["pipeline_runs"] = 4
    counts.update(write_intraday(store, b5, daily, first_day + timedelta(days=days - 1)))
    return counts


INTRADAY_BUCKETS = 12  # the last hour of the sample's last day


def write_intraday(store, b5: pd.DataFrame, daily: pd.DataFrame, day: date) -> dict[str, int]:
    """Intraday outputs of the last day's last hour, from the real revaluation (etl.risk.intraday.compute) on
    the sample bars with the daily returns up to the previous day as scenario set (P002 breaches its VaR limit)."""
    from etl.risk import intraday, intraday_io, var
    from etl.risk.scenarios import ScenarioSet

    closes = daily.pivot(index="price_date", columns="product_id", values="close")
    window = np.ascontiguousarray(closes.loc[:pd.Timestamp(day) - pd.Timedelta(days=1)].pct_change().iloc[1:]
                                  .to_numpy())
    scenarios = ScenarioSet(day - timedelta(days=1), list(closes.columns), {"USD": window},
                           {"USD": var.covariance(window) if len(window) > 1 else window}, pd.Series(0.0, index=PORTFOLIOS["portfolio_id"]),
                           (500, 7, "t", 5.0)) if len(window) > 1 else None
    positions = POSITIONS.assign(as_of_date=pd.to_datetime(POSITIONS["as_of_date"]).astype("datetime64[ns]"))
    portfolios = PORTFOLIOS.assign(var_limit_metric="var_99_hist")
    bars_1d = daily.assign(price_date=daily["price_date"].astype("datetime64[ns]"))
    counts = {intraday.RISK_TABLE: 0, intraday.BREACH_TABLE: 0}
    previous = None
    last = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1) - intraday.BUCKET
    for bucket in pd.date_range(end=last, periods=INTRADAY_BUCKETS, freq=intraday.BUCKET):
        tables = intraday.compute(bucket, portfolios, positions, {p: "USD" for p in PRODUCTS}, b5, bars_1d,
                                  scenarios, previous)
        intraday_io.write_outputs(store, bucket, tables)
        for name, df in tables.items():
            counts[name] += len(df)
        previous = tables[intraday.BREACH_TABLE]
    return counts

"""A small, deterministic gold schema for the report's tests and for previewing the report layout.

`sample_frames(as_of)` builds the gold tables (contract columns) for two portfolios and three assets over a few
weeks; `create_gold(url, frames)` writes them into a database that has NO gold schema yet (it refuses to touch
a real warehouse) and grants the `reporting` role read access, as the warehouse setup does.

Preview: `python -m tests.support.report_sample postgresql://.../scratch_db` then `PIPELINE_DATABASE_URL=... python -m etl
report`.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd

from etl import measures
from etl.errors import ConfigError
from etl.risk import drawdown
from etl.risk.engine import backtest_summary

AS_OF = date(2026, 1, 31)  # the sample's last day, the default as-of of its reports
PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD")
START_PRICES = (60_000.0, 3_000.0, 150.0)
PORTFOLIOS = pd.DataFrame({
    "portfolio_id": ["P-CORE", "P-ALT"],
    "name": ["Core crypto", "Alt basket"],
    "base_currency": ["USD", "USD"],
    "var_limit": [3_500.0, 2_500.0],
    "concentration_limit": [0.60, 0.50],
    "drawdown_limit": [0.25, 0.20],
    "var_limit_metric": ["var_99_hist", "var_99_hist"],
    "is_current": [True, True],
})
HOLDINGS = {  # portfolio -> product -> (quantity, avg_cost)
    "P-CORE": {"BTC-USD": (1.0, 55_000.0), "ETH-USD": (10.0, 2_800.0), "SOL-USD": (-50.0, 160.0)},
    "P-ALT": {"ETH-USD": (5.0, 3_100.0), "SOL-USD": (200.0, 120.0)},
}
TASKS = ("fetch_candles", "build_bars_5m", "compute_risk", "load_warehouse")
VAR_Z = {0.95: 1.645, 0.99: 2.326, 0.995: 2.576}   # normal VaR and ES per unit sd at each registered confidence
ES_Z = {0.95: 2.063, 0.99: 2.665, 0.995: 2.892}
PLAIN = {"vol_20d": 0.55, "vol_30d": 0.6, "vol_ewma": 0.58, "max_drawdown": -0.18}   # other measures: 0.5


def _prices(as_of: date, days: int) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    dates = [as_of - timedelta(days=days - 1 - i) for i in range(days)]
    rows = []
    for product, p0 in zip(PRODUCTS, START_PRICES, strict=True):
        closes = p0 * np.exp(np.cumsum(rng.normal(0, 0.03, days)))
        opens = np.concatenate([[p0], closes[:-1]])
        rows.append(pd.DataFrame({
            "product_id": product, "price_date": dates, "open": opens,
            "high": np.maximum(opens, closes) * 1.01, "low": np.minimum(opens, closes) * 0.99, "close": closes,
            "volume": rng.uniform(100, 1000, days), "vwap": (opens + closes) / 2,
            "daily_return": np.r_[np.nan, closes[1:] / closes[:-1] - 1],   # as the dbt mart
        }))
    return pd.concat(rows, ignore_index=True)


def sample_frames(as_of: date = AS_OF, days: int = 45) -> dict[str, pd.DataFrame]:
    """Gold tables keyed by table name; numbers are consistent (valuation = sum of positions, PnL = value change)."""
    prices = _prices(as_of, days)
    close = prices.pivot(index="price_date", columns="product_id", values="close")
    positions, valuation = [], []
    for pid, holdings in HOLDINGS.items():
        for product, (qty, cost) in holdings.items():
            mv = qty * close[product]
            positions.append(pd.DataFrame({
                "portfolio_id": pid, "product_id": product, "as_of_date": close.index, "quantity": qty,
                "avg_cost": cost, "close": close[product].to_numpy(), "market_value": mv.to_numpy(),
                "unrealized_pnl": (qty * (close[product] - cost)).to_numpy(), "price_date": close.index,
                "daily_pnl": (qty * close[product].diff()).to_numpy(),   # as the engine: q(D-1) x the move
                "is_stale": False, "is_delisted": False, "carried_days": 0}))
    positions = pd.concat(positions, ignore_index=True)
    g = positions.assign(abs_mv=positions["market_value"].abs(),
                         long=positions["market_value"].clip(lower=0),
                         short=positions["market_value"].clip(upper=0))
    agg = g.groupby(["portfolio_id", "as_of_date"], as_index=False).agg(
        market_value=("market_value", "sum"), unrealized_pnl=("unrealized_pnl", "sum"),
        gross_exposure=("abs_mv", "sum"), long_exposure=("long", "sum"), short_exposure=("short", "sum"),
        max_abs=("abs_mv", "max"))
    agg["net_exposure"] = agg["market_value"]
    agg["concentration_pct"] = agg["max_abs"] / agg["gross_exposure"]
    valuation = agg.drop(columns="max_abs")
    positions["weight"] = positions["market_value"] / positions.merge(valuation, on=["portfolio_id", "as_of_date"],
                                                                      how="left")["gross_exposure"].to_numpy()

    pnl = valuation[["portfolio_id", "as_of_date", "market_value"]].copy()
    pnl["daily_pnl"] = pnl.groupby("portfolio_id")["market_value"].diff().fillna(0.0)
    month = pd.to_datetime(pnl["as_of_date"]).dt.to_period("M")
    pnl["mtd_pnl"] = pnl.groupby([pnl["portfolio_id"], month])["daily_pnl"].cumsum()
    pnl = pnl.drop(columns="market_value")
    # as the engine: return on the previous day's gross exposure; drawdown of the compounded returns from the peak
    prev_gross = valuation.groupby("portfolio_id")["gross_exposure"].shift()
    pnl["daily_return"] = pnl["daily_pnl"] / prev_gross                # NaN on the first day: no previous one
    valuation["drawdown"] = pnl.groupby("portfolio_id")["daily_return"].transform(
        lambda r: drawdown.drawdown_series(r.to_numpy()[1:, None])[:, 0])

    sd = pnl.groupby("portfolio_id")["daily_pnl"].std()
    risk_rows, backtest = [], []
    for pid, s in sd.items():
        row = {"portfolio_id": pid, "as_of_date": as_of}
        for method in measures.methods("portfolio"):      # every registered method, as gold has them
            k = {"hist": 1.0, "param": 1.05, "mc": 1.02}.get(method.name, 1.1)
            for c in method.confidences:
                row |= {measures.column("var", c, method.name): VAR_Z[c] * s * k,
                        measures.column("es", c, method.name): ES_Z[c] * s * k}
        dd = valuation.loc[valuation["portfolio_id"] == pid, "drawdown"]
        row |= {m.name: PLAIN.get(m.name, 0.5) for m in measures.plain_measures("portfolio")}
        lim = PORTFOLIOS.set_index("portfolio_id").loc[pid]      # as the engine: the limits the run checked
        row |= {"checked_var_limit": lim["var_limit"], "checked_var_limit_metric": lim["var_limit_metric"],
                "checked_concentration_limit": lim["concentration_limit"],
                "checked_drawdown_limit": lim["drawdown_limit"]}
        row |= {"max_drawdown": float(dd.min()), "drawdown_from_peak": float(dd.iat[-1]), "lookback_days": days - 1,
                "annualization_days": 365,
                "var_99_hist_usd": row["var_99_hist"]}   # as the engine: x 1 for a USD book
        risk_rows.append(row)
        mine = pnl[pnl["portfolio_id"] == pid]
        for method in ("hist", "param"):
            for conf, z in ((0.95, 1.645), (0.99, 2.326)):
                var = z * s * 0.8  # a little low on purpose: some exceptions to mark
                backtest.append(pd.DataFrame({
                    "portfolio_id": pid, "as_of_date": mine["as_of_date"].to_numpy(), "method": method,
                    "confidence": conf, "var_forecast": var, "realized_pnl": mine["daily_pnl"].to_numpy(),
                    "is_exception": (-mine["daily_pnl"] > var).to_numpy()}))
    risk = pd.DataFrame(risk_rows).assign(carried_days=0, lookback_limited_by=None)
    backtest = pd.concat(backtest, ignore_index=True)
    # gold.fact_var_backtest_summary: each day's run's summary of the rows up to it (the window is the whole sample)
    dated = backtest.assign(as_of_date=pd.to_datetime(backtest["as_of_date"]))
    summary = pd.concat([backtest_summary(dated[dated["as_of_date"] <= d], d).assign(as_of_date=d.date())
                         for d in sorted(dated["as_of_date"].unique())], ignore_index=True)
    summary = summary.assign(window_start=summary["window_start"].dt.date, window_end=summary["window_end"].dt.date)
    comparison = summary[summary["as_of_date"] == as_of][
        ["portfolio_id", "as_of_date", "method", "confidence", "n_days", "exceptions", "expected_exceptions",
         "traffic_light"]]   # the engine's summary of these rows (gold.fact_var_model_comparison)

    asset_risk = pd.DataFrame({"product_id": list(PRODUCTS), "as_of_date": as_of, "vol_20d": [0.45, 0.62, 0.91],
                               "vol_30d": [0.48, 0.65, 0.95], "vol_ewma": [0.47, 0.6, 0.88],
                               "max_drawdown": [-0.12, -0.2, -0.35], "worst_daily_return": [-0.05, -0.07, -0.11]})
    snap = datetime.combine(as_of, time(23, 59), tzinfo=UTC)
    factor_exposures = pd.DataFrame({
        "product_id": np.repeat(PRODUCTS, 2), "factor_name": ["market", "size"] * 3, "bucket_start": snap,
        "beta": [1.0, 0.1, 1.2, -0.3, 1.5, 0.8], "r_squared": [0.9, 0.9, 0.7, 0.7, 0.5, 0.5],
        "r_squared_adj": [0.89, 0.89, 0.69, 0.69, 0.49, 0.49], "n_obs": 1440})
    factor_returns = pd.DataFrame({"factor_name": ["market", "size"], "bucket_start": snap,
                                   "factor_return": [0.001, -0.0004]})
    day0 = datetime.combine(as_of, time(0, 0), tzinfo=UTC)
    anomalies = pd.DataFrame({"product_id": ["SOL-USD", "ETH-USD"],
                              "bucket_start": [day0 + timedelta(hours=3, minutes=5), day0 + timedelta(hours=14)],
                              "return_value": [0.052, -0.038], "robust_z": [6.3, -4.1]})
    runs = []
    for i in range(3):
        t0 = datetime.combine(as_of, time(1, 0), tzinfo=UTC) - timedelta(days=2 - i)
        for j, task in enumerate(TASKS):
            runs.append({"run_id": f"run-{i + 1}", "dag_id": "eod_risk", "task_id": task, "status": "success",
                         "rows_in": 1000 * (j + 1), "rows_out": 900 * (j + 1),
                         "started_at": t0 + timedelta(minutes=j), "duration_s": 10.0 + 5 * j + i,
                         "message": ""})
    runs.insert(1, {"run_id": "run-1", "dag_id": "eod_risk", "task_id": "build_bars_5m", "status": "failed",
                    "rows_in": 0, "rows_out": 0,
                    "started_at": datetime.combine(as_of, time(0, 59), tzinfo=UTC) - timedelta(days=2),
                    "duration_s": 3.5, "message": "SourceError: simulator returned 503 five times"})
    pipeline_runs = pd.DataFrame(runs)

    p = PORTFOLIOS.set_index("portfolio_id")
    last_val = valuation[valuation["as_of_date"] == as_of].set_index("portfolio_id")
    risk_i = risk.set_index("portfolio_id")
    breaches = pd.DataFrame({
        "portfolio_id": ["P-CORE", "P-ALT"], "as_of_date": as_of, "limit_type": ["var", "concentration"],
        "value": [risk_i.at["P-CORE", "var_99_hist"], last_val.at["P-ALT", "concentration_pct"]],
        "limit_value": [p.at["P-CORE", "var_limit"], p.at["P-ALT", "concentration_limit"]],
        "metric": ["var_99_hist", "concentration_pct"], "breach_kind": "exceeded"})
    breaches["utilisation"] = breaches["value"] / breaches["limit_value"]   # as the gold mart

    price_quality = pd.DataFrame({  # one print excluded on the as-of day (its daily bar stands), one accepted before
        "product_id": ["SOL-USD", "BTC-USD"], "granularity": [300, 86400],
        "bucket_start": [datetime.combine(as_of, time(10, 5), tzinfo=UTC),
                         datetime.combine(as_of - timedelta(days=3), time(0, 0), tzinfo=UTC)],
        "rule": ["spike_revert", "spike_revert"],
        "evidence": ["close 7500: +3.912 log from the previous close 150, then -3.912 back to 150; threshold 0.223",
                     "close 96000: +0.560 log from the previous close 55000, then -0.560 back to 55000; "
                     "threshold 0.501"],
        "decision": ["excluded", "accepted_by_override"], "flag_date": [as_of, as_of - timedelta(days=3)],
        "accepted_by": [None, "risk-ops"], "override_reason": [None, "exchange-confirmed auction print"]})
    # as the engine stores them: simple daily USD returns over the lookback, one row per pair a < b
    corr = np.corrcoef(close.pct_change().iloc[1:].to_numpy(), rowvar=False)
    i, j = np.triu_indices(len(PRODUCTS), k=1)
    correlations = pd.DataFrame({"product_id_a": np.asarray(PRODUCTS)[i], "product_id_b": np.asarray(PRODUCTS)[j],
                                 "as_of_date": as_of, "correlation": corr[i, j], "n_obs": days - 1,
                                 "return_currency": "USD"})
    held = positions[positions["as_of_date"] == as_of][["portfolio_id", "product_id", "market_value"]]
    contributions = pd.concat([held.assign(  # the firm's rows differ from the portfolio's: pages must not mix them
        scope=scope, currency="USD", as_of_date=as_of, exposure=held["market_value"],
        component_var_99_param=0.04 * k * held["market_value"], component_es_99_hist=0.05 * k * held["market_value"],
        marginal_var_99_param=0.04 * k) for scope, k in (("portfolio", 1.0), ("firm", 0.7))], ignore_index=True)
    symbols = pd.DataFrame({"product_id": list(PRODUCTS), "base_currency": [x.split("-")[0] for x in PRODUCTS],
                            "quote_currency": "USD", "exchange_id": "coinbase", "asset_class": "crypto",
                            "delisted_on": pd.Series(pd.NaT, index=range(len(PRODUCTS)), dtype="datetime64[ns]")})
    return {
        "dim_portfolio": PORTFOLIOS.copy(), "dim_symbol": symbols,
        "dim_exchange": pd.DataFrame({"exchange_id": ["coinbase"], "name": ["Coinbase Exchange"]}),
        "fact_price_daily": prices, "fact_positions": positions, "fact_portfolio_valuation": valuation,
        "fact_pnl_daily": pnl, "fact_risk_metrics": risk, "fact_var_backtest": backtest,
        "fact_asset_risk": asset_risk, "fact_factor_exposures": factor_exposures,
        "fact_factor_returns": factor_returns, "fact_anomalies": anomalies, "fact_pipeline_runs": pipeline_runs,
        "fact_limit_breaches": breaches, "fact_price_quality": price_quality, "fact_correlations": correlations,
        "fact_risk_contributions": contributions.drop(columns="market_value"), "fact_var_model_comparison": comparison,
        "fact_var_backtest_summary": summary,
    }


def book_switched_from_btc_to_usd() -> dict[str, pd.DataFrame]:
    """The sample gold where P-ALT was a BTC book up to AS_OF (the runs wrote its figures, in BTC, with
    base_currency BTC on every fact row) and its desk has since made it a USD book: portfolios.csv, hence
    gold.dim_portfolio, says USD now. Its VaR breached a 0.001 BTC limit on AS_OF at 0.00123456 BTC."""
    frames = sample_frames(AS_OF)
    for name, df in frames.items():
        if name.startswith("fact_") and "portfolio_id" in df and name != "fact_risk_contributions":
            df["base_currency"] = df["portfolio_id"].map({"P-CORE": "USD", "P-ALT": "BTC"})
    breaches = frames["fact_limit_breaches"]
    var = breaches[breaches["limit_type"] == "var"].iloc[0].copy()
    var[["portfolio_id", "value", "limit_value", "base_currency"]] = ["P-ALT", 0.00123456, 0.001, "BTC"]
    breaches.loc[len(breaches)] = var
    return frames


def _pg_type(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "boolean"
    if pd.api.types.is_integer_dtype(s):
        return "bigint"
    if pd.api.types.is_float_dtype(s):
        return "double precision"
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return "timestamptz"
    if pd.api.types.is_datetime64_dtype(s) and not s.notna().any():
        return "date"                           # a day column with no day yet (dim_symbol.delisted_on)
    first = s.dropna().iloc[0] if s.notna().any() else None
    if isinstance(first, datetime):
        return "timestamptz"
    if isinstance(first, date):
        return "date"
    return "text"


# gold's portfolio facts that carry the currency of their row (the engine writes it on every row of the run)
CURRENCY_FACTS = ("fact_positions", "fact_portfolio_valuation", "fact_pnl_daily", "fact_risk_metrics",
                  "fact_var_backtest", "fact_limit_breaches", "fact_pnl_attribution", "fact_stress_results",
                  "fact_intraday_risk", "fact_intraday_limit_breaches")


def _with_base_currency(name: str, df: pd.DataFrame, dims: pd.DataFrame | None) -> pd.DataFrame:
    """A portfolio fact without `base_currency` gets its book's currency of dim_portfolio (as the run that wrote it:
    the book's currency then); a test of a book whose currency changed since sets the fact rows' own."""
    if name not in CURRENCY_FACTS or "base_currency" in df or dims is None or "portfolio_id" not in df:
        return df
    ccy = dict(zip(dims["portfolio_id"], dims["base_currency"], strict=True))
    return df.assign(base_currency=df["portfolio_id"].map(ccy))


def create_gold(url: str, frames: dict[str, pd.DataFrame], skip: tuple[str, ...] = ()) -> None:
    """Create schema gold with these tables (minus `skip`) in the database at `url`; grant SELECT to reporting."""
    import psycopg2
    from psycopg2.extras import execute_values

    from etl.warehouse import roles

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select 1 from information_schema.schemata where schema_name = 'gold'")
            if cur.fetchone():
                raise ConfigError(f"schema gold already exists in {url.split('?')[0]}: the sample is only "
                                  "written into an empty scratch database")
            roles.create_role(cur, roles.READER, "login")  # the warehouse's reporting role
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("create schema gold")
            for name, df in frames.items():
                if name in skip:
                    continue
                df = _with_base_currency(name, df, frames.get("dim_portfolio"))
                cols = ", ".join(f'"{c}" {_pg_type(df[c])}' for c in df.columns)
                cur.execute(f"create table gold.{name} ({cols})")
                rows = [tuple(None if pd.isna(v) else (v.item() if isinstance(v, np.generic) else v) for v in r)
                        for r in df.astype(object).itertuples(index=False)]
                if rows:
                    execute_values(cur, f"insert into gold.{name} values %s", rows)
            cur.execute("grant usage on schema gold to reporting")
            cur.execute("grant select on all tables in schema gold to reporting")
        conn.commit()
    finally:
        conn.close()


# ---- a bigger book for measurements ------------------------------------------------------------------------------
def sample_book(as_of: date, n_portfolios: int, days: int = 120) -> dict[str, pd.DataFrame]:
    """`sample_frames` with its two portfolios cloned into `n_portfolios` (sizes scaled so the
    numbers differ), for size and speed measurements at 22 and 1,000 portfolios."""
    base = sample_frames(as_of, days)
    summary = base["fact_var_backtest_summary"]
    base["fact_var_backtest_summary"] = summary[summary["as_of_date"] == as_of]   # the as-of run's only: size
    per_portfolio = ("dim_portfolio", "fact_positions", "fact_portfolio_valuation", "fact_pnl_daily",
                     "fact_risk_metrics", "fact_var_backtest", "fact_limit_breaches", "fact_var_model_comparison",
                     "fact_var_backtest_summary")
    money_cols = {"market_value", "unrealized_pnl", "gross_exposure", "net_exposure", "long_exposure",
                  "short_exposure", "daily_pnl", "mtd_pnl", "var_forecast", "realized_pnl", "var_limit",
                  "checked_var_limit",
                  "quantity"} | {c for c in base["fact_risk_metrics"] if c.startswith(("var_", "es_"))}
    out = {k: v for k, v in base.items() if k not in per_portfolio}
    sources = base["dim_portfolio"]["portfolio_id"].tolist()
    for name in per_portfolio:
        parts = []
        for i in range(n_portfolios):
            src = sources[i % len(sources)]
            scale = 1.0 + 0.5 * (i // len(sources))
            df = base[name][base[name]["portfolio_id"] == src].copy()
            df["portfolio_id"] = f"P{i + 1:04d}"
            if name == "fact_limit_breaches":  # a VaR breach scales with the book, a fraction does not
                df.loc[df["limit_type"] == "var", ["value", "limit_value"]] *= scale
            else:
                for c in money_cols & set(df.columns):
                    df[c] = df[c] * scale
            if name == "dim_portfolio":
                df["name"] = f"Book {i + 1}"
            parts.append(df)
        out[name] = pd.concat(parts, ignore_index=True)
    b = out["fact_limit_breaches"]
    b["utilisation"] = b["value"] / b["limit_value"]
    b["base_currency"] = "USD"
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.report_sample POSTGRES_URL_OF_A_SCRATCH_DATABASE")
    create_gold(sys.argv[1], sample_frames())
    print(f"sample gold written to {sys.argv[1].split('?')[0]}")

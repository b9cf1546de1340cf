"""Intraday risk: every portfolio revalued on the latest 5-minute bars, with PnL, exposure, VaR/ES and limits.

A revaluation, not a new risk run. The end-of-day run persists what it needs (`scenario_tables`, written with
the other risk outputs): per base currency the historical scenario set (the last N daily asset returns in that
currency, (N, A)), their sample covariance (A, A), and each portfolio's drawdown from its peak at the close.
Each intraday run (one 5-minute bucket b of UTC day D) then:

1. holdings: each portfolio's latest snapshot dated <= D (today's book) and <= D-1 (yesterday's, for the PnL),
   carried forward as in the end-of-day run;
2. prices: each product's close of its latest 5-minute bar with bucket_start <= b (reaching back to D-1); a
   product without one keeps the previous daily close. A price from a bar before b is stale, its age b - bar;
   conversions to the base currency use the same-bucket `<CCY>-USD` closes (fx = quote_usd / base_usd);
3. value and exposures: mv = quantity x close x fx (today's holdings), gross/net/long/short/concentration as EOD;
4. PnL since the previous UTC close: yesterday's holdings revalued, sum_a q[D-1] (price_b - price[D-1]), with
   price[D-1] the daily close x daily fx, exactly EOD's daily PnL formula (so the day's last bucket, whose bar
   closes at the daily close, gives that day's EOD daily_pnl when nothing traded);
5. VaR/ES 95/99: today's exposures on the last EOD run's scenario set: historical (VaR = linear quantile of the
   N scenario losses, ES = mean of the losses >= VaR), parametric (z sigma with the stored covariance) and Monte
   Carlo (the EOD run's seeded draws on the stored covariance), the same functions and arrays as EOD, so equal
   prices give bit-equal figures; NaN, as at end of day, for a book whose holdings rest on a carried-forward
   close in more scenarios than the EOD run's max_carried_days (scenario_returns.is_carried);
6. drawdown from peak: the EOD wealth relative to its peak (1 + drawdown at the close) carried through today's
   buckets with the return on yesterday's gross exposure, r_b = pnl_b / gross[D-1]; drawdown = w_b / peak - 1
   with the peak the larger of the EOD peak and today's running maximum;
7. limits: the portfolio's VaR metric, concentration and drawdown-from-peak against its limits; a breach row per
   limit in breach, a `cleared` row at the first bucket back under a limit that was in breach at the previous
   run's bucket. As at end of day, a NaN/inf metric (no scenario set, an unpriced holding) is a breach of kind
   `uncomputable`, never a pass or a clearing; only a book holding nothing has nothing to check.

A bucket later than now (plus FUTURE_TOLERANCE) is refused: it would commit a revaluation on prices not yet seen.

This module is the pure revaluation (frames in, frames out); the scenario set is etl.risk.scenarios, reading and
writing a bucket's files etl.risk.intraday_io, alerting its breaches etl.report.alerts. Conventions:
docs/risk_conventions.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from etl import measures
from etl.errors import ValidationError
from etl.risk import book_var, drawdown, valuation, var
from etl.risk.engine import DRAWDOWN_METRIC, snapshot_arrays
from etl.risk.scenarios import ScenarioSet

RISK_TABLE, BREACH_TABLE = "intraday_risk", "intraday_limit_breaches"
BUCKET = pd.Timedelta(minutes=5)
FUTURE_TOLERANCE = pd.Timedelta(minutes=1)  # clock skew between the scheduler and the worker


# ---- prices at a bucket --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prices:
    """Closes (B, K) of K products on today's bucket grid up to b, their age in seconds (NaN = no price at all),
    and the previous daily close (K,) with its date."""

    close: np.ndarray
    age_s: np.ndarray
    prev_close: np.ndarray
    prev_date: np.ndarray
    columns: dict[str, int]


def price_grid(bucket: pd.Timestamp, products: list[str], bars_5m: pd.DataFrame, bars_1d: pd.DataFrame) -> Prices:
    """Last known close at each bucket of day D up to `bucket` (5-minute bars back to D-1 00:00, else the
    previous daily close, dated its day's last bucket), and the previous daily close (carried forward <= D-1)."""
    day = bucket.normalize()
    grid = pd.date_range(day, bucket, freq=BUCKET).as_unit("ns")
    full = pd.date_range(day - pd.Timedelta(days=1), bucket, freq=BUCKET).as_unit("ns")
    prev_day = (day - pd.Timedelta(days=1)).tz_localize(None)
    b5 = bars_5m[bars_5m["product_id"].isin(products) & (bars_5m["bucket_start"] >= full[0])
                 & (bars_5m["bucket_start"] <= bucket)]
    wide = b5.pivot_table(index="bucket_start", columns="product_id", values="close", aggfunc="last")
    wide = wide.reindex(index=full, columns=products)
    seen = pd.DataFrame(np.where(wide.notna(), full.asi8[:, None], np.nan), index=full, columns=products)
    close = wide.ffill().loc[grid].to_numpy()
    bar_ns = seen.ffill().loc[grid].to_numpy()
    d1 = bars_1d[bars_1d["product_id"].isin(products) & (bars_1d["price_date"] <= prev_day)]
    last = d1.sort_values("price_date").groupby("product_id").last().reindex(products)
    prev_close = last["close"].to_numpy(dtype="float64")
    prev_date = last["price_date"].to_numpy(dtype="datetime64[ns]")
    # no 5-minute bar since D-1: the previous daily close, as of its day's last bucket
    fallback_ns = (prev_date + np.timedelta64(1, "D") - np.timedelta64(5, "m")).astype("datetime64[ns]")
    fallback_ns = np.where(np.isnat(fallback_ns), np.nan, fallback_ns.astype("int64").astype("float64"))
    missing = np.isnan(close)
    close = np.where(missing, prev_close[None, :], close)
    bar_ns = np.where(missing, fallback_ns[None, :], bar_ns)
    age_s = (grid.asi8[:, None] - bar_ns) / 1e9
    return Prices(close, age_s, prev_close, prev_date, {p: k for k, p in enumerate(products)})


def _usd(prices: Prices, ccy: str, what: str) -> np.ndarray:
    """One unit of `ccy` in USD on the grid ("close", "age_s") or at the previous close ("prev_close")."""
    arr = getattr(prices, what)
    if ccy == "USD":
        return np.zeros_like(arr[..., 0]) if what == "age_s" else np.ones_like(arr[..., 0])
    k = prices.columns.get(f"{ccy}-USD")
    return arr[..., k] if k is not None else np.full_like(arr[..., 0], np.nan)


# ---- the revaluation -------------------------------------------------------------------------------------------
def compute(bucket: pd.Timestamp, portfolios: pd.DataFrame, positions: pd.DataFrame, quote_ccy: dict[str, str],
            bars_5m: pd.DataFrame, bars_1d: pd.DataFrame, scenarios: ScenarioSet | None,
            previous_breaches: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The intraday_risk rows (one per portfolio holding anything) and the limit rows of bucket `bucket`."""
    bucket = bucket_of(bucket)
    day = bucket.normalize().tz_localize(None)
    prev_day = day - pd.Timedelta(days=1)
    positions = positions[positions["as_of_date"] <= day]
    pids = list(portfolios["portfolio_id"])
    base_of = dict(zip(portfolios["portfolio_id"], portfolios["base_currency"], strict=True))
    scen_products = scenarios.products if scenarios is not None else []
    axis = scen_products + sorted(set(positions["product_id"]) - set(scen_products))
    currencies = {quote_ccy[p] for p in axis} | set(base_of.values())
    priced = list(dict.fromkeys(axis + sorted(f"{c}-USD" for c in currencies if c != "USD")))
    prices = price_grid(bucket, priced, bars_5m, bars_1d)
    cols = [prices.columns[p] for p in axis]
    close, age = prices.close[:, cols], prices.age_s[-1, cols]                # (B, A), (A,)
    prev_close = prices.prev_close[cols]
    if positions.empty:
        qty = np.zeros((2, len(pids), len(axis)))
    else:
        qty, _ = snapshot_arrays(positions, pids, axis, pd.DatetimeIndex([prev_day, day]))
    quote_usd = np.column_stack([_usd(prices, quote_ccy[p], "close") for p in axis]) if axis else close
    quote_usd_prev = np.array([_usd(prices, quote_ccy[p], "prev_close") for p in axis])
    quote_age = np.array([_usd(prices, quote_ccy[p], "age_s")[-1] for p in axis])

    rows = []
    for base in sorted(set(base_of.values())):
        idx = [i for i, pid in enumerate(pids) if base_of[pid] == base]
        fx = quote_usd / _usd(prices, base, "close")[:, None]                  # quote -> base, (B, A)
        fx_prev = quote_usd_prev / _usd(prices, base, "prev_close")
        age_all = np.maximum(np.maximum(age, quote_age), _usd(prices, base, "age_s")[-1])  # NaN (no price) stays
        group = _revalue_group(close, fx, prev_close, fx_prev, qty[1, idx], qty[0, idx],
                               scenarios, base, len(scen_products))
        group["portfolio_id"] = [pids[i] for i in idx]
        group["base_currency"] = base
        dd0 = scenarios.drawdown.reindex(group["portfolio_id"]).to_numpy() if scenarios is not None else None
        group["drawdown"] = _drawdown_now(group.pop("pnl_path"), group.pop("gross_prev"), dd0)
        # held now (the value) or at the previous close (the PnL): either way its price is in the row's figures
        held = (qty[1, idx] != 0) | (qty[0, idx] != 0)                         # (P, A)
        stale = held & ~(age_all <= 0)[None, :]                                # NaN age (no price) is stale
        group["stale_products"] = stale.sum(axis=1)
        group["stale_product_ids"] = [",".join(np.asarray(axis)[s]) for s in stale]
        group["max_price_age_s"] = np.where(held, age_all[None, :], 0.0).max(axis=1)   # NaN: a held product unpriced
        keep = held.any(axis=1)
        rows.append(pd.DataFrame(group)[keep])
    risk = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    risk.insert(1, "bucket_start", bucket)
    risk["as_of_date"] = day
    risk["prev_close_date"] = prev_day
    risk["scenario_as_of_date"] = pd.Timestamp(scenarios.as_of) if scenarios is not None else pd.NaT
    risk["is_scenario_stale"] = scenarios is None or pd.Timestamp(scenarios.as_of) < prev_day
    lead = ["portfolio_id", "bucket_start", "market_value", "intraday_pnl", "gross_exposure", "net_exposure",
            "concentration_pct", "var_95", "var_99", "es_95", "es_99", "stale_products"]
    risk = risk[lead + [c for c in risk.columns if c not in lead]]
    return {RISK_TABLE: risk, BREACH_TABLE: limit_rows(risk, portfolios, previous_breaches)}


def _revalue_group(close, fx, prev_close, fx_prev, qty_now, qty_prev, scenarios: ScenarioSet | None, base: str,
                   n_scen: int) -> dict[str, np.ndarray]:
    """Value, exposures, PnL and VaR/ES of one base currency's portfolios at the last bucket (the end-of-day
    engine's formulas on the same array layout). close, fx (B, A); prev_close, fx_prev (A,); qty (P, A)."""
    # as value_positions; a product not held contributes 0 even when it has no price
    mv = np.where(qty_now != 0, qty_now * close[-1][None, :] * fx[-1][None, :], 0.0)  # (P, A)
    out: dict[str, np.ndarray] = {"market_value": mv.sum(axis=-1)}
    expo = valuation.exposures(mv)
    out.update(expo)
    price, price_prev = close * fx, prev_close * fx_prev
    out["intraday_pnl"] = np.where(qty_prev != 0, qty_prev * (price[-1] - price_prev)[None, :], 0.0).sum(axis=-1)
    # the path through today's earlier buckets only feeds the running peak of the drawdown
    path = np.nan_to_num(price[:-1]) @ qty_prev.T - (qty_prev @ np.nan_to_num(price_prev))[None, :]  # (B-1, P)
    out["pnl_path"] = np.vstack([path, out["intraday_pnl"][None, :]])
    out["gross_prev"] = np.abs(np.where(qty_prev != 0, qty_prev * price_prev[None, :], 0.0)).sum(axis=-1)
    if scenarios is not None and len(scenarios.windows.get(base, ())):
        exposure = np.ascontiguousarray(mv[:, :n_scen].T)                      # (A, P) as the engine
        outside = (qty_now[:, n_scen:] != 0).any(axis=1)                       # holds a product with no scenario
        unpriced = ~np.isfinite(exposure).all(axis=0)                          # holds a product with no price
        # as at end of day: more scenarios resting on carried closes of what it holds than RISK_MAX_CARRIED_DAYS
        carried, too_carried = scenarios.carried.get(base), np.zeros(len(outside), dtype=bool)
        if carried is not None and scenarios.max_carried_days is not None:
            days = ((qty_now[:, :n_scen] != 0).astype(np.int64) @ carried.T.astype(np.int64) > 0).sum(axis=1)
            too_carried = days > scenarios.max_carried_days
        n_mc, seed, dist, dof = scenarios.mc
        z, scale = var.mc_draws(n_mc, n_scen, seed, dist, dof)
        scen = book_var.Scenarios(scenarios.windows[base], scenarios.covariances[base], z, scale)
        # an unpriced book's figures are unknown (NaN), not computed on a NaN exposure (the VaR kernels crash on it)
        figures = book_var.book_var_es(scen, np.where(np.isfinite(exposure), exposure, 0.0), "intraday")
        out.update({k: np.where(outside | unpriced | too_carried, np.nan, v) for k, v in figures.items()})
    else:
        out.update(dict.fromkeys(measures.columns("intraday"), np.full(mv.shape[0], np.nan)))
    return out


def _drawdown_now(pnl_path: np.ndarray, gross_prev: np.ndarray, eod_drawdown: np.ndarray | None) -> np.ndarray:
    """Drawdown from peak at the last bucket. pnl_path (B, P) since the previous close; wealth in units of the
    EOD peak: w_b = (1 + dd_close) (1 + pnl_b / gross_prev); peak = max(1, running max of w)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(gross_prev > 0, pnl_path / np.where(gross_prev > 0, gross_prev, 1.0), 0.0)
    start = 1.0 + (np.nan_to_num(eod_drawdown) if eod_drawdown is not None else 0.0)
    w = start * (1.0 + r)
    peak = np.maximum(1.0, np.maximum.accumulate(w, axis=0))
    dd = w[-1] / peak[-1] - 1.0
    return np.where(dd > -drawdown.REL_TOL, 0.0, dd)                     # rounding is no drawdown, as at end of day


# ---- limits ----------------------------------------------------------------------------------------------------
BREACH_DTYPES = {"portfolio_id": "str", "bucket_start": "datetime64[us, UTC]", "limit_type": "str", "metric": "str",
                 "value": "float64", "limit_value": "float64", "utilisation": "float64", "status": "str",
                 "breached_at": "datetime64[us, UTC]", "as_of_date": "datetime64[ns]", "base_currency": "str",
                 "breach_kind": "str"}
BREACH_COLUMNS = list(BREACH_DTYPES)


def _var_column(metric: str) -> str:
    """The intraday column a portfolio's var_limit_metric (e.g. var_99_hist) is checked on: the same measure,
    confidence and method, or the historical figure for a method intraday does not compute (var_99), at the
    highest level intraday computes for a level it does not (var_995_evt_gpd: var_99)."""
    kind, level, method = (metric.split("_", 2) + ["hist"])[:3]
    levels = [measures.pct(c) for c in measures.BY_NAME["hist"].confidences]   # ascending
    level = level if level in levels else levels[-1]
    return f"{kind}_{level}" + (f"_{method}" if method in measures.method_names("intraday") and method != "hist"
                                else "")


def limit_rows(risk: pd.DataFrame, portfolios: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """Limits checked at the bucket: a `breach` row per limit over its limit (`breached_at` = the first bucket
    of the episode, carried from the previous run's open breach), a `cleared` row per limit that was in breach
    at the previous run and is not now (also when the portfolio no longer has a row).

    `breach_kind` as at end of day (etl.risk.engine.limit_breaches): "exceeded", or "uncomputable" when the metric
    is NaN/inf (value NaN) so the limit cannot be shown to hold; NULL on `cleared` rows. A book holding nothing
    (gross exposure 0) has no concentration and nothing at risk: its NaN metrics breach nothing; nor does any
    book breach a limit left empty in portfolios.csv (NaN: no such limit)."""
    pids = risk["portfolio_id"].to_numpy(dtype=object)
    lim = portfolios.set_index("portfolio_id").reindex(pids)
    var_cols = [_var_column(metric) for metric in lim["var_limit_metric"]]
    names = sorted(set(var_cols))
    var_value = risk[names].to_numpy(dtype="float64")[np.arange(len(risk)), pd.Index(names).get_indexer(var_cols)] \
        if len(risk) else np.array([], dtype="float64")
    checks = [("var", np.asarray(lim["var_limit_metric"], dtype=object), var_value, lim["var_limit"]),
              ("concentration", "concentration_pct", risk["concentration_pct"].to_numpy(), lim["concentration_limit"]),
              ("drawdown", DRAWDOWN_METRIC, -risk["drawdown"].to_numpy(), lim["drawdown_limit"])]
    opened = (previous[previous["status"] == "breach"] if previous is not None and len(previous)
              else pd.DataFrame(columns=BREACH_COLUMNS))
    since = dict(zip(zip(opened["portfolio_id"], opened["limit_type"], strict=True), opened["breached_at"],
                     strict=True))
    bucket = risk["bucket_start"].iat[0] if len(risk) else None
    holds = risk["gross_exposure"].to_numpy(dtype="float64") != 0      # NaN (an unpriced holding) holds
    frames, checked = [], set()
    for limit_type, metric, value, limit in checks:
        limit = limit.to_numpy(dtype="float64")
        was = np.array([(p, limit_type) in since for p in pids], dtype=bool) if since else np.zeros(len(pids), bool)
        finite = np.isfinite(value)
        hit = ((~finite & holds) | (value > limit)) & ~np.isnan(limit)   # an empty limit is no limit, as EOD
        keep = hit | was
        checked |= {(p, limit_type) for p in pids}
        if not keep.any():
            continue
        k = np.flatnonzero(keep)
        frames.append(pd.DataFrame({
            "portfolio_id": pids[k], "bucket_start": bucket, "limit_type": limit_type,
            "metric": metric[k] if isinstance(metric, np.ndarray) else metric,
            "value": np.where(finite[k], value[k], np.nan), "limit_value": limit[k],
            "utilisation": np.where(finite[k], value[k], np.nan) / limit[k],
            "status": np.where(hit[k], "breach", "cleared"),
            "breach_kind": np.where(hit[k], np.where(finite[k], "exceeded", "uncomputable"), None),
            "breached_at": [since.get((p, limit_type), bucket) for p in pids[k]],
            "as_of_date": risk["as_of_date"].iat[0], "base_currency": risk["base_currency"].to_numpy()[k]}))
    gone = opened[[(p, t) not in checked for p, t in zip(opened["portfolio_id"], opened["limit_type"],
                                                        strict=True)]]
    if len(gone) and bucket is not None:  # the book emptied while in breach: it clears
        frames.append(gone.assign(bucket_start=bucket, status="cleared", as_of_date=risk["as_of_date"].iat[0],
                                  value=np.nan, utilisation=np.nan, breach_kind=None)[BREACH_COLUMNS])
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in BREACH_DTYPES.items()})
    out = pd.concat(frames, ignore_index=True)
    out["breached_at"] = pd.to_datetime(out["breached_at"], utc=True)
    return out[BREACH_COLUMNS].sort_values(["portfolio_id", "limit_type"], ignore_index=True)


# ---- the bucket grid -----------------------------------------------------------------------------------------
def bucket_of(interval_start: datetime | str) -> pd.Timestamp:
    """The bucket an intraday run values: its data interval's start, on the 5-minute grid."""
    return pd.Timestamp(interval_start).tz_convert("UTC").floor(BUCKET) if pd.Timestamp(interval_start).tzinfo \
        else pd.Timestamp(interval_start, tz="UTC").floor(BUCKET)


def latest_closed_bucket(now: datetime) -> pd.Timestamp:
    """The last 5-minute bucket that has ended at `now` (what the intraday DAG's latest run values)."""
    return bucket_of(now) - BUCKET


def check_bucket(bucket: pd.Timestamp, now: datetime) -> None:
    """Refuse a bucket that starts later than now (plus FUTURE_TOLERANCE): its prices do not exist yet."""
    now = pd.Timestamp(now).tz_convert("UTC")
    if bucket > now + FUTURE_TOLERANCE:
        raise ValidationError(f"intraday bucket {bucket.isoformat()} is in the future (now {now.isoformat()}): "
                              f"nothing computed; the latest closed bucket is {latest_closed_bucket(now).isoformat()}")

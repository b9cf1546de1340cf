"""Intraday risk: hand-worked books per bucket, consistency with the end-of-day run, limits and alerts, stale
prices, and the light warehouse path into gold. Silver-shaped Parquet in a temporary data root; the EOD run is
the real engine (etl.risk.run_risk), the intraday run the real task (etl.risk.intraday_io.run_intraday_risk)."""

from __future__ import annotations

import json
import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from etl import commits, measures, runlog
from etl.lake import Lake
from etl.orchestration.tasks import compute_intraday_risk
from etl.report import alerts
from etl.risk import intraday, intraday_io, run_risk
from etl.settings import get_settings
from etl.storage import get_store
from tests.support.silver_sample import remove_product, write_5m_bars, write_daily_bars

D1 = date(2026, 3, 30)                    # the last EOD run's as-of (the previous UTC close)
D = date(2026, 3, 31)                     # today
DAYS = pd.date_range("2026-01-01", D1, freq="D")
START = {"BTC-USD": 60000.0, "ETH-USD": 3000.0, "ETH-BTC": 0.05}
QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "ETH-BTC": "BTC", "SOL-USD": "USD"}
PORTFOLIOS = ("portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit,var_limit_metric\n"
              "L,Long BTC,USD,{var_limit},1,0.9,\n"
              "S,Short ETH,USD,1e9,1,0.9,var_95_param\n"
              "B,ETH in BTC terms,BTC,1e9,1,0.9,var_99_mc\n"
              "X,ETH-BTC cross,USD,1e9,1,0.9,\n")
POSITIONS = ("portfolio_id,product_id,as_of_date,quantity,avg_cost\n"
             "L,BTC-USD,2026-01-01,2,50000\nS,ETH-USD,2026-01-01,-30,2500\nB,ETH-USD,2026-01-01,20,2800\n"
             "X,ETH-BTC,2026-01-01,100,0.04\n")


def _daily_closes() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    cols = sorted(START)
    r = rng.standard_normal((len(DAYS), len(cols))) * 0.03
    return pd.DataFrame(np.array([START[c] for c in cols]) * np.exp(np.cumsum(r, axis=0)), index=DAYS,
                        columns=cols)


def write_daily(root, closes: pd.DataFrame) -> None:
    write_daily_bars(root, closes, QUOTE, n_candles=288, source_granularity=300)


def write_5m(root, product: str, day: date, closes: np.ndarray) -> None:
    """Today's 5-minute bars of one product: closes[i] is bucket i of the day (00:00 + 5 min x i)."""
    buckets = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=len(closes), freq="5min")
    write_5m_bars(root, product, QUOTE[product], buckets, closes)


def at(hh: int, mm: int, day: date = D) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=hh, minutes=mm)


def index(hh: int, mm: int) -> int:
    return (hh * 60 + mm) // 5


BOOK_SETTINGS = {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "30", "RISK_VAR_LOOKBACK_DAYS": "60",
                 "PIPELINE_DAILY_HISTORY_DAYS": "120"}   # the book's EOD run: small and quick


@pytest.fixture
def book(data_dir, book_reference, monkeypatch):
    """Daily history to D-1, the EOD run as of D-1 (its scenario set), and a reference book of four portfolios."""
    ref = book_reference(PORTFOLIOS.format(var_limit="1e9"), POSITIONS)
    for key, value in BOOK_SETTINGS.items():
        monkeypatch.setenv(key, value)
    closes = _daily_closes()
    write_daily(data_dir, closes)
    run_risk(as_of=D1, settings=get_settings())
    return {"data": data_dir, "ref": ref, "closes": closes, "last": closes.loc[pd.Timestamp(D1)]}


def eod(data, table: str, day: date = D1) -> pd.DataFrame:
    store = get_store(get_settings())
    manifest = commits.read_manifest(store, commits.risk_manifest(day))
    return commits.read_entry(store, manifest["files"][f"{table}/as_of_date={day}"]).to_pandas()


def intraday_rows(data, bucket: pd.Timestamp, table: str = intraday.RISK_TABLE) -> pd.DataFrame:
    return intraday_io.committed_rows(get_store(get_settings()), table, bucket).set_index("portfolio_id")


def flat_day(data, last: pd.Series, moves: dict[str, dict[int, float]] | None = None) -> dict[str, np.ndarray]:
    """Today's bars at the previous close, times the factor moves[product][i] from bucket i on."""
    out = {}
    for product in START:
        px = np.full(288, last[product])
        for i, factor in sorted((moves or {}).get(product, {}).items()):
            px[i:] = last[product] * factor
        write_5m(data, product, D, px)
        out[product] = px
    return out


def test_hand_worked_books_value_pnl_and_exposure_at_a_bucket(book):
    data, last = book["data"], book["last"]
    px = flat_day(data, last, {"BTC-USD": {index(9, 0): 1.04}, "ETH-USD": {index(10, 0): 0.95},
                               "ETH-BTC": {index(10, 5): 1.02}})
    b = at(10, 5)
    summary = intraday_io.run_intraday_risk(b.to_pydatetime())
    assert summary.portfolios == 4 and summary.stale_products == 0 and summary.scenario_as_of == str(D1)
    got = intraday_rows(data, b)
    i = index(10, 5)
    btc, eth, ethbtc = px["BTC-USD"][i], px["ETH-USD"][i], px["ETH-BTC"][i]
    btc0, eth0, ethbtc0 = last["BTC-USD"], last["ETH-USD"], last["ETH-BTC"]
    expected = {  # market value, intraday PnL, gross, net, long, short (base currency)
        "L": (2 * btc, 2 * (btc - btc0), 2 * btc, 2 * btc, 2 * btc, 0.0),
        "S": (-30 * eth, -30 * (eth - eth0), 30 * eth, -30 * eth, 0.0, 30 * eth),
        "B": (20 * eth / btc, 20 * (eth / btc - eth0 / btc0), 20 * eth / btc, 20 * eth / btc, 20 * eth / btc, 0.0),
        "X": (100 * ethbtc * btc, 100 * (ethbtc * btc - ethbtc0 * btc0), 100 * ethbtc * btc, 100 * ethbtc * btc,
              100 * ethbtc * btc, 0.0),
    }
    for pid, values in expected.items():
        row = got.loc[pid]
        assert tuple(row[["market_value", "intraday_pnl", "gross_exposure", "net_exposure", "long_exposure",
                          "short_exposure"]]) == pytest.approx(values, rel=1e-12, abs=1e-9), pid
        assert row["concentration_pct"] == 1.0 and row["stale_products"] == 0
        assert row["bucket_start"] == b and row["var_99"] >= row["var_95"] > 0 and row["es_99"] >= row["var_99"]
    assert got.loc["B", "base_currency"] == "BTC"

    # historical VaR by hand: today's L exposure on the EOD scenario set (the last 60 daily BTC returns)
    rets = book["closes"]["BTC-USD"].pct_change().iloc[-60:]
    losses = -(rets * 2 * btc)
    assert got.loc["L", "var_95"] == pytest.approx(np.quantile(losses, 0.95), rel=1e-12)
    assert got.loc["L", "es_99"] == pytest.approx(losses[losses >= np.quantile(losses, 0.99)].mean(), rel=1e-12)
    # drawdown from peak: BTC at +4% from 09:00 is L's peak today; B (ETH/BTC) fell from its previous peak
    assert got.loc["L", "drawdown"] == pytest.approx(min(0.0, (1 + eod(data, "scenario_portfolios").set_index(
        "portfolio_id").loc["L", "drawdown"]) * 1.04 - 1), rel=1e-12)


def test_prices_at_the_last_close_give_the_eod_var_and_es_exactly(book):
    data, last = book["data"], book["last"]
    flat_day(data, last)
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    got = intraday_rows(data, b)
    risk = eod(data, "risk_metrics").set_index("portfolio_id")
    for pid in "LSBX":
        for c in ("95", "99"):
            assert got.loc[pid, f"var_{c}"] == risk.loc[pid, f"var_{c}_hist"], pid
            assert got.loc[pid, f"es_{c}"] == risk.loc[pid, f"es_{c}_hist"], pid
            for method in ("param", "mc"):
                for kind in ("var", "es"):
                    assert got.loc[pid, f"{kind}_{c}_{method}"] == risk.loc[pid, f"{kind}_{c}_{method}"], (pid, method)
        assert got.loc[pid, "market_value"] == risk.loc[pid, "market_value"] and got.loc[pid, "intraday_pnl"] == 0


def test_an_intraday_run_records_the_versions_of_the_scenario_set_it_read(book):
    """Issue 31 item 4 (the Delta inputs): the bucket's record names the EOD scenario partitions at the versions
    the EOD run committed them."""
    flat_day(book["data"], book["last"])
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    store = get_store(get_settings())
    record = commits.read_manifest(store, intraday_io.intraday_manifest(b.date()))
    risk = commits.read_manifest(store, commits.risk_manifest(D1))["files"]
    scenario = {f"outputs/{k}": risk[k]["version"] for k in risk if k.startswith("scenario_")}
    assert len(scenario) == 3 and scenario.items() <= record["inputs"].items()


def test_the_last_bucket_of_the_day_equals_the_eod_daily_pnl(book):
    data, closes = book["data"], book["closes"]
    rng = np.random.default_rng(3)
    path = {p: closes[p].iat[-1] * np.exp(np.cumsum(rng.standard_normal(288) * 0.002)) for p in START}
    for product, px in path.items():
        write_5m(data, product, D, px)
    # the day's daily bar closes at its last 5-minute bar (silver aggregates the same candles)
    day_close = pd.DataFrame({p: [path[p][-1]] for p in START}, index=pd.DatetimeIndex([pd.Timestamp(D)]))
    write_daily(data, pd.concat([closes, day_close]))
    run_risk(as_of=D, settings=get_settings())
    b = at(23, 55)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    got = intraday_rows(data, b)
    pnl = eod(data, "pnl_daily", D)
    pnl = pnl[pnl["as_of_date"] == D].set_index("portfolio_id")
    for pid in "LSBX":
        assert got.loc[pid, "intraday_pnl"] == pytest.approx(pnl.loc[pid, "daily_pnl"], rel=1e-13, abs=1e-9), pid
        assert got.loc[pid, "scenario_as_of_date"] == D1  # (a declared date column)  today's EOD run is not "the last" yet


def test_a_product_without_bars_today_is_stale_not_zero(book):
    data, last = book["data"], book["last"]
    flat_day(data, last, {"BTC-USD": {index(8, 0): 1.01}})
    remove_product(data, "silver/bars_5m", "ETH-BTC")
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    got = intraday_rows(data, b)
    x = got.loc["X"]
    btc = last["BTC-USD"] * 1.01
    assert x["stale_products"] == 1 and x["stale_product_ids"] == "ETH-BTC"
    assert x["market_value"] == pytest.approx(100 * last["ETH-BTC"] * btc, rel=1e-12)    # last price, not zero
    assert x["max_price_age_s"] == (b - at(23, 55, D1)).total_seconds()                    # the daily close's age
    assert np.isfinite(x["var_99"]) and got.loc["L", "stale_products"] == 0
    # a product whose last bar is earlier today: its last close, aged from that bar
    write_5m(data, "ETH-USD", D, np.full(index(9, 30) + 1, last["ETH-USD"] * 1.1))
    intraday_io.run_intraday_risk(b.to_pydatetime())
    got = intraday_rows(data, b)
    assert got.loc["S", "market_value"] == pytest.approx(-30 * last["ETH-USD"] * 1.1, rel=1e-12)
    assert got.loc["S", "max_price_age_s"] == 35 * 60 and got.loc["S", "stale_products"] == 1
    assert got.loc["B", "stale_products"] == 1                                              # ETH-USD in BTC


def test_a_product_sold_today_whose_price_is_stale_flags_the_pnl_it_feeds(book):
    """Yesterday's holdings drive today's PnL: BTC-USD, sold out of L today, last traded at 08:00 (+5%); at 10:05
    L's PnL is 2 x (that 08:00 price - the previous close), a number resting on a price 2 h 05 old, so the row says
    so (stale product and age), as it does for a product held now."""
    data, last, ref = book["data"], book["last"], book["ref"]
    flat_day(data, last)
    write_5m(data, "BTC-USD", D, np.full(index(8, 0) + 1, last["BTC-USD"] * 1.05))
    (ref / "positions.csv").write_text(POSITIONS + f"L,ETH-USD,{D},1,3000\n")   # today: BTC sold, 1 ETH
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    row = intraday_rows(data, b).loc["L"]
    assert row["intraday_pnl"] == pytest.approx(2 * last["BTC-USD"] * 0.05, rel=1e-12)
    assert row["market_value"] == pytest.approx(last["ETH-USD"], rel=1e-12)
    assert row["stale_products"] == 1 and row["stale_product_ids"] == "BTC-USD"
    assert row["max_price_age_s"] == (b - at(8, 0)).total_seconds()


def test_a_product_bought_today_outside_the_scenario_set_leaves_only_that_book_without_var(book):
    data, last, ref = book["data"], book["last"], book["ref"]
    flat_day(data, last)
    write_5m(data, "SOL-USD", D, np.full(288, 150.0))
    (ref / "positions.csv").write_text(POSITIONS + f"S,SOL-USD,{D},10,140\nS,ETH-USD,{D},-30,2500\n")
    intraday_io.run_intraday_risk(at(10, 5).to_pydatetime())
    got = intraday_rows(data, at(10, 5))
    assert np.isnan(got.loc["S", "var_99"]) and np.isnan(got.loc["S", "var_95_param"])
    assert got.loc["S", "market_value"] == pytest.approx(-30 * last["ETH-USD"] + 10 * 150.0, rel=1e-12)
    assert got.loc["S", "intraday_pnl"] == 0                       # yesterday's book (no SOL) did not move
    risk = eod(data, "risk_metrics").set_index("portfolio_id")
    assert got.loc["L", "var_99"] == risk.loc["L", "var_99_hist"]  # the others keep their exact figures


def run_buckets(buckets):
    out = []
    for b in buckets:
        intraday_io.run_intraday_risk(b.to_pydatetime())
        out.append(alerts.send_intraday_alerts(b.to_pydatetime()))
    return out


def test_a_breach_at_1005_alerts_once_and_clears(book):
    data, last, ref = book["data"], book["last"], book["ref"]
    var_99 = eod(data, "risk_metrics").set_index("portfolio_id").loc["L", "var_99_hist"]
    (ref / "portfolios.csv").write_text(PORTFOLIOS.format(var_limit=var_99 * 1.1))
    flat_day(data, last, {"BTC-USD": {index(10, 5): 1.2, index(10, 15): 1.0}})   # back at the close at 10:15
    buckets = [at(10, 0), at(10, 5), at(10, 10), at(10, 15)]
    assert run_buckets(buckets) == [0, 1, 0, 0]
    assert run_buckets([at(10, 5)]) == [0]                                         # a rerun: no second alert
    rows = {b: intraday_rows(data, b, intraday.BREACH_TABLE) for b in buckets}
    assert rows[at(10, 0)].empty
    for b in (at(10, 5), at(10, 10)):
        r = rows[b].loc["L"]
        assert (r["limit_type"], r["status"], r["breached_at"]) == ("var", "breach", at(10, 5))
        assert r["value"] == pytest.approx(var_99 * 1.2, rel=1e-9) and r["utilisation"] > 1
    cleared = rows[at(10, 15)].loc["L"]
    assert (cleared["status"], cleared["breached_at"]) == ("cleared", at(10, 5)) and cleared["utilisation"] < 1
    lines = [json.loads(x) for x in (data / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert [(x.get("event", "breach"), x["portfolio_id"], x["limit_type"]) for x in lines] == [
        ("breach", "L", "var"), ("cleared", "L", "var")]
    assert "at 2026-03-31 10:05 UTC (intraday)" in lines[0]["message"]
    ledger = json.loads((data / "alerts" / "ledger" / f"as_of_date={D}" / "L__intraday_var.json").read_text())
    assert ledger["cleared_at"] == "2026-03-31 10:15 UTC" and set(ledger["sent"]) == {"log", "file"}
    # breaking it again the same day is recorded, not re-alerted (once per breach per day)
    flat_day(data, last, {"BTC-USD": {index(10, 5): 1.2, index(10, 15): 1.0, index(10, 20): 1.3}})
    assert run_buckets([at(10, 20)]) == [0]
    assert intraday_rows(data, at(10, 20), intraday.BREACH_TABLE).loc["L", "breached_at"] == at(10, 20)


def test_no_scenario_set_yet_leaves_var_null_values_the_book_and_breaches_as_uncomputable(data_dir, book_reference):
    book_reference(PORTFOLIOS.format(var_limit="1"), POSITIONS)
    closes = _daily_closes()
    write_daily(data_dir, closes)
    flat_day(data_dir, closes.iloc[-1])
    summary = intraday_io.IntradaySummary(**compute_intraday_risk(at(10, 5).to_pydatetime()))   # the DAG's task
    got = intraday_rows(data_dir, at(10, 5))
    assert summary.scenario_as_of is None and got["var_99"].isna().all() and got["is_scenario_stale"].all()
    assert got.loc["L", "market_value"] == pytest.approx(2 * closes["BTC-USD"].iat[-1], rel=1e-12)
    # an unknown VaR cannot be shown to hold its limit: every book's VaR limit is an uncomputable breach
    breaches = intraday_rows(data_dir, at(10, 5), intraday.BREACH_TABLE)
    assert sorted(breaches.index) == list("BLSX")
    assert (breaches["limit_type"] == "var").all() and (breaches["status"] == "breach").all()
    assert (breaches["breach_kind"] == "uncomputable").all() and breaches["value"].isna().all()
    assert summary.uncomputable == 4
    # the missing scenario set is named in the summary (the run-log message) and the alerts say UNCOMPUTABLE
    assert (f"scenario set MISSING: no committed end-of-day scenario set (risk outputs scenario_returns, "
            f"scenario_covariance, scenario_portfolios) dated 2026-02-27..{D1}") in str(summary)
    assert f"run `python -m etl risk --as-of {D1}`" in str(summary)
    assert runlog.read_all(get_settings())["message"].tolist() == [str(summary)]
    assert alerts.send_intraday_alerts(at(10, 5).to_pydatetime()) == 4
    lines = [json.loads(x) for x in (data_dir / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert all(x["message"].startswith("Risk limit UNCOMPUTABLE: portfolio ") for x in lines) and len(lines) == 4


def test_the_drawdown_limit_is_checked_on_the_eods_drawdown_from_peak_carried_through_the_day(book):
    """Intraday checks the same measure as end of day: at prices equal to the close the drawdown is EOD's
    risk_metrics.drawdown_from_peak exactly; BTC 10% down at 10:05 takes L to (1 + dd_close) x 0.9 - 1 below the
    peak (the EOD peak, today's buckets never above it), over a limit set between the two."""
    data, last, ref = book["data"], book["last"], book["ref"]
    dd_close = eod(data, "risk_metrics").set_index("portfolio_id").at["L", "drawdown_from_peak"]
    dd_1005 = (1 + dd_close) * 0.9 - 1
    limit = (-dd_close - dd_1005) / 2
    (ref / "portfolios.csv").write_text(PORTFOLIOS.format(var_limit="1e9").replace("L,Long BTC,USD,1e9,1,0.9,",
                                                                                    f"L,Long BTC,USD,1e9,1,{limit},"))
    flat_day(data, last, {"BTC-USD": {index(10, 5): 0.9}})
    run_buckets([at(10, 0), at(10, 5)])
    assert intraday_rows(data, at(10, 0)).at["L", "drawdown"] == dd_close
    assert intraday_rows(data, at(10, 0), intraday.BREACH_TABLE).empty
    assert intraday_rows(data, at(10, 5)).at["L", "drawdown"] == pytest.approx(dd_1005, rel=1e-12)
    r = intraday_rows(data, at(10, 5), intraday.BREACH_TABLE).query("limit_type == 'drawdown'").loc["L"]
    assert (r["metric"], r["status"], r["breach_kind"]) == ("drawdown_from_peak", "breach", "exceeded")
    assert (r["value"], r["limit_value"]) == pytest.approx((-dd_1005, limit), rel=1e-12)


def test_a_breach_whose_var_becomes_uncomputable_stays_in_breach_and_never_clears(book):
    """The issue's case: a VaR breach open at 10:05, then the scenario set is gone (older than 31 days) at
    10:10: the VaR is NaN, the breach continues as `uncomputable` (same episode), no `cleared` row, no clearing
    alert."""
    data, last, ref = book["data"], book["last"], book["ref"]
    var_99 = eod(data, "risk_metrics").set_index("portfolio_id").loc["L", "var_99_hist"]
    (ref / "portfolios.csv").write_text(PORTFOLIOS.format(var_limit=var_99 * 1.1))
    flat_day(data, last, {"BTC-USD": {index(10, 5): 1.2}})
    assert run_buckets([at(10, 5)]) == [1]
    # no scenario set within 31 days now: D1's risk commit withdrawn
    Lake.of(get_store()).delete(commits.RUNS, f"name = '{commits.risk_manifest(D1)}'")
    assert run_buckets([at(10, 10)]) == [3]      # B, S, X newly uncomputable; L's breach was alerted already
    r = intraday_rows(data, at(10, 10), intraday.BREACH_TABLE).loc["L"]
    assert (r["limit_type"], r["status"], r["breach_kind"], r["breached_at"]) == (
        "var", "breach", "uncomputable", at(10, 5))
    assert np.isnan(r["value"]) and np.isnan(r["utilisation"])
    lines = [json.loads(x) for x in (data / "alerts" / "alerts.jsonl").read_text().splitlines()]
    assert [x.get("event", "breach") for x in lines if x["portfolio_id"] == "L"] == ["breach"]   # no clearing
    # a clean run of the same bucket (scenario set restored) keeps it an `exceeded` breach: only the kind differs
    run_risk(as_of=D1, settings=get_settings())
    intraday_io.run_intraday_risk(at(10, 10).to_pydatetime())
    clean = intraday_rows(data, at(10, 10), intraday.BREACH_TABLE).loc["L"]
    assert (clean["status"], clean["breach_kind"]) == ("breach", "exceeded")
    assert clean["value"] == pytest.approx(var_99 * 1.2, rel=1e-9)


def test_a_future_bucket_is_refused_and_nothing_is_committed(book):
    from etl.errors import ValidationError

    now = pd.Timestamp("2026-04-01 12:00:30", tz="UTC")
    store = get_store(get_settings())
    for late in (pd.Timestamp("2026-07-01 12:00", tz="UTC"), pd.Timestamp("2026-04-01 12:05", tz="UTC")):
        with pytest.raises(ValidationError, match=re.escape(
                f"intraday bucket {late.isoformat()} is in the future (now 2026-04-01T12:00:30+00:00): nothing "
                "computed; the latest closed bucket is 2026-04-01T11:55:00+00:00")):
            intraday_io.run_intraday_risk(late.to_pydatetime(), now=now.to_pydatetime())
        assert commits.read_manifest(store, intraday_io.intraday_manifest(late.date())) is None
    flat_day(book["data"], book["last"])
    intraday_io.run_intraday_risk(at(10, 5).to_pydatetime(), now=at(10, 5).to_pydatetime())  # the current bucket runs
    assert intraday.latest_closed_bucket(now.to_pydatetime()) == pd.Timestamp("2026-04-01 11:55", tz="UTC")


def test_the_intraday_command_runs_the_dags_risk_task_for_a_bucket(book, capsys):
    """`python -m etl intraday --bucket ISO`: the compute_intraday_risk task (run-log row and all), a future bucket
    exit 2 with one line."""
    from etl.cli import main

    flat_day(book["data"], book["last"])
    assert main(["intraday", "--bucket", "2026-03-31T10:07:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("intraday risk at 2026-03-31T10:05:00+00:00: 4 portfolios") and f"as of {D1}" in out
    assert len(intraday_rows(book["data"], at(10, 5))) == 4
    logged = runlog.read_all(get_settings())
    assert list(logged["task_id"]) == ["compute_intraday_risk"] and list(logged["status"]) == ["success"]
    assert logged["message"].iat[0] == out.strip()[:500]
    assert main(["intraday", "--bucket", "2099-01-01T00:00:00Z"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: intraday bucket 2099-01-01T00:00:00+00:00 is in the future")



@pytest.mark.slow
def test_the_light_load_keeps_the_breach_in_gold_and_a_rerun_rewrites_the_same_rows(book, pg_url, tmp_path,
                                                                                      monkeypatch):
    from etl import db
    from etl.warehouse.loader import load_intraday

    data, last, ref = book["data"], book["last"], book["ref"]
    var_99 = eod(data, "risk_metrics").set_index("portfolio_id").loc["L", "var_99_hist"]
    (ref / "portfolios.csv").write_text(PORTFOLIOS.format(var_limit=var_99 * 1.1))
    flat_day(data, last, {"BTC-USD": {index(10, 5): 1.2, index(10, 15): 1.0}})
    remove_product(data, "silver/bars_5m", "ETH-BTC")             # X is valued on a stale price
    with db.scratch_database(pg_url, "intraday") as url:
        monkeypatch.setenv("PIPELINE_DATABASE_URL", url)
        monkeypatch.setenv("PIPELINE_STATE_DIR", str(tmp_path / "state"))

        def query(sql):
            with db.connect(url=url) as conn, conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()

        run_buckets([at(10, 0), at(10, 5), at(10, 10), at(10, 15)])
        summary = load_intraday()
        assert summary.rows["intraday_risk"] == 16 and summary.dbt.startswith("build")
        assert query("select status, bucket_start at time zone 'UTC', breached_at at time zone 'UTC', is_cleared "
                     "from gold.fact_intraday_limit_breaches where portfolio_id = 'L' order by bucket_start") == [
            ("breach", at(10, 5).tz_localize(None), at(10, 5).tz_localize(None), False),
            ("breach", at(10, 10).tz_localize(None), at(10, 5).tz_localize(None), False),
            ("cleared", at(10, 15).tz_localize(None), at(10, 5).tz_localize(None), True)]
        before = query("select * from gold.fact_intraday_risk order by portfolio_id, bucket_start")
        assert len(before) == 16 and {r[0] for r in before} == set("LSBX")
        x = query("select stale_products, has_stale_prices, market_value > 0 from gold.fact_intraday_risk "
                  "where portfolio_id = 'X' and bucket_start = '2026-03-31 10:05+00'")
        assert x == [(1, True, True)]
        intraday_io.run_intraday_risk(at(10, 5).to_pydatetime())                                     # a rerun of one interval
        assert load_intraday().rows["intraday_risk"] == 4
        after = query("select * from gold.fact_intraday_risk order by portfolio_id, bucket_start")
        strip = [r[:-1] for r in after]                                             # all but loaded_at
        assert strip == [r[:-1] for r in before]
        assert "fact_intraday_risk" in {r[0] for r in query(
            "select table_name from information_schema.tables where table_schema = 'gold'")}
        assert query("select count(*) from information_schema.tables where table_schema = 'gold' "
                     "and table_name = 'fact_risk_metrics'") == [(0,)]                # not the whole warehouse


def test_a_var_limit_on_var_995_evt_gpd_is_checked_intraday_not_a_crash():
    """portfolios.csv accepts var_limit_metric = var_995_evt_gpd (etl.portfolios: any var_* column of scope
    portfolio). docs/risk_conventions.md: a method intraday does not compute is checked intraday on the historical
    figure of the same level. Intraday has no 99.5% figure at all, so `limit_rows` must still produce a row set
    (e.g. the 99% historical figure, or an uncomputable breach), not raise for every portfolio of the bucket."""
    bucket = pd.Timestamp("2026-03-02 10:05", tz="UTC")
    cols = dict.fromkeys(measures.columns("intraday"), 100.0)
    risk = pd.DataFrame({"portfolio_id": ["P"], "bucket_start": [bucket], "gross_exposure": [1e4],
                         "concentration_pct": [0.5], "drawdown": [-0.01], "as_of_date": [pd.Timestamp("2026-03-02")],
                         "base_currency": ["USD"], **{k: [v] for k, v in cols.items()}})
    portfolios = pd.DataFrame({"portfolio_id": ["P"], "var_limit": [50.0], "concentration_limit": [1.0],
                               "drawdown_limit": [1.0], "var_limit_metric": ["var_995_evt_gpd"]})
    assert "var_995_evt_gpd" in [c for c in measures.columns("portfolio") if c.startswith("var_")]
    out = intraday.limit_rows(risk, portfolios, None)
    var_rows = out[out["limit_type"] == "var"]
    assert len(var_rows) == 1 and var_rows["status"].iat[0] == "breach"
    assert np.isfinite(var_rows["limit_value"].iat[0])


def test_an_empty_limit_is_no_limit_intraday_as_at_end_of_day():
    """portfolios.csv: a concentration or drawdown limit left empty is no such limit. A book whose figures are
    unknown at a bucket (an unpriced holding: NaN) breaches its VaR limit as uncomputable, but not the limits it
    does not have (end of day: etl.risk.engine.limit_breaches), and nothing is alerted for them."""
    from etl.risk.engine import limit_breaches

    bucket = pd.Timestamp("2026-03-02 10:05", tz="UTC")
    cols = dict.fromkeys(measures.columns("intraday"), np.nan)
    risk = pd.DataFrame({"portfolio_id": ["P"], "bucket_start": [bucket], "gross_exposure": [np.nan],
                         "concentration_pct": [np.nan], "drawdown": [np.nan], "as_of_date": [pd.Timestamp("2026-03-02")],
                         "base_currency": ["USD"], **{k: [v] for k, v in cols.items()}})
    portfolios = pd.DataFrame({"portfolio_id": ["P"], "var_limit": [50.0], "concentration_limit": [np.nan],
                               "drawdown_limit": [np.nan], "var_limit_metric": ["var_99_hist"]})
    out = intraday.limit_rows(risk, portfolios, None)
    assert list(zip(out["limit_type"], out["breach_kind"], strict=True)) == [("var", "uncomputable")]
    eod_risk = risk.rename(columns={"drawdown": "drawdown_from_peak", "var_99": "var_99_hist"})
    assert list(limit_breaches(eod_risk, portfolios)["limit_type"]) == ["var"]


def test_a_book_back_at_its_peak_intraday_is_not_in_drawdown_as_at_end_of_day():
    """The close left the book 3% under its peak (100 -> 97); at 10:05 its price is back at 100. Carried through the
    day, w = 0.97 x (1 + 3/97) = 0.9999999999999999: a drawdown of -1.1e-16 where the end-of-day convention
    (etl.risk.drawdown.REL_TOL: within 1e-12 of the peak is at the peak) says 0, as the next close will. A real
    fall is unchanged."""
    from etl.risk.intraday import _drawdown_now

    back = _drawdown_now(np.array([[-1.0], [3.0]]), np.array([97.0]), np.array([-0.03]))
    assert back[0] == 0.0
    lower = _drawdown_now(np.array([[1.0]]), np.array([97.0]), np.array([-0.03]))
    assert lower[0] == pytest.approx(0.97 * (1 + 1 / 97) - 1, rel=1e-12)


def test_a_holding_delisted_before_the_history_window_keeps_its_last_close_intraday(book, monkeypatch):
    """ETH-BTC is delisted on 2026-01-20 and X still holds it; with a 40-day history window its last daily bar is
    older than the window the intraday run reads, so X had no price for it: market value and PnL NULL and its
    limits `uncomputable` every five minutes, while the end-of-day run values it at its last close. Now the intraday
    run values it at that close too (a stale price, counted as such)."""
    data, ref = book["data"], book["ref"]
    delisted = pd.Timestamp("2026-01-20")
    for key, value in {"PIPELINE_DAILY_HISTORY_DAYS": "40", "RISK_VAR_LOOKBACK_DAYS": "30",
                       "RISK_BACKTEST_DAYS": "20"}.items():
        monkeypatch.setenv(key, value)
    closes = book["closes"].copy()
    write_daily(data, closes)
    remove_product(data, "silver/bars_1d", "ETH-BTC")
    write_daily_bars(data, closes.loc[:delisted, ["ETH-BTC"]], QUOTE, n_candles=288, source_granularity=300)
    instruments = pd.read_csv(ref / "instruments.csv", dtype=str, keep_default_na=False)
    instruments["delisted_on"] = np.where(instruments["product_id"] == "ETH-BTC", str(delisted.date()), "")
    instruments.to_csv(ref / "instruments.csv", index=False)
    run_risk(as_of=D1, settings=get_settings())
    flat_day(data, book["last"])
    remove_product(data, "silver/bars_5m", "ETH-BTC")
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    x = intraday_rows(data, b).loc["X"]
    eth_btc = closes.loc[delisted, "ETH-BTC"]
    assert x["market_value"] == pytest.approx(100 * eth_btc * book["last"]["BTC-USD"], rel=1e-12)
    assert x["intraday_pnl"] == pytest.approx(0.0, abs=1e-9)
    assert x["stale_products"] == 1 and x["stale_product_ids"] == "ETH-BTC"
    # its price is known: only its VaR is uncomputable, as at end of day (its window rests on 30 carried closes)
    breaches = intraday_rows(data, b, intraday.BREACH_TABLE)
    eod_breaches = eod(data, "limit_breaches")
    assert eod_breaches.query("breach_kind == 'uncomputable'")[["portfolio_id", "limit_type"]].values.tolist() == \
        [["X", "var"]]
    assert breaches.query("breach_kind == 'uncomputable'")["limit_type"].to_dict() == {"X": "var"}


def test_a_held_product_with_no_price_at_all_is_an_uncomputable_row_not_a_crash(book):
    """ETH-BTC is in the end-of-day scenario set, but silver now holds no bar of it (its bars removed: a full
    refresh after its bronze was lost). X holds it: the docstring's rule is NULL figures and `uncomputable`
    limits for an unpriced holding, but the NaN exposure went into the historical VaR and the whole run crashed
    (IndexError in var_es_from_tail), committing nothing for any portfolio. Now X's row is NULL and its limits
    uncomputable, naming the product as stale; the other books are valued as without it."""
    data, last = book["data"], book["last"]
    flat_day(data, last)
    intraday_io.run_intraday_risk(at(10, 0).to_pydatetime())
    clean = intraday_rows(data, at(10, 0))
    remove_product(data, "silver/bars_5m", "ETH-BTC")
    remove_product(data, "silver/bars_1d", "ETH-BTC")
    b = at(10, 5)
    intraday_io.run_intraday_risk(b.to_pydatetime())
    got = intraday_rows(data, b)
    x = got.loc["X"]
    assert np.isnan(x["market_value"]) and np.isnan(x["var_99"]) and x["stale_product_ids"] == "ETH-BTC"
    breaches = intraday_rows(data, b, intraday.BREACH_TABLE)
    x_rows = breaches.loc[["X"]]
    assert "var" in set(x_rows["limit_type"]) and (x_rows["breach_kind"] == "uncomputable").all()
    for pid in "LSB":
        assert got.loc[pid, "var_99"] == pytest.approx(clean.loc[pid, "var_99"], rel=1e-12)
        assert got.loc[pid, "market_value"] == pytest.approx(clean.loc[pid, "market_value"], rel=1e-12)


def test_a_book_whose_eod_var_is_null_for_carried_closes_has_no_intraday_var_either(data_dir, book_reference,
                                                                                     monkeypatch):
    """ETH-USD has no daily bar on 10 days of the 60-day VaR window (a halt: its closes carried forward, zero
    returns), so the end-of-day VaR/ES of S and B (holding it) are NULL (RISK_MAX_CARRIED_DAYS 5). The intraday
    revaluation re-used the same scenario set, zero returns included, and gave S and B confident VaR/ES at the
    EOD prices (the figures EOD refused) and checked their var limits as passed. Now their intraday VaR/ES are
    NULL and the var limit an `uncomputable` breach, as at end of day; L and X keep the EOD figures exactly, and
    L buying ETH-USD today loses its VaR too (the carried days of what it holds now)."""
    ref = book_reference(PORTFOLIOS.format(var_limit="1e9"), POSITIONS)
    for key, value in BOOK_SETTINGS.items():
        monkeypatch.setenv(key, value)
    closes = _daily_closes()
    write_daily(data_dir, closes)
    halt = pd.date_range(pd.Timestamp(D1) - pd.Timedelta(days=20), periods=10, freq="D")
    write_daily(data_dir, closes[["ETH-USD"]].drop(index=halt))
    run_risk(as_of=D1, settings=get_settings())
    risk = eod(data_dir, "risk_metrics").set_index("portfolio_id")
    assert risk["carried_days"].to_dict() == {"L": 0, "S": 10, "B": 10, "X": 0}
    assert risk.loc[["S", "B"], ["var_99_hist", "var_95_param", "var_99_mc"]].isna().all().all()

    flat_day(data_dir, closes.loc[pd.Timestamp(D1)])
    intraday_io.run_intraday_risk(at(10, 5).to_pydatetime())
    got = intraday_rows(data_dir, at(10, 5))
    figures = list(measures.columns("intraday"))
    assert got.loc[["S", "B"], figures].isna().all().all(), got.loc[["S", "B"], figures]
    for pid in "LX":
        assert got.loc[pid, "var_99"] == risk.loc[pid, "var_99_hist"], pid
        assert got.loc[pid, "var_95_param"] == risk.loc[pid, "var_95_param"], pid
    breaches = intraday_rows(data_dir, at(10, 5), intraday.BREACH_TABLE)
    var = breaches[breaches["limit_type"] == "var"]
    assert sorted(var.index) == ["B", "S"]
    assert (var["breach_kind"] == "uncomputable").all() and var["value"].isna().all()

    (ref / "positions.csv").write_text(POSITIONS + f"L,BTC-USD,{D},2,50000\nL,ETH-USD,{D},1,2800\n")
    intraday_io.run_intraday_risk(at(10, 10).to_pydatetime())
    got = intraday_rows(data_dir, at(10, 10))
    assert np.isnan(got.loc["L", "var_99"]) and got.loc["X", "var_99"] == risk.loc["X", "var_99_hist"]

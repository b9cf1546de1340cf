"""PnL attribution (etl/risk/attribution.py) against a case worked by hand: 2 assets, 2 factors, a USD and a EUR
book, a product without betas, a day the factor model has not finished."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.risk.attribution import RESIDUAL, attribution_table, daily_factor_returns, explain
from tests.etl.risk.conftest import AS_OF  # the `chain` fixture's day

D0, D1, D2, D3 = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"])
CLOSES = pd.DataFrame({"BTC-USD": [100.0, 110.0, 99.0], "ETH-USD": [10.0, 9.0, 9.9], "EUR-USD": [1.25, 1.1, 1.0]},
                      index=pd.DatetimeIndex([D0, D1, D2]))
QUOTE = {"BTC-USD": "USD", "ETH-USD": "USD", "EUR-USD": "USD"}
PORTFOLIOS = pd.DataFrame({"portfolio_id": ["P1", "P2"], "base_currency": ["USD", "EUR"]})
POSITIONS = pd.DataFrame({"portfolio_id": ["P1", "P1", "P2"], "product_id": ["BTC-USD", "ETH-USD", "BTC-USD"],
                          "as_of_date": D0, "quantity": [2.0, -10.0, 1.0], "avg_cost": [90.0, 12.0, 80.0]})
# PnL: P1 = 2 x dBTC - 10 x dETH (USD); P2 = 1 BTC valued in EUR (BTC-USD / EUR-USD): 80 -> 100 -> 99 EUR
PNL = pd.DataFrame({"portfolio_id": ["P1", "P2"] * 3, "as_of_date": np.repeat([D0, D1, D2], 2),
                    "daily_pnl": [np.nan, np.nan, 30.0, 20.0, -31.0, -1.0],
                    "base_currency": ["USD", "EUR"] * 3})
FACTOR_RETURNS = pd.DataFrame({
    "factor_name": ["market", "market", "momentum_hml", "market_vw", "market", "momentum_hml", "market"],
    "bucket_start": pd.to_datetime(["2026-01-02 00:00", "2026-01-02 00:05", "2026-01-02 12:00", "2026-01-02 00:00",
                                    "2026-01-03 08:00", "2026-01-03 08:00", "2026-01-04 00:00"], utc=True),
    "factor_return": [0.01, 0.02, -0.01, 0.5, 0.05, 0.02, 0.03]})
# daily snapshots: D0's betas (both assets and P2's currency EUR-USD, both factors); D1's: ETH market only; D2:
# finished (ETH market)
EXPOSURES = pd.DataFrame({
    "product_id": ["BTC-USD", "BTC-USD", "ETH-USD", "ETH-USD", "EUR-USD", "EUR-USD", "ETH-USD", "ETH-USD"],
    "factor_name": ["market", "momentum_hml", "market", "momentum_hml", "market", "momentum_hml", "market", "market"],
    "as_of_date": pd.to_datetime(["2026-01-01"] * 6 + ["2026-01-02", "2026-01-03"]).date,
    "beta": [1.2, 0.5, 0.8, -1.0, 0.3, 0.1, 0.9, 1.0]})


def test_the_hand_case_two_assets_two_factors():
    out = attribution_table(CLOSES, QUOTE, PORTFOLIOS, POSITIONS, PNL, FACTOR_RETURNS, EXPOSURES)
    got = {(r.portfolio_id, str(r.as_of_date)[:10], r.factor_name): r for r in out.itertuples()}
    market_d1 = 1.01 * 1.02 - 1                                     # 0.0302: two buckets compounded
    # P1 on D1: market values at D0 BTC 200, ETH -100 (USD)
    p1m = got[("P1", "2026-01-02", "market")]
    assert p1m.exposure == pytest.approx(200 * 1.2 - 100 * 0.8) and p1m.factor_return == pytest.approx(market_d1)
    assert p1m.explained_pnl == pytest.approx(160 * market_d1)
    p1k = got[("P1", "2026-01-02", "momentum_hml")]
    assert (p1k.exposure, p1k.factor_return, p1k.explained_pnl) == pytest.approx((200.0, -0.01, -2.0))
    assert got[("P1", "2026-01-02", RESIDUAL)].explained_pnl == pytest.approx(30 - 160 * market_d1 + 2)
    # P2 (EUR): 1 BTC worth 100 / 1.25 = 80 EUR at D0, exposed to the factors by BTC's betas less EUR-USD's
    assert got[("P2", "2026-01-02", "market")].exposure == pytest.approx(80 * (1.2 - 0.3))
    assert got[("P2", "2026-01-02", "momentum_hml")].explained_pnl == pytest.approx(80 * (0.5 - 0.1) * -0.01)
    assert got[("P2", "2026-01-02", RESIDUAL)].explained_pnl == pytest.approx(20 - 72 * market_d1 + 0.32)
    # D2 uses D1's betas: only ETH has one (market): P1's BTC PnL falls in the residual, P2 has no factor row
    assert got[("P1", "2026-01-03", "market")].exposure == pytest.approx(-10 * 9 * 0.9)
    assert got[("P1", "2026-01-03", RESIDUAL)].explained_pnl == pytest.approx(-31 + 81 * 0.05)
    assert ("P1", "2026-01-03", "momentum_hml") not in got
    assert [k[2] for k in got if k[:2] == ("P2", "2026-01-03")] == [RESIDUAL]
    assert got[("P2", "2026-01-03", RESIDUAL)].explained_pnl == pytest.approx(-1.0)
    # no row on the first day (no PnL), no other factor, and the rows sum exactly to the day's PnL
    assert not any(k[1] == "2026-01-01" for k in got)
    assert set(out["factor_name"]) == {"market", "momentum_hml", RESIDUAL}
    sums = out.groupby(["portfolio_id", "as_of_date"])["explained_pnl"].sum()
    pnl = PNL.dropna().set_index(["portfolio_id", "as_of_date"])["daily_pnl"]
    np.testing.assert_allclose(sums.reindex(pnl.index), pnl, rtol=0, atol=1e-12)


def test_a_day_the_factor_model_has_not_finished_has_no_factor_return():
    daily = daily_factor_returns(FACTOR_RETURNS, pd.DatetimeIndex([D1, D2]))
    assert list(daily.columns) == ["market", "liquidity_hml", "volatility_hml", "momentum_hml"]
    assert daily.loc[D1, "market"] == pytest.approx(0.0302) and daily.loc[D2, "momentum_hml"] == pytest.approx(0.02)
    assert np.isnan(daily.loc[D3, "market"])                      # a bucket on D3 but no snapshot: not finished
    assert np.isnan(daily.loc[D1, "liquidity_hml"])


def test_without_any_factor_data_everything_is_residual():
    empty_r = FACTOR_RETURNS.iloc[:0]
    out = attribution_table(CLOSES, QUOTE, PORTFOLIOS, POSITIONS, PNL, empty_r, EXPOSURES.iloc[:0])
    assert set(out["factor_name"]) == {RESIDUAL}
    assert out["explained_pnl"].tolist() == [30.0, -31.0, 20.0, -1.0]


def test_explain_is_exposure_times_return_and_the_residual_closes_the_sum():
    mv = np.array([[200.0, -100.0]])
    beta = np.array([[[1.2, 0.5], [0.8, np.nan]]])                  # ETH has no beta on the second factor
    expo, explained, defined, residual = explain(np.array([30.0]), mv, beta, np.array([[0.1, np.nan]]))
    assert expo.tolist() == [[160.0, 100.0]] and defined.tolist() == [[True, False]]
    assert explained.tolist() == [[pytest.approx(16.0), 0.0]] and residual.tolist() == [pytest.approx(14.0)]


# ---- a real run: silver bars -> factors -> risk, the attribution read back from the committed outputs -------------


def _committed(data_dir, table: str, manifest: str, key: str) -> pd.DataFrame:
    from etl import commits
    from etl.storage import Store

    store = Store.from_uri(str(data_dir))
    return commits.read_entry(store, commits.read_manifest(store, manifest)["files"][key]).to_pandas()


def test_a_real_run_sums_to_the_daily_pnl_and_matches_an_independent_computation(chain):
    from etl.commits import risk_manifest

    part = f"as_of_date={AS_OF.date()}"
    out = _committed(chain["data"], "pnl_attribution", risk_manifest(AS_OF.date()), f"pnl_attribution/{part}")
    pnl = _committed(chain["data"], "pnl_daily", risk_manifest(AS_OF.date()), f"pnl_daily/{part}")
    # every book and day with a PnL: the rows sum to it
    pnl = pnl.dropna(subset=["daily_pnl"]).set_index(["portfolio_id", "as_of_date"])["daily_pnl"]
    sums = out.groupby(["portfolio_id", "as_of_date"])["explained_pnl"].sum()
    assert len(pnl) > 40 and sorted(sums.index) == sorted(pnl.index)
    np.testing.assert_allclose(sums.reindex(pnl.index), pnl, rtol=1e-12, atol=1e-9)
    assert (out.groupby(["portfolio_id", "as_of_date"])["factor_name"].apply(lambda s: (s == RESIDUAL).sum()) == 1).all()

    # the factors stage wrote AS_OF-2 .. AS_OF: the last two days are explained, earlier ones are residual only
    explained_days = sorted({str(d) for d in out.loc[out["factor_name"] != RESIDUAL, "as_of_date"]})
    assert explained_days == [str((AS_OF - pd.Timedelta(days=k)).date()) for k in (1, 0)]

    # independently, for P002 on AS_OF: quantities x the previous daily close x the previous day's betas, times the
    # factor's bucket returns of AS_OF compounded
    prev = (AS_OF - pd.Timedelta(days=1)).date()
    b5 = chain["b5"]
    close_prev = b5[b5["bucket_start"].dt.date == prev].groupby("product_id")["close"].last()
    qty = chain["positions"].query("portfolio_id == 'P002'").set_index("product_id")["quantity"]
    betas = _committed(chain["data"], "factor_exposures", "factors", f"factor_exposures/date={prev}")
    returns = _committed(chain["data"], "factor_returns", "factors", f"factor_returns/date={AS_OF.date()}")
    mine = out[(out["portfolio_id"] == "P002") & (out["as_of_date"].astype(str) == str(AS_OF.date()))]
    assert set(mine["factor_name"]) == {"market", "liquidity_hml", "volatility_hml", "momentum_hml", RESIDUAL}
    for row in mine[mine["factor_name"] != RESIDUAL].itertuples():
        beta = betas[betas["factor_name"] == row.factor_name].set_index("product_id")["beta"]
        exposure = sum(qty[a] * close_prev[a] * beta[a] for a in qty.index)
        r = returns.loc[returns["factor_name"] == row.factor_name, "factor_return"].to_numpy()
        assert row.exposure == pytest.approx(exposure, rel=1e-12)
        assert row.factor_return == pytest.approx(np.prod(1 + r) - 1, rel=1e-10)
        assert row.explained_pnl == pytest.approx(exposure * (np.prod(1 + r) - 1), rel=1e-10)


def test_portfolios_in_chunks_give_the_same_rows(monkeypatch):
    """The book is valued a chunk of portfolios at a time (memory): one portfolio per chunk, the same table."""
    import etl.risk.attribution as attribution

    whole = attribution_table(CLOSES, QUOTE, PORTFOLIOS, POSITIONS, PNL, FACTOR_RETURNS, EXPOSURES)
    monkeypatch.setattr(attribution, "PORTFOLIO_CHUNK", 1)
    chunked = attribution_table(CLOSES, QUOTE, PORTFOLIOS, POSITIONS, PNL, FACTOR_RETURNS, EXPOSURES)
    assert len(whole) == 9 and set(whole["portfolio_id"]) == {"P1", "P2"}
    pd.testing.assert_frame_equal(whole, chunked)


def test_a_factors_commit_landing_during_a_risk_run_does_not_mix_two_factor_runs(chain, monkeypatch):
    """The risk run read the committed factor outputs twice (returns, then exposures), each through its own read of
    the factor records: a `factors` run committing in between (another window, changed settings, a late
    correction) gave the attribution one run's factor returns times the other run's betas: figures no factor run
    made. It must equal the attribution of one of them (docs/commit_protocol.md: one complete state or the other)."""
    import os
    import subprocess
    import sys

    from etl import commits
    from etl.commits import risk_manifest
    from etl.risk.runner import run_risk
    from etl.settings import PROJECT_ROOT, get_settings

    part = f"as_of_date={AS_OF.date()}"
    columns = ["portfolio_id", "as_of_date", "factor_name", "exposure", "factor_return", "explained_pnl"]

    def attribution() -> pd.DataFrame:
        out = _committed(chain["data"], "pnl_attribution", risk_manifest(AS_OF.date()), f"pnl_attribution/{part}")
        return out[columns].sort_values(columns[:3], ignore_index=True)

    before = attribution()                                     # the chain's run, on the first factors commit
    real, calls = commits.read_entry, []

    def factors_commit_between(store, entry, *args, **kwargs):  # a real `factors` run commits once the risk run
        out = real(store, entry, *args, **kwargs)               # has read its first factor partition
        if entry["table"].startswith("factor_") and not calls:
            env = {**os.environ, "FACTOR_FORMATION_MINUTES": "60", "FACTOR_MOMENTUM_MINUTES": "30,60"}
            calls.append(subprocess.run([sys.executable, "-m", "etl", "factors", "--end",
                                         f"{(AS_OF + pd.Timedelta(days=1)).date()}T00:00:00Z"], cwd=PROJECT_ROOT,
                                        env=env, capture_output=True, text=True, timeout=600))
        return out

    monkeypatch.setattr(commits, "read_entry", factors_commit_between)
    run_risk(AS_OF.date(), get_settings())
    monkeypatch.setattr(commits, "read_entry", real)
    assert calls and calls[0].returncode == 0, calls[0].stderr[-2000:] if calls else "no factor partition read"
    raced = attribution()
    run_risk(AS_OF.date(), get_settings())                    # a clean run on the second factors commit
    after = attribution()
    assert not before.equals(after)                            # the two factor runs explain differently
    assert raced.equals(before) or raced.equals(after), "the attribution mixes two factor runs"


def test_a_non_usd_book_is_explained_in_its_own_currency_not_in_usd():
    """The factor model explains USD returns (docs/factor_model.md); a EUR book's PnL is in EUR, where each
    product moves by its USD return less EUR's. The attribution applied the USD betas to the EUR market values as
    they were: a model explaining every USD move exactly (no alpha, no error) 'explained' 14.72 EUR of a 7.16 EUR
    day and left -7.56 EUR unexplained; a BTC book holding only BTC (PnL 0 every day) was shown making its market
    move and losing it again in the residual. The base currency's own betas are now taken off the products'."""
    f = 0.10                                                   # the day's market return
    beta = {"BTC-USD": 1.2, "ETH-USD": 0.8, "EUR-USD": 0.5}    # every USD move is exactly beta x f
    closes = pd.DataFrame({"BTC-USD": [100.0, 100 * (1 + 1.2 * f)], "ETH-USD": [10.0, 10 * (1 + 0.8 * f)],
                           "EUR-USD": [1.25, 1.25 * (1 + 0.5 * f)]}, index=pd.DatetimeIndex([D0, D1]))
    quote = dict.fromkeys(closes.columns, "USD")
    portfolios = pd.DataFrame({"portfolio_id": ["E", "B"], "base_currency": ["EUR", "BTC"]})
    positions = pd.DataFrame({"portfolio_id": ["E", "E", "B"], "product_id": ["BTC-USD", "ETH-USD", "BTC-USD"],
                              "as_of_date": D0, "quantity": [1.0, 8.0, 3.0], "avg_cost": [90.0, 9.0, 95.0]})
    # E: 1 BTC (80 EUR) and 8 ETH (64 EUR) at D0, each in EUR at D1: 112 / 1.3125 and 86.4 / 1.3125
    pnl_e = (112 / 1.3125 - 80) + (86.4 / 1.3125 - 64)           # 7.161905 EUR
    pnl = pd.DataFrame({"portfolio_id": ["E", "B"], "as_of_date": D1, "daily_pnl": [pnl_e, 0.0],
                        "base_currency": ["EUR", "BTC"]})
    returns = pd.DataFrame({"factor_name": ["market"], "bucket_start": pd.to_datetime(["2026-01-02 00:00"], utc=True),
                            "factor_return": [f]})
    exposures = pd.DataFrame({"product_id": list(beta) * 2, "factor_name": "market",
                              "as_of_date": pd.to_datetime([D0] * 3 + [D1] * 3).date, "beta": list(beta.values()) * 2})
    out = attribution_table(closes, quote, portfolios, positions, pnl, returns, exposures)
    got = out.set_index(["portfolio_id", "factor_name"])
    # exposure in EUR to the EUR return of the market: 80 (1.2 - 0.5) + 64 (0.8 - 0.5)
    assert got.loc[("E", "market"), "exposure"] == pytest.approx(75.2)
    assert got.loc[("E", "market"), "explained_pnl"] == pytest.approx(7.52)
    # what is left is only the compounding of the conversion: MV ((1 + b f) / (1 + b_EUR f) - 1 - (b - b_EUR) f)
    gap = 80 * (1.12 / 1.05 - 1 - 0.07) + 64 * (1.08 / 1.05 - 1 - 0.03)   # -0.358095
    assert got.loc[("E", RESIDUAL), "explained_pnl"] == pytest.approx(gap, abs=1e-12)
    # a BTC book holding BTC: nothing moved in BTC, nothing explained, nothing left
    assert got.loc[("B", "market"), "exposure"] == 0.0 and got.loc[("B", "market"), "explained_pnl"] == 0.0
    assert got.loc[("B", RESIDUAL), "explained_pnl"] == 0.0


def test_a_non_usd_book_whose_currency_has_no_beta_is_all_residual():
    """Without the betas of <BASE>-USD the EUR returns the factors explain are unknown: the day's PnL is all
    residual, not the USD betas applied to EUR values."""
    exposures = EXPOSURES[EXPOSURES["product_id"] != "EUR-USD"]           # BTC and ETH betas, none for EUR-USD
    out = attribution_table(CLOSES, QUOTE, PORTFOLIOS, POSITIONS, PNL, FACTOR_RETURNS, exposures)
    p2 = out[(out["portfolio_id"] == "P2") & (out["as_of_date"] == D1)]
    assert p2["factor_name"].tolist() == [RESIDUAL] and p2["explained_pnl"].tolist() == [20.0]
    assert set(out.loc[(out["portfolio_id"] == "P1") & (out["as_of_date"] == D1), "factor_name"]) == \
        {"market", "momentum_hml", RESIDUAL}                                 # the USD book is explained as before


def test_a_product_whose_close_is_carried_explains_no_pnl_the_day_of_the_halt_nor_the_day_it_resumes():
    """ETH-USD has no daily bar on D2 (halted: its D1 close 9.0 is carried) and trades again on D3 at 9.9. On D2
    its PnL is 0 (a carried close moves nothing) but its D1 beta (market 0.9) times D2's market return was booked
    as explained PnL (-10 x 9 x 0.9 x 0.05 = -4.05) that the residual then cancelled; on D3 its PnL is the move
    across the halt (two days), not one day's. A product whose close, on D or D-1, is carried (or a `<CCY>-USD`
    converting it) has no exposure that day: its PnL, 0 or the move across the gap, is residual."""
    d4 = pd.Timestamp("2026-01-04")
    closes = pd.DataFrame({"BTC-USD": [100.0, 110.0, 99.0, 104.0], "ETH-USD": [10.0, 9.0, 9.0, 9.9],
                           "EUR-USD": [1.25, 1.1, 1.0, 1.0]}, index=pd.DatetimeIndex([D0, D1, D2, D3]))
    carried = pd.DataFrame(False, index=closes.index, columns=closes.columns)
    carried.loc[D2, "ETH-USD"] = True
    p1 = PORTFOLIOS.iloc[:1]
    positions = POSITIONS[POSITIONS["portfolio_id"] == "P1"]
    # P1 = 2 BTC - 10 ETH: D2 2 x -11 - 10 x 0 = -22; D3 2 x 5 - 10 x 0.9 = 1
    pnl = pd.DataFrame({"portfolio_id": "P1", "as_of_date": [D1, D2, D3], "daily_pnl": [30.0, -22.0, 1.0],
                        "base_currency": "USD"})
    returns = pd.DataFrame({"factor_name": "market", "factor_return": [0.02, 0.05, 0.03],
                            "bucket_start": pd.to_datetime(["2026-01-02 00:00", "2026-01-03 08:00",
                                                            "2026-01-04 08:00"], utc=True)})
    exposures = pd.DataFrame({"product_id": ["BTC-USD", "ETH-USD"] * 3, "factor_name": "market",
                              "as_of_date": pd.to_datetime([D0] * 2 + [D1] * 2 + [D2] * 2).date,
                              "beta": [1.2, 0.8, 1.1, 0.9, 1.0, 0.7]})
    exposures = pd.concat([exposures, exposures.iloc[-2:].assign(as_of_date=d4.date())])   # D3 finished
    out = attribution_table(closes, QUOTE, p1, positions, pnl, returns, exposures, carried=carried)
    got = out.set_index([out["as_of_date"].astype(str).str[:10], "factor_name"])["explained_pnl"]
    # D1: both traded: (2 x 100 x 1.2 - 10 x 10 x 0.8) x 0.02 = 3.2, residual 26.8
    assert got[("2026-01-02", "market")] == pytest.approx(3.2) and got[("2026-01-02", RESIDUAL)] == pytest.approx(26.8)
    # D2, D3: only BTC explained: 2 x 110 x 1.1 x 0.05 = 12.1; 2 x 99 x 1.0 x 0.03 = 5.94
    assert got[("2026-01-03", "market")] == pytest.approx(12.1)
    assert got[("2026-01-03", RESIDUAL)] == pytest.approx(-22 - 12.1)
    assert got[("2026-01-04", "market")] == pytest.approx(5.94)
    assert got[("2026-01-04", RESIDUAL)] == pytest.approx(1 - 5.94)
    exposure = out.set_index([out["as_of_date"].astype(str).str[:10], "factor_name"])["exposure"]
    assert exposure[("2026-01-03", "market")] == pytest.approx(242.0)
    assert exposure[("2026-01-04", "market")] == pytest.approx(198.0)


def test_a_day_with_a_gap_in_its_factor_buckets_has_no_factor_return_not_the_return_of_the_buckets_left():
    """The factor grid of D1 has 4 buckets (FACTOR_FREQUENCY_S 21600); an outage leaves 06:00 without candles, so
    the universe returns of 06:00 and 12:00 (the bucket after the gap) are NaN and the factor has no return there.
    The day's return was the two buckets left compounded, 1.01 x 1.02 - 1 = 3.02%, though the market moved across
    the gap too (the day's close-to-close PnL includes that move): a confident partial figure. A day missing a
    bucket has no return for that factor (its PnL is residual); a full day is compounded as before."""
    returns = pd.DataFrame({
        "factor_name": ["market"] * 6,
        "bucket_start": pd.to_datetime(["2026-01-02 00:00", "2026-01-02 18:00", "2026-01-03 00:00",
                                        "2026-01-03 06:00", "2026-01-03 12:00", "2026-01-03 18:00"], utc=True),
        "factor_return": [0.01, 0.02, 0.01, -0.02, 0.03, 0.01]})
    daily = daily_factor_returns(returns, pd.DatetimeIndex([D1, D2]), frequency_s=21600)
    assert np.isnan(daily.loc[D1, "market"])
    assert daily.loc[D2, "market"] == pytest.approx(1.01 * 0.98 * 1.03 * 1.01 - 1)
    exposures = EXPOSURES[EXPOSURES["factor_name"] == "market"]
    out = attribution_table(CLOSES, QUOTE, PORTFOLIOS.iloc[:1], POSITIONS[POSITIONS["portfolio_id"] == "P1"],
                            PNL[PNL["portfolio_id"] == "P1"], returns, exposures, frequency_s=21600)
    d1 = out[out["as_of_date"] == D1]
    assert d1["factor_name"].tolist() == [RESIDUAL] and d1["explained_pnl"].tolist() == [30.0]
    d2 = out[out["as_of_date"] == D2].set_index("factor_name")       # D1's betas: ETH market 0.9, -10 x 9 ETH
    assert d2.loc["market", "explained_pnl"] == pytest.approx(-81 * (1.01 * 0.98 * 1.03 * 1.01 - 1))

"""Liquidity-adjusted VaR against hand computations: a hand-built book of three levels a side, the spread cost
at a percentile of the day's spreads, a position larger than the book flagged, a product without a book named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etl.risk.liquidity import liquidity_tables, position_costs, walk_book
from tests.etl.risk.test_engine import risk_env  # noqa: F401  (the fixture)

BOOK = {"bid_prices": [100.0, 99.0, 98.0], "bid_quantities": [1.0, 2.0, 3.0],
        "ask_prices": [101.0, 102.0, 103.0], "ask_quantities": [1.0, 2.0, 4.0]}


def books(spreads_bps, product="BTC-USD") -> pd.DataFrame:
    return pd.DataFrame([{"product_id": product, "spread_bps": s, **BOOK} for s in spreads_bps])


def test_walk_the_hand_built_book():
    bids = np.array(BOOK["bid_prices"]), np.array(BOOK["bid_quantities"])
    assert walk_book(0.5, *bids) == (0.0, 1.0)                 # inside the touch: no impact
    assert walk_book(2.5, *bids) == (1.5, 1.0)                 # 1 @ 100 (0) + 1.5 @ 99 (1 below the touch)
    assert walk_book(10.0, *bids) == (8.0, 0.6)                # 1 x 0 + 2 x 1 + 3 x 2; 6 of 10 absorbed
    asks = np.array(BOOK["ask_prices"]), np.array(BOOK["ask_quantities"])
    assert walk_book(4.0, *asks) == (4.0, 1.0)                 # 1 @ 101 + 2 @ 102 (+1 each) + 1 @ 103 (+2)


def test_position_costs_by_hand():
    # long 2.5 at 100.5 in a base currency worth 2 per quote unit: MV 502.5; spreads of the day 10 and 30 bp
    got = position_costs(2.5, 502.5, 2.0, books([10.0, 30.0]), 99.0)
    spread_99 = (10 + 0.99 * (30 - 10)) * 1e-4               # numpy's linear percentile of two values
    assert got["spread_cost"] == pytest.approx(0.5 * spread_99 * 502.5)
    assert got["impact_cost"] == pytest.approx(1.5 * 2.0) and got["absorbed_share"] == 1.0
    assert got["exceeds_depth"] is False
    short = position_costs(-4.0, -402.0, 1.0, books([20.0]), 99.0)
    assert short["spread_cost"] == pytest.approx(0.5 * 20e-4 * 402.0) and short["impact_cost"] == pytest.approx(4.0)
    big = position_costs(10.0, 1005.0, 1.0, books([20.0]), 99.0)
    assert big["exceeds_depth"] is True and big["absorbed_share"] == pytest.approx(0.6)
    assert big["impact_cost"] == pytest.approx(8.0)          # the absorbed part only, never extrapolated


def test_portfolio_lvar_names_products_without_a_book():
    positions = pd.DataFrame({"portfolio_id": ["P1", "P1", "P2"], "product_id": ["BTC-USD", "ETH-USD", "BTC-USD"],
                              "as_of_date": pd.Timestamp("2026-12-01"), "quantity": [2.5, 3.0, 10.0],
                              "market_value": [251.25, 300.0, 1005.0], "fx_rate": 1.0})
    metrics = pd.DataFrame({"portfolio_id": ["P1", "P2"], "var_99_hist": [1000.0, 50.0]})
    portfolio, detail = liquidity_tables(positions, metrics, books([20.0]), 99.0)
    p1, p2 = portfolio.to_dict("records")
    assert p1["spread_cost"] == pytest.approx(0.5 * 20e-4 * 251.25) and p1["impact_cost"] == pytest.approx(1.5)
    assert p1["lvar_99"] == pytest.approx(1000.0 + p1["spread_cost"] + 1.5)
    assert p1["products_without_book"] == "ETH-USD" and p1["book_coverage"] == pytest.approx(251.25 / 551.25)
    assert not p1["exceeds_depth"] and p2["exceeds_depth"] and p2["min_absorbed_share"] == pytest.approx(0.6)
    assert p2["lvar_99"] == pytest.approx(50.0 + 0.5 * 20e-4 * 1005.0 + 8.0) and pd.isna(p2["products_without_book"])
    assert list(detail["product_id"]) == ["BTC-USD", "BTC-USD"]   # ETH-USD: excluded, never a zero-cost row


def test_lvar_limit_breach_only_where_a_limit_is_set():
    from etl.risk.liquidity import lvar_breaches

    lvar = pd.DataFrame({"portfolio_id": ["P1", "P2", "P3"], "as_of_date": pd.Timestamp("2026-12-01"),
                         "lvar_99": [120.0, 80.0, np.nan], "book_coverage": 1.0, "exceeds_depth": False})
    held = pd.DataFrame({"portfolio_id": ["P1", "P2", "P3"], "as_of_date": pd.Timestamp("2026-12-01")})
    portfolios = pd.DataFrame({"portfolio_id": ["P1", "P2", "P3"], "lvar_limit": [100.0, 100.0, 100.0]})
    got = lvar_breaches(lvar, held, portfolios, {"P1": "USD", "P2": "USD", "P3": "EUR"})
    assert list(got["portfolio_id"]) == ["P1", "P3"] and list(got["breach_kind"]) == ["exceeded", "uncomputable"]
    assert got["utilisation"].iloc[0] == pytest.approx(1.2) and (got["limit_type"] == "lvar").all()
    no_limit = lvar_breaches(lvar, held, portfolios.assign(lvar_limit=np.nan), {})
    assert no_limit.empty


def test_an_lvar_limit_over_products_without_a_book_is_uncomputable_not_a_pass():
    """P1 holds 3,000 ETH without a recorded book (0.08% of its gross has one): its lvar_99 leaves nearly all of it
    out, so 1,001.75 under a 2,000 limit proves nothing; P4's only product has no book (no row); both passed. P5's
    covered part alone exceeds its limit: exceeded. P6 holds nothing: no limit to breach."""
    from etl.risk.liquidity import lvar_breaches

    positions = pd.DataFrame({"portfolio_id": ["P1", "P1", "P4", "P5", "P5"],
                              "product_id": ["BTC-USD", "ETH-USD", "ETH-USD", "BTC-USD", "ETH-USD"],
                              "as_of_date": pd.Timestamp("2026-12-01"), "quantity": [2.5, 3000.0, 10.0, 2.5, 1.0],
                              "market_value": [251.25, 300000.0, 1000.0, 251.25, 100.0], "fx_rate": 1.0})
    metrics = pd.DataFrame({"portfolio_id": ["P1", "P4", "P5"], "var_99_hist": [1000.0, 50.0, 1000.0]})
    portfolio, _ = liquidity_tables(positions, metrics, books([20.0]), 99.0)
    limits = pd.DataFrame({"portfolio_id": ["P1", "P4", "P5", "P6"], "lvar_limit": [2000.0, 60.0, 500.0, 1.0]})
    got = lvar_breaches(portfolio, positions, limits, dict.fromkeys(limits["portfolio_id"], "USD")).set_index(
        "portfolio_id")
    assert list(got.index) == ["P1", "P4", "P5"]
    assert list(got["breach_kind"]) == ["uncomputable", "uncomputable", "exceeded"]
    assert got[["value", "utilisation"]].loc[["P1", "P4"]].isna().all().all()
    assert got.loc["P5", "value"] == pytest.approx(1001.75125) and str(got.loc["P4", "as_of_date"].date()) == "2026-12-01"


def test_an_lvar_limit_over_a_position_larger_than_the_recorded_book_is_uncomputable_not_a_pass():
    """P7 holds 100 BTC against a recorded book of 6 a side: its impact cost counts the 6% the book absorbs, so its
    lvar_99 (about 1,011) is a lower bound of what liquidating the book costs, as when part of a book has no
    recorded book at all. It cleared a 2,000 limit; now it cannot clear it (uncomputable), and it is `exceeded`
    when even the lower bound is over the limit (P8). P9, within the depth, keeps its plain pass."""
    from etl.risk.liquidity import lvar_breaches

    positions = pd.DataFrame({"portfolio_id": ["P7", "P8", "P9"], "product_id": "BTC-USD",
                              "as_of_date": pd.Timestamp("2026-12-01"), "quantity": [100.0, 100.0, 2.5],
                              "market_value": [10050.0, 10050.0, 251.25], "fx_rate": 1.0})
    metrics = pd.DataFrame({"portfolio_id": ["P7", "P8", "P9"], "var_99_hist": [1000.0, 1000.0, 1000.0]})
    portfolio, _ = liquidity_tables(positions, metrics, books([20.0]), 99.0)
    assert list(portfolio["exceeds_depth"]) == [True, True, False] and (portfolio["book_coverage"] == 1.0).all()
    limits = pd.DataFrame({"portfolio_id": ["P7", "P8", "P9"], "lvar_limit": [2000.0, 500.0, 2000.0]})
    got = lvar_breaches(portfolio, positions, limits, dict.fromkeys(limits["portfolio_id"], "USD")).set_index(
        "portfolio_id")
    assert list(got.index) == ["P7", "P8"] and list(got["breach_kind"]) == ["uncomputable", "exceeded"]
    assert np.isnan(got.loc["P7", "value"]) and got.loc["P8", "value"] == pytest.approx(
        portfolio.set_index("portfolio_id").loc["P8", "lvar_99"])


def test_risk_run_writes_lvar_from_silver_books_with_the_lvar_limit(risk_env, monkeypatch):  # noqa: F811
    """The runner's one call: BTC-USD has recorded books on the as-of day, ETH-USD and ETH-BTC none."""
    import os
    from pathlib import Path

    from etl.lake import Lake
    from etl.risk import run_risk
    from etl.settings import get_settings
    from etl.silver import increments
    from etl.silver.liquidity import LIQUIDITY_DIR, LIQUIDITY_SCHEMA, _table
    from etl.storage import get_store
    from tests.etl.risk.test_engine import AS_OF, _read

    ref = Path(os.environ["PIPELINE_REFERENCE_DIR"]) / "portfolios.csv"
    ref.write_text("portfolio_id,name,base_currency,var_limit,concentration_limit,drawdown_limit,lvar_limit\n"
                   "U1,Long BTC short ETH,USD,1000,0.9,0.9,1\n"
                   "U2,ETH-BTC rebalanced,USD,1000000,0.5,0.9,\n"
                   "B1,ETH in BTC terms,BTC,100,0.9,0.01,\n")
    start = pd.Timestamp(AS_OF, tz="UTC").value // 1000
    silver = pd.DataFrame([{"bucket_start_us": start + i * 300_000_000, "n_snapshots": 1, "mid": 100.5,
                            "spread_bps": s, **{c: 1.0 for c in ("bid_depth_10bp", "bid_depth_50bp",
                                                                 "bid_depth_100bp", "ask_depth_10bp",
                                                                 "ask_depth_50bp", "ask_depth_100bp")},
                            "reach_bps": 100.0, **BOOK} for i, s in enumerate((10.0, 30.0))])
    store = get_store()  # committed to the silver Delta table as a liquidity build commits it
    increments.commit(store, Lake.of(store), LIQUIDITY_DIR, LIQUIDITY_SCHEMA,
                      {("BTC-USD", AS_OF.isoformat()): _table(silver)}, None)
    summary = run_risk(as_of=AS_OF, settings=get_settings())
    assert summary.rows["liquidity_risk"] == 2 and summary.rows["liquidity_positions"] == 2   # B1 holds no BTC
    lvar = _read(risk_env["data"], "liquidity_risk").set_index("portfolio_id")
    pos = _read(risk_env["data"], "positions_valued").set_index(["portfolio_id", "product_id"])
    metrics = _read(risk_env["data"], "risk_metrics").set_index("portfolio_id")
    spread_99 = (10 + 0.99 * 20) * 1e-4
    u1_btc = pos.loc[("U1", "BTC-USD")]
    assert lvar.loc["U1", "spread_cost"] == pytest.approx(0.5 * spread_99 * abs(u1_btc["market_value"]))
    assert lvar.loc["U1", "impact_cost"] == pytest.approx(2 * 0.0 + 1.0 * 1.0)   # 1 @ touch, 1 one level down
    assert lvar.loc["U1", "lvar_99"] == pytest.approx(metrics.loc["U1", "var_99_hist"] + lvar.loc["U1", "spread_cost"]
                                                      + lvar.loc["U1", "impact_cost"])
    assert lvar.loc["U1", "products_without_book"] == "ETH-USD" and lvar.loc["U2", "products_without_book"] == "ETH-BTC"
    assert not lvar["exceeds_depth"].any()
    breaches = _read(risk_env["data"], "limit_breaches")
    lv = breaches[breaches["limit_type"] == "lvar"]
    assert list(lv["portfolio_id"]) == ["U1"] and lv["value"].iloc[0] == pytest.approx(lvar.loc["U1", "lvar_99"])

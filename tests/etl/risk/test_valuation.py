"""etl.risk.valuation: a hand-computed three-asset book, quote-currency conversion, snapshot carry-forward."""

from __future__ import annotations

import numpy as np
import pytest

from etl.risk import valuation

TOL = 1e-9


def test_three_asset_book_by_hand():
    close = np.array([[100.0, 50.0, 20.0], [110.0, 45.0, 20.0], [99.0, 60.0, 25.0]])   # days Jan 30, Jan 31, Feb 1
    qty = np.broadcast_to(np.array([10.0, -4.0, 5.0]), (3, 1, 3))
    cost = np.broadcast_to(np.array([90.0, 55.0, 22.0]), (3, 1, 3))
    val = valuation.value_positions(qty, cost, close, np.ones((3, 1, 3)))
    assert val.market_value[2, 0].tolist() == [990.0, -240.0, 125.0]
    assert val.unrealized_pnl[2, 0].tolist() == [90.0, -20.0, 15.0]          # (99-90)*10, (60-55)*-4, (25-22)*5
    e = valuation.exposures(val.market_value)
    assert e["gross_exposure"][2, 0] == 1355.0 and e["net_exposure"][2, 0] == 875.0
    assert e["long_exposure"][2, 0] == 1115.0 and e["short_exposure"][2, 0] == 240.0
    assert e["concentration_pct"][2, 0] == pytest.approx(990 / 1355, abs=TOL)
    pnl = valuation.daily_pnl(qty, close[:, None, :])
    assert np.isnan(pnl[0, 0]) and pnl[1, 0] == 120.0 and pnl[2, 0] == -145.0   # 100+20+0 ; -110-60+25
    mtd = valuation.month_to_date(pnl, np.array([1, 1, 2]))
    assert np.isnan(mtd[:2, 0]).all() and mtd[2, 0] == -145.0   # January's first PnL unknown; February afresh
    r = valuation.portfolio_returns(pnl, e["gross_exposure"])
    assert r[2, 0] == pytest.approx(-145.0 / (1100 + 180 + 100), abs=TOL)      # on yesterday's gross


def test_quote_currency_conversion_and_empty_book():
    close = np.array([[0.03], [0.035]])                 # ETH-BTC in BTC
    fx = np.array([[[60000.0]], [[50000.0]]])           # BTC-USD close each day
    val = valuation.value_positions(np.full((2, 1, 1), 2.0), np.full((2, 1, 1), 0.02), close, fx)
    assert val.market_value[:, 0, 0].tolist() == pytest.approx([3600.0, 3500.0], abs=TOL)
    assert val.unrealized_pnl[1, 0, 0] == pytest.approx((0.035 - 0.02) * 2 * 50000, abs=TOL)
    e = valuation.exposures(np.zeros((1, 1, 3)))
    assert e["gross_exposure"][0, 0] == 0 and np.isnan(e["concentration_pct"][0, 0])


def test_carry_forward_latest_snapshot_per_portfolio():
    snap_days = np.array([10, 12])
    has = np.array([[True, False], [True, True]])       # X has both snapshots, Y only the later one
    values = np.zeros((2, 2, 2))
    values[0, 0] = [1.0, 2.0]
    values[1, 0] = [5.0, 0.0]                           # X closes asset 1 at the rebalance
    values[1, 1] = [0.0, 7.0]
    out = valuation.carry_forward(snap_days, has, values, np.array([9, 10, 11, 12, 13]))
    assert out[:, 0].tolist() == [[0, 0], [1, 2], [1, 2], [5, 0], [5, 0]]
    assert out[:, 1].tolist() == [[0, 0], [0, 0], [0, 0], [0, 7], [0, 7]]

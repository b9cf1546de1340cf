"""etl.risk.risk_returns: returns, and window and EWMA volatility against quantstats, pandas and the direct
recursion (tolerance 1e-9)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import quantstats as qs

from etl.risk import risk_returns

TOL = 1e-9


def test_downside_semideviation_by_hand(rets):
    ours = risk_returns.downside_semideviation(rets, 60, 365)
    for k in range(rets.shape[1]):
        last = rets[-60:, k]
        below = last[last < 0]
        assert ours[k] == pytest.approx(np.sqrt(np.sum(below**2) / 60) * np.sqrt(365), abs=TOL)
    flat_up = np.abs(rets)                                                # no loss in the window: 0
    assert risk_returns.downside_semideviation(flat_up, 60).tolist() == [0.0] * rets.shape[1]
    assert np.isnan(risk_returns.downside_semideviation(rets[:59], 60)).all()


def test_returns():
    p = np.array([[100.0], [110.0], [99.0]])
    assert risk_returns.simple_returns(p)[:, 0] == pytest.approx([0.1, -0.1], abs=TOL)
    assert risk_returns.log_returns(p)[:, 0] == pytest.approx([np.log(1.1), np.log(0.9)], abs=TOL)


@pytest.mark.parametrize("window", [20, 30])
def test_window_vol_matches_quantstats(rets, window):
    ours = risk_returns.window_vol(rets, window, 365)
    for k in range(rets.shape[1]):
        oracle = qs.stats.volatility(pd.Series(rets[-window:, k]), periods=365, prepare_returns=False)
        assert ours[k] == pytest.approx(oracle, abs=TOL)
    assert np.isnan(risk_returns.window_vol(rets[:5], window)).all()


def test_ewma_vol_matches_pandas(rets):
    ours = risk_returns.ewma_vol(rets, 0.94, 365)
    oracle = np.sqrt(pd.DataFrame(rets**2).ewm(alpha=0.06, adjust=True).mean().iloc[-1].to_numpy() * 365)
    np.testing.assert_allclose(ours, oracle, rtol=TOL, atol=0)


def test_ewma_vol_matches_the_direct_recursion(rets):
    """RiskMetrics with normalised weights: S_t = lam S_{t-1} + r_t^2, W_t = lam W_{t-1} + 1, sigma^2 = S / W."""
    s = w = np.zeros(rets.shape[1])
    for row in rets:
        s, w = 0.94 * s + row**2, 0.94 * w + 1.0
    np.testing.assert_allclose(risk_returns.ewma_vol(rets, 0.94, 365), np.sqrt(s / w * 365), rtol=1e-12, atol=0)
    one = risk_returns.ewma_vol(np.array([[0.02]]), 0.94, 365)                      # one return: sigma = |r|
    assert one[0] == pytest.approx(0.02 * np.sqrt(365), rel=1e-12)


@pytest.mark.parametrize("window", [20, 30])
def test_window_vol_matches_pandas_rolling_std(rets, window):
    oracle = pd.DataFrame(rets).rolling(window).std().iloc[-1].to_numpy() * np.sqrt(365)
    np.testing.assert_allclose(risk_returns.window_vol(rets, window, 365), oracle, rtol=1e-12, atol=0)

"""etl.risk.drawdown: maximum drawdown against empyrical and quantstats, and its dates by hand."""

from __future__ import annotations

import empyrical
import numpy as np
import pandas as pd
import pytest
import quantstats as qs

from etl.risk import drawdown

TOL = 1e-9


def test_max_drawdown_matches_empyrical_and_quantstats(rets):
    mdd = drawdown.max_drawdown(rets)
    for k in range(rets.shape[1]):
        assert mdd.max_drawdown[k] == pytest.approx(empyrical.max_drawdown(rets[:, k]), abs=TOL)
        prices = pd.Series(100 * np.cumprod(1 + rets[:, k]), index=pd.date_range("2025-01-02", periods=len(rets)))
        assert mdd.max_drawdown[k] == pytest.approx(qs.stats.max_drawdown(prices), abs=1e-6)  # quantstats rounds
    dd = drawdown.drawdown_series(rets)
    np.testing.assert_allclose(dd.min(axis=0), mdd.max_drawdown, atol=TOL)


def test_drawdown_dates_by_hand():
    r = np.array([[0.10], [-0.5], [0.2], [0.5], [0.4], [-0.1]])              # wealth 1, 1.1, .55, .66, .99, 1.386
    mdd = drawdown.max_drawdown(r)
    assert mdd.max_drawdown[0] == pytest.approx(-0.5, abs=TOL)
    assert (mdd.peak[0], mdd.trough[0], mdd.recovery[0]) == (1, 2, 5)
    never = drawdown.max_drawdown(np.array([[0.1], [-0.2], [0.05]]))
    assert (never.peak[0], never.trough[0], never.recovery[0]) == (1, 2, -1)
    up = drawdown.max_drawdown(np.array([[0.1], [0.2]]))
    assert up.max_drawdown[0] == 0.0 and up.recovery[0] == -1
    first_day_loss = drawdown.max_drawdown(np.array([[-0.1], [0.05]]))       # counted from the start
    assert first_day_loss.max_drawdown[0] == pytest.approx(-0.1, abs=TOL)


def test_a_price_back_at_its_peak_is_recovered_and_not_in_drawdown():
    """100 -> 97 -> 100: the book is back at its peak on day 2. Compounding the returns (-0.03, 3/97) gives wealth
    0.9999999999999999, so the recovery (w >= the peak's level) was never found (recovery NULL, `is_recovered`
    false in gold) and drawdown_from_peak was -1.1e-16 instead of 0. Rounding of the compounding (relative 1e-12,
    a thousandth of a cent on a billion) is no drawdown."""
    p = np.array([100.0, 97.0, 100.0, 98.0])
    r = (p[1:] / p[:-1] - 1)[:, None]
    assert drawdown.wealth_index(r)[2, 0] < 1.0                        # the rounding this is about
    mdd = drawdown.max_drawdown(r)
    assert (mdd.peak[0], mdd.trough[0], mdd.recovery[0]) == (0, 1, 2)
    assert mdd.max_drawdown[0] == pytest.approx(-0.03, rel=1e-12)
    assert drawdown.drawdown_series(r[:2])[-1, 0] == 0.0                # back at the peak: not in drawdown
    assert drawdown.drawdown_series(r)[-1, 0] == pytest.approx(-0.02, rel=1e-12)   # a real fall is kept


def test_a_new_high_that_is_only_rounding_noise_does_not_move_the_peak_date_later():
    """Prices 100 -> 105 -> 90 -> 105 -> 73.5: wealth compounds to 1.05 on day 1 and 1.0500000000000003 on day 3.
    The two are the same level within REL_TOL (docs: "within 1e-12 of its running peak is at the peak"), so the
    peak before the trough (day 4) is the first day wealth reached it, day 1; the rounding made it day 3."""
    p = np.array([100.0, 105.0, 90.0, 105.0, 73.5])
    r = (np.diff(p) / p[:-1])[:, None]
    w = drawdown.wealth_index(r)[:, 0]
    assert w[3] > w[1]                                                      # the noise this test is about
    mdd = drawdown.max_drawdown(r)
    assert (mdd.peak[0], mdd.trough[0], mdd.recovery[0]) == (1, 4, -1)
    assert mdd.max_drawdown[0] == pytest.approx(-0.3, abs=TOL)


def test_a_low_that_is_only_rounding_noise_does_not_move_the_trough_date_later():
    """Prices 100 -> 80 -> 82 -> 80 -> 82: wealth compounds to 0.8 on day 1 and 0.7999999999999999 on day 3, the
    same low within REL_TOL. The trough is the first day of the minimum (docs), day 1; the rounding made it day 3.
    max_drawdown stays the minimum of the series (so never above a drawdown_from_peak)."""
    p = np.array([100.0, 80.0, 82.0, 80.0, 82.0])
    r = (np.diff(p) / p[:-1])[:, None]
    w = drawdown.wealth_index(r)[:, 0]
    assert w[3] < w[1]                                                      # the noise this test is about
    mdd = drawdown.max_drawdown(r)
    assert (mdd.peak[0], mdd.trough[0], mdd.recovery[0]) == (0, 1, -1)
    assert mdd.max_drawdown[0] == drawdown.drawdown_series(r)[:, 0].min()

"""etl.risk.backtest: Kupiec and Christoffersen by hand (scipy.stats chi2 and binom as oracles), the Basel
traffic light, exceptions, and the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from etl.risk import backtest

TOL = 1e-9


def test_kupiec_hand_worked():
    # n=250, x=5, p=0.01: LR = -2[245 ln .99 + 5 ln .01] + 2[245 ln .98 + 5 ln .02]
    lr, p = backtest.kupiec(250, 5, 0.99)
    expected = -2 * (245 * np.log(0.99) + 5 * np.log(0.01)) + 2 * (245 * np.log(0.98) + 5 * np.log(0.02))
    assert lr == pytest.approx(expected, abs=TOL)
    assert lr == pytest.approx(1.9568, abs=1e-4)
    assert p == pytest.approx(stats.chi2.sf(expected, 1), abs=TOL)
    lr0, _ = backtest.kupiec(250, 0, 0.99)                                    # no exceptions: 0 ln 0 = 0
    assert lr0 == pytest.approx(-2 * 250 * np.log(0.99), abs=TOL)


def test_christoffersen_hand_worked():
    hits = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    # transitions: 00: (0,1),(4,5),(5,6),(8,9) = 4 ; 01: (1,2),(6,7) = 2 ; 10: (3,4),(7,8) = 2 ; 11: (2,3) = 1
    assert [int(v[0]) for v in backtest.transition_counts(hits)] == [4, 2, 2, 1]
    pi0, pi1, pi = 2 / 6, 1 / 3, 3 / 9
    restricted = 6 * np.log(1 - pi) + 3 * np.log(pi)
    unrestricted = 4 * np.log(1 - pi0) + 2 * np.log(pi0) + 2 * np.log(1 - pi1) + 1 * np.log(pi1)
    lr, p = backtest.christoffersen(hits)
    assert lr[0] == pytest.approx(max(-2 * (restricted - unrestricted), 0.0), abs=TOL)
    clustered = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    n00, n01, n10, n11 = 7, 1, 1, 2                                            # 11 transitions
    pi0, pi1, pi = 1 / 8, 2 / 3, 3 / 11
    expected = -2 * ((n00 + n10) * np.log(1 - pi) + (n01 + n11) * np.log(pi)
                     - (n00 * np.log(1 - pi0) + n01 * np.log(pi0) + n10 * np.log(1 - pi1) + n11 * np.log(pi1)))
    lr, p = backtest.christoffersen(clustered)
    assert lr[0] == pytest.approx(expected, abs=TOL) and p[0] == pytest.approx(stats.chi2.sf(expected, 1), abs=TOL)
    lr_cc, p_cc = backtest.conditional_coverage(1.5, lr[0])
    assert p_cc == pytest.approx(stats.chi2.sf(1.5 + expected, 2), abs=TOL)
    lr_none, _ = backtest.christoffersen(np.zeros(20, dtype=bool))
    assert lr_none[0] == 0.0


def test_traffic_light_is_the_basel_table():
    x = np.arange(16)
    zones = backtest.traffic_light(x, 250, 0.99)
    assert list(zones) == ["green"] * 5 + ["yellow"] * 5 + ["red"] * 6
    cdf = stats.binom.cdf(x, 250, 0.01)
    assert (cdf[:5] < 0.95).all() and (cdf[5:10] < 0.9999).all() and (cdf[10:] >= 0.9999).all()


def test_a_series_without_a_scored_day_has_no_traffic_light_not_red():
    """binom.cdf(0, 0, p) = 1 >= 99.99%: a model with no forecast (e.g. evt_gpd on a short history, n_days 0) was
    'red', rejected over no data; the tests are NaN there and so is the light (None)."""
    assert list(backtest.traffic_light(np.array([0, 0, 10]), np.array([0, 250, 250]), 0.99)) == [None, "green", "red"]


def test_exceptions_are_losses_beyond_var():
    assert backtest.exceptions(np.array([10.0, 10.0, 10.0, np.nan]), np.array([-10.0, -10.5, 3.0, -99.0])).tolist() \
        == [False, True, False, False]


def test_backtest_statistics_edge_cases():
    # all exceptions: LR_pof = -2 n ln p (the unrestricted likelihood is 1); one state only: LR_ind = 0
    lr, p = backtest.kupiec(10, 10, 0.99)
    assert lr == pytest.approx(-2 * 10 * np.log(0.01), rel=1e-12) and p == pytest.approx(stats.chi2.sf(lr, 1))
    lr_ind, p_ind = backtest.christoffersen(np.ones(10, dtype=bool))
    assert lr_ind[0] == 0.0 and p_ind[0] == 1.0
    # no exceptions: LR_pof = -2 n ln(1 - p), LR_ind = 0
    assert backtest.kupiec(250, 0, 0.99)[0] == pytest.approx(-2 * 250 * np.log(0.99), rel=1e-12)
    assert backtest.christoffersen(np.zeros(250, dtype=bool))[0][0] == 0.0
    # no consecutive exceptions: n11 = 0, pi1 = 0 and 0 ln 0 = 0 (by hand: n00 = n01 = n10 = 3)
    hits = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    assert [int(v[0]) for v in backtest.transition_counts(hits)] == [3, 3, 3, 0]
    restricted = 6 * np.log(2 / 3) + 3 * np.log(1 / 3)                         # pi = 3 / 9
    unrestricted = 3 * np.log(0.5) + 3 * np.log(0.5) + 3 * np.log(1.0)        # pi0 = 1/2, pi1 = 0
    lr_ind, p_ind = backtest.christoffersen(hits)
    assert lr_ind[0] == pytest.approx(-2 * (restricted - unrestricted), rel=1e-12)
    assert lr_ind[0] == pytest.approx(3.139489, abs=1e-6) and p_ind[0] == pytest.approx(stats.chi2.sf(lr_ind[0], 1))
    # no days: undefined
    assert np.isnan(backtest.kupiec(0, 0, 0.99)[0])

"""etl.risk.anomalies: the robust z-score against scipy's MAD, and its MAD-zero and missing-value cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from etl.risk import anomalies

TOL = 1e-9


def test_robust_z_matches_scipy_mad(rets):
    window = 60
    z, how = anomalies.robust_z(rets, window)
    assert np.isnan(z[:window]).all()
    for t in (window, 150, 299):
        w = rets[t - window:t]
        med = np.median(w, axis=0)
        mad = stats.median_abs_deviation(w, axis=0, scale=1.0)
        np.testing.assert_allclose(z[t], 0.6745 * (rets[t] - med) / mad, rtol=TOL)
    assert set(how[window:].ravel()) == {"mad"}


def test_robust_z_mad_zero_and_missing_values():
    x = np.zeros((12, 3))
    x[:, 1] = [0, 0, 0, 0, 0, 0.01, 0, 0, 0, 0, 0, 0.05]  # MAD 0, meanAD > 0
    x[11, 2] = 0.02                                        # constant window, then a move
    x[5, 0] = np.nan                                       # a missing bar inside a window
    z, how = anomalies.robust_z(x, window=10, min_obs=5)
    meanad = np.mean(np.abs(x[1:11, 1]))            # the median of the window is 0
    assert z[11, 1] == pytest.approx(0.05 / (1.253314 * meanad), rel=TOL) and how[11, 1] == "meanad"
    assert z[11, 2] == np.inf and how[11, 2] == "none"
    assert z[10, 2] == 0.0
    assert z[11, 0] == 0.0 and not np.isnan(z[11, 0])                         # NaN skipped in the window
    assert np.isnan(anomalies.robust_z(x, window=10, min_obs=11)[0][11]).all()


def test_a_window_needs_at_least_half_of_its_returns_also_when_its_length_is_odd():
    """docs/risk_conventions.md "Anomalies": at least half the window must be present. Window 5: 2 valid returns
    (40%) are too few; 3 (60%) are enough. With window // 2 as the minimum, 2 of 5 scored: here a window whose one
    move is 0.01 and another 0.01 is constant, so a return of 0.02 was an infinite z (flagged), on 40% of a window."""
    x = np.full((6, 2), np.nan)
    x[[1, 3], 0] = 0.01                                   # 2 of the 5 previous returns
    x[[0, 1, 3], 1] = 0.01                                # 3 of 5
    x[5] = 0.02
    z, how = anomalies.robust_z(x, window=5)
    assert np.isnan(z[5, 0]) and how[5, 0] == ""
    assert z[5, 1] == np.inf and how[5, 1] == "none"
    z, _ = anomalies.robust_z(x[:, :1], window=4)         # even: 2 of 4 is half, enough
    assert z[5, 0] == np.inf

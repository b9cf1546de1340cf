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

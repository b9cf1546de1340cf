"""Robust z-scores of returns (pure numpy): z = 0.6745 (x - median) / MAD over the previous `window` returns.

The window is trailing and excludes the scored return, so a spike cannot hide itself by inflating the median or the
MAD. NaN returns (missing bars) are skipped inside the window; a window needs at least `min_obs` valid returns.
MAD = 0 (e.g. a flat illiquid window): fall back to the mean absolute deviation, z = (x - median) /
(1.253314 * meanAD); when that is 0 too, z = 0 for a return equal to the median and +-inf otherwise (any move off
a constant series is anomalous). The scale used is returned alongside ("mad", "meanad", "none").
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAD_CONSTANT = 0.6745
MEANAD_CONSTANT = 1.253314   # sqrt(pi / 2): meanAD of a normal is sigma * sqrt(2 / pi)


def robust_z(returns: np.ndarray, window: int, min_obs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(T, K) returns -> (z (T, K), scale method (T, K) str). z is NaN for the first `window` rows, for NaN
    returns and for windows with fewer than `min_obs` valid returns (default: half the window, rounded up)."""
    x = np.asarray(returns, dtype="float64")
    t, k = x.shape
    min_obs = -(-window // 2) if min_obs is None else min_obs        # at least half: 3 of 5, not 2
    z = np.full((t, k), np.nan)
    method = np.full((t, k), "", dtype=object)
    if t <= window:
        return z, method
    win = sliding_window_view(x, window, axis=0)[:-1]                 # (T-window, K, window): rows before t
    cur = x[window:]                                                  # (T-window, K)
    n = (~np.isnan(win)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        med = np.nanmedian(win, axis=-1)
        dev = np.abs(win - med[..., None])
        mad = np.nanmedian(dev, axis=-1)
        meanad = np.nanmean(dev, axis=-1)
        diff = cur - med
        z_mad = MAD_CONSTANT * diff / mad
        z_mean = diff / (MEANAD_CONSTANT * meanad)
        z_none = np.where(diff == 0, 0.0, np.sign(diff) * np.inf)
    out = np.where(mad > 0, z_mad, np.where(meanad > 0, z_mean, z_none))
    how = np.where(mad > 0, "mad", np.where(meanad > 0, "meanad", "none")).astype(object)
    ok = (n >= min_obs) & ~np.isnan(cur)
    z[window:] = np.where(ok, out, np.nan)
    method[window:] = np.where(ok, how, "")
    return z, method


class _quiet:
    """Silence numpy's 'All-NaN slice' RuntimeWarning for windows with no data (they end up NaN anyway)."""

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)

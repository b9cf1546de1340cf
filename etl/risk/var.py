"""Value at Risk and Expected Shortfall, 1 day, as positive loss amounts (pure numpy, batched).

- Historical: today's exposures x each of the last N daily asset returns -> N scenario losses (loss = -PnL);
  VaR = quantile of the losses at the confidence with numpy's default linear interpolation (virtual index
  (n-1) * q); ES = mean of the losses >= VaR.
- Parametric (delta-normal, zero mean): sigma_P = sqrt(e' C e) with C the sample covariance (ddof=1) of the same
  returns; VaR = z_q sigma_P; ES = sigma_P phi(z_q) / (1 - q).
- Monte Carlo: S seeded scenarios of asset returns, correlated normal or Student-t scaled to covariance C;
  VaR/ES from the scenario losses as for historical.
Loss windows may be padded with NaN (shorter history): NaNs are ignored, n counts the valid rows.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _sorted(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    xs = np.sort(np.moveaxis(np.asarray(x, dtype="float64"), axis, 0), axis=0)   # NaN sorts last
    return xs, (~np.isnan(xs)).sum(axis=0)


def _quantile_sorted(xs: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    h = (n - 1) * q                                                   # numpy's 'linear' virtual index
    lo = np.maximum(np.floor(h), 0).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    a = np.take_along_axis(xs, lo[None, ...], axis=0)[0]
    b = np.take_along_axis(xs, hi[None, ...], axis=0)[0]
    t = h - np.floor(h)
    diff = b - a
    val = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)        # numpy's _lerp, bit for bit
    return np.where(n > 0, val, np.nan)


def quantile_linear(x: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    """numpy's default ('linear') quantile along `axis`, ignoring NaN (n = number of valid values)."""
    xs, n = _sorted(x, axis)
    return _quantile_sorted(xs, n, q)


def var_es_from_losses(losses: np.ndarray, confidences: tuple[float, ...] | float,
                       axis: int = 0) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{confidence: (VaR, ES)} along `axis`: VaR = linear-interpolated quantile of the losses, ES = mean of the
    losses >= VaR (NaN ignored; one sort or partition shared by all confidences)."""
    x = np.moveaxis(np.asarray(losses, dtype="float64"), axis, 0)
    confs = [float(c) for c in np.atleast_1d(confidences)]
    if x.shape[0] and not np.isnan(x).any():
        return _var_es_full(x, confs)
    xs, n = _sorted(x, 0)
    out = {}
    for c in confs:
        var = _quantile_sorted(xs, n, c)
        tail = xs >= var[None, ...]                                   # NaN compares False
        with np.errstate(invalid="ignore", divide="ignore"):
            es = np.where(tail, xs, 0.0).sum(axis=0) / tail.sum(axis=0)
        out[c] = (var, es)
    return out


def _var_es_full(x: np.ndarray, confs: list[float]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """Windows without NaN: a partition at the two order statistics each confidence needs replaces the sort.
    After it, every row from `hi` on is >= VaR; rows before `hi` can only reach VaR by a tie, checked."""
    n = x.shape[0]
    bounds = {c: (int(np.floor((n - 1) * c)), min(int(np.floor((n - 1) * c)) + 1, n - 1)) for c in confs}
    xs = np.partition(x, sorted({k for pair in bounds.values() for k in pair}), axis=0)
    n_arr = np.full(x.shape[1:], n)
    out = {}
    for c, (lo, hi) in bounds.items():
        var = _quantile_sorted(xs, n_arr, c)
        exact = (n - 1) * c == np.floor((n - 1) * c)                 # VaR is the order statistic xs[lo] itself
        if exact:
            hi = lo
        count = np.full(x.shape[1:], float(n - hi))
        total = xs[hi:].sum(axis=0)
        # rows before hi are <= xs[lo] <= VaR, so they join the tail only on a tie with VaR (when not exact,
        # xs[lo] is their maximum; when exact, their maximum is not located, so always check)
        if hi > 0 and (exact or (xs[lo] >= var).any()):
            ties = xs[:hi] >= var[None, ...]
            count = count + ties.sum(axis=0)
            total = total + np.where(ties, xs[:hi], 0.0).sum(axis=0)
        out[c] = (var, total / count)
    return out


def historical_losses(returns_window: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Scenario losses of today's exposures. returns_window (..., N, A); exposure (..., A, P) -> (..., N, P)."""
    return -(returns_window @ exposure)


def covariance(returns_window: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof=1) over axis -2 ignoring rows with NaN. (..., N, A) -> (..., A, A)."""
    valid = ~np.isnan(returns_window).any(axis=-1, keepdims=True)    # (..., N, 1)
    n = valid.sum(axis=-2, keepdims=True)                             # (..., 1, 1)
    x = np.where(valid, returns_window, 0.0)
    mean = x.sum(axis=-2, keepdims=True) / n
    d = np.where(valid, x - mean, 0.0)
    return np.swapaxes(d, -1, -2) @ d / (n - 1)


def portfolio_sigma(cov: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """sqrt(e' C e) for each portfolio: cov (..., A, A), exposure (..., A, P) -> (..., P)."""
    quad = (exposure * (cov @ exposure)).sum(axis=-2)
    return np.sqrt(np.clip(quad, 0.0, None))


def parametric_var_es(sigma: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Delta-normal with zero mean: VaR = z sigma, ES = sigma phi(z) / (1 - confidence)."""
    z = stats.norm.ppf(confidence)
    return z * sigma, sigma * stats.norm.pdf(z) / (1.0 - confidence)


def cov_sqrt(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root L = V sqrt(W) V' (L L' = C) of a positive semi-definite C. From the
    eigen-decomposition, so a singular C (e.g. a zero-variance asset) is fine where Cholesky would fail; the
    trailing V' makes L unique, so the scenarios do not depend on the signs or rotation LAPACK picks for the
    eigenvectors (V sqrt(W) alone jumps under a 1e-18 change of C). (..., A, A) -> (..., A, A)."""
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(v, -1, -2)


def mc_draws(n_scenarios: int, n_assets: int, seed: int, distribution: str = "t",
             dof: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded standard normal draws Z (S, A) and per-scenario scale s (S,): asset returns are s * (Z @ L').
    Normal: s = 1. Student-t: s = sqrt((dof - 2) / W) with W ~ chi2(dof), so the covariance is exactly C."""
    if distribution not in ("normal", "t"):
        raise ValueError(f"RISK_MC_DISTRIBUTION={distribution!r}: expected 'normal' or 't'")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_scenarios, n_assets))
    if distribution == "normal":
        return z, np.ones(n_scenarios)
    if dof <= 2:
        raise ValueError(f"RISK_MC_T_DOF={dof}: Student-t needs more than 2 degrees of freedom for a covariance")
    return z, np.sqrt((dof - 2.0) / rng.chisquare(dof, n_scenarios))


def mc_losses(z: np.ndarray, scale: np.ndarray, cov: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Scenario losses: -(s * Z L') e = -s * Z (L' e). z (S, A); cov (A, A); exposure (A, P) -> (S, P)."""
    w = cov_sqrt(cov).T @ exposure                                   # (A, P)
    return -(scale[:, None] * (z @ w))


def mc_var_es_batched(z: np.ndarray, scale: np.ndarray, cov: np.ndarray, exposure: np.ndarray,
                      confidences: tuple[float, ...], max_cells: int = 20_000_000) -> dict[float, tuple]:
    """Monte Carlo VaR/ES for many days at once with common random numbers (the same seeded draws every day).
    cov (T, A, A), exposure (T, A, P). Days are processed in blocks of at most `max_cells` scenario losses
    (memory bound, not a per-day loop). Returns {confidence: (var (T, P), es (T, P))}."""
    w = np.swapaxes(cov_sqrt(cov), -1, -2) @ exposure                # (T, A, P)
    t, _, p = w.shape
    out = {float(c): (np.empty((t, p)), np.empty((t, p))) for c in confidences}
    block = max(1, max_cells // max(1, z.shape[0] * p))
    for start in range(0, t, block):
        wb = w[start:start + block]                                   # (B, A, P)
        losses = -(scale[:, None, None] * np.einsum("sa,bap->sbp", z, wb))   # (S, B, P)
        for c, (v, e) in var_es_from_losses(losses, confidences, axis=0).items():
            out[c][0][start:start + block] = v
            out[c][1][start:start + block] = e
    return out

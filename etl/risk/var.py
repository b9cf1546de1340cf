"""Value at Risk and Expected Shortfall, 1 day, as positive loss amounts (pure numpy, batched).

- Historical: today's exposures x each of the last N daily asset returns -> N scenario losses (loss = -PnL);
  VaR = quantile of the losses at the confidence with numpy's default linear interpolation (virtual index
  (n-1) * q); ES = mean of the losses >= VaR.
- Parametric (delta-normal, zero mean): sigma_P = sqrt(e' C e) with C the sample covariance (ddof=1) of the same
  returns; VaR = z_q sigma_P; ES = sigma_P phi(z_q) / (1 - q).
- Monte Carlo: S seeded scenarios of asset returns, correlated normal or Student-t scaled to covariance C;
  VaR/ES from the scenario losses as for historical. `mc_model_var_es` is the exact quantile of the distribution
  those scenarios sample (what the backtest scores; the scenario figures estimate it with Monte Carlo error).
VaR/ES of scenario losses: one partition at a single order statistic keeps the few largest losses
(`loss_tail`), and VaR and ES are read from those (`var_es_from_tail`); exact, ties included.
Loss windows may be padded with NaN (shorter history): NaNs are ignored, n counts the valid rows.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)        # numpy's _lerp, bit for bit


def tail_rows(n: int, confidence: float) -> int:
    """How many of the largest of n losses `var_es_from_tail` needs down to `confidence`: the ranks from one below
    the VaR's lower order statistic floor((n-1)c) up (the extra one shows whether ties continue below)."""
    return n - max(int(np.floor((n - 1) * confidence)) - 1, 0)


def loss_tail(losses: np.ndarray, k: int) -> np.ndarray:
    """The k largest losses along the last axis, ascending (..., k); a missing loss is -inf (sorts first, never
    reaches VaR). One partition, in place (each row keeps its values, reordered), at a single order statistic
    along the (contiguous) last axis, then a sort of the k kept."""
    n_all = losses.shape[-1]
    k = min(k, n_all)
    if k < n_all:
        losses.partition(n_all - k, axis=-1)
    return np.sort(losses[..., n_all - k:], axis=-1)


def var_es_from_tail(top: np.ndarray, n: np.ndarray, confidences: tuple[float, ...] | float,
                     losses: np.ndarray) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{confidence: (VaR, ES)} from top = `loss_tail(losses, k)`, k at least `tail_rows` of the lowest confidence,
    and n (...) the number of valid (not -inf) losses. The rank r (0 = smallest of the n valid losses) sits at top[..., r - n + k]. ES sums the kept
    losses >= VaR; where the smallest kept one ties with VaR (ties may continue below it) the whole row of
    `losses` (..., N) is counted instead."""
    k = top.shape[-1]
    out = {}
    for c in (float(c) for c in np.atleast_1d(confidences)):
        h = (n - 1) * c
        lo = np.maximum(np.floor(h), 0).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        a = np.take_along_axis(top, np.maximum(lo - n + k, 0)[..., None], axis=-1)[..., 0]
        b = np.take_along_axis(top, np.maximum(hi - n + k, 0)[..., None], axis=-1)[..., 0]
        var = np.where(n > 0, _lerp(a, b, h - np.floor(h)), np.nan)
        tail = top >= var[..., None]                                   # NaN compares False
        count = np.asarray(tail.sum(axis=-1))
        total = np.asarray(np.where(tail, top, 0.0).sum(axis=-1))
        more = tail[..., 0] & (n > k)
        if more.any():
            x = np.asarray(losses, dtype="float64")[more]
            ties = x >= var[more][:, None]
            count[more], total[more] = ties.sum(axis=-1), np.where(ties, x, 0.0).sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = (var, total / count)
    return out


def var_es_from_losses(losses: np.ndarray, confidences: tuple[float, ...] | float,
                       axis: int = 0) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{confidence: (VaR, ES)} along `axis`: VaR = linear-interpolated quantile of the losses, ES = mean of the
    losses >= VaR (NaN ignored; one partition shared by all confidences)."""
    x = np.array(np.moveaxis(np.asarray(losses, dtype="float64"), axis, -1), order="C")   # ours to partition
    confs = [float(c) for c in np.atleast_1d(confidences)]
    if x.shape[-1] == 0:
        return {c: (np.full(x.shape[:-1], np.nan), np.full(x.shape[:-1], np.nan)) for c in confs}
    valid = ~np.isnan(x)
    n = valid.sum(axis=-1)
    if not valid.all():
        x = np.where(valid, x, -np.inf)
    return var_es_from_tail(loss_tail(x, tail_rows(x.shape[-1], min(confs))), n, tuple(confs), x)


def quantile_linear(x: np.ndarray, q: float, axis: int = 0) -> np.ndarray:
    """numpy's default ('linear') quantile along `axis`, ignoring NaN (n = number of valid values)."""
    return var_es_from_losses(x, q, axis)[float(q)][0]


def historical_losses(returns_window: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Scenario losses of today's exposures. returns_window (..., N, A); exposure (..., A, P) -> (..., N, P)."""
    return -(returns_window @ exposure)


def exposed_losses(expo: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """Scenario losses (..., P, N) of exposures (..., P, A) to negated returns (..., A, N), summed asset by asset:
    the same bits for a portfolio whatever the others (a BLAS product's rounding varies with the batch at 1e-16,
    which the flat optimum of an ML fit magnifies)."""
    out = np.zeros((*expo.shape[:-1], neg_w.shape[-1]))
    for a in range(expo.shape[-1]):
        out += expo[..., a, None] * neg_w[..., None, a, :]
    return out


def covariance(returns_window: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof=1) over axis -2 ignoring rows with NaN. (..., N, A) -> (..., A, A)."""
    valid = ~np.isnan(returns_window).any(axis=-1, keepdims=True)    # (..., N, 1)
    n = valid.sum(axis=-2, keepdims=True)                             # (..., 1, 1)
    x = np.where(valid, returns_window, 0.0)
    mean = x.sum(axis=-2, keepdims=True) / n
    d = np.where(valid, x - mean, 0.0)
    return np.swapaxes(d, -1, -2) @ d / (n - 1)


def rolling_covariance(x: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """`covariance` of the windows of x (T, A) ending at each row of `ends` (F,), n rows long (rows before 0 and
    rows with NaN left out): (F, A, A) from running sums of the rows and of their outer products, (S2 - S1 S1' / k)
    / (k - 1) with k the window's valid rows, instead of one product per window (one pass over T, not F x N).
    Equal to the two-pass formula to rounding: the sums' relative error is about eps T / n."""
    valid = ~np.isnan(x).any(axis=1)
    x0 = np.where(valid[:, None], x, 0.0)
    c1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x0, axis=0)])
    c2 = np.concatenate([np.zeros((1, x.shape[1], x.shape[1])), np.cumsum(x0[:, :, None] * x0[:, None, :], axis=0)])
    cn = np.r_[0, np.cumsum(valid)]
    hi = np.asarray(ends) + 1
    lo = np.maximum(hi - n, 0)
    k = (cn[hi] - cn[lo]).astype("float64")[:, None, None]
    s1 = c1[hi] - c1[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (c2[hi] - c2[lo] - s1[:, :, None] * s1[:, None, :] / k) / (k - 1)


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
    out = z @ -(cov_sqrt(cov).T @ exposure)                          # the sign on the small (A, P) factor
    out *= scale[:, None]                                            # in place: no (S, P) temporaries
    return out


def mc_model_var_es(sigma: np.ndarray, confidence: float, distribution: str = "t",
                    dof: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """The exact VaR/ES of the distribution the Monte Carlo scenarios sample: the loss is sigma x s x N(0, 1) =
    sigma x sqrt((dof-2)/dof) x t(dof) for Student-t (normal: sigma x N(0, 1), the parametric figures), sigma =
    sqrt(e' C e). t quantile q: VaR = k sigma q, ES = k sigma f(q) (dof + q^2) / ((dof - 1)(1 - c)), k =
    sqrt((dof-2)/dof). The scenario figures (`mc_losses`) estimate these with Monte Carlo error."""
    if distribution == "normal":
        return parametric_var_es(sigma, confidence)
    k = np.sqrt((dof - 2.0) / dof)
    q = stats.t.ppf(confidence, dof)
    return k * q * sigma, k * sigma * stats.t.pdf(q, dof) * (dof + q * q) / ((dof - 1.0) * (1.0 - confidence))

"""Expected Shortfall backtests (pure numpy; one column per series, e.g. portfolio x method x confidence).

Losses L_t = -realised PnL, forecasts VaR_t and ES_t (positive losses, made at the previous close), tail
probability alpha = 1 - confidence, exceedance I_t = 1{L_t > VaR_t}. Days where `valid` is False (no book, no
forecast) are left out; T counts the valid days of each series.
- Acerbi-Szekely (2014) Z2, "testing ES directly": Z2 = 1 - sum_t L_t I_t / (T alpha ES_t) (their
  sum X_t I_t / (T alpha ES_t) + 1 with X = -L). E[Z2] = 0 when the model is right, negative when ES is too small.
  p-value = P(Z2 <= observed) under the model, by simulation: M seeded paths of losses drawn from each day's
  predictive distribution (the caller's sampler), scored against the same forecasts, p = (1 + #{Z2* <= Z2}) / (M+1).
- McNeil-Frey (2000) exceedance residuals: on exceedance days r_t = (L_t - ES_t) / sigma_t with sigma_t the
  model's predictive loss standard deviation. H0: E[r] = 0 against E[r] > 0 (ES too small), by the bootstrap
  test of a zero mean they use (Efron-Tibshirani): t = mean(r) / (sd(r) / sqrt(k)), the residuals recentred to
  mean 0 resampled B times (seeded), p = (1 + #{t* >= t}) / (B + 1). Fewer than 2 exceedances: no test (NaN).
"""

from __future__ import annotations

import numpy as np


def z2_stat(losses: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float,
            valid: np.ndarray | None = None) -> np.ndarray:
    """Z2 along axis -2 (days): arrays (..., T, K) -> (..., K). NaN for a series without valid days."""
    losses = np.asarray(losses, dtype="float64")
    if valid is None:
        valid = np.ones(losses.shape[-2:], dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = valid & (losses > var)
        n = valid.sum(axis=-2)
        term = np.where(hit, losses / np.where(hit, es, 1.0), 0.0).sum(axis=-2)
        return np.where(n > 0, 1.0 - term / (np.where(n > 0, n, 1) * alpha), np.nan)


def z2_test(losses: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float, simulated: np.ndarray,
            valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Z2 (K,), p-value (K,)); simulated (M, T, K) losses drawn from the model's predictive distributions."""
    z = z2_stat(losses, var, es, alpha, valid)
    zs = z2_stat(simulated, var[None], es[None], alpha, valid)       # (M, K)
    p = (1.0 + (zs <= z[None, :]).sum(axis=0)) / (zs.shape[0] + 1.0)
    return z, np.where(np.isnan(z), np.nan, p)


def exceedance_residuals(losses: np.ndarray, var: np.ndarray, es: np.ndarray, sd: np.ndarray,
                         valid: np.ndarray | None = None) -> list[np.ndarray]:
    """Per series k, the residuals (L_t - ES_t) / sigma_t of its exceedance days (arrays (T, K))."""
    losses = np.asarray(losses, dtype="float64")
    if valid is None:
        valid = np.ones(losses.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = valid & (losses > var) & (sd > 0)
        res = (losses - es) / np.where(sd > 0, sd, 1.0)
    return [res[hit[:, k], k] for k in range(losses.shape[1])]


def mean_zero_bootstrap(residuals: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """(t statistic, one-sided bootstrap p-value of H0 mean 0 vs mean > 0); NaN with fewer than 2 residuals."""
    r = np.asarray(residuals, dtype="float64")
    k = len(r)
    if k < 2:
        return float("nan"), float("nan")
    sd = r.std(ddof=1)
    if sd == 0:
        return float("nan"), float("nan")
    t = r.mean() / (sd / np.sqrt(k))
    centred = r - r.mean()
    b = centred[rng.integers(0, k, size=(n_boot, k))]
    with np.errstate(invalid="ignore", divide="ignore"):
        tb = b.mean(axis=1) / (b.std(axis=1, ddof=1) / np.sqrt(k))
    tb = np.where(np.isnan(tb), 0.0, tb)                              # a resample of one repeated value: t* = 0
    return float(t), float((1.0 + (tb >= t).sum()) / (n_boot + 1.0))


def exceedance_residual_test(losses: np.ndarray, var: np.ndarray, es: np.ndarray, sd: np.ndarray,
                             n_boot: int, seed: int, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """McNeil-Frey for each column: n_exceedances, mean residual, t statistic, bootstrap p-value (K,)."""
    rng = np.random.default_rng(seed)
    res = exceedance_residuals(losses, var, es, sd, valid)
    stats = [mean_zero_bootstrap(r, n_boot, rng) for r in res]
    return {"n": np.array([len(r) for r in res]),
            "mean": np.array([r.mean() if len(r) else np.nan for r in res]),
            "t": np.array([s[0] for s in stats]), "p": np.array([s[1] for s in stats])}

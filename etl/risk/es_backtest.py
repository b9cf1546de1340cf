"""Expected Shortfall backtests (pure numpy; one column per series, e.g. portfolio x method x confidence).

Losses L_t = -realised PnL, forecasts VaR_t and ES_t (positive losses, made at the previous close), tail
probability alpha = 1 - confidence, exceedance I_t = 1{L_t > VaR_t}. Days where `valid` is False (no book, no
forecast) are left out; T counts the valid days of each series.
- Acerbi-Szekely (2014) Z2, "testing ES directly": Z2 = 1 - sum_t L_t I_t / (T alpha ES_t) (their
  sum X_t I_t / (T alpha ES_t) + 1 with X = -L). E[Z2] = 0 when the model is right, negative when ES is too small.
  The ratio needs ES_t > 0: against a negative ES (a window of gains only: the model's tail is a gain) a
  realised loss would score negative and raise Z2 above 1, the best score, and against ES = 0 it is infinite
  whatever its size. So an exceedance on a day whose ES forecast is <= 0 makes Z2 NaN (untestable, not a
  pass); a simulated path with one is not counted as at least as extreme (the p-value errs towards rejecting).
  p-value = P(Z2 <= observed) under the model, by simulation: M seeded paths of losses drawn from each day's
  predictive distribution (the caller's sampler), scored against the same forecasts, p = (1 + #{Z2* <= Z2}) / (M+1).
  The paths are drawn once per model and level and shared by every series: for a location-scale model as
  standardised innovations (`z2_null_scaled`), for scenario models as ranks among the day's scenarios, of which
  only those in the tail can exceed VaR (`z2_null_drawn`).
- McNeil-Frey (2000) exceedance residuals: on exceedance days r_t = (L_t - ES_t) / sigma_t with sigma_t the
  model's predictive loss standard deviation. H0: E[r] = 0 against E[r] > 0 (ES too small), by the bootstrap
  test of a zero mean they use (Efron-Tibshirani): t = mean(r) / (sd(r) / sqrt(k)), the residuals recentred to
  mean 0 resampled B times (seeded; the series with the same number of exceedances share the resampling
  indices), p = (1 + #{t* >= t}) / (B + 1). Fewer than 2 exceedances: no test (NaN).
"""

from __future__ import annotations

import functools

import numpy as np


def exceedance_ratio(losses: np.ndarray, es: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """L / ES where hit (an exceedance on a valid day), 0 elsewhere; NaN where ES <= 0 (see the module doc)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hit, np.where(es > 0, losses / np.where(es > 0, es, 1.0), np.nan), 0.0)


def z2_from_sums(term: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Z2 = 1 - sum_t L_t I_t / ES_t / (T alpha) from the sums (..., K) and T (K,); NaN where T = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, 1.0 - term / (np.where(n > 0, n, 1) * alpha), np.nan)


def z2_stat(losses: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float,
            valid: np.ndarray | None = None) -> np.ndarray:
    """Z2 along axis -2 (days): arrays (..., T, K) -> (..., K). NaN for a series without valid days."""
    losses = np.asarray(losses, dtype="float64")
    if valid is None:
        valid = np.ones(losses.shape[-2:], dtype=bool)
    with np.errstate(invalid="ignore"):
        hit = valid & (losses > var)
    return z2_from_sums(exceedance_ratio(losses, es, hit).sum(axis=-2), valid.sum(axis=-2), alpha)


def z2_p_value(z: np.ndarray, z_null: np.ndarray) -> np.ndarray:
    """P(Z2* <= Z2) = (1 + #{Z2* <= Z2}) / (M + 1): z (K,), z_null (M, K) simulated under the model."""
    p = (1.0 + (z_null <= z[None, :]).sum(axis=0)) / (z_null.shape[0] + 1.0)
    return np.where(np.isnan(z), np.nan, p)


def z2_test(losses: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float, simulated: np.ndarray,
            valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Z2 (K,), p-value (K,)); simulated (M, T, K) losses drawn from the model's predictive distributions."""
    z = z2_stat(losses, var, es, alpha, valid)
    return z, z2_p_value(z, z2_stat(simulated, var[None], es[None], alpha, valid))


def z2_null_scaled(u: np.ndarray, var_unit: float, es_unit: float, alpha: float, valid: np.ndarray,
                   sigma: np.ndarray) -> np.ndarray:
    """Z2* (M, K) of a location-scale model: the day's loss is sigma_t u, u (M, T) draws of its standardised
    innovation shared by every series, VaR_t = var_unit sigma_t, ES_t = es_unit sigma_t. Then L I / ES =
    u 1{u > var_unit} / es_unit whatever sigma_t, so the sums are one product (M, T) @ (T, K) over each series'
    valid days with sigma_t > 0 (a zero sigma has no exceedance)."""
    x = np.where(u > var_unit, u / es_unit, 0.0)
    return z2_from_sums(x @ (valid & (sigma > 0)).astype("float64"), valid.sum(axis=0), alpha)


def z2_null_drawn(draws, tail: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float,
                  valid: np.ndarray) -> np.ndarray:
    """Z2* (M, K) of a scenario model: path m draws on day t one of the day's scenario losses; only the day's k
    largest, tail (T, K, k), can exceed VaR, so `draws` is the sparse (M, T x k) count of the paths' draws among
    them (scipy.sparse; every other draw adds 0). var, es, valid (T, K)."""
    with np.errstate(invalid="ignore"):
        hit = valid[..., None] & (tail > var[..., None])
    term = exceedance_ratio(tail, es[..., None], hit)                             # (T, K, k)
    t, k_series, k = tail.shape
    sums = draws @ np.swapaxes(term, 1, 2).reshape(t * k, k_series)
    return z2_from_sums(np.asarray(sums), valid.sum(axis=0), alpha)


def _residual_matrix(losses: np.ndarray, var: np.ndarray, es: np.ndarray, sd: np.ndarray,
                     valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (L_t - ES_t) / sigma_t (T, K) and the exceedance days (T, K) where they count."""
    losses = np.asarray(losses, dtype="float64")
    if valid is None:
        valid = np.ones(losses.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = valid & (losses > var) & (sd > 0)
        res = (losses - es) / np.where(sd > 0, sd, 1.0)
    return res, hit


def exceedance_residuals(losses: np.ndarray, var: np.ndarray, es: np.ndarray, sd: np.ndarray,
                         valid: np.ndarray | None = None) -> list[np.ndarray]:
    """Per series k, the residuals (L_t - ES_t) / sigma_t of its exceedance days (arrays (T, K))."""
    res, hit = _residual_matrix(losses, var, es, sd, valid)
    return [res[hit[:, k], k] for k in range(res.shape[1])]


def _resample_counts(idx: np.ndarray) -> np.ndarray:
    """How often each of k indices is in each of B resamples idx (B, k): (k, B), read-only."""
    b_count, k = idx.shape
    counts = np.bincount((idx + k * np.arange(b_count)[:, None]).ravel(), minlength=k * b_count)
    counts = np.ascontiguousarray(counts.reshape(b_count, k).T, dtype="float64")
    counts.flags.writeable = False
    return counts


@functools.lru_cache(maxsize=256)
def _seeded_counts(seed: int, k: int, n_boot: int) -> np.ndarray:
    """The resample counts of the series with k exceedances, seeded by (seed, k): drawn once per process (every
    chunk of portfolios and every method share them)."""
    return _resample_counts(np.random.default_rng((seed, k)).integers(0, k, size=(n_boot, k)))


def _bootstrap_rows(r: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, p) of each row of r (R, k), every row resampled with the same resamples, given as the count of each
    index in each of them (k, B); NaN for sd = 0. A resample's sums are products with those counts; a resample of
    one repeated index has sd 0 (t* = +-inf, or 0 for a zero residual, as a direct computation gives)."""
    k, b_count = counts.shape
    mean = r.mean(axis=1)
    sd = r.std(axis=1, ddof=1)
    centred = r - mean[:, None]
    s1, s2 = centred @ counts, (centred * centred) @ counts           # (R, B)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(k)), np.nan)
        sd_b = np.sqrt(np.clip(s2 - s1 * s1 / k, 0.0, None) / (k - 1))
        sd_b[:, counts.max(axis=0) == k] = 0.0
        tb = (s1 / k) / (sd_b / np.sqrt(k))
    tb = np.where(np.isnan(tb), 0.0, tb)
    p = (1.0 + (tb >= t[:, None]).sum(axis=1)) / (b_count + 1.0)
    return t, np.where(np.isnan(t), np.nan, p)


def mean_zero_bootstrap(residuals: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """(t statistic, one-sided bootstrap p-value of H0 mean 0 vs mean > 0); NaN with fewer than 2 residuals."""
    r = np.asarray(residuals, dtype="float64")
    k = len(r)
    if k < 2:
        return float("nan"), float("nan")
    t, p = _bootstrap_rows(r[None, :], _resample_counts(rng.integers(0, k, size=(n_boot, k))))
    return float(t[0]), float(p[0])


def exceedance_residual_test(losses: np.ndarray, var: np.ndarray, es: np.ndarray, sd: np.ndarray,
                             n_boot: int, seed: int, valid: np.ndarray | None = None,
                             max_cells: int = 4_000_000) -> dict[str, np.ndarray]:
    """McNeil-Frey for each column: n_exceedances, mean residual, t statistic, bootstrap p-value (K,). The series
    with the same number of exceedances k share one draw of resampling indices (B, k), seeded by (seed, k) so a
    series' p-value does not depend on the others, all tested at once (in blocks of `max_cells` resample sums)."""
    res, hit = _residual_matrix(losses, var, es, sd, valid)
    n = hit.sum(axis=0)
    out = {"n": n, "mean": np.where(n > 0, np.where(hit, res, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan),
           "t": np.full(len(n), np.nan), "p": np.full(len(n), np.nan)}
    for k in np.unique(n[n >= 2]):
        cols = np.flatnonzero(n == k)
        r = res.T[cols][hit.T[cols]].reshape(len(cols), k)            # each series' residuals in day order
        counts = _seeded_counts(int(seed), int(k), int(n_boot))
        step = max(1, max_cells // n_boot)
        for i in range(0, len(cols), step):
            out["t"][cols[i:i + step]], out["p"][cols[i:i + step]] = _bootstrap_rows(r[i:i + step], counts)
    return out

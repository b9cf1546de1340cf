"""Rolling OLS over trailing windows, vectorised: windowed sums of X'X and X'y, then one batched solve.

Same numbers as statsmodels `RollingOLS(y, add_constant(X), window, missing="drop").fit()` (its default), at a
small fraction of the time:

- Rows where y or any regressor is NaN/inf are masked out and each window counts its own observations (statsmodels
  `missing="drop"`). A window with fewer than `min_obs` observations gives NaN everywhere but `n_obs`.
- The window at row i covers rows i-window+1 .. i. Like statsmodels, rows before the first full window are NaN
  unless `expanding=True` (then they use rows 0 .. i).
- Cross-products come from prefix sums that restart every `window` rows ("blocked"): a window sum is a prefix of
  its own block plus a suffix of the previous block, so rounding error stays at the scale of one window instead of
  growing with the whole series. Columns are shifted by their first complete row first (causal, unlike a sample
  mean), and with a constant the slopes are solved from per-window centred (co)variances, which keeps the systems
  well conditioned.
- The k x k systems are solved together with a Cholesky factorisation written across the window axis (a loop over
  the k columns, never over windows). Its pivots measure how much of each regressor is left outside the span of
  the others; windows where that is below RANK_TOL (collinear or constant regressors) are solved instead with a
  pseudo-inverse of the correlation matrix: the minimum-norm least-squares solution (in standardised units), whose
  fitted values, R-squared and residuals are the unique least-squares ones. Such windows never raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A regressor whose variance outside the span of the previous ones is below this fraction of its own variance makes
# the window rank-deficient (condition number of the correlation matrix beyond ~1e10).
RANK_TOL = 1e-10


@dataclass(frozen=True)
class RollingOLSResult:
    """One row per input row; NaN where the window had too few observations (n_obs is always the count)."""

    params: np.ndarray          # (n, k + 1) with the constant first when add_constant, else (n, k)
    r_squared: np.ndarray       # (n,) centred R-squared with a constant, uncentred without (as statsmodels)
    r_squared_adj: np.ndarray   # (n,)
    n_obs: np.ndarray           # (n,) int: rows without NaN in the window
    rank_deficient: np.ndarray  # (n,) bool: solved by the pseudo-inverse fallback

    @property
    def const(self) -> np.ndarray:
        return self.params[:, 0]

    @property
    def betas(self) -> np.ndarray:
        return self.params[:, 1:]


def rolling_ols(y: np.ndarray, X: np.ndarray, window: int, min_obs: int | None = None,
                add_constant: bool = True, expanding: bool = False) -> RollingOLSResult:
    """OLS of y on X (plus a constant) over each trailing window of `window` rows.

    min_obs defaults to the number of parameters (statsmodels' `min_nobs` default).
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if y.ndim != 1 or X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"rolling_ols: y must be (n,) and X (n, k) with the same n; got {y.shape} and {X.shape}")
    n, k = X.shape
    n_params = k + int(add_constant)
    min_obs = n_params if min_obs is None else int(min_obs)
    if window < 1 or min_obs < 1 or min_obs > window:
        raise ValueError(f"rolling_ols: need 1 <= min_obs ({min_obs}) <= window ({window}); "
                         "lower min_obs or widen the window")

    valid = np.isfinite(y) & np.isfinite(X).all(axis=1)
    m = k + 1
    n_tri = m * (m + 1) // 2
    # One buffer, feature-major so every operation runs over contiguous memory, padded to whole windows:
    # row 0 counts observations, rows 1..m hold [X, y] and the rest the products of their pairs (i <= j).
    blocks = -(-n // window)
    buf = np.zeros((1 + m + n_tri, blocks * window))
    buf[0, :n] = valid
    Z = buf[1: 1 + m, :n]
    Z[:k] = X.T
    Z[k] = y
    Z[:, ~valid] = 0.0
    shift = np.zeros(m)
    if add_constant and valid.any():
        # Shift by the first complete row: smaller numbers, smaller rounding in the sums. Only that row, not a sample
        # mean, so a result never depends on rows after its window (shuffling the future leaves the past bit-equal).
        shift = Z[:, np.argmax(valid)].copy()
        Z -= shift[:, None]
        Z[:, ~valid] = 0.0
    _upper_products(buf[1: 1 + m], out=buf[1 + m:])
    sums = _window_sums(buf, window)[:, :n]
    count, sums, cross = sums[0], sums[1: 1 + m], sums[1 + m:]

    n_obs = np.rint(count).astype(np.int64)
    ok = n_obs >= min_obs
    if not expanding:
        ok[: window - 1] = False
    cnt = np.where(ok, count, np.nan)
    # Row i of the packed triangle holds moments (i, i..m-1): the regressors' block, then the one with y.
    first = np.concatenate([[0], np.cumsum(np.arange(m, 0, -1))])
    raw_diag = cross[first[:k]].copy()
    if add_constant:  # centre the moments per window: sum((a - mean_a)(b - mean_b)) = S_ab - S_a S_b / n
        mean = sums / cnt
        for i in range(m):
            cross[first[i]: first[i + 1]] -= mean[i] * sums[i:]
        # A regressor constant over the window has only rounding noise left after centring: call it zero.
        flat = cross[first[:k]] <= RANK_TOL * raw_diag
        cross[first[:k]] = np.where(flat, 0.0, cross[first[:k]])
    rows = [cross[first[i]: first[i] + k - i] for i in range(k)]
    Sxy = cross[first[:k] + (k - np.arange(k))]
    Syy = cross[-1]

    beta, deficient = _solve_spd(rows, Sxy, ok)
    ssr = Syy - np.einsum("in,in->n", beta, Sxy)
    tss = Syy
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(tss > 0, 1.0 - ssr / tss, np.nan)
        df_resid = cnt - n_params  # adjusted R-squared is undefined without residual degrees of freedom
        r2_adj = np.where(df_resid > 0, 1.0 - (cnt - int(add_constant)) / df_resid * (1.0 - r2), np.nan)

    params = np.full((n, n_params), np.nan)
    if add_constant:
        params[:, 0] = (mean[k] + shift[k]) - np.einsum("in,in->n", beta, mean[:k] + shift[:k, None])
        params[:, 1:] = beta.T
    else:
        params[:] = beta.T
    params[~ok] = np.nan
    r2[~ok] = np.nan
    r2_adj[~ok] = np.nan
    return RollingOLSResult(params=params, r_squared=r2, r_squared_adj=r2_adj, n_obs=n_obs,
                            rank_deficient=deficient & ok)


def _upper_products(Z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row-wise products Z[i] * Z[j] for i <= j, in np.triu_indices order, into out (m (m + 1) / 2, n)."""
    m = Z.shape[0]
    at = 0
    for i in range(m):
        np.multiply(Z[i], Z[i:], out=out[at: at + m - i])
        at += m - i
    return out


def _window_sums(P: np.ndarray, window: int) -> np.ndarray:
    """In place: P[:, i] becomes the sum of P[:, i-window+1 .. i] (fewer terms at the start). P.shape[1] must be a
    multiple of `window` (zero-padded).

    With P the prefix sum inside each block of `window` columns, the window ending at offset o of block b is
    P[b, o] + (total of block b-1 - P[b-1, o]): both terms are partial sums of at most one window, so rounding
    error stays at the scale of one window however long the series.
    """
    rows, total = P.shape
    blocks = total // window
    B = P.reshape(rows, blocks, window)
    np.cumsum(B, axis=2, out=B)
    if blocks > 1:
        previous = B[:, :-1, -1:] - B[:, :-1, :]
        B[:, 1:, :] += previous
    return P


def _solve_spd(rows: list[np.ndarray], b: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve A_t x_t = b_t for every window t, A_t symmetric positive semi-definite (k x k).

    `rows[i]` holds A[i, i:k] across windows, shape (k - i, n); b is (k, n). Returns x (k, n) and a flag per
    window for the rank-deficient ones (solved with a pseudo-inverse instead).
    """
    k, n = b.shape
    diag = np.stack([row[0] for row in rows])
    deficient = ~(diag > 0).all(axis=0) | ~np.isfinite(b).all(axis=0)
    # A Cholesky pivot over the diagonal entry is the share of that regressor's variance left outside the span of
    # the previous ones (1 - R-squared of regressor j on regressors < j).
    L = np.empty((k, k, n))  # only L[i, j] for i >= j is ever written or read
    for j in range(k):
        pivot = rows[j][0] - np.einsum("ln,ln->n", L[j, :j], L[j, :j])
        good = pivot > RANK_TOL * diag[j]
        deficient |= ~good
        root = np.sqrt(np.where(good, pivot, 1.0))
        L[j, j] = root
        if j + 1 < k:
            L[j + 1:, j] = (rows[j][1:] - np.einsum("iln,ln->in", L[j + 1:, :j], L[j, :j])) / root
    # Forward then back substitution: L z = r, L' x = z.
    z = np.empty((k, n))
    for i in range(k):
        z[i] = (b[i] - np.einsum("ln,ln->n", L[i, :i], z[:i])) / L[i, i]
    x = np.empty((k, n))
    for i in reversed(range(k)):
        x[i] = (z[i] - np.einsum("ln,ln->n", L[i + 1:, i], x[i + 1:])) / L[i, i]

    redo = np.flatnonzero(deficient & ok)
    if redo.size:  # pseudo-inverse of the correlation matrix on just these windows
        d = diag[:, redo]
        scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
        corr = np.zeros((redo.size, k, k))
        for i in range(k):
            part = (rows[i][:, redo] * scale[i] * scale[i:]).T
            corr[:, i, i:] = part
            corr[:, i:, i] = part
        rhs = (b[:, redo] * scale).T
        solved = np.einsum("tij,tj->ti", np.linalg.pinv(np.nan_to_num(corr), rtol=RANK_TOL, hermitian=True),
                           np.nan_to_num(rhs))
        x[:, redo] = solved.T * scale
    return x, deficient

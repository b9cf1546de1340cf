"""Volatility-filtered historical simulation (FHS): EWMA and GARCH(1,1)-t conditional volatilities per asset.

Time runs down axis 0, one column per asset; `r` (T, A) are daily simple returns. Each filter returns the
one-step-ahead volatility forecasts `sigma` (T+1, A): sigma[t] is the forecast for return row t made from rows
< t, and sigma[T] the forecast for the day after the last row (tomorrow's, at the as-of close).
FHS scenarios (`fhs_window`): the standardised residuals u_t = r_t / sigma_t of the last N rows, each row a whole
historical day (so the cross-section of the assets on that day, their co-movement, is kept), rescaled per asset to
the forecast volatility: r*_{s,a} = u_{s,a} x sigma_{next,a}. The portfolio's VaR/ES are then those of historical
simulation on r* (`etl.risk.var.var_es_from_losses`).

- EWMA: sigma^2_{t+1} = lambda sigma^2_t + (1 - lambda) r_t^2, seeded with the mean of the first `seed_rows`
  squared returns (the seed's look-ahead touches only those first rows, before any forecast the backtest scores).
- GARCH(1,1), zero mean, Student-t innovations, fitted with `arch` on 100 x r (arch's preferred scale): sigma^2_t =
  omega + alpha r_{t-1}^2 + beta sigma^2_{t-1}, the lagged r^2 and sigma^2 of row 0 both arch's backcast b
  (exponentially weighted mean, 0.94^i, of the first 75 squared returns): sigma^2_0 = omega + (alpha + beta) b. The recursion is ours, vectorised across assets, and equals arch's
  conditional_volatility and forecast(horizon=1) to rounding. Speed: the fits give SciPy the exact Jacobian of
  arch's linear parameter constraints (SLSQP otherwise differentiates them numerically: half of each fit, same
  optimum); they are warm-started (from an earlier fit of the same asset, or from the cross-sectional median of
  a few cold fits), which skips arch's starting-value grid search and shortens the optimisation; and they can
  be spread over `workers` processes (1 = in this process).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy import signal

SCALE = 100.0              # arch fits returns in percent
MIN_VARIANCE = 1e-16       # an asset whose returns are all (about) zero, e.g. the base currency itself
SEED_ROWS = 20


def ewma_sigma(r: np.ndarray, lam: float, seed_rows: int = SEED_ROWS) -> np.ndarray:
    """RiskMetrics one-step-ahead volatilities (T, A) -> (T+1, A), via one linear filter along time."""
    r = np.asarray(r, dtype="float64")
    seed = np.mean(r[:seed_rows] ** 2, axis=0)
    x = np.vstack([seed[None, :], (1.0 - lam) * r**2])              # sigma^2_0 = seed, then the innovations
    return np.sqrt(signal.lfilter([1.0], [1.0, -lam], x, axis=0))


@dataclass(frozen=True)
class GarchFit:
    params: np.ndarray        # (A, 4): omega, alpha, beta, nu (omega in percent^2)
    sigma: np.ndarray         # (T+1, A) one-step-ahead volatilities of the returns (fractions)
    converged: np.ndarray     # (A,) bool; False also for a zero-variance asset (sigma 0, no fit)


def _model(x: np.ndarray):
    from arch import arch_model

    return arch_model(x, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)


def _linear_constraints(a: np.ndarray, b: np.ndarray) -> list[dict]:
    """arch's inequality constraints a @ params - b >= 0 with their exact Jacobian `a`: SciPy's SLSQP would
    otherwise differentiate these linear functions numerically, about half of each fit's time (same optimum)."""
    return [{"type": "ineq", "fun": (lambda p, *_, c=a[i].copy(), v=float(b[i]): c @ p - v),
             "jac": (lambda p, *_, c=a[i].copy(): c)} for i in range(a.shape[0])]


@contextmanager
def _exact_constraint_jacobians():
    from arch.univariate import base

    original = base.constraint
    base.constraint = _linear_constraints
    try:
        yield
    finally:
        base.constraint = original


def _fit_one(x: np.ndarray, start: np.ndarray | None) -> tuple[np.ndarray, bool]:
    model = _model(x)
    if start is not None:
        # arch grid-searches volatility starting values even when given some (a fifth of a warm fit) and then
        # ignores the result (an invalid start is still where it starts; the t bounds are constants): skipped.
        model.volatility.starting_values = lambda resids: np.asarray(start[:3], dtype="float64")
    with warnings.catch_warnings(), _exact_constraint_jacobians():
        warnings.simplefilter("ignore")                             # arch's convergence/starting-value notes
        res = model.fit(disp="off", starting_values=start, show_warning=False)
    return np.asarray(res.params, dtype="float64"), res.optimization_result.success


def _fit_chunk(args: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    xs, starts = args                                               # (T, k) returns, (k, 4) starts (NaN: none)
    return [_fit_one(xs[:, i], None if np.isnan(starts[i]).any() else starts[i]) for i in range(xs.shape[1])]


def garch_filter(r: np.ndarray, params: np.ndarray) -> np.ndarray:
    """sigma (T+1, A) of fractional returns r (T, A) under GARCH(1,1) params (A, 4) fitted on 100 x r."""
    x = np.asarray(r, dtype="float64") * SCALE
    t, a = x.shape
    tau = min(75, t)
    w = 0.94 ** np.arange(tau)
    s2 = np.empty((t + 1, a))
    omega, alpha, beta = params[:, 0], params[:, 1], params[:, 2]
    backcast = (w / w.sum()) @ (x[:tau] ** 2)                       # arch's GARCH backcast
    s2[0] = omega + (alpha + beta) * backcast                      # lagged r^2 and sigma^2 both = backcast
    for i in range(t):                                              # T steps, each vectorised across assets
        s2[i + 1] = omega + alpha * x[i] ** 2 + beta * s2[i]
    return np.sqrt(s2) / SCALE


def fit_garch_t(r: np.ndarray, workers: int = 1, warm_start: bool = True, pilot: int = 3,
                fit_rows: int | None = None, start: np.ndarray | None = None) -> GarchFit:
    """GARCH(1,1)-t per column of r (T, A): arch fits on the first `fit_rows` rows (None: all), our filter over
    all rows. Starting values: `start` (A, 4) where given (e.g. yesterday's or an earlier window's fit), else the
    pooled median of `pilot` cold fits when warm_start, else arch's own grid search."""
    r = np.asarray(r, dtype="float64")
    a = r.shape[1]
    x_all = r[:fit_rows] * SCALE
    live = np.flatnonzero(x_all.var(axis=0) > MIN_VARIANCE * SCALE**2)
    params = np.full((a, 4), np.nan)
    ok = np.zeros(a, dtype=bool)
    x = x_all[:, live]
    starts = np.full((len(live), 4), np.nan) if start is None else np.asarray(start, dtype="float64")[live].copy()
    done: dict[int, tuple[np.ndarray, bool]] = {}
    cold = np.flatnonzero(np.isnan(starts).any(axis=1))
    if warm_start and len(cold) > pilot:
        # a pooled starting point: the median of a few cold fits spread over the cross-section by volatility
        order = cold[np.argsort(x[:, cold].var(axis=0))]
        pick = order[np.linspace(0, len(order) - 1, pilot).round().astype(int)]
        for i in pick:
            done[int(i)] = _fit_one(x[:, i], None)
        starts[cold] = np.median(np.vstack([done[int(i)][0] for i in pick]), axis=0)
    todo = np.asarray([i for i in range(len(live)) if i not in done], dtype=np.int64)
    if len(todo):
        chunks = [c for c in np.array_split(todo, max(1, min(workers, len(todo)))) if len(c)]
        jobs = [(x[:, c], starts[c]) for c in chunks]
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=len(chunks)) as pool:
                results = list(pool.map(_fit_chunk, jobs))
        else:
            results = [_fit_chunk(j) for j in jobs]
        for c, res in zip(chunks, results, strict=True):
            done.update({int(i): v for i, v in zip(c, res, strict=True)})
    for i, col in enumerate(live):
        params[col], ok[col] = done[i]
    sigma = np.zeros((r.shape[0] + 1, a))
    if len(live):
        sigma[:, live] = garch_filter(r[:, live], params[live])
    return GarchFit(params=params, sigma=sigma, converged=ok)


def standardised(r: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Residuals u_t = r_t / sigma_t (T, A); 0 where sigma is 0 (a constant asset)."""
    s = sigma[: r.shape[0]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, r / np.where(s > 0, s, 1.0), 0.0)


def fhs_window(u: np.ndarray, sigma_next: np.ndarray) -> np.ndarray:
    """FHS scenario returns: residual rows (..., N, A) rescaled to the forecast volatilities (..., A)."""
    return u * sigma_next[..., None, :]

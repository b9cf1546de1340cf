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
- GARCH(1,1), zero mean, Student-t innovations, on 100 x r (arch's preferred scale): sigma^2_t = omega +
  alpha r_{t-1}^2 + beta sigma^2_{t-1}, the lagged r^2 and sigma^2 of row 0 both arch's backcast b (exponentially
  weighted mean, 0.94^i, of the first 75 squared returns): sigma^2_0 = omega + (alpha + beta) b. The recursion is
  ours, vectorised across assets, and equals arch's conditional_volatility and forecast(horizon=1) to rounding.
  The fit is arch's maximum likelihood (its objective, bounds and persistence constraint, SciPy's SLSQP from
  arch's starting values) with the exact gradient of the likelihood instead of arch's finite differences (a
  quarter of the time; arch's variance clipping, loose bounds never reached at an optimum, is left out): the
  same optimum where the likelihood has a clear maximum, a likelihood at least as high where it is flat (nu
  towards the normal), where arch's numerical gradient stops earlier. The fits are warm-started (from an earlier
  fit of the same asset, or from the cross-sectional median of a few cold fits) and can be spread over
  `workers` processes (1 = in this process).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import signal, special
from scipy.optimize import minimize

SCALE = 100.0              # arch fits returns in percent
MIN_VARIANCE = 1e-16       # an asset whose returns are all (about) zero, e.g. the base currency itself
SEED_ROWS = 20
_PERSISTENCE = np.array([0.0, -1.0, -1.0, 0.0])   # the gradient of 1 - alpha - beta >= 0 (arch's constraint)


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


def _arch_start(x: np.ndarray) -> np.ndarray:
    """arch's own starting values for x (what arch's fit starts from when given none): its grid search of
    (omega, alpha, beta) by Gaussian likelihood, nu from the kurtosis of the residuals standardised by them."""
    model = _model(x)
    vol = model.volatility
    sv = vol.starting_values(x)
    s2 = np.empty(len(x))
    vol.compute_variance(sv, x, s2, vol.backcast(x), vol.variance_bounds(x))
    return np.r_[sv, model.distribution.starting_values(x / np.sqrt(s2))]


def _backcast(x: np.ndarray) -> np.ndarray:
    """arch's GARCH backcast of each column of x (T, ...): the 0.94^i-weighted mean of the first 75 squares."""
    w = 0.94 ** np.arange(min(75, len(x)))
    return (w / w.sum()) @ (x[: len(w)] ** 2)


def _garch_t_nll(theta: np.ndarray, x2: np.ndarray, lagged: np.ndarray) -> tuple[float, np.ndarray]:
    """arch's objective, the negative GARCH(1,1)-t log-likelihood of x (x2 = x^2), and its exact gradient.
    lagged (T, 3): columns 1 and x2_{t-1} (the backcast b at t = 0); column 2 is filled here with s_{t-1}.
    sigma^2 and its derivatives in (omega, alpha, beta) are linear filters with pole beta (two lfilter calls):
    s_t = omega + alpha x2_{t-1} + beta s_{t-1}, d s_t/d omega = 1 + beta d s_{t-1}/d omega, d s_t/d alpha =
    x2_{t-1} + beta ..., d s_t/d beta = s_{t-1} + beta ..., with x2_{-1} = s_{-1} = b."""
    omega, alpha, beta, nu = theta
    den = [1.0, -beta]
    u = omega + alpha * lagged[:, 1]
    u[0] += beta * lagged[0, 2]
    s2 = signal.lfilter([1.0], den, u)
    lagged[1:, 2] = s2[:-1]
    ds2 = signal.lfilter([1.0], den, lagged, axis=0)                           # (T, 3)
    c = nu - 2.0
    q = x2 / (s2 * c)
    lq = np.log1p(q).sum()
    w = q / (1.0 + q)
    n = len(x2)
    const = special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(np.pi * c)
    ll = n * const - 0.5 * np.log(s2).sum() - (nu + 1) / 2 * lq
    grad = np.empty(4)
    grad[:3] = (((nu + 1) * w - 1.0) / (2.0 * s2)) @ ds2
    grad[3] = n * (0.5 * special.digamma((nu + 1) / 2) - 0.5 * special.digamma(nu / 2) - 0.5 / c) \
        - 0.5 * lq + (nu + 1) / (2 * c) * w.sum()
    return -ll, -grad


def _lagged(x: np.ndarray) -> np.ndarray:
    """_garch_t_nll's (T, 3): columns 1, x_{t-1}^2 and s_{t-1} (filled there), the backcast b at t = 0."""
    b = float(_backcast(x))
    out = np.full((len(x), 3), b)
    out[:, 0] = 1.0
    out[1:, 1] = x[:-1] ** 2
    return out


def _fit_one(x: np.ndarray, start: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """GARCH(1,1)-t of x by maximum likelihood: arch's objective, bounds and constraint (alpha + beta <= 1),
    minimised by SciPy's SLSQP as arch does, with the exact gradient (arch differentiates numerically and builds
    a model per fit: 3x the time). From `start` (clipped into the bounds), else from arch's starting values."""
    start = _arch_start(x) if start is None else np.asarray(start, dtype="float64")
    v = float(np.mean(x * x))
    bounds = [(1e-8 * v, 10.0 * v), (0.0, 1.0), (0.0, 1.0), (2.05, 500.0)]
    start = np.clip(start, *np.asarray(bounds).T)
    persistence = {"type": "ineq", "fun": lambda p: 1.0 - p[1] - p[2], "jac": lambda p: _PERSISTENCE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                             # SciPy's steps just outside the bounds
        res = minimize(_garch_t_nll, start, args=(x * x, _lagged(x)), jac=True, method="SLSQP",
                       bounds=bounds, constraints=[persistence])
    return np.asarray(res.x, dtype="float64"), bool(res.success)


def _fit_chunk(args: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    xs, starts = args                                               # (T, k) returns, (k, 4) starts (NaN: none)
    return [_fit_one(xs[:, i], None if np.isnan(starts[i]).any() else starts[i]) for i in range(xs.shape[1])]


def garch_filter(r: np.ndarray, params: np.ndarray, fit_rows: int | None = None) -> np.ndarray:
    """sigma (T+1, A) of fractional returns r (T, A) under GARCH(1,1) params (A, 4) fitted on 100 x r, started
    from the backcast of the rows the fit saw (the first `fit_rows`; None: all): a later row must not move an
    earlier volatility (a backtest's forecast would see returns after its forecast day)."""
    x = np.asarray(r, dtype="float64") * SCALE
    t, a = x.shape
    s2 = np.empty((t + 1, a))
    omega, alpha, beta = params[:, 0], params[:, 1], params[:, 2]
    backcast = _backcast(x[:fit_rows])
    s2[0] = omega + (alpha + beta) * backcast                      # lagged r^2 and sigma^2 both = backcast
    for i in range(t):                                              # T steps, each vectorised across assets
        s2[i + 1] = omega + alpha * x[i] ** 2 + beta * s2[i]
    return np.sqrt(s2) / SCALE


def fit_garch_t(r: np.ndarray, workers: int = 1, warm_start: bool = True, pilot: int = 3,
                fit_rows: int | None = None, start: np.ndarray | None = None) -> GarchFit:
    """GARCH(1,1)-t per column of r (T, A): fitted on the first `fit_rows` rows (None: all), filtered over all
    rows. Starting values: `start` (A, 4) where given (e.g. yesterday's or an earlier window's fit), else the
    pooled median of `pilot` cold fits when warm_start, else arch's own (its grid search)."""
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
        sigma[:, live] = garch_filter(r[:, live], params[live], fit_rows)
    return GarchFit(params=params, sigma=sigma, converged=ok)


def standardised(r: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Residuals u_t = r_t / sigma_t (T, A); 0 where sigma is 0 (a constant asset)."""
    s = sigma[: r.shape[0]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, r / np.where(s > 0, s, 1.0), 0.0)


MAX_RESIDUAL = 1000.0   # a residual beyond this many volatilities is a forecast of ~0, not an observation


def unscaled(r: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(T, A) True where a return moved while its volatility forecast was 0, or so near 0 that the residual exceeds
    MAX_RESIDUAL: r / 0 has no value (`standardised` gives 0, which would drop the move from the scenarios), and
    r / 1e-6 (GARCH's floor after a flat history) is a residual of ~1e5 that, rescaled to tomorrow's volatility,
    made a 10% move a loss of 500x the position. It happens on an asset's first move after a flat history (EWMA:
    volatility 0) and on its moves until GARCH is refitted on rows where it moved (a fit on rows where it never
    moved gives volatility 0, or its floor). A book exposed to such an asset has no filtered VaR while the move is
    in the window (NaN, uncomputable), not one that leaves the move out (a VaR of 0 for a position that moves) or
    blows it up."""
    with np.errstate(invalid="ignore"):
        return np.abs(r) > MAX_RESIDUAL * np.maximum(sigma[: r.shape[0]], 0.0)


def fhs_window(u: np.ndarray, sigma_next: np.ndarray) -> np.ndarray:
    """FHS scenario returns: residual rows (..., N, A) rescaled to the forecast volatilities (..., A)."""
    return u * sigma_next[..., None, :]

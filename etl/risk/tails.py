"""Fat-tailed parametric VaR/ES of a loss sample (pure numpy/scipy, vectorised over every leading axis).

`fit(method, losses)` takes scenario losses (..., N) (loss = -PnL, NaN = no scenario) and fits one model per
row; `TailFit.var_es(c)` gives VaR/ES at confidence c as positive losses and `TailFit.quantile(p)` the model's
loss quantile (what the ES backtest samples). A book whose losses are all 0 has VaR = ES = 0.
- param_cf, Cornish-Fisher: sigma = sample sd (ddof=1, the delta-normal sigma), S = skewness and K = excess
  kurtosis of the losses (biased moments, scipy's defaults), zero mean as `param`. z_cf = z + (z^2-1)S/6 +
  (z^3-3z)K/24 - (2z^3-5z)S^2/36, VaR = sigma z_cf; ES = sigma phi(z)/(1-c) [1 + zS/6 + (z^2-1)K/24 -
  (2z^2-1)S^2/36], the mean of z_cf over the normal tail beyond z (closed form).
- param_t, Student-t: zero location, scale s and degrees of freedom nu (in [NU_MIN, NU_MAX]) by maximum
  likelihood: Newton on (log nu, log s^2) with the exact Hessian, safeguarded by a bracket on log nu (`fit_t`);
  the scale then solves its score equation n = (nu+1) sum x^2 / (nu s^2 + x^2). VaR = s q, ES = s f(q) (nu + q^2) /
  ((nu-1)(1-c)), q the t(nu) quantile.
- evt_gpd, peaks over threshold: u = the EVT_THRESHOLD (90%) linear quantile of the losses, exceedances y = x - u
  for x > u (k of n), generalised Pareto (xi, beta) by maximum likelihood (Grimshaw's profile in theta = xi/beta:
  a grid then golden section). VaR_p = u + beta/xi (((n/k)(1-p))^-xi - 1), ES_p = (VaR_p + beta - xi u)/(1-xi).
  Fewer than MIN_EXCEEDANCES exceedances, a maximum on the edge of the search, or xi outside (-1, 1) (the
  likelihood unbounded / no finite ES): NaN, uncomputable. (A light tail, xi in (-1, -0.5), has a local MLE
  without the usual asymptotics: kept, its figures sit just above the largest losses.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from etl.risk.var import quantile_linear

METHODS = ("param_cf", "param_t", "evt_gpd")
NU_MIN, NU_MAX = 2.05, 1000.0            # finite variance; above NU_MAX t is the normal to 4 digits
EVT_THRESHOLD = 0.90
MIN_EXCEEDANCES = 15
_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class TailFit:
    method: str
    params: dict            # name -> array (...,)

    def take(self, index) -> TailFit:
        return TailFit(self.method, {k: v[index] for k, v in self.params.items()})

    def quantile(self, p) -> np.ndarray:
        return _QUANTILE[self.method](np.asarray(p, dtype="float64"), **self.params)

    def var_es(self, confidence: float) -> tuple[np.ndarray, np.ndarray]:
        """(VaR, ES) at `confidence`; NaN for both where the model's ES falls below its VaR (outside its domain)."""
        v = self.quantile(confidence)
        es = _ES[self.method](confidence, v, **self.params)
        with np.errstate(invalid="ignore"):
            ok = ~(es < v * (1 - 1e-9))
        return np.where(ok, v, np.nan), np.where(ok, es, np.nan)


def fit(method: str, losses: np.ndarray) -> TailFit:
    return {"param_cf": fit_cf, "param_t": fit_t, "evt_gpd": fit_gpd}[method](np.asarray(losses, dtype="float64"))


def _filled(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid mask, number of valid losses, losses with 0 for NaN)."""
    valid = ~np.isnan(x)
    return valid, valid.sum(axis=-1), np.where(valid, x, 0.0)


# ---- Cornish-Fisher ----
def fit_cf(losses: np.ndarray) -> TailFit:
    valid, n, x0 = _filled(losses)
    d = np.where(valid, x0 - (x0.sum(axis=-1) / n)[..., None], 0.0)
    d2 = d * d
    m2, m3, m4 = d2.sum(axis=-1) / n, (d2 * d).sum(axis=-1) / n, (d2 * d2).sum(axis=-1) / n
    flat = ~(m2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = np.where(flat, 0.0, m3 / m2 ** 1.5)
        kurt = np.where(flat, 0.0, m4 / m2 ** 2 - 3.0)
        sigma = np.where(flat, 0.0, np.sqrt(m2 * n / (n - 1)))
    sigma = np.where(flat | _cf_monotone(skew, kurt), sigma, np.nan)  # outside its domain: uncomputable
    return TailFit("param_cf", {"sigma": sigma, "skew": skew, "kurt": kurt})


# The expansion must rise over the quantiles the figures use and most of the tail their ES averages: 95% to 99.9%
# (a book with negative excess kurtosis peaks further out; var_es still refuses an ES below its VaR).
CF_DOMAIN = (float(special.ndtri(0.95)), float(special.ndtri(0.999)))


def _cf_monotone(skew: np.ndarray, kurt: np.ndarray) -> np.ndarray:
    """True where the Cornish-Fisher quantile rises on CF_DOMAIN: its slope in z, a z^2 + b z + c, is positive at
    both ends and at its vertex when that lies inside. Elsewhere the expansion is outside its domain of validity
    (Maillard 2012): VaR 99% could fall below VaR 95% or ES below VaR, so the figure is uncomputable."""
    a, b, c = kurt / 8 - skew ** 2 / 6, skew / 3, 1 - kurt / 8 + 5 * skew ** 2 / 36
    lo, hi = CF_DOMAIN
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = np.clip(np.where(a != 0, -b / (2 * np.where(a != 0, a, 1.0)), lo), lo, hi)
    return np.logical_and.reduce([a * z * z + b * z + c > 0 for z in (lo, hi, vertex)])


def _cf_quantile(p, sigma, skew, kurt):
    z = special.ndtri(p)
    return sigma * (z + (z * z - 1) * skew / 6 + (z ** 3 - 3 * z) * kurt / 24 - (2 * z ** 3 - 5 * z) * skew ** 2 / 36)


def _cf_es(c, v, sigma, skew, kurt):
    z = special.ndtri(c)
    return sigma * stats.norm.pdf(z) / (1 - c) * (1 + z * skew / 6 + (z * z - 1) * kurt / 24
                                                  - (2 * z * z - 1) * skew ** 2 / 36)


# ---- Student-t ----
def _t_scale(x2: np.ndarray, n: np.ndarray, nu: np.ndarray, lv: np.ndarray, steps: int) -> np.ndarray:
    """log s^2 solving n = (nu+1) sum x^2 / (nu s^2 + x^2) by Newton from lv (the sum falls as s grows)."""
    for _ in range(steps):
        a = nu * np.exp(lv)
        inv = 1.0 / (a[..., None] + x2)
        r = x2 * inv
        g = (nu + 1) * r.sum(axis=-1) - n
        dg = -(nu + 1) * a * (r * inv).sum(axis=-1)
        lv = lv - np.clip(g / dg, -2.0, 2.0)
    return lv


def _t_derivatives(x2, n, nu, lv):
    """Slopes and curvatures of the log-likelihood in t = log nu and v = log s^2 at (nu, lv): (l_t, l_v, l_tt,
    l_tv, l_vv). With q = x^2 / (nu s^2), w = q / (1 + q): l = n (G(nu) - v/2) - (nu+1)/2 sum log1p(q), G the
    log normalising constant; dq/dt = dq/dv = -q."""
    q = x2 / (nu * np.exp(lv))[..., None]
    w = q / (1.0 + q)
    s1, s2, s3 = np.log1p(q).sum(axis=-1), w.sum(axis=-1), (w * (1.0 - w)).sum(axis=-1)
    g1 = 0.5 * (special.digamma((nu + 1) / 2) - special.digamma(nu / 2)) - 0.5 / nu          # G'(nu)
    g2 = 0.25 * (special.polygamma(1, (nu + 1) / 2) - special.polygamma(1, nu / 2)) + 0.5 / nu ** 2   # G''
    l_t = nu * (n * g1 - 0.5 * s1) + (nu + 1) / 2 * s2
    l_v = -0.5 * n + (nu + 1) / 2 * s2
    l_tt = nu * n * g1 - nu * s1 / 2 + nu * nu * n * g2 + nu * s2 - (nu + 1) / 2 * s3
    return l_t, l_v, l_tt, nu / 2 * s2 - (nu + 1) / 2 * s3, -(nu + 1) / 2 * s3


def fit_t(losses: np.ndarray, iterations: int = 20) -> TailFit:
    """Zero-location Student-t by maximum likelihood: nu = NU_MAX where the profile likelihood still rises there,
    NU_MIN where it falls from there, else `_t_newton`; then the scale solving its score equation."""
    valid, n, x0 = _filled(losses)
    x2 = x0 * x0
    m2 = x2.sum(axis=-1) / n
    flat = ~(m2 > 0)
    n_f, m2 = np.where(flat, 1, n), np.where(flat, 1.0, m2)
    x2 = np.where(flat[..., None] & valid, 1.0, x2)                 # a flat book: any fit, scaled by 0 below
    lv_hi = _t_scale(x2, n_f, np.full(m2.shape, NU_MAX), np.log(m2), 4)
    at_max = _t_derivatives(x2, n_f, NU_MAX, lv_hi)[0] >= 0
    lv_lo = _t_scale(x2, n_f, np.full(m2.shape, NU_MIN), np.log(m2 * (1 - 2 / NU_MIN)), 6)
    at_min = _t_derivatives(x2, n_f, NU_MIN, lv_lo)[0] <= 0
    nu, lv = np.where(at_max, NU_MAX, NU_MIN), np.where(at_max, lv_hi, lv_lo)
    inner = ~(at_max | at_min)
    if inner.any():
        nu[inner], lv[inner] = _t_newton(x2[inner], n_f[inner], m2[inner], iterations)
    lv = _t_scale(x2, n_f, nu, lv, 4)
    score = (nu + 1) * (x2 / ((nu * np.exp(lv))[..., None] + x2)).sum(axis=-1) - n_f
    scale = np.where(np.abs(score) < 1e-8 * n_f, np.exp(lv / 2), np.nan)   # not converged: uncomputable
    return TailFit("param_t", {"scale": np.where(flat, 0.0, scale), "nu": nu})


def _t_newton(x2, n, m2, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """(nu, log s^2) maximising the likelihood of rows (K, N) whose maximum lies inside (NU_MIN, NU_MAX): Newton on
    (log nu, log s^2) with the exact Hessian from the moment estimate nu = 4 + 6 / excess kurtosis, safeguarded
    by a bracket on log nu of the profile's slope (a step leaving it, or not uphill, bisects)."""
    lo, hi = np.full(m2.shape, np.log(NU_MIN)), np.full(m2.shape, np.log(NU_MAX))
    with np.errstate(invalid="ignore", divide="ignore"):
        kurt = (x2 * x2).sum(axis=-1) / n / m2 ** 2 - 3.0
        t = np.log(np.clip(np.where(kurt > 0, 4.0 + 6.0 / kurt, NU_MAX), NU_MIN, NU_MAX))
    nu = np.exp(t)
    lv = _t_scale(x2, n, nu, np.log(m2 * (nu - 2) / nu), 4)
    for _ in range(iterations):
        l_t, l_v, l_tt, l_tv, l_vv = _t_derivatives(x2, n, np.exp(t), lv)
        slope, curve = l_t - l_tv * l_v / l_vv, l_tt - l_tv * l_tv / l_vv     # the profile's, in t
        lo, hi = np.where(slope > 0, t, lo), np.where(slope > 0, hi, t)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = -slope / curve
        new = np.where((curve < 0) & (t + step >= lo) & (t + step <= hi), t + step, (lo + hi) / 2)
        lv = np.clip(lv - (l_v + l_tv * (new - t)) / l_vv, lv - 2.0, lv + 2.0)
        converged = np.all(np.abs(new - t) < 1e-7)            # nu to 1e-7 (where flat: the slope is noise)
        t = new
        if converged:
            break
    return np.exp(t), lv


def _t_quantile(p, scale, nu):
    return scale * stats.t.ppf(p, nu)


def _t_es(c, v, scale, nu):
    q = stats.t.ppf(c, nu)
    return scale * stats.t.pdf(q, nu) * (nu + q * q) / ((nu - 1) * (1 - c))


# ---- peaks over threshold, generalised Pareto ----
def _gpd_profile(y: np.ndarray, k: np.ndarray, theta: np.ndarray):
    """(xi, log-likelihood) at theta = xi/beta (..., G) of exceedances y (..., 1, N), 0 where none (log1p(0) = 0
    adds nothing)."""
    lg = np.log1p(theta[..., None] * y).sum(axis=-1)
    xi = lg / k[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = xi / theta
        return xi, -k[..., None] * np.log(beta) - lg / xi - lg


def fit_gpd(losses: np.ndarray, threshold: float = EVT_THRESHOLD, iterations: int = 45) -> TailFit:
    valid, n, x0 = _filled(losses)
    flat = ~(np.abs(x0).max(axis=-1, initial=0.0) > 0)                 # all losses 0
    u = quantile_linear(losses, threshold, axis=-1)
    hit = valid & (losses > u[..., None])
    k = hit.sum(axis=-1)
    y = np.sort(np.where(hit, losses - u[..., None], 0.0), axis=-1)   # exceedances > 0 last: keep only those
    y = y[..., y.shape[-1] - max(int(k.max(initial=0)), 1):][..., None, :]
    kk = np.maximum(k, 1)
    ymax = np.where(k > 0, y.max(axis=-1)[..., 0], 1.0)
    grid = np.sort(np.concatenate([-1 + np.geomspace(1e-4, 0.6, 16), -np.geomspace(1e-4, 0.3, 12),
                                   np.geomspace(1e-4, 1e3, 48)]))    # theta ymax (> -1), distinct points
    _, ll = _gpd_profile(y, kk, grid / ymax[..., None])
    ll = np.where(np.isnan(ll), -np.inf, ll)
    best = ll.argmax(axis=-1)
    interior = (best > 0) & (best < len(grid) - 1)
    lo = grid[np.clip(best - 1, 0, None)] / ymax
    hi = grid[np.clip(best + 1, None, len(grid) - 1)] / ymax
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)

    def f(t):
        v = _gpd_profile(y, kk, t[..., None])[1][..., 0]
        return np.where(np.isnan(v), -np.inf, v)

    fa, fb = f(a), f(b)
    for _ in range(iterations):                                      # golden section within the best cell
        left = fa >= fb
        hi, lo = np.where(left, b, hi), np.where(left, lo, a)
        a2, b2 = np.where(left, hi - _GOLDEN * (hi - lo), b), np.where(left, a, lo + _GOLDEN * (hi - lo))
        fn = f(np.where(left, a2, b2))
        fa, fb = np.where(left, fn, fb), np.where(left, fa, fn)
        a, b = a2, b2
    theta = (a + b) / 2
    xi = _gpd_profile(y, kk, theta[..., None])[0][..., 0]
    beta = xi / theta
    ok = interior & (k >= MIN_EXCEEDANCES) & (xi > -1) & (xi < 1) & (beta > 0)
    nan = np.nan
    return TailFit("evt_gpd", {"u": np.where(flat, 0.0, np.where(ok, u, nan)),
                               "xi": np.where(flat, 0.0, np.where(ok, xi, nan)),
                               "beta": np.where(flat, 0.0, np.where(ok, beta, nan)),
                               "zeta": np.where(flat, 1.0, k / n)})


def _gpd_quantile(p, u, xi, beta, zeta):
    """Loss quantile at p >= 1 - zeta (below the threshold the model says nothing: NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        lt = np.log((1 - p) / zeta)
        small = np.abs(xi) < 1e-12
        x = np.where(small, -beta * lt, beta / np.where(small, 1.0, xi) * np.expm1(-xi * lt))
    return np.where(p >= 1 - zeta, u + x, np.nan)


def _gpd_es(c, v, u, xi, beta, zeta):
    return (v + beta - xi * u) / (1 - xi)


_QUANTILE = {"param_cf": _cf_quantile, "param_t": _t_quantile, "evt_gpd": _gpd_quantile}
_ES = {"param_cf": _cf_es, "param_t": _t_es, "evt_gpd": _gpd_es}

T_NODE_STEP = 0.2        # spacing in s = -log(1-p) of the exact Student-t quantiles tail_quantiles interpolates


def tail_quantiles(fit: TailFit, p: np.ndarray) -> np.ndarray:
    """The loss quantiles (D, P) of P models (params (P,)) at D probabilities p > 1/2 (the Z2 draws of a backtest).
    param_cf, evt_gpd: their closed forms. param_t: the exact quantile (an incomplete-beta inverse, ~0.4 us a value)
    only at nodes spaced T_NODE_STEP apart in s = -log(1-p), between them log q by cubic Hermite interpolation in s
    with the exact slopes d log q / ds = (1-p) / (q f(q)), f the t density: relative error below 1e-6."""
    p = np.asarray(p, dtype="float64")
    if fit.method != "param_t" or p.size == 0:
        return fit.quantile(p[:, None])
    s = -np.log1p(-p)
    nodes = s.min() + T_NODE_STEP * np.arange(max(2, int(np.ceil((s.max() - s.min()) / T_NODE_STEP)) + 1))
    nu = fit.params["nu"]
    tail = np.exp(-nodes)[:, None]                                   # 1 - p at the nodes
    q = -special.stdtrit(nu, tail)                                   # (G, P) standard t quantiles
    log_f = special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi) \
        - (nu + 1) / 2 * np.log1p(q * q / nu)
    log_q, slope = np.log(q), tail / (q * np.exp(log_f))
    j = np.minimum(((s - nodes[0]) / T_NODE_STEP).astype(np.int64), len(nodes) - 2)
    x = ((s - nodes[j]) / T_NODE_STEP)[:, None]                      # (D, 1) position within the node interval
    hermite = ((1 + 2 * x) * (1 - x) ** 2 * log_q[j] + x * (1 - x) ** 2 * T_NODE_STEP * slope[j]
               + x * x * (3 - 2 * x) * log_q[j + 1] + x * x * (x - 1) * T_NODE_STEP * slope[j + 1])
    return fit.params["scale"] * np.exp(hermite)

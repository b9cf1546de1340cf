"""Volatility-filtered VaR (etl.risk.filtered): GARCH(1,1)-t against arch itself, EWMA against its recursion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from arch import arch_model

from etl.risk import filtered, var


def _garch_returns(n: int, seed: int) -> np.ndarray:
    """A GARCH(1,1) path with Student-t shocks (so the fit has something to find)."""
    rng = np.random.default_rng(seed)
    omega, alpha, beta = 2e-5, 0.1, 0.85
    s2, out = omega / (1 - alpha - beta), np.empty(n)
    for t in range(n):
        out[t] = np.sqrt(s2) * rng.standard_t(6) * np.sqrt(4 / 6)
        s2 = omega + alpha * out[t] ** 2 + beta * s2
    return out


@pytest.fixture(scope="module")
def returns() -> np.ndarray:
    r = np.column_stack([_garch_returns(300, s) for s in range(5)])
    return np.column_stack([r, np.zeros(300)])                       # a constant asset: no fit, sigma 0


def test_garch_params_and_forecasts_equal_arch_on_the_same_data_and_starting_values(returns):
    """Ours is arch's maximum likelihood with the exact gradient: on GARCH-t data (a clear maximum) the same
    parameters (1e-3 relative: SLSQP's stopping rule on arch's finite differences), volatilities and forecast
    (1e-4), and a log-likelihood at least arch's."""
    fit = filtered.fit_garch_t(returns, warm_start=True, pilot=2)
    for a in range(5):
        x = returns[:, a] * 100
        # the same starting values ours used: arch's grid for the pilot fits, the pooled start for the rest
        start = None if a in _pilots(returns) else _pooled_start(returns)
        model = arch_model(x, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
        res = model.fit(disp="off", starting_values=start)
        np.testing.assert_allclose(fit.params[a], res.params.to_numpy(), rtol=1e-3)
        np.testing.assert_allclose(fit.sigma[:-1, a], res.conditional_volatility / 100, rtol=1e-4)
        forecast = np.sqrt(res.forecast(horizon=1, reindex=False).variance.to_numpy()[-1, 0]) / 100
        assert fit.sigma[-1, a] == pytest.approx(forecast, rel=1e-4)
        assert fit.converged[a]
        assert _arch_loglik(model, fit.params[a]) >= res.loglikelihood - 1e-6
    assert (fit.sigma[:, 5] == 0).all() and np.isnan(fit.params[5]).all() and not fit.converged[5]


def test_garch_likelihood_and_gradient_are_archs(returns):
    x = returns[:, 0] * 100
    model = arch_model(x, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
    lagged = filtered._lagged(x)
    for theta in ([0.05, 0.08, 0.88, 6.0], [0.3, 0.2, 0.5, 30.0], [1.0, 0.0, 0.0, 400.0]):
        theta = np.asarray(theta)
        nll, grad = filtered._garch_t_nll(theta, x * x, lagged)
        assert -nll == pytest.approx(_arch_loglik(model, theta), rel=1e-12)
        step = 1e-5 * theta + 1e-9 * (theta == 0)                   # central differences, relative steps
        numeric = [(filtered._garch_t_nll(theta + h, x * x, lagged)[0]
                    - filtered._garch_t_nll(theta - h, x * x, lagged)[0]) / (2 * h.sum()) for h in np.diag(step)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_where_the_likelihood_is_flat_ours_is_at_least_archs():
    """Gaussian returns: nu runs towards the normal and the likelihood flattens; arch's finite-difference SLSQP
    stops where ours, with the exact gradient, climbs further."""
    x = np.random.default_rng(3).standard_normal((400, 6))
    fit = filtered.fit_garch_t(x / 100, warm_start=False)
    for a in range(x.shape[1]):
        model = arch_model(x[:, a], mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
        res = model.fit(disp="off")
        assert _arch_loglik(model, fit.params[a]) >= res.loglikelihood - 1e-6


def _arch_loglik(model, theta: np.ndarray) -> float:
    """arch's own log-likelihood of its model at theta."""
    return model.fix(theta).loglikelihood


def _pilots(returns: np.ndarray) -> set[int]:
    order = np.argsort((returns[:, :5] * 100).var(axis=0))
    return {int(i) for i in order[np.linspace(0, 4, 2).round().astype(int)]}


def _pooled_start(returns: np.ndarray) -> np.ndarray:
    fits = [arch_model(returns[:, i] * 100, mean="Zero", vol="GARCH", p=1, q=1, dist="t", rescale=False)
            .fit(disp="off").params.to_numpy() for i in sorted(_pilots(returns))]
    return np.median(np.vstack(fits), axis=0)


def test_a_fit_on_early_rows_filters_later_rows_without_looking_at_them(returns):
    early = filtered.fit_garch_t(returns[:, :2], fit_rows=200, warm_start=False)
    bumped = returns[:, :2].copy()
    bumped[250:] *= 3
    moved = filtered.fit_garch_t(bumped, fit_rows=200, warm_start=False)
    np.testing.assert_array_equal(early.params, moved.params)
    np.testing.assert_array_equal(early.sigma[:251], moved.sigma[:251])   # sigma[t] uses rows < t only


def test_parallel_fits_equal_the_serial_ones(returns):
    serial = filtered.fit_garch_t(returns, workers=1)
    parallel = filtered.fit_garch_t(returns, workers=2)
    np.testing.assert_array_equal(serial.params, parallel.params)


def test_ewma_sigma_is_the_riskmetrics_recursion_seeded_with_the_first_squares():
    rng = np.random.default_rng(2)
    r = rng.standard_normal((80, 3)) * 0.02
    lam = 0.94
    s2 = np.mean(r[:20] ** 2, axis=0)
    expected = [np.sqrt(s2)]
    for t in range(80):
        s2 = lam * s2 + (1 - lam) * r[t] ** 2
        expected.append(np.sqrt(s2))
    np.testing.assert_allclose(filtered.ewma_sigma(r, lam), np.array(expected), rtol=1e-12)
    # the same as pandas' ewm(adjust=False) started at the seed
    seeded = pd.DataFrame(np.vstack([np.mean(r[:20] ** 2, axis=0), r**2]))
    np.testing.assert_allclose(filtered.ewma_sigma(r, lam) ** 2, seeded.ewm(alpha=1 - lam, adjust=False).mean(),
                               rtol=1e-12)


def test_fhs_scenarios_are_the_residual_days_rescaled_to_todays_volatility():
    rng = np.random.default_rng(4)
    r = rng.standard_normal((60, 2)) * [0.01, 0.04]
    sigma = filtered.ewma_sigma(r, 0.9)
    u = filtered.standardised(r, sigma)
    scen = filtered.fhs_window(u[-50:], sigma[-1])
    np.testing.assert_allclose(scen, r[-50:] / sigma[-51:-1] * sigma[-1], rtol=1e-12)
    # the cross-section is kept: each scenario is one historical day for both assets
    np.testing.assert_allclose(np.corrcoef(scen.T)[0, 1], np.corrcoef(u[-50:].T)[0, 1], rtol=1e-12)
    e = np.array([[1000.0], [500.0]])
    v, es = var.var_es_from_losses(var.historical_losses(scen, e), 0.99)[0.99]
    assert v[0] == pytest.approx(np.quantile(-(scen @ e)[:, 0], 0.99), rel=1e-12) and es[0] >= v[0]

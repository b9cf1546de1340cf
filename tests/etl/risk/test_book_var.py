"""etl.risk.book_var, the one VaR/ES entry of the engine, the firm and intraday, against independent numpy/scipy
computations of each method at each of its confidences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, stats

from etl import measures
from etl.risk import book_var, filtered, tails, var


@pytest.fixture(scope="module")
def book():
    rng = np.random.default_rng(5)
    window = rng.standard_t(4, size=(250, 3)) * 0.03                      # (N, A) daily returns
    exposure = np.array([[1000.0, -500.0], [2000.0, 0.0], [0.0, 3000.0]])  # (A, P)
    z, scale = var.mc_draws(4000, 3, seed=3)
    filtered = {"fhs_ewma": window * np.array([1.2, 0.8, 1.1]), "garch_t": window * np.array([0.9, 1.3, 1.0])}
    return window, exposure, book_var.Scenarios(window, var.covariance(window), z, scale, filtered)


def _scenario_var_es(losses: np.ndarray, c: float) -> tuple[float, float]:
    """numpy's linear quantile, and the mean of the losses at or above it."""
    v = np.quantile(losses, c)
    return v, losses[losses >= v].mean()


def _oracle(method: str, window, exposure, sc, c: float, p: int) -> tuple[float, float]:
    e = exposure[:, p]
    if method == "hist":
        return _scenario_var_es(-(window @ e), c)
    if method in ("fhs_ewma", "garch_t"):
        return _scenario_var_es(-(sc.filtered[method] @ e), c)
    if method == "param":
        sigma = np.sqrt(e @ np.cov(window, rowvar=False) @ e)
        z = stats.norm.ppf(c)
        return z * sigma, sigma * stats.norm.pdf(z) / (1 - c)
    if method == "mc":
        root = np.real(linalg.sqrtm(np.cov(window, rowvar=False)))       # the symmetric square root of C
        return _scenario_var_es(-((sc.scale[:, None] * (sc.z @ root.T)) @ e), c)
    v, es = tails.fit(method, -(window @ e)).var_es(c)                     # the fits: tests/etl/risk/test_tails.py
    return float(v), float(es)


def test_every_portfolio_method_at_each_of_its_confidences_against_numpy(book):
    window, exposure, sc = book
    out = book_var.book_var_es(sc, exposure, "portfolio")
    expected = {c for c in measures.columns("portfolio") if c.startswith(("var_", "es_"))}
    assert set(out) == expected and len(expected) == 2 * (8 * 2 + 1)      # 8 methods at 95/99, EVT also at 99.5
    for method in measures.methods("portfolio"):
        for c in method.confidences:
            for p in range(exposure.shape[1]):
                v, es = _oracle(method.name, window, exposure, sc, c, p)
                got_v = out[measures.column("var", c, method.name)][p]
                got_es = out[measures.column("es", c, method.name)][p]
                if method.name == "evt_gpd" and np.isnan(v):
                    assert np.isnan(got_v) and np.isnan(got_es)
                    continue
                assert got_v == pytest.approx(v, rel=1e-7), (method.name, c, p)
                assert got_es == pytest.approx(es, rel=1e-7), (method.name, c, p)
                assert got_es >= got_v > 0


def test_each_scope_computes_its_registered_methods_under_its_column_names(book):
    window, exposure, sc = book
    firm = book_var.book_var_es(sc, exposure, "firm")
    assert set(firm) == {f"{k}_{c}_{m}" for k in ("var", "es") for c in (95, 99)
                         for m in ("hist", "param", "mc", "fhs_ewma", "garch_t")}
    intraday = book_var.book_var_es(book_var.Scenarios(window, sc.cov, sc.z, sc.scale), exposure, "intraday")
    assert set(intraday) == {"var_95", "var_99", "es_95", "es_99", "var_95_param", "var_99_param", "es_95_param",
                             "es_99_param", "var_95_mc", "var_99_mc", "es_95_mc", "es_99_mc"}
    for col in ("var_99", "es_95_param", "var_95_mc"):                  # the same figure whatever the scope
        portfolio_col = col if col.count("_") == 2 else f"{col}_hist"
        np.testing.assert_array_equal(intraday[col], firm[portfolio_col])


def test_the_scenario_set_of_the_last_days_rescales_the_filtered_residuals(book):
    rng = np.random.default_rng(2)
    returns = rng.normal(0, 0.02, (40, 2))
    sigma = np.abs(rng.normal(0.02, 0.005, (41, 2)))                     # one-step-ahead: one row more
    sc = book_var.Scenarios.last(returns, 30, {"fhs_ewma": sigma})
    np.testing.assert_array_equal(sc.window, returns[-30:])
    np.testing.assert_allclose(sc.filtered["fhs_ewma"], returns[-30:] / sigma[10:40] * sigma[40], rtol=1e-12)
    np.testing.assert_allclose(sc.cov, np.cov(returns[-30:], rowvar=False), rtol=1e-12)


def test_a_method_without_a_computation_fails_naming_the_registry(book):
    window, exposure, sc = book
    with pytest.raises(ValueError, match=r"'semi' \(etl/measures.py\) has no computation"):
        book_var.method_var_es("semi", sc, exposure, (0.99,))
    with pytest.raises(ValueError, match="filtered window was not given"):
        book_var.method_var_es("garch_t", book_var.Scenarios(window, sc.cov), exposure, (0.99,))


def test_an_asset_whose_first_move_the_filter_cannot_scale_has_no_filtered_var_not_0():
    """An asset flat for the whole history moves on the as-of day: EWMA's volatility before that move is 0, so its
    residual r / 0 was set to 0 and every FHS scenario of the asset was 0: a fhs_ewma VaR of 0 for a position that
    just moved 5% (hist: 5% of it). Such a book's filtered figures are uncomputable (NaN); a book without the asset
    keeps its own (numpy's linear quantile of its FHS losses)."""
    rng = np.random.default_rng(4)
    returns = np.column_stack([rng.normal(0, 0.02, 60), np.r_[np.zeros(59), -0.05]])   # (T, A): B moves last
    sigma = filtered.ewma_sigma(returns, 0.94)
    assert sigma[59, 1] == 0 and sigma[60, 1] > 0                         # the first move had no volatility
    sc = book_var.Scenarios.last(returns, 30, {"fhs_ewma": sigma})
    assert not sc.filtered["fhs_ewma"][:, 1].any()                        # ... so no scenario of B at all
    exposure = np.array([[1000.0, 1000.0, 0.0], [0.0, 2000.0, 2000.0]])    # (A, P): A only, A and B, B only
    got = book_var.method_var_es("fhs_ewma", sc, exposure, (0.95, 0.99))
    for c, (v, e) in got.items():
        assert np.isnan(v[1:]).all() and np.isnan(e[1:]).all(), (c, v, e)
        assert (v[0], e[0]) == pytest.approx(_scenario_var_es(-(sc.filtered["fhs_ewma"] @ exposure[:, 0]), c))
    hist = book_var.method_var_es("hist", sc, exposure, (0.99,))[0.99][0]
    assert hist[2] == pytest.approx(0.71 * 100.0)     # hist sees the move: 29 zeros and a loss of 100, index 28.71


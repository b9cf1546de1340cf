"""Oracles for etl.risk.tails: Cornish-Fisher on hand moments, Student-t and GPD against scipy.stats fits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from etl.risk import tails


def _tight(func, x0, args=(), disp=0):
    """scipy's default fit optimiser (Nelder-Mead) run to convergence, so its optimum is a fair oracle."""
    return optimize.fmin(func, x0, args=args, xtol=1e-12, ftol=1e-14, maxiter=100_000, maxfun=100_000, disp=0)


@pytest.fixture(scope="module")
def losses() -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.standard_t(4, size=(6, 250)) * 0.02 + 0.001


def _z_cf(z, s, k):
    return z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36


def test_cornish_fisher_against_the_closed_formula_on_hand_moments(losses):
    fit = tails.fit_cf(losses)
    for i, x in enumerate(losses):
        n = len(x)
        mean = sum(x) / n
        m2, m3, m4 = (sum((v - mean) ** k for v in x) / n for k in (2, 3, 4))
        s, k = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3
        sd = np.sqrt(m2 * n / (n - 1))
        for c in (0.95, 0.99):
            v, e = fit.take(i).var_es(c)
            assert v == pytest.approx(sd * _z_cf(stats.norm.ppf(c), s, k), rel=1e-12)
            # ES: the mean of the Cornish-Fisher quantile over the tail, by quadrature
            tail = integrate.quad(lambda p, s=s, k=k: _z_cf(stats.norm.ppf(p), s, k), c, 1, limit=200)[0] / (1 - c)
            assert e == pytest.approx(sd * tail, rel=1e-7)


def test_cornish_fisher_without_skew_or_kurtosis_is_the_normal():
    x = np.array([[-1.0, 1.0] * 50])                      # symmetric: S = 0
    fit = tails.TailFit("param_cf", {"sigma": np.array([2.0]), "skew": np.array([0.0]), "kurt": np.array([0.0])})
    v, e = fit.var_es(0.99)
    assert v[0] == pytest.approx(2 * stats.norm.ppf(0.99), rel=1e-14)
    assert e[0] == pytest.approx(2 * stats.norm.pdf(stats.norm.ppf(0.99)) / 0.01, rel=1e-14)
    assert tails.fit_cf(x).params["skew"][0] == pytest.approx(0.0, abs=1e-14)


def test_student_t_fit_and_es_against_scipy(losses):
    fit = tails.fit_t(losses)
    for i, x in enumerate(losses):
        nu, loc, scale = stats.t.fit(x, floc=0, optimizer=_tight)
        assert fit.params["nu"][i] == pytest.approx(nu, rel=1e-6)
        assert fit.params["scale"][i] == pytest.approx(scale, rel=1e-6)
        ours = stats.t.logpdf(x, fit.params["nu"][i], 0, fit.params["scale"][i]).sum()
        assert ours >= stats.t.logpdf(x, nu, 0, scale).sum() - 1e-9           # at least scipy's likelihood
        dist = stats.t(fit.params["nu"][i], 0, fit.params["scale"][i])
        for c in (0.95, 0.99):
            v, e = fit.take(i).var_es(c)
            assert v == pytest.approx(dist.ppf(c), rel=1e-12)
            assert e == pytest.approx(dist.expect(lambda y: y, lb=dist.ppf(c)) / (1 - c), rel=1e-7)


def test_gpd_fit_against_scipy_on_the_same_exceedances_and_textbook_var_es(losses):
    fit = tails.fit_gpd(losses)
    for i, x in enumerate(losses):
        u = np.quantile(x, 0.90)
        y = x[x > u] - u
        xi, _, beta = stats.genpareto.fit(y, floc=0, optimizer=_tight)
        assert fit.params["u"][i] == pytest.approx(u, rel=1e-14)
        assert fit.params["xi"][i] == pytest.approx(xi, abs=1e-6)
        assert fit.params["beta"][i] == pytest.approx(beta, rel=1e-6)
        xi, beta = fit.params["xi"][i], fit.params["beta"][i]
        n, k = len(x), len(y)
        for c in (0.95, 0.99, 0.995):                     # McNeil-Frey-Embrechts (7.18), (7.19)
            var = u + beta / xi * (((n / k) * (1 - c)) ** -xi - 1)
            v, e = fit.take(i).var_es(c)
            assert v == pytest.approx(var, rel=1e-12)
            assert e == pytest.approx(var / (1 - xi) + (beta - xi * u) / (1 - xi), rel=1e-12)
            # and ES is u + the mean of the fitted excess distribution beyond VaR - u (scipy's quadrature)
            tail_mean = stats.genpareto(xi, 0, beta).expect(lambda t: t, lb=var - u, conditional=True)
            assert e == pytest.approx(u + tail_mean, rel=1e-7)


def test_student_t_likelihood_is_the_maximum_over_nu_on_its_range():
    """Tails from nu = 2.1 to the normal: ours is at least the best of a fine grid of nu over [NU_MIN, NU_MAX]
    (each with its exact scale), and sits on the range's edge where the likelihood keeps rising beyond it."""
    rng = np.random.default_rng(8)
    x = np.vstack([rng.standard_t(nu, size=(2, 250)) for nu in (2.1, 3, 5, 12, 60)] +
                  [rng.standard_normal((2, 250)), np.sign(rng.standard_normal((1, 250)))])   # no tail at all
    fit = tails.fit_t(x * 0.02)
    for i, row in enumerate(x * 0.02):
        def profile(nu, row=row):
            scale = optimize.brentq(lambda s: (nu + 1) * np.sum(row**2 / (nu * s * s + row**2)) - len(row),
                                    1e-8, 10.0, xtol=1e-15)
            return stats.t.logpdf(row, nu, 0, scale).sum()
        grid = max(profile(nu) for nu in np.geomspace(tails.NU_MIN, tails.NU_MAX, 200))
        assert stats.t.logpdf(row, fit.params["nu"][i], 0, fit.params["scale"][i]).sum() >= grid - 1e-9
    assert fit.params["nu"][-1] == tails.NU_MAX and (fit.params["nu"][:2] < 3).all()


def test_gpd_likelihood_at_least_scipys_on_many_tails():
    """100 tails, xi from about -0.7 to 0.8: our maximum is never below scipy's (default optimiser)."""
    x = np.random.default_rng(0).standard_t(4, size=(100, 250)) * 0.02
    fit = tails.fit_gpd(x)
    assert np.isfinite(fit.params["xi"]).all()
    for i, row in enumerate(x):
        y = row[row > fit.params["u"][i]] - fit.params["u"][i]
        xi, _, beta = stats.genpareto.fit(y, floc=0)
        ours = stats.genpareto.logpdf(y, fit.params["xi"][i], 0, fit.params["beta"][i]).sum()
        assert ours >= stats.genpareto.logpdf(y, xi, 0, beta).sum() - 1e-9


def test_gpd_uncomputable_with_few_exceedances_or_no_maximum():
    rng = np.random.default_rng(2)
    short = rng.standard_t(4, size=(1, 100))              # 100 losses: 10 exceedances < MIN_EXCEEDANCES
    assert np.isnan(tails.fit_gpd(short).var_es(0.99)[0]).all()
    uniform = rng.random((1, 2000))                        # bounded tail: xi -> -1, the likelihood has no maximum
    v, e = tails.fit_gpd(uniform).var_es(0.99)
    assert np.isnan(v).all() and np.isnan(e).all()


def test_nan_padding_and_flat_books():
    rng = np.random.default_rng(9)
    x = rng.standard_t(5, size=(2, 300)) * 0.01
    padded = np.hstack([np.full((2, 40), np.nan), x[:, 40:]])
    for method in tails.METHODS:
        a = tails.fit(method, padded).var_es(0.99)
        b = tails.fit(method, x[:, 40:]).var_es(0.99)
        np.testing.assert_allclose(a, b, rtol=1e-8)       # other rounding of the sums, at an ML fit's flat optimum
        flat = tails.fit(method, np.zeros((3, 250))).var_es(0.99)              # an empty book loses nothing
        assert (np.asarray(flat) == 0).all()


def test_fits_are_vectorised_over_leading_axes(losses):
    stacked = np.stack([losses, losses[::-1]])            # (2, 6, N): e.g. days x portfolios x scenarios
    for method in tails.METHODS:
        one = tails.fit(method, losses).var_es(0.99)
        both = tails.fit(method, stacked).var_es(0.99)
        np.testing.assert_allclose(both[0][0], one[0], rtol=1e-12)
        np.testing.assert_allclose(both[1][1], one[1][::-1], rtol=1e-12)


def test_cornish_fisher_outside_its_domain_is_uncomputable():
    """Where the expansion falls somewhere between the 95% and 99.99% quantiles (here: strong skew, little
    kurtosis), VaR 99% could sit below VaR 95% and ES below VaR: NaN, never a number."""
    from etl.risk import tails

    skew, kurt = np.array([0.2, 2.0, 0.0, 0.1]), np.array([6.0, 0.5, 0.0, -0.2])
    ok = tails._cf_monotone(skew, kurt)
    assert ok.tolist() == [True, False, True, True]          # near-normal noise stays computable
    z = np.linspace(*tails.CF_DOMAIN, 2001)
    for s, k, expected in zip(skew, kurt, ok, strict=True):
        q = tails._cf_quantile(stats.norm.cdf(z), 1.0, s, k)
        assert bool(np.all(np.diff(q) > 0)) == expected       # brute force agrees with the closed test
    rng = np.random.default_rng(3)
    skewed = rng.lognormal(0, 1.2, size=(1, 500))            # losses skewed far more than their kurtosis allows
    fit = tails.fit("param_cf", skewed)
    if not tails._cf_monotone(fit.params["skew"], fit.params["kurt"])[0]:
        assert np.isnan(fit.var_es(0.99)[0]).all()


def test_tail_quantiles_of_the_z2_draws_against_scipy(losses):
    """The loss quantiles of many models at many draws: Cornish-Fisher by the expansion, GPD by scipy's genpareto
    above the threshold, Student-t (interpolated between exact nodes) within 1e-6 of scipy's t, from nu 2.05 to
    1000 and out to 1 - 1e-12."""
    rng = np.random.default_rng(4)
    p = np.concatenate([[0.95, 0.975, 0.99], rng.uniform(0.95, 1.0, 2000), 1 - 10 ** rng.uniform(-12, -1.3, 500)])
    cf = tails.fit_cf(losses)
    np.testing.assert_allclose(tails.tail_quantiles(cf, p), cf.params["sigma"] * _z_cf(
        stats.norm.ppf(p)[:, None], cf.params["skew"], cf.params["kurt"]), rtol=1e-12)
    g = tails.fit_gpd(losses)
    gp = g.params
    np.testing.assert_allclose(tails.tail_quantiles(g, p), stats.genpareto.isf(
        (1 - p)[:, None] / gp["zeta"], gp["xi"], gp["u"], gp["beta"]), rtol=1e-9)
    nu = np.r_[tails.NU_MIN, 2.5, 3.0, 4.0, 10.0, 100.0, tails.NU_MAX, np.exp(rng.uniform(np.log(2.05), np.log(1000), 50))]
    t = tails.TailFit("param_t", {"scale": rng.uniform(0.5, 2.0, len(nu)), "nu": nu})
    exact = t.params["scale"] * stats.t.isf(1 - p[:, None], nu)
    assert np.abs(tails.tail_quantiles(t, p) / exact - 1).max() < 1e-6

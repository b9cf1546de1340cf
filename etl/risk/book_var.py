"""VaR/ES of books for every registered method and confidence: the one entry the end-of-day engine, the firm and
the intraday revaluation call (the methods and their confidences: etl/measures.py; the maths: `var`, `tails`).

`book_var_es(scenarios, exposure, scope)` values exposures (A, P) on one scenario set (`Scenarios`: the last N
daily asset returns, their covariance, the Monte Carlo draws and the volatility-filtered windows) and returns
{column: (P,)}, e.g. var_99_hist, for the methods of the scope. Scenario methods (hist and the filtered ones):
the losses of today's exposures on their windows; param: the covariance; mc: the seeded draws on the covariance;
the tail fits (param_cf, param_t, evt_gpd): fitted to the historical losses, summed asset by asset
(`var.exposed_losses`) so a book's figures do not depend on the other books.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from etl import measures
from etl.risk import filtered, tails, var


@dataclass(frozen=True)
class Scenarios:
    window: np.ndarray                     # (N, A) daily asset returns (NaN rows: shorter history)
    cov: np.ndarray                        # (A, A) their sample covariance
    z: np.ndarray | None = None            # (S, A) Monte Carlo draws and scale (S,) (var.mc_draws)
    scale: np.ndarray | None = None
    filtered: dict[str, np.ndarray] = field(default_factory=dict)   # method -> (N, A) rescaled window
    unscaled: dict[str, np.ndarray] = field(default_factory=dict)   # method -> (A,) a move without volatility in it

    @classmethod
    def last(cls, asset_ret: np.ndarray, n: int, sigmas: dict[str, np.ndarray] | None = None, z=None,
             scale=None) -> Scenarios:
        """The scenario set of the last n of the asset returns (T, A); sigmas {method: (T+1, A)} the filtered
        one-step-ahead volatilities (etl.risk.filtered), whose residuals rescaled to the last give its window."""
        window = asset_ret[-n:]
        fhs = {m: filtered.fhs_window(filtered.standardised(asset_ret, s)[-n:], s[-1])
               for m, s in (sigmas or {}).items()}
        unscaled = {m: filtered.unscaled(asset_ret, s)[-n:].any(axis=0) for m, s in (sigmas or {}).items()}
        return cls(window, var.covariance(window), z, scale, fhs, unscaled)


def book_var_es(sc: Scenarios, exposure: np.ndarray, scope: str) -> dict[str, np.ndarray]:
    """{column: (P,)} of every method of `scope` at each of its confidences; exposure (A, P)."""
    out = {}
    for method in measures.methods(scope):
        for c, (v, e) in method_var_es(method.name, sc, exposure, method.confidences).items():
            out[measures.column("var", c, method.name, scope)] = v
            out[measures.column("es", c, method.name, scope)] = e
    return out


def method_var_es(method: str, sc: Scenarios, exposure: np.ndarray,
                  confidences: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """{confidence: (VaR (P,), ES (P,))} of one method."""
    if method == "hist" or method in sc.filtered:
        w = sc.window if method == "hist" else sc.filtered[method]
        out = var.var_es_from_losses(var.historical_losses(w, exposure), confidences)
        if method in sc.unscaled:                  # exposed to a move the filter cannot scale: uncomputable
            unknown = (exposure[sc.unscaled[method]] != 0).any(axis=0)                # (P,)
            for v, e in out.values():
                v[unknown], e[unknown] = np.nan, np.nan
        return out
    if method == "param":
        sigma = var.portfolio_sigma(sc.cov, exposure)
        return {c: var.parametric_var_es(sigma, c) for c in confidences}
    if method == "mc":
        return var.var_es_from_losses(var.mc_losses(sc.z, sc.scale, sc.cov, exposure), confidences)
    if method in tails.METHODS:
        fit = tails.fit(method, var.exposed_losses(exposure.T, -sc.window.T))
        return {c: fit.var_es(c) for c in confidences}
    raise ValueError(f"VaR method {method!r} (etl/measures.py) has no computation in etl/risk/book_var.py, or its "
                     "filtered window was not given")

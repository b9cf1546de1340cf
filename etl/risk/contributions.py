"""Euler risk contributions: how much of a portfolio's VaR/ES each position carries (pure numpy, batched).

Exposures e (A, P): one column per portfolio, base-currency market values. VaR and ES are homogeneous of degree
one in e, so by Euler's theorem sum_a e_a dRisk/de_a = Risk: the components below add up to the portfolio figure
exactly (to rounding).
- Parametric (delta-normal, zero mean): sigma = sqrt(e' C e); marginal VaR_a = dVaR/de_a = z (C e)_a / sigma (VaR
  per unit of exposure); component VaR_a = e_a x marginal VaR_a = z e_a (C e)_a / sigma, summing to z sigma.
- Historical ES: the tail scenarios are those with loss >= VaR (as in `var.var_es_from_losses`); component ES_a =
  mean over the tail scenarios of the asset's own loss -e_a r_{s,a}, summing to the mean tail loss = ES.
All portfolios at once: one (A, A) x (A, P) product for the parametric part, one (P, N) x (N, A) product for the
tail means; no per-portfolio loop.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from etl.risk import var


def parametric(cov: np.ndarray, exposure: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """(component VaR (A, P), marginal VaR (A, P)); a portfolio with sigma 0 has 0 components."""
    z = stats.norm.ppf(confidence)
    ce = cov @ exposure                                              # (A, P)
    sigma = np.sqrt(np.clip((exposure * ce).sum(axis=0), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        marginal = np.where(sigma > 0, z * ce / np.where(sigma > 0, sigma, 1.0), 0.0)
    return exposure * marginal, marginal


def tail_mean_returns(returns_window: np.ndarray, exposure: np.ndarray,
                      confidences: tuple[float, ...]) -> dict[float, np.ndarray]:
    """{confidence: mean asset returns (A, P) over each portfolio's tail scenarios (loss >= VaR)}; returns (N, A)
    without NaN rows, exposures (A, P)."""
    r = np.asarray(returns_window, dtype="float64")
    losses = var.historical_losses(r, exposure)                      # (N, P)
    out = {}
    for c, (v, _) in var.var_es_from_losses(losses, confidences).items():
        tail = (losses >= v[None, :]).astype("float64")              # (N, P)
        count = tail.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = (tail.T @ r).T / np.where(count > 0, count, np.nan)   # (A, P)
    return out


def historical_es(returns_window: np.ndarray, exposure: np.ndarray,
                  confidences: tuple[float, ...]) -> dict[float, np.ndarray]:
    """{confidence: component ES (A, P)}: each asset's mean loss -e_a r_{s,a} over the tail scenarios."""
    return {c: -exposure * m for c, m in tail_mean_returns(returns_window, exposure, confidences).items()}

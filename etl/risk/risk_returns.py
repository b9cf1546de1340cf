"""Returns and volatility (pure numpy; time runs down axis 0, one column per asset or portfolio).

Conventions (docs/risk_conventions.md): simple returns p_t / p_{t-1} - 1; volatilities are the sample standard
deviation (ddof=1) of daily simple returns times sqrt(periods) (365 by default: crypto trades every day); EWMA is
RiskMetrics with zero mean and weights normalised over the window, i.e. pandas `(r**2).ewm(alpha=1-lambda).mean()`.
"""

from __future__ import annotations

import numpy as np


def simple_returns(prices: np.ndarray) -> np.ndarray:
    """(T, ...) prices -> (T-1, ...) simple returns."""
    prices = np.asarray(prices, dtype="float64")
    return prices[1:] / prices[:-1] - 1.0


def log_returns(prices: np.ndarray) -> np.ndarray:
    """(T, ...) prices -> (T-1, ...) log returns."""
    return np.diff(np.log(np.asarray(prices, dtype="float64")), axis=0)


def window_vol(returns: np.ndarray, window: int, periods: int = 365) -> np.ndarray:
    """Annualised sample volatility of the last `window` rows of each column; NaN when fewer rows exist."""
    returns = np.asarray(returns, dtype="float64")
    if returns.shape[0] < window:
        return np.full(returns.shape[1:], np.nan)
    return returns[-window:].std(axis=0, ddof=1) * np.sqrt(periods)


def downside_semideviation(returns: np.ndarray, window: int, periods: int = 365) -> np.ndarray:
    """Annualised downside semi-deviation (target 0) of the last `window` rows of each column:
    sqrt(sum(min(r, 0)^2) / window) x sqrt(periods); NaN when fewer rows exist."""
    returns = np.asarray(returns, dtype="float64")
    if returns.shape[0] < window:
        return np.full(returns.shape[1:], np.nan)
    down = np.minimum(returns[-window:], 0.0)
    return np.sqrt((down * down).mean(axis=0)) * np.sqrt(periods)


def ewma_weights(n: int, lam: float) -> np.ndarray:
    """Weights of the n rows, oldest first, newest weighted 1: lam**(n-1), ..., lam, 1 (normalised to sum 1)."""
    w = lam ** np.arange(n - 1, -1, -1, dtype="float64")
    return w / w.sum()


def ewma_vol(returns: np.ndarray, lam: float = 0.94, periods: int = 365) -> np.ndarray:
    """Annualised RiskMetrics EWMA volatility over all rows given (zero mean)."""
    returns = np.asarray(returns, dtype="float64")
    if returns.shape[0] == 0:
        return np.full(returns.shape[1:], np.nan)
    w = ewma_weights(returns.shape[0], lam)
    return np.sqrt(np.tensordot(w, returns**2, axes=(0, 0))) * np.sqrt(periods)

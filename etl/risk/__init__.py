"""Risk engine: valuation, PnL, exposure and concentration, volatility, VaR/ES, drawdown, anomalies, VaR backtests.

Pure maths (arrays in, arrays out): `risk_returns`, `valuation`, `var`, `drawdown`, `anomalies`, `backtest`,
`contributions` (Euler), `filtered` (EWMA/GARCH-t FHS), `es_backtest` (Z2, McNeil-Frey), `stress`; VaR/ES of every
method of etl/measures.py for a book: `book_var` (the end of day, the firm and intraday call it); tables from
prices and the book: `engine` (and `firm`, the whole book in USD), `attribution` (daily PnL by factor, from the
factor model's outputs); the EOD I/O: `runner` (`run_risk`); the scenario set the EOD run persists: `scenarios`;
the 5-minute revaluation on it: `intraday` (pure), its I/O `intraday_io`. Conventions: docs/risk_conventions.md.
"""

from etl.risk.runner import RiskSummary, run_risk

__all__ = ["RiskSummary", "run_risk"]

"""Review (rev-risk): defects of the intraday revaluation demonstrated by failing tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from etl import measures
from etl.risk import intraday


def test_a_var_limit_on_var_995_evt_gpd_is_checked_intraday_not_a_crash():
    """portfolios.csv accepts var_limit_metric = var_995_evt_gpd (etl.portfolios: any var_* column of scope
    portfolio). docs/risk_conventions.md: a method intraday does not compute is checked intraday on the historical
    figure of the same level. Intraday has no 99.5% figure at all, so `limit_rows` must still produce a row set
    (e.g. the 99% historical figure, or an uncomputable breach), not raise for every portfolio of the bucket."""
    bucket = pd.Timestamp("2026-03-02 10:05", tz="UTC")
    cols = dict.fromkeys(measures.columns("intraday"), 100.0)
    risk = pd.DataFrame({"portfolio_id": ["P"], "bucket_start": [bucket], "gross_exposure": [1e4],
                         "concentration_pct": [0.5], "drawdown": [-0.01], "as_of_date": [pd.Timestamp("2026-03-02")],
                         "base_currency": ["USD"], **{k: [v] for k, v in cols.items()}})
    portfolios = pd.DataFrame({"portfolio_id": ["P"], "var_limit": [50.0], "concentration_limit": [1.0],
                               "drawdown_limit": [1.0], "var_limit_metric": ["var_995_evt_gpd"]})
    assert "var_995_evt_gpd" in [c for c in measures.columns("portfolio") if c.startswith("var_")]
    out = intraday.limit_rows(risk, portfolios, None)
    var_rows = out[out["limit_type"] == "var"]
    assert len(var_rows) == 1 and var_rows["status"].iat[0] == "breach"
    assert np.isfinite(var_rows["limit_value"].iat[0])

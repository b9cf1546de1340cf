"""Fixtures shared by the risk tests: returns for the maths tests (test_var, test_risk_returns, test_drawdown,
test_anomalies), and `chain`, a real factor + risk run (test_attribution, test_reproduce)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def rets() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.standard_t(4, size=(300, 5)) * 0.03


# ---- a real run: silver bars -> factors -> risk --------------------------------------------------------------------
FIRST, DAYS = pd.Timestamp("2026-01-01"), 30
AS_OF = FIRST + pd.Timedelta(days=DAYS - 1)


@pytest.fixture
def chain(data_dir, tmp_path, monkeypatch):
    """The warehouse sample's silver bars and book, the factor stage up to the end of AS_OF, then the risk run."""
    from etl.factors import run_factors
    from etl.risk.runner import run_risk
    from etl.settings import get_settings
    from etl.storage import Store
    from tests.support import warehouse_sample as sample

    b5 = sample.bars_5m(FIRST.date(), DAYS)
    sample.write_silver(Store.from_uri(str(data_dir)), b5, sample.daily_from_5m(b5), FIRST.year)
    monkeypatch.setenv("PIPELINE_REFERENCE_DIR", str(sample.write_reference(tmp_path / "ref")))
    for key, value in {"RISK_MC_SCENARIOS": "500", "RISK_BACKTEST_DAYS": "25", "RISK_VAR_LOOKBACK_DAYS": "25",
                       "PIPELINE_DAILY_HISTORY_DAYS": "35", "PIPELINE_PRODUCTS": ",".join(sample.PRODUCTS),
                       "PIPELINE_HISTORY_DAYS": "3", "FACTOR_FREQUENCY_S": "300", "FACTOR_WINDOW": "48",
                       "FACTOR_MIN_OBS": "12", "FACTOR_FORMATION_MINUTES": "120", "FACTOR_HOLDING_MINUTES": "60",
                       "FACTOR_MOMENTUM_MINUTES": "30,60,120"}.items():
        monkeypatch.setenv(key, value)
    run_factors(get_settings(), (AS_OF + pd.Timedelta(days=1)).tz_localize("UTC").to_pydatetime())
    run_risk(AS_OF.date(), get_settings())
    return {"data": data_dir, "b5": b5, "positions": sample.POSITIONS}

"""Fixtures shared by the risk maths tests (test_var, test_risk_returns, test_drawdown, test_anomalies)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rets() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.standard_t(4, size=(300, 5)) * 0.03

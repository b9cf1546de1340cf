"""The online mid-price forecaster: exact on a linear path, no better than the last price on a random walk, and
the recursive update equals a batch least-squares fit (numpy) on the same samples."""

from __future__ import annotations

import numpy as np
import pytest

from etl.stream.forecast import ErrorStats, OnlineForecaster


def feed(model: OnlineForecaster, mids: np.ndarray, t0: int = 1_700_000_000) -> None:
    for i, mid in enumerate(mids):
        model.update(t0 + i, float(mid))


def test_linear_mid_is_learned_and_the_error_goes_to_zero():
    t = np.arange(1200)
    mids = 68_000.0 + 0.37 * t  # a steady trend: +22.2 per minute
    model = OnlineForecaster()
    feed(model, mids[:600])
    naive_mae = model.naive.mae
    assert naive_mae == pytest.approx(0.37 * 60)       # the last price misses the whole trend
    model.model, model.naive = ErrorStats(), ErrorStats()  # score only forecasts made after the warm-up
    feed(model, mids[600:], t0=1_700_000_000 + 600)
    assert model.model.n > 400
    assert model.model.mae < 1e-6 and model.model.rmse < 1e-6
    target, forecast = model.last_forecast
    assert forecast == pytest.approx(mids[-1] + 0.37 * 60, abs=1e-6)


def test_random_walk_is_no_better_than_the_last_price():
    rng = np.random.default_rng(7)
    mids = 68_000.0 + np.cumsum(rng.normal(0, 5.0, 6000))
    model = OnlineForecaster()
    feed(model, mids)
    assert model.model.n > 5000
    # independent increments: past changes carry no information about the next 60 s
    assert model.model.mae >= 0.99 * model.naive.mae
    assert model.model.rmse >= 0.99 * model.naive.rmse
    assert model.model.mae <= 1.2 * model.naive.mae  # estimation noise only (overlapping 60 s targets)


def test_recursive_update_matches_batch_least_squares():
    rng = np.random.default_rng(3)
    mids = 100.0 + np.cumsum(rng.normal(0, 0.1, 400)) + 0.01 * np.arange(400)
    model = OnlineForecaster(prior_scale=1e6)
    feed(model, mids)
    # the same regression in one batch: rows t with t - 60 >= 0 and t + 60 < n
    rows = np.arange(60, len(mids) - 60)
    X = np.column_stack([np.ones(len(rows)), mids[rows] - mids[rows - 5], mids[rows] - mids[rows - 60]])
    y = mids[rows + 60] - mids[rows]
    beta = np.linalg.solve(X.T @ X + np.eye(3) / 1e6, X.T @ y)  # RLS from P0 = 1e6 I is this ridge fit
    assert model.updates == len(rows)
    np.testing.assert_allclose(model.beta, beta, rtol=1e-5, atol=1e-8)


def test_a_hole_in_the_samples_restarts_the_window():
    model = OnlineForecaster()
    feed(model, np.full(100, 10.0))
    assert model.last_forecast is not None
    assert model.update(1_700_000_000 + 500, 10.0) is None  # lags across the hole would be wrong
    assert len(model.history) == 1

"""The 60-second-ahead mid-price forecast of `python -m etl insights`: a linear model trained online.

Sampling: the caller feeds one mid price per second (the latest known, carried forward), `update(t, mid)`.
Model: the change over the horizon h is linear in recent changes,
    mid[t+h] - mid[t] = b0 + b1 * (mid[t] - mid[t-5]) + b2 * (mid[t] - mid[t-60]) + noise,
fitted by recursive least squares (RLS): each second, once the target of the features from h seconds ago is known,
one rank-one update of the coefficients and of the inverse information matrix P (O(k^2), k = 3), with forgetting
factor `forgetting` (1 = plain least squares over all history; < 1 tracks drift) - never a refit over history.
Forecast at t: mid[t] + x[t] . b.
Errors: every forecast is scored when its horizon passes (absolute and squared error); the last price (forecast
mid[t+h] = mid[t]) is scored alongside as the benchmark. On a linear mid path the model learns the slope and its
error goes to ~0; on a random walk no linear model of past changes beats the last price (increments are
independent), so its error stays at or slightly above the last price's (tests/etl/stream/test_forecast.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

LAGS = (5, 60)


@dataclass
class ErrorStats:
    n: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0

    def add(self, error: float) -> None:
        self.n += 1
        self.abs_sum += abs(error)
        self.sq_sum += error * error

    @property
    def mae(self) -> float:
        return self.abs_sum / self.n if self.n else math.nan

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_sum / self.n) if self.n else math.nan


class OnlineForecaster:
    """RLS forecaster of mid[t + horizon] from one sample a second (see the module docstring)."""

    def __init__(self, horizon_s: int = 60, lags: tuple[int, ...] = LAGS, forgetting: float = 1.0,
                 prior_scale: float = 1e6):
        self.horizon, self.lags, self.forgetting = horizon_s, tuple(lags), forgetting
        k = 1 + len(self.lags)
        self.beta = np.zeros(k)
        self.P = np.eye(k) * prior_scale   # large: a nearly uninformative start
        self.history: deque[tuple[int, float]] = deque(maxlen=horizon_s + max(self.lags) + 1)
        self.pending: deque[tuple[int, float, float]] = deque()  # (target time, forecast, last price)
        self.model = ErrorStats()
        self.naive = ErrorStats()
        self.updates = 0
        self.last_forecast: tuple[int, float] | None = None      # (target time, forecast)

    def _features(self, i: int) -> np.ndarray | None:
        """Features of history[i] (None when the history is too short)."""
        if i - max(self.lags) < 0:
            return None
        mid = self.history[i][1]
        return np.array([1.0, *(mid - self.history[i - lag][1] for lag in self.lags)])

    def update(self, t: int, mid: float) -> float | None:
        """Take the sample of second `t` (consecutive seconds); returns the forecast of mid[t + horizon]."""
        if self.history and t != self.history[-1][0] + 1:
            self.history.clear()   # a hole in the samples: lags would be wrong, start the window again
            self.pending.clear()
        self.history.append((t, mid))
        n = len(self.history)
        # 1. learn from the features of h seconds ago, whose target is now known
        if n > self.horizon:
            x = self._features(n - 1 - self.horizon)
            if x is not None:
                y = mid - self.history[n - 1 - self.horizon][1]
                Px = self.P @ x
                gain = Px / (self.forgetting + x @ Px)
                self.beta = self.beta + gain * (y - x @ self.beta)
                self.P = (self.P - np.outer(gain, Px)) / self.forgetting
                self.updates += 1
        # 2. score forecasts whose horizon has passed
        while self.pending and self.pending[0][0] <= t:
            target, forecast, last = self.pending.popleft()
            if target == t:
                self.model.add(forecast - mid)
                self.naive.add(last - mid)
        # 3. forecast from now
        x = self._features(n - 1)
        if x is None:
            return None
        forecast = mid + float(x @ self.beta)
        self.pending.append((t + self.horizon, forecast, mid))
        self.last_forecast = (t + self.horizon, forecast)
        return forecast

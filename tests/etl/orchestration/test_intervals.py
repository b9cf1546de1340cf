"""etl.orchestration.intervals: fetch windows, the daily history window, schedule intervals (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from etl.errors import ValidationError
from etl.orchestration import intervals
from etl.settings import get_settings

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("PIPELINE_HISTORY_DAYS", "1")
    monkeypatch.setenv("PIPELINE_OVERLAP_MINUTES", "15")
    return get_settings()


# ---- pure window logic --------------------------------------------------------------------------------------
def test_intraday_window_is_the_interval_plus_overlap(settings):
    start, end = intervals.intraday_window(T0 - timedelta(minutes=5), T0, settings)
    assert (start, end) == (T0 - timedelta(minutes=20), T0)


def test_first_intraday_run_reaches_back_history_days(settings):
    start, end = intervals.intraday_window("2026-03-02T11:55:00Z", "2026-03-02T12:00:00Z", settings,
                                           has_history=False)
    assert (start, end) == (T0 - timedelta(days=1), T0)


def test_empty_interval_is_refused(settings):
    with pytest.raises(ValidationError, match="is empty"):
        intervals.intraday_window(T0, T0, settings)


def test_daily_window_and_eod_as_of(settings, monkeypatch):
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "30")
    start, end = intervals.daily_window(date(2026, 3, 1), get_settings())
    assert end == datetime(2026, 3, 2, tzinfo=UTC)
    assert start == datetime(2026, 1, 31, tzinfo=UTC)
    assert intervals.eod_as_of("2026-03-01T00:10:00+00:00") == date(2026, 3, 1)


def test_fetch_start_is_the_overlap_before_since_or_the_history_on_a_first_run(settings, monkeypatch):
    assert intervals.fetch_start(T0, T0 + timedelta(hours=1), 60, settings) == T0 - timedelta(minutes=15)
    assert intervals.fetch_start(None, T0, 60, settings) == T0 - timedelta(days=1)        # history_days
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "30")
    assert intervals.fetch_start(None, T0, 86400, get_settings()) == T0 - timedelta(days=30)  # daily candles


def test_daily_history_start_backfills_then_refetches_the_overlap(settings, monkeypatch):
    monkeypatch.setenv("PIPELINE_DAILY_HISTORY_DAYS", "30")
    monkeypatch.setenv("PIPELINE_DAILY_OVERLAP_DAYS", "3")
    s = get_settings()
    day = date(2026, 3, 2)
    window_start = datetime(2026, 2, 1, tzinfo=UTC)
    held = datetime(2026, 1, 1, tzinfo=UTC)  # the oldest daily candle bronze holds
    assert intervals.daily_history_start(None, None, day, s) == window_start                 # first run
    assert intervals.daily_history_start(datetime(2026, 1, 1, tzinfo=UTC), held, day, s) == window_start  # too old
    assert intervals.daily_history_start(datetime(2026, 3, 1, tzinfo=UTC), held, day, s) == datetime(
        2026, 2, 27, tzinfo=UTC)
    # a rerun of an old day still fetches its last overlap days, not nothing
    assert intervals.daily_history_start(datetime(2026, 3, 1, tzinfo=UTC), held, date(2026, 2, 10), s) == datetime(
        2026, 2, 8, tzinfo=UTC)
    # ... and all its window when bronze starts after the window's start (a day before the history bronze holds)
    assert intervals.daily_history_start(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 1, 20, tzinfo=UTC),
                                         date(2026, 2, 10), s) == datetime(2026, 1, 12, tzinfo=UTC)


def test_last_interval_is_epoch_aligned_plus_the_offset():
    every, offset = timedelta(days=1), timedelta(minutes=10)
    assert intervals.last_interval(datetime(2026, 3, 2, 0, 10, tzinfo=UTC), every, offset) == (
        datetime(2026, 3, 1, 0, 10, tzinfo=UTC), datetime(2026, 3, 2, 0, 10, tzinfo=UTC))


def test_day_tail_start_completes_the_as_of_days_intraday_candles_only_when_they_stop_inside_it(settings):
    day, midnight = date(2026, 3, 1), datetime(2026, 3, 2, tzinfo=UTC)
    assert intervals.day_tail_start(None, day, settings) is None                                # no intraday candles
    assert intervals.day_tail_start(midnight - timedelta(days=2), day, settings) is None        # none of the day
    assert intervals.day_tail_start(midnight - timedelta(minutes=1), day, settings) is None     # the last bucket
    assert intervals.day_tail_start(midnight + timedelta(minutes=3), day, settings) is None     # past the day
    assert intervals.day_tail_start(midnight - timedelta(minutes=31), day, settings) == midnight - timedelta(minutes=46)
    assert intervals.day_tail_start(midnight - timedelta(hours=24), day, settings) == midnight - timedelta(hours=24)


def test_intraday_window_reaches_back_to_the_newest_candle_after_skipped_intervals(settings):
    start = T0 - timedelta(minutes=5)
    on_time = intervals.intraday_window(start, T0, settings, newest=start - timedelta(minutes=1))
    assert on_time == (T0 - timedelta(minutes=20), T0)                        # the interval plus the overlap
    skipped = intervals.intraday_window(start, T0, settings, newest=T0 - timedelta(hours=2))
    assert skipped == (T0 - timedelta(hours=2, minutes=15), T0)               # back to the newest, less the overlap
    assert intervals.intraday_window(start, T0, settings, newest=T0 - timedelta(days=5))[0] == T0 - timedelta(
        days=1, minutes=15)                                                   # at most the history

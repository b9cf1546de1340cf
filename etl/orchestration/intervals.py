"""Window and interval arithmetic of the runs (pure: no now(), no I/O).

The one place that decides which time range a fetch covers: the data interval (or bronze's watermark) extended
back by the overlap margin, or the whole history on a first run (`fetch_start`, used by `bronze` and the
intraday task); the daily risk history's window (`daily_window`, `daily_history_start`); the day an end-of-day
run values (`eod_as_of`); and the last complete interval of a schedule (`last_interval`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from etl.errors import ValidationError
from etl.orchestration.spec import DAILY
from etl.settings import Settings


def utc(value: datetime | str) -> datetime:
    """A datetime or ISO string (a trailing Z allowed) as an aware UTC datetime; naive means UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def as_date(as_of: date | str | None) -> date | None:
    """An as-of day given as a date or an ISO string (XCom and Airflow templates hand strings)."""
    return date.fromisoformat(as_of) if isinstance(as_of, str) else as_of


def last_interval(moment: datetime, every: timedelta, offset: timedelta = timedelta(0)) -> tuple[datetime, datetime]:
    """The last complete [start, end) of a fixed schedule (`every`, epoch-aligned plus `offset`) ending at or
    before `moment`."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC) + offset
    end = epoch + ((utc(moment) - epoch) // every) * every
    return end - every, end


def history(granularity: int, settings: Settings) -> timedelta:
    """How far back a first fetch reaches: `daily_history_days` for daily candles, else `history_days`."""
    return timedelta(days=settings.daily_history_days if granularity >= DAILY else settings.history_days)


def fetch_start(since: datetime | None, end: datetime, granularity: int, settings: Settings) -> datetime:
    """Where a fetch ending at `end` starts: `since` (a data interval's start, or the newest bucket bronze holds)
    back by `overlap_minutes`, so late corrections are fetched again; with nothing yet (`since` None: the first
    run) the whole `history` back from `end`."""
    if since is None:
        return end - history(granularity, settings)
    return since - timedelta(minutes=settings.overlap_minutes)


def intraday_window(interval_start: datetime | str, interval_end: datetime | str, settings: Settings,
                    has_history: bool = True, newest: datetime | None = None) -> tuple[datetime, datetime]:
    """The fetch window of an intraday run: its data interval, extended back by the overlap margin.

    With no history yet (first ever run) the window reaches back the history from the interval end. When the
    newest candle bronze holds (`newest`) is older than that window's start, intervals were skipped (catchup is
    off: after a run that outlasted its interval, a pause, a scheduler outage, Airflow runs the latest interval
    only): the window reaches back to it (less the overlap, at most the history), so they are fetched too.
    """
    start, end = utc(interval_start), utc(interval_end)
    if end <= start:
        raise ValidationError(f"data interval [{start.isoformat()}, {end.isoformat()}) is empty")
    since = start if has_history else None
    if since is not None and newest is not None and utc(newest) < fetch_start(since, end, settings.granularity,
                                                                              settings):
        since = max(utc(newest), end - history(settings.granularity, settings))
    return fetch_start(since, end, settings.granularity, settings), end


def day_end(as_of: date) -> datetime:
    """The UTC midnight that ends the as-of day: where an end-of-day run's daily candles and factors stop (whole
    days: factors up to the interval's end, 00:10, replaced the next day's committed partitions with 10 minutes)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1)


def daily_window(as_of: date, settings: Settings) -> tuple[datetime, datetime]:
    """Daily candles for the risk history: `daily_history_days` days ending with the as-of day (inclusive)."""
    end = day_end(as_of)
    return end - timedelta(days=settings.daily_history_days), end


def daily_history_start(watermark: datetime | None, oldest: datetime | None, as_of: date,
                        settings: Settings) -> datetime:
    """Where an end-of-day fetch of daily candles starts, given the newest and the oldest daily candle bronze holds
    (`watermark`, `oldest`; None on a first run): the window start on a first run (backfill) or when bronze
    starts after it (a run for a day before bronze's history: else risk would value it on the few days bronze
    has), else the watermark minus `daily_overlap_days` (recent days are revised), never before the window start
    and always at least the overlap before the window end, so a rerun of an old day still fetches."""
    window_start, end = daily_window(as_of, settings)
    if watermark is None or watermark < window_start or oldest is None or oldest > window_start:
        return window_start
    newest = min(watermark + timedelta(days=1), end)
    return max(window_start, newest - timedelta(days=settings.daily_overlap_days))


def day_tail_start(watermark: datetime | None, as_of: date, settings: Settings) -> datetime | None:
    """Where an end-of-day run completes the as-of day's intraday candles (`settings.granularity`) before silver is
    built, given the newest such candle bronze holds (`watermark`): None when bronze holds none of the day (None or
    before it: the day's bar comes from its daily candle) or when they reach the day's last bucket; else the
    watermark minus the overlap, not before the day. Without it the day's bar would come from minutes that stop
    where the intraday runs had got to at the end-of-day run (late or failed), their last close taken for the day's."""
    start = datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    if watermark is None or not start <= watermark < end - timedelta(seconds=settings.granularity):
        return None
    return max(start, fetch_start(watermark, end, settings.granularity, settings))


def eod_as_of(interval_start: datetime | str) -> date:
    """The business day an end-of-day run values: the day its data interval starts."""
    return utc(interval_start).date()

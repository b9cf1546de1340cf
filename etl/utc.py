"""UTC, the platform's one time zone: the helper every stage uses for a datetime it is handed (no heavy imports:
silver's worker processes import it)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(ts: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as UTC (never as the machine's local time)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)

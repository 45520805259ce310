"""Timestamps as the event log writes them: ISO 8601 UTC text with microseconds and ``Z``.

One format everywhere (events, projections, views, reason files), so that text
order is time order and SQLite's date functions read it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(dt: datetime) -> str:
    """ISO 8601 UTC with microseconds and a ``Z``: sorts as text, parses in SQLite."""
    if dt.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    if dt.utcoffset():
        dt = dt.astimezone(timezone.utc)
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str | None) -> datetime | None:
    """The inverse of :func:`format_ts` (an aware UTC datetime); None for no timestamp."""
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)

"""Durations as pipeline authors write them: ``timedelta``, seconds, ISO 8601, or a number
with a unit.

``parse_duration("PT30M")``, ``parse_duration(90)``, ``parse_duration("90")``,
``parse_duration("P1DT2H30M5.5S")``, ``parse_duration("30m")``, ``parse_duration("1h 30min")``
and ``parse_duration(timedelta(...))`` all give a :class:`datetime.timedelta`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from .errors import ConfigError

_ISO = re.compile(
    r"^P(?!$)(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE,
)
#: the units of the short form (``30s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1h30m``), as
#: systemd and most schedulers spell them; a month or a year has no fixed length, so neither
#: is one
_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "seconds"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "minutes"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hours"),
    **dict.fromkeys(("d", "day", "days"), "days"),
    **dict.fromkeys(("w", "week", "weeks"), "weeks"),
}
#: what to write instead, in every message about a duration that could not be read
DURATION_HINT = ("use ISO 8601 such as PT30M, PT2H or P1D, a number of seconds such as 90, or a "
                 "number with a unit such as 30m, 12h or 7d")
_SHORT_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)


def parse_duration(value: Any, *, what: str = "duration", positive: bool = False) -> timedelta:
    """Parse ``value``; raise ConfigError naming ``what`` and the accepted forms."""
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, bool):
        raise ConfigError(_bad(what, value))
    elif isinstance(value, (int, float)):
        td = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip()
        m = _ISO.match(text)
        if m:
            parts = {k: float(v) for k, v in m.groupdict().items() if v is not None}
            td = timedelta(**parts)
        else:
            try:
                td = timedelta(seconds=float(text))
            except ValueError:
                td = _short(text, what, value)
    else:
        raise ConfigError(_bad(what, value))
    if td < timedelta(0):
        raise ConfigError(f"{what} is {format_duration(td)}, which is negative; use a "
                          "positive ISO 8601 duration such as PT30M")
    if positive and td == timedelta(0):
        raise ConfigError(f"{what} is 0s; use a positive ISO 8601 duration such as PT30M")
    return td


def _short(text: str, what: str, value: Any) -> timedelta:
    """``30m``, ``12h``, ``1h30m``, ``2 days``: numbers, each with a unit of :data:`_UNITS`."""
    parts: dict[str, float] = {}
    end = 0
    for m in _SHORT_PART.finditer(text):
        if m.start() != end:
            break
        unit = _UNITS.get(m.group(2).lower())
        if unit is None or m.group(2) == "M":  # systemd's month, Prometheus' minute: neither
            raise UnknownUnit(what, value, m.group(2))
        if unit in parts:
            raise ConfigError(_bad(what, value))
        parts[unit] = float(m.group(1))
        end = m.end()
    if not parts or text[end:].strip():
        raise ConfigError(_bad(what, value))
    return timedelta(**parts)


class UnknownUnit(ConfigError):
    """A number with a unit that is not one of time (``3 months``, ``1y``, ``30x``);
    ``detail`` says so without the value, for messages that name it their own way."""

    def __init__(self, what: str, value: Any, unit: str):
        hint = (" (a month or a year has no fixed length: use days, such as 30d)"
                if unit.lower().startswith(("mo", "y")) else
                " (M is a month to some tools and a minute to others: write min for minutes, "
                "or days such as 30d)" if unit == "M" else "")
        self.detail = (f"{unit!r} is not a unit of time{hint}; use s, m, h, d or w (such as "
                       "30m or 1h30m), or ISO 8601 such as PT30M")
        super().__init__(f"{what} {value!r}: {self.detail}")


def _bad(what: str, value: Any) -> str:
    return f"{what} {value!r} is not a duration; {DURATION_HINT}"


def format_duration(td: timedelta) -> str:
    """ISO 8601 text for a timedelta (``PT1H30M``), used in messages and schemas."""
    total = td.total_seconds()
    sign = "-" if total < 0 else ""
    total = abs(total)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    out = f"{sign}P"
    if days:
        out += f"{int(days)}D"
    if hours or minutes or seconds or not days:
        out += "T"
        if hours:
            out += f"{int(hours)}H"
        if minutes:
            out += f"{int(minutes)}M"
        if seconds or not (hours or minutes):
            out += f"{seconds:g}S"
    return out

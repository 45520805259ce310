"""Durations as pipeline authors write them: ``timedelta``, seconds, or ISO 8601.

``parse_duration("PT30M")``, ``parse_duration(90)``, ``parse_duration("90")``,
``parse_duration("P1DT2H30M5.5S")`` and ``parse_duration(timedelta(...))`` all
give a :class:`datetime.timedelta`.
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
                raise ConfigError(_bad(what, value)) from None
    else:
        raise ConfigError(_bad(what, value))
    if td < timedelta(0):
        raise ConfigError(f"{what} is {format_duration(td)}, which is negative; use a "
                          "positive ISO 8601 duration such as PT30M")
    if positive and td == timedelta(0):
        raise ConfigError(f"{what} is 0s; use a positive ISO 8601 duration such as PT30M")
    return td


def _bad(what: str, value: Any) -> str:
    return (f"{what} {value!r} is not a duration; use ISO 8601 such as PT30M, PT2H or P1D, "
            "or a number of seconds such as 90")


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

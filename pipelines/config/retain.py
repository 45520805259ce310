"""The ``retain:`` sections: how long the state directory keeps what runs leave behind.

A master file's ``retain:`` holds the daemon-wide defaults (:class:`RetainSettings`); a
pipeline file's ``retain:`` overrides some of them for that pipeline
(:class:`RetainOverrides`).  :func:`policy` merges them into a :class:`Policy`, which
``ahgd gc`` and the daemon's collection apply (``ahgd_daemon/retention.py``).  What is
never removed, whatever these say, is in README.md ("Retention").

Sizes are written as ``50GB`` (decimal units: KB, MB, GB, TB; binary ones: KiB, MiB, GiB,
TiB) or a whole number of bytes; durations as elsewhere (``P30D``, ``PT12H``, ``30d``, seconds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Mapping

from pydantic import (BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator,
                      WithJsonSchema, field_validator)

from .values import Duration, fail, show

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
SIZE_HINT = "use a number and a unit such as 500MB or 50GB (or a whole number of bytes)"


def parse_size(value: Any) -> int:
    """``"50GB"`` -> 50_000_000_000; a whole number is bytes.  ValueError with the hint."""
    if isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a size; {SIZE_HINT}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} is not a positive size; {SIZE_HINT}")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = (match.group(2) or "b").lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{show(value)} is not a size; {SIZE_HINT}")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{show(value)} is not a positive size; {SIZE_HINT}")
    return size


def dump_size(size: int) -> str | int:
    """A size as a config file writes it, exactly: ``50GB``, ``512MiB``, else bytes."""
    for unit in ("TB", "TiB", "GB", "GiB", "MB", "MiB", "KB", "KiB"):
        factor = _UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise fail(str(exc)) from None


def _run_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{show(value)} is not a whole number of runs; use 1 or more, such as 10")
    if value < 1:
        raise fail(f"{value} is not allowed: the newest successful run of each pipeline keeps "
                   "its outputs whatever this says, so 1 is the least; use 1 or more")
    return value


ByteSize = Annotated[int, PlainValidator(_size, json_schema_input_type=str),
                     PlainSerializer(dump_size, return_type=Any, when_used="json"),
                     WithJsonSchema({"anyOf": [
                         {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KkMmGgTt][Ii]?)?[Bb]$"},
                         {"type": "integer", "minimum": 1}],
                         "description": "a size such as 50GB, or bytes"})]
RunCount = Annotated[int, PlainValidator(_run_count, json_schema_input_type=int),
                     WithJsonSchema({"type": "integer", "minimum": 1})]

DEFAULT_SUCCESSFUL_RUNS = 10
DEFAULT_INPUTS_FOR = timedelta(days=30)
DEFAULT_DUPLICATES_FOR = timedelta(days=7)
DEFAULT_QUARANTINE_FOR = timedelta(days=30)
DEFAULT_FAILED_RUNS_FOR = timedelta(days=30)
DEFAULT_LOGS_FOR = timedelta(days=90)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetainSettings(_Model):
    """A master file's ``retain:``: what the state directory keeps, for every pipeline."""

    #: per pipeline, the stage outputs (data/<run>/) of this many newest completed runs
    successful_runs: RunCount = DEFAULT_SUCCESSFUL_RUNS
    #: stored inputs (files/, inputs/), for this long after the last run that read them ended
    inputs_for: Duration = DEFAULT_INPUTS_FOR
    #: duplicates/, for this long after they arrived
    duplicates_for: Duration = DEFAULT_DUPLICATES_FOR
    #: quarantine/, for this long after they were set aside
    quarantine_for: Duration = DEFAULT_QUARANTINE_FOR
    #: the retry window: a FAILED or CANCELLED run keeps what `ahgd retry` needs this long
    failed_runs_for: Duration = DEFAULT_FAILED_RUNS_FOR
    #: each run's own log (logs/<run>.jsonl), for this long after the run ended
    logs_for: Duration = DEFAULT_LOGS_FOR
    #: an optional cap on data/: older successful runs' outputs go first to stay under it
    data_budget: ByteSize | None = None


class RetainOverrides(_Model):
    """A pipeline file's ``retain:``: the keys it sets replace the master file's for it."""

    successful_runs: RunCount | None = None
    inputs_for: Duration | None = None
    duplicates_for: Duration | None = None
    quarantine_for: Duration | None = None
    failed_runs_for: Duration | None = None
    logs_for: Duration | None = None
    data_budget: Any = Field(None, json_schema_extra={"not": {}})

    @field_validator("data_budget", mode="before")
    @classmethod
    def _whole_folder_only(cls, value: Any) -> None:
        if value is not None:
            raise fail("data_budget caps the whole data/ folder, which every pipeline shares: "
                       "set it in the master file's retain: section, not in a pipeline file")
        return None


@dataclass(frozen=True)
class Retain:
    """What one pipeline keeps (the master file's defaults with its own overrides)."""

    successful_runs: int = DEFAULT_SUCCESSFUL_RUNS
    inputs_for: timedelta = DEFAULT_INPUTS_FOR
    duplicates_for: timedelta = DEFAULT_DUPLICATES_FOR
    quarantine_for: timedelta = DEFAULT_QUARANTINE_FOR
    failed_runs_for: timedelta = DEFAULT_FAILED_RUNS_FOR
    logs_for: timedelta = DEFAULT_LOGS_FOR


@dataclass(frozen=True)
class Policy:
    """The retention policy of a configuration: per pipeline, and the budget of data/."""

    default: Retain = field(default_factory=Retain)
    pipelines: Mapping[str, Retain] = field(default_factory=dict)
    data_budget: int | None = None

    def of(self, pipeline: str | None) -> Retain:
        """What ``pipeline`` keeps; a pipeline no longer configured keeps the defaults."""
        return self.pipelines.get(pipeline or "", self.default)


def policy(settings: RetainSettings | None,
           overrides: Mapping[str, RetainOverrides | None] | None = None) -> Policy:
    """The policy of a master file's ``retain:`` and each pipeline file's (by pipeline)."""
    settings = settings or RetainSettings()
    keys = ("successful_runs", "inputs_for", "duplicates_for", "quarantine_for", "failed_runs_for",
            "logs_for")
    default = Retain(**{k: getattr(settings, k) for k in keys})
    per = {}
    for name, own in (overrides or {}).items():
        given = {k: getattr(own, k) for k in keys if own is not None and getattr(own, k) is not None}
        per[name] = Retain(**{**{k: getattr(default, k) for k in keys}, **given})
    return Policy(default, per, settings.data_budget)

"""What a :class:`~pipelines.monitoring.PipelineMonitor` keeps and hands out.

Alert severities and alerts, the thresholds that raise them, system samples,
and the per-pipeline and per-stage statistics folded from events — plain
values with no locking, sampling or I/O of their own, shared by
:mod:`pipelines.monitoring` (which updates them) and
:mod:`pipelines.metrics_export` (which renders them).
"""

from __future__ import annotations

import difflib
import json
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping

from .durations import parse_duration
from .errors import ConfigError

SYSTEM_METRICS = ("cpu_percent", "memory_percent", "disk_percent")
FINISHED_STATES = ("COMPLETED", "FAILED", "PARKED")   # what success rates count
FAILURE_WINDOW = 20       # failure rate: over the last N finished runs of a pipeline


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def coerce(cls, value: AlertSeverity | str) -> AlertSeverity:
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ConfigError(f"alert severity {value!r} is unknown"
                              f"{did_you_mean(str(value).lower(), [s.value for s in cls])}; "
                              "use one of: info, warning, error, critical") from None


_RANK = {s: i for i, s in enumerate(AlertSeverity)}


@dataclass(frozen=True)
class Alert:
    severity: AlertSeverity
    name: str
    message: str
    fields: dict[str, Any]
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "severity": self.severity.value, "name": self.name,
                "message": self.message, "fields": jsonable(self.fields)}


@dataclass(frozen=True)
class MonitorThresholds:
    """Alert thresholds; a value is crossed when the measure goes *above* it.

    ``None`` turns a threshold off.  Percentages are 0-100, the failure rate
    is a fraction over the last ``FAILURE_WINDOW`` finished runs, judged once
    a pipeline has ``failure_rate_min_runs`` of them.
    """

    cpu_percent: float | None = 90.0
    memory_percent: float | None = 90.0
    disk_percent: float | None = 90.0
    stage_duration_s: float | None = None
    pipeline_failure_rate: float | None = 0.5
    failure_rate_min_runs: int = 4

    def __post_init__(self) -> None:
        for name in SYSTEM_METRICS:
            self._check(name, 0, 100, "a percentage from 0 to 100")
        self._check("pipeline_failure_rate", 0, 1, "a fraction from 0 to 1 such as 0.5")
        if self.stage_duration_s is not None:
            td = parse_duration(self.stage_duration_s, positive=True,
                                what="monitor threshold 'stage_duration_s'")
            object.__setattr__(self, "stage_duration_s", td.total_seconds())
        runs = self.failure_rate_min_runs
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ConfigError(f"monitor threshold 'failure_rate_min_runs' is {runs!r}; "
                              "use a whole number of runs, 1 or more")

    def _check(self, name: str, low: float, high: float, what: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not low <= value <= high):
            raise ConfigError(f"monitor threshold {name!r} is {value!r}; "
                              f"use {what}, or None to turn it off")
        object.__setattr__(self, name, float(value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | MonitorThresholds | None,
                     ) -> MonitorThresholds:
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(f"monitor threshold {key!r} is unknown"
                                  f"{did_you_mean(str(key), known)}; "
                                  f"known thresholds: {', '.join(known)}")
        return cls(**values)

    def with_changes(self, **changes: Any) -> MonitorThresholds:
        return self.from_mapping({**asdict(self), **changes})


@dataclass(frozen=True)
class SystemSample:
    at: datetime
    cpu_percent: float | None          # whole machine, since the previous sample
    memory_percent: float | None
    disk_percent: float | None         # filesystem holding metrics_dir
    process_rss_mb: float | None       # this process
    process_cpu_s: float | None        # this process, user + system, since it started
    child_processes: int | None        # this process's descendants (stage workers)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": iso(self.at)}


class _Durations:
    __slots__ = ("count", "total", "max")

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float | None) -> None:
        if seconds is not None:
            self.count += 1
            self.total += seconds
            self.max = max(self.max, seconds)

    def to_dict(self) -> dict[str, Any]:
        mean = self.total / self.count if self.count else None
        return {"count": self.count, "mean": mean, "max": self.max if self.count else None,
                "total": self.total}


@dataclass
class StageStats:
    states: Counter = field(default_factory=Counter)
    durations: _Durations = field(default_factory=_Durations)
    rows: int = 0
    cpu_s: float = 0.0
    peak_rss_mb: float | None = None
    max_attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": dict(self.states), "duration_s": self.durations.to_dict(),
                "rows": self.rows, "cpu_s": self.cpu_s, "peak_rss_mb": self.peak_rss_mb,
                "max_attempt": self.max_attempt}


@dataclass
class PipelineStats:
    runs: Counter = field(default_factory=Counter)
    durations: _Durations = field(default_factory=_Durations)
    active: dict[Any, datetime | None] = field(default_factory=dict)
    last_run: dict[str, Any] | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=FAILURE_WINDOW))
    stages: dict[str, StageStats] = field(default_factory=dict)
    quarantined: int = 0

    def success_rate(self) -> float | None:
        finished = sum(self.runs[s] for s in FINISHED_STATES)
        return self.runs["COMPLETED"] / finished if finished else None

    def to_dict(self) -> dict[str, Any]:
        return {"runs": dict(self.runs), "active_runs": len(self.active),
                "last_run": self.last_run, "success_rate": self.success_rate(),
                "duration_s": self.durations.to_dict(), "files_quarantined": self.quarantined,
                "stages": {name: s.to_dict() for name, s in self.stages.items()}}


# -- helpers (also used by pipelines.monitoring and pipelines.metrics_export) ----

def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))

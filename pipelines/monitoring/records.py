"""The values a monitor keeps and hands out: alerts, samples, histograms, statistics.

Alert severities and alerts, system samples, duration histograms, and the
per-pipeline and per-stage statistics folded from events: plain values with
no locking, sampling or I/O of their own, held by a
:class:`~pipelines.monitoring.monitor_state.MonitorState`, updated by the
fold and the seeding, rendered by the dashboard and the export.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Iterator, Sequence

from state import format_ts

from state.errors import did_you_mean

from ..errors import ConfigError

SYSTEM_METRICS = ("cpu_percent", "memory_percent", "disk_percent")
FINISHED_STATES = ("COMPLETED", "FAILED", "PARKED")   # what success rates count
FAILURE_WINDOW = 20       # failure rate: over the last N finished runs of a pipeline
DURATION_WINDOW = 100     # p95 of run durations: over the last N completed runs
RECENT_RUNS = 50          # finished runs kept per pipeline (ahgd status --recent)
RECENT_SHOWN = 10         # ...of which the dashboard document shows, unless asked


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
                              f"{in_parentheses(did_you_mean(str(value).lower(), [s.value for s in cls]))}; "
                              "use one of: info, warning, error, critical") from None


_RANK = {s: i for i, s in enumerate(AlertSeverity)}


@dataclass
class Alert:
    """One alert condition: raised once, kept open until the condition clears.

    ``id`` names the condition (``system.disk_nearly_full:/var/lib/ahgd``,
    ``pipeline.failing:seifa_sa2``); while it is open, raising the same id
    again changes nothing: one alert per condition.
    """

    id: str
    severity: AlertSeverity
    name: str
    message: str
    fields: dict[str, Any]
    at: datetime
    run_id: str | None = None
    resolved_at: datetime | None = None
    resolution: str | None = None
    repeats: int = 0          # the condition came up again while the alert was open

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "severity": self.severity.value,
                "message": self.message, "raised_at": iso(self.at), "run_id": self.run_id,
                "resolved_at": iso(self.resolved_at), "resolution": self.resolution,
                "repeats": self.repeats, "fields": jsonable(self.fields)}


@dataclass(frozen=True)
class DiskSample:
    path: str                 # the first watched path on this filesystem
    percent: float
    free_bytes: int
    paths: tuple[str, ...]    # every watched path on it

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "percent": self.percent, "free_bytes": self.free_bytes,
                "paths": list(self.paths)}


@dataclass(frozen=True)
class WorkerSample:
    pid: int
    pipeline: str | None
    run_id: str | None        # None: an idle worker
    stage: str | None
    rss_mb: float | None
    cpu_percent: float | None  # of one core, since the previous sample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SystemSample:
    at: datetime
    cpu_percent: float | None          # whole machine, since the previous sample
    memory_percent: float | None
    disks: tuple[DiskSample, ...]      # filesystems of the state and drop folders
    process_rss_mb: float | None       # this process
    process_cpu_s: float | None        # this process, user + system, since it started
    child_processes: int | None        # this process's descendants (stage workers)
    workers: tuple[WorkerSample, ...] = ()

    def disk(self, path: str) -> DiskSample | None:
        return next((d for d in self.disks if path in d.paths), None)

    def to_dict(self) -> dict[str, Any]:
        return {"at": iso(self.at), "cpu_percent": self.cpu_percent,
                "memory_percent": self.memory_percent,
                "disks": [d.to_dict() for d in self.disks],
                "process_rss_mb": self.process_rss_mb, "process_cpu_s": self.process_cpu_s,
                "child_processes": self.child_processes,
                "workers": [w.to_dict() for w in self.workers]}


#: upper bounds (seconds) of the stage and run duration histograms
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                      600.0, 1800.0, 3600.0, 7200.0)


class Histogram:
    """Counts of observed durations per bucket, with their sum (Prometheus histogram)."""

    __slots__ = ("counts", "total", "count", "max")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS_S) + 1)
        self.count, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float | None) -> None:
        if seconds is None:
            return
        self.counts[bisect.bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def add_cumulative(self, cumulative: Sequence[int | None], count: int,
                       total: float | None, longest: float | None) -> None:
        """Add observations given as SQL's cumulative bucket sums (each <= its bound)."""
        previous = 0
        for i, running in enumerate(cumulative):
            self.counts[i] += (running or 0) - previous
            previous = running or 0
        self.counts[-1] += count - previous
        self.count += count
        self.total += total or 0.0
        self.max = max(self.max, longest or 0.0)

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, n in zip((*DURATION_BUCKETS_S, float("inf")), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out

    def to_dict(self) -> dict[str, Any]:
        mean = self.total / self.count if self.count else None
        return {"count": self.count, "mean": mean, "max": self.max if self.count else None,
                "total": self.total}


@dataclass
class StageStats:
    states: Counter = field(default_factory=Counter)
    durations: Histogram = field(default_factory=Histogram)
    retries: int = 0
    rows: int = 0
    rows_rejected: int = 0     # moved to <stage>_rejected by validation_rules quarantine
    cpu_s: float = 0.0
    peak_rss_mb: float | None = None
    max_attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"attempts": dict(self.states), "retries": self.retries,
                "duration_s": self.durations.to_dict(), "rows": self.rows,
                "rows_rejected": self.rows_rejected, "cpu_s": self.cpu_s,
                "peak_rss_mb": self.peak_rss_mb, "max_attempt": self.max_attempt}


class RunWindow:
    """The outcomes (True: it failed) of a pipeline's last ``maxlen`` finished runs, one per
    run: a run retried and ending again replaces its outcome, as the newest.  ``sum()`` is
    how many of them failed, ``len()`` how many there are."""

    __slots__ = ("maxlen", "_runs")

    def __init__(self, maxlen: int = FAILURE_WINDOW) -> None:
        self.maxlen = maxlen
        self._runs: dict[str, bool] = {}

    def set(self, run_id: str, failed: bool) -> None:
        self._runs.pop(run_id, None)
        self._runs[run_id] = failed
        while len(self._runs) > self.maxlen:
            del self._runs[next(iter(self._runs))]

    def discard(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[bool]:
        return iter(list(self._runs.values()))

    def __repr__(self) -> str:
        return f"RunWindow({self._runs!r})"


@dataclass
class PipelineStats:
    #: runs that ended in each final state, each run once per state it ended in: a run that
    #: failed, was retried, failed again and then completed is 1 FAILED and 1 COMPLETED.  Only
    #: goes up (``ahgd_runs_total``), the same live and seeded from history
    runs: Counter = field(default_factory=Counter)
    #: each run's running time (run_history.duration_s) when it first ended; a retried run's
    #: later endings add no observation
    durations: Histogram = field(default_factory=Histogram)
    completed_durations: deque = field(default_factory=lambda: deque(maxlen=DURATION_WINDOW))
    last_run: dict[str, Any] | None = None
    last_success_at: datetime | None = None
    last_clean_success_at: datetime | None = None           # ...that rejected no rows
    last_end_seq: int = 0                                   # event seq of the latest ending
    recent: RunWindow = field(default_factory=RunWindow)     # for the failure rate
    #: summaries of the last runs that ended, newest first, one per run (its latest ending)
    recent_runs: deque = field(default_factory=lambda: deque(maxlen=RECENT_RUNS))
    stages: dict[str, StageStats] = field(default_factory=dict)
    files: Counter = field(default_factory=Counter)         # taken | duplicate | quarantined

    def success_rate(self) -> float | None:
        finished = sum(self.runs[s] for s in FINISHED_STATES)
        return self.runs["COMPLETED"] / finished if finished else None

    def p95_duration(self, min_runs: int) -> float | None:
        """95th percentile (nearest rank) of recent completed runs, once there are enough."""
        if len(self.completed_durations) < min_runs:
            return None
        ordered = sorted(self.completed_durations)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": dict(self.runs), "last_run": self.last_run, "last_success_at": iso(self.last_success_at),
                "success_rate": self.success_rate(), "duration_s": self.durations.to_dict(),
                "files": {k: self.files[k] for k in ("taken", "duplicate", "quarantined")},
                "stages": {name: s.to_dict() for name, s in self.stages.items()}}


# -- helpers (also used by the monitor and the export) ----

def in_parentheses(hint: str) -> str:
    """`` (did you mean 'x'?)`` after an "is unknown", or nothing when there is no hint."""
    return f" ({hint})" if hint else ""


def iso(dt: datetime | None) -> str | None:
    """The event log's timestamp text (a naive datetime is taken as local time)."""
    if dt is None:
        return None
    return format_ts(dt if dt.tzinfo else dt.astimezone())


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))

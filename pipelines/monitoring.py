"""Monitoring and alerting: system samples, run and stage statistics, alerts.

    monitor = PipelineMonitor(metrics_dir=Path("metrics"), thresholds={"disk_percent": 85})
    monitor.start_system_monitoring()          # daemon thread sampling psutil
    monitor.observe(event)                     # each event appended to the log
    monitor.get_dashboard_data()               # JSON-serialisable dict
    monitor.export_metrics("prometheus")       # text exposition format 0.0.4

An alert is kept in memory and logged as one structlog line: the alert name is
the event, ``alert=True``, ``severity`` is the lower-case value of
:class:`AlertSeverity` and the alert's fields are keys.  Nothing here
configures structlog; the logger is passed in or ``get_logger("ahgd.monitor")``.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import itertools
import json
import math
import os
import tempfile
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import psutil
import structlog

from state.events import Event

from .durations import parse_duration
from .errors import ConfigError

FORMATS = {"json": "json", "prometheus": "prom", "csv": "csv"}
SYSTEM_METRICS = ("cpu_percent", "memory_percent", "disk_percent")
FINISHED_STATES = ("COMPLETED", "FAILED", "PARKED")   # what success rates count
CPU_WINDOW_S = 1.0        # shortest interval over which machine CPU % is measured
FAILURE_WINDOW = 20       # failure rate: over the last N finished runs of a pipeline
_MEMORY_CAP = 10_000      # run ids (and stage starts) remembered for observe()
_RESERVED = frozenset({"event", "alert", "severity", "detail", "level", "timestamp"})
Clock = Callable[[], datetime]


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
                              f"{_did_you_mean(str(value).lower(), [s.value for s in cls])}; "
                              "use one of: info, warning, error, critical") from None


_RANK = {s: i for i, s in enumerate(AlertSeverity)}
_SYSTEM_ALERTS = {
    "cpu_percent": (AlertSeverity.WARNING, "system.cpu_high", "system.cpu_recovered", "CPU use"),
    "memory_percent": (AlertSeverity.WARNING, "system.memory_high", "system.memory_recovered",
                       "memory use"),
    "disk_percent": (AlertSeverity.ERROR, "system.disk_nearly_full", "system.disk_recovered",
                     "use of the disk holding the metrics directory"),
}


@dataclass(frozen=True)
class Alert:
    severity: AlertSeverity
    name: str
    message: str
    fields: dict[str, Any]
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "severity": self.severity.value, "name": self.name,
                "message": self.message, "fields": _jsonable(self.fields)}


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
                                  f"{_did_you_mean(str(key), known)}; "
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
        return {**asdict(self), "at": _iso(self.at)}


class _Pending(NamedTuple):
    severity: AlertSeverity
    name: str
    message: str
    fields: dict[str, Any]


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
class _StageStats:
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
class _PipelineStats:
    runs: Counter = field(default_factory=Counter)
    durations: _Durations = field(default_factory=_Durations)
    active: dict[Any, datetime | None] = field(default_factory=dict)
    last_run: dict[str, Any] | None = None
    recent: deque = field(default_factory=lambda: deque(maxlen=FAILURE_WINDOW))
    stages: dict[str, _StageStats] = field(default_factory=dict)
    quarantined: int = 0

    def success_rate(self) -> float | None:
        finished = sum(self.runs[s] for s in FINISHED_STATES)
        return self.runs["COMPLETED"] / finished if finished else None

    def to_dict(self) -> dict[str, Any]:
        return {"runs": dict(self.runs), "active_runs": len(self.active),
                "last_run": self.last_run, "success_rate": self.success_rate(),
                "duration_s": self.durations.to_dict(), "files_quarantined": self.quarantined,
                "stages": {name: s.to_dict() for name, s in self.stages.items()}}


class PipelineMonitor:
    """Samples the machine, keeps run and stage statistics, raises alerts.

    Thread-safe: ``observe`` may be called from several threads while another
    reads :meth:`get_dashboard_data` or exports metrics.
    """

    def __init__(self, metrics_dir: str | os.PathLike, enable_system_monitoring: bool = True,
                 thresholds: Mapping[str, Any] | MonitorThresholds | None = None,
                 sample_interval: float | str = 5.0, logger: Any = None,
                 clock: Clock | None = None, *, max_samples: int = 720, max_alerts: int = 1000):
        self.metrics_dir = Path(metrics_dir)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.enable_system_monitoring = enable_system_monitoring
        self.thresholds = MonitorThresholds.from_mapping(thresholds)
        self.sample_interval = parse_duration(
            sample_interval, what="monitor sample_interval", positive=True).total_seconds()
        self._log = logger if logger is not None else structlog.get_logger("ahgd.monitor")
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.RLock()
        self._samples: deque[SystemSample] = deque(maxlen=max_samples)
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)
        self._alert_counts: Counter = Counter()
        self._breached: set[tuple[str, str]] = set()   # (threshold, pipeline or "")
        self._pipelines: dict[str, _PipelineStats] = {}
        self._run_pipeline: OrderedDict[str, str] = OrderedDict()
        self._stage_started: OrderedDict[tuple[str, str], datetime | None] = OrderedDict()
        self._api_runs = itertools.count(1)
        self._sample_lock = threading.Lock()
        self._process = psutil.Process()
        self._cpu_before = (time.monotonic(), psutil.cpu_times())
        self._cpu_last: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- thresholds and alerts ------------------------------------------------

    def set_thresholds(self, **changes: Any) -> MonitorThresholds:
        """Change some thresholds (e.g. on config reload); checked on the next sample."""
        new = self.thresholds.with_changes(**changes)
        with self._lock:
            self.thresholds = new
        return new

    def raise_alert(self, severity: AlertSeverity | str, name: str, message: str,
                    **fields: Any) -> Alert:
        """Keep an alert and log it as one structlog line with ``alert=True``."""
        severity = AlertSeverity.coerce(severity)
        clash = sorted(_RESERVED.intersection(fields))
        if clash:
            raise ConfigError(f"alert {name!r} has field {clash[0]!r}, which the log line "
                              f"uses itself; rename it (reserved: {', '.join(sorted(_RESERVED))})")
        alert = Alert(severity, name, message, dict(fields), self._now())
        with self._lock:
            self._alerts.append(alert)
            self._alert_counts[severity] += 1
        method = getattr(self._log, severity.value)
        method(name, alert=True, severity=severity.value, detail=message, **fields)
        return alert

    def get_alerts(self, since: datetime | None = None,
                   min_severity: AlertSeverity | str | None = None) -> list[Alert]:
        """Alerts kept (oldest first), at or after ``since``, at least ``min_severity``."""
        rank = AlertSeverity.coerce(min_severity).rank if min_severity is not None else 0
        with self._lock:
            alerts = list(self._alerts)
        return [a for a in alerts
                if a.severity.rank >= rank and (since is None or a.at >= since)]

    def _emit(self, pending: list[_Pending]) -> None:
        for p in pending:
            self.raise_alert(p.severity, p.name, p.message, **p.fields)

    # -- system sampling ------------------------------------------------------

    @property
    def is_monitoring(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start_system_monitoring(self) -> None:
        """Start the sampling thread (no-op if running or system monitoring is off)."""
        if not self.enable_system_monitoring:
            self._log.info("monitor.system_monitoring_disabled")
            return
        with self._lock:
            if self.is_monitoring:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample_loop, args=(self._stop,),
                                            name="ahgd-monitor-sampler", daemon=True)
            self._thread.start()
        self._log.info("monitor.started", sample_interval_s=self.sample_interval)

    def stop_system_monitoring(self, timeout: float = 10.0) -> bool:
        """Stop the sampling thread; True once it has ended (or none was running)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            self._log.warning("monitor.stop_timed_out", timeout_s=timeout)
            return False
        self._log.info("monitor.stopped")
        return True

    def _sample_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.sample_now()
            except Exception as exc:  # keep sampling: one bad sample is not fatal
                self._log.warning("monitor.sample_failed", error=repr(exc))
            stop.wait(self.sample_interval)

    def sample_now(self) -> SystemSample:
        """Take one sample synchronously, keep it and check the system thresholds."""
        sample = self._measure()
        with self._lock:
            self._samples.append(sample)
            pending = self._check_system(sample)
        self._emit(pending)
        return sample

    def get_samples(self) -> list[SystemSample]:
        with self._lock:
            return list(self._samples)

    def _measure(self) -> SystemSample:
        with self._sample_lock:
            percent = self._cpu_percent()
            mem = _safe(psutil.virtual_memory)
            disk = _safe(lambda: psutil.disk_usage(str(self.metrics_dir)))
            rss = _safe(lambda: self._process.memory_info().rss)
            times = _safe(self._process.cpu_times)
            children = _safe(lambda: len(self._process.children(recursive=True)))
        return SystemSample(
            at=self._now(), cpu_percent=percent,
            memory_percent=mem.percent if mem is not None else None,
            disk_percent=disk.percent if disk is not None else None,
            process_rss_mb=rss / 2**20 if rss is not None else None,
            process_cpu_s=round(times.user + times.system, 3) if times is not None else None,
            child_processes=children)

    def _cpu_percent(self) -> float | None:
        """Machine CPU % since the previous reading at least CPU_WINDOW_S ago.

        The kernel counts CPU time in ticks, so a shorter window gives noise
        (0 or 100 %); until the window has passed the last value is repeated.
        """
        now, (then, before) = time.monotonic(), self._cpu_before
        if now - then < CPU_WINDOW_S:
            return self._cpu_last
        after = _safe(psutil.cpu_times)
        if after is not None:
            self._cpu_before = (now, after)
            self._cpu_last = _busy_percent(before, after)
        return self._cpu_last

    def _check_system(self, sample: SystemSample) -> list[_Pending]:
        pending = []
        for metric in SYSTEM_METRICS:
            value, limit = getattr(sample, metric), getattr(self.thresholds, metric)
            if value is None:
                continue
            severity, high, recovered, what = _SYSTEM_ALERTS[metric]
            fields = {metric: value, "threshold": limit}
            if metric == "disk_percent":
                fields["path"] = str(self.metrics_dir)
            above = limit is not None and value > limit
            was_above = (metric, "") in self._breached
            if above and not was_above:
                self._breached.add((metric, ""))
                pending.append(_Pending(severity, high, f"{what} is {value:.1f}%, above the "
                                        f"threshold of {limit:g}%", fields))
            elif was_above and not above:
                self._breached.discard((metric, ""))
                pending.append(_Pending(AlertSeverity.INFO, recovered,
                                        f"{what} is back to {value:.1f}%", fields))
        return pending

    # -- runs and stages ------------------------------------------------------

    def start_pipeline_monitoring(self, name: str) -> None:
        """Record that a run of pipeline ``name`` started now."""
        with self._lock:
            self._start_run(name, ("api", next(self._api_runs)), self._now())

    def stop_pipeline_monitoring(self, name: str, state: str = "COMPLETED") -> float | None:
        """Record the end of the oldest run of ``name`` started here; its duration in s."""
        now = self._now()
        with self._lock:
            stats = self._stats(name)
            key = next((k for k in stats.active if isinstance(k, tuple)), None)
            duration, pending = self._end_run(name, key, str(state).upper(), now, None, {})
        self._emit(pending)
        return duration

    def record_stage(self, pipeline: str, stage: str, *, state: str,
                     duration_s: float | None = None, rows: int | None = None,
                     cpu_s: float | None = None, peak_rss_mb: float | None = None,
                     attempt: int = 1) -> None:
        """Record how one attempt of a stage ended (or that it was skipped/retried)."""
        with self._lock:
            pending = self._record_stage(pipeline, stage, str(state).upper(), duration_s,
                                         rows, cpu_s, peak_rss_mb, attempt, None)
        self._emit(pending)

    def observe(self, event: Event) -> None:
        """Update the statistics from one event of the event log."""
        handler = _OBSERVERS.get(str(event.type))
        if handler is None:
            return
        data = event.data() or {}
        at = _parse_ts(event.ts) or self._now()
        with self._lock:
            pending = handler(self, event, data, at)
        self._emit(pending)

    def _stats(self, pipeline: str) -> _PipelineStats:
        stats = self._pipelines.get(pipeline)
        if stats is None:
            stats = self._pipelines[pipeline] = _PipelineStats()
        return stats

    def _start_run(self, pipeline: str, key: Any, at: datetime | None) -> None:
        self._stats(pipeline).active.setdefault(key, at)

    def _end_run(self, pipeline: str, key: Any, state: str, at: datetime,
                 run_id: str | None, alert_fields: dict[str, Any]) -> tuple[float | None, list]:
        stats = self._stats(pipeline)
        started = stats.active.pop(key, None)
        duration = (at - started).total_seconds() if started is not None else None
        stats.runs[state] += 1
        stats.durations.add(duration)
        stats.last_run = {"run_id": run_id, "state": state, "started_at": _iso(started),
                          "ended_at": _iso(at), "duration_s": duration,
                          "error": alert_fields.get("error") or alert_fields.get("reason")}
        fields = {"pipeline": pipeline, "run_id": run_id, **alert_fields}
        pending = []
        if state == "FAILED":
            where = f" at stage {fields['stage']!r}" if fields.get("stage") else ""
            why = f": {fields['error']}" if fields.get("error") else ""
            pending.append(_Pending(AlertSeverity.ERROR, "run.failed",
                                    f"run {run_id or '-'} of pipeline {pipeline!r} failed"
                                    f"{where}{why}", fields))
        elif state == "PARKED":
            pending.append(_Pending(AlertSeverity.CRITICAL, "run.parked",
                                    f"run {run_id} of pipeline {pipeline!r} was parked after "
                                    "repeated recoveries; it needs a human", fields))
        if state in FINISHED_STATES:
            stats.recent.append(state != "COMPLETED")
            pending.extend(self._check_failure_rate(pipeline, stats))
        return duration, pending

    def _check_failure_rate(self, pipeline: str, stats: _PipelineStats) -> list[_Pending]:
        limit, key = self.thresholds.pipeline_failure_rate, ("pipeline_failure_rate", pipeline)
        if len(stats.recent) < self.thresholds.failure_rate_min_runs:
            return []
        rate = sum(stats.recent) / len(stats.recent)
        above = limit is not None and rate > limit
        fields = {"pipeline": pipeline, "failure_rate": rate, "threshold": limit,
                  "runs": len(stats.recent)}
        if above and key not in self._breached:
            self._breached.add(key)
            return [_Pending(AlertSeverity.WARNING, "pipeline.failure_rate_high",
                             f"{sum(stats.recent)} of the last {len(stats.recent)} runs of "
                             f"pipeline {pipeline!r} failed", fields)]
        if not above and key in self._breached:
            self._breached.discard(key)
            return [_Pending(AlertSeverity.INFO, "pipeline.failure_rate_recovered",
                             f"failure rate of pipeline {pipeline!r} is back to {rate:.0%}",
                             fields)]
        return []

    def _record_stage(self, pipeline: str, stage: str, state: str, duration_s: float | None,
                      rows: int | None, cpu_s: float | None, peak_rss_mb: float | None,
                      attempt: int | None, run_id: str | None) -> list[_Pending]:
        stats = self._stats(pipeline).stages.setdefault(stage, _StageStats())
        stats.states[state] += 1
        stats.durations.add(duration_s)
        stats.rows += rows or 0
        stats.cpu_s += cpu_s or 0.0
        if peak_rss_mb is not None:
            stats.peak_rss_mb = max(stats.peak_rss_mb or 0.0, peak_rss_mb)
        stats.max_attempt = max(stats.max_attempt, attempt or 0)
        limit = self.thresholds.stage_duration_s
        if state == "COMPLETED" and limit is not None and (duration_s or 0) > limit:
            return [_Pending(AlertSeverity.WARNING, "stage.slow",
                             f"stage {stage!r} of pipeline {pipeline!r} took {duration_s:.1f}s, "
                             f"above the threshold of {limit:g}s",
                             {"pipeline": pipeline, "stage": stage, "run_id": run_id,
                              "duration_s": duration_s, "threshold": limit})]
        return []

    # -- observe() handlers (called with the lock held) -------------------------

    def _pipeline_of(self, event: Event, data: dict[str, Any]) -> str:
        name = data.get("pipeline") or self._run_pipeline.get(event.run_id or "") or "unknown"
        if event.run_id and data.get("pipeline"):
            _remember(self._run_pipeline, event.run_id, name)
        return name

    def _on_run_requested(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        self._pipeline_of(event, data)
        return []

    def _on_run_started(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        self._start_run(self._pipeline_of(event, data), event.run_id, at)
        return []

    def _on_run_ended(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        state = str(event.type).partition(".")[2].upper()
        extra = {"stage": data.get("stage") or event.stage, "error": data.get("error"),
                 "reason": data.get("reason")}
        extra = {k: v for k, v in extra.items() if v is not None}
        return self._end_run(self._pipeline_of(event, data), event.run_id, state, at,
                             event.run_id, extra)[1]

    def _on_stage_started(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        _remember(self._stage_started, (event.run_id or "", event.stage or ""), at)
        return []

    def _on_stage_ended(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        pipeline, stage = self._pipeline_of(event, data), event.stage or "unknown"
        started = self._stage_started.pop((event.run_id or "", event.stage or ""), None)
        duration = data.get("wall_s")
        if duration is None and started is not None:
            duration = (at - started).total_seconds()
        state = _STAGE_STATES[str(event.type)]
        pending = self._record_stage(pipeline, stage, state, duration, data.get("rows"),
                                     data.get("cpu_s"), data.get("peak_rss_mb"), event.attempt,
                                     event.run_id)
        if state == "TIMED_OUT":
            pending.append(_Pending(AlertSeverity.WARNING, "stage.timed_out",
                                    f"stage {stage!r} of pipeline {pipeline!r} timed out",
                                    {"pipeline": pipeline, "run_id": event.run_id, "stage": stage,
                                     "attempt": event.attempt, "duration_s": duration}))
        return pending

    def _on_file_quarantined(self, event: Event, data: dict, at: datetime) -> list[_Pending]:
        pipeline = self._pipeline_of(event, data)
        self._stats(pipeline).quarantined += 1
        name = data.get("name") or data.get("path")
        return [_Pending(AlertSeverity.WARNING, "file.quarantined",
                         f"file {name!r} for pipeline {pipeline!r} was quarantined",
                         {"pipeline": pipeline, "file": name, "reason": data.get("reason"),
                          "path": data.get("path") or data.get("stored_path")})]

    # -- reading and exporting ------------------------------------------------

    def get_dashboard_data(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot: latest sample, thresholds, pipelines, alerts."""
        with self._lock:
            latest = self._samples[-1] if self._samples else None
            return {
                "generated_at": _iso(self._now()),
                "system": {
                    "monitoring": self.is_monitoring,
                    "sample_interval_s": self.sample_interval,
                    "samples_kept": len(self._samples),
                    "latest": latest.to_dict() if latest else None,
                    "thresholds": asdict(self.thresholds),
                    "breached": sorted(f"{k}:{p}" if p else k for k, p in self._breached),
                },
                "pipelines": {name: s.to_dict() for name, s in sorted(self._pipelines.items())},
                "alerts": {
                    "counts": {s.value: self._alert_counts[s] for s in AlertSeverity},
                    "recent": [a.to_dict() for a in list(self._alerts)[-50:]],
                },
            }

    def export_metrics(self, format: str = "json") -> str:
        """The metrics as ``json``, ``prometheus`` (text format 0.0.4) or ``csv``."""
        fmt = _check_format(format)
        with self._lock:
            families = _families(self)
            if fmt == "json":
                data = self.get_dashboard_data()
        if fmt == "prometheus":
            return _render_prometheus(families)
        rows = [(name, labels, value) for f in families for name, labels, value in f.samples]
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["metric", "labels", "value"])
            for name, labels, value in rows:
                writer.writerow([name, ";".join(f"{k}={v}" for k, v in labels.items()),
                                 _prom_value(value)])
            return buf.getvalue()
        data["metrics"] = [{"metric": n, "labels": labels, "value": v} for n, labels, v in rows]
        return json.dumps(_jsonable(data), indent=2, sort_keys=True)

    def save_metrics(self, format: str = "json") -> Path:
        """Write ``metrics.<json|prom|csv>`` into ``metrics_dir`` atomically."""
        fmt = _check_format(format)
        text = self.export_metrics(fmt)
        path = self.metrics_dir / f"metrics.{FORMATS[fmt]}"
        fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=self.metrics_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return path

    def _now(self) -> datetime:
        return self._clock()


_OBSERVERS: dict[str, Callable[..., list[_Pending]]] = {
    "run.requested": PipelineMonitor._on_run_requested,
    "run.started": PipelineMonitor._on_run_started,
    "run.completed": PipelineMonitor._on_run_ended,
    "run.failed": PipelineMonitor._on_run_ended,
    "run.cancelled": PipelineMonitor._on_run_ended,
    "run.parked": PipelineMonitor._on_run_ended,
    "stage.started": PipelineMonitor._on_stage_started,
    "stage.completed": PipelineMonitor._on_stage_ended,
    "stage.failed": PipelineMonitor._on_stage_ended,
    "stage.timed_out": PipelineMonitor._on_stage_ended,
    "stage.interrupted": PipelineMonitor._on_stage_ended,
    "stage.retrying": PipelineMonitor._on_stage_ended,
    "stage.skipped": PipelineMonitor._on_stage_ended,
    "stage.reused": PipelineMonitor._on_stage_ended,
    "file.quarantined": PipelineMonitor._on_file_quarantined,
}
_STAGE_STATES = {
    "stage.completed": "COMPLETED", "stage.failed": "FAILED", "stage.timed_out": "TIMED_OUT",
    "stage.interrupted": "INTERRUPTED", "stage.retrying": "RETRYING",
    "stage.skipped": "SKIPPED", "stage.reused": "REUSED",
}


# -- metric families ----------------------------------------------------------

class _Family(NamedTuple):
    name: str
    kind: str           # counter | gauge | summary
    help: str
    samples: list       # (sample name, labels dict, value)


def _families(m: PipelineMonitor) -> list[_Family]:
    """Every metric as Prometheus families; called with the monitor's lock held."""
    out: dict[str, _Family] = {}

    def add(name: str, kind: str, help: str, labels: dict, value: Any, suffix: str = "") -> None:
        if value is None:
            return
        fam = out.setdefault(name, _Family(name, kind, help, []))
        fam.samples.append((name + suffix, labels, value))

    latest = m._samples[-1] if m._samples else None
    if latest is not None:
        _system_families(m, latest, add)
    for pipeline, stats in sorted(m._pipelines.items()):
        _pipeline_families(pipeline, stats, add)
    for sev in AlertSeverity:
        add("ahgd_alerts_total", "counter", "Alerts raised since the monitor started.",
            {"severity": sev.value}, m._alert_counts[sev])
    return list(out.values())


def _system_families(m: PipelineMonitor, s: SystemSample, add: Callable) -> None:
    pct = lambda v: round(v / 100, 6) if v is not None else None  # noqa: E731
    add("ahgd_system_cpu_usage_ratio", "gauge", "Machine CPU busy fraction since the previous "
        "sample.", {}, pct(s.cpu_percent))
    add("ahgd_system_memory_usage_ratio", "gauge", "Machine memory in use, as a fraction.",
        {}, pct(s.memory_percent))
    add("ahgd_system_disk_usage_ratio", "gauge", "Used fraction of the filesystem holding the "
        "metrics directory.", {"path": str(m.metrics_dir)}, pct(s.disk_percent))
    add("ahgd_process_resident_memory_bytes", "gauge", "Resident memory of the daemon process.",
        {}, round(s.process_rss_mb * 2**20) if s.process_rss_mb is not None else None)
    add("ahgd_process_cpu_seconds_total", "counter", "User and system CPU time of the daemon "
        "process.", {}, s.process_cpu_s)
    add("ahgd_process_child_processes", "gauge", "Descendant processes of the daemon (stage "
        "workers).", {}, s.child_processes)
    add("ahgd_system_sample_timestamp_seconds", "gauge", "Unix time of the latest system sample.",
        {}, s.at.timestamp())
    for metric in SYSTEM_METRICS:
        add("ahgd_system_threshold_breached", "gauge", "1 while the measure is above its alert "
            "threshold.", {"threshold": metric}, int((metric, "") in m._breached))


def _pipeline_families(pipeline: str, p: _PipelineStats, add: Callable) -> None:
    lab = {"pipeline": pipeline}
    for state, n in sorted(p.runs.items()):
        add("ahgd_pipeline_runs_total", "counter", "Finished runs by final state.",
            {**lab, "state": state}, n)
    add("ahgd_pipeline_active_runs", "gauge", "Runs started and not yet finished.", lab,
        len(p.active))
    add("ahgd_pipeline_run_duration_seconds", "summary", "Wall time of finished runs.", lab,
        p.durations.total, "_sum")
    add("ahgd_pipeline_run_duration_seconds", "summary", "", lab, p.durations.count, "_count")
    add("ahgd_pipeline_run_max_duration_seconds", "gauge", "Longest finished run.", lab,
        p.durations.max if p.durations.count else None)
    add("ahgd_pipeline_success_ratio", "gauge", "Completed runs over completed, failed and "
        "parked runs.", lab, p.success_rate())
    add("ahgd_files_quarantined_total", "counter", "Input files moved to quarantine.", lab,
        p.quarantined)
    for stage, s in sorted(p.stages.items()):
        sl = {**lab, "stage": stage}
        for state, n in sorted(s.states.items()):
            add("ahgd_stage_attempts_total", "counter", "Stage attempts by outcome.",
                {**sl, "state": state}, n)
        add("ahgd_stage_duration_seconds", "summary", "Wall time of stage attempts.", sl,
            s.durations.total, "_sum")
        add("ahgd_stage_duration_seconds", "summary", "", sl, s.durations.count, "_count")
        add("ahgd_stage_max_duration_seconds", "gauge", "Longest stage attempt.", sl,
            s.durations.max if s.durations.count else None)
        add("ahgd_stage_rows_total", "counter", "Rows output by completed attempts.", sl, s.rows)
        add("ahgd_stage_cpu_seconds_total", "counter", "CPU time of stage attempts.", sl, s.cpu_s)
        add("ahgd_stage_peak_resident_memory_bytes", "gauge", "Highest peak memory of an "
            "attempt.", sl, round(s.peak_rss_mb * 2**20) if s.peak_rss_mb is not None else None)


def _render_prometheus(families: list[_Family]) -> str:
    lines = []
    for f in families:
        lines.append(f"# HELP {f.name} {_escape(f.help, label=False)}")
        lines.append(f"# TYPE {f.name} {f.kind}")
        for name, labels, value in f.samples:
            body = ",".join(f'{k}="{_escape(str(v), label=True)}"' for k, v in labels.items())
            lines.append(f"{name}{{{body}}} {_prom_value(value)}" if body
                         else f"{name} {_prom_value(value)}")
    return "\n".join(lines) + "\n"


# -- helpers --------------------------------------------------------------------

def _escape(text: str, *, label: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if label else text


def _prom_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _check_format(format: str) -> str:
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"metrics format {format!r} is not supported"
                          f"{_did_you_mean(fmt, list(FORMATS))}; "
                          f"use one of: {', '.join(sorted(FORMATS))}")
    return fmt


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _busy_percent(before: Any, after: Any) -> float | None:
    def busy_total(t: Any) -> tuple[float, float]:
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total - t.idle - getattr(t, "iowait", 0.0), total

    b0, t0 = busy_total(before)
    b1, t1 = busy_total(after)
    if t1 - t0 <= 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * (b1 - b0) / (t1 - t0))), 1)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None


def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MEMORY_CAP:
        cache.popitem(last=False)


def _parse_ts(ts: str | None) -> datetime | None:
    if not ts:
        return None
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))

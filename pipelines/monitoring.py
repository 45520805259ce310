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

This module holds the monitor itself: the sampling thread, the event handlers
and the alert checks.  The values it keeps are in :mod:`pipelines.monitor_records`,
the psutil readings in :mod:`pipelines.system_sampler` and the Prometheus/CSV/JSON
rendering in :mod:`pipelines.metrics_export`; their public names are importable
from here too.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import structlog

from state.events import Event

from .durations import parse_duration
from .errors import ConfigError
from .metrics_export import (FORMATS, check_format, metric_families, render_metrics,
                             write_metrics_file)
from .monitor_records import (FAILURE_WINDOW, FINISHED_STATES, SYSTEM_METRICS, Alert, AlertSeverity,
                              MonitorThresholds, PipelineStats, StageStats, SystemSample, iso)
from .system_sampler import CPU_WINDOW_S, SystemSampler

__all__ = ["CPU_WINDOW_S", "FAILURE_WINDOW", "FINISHED_STATES", "FORMATS", "SYSTEM_METRICS",
           "Alert", "AlertSeverity", "Clock", "MonitorThresholds", "PipelineMonitor",
           "SystemSample"]

_MEMORY_CAP = 10_000      # run ids (and stage starts) remembered for observe()
_RESERVED = frozenset({"event", "alert", "severity", "detail", "level", "timestamp"})
Clock = Callable[[], datetime]
_SYSTEM_ALERTS = {
    "cpu_percent": (AlertSeverity.WARNING, "system.cpu_high", "system.cpu_recovered", "CPU use"),
    "memory_percent": (AlertSeverity.WARNING, "system.memory_high", "system.memory_recovered",
                       "memory use"),
    "disk_percent": (AlertSeverity.ERROR, "system.disk_nearly_full", "system.disk_recovered",
                     "use of the disk holding the metrics directory"),
}


class _Pending(NamedTuple):
    severity: AlertSeverity
    name: str
    message: str
    fields: dict[str, Any]


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
        self._pipelines: dict[str, PipelineStats] = {}
        self._run_pipeline: OrderedDict[str, str] = OrderedDict()
        self._stage_started: OrderedDict[tuple[str, str], datetime | None] = OrderedDict()
        self._api_runs = itertools.count(1)
        self._sampler = SystemSampler(self.metrics_dir, self._now)
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
        sample = self._sampler.measure()
        with self._lock:
            self._samples.append(sample)
            pending = self._check_system(sample)
        self._emit(pending)
        return sample

    def get_samples(self) -> list[SystemSample]:
        with self._lock:
            return list(self._samples)

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

    def _stats(self, pipeline: str) -> PipelineStats:
        stats = self._pipelines.get(pipeline)
        if stats is None:
            stats = self._pipelines[pipeline] = PipelineStats()
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
        stats.last_run = {"run_id": run_id, "state": state, "started_at": iso(started),
                          "ended_at": iso(at), "duration_s": duration,
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

    def _check_failure_rate(self, pipeline: str, stats: PipelineStats) -> list[_Pending]:
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
        stats = self._stats(pipeline).stages.setdefault(stage, StageStats())
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
                "generated_at": iso(self._now()),
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
        fmt = check_format(format)
        data = None
        with self._lock:
            families = metric_families(self._samples[-1] if self._samples else None,
                                       self._pipelines, self._alert_counts, self._breached,
                                       self.metrics_dir)
            if fmt == "json":
                data = self.get_dashboard_data()
        return render_metrics(fmt, families, data)

    def save_metrics(self, format: str = "json") -> Path:
        """Write ``metrics.<json|prom|csv>`` into ``metrics_dir`` atomically."""
        fmt = check_format(format)
        return write_metrics_file(self.metrics_dir, fmt, self.export_metrics(fmt))

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


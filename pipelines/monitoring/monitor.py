"""Monitoring and alerting: system samples, run and stage statistics, alerts.

    monitor = PipelineMonitor(metrics_dir=Path("metrics"), thresholds={"disk_percent": 85},
                              event_log=log)   # optional: seeds from and records to the log
    monitor.start_system_monitoring()          # daemon thread sampling psutil
    monitor.observe(event)                     # each event appended to the log
    monitor.get_dashboard_data()               # JSON-serialisable dict
    monitor.export_metrics("prometheus")       # through prometheus_client

An alert is a *condition* with an id (``system.disk_nearly_full:/var/lib/ahgd``,
``pipeline.failing:seifa_sa2``, ``run.slow:<run id>``): raised once, with one
structlog line (``alert=true``, ``alert_state="firing"``) and an
``alert.raised`` event in the event log when the monitor has one; raising it
again while it is open changes nothing; when the condition clears it is
resolved (a second line, ``alert_state="resolved"``, and ``alert.resolved``).
Nothing here configures structlog; the logger is passed in or
``get_logger("ahgd.monitor")``.

This module holds the monitor itself: the sampling thread, the event
handlers and the alert checks.  The values it keeps are in
:mod:`pipelines.monitoring.records`, the psutil readings in
:mod:`pipelines.monitoring.sampler`, the seeding from an event log in
:mod:`pipelines.monitoring.history` and the Prometheus/CSV/JSON rendering in
:mod:`pipelines.monitoring.export`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import structlog

from state.events import Event
from state.log import parse_ts
from state.machine import DONE_STAGE_STATES

from ..durations import parse_duration
from ..errors import ConfigError
from .export import FORMATS, check_format, render_metrics, write_metrics_file
from .records import (FAILURE_WINDOW, FINISHED_STATES, RECENT_RUNS, RECENT_SHOWN,
                              SYSTEM_METRICS, Alert,
                              AlertSeverity, MonitorThresholds, PipelineStats, StageStats,
                              SystemSample, iso, jsonable)
from .sampler import CPU_WINDOW_S, SystemSampler, WorkerSource

__all__ = ["CPU_WINDOW_S", "FAILURE_WINDOW", "FINISHED_STATES", "FORMATS", "SYSTEM_METRICS",
           "Alert", "AlertSeverity", "Clock", "MonitorThresholds", "PipelineMonitor",
           "SystemSample"]

_MEMORY_CAP = 10_000      # run ids (and stage starts) remembered for observe()
_RESERVED = frozenset({"event", "alert", "alert_id", "alert_state", "severity", "detail",
                       "level", "timestamp"})
#: queued runs listed in the dashboard (the oldest); the rest are counted
ACTIVE_PENDING_SHOWN = 20
#: the machine's finished stage states, and REUSED, which the monitor names apart
_DONE_STAGE_STATES = DONE_STAGE_STATES | {"REUSED"}
Clock = Callable[[], datetime]
_SYSTEM_ALERTS = {
    "cpu_percent": (AlertSeverity.WARNING, "system.cpu_high", "CPU use"),
    "memory_percent": (AlertSeverity.WARNING, "system.memory_high", "memory use"),
}


class _Action(NamedTuple):
    """A raise or resolve decided under the lock, logged and recorded outside it."""

    kind: str            # "raise" | "resolve"
    alert: Alert


@dataclass
class LiveRun:
    """A run that has not finished: PENDING (queued) or RUNNING."""

    run_id: str
    pipeline: str
    state: str
    trigger: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    stages: list[str] = field(default_factory=list)
    stage_states: dict[str, tuple[str, int]] = field(default_factory=dict)  # stage -> (state, attempt)

    def progress(self, now: datetime) -> dict[str, Any]:
        states = [self.stage_states.get(s, ("PENDING", 0)) for s in self.stages]
        total = len(self.stages)
        done = sum(1 for state, _ in states if state in _DONE_STAGE_STATES)
        current = next((s for s, (state, _) in zip(self.stages, states)
                        if state in ("RUNNING", "RETRYING")), None)
        return {
            "run_id": self.run_id, "pipeline": self.pipeline, "state": self.state,
            "trigger": self.trigger, "requested_at": iso(self.requested_at),
            "started_at": iso(self.started_at),
            "elapsed_s": (round((now - self.started_at).total_seconds(), 3)
                          if self.started_at is not None else None),
            "current_stage": current, "stages_total": total, "stages_done": done,
            "progress_percentage": round(100.0 * done / total, 1) if total else 0.0,
            "stages": [{"stage": s, "state": state, "attempt": attempt}
                       for s, (state, attempt) in zip(self.stages, states)],
        }


class PipelineMonitor:
    """Samples the machine, keeps run and stage statistics, raises and resolves alerts.

    Thread-safe: ``observe`` may be called from several threads while another
    reads :meth:`get_dashboard_data` or exports metrics.
    """

    def __init__(self, metrics_dir: str | os.PathLike, enable_system_monitoring: bool = True,
                 thresholds: Mapping[str, Any] | MonitorThresholds | None = None,
                 sample_interval: float | str = 5.0, logger: Any = None,
                 clock: Clock | None = None, *, event_log: Any = None,
                 disk_paths: Sequence[str | os.PathLike] | None = None,
                 workers: WorkerSource | None = None, recent_runs: int = RECENT_RUNS,
                 max_samples: int = 720, max_alerts: int = 1000, read_only: bool = False):
        self.metrics_dir = Path(metrics_dir)
        self.read_only = read_only   # a look at the history: never write to the log or disk
        if not read_only:
            self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.enable_system_monitoring = enable_system_monitoring
        self.thresholds = MonitorThresholds.from_mapping(thresholds)
        self.sample_interval = parse_duration(
            sample_interval, what="monitor sample_interval", positive=True).total_seconds()
        self.event_log = event_log
        self.recent_runs = recent_runs
        self._log = logger if logger is not None else structlog.get_logger("ahgd.monitor")
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.RLock()
        # held from deciding an alert action until its line and event are written, so
        # that a resolve decided on another thread cannot overtake the raise it resolves
        self._emit_lock = threading.RLock()
        self._samples: deque[SystemSample] = deque(maxlen=max_samples)
        self._alerts: deque[Alert] = deque(maxlen=max_alerts)   # raised, oldest first
        self._open: dict[str, Alert] = {}
        self._alert_counts: Counter = Counter()                   # raised, by severity
        self._pipelines: dict[str, PipelineStats] = {}
        self._live: dict[str, LiveRun] = {}
        self._parked: set[str] = set()
        self._run_pipeline: OrderedDict[str, str] = OrderedDict()
        self._stage_started: OrderedDict[tuple[str, str], datetime | None] = OrderedDict()
        self._api_runs = itertools.count(1)
        paths = list(disk_paths) if disk_paths else [self.metrics_dir]
        self._sampler = SystemSampler(paths, self._now, workers)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._registry: Any = None
        if event_log is not None:
            from .history import load_history

            with self._emit_lock:
                resolved = load_history(self, event_log)
                if not read_only:
                    self._emit(resolved)

    # -- thresholds and alerts ------------------------------------------------

    def set_thresholds(self, **changes: Any) -> MonitorThresholds:
        """Change some thresholds (e.g. on config reload).

        The failure rates are judged again at once; system and duration
        thresholds on the next sample.
        """
        new = self.thresholds.with_changes(**changes)

        def decide() -> list[_Action]:
            self.thresholds = new
            return self._recheck_failure_rates()

        self._act(decide)
        return new

    def _recheck_failure_rates(self) -> list[_Action]:
        return [a for name, stats in self._pipelines.items()
                for a in self._check_failure_rate(name, stats)]

    def _act(self, decide: Callable[[], list[_Action]]) -> list[_Action]:
        """Decide under the lock, then log and record, all under the emit lock."""
        with self._emit_lock:
            with self._lock:
                actions = decide()
            self._emit(actions)
        return actions

    def set_disk_paths(self, paths: Sequence[str | os.PathLike]) -> None:
        """Watch the disks of these paths from the next sample on (e.g. on config reload)."""
        self._sampler.disk_paths = [Path(p) for p in paths]

    def raise_alert(self, severity: AlertSeverity | str, name: str, message: str, *,
                    alert_id: str | None = None, run_id: str | None = None,
                    **fields: Any) -> Alert:
        """Raise the alert ``alert_id`` (default: ``name``) unless it is open already.

        Returns the open alert: the new one, or the one already open (whose
        ``repeats`` goes up; nothing is logged or recorded again).
        """
        severity = AlertSeverity.coerce(severity)
        clash = sorted(_RESERVED.intersection(fields))
        if clash:
            raise ConfigError(f"alert {name!r} has field {clash[0]!r}, which the log line "
                              f"uses itself; rename it (reserved: {', '.join(sorted(_RESERVED))})")
        out: list[Alert] = []

        def decide() -> list[_Action]:
            actions = self._open_alert(alert_id or name, severity, name, message, fields, run_id)
            out.append(self._open[alert_id or name])
            return actions

        self._act(decide)
        return out[0]

    def resolve_alert(self, alert_id: str, reason: str = "resolved") -> Alert | None:
        """Resolve an open alert; None if no alert with that id is open."""
        actions = self._act(lambda: self._close_alert(alert_id, reason))
        return actions[0].alert if actions else None

    def get_alerts(self, since: datetime | None = None,
                   min_severity: AlertSeverity | str | None = None,
                   open_only: bool = False) -> list[Alert]:
        """Alerts raised (oldest first), at or after ``since``, at least ``min_severity``."""
        rank = AlertSeverity.coerce(min_severity).rank if min_severity is not None else 0
        with self._lock:
            alerts = list(self._open.values()) if open_only else list(self._alerts)
        return [a for a in alerts
                if a.severity.rank >= rank and (since is None or a.at >= since)]

    def open_alerts(self) -> list[Alert]:
        return self.get_alerts(open_only=True)

    def _open_alert(self, alert_id: str, severity: AlertSeverity, name: str, message: str,
                    fields: dict[str, Any], run_id: str | None = None,
                    at: datetime | None = None) -> list[_Action]:
        """Under the lock: open ``alert_id`` unless it is open; what to log and record."""
        current = self._open.get(alert_id)
        if current is not None:
            current.repeats += 1
            return []
        alert = Alert(alert_id, severity, name, message, dict(fields), at or self._now(), run_id)
        self._open[alert_id] = alert
        self._alerts.append(alert)
        self._alert_counts[severity] += 1
        return [_Action("raise", alert)]

    def _close_alert(self, alert_id: str, reason: str) -> list[_Action]:
        alert = self._open.pop(alert_id, None)
        if alert is None:
            return []
        alert.resolved_at, alert.resolution = self._now(), reason
        return [_Action("resolve", alert)]

    def _close_where(self, match: Callable[[Alert], bool], reason: str) -> list[_Action]:
        return [a for k in [k for k, v in self._open.items() if match(v)]
                for a in self._close_alert(k, reason)]

    def _emit(self, actions: Iterable[_Action]) -> None:
        """Outside the lock: one log line per action, and its event in the log."""
        from state.events import new_event

        for kind, alert in actions:
            if kind == "raise":
                getattr(self._log, alert.severity.value)(
                    alert.name, alert=True, alert_id=alert.id, alert_state="firing",
                    severity=alert.severity.value, detail=alert.message, **alert.fields)
                event = new_event("alert.raised", alert.run_id, alert_id=alert.id,
                                  name=alert.name, severity=alert.severity.value,
                                  message=alert.message, fields=jsonable(alert.fields))
            else:
                self._log.info(alert.name, alert=True, alert_id=alert.id, alert_state="resolved",
                               severity="info", raised_severity=alert.severity.value,
                               detail=alert.resolution)
                event = new_event("alert.resolved", alert.run_id, alert_id=alert.id,
                                  reason=alert.resolution)
            if self.event_log is not None and not self.read_only:
                try:
                    self.event_log.append(event)
                except Exception as exc:  # the log line went out; never fail the caller
                    self._log.warning("alert_unrecorded", alert_id=alert.id, error=str(exc))

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
        """Take one sample now, keep it, and check every threshold against it."""
        sample = self._sampler.measure()

        def decide() -> list[_Action]:
            self._samples.append(sample)
            return self._check_system(sample) + self._check_durations(sample.at)

        self._act(decide)
        return sample

    def get_samples(self) -> list[SystemSample]:
        with self._lock:
            return list(self._samples)

    def _check_system(self, sample: SystemSample) -> list[_Action]:
        actions: list[_Action] = []
        for metric, (severity, name, what) in _SYSTEM_ALERTS.items():
            value, limit = getattr(sample, metric), getattr(self.thresholds, metric)
            if value is None:
                continue
            actions += self._threshold(name, name, severity, value, limit, what,
                                       {metric: value, "threshold": limit})
        limit = self.thresholds.disk_percent
        sampled = {f"system.disk_nearly_full:{d.path}" for d in sample.disks}
        if sample.disks:  # none read at all: psutil failed, judge nothing
            actions += self._close_where(
                lambda a: a.name == "system.disk_nearly_full" and a.id not in sampled,
                "that disk is no longer watched (no state directory or drop folder on it)")
        for disk in sample.disks:
            actions += self._threshold(
                f"system.disk_nearly_full:{disk.path}", "system.disk_nearly_full",
                AlertSeverity.ERROR, disk.percent, limit, f"use of the disk holding {disk.path}",
                {"path": disk.path, "paths": list(disk.paths), "disk_percent": disk.percent,
                 "free_bytes": disk.free_bytes, "threshold": limit})
        return actions

    def _threshold(self, alert_id: str, name: str, severity: AlertSeverity, value: float,
                   limit: float | None, what: str, fields: dict[str, Any]) -> list[_Action]:
        if limit is not None and value > limit:
            return self._open_alert(alert_id, severity, name, f"{what} is {value:.1f}%, above "
                                    f"the threshold of {limit:g}%", fields)
        return self._close_alert(alert_id, f"{what} is back to {value:.1f}%"
                                 + (f" (threshold {limit:g}%)" if limit is not None else
                                    " (threshold turned off)"))

    def _check_durations(self, now: datetime) -> list[_Action]:
        """Runs far beyond their usual p95, and stages beyond ``stage_duration_s``."""
        t, actions = self.thresholds, []
        for run in list(self._live.values()):
            if run.state != "RUNNING" or run.started_at is None:
                continue
            p95 = self._stats(run.pipeline).p95_duration(t.run_duration_min_runs)
            elapsed = (now - run.started_at).total_seconds()
            if t.run_duration_factor is not None and p95 and elapsed > p95 * t.run_duration_factor:
                actions += self._open_alert(
                    f"run.slow:{run.run_id}", AlertSeverity.WARNING, "run.slow",
                    f"run {run.run_id} of pipeline {run.pipeline!r} has been running for "
                    f"{elapsed:.0f}s, more than {t.run_duration_factor:g} x its usual p95 of "
                    f"{p95:.1f}s", {"pipeline": run.pipeline, "run_id": run.run_id,
                                    "elapsed_s": round(elapsed, 1), "p95_s": round(p95, 3),
                                    "factor": t.run_duration_factor}, run.run_id)
        limit = t.stage_duration_s
        for (run_id, stage), started in list(self._stage_started.items()):
            if limit is None or started is None or run_id not in self._live:
                continue
            elapsed = (now - started).total_seconds()
            if elapsed > limit:
                actions += self._slow_stage(run_id, stage, elapsed, limit)
        return actions

    def _slow_stage(self, run_id: str, stage: str, seconds: float, limit: float) -> list[_Action]:
        pipeline = self._run_pipeline.get(run_id, "unknown")
        return self._open_alert(
            f"stage.slow:{run_id}:{stage}", AlertSeverity.WARNING, "stage.slow",
            f"stage {stage!r} of pipeline {pipeline!r} has taken {seconds:.1f}s, above the "
            f"threshold of {limit:g}s", {"pipeline": pipeline, "stage": stage, "run_id": run_id,
                                         "duration_s": round(seconds, 3), "threshold": limit},
            run_id)

    # -- runs and stages from code ----------------------------------------------

    def start_pipeline_monitoring(self, name: str) -> str:
        """Record that a run of pipeline ``name`` started now; returns its id here."""
        run_id = f"{name}:api-{next(self._api_runs)}"
        with self._lock:
            self._stats(name)
            self._remember_pipeline(run_id, name)
            self._live[run_id] = LiveRun(run_id, name, "RUNNING", "api", self._now(), self._now())
        return run_id

    def stop_pipeline_monitoring(self, name: str, state: str = "COMPLETED",
                                 error: str | None = None) -> float | None:
        """Record the end of the oldest run of ``name`` started here; its duration in s."""
        out: list[float | None] = []

        def decide() -> list[_Action]:
            run_id = next((r.run_id for r in self._live.values()
                           if r.pipeline == name and r.trigger == "api"), None)
            if run_id is None:
                run_id = self.start_pipeline_monitoring(name)
            duration, actions = self._end_run(run_id, str(state).upper(), self._now(),
                                              {"error": error} if error else {})
            out.append(duration)
            return actions

        self._act(decide)
        return out[0]

    def record_stage(self, pipeline: str, stage: str, *, state: str,
                     duration_s: float | None = None, rows: int | None = None,
                     cpu_s: float | None = None, peak_rss_mb: float | None = None,
                     attempt: int = 1) -> None:
        """Record how one attempt of a stage ended (or that it was skipped/retried)."""
        self._act(lambda: self._record_stage(pipeline, stage, str(state).upper(), duration_s,
                                             rows, cpu_s, peak_rss_mb, attempt, None))

    # -- runs and stages from the event log ------------------------------------

    def observe(self, event: Event) -> None:
        """Update the statistics (and alerts) from one event of the event log."""
        handler = _OBSERVERS.get(str(event.type))
        if handler is None:
            return
        data = event.data() or {}
        at = parse_ts(event.ts) or self._now()
        self._act(lambda: handler(self, event, data, at))

    def _stats(self, pipeline: str) -> PipelineStats:
        stats = self._pipelines.get(pipeline)
        if stats is None:
            stats = self._pipelines[pipeline] = PipelineStats(
                recent_runs=deque(maxlen=self.recent_runs))
        return stats

    def _remember_pipeline(self, run_id: str, pipeline: str) -> None:
        _remember(self._run_pipeline, run_id, pipeline)

    def _pipeline_of(self, event: Event, data: dict[str, Any]) -> str:
        name = data.get("pipeline") or self._run_pipeline.get(event.run_id or "")
        if name is None and event.run_id and self.event_log is not None:
            # a run ended long ago and retried now: older than what we remember
            rows = self.event_log.query("SELECT pipeline FROM runs WHERE run_id = ?",
                                        [event.run_id])
            name = rows[0][0] if rows else None
        name = name or "unknown"
        if event.run_id and name != "unknown":
            self._remember_pipeline(event.run_id, name)
        return name

    def _live_run(self, event: Event, data: dict, at: datetime) -> LiveRun:
        run = self._live.get(event.run_id or "")
        if run is None:
            pipeline = self._pipeline_of(event, data)
            self._stats(pipeline)
            run = self._live[event.run_id or ""] = LiveRun(
                event.run_id or "", pipeline, "PENDING", data.get("trigger"), at)
        return run

    def _end_run(self, run_id: str, state: str, at: datetime, extra: dict[str, Any],
                 seq: int | None = None) -> tuple[float | None, list[_Action]]:
        live = self._live.pop(run_id, None)
        pipeline = live.pipeline if live else self._run_pipeline.get(run_id, "unknown")
        stats = self._stats(pipeline)
        started = live.started_at if live else None
        duration = (at - started).total_seconds() if started is not None else None
        stats.runs[state] += 1
        stats.durations.add(duration)
        if state == "COMPLETED" and duration is not None:
            stats.completed_durations.append(duration)
        summary = {"run_id": run_id, "pipeline": pipeline, "state": state,
                   "trigger": live.trigger if live else None,
                   "requested_at": iso(live.requested_at) if live else None,
                   "started_at": iso(started), "ended_at": iso(at), "duration_s": duration,
                   "failed_stage": extra.get("stage"),
                   "error": extra.get("error") or extra.get("reason")}
        stats.last_run = summary
        stats.recent_runs.appendleft(summary)
        for key in [k for k in self._stage_started if k[0] == run_id]:
            del self._stage_started[key]
        actions = self._close_where(lambda a: a.run_id == run_id and a.name != "run.parked",
                                    f"run {run_id} ended {state}")
        # listeners may see two runs' endings out of log order: only the later one
        # decides whether the pipeline is failing
        latest = seq is None or seq > stats.last_end_seq
        if seq is not None and latest:
            stats.last_end_seq = seq
        if state == "COMPLETED":
            stats.last_success_at = max(stats.last_success_at or at, at)
            if latest:
                actions += self._close_where(
                    lambda a: a.name in ("pipeline.failing", "file.quarantined")
                    and a.fields.get("pipeline") == pipeline,
                    f"run {run_id} of pipeline {pipeline!r} completed")
        elif state == "FAILED" and latest:
            where = f" at stage {extra['stage']!r}" if extra.get("stage") else ""
            why = f": {extra['error']}" if extra.get("error") else ""
            actions += self._open_alert(
                f"pipeline.failing:{pipeline}", AlertSeverity.ERROR, "pipeline.failing",
                f"run {run_id} of pipeline {pipeline!r} failed{where}{why}",
                {"pipeline": pipeline, "run_id": run_id, **extra}, at=at)
        elif state == "PARKED":
            self._parked.add(run_id)
            actions += self._open_alert(
                f"run.parked:{run_id}", AlertSeverity.CRITICAL, "run.parked",
                f"run {run_id} of pipeline {pipeline!r} was parked after repeated recoveries; "
                f"it needs a human (ahgd retry {run_id}, or ahgd cancel {run_id})",
                {"pipeline": pipeline, "run_id": run_id, **extra}, run_id, at=at)
        if state in FINISHED_STATES:
            stats.recent.append(state != "COMPLETED")
            actions += self._check_failure_rate(pipeline, stats)
        return duration, actions

    def _check_failure_rate(self, pipeline: str, stats: PipelineStats) -> list[_Action]:
        limit = self.thresholds.pipeline_failure_rate
        if len(stats.recent) < self.thresholds.failure_rate_min_runs:
            return []
        rate = sum(stats.recent) / len(stats.recent)
        alert_id = f"pipeline.failure_rate_high:{pipeline}"
        if limit is not None and rate > limit:
            return self._open_alert(
                alert_id, AlertSeverity.WARNING, "pipeline.failure_rate_high",
                f"{sum(stats.recent)} of the last {len(stats.recent)} runs of pipeline "
                f"{pipeline!r} failed", {"pipeline": pipeline, "failure_rate": rate,
                                         "threshold": limit, "runs": len(stats.recent)})
        return self._close_alert(alert_id, f"failure rate of pipeline {pipeline!r} is back to "
                                 f"{rate:.0%}" if limit is not None else
                                 "the failure-rate threshold was turned off")

    def _record_stage(self, pipeline: str, stage: str, state: str, duration_s: float | None,
                      rows: int | None, cpu_s: float | None, peak_rss_mb: float | None,
                      attempt: int | None, run_id: str | None) -> list[_Action]:
        s = self._stats(pipeline).stages.setdefault(stage, StageStats())
        if state == "RETRYING":   # not an outcome: the failed attempt was counted already,
            return []             # and the retry counts when it starts
        s.states[state] += 1
        if state not in ("SKIPPED", "REUSED"):
            s.durations.add(duration_s)
        s.rows += rows or 0
        s.cpu_s += cpu_s or 0.0
        if peak_rss_mb is not None:
            s.peak_rss_mb = max(s.peak_rss_mb or 0.0, peak_rss_mb)
        s.max_attempt = max(s.max_attempt, attempt or 1)
        limit = self.thresholds.stage_duration_s
        if (state == "COMPLETED" and limit is not None and (duration_s or 0) > limit
                and run_id is None):  # from code: it is over already, so raised and resolved
            run = f"{pipeline}:api"
            self._remember_pipeline(run, pipeline)
            return (self._slow_stage(run, stage, duration_s or 0.0, limit)
                    + self._close_alert(f"stage.slow:{run}:{stage}", f"stage {stage!r} ended"))
        return []

    # -- observe() handlers (called with the lock held) -------------------------

    def _on_run_requested(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        run = self._live_run(event, data, at)
        run.state, run.trigger, run.requested_at = "PENDING", data.get("trigger"), at
        return []

    def _on_run_started(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        run = self._live_run(event, data, at)
        run.state, run.started_at = "RUNNING", at
        run.stages = list(data.get("stages") or run.stages)
        return []

    def _on_run_requeued(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        """run.recovered / run.suspended / run.retried: the run waits to start again."""
        run = self._live_run(event, data, at)
        run.state = "PENDING"
        actions = []
        if event.run_id in self._parked:
            self._parked.discard(event.run_id)
            actions += self._close_alert(f"run.parked:{event.run_id}",
                                         f"run {event.run_id} was retried")
        return actions

    def _on_run_ended(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        state = str(event.type).partition(".")[2].upper()
        run_id = event.run_id or ""
        self._pipeline_of(event, data)
        actions = []
        if state == "CANCELLED" and run_id in self._parked:
            self._parked.discard(run_id)
            actions += self._close_alert(f"run.parked:{run_id}", f"run {run_id} was cancelled")
        extra = {"stage": data.get("stage") or event.stage, "error": data.get("error"),
                 "reason": data.get("reason")}
        return actions + self._end_run(run_id, state, at,
                                       {k: v for k, v in extra.items() if v is not None},
                                       event.seq)[1]

    def _on_stage_started(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        _remember(self._stage_started, (event.run_id or "", event.stage or ""), at)
        if (event.attempt or 1) > 1:   # a retry: automatic, or the run retried by hand
            pipeline = self._pipeline_of(event, data)
            self._stats(pipeline).stages.setdefault(event.stage or "unknown",
                                                    StageStats()).retries += 1
        run = self._live.get(event.run_id or "")
        if run is not None and event.stage:
            run.stage_states[event.stage] = ("RUNNING", event.attempt or 1)
        return []

    def _on_stage_ended(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        pipeline, stage = self._pipeline_of(event, data), event.stage or "unknown"
        run_id = event.run_id or ""
        started = self._stage_started.pop((run_id, stage), None)
        duration = data.get("wall_s")
        if duration is None and started is not None:
            duration = (at - started).total_seconds()
        state = _STAGE_STATES[str(event.type)]
        run = self._live.get(run_id)
        if run is not None and event.stage:
            run.stage_states[event.stage] = (state, event.attempt or 1)
        actions = self._record_stage(pipeline, stage, state, duration, data.get("rows"),
                                     data.get("cpu_s"), data.get("peak_rss_mb"), event.attempt,
                                     run_id)
        limit = self.thresholds.stage_duration_s
        slow_id = f"stage.slow:{run_id}:{stage}"
        if state == "COMPLETED" and limit is not None and duration is not None and duration > limit:
            actions += self._slow_stage(run_id, stage, duration, limit)  # slow, but done: raised
            # and resolved at once (an interrupted or failed attempt was not slow, it ended)
        actions += self._close_alert(slow_id, f"stage {stage!r} ended {state} after "
                                     f"{duration or 0:.1f}s")
        if state == "TIMED_OUT":
            actions += self._open_alert(
                f"stage.timed_out:{run_id}:{stage}", AlertSeverity.WARNING, "stage.timed_out",
                f"stage {stage!r} of pipeline {pipeline!r} timed out (run {run_id}, attempt "
                f"{event.attempt})", {"pipeline": pipeline, "run_id": run_id, "stage": stage,
                                      "attempt": event.attempt, "duration_s": duration}, run_id)
        return actions

    def _on_file(self, event: Event, data: dict, at: datetime) -> list[_Action]:
        pipeline = self._pipeline_of(event, data)
        outcome = _FILE_OUTCOMES[str(event.type)]
        self._stats(pipeline).files[outcome] += 1
        if outcome != "quarantined":
            return []
        name = data.get("name") or data.get("path")
        return self._open_alert(
            f"file.quarantined:{pipeline}", AlertSeverity.WARNING, "file.quarantined",
            f"file {name!r} for pipeline {pipeline!r} was quarantined: {data.get('reason')}",
            {"pipeline": pipeline, "file": name, "reason": data.get("reason"),
             "path": data.get("path") or data.get("stored_path")})

    # -- reading and exporting ------------------------------------------------

    def queue_figures(self) -> dict[str, int]:
        """Pending and running runs, running stages and parked runs, as known here."""
        with self._lock:
            live = list(self._live.values())
            return {
                "pending_runs": sum(1 for r in live if r.state == "PENDING"),
                "running_runs": sum(1 for r in live if r.state == "RUNNING"),
                "running_stages": sum(1 for r in live for s, _ in r.stage_states.values()
                                      if s == "RUNNING"),
                "parked_runs": len(self._parked),
            }

    def get_dashboard_data(self, recent: int | None = None) -> dict[str, Any]:
        """One JSON-serialisable document: queue, system, active runs, last runs, alerts."""
        recent = RECENT_SHOWN if recent is None else recent
        with self._lock:
            queue = self.queue_figures()
            now = self._now()
            latest = self._samples[-1] if self._samples else None
            running = [r for r in self._live.values() if r.state == "RUNNING"]
            pending = [r for r in self._live.values() if r.state != "RUNNING"]
            # a queue of thousands must not make every dashboard request (and the lock) heavy
            first_pending = heapq.nsmallest(ACTIVE_PENDING_SHOWN, pending,
                                            key=lambda r: iso(r.requested_at) or "")
            active = sorted(running, key=lambda r: iso(r.started_at) or "") + first_pending
            return {
                "generated_at": iso(now),
                "daemon": None,
                "queue": queue,
                "system": latest.to_dict() if latest else None,
                "monitoring": {"system": self.is_monitoring,
                               "sample_interval_s": self.sample_interval},
                "thresholds": asdict(self.thresholds),
                "active_runs": [r.progress(now) for r in active],
                "active_runs_not_shown": len(pending) - len(first_pending),
                "recent_runs": {name: list(s.recent_runs)[:recent]
                                for name, s in sorted(self._pipelines.items()) if s.recent_runs},
                "alerts": {
                    "open": [a.to_dict() for a in sorted(self._open.values(),
                                                         key=lambda a: (-a.severity.rank, a.at))],
                    "counts": {s.value: self._alert_counts[s] for s in AlertSeverity},
                    "recent": [a.to_dict() for a in list(self._alerts)[-50:]],
                },
                "pipelines": {name: {**s.to_dict(), "active_runs": sum(
                    1 for r in self._live.values() if r.pipeline == name)}
                    for name, s in sorted(self._pipelines.items())},
            }

    def export_metrics(self, format: str = "json") -> str:
        """The metrics as ``json``, ``prometheus`` (text format 0.0.4) or ``csv``."""
        fmt = check_format(format)
        if self._registry is None:
            from .export import build_registry

            self._registry = build_registry(self)
        return render_metrics(fmt, self._registry,
                              self.get_dashboard_data() if fmt == "json" else None)

    def save_metrics(self, format: str = "json") -> Path:
        """Write ``metrics.<json|prom|csv>`` into ``metrics_dir`` atomically."""
        fmt = check_format(format)
        return write_metrics_file(self.metrics_dir, fmt, self.export_metrics(fmt))

    def _now(self) -> datetime:
        return self._clock()


_OBSERVERS: dict[str, Callable[..., list[_Action]]] = {
    "run.requested": PipelineMonitor._on_run_requested,
    "run.started": PipelineMonitor._on_run_started,
    "run.recovered": PipelineMonitor._on_run_requeued,
    "run.suspended": PipelineMonitor._on_run_requeued,
    "run.retried": PipelineMonitor._on_run_requeued,
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
    "file.arrived": PipelineMonitor._on_file,
    "file.duplicate": PipelineMonitor._on_file,
    "file.quarantined": PipelineMonitor._on_file,
}
_STAGE_STATES = {
    "stage.completed": "COMPLETED", "stage.failed": "FAILED", "stage.timed_out": "TIMED_OUT",
    "stage.interrupted": "INTERRUPTED", "stage.retrying": "RETRYING",
    "stage.skipped": "SKIPPED", "stage.reused": "REUSED",
}
_FILE_OUTCOMES = {"file.arrived": "taken", "file.duplicate": "duplicate",
                  "file.quarantined": "quarantined"}


def _remember(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MEMORY_CAP:
        cache.popitem(last=False)


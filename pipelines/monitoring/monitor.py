"""PipelineMonitor: the thread-safe face of the monitor, and the only part that acts.

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
Nothing here configures logging; the logger is passed in (the daemon's structlog
logger) or ``pipelines.logs.get_logger("pipelines.monitor")`` (a script's
``logging``, see :mod:`pipelines.logs`).

What the monitor knows is one :class:`~pipelines.monitoring.monitor_state.MonitorState`
(``monitor.state``), seeded by :mod:`~pipelines.monitoring.history` and
changed by the pure fold of :mod:`~pipelines.monitoring.fold`, which returns
the alerts to raise and resolve as data.  This class holds the locks, the
clock, the sampling thread and the psutil sampler, and does what the fold
decides: a log line and an event per alert.
"""

from __future__ import annotations

import itertools
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from state.events import Event

from ..durations import parse_duration
from ..errors import ConfigError
from ..logs import get_logger
from . import fold
from .alerts import Action, alert_event, close_alert, open_alert
from .dashboard import ACTIVE_PENDING_SHOWN, dashboard_document
from .export import FORMATS, build_registry, check_format, render_metrics, write_metrics_file
from .history import load_history, run_past
from .monitor_state import LiveRun, MonitorState, RunPast
from .records import (FAILURE_WINDOW, FINISHED_STATES, RECENT_RUNS, RECENT_SHOWN, SYSTEM_METRICS,
                      Alert, AlertSeverity, SystemSample)
from .sampler import CPU_WINDOW_S, SystemSampler, WorkerSource
from .thresholds import MonitorThresholds

__all__ = ["ACTIVE_PENDING_SHOWN", "CPU_WINDOW_S", "FAILURE_WINDOW", "FINISHED_STATES", "FORMATS",
           "SYSTEM_METRICS", "Alert", "AlertSeverity", "Clock", "LiveRun", "MonitorThresholds",
           "PipelineMonitor", "SystemSample"]

_RESERVED = frozenset({"event", "alert", "alert_id", "alert_state", "severity", "detail",
                       "level", "timestamp"})
Clock = Callable[[], datetime]


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
        self.sample_interval = parse_duration(
            sample_interval, what="monitor sample_interval", positive=True).total_seconds()
        self.event_log = event_log
        self.recent_runs = recent_runs
        #: what the monitor knows; read or change it only under the monitor's lock
        self.state = MonitorState.new(
            MonitorThresholds.from_mapping(thresholds), recent_runs=recent_runs,
            max_samples=max_samples, max_alerts=max_alerts,
            find_pipeline=self._logged_pipeline if event_log is not None else None,
            find_run=self._logged_run if event_log is not None else None)
        self._log = logger if logger is not None else get_logger("pipelines.monitor")
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.RLock()
        # held from deciding an alert action until its line and event are written, so
        # that a resolve decided on another thread cannot overtake the raise it resolves
        self._emit_lock = threading.RLock()
        self._api_runs = itertools.count(1)
        paths = list(disk_paths) if disk_paths else [self.metrics_dir]
        self._sampler = SystemSampler(paths, self._now, workers)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._registry: Any = None
        if event_log is not None:
            with self._emit_lock:
                with self._lock:
                    resolved = load_history(self.state, event_log, self._now())
                if not read_only:
                    self._emit(resolved)

    # -- thresholds and alerts ------------------------------------------------

    @property
    def thresholds(self) -> MonitorThresholds:
        return self.state.thresholds

    @thresholds.setter
    def thresholds(self, value: MonitorThresholds) -> None:
        self.state.thresholds = value

    def set_thresholds(self, **changes: Any) -> MonitorThresholds:
        """Change some thresholds (e.g. on config reload).

        The failure rates are judged again at once; system and duration
        thresholds on the next sample.
        """
        new = self.thresholds.with_changes(**changes)
        self._act(lambda: fold.set_thresholds(self.state, new, self._now()))
        return new

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
        key = alert_id or name
        out: list[Alert] = []

        def decide() -> list[Action]:
            actions = open_alert(self.state, key, severity, name, message, fields, run_id,
                                 at=self._now())
            out.append(self.state.open[key])
            return actions

        self._act(decide)
        return out[0]

    def resolve_alert(self, alert_id: str, reason: str = "resolved") -> Alert | None:
        """Resolve an open alert; None if no alert with that id is open."""
        actions = self._act(lambda: close_alert(self.state, alert_id, reason, at=self._now()))
        return actions[0].alert if actions else None

    def get_alerts(self, since: datetime | None = None,
                   min_severity: AlertSeverity | str | None = None,
                   open_only: bool = False) -> list[Alert]:
        """Alerts raised (oldest first), at or after ``since``, at least ``min_severity``."""
        rank = AlertSeverity.coerce(min_severity).rank if min_severity is not None else 0
        with self._lock:
            alerts = list(self.state.open.values()) if open_only else list(self.state.alerts)
        return [a for a in alerts
                if a.severity.rank >= rank and (since is None or a.at >= since)]

    def open_alerts(self) -> list[Alert]:
        return self.get_alerts(open_only=True)

    def _act(self, decide: Callable[[], list[Action]]) -> list[Action]:
        """Decide under the lock, then log and record, all under the emit lock."""
        with self._emit_lock:
            with self._lock:
                actions = decide()
            self._emit(actions)
        return actions

    def _emit(self, actions: Iterable[Action]) -> None:
        """Outside the lock: one log line per action, and its event in the log."""
        for action in actions:
            alert = action.alert
            if action.kind in ("raise", "recorded"):
                getattr(self._log, alert.severity.value)(
                    alert.name, alert=True, alert_id=alert.id, alert_state="firing",
                    severity=alert.severity.value, detail=alert.message, **alert.fields)
            else:
                self._log.info(alert.name, alert=True, alert_id=alert.id, alert_state="resolved",
                               severity="info", raised_severity=alert.severity.value,
                               detail=alert.resolution)
            if self.event_log is not None and not self.read_only and action.kind != "recorded":
                try:
                    self.event_log.append(alert_event(action))
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
        self._act(lambda: fold.take_sample(self.state, sample, self._now()))
        return sample

    def get_samples(self) -> list[SystemSample]:
        with self._lock:
            return list(self.state.samples)

    # -- runs and stages from code ----------------------------------------------

    def start_pipeline_monitoring(self, name: str) -> str:
        """Record that a run of pipeline ``name`` started now; returns its id here."""
        run_id = f"{name}:api-{next(self._api_runs)}"
        with self._lock:
            fold.start_api_run(self.state, run_id, name, self._now())
        return run_id

    def stop_pipeline_monitoring(self, name: str, state: str = "COMPLETED",
                                 error: str | None = None) -> float | None:
        """Record the end of the oldest run of ``name`` started here; its duration in s."""
        out: list[float | None] = []

        def decide() -> list[Action]:
            run_id = fold.oldest_api_run(self.state, name)
            if run_id is None:
                run_id = self.start_pipeline_monitoring(name)
            now = self._now()
            duration, actions = fold.end_run(self.state, run_id, str(state).upper(), now,
                                             {"error": error} if error else {}, now)
            out.append(duration)
            return actions

        self._act(decide)
        return out[0]

    def record_stage(self, pipeline: str, stage: str, *, state: str,
                     duration_s: float | None = None, rows: int | None = None,
                     cpu_s: float | None = None, peak_rss_mb: float | None = None,
                     attempt: int = 1) -> None:
        """Record how one attempt of a stage ended (or that it was skipped/retried)."""
        self._act(lambda: fold.record_stage(self.state, pipeline, stage, str(state).upper(),
                                            duration_s, rows, cpu_s, peak_rss_mb, attempt, None,
                                            self._now()))

    # -- runs and stages from the event log ------------------------------------

    def observe(self, event: Event) -> None:
        """Update the statistics (and alerts) from one event of the event log."""
        if str(event.type) in fold.OBSERVED:
            self._act(lambda: fold.observe(self.state, event, self._now()))

    def _logged_pipeline(self, run_id: str) -> str | None:
        """The pipeline of a run the state no longer remembers, from the event log."""
        rows = self.event_log.query("SELECT pipeline FROM runs WHERE run_id = ?", [run_id])
        return rows[0][0] if rows else None

    def _logged_run(self, run_id: str, seq: int) -> RunPast | None:
        """The past of a run the fold did not see whole, from the event log."""
        return run_past(self.event_log, run_id, seq)

    # -- reading and exporting ------------------------------------------------

    def queue_figures(self) -> dict[str, int]:
        """Pending and running runs, running stages and parked runs, as known here."""
        with self._lock:
            return self.state.queue_figures()

    def get_dashboard_data(self, recent: int | None = None) -> dict[str, Any]:
        """One JSON-serialisable document: queue, system, active runs, last runs, alerts."""
        recent = RECENT_SHOWN if recent is None else recent
        with self._lock:
            return dashboard_document(
                self.state, self._now(), recent,
                {"system": self.is_monitoring, "sample_interval_s": self.sample_interval})

    def add_collector(self, collector: Any) -> None:
        """Export ``collector``'s metrics (a ``prometheus_client`` collector) beside ours."""
        self._extra_collectors = [*getattr(self, "_extra_collectors", []), collector]
        if self._registry is not None:
            self._registry.register(collector)

    def export_metrics(self, format: str = "json") -> str:
        """The metrics as ``json``, ``prometheus`` (text format 0.0.4) or ``csv``."""
        fmt = check_format(format)
        if self._registry is None:
            # a look at the history: this process is not the daemon, so no process figures
            self._registry = build_registry(self.state, self._lock, self.event_log,
                                            process=not self.read_only)
            for collector in getattr(self, "_extra_collectors", []):
                self._registry.register(collector)
        return render_metrics(fmt, self._registry,
                              self.get_dashboard_data() if fmt == "json" else None)

    def save_metrics(self, format: str = "json") -> Path:
        """Write ``metrics.<json|prom|csv>`` into ``metrics_dir`` atomically."""
        fmt = check_format(format)
        return write_metrics_file(self.metrics_dir, fmt, self.export_metrics(fmt))

    def _now(self) -> datetime:
        return self._clock()

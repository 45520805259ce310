"""Monitoring and alerting: system samples, run and stage statistics, alerts, metrics.

    from pipelines.monitoring import PipelineMonitor, AlertSeverity
    monitor = PipelineMonitor(metrics_dir=Path("metrics"), event_log=log)

    monitor        PipelineMonitor: the locks, the clock, the sampling thread; logs and
                   records the alerts the fold decides
    monitor_state  MonitorState: everything the monitor knows, as one plain value
    fold           observe(state, event, now) -> actions: events, samples and calls from
                   code folded into the state (pure: no logging, I/O, locks or threads)
    alerts         alert decisions: which alert opens or closes, thresholds, their words
    thresholds     MonitorThresholds: each threshold once, with its default and limits
                   (daemon.monitoring.thresholds in the master file is made from it)
    history        seeding a MonitorState from an event log's projections
    dashboard      the dashboard document from a MonitorState
    export         metrics through prometheus_client; Prometheus, JSON and CSV renderings
    records        alerts, severities, samples, histograms and the statistics kept
    sampler        psutil readings of the machine, its disks and the stage workers

Names are imported on first use (PEP 562), so that the configuration can read
:mod:`~pipelines.monitoring.thresholds` without loading psutil and structlog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

_EXPORTS = {
    "ACTIVE_PENDING_SHOWN": ".dashboard",
    "CPU_WINDOW_S": ".sampler",
    "FAILURE_WINDOW": ".records",
    "FINISHED_STATES": ".records",
    "FORMATS": ".export",
    "PROMETHEUS_CONTENT_TYPE": ".export",
    "SYSTEM_METRICS": ".records",
    "Alert": ".records",
    "AlertSeverity": ".records",
    "Clock": ".monitor",
    "LiveRun": ".monitor_state",
    "MonitorThresholds": ".thresholds",
    "PipelineMonitor": ".monitor",
    "SystemSample": ".records",
}

__all__ = ["ACTIVE_PENDING_SHOWN", "CPU_WINDOW_S", "FAILURE_WINDOW", "FINISHED_STATES", "FORMATS",
           "PROMETHEUS_CONTENT_TYPE", "SYSTEM_METRICS", "Alert", "AlertSeverity", "Clock",
           "LiveRun", "MonitorThresholds", "PipelineMonitor", "SystemSample"]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .dashboard import ACTIVE_PENDING_SHOWN
    from .export import FORMATS, PROMETHEUS_CONTENT_TYPE
    from .monitor import Clock, PipelineMonitor
    from .monitor_state import LiveRun
    from .records import (FAILURE_WINDOW, FINISHED_STATES, SYSTEM_METRICS, Alert, AlertSeverity,
                          SystemSample)
    from .sampler import CPU_WINDOW_S
    from .thresholds import MonitorThresholds

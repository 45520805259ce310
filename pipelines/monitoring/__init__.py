"""Monitoring and alerting: system samples, run and stage statistics, alerts, metrics.

    from pipelines.monitoring import PipelineMonitor, AlertSeverity
    monitor = PipelineMonitor(metrics_dir=Path("metrics"), event_log=log)

    monitor   PipelineMonitor: the sampling thread, event handlers and alert checks
    records   alerts, severities, thresholds, samples and the statistics kept
    sampler   psutil readings of the machine, its disks and the stage workers
    history   seeding the monitor from an event log's projections
    export    metrics through prometheus_client; Prometheus, JSON and CSV renderings
"""

from __future__ import annotations

from .export import FORMATS, PROMETHEUS_CONTENT_TYPE
from .monitor import ACTIVE_PENDING_SHOWN, Clock, LiveRun, PipelineMonitor
from .records import (FAILURE_WINDOW, FINISHED_STATES, SYSTEM_METRICS, Alert, AlertSeverity,
                      MonitorThresholds, SystemSample)
from .sampler import CPU_WINDOW_S

__all__ = ["ACTIVE_PENDING_SHOWN", "CPU_WINDOW_S", "FAILURE_WINDOW", "FINISHED_STATES", "FORMATS",
           "PROMETHEUS_CONTENT_TYPE", "SYSTEM_METRICS", "Alert", "AlertSeverity", "Clock",
           "LiveRun", "MonitorThresholds", "PipelineMonitor", "SystemSample"]

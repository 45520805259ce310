"""The monitor's metrics as text: Prometheus exposition format, CSV and JSON.

The metrics are produced by a ``prometheus_client`` collector registered on a
registry of the monitor's own (never the library's global one):
:func:`build_registry` makes it over the monitor's
:class:`~pipelines.monitoring.monitor_state.MonitorState`, and every scrape
reads that state under the monitor's lock at that moment.  The Prometheus text is
``prometheus_client.generate_latest``; CSV and JSON list the same samples.
The process's own figures (resident memory, CPU seconds, open files, start
time) come from ``prometheus_client``'s process collector, as
``ahgd_process_*``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, ContextManager, Iterator

from state.errors import did_you_mean

from ..errors import ConfigError
from .monitor_state import MonitorState
from .records import AlertSeverity, in_parentheses, jsonable

FORMATS = {"json": "json", "prometheus": "prom", "csv": "csv"}
#: the content type of the Prometheus text format, for an HTTP reply
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_registry(state: MonitorState, lock: ContextManager[Any], event_log: Any = None, *,
                   process: bool = True) -> Any:
    """A registry reading ``state`` under ``lock`` (and the append timings of
    ``event_log``, if any); with ``process``, prometheus_client's process collector too."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MonitorCollector(state, lock, event_log))
    if process:
        ProcessCollector(namespace="ahgd", registry=registry)
    return registry


class _MonitorCollector:
    def __init__(self, state: MonitorState, lock: ContextManager[Any], event_log: Any):
        self._state, self._lock, self._event_log = state, lock, event_log

    def describe(self) -> list:
        return []  # unchecked: the families depend on the pipelines seen

    def collect(self) -> Iterator[Any]:
        m = self._state
        with self._lock:
            latest = m.samples[-1] if m.samples else None
            families = [*_run_families(m), *_stage_families(m),
                        *_queue_families(m.queue_figures()), *_alert_families(m),
                        *_system_families(latest)]
        log = self._event_log
        if log is not None and hasattr(log, "append_timings"):
            families.append(_append_family(log.append_timings))
        yield from families


def _run_families(m: MonitorState) -> list:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)

    runs = CounterMetricFamily("ahgd_runs", "Runs that ended, by pipeline and final state: "
                               "each run once per final state it ended in (a run retried and "
                               "failing again counts once as FAILED; retried to completion, "
                               "once as FAILED and once as COMPLETED).",
                               labels=["pipeline", "state"])
    duration = HistogramMetricFamily("ahgd_run_duration_seconds", "Time runs spent running "
                                     "(run_history.duration_s: the sum of their executions), "
                                     "observed once per run, when it first ended.",
                                     labels=["pipeline"])
    success = GaugeMetricFamily("ahgd_last_success_timestamp_seconds",
                                "Unix time the last completed run of the pipeline ended.",
                                labels=["pipeline"])
    files = CounterMetricFamily("ahgd_files", "Drop-folder files by outcome: taken (a run was "
                                "requested), duplicate (content seen before), quarantined.",
                                labels=["pipeline", "outcome"])
    for name, s in sorted(m.pipelines.items()):
        for state, n in sorted(s.runs.items()):
            runs.add_metric([name, state], n)
        if s.durations.count:
            duration.add_metric([name], s.durations.cumulative(), s.durations.total)
        if s.last_success_at is not None:
            success.add_metric([name], s.last_success_at.timestamp())
        for outcome in ("taken", "duplicate", "quarantined"):
            files.add_metric([name, outcome], s.files[outcome])
    return [runs, duration, success, files]


def _stage_families(m: MonitorState) -> list:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)

    labels = ["pipeline", "stage"]
    attempts = CounterMetricFamily("ahgd_stage_attempts", "Stage attempts by outcome.",
                                   labels=[*labels, "outcome"])
    retries = CounterMetricFamily("ahgd_stage_retries", "Stage attempts that failed and were "
                                  "retried.", labels=labels)
    duration = HistogramMetricFamily("ahgd_stage_duration_seconds", "Wall time of stage "
                                     "attempts that ran (completed, failed, timed out, "
                                     "interrupted).", labels=labels)
    rows = CounterMetricFamily("ahgd_stage_rows", "Rows output by completed attempts (a "
                               "loader's: the rows it wrote).", labels=labels)
    rejected = CounterMetricFamily("ahgd_stage_rows_rejected", "Rows moved aside to "
                                   "<stage>_rejected by validation_rules with quarantine: true.",
                                   labels=labels)
    cpu = CounterMetricFamily("ahgd_stage_cpu_seconds", "CPU time of stage attempts.",
                              labels=labels)
    peak = GaugeMetricFamily("ahgd_stage_peak_resident_memory_bytes", "Highest peak memory of "
                             "an attempt.", labels=labels)
    for name, p in sorted(m.pipelines.items()):
        for stage, s in sorted(p.stages.items()):
            for state, n in sorted(s.states.items()):
                attempts.add_metric([name, stage, state], n)
            retries.add_metric([name, stage], s.retries)
            if s.durations.count:
                duration.add_metric([name, stage], s.durations.cumulative(), s.durations.total)
            rows.add_metric([name, stage], s.rows)
            rejected.add_metric([name, stage], s.rows_rejected)
            cpu.add_metric([name, stage], s.cpu_s)
            if s.peak_rss_mb is not None:
                peak.add_metric([name, stage], round(s.peak_rss_mb * 2**20))
    return [attempts, retries, duration, rows, rejected, cpu, peak]


def _queue_families(queue: dict[str, int]) -> list:
    from prometheus_client.core import GaugeMetricFamily

    return [
        GaugeMetricFamily("ahgd_queue_depth", "Runs requested and waiting to start.",
                          value=queue["pending_runs"]),
        GaugeMetricFamily("ahgd_running_runs", "Runs in progress.", value=queue["running_runs"]),
        GaugeMetricFamily("ahgd_running_stages", "Stage attempts in progress.",
                          value=queue["running_stages"]),
        GaugeMetricFamily("ahgd_parked_runs", "Runs parked after repeated recoveries: they "
                          "need a human (ahgd retry or ahgd cancel).", value=queue["parked_runs"]),
    ]


def _alert_families(m: MonitorState) -> list:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    raised = CounterMetricFamily("ahgd_alerts", "Alerts raised, by severity.",
                                 labels=["severity"])
    for sev in AlertSeverity:
        raised.add_metric([sev.value], m.alert_counts[sev])
    open_ = GaugeMetricFamily("ahgd_alerts_open", "Alerts firing now, by name and severity.",
                              labels=["name", "severity"])
    counts: dict[tuple[str, str], int] = {}
    for a in m.open.values():
        counts[(a.name, a.severity.value)] = counts.get((a.name, a.severity.value), 0) + 1
    for (name, sev), n in sorted(counts.items()):
        open_.add_metric([name, sev], n)
    return [raised, open_]


def _system_families(s: Any) -> list:
    from prometheus_client.core import GaugeMetricFamily

    if s is None:
        return []
    out = []

    def gauge(name: str, help: str, value: Any) -> None:
        if value is not None:
            out.append(GaugeMetricFamily(name, help, value=value))

    gauge("ahgd_system_cpu_usage_ratio", "Machine CPU busy fraction since the previous sample.",
          None if s.cpu_percent is None else s.cpu_percent / 100)
    gauge("ahgd_system_memory_usage_ratio", "Machine memory in use, as a fraction.",
          None if s.memory_percent is None else s.memory_percent / 100)
    gauge("ahgd_process_children", "Descendant processes of the daemon (stage workers).",
          s.child_processes)
    gauge("ahgd_system_sample_timestamp_seconds", "Unix time of the latest system sample.",
          s.at.timestamp())
    disk = GaugeMetricFamily("ahgd_disk_usage_ratio", "Used fraction of the filesystem holding "
                             "the state directory or a drop folder.", labels=["path"])
    free = GaugeMetricFamily("ahgd_disk_free_bytes", "Free bytes on that filesystem.",
                             labels=["path"])
    for d in s.disks:
        disk.add_metric([d.path], d.percent / 100)
        free.add_metric([d.path], d.free_bytes)
    out += [disk, free]
    busy = [w for w in s.workers if w.run_id is not None]
    gauge("ahgd_workers", "Stage worker processes.", len(s.workers))
    gauge("ahgd_workers_busy", "Stage worker processes running an attempt.", len(busy))
    gauge("ahgd_workers_resident_memory_bytes", "Resident memory of all stage workers.",
          round(sum(w.rss_mb or 0 for w in s.workers) * 2**20))
    return out


def _append_family(timings: Any) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    buckets, total, _count = timings.snapshot()
    family = HistogramMetricFamily("ahgd_event_log_append_seconds", "Time to append to the "
                                   "event log: waiting for the write lock, writing, committing.")
    family.add_metric([], [("+Inf" if math.isinf(b) else repr(b), n) for b, n in buckets], total)
    return family


# -- rendering --------------------------------------------------------------------

def render_metrics(fmt: str, registry: Any, dashboard: dict[str, Any] | None) -> str:
    """The registry's samples as ``fmt`` (checked by :func:`check_format`)."""
    if fmt == "prometheus":
        from prometheus_client import generate_latest

        return generate_latest(registry).decode("utf-8")
    rows = [(s.name, s.labels, s.value) for family in registry.collect()
            for s in family.samples]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["metric", "labels", "value"])
        for name, labels, value in rows:
            writer.writerow([name, ";".join(f"{k}={v}" for k, v in labels.items()),
                             _number(value)])
        return buf.getvalue()
    doc = dict(dashboard or {})
    doc["metrics"] = [{"metric": n, "labels": labels, "value": _finite(v)}
                      for n, labels, v in rows]
    return json.dumps(jsonable(doc), indent=2, sort_keys=True)


def write_metrics_file(metrics_dir: Path, fmt: str, text: str) -> Path:
    """Write ``metrics.<json|prom|csv>`` into ``metrics_dir`` atomically."""
    path = metrics_dir / f"metrics.{FORMATS[fmt]}"
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=metrics_dir)
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


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else _number(value)


def check_format(format: str) -> str:
    """``format`` as a key of FORMATS, or ConfigError naming the formats there are."""
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"metrics format {format!r} is not supported"
                          f"{in_parentheses(did_you_mean(fmt, FORMATS))}; "
                          f"use one of: {', '.join(sorted(FORMATS))}")
    return fmt

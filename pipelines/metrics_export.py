"""The monitor's metrics as text: Prometheus exposition format 0.0.4, CSV and JSON.

:func:`metric_families` turns what a :class:`~pipelines.monitoring.PipelineMonitor`
keeps into Prometheus metric families, :func:`render_metrics` writes them in
one of :data:`FORMATS` and :func:`write_metrics_file` saves that text
atomically.  Nothing here keeps state or takes a lock: the monitor gathers the
families under its lock and renders them outside it.
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
from typing import Any, Callable, Mapping, NamedTuple

from .errors import ConfigError
from .monitor_records import (SYSTEM_METRICS, AlertSeverity, PipelineStats, SystemSample,
                              did_you_mean, jsonable)

FORMATS = {"json": "json", "prometheus": "prom", "csv": "csv"}


# -- metric families ----------------------------------------------------------

class _Family(NamedTuple):
    name: str
    kind: str           # counter | gauge | summary
    help: str
    samples: list       # (sample name, labels dict, value)


def metric_families(latest: SystemSample | None, pipelines: Mapping[str, PipelineStats],
                    alert_counts: Mapping[AlertSeverity, int], breached: set[tuple[str, str]],
                    metrics_dir: Path) -> list[_Family]:
    """Every metric as Prometheus families, from what the monitor keeps (under its lock)."""
    out: dict[str, _Family] = {}

    def add(name: str, kind: str, help: str, labels: dict, value: Any, suffix: str = "") -> None:
        if value is None:
            return
        fam = out.setdefault(name, _Family(name, kind, help, []))
        fam.samples.append((name + suffix, labels, value))

    if latest is not None:
        _system_families(latest, breached, metrics_dir, add)
    for pipeline, stats in sorted(pipelines.items()):
        _pipeline_families(pipeline, stats, add)
    for sev in AlertSeverity:
        add("ahgd_alerts_total", "counter", "Alerts raised since the monitor started.",
            {"severity": sev.value}, alert_counts[sev])
    return list(out.values())


def _system_families(s: SystemSample, breached: set[tuple[str, str]], metrics_dir: Path,
                     add: Callable) -> None:
    pct = lambda v: round(v / 100, 6) if v is not None else None  # noqa: E731
    add("ahgd_system_cpu_usage_ratio", "gauge", "Machine CPU busy fraction since the previous "
        "sample.", {}, pct(s.cpu_percent))
    add("ahgd_system_memory_usage_ratio", "gauge", "Machine memory in use, as a fraction.",
        {}, pct(s.memory_percent))
    add("ahgd_system_disk_usage_ratio", "gauge", "Used fraction of the filesystem holding the "
        "metrics directory.", {"path": str(metrics_dir)}, pct(s.disk_percent))
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
            "threshold.", {"threshold": metric}, int((metric, "") in breached))


def _pipeline_families(pipeline: str, p: PipelineStats, add: Callable) -> None:
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


def render_metrics(fmt: str, families: list[_Family], dashboard: dict[str, Any] | None) -> str:
    """The families as ``fmt`` (checked by :func:`check_format`); JSON adds ``dashboard``."""
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
    dashboard["metrics"] = [{"metric": n, "labels": labels, "value": v} for n, labels, v in rows]
    return json.dumps(jsonable(dashboard), indent=2, sort_keys=True)


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


def check_format(format: str) -> str:
    """``format`` as a key of FORMATS, or ConfigError naming the formats there are."""
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"metrics format {format!r} is not supported"
                          f"{did_you_mean(fmt, list(FORMATS))}; "
                          f"use one of: {', '.join(sorted(FORMATS))}")
    return fmt

"""Seeding a :class:`~pipelines.monitoring.PipelineMonitor` from an event log.

A daemon that restarts should not forget what it knew: the counters of
finished runs, stage attempts and files, the duration histograms, the last
success of each pipeline, the recent completed durations that the slow-run
alert compares against, the runs still queued or running, the parked runs
and the open alerts are all read back from the projections with plain SQL
(a few grouped queries, not a replay).  Alerts whose condition is known to
have cleared while no monitor watched (their run ended, a later run of their
pipeline completed) are resolved here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from state.errors import AhgdError
from state.log import parse_ts
from state.machine import ENDED_RUN_STATES

from .records import (DURATION_BUCKETS_S, DURATION_WINDOW, FAILURE_WINDOW,
                              FINISHED_STATES, Alert, AlertSeverity, StageStats)

if TYPE_CHECKING:
    from .monitor import PipelineMonitor, _Action

_TERMINAL = tuple(sorted(ENDED_RUN_STATES))
#: a run's duration from its *latest* start, as live counting has it: a retried or
#: recovered run's projected started_at is its first start (the events know the last)
_LAST_START = ("CASE WHEN retries + recoveries > 0 THEN (SELECT MAX(e.ts) FROM events e "
               "WHERE e.run_id = runs.run_id AND e.type = 'run.started') ELSE started_at END")
_SECONDS = f"((julianday(ended_at) - julianday({_LAST_START})) * 86400.0)"


def load_history(monitor: "PipelineMonitor", log: Any) -> list["_Action"]:
    """Fill ``monitor`` from ``log``'s projections; the alert resolutions to emit."""
    with monitor._lock:
        _runs(monitor, log)
        _stages(monitor, log)
        _files(monitor, log)
        _live(monitor, log)
        actions = _alerts(monitor, log)
        return actions + monitor._recheck_failure_rates()


def _buckets_sql(column: str) -> str:
    return ", ".join(f"SUM({column} <= {b!r})" for b in DURATION_BUCKETS_S)


def _runs(monitor: "PipelineMonitor", log: Any) -> None:
    for pipeline, state, n in log.query(
            "SELECT pipeline, state, COUNT(*) FROM runs WHERE state IN "
            f"({', '.join('?' * len(_TERMINAL))}) GROUP BY pipeline, state", list(_TERMINAL)):
        monitor._stats(pipeline).runs[state] = n
    # MATERIALIZED: computed once per row, not once per reference in the 19 aggregates
    for row in log.query(
            f"WITH t AS MATERIALIZED (SELECT pipeline, {_SECONDS} AS d FROM runs WHERE state IN "
            f"({', '.join('?' * len(_TERMINAL))}) AND started_at IS NOT NULL) "
            f"SELECT pipeline, COUNT(d), SUM(d), MAX(d), {_buckets_sql('d')} FROM t "
            "GROUP BY pipeline", list(_TERMINAL)):
        monitor._stats(row[0]).durations.add_cumulative(row[4:], row[1], row[2], row[3])
    for pipeline, ended in log.query(
            "SELECT pipeline, MAX(ended_at) FROM runs WHERE state = 'COMPLETED' GROUP BY pipeline"):
        monitor._stats(pipeline).last_success_at = parse_ts(ended)
    window = max(DURATION_WINDOW, FAILURE_WINDOW, monitor.recent_runs)
    rows = log.query(
        "SELECT * FROM (SELECT run_id, pipeline, state, trigger, requested_at, started_at, "
        f"ended_at, {_SECONDS} AS duration_s, failed_stage, error, ROW_NUMBER() OVER "
        "(PARTITION BY pipeline ORDER BY ended_at DESC, run_id DESC) AS n FROM runs WHERE state IN "
        f"({', '.join('?' * len(_TERMINAL))})) WHERE n <= ? ORDER BY pipeline, n DESC",
        [*_TERMINAL, window])
    for r in rows:  # oldest first, so that appendleft leaves the newest in front
        stats = monitor._stats(r[1])
        summary = {"run_id": r[0], "pipeline": r[1], "state": r[2], "trigger": r[3],
                   "requested_at": r[4], "started_at": r[5], "ended_at": r[6],
                   "duration_s": round(r[7], 3) if r[7] is not None else None,
                   "failed_stage": r[8], "error": r[9]}
        stats.recent_runs.appendleft(summary)
        stats.last_run = summary
        if r[2] == "COMPLETED" and r[7] is not None:
            stats.completed_durations.append(r[7])
        if r[2] in FINISHED_STATES:
            stats.recent.append(r[2] != "COMPLETED")
        monitor._remember_pipeline(r[0], r[1])


def _stages(monitor: "PipelineMonitor", log: Any) -> None:
    # attempt 0 is a stage skipped or reused (its output taken from an earlier run); a
    # retry is an attempt numbered 2 or more that started (a RETRYING row has not)
    rows = log.query(
        "WITH s AS MATERIALIZED (SELECT run_id, stage, CASE WHEN attempt = 0 AND state = "
        "'COMPLETED' THEN 'REUSED' ELSE state END AS state, attempt, rows, cpu_s, peak_rss_mb, "
        "CASE WHEN attempt > 0 THEN COALESCE(wall_s, (julianday(ended_at) - "
        "julianday(started_at)) * 86400.0) END AS d "
        "FROM stage_runs) "
        "SELECT r.pipeline, s.stage, s.state, COUNT(*), MAX(s.attempt), "
        "COALESCE(SUM(s.rows), 0), COALESCE(SUM(s.cpu_s), 0), MAX(s.peak_rss_mb), "
        "SUM(s.attempt > 1 AND s.state != 'RETRYING'), "
        f"COUNT(d), SUM(d), MAX(d), {_buckets_sql('d')} FROM s "
        "JOIN runs r ON r.run_id = s.run_id GROUP BY r.pipeline, s.stage, s.state")
    for row in rows:
        pipeline, stage, state, n, max_attempt, rows_out, cpu, peak, retries = row[:9]
        timed, total, longest, buckets = row[9], row[10], row[11], tuple(row[12:])
        s = monitor._stats(pipeline).stages.setdefault(stage, StageStats())
        s.retries += retries
        if state in ("PENDING", "RUNNING", "RETRYING"):  # not an outcome (yet)
            continue
        s.states[state] += n
        s.max_attempt = max(s.max_attempt, max_attempt or 0)
        s.rows += rows_out
        s.cpu_s += cpu
        if peak is not None:
            s.peak_rss_mb = max(s.peak_rss_mb or 0.0, peak)
        if state not in ("SKIPPED", "REUSED") and timed:
            s.durations.add_cumulative(buckets, timed, total, longest)


def _files(monitor: "PipelineMonitor", log: Any) -> None:
    for pipeline, taken, duplicates, quarantined in log.query(
            "SELECT pipeline, SUM(run_id IS NOT NULL), SUM(duplicates), "
            "SUM(state = 'QUARANTINED') FROM files GROUP BY pipeline"):
        files = monitor._stats(pipeline).files
        files["taken"], files["duplicate"], files["quarantined"] = taken, duplicates, quarantined


def _live(monitor: "PipelineMonitor", log: Any) -> None:
    from .monitor import LiveRun

    for run_id, pipeline, state, trigger, requested, started, stages in log.query(
            "SELECT run_id, pipeline, state, trigger, requested_at, started_at, stages FROM runs "
            "WHERE state IN ('PENDING', 'RUNNING')"):
        monitor._remember_pipeline(run_id, pipeline)
        run = LiveRun(run_id, pipeline, state, trigger, parse_ts(requested), parse_ts(started),
                      list(json.loads(stages or "[]")))
        monitor._live[run_id] = run
    if monitor._live:
        ids = list(monitor._live)
        for run_id, stage, attempt, state, started in log.query(
                "SELECT run_id, stage, attempt, state, started_at FROM stage_runs WHERE run_id IN "
                f"({', '.join('?' * len(ids))}) ORDER BY run_id, stage, attempt", ids):
            monitor._live[run_id].stage_states[stage] = (state, attempt)
            if state == "RUNNING":
                monitor._stage_started[(run_id, stage)] = parse_ts(started)
    for (run_id,) in log.query("SELECT run_id FROM runs WHERE state = 'PARKED'"):
        monitor._parked.add(run_id)


def _alerts(monitor: "PipelineMonitor", log: Any) -> list["_Action"]:
    try:
        rows = log.query(
            "SELECT alert_id, name, severity, message, fields, run_id, raised_at FROM alerts "
            "WHERE state = 'FIRING' ORDER BY raised_at")
    except AhgdError as exc:  # read-only, on a history older than the alerts table
        if "no such table" not in str(exc):
            raise
        rows = []
    for alert_id, name, severity, message, fields, run_id, raised in rows:
        alert = Alert(alert_id, AlertSeverity.coerce(severity), name, message,
                      json.loads(fields or "{}"), parse_ts(raised) or monitor._now(), run_id)
        monitor._open[alert_id] = alert
        monitor._alerts.append(alert)
    actions: list[_Action] = []
    for alert in list(monitor._open.values()):
        reason = _cleared(monitor, alert)
        if reason:
            actions += monitor._close_alert(alert.id, reason)
    return actions


def _cleared(monitor: "PipelineMonitor", alert: Alert) -> str | None:
    """Why an alert left open by an earlier monitor no longer holds, or None."""
    run_id = alert.run_id
    if alert.name == "run.parked":
        return None if run_id in monitor._parked else f"run {run_id} is no longer parked"
    if run_id and run_id not in monitor._live and not run_id.endswith(":api"):
        return f"run {run_id} ended while no monitor was watching"
    if alert.name in ("pipeline.failing", "file.quarantined"):
        pipeline = alert.fields.get("pipeline")
        success = monitor._stats(pipeline).last_success_at if pipeline else None
        if success is not None and success > alert.at:
            return f"a later run of pipeline {pipeline!r} completed"
    return None


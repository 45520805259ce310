"""Seeding a monitor's :class:`~pipelines.monitoring.monitor_state.MonitorState` from an event log.

    actions = load_history(state, log, now)    # fills the MonitorState; resolutions to emit

A daemon that restarts should not forget what it knew: the counters of
finished runs, stage attempts and files, the duration histograms, the last
success of each pipeline, the recent completed durations that the slow-run
alert compares against, the runs still queued or running, the parked runs
and the open alerts are all read back from the projections with plain SQL
(a few grouped queries, not a replay).  Alerts whose condition is known to
have cleared while no monitor watched (their run ended, a later run of their
pipeline completed) are resolved here.  Only reads the log and fills the
state: the caller holds the lock and emits the resolutions.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from state.errors import AhgdError
from state import parse_ts, queries
from state.machine import ENDED_RUN_STATES

from .alerts import ROWS_REJECTED, Action, recheck_failure_rates, stale_alerts
from .monitor_state import LiveRun, MonitorState
from .records import (DURATION_BUCKETS_S, DURATION_WINDOW, FAILURE_WINDOW, FINISHED_STATES,
                      Alert, AlertSeverity, StageStats)

_TERMINAL = tuple(sorted(ENDED_RUN_STATES))
#: a run's duration from its *latest* start, as live counting has it: a retried or
#: recovered run's projected started_at is its first start (the events know the last)
_LAST_START = ("CASE WHEN retries + recoveries > 0 THEN (SELECT MAX(e.ts) FROM events e "
               "WHERE e.run_id = runs.run_id AND e.type = 'run.started') ELSE started_at END")
_SECONDS = f"((julianday(ended_at) - julianday({_LAST_START})) * 86400.0)"


def load_history(state: MonitorState, log: Any, now: datetime) -> list[Action]:
    """Fill ``state`` from ``log``'s projections; the alert resolutions to emit."""
    _runs(state, log)
    _stages(state, log)
    _files(state, log)
    _live(state, log)
    _alerts(state, log, now)
    return stale_alerts(state, now) + recheck_failure_rates(state, now)


def _buckets_sql(column: str) -> str:
    return ", ".join(f"SUM({column} <= {b!r})" for b in DURATION_BUCKETS_S)


def _runs(state: MonitorState, log: Any) -> None:
    for pipeline, final, n in log.query(
            "SELECT pipeline, state, COUNT(*) FROM runs WHERE state IN "
            f"({', '.join('?' * len(_TERMINAL))}) GROUP BY pipeline, state", list(_TERMINAL)):
        state.stats(pipeline).runs[final] = n
    # MATERIALIZED: computed once per row, not once per reference in the 19 aggregates
    for row in log.query(
            f"WITH t AS MATERIALIZED (SELECT pipeline, {_SECONDS} AS d FROM runs WHERE state IN "
            f"({', '.join('?' * len(_TERMINAL))}) AND started_at IS NOT NULL) "
            f"SELECT pipeline, COUNT(d), SUM(d), MAX(d), {_buckets_sql('d')} FROM t "
            "GROUP BY pipeline", list(_TERMINAL)):
        state.stats(row[0]).durations.add_cumulative(row[4:], row[1], row[2], row[3])
    for pipeline, ended in log.query(
            "SELECT pipeline, MAX(ended_at) FROM runs WHERE state = 'COMPLETED' GROUP BY pipeline"):
        state.stats(pipeline).last_success_at = parse_ts(ended)
    window = max(DURATION_WINDOW, FAILURE_WINDOW, state.recent_runs)
    rows = log.query(
        "SELECT * FROM (SELECT run_id, pipeline, state, trigger, requested_at, started_at, "
        f"ended_at, {_SECONDS} AS duration_s, failed_stage, error, ROW_NUMBER() OVER "
        "(PARTITION BY pipeline ORDER BY ended_at DESC, run_id DESC) AS n FROM runs WHERE state IN "
        f"({', '.join('?' * len(_TERMINAL))})) WHERE n <= ? ORDER BY pipeline, n DESC",
        [*_TERMINAL, window])
    for r in rows:  # oldest first, so that appendleft leaves the newest in front
        stats = state.stats(r[1])
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
        state.remember_pipeline(r[0], r[1])


def _stages(state: MonitorState, log: Any) -> None:
    # attempt 0 is a stage skipped or reused (its output taken from an earlier run); a
    # retry is an attempt numbered 2 or more that started (a RETRYING row has not)
    rows = log.query(
        "WITH s AS MATERIALIZED (SELECT run_id, stage, CASE WHEN attempt = 0 AND state = "
        "'COMPLETED' THEN 'REUSED' ELSE state END AS state, attempt, rows, cpu_s, peak_rss_mb, "
        "CASE WHEN attempt > 0 THEN COALESCE(wall_s, (julianday(ended_at) - "
        "julianday(started_at)) * 86400.0) END AS d, "
        # rows its validation rules quarantined, counted where they were (not when reused)
        "CASE WHEN attempt > 0 AND state IN ('COMPLETED', 'INVALIDATED') THEN "
        "json_extract(detail, '$.validation.rejected') END AS rejected "
        "FROM stage_runs) "
        "SELECT r.pipeline, s.stage, s.state, COUNT(*), MAX(s.attempt), "
        "COALESCE(SUM(s.rows), 0), COALESCE(SUM(s.cpu_s), 0), MAX(s.peak_rss_mb), "
        "SUM(s.attempt > 1 AND s.state != 'RETRYING'), COALESCE(SUM(s.rejected), 0), "
        f"COUNT(d), SUM(d), MAX(d), {_buckets_sql('d')} FROM s "
        "JOIN runs r ON r.run_id = s.run_id GROUP BY r.pipeline, s.stage, s.state")
    for row in rows:
        pipeline, stage, outcome, n, max_attempt, rows_out, cpu, peak, retries = row[:9]
        rejected, timed, total, longest = row[9:13]
        buckets = tuple(row[13:])
        s = state.stats(pipeline).stages.setdefault(stage, StageStats())
        s.retries += retries
        if outcome in ("PENDING", "RUNNING", "RETRYING"):  # not an outcome (yet)
            continue
        s.states[outcome] += n
        s.max_attempt = max(s.max_attempt, max_attempt or 0)
        s.rows += rows_out
        s.rows_rejected += rejected
        s.cpu_s += cpu
        if peak is not None:
            s.peak_rss_mb = max(s.peak_rss_mb or 0.0, peak)
        if outcome not in ("SKIPPED", "REUSED") and timed:
            s.durations.add_cumulative(buckets, timed, total, longest)


def _files(state: MonitorState, log: Any) -> None:
    for pipeline, taken, duplicates, quarantined in log.query(
            "SELECT pipeline, SUM(run_id IS NOT NULL), SUM(duplicates), "
            "SUM(state = 'QUARANTINED') FROM files GROUP BY pipeline"):
        files = state.stats(pipeline).files
        files["taken"], files["duplicate"], files["quarantined"] = taken, duplicates, quarantined


def _live(state: MonitorState, log: Any) -> None:
    for run_id, pipeline, run_state, trigger, requested, started, stages in log.query(
            "SELECT run_id, pipeline, state, trigger, requested_at, started_at, stages FROM runs "
            "WHERE state IN ('PENDING', 'RUNNING')"):
        state.remember_pipeline(run_id, pipeline)
        run = LiveRun(run_id, pipeline, run_state, trigger, parse_ts(requested), parse_ts(started),
                      list(json.loads(stages or "[]")))
        state.live[run_id] = run
    if state.live:
        ids = list(state.live)
        for run_id, stage, attempt, stage_state, started, rejected in log.query(
                "SELECT run_id, stage, attempt, state, started_at, CASE WHEN attempt > 0 AND "
                "state = 'COMPLETED' THEN json_extract(detail, '$.validation.rejected') END "
                f"FROM stage_runs WHERE run_id IN ({', '.join('?' * len(ids))}) "
                "ORDER BY run_id, stage, attempt", ids):
            state.live[run_id].stage_states[stage] = (stage_state, attempt)
            state.live[run_id].rows_rejected += rejected or 0
            if stage_state == "RUNNING":
                state.stage_started[(run_id, stage)] = parse_ts(started)
    for (run_id,) in log.query("SELECT run_id FROM runs WHERE state = 'PARKED'"):
        state.parked.add(run_id)


def _alerts(state: MonitorState, log: Any, now: datetime) -> None:
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
                      json.loads(fields or "{}"), parse_ts(raised) or now, run_id)
        state.open[alert_id] = alert
        state.alerts.append(alert)
        pipeline = alert.fields.get("pipeline")
        if name == ROWS_REJECTED and isinstance(pipeline, str):  # cleared while none watched?
            clean = queries.last_clean_completion(log, pipeline)
            state.stats(pipeline).last_clean_success_at = parse_ts(clean)

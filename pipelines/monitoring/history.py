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
from .monitor_state import LiveRun, MonitorState, RunPast
from .records import (DURATION_BUCKETS_S, DURATION_WINDOW, FAILURE_WINDOW, FINISHED_STATES,
                      Alert, AlertSeverity, StageStats)

_TERMINAL = tuple(sorted(ENDED_RUN_STATES))
_ENDING_TYPES = ", ".join(f"'run.{s.lower()}'" for s in _TERMINAL)
#: runs that may have ended more than once (retried, or PARKED and then cancelled); any other
#: ended run ended once, in the state it is in
_ENDED_AGAIN = "(retries > 0 OR state = 'CANCELLED')"


def running_time_sql(run: str, upto: str | None = None) -> str:
    """SQL for the time run ``run`` spent running, in s: ``run_history.duration_s`` as
    migration 0004 defines it (state/migrations.py VIEWS_0004), the sum of its executions,
    each from a ``run.started`` to the event that ended it (completed, failed, cancelled,
    suspended; recovered or parked: the last event recorded before, not counting
    stage.interrupted).  ``upto``: as of that event seq (counting only events up to it)."""
    starts = f" AND s.seq < {upto}" if upto else ""
    ends = f" AND e.seq <= {upto}" if upto else ""
    end = (
        "(SELECT CASE WHEN e.type IN ('run.recovered', 'run.parked') THEN (SELECT MAX(b.ts) "
        "FROM events b WHERE b.run_id = s.run_id AND b.seq >= s.seq AND b.seq < e.seq AND "
        "b.type <> 'stage.interrupted') ELSE e.ts END FROM events e WHERE e.run_id = s.run_id "
        f"AND e.seq > s.seq{ends} AND e.type IN ('run.completed', 'run.failed', "
        "'run.cancelled', 'run.suspended', 'run.recovered', 'run.parked') ORDER BY e.seq LIMIT 1)")
    return (f"(SELECT ROUND(SUM(julianday({end}) - julianday(s.ts)) * 86400.0, 3) FROM events s "
            f"WHERE s.run_id = {run} AND s.type = 'run.started'{starts})")


def run_past(log: Any, run_id: str, seq: int) -> RunPast | None:
    """What ``log`` knows of run ``run_id`` as of its event ``seq`` (an ending): how it was
    asked for, its first start, its running time up to ``seq`` and the final states it ended
    in before ``seq``.  None: the log has no such run."""
    rows = log.query(
        f"SELECT trigger, requested_at, started_at, {running_time_sql('runs.run_id', ':seq')}, "
        "(SELECT group_concat(DISTINCT e.type) FROM events e WHERE e.run_id = runs.run_id AND "
        f"e.type IN ({_ENDING_TYPES}) AND e.seq < :seq) FROM runs WHERE run_id = :run",
        {"seq": seq, "run": run_id})
    if not rows:
        return None
    trigger, requested, started, ran, endings = tuple(rows[0])
    return RunPast(trigger, parse_ts(requested), parse_ts(started), ran,
                   frozenset(t.partition(".")[2].upper() for t in (endings or "").split(",")
                             if t))


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
    terminal = f"({', '.join('?' * len(_TERMINAL))})"
    # each run once per final state it ended in (as the fold counts them)
    for pipeline, final, n in log.query(
            f"SELECT pipeline, state, COUNT(*) FROM (SELECT pipeline, state FROM runs WHERE "
            f"state IN {terminal} AND NOT {_ENDED_AGAIN} UNION ALL SELECT pipeline, state FROM "
            "(SELECT DISTINCT r.run_id, r.pipeline, upper(substr(e.type, 5)) AS state FROM runs r "
            "JOIN events e ON e.run_id = r.run_id WHERE (r.retries > 0 OR r.state = 'CANCELLED') "
            f"AND e.type IN ({_ENDING_TYPES}))) GROUP BY pipeline, state", list(_TERMINAL)):
        state.stats(pipeline).runs[final] = n
    # each run's running time when it first ended (as the fold observes them); MATERIALIZED:
    # computed once per row, not once per reference in the 19 aggregates
    first_end = (f"(SELECT MIN(e.seq) FROM events e WHERE e.run_id = runs.run_id AND e.type IN "
                 f"({_ENDING_TYPES}))")
    for row in log.query(
            f"WITH t AS MATERIALIZED (SELECT pipeline, {running_time_sql('runs.run_id')} AS d "
            f"FROM runs WHERE state IN {terminal} AND NOT {_ENDED_AGAIN} AND started_at IS NOT "
            f"NULL UNION ALL SELECT pipeline, {running_time_sql('f.run_id', 'f.upto')} FROM "
            f"(SELECT run_id, pipeline, {first_end} AS upto FROM runs WHERE {_ENDED_AGAIN} AND "
            "started_at IS NOT NULL) f WHERE upto IS NOT NULL) "
            f"SELECT pipeline, COUNT(d), SUM(d), MAX(d), {_buckets_sql('d')} FROM t "
            "GROUP BY pipeline", list(_TERMINAL)):
        state.stats(row[0]).durations.add_cumulative(row[4:], row[1], row[2], row[3])
    for pipeline, ended in log.query(
            "SELECT pipeline, MAX(ended_at) FROM runs WHERE state = 'COMPLETED' GROUP BY pipeline"):
        state.stats(pipeline).last_success_at = parse_ts(ended)
    window = max(DURATION_WINDOW, FAILURE_WINDOW, state.recent_runs)
    rows = log.query(
        "SELECT run_id, pipeline, state, trigger, requested_at, started_at, ended_at, "
        f"CASE WHEN started_at IS NOT NULL THEN {running_time_sql('w.run_id')} END, "
        "failed_stage, error FROM (SELECT run_id, pipeline, state, trigger, requested_at, "
        "started_at, ended_at, failed_stage, error, ROW_NUMBER() OVER (PARTITION BY pipeline "
        "ORDER BY ended_at DESC, run_id DESC) AS n FROM runs WHERE state IN "
        f"{terminal}) w WHERE n <= ? ORDER BY pipeline, n DESC", [*_TERMINAL, window])
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
            stats.recent.set(r[0], r[2] != "COMPLETED")
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
    for run_id, pipeline, run_state, trigger, requested, started, stages, fresh in log.query(
            "SELECT run_id, pipeline, state, trigger, requested_at, started_at, stages, "
            "started_at IS NULL AND retries = 0 AND recoveries = 0 FROM runs "
            "WHERE state IN ('PENDING', 'RUNNING')"):
        state.remember_pipeline(run_id, pipeline)
        run = LiveRun(run_id, pipeline, run_state, trigger, parse_ts(requested), parse_ts(started),
                      list(json.loads(stages or "[]")))
        # a run that ran before the monitor started: its end asks the log for its past
        run.known = bool(fresh)
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

"""Alert decisions on a :class:`~pipelines.monitoring.monitor_state.MonitorState`, as data.

Which alert opens or closes, with which words, when a threshold is crossed,
a run ends, a stage ends, a file is quarantined or a parked run is taken up:
each function changes the state's open alerts and returns the
:class:`Action` list (a raise or a resolve per alert) for the monitor to log
and record.  No logging, no I/O, no locks: the caller passes the time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, NamedTuple

from state.events import Event, new_event

from .monitor_state import MonitorState
from .records import Alert, AlertSeverity, SystemSample, jsonable

#: system measures judged against the threshold of the same name (disks apart)
SYSTEM_ALERTS = {
    "cpu_percent": (AlertSeverity.WARNING, "system.cpu_high", "CPU use"),
    "memory_percent": (AlertSeverity.WARNING, "system.memory_high", "memory use"),
}
#: alerts that a later completed run of their pipeline resolves
_CLEARED_BY_SUCCESS = ("pipeline.failing", "file.quarantined")
#: rows quarantined by validation rules: resolved by a later run that completes rejecting none
ROWS_REJECTED = "pipeline.rows_rejected"


class Action(NamedTuple):
    """A raise or resolve, decided on the state; logged and recorded by the monitor."""

    kind: str            # "raise" | "resolve" | "recorded" (a raise already in the log)
    alert: Alert


def alert_event(action: Action) -> Event:
    """The ``alert.raised`` / ``alert.resolved`` event that records ``action``."""
    alert = action.alert
    if action.kind == "raise":
        return new_event("alert.raised", alert.run_id, alert_id=alert.id, name=alert.name,
                         severity=alert.severity.value, message=alert.message,
                         fields=jsonable(alert.fields))
    return new_event("alert.resolved", alert.run_id, alert_id=alert.id,
                     reason=alert.resolution)


# -- opening and closing ----------------------------------------------------------

def open_alert(state: MonitorState, alert_id: str, severity: AlertSeverity, name: str,
               message: str, fields: dict[str, Any], run_id: str | None = None, *,
               at: datetime) -> list[Action]:
    """Open ``alert_id`` (raised ``at``) unless it is open: then only its repeats go up."""
    current = state.open.get(alert_id)
    if current is not None:
        current.repeats += 1
        return []
    alert = Alert(alert_id, severity, name, message, dict(fields), at, run_id)
    state.open[alert_id] = alert
    state.alerts.append(alert)
    state.alert_counts[severity] += 1
    return [Action("raise", alert)]


def recorded_alert(state: MonitorState, data: dict[str, Any], at: datetime) -> list[Action]:
    """An alert raised by an event of its own (``warehouse.lost``): opened here unless open,
    with a ``recorded`` action (log the line; the event is in the log already)."""
    alert_id = str(data.get("alert_id") or data.get("name") or "unknown")
    actions = open_alert(state, alert_id, AlertSeverity.coerce(data.get("severity") or "error"),
                         str(data.get("name") or alert_id), str(data.get("message") or ""),
                         dict(data.get("fields") or {}), at=at)
    return [Action("recorded", a.alert) for a in actions]


def close_alert(state: MonitorState, alert_id: str, reason: str, *,
                at: datetime) -> list[Action]:
    """Resolve ``alert_id`` if it is open."""
    alert = state.open.pop(alert_id, None)
    if alert is None:
        return []
    alert.resolved_at, alert.resolution = at, reason
    return [Action("resolve", alert)]


def close_where(state: MonitorState, match: Callable[[Alert], bool], reason: str, *,
                at: datetime) -> list[Action]:
    """Resolve every open alert that ``match`` picks."""
    return [a for k in [k for k, v in state.open.items() if match(v)]
            for a in close_alert(state, k, reason, at=at)]


# -- thresholds -----------------------------------------------------------------

def check_system(state: MonitorState, sample: SystemSample, now: datetime) -> list[Action]:
    """CPU, memory and each disk of ``sample`` against their thresholds."""
    actions: list[Action] = []
    for metric, (severity, name, what) in SYSTEM_ALERTS.items():
        value, limit = getattr(sample, metric), getattr(state.thresholds, metric)
        if value is None:
            continue
        actions += _threshold(state, name, name, severity, value, limit, what,
                              {metric: value, "threshold": limit}, now)
    limit = state.thresholds.disk_percent
    sampled = {f"system.disk_nearly_full:{d.path}" for d in sample.disks}
    if sample.disks:  # none read at all: psutil failed, judge nothing
        actions += close_where(
            state, lambda a: a.name == "system.disk_nearly_full" and a.id not in sampled,
            "that disk is no longer watched (no state directory or drop folder on it)", at=now)
    for disk in sample.disks:
        actions += _threshold(
            state, f"system.disk_nearly_full:{disk.path}", "system.disk_nearly_full",
            AlertSeverity.ERROR, disk.percent, limit, f"use of the disk holding {disk.path}",
            {"path": disk.path, "paths": list(disk.paths), "disk_percent": disk.percent,
             "free_bytes": disk.free_bytes, "threshold": limit}, now)
    return actions


def _threshold(state: MonitorState, alert_id: str, name: str, severity: AlertSeverity,
               value: float, limit: float | None, what: str, fields: dict[str, Any],
               now: datetime) -> list[Action]:
    if limit is not None and value > limit:
        return open_alert(state, alert_id, severity, name, f"{what} is {value:.1f}%, above "
                          f"the threshold of {limit:g}%", fields, at=now)
    return close_alert(state, alert_id, f"{what} is back to {value:.1f}%"
                       + (f" (threshold {limit:g}%)" if limit is not None else
                          " (threshold turned off)"), at=now)


def check_durations(state: MonitorState, measured_at: datetime, now: datetime) -> list[Action]:
    """Runs far beyond their usual p95, and stages beyond ``stage_duration_s``, at
    ``measured_at``."""
    t, actions = state.thresholds, []
    for run in list(state.live.values()):
        if run.state != "RUNNING" or run.started_at is None:
            continue
        p95 = state.stats(run.pipeline).p95_duration(t.run_duration_min_runs)
        elapsed = (measured_at - run.started_at).total_seconds()
        if t.run_duration_factor is not None and p95 and elapsed > p95 * t.run_duration_factor:
            actions += open_alert(
                state, f"run.slow:{run.run_id}", AlertSeverity.WARNING, "run.slow",
                f"run {run.run_id} of pipeline {run.pipeline!r} has been running for "
                f"{elapsed:.0f}s, more than {t.run_duration_factor:g} x its usual p95 of "
                f"{p95:.1f}s", {"pipeline": run.pipeline, "run_id": run.run_id,
                                "elapsed_s": round(elapsed, 1), "p95_s": round(p95, 3),
                                "factor": t.run_duration_factor}, run.run_id, at=now)
    limit = t.stage_duration_s
    for (run_id, stage), started in list(state.stage_started.items()):
        if limit is None or started is None or run_id not in state.live:
            continue
        elapsed = (measured_at - started).total_seconds()
        if elapsed > limit:
            actions += slow_stage(state, run_id, stage, elapsed, limit, now)
    return actions


def slow_stage(state: MonitorState, run_id: str, stage: str, seconds: float, limit: float,
               now: datetime) -> list[Action]:
    pipeline = state.run_pipeline.get(run_id, "unknown")
    return open_alert(
        state, f"stage.slow:{run_id}:{stage}", AlertSeverity.WARNING, "stage.slow",
        f"stage {stage!r} of pipeline {pipeline!r} has taken {seconds:.1f}s, above the "
        f"threshold of {limit:g}s", {"pipeline": pipeline, "stage": stage, "run_id": run_id,
                                     "duration_s": round(seconds, 3), "threshold": limit},
        run_id, at=now)


def check_failure_rate(state: MonitorState, pipeline: str, now: datetime) -> list[Action]:
    """The failed share of the pipeline's last finished runs against its threshold."""
    stats, limit = state.stats(pipeline), state.thresholds.pipeline_failure_rate
    if len(stats.recent) < state.thresholds.failure_rate_min_runs:
        return []
    rate = sum(stats.recent) / len(stats.recent)
    alert_id = f"pipeline.failure_rate_high:{pipeline}"
    if limit is not None and rate > limit:
        return open_alert(
            state, alert_id, AlertSeverity.WARNING, "pipeline.failure_rate_high",
            f"{sum(stats.recent)} of the last {len(stats.recent)} runs of pipeline "
            f"{pipeline!r} failed", {"pipeline": pipeline, "failure_rate": rate,
                                     "threshold": limit, "runs": len(stats.recent)}, at=now)
    return close_alert(state, alert_id, f"failure rate of pipeline {pipeline!r} is back to "
                       f"{rate:.0%}" if limit is not None else
                       "the failure-rate threshold was turned off", at=now)


def recheck_failure_rates(state: MonitorState, now: datetime) -> list[Action]:
    return [a for name in list(state.pipelines) for a in check_failure_rate(state, name, now)]


# -- what runs, stages and files mean --------------------------------------------

def run_ended(state: MonitorState, run_id: str, pipeline: str, final: str,
              extra: dict[str, Any], *, latest: bool, at: datetime,
              now: datetime, clean: bool = False) -> list[Action]:
    """A run ended ``final`` at ``at``: its own alerts close; a completion clears its
    pipeline (and, if ``clean``: no rows rejected, its rejected rows), a failure (the
    pipeline's ``latest`` ending) or parking raises one."""
    actions = close_where(state, lambda a: a.run_id == run_id and a.name != "run.parked",
                          f"run {run_id} ended {final}", at=now)
    if final == "COMPLETED" and latest:
        actions += close_where(
            state, lambda a: a.name in _CLEARED_BY_SUCCESS and a.fields.get("pipeline") == pipeline,
            f"run {run_id} of pipeline {pipeline!r} completed", at=now)
        if clean:
            actions += close_alert(state, f"{ROWS_REJECTED}:{pipeline}",
                                   f"run {run_id} of pipeline {pipeline!r} completed without "
                                   "rejecting a row", at=now)
    elif final == "FAILED" and latest:
        where = f" at stage {extra['stage']!r}" if extra.get("stage") else ""
        why = f": {extra['error']}" if extra.get("error") else ""
        actions += open_alert(
            state, f"pipeline.failing:{pipeline}", AlertSeverity.ERROR, "pipeline.failing",
            f"run {run_id} of pipeline {pipeline!r} failed{where}{why}",
            {"pipeline": pipeline, "run_id": run_id, **extra}, at=at)
    elif final == "PARKED":
        actions += open_alert(
            state, f"run.parked:{run_id}", AlertSeverity.CRITICAL, "run.parked",
            f"run {run_id} of pipeline {pipeline!r} was parked after repeated recoveries; "
            f"it needs a human (ahgd retry {run_id}, or ahgd cancel {run_id})",
            {"pipeline": pipeline, "run_id": run_id, **extra}, run_id, at=at)
    return actions


def rows_rejected(state: MonitorState, run_id: str, pipeline: str, stage: str, rejected: int,
                  payload: dict[str, Any], at: datetime) -> list[Action]:
    """A stage's ``validation_rules`` with ``quarantine: true`` moved ``rejected`` rows aside
    (``payload``: its ``stage.completed``): the run went on with the others, but someone
    should look at those."""
    output = payload.get("output") if isinstance(payload.get("output"), dict) else {}
    table = output.get("rejected_table") or f"{stage}_rejected"
    where = (f" of {output['path']} in the state directory" if output.get("path") else
             f" (`ahgd export {table} --run {run_id} --stage {stage} --to FILE.csv`)"
             if output.get("format") == "inline" else "")
    checked = (payload.get("validation") or {}).get("rows")
    of = f" of {checked}" if type(checked) is int else ""
    return open_alert(
        state, f"{ROWS_REJECTED}:{pipeline}", AlertSeverity.WARNING, ROWS_REJECTED,
        f"run {run_id} of pipeline {pipeline!r} rejected {rejected}{of} row(s) at stage "
        f"{stage!r} (validation_rules with quarantine: true) and carried on without them; "
        f"they are in table {table}{where}, each with its reason in _rejected_reason. Fix "
        "them at the source and drop the file again",
        {"pipeline": pipeline, "run_id": run_id, "stage": stage, "rows_rejected": rejected,
         "rejected_table": table, "path": output.get("path")}, at=at)


def unparked(state: MonitorState, run_id: str, how: str, now: datetime) -> list[Action]:
    """A parked run was retried or cancelled (``how``): it no longer needs a human."""
    if run_id not in state.parked:
        return []
    state.parked.discard(run_id)
    return close_alert(state, f"run.parked:{run_id}", f"run {run_id} was {how}", at=now)


def stage_ended(state: MonitorState, run_id: str, pipeline: str, stage: str, final: str,
                attempt: int | None, duration: float | None, now: datetime) -> list[Action]:
    """An attempt ended: a completed one past ``stage_duration_s`` is raised and resolved
    at once (a failed or interrupted one was not slow, it ended); a timeout is raised."""
    limit = state.thresholds.stage_duration_s
    actions = []
    if final == "COMPLETED" and limit is not None and duration is not None and duration > limit:
        actions += slow_stage(state, run_id, stage, duration, limit, now)
    actions += close_alert(state, f"stage.slow:{run_id}:{stage}",
                           f"stage {stage!r} ended {final} after {duration or 0:.1f}s", at=now)
    if final == "TIMED_OUT":
        actions += open_alert(
            state, f"stage.timed_out:{run_id}:{stage}", AlertSeverity.WARNING, "stage.timed_out",
            f"stage {stage!r} of pipeline {pipeline!r} timed out (run {run_id}, attempt "
            f"{attempt})", {"pipeline": pipeline, "run_id": run_id, "stage": stage,
                            "attempt": attempt, "duration_s": duration}, run_id, at=now)
    return actions


def disk_wait(state: MonitorState, run_id: str, pipeline: str, stage: str, final: str,
              data: dict[str, Any], now: datetime) -> list[Action]:
    """A stage that found the disk full waits for room (``stage.retrying`` with
    ``disk_full``): an alert until it completes or its run ends."""
    alert_id = f"run.waiting_for_disk:{run_id}"
    if final == "COMPLETED":
        return close_alert(state, alert_id, f"stage {stage!r} completed", at=now)
    if final != "RETRYING" or not data.get("disk_full"):
        return []
    return open_alert(
        state, alert_id, AlertSeverity.ERROR, "run.waiting_for_disk",
        f"run {run_id} of pipeline {pipeline!r} waits for disk space: stage {stage!r} failed "
        f"with {data.get('reason')}; free space on that disk: the stage is tried again, first "
        f"after {data.get('delay_s')}s, then at most every 5 minutes, whatever its retry_attempts",
        {"pipeline": pipeline, "run_id": run_id, "stage": stage, "error": data.get("reason")},
        run_id, at=now)


def file_quarantined(state: MonitorState, pipeline: str, data: dict[str, Any],
                     now: datetime) -> list[Action]:
    name = data.get("name") or data.get("path")
    return open_alert(
        state, f"file.quarantined:{pipeline}", AlertSeverity.WARNING, "file.quarantined",
        f"file {name!r} for pipeline {pipeline!r} was quarantined: {data.get('reason')}",
        {"pipeline": pipeline, "file": name, "reason": data.get("reason"),
         "path": data.get("path") or data.get("stored_path")}, at=now)


def stale_alerts(state: MonitorState, now: datetime) -> list[Action]:
    """Resolve the open alerts whose condition cleared while no monitor watched."""
    actions: list[Action] = []
    for alert in list(state.open.values()):
        reason = _cleared(state, alert)
        if reason:
            actions += close_alert(state, alert.id, reason, at=now)
    return actions


def _cleared(state: MonitorState, alert: Alert) -> str | None:
    """Why an alert left open by an earlier monitor no longer holds, or None."""
    run_id = alert.run_id
    if alert.name == "run.parked":
        return None if run_id in state.parked else f"run {run_id} is no longer parked"
    if run_id and run_id not in state.live and not run_id.endswith(":api"):
        return f"run {run_id} ended while no monitor was watching"
    if alert.name in _CLEARED_BY_SUCCESS:
        pipeline = alert.fields.get("pipeline")
        success = state.stats(pipeline).last_success_at if pipeline else None
        if success is not None and success > alert.at:
            return f"a later run of pipeline {pipeline!r} completed"
    if alert.name == ROWS_REJECTED:
        pipeline = alert.fields.get("pipeline")
        clean = state.stats(pipeline).last_clean_success_at if pipeline else None
        if clean is not None and clean > alert.at:
            return f"a later run of pipeline {pipeline!r} completed without rejecting a row"
    return None

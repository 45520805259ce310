"""The monitor's fold: events, samples and calls from code applied to a MonitorState.

    actions = observe(state, event, now)     # what to log and record, as data

Each function updates the run, stage and file statistics and the runs in
flight, lets :mod:`~pipelines.monitoring.alerts` decide which alerts open or
close, and returns those :class:`~pipelines.monitoring.alerts.Action` s.
Pure but for the state it is given: no logging, no I/O, no locks, no
threads; ``now`` is the monitor's clock, an event's own time is its ``ts``.
A run older than the state remembers is looked up through
``state.find_pipeline`` (the monitor asks its event log).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from state.events import Event
from state import parse_ts

from . import alerts
from .alerts import Action
from .monitor_state import LiveRun, MonitorState, RunPast, remember
from .records import FINISHED_STATES, StageStats, SystemSample, iso
from .thresholds import MonitorThresholds


def observe(state: MonitorState, event: Event, now: datetime) -> list[Action]:
    """Fold one event of the event log into ``state``; the alert actions it causes."""
    handler = _HANDLERS.get(str(event.type))
    if handler is None:
        return []
    at = parse_ts(event.ts) or now
    run = state.live.get(event.run_id or "")
    if run is not None and str(event.type) not in _NOT_RUNNING:
        run.last_event_at = at
    return handler(state, event, event.data() or {}, at, now)


def take_sample(state: MonitorState, sample: SystemSample, now: datetime) -> list[Action]:
    """Keep ``sample`` and judge the machine, the runs and the stages by it."""
    state.samples.append(sample)
    return (alerts.check_system(state, sample, now)
            + alerts.check_durations(state, sample.at, now))


def set_thresholds(state: MonitorState, thresholds: MonitorThresholds,
                   now: datetime) -> list[Action]:
    """New thresholds: the failure rates are judged again at once (the rest on a sample)."""
    state.thresholds = thresholds
    return alerts.recheck_failure_rates(state, now)


# -- runs and stages from code ----------------------------------------------------

def start_api_run(state: MonitorState, run_id: str, pipeline: str, now: datetime) -> None:
    """A run of ``pipeline`` started now, told by code rather than by an event."""
    state.stats(pipeline)
    state.remember_pipeline(run_id, pipeline)
    state.live[run_id] = LiveRun(run_id, pipeline, "RUNNING", "api", now, now)


def oldest_api_run(state: MonitorState, pipeline: str) -> str | None:
    return next((r.run_id for r in state.live.values()
                 if r.pipeline == pipeline and r.trigger == "api"), None)


def end_run(state: MonitorState, run_id: str, final: str, at: datetime, extra: dict[str, Any],
            now: datetime, seq: int | None = None) -> tuple[float | None, list[Action]]:
    """Run ``run_id`` ended ``final`` at ``at``: its duration in s, and the alert actions.

    The duration is run_history's ``duration_s``: the time the run spent running, the sum of
    its executions, not the time it sat FAILED before a retry.  A run is counted once per
    final state it reaches, and is one entry of the last runs: a retried run's new ending
    replaces its entry (its trigger kept)."""
    live = state.live.pop(run_id, None)
    pipeline = live.pipeline if live else state.run_pipeline.get(run_id, "unknown")
    stats = state.stats(pipeline)
    past = _past(state, run_id, live, final, at, seq)
    # to the ms, as run_history has it (seeded from it after a restart: the same buckets)
    duration = round(past.ran_s, 3) if past.ran_s is not None else None
    if final not in past.endings:
        stats.runs[final] += 1
    if not past.endings:       # its first ending: one observation per run
        stats.durations.add(duration)
    if final == "COMPLETED" and duration is not None:
        stats.completed_durations.append(duration)
    summary = {"run_id": run_id, "pipeline": pipeline, "state": final,
               "trigger": past.trigger, "requested_at": iso(past.requested_at),
               "started_at": iso(past.started_at), "ended_at": iso(at),
               "duration_s": duration,
               "failed_stage": extra.get("stage"),
               "error": extra.get("error") or extra.get("reason")}
    stats.last_run = summary
    for old in [r for r in stats.recent_runs if r.get("run_id") == run_id]:
        stats.recent_runs.remove(old)
    stats.recent_runs.appendleft(summary)
    remember(state.ended, run_id, RunPast(past.trigger, past.requested_at, past.started_at,
                                          duration, past.endings | {final}))
    for key in [k for k in state.stage_started if k[0] == run_id]:
        del state.stage_started[key]
    # listeners may see two runs' endings out of log order: only the later one
    # decides whether the pipeline is failing
    latest = seq is None or seq > stats.last_end_seq
    if seq is not None and latest:
        stats.last_end_seq = seq
    clean = live is not None and not live.rows_rejected
    if final == "COMPLETED":
        stats.last_success_at = max(stats.last_success_at or at, at)
        if clean:
            stats.last_clean_success_at = max(stats.last_clean_success_at or at, at)
    elif final == "PARKED":
        state.parked.add(run_id)
    actions = alerts.run_ended(state, run_id, pipeline, final, extra, latest=latest, at=at,
                               now=now, clean=clean)
    if final in FINISHED_STATES:
        stats.recent.set(run_id, final != "COMPLETED")
        actions += alerts.check_failure_rate(state, pipeline, now)
    else:   # CANCELLED: no longer one of the finished runs the failure rate counts
        stats.recent.discard(run_id)
    return duration, actions


def _past(state: MonitorState, run_id: str, live: LiveRun | None, final: str, at: datetime,
          seq: int | None) -> RunPast:
    """The run's past as of its ending ``final`` at ``at``: ``ran_s`` counts this execution
    too, ``endings`` are the final states it ended in before."""
    lookup = state.find_run if seq is not None else None
    if live is None:
        # ended before (PARKED, now CANCELLED): no execution since
        remembered = state.ended.get(run_id)
        if remembered is not None:
            return remembered
        found = lookup(run_id, seq) if lookup is not None else None  # type: ignore[arg-type]
        return found if found is not None else RunPast()
    if not live.known and lookup is not None:
        found = lookup(run_id, seq)  # type: ignore[arg-type]
        if found is not None:
            return RunPast(live.trigger if found.trigger is None else found.trigger,
                           found.requested_at or live.requested_at, found.started_at,
                           found.ran_s, found.endings)
    ran = live.ran_s
    if live.state == "RUNNING" and live.started_at is not None:
        # cut short by a crash (parked on recovery): up to its last recorded event
        end = (live.last_event_at or at) if final == "PARKED" else at
        ran = (ran or 0.0) + max(0.0, (end - live.started_at).total_seconds())
    return RunPast(live.trigger, live.requested_at, live.first_started_at or live.started_at,
                   ran, live.endings)


def record_stage(state: MonitorState, pipeline: str, stage: str, final: str,
                 duration_s: float | None, rows: int | None, cpu_s: float | None,
                 peak_rss_mb: float | None, attempt: int | None, run_id: str | None,
                 now: datetime, rows_rejected: int | None = None) -> list[Action]:
    """How one attempt ended (``run_id`` None: told by code, not by an event);
    ``rows_rejected``: the rows its validation rules quarantined."""
    s = state.stats(pipeline).stages.setdefault(stage, StageStats())
    if final == "RETRYING":   # not an outcome: the failed attempt was counted already,
        return []             # and the retry counts when it starts
    s.states[final] += 1
    if final not in ("SKIPPED", "REUSED"):
        s.durations.add(duration_s)
    s.rows += rows or 0
    s.rows_rejected += rows_rejected or 0
    s.cpu_s += cpu_s or 0.0
    if peak_rss_mb is not None:
        s.peak_rss_mb = max(s.peak_rss_mb or 0.0, peak_rss_mb)
    s.max_attempt = max(s.max_attempt, attempt or 1)
    limit = state.thresholds.stage_duration_s
    if (final == "COMPLETED" and limit is not None and (duration_s or 0) > limit
            and run_id is None):  # from code: it is over already, so raised and resolved
        run = f"{pipeline}:api"
        state.remember_pipeline(run, pipeline)
        return (alerts.slow_stage(state, run, stage, duration_s or 0.0, limit, now)
                + alerts.close_alert(state, f"stage.slow:{run}:{stage}",
                                     f"stage {stage!r} ended", at=now))
    return []


# -- runs and stages from the event log ---------------------------------------------

def _pipeline_of(state: MonitorState, event: Event, data: dict[str, Any]) -> str:
    name = data.get("pipeline") or state.run_pipeline.get(event.run_id or "")
    if name is None and event.run_id and state.find_pipeline is not None:
        # a run ended long ago and retried now: older than what we remember
        name = state.find_pipeline(event.run_id)
    name = name or "unknown"
    if event.run_id and name != "unknown":
        state.remember_pipeline(event.run_id, name)
    return name


def _live_run(state: MonitorState, event: Event, data: dict, at: datetime) -> LiveRun:
    run = state.live.get(event.run_id or "")
    if run is None:
        pipeline = _pipeline_of(state, event, data)
        state.stats(pipeline)
        run = state.live[event.run_id or ""] = LiveRun(
            event.run_id or "", pipeline, "PENDING", data.get("trigger"), at)
        # first seen after its request: its end asks the log for what the fold did not see
        run.known = str(event.type) == "run.requested"
    return run


def _on_run_requested(state: MonitorState, event: Event, data: dict, at: datetime,
                      now: datetime) -> list[Action]:
    run = _live_run(state, event, data, at)
    run.state, run.trigger, run.requested_at = "PENDING", data.get("trigger"), at
    return []


def _on_run_started(state: MonitorState, event: Event, data: dict, at: datetime,
                    now: datetime) -> list[Action]:
    run = _live_run(state, event, data, at)
    if run.first_started_at is None and run.ran_s is None:
        run.first_started_at = at
    run.state, run.started_at, run.last_event_at = "RUNNING", at, at
    run.stages = list(data.get("stages") or run.stages)
    return []


def _on_run_requeued(state: MonitorState, event: Event, data: dict, at: datetime,
                     now: datetime) -> list[Action]:
    """run.recovered / run.suspended / run.retried: the run waits to start again."""
    run_id = event.run_id or ""
    kind = str(event.type)
    if kind == "run.retried" and run_id not in state.live:
        # it ended before: carry on from what it did then (from the log if not remembered)
        before = state.ended.get(run_id)
        run = _live_run(state, event, data, at)
        run.known = before is not None
        if before is not None:
            run.trigger, run.requested_at = before.trigger, before.requested_at
            run.first_started_at, run.ran_s, run.endings = (before.started_at, before.ran_s,
                                                            before.endings)
    else:
        run = _live_run(state, event, data, at)
        if run.state == "RUNNING" and run.started_at is not None:
            # the execution ends: a clean stop at its event, a crash at its last recorded one
            end = at if kind == "run.suspended" else (run.last_event_at or run.started_at)
            run.first_started_at = run.first_started_at or run.started_at
            run.ran_s = (run.ran_s or 0.0) + max(0.0, (end - run.started_at).total_seconds())
    run.state = "PENDING"
    return alerts.unparked(state, run_id, "retried", now)


def _on_run_ended(state: MonitorState, event: Event, data: dict, at: datetime,
                  now: datetime) -> list[Action]:
    final = str(event.type).partition(".")[2].upper()
    run_id = event.run_id or ""
    _pipeline_of(state, event, data)
    actions = alerts.unparked(state, run_id, "cancelled", now) if final == "CANCELLED" else []
    # the engine says ``stage``; a script's crashed run, failed on replay, says ``failed_stage``
    extra = {"stage": data.get("stage") or data.get("failed_stage") or event.stage,
             "error": data.get("error"),
             "reason": data.get("reason")}
    return actions + end_run(state, run_id, final, at,
                             {k: v for k, v in extra.items() if v is not None}, now,
                             event.seq)[1]


def _on_stage_started(state: MonitorState, event: Event, data: dict, at: datetime,
                      now: datetime) -> list[Action]:
    remember(state.stage_started, (event.run_id or "", event.stage or ""), at)
    if (event.attempt or 1) > 1:   # a retry: automatic, or the run retried by hand
        pipeline = _pipeline_of(state, event, data)
        state.stats(pipeline).stages.setdefault(event.stage or "unknown",
                                                StageStats()).retries += 1
    run = state.live.get(event.run_id or "")
    if run is not None and event.stage:
        run.stage_states[event.stage] = ("RUNNING", event.attempt or 1)
    return []


def _on_stage_ended(state: MonitorState, event: Event, data: dict, at: datetime,
                    now: datetime) -> list[Action]:
    pipeline, stage = _pipeline_of(state, event, data), event.stage or "unknown"
    run_id = event.run_id or ""
    started = state.stage_started.pop((run_id, stage), None)
    duration = data.get("wall_s")
    if duration is None and started is not None:
        duration = (at - started).total_seconds()
    final = _STAGE_STATES[str(event.type)]
    run = state.live.get(run_id)
    if run is not None and event.stage:
        run.stage_states[event.stage] = (final, event.attempt or 1)
    validation = data.get("validation") if final == "COMPLETED" else None
    rejected = validation.get("rejected") if isinstance(validation, dict) else None
    rejected = rejected if type(rejected) is int and rejected > 0 else 0
    if rejected and run is not None:
        run.rows_rejected += rejected
    return (record_stage(state, pipeline, stage, final, duration, data.get("rows"),
                         data.get("cpu_s"), data.get("peak_rss_mb"), event.attempt, run_id, now,
                         rows_rejected=rejected)
            + (alerts.rows_rejected(state, run_id, pipeline, stage, rejected, data, at)
               if rejected else [])
            + alerts.stage_ended(state, run_id, pipeline, stage, final, event.attempt, duration,
                                 now)
            + alerts.disk_wait(state, run_id, pipeline, stage, final, data, now))


def _on_stage_invalidated(state: MonitorState, event: Event, data: dict, at: datetime,
                          now: datetime) -> list[Action]:
    """A completion taken back (its output went bad): counted as INVALIDATED, not COMPLETED,
    as the history reads it after a restart; the stage runs again."""
    stages = state.stats(_pipeline_of(state, event, data)).stages
    s = stages.setdefault(event.stage or "unknown", StageStats())
    taken_back = "COMPLETED" if event.attempt else "REUSED"  # attempt 0: reused from a run
    if s.states[taken_back] > 0:
        s.states[taken_back] -= 1
    s.states["INVALIDATED"] += 1
    run = state.live.get(event.run_id or "")
    if run is not None and event.stage:
        run.stage_states[event.stage] = ("INVALIDATED", event.attempt or 0)
    return []


def _on_warehouse_lost(state: MonitorState, event: Event, data: dict, at: datetime,
                       now: datetime) -> list[Action]:
    """The event is itself the alert's raise (an ``alerts`` row): the monitor opens it, to
    log its line and resolve it later, but does not record it a second time."""
    return alerts.recorded_alert(state, data, at)


def _on_file(state: MonitorState, event: Event, data: dict, at: datetime,
             now: datetime) -> list[Action]:
    pipeline = _pipeline_of(state, event, data)
    outcome = _FILE_OUTCOMES[str(event.type)]
    state.stats(pipeline).files[outcome] += 1
    if outcome != "quarantined":
        return []
    return alerts.file_quarantined(state, pipeline, data, now)


_Handler = Callable[[MonitorState, Event, dict, datetime, datetime], list[Action]]
_STAGE_STATES = {
    "stage.completed": "COMPLETED", "stage.failed": "FAILED", "stage.timed_out": "TIMED_OUT",
    "stage.interrupted": "INTERRUPTED", "stage.retrying": "RETRYING",
    "stage.skipped": "SKIPPED", "stage.reused": "REUSED",
}
#: events that are not a sign of the run running: where run_history ends an execution cut
#: short by a crash is the last event before these
_NOT_RUNNING = frozenset({"stage.interrupted", "run.recovered", "run.parked"})
_FILE_OUTCOMES = {"file.arrived": "taken", "file.duplicate": "duplicate",
                  "file.quarantined": "quarantined"}
_HANDLERS: dict[str, _Handler] = {
    "run.requested": _on_run_requested,
    "run.started": _on_run_started,
    **dict.fromkeys(("run.recovered", "run.suspended", "run.retried"), _on_run_requeued),
    **dict.fromkeys(("run.completed", "run.failed", "run.cancelled", "run.parked"),
                    _on_run_ended),
    "stage.started": _on_stage_started,
    **dict.fromkeys(_STAGE_STATES, _on_stage_ended),
    **dict.fromkeys(_FILE_OUTCOMES, _on_file),
    "stage.invalidated": _on_stage_invalidated,
    "warehouse.lost": _on_warehouse_lost,
}
#: the event types the fold reads; any other leaves the state as it is
OBSERVED = frozenset(_HANDLERS)

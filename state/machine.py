"""The pure state machine: ``apply(aggregate, event) -> aggregate``.

No I/O, no clock, no randomness: the same function serves live appends (the
log loads the aggregate an event addresses, applies, writes the result in the
same transaction), rebuilds and replays (a fold over every event), and tests.

An event addresses one *aggregate*: a run (``run.*`` and ``stage.*``), a file
(``file.*``), a schedule (``schedule.*``), an orchestration
(``orchestration.*``) or an alert (``alert.*``).  Legal transitions are listed explicitly in the
``*_TRANSITIONS`` tables below; anything else raises :class:`IllegalTransition`
before the log writes a byte.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Callable, Iterable, NamedTuple

from .errors import IllegalTransition
from .events import Event, EventType as T, dumps_payload


class RunState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PARKED = "PARKED"


class StageState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    RETRYING = "RETRYING"
    TIMED_OUT = "TIMED_OUT"
    INTERRUPTED = "INTERRUPTED"


R, S = RunState, StageState


def _plain(table: dict) -> dict[tuple[str | None, str], str]:
    """Plain ``str`` keys and values: aggregates hold text, as the database does."""
    return {(None if c is None else str(c), str(t)): str(v) for (c, t), v in table.items()}


#: a run in one of these does nothing more on its own: it has ended, for good (COMPLETED)
#: or until someone retries it (FAILED, CANCELLED, PARKED)
ENDED_RUN_STATES = frozenset({R.COMPLETED, R.FAILED, R.CANCELLED, R.PARKED})
DONE_STAGE_STATES = frozenset({S.COMPLETED, S.SKIPPED})
#: attempts that ended without success and may be followed by another attempt
ENDED_UNSUCCESSFULLY = frozenset({S.FAILED, S.TIMED_OUT, S.INTERRUPTED})

# (current run state or None for "no such run", event type) -> new run state
RUN_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.RUN_REQUESTED): R.PENDING,
    (R.PENDING, T.RUN_STARTED): R.RUNNING,
    (R.RUNNING, T.RUN_COMPLETED): R.COMPLETED,
    (R.PENDING, T.RUN_FAILED): R.FAILED,
    (R.RUNNING, T.RUN_FAILED): R.FAILED,
    (R.PENDING, T.RUN_CANCELLED): R.CANCELLED,
    (R.RUNNING, T.RUN_CANCELLED): R.CANCELLED,
    (R.PARKED, T.RUN_CANCELLED): R.CANCELLED,
    (R.RUNNING, T.RUN_RECOVERED): R.PENDING,
    (R.RUNNING, T.RUN_SUSPENDED): R.PENDING,
    (R.PENDING, T.RUN_PARKED): R.PARKED,
    (R.RUNNING, T.RUN_PARKED): R.PARKED,
    (R.FAILED, T.RUN_RETRIED): R.PENDING,
    (R.PARKED, T.RUN_RETRIED): R.PENDING,
    (R.CANCELLED, T.RUN_RETRIED): R.PENDING,
})

# (current state of the stage's latest attempt, None if never tried, event type)
#   -> new state of the addressed attempt
STAGE_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.STAGE_STARTED): S.RUNNING,
    (S.RETRYING, T.STAGE_STARTED): S.RUNNING,
    (S.FAILED, T.STAGE_STARTED): S.RUNNING,
    (S.TIMED_OUT, T.STAGE_STARTED): S.RUNNING,
    (S.INTERRUPTED, T.STAGE_STARTED): S.RUNNING,
    (S.RUNNING, T.STAGE_COMPLETED): S.COMPLETED,
    (S.RUNNING, T.STAGE_FAILED): S.FAILED,
    (S.RUNNING, T.STAGE_TIMED_OUT): S.TIMED_OUT,
    (S.RUNNING, T.STAGE_INTERRUPTED): S.INTERRUPTED,
    (S.FAILED, T.STAGE_RETRYING): S.RETRYING,
    (S.TIMED_OUT, T.STAGE_RETRYING): S.RETRYING,
    (S.INTERRUPTED, T.STAGE_RETRYING): S.RETRYING,
    (None, T.STAGE_SKIPPED): S.SKIPPED,
    (None, T.STAGE_REUSED): S.COMPLETED,
})

FILE_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.FILE_ARRIVED): "ARRIVED",
    ("QUARANTINED", T.FILE_ARRIVED): "ARRIVED",
    ("ARRIVED", T.FILE_DUPLICATE): "ARRIVED",
    (None, T.FILE_QUARANTINED): "QUARANTINED",
    ("ARRIVED", T.FILE_QUARANTINED): "QUARANTINED",
    ("QUARANTINED", T.FILE_QUARANTINED): "QUARANTINED",
})

#: one alert per condition: raising an alert that is already firing is illegal
ALERT_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.ALERT_RAISED): "FIRING",
    ("RESOLVED", T.ALERT_RAISED): "FIRING",
    ("FIRING", T.ALERT_RESOLVED): "RESOLVED",
})

ORCH_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.ORCH_STARTED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_STARTED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_FINISHED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_SKIPPED): "RUNNING",
    ("RUNNING", T.ORCH_COMPLETED): "COMPLETED",
    ("RUNNING", T.ORCH_FAILED): "FAILED",
})


class Attempt(NamedTuple):
    """One attempt of one stage of one run (a row of ``stage_runs``).

    ``detail`` is the JSON text of the payload of the latest event about this
    attempt, kept verbatim: figures such as ``rows`` and ``output`` are read
    from it on demand (and by SQL, as generated columns), so that replay
    never has to decode or re-encode them.
    """

    run_id: str
    stage: str
    attempt: int
    state: str
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    detail: str = "{}"

    def info(self) -> dict[str, Any]:
        return json.loads(self.detail)

    @property
    def output(self) -> dict[str, Any] | None:
        return self.info().get("output") if self.detail != "{}" else None

    @property
    def rows(self) -> int | None:
        return self.info().get("rows") if self.detail != "{}" else None


class Run(NamedTuple):
    """A run and the latest attempt of each of its stages (a row of ``runs``).

    ``last_seq`` is the seq of the last *run-level* event: stage events change
    attempt rows, never the run's own row (fewer pages written per append).
    """

    run_id: str
    pipeline: str
    trigger: str
    state: str
    params: dict[str, Any]
    stages: tuple[str, ...]
    requested_at: str
    started_at: str | None
    ended_at: str | None
    error: str | None
    failed_stage: str | None
    recoveries: int
    retries: int
    last_seq: int
    attempts: dict[str, Attempt]

    def stage_state(self, stage: str) -> str:
        a = self.attempts.get(stage)
        return a.state if a is not None else S.PENDING


class FileRecord(NamedTuple):
    """A file taken from a drop folder, by pipeline and content (``files``)."""

    pipeline: str
    sha256: str
    state: str
    name: str
    size: int | None
    stored_path: str | None
    first_seen: str
    last_seen: str
    run_id: str | None
    duplicates: int
    reason: str | None


class ScheduleRecord(NamedTuple):
    """The last tick of one schedule trigger (``schedules``)."""

    pipeline: str
    trigger: str
    last_fire_time: str
    fired: int
    last_run_id: str | None
    updated_at: str


class OrchPipeline(NamedTuple):
    position: int
    state: str
    run_id: str | None
    reason: str | None
    started_at: str | None
    ended_at: str | None


class Orchestration(NamedTuple):
    """One orchestration of several pipelines (``orchestrations``)."""

    orch_id: str
    name: str
    state: str
    planned: tuple[str, ...]
    started_at: str
    ended_at: str | None
    error: str | None
    last_seq: int
    pipelines: dict[str, OrchPipeline]


class AlertRecord(NamedTuple):
    """One alert condition (``alerts``): firing until resolved, then perhaps again."""

    alert_id: str           # the condition, e.g. "system.disk_nearly_full:/var/lib/ahgd"
    name: str
    severity: str
    state: str              # FIRING | RESOLVED
    message: str
    fields: str             # JSON text
    run_id: str | None
    raised_at: str
    resolved_at: str | None
    resolution: str | None
    times_raised: int
    last_seq: int


Aggregate = Run | FileRecord | ScheduleRecord | Orchestration | AlertRecord
Key = tuple[str, str]


# --------------------------------------------------------------------------
# addressing


_KIND = {t: t.partition(".")[0] for t in T}


def aggregate_key(event: Event) -> Key:
    """Which aggregate an event belongs to: ``(kind, id)``."""
    kind = _KIND.get(event.type) or event.type.partition(".")[0]
    if kind == "stage" or kind == "run":
        if not event.run_id:
            raise IllegalTransition(
                f"{event.type} needs a run_id", event_type=event.type, current=None
            )
        return ("run", event.run_id)
    if kind == "file":
        p = event.data()
        return ("file", _file_id(p.get("pipeline"), p.get("sha256"), event.type))
    if kind == "schedule":
        p = event.data()
        return ("schedule", f"{p.get('pipeline')}\x1f{p.get('trigger')}")
    if kind == "orchestration":
        if not event.run_id:
            raise IllegalTransition(
                f"{event.type} needs a run_id (the orchestration id)",
                event_type=event.type,
                current=None,
            )
        return ("orchestration", event.run_id)
    if kind == "alert":
        alert_id = event.data().get("alert_id")
        if not alert_id:
            raise IllegalTransition(
                f"{event.type} needs 'alert_id' in its payload", event_type=event.type, current=None
            )
        return ("alert", str(alert_id))
    raise IllegalTransition(
        f"unknown event type {event.type!r}", event_type=event.type, current=None
    )


def _file_id(pipeline: Any, sha: Any, etype: str) -> str:
    if not pipeline or not sha:
        raise IllegalTransition(
            f"{etype} needs 'pipeline' and 'sha256' in its payload",
            event_type=etype,
            current=None,
        )
    return f"{pipeline}\x1f{sha}"


def apply(agg: Aggregate | None, event: Event) -> Aggregate:
    """Return the aggregate after ``event``; raise IllegalTransition if not allowed.

    ``agg`` is the aggregate the event addresses (see :func:`aggregate_key`),
    or None when it does not exist yet.  ``event.seq`` and ``event.ts`` must be
    set (the log assigns them).
    """
    kind = _KIND.get(event.type) or event.type.partition(".")[0]
    if kind == "stage":
        return _apply_stage(agg, event)  # type: ignore[arg-type]
    if kind == "run":
        return _apply_run(agg, event)  # type: ignore[arg-type]
    if kind == "file":
        return _apply_file(agg, event)  # type: ignore[arg-type]
    if kind == "schedule":
        return _apply_schedule(agg, event)  # type: ignore[arg-type]
    if kind == "orchestration":
        return _apply_orch(agg, event)  # type: ignore[arg-type]
    if kind == "alert":
        return _apply_alert(agg, event)  # type: ignore[arg-type]
    raise IllegalTransition(
        f"unknown event type {event.type!r}", event_type=event.type, current=None
    )


def fold(events: Iterable[Event], state: dict[Key, Aggregate] | None = None) -> dict[Key, Aggregate]:
    """Fold events into aggregates: ``for e in events: state = apply(state, e)``."""
    state = {} if state is None else state
    for e in events:
        k = aggregate_key(e)
        state[k] = apply(state.get(k), e)
    return state


# --------------------------------------------------------------------------
# runs


def _illegal(what: str, current: str | None, event: Event, allowed: Iterable[str], hint: str = "") -> IllegalTransition:
    allowed_s = ", ".join(sorted(str(a) for a in allowed if a is not None)) or "nothing"
    cur = "does not exist" if current is None else f"is {current}"
    msg = f"{what} {cur}; {event.type} is only allowed from: {allowed_s}"
    if hint:
        msg += f" ({hint})"
    return IllegalTransition(msg, event_type=event.type, current=current)


def _run_target(run: Run | None, event: Event) -> str:
    current = run.state if run is not None else None
    new = RUN_TRANSITIONS.get((current, event.type))
    if new is None:
        allowed = [c for (c, t) in RUN_TRANSITIONS if t == event.type]
        hint = "a run id is used once" if event.type == T.RUN_REQUESTED else ""
        raise _illegal(f"run {event.run_id!r}", current, event, allowed, hint)
    return new


def _no_attempt_in_flight(run: Run, event: Event) -> None:
    busy = sorted(s for s, a in run.attempts.items() if a.state == S.RUNNING)
    if busy:
        raise IllegalTransition(
            f"run {run.run_id!r} still has stage attempts in flight ({', '.join(busy)}); "
            f"record how they ended (stage.completed/failed/interrupted) before {event.type}",
            event_type=event.type,
            current=run.state,
        )


def _apply_run(run: Run | None, e: Event) -> Run:
    new_state = _run_target(run, e)
    p = e.data()
    t = e.type
    if run is None:  # run.requested
        pipeline = p.get("pipeline")
        if not pipeline:
            raise IllegalTransition(
                "run.requested needs 'pipeline' in its payload", event_type=t, current=None
            )
        return Run(
            run_id=e.run_id,  # type: ignore[arg-type]
            pipeline=pipeline,
            trigger=p.get("trigger") or "manual",
            state=new_state,
            params=p.get("params") or {},
            stages=tuple(p.get("stages") or ()),
            requested_at=e.ts,  # type: ignore[arg-type]
            started_at=None,
            ended_at=None,
            error=None,
            failed_stage=None,
            recoveries=0,
            retries=0,
            last_seq=e.seq,  # type: ignore[arg-type]
            attempts={},
        )
    if t == T.RUN_STARTED:
        stages = tuple(p["stages"]) if p.get("stages") else run.stages
        return run._replace(
            state=new_state,
            stages=stages,
            started_at=run.started_at or e.ts,
            last_seq=e.seq,
        )
    if t == T.RUN_COMPLETED:
        _no_attempt_in_flight(run, e)
        missing = [s for s in run.stages if run.stage_state(s) not in DONE_STAGE_STATES]
        if missing:
            raise IllegalTransition(
                f"run {run.run_id!r} cannot complete: stages {', '.join(missing)} have not "
                "completed or been skipped",
                event_type=t,
                current=run.state,
            )
        return run._replace(state=new_state, ended_at=e.ts, error=None, failed_stage=None, last_seq=e.seq)
    if t in (T.RUN_FAILED, T.RUN_CANCELLED, T.RUN_PARKED):
        _no_attempt_in_flight(run, e)
        error = p.get("error") or p.get("reason")
        if t == T.RUN_FAILED and not error:
            error = "run failed (no error recorded)"
        return run._replace(
            state=new_state,
            ended_at=e.ts,
            error=error,
            failed_stage=(p.get("failed_stage") or e.stage) if t == T.RUN_FAILED else run.failed_stage,
            last_seq=e.seq,
        )
    if t == T.RUN_RECOVERED:
        _no_attempt_in_flight(run, e)
        return run._replace(state=new_state, recoveries=run.recoveries + 1, last_seq=e.seq)
    if t == T.RUN_SUSPENDED:
        _no_attempt_in_flight(run, e)
        return run._replace(state=new_state, last_seq=e.seq)
    if t == T.RUN_RETRIED:
        return run._replace(
            state=new_state,
            ended_at=None,
            error=None,
            failed_stage=None,
            recoveries=0 if run.state == R.PARKED else run.recoveries,
            retries=run.retries + 1,
            last_seq=e.seq,
        )
    raise _illegal(f"run {e.run_id!r}", run.state, e, [])  # pragma: no cover - table covers all


# --------------------------------------------------------------------------
# stage attempts


# plain-str copies of the enum members used on the replay hot path
# (an enum attribute lookup costs ~90 ns; replay does millions of them)
_RUNNING = str(R.RUNNING)
_S_RUNNING, _S_RETRYING = str(S.RUNNING), str(S.RETRYING)
_STARTED, _COMPLETED, _RETRYING = str(T.STAGE_STARTED), str(T.STAGE_COMPLETED), str(T.STAGE_RETRYING)
_SKIPPED, _REUSED = str(T.STAGE_SKIPPED), str(T.STAGE_REUSED)


def _expected_attempt(prev: Attempt | None, t: str) -> int:
    if t == _SKIPPED or t == _REUSED:
        return 0
    if prev is None:
        return 1
    if t == _STARTED:
        return prev.attempt if prev.state == _S_RETRYING else prev.attempt + 1
    if t == _RETRYING:
        return prev.attempt + 1
    return prev.attempt


def _apply_stage(run: Run | None, e: Event) -> Run:
    t = e.type
    stage = e.stage
    if run is None:
        raise IllegalTransition(
            f"{t} for stage {stage!r} of run {e.run_id!r}, which does not exist "
            "(record run.requested first)",
            event_type=t,
            current=None,
        )
    if not stage:
        raise IllegalTransition(f"{t} needs a stage name", event_type=t, current=run.state)
    if run.state != _RUNNING:
        raise IllegalTransition(
            f"{t} for stage {stage!r}: run {run.run_id!r} is {run.state}, "
            "stage events are only allowed while it is RUNNING",
            event_type=t,
            current=run.state,
        )
    if run.stages and stage not in run.stages:
        raise IllegalTransition(
            f"run {run.run_id!r} has no stage {stage!r} (its stages: {', '.join(run.stages)})",
            event_type=t,
            current=run.state,
        )
    prev = run.attempts.get(stage)
    current = prev.state if prev is not None else None
    new_state = STAGE_TRANSITIONS.get((current, t))
    if new_state is None:
        allowed = [c or S.PENDING for (c, tt) in STAGE_TRANSITIONS if tt == t]
        hint = "a stage succeeds once" if current == S.COMPLETED else ""
        raise _illegal(
            f"stage {stage!r} of run {run.run_id!r}", current or S.PENDING, e, allowed, hint
        )
    expected = _expected_attempt(prev, t)
    if e.attempt != expected:
        raise IllegalTransition(
            f"{t} for stage {stage!r} of run {run.run_id!r} has attempt {e.attempt}; "
            f"expected attempt {expected}",
            event_type=t,
            current=current,
        )
    raw = e.raw if e.raw is not None else dumps_payload(e.payload)
    # tuple.__new__ with positional fields: this is the hot path of every
    # replay, and NamedTuple's Python-level __new__ costs a measurable share
    run_id = run.run_id
    if t == _STARTED:
        att = _new(Attempt, (run_id, stage, expected, new_state, e.ts, None, None, raw))
    elif t == _COMPLETED:
        att = _new(Attempt, (run_id, stage, expected, new_state, prev.started_at, e.ts, None, raw))  # type: ignore[union-attr]
    elif t in _ENDINGS:
        error = e.data().get("error") or _ENDINGS[t]
        att = _new(Attempt, (run_id, stage, expected, new_state, prev.started_at, e.ts, error, raw))  # type: ignore[union-attr]
    elif t == _RETRYING:
        att = _new(Attempt, (run_id, stage, expected, new_state, None, None, None, raw))
    else:  # stage.skipped, stage.reused
        att = _new(Attempt, (run_id, stage, 0, new_state, e.ts, e.ts, None, raw))
    attempts = run.attempts.copy()
    attempts[stage] = att
    # the run's own row is untouched: last_seq counts run-level events only
    return _new(Run, (*run[:14], attempts))


_new = tuple.__new__
_ENDINGS = {
    T.STAGE_FAILED: "stage failed (no error recorded)",
    T.STAGE_TIMED_OUT: "stage timed out",
    T.STAGE_INTERRUPTED: "stage interrupted",
}

STAGE_TYPES = frozenset(str(t) for t in T if str(t).startswith("stage."))

#: ``apply`` for ``stage.*`` events (they address their run): what apply() dispatches
#: to, named so that replay's inner loop can skip the dispatch
apply_stage = _apply_stage

#: event types whose fold needs only the payload text, never its values
RAW_ONLY_TYPES = frozenset({
    T.STAGE_STARTED, T.STAGE_COMPLETED, T.STAGE_RETRYING, T.STAGE_SKIPPED, T.STAGE_REUSED,
})



# --------------------------------------------------------------------------
# files, schedules, orchestrations


def _next_state(table: dict[tuple[str | None, str], str], current: str | None, e: Event,
                what: Callable[[], str], hint: str = "") -> str:
    """The state ``e`` leads to from ``current`` in ``table``, or IllegalTransition."""
    new_state = table.get((current, e.type))
    if new_state is None:
        allowed = [c or "new" for (c, t) in table if t == e.type]
        raise _illegal(what(), current, e, allowed, hint)
    return new_state


def _apply_file(rec: FileRecord | None, e: Event) -> FileRecord:
    current = rec.state if rec is not None else None
    p = e.data()
    new_state = _next_state(FILE_TRANSITIONS, current, e, lambda: (
        f"file {p.get('name')!r} ({str(p.get('sha256'))[:12]}) of pipeline {p.get('pipeline')!r}"))
    if rec is None:
        return FileRecord(
            pipeline=p["pipeline"],
            sha256=p["sha256"],
            state=new_state,
            name=p.get("name") or "",
            size=p.get("size"),
            stored_path=p.get("stored_path") or p.get("path"),
            first_seen=e.ts,  # type: ignore[arg-type]
            last_seen=e.ts,  # type: ignore[arg-type]
            run_id=e.run_id,
            duplicates=0,
            reason=p.get("reason") if e.type == T.FILE_QUARANTINED else None,
        )
    if e.type == T.FILE_DUPLICATE:
        return rec._replace(last_seen=e.ts, duplicates=rec.duplicates + 1)
    if e.type == T.FILE_QUARANTINED:
        return rec._replace(
            state=new_state, last_seen=e.ts, reason=p.get("reason"),
            stored_path=p.get("path") or rec.stored_path,
        )
    # re-arrival of bytes that were quarantined before
    return rec._replace(
        state=new_state, last_seen=e.ts, name=p.get("name") or rec.name,
        size=p.get("size"), stored_path=p.get("stored_path") or rec.stored_path,
        run_id=e.run_id, reason=None,
    )


def _apply_schedule(rec: ScheduleRecord | None, e: Event) -> ScheduleRecord:
    p = e.data()
    fire_time = p.get("fire_time")
    if not fire_time or not p.get("pipeline") or not p.get("trigger"):
        raise IllegalTransition(
            "schedule.fired needs 'pipeline', 'trigger' and 'fire_time' in its payload",
            event_type=e.type,
            current=None,
        )
    if rec is None:
        return ScheduleRecord(p["pipeline"], p["trigger"], fire_time, 1, e.run_id, e.ts)  # type: ignore[arg-type]
    return rec._replace(
        last_fire_time=max(rec.last_fire_time, fire_time),
        fired=rec.fired + 1,
        last_run_id=e.run_id,
        updated_at=e.ts,
    )


def _apply_alert(rec: AlertRecord | None, e: Event) -> AlertRecord:
    current = rec.state if rec is not None else None
    p = e.data()
    new_state = _next_state(ALERT_TRANSITIONS, current, e, lambda: f"alert {p.get('alert_id')!r}",
                            "resolve it before raising it again" if current == "FIRING" else "")
    if e.type == T.ALERT_RESOLVED:
        return rec._replace(state=new_state, resolved_at=e.ts,  # type: ignore[union-attr]
                            resolution=p.get("reason"), last_seq=e.seq)
    if not p.get("name") or not p.get("severity"):
        raise IllegalTransition("alert.raised needs 'name' and 'severity' in its payload",
                                event_type=e.type, current=current)
    return AlertRecord(
        alert_id=str(p["alert_id"]), name=str(p["name"]), severity=str(p["severity"]),
        state=new_state, message=str(p.get("message") or ""),
        fields=json.dumps(p.get("fields") or {}, sort_keys=True, separators=(",", ":")),
        run_id=e.run_id, raised_at=e.ts, resolved_at=None, resolution=None,  # type: ignore[arg-type]
        times_raised=(rec.times_raised if rec is not None else 0) + 1, last_seq=e.seq,  # type: ignore[arg-type]
    )


def _apply_orch(o: Orchestration | None, e: Event) -> Orchestration:
    current = o.state if o is not None else None
    new_state = _next_state(ORCH_TRANSITIONS, current, e, lambda: f"orchestration {e.run_id!r}")
    p = e.data()
    if o is None:
        planned = tuple(p.get("order") or ())
        return Orchestration(
            orch_id=e.run_id,  # type: ignore[arg-type]
            name=p.get("name") or "default",
            state=new_state,
            planned=planned,
            started_at=e.ts,  # type: ignore[arg-type]
            ended_at=None,
            error=None,
            last_seq=e.seq,  # type: ignore[arg-type]
            pipelines={
                name: OrchPipeline(i, "PENDING", None, None, None, None)
                for i, name in enumerate(planned)
            },
        )
    name = e.stage or p.get("pipeline")
    if e.type in (T.ORCH_COMPLETED, T.ORCH_FAILED):
        return o._replace(state=new_state, ended_at=e.ts, error=p.get("error"), last_seq=e.seq)
    if not name:
        raise IllegalTransition(
            f"{e.type} needs the pipeline name in 'stage'", event_type=e.type, current=current
        )
    prev = o.pipelines.get(name) or OrchPipeline(len(o.pipelines), "PENDING", None, None, None, None)
    if e.type == T.ORCH_PIPELINE_STARTED:
        entry = prev._replace(state="RUNNING", run_id=p.get("pipeline_run_id"), started_at=e.ts)
    elif e.type == T.ORCH_PIPELINE_FINISHED:
        entry = prev._replace(
            state=p.get("state") or "COMPLETED",
            run_id=p.get("pipeline_run_id") or prev.run_id,
            reason=p.get("error"),
            ended_at=e.ts,
        )
    else:  # skipped
        entry = prev._replace(state="SKIPPED", reason=p.get("reason"), ended_at=e.ts)
    return o._replace(pipelines={**o.pipelines, name: entry}, last_seq=e.seq)

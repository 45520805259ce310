"""The pure state machine: ``apply(aggregate, event) -> aggregate``.

No I/O, no clock, no randomness: the same function serves live appends (the
log loads the aggregate an event addresses, applies, writes the result in the
same transaction), rebuilds and replays (a fold over every event), and tests.

An event addresses one *aggregate*: a run (``run.*`` and ``stage.*``), a file
(``file.*``), a schedule (``schedule.*``), an orchestration
(``orchestration.*``), an alert (``alert.*``) or a paused pipeline (``pipeline.*``,
``schedule.skipped``).  Legal transitions are listed explicitly in the
``*_TRANSITIONS`` tables of :mod:`state.transitions`; anything else raises
:class:`IllegalTransition` before the log writes a byte.  This module addresses
events to aggregates and folds runs and their stage attempts; the other
aggregates' folds are in :mod:`state.folds`, their records in
:mod:`state.aggregates` (both re-exported here: this is the machine's interface).
"""

from __future__ import annotations

from typing import Any, Iterable

from .aggregates import (DONE_STAGE_STATES, ENDED_RUN_STATES, ENDED_UNSUCCESSFULLY, Aggregate,
                         AlertRecord, Attempt, FileRecord, Key, Orchestration, OrchPipeline, R, Run,
                         RunState, S, ScheduleRecord, StageState)
from .errors import IllegalTransition
from .events import Event, EventType as T, dumps_payload
from .folds import (apply_alert, apply_file, apply_orchestration, apply_pipeline, apply_refusal,
                    apply_removal, apply_schedule)
from .transitions import (ALERT_TRANSITIONS, FILE_TRANSITIONS, ORCH_TRANSITIONS, RUN_TRANSITIONS,
                          STAGE_TRANSITIONS, illegal)

__all__ = ["ALERT_TRANSITIONS", "DONE_STAGE_STATES", "ENDED_RUN_STATES", "ENDED_UNSUCCESSFULLY",
           "FILE_TRANSITIONS", "ORCH_TRANSITIONS", "RAW_ONLY_TYPES", "RUN_TRANSITIONS",
           "STAGE_TRANSITIONS", "STAGE_TYPES", "Aggregate", "AlertRecord", "Attempt",
           "FileRecord", "Key", "OrchPipeline", "Orchestration", "Run", "RunState",
           "ScheduleRecord", "StageState", "aggregate_key", "apply", "apply_stage", "fold"]


# --------------------------------------------------------------------------
# addressing


_KIND = {t: t.partition(".")[0] for t in T}
_KIND[T.FILE_REFUSED] = "refusal"  # a file event that addresses no file: nothing was taken
_KIND[T.SCHEDULE_SKIPPED] = "pipeline"  # legal only while the tick's pipeline is paused
_KIND[T.DATA_EXPIRED] = "run"       # a run's outputs removed: legal only once the run has ended
_KIND[T.FILE_EXPIRED] = "removal"   # a file retention removed: each one stands on its own


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
    if kind == "refusal":
        p = event.data()
        if not p.get("pipeline") or not p.get("path"):
            raise IllegalTransition(f"{event.type} needs 'pipeline' and 'path' in its payload",
                                    event_type=event.type, current=None)
        return ("refusal", f"{p['pipeline']}\x1f{p['path']}")
    if kind == "removal":
        path = event.data().get("path")
        if not path:
            raise IllegalTransition(f"{event.type} needs 'path' in its payload",
                                    event_type=event.type, current=None)
        return ("removal", str(path))
    if kind == "schedule":
        p = event.data()
        return ("schedule", f"{p.get('pipeline')}\x1f{p.get('trigger')}")
    if kind == "pipeline":
        name = event.data().get("pipeline")
        if not name:
            raise IllegalTransition(f"{event.type} needs 'pipeline' in its payload",
                                    event_type=event.type, current=None)
        return ("pipeline", str(name))
    if kind == "orchestration":
        if not event.run_id:
            raise IllegalTransition(
                f"{event.type} needs a run_id (the orchestration id)",
                event_type=event.type,
                current=None,
            )
        return ("orchestration", event.run_id)
    if kind == "alert" or kind == "warehouse":  # warehouse.lost raises an alert: see transitions
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
        return apply_file(agg, event)  # type: ignore[arg-type]
    if kind == "refusal":
        return apply_refusal(agg, event)  # type: ignore[arg-type]
    if kind == "removal":
        return apply_removal(agg, event)  # type: ignore[arg-type]
    if kind == "schedule":
        return apply_schedule(agg, event)  # type: ignore[arg-type]
    if kind == "pipeline":
        return apply_pipeline(agg, event)  # type: ignore[arg-type]
    if kind == "orchestration":
        return apply_orchestration(agg, event)  # type: ignore[arg-type]
    if kind == "alert" or kind == "warehouse":
        return apply_alert(agg, event)  # type: ignore[arg-type]
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


def _run_target(run: Run | None, event: Event) -> str:
    current = run.state if run is not None else None
    new = RUN_TRANSITIONS.get((current, event.type))
    if new is None:
        allowed = [c for (c, t) in RUN_TRANSITIONS if t == event.type]
        hint = "a run id is used once" if event.type == T.RUN_REQUESTED else ""
        raise illegal(f"run {event.run_id!r}", current, event, allowed, hint)
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
            requested_seq=e.seq,  # type: ignore[arg-type]
        )
    if t == T.DATA_EXPIRED:  # the run is as it was; its outputs are gone (the event says which)
        return run
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
    raise illegal(f"run {e.run_id!r}", run.state, e, [])  # pragma: no cover - table covers all


# --------------------------------------------------------------------------
# stage attempts


# plain-str copies of the enum members used on the replay hot path
# (an enum attribute lookup costs ~90 ns; replay does millions of them)
_RUNNING = str(R.RUNNING)
_S_RUNNING, _S_RETRYING = str(S.RUNNING), str(S.RETRYING)
_STARTED, _COMPLETED, _RETRYING = str(T.STAGE_STARTED), str(T.STAGE_COMPLETED), str(T.STAGE_RETRYING)
_SKIPPED, _REUSED = str(T.STAGE_SKIPPED), str(T.STAGE_REUSED)
_INVALIDATED = str(T.STAGE_INVALIDATED)


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
    stages = run.stages
    if stages and stage not in _stage_set(stages):
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
        raise illegal(
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
    elif t == _INVALIDATED:  # the attempt keeps its times: it ran then, its output went later
        error = e.data().get("error") or "its recorded output is gone or altered"
        att = _new(Attempt, (run_id, stage, expected, new_state, prev.started_at, prev.ended_at,  # type: ignore[union-attr]
                             error, raw))
    else:  # stage.skipped, stage.reused
        att = _new(Attempt, (run_id, stage, 0, new_state, e.ts, e.ts, None, raw))
    attempts = run.attempts.copy()
    attempts[stage] = att
    # the run's own row is untouched: last_seq counts run-level events only
    return _new(Run, (*run[:14], attempts, run[15]))


_new = tuple.__new__

#: id(a run's stage tuple) -> (the tuple, its names as a set): every event of a run shares
#: its one tuple, and looking a name up in it was a scan of the whole tuple per event
_STAGE_SETS: dict[int, tuple[tuple[str, ...], frozenset[str]]] = {}


def _stage_set(stages: tuple[str, ...]) -> frozenset[str] | tuple[str, ...]:
    if len(stages) < 8:  # a scan of a few names costs less than the lookup
        return stages
    found = _STAGE_SETS.get(id(stages))
    if found is None or found[0] is not stages:
        if len(_STAGE_SETS) > 256:
            _STAGE_SETS.clear()
        found = _STAGE_SETS[id(stages)] = (stages, frozenset(stages))
    return found[1]


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

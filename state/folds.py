"""The folds of the aggregates beside runs: drop-folder files, schedules, alerts,
orchestrations and paused pipelines.  Pure functions ``(record or None, event) ->
record``, dispatched to by :func:`state.machine.apply`.
"""

from __future__ import annotations

import json

from .aggregates import (AlertRecord, FileRecord, Orchestration, OrchPipeline, PipelineRecord,
                         Refusal, Removal, ScheduleRecord)
from .errors import IllegalTransition
from .events import Event, EventType as T
from .transitions import (ALERT_TRANSITIONS, FILE_TRANSITIONS, ORCH_TRANSITIONS,
                          PIPELINE_TRANSITIONS, REFUSAL_TRANSITIONS, REMOVAL_TRANSITIONS,
                          next_state)


def apply_file(rec: FileRecord | None, e: Event) -> FileRecord:
    current = rec.state if rec is not None else None
    p = e.data()
    new_state = next_state(FILE_TRANSITIONS, current, e, lambda: (
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
    if e.type == T.FILE_RELEASED:  # its next arrival is a new one (the key holds last_seen)
        return rec._replace(state=new_state, last_seen=e.ts, stored_path=p.get("to") or
                            rec.stored_path)
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


def apply_pipeline(rec: PipelineRecord | None, e: Event) -> PipelineRecord:
    """A pipeline paused or resumed by hand; a tick skipped is legal only while it is paused."""
    p = e.data()
    current = rec.state if rec is not None else None
    new_state = next_state(PIPELINE_TRANSITIONS, current, e, lambda: f"pipeline {p.get('pipeline')!r}",
                           "it is paused already" if current == "PAUSED" else "")
    if e.type == T.SCHEDULE_SKIPPED:
        return rec  # type: ignore[return-value]  # the pause stands; the log keeps the tick
    return PipelineRecord(str(p["pipeline"]), new_state, p.get("reason"), p.get("by") or {},
                          e.ts, e.seq)  # type: ignore[arg-type]


def apply_refusal(rec: Refusal | None, e: Event) -> Refusal:
    """A drop-folder entry refused (again): only the log keeps it (no projection)."""
    p = e.data()
    next_state(REFUSAL_TRANSITIONS, None if rec is None else "REFUSED", e,  # always REFUSED
               lambda: f"drop-folder entry {p.get('path')!r}")
    return Refusal(str(p["pipeline"]), str(p["path"]), str(p.get("kind") or ""),
                   str(p.get("reason") or ""), e.ts,  # type: ignore[arg-type]
                   (rec.times if rec is not None else 0) + 1)


def apply_removal(rec: Removal | None, e: Event) -> Removal:
    """A file retention removed (``file.expired``): only the log keeps it (no projection)."""
    p = e.data()
    next_state(REMOVAL_TRANSITIONS, None, e, lambda: f"removal of {p.get('path')!r}")
    if not p.get("area") or not isinstance(p.get("bytes"), int):
        raise IllegalTransition(f"{e.type} needs 'area' and 'bytes' in its payload",
                                event_type=e.type, current=None)
    return Removal(str(p["path"]), str(p["area"]), p["bytes"], e.ts)  # type: ignore[arg-type]


def apply_schedule(rec: ScheduleRecord | None, e: Event) -> ScheduleRecord | None:
    """The schedule's own firing: its last fire time is where the ticks missed while the
    daemon was down are caught up from.  A backfill's tick (``backfill`` in the payload) is
    not the schedule's: it leaves the record as it was (none, if the schedule never fired
    by itself); its run id, the tick's, keeps the tick from being fired again."""
    p = e.data()
    fire_time = p.get("fire_time")
    if not fire_time or not p.get("pipeline") or not p.get("trigger"):
        raise IllegalTransition(
            "schedule.fired needs 'pipeline', 'trigger' and 'fire_time' in its payload",
            event_type=e.type,
            current=None,
        )
    if p.get("backfill"):
        return rec
    if rec is None:
        return ScheduleRecord(p["pipeline"], p["trigger"], fire_time, 1, e.run_id, e.ts)  # type: ignore[arg-type]
    return rec._replace(
        last_fire_time=max(rec.last_fire_time, fire_time),
        fired=rec.fired + 1,
        last_run_id=e.run_id,
        updated_at=e.ts,
    )


def apply_alert(rec: AlertRecord | None, e: Event) -> AlertRecord:
    current = rec.state if rec is not None else None
    p = e.data()
    new_state = next_state(ALERT_TRANSITIONS, current, e, lambda: f"alert {p.get('alert_id')!r}",
                            "resolve it before raising it again" if current == "FIRING" else "")
    if e.type == T.ALERT_RESOLVED:
        return rec._replace(state=new_state, resolved_at=e.ts,  # type: ignore[union-attr]
                            resolution=p.get("reason"), last_seq=e.seq)
    if e.type == T.WAREHOUSE_LOST and current == "FIRING":  # seen again: the same condition
        return rec._replace(last_seq=e.seq)  # type: ignore[union-attr]
    if not p.get("name") or not p.get("severity"):
        raise IllegalTransition(f"{e.type} needs 'name' and 'severity' in its payload",
                                event_type=e.type, current=current)
    return AlertRecord(
        alert_id=str(p["alert_id"]), name=str(p["name"]), severity=str(p["severity"]),
        state=new_state, message=str(p.get("message") or ""),
        fields=json.dumps(p.get("fields") or {}, sort_keys=True, separators=(",", ":")),
        run_id=e.run_id, raised_at=e.ts, resolved_at=None, resolution=None,  # type: ignore[arg-type]
        times_raised=(rec.times_raised if rec is not None else 0) + 1, last_seq=e.seq,  # type: ignore[arg-type]
    )


def apply_orchestration(o: Orchestration | None, e: Event) -> Orchestration:
    current = o.state if o is not None else None
    new_state = next_state(ORCH_TRANSITIONS, current, e, lambda: f"orchestration {e.run_id!r}")
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

"""Backfills (``ahgd backfill PIPELINE --from DATE --to DATE``): one run per tick of a
pipeline's schedule in a range of the past, as if the daemon had been there to fire them.

Each tick's run has the id the schedule gives that tick
(``sched-<pipeline>-<trigger>-<UTC time>``), its time as ``fire_time`` (as a
scheduled run does) and the backfill's id as ``backfill``.  So a tick that ran
already (by its schedule, or an earlier backfill) is left alone: a second
backfill of the same range requests nothing.  The runs have the trigger
``backfill``; the daemon runs at most ``max_workers`` of them at once
(``runs.py``), and ``ahgd cancel BACKFILL_ID`` cancels those that have not
ended, as a group.  The range is at most :data:`MAX_TICKS` ticks; ticks after
now are the schedule's own.

A backfill is not the schedule firing: its ``schedule.fired`` events carry
``backfill`` and leave the schedule's last fire time (the ``schedules`` row,
from which a start-up catches up missed ticks) where it was.  Backfilling a
range before the schedule ever fired does not make the daemon catch up from
the range's end; a range after its last fire is not fired again at a start-up,
while the ticks outside the range are caught up as ``misfire`` says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from state import DuplicateEvent, EventLog, EventType as T, format_ts, new_event, ops_queries
from state.errors import did_you_mean
from state.store import safe_name

from .requests import RequestError, cancel_recorded
from .schedules import Schedule, build, run_id_for

MAX_TICKS = 10_000
TRIGGER = "backfill"


@dataclass
class Plan:
    """The ticks of one backfill: which to request, which ran already, which are to come."""

    backfill_id: str
    pipeline: str
    trigger: str
    start: datetime
    end: datetime
    ticks: list[datetime] = field(default_factory=list)
    existing: dict[str, str] = field(default_factory=dict)   # run_id -> its state
    later: int = 0                                            # ticks after now (left out)

    def as_json(self, requested: list[str] | None = None) -> dict[str, Any]:
        return {"backfill": self.backfill_id, "pipeline": self.pipeline, "trigger": self.trigger,
                "from": format_ts(self.start), "to": format_ts(self.end),
                "ticks": len(self.ticks), "already_run": len(self.existing),
                "after_now": self.later, "requested": requested}


def schedules_of(config: Any, pipeline: str) -> list[Schedule]:
    """The schedule triggers of ``pipeline`` in a loaded configuration (enabled or not)."""
    loaded = config.pipelines[pipeline]
    return [build(pipeline, t) for t in loaded.file.triggers if t.type == "schedule"]


def choose(schedules: list[Schedule], pipeline: str, trigger: str | None,
           triggers: list[str]) -> Schedule:
    """The schedule a backfill follows: the only one, or the one named ``trigger``."""
    if not schedules:
        raise RequestError(f"pipeline {pipeline!r} has no schedule trigger (its triggers: "
                           f"{', '.join(triggers) or 'none'}); a backfill runs a schedule's past "
                           "ticks: use `ahgd run` for one run, or add a schedule trigger")
    ids = [s.trigger_id for s in schedules]
    if trigger is None:
        if len(schedules) > 1:
            raise RequestError(f"pipeline {pipeline!r} has {len(schedules)} schedule triggers; "
                               f"name one with --trigger ({', '.join(ids)})")
        return schedules[0]
    for s in schedules:
        if s.trigger_id == trigger:
            return s
    close = did_you_mean(trigger, ids)
    raise RequestError(f"pipeline {pipeline!r} has no schedule trigger {trigger!r}"
                       + (f"; {close}" if close else "") + f" (its schedules: {', '.join(ids)})")


def parse_bound(text: str, zone: Any, *, end: bool, what: str) -> datetime:
    """``--from`` / ``--to``: a date (in the schedule's time zone: from its start, or to its
    end) or an ISO 8601 time (without an offset: in the schedule's time zone)."""
    text = str(text).strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None:
        moment = datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=zone)
        return moment - timedelta(microseconds=1) if end else moment
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(f"{what} {text!r} is not a date or a time; use YYYY-MM-DD, or ISO "
                           "8601 such as 2026-12-01T02:00:00+11:00") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def plan(log: Any, schedule: Schedule, start_text: str, end_text: str,
         now: datetime) -> Plan:
    """The ticks of ``schedule`` from ``start_text`` to ``end_text`` (both included)."""
    zone = getattr(schedule.apscheduler_trigger, "timezone", None) or timezone.utc
    start = parse_bound(start_text, zone, end=False, what="--from")
    end = parse_bound(end_text, zone, end=True, what="--to")
    if start > end:
        raise RequestError(f"--from {start_text} is after --to {end_text}; give the earlier "
                           "one first")
    backfill = backfill_id(schedule, start, end)
    out = Plan(backfill, schedule.pipeline, schedule.trigger_id, start, end)
    t = schedule.next_after(None, start - timedelta(microseconds=1))
    last_local, once = None, schedule.once_a_wall_time
    while t is not None and t <= end:
        if once and t.replace(tzinfo=None) == last_local:  # the hour repeated when DST ends
            pass
        elif t > now:
            out.later += 1
            if out.later > MAX_TICKS:  # the rest is the schedule's: no need to count it all
                break
        else:
            out.ticks.append(t)
            if len(out.ticks) > MAX_TICKS:
                raise RequestError(f"the range holds more than {MAX_TICKS:,} ticks of "
                                   f"{schedule.trigger_id}; backfill a shorter range at a time")
        last_local = t.replace(tzinfo=None)
        # (previous, end) as the daemon steps (schedules._ticks): stepping by (t, t + 1 us)
        # sticks at the repeated hour when DST ends
        t = schedule.next_after(t, end)
    if not out.ticks:
        raise RequestError(f"no tick of {schedule.pipeline}'s schedule {schedule.trigger_id} "
                           f"falls between {format_ts(start)} and {format_ts(min(end, now))}"
                           + (f" ({out.later} come after now: the schedule runs those)"
                              if out.later else ""))
    out.existing = ops_queries.existing_runs(log, [run_id_for(schedule, t) for t in out.ticks])
    return out


def backfill_id(schedule: Schedule, start: datetime, end: datetime) -> str:
    """The same range of the same schedule gives the same id."""
    tag = hashlib.sha256(schedule.trigger_id.encode()).hexdigest()[:6]
    span = "-".join(x.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ") for x in (start, end))
    return f"backfill-{safe_name(schedule.pipeline)}-{tag}-{span}"


def request(log: EventLog, schedule: Schedule, planned: Plan) -> list[str]:
    """Record each tick that has no run yet (``schedule.fired`` with ``backfill``, which the
    schedule's last fire time does not count, and ``run.requested``, in one transaction
    each); the run ids requested."""
    requested = []
    for t in planned.ticks:
        run_id = run_id_for(schedule, t)
        if run_id in planned.existing:
            continue
        iso = format_ts(t)
        try:
            log.append_many([
                new_event(T.SCHEDULE_FIRED, run_id, pipeline=schedule.pipeline,
                          trigger=schedule.trigger_id, fire_time=iso, catch_up=True,
                          backfill=planned.backfill_id, idempotency_key=f"schedule:{run_id}"),
                new_event(T.RUN_REQUESTED, run_id, pipeline=schedule.pipeline, trigger=TRIGGER,
                          params={**schedule.params, "fire_time": iso,
                                  "backfill": planned.backfill_id}),
            ])
        except DuplicateEvent:  # the daemon fired this tick meanwhile
            continue
        requested.append(run_id)
    return requested


def cancel_group(log: EventLog, state_dir: Any, backfill: str,
                 cancel_active: Any = None) -> dict[str, Any]:
    """Cancel every run of a backfill that has not ended; ``cancel_active(run_id)`` stops one
    the daemon is running (True if it was).  Runs another process runs are left, named."""
    runs = ops_queries.backfill_runs(log, backfill)
    if not runs:
        close = did_you_mean(backfill, ops_queries.backfill_ids(log))
        raise RequestError(f"no backfill {backfill!r} in this state directory"
                           + (f"; {close}" if close else "") + " (see `ahgd history --trigger "
                           "backfill`)")
    cancelled, stopping, left = [], [], []
    for run in runs:
        if run["state"] not in ("PENDING", "RUNNING", "PARKED"):
            continue
        if cancel_active is not None and cancel_active(run["run_id"]):
            stopping.append(run["run_id"])
            continue
        try:
            cancel_recorded(log, state_dir, run["run_id"])
            cancelled.append(run["run_id"])
        except RequestError as exc:
            left.append(f"{run['run_id']}: {exc}")
    return {"backfill": backfill, "runs": len(runs), "cancelled": cancelled,
            "cancelling": stopping, "not_cancelled": left}

"""Scheduled runs: APScheduler triggers, fire times, and missed ticks.

APScheduler's ``CronTrigger`` and ``IntervalTrigger`` compute the fire times;
the daemon's own loop fires them (its clock is a parameter, so tests and
``--once`` drive it).  A scheduled run's id is derived from the pipeline,
the trigger and the fire time (``sched-<pipeline>-<trigger>-<UTC time>``), so
one tick runs at most once across restarts.  Ticks missed while the daemon
was down follow the trigger's policy, from the last fire time in the log:
``skip`` none, ``latest`` the most recent one, ``all`` every one (up to
``MAX_CATCH_UP``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from state import DuplicateEvent, EventLog, EventType as T, new_event
from state.store import safe_name

#: interval schedules count from this instant, so their ticks are the same on every start
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_CATCH_UP = 1000


@dataclass
class Schedule:
    pipeline: str
    trigger_id: str
    apscheduler_trigger: Any
    misfire: str
    params: dict[str, Any]
    next_fire: datetime | None = None

    def next_after(self, previous: datetime | None, now: datetime) -> datetime | None:
        return self.apscheduler_trigger.get_next_fire_time(previous, now)


def build(pipeline: str, spec: Any) -> Schedule:
    """A Schedule from a ``{type: schedule, ...}`` trigger of a pipeline file."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(spec.timezone)
    if spec.cron:
        from apscheduler.triggers.cron import CronTrigger

        trigger = CronTrigger.from_crontab(spec.cron, timezone=tz)
        default_id = f"cron {spec.cron}"
    else:
        from apscheduler.triggers.interval import IntervalTrigger

        trigger = IntervalTrigger(seconds=spec.interval.total_seconds(), start_date=EPOCH, timezone=tz)
        default_id = f"every {spec.interval.total_seconds():g}s"
    return Schedule(pipeline, spec.id or default_id, trigger, spec.misfire, dict(spec.params or {}))


def run_id_for(schedule: Schedule, fire_time: datetime) -> str:
    utc = fire_time.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    tag = hashlib.sha256(schedule.trigger_id.encode()).hexdigest()[:6]
    return f"sched-{safe_name(schedule.pipeline)}-{tag}-{utc}"


def fire(log: EventLog, schedule: Schedule, fire_time: datetime, *, catch_up: bool = False) -> str | None:
    """Record the tick and request its run; None if this tick was already fired."""
    run_id = run_id_for(schedule, fire_time)
    iso = fire_time.astimezone(timezone.utc).isoformat()
    try:
        log.append_many([
            new_event(T.SCHEDULE_FIRED, run_id, pipeline=schedule.pipeline, trigger=schedule.trigger_id,
                      fire_time=iso, catch_up=catch_up, idempotency_key=f"schedule:{run_id}"),
            new_event(T.RUN_REQUESTED, run_id, pipeline=schedule.pipeline, trigger="schedule",
                      params={**schedule.params, "fire_time": iso}),
        ])
    except DuplicateEvent:
        return None
    return run_id


def last_fire_time(log: EventLog, schedule: Schedule) -> datetime | None:
    rec = log.aggregate(("schedule", f"{schedule.pipeline}\x1f{schedule.trigger_id}"))
    return None if rec is None else datetime.fromisoformat(rec.last_fire_time)


def catch_up(log: EventLog, schedule: Schedule, now: datetime) -> list[str]:
    """Fire the ticks missed since the last recorded one, by the misfire policy."""
    last = last_fire_time(log, schedule)
    fired: list[str] = []
    if last is not None:
        missed: list[datetime] = []
        t = schedule.next_after(last, now)
        while t is not None and t <= now and len(missed) < MAX_CATCH_UP:
            missed.append(t)
            t = schedule.next_after(t, now)
        if schedule.misfire == "latest":
            missed = missed[-1:]
        elif schedule.misfire == "skip":
            missed = []
        for t in missed:
            run_id = fire(log, schedule, t, catch_up=True)
            if run_id:
                fired.append(run_id)
    schedule.next_fire = schedule.next_after(None, now + timedelta(microseconds=1)) \
        if last is None else _first_after(schedule, last, now)
    return fired


def _first_after(schedule: Schedule, last: datetime, now: datetime) -> datetime | None:
    t = schedule.next_after(last, now)
    guard = 0
    while t is not None and t <= now and guard < 10 * MAX_CATCH_UP:
        t = schedule.next_after(t, now)
        guard += 1
    return t


def due(log: EventLog, schedules: list[Schedule], now: datetime) -> list[str]:
    """Fire every schedule whose next tick has come; return the run ids requested."""
    fired = []
    for s in schedules:
        while s.next_fire is not None and s.next_fire <= now:
            run_id = fire(log, s, s.next_fire)
            if run_id:
                fired.append(run_id)
            s.next_fire = s.next_after(s.next_fire, now)
            if s.next_fire is not None and s.next_fire <= now and s.misfire != "all":
                s.next_fire = _first_after(s, s.next_fire, now)  # do not replay a backlog live
    return fired


def next_wakeup(schedules: list[Schedule], now: datetime) -> float | None:
    times = [s.next_fire for s in schedules if s.next_fire is not None]
    return max(0.0, (min(times) - now).total_seconds()) if times else None

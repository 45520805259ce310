"""Scheduled runs: APScheduler triggers, fire times, and missed ticks.

APScheduler's ``CronTrigger`` and ``IntervalTrigger`` compute the fire times;
the daemon's own loop fires them (its clock is a parameter, so tests and
``--once`` drive it).  A scheduled run's id is derived from the pipeline,
the trigger and the fire time (``sched-<pipeline>-<trigger>-<UTC time>``), so
one tick runs at most once across restarts.  Ticks missed while the daemon
was down follow the trigger's policy, from the schedule's own last fire time
(the ``schedules`` projection): ``skip`` none, ``latest`` the most recent one,
``all`` every one (up to ``MAX_CATCH_UP``).  A backfill's ticks are not the
schedule's own firing and do not move it (``state.folds.apply_schedule``): a
backfill before the schedule ever fired leaves nothing to catch up, and one
after its last fire leaves the ticks around its range to catch up, its own
ticks being fired already (their run ids are taken: ``fire`` answers None).
A tick of a paused pipeline (``ahgd pause``) is recorded ``schedule.skipped``
instead of fired; ``ahgd resume`` fires the skipped ones
by the same policy (``pausing.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from state import (DuplicateEvent, EventLog, EventType as T, IllegalTransition, format_ts,
                   new_event, ops_queries, parse_ts)
from state.store import safe_name

#: interval schedules count from this instant, so their ticks are the same on every start
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_CATCH_UP = 1000


#: how far past a fire time APScheduler is asked again when it answered that time itself
_PAST_THE_REPEAT = (timedelta(microseconds=1), timedelta(hours=1, microseconds=1),
                    timedelta(hours=2, microseconds=1))


@dataclass
class Schedule:
    pipeline: str
    trigger_id: str
    apscheduler_trigger: Any
    misfire: str
    params: dict[str, Any]
    next_fire: datetime | None = None

    def next_after(self, previous: datetime | None, now: datetime) -> datetime | None:
        """The trigger's next fire time at or after ``now``, always later than ``previous``.

        APScheduler 3 answers ``previous`` itself when that is in the hour repeated as
        daylight saving ends (02:00 AEST, after 02:00 AEDT) and ``now`` is before it: each
        step of a loop that asked again from there got the same time back, for ever (the
        daemon's loop hung at its first tick that night).  Asked again from just after it,
        and, for a job at fixed hours (which it still answers from there), from past the
        repeated hour: a job at fixed hours fires once in it anyway."""
        asked = [now] if previous is None else \
            [now, *(max(now, previous + past) for past in _PAST_THE_REPEAT)]
        for at in asked:
            t = self.apscheduler_trigger.get_next_fire_time(previous, at)
            if t is None or previous is None or t.timestamp() > previous.timestamp():
                return t
        raise RuntimeError(f"the schedule {self.trigger_id!r} of {self.pipeline} gives no "
                           f"time after {previous.isoformat()}")  # (never seen: a bound)

    @property
    def once_a_wall_time(self) -> bool:
        """Whether a local time that happens twice (the hour repeated when daylight saving
        ends) fires once: as cron does it, for a job at fixed hours (``30 2 * * *``: once
        that night); a job over every hour (``0 * * * *``, ``*/15 * * * *``) and an interval
        go by real time, and fire in both hours."""
        fields = getattr(self.apscheduler_trigger, "fields", None)
        if not fields:
            return False  # an interval
        from apscheduler.triggers.cron.expressions import AllExpression

        hour = next(f for f in fields if f.name == "hour")
        # (a range or a number is an AllExpression too: only `*` and `*/n` are that class itself)
        return not any(type(e) is AllExpression for e in hour.expressions)


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
    iso = format_ts(fire_time)
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


def skip(log: EventLog, schedule: Schedule, fire_time: datetime, pause: dict[str, Any]) -> bool:
    """Record that a tick came while its pipeline was paused (``schedule.skipped``; once per
    tick).  False when the pipeline was resumed meanwhile: the tick is the caller's to fire."""
    run_id = run_id_for(schedule, fire_time)
    try:
        log.append(new_event(T.SCHEDULE_SKIPPED, run_id, pipeline=schedule.pipeline,
                             trigger=schedule.trigger_id, fire_time=format_ts(fire_time),
                             reason="the pipeline is paused", paused_at=pause.get("since"),
                             idempotency_key=f"schedule-skipped:{run_id}"))
    except DuplicateEvent:
        pass
    except IllegalTransition:  # resumed between our look and this tick: it is not skipped
        return False
    return True


def _fire_or_skip(log: EventLog, schedule: Schedule, fire_time: datetime,
                  pause: dict[str, Any] | None, *, catch_up: bool) -> str | None:
    if pause is not None and skip(log, schedule, fire_time, pause):
        return None
    return fire(log, schedule, fire_time, catch_up=catch_up)


def last_fire_time(log: EventLog, schedule: Schedule) -> datetime | None:
    """The schedule's own last tick (a backfill's ticks are not counted); None if it never
    fired by itself."""
    rec = log.aggregate(("schedule", f"{schedule.pipeline}\x1f{schedule.trigger_id}"))
    return None if rec is None else parse_ts(rec.last_fire_time)


#: a tick noticed this late is on time; later than this it is a misfire (the
#: machine slept, the clock jumped) and the trigger's policy decides
ON_TIME_S = 60.0


def _ticks(schedule: Schedule, after: datetime, now: datetime, keep: int) -> list[datetime]:
    """Fire times in (after, now], the newest ``keep`` of them.

    A repeated local wall-clock time (the hour that happens twice when daylight
    saving ends) fires once for a job at fixed hours, as cron does
    (``Schedule.once_a_wall_time``).
    """
    from collections import deque

    newest: deque[datetime] = deque(maxlen=keep)
    step = getattr(schedule.apscheduler_trigger, "interval", None)
    if isinstance(step, timedelta) and step.total_seconds() > 0 and (now - after) > step * keep * 2:
        # a long outage of a short interval: start near the end, the ticks are regular
        after = now - step * (keep + 1)
        after = schedule.next_after(after, after) - step  # back onto the tick grid
    once = schedule.once_a_wall_time
    last_local = _local(after)
    t = schedule.next_after(after, now)
    while t is not None and t <= now:
        local = _local(t)
        if local != last_local or not once:
            newest.append(t)
        last_local = local
        t = schedule.next_after(t, now)
    return list(newest)


def _local(t: datetime) -> datetime:
    """Wall-clock time in the trigger's zone, without the offset."""
    return t.replace(tzinfo=None)


def _by_policy(schedule: Schedule, ticks: list[datetime], now: datetime, *, live: bool) -> list[datetime]:
    if not ticks:
        return []
    if schedule.misfire == "all":
        return ticks
    if schedule.misfire == "latest":
        return ticks[-1:]
    # skip: nothing missed runs; live, a tick noticed on time is not a miss
    return ticks[-1:] if live and (now - ticks[-1]).total_seconds() <= ON_TIME_S else []


def missed_ticks(schedule: Schedule, last: datetime | None, now: datetime) -> list[datetime]:
    """The ticks missed since ``last`` (the schedule's own last fire time) that the trigger's
    policy fires at a start-up at ``now``; none when it never fired.  A tick a backfill ran
    may be among them: ``fire`` leaves it alone."""
    if last is None:
        return []
    zone = getattr(schedule.apscheduler_trigger, "timezone", None)
    if zone is not None:
        last = last.astimezone(zone)
    return _by_policy(schedule, _ticks(schedule, last, now, MAX_CATCH_UP), now, live=False)


def catch_up(log: EventLog, schedule: Schedule, now: datetime) -> list[str]:
    """At start-up: fire the ticks missed since the last recorded one, by the policy (while
    the pipeline is paused, record them skipped instead: its resume fires them)."""
    fired: list[str] = []
    ticks = missed_ticks(schedule, last_fire_time(log, schedule), now)
    pause = ops_queries.pipeline_pauses(log).get(schedule.pipeline) if ticks else None
    for t in ticks:
        run_id = _fire_or_skip(log, schedule, t, pause, catch_up=True)
        if run_id:
            fired.append(run_id)
    schedule.next_fire = schedule.next_after(None, now + timedelta(microseconds=1))
    return fired


def due(log: EventLog, schedules: list[Schedule], now: datetime) -> list[str]:
    """Fire every schedule whose tick has come; return the run ids requested.

    Normally one tick is due.  After a pause (a suspended machine, a clock jump)
    several may be: the trigger's misfire policy picks which run, as at start-up.
    """
    fired = []
    pauses: dict[str, Any] | None = None
    for s in schedules:
        if s.next_fire is None or s.next_fire > now:
            continue
        if pauses is None:  # a paused pipeline's tick is recorded skipped, not fired
            pauses = ops_queries.pipeline_pauses(log)
        first = s.next_fire
        ticks = [first] + _ticks(s, first, now, MAX_CATCH_UP)
        for t in _by_policy(s, ticks[-MAX_CATCH_UP:], now, live=True):
            run_id = _fire_or_skip(log, s, t, pauses.get(s.pipeline), catch_up=t is not ticks[-1])
            if run_id:
                fired.append(run_id)
        nxt = s.next_after(ticks[-1], now + timedelta(microseconds=1))
        while (nxt is not None and s.once_a_wall_time
               and _local(nxt) == _local(ticks[-1])):  # the repeated DST hour
            nxt = s.next_after(nxt, now + timedelta(microseconds=1))
        s.next_fire = nxt
    return fired


def next_wakeup(schedules: list[Schedule], now: datetime) -> float | None:
    times = [s.next_fire for s in schedules if s.next_fire is not None]
    return max(0.0, (min(times) - now).total_seconds()) if times else None

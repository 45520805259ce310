"""Fire times and misfire policies, driven by an explicit clock (no daemon needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from ahgd_daemon import schedules as sched
from state import EventLog

UTC = timezone.utc


def _schedule(**spec):
    base = {"timezone": "UTC", "cron": None, "interval": None, "misfire": "latest", "params": {}, "id": None}
    base.update(spec)
    return sched.build("p", SimpleNamespace(**base))


def _fired(log: EventLog) -> list[str]:
    return [r[0] for r in log.query(
        "SELECT json_extract(payload, '$.fire_time') FROM events WHERE type = 'schedule.fired' ORDER BY seq")]


def test_latest_after_a_long_outage_fires_the_newest_tick(state_dir):
    s = _schedule(interval=timedelta(minutes=1), misfire="latest")
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
        now = datetime(2026, 1, 2, 0, 0, 30, tzinfo=UTC)  # a day later: 1,440 ticks missed
        sched.catch_up(log, s, now)
        assert _fired(log)[-1] == "2026-01-02T00:00:00.000000Z"
        assert len(_fired(log)) == 2
        assert s.next_fire == datetime(2026, 1, 2, 0, 1, tzinfo=UTC)


def test_all_fires_every_missed_tick_up_to_the_limit_newest_kept(state_dir):
    s = _schedule(interval=timedelta(hours=1), misfire="all")
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
        sched.catch_up(log, s, datetime(2026, 1, 1, 5, 30, tzinfo=UTC))
        assert _fired(log)[1:] == [f"2026-01-01T0{h}:00:00.000000Z" for h in range(1, 6)]


def test_skip_fires_no_missed_tick_but_an_on_time_one(state_dir):
    s = _schedule(interval=timedelta(minutes=10), misfire="skip")
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 1, 1, 0, 0, tzinfo=UTC))
        sched.catch_up(log, s, datetime(2026, 1, 1, 1, 5, tzinfo=UTC))
        assert len(_fired(log)) == 1
        assert s.next_fire == datetime(2026, 1, 1, 1, 10, tzinfo=UTC)
        sched.due(log, [s], datetime(2026, 1, 1, 1, 10, 1, tzinfo=UTC))  # on time
        assert _fired(log)[-1] == "2026-01-01T01:10:00.000000Z"
        sched.due(log, [s], datetime(2026, 1, 1, 2, 58, 0, tzinfo=UTC))  # slept through ticks
        assert len(_fired(log)) == 2


def test_a_clock_jump_while_running_fires_one_tick_for_latest(state_dir):
    s = _schedule(interval=timedelta(minutes=1), misfire="latest")
    with EventLog.open(state_dir) as log:
        sched.catch_up(log, s, datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
        sched.due(log, [s], datetime(2026, 1, 1, 2, 0, 30, tzinfo=UTC))
        assert _fired(log) == ["2026-01-01T02:00:00.000000Z"]
        assert s.next_fire == datetime(2026, 1, 1, 2, 1, tzinfo=UTC)


def test_the_repeated_hour_when_daylight_saving_ends_fires_once(state_dir):
    syd = ZoneInfo("Australia/Sydney")
    s = _schedule(cron="30 2 * * *", timezone="Australia/Sydney", misfire="all")
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 4, 4, 2, 30, tzinfo=syd))
        sched.catch_up(log, s, datetime(2026, 4, 6, 12, 0, tzinfo=syd))
        local = [datetime.fromisoformat(t).astimezone(syd).strftime("%d %H:%M") for t in _fired(log)]
        assert local == ["04 02:30", "05 02:30", "06 02:30"]


@pytest.mark.parametrize("spec", [{"cron": "0 * * * *"}, {"interval": timedelta(hours=1)}],
                         ids=["hourly cron", "hourly interval"])
def test_an_hourly_schedule_fires_in_both_hours_when_daylight_saving_ends(state_dir, spec):
    """Cron runs a job over every hour in each real hour (only a job at fixed hours runs once
    in the repeated hour), and an interval is real time: 25 runs that day, not 24."""
    syd = ZoneInfo("Australia/Sydney")
    s = _schedule(timezone="Australia/Sydney", misfire="all", **spec)
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 4, 5, 0, 0, tzinfo=syd))  # the day it ends (AEDT)
        sched.catch_up(log, s, datetime(2026, 4, 6, 0, 0, tzinfo=syd))
        fired = [datetime.fromisoformat(t) for t in _fired(log)]
        assert len(fired) == 1 + 25  # the midnight fired first, then each real hour
        assert [t.strftime("%H:%MZ") for t in fired[2:5]] == ["15:00Z", "16:00Z", "17:00Z"]
        assert [t.astimezone(syd).strftime("%H:%M") for t in fired[2:5]] == \
            ["02:00", "02:00", "03:00"]


def _due_within(log: EventLog, schedules: list, now: datetime, seconds: float = 30) -> None:
    """``sched.due`` on a thread of its own: a schedule that never finds its next tick fails
    the test instead of hanging it."""
    import threading

    loop = threading.Thread(target=sched.due, args=(log, schedules, now), daemon=True)
    loop.start()
    loop.join(seconds)
    assert not loop.is_alive(), "the schedule's next tick was never found"


def test_a_running_daemons_hourly_schedule_fires_in_the_repeated_hour_too(state_dir):
    s = _schedule(cron="0 * * * *", timezone="Australia/Sydney")
    with EventLog.open(state_dir) as log:
        sched.catch_up(log, s, datetime(2026, 4, 4, 14, 30, tzinfo=UTC))
        # (as UTC: an ambiguous local time never equals a time of another zone, PEP 495)
        assert s.next_fire.astimezone(UTC) == datetime(2026, 4, 4, 15, 0, tzinfo=UTC)  # 02:00 AEDT
        _due_within(log, [s], datetime(2026, 4, 4, 15, 0, 1, tzinfo=UTC))
        assert s.next_fire.astimezone(UTC) == datetime(2026, 4, 4, 16, 0, tzinfo=UTC)  # AEST
        _due_within(log, [s], datetime(2026, 4, 4, 16, 0, 1, tzinfo=UTC))
        assert _fired(log) == ["2026-04-04T15:00:00.000000Z", "2026-04-04T16:00:00.000000Z"]

def test_a_daily_schedule_in_the_repeated_hour_fires_once_and_does_not_hang(state_dir):
    """A job at 02:00 Sydney, live as daylight saving ends: APScheduler 3 answers the
    repeated 02:00 (AEST) itself when asked for the time after it, and the daemon's loop
    asked again for ever (its main thread hung at 02:00 that night)."""
    fixed = _schedule(cron="0 2 * * *", timezone="Australia/Sydney", id="fixed")
    with EventLog.open(state_dir) as log:
        sched.catch_up(log, fixed, datetime(2026, 4, 4, 14, 30, tzinfo=UTC))
        _due_within(log, [fixed], datetime(2026, 4, 4, 15, 0, 1, tzinfo=UTC))
        assert fixed.next_fire.astimezone(UTC) == datetime(2026, 4, 5, 16, 0, tzinfo=UTC)  # next day
        assert _fired(log) == ["2026-04-04T15:00:00.000000Z"]


def test_a_backfill_of_an_hourly_schedule_has_both_repeated_hours(state_dir):
    from ahgd_daemon import backfill

    s = _schedule(cron="0 * * * *", timezone="Australia/Sydney")
    with EventLog.open(state_dir) as log:
        planned = backfill.plan(log, s, "2026-04-05T00:00", "2026-04-05T23:59",
                                datetime(2026, 5, 1, tzinfo=UTC))
        assert len(planned.ticks) == 25
    fixed = _schedule(cron="30 2 * * *", timezone="Australia/Sydney")
    with EventLog.open(state_dir) as log:
        planned = backfill.plan(log, fixed, "2026-04-05T00:00", "2026-04-05T23:59",
                                datetime(2026, 5, 1, tzinfo=UTC))
        assert len(planned.ticks) == 1


def test_a_tick_fires_at_most_once_across_restarts(state_dir):
    s = _schedule(interval=timedelta(minutes=5))
    t = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        assert sched.fire(log, s, t) is not None
        assert sched.fire(log, s, t) is None  # the same tick again: already done
        assert len(_fired(log)) == 1

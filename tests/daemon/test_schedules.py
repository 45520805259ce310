"""Fire times and misfire policies, driven by an explicit clock (no daemon needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

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


def test_a_tick_fires_at_most_once_across_restarts(state_dir):
    s = _schedule(interval=timedelta(minutes=5))
    t = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        assert sched.fire(log, s, t) is not None
        assert sched.fire(log, s, t) is None  # the same tick again: already done
        assert len(_fired(log)) == 1

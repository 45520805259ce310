"""A history written before backfills stopped counting as a schedule's own fires (migration
0009): its schedules table held a backfill's last tick as the schedule's last fire, so the
daemon would catch up every tick from there until now.  Opened by today's ahgd, the table is
folded again from the events: what ``ahgd state rebuild`` gives, and ``state check`` agrees."""

from __future__ import annotations

import sqlite3

from state import EventLog, EventType as T, new_event
from tests.state.old_history import write_old_history


def _fire(log: EventLog, trigger: str, tick: str, **extra) -> None:
    run_id = f"sched-p-{trigger}-{tick}"
    log.append_many([new_event(T.SCHEDULE_FIRED, run_id, pipeline="p", trigger=trigger,
                               fire_time=tick, **extra),
                     new_event(T.RUN_REQUESTED, run_id, pipeline="p",
                               trigger="backfill" if extra else "schedule")])


def _history(log: EventLog) -> None:
    _fire(log, "nightly", "2026-12-01T00:00:00Z")                      # its own fire
    _fire(log, "nightly", "2026-12-03T00:00:00Z", backfill="bf-1")    # a backfill's ticks
    _fire(log, "hourly", "2026-12-01T05:00:00Z", backfill="bf-1")     # never fired itself


def test_an_older_history_gets_its_schedules_own_last_fire_back(tmp_path):
    db = tmp_path / "history.db"
    write_old_history(db, 8, _history)
    conn = sqlite3.connect(db)
    with conn:   # as the fold before 0009 left them
        conn.execute("UPDATE schedules SET last_fire_time = '2026-12-03T00:00:00Z', fired = 2, "
                     "last_run_id = 'sched-p-nightly-2026-12-03T00:00:00Z'")
        conn.execute("INSERT INTO schedules VALUES ('p', 'hourly', '2026-12-01T05:00:00Z', 1, "
                     "'sched-p-hourly-2026-12-01T05:00:00Z', '2026-12-07T00:00:00Z')")
    conn.close()
    with EventLog(db) as log:
        rows = log.query("SELECT pipeline, trigger, last_fire_time, fired, last_run_id "
                         "FROM schedules")
        assert [tuple(r) for r in rows] == [
            ("p", "nightly", "2026-12-01T00:00:00Z", 1, "sched-p-nightly-2026-12-01T00:00:00Z")]
        assert log.check().ok

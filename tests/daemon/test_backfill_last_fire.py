"""A backfill is not the schedule's own firing: its runs cover the range asked for and do not
move the schedule's last fire time, from which the ticks missed while the daemon was down
are caught up.  A backfill before a schedule ever fired made a dry run (and a start) "catch
up" every tick from the backfill's end until now.

The rule: a schedule catches up from its own last fire (ticks the daemon fired, live or at a
start-up, or a resume fired), never from a backfill's; a tick a backfill ran already is not
fired again (its run id is the tick's), the ticks around it are caught up as the trigger's
misfire says.
"""

from __future__ import annotations

import json
import subprocess
from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace

from ahgd_daemon import backfill, schedules as sched
from state import EventLog, format_ts

from .harness import Daemon, query, write_config

UTC = timezone.utc


# --------------------------------------------------------------------------- the real CLI


def test_a_backfill_before_the_schedule_ever_fired_leaves_nothing_to_catch_up(tmp_path, ahgd,
                                                                               clean_env):
    master = write_config(tmp_path, extra_triggers=(
        "  - {type: schedule, id: hourly, cron: '0 * * * *', misfire: all}\n"  # (after the
        "          - {type: schedule, id: nightly, cron: '0 2 * * *', misfire: latest}"))  # dedent)
    state = tmp_path / "state"

    def cli(*args: str, config: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([*ahgd, *args, *(["--config", str(master)] if config else []),
                            "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120, env=clean_env)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def ticks() -> list[dict]:
        [p] = json.loads(cli("daemon", "--dry-run", "--json").stdout)["pipelines"]
        return p["ticks"]

    assert ticks() == []  # a fresh state dir: the schedules never fired, nothing missed
    day = (date.today() - timedelta(days=6)).isoformat()
    for trigger in ("hourly", "nightly"):
        planned = json.loads(cli("backfill", "csvpipe", "--from", day, "--to", day,
                                 "--trigger", trigger, "--json").stdout)
        assert planned["requested"], planned
        cli("cancel", planned["backfill"], config=False)

    # the backfill's runs are its own: the schedules still never fired by themselves
    assert ticks() == []
    assert "would fire" not in cli("daemon", "--dry-run").stdout
    assert query(state, "SELECT pipeline, trigger, last_fire_time FROM schedules") == []
    backfilled = query(state, "SELECT COUNT(*) FROM events WHERE type = 'schedule.fired'")[0][0]
    assert backfilled == 25  # 24 hourly ticks and one nightly

    # a real start (--once takes missed ticks): no catch-up run, for `latest` or `all`
    d = Daemon(master, state, once=True)
    assert d.wait(timeout=120) == 0, d.output()
    assert query(state, "SELECT run_id FROM events WHERE type = 'schedule.fired' AND "
                        "json_extract(payload, '$.backfill') IS NULL") == []
    assert query(state, "SELECT COUNT(*) FROM runs WHERE trigger = 'schedule'") == [(0,)]
    check = subprocess.run([*ahgd, "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120, env=clean_env)
    assert check.returncode == 0, (check.stdout, check.stderr)


# --------------------------------------------------------------------------- in process


def _hourly(misfire: str):
    return sched.build("p", SimpleNamespace(timezone="UTC", cron="0 * * * *", interval=None,
                                            misfire=misfire, params={}, id="hourly"))


def _fires(log: EventLog) -> list[tuple[str, str | None]]:
    """(fire time, backfill id or None) of every schedule.fired, in order."""
    return [(r[0], r[1]) for r in log.query(
        "SELECT json_extract(payload, '$.fire_time'), json_extract(payload, '$.backfill') "
        "FROM events WHERE type = 'schedule.fired' ORDER BY seq")]


def _backfill(log: EventLog, s, start: str, end: str, now: datetime) -> list[str]:
    return backfill.request(log, s, backfill.plan(log, s, start, end, now))


def test_a_backfill_after_the_last_fire_is_not_fired_again_the_rest_is_caught_up(state_dir):
    """Last fired Dec 1 00:00, the daemon down, Dec 2-3 backfilled by hand, a restart on Dec 5
    (misfire: all): every tick from Dec 1 01:00 on runs once; the backfilled ones are not
    fired again, the ones before and after the range are caught up."""
    s = _hourly("all")
    now = datetime(2026, 12, 5, 0, 30, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 12, 1, tzinfo=UTC))
        assert len(_backfill(log, s, "2026-12-02", "2026-12-03", now)) == 48
        assert sched.last_fire_time(log, s) == datetime(2026, 12, 1, tzinfo=UTC)
        assert sched.missed_ticks(s, sched.last_fire_time(log, s), now)[0] == \
            datetime(2026, 12, 1, 1, tzinfo=UTC)

        caught = sched.catch_up(log, s, now)
        assert len(caught) == 23 + 24 + 1  # Dec 1 01-23h, Dec 4, Dec 5 00h
        fires = _fires(log)
        times = [t for t, _ in fires]
        assert len(times) == len(set(times)) == 1 + 48 + 48  # each tick once
        assert sorted(times) == [format_ts(datetime(2026, 12, 1, tzinfo=UTC)
                                                 + timedelta(hours=h)) for h in range(97)]
        assert all(b is not None for t, b in fires if "2026-12-02" <= t < "2026-12-04")
        assert sched.last_fire_time(log, s) == datetime(2026, 12, 5, tzinfo=UTC)
        assert log.check().ok


def test_latest_after_a_backfill_up_to_now_fires_nothing_more(state_dir):
    s = _hourly("latest")
    now = datetime(2026, 12, 3, 23, 30, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        sched.fire(log, s, datetime(2026, 12, 1, tzinfo=UTC))
        _backfill(log, s, "2026-12-02", "2026-12-03", now)
        assert sched.catch_up(log, s, now) == []  # the latest tick, 23:00, ran as backfilled
        assert sched.last_fire_time(log, s) == datetime(2026, 12, 1, tzinfo=UTC)


def test_a_backfill_leaves_the_schedules_projection_as_a_rebuild_folds_it(state_dir):
    s = _hourly("all")
    now = datetime(2026, 12, 5, tzinfo=UTC)
    with EventLog.open(state_dir) as log:
        _backfill(log, s, "2026-12-01", "2026-12-01", now)  # before it ever fired
        assert sched.last_fire_time(log, s) is None
        assert sched.catch_up(log, s, now) == []
        sched.fire(log, s, datetime(2026, 12, 2, 5, tzinfo=UTC))
        _backfill(log, s, "2026-12-03", "2026-12-03", now)  # after its last fire
        rows = log.query("SELECT * FROM schedules")
        assert [r[2:4] for r in rows] == [("2026-12-02T05:00:00.000000Z", 1)]
        assert log.check().ok
        log.rebuild()
        assert log.query("SELECT * FROM schedules") == rows

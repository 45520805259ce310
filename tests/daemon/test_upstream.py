"""Upstream triggers after a restart: no run is lost, none is repeated."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ahgd_daemon.demo import MASTER
from state import EventLog, EventType as T, new_event

from .harness import Daemon, query


def _completed_run(log: EventLog, run_id: str, pipeline: str) -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="manual"))
    log.append(new_event(T.RUN_STARTED, run_id, stages=[]))
    log.append(new_event(T.RUN_COMPLETED, run_id))


class Clock:
    """Hands out the timestamps a test scripts, one call at a time."""

    def __init__(self) -> None:
        self.t = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def test_a_profile_run_that_absorbed_both_upstreams_is_not_repeated(tmp_path):
    state = tmp_path / "state"
    with EventLog.open(state, clock=Clock()) as log:
        _completed_run(log, "seifa-1", "seifa_sa2")
        # the profile was requested when seifa finished, waited for mortality, then ran
        log.append(new_event(T.RUN_REQUESTED, "profile-1", pipeline="sa2_health_profile",
                             trigger="upstream"))
        _completed_run(log, "mort-1", "mortality_regions")
        log.append(new_event(T.RUN_STARTED, "profile-1", stages=[]))
        log.append(new_event(T.RUN_COMPLETED, "profile-1"))
    d = Daemon(MASTER, state, once=True)
    assert d.wait(timeout=120) == 0, d.output()
    assert query(state, "SELECT COUNT(*) FROM runs WHERE pipeline = 'sa2_health_profile'") == [(1,)]


def test_an_upstream_completion_the_daemon_missed_requests_the_downstream_run(tmp_path):
    state = tmp_path / "state"
    with EventLog.open(state, clock=Clock()) as log:
        _completed_run(log, "seifa-1", "seifa_sa2")  # and the daemon died before reacting
    d = Daemon(MASTER, state, once=True)
    d.wait(timeout=300)
    rows = query(state, "SELECT trigger, json_extract(params, '$.upstream_run') FROM runs "
                        "WHERE pipeline = 'sa2_health_profile'")
    assert rows == [("upstream", "seifa-1")]

"""Runs whose owner is gone (state/orphans.py, issue 13 item 6), on real logs and real locks."""

from __future__ import annotations

import json

import pytest

from state import EventLog, EventType as T, RunState, new_event
from state import queries as q
from state.locks import FileLock, run_lock_path
from state.orphans import close, owners_gone, recover


@pytest.fixture
def log(state_dir):
    with EventLog.open(state_dir) as log:
        yield log


def started(log, run_id: str, pipeline: str = "p", pid: int = 4242) -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="script"))
    log.append(new_event(T.RUN_STARTED, run_id, stages=["a", "b"],
                         owner={"pid": pid, "host": "etl1"}))
    log.append(new_event(T.STAGE_STARTED, run_id, stage="a", attempt=1))


def test_running_run_owners_come_from_the_latest_run_started(log):
    started(log, "r1")
    started(log, "r2", pipeline="other", pid=7)
    log.append(new_event(T.RUN_REQUESTED, "pending", pipeline="p", trigger="script"))
    owners = {r: (p, json.loads(o)) for r, p, o in q.running_run_owners(log)}
    assert owners == {"r1": ("p", {"pid": 4242, "host": "etl1"}),
                      "r2": ("other", {"pid": 7, "host": "etl1"})}
    assert [r for r, _, _ in q.running_run_owners(log, pipeline="other")] == ["r2"]


def test_a_run_whose_lock_is_held_has_its_owner_and_one_whose_lock_is_free_has_not(log, state_dir):
    started(log, "alive")
    started(log, "dead", pid=99)
    with FileLock(run_lock_path(state_dir, "alive"), {"role": "run"}, remove_on_release=True):
        gone = owners_gone(log, state_dir)
        assert list(gone) == ["dead"]
        assert gone["dead"].describe() == "owner gone: pid 99 on host etl1"
        assert recover(log, state_dir, "alive") is None  # a live owner: nothing recorded
        assert close(log, state_dir, "alive", closed_by="a test") is None
    assert log.run("alive").state == RunState.RUNNING


def test_recover_makes_it_pending_and_close_makes_it_failed(log, state_dir):
    started(log, "a")
    started(log, "b")
    recovered = recover(log, state_dir, "a", max_recoveries=3)
    assert (recovered.interrupted, recovered.parked, recovered.recoveries) == (["a"], False, 1)
    assert log.run("a").state == RunState.PENDING
    owner = close(log, state_dir, "b", closed_by="the next run")
    run = log.run("b")
    assert (run.state, run.failed_stage) == (RunState.FAILED, "a")
    assert run.error.startswith("interrupted: the process running it stopped (owner gone: "
                                "pid 4242 on host etl1")
    assert "`ahgd retry b` resumes it" in run.error and owner.pid == 4242
    assert owners_gone(log, state_dir) == {}
    assert recover(log, state_dir, "b") is None  # ended: nothing to do

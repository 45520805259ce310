"""``stage.invalidated`` and ``warehouse.lost`` in the state machine and the real log."""

from __future__ import annotations

import pytest

from state import EventLog, EventType as T, IllegalTransition, new_event
from state.warehouse import lost_event


def started_run(log: EventLog, run_id: str = "r1") -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", stages=["a", "b"]))
    log.append(new_event(T.RUN_STARTED, run_id))


def test_a_completed_attempt_is_invalidated_and_the_next_attempt_follows(state_dir):
    with EventLog.open(state_dir) as log:
        started_run(log)
        log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=1))
        with pytest.raises(IllegalTransition, match="stage.invalidated is only allowed from: COMPLETED"):
            log.append(new_event(T.STAGE_INVALIDATED, "r1", stage="a", attempt=1, error="x"))
        log.append(new_event(T.STAGE_COMPLETED, "r1", stage="a", attempt=1, rows=5, wall_s=0.25,
                             output={"kind": "tables", "path": "data/r1/a-a1.duckdb"}))
        done = log.run("r1").attempts["a"]
        log.append(new_event(T.STAGE_INVALIDATED, "r1", stage="a", attempt=1, rows=5, wall_s=0.25,
                             error="the output of stage 'a' of run r1 is gone: /x does not exist",
                             output={"kind": "tables", "path": "data/r1/a-a1.duckdb"}))
        bad = log.run("r1").attempts["a"]
        assert (bad.state, bad.attempt, bad.started_at, bad.ended_at) == (
            "INVALIDATED", 1, done.started_at, done.ended_at)  # it ran then
        assert bad.error.endswith("/x does not exist") and bad.rows == 5
        with pytest.raises(IllegalTransition, match="expected attempt 2"):
            log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=1))
        with pytest.raises(IllegalTransition, match="cannot complete: stages a, b"):
            log.append(new_event(T.RUN_COMPLETED, "r1"))  # an invalidated stage is not done
        log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=2))
        rows = log.query("SELECT attempt, state, rows, output IS NOT NULL FROM stage_runs "
                         "WHERE stage = 'a' ORDER BY attempt")
        assert [tuple(r) for r in rows] == [(1, "INVALIDATED", 5, 1), (2, "RUNNING", None, 0)]
        assert log.check().ok, log.check().differences


def test_a_reused_output_is_invalidated_and_run_as_attempt_one(state_dir):
    with EventLog.open(state_dir) as log:
        started_run(log)
        log.append(new_event(T.STAGE_REUSED, "r1", stage="a", attempt=0, from_run="r0",
                             output={"kind": "tables", "path": "data/r0/a-a1.duckdb"}))
        log.append(new_event(T.STAGE_INVALIDATED, "r1", stage="a", attempt=0, from_run="r0",
                             error="altered"))
        log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=1))
        assert log.run("r1").attempts["a"].attempt == 1
        assert log.check().ok


def test_warehouse_lost_raises_its_alert_once_until_resolved(state_dir):
    with EventLog.open(state_dir) as log:
        lost = lost_event("warehouse.duckdb", "gone", {"id": "w1"}, {"exists": False}, "a test")
        log.append(lost)
        log.append(lost)  # seen again: the same alert, not a second one
        rows = lambda: [tuple(r) for r in log.query(  # noqa: E731
            "SELECT alert_id, name, severity, state, times_raised, run_id FROM alerts")]
        assert rows() == [("warehouse.lost:warehouse.duckdb", "warehouse.lost", "error",
                           "FIRING", 1, None)]
        with pytest.raises(IllegalTransition):  # an alert.raised for it now: refused, as ever
            log.append(new_event(T.ALERT_RAISED, alert_id="warehouse.lost:warehouse.duckdb",
                                 name="warehouse.lost", severity="error", message="again"))
        log.append(new_event(T.ALERT_RESOLVED, alert_id="warehouse.lost:warehouse.duckdb",
                             reason="rebuilt"))
        log.append(lost)
        assert rows()[0][3:5] == ("FIRING", 2)
        with pytest.raises(IllegalTransition, match="needs 'alert_id'"):
            log.append(new_event(T.WAREHOUSE_LOST, message="no id"))
        assert log.check().ok
        assert log.rebuild() == 4
        assert rows()[0][3:5] == ("FIRING", 2)

"""An attempt stopped in its worker (``ahgd cancel``, or a stopping daemon's grace running out)
records the wall time it ran, as every other outcome does: it recorded ``wall_s: 0.0``
whatever it had run, so stage_timings and the stage duration histogram lost that time.

A real pool of worker processes and a real event log (SQLite in tmp_path)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipelines.execution.pool import ProcessExecutor
from state import EventLog
from tests.pipelines.sample_pipelines import SleepyPipeline

RAN_S = 1.5   # how long the attempt runs in its worker before it is stopped


@pytest.fixture()
def executor():
    ex = ProcessExecutor(1)
    try:
        yield ex
    finally:
        ex.shutdown()


def _wait_for_stage_start(state_dir, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state_dir / "trace" / "executions.jsonl").exists():   # its code is running
            return
        time.sleep(0.02)
    raise AssertionError("the stage did not start")


def _interrupted(state_dir) -> dict:
    with EventLog.open(state_dir) as log:
        [(payload,)] = log.query("SELECT payload FROM events WHERE type = 'stage.interrupted'")
        [(wall_s,)] = log.query("SELECT wall_s FROM stage_runs WHERE state = 'INTERRUPTED'")
        [(run_state,)] = log.query("SELECT state FROM runs")
    event = json.loads(payload)
    assert event["wall_s"] == wall_s     # as the event says, stage_timings says
    return {**event, "run_state": run_state}


def test_a_cancelled_attempt_records_the_time_it_ran(tmp_path, executor):
    state_dir = tmp_path / "state"
    pipeline = SleepyPipeline(state_dir=state_dir, seconds=60, max_retries=0)
    done = threading.Thread(target=lambda: pipeline.run(executor=executor), daemon=True)
    done.start()
    _wait_for_stage_start(state_dir)
    time.sleep(RAN_S)
    pipeline.cancel("cancelled with `ahgd cancel`")
    done.join(60)
    assert not done.is_alive()
    row = _interrupted(state_dir)
    assert row["run_state"] == "CANCELLED"
    assert row["error"] == "cancelled with `ahgd cancel`"
    assert RAN_S <= row["wall_s"] < 30, row
    assert row["worker_pid"] is not None


def test_an_attempt_stopped_when_the_grace_runs_out_records_the_time_it_ran(tmp_path, executor):
    state_dir = tmp_path / "state"
    pipeline = SleepyPipeline(state_dir=state_dir, seconds=60, max_retries=0)
    stop = threading.Event()
    result: dict = {}

    def run() -> None:
        from state import EventType as T
        from state.events import new_event
        from pipelines.base import new_run_id

        with EventLog.open(state_dir) as log:
            run_id = new_run_id(pipeline.name)
            log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline.name,
                                 trigger="manual", params={}, stages=["nap"]))
        result["ctx"] = pipeline.execute_run(run_id, executor=executor, stop=stop,
                                             grace_deadline=lambda: grace)

    grace = None
    done = threading.Thread(target=run, daemon=True)
    done.start()
    _wait_for_stage_start(state_dir)
    time.sleep(RAN_S)
    grace = time.monotonic()           # SIGTERM with a grace that is over at once
    stop.set()
    done.join(60)
    assert not done.is_alive()
    row = _interrupted(state_dir)
    assert row["run_state"] == "PENDING"            # suspended: it resumes at the next start
    assert row["error"] == "the daemon is shutting down"
    assert RAN_S <= row["wall_s"] < 30, row

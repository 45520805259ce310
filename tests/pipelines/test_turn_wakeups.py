"""A run whose last stage waits for its turn (an earlier run of its pipeline still loading)
sleeps until a run of that pipeline ends, not woken by every worker slot another
pipeline's stages release (issue 18 item 2: ~11 engine loop passes a run where ~5 were
needed in a burst)."""

from __future__ import annotations

import threading
import time

from pipelines import BasePipeline, PipelineContext
from pipelines.execution import engine, turns
from pipelines.execution.executors import InProcessExecutor
from state import EventLog, new_event
from state import EventType as T
from tests.pipelines.turn_kit import count_looks

GATE = threading.Event()


class Loads(BasePipeline):
    def define_stages(self):
        return ["extract", "transform", "validate", "load"]

    def execute_stage(self, stage_name: str, context: PipelineContext):
        if stage_name == "load" and context.run_id == "a":
            assert GATE.wait(60), "the test never opened the gate"
        return {"stage": stage_name}


class Many(BasePipeline):
    def define_stages(self):
        return ["only"]

    def execute_stage(self, stage_name: str, context: PipelineContext):
        return {"stage": stage_name}


def test_a_run_waiting_for_its_turn_sleeps_through_other_pipelines_slots(tmp_path, monkeypatch):
    # a long poll: whatever wakes the waiting run is a signal, not the poll
    monkeypatch.setattr(engine, "POLL_S", 30.0)
    looks = count_looks(monkeypatch)
    GATE.clear()
    log = EventLog.open(tmp_path)
    executor = InProcessExecutor(max_workers=2)
    loads, many = Loads("loads", state_dir=tmp_path), Many("many", state_dir=tmp_path)
    others = [f"c{i:02d}" for i in range(30)]
    for run_id, name in [("a", "loads"), ("b", "loads")] + [(c, "many") for c in others]:
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=name, trigger="manual"))
    results: dict[str, object] = {}

    def execute(pipeline, run_id):
        results[run_id] = pipeline.execute_run(run_id, log=log, executor=executor)

    threads = {r: threading.Thread(target=execute, args=(loads, r), daemon=True) for r in "ab"}
    for run_id in threads:  # taken on in request order, as the daemon does
        turns.taken_on(run_id, "loads")
    try:
        threads["a"].start()
        threads["b"].start()
        deadline = time.monotonic() + 60
        while looks.get("b", 0) < 1 and time.monotonic() < deadline:  # b waits for a's load
            time.sleep(0.01)
        assert looks.get("b", 0) >= 1, "run b never reached its load"
        before = looks["b"]
        for run_id in others:  # 30 runs of another pipeline: 30 slots released while b waits
            execute(many, run_id)
            assert results[run_id].state == "COMPLETED"
        during = looks["b"] - before
    finally:
        GATE.set()
        for t in threads.values():
            t.join(60)
        executor.shutdown()
    assert results["a"].state == "COMPLETED" and results["b"].state == "COMPLETED"
    # a's load ended before b's began (the turn), and b looked again only when a ended
    events = [(e.run_id, e.type, e.stage) for e in log.events()]
    assert events.index(("a", "stage.completed", "load")) < events.index(("b", "stage.started", "load"))
    assert during <= 2, f"run b looked for its turn {during} times while another pipeline ran"
    assert looks["b"] <= before + 3
    log.close()

"""Worker slots go to the waiting run that started first (Executor.try_reserve with a rank).

In a burst, whichever run thread woke first took a freed slot; the oldest runs
fell behind newer ones, and each newer run's load then waited for its turn
(loads land in request order), gave its slot up and took another later: in
400 runs, 309 loads waited for their turn, 188 with slots handed out oldest first.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from pipelines import BasePipeline
from pipelines.execution.executors import InProcessExecutor
from pipelines.resources import ResourceBudget
from state import EventLog, RunState

from .test_budget_handover import Chain


def _executor(slots: int) -> InProcessExecutor:
    return InProcessExecutor(slots)


def test_a_freed_slot_goes_to_the_earliest_waiting_run():
    ex = _executor(1)
    try:
        assert ex.try_reserve(5)               # run 5 works
        assert not ex.try_reserve(7)           # runs 7 and 6 wait, 7 asked first
        assert not ex.try_reserve(6)
        ex.release()
        assert not ex.try_reserve(7)           # 6 started before 7: the slot is 6's
        assert ex.try_reserve(6)
        assert not ex.try_reserve(7)           # taken
        ex.release()
        assert ex.try_reserve(7)               # nobody before 7 waits any more
        ex.release()
        assert ex.try_reserve()                # without a rank, as before: any free slot
    finally:
        ex.shutdown()


def test_a_run_that_stops_waiting_lets_later_runs_through():
    ex = _executor(1)
    try:
        assert ex.try_reserve(1)
        assert not ex.try_reserve(2)
        ex.release()
        ex.withdraw(2)                         # run 2 now waits for its turn, not a slot
        assert ex.try_reserve(3)
        ex.release()

        # a waiting run whose thread ended without withdrawing holds no one up
        gone = threading.Thread(target=lambda: ex.try_reserve(0) or ex.try_reserve(0))
        assert ex.try_reserve(9)
        gone.start()
        gone.join(10)
        ex.release()
        assert ex.try_reserve(10)
    finally:
        ex.shutdown()


def test_runs_sharing_one_slot_each_finish_and_give_their_place_back(state_dir):
    """Three runs on one in-process slot at once: all complete (no run waits for ever behind a
    rank that stopped waiting), and no rank is left queued."""
    ex = _executor(1)
    results = {}
    try:
        def go(name: str) -> None:
            pipeline = Chain(name, state_dir=state_dir)
            try:
                results[name] = pipeline.run(executor=ex)
            finally:
                pipeline.close()

        threads = [threading.Thread(target=go, args=(f"p{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {n: r.state for n, r in results.items()} == {
            "p0": RunState.COMPLETED, "p1": RunState.COMPLETED, "p2": RunState.COMPLETED}
        assert ex._queued == {}
        assert ex.in_use() == 0
    finally:
        ex.shutdown()


class Spread(BasePipeline):
    """Three independent stages: ``slow`` sleeps (or waits, at most 60 s, until ``go`` is
    set), ``bad`` fails for good, ``more`` is quick."""

    def __init__(self, name: str, nap: float = 0.0, go: threading.Event | None = None,
                 **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, parallel_stages=True, max_workers=3, **kw)
        self.nap = nap
        self.go = go

    def define_stages(self) -> list[str]:
        return ["slow", "bad", "more"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return set()

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "slow":
            if self.go is not None:
                self.go.wait(60)
            else:
                time.sleep(self.nap)
        if stage_name == "bad":
            raise RuntimeError("bad breaks")
        return {"stage": stage_name}


def _failed_yet(state_dir) -> bool:
    """Whether a stage.failed is in the log, read by a plain read-only connection (opening
    the EventLog itself while a run writes can wait on the write lock)."""
    path = state_dir / "history.db"
    if not path.exists():
        return False
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return bool(con.execute("SELECT 1 FROM events WHERE type = 'stage.failed'").fetchall())
    except sqlite3.OperationalError:   # the schema not made yet
        return False
    finally:
        con.close()


def test_a_failed_run_still_finishing_a_stage_keeps_no_place_in_line(state_dir):
    """A run turned away while its other stages ran, that then failed, waited on its last
    stage holding its place: a later run could not take the slot the failure freed."""
    ex = _executor(2)
    # first's `slow` goes on until later's run is over, not for a fixed 3 s that a loaded host
    # could use up before later started; were first still in line, later would wait for its
    # slot until `slow` gave up waiting (60 s) and then start its `slow` after first's ended
    go = threading.Event()
    first = Spread("first", go=go, state_dir=state_dir)
    later = Spread("later", state_dir=state_dir)
    results: dict[str, Any] = {}
    try:
        worker = threading.Thread(target=lambda: results.setdefault("first", first.run(executor=ex)))
        worker.start()
        deadline = time.monotonic() + 20
        while not (failed := _failed_yet(state_dir)) and time.monotonic() < deadline:
            time.sleep(0.02)   # until `bad` failed (slow still waits)
        assert failed, "first's `bad` did not fail within 20 s"
        results["later"] = later.run(executor=ex)   # runs its stages while `slow` waits on
        go.set()
        worker.join(30)
    finally:
        go.set()
        ex.shutdown()
        first.close()
        later.close()
    assert results["first"].state == RunState.FAILED
    assert results["later"].state == RunState.FAILED   # its own `bad`
    with EventLog.open(state_dir) as log:
        order = [tuple(r) for r in log.query(
            "SELECT e.type, r.pipeline, e.stage FROM events e JOIN runs r USING (run_id) "
            "WHERE e.type IN ('stage.started', 'stage.completed') ORDER BY e.seq")]
    later_started = order.index(("stage.started", "later", "slow"))
    slow_done = order.index(("stage.completed", "first", "slow"))
    assert later_started < slow_done, order
    assert ex._queued == {}


def test_a_stage_retried_at_once_keeps_its_budget_share(state_dir):
    """The same stage again right after it failed (no retry delay) took the share its failed
    attempt still held as its own and then gave it back: it ran uncharged."""
    budget = ResourceBudget({"cpu": 1, "memory": 1000})
    seen: list[float] = []
    run = Retried(budget, seen, state_dir=state_dir, executor="inprocess").run(budget=budget)
    assert run.state == RunState.COMPLETED, run.error
    assert seen == [1.0, 1.0]   # charged during both attempts
    assert budget.used() == {"cpu": 0.0, "memory": 0.0}


class Retried(BasePipeline):
    """One stage failing its first attempt, retried at once; it notes the budget's use."""

    def __init__(self, budget: Any, seen: list, **kw: Any):
        # parallel stages: the attempt runs on a pool thread while the engine goes on
        super().__init__("retried", max_retries=1, retry_delay=0, parallel_stages=True, **kw)
        self.budget, self.seen = budget, seen

    def define_stages(self) -> list[str]:
        return ["only"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        time.sleep(0.3)   # long after the engine gave back what finished attempts held
        self.seen.append(self.budget.used()["cpu"])
        if len(self.seen) == 1:
            raise ConnectionError("a blip: retried")
        return {"ok": True}


class HalfStuck(BasePipeline):
    """``quick`` and ``slow`` side by side; ``slow`` waits through any cancel until ``go`` is
    set (at most 60 s)."""

    def __init__(self, go: threading.Event, **kw: Any):
        super().__init__("half_stuck", max_retries=0, parallel_stages=True, max_workers=2, **kw)
        self.go = go

    def define_stages(self) -> list[str]:
        return ["quick", "slow"]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        return set()

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "slow":
            self.go.wait(60)
        return {"stage": stage_name}


def test_an_attempt_outliving_a_failed_log_gives_its_slot_back_when_it_ends(state_dir, monkeypatch):
    """The event log fails while an in-process attempt runs that will not stop: the run gives up
    waiting for it, and its slot and budget share come back once it ends (they were kept for
    the life of the process)."""
    from pipelines.execution import engine
    from state.errors import EventLogError

    monkeypatch.setattr(engine, "ABANDON_WAIT_S", 0.2)
    real = EventLog.append_many

    def failing(self, events, **kw):
        events = list(events)
        if any(e.type == "stage.completed" and e.stage == "quick" for e in events):
            raise EventLogError("the disk went away (test)")
        return real(self, events, **kw)

    monkeypatch.setattr(EventLog, "append_many", failing)
    ex = _executor(2)
    budget = ResourceBudget({"cpu": 2, "memory": 1000})
    # `slow` ends when the test says so, not after a fixed 1.5 s that a loaded host could use
    # up before the run gave up on it
    go = threading.Event()
    pipeline = HalfStuck(go, state_dir=state_dir)
    try:
        try:
            pipeline.run(executor=ex, budget=budget)
        except EventLogError:
            pass   # the engine stops the run on the log's error; how it is reported is not this test's
        assert ex.in_use() == 1   # `slow` still waits, past the wait
        go.set()
        deadline = time.monotonic() + 10
        while ex.in_use() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.in_use() == 0
        assert budget.used() == {"cpu": 0.0, "memory": 0.0}
    finally:
        go.set()
        ex.shutdown()
        pipeline.close()

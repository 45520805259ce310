"""Worker slots go to the waiting run that started first (Executor.try_reserve with a rank).

In a burst, whichever run thread woke first took a freed slot; the oldest runs
fell behind newer ones, and each newer run's load then waited for its turn
(loads land in request order), gave its slot up and took another later: in
400 runs, 309 loads waited for their turn, 188 with slots handed out oldest first.
"""

from __future__ import annotations

import threading

from pipelines.execution.executors import InProcessExecutor
from state import RunState

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

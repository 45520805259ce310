"""A finished stage's resource share passes straight to its successor, as its worker slot does.

With a budget as big as the worker pool (the daemon's default: one core a stage,
as many cores as the machine has), the successor of a finished stage never fit
while the other workers were busy: the finished stage still held its share
until its end was committed.  The run gave its worker slot up, and the worker
waited for another run to take it (a burst of small files: a worker idle ~40 %).
"""

from __future__ import annotations

import threading
from typing import Any

from pipelines import BasePipeline
from pipelines.execution.pool import ProcessExecutor
from pipelines.resources import ResourceBudget
from state import EventLog, RunState


class Chain(BasePipeline):
    """Three stages in a line, each returning a small value."""

    def __init__(self, name: str = "chain", **kw: Any):
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)

    def define_stages(self) -> list[str]:
        return ["a", "b", "c"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"stage": stage_name}


class CountingBudget(ResourceBudget):
    """A real budget that remembers who it turned away."""

    def __init__(self, limits: dict[str, float]):
        super().__init__(limits)
        self.refused: list[Any] = []

    def try_acquire(self, holder: Any, requirements: Any) -> bool:
        ok = super().try_acquire(holder, requirements)
        if not ok:
            self.refused.append(holder)
        return ok


def test_try_pass_moves_a_share_no_third_party_can_take_between():
    budget = ResourceBudget({"cpu": 2, "memory": 100})
    assert budget.try_acquire("a1", {"cpu": 1})
    assert budget.try_acquire("b1", {"cpu": 1})
    assert budget.try_pass("a1", "a2", {"cpu": 1, "memory": 40})
    assert budget.used() == {"cpu": 2.0, "memory": 40.0}
    assert not budget.try_acquire("c1", {"cpu": 1})  # a1's core went to a2, not to c1
    budget.release("a1")  # gone already: nothing changes
    assert budget.used() == {"cpu": 2.0, "memory": 40.0}
    budget.release("a2")
    assert budget.used() == {"cpu": 1.0, "memory": 0.0}


def test_try_pass_refuses_what_does_not_fit_and_the_holder_keeps_its_share():
    budget = ResourceBudget({"cpu": 2, "memory": 100})
    assert budget.try_acquire("a1", {"cpu": 1})
    assert budget.try_acquire("b1", {"cpu": 1})
    assert not budget.try_pass("a1", "a2", {"cpu": 2})
    assert not budget.try_pass("nobody", "a2", {"cpu": 1})
    assert not budget.try_pass("a1", "b1", {"cpu": 1})  # b1 holds a share of its own
    assert budget.used() == {"cpu": 2.0, "memory": 0.0}
    budget.release("a1")
    assert budget.used() == {"cpu": 1.0, "memory": 0.0}
    # alone on the budget, a successor starts whatever it asks (as try_acquire on an idle one)
    budget.release("b1")
    assert budget.try_acquire("x1", {"cpu": 1})
    assert budget.try_pass("x1", "x2", {"cpu": 5})


def test_a_run_alone_on_a_one_core_budget_is_never_turned_away(state_dir):
    budget = CountingBudget({"cpu": 1, "memory": 1000})
    run = Chain(state_dir=state_dir, executor="inprocess").run(budget=budget)
    assert run.state == RunState.COMPLETED, run.error
    assert run.get_output("c") == {"stage": "c"}
    assert budget.refused == []  # b and c took the share a and b left, without waiting
    assert budget.used() == {"cpu": 0.0, "memory": 0.0}


def test_runs_sharing_a_budget_never_overlap_beyond_it(state_dir):
    """Two runs through two workers on a one-core budget: the log never shows two attempts
    between started and ended at once, handover or not."""
    budget = ResourceBudget({"cpu": 1, "memory": 1000})
    executor = ProcessExecutor(2)
    results: dict[str, Any] = {}
    try:
        def go(name: str) -> None:
            pipeline = Chain(name, state_dir=state_dir)
            try:
                results[name] = pipeline.run(executor=executor, budget=budget)
            finally:
                pipeline.close()

        threads = [threading.Thread(target=go, args=(n,)) for n in ("left", "right")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        executor.shutdown()
    assert {n: r.state for n, r in results.items()} == {"left": RunState.COMPLETED,
                                                       "right": RunState.COMPLETED}
    with EventLog.open(state_dir) as log:
        events = [tuple(r) for r in log.query(
            "SELECT type, run_id, stage FROM events WHERE type IN "
            "('stage.started', 'stage.completed') ORDER BY seq")]
    running, most = set(), 0
    for kind, run_id, stage in events:
        if kind == "stage.started":
            running.add((run_id, stage))
        else:
            running.discard((run_id, stage))
        most = max(most, len(running))
    assert len(events) == 12 and most == 1, events
    assert budget.used() == {"cpu": 0.0, "memory": 0.0}

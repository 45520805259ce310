"""What the load-turn tests share: a count of each run's looks for its turn, and a
four-stage pipeline whose run ``a`` waits for ``begin`` before its execution begins (a
thread slow to begin)."""

from __future__ import annotations

import threading

from pipelines import BasePipeline, PipelineContext
from pipelines.execution import turns


def count_looks(monkeypatch) -> dict[str, int]:
    """run id -> how many times its execution has asked whether its load may start."""
    looks: dict[str, int] = {}
    mine = turns.LoadTurn.mine

    def counted(self):
        looks[self.run_id] = looks.get(self.run_id, 0) + 1
        return mine(self)

    monkeypatch.setattr(turns.LoadTurn, "mine", counted)
    return looks


class HeldFirst(BasePipeline):
    """Four stages; the execution of run ``a`` waits for ``begin`` before it begins."""

    begin = threading.Event()

    def define_stages(self):
        return ["extract", "transform", "validate", "load"]

    def execute_stage(self, stage_name: str, context: PipelineContext):
        return {"stage": stage_name}

    def execute_run(self, run_id: str, **kw):
        if run_id == "a":
            assert self.begin.wait(60), "the test never let run a begin"
        return super().execute_run(run_id, **kw)

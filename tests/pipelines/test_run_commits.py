"""What one in-process run costs the event log (issue 18, 3a): one commit per stage, the
last stage's completion committed with the run's, and each stage's config built once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import BasePipeline, StageConfig
from state import EventLog


class Chain(BasePipeline):
    built: list[str]

    def define_stages(self) -> list[str]:
        return ["a", "b", "c"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"stage": stage_name}

    def _stage_config(self, stage: str) -> StageConfig:
        self.built.append(stage)
        return super()._stage_config(stage)


def test_a_run_commits_once_per_stage_and_builds_each_config_once(state_dir: Path):
    pipeline = Chain("chain", state_dir=state_dir, executor="inprocess", max_retries=0)
    pipeline.built = []
    try:
        ctx = pipeline.run()
        appends = pipeline._log.append_timings.count  # type: ignore[union-attr]
    finally:
        pipeline.close()
    assert ctx.state == "COMPLETED", ctx.error
    assert sorted(pipeline.built) == ["a", "b", "c"]  # checks and run share one config each
    with EventLog.open(state_dir) as log:
        events = log.events(run_id=ctx.run_id)
        assert log.check().ok
    assert [e.type for e in events[-2:]] == ["stage.completed", "run.completed"]
    assert events[-2].ts == events[-1].ts  # one transaction: one fsync, not two
    # requested, started, one per stage (its start with the previous completion), the end
    assert appends == 2 + 3 + 1

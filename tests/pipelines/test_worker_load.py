"""A worker that failed to load a pipeline still serves it, and others, afterwards (issue 13)."""

from __future__ import annotations

from pipelines.execution.pool import ProcessExecutor
from state import RunState

from .load_once_pipelines import LoadsOnlyWithoutMarker


def test_a_worker_loads_again_after_a_pipeline_failed_to_load(state_dir, tmp_path):
    marker = tmp_path / "broken"
    marker.touch()
    broken = LoadsOnlyWithoutMarker("fixed_later", marker, state_dir=state_dir, max_retries=0)
    good = LoadsOnlyWithoutMarker("good", tmp_path / "never", state_dir=state_dir, max_retries=0)
    executor = ProcessExecutor(1)  # one worker: every attempt below goes to the same one
    try:
        first = broken.run(executor=executor)
        assert first.state == RunState.FAILED
        assert "the worker could not load the pipeline" in first.error
        assert "cannot load this pipeline while" in first.error
        (worker,) = executor.worker_pids()

        marker.unlink()  # the cause is fixed: the same pipeline loads now
        again = broken.run(executor=executor)
        assert again.state == RunState.COMPLETED, again.error
        assert again.get_output("only") == {"pid": worker, "pipeline": "fixed_later"}

        other = good.run(executor=executor)
        assert other.state == RunState.COMPLETED, other.error
        assert other.get_output("only") == {"pid": worker, "pipeline": "good"}
        assert executor.worker_pids() == [worker]
    finally:
        executor.shutdown()
        broken.close()
        good.close()

"""The worker pool pickles a pipeline once per execution of a run, even when executions of
one pipeline object go on side by side (the daemon's runs of a burst of files, issue 18)."""

from __future__ import annotations

from pipelines.execution.pool import ProcessExecutor
from pipelines.execution.runner import StageTask

from .counted_pickle_pipelines import CountsPickling


def _task(run_id: str, params: dict, state_dir: str) -> StageTask:
    return StageTask(run_id=run_id, pipeline_name="counted", stage="only", attempt=1,
                     state_dir=state_dir, params=params, upstream={}, input_stages=(),
                     rules={}, config_dir=None, duckdb_settings={})


def test_interleaved_executions_of_one_pipeline_pickle_it_once_each(state_dir):
    pipeline = CountsPickling("counted", state_dir=state_dir)
    executor = ProcessExecutor(1)
    try:
        # two executions (each its own params dict), their attempts alternating
        first, second = {"file": "a.csv"}, {"file": "b.csv"}
        before = CountsPickling.pickled
        futures = [executor.submit(pipeline, _task(run, params, str(state_dir)))
                   for _ in range(3) for run, params in (("r1", first), ("r2", second))]
        for future in futures:
            future.result(timeout=60)
        assert CountsPickling.pickled - before == 2  # not 6: one per execution
    finally:
        executor.shutdown()
        pipeline.close()

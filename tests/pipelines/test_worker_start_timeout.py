"""A stage's timeout counts from when its attempt starts in a worker, not while a new worker's
interpreter starts: on a loaded host a worker can take seconds to be ready, and a stage with a
short timeout failed as TIMED_OUT before its code had run.  A worker that never becomes
ready is bounded on its own (pool.WORKER_START_S) and says so.

A real pool of worker processes; the workers' start is slowed by a ``sitecustomize`` module
on the path they inherit, which sleeps when the pool's environment asks it to."""

from __future__ import annotations

import os

import pytest

from pipelines import StageConfig
from pipelines.execution import pool
from pipelines.execution.pool import ProcessExecutor
from tests.pipelines.sample_pipelines import SleepyPipeline

SLOW_START_S = 4.0


@pytest.fixture()
def slow_starting_pool(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('AHGD_TEST_SLOW_START'):\n"
        "    time.sleep(float(os.environ['AHGD_TEST_SLOW_START']))\n")
    monkeypatch.syspath_prepend(str(site))  # the workers' path is made from ours
    executor = ProcessExecutor(1, env={**os.environ, "AHGD_TEST_SLOW_START": str(SLOW_START_S)})
    try:
        yield executor
    finally:
        executor.shutdown()


def _quick(tmp_path) -> SleepyPipeline:
    return SleepyPipeline(state_dir=tmp_path / "state", seconds=0.1, max_retries=0,
                          stage_configs={"nap": StageConfig("nap", timeout=3.0,
                                                            retry_attempts=0)})


def test_a_slow_worker_start_is_not_counted_in_the_stage_timeout(tmp_path, slow_starting_pool):
    ctx = _quick(tmp_path).run(executor=slow_starting_pool)
    assert ctx.state == "COMPLETED", ctx.error  # 4 s to start, 3 s allowed, 0.1 s used
    assert ctx.get_output("nap") == "woke up"


def test_a_worker_that_is_not_ready_in_time_fails_the_attempt_and_says_why(
        tmp_path, slow_starting_pool, monkeypatch):
    monkeypatch.setattr(pool, "WORKER_START_S", 1.0)
    ctx = _quick(tmp_path).run(executor=slow_starting_pool)
    assert ctx.state == "FAILED"
    assert "was not ready after 1s and was killed" in ctx.error, ctx.error
    assert "timed out" not in ctx.error


def test_a_large_pipeline_given_to_a_starting_worker_leaves_the_pool_free(tmp_path,
                                                                         slow_starting_pool):
    """A pipeline whose pickle is larger than a socket's buffer (one holding a lookup table)
    was sent to a worker still starting under the pool's lock: the send blocked until the
    worker read it, and with it every submit, cancel and look at the pool (for ever, had its
    start hung).  It is sent once the worker is ready."""
    import threading
    import time

    big = _quick(tmp_path)
    big.lookup = os.urandom(4 << 20)  # 4 MiB: far over the socket's buffer
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault(
        "ctx", big.run(executor=slow_starting_pool)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while not slow_starting_pool._workers and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker is started for the attempt (it sleeps 4 s, then is ready)
    assert slow_starting_pool._workers, "no worker was started"
    free = slow_starting_pool._lock.acquire(timeout=2)
    if free:
        starting = [w for w in slow_starting_pool._workers if not w.ready]
        given = [w for w in starting if w.job is not None]
        slow_starting_pool._lock.release()
        assert given == starting  # the attempt waits with it, not yet sent (if still starting)
    runner.join(60)
    assert free, "the pool's lock was held while the pipeline was sent to a starting worker"
    assert result["ctx"].state == "COMPLETED", result["ctx"].error

"""What the executor does for an attempt's speed (the figures are bench/cluster.py's): its
client sends to the scheduler without Dask's 10 ms batching, the outcome comes with the task's
completion (no fetch of the result), and releasing finished tasks after the next submit leaves
nothing behind on the scheduler."""

from __future__ import annotations

import time
import uuid

from pipelines.execution.runner import StageTask

from .stages import behaving


def leftovers(client, tag: str) -> tuple[list[str], list[str]]:
    """The scheduler's tasks and claim queues whose names contain ``tag``."""
    def look(dask_scheduler, tag=tag):
        queues = dask_scheduler.extensions["queues"].queues
        return ([str(k) for k in dask_scheduler.tasks if tag in str(k)],
                [str(q) for q in queues if tag in str(q)])

    return client.run_on_scheduler(look)


def test_attempts_are_sent_at_once_come_back_unfetched_and_leave_nothing_behind(cluster, s3, tmp_path):
    from pipelines.execution.cluster import DaskExecutor
    from pipelines.execution.clusterlink import SEND_INTERVAL_S

    tag = f"ov{uuid.uuid4().hex[:6]}"
    ex = DaskExecutor(cluster.address, object_store=s3.settings(tag), owner=f"test:{tmp_path}",
                      poll_s=0.2)
    def gathers() -> int:  # the scheduler logs each fetch of results ("gather") in "all"
        return sum(1 for _, e in ex._client.get_events("all") if e.get("action") == "gather")

    try:
        p = behaving(tmp_path / "state")
        before = gathers()
        for i in range(3):
            task = StageTask(f"{tag}-{i}", "behaving", "work", 1, str(tmp_path / "state"),
                             {"do": "rows"}, {}, (), {}, None, {}, timeout=60)
            outcome = ex.submit(p, task).result(timeout=60)
            assert outcome.ok and outcome.worker and outcome.output["uri"], outcome
        # each outcome came with its task's completion (published by the worker): no round
        # trip through the scheduler to the worker to fetch it
        assert gathers() == before
        # Dask's client holds a message up to 10 ms to batch it: most of an attempt's overhead
        assert ex._client.scheduler_comm.interval <= SEND_INTERVAL_S <= 0.001
        # the last attempt's task and claim are released by the watcher (no submit follows)
        deadline = time.monotonic() + 10
        while leftovers(ex._client, tag) != ([], []) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(ex._client, tag) == ([], [])
    finally:
        ex.shutdown()

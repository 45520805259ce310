"""The daemon's reap of an ended run (issue 18): the run is read on its own thread when its
execution ends, so the loop's reap does not wait for the event log's lock, which run threads
hold through their fsync'd commits in a burst.

A real run (in this process, real SQLite and DuckDB) through a real RunSupervisor."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ahgd_daemon.requests import request_run
from ahgd_daemon.runs import RunSupervisor
from pipelines.execution.executors import InProcessExecutor
from state.machine import RunState
from tests.daemon.retention_kit import PIPELINE, Kit, write_configs


class _Quiet:
    def info(self, *args, **kw) -> None:
        pass


def test_the_reap_of_an_ended_run_does_not_wait_for_the_event_log(tmp_path: Path) -> None:
    kit = Kit(write_configs(tmp_path), tmp_path / "state")
    executor = InProcessExecutor(1)
    try:
        kit.succeed(True)
        src = tmp_path / "in.csv"
        src.write_text("code,name\n1,a\n2,b\n")
        fd = os.open(src, os.O_RDONLY)
        try:
            run_id = request_run(kit.log, kit.state_dir, kit.pipelines, PIPELINE, input_fd=fd,
                                 input_name=src.name)
        finally:
            os.close(fd)
        runs = RunSupervisor(kit.log, kit.state_dir, executor, None, lock=threading.RLock(),
                             monotonic=time.monotonic, wake=lambda: None,
                             alert=lambda *a, **kw: None, logger=_Quiet())
        runs._launch(run_id, PIPELINE, kit.pipeline)
        runs.active[run_id].thread.join(60)
        assert not runs.active[run_id].thread.is_alive()

        followed: list = []
        held, release = threading.Event(), threading.Event()

        def committing() -> None:  # another run thread, in the middle of a commit
            with kit.log._lock:
                held.set()
                release.wait(30)

        holder = threading.Thread(target=committing, daemon=True)
        holder.start()
        assert held.wait(10)
        reaper = threading.Thread(target=runs.reap, args=(followed.append,), daemon=True)
        try:
            reaper.start()
            reaper.join(10)
            reaped = not reaper.is_alive()
        finally:
            release.set()
            holder.join(10)
            reaper.join(10)
        assert reaped, "the reap waited for the event log's lock"
        assert [r.run_id for r in followed] == [run_id]
        assert followed[0].state == RunState.COMPLETED
        assert runs.finished.recent() == {run_id: RunState.COMPLETED} and not runs.active
    finally:
        executor.shutdown()
        kit.close()


def _died(run_id: str, error: BaseException):
    """An ActiveRun whose thread has ended with ``error`` (what reap looks at)."""
    from ahgd_daemon.runs import ActiveRun

    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return ActiveRun(run_id, PIPELINE, thread, cancel=None, started=0.0, error=error)


def test_a_run_waits_for_the_object_store_a_bounded_number_of_times(tmp_path: Path) -> None:
    """An object store that stays down (or a wrong setting of it) suspended a run and started
    it again every 30 s for ever; a wrong setting now fails the run at once, and an outage
    after STORE_WAITS waits, the error saying what to look at."""
    from ahgd_daemon import runs as runs_module
    from state.errors import ObjectStoreError

    kit = Kit(write_configs(tmp_path), tmp_path / "state")
    alerts: list = []
    try:
        src = tmp_path / "in.csv"
        src.write_text("code,name\n1,a\n")
        ids = []
        for _ in range(2):
            fd = os.open(src, os.O_RDONLY)
            try:
                ids.append(request_run(kit.log, kit.state_dir, kit.pipelines, PIPELINE,
                                       input_fd=fd, input_name=src.name))
            finally:
                os.close(fd)
        down, bucket = ids
        runs = RunSupervisor(kit.log, kit.state_dir, InProcessExecutor(1), None,
                             lock=threading.RLock(), monotonic=time.monotonic, wake=lambda: None,
                             alert=lambda *a, **kw: alerts.append(a), logger=_Quiet())
        runs._logger.warning = lambda *a, **kw: None
        outage = ObjectStoreError("the object store could not be asked about s3://b/x; check "
                                  "that the object store at http://s3 is up")
        for wait in range(runs_module.STORE_WAITS):
            runs.active[down] = _died(down, outage)
            runs.reap(lambda run: None)
            assert down in runs.waiting_to_resume, wait   # waits, as the store may come back
            runs.waiting_to_resume.pop(down)
        assert kit.log.run(down).state == RunState.PENDING
        runs.active[down] = _died(down, outage)
        runs.reap(lambda run: None)                       # once too often: it fails
        assert down not in runs.waiting_to_resume
        assert kit.log.run(down).state == RunState.FAILED
        assert "is up" in kit.log.run(down).error

        wrong = ObjectStoreError("the bucket 'b' does not exist at http://s3: create it, or "
                                 "fix daemon.object_store.url", setting="bucket")
        runs.active[bucket] = _died(bucket, wrong)
        runs.reap(lambda run: None)                       # a wrong setting: no wait at all
        assert bucket not in runs.waiting_to_resume
        assert kit.log.run(bucket).state == RunState.FAILED
        assert "create it, or fix daemon.object_store.url" in kit.log.run(bucket).error
    finally:
        kit.close()

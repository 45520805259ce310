"""The worker process: receives stage attempts, runs them, sends back outcomes.

Started by :class:`pipelines.execution.pool.ProcessExecutor` either as a fresh
interpreter (``python -P -m pipelines.execution.worker FD``, the default: nothing of the
parent's threads, SQLite or DuckDB handles comes along) or, for pipeline
classes defined in a script's ``__main__``, by ``fork`` (a fresh interpreter
could not import them).

Protocol over a ``multiprocessing.connection.Connection``::

    parent -> worker: ("run", task_id, pipeline_key, pipeline_blob_or_None, task, gone)
    worker -> parent: ("ready", pid) once, then ("done", task_id, outcome, loaded_key) per task
    parent -> worker: ("stop",)

``gone`` is None when ``task.upstream`` holds every upstream output; otherwise
it holds only those that changed since the previous task (of the same
execution of the same run), and ``gone`` lists the stages whose outputs were
dropped since (invalidated).

``loaded_key`` is the key of the pipeline the worker holds after the task
(None when loading it failed): the parent sends the blob again until the
worker has confirmed it, so a pipeline that failed to load once (its module
broken, or not yet deployed) loads on a later attempt.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

from .children import die_with_parent, switched_off, working_directory_last


def batch_scheduling() -> str:
    """Run this process (and the processes its stages start) as Linux's ``SCHED_BATCH``.

    A worker is a batch job: it gets the CPU share of any process of its ``nice`` value,
    but gives up the small preference the scheduler gives a waking process.  The daemon's
    threads, which hand the workers their next attempt, then get a core at once instead of
    waiting for a busy worker's time slice while holding the daemon's GIL (a burst: one hand-
    off in ten took ~3 ms; +8 % runs/s in six alternated pairs).  ``AHGD_WORKER_BATCH=0``
    leaves the policy as inherited.  Returns what was done."""
    if switched_off("AHGD_WORKER_BATCH"):
        return "off (AHGD_WORKER_BATCH)"
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):
        return "not available here"
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # a sandbox that refuses it: the worker runs as before
        return f"refused ({exc})"
    return "batch"


def serve(conn: Connection) -> None:
    """Run tasks from ``conn`` until told to stop or the parent goes away."""
    from .runner import failure, run_task

    # the parent decides when work stops: Ctrl-C in a terminal reaches the
    # whole process group, and a half-finished stage must not die of it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    batch_scheduling()
    from .capture import start_capture

    capture = start_capture()  # the daemon keeps run logs: what stages print goes there too
    fmt = os.environ.get("AHGD_LOG_FORMAT")
    if fmt in ("json", "console"):  # the daemon's format, so stage logs join its log
        from .logsetup import configure_logging

        configure_logging(json_lines=fmt == "json", level=os.environ.get("AHGD_LOG_LEVEL", "info"),
                          stream=capture.original_stdout() if capture is not None else None)
    pipelines: dict[str, Any] = {}
    held: dict[str, Any] = {}  # the previous task's upstream outputs
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, task_id, key, blob, task, *rest = message
        gone = rest[0] if rest else None
        if gone is not None:  # only what changed since the previous task: merge it in
            upstream = dict(held)
            for stage in gone:
                upstream.pop(stage, None)
            upstream.update(task.upstream)
            task.upstream = upstream
        held = task.upstream
        try:
            if blob is not None:
                pipelines.clear()  # keep one pipeline object: workers are shared
                importlib.invalidate_caches()  # a module deployed since we started is found
                pipelines[key] = pickle.loads(blob)
            if key not in pipelines:  # the parent thought we had it: say so, it sends it again
                raise RuntimeError("the worker no longer held the pipeline; the next attempt "
                                   "sends it again")
            if capture is not None:
                with capture.attempt(task.run_id, task.pipeline_name, task.stage, task.attempt):
                    outcome = run_task(pipelines[key], task)
            else:
                outcome = run_task(pipelines[key], task)
        except Exception as exc:  # unpickling failed: report, keep serving (the code's
            # fault or the machine's, never the input's: retried or not by its kind)
            outcome = failure(task, exc, prefix="the worker could not load the pipeline: ")
        try:
            conn.send(("done", task_id, outcome, key if key in pipelines else None))
        except (EOFError, OSError, BrokenPipeError):
            return


def main(argv: list[str]) -> None:
    working_directory_last()  # stage modules kept there import, after ahgd's own packages
    fd = int(argv[1])
    die_with_parent(int(argv[2]) if len(argv) > 2 else None)
    os.setpgrp()  # our own process group: a timeout kills the stage's children too
    conn = Connection(fd)
    try:
        serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv)

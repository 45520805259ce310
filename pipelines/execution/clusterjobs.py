"""One attempt on the Dask cluster, as :class:`~pipelines.execution.cluster.DaskExecutor` tracks
it, and how the ways a Dask task can end become the attempt's :class:`Outcome`.

Kept apart from the executor (which sends, watches and reconnects): a lost
worker is ``WorkerDied`` with the host, an error outside the stage is the
cluster's or ahgd's fault (never the stage's), resources no worker offers are
``NoWorkerFits``, and what a failed attempt may have put into the object store
is removed.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state import store

from .runner import Outcome, StageTask


@dataclass
class Job:
    task: StageTask
    blob: bytes
    pipeline_key: str
    outer: Future
    key: str = ""
    claim: str | None = None  # the Dask queue holding the attempt's one token
    dask: Any = None         # the distributed.Future
    seen_on: str | None = None
    sent_at: float = 0.0
    #: monotonic seconds when a worker was first seen holding it (the daemon's timeout
    #: backstop counts from then: not the scheduler's queue before)
    seen_at: float | None = None
    cancel_reason: str | None = None
    settled: bool = False


def died(job: Job, hosts: dict[str, str], why: str) -> Outcome:
    """The attempt's worker was lost: a failed attempt (retryable), never run again by Dask."""
    where = job.seen_on
    host = hosts.get(where or "") or (where or "an unknown host")
    return Outcome(
        ok=False, error_type="WorkerDied", host=hosts.get(where or ""), worker=where,
        wall_s=time.monotonic() - job.sent_at if job.sent_at else 0.0,
        error=(f"the Dask worker {where or '(not known)'} on {host} running stage "
               f"{job.task.stage!r} was lost (killed, out of memory, or its machine went "
               f"down: {why}); the attempt failed, and Dask does not run it again"))


def errored(job: Job, hosts: dict[str, str], exc: BaseException | None) -> Outcome:
    """The Dask task raised (outside the stage: :func:`remote.run_attempt` never raises for
    the stage's own errors)."""
    name = type(exc).__name__
    if name == "KilledWorker":
        return died(job, hosts, "the scheduler gave the task up (KilledWorker)")
    if isinstance(exc, ImportError):
        return Outcome(ok=False, retryable=False, error_type="ConfigError",
                       error=(f"a Dask worker cannot import ahgd ({exc}): install "
                              "ahgd-daemon[dask] in the workers' Python, the same version "
                              "as the daemon's"))
    return Outcome(ok=False, error_type=name, error=(
        f"the Dask task of stage {job.task.stage!r} failed outside the stage "
        f"({name}: {exc}); this is ahgd's or the cluster's fault, not the stage's"))


def unplaceable(offers: list[dict[str, float]] | None, resources: dict[str, float]) -> str | None:
    """Why no worker (``offers``: the resources each offers) can take ``resources``; None if
    one can, or if the offers are not known (the attempt then waits in Dask's queue)."""
    if not resources or offers is None:
        return None
    if any(all(o.get(k, 0) >= v for k, v in resources.items()) for o in offers):
        return None
    want = ", ".join(f"{k}={v:g}" for k, v in resources.items())
    if not offers:  # not one that fits too little: none at all (stopped, or not started)
        return ("no Dask worker is connected to the scheduler; start the workers "
                "(systemctl start ahgd-dask-worker, or `dask worker SCHEDULER --resources "
                f"\"{want.replace(', ', ',')}\"`): every worker must declare its resources")
    return (f"no Dask worker offers {want} (the workers offer: "
            f"{'; '.join(str(o) for o in offers) or 'nothing'}); start a worker with "
            f"`dask worker ... --resources \"{want.replace(', ', ',')}\"`, or lower the "
            "stage's resource_requirements")


def forget_outputs(object_store: Any, task: StageTask) -> None:
    """Remove what an attempt that did not end well may have put into the object store."""
    for suffix in (".duckdb", ".json", ".pkl"):
        rel = store.relative(task.state_dir, store.attempt_path(
            task.state_dir, task.run_id, task.stage, task.attempt, suffix))
        try:
            object_store.delete(rel)
        except Exception:
            pass


def publish(outcome: Outcome, task: StageTask, object_store: Any) -> Outcome:
    """An attempt that ran on the daemon's host, with its output put into the object store too
    (the file moves into the local cache, by its hash), so a stage on a Dask worker can read
    it; an outcome that failed, or has no file, as it is."""
    if not outcome.ok:
        return outcome
    from . import remote

    try:
        outcome.output = remote.upload(outcome.output, Path(task.state_dir), object_store.settings)
    except Exception as exc:  # the store is down: this attempt failed, a retry may not
        store.remove_attempt(Path(task.state_dir), task.run_id, task.stage, task.attempt)
        return Outcome(ok=False, error_type=type(exc).__name__, host=outcome.host,
                       wall_s=outcome.wall_s, cpu_s=outcome.cpu_s,
                       error=(f"stage {task.stage!r} finished, but its output could not be put "
                              f"into the object store for the cluster's workers: {exc}"))
    return outcome


def runs_here(pipeline: Any, task: StageTask) -> bool:
    """Stages that run on the daemon's host: ``executor: local`` ones, YAML loaders (they
    write the warehouse, which lives here), and any stage reading an output that exists only
    here (an ``executor: inprocess`` stage's file, never put into the object store)."""
    if getattr(task.config, "executor", None) == "local":
        return True
    if any(ref and ref.get("path") and not ref.get("uri") for ref in task.upstream.values()):
        return True
    kind = getattr(pipeline, "stage_type", None)
    return callable(kind) and kind(task.stage) == "loader"


def resolved(outcome: Outcome) -> Future:
    future: Future = Future()
    future.set_result(outcome)
    return future


def settle(future: Future, outcome: Outcome) -> None:
    try:
        future.set_result(outcome)
    except Exception:  # already settled (a cancel raced the result): the first one stands
        pass


__all__ = ["Job", "died", "errored", "unplaceable", "forget_outputs", "publish", "runs_here",
           "resolved", "settle"]

"""What runs on a Dask worker: one attempt, claimed once, in a local worker process.

:class:`~pipelines.execution.cluster.DaskExecutor` submits :func:`run_attempt`
for each attempt that runs on the cluster.  On the worker it

1. refuses to run if this worker's ahgd, Python or DuckDB differ from the
   daemon's (the attempt fails, saying which);
2. *claims* the attempt: it takes the one token the daemon put in a Dask
   queue for it, and leaves its own address in the token's place.  Dask runs
   a task again on another worker when the worker running it dies, and
   recomputes a result it lost; the second run finds the address instead of
   the token and returns at once without running anything, so an attempt
   runs at most once whatever Dask does.  The token travels beside the task,
   not before it, so a token not there yet is waited for while Dask wants
   the attempt (:func:`_claim`);
3. runs the attempt in this host's warm pool of worker processes
   (:class:`~pipelines.execution.pool.ProcessExecutor`, one per Dask worker
   process): a timeout kills the process group, a segfault or ``os._exit``
   fails the attempt only, wall/CPU/peak RSS are measured, as on the daemon's
   host.  It writes under a local scratch directory, never the daemon's
   state directory, and never opens ``history.db``;
4. stops the attempt when Dask no longer wants it: ``ahgd cancel``, the
   daemon gone (its client's tasks are released), a new daemon of the same
   state directory connecting (:func:`stop_owned`);
5. puts the output file into the object store and records its URI; the file
   stays in the local cache, by its SHA-256, for the next stage here;
6. publishes the outcome on the scheduler's ``OUTCOME_TOPIC`` (it reaches the
   daemon with the task's completion, sparing it the fetch of the result),
   and returns it (the answer when the event does not come).

Nothing here writes an event: the outcome goes back to the daemon, which does.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from .runner import Outcome, StageTask

#: how often a running attempt looks whether Dask still wants it
WATCH_S = 0.1
#: the token the daemon puts in an attempt's claim queue (:func:`clusterlink.put_token`)
CLAIM_TOKEN = 1
#: how long a claim waits for a token that is not there yet before it gives the attempt up,
#: blaming the link to the scheduler.  The token is there within milliseconds as a rule, but
#: it travels on another connection than the task, and on a slow or loaded link it comes
#: after it.  Under clusterwatch.TIMEOUT_SLACK_S, so that the daemon's backstop never takes
#: the wait for the stage running past its timeout
CLAIM_LATE_S = 20.0
#: one wait at the scheduler for the token; between two, the claim looks whether Dask still
#: wants the attempt (one given up meanwhile never starts)
CLAIM_LOOK_S = 0.5
#: the scheduler's topic an attempt's outcome is published on as the task ends (:func:`_tell`)
OUTCOME_TOPIC = "ahgd-outcome"
#: a larger outcome (pickled) is not published: the daemon fetches it as the task's result
#: (the scheduler keeps its last 1,000 events per topic: at most 16 MB here)
OUTCOME_EVENT_MAX_BYTES = 16 * 1024

#: how often a Dask worker process prunes its scratch's cache of objects and inputs (outputs
#: it made, inputs and outputs it fetched): each not used for a day goes
PRUNE_EVERY_S = 3600.0
_pruned_at: float | None = None

_pool: Any = None
_pool_lock = threading.Lock()
#: Dask key -> (the pool's future, the daemon that owns it)
_running: dict[str, tuple[Any, str]] = {}


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    return tuple(_installed().items())


def versions() -> dict[str, str]:
    """What must be the same on the daemon and every worker (what this process has imported:
    it does not change while it runs)."""
    return dict(_versions())


def _installed() -> dict[str, str]:
    from importlib import metadata

    import duckdb

    try:
        ahgd = metadata.version("ahgd-daemon")
    except metadata.PackageNotFoundError:  # a clone on PYTHONPATH: not installed
        ahgd = "not installed"
    return {"ahgd": ahgd, "python": ".".join(map(str, sys.version_info[:3])),
            "duckdb": duckdb.__version__}


def describe(dask_worker: Any = None) -> dict[str, Any]:
    """This worker, for the daemon's version check and its status page."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "versions": versions()}


def run_attempt(claim: str, blob: bytes, pipeline_key: str, task: StageTask,
                expected: dict[str, str], owner: str, scratch: str | None) -> Outcome:
    """Run one attempt here, at most once (see the module's docstring)."""
    from distributed import get_worker

    worker = get_worker()
    host = socket.gethostname()
    here = dict(host=host, worker=worker.address)
    mine = versions()
    if mine != expected:
        return Outcome(ok=False, retryable=False, error_type="VersionMismatch", **here,
                       retry_why="another version on the worker fails the same way again",
                       error=(f"the Dask worker {worker.address} on {host} has {_show(mine)}, "
                              f"the daemon {_show(expected)}; install the same versions on "
                              "every worker (pip install of the same ahgd-daemon[dask] in the "
                              "same Python), then restart the worker"))
    key = worker.get_current_task()
    claimed, holder = _claim(worker, claim, key)
    if claimed == "taken":
        return Outcome(ok=False, error_type="AlreadyClaimed", **here,
                       error=f"this attempt had started on another Dask worker already "
                             f"({holder}); Dask ran it again after that worker was lost, and "
                             "it was not run twice")
    if claimed == "released":  # the daemon has given it up: this outcome is not looked at
        return Outcome(ok=False, interrupted=True, error_type="Released", **here,
                       error="Dask no longer wanted this attempt (cancelled, the daemon "
                             "stopped, or this worker is closing) before it was claimed; it "
                             "did not run")
    if claimed == "late":
        return Outcome(ok=False, error_type="ClaimNotReceived", **here,
                       retry_why="the link to the Dask scheduler may be quicker next time",
                       error=(f"the claim of this attempt, a token the daemon sends to the "
                              f"Dask scheduler beside the task, had not reached the scheduler "
                              f"{CLAIM_LATE_S:g}s after the task reached the Dask worker "
                              f"{worker.address} on {host}: the link to the Dask scheduler is "
                              "too slow or loaded (the scheduler's or the network's fault, not "
                              "the stage's); the stage did not run"))
    base = Path(scratch) if scratch else Path(worker.local_directory) / "ahgd"
    try:
        params = local_input(task.params, base, task.object_store)
    except Exception as exc:  # gone or changed in the store, or the store is down
        return Outcome(ok=False, error_type=type(exc).__name__, **here,
                       error=(f"the run's input file could not be fetched on the Dask worker "
                              f"{worker.address} on {host} (the daemon's host put it into "
                              f"the object store): {exc}"))
    # after the input is fetched (or found, and marked used): a resumed run's input, kept
    # here since its extract days ago, must stay the file the extract identified
    _prune(base)
    task = replace(task, state_dir=str(base), remote_host=host, params=params)
    future = _local_pool(worker).submit_pickled(blob, pipeline_key, task)
    _running[key] = (future, owner)
    finished = threading.Event()
    future.add_done_callback(lambda _f: finished.set())
    try:
        while not finished.wait(WATCH_S):
            if not _wanted(worker, key):
                _local_pool(worker).cancel(future, "the daemon no longer wants this attempt "
                                                   "(cancelled, or the daemon stopped)")
        outcome: Outcome = future.result()
    finally:
        _running.pop(key, None)
    outcome.host, outcome.worker = host, worker.address
    if outcome.ok:
        try:
            outcome.output = upload(outcome.output, base, task.object_store)
        except Exception as exc:  # the store is down: the attempt failed, the stage may not
            from state import store

            store.remove_attempt(base, task.run_id, task.stage, task.attempt)
            outcome = Outcome(ok=False, error_type=type(exc).__name__, **here,
                              wall_s=outcome.wall_s, cpu_s=outcome.cpu_s,
                              error=(f"stage {task.stage!r} finished, but its output could not "
                                     f"be put into the object store from the Dask worker "
                                     f"{worker.address} on {host}: {exc}"))
    _tell(worker, key, outcome)
    return outcome


def _prune(base: Path) -> None:
    """At most once every PRUNE_EVERY_S: the cache under ``base`` loses what no attempt here
    has used for a day (``objectstore.prune_cache``); without it a worker's scratch kept
    every output it ever made.  What goes is fetched again, by its hash, if wanted."""
    global _pruned_at
    import time

    now = time.monotonic()
    if _pruned_at is not None and now - _pruned_at < PRUNE_EVERY_S:
        return
    _pruned_at = now
    from state import objectstore

    try:
        count, freed = objectstore.prune_cache(base / objectstore.CACHE_DIR)
    except Exception as exc:  # noqa: BLE001 - a cache not pruned is no reason to fail work
        logging.getLogger("ahgd.worker").warning(
            "the cache under %s could not be pruned: %s", base, exc)
        return
    if count:
        logging.getLogger("ahgd.worker").info(
            "removed %d cached object(s) not used for a day from %s (%d bytes)", count,
            base / objectstore.CACHE_DIR, freed)


def _tell(worker: Any, key: str, outcome: Outcome) -> None:
    """Publish the outcome on the scheduler's ``OUTCOME_TOPIC``: it reaches the daemon beside
    the task's completion, which saves the daemon fetching the result (a round trip through
    the scheduler to this worker).  The result stays the answer when this is not sent."""
    import pickle

    try:
        blob = pickle.dumps(outcome, protocol=5)
        if len(blob) <= OUTCOME_EVENT_MAX_BYTES:
            worker.log_event(OUTCOME_TOPIC, {"key": key, "outcome": blob})
    except Exception:  # the daemon fetches the result instead
        pass


def upload(ref: dict[str, Any] | None, base: Path, settings: dict[str, Any] | None) -> Any:
    """Put the file behind ``ref`` (written under ``base``) into the object store; the ref with
    its ``uri``.  The file moves into the cache by its SHA-256 (a next stage here reads it from
    there).  A ref with a ``uri`` already (a passthrough of an upstream output) is kept."""
    if not ref or not ref.get("path") or ref.get("uri"):
        return ref
    from state import objectstore, store
    from state.errors import ObjectStoreError

    found = objectstore.configure(settings)
    if found is None:
        raise ObjectStoreError("no object store is configured for this attempt")
    path = store.ref_path(base, ref)
    done = dict(ref, uri=found.put(path, str(ref["path"]), str(ref["sha256"])))
    cached = objectstore.cache_path(base / objectstore.CACHE_DIR, done)
    cached.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, cached)
    Path(f"{path}.wal").unlink(missing_ok=True)
    return done


def local_input(params: dict[str, Any], base: Path,
                settings: dict[str, Any] | None) -> dict[str, Any]:
    """The run's parameters with ``input_file`` pointing at a local copy of the input the
    daemon put into the object store (``input_uri``), fetched and its SHA-256 verified."""
    uri = params.get("input_uri")
    if not uri:
        return params
    from state import objectstore

    found = objectstore.configure(settings)
    local = found.fetch_input(str(uri), str(params["input_sha256"]), base / objectstore.CACHE_DIR)
    return {**params, "input_file": str(local)}


def stop_owned(owner: str, dask_worker: Any = None) -> int:
    """Stop every attempt here that ``owner`` (a daemon, by its state directory) started: run
    by a daemon as it connects, whatever is still running for it is left from a daemon that
    died.  How many were stopped."""
    stopped = 0
    for key, (future, who) in list(_running.items()):
        if who == owner and not future.done():
            _local_pool(None).cancel(future, "left running by a daemon that stopped; its "
                                             "successor recovers the run")
            stopped += 1
    return stopped


def renew(dask_worker: Any = None) -> bool:
    """New attempts here import stage code afresh (the daemon's SIGHUP)."""
    with _pool_lock:
        if _pool is not None:
            _pool.renew()
    return True


def _claim(worker: Any, name: str, key: str) -> tuple[str, Any]:
    """Take the attempt's one token: ``("claimed", None)``, or why not: ``("taken", by)`` (a
    second run of the task: the run that took it left its worker's address ``by`` in its
    place), ``("released", None)`` (Dask no longer wants the attempt), or ``("late", None)``
    (no token within ``CLAIM_LATE_S``).

    The daemon sends the token beside the task, not before, and the two reach the scheduler
    on different connections: on a slow or loaded link the task can be here before its token.
    A queue not there yet, or empty, is therefore waited for while Dask wants the attempt.
    An attempt the daemon gives up meanwhile is released (its task, then its queue): the
    wait ends, and nothing runs."""
    import time

    from distributed.utils import sync

    deadline = time.monotonic() + CLAIM_LATE_S
    pause = 0.005
    while _wanted(worker, key):
        left = deadline - time.monotonic()
        if left <= 0:
            return "late", None
        try:
            value = sync(worker.loop, _take, worker, name, min(left, CLAIM_LOOK_S))
        except Exception as exc:  # an empty queue (a timeout), or no queue (not yet, or any more)
            if "Timeout" not in type(exc).__name__:
                # no queue is said at once: look again after a pause, a longer one each time
                # (each look is an error in the scheduler's log)
                time.sleep(min(pause, left))
                pause = min(pause * 2, CLAIM_LOOK_S)
            continue
        if value != CLAIM_TOKEN:
            return "taken", value
        # the token taken now: an attempt released meanwhile still does not start
        return ("claimed", None) if _wanted(worker, key) else ("released", None)
    return "released", None


async def _take(worker: Any, name: str, timeout: float) -> Any:
    """The first thing in queue ``name`` (waited for up to ``timeout``); this worker's address
    is put in place of the token (a later run of the task finds it and knows the token taken),
    and another run's address is put back.  The put is not waited for: no second round trip on
    the attempt's path (a run of the task after this one waits a moment for it)."""
    record = await worker.scheduler.queue_get(name=name, timeout=timeout)
    value = record.get("value") if isinstance(record, dict) else None
    mark = worker.address if value == CLAIM_TOKEN else value

    async def put_back() -> None:
        try:
            await worker.scheduler.queue_put(name=name, data=mark, timeout=CLAIM_LATE_S)
        except Exception:  # the queue was released: the attempt is over
            pass

    worker.loop.add_callback(put_back)
    return value


def _wanted(worker: Any, key: str) -> bool:
    """Dask still wants the attempt: its task is here and not released, and this worker is
    not closing (it closes when it loses the scheduler: the daemon has given the attempt up)."""
    if getattr(worker.status, "name", "running") not in ("running", "paused"):
        return False
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state not in ("cancelled", "released", "forgotten")


def _local_pool(worker: Any) -> Any:
    global _pool
    with _pool_lock:
        if _pool is None:
            from .pool import ProcessExecutor

            threads = getattr(getattr(worker, "state", None), "nthreads", None) or 2
            _pool = ProcessExecutor(max(1, threads))
        return _pool


def _show(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {v[k]}" for k in sorted(v))


__all__ = ["run_attempt", "versions", "describe", "stop_owned", "renew", "upload"]

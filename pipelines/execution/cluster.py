"""``DaskExecutor``: stage attempts on a Dask distributed cluster, the caller the only writer.

The engine sees an :class:`~pipelines.execution.executors.Executor` like any
other (slots, ``submit`` -> ``Future[Outcome]``, ``cancel``, ``shutdown``);
behind it each attempt becomes one Dask task, :func:`remote.run_attempt`,
which runs it in a worker process on a Dask worker and puts its output into
the object store.  The rules (README, "Scaling out"):

* **At most one execution per attempt.**  Beside the task, the executor puts
  one token in a Dask queue named after the attempt; the task takes it first.
  Dask may run the task again on another worker (its ``allowed-failures``) or
  recompute a lost result: that run finds no token and does nothing.  A worker
  lost while it ran the attempt fails the attempt (``WorkerDied``, with the
  host; the stage's retry policy decides) as soon as the scheduler removes it
  (its ``remove-worker`` event), or at the latest at the watcher's next look
  (every ``poll_s``).  The outcome comes as an event the worker publishes as
  the task ends (the task's result when it does not); tasks are released
  after the next submit, or by the watcher within ``poll_s``.
* **Timeouts and cancel kill the work**: the Dask worker runs the attempt in
  its own worker process, killed at the timeout; a cancel releases the task,
  and the worker kills the process it runs in.
* **The scheduler lost**: attempts in flight are interrupted, the alert
  ``daemon.scheduler_lost`` fires, new attempts wait for the scheduler (or,
  ``on_scheduler_lost: local``, run on this host meanwhile), and the executor
  reconnects on its own (:mod:`~pipelines.execution.clusterwatch`).
* Stages with ``executor: local`` and YAML loaders run in this host's pool.

Dask is imported here only, and this module only when the executor is asked for.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Mapping

from state import objectstore

from ..logs import get_logger
from . import clusterlink as link, remote
from .clusterjobs import (Job, died, errored, forget_outputs, publish, resolved, runs_here,
                          settle, unplaceable)
from .clusterlink import ClusterUnavailable
from .clusterwatch import ALERT, ClusterWatch
from .executors import Executor
from .pool import ProcessExecutor
from .runner import Outcome, StageTask

#: run inputs whose place in the object store is remembered (each checked once a run)
INPUTS_KEPT = 1024


class DaskExecutor(ClusterWatch, Executor):
    """Attempts on the Dask cluster at ``scheduler``; outputs through ``object_store``."""

    enforces_timeouts = True

    def __init__(self, scheduler: str, *, object_store: Mapping[str, Any], max_workers: int = 2,
                 security: Mapping[str, Any] | None = None, connect_timeout: float = 10.0,
                 local_workers: int = 2, on_scheduler_lost: str = "wait",
                 scratch_dir: str | None = None, owner: str | None = None,
                 alert: Callable[..., Any] | None = None,
                 resolve: Callable[[str, str], Any] | None = None,
                 env: dict[str, str] | None = None, stdout: Any = None, poll_s: float = 0.25):
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ClusterUnavailable("daemon.executor type dask needs Dask distributed, which is "
                                     "not installed: pip install 'ahgd-daemon[dask]'") from None
        self.max_workers = max(1, max_workers)
        self._init_slots()
        self.scheduler = scheduler
        self.security = dict(security) if security else None
        self.connect_timeout = connect_timeout
        self.on_scheduler_lost = on_scheduler_lost
        self.scratch_dir = scratch_dir
        self.owner = owner or f"{socket.gethostname()}:{os.getcwd()}"
        self.object_store = objectstore.configure(dict(object_store))
        self.poll_s = poll_s
        self._alert, self._resolve_alert = alert, resolve
        self._log = get_logger("pipelines.workers")
        self._expected = remote.versions()
        self._lock = threading.RLock()
        self._jobs: dict[Future, Job] = {}
        self._held: list[Job] = []          # waiting for the scheduler to come back
        self._local_futures: set[Future] = set()
        self._inner: dict[Future, Future] = {}  # a parked attempt run here -> the pool's future
        self._hosts: dict[str, str] = {}     # worker address -> host name
        #: input files put into the store: sha256 -> (uri, the run it was last checked for);
        #: the latest INPUTS_KEPT only (years of runs of new files must not grow it)
        self._inputs: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._forget: list[StageTask] = []   # attempts cut off by a lost scheduler
        self._done: list[Job] = []           # settled: their Dask task and claim to release
        self._removed: list[tuple[str, set[str]]] = []  # workers removed, with their tasks
        self._ids = itertools.count(1)
        self._closed = False
        self._lost_at: float | None = None
        self._offers_seen: tuple[float, list[dict[str, float]]] | None = None
        self._wake = threading.Event()
        self.local = ProcessExecutor(local_workers, env=env, stdout=stdout)
        self._uploads = ThreadPoolExecutor(2, thread_name_prefix="ahgd-upload")
        self._settling = ThreadPoolExecutor(1, thread_name_prefix="ahgd-outcome")
        try:
            self._client: Any = self._connect()
        except link.SchedulerUnreachable as exc:  # it may start after us: the watcher retries
            self._client = None
            self._log.error("dask_scheduler_unreachable", scheduler=scheduler, error=str(exc))
        except BaseException:
            self.local.shutdown()
            raise
        self._thread = threading.Thread(target=self._watch, name="ahgd-dask", daemon=True)
        self._thread.start()

    # -- the Executor contract -------------------------------------------------------

    def submit(self, pipeline: Any, task: StageTask) -> Future:
        if runs_here(pipeline, task):
            return self._submit_local(pipeline, task)
        cls = type(pipeline)
        if cls.__module__ == "__main__":
            return resolved(Outcome(
                ok=False, retryable=False, error_type="ConfigError",
                retry_why="the class cannot be imported on a worker: a retry fails the same way",
                error=(f"pipeline class {cls.__qualname__} is defined in the script's __main__, "
                       "which a Dask worker cannot import; move it into a module of its own, "
                       "installed or on PYTHONPATH on every worker, or run it with "
                       "executor='process'")))
        try:
            blob = pickle.dumps(pipeline, protocol=5)
        except Exception as exc:
            return resolved(Outcome(ok=False, retryable=False, error_type=type(exc).__name__,
                                     error=(f"pipeline {task.pipeline_name!r} cannot be sent to "
                                            f"a Dask worker ({type(exc).__name__}: {exc}); keep "
                                            "connections, locks and open files out of its "
                                            "attributes")))
        try:
            task = self._with_input(task)
        except Exception as exc:  # a wrong setting of the store (no such bucket): not retried
            return resolved(Outcome(
                ok=False, retryable=not getattr(exc, "setting", None),
                error_type=type(exc).__name__, error=(
                    f"the run's input file could not be put into the object store for the "
                    f"workers: {exc}")))
        job = Job(replace(task, object_store=self.object_store.settings), blob,
                   f"{id(pipeline)}:{hash(blob)}", Future())
        with self._lock:
            if self._closed:
                raise RuntimeError("this DaskExecutor has been shut down")
            if self._lost_at is not None:
                self._park(job)
                return job.outer
            self._jobs[job.outer] = job
        self._send(job)
        return job.outer

    def cancel(self, future: Future, reason: str = "cancelled") -> None:
        if future in self._local_futures:
            self.local.cancel(self._inner.get(future, future), reason)
            return
        with self._lock:
            held = next((j for j in self._held if j.outer is future), None)
            if held is not None:
                self._held.remove(held)
            job = self._jobs.get(future)
            if job is not None:
                job.cancel_reason = reason
        if held is not None:
            settle(held.outer, Outcome(ok=False, interrupted=True, error=reason))
        elif job is not None and job.dask is not None:
            self._give_up(self._client, job, reason,
                          Outcome(ok=False, interrupted=True, error=reason))

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held, self._held = self._held, []
            jobs = list(self._jobs.values())
        for job in held:
            settle(job.outer, Outcome(ok=False, interrupted=True, error="executor shut down"))
        for job in jobs:
            self.cancel(job.outer, "executor shut down")
        self._wake.set()
        self._thread.join(timeout=10)
        self._release_done()
        try:
            self._client.close(timeout=5)
        except Exception:
            pass
        self.local.shutdown()
        self._uploads.shutdown(wait=True)
        self._settling.shutdown(wait=True)

    def prestart(self, count: int | None = None) -> None:
        """Nothing to start here: the cluster's workers are started by their own units."""

    def renew(self) -> None:
        """New attempts import stage code afresh, here and on every worker (SIGHUP)."""
        self.local.renew()
        try:
            self._client.run(remote.renew, on_error="ignore", wait=False)
        except Exception:
            pass

    def worker_pids(self) -> list[int]:
        return self.local.worker_pids()

    def worker_jobs(self) -> list[tuple[int, str | None, str | None, str | None]]:
        return self.local.worker_jobs()

    def cluster(self) -> dict[str, Any]:
        """The scheduler, its workers and the attempts running on each, for the status page."""
        with self._lock:
            running: dict[str, list[str]] = {}
            for job in self._jobs.values():
                if job.seen_on:
                    running.setdefault(job.seen_on, []).append(
                        f"{job.task.run_id}:{job.task.stage}#{job.task.attempt}")
            lost = self._lost_at is not None
        return link.status(None if lost else self._client, self.scheduler,
                           self.object_store.url, self._hosts, running)

    # -- sending and receiving ---------------------------------------------------------

    def _send(self, job: Job) -> None:
        task = job.task
        job.key = f"ahgd-{task.run_id}-{task.stage}-a{task.attempt}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        resources = {k: float(v) for k, v in (task.requirements or {}).items() if v}
        problem = None if not resources else unplaceable(self._offers(), resources) and \
            unplaceable(self._offers(fresh=True), resources)
        if problem is not None:
            self._finish(job, Outcome(ok=False, error_type="NoWorkerFits", error=problem,
                                      retry_why="a worker with those resources may join"))
            return
        try:
            link.prompt(self._client)
            job.claim = link.put_token(self._client, f"{job.key}-claim", self.connect_timeout)
            job.sent_at = time.monotonic()
            job.dask = self._client.submit(
                remote.run_attempt, job.claim, job.blob, job.pipeline_key, task,
                self._expected, self.owner, self.scratch_dir, key=job.key, pure=False,
                retries=0, resources=resources or None)
        except Exception as exc:
            if not link.is_connection_error(exc):  # ahgd's fault: said so, nothing ran
                self._finish(job, Outcome(ok=False, error_type=type(exc).__name__, error=(
                    f"ahgd could not send stage {task.stage!r} to the Dask scheduler "
                    f"({type(exc).__name__}: {exc}); this is a bug in ahgd, not the stage's")))
                return
            self._lost(f"{type(exc).__name__}: {exc}")  # it went away under us: nothing ran
            with self._lock:
                self._jobs.pop(job.outer, None)
                self._park(job)
            return
        job.dask.add_done_callback(lambda f, job=job: self._received(job, f))
        self._release_done()

    def _release_done(self) -> None:
        """Release the Dask tasks and claims of settled attempts.  Done after a submit (and by
        the watcher every ``poll_s``), not as each attempt settles: the scheduler then sends the
        next task to a worker before the release of the last one, not up to 5 ms after it (its
        stream to a worker batches messages 5 ms apart)."""
        with self._lock:
            done, self._done = self._done, []
        for job in done:
            for release in (job.claim and (lambda j=job: link.drop_token(self._client, j.claim)),
                            getattr(job.dask, "release", None)):
                try:
                    if release is not None:
                        release()
                except Exception:
                    pass

    def _offers(self, fresh: bool = False) -> list[dict[str, float]] | None:
        """The resources each worker offers, asked of the scheduler at most every 2 s (or now:
        ``fresh``, before an attempt is refused for want of a worker that fits)."""
        now = time.monotonic()
        if fresh or self._offers_seen is None or now - self._offers_seen[0] > 2.0:
            try:
                info = self._client.scheduler_info(n_workers=-1)
            except Exception:  # cannot tell: the attempt waits in Dask's queue instead
                return None
            self._offers_seen = (now, [w.get("resources") or {}
                                       for w in (info.get("workers") or {}).values()])
        return self._offers_seen[1]

    def _park(self, job: Job) -> None:
        """An attempt while the scheduler is lost (under the lock): it waits for the scheduler,
        or, with ``on_scheduler_lost: local``, runs in this host's pool."""
        if self.on_scheduler_lost != "local":
            self._held.append(job)
            return
        self._run_here(job.outer, job.task,
                       self.local.submit_pickled(job.blob, job.pipeline_key, job.task))

    def _received(self, job: Job, dask_future: Any) -> None:
        """The Dask future ended (a thread of Dask's): turn it into the attempt's outcome."""
        if job.settled:  # cancelled, or its worker found lost, already
            return
        status = dask_future.status
        if status == "finished":
            try:
                outcome = dask_future.result(timeout=self.connect_timeout)
            except Exception as exc:
                outcome = died(job, self._hosts, f"its result was lost ({type(exc).__name__}: {exc})")
        elif status == "error":
            outcome = errored(job, self._hosts, dask_future.exception())
        elif status == "cancelled":
            outcome = Outcome(ok=False, interrupted=True, error=job.cancel_reason or (
                f"the Dask scheduler at {self.scheduler} was lost while the attempt ran; the "
                "stage runs again"))
            if job.cancel_reason is None:  # Dask's client cancels all when it loses the scheduler
                self._lost("the connection broke")
                with self._lock:
                    self._forget.append(job.task)  # it may run on: its object is removed
        else:
            outcome = died(job, self._hosts, f"Dask reports the attempt {status}")
        if outcome.error_type == "AlreadyClaimed":
            outcome = died(job, self._hosts, "Dask started it again elsewhere, which was refused")
        self._finish(job, outcome)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            if job.settled:
                return
            job.settled = True
            self._jobs.pop(job.outer, None)
            self._done.append(job)  # released after the next submit (_release_done)
        if outcome.error_type == "WorkerDied":
            forget_outputs(self.object_store, job.task)
        if outcome.error_type == "OutputMissing" and "input file" in (outcome.error or ""):
            with self._lock:  # put it again
                self._inputs.pop(str(job.task.params.get("input_sha256")), None)
        settle(job.outer, outcome)

    def _with_input(self, task: StageTask) -> StageTask:
        """The run's input file travels too: put into the object store once (by its hash), its
        URI in ``params["input_uri"]``; the worker fetches it (:func:`remote.local_input`)."""
        path, sha = task.params.get("input_file"), task.params.get("input_sha256")
        if not path or not sha or task.params.get("input_uri"):
            return task
        # checked (and put again if gone) once a run, not once a daemon: an object removed
        # from the bucket (a lifecycle rule, a clean-up) failed every later run of that file,
        # every retry, until the daemon restarted
        with self._lock:
            known = self._inputs.get(sha)
        if known is None or known[1] != task.run_id:
            known = (self.object_store.put_input(path, str(sha)), task.run_id)  # not locked
            with self._lock:
                self._inputs[sha] = known
                self._inputs.move_to_end(sha)
                if len(self._inputs) > INPUTS_KEPT:
                    self._inputs.popitem(last=False)
        return replace(task, params={**task.params, "input_uri": known[0]})

    def _submit_local(self, pipeline: Any, task: StageTask) -> Future:
        task = replace(task, object_store=self.object_store.settings)
        outer: Future = Future()
        self._run_here(outer, task, self.local.submit(pipeline, task))
        return outer

    def _run_here(self, outer: Future, task: StageTask, inner: Future) -> None:
        """An attempt in this host's pool; its output goes into the object store too (on a
        thread of ours), for downstream stages that run on the cluster."""
        self._inner[outer] = inner
        self._local_futures.add(outer)

        def done(f: Future) -> None:
            self._inner.pop(outer, None)
            self._uploads.submit(publish, f.result(), task, self.object_store).add_done_callback(
                lambda p: (self._local_futures.discard(outer), settle(outer, p.result())))

        inner.add_done_callback(done)

__all__ = ["DaskExecutor", "ClusterUnavailable", "ALERT"]

"""The default executor: a warm pool of worker processes.

``ProcessExecutor`` runs each attempt in a worker process, so a timeout
really stops the work (the worker and its process group are killed), and a
stage that segfaults, calls ``os._exit`` or is killed for memory fails that
attempt and nothing else.  Workers stay warm between attempts: a stage does
not pay for a fresh interpreter and its imports.  Fresh workers run
``python -P -m pipelines.execution.worker`` (see that module, and children.py
for their ``sys.path``).
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from .children import child_env, python_command
from ..logs import get_logger
from .executors import Executor, InProcessExecutor
from .poolparts import _Job, _Worker, describe_exit
from .runner import HOSTNAME, Outcome, StageTask

_MISSING = object()

#: how long a new worker may take to start (its interpreter and ahgd's imports: ~0.15 s on an
#: idle host, seconds on a loaded one) before the attempt sent to it fails; the attempt's own
#: timeout counts from when the worker is ready
WORKER_START_S = 60.0

__all__ = ["ProcessExecutor", "acquire_shared", "describe_exit", "make_executor", "release_shared",
           "run_executor", "shutdown_shared"]


class ProcessExecutor(Executor):
    """A warm pool of worker processes, shared by every run that uses it.

    At most ``max_workers`` attempts run at once; further submissions queue.
    A timeout counts from when the attempt starts in a worker, not from when
    it was queued, nor while a new worker's interpreter starts (that is
    bounded on its own, by ``WORKER_START_S``).
    """

    enforces_timeouts = True

    def __init__(self, max_workers: int = 2, *, env: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, stdout: Any = None):
        self.max_workers = max(1, max_workers)
        self._stdout = stdout  # where workers' output goes (default: ours)
        self._init_slots()
        self._env = env
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._want = 0  # workers to keep started even when idle (prestart)
        self._generation = 0  # bumped by renew(): workers of older ones take no new work
        #: (id(pipeline), id(params)) -> (weakref to it, the execution's params, pickled
        #: pipeline, key)
        self._pickled: dict[tuple[int, int], tuple[Any, Any, bytes, str]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ahgd-workers", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------

    def submit(self, pipeline: Any, task: StageTask) -> Future:
        fork = getattr(type(pipeline), "__module__", "") == "__main__"
        # pickled once per execution of a run, not once per attempt: the tasks of one execution
        # share its params dict (a retry or a later run, read from the log, has its own).  Kept
        # by execution, not by pipeline: the daemon's runs of one pipeline (one object) go on
        # side by side, and kept by pipeline each run's attempt undid the one before's (a
        # burst of small files pickled the pipeline for 97 % of its attempts)
        slot = (id(pipeline), id(task.params))
        kept = self._pickled.get(slot)
        if kept is not None and kept[0]() is pipeline and kept[1] is task.params:
            return self.submit_pickled(kept[2], kept[3], task, fork=fork)
        try:
            blob = pickle.dumps(pipeline, protocol=5)
        except Exception as exc:
            future: Future = Future()
            future.set_result(Outcome(
                ok=False, retryable=False, error_type=type(exc).__name__,
                retry_why="the pipeline cannot be pickled: a retry would fail the same way",
                error=(f"pipeline {task.pipeline_name!r} cannot be sent to a worker process "
                       f"({type(exc).__name__}: {exc}); keep unpicklable objects (connections, "
                       "locks, open files) out of the pipeline's attributes, or run it with "
                       "executor='inprocess'")))
            return future
        key = f"{id(pipeline)}:{hash(blob)}"
        with self._lock:
            if len(self._pickled) >= 64:  # runs that ended long ago
                self._pickled.pop(next(iter(self._pickled)))
            try:
                self._pickled[slot] = (weakref.ref(pipeline), task.params, blob, key)
            except TypeError:  # no weak references to it: pickled for every attempt
                pass
        return self.submit_pickled(blob, key, task, fork=fork)

    def submit_pickled(self, blob: bytes, key: str, task: StageTask, *,
                       fork: bool = False) -> Future:
        """An attempt of a pipeline pickled already (``blob``; ``key`` names it, so a worker
        holding it is not sent it again): how a Dask worker runs the attempts it is given
        without unpickling stage code in its own process."""
        future: Future = Future()
        job = _Job(next(self._ids), None, key, blob, fork, task, future)
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProcessExecutor has been shut down")
            worker = None if self._queue else next(
                (w for w in self._workers if w.job is None and w.fork == fork and w.ready
                 and w.generation == self._generation), None)
            if worker is None:
                self._queue.append(job)
            else:  # a warm worker is idle: send it the attempt now, without a hop through the
                # dispatcher thread (which already waits on that worker's connection)
                self._start_job(worker, job)
                if job.worker is worker and job.deadline is None:
                    return future
                # a deadline for the dispatcher to watch, or that worker had died and
                # _start_job queued the attempt again: the dispatcher takes it from here
        self._wake()
        return future

    def cancel(self, future: Future, reason: str = "cancelled") -> None:
        with self._lock:
            for job in list(self._queue):
                if job.future is future:
                    self._queue.remove(job)
                    future.set_result(Outcome(ok=False, interrupted=True, error=reason))
                    return
            for w in self._workers:
                if w.job is not None and w.job.future is future:
                    w.job.cancel_reason = reason
        self._wake()

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
        for job in pending:
            job.future.set_result(Outcome(ok=False, interrupted=True, error="executor shut down"))
        self._wake()
        self._thread.join(timeout=30)
        self._wake_r.close()
        self._wake_w.close()

    def prestart(self, count: int | None = None) -> None:
        """Start workers now (daemon start-up, benchmarks) rather than at the first attempt.

        The dispatcher thread spawns them: Linux ties a worker's parent-death
        signal to the thread that started it, and that thread lives as long as
        the pool.
        """
        with self._lock:
            self._want = min(count or self.max_workers, self.max_workers)
        self._wake()

    def renew(self) -> None:
        """From now on attempts start in workers that import stage code afresh.

        A worker keeps every module it imported; after a deploy (the daemon's
        SIGHUP) new attempts must run the code on disk.  Idle workers are
        stopped now and new ones started as needed; a worker running an
        attempt finishes it on the code it has, and is stopped then.
        """
        with self._lock:
            self._generation += 1
        self._wake()

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers]

    def busy(self) -> int:
        with self._lock:
            return sum(1 for w in self._workers if w.job is not None)

    def worker_jobs(self) -> list[tuple[int, str | None, str | None, str | None]]:
        """``(pid, pipeline, run_id, stage)`` of each worker; None for an idle one."""
        with self._lock:
            return [(w.pid, w.job.task.pipeline_name, w.job.task.run_id, w.job.task.stage)
                    if w.job is not None else (w.pid, None, None, None) for w in self._workers]

    # -- the dispatcher thread -------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        # Everything but the wait itself runs under the lock: submit(), cancel()
        # and prestart() on other threads see a consistent set of workers.
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # this thread must outlive any one failure
                get_logger("pipelines.workers").error("worker_pool_error", error=str(exc),
                                                      error_type=type(exc).__name__)
                time.sleep(0.5)

    def _step(self) -> bool:
        """One round of the dispatcher; True when the pool has shut down."""
        with self._lock:
            if self._closed:
                self._stop_workers()
                return True
            self._dispatch()
            timeout = self._nearest_deadline()
            waitables: list[Any] = [self._wake_r] + [w.conn for w in self._workers]
        try:
            ready = wait(waitables, timeout=timeout)
        except OSError:  # a connection closed under us: look at everything
            ready = waitables[1:]
        with self._lock:
            for obj in ready:
                if obj is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    continue
                worker = next((w for w in self._workers if w.conn is obj), None)
                if worker is not None:
                    self._receive(worker)
            self._enforce_deadlines()
        return False

    def _nearest_deadline(self) -> float | None:
        if any(w.job and w.job.cancel_reason for w in self._workers):
            return 0.0
        deadlines = [w.job.deadline for w in self._workers if w.job and w.job.deadline]
        return max(0.0, min(deadlines) - self._clock()) if deadlines else None

    def _dispatch(self) -> None:
        for worker in [w for w in self._workers if w.job is None and w.generation < self._generation]:
            self._retire(worker)  # it imported stage code before renew(): none of it is wanted
        while len(self._workers) < self._want:
            try:
                self._workers.append(self._spawn(False))
            except OSError:
                break  # out of processes or descriptors: try again on the next round
        while self._queue:
            job = self._queue[0]
            try:
                worker = self._idle_worker(job.fork)
            except OSError as exc:  # the attempt fails; the retry policy decides what next
                self._queue.popleft()
                job.future.set_result(Outcome(
                    ok=False, retryable=True, error_type="WorkerStartFailed",
                    error=f"could not start a worker process for stage {job.task.stage!r}: {exc}"))
                continue
            if worker is None:
                return
            self._queue.popleft()
            self._start_job(worker, job)

    def _idle_worker(self, fork: bool) -> _Worker | None:
        idle = [w for w in self._workers if w.job is None and w.fork == fork]
        if idle:
            return idle[0]
        if len(self._workers) < self.max_workers:
            worker = self._spawn(fork)
            self._workers.append(worker)
            return worker
        # all slots taken: retire an idle worker of the other kind to make room
        other = next((w for w in self._workers if w.job is None), None)
        if other is not None:
            self._retire(other)
            worker = self._spawn(fork)
            self._workers.append(worker)
            return worker
        return None

    def _spawn(self, fork: bool) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        if fork:
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 0
                try:
                    parent_sock.close()
                    from .children import die_with_parent
                    from .worker import serve

                    die_with_parent(parent)
                    os.setpgrp()

                    serve(Connection(child_sock.detach()))
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            child_sock.close()
            return _Worker(None, Connection(parent_sock.detach()), pid, True,
                           generation=self._generation)
        fd = child_sock.fileno()
        # the worker must import what this process imported, wherever it came from, and
        # never a folder of the working directory in place of ahgd's packages (children.py)
        env = child_env(self._env)
        proc = subprocess.Popen(
            python_command("pipelines.execution.worker", str(fd), str(os.getpid())),
            pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, close_fds=True,
            stdout=self._stdout, stderr=subprocess.STDOUT if self._stdout is not None else None,
        )
        child_sock.close()
        return _Worker(proc, Connection(parent_sock.detach()), proc.pid, False,
                       generation=self._generation)

    def _start_job(self, worker: _Worker, job: _Job) -> None:
        if not worker.ready:  # sent when it says it is ready (_receive): a large pipeline's
            # send to a process still starting blocks until it reads, under the pool's lock
            # (submit, cancel and the monitor's look waited, for ever if its start hung)
            worker.job, job.worker = job, worker
            job.started = self._clock()
            job.deadline = job.started + WORKER_START_S
            return
        self._send_job(worker, job)

    def _send_job(self, worker: _Worker, job: _Job) -> None:
        blob = None if worker.pipeline_key == job.key else job.blob
        task, gone = job.task, None
        sent = worker.upstream
        if sent is not None and sent[0] is task.params and sent[1] == task.run_id:
            # the worker holds the upstream outputs of this execution's previous attempt: send
            # what changed (the stages done since), not every output again
            before, now = sent[2], task.upstream
            gone = list(before.keys() - now.keys())
            task = _with_upstream(task, {
                s: ref for s, ref in now.items() if before.get(s, _MISSING) is not ref})
        try:
            worker.conn.send(("run", job.task_id, job.key, blob, task, gone))
            worker.upstream = (job.task.params, job.task.run_id, job.task.upstream)
        except (OSError, BrokenPipeError):
            if worker.ready:  # a warm worker died while idle: the attempt never began in it,
                self._worker_died(worker, None)  # so it waits for another worker instead
                self._queue.appendleft(job)
                return
            self._worker_died(worker, job)
            return
        worker.job = job  # pipeline_key changes once the worker says it loaded it (_receive)
        job.worker = worker
        self._time_attempt(job, self._clock())

    def _time_attempt(self, job: _Job, now: float) -> None:
        job.started = now
        job.deadline = now + job.task.timeout if job.task.timeout else None

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            job = worker.job
            self._worker_died(worker, job)
            return
        if message[0] == "ready":
            worker.ready = True
            job, worker.job = worker.job, None
            if job is not None:  # given to it while it started: sent now, and timed from now
                self._send_job(worker, job)
            return
        _, task_id, outcome, *loaded = message
        job = worker.job
        worker.job = None
        # the key of the pipeline the worker holds now (None: loading it failed, send it again)
        worker.pipeline_key = loaded[0] if loaded else None
        if job is not None and job.task_id == task_id and not job.future.done():
            job.future.set_result(outcome)

    def _worker_died(self, worker: _Worker, job: _Job | None) -> None:
        code = worker.reap()
        self._workers.remove(worker)
        if job is not None and not job.future.done():
            job.future.set_result(Outcome(
                ok=False, error_type="WorkerDied", worker_pid=worker.pid, host=HOSTNAME,
                wall_s=self._clock() - (job.started or self._clock()),
                error=(f"the worker process running stage {job.task.stage!r} "
                       f"{describe_exit(code)}; the attempt failed and nothing else was affected")))

    def _enforce_deadlines(self) -> None:
        now = self._clock()
        for worker in list(self._workers):
            job = worker.job
            if job is None:
                continue
            if job.cancel_reason is not None:
                # the attempt ran until now in its worker: its wall time, not 0 (ahgd cancel,
                # or the grace of a stopping daemon running out)
                self._kill_job(worker, job, Outcome(
                    ok=False, interrupted=True, error=job.cancel_reason, worker_pid=worker.pid,
                    host=HOSTNAME, wall_s=now - (job.started or now)))
            elif job.deadline is not None and now >= job.deadline and not worker.ready:
                self._kill_job(worker, job, Outcome(
                    ok=False, retryable=True, error_type="WorkerStartFailed",
                    worker_pid=worker.pid, wall_s=now - (job.started or now),
                    error=(f"the worker process (pid {worker.pid}) started for stage "
                           f"{job.task.stage!r} was not ready after {WORKER_START_S:g}s and "
                           "was killed; the host may be overloaded or ahgd's imports hang")))
            elif job.deadline is not None and now >= job.deadline:
                self._kill_job(worker, job, Outcome(
                    ok=False, timed_out=True, error_type="Timeout", worker_pid=worker.pid,
                    wall_s=now - (job.started or now),
                    error=(f"stage {job.task.stage!r} timed out after "
                           f"{job.task.timeout:g}s; its worker process (pid {worker.pid}) was killed")))

    def _kill_job(self, worker: _Worker, job: _Job, outcome: Outcome) -> None:
        worker.kill()
        self._workers.remove(worker)
        worker.job = None
        if not job.future.done():
            job.future.set_result(outcome)

    def _retire(self, worker: _Worker) -> None:
        try:
            worker.conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        worker.kill()
        self._workers.remove(worker)

    def _stop_workers(self) -> None:
        for worker in list(self._workers):
            job = worker.job
            if job is not None and not job.future.done():
                job.future.set_result(Outcome(ok=False, interrupted=True, error="executor shut down"))
            self._retire(worker)


def _with_upstream(task: StageTask, upstream: dict[str, Any]) -> StageTask:
    """A shallow copy of ``task`` with other upstream outputs (``dataclasses.replace`` runs
    ``__init__`` again: ~4 µs of the ~1 ms a warm stage costs, against ~1 µs)."""
    copy = object.__new__(StageTask)
    copy.__dict__.update(task.__dict__)
    copy.upstream = upstream
    return copy


# --------------------------------------------------------------------------- the shared pool


class _Shared:
    """One process-wide warm pool: who uses it, and what it was started for."""

    def __init__(self, key: tuple, executor: ProcessExecutor):
        self.key = key                  # (max_workers, working directory, environment)
        self.executor = executor
        self.users = 0
        self.code: dict[str, tuple[Any, Any]] = {}   # pipeline class -> (weakref, file stat)


_shared_lock = threading.Lock()
_shared: dict[int, _Shared] = {}        # by max_workers
_retired: list[_Shared] = []            # replaced while a run still used them
_atexit_registered = False


def _spawn_key(max_workers: int) -> tuple:
    """What a worker takes from us when it starts: a pool started under other ones is not
    reused (a script that changed directory, ``sys.path`` or the environment)."""
    env = child_env(None)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    return (max_workers, cwd, tuple(sorted(env.items())))


def _code_of(cls: type) -> tuple[str, Any, Any]:
    """``(name, weakref to the class, stat of its module's file)``: a class defined again
    (``importlib.reload``, a notebook cell run again) or a module file changed on disk makes
    the shared pool's workers stale."""
    module = sys.modules.get(cls.__module__)
    where = getattr(module, "__file__", None)
    try:
        st = os.stat(where) if where else None
        stat = (st.st_mtime_ns, st.st_size, st.st_ino) if st else None
    except OSError:
        stat = None
    try:
        ref = weakref.ref(cls)
    except TypeError:  # pragma: no cover - classes take weak references
        ref = None
    return f"{cls.__module__}.{cls.__qualname__}", ref, stat


def acquire_shared(max_workers: int, pipeline: Any = None) -> ProcessExecutor:
    """The process-wide warm pool of ``max_workers`` workers, kept across ``run()`` calls.

    Started on first use, shut down at interpreter exit (and forgotten in a forked child).
    A pool whose dispatcher has stopped, or that was started with another working directory
    or environment, is replaced; when ``pipeline``'s class was defined again or its module
    changed on disk since the pool last ran it, the pool's workers are renewed (as the
    daemon's reload renews its own) so that no attempt runs stale code.  Give it back with
    :func:`release_shared`.
    """
    global _atexit_registered
    key = _spawn_key(max_workers)
    with _shared_lock:
        entry = _shared.get(max_workers)
        if entry is not None and (entry.key != key or entry.executor._closed
                                  or not entry.executor._thread.is_alive()):
            del _shared[max_workers]
            _retire_shared(entry)
            entry = None
        if entry is None:
            entry = _shared[max_workers] = _Shared(key, ProcessExecutor(max_workers))
            if not _atexit_registered:
                import atexit

                atexit.register(shutdown_shared)
                _atexit_registered = True
        if pipeline is not None:
            name, ref, stat = _code_of(type(pipeline))
            seen = entry.code.get(name)
            if seen is not None and (seen[0] is None or seen[0]() is not type(pipeline)
                                     or seen[1] != stat):
                entry.executor.renew()
            entry.code[name] = (ref, stat)
        entry.users += 1
        return entry.executor


def release_shared(executor: Executor) -> None:
    """A run is done with a pool from :func:`acquire_shared`; a replaced one shuts down once
    no run uses it."""
    stop = None
    with _shared_lock:
        for entry in [*_shared.values(), *_retired]:
            if entry.executor is executor:
                entry.users = max(0, entry.users - 1)
                if entry in _retired and entry.users == 0:
                    _retired.remove(entry)
                    stop = entry.executor
                break
    if stop is not None:
        stop.shutdown()


def _retire_shared(entry: _Shared) -> None:
    """Under ``_shared_lock``: stop ``entry``'s pool now if unused, else when released."""
    if entry.users == 0:
        threading.Thread(target=entry.executor.shutdown, name="ahgd-pool-stop", daemon=True).start()
    else:
        _retired.append(entry)


def shutdown_shared() -> None:
    """Stop every shared pool (at interpreter exit; tests)."""
    with _shared_lock:
        entries = [*_shared.values(), *_retired]
        _shared.clear()
        _retired.clear()
    for entry in entries:
        entry.executor.shutdown()


def _forget_shared_in_child() -> None:
    # a forked child has none of the pools' threads: their workers are the parent's
    global _shared_lock, _shared, _retired
    _shared_lock = threading.Lock()
    _shared = {}
    _retired = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared_in_child)


def run_executor(kind: str | Executor | None, max_workers: int,
                 pipeline: Any = None) -> tuple[Executor, Callable[[], None]]:
    """The executor a run uses when given a name, and what to call when the run is done.

    ``"process"``: the shared warm pool (:func:`acquire_shared`); ``"inprocess"``: threads
    of this run's own; an Executor: itself, left as it is."""
    if isinstance(kind, Executor):
        return kind, lambda: None
    name = (kind or "process").lower()
    if name in _PROCESS_NAMES:
        executor = acquire_shared(max_workers, pipeline)
        return executor, lambda: release_shared(executor)
    own, _ = make_executor(kind, max_workers)
    return own, own.shutdown


_PROCESS_NAMES = ("process", "processes", "worker", "workers")


def make_executor(kind: str | Executor | None, max_workers: int) -> tuple[Executor, bool]:
    """An executor from a name; the bool says whether the caller owns (and closes) it."""
    if isinstance(kind, Executor):
        return kind, False
    name = (kind or "process").lower()
    if name in _PROCESS_NAMES:
        return ProcessExecutor(max_workers), True
    if name in ("inprocess", "in-process", "thread", "threads"):
        return InProcessExecutor(max_workers), True
    from ..errors import ConfigError

    raise ConfigError(f"executor {kind!r} is not known; use 'process' (default: worker "
                      "processes, real timeouts) or 'inprocess' (threads, no timeouts)")

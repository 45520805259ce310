"""The daemon's runs in flight: admission, launch and reaping.

Admission: PENDING runs start oldest request first, at most ``2 x max_workers``
runs at once, and only runs of pipelines none of whose dependencies has a run
in flight, never runs of a paused pipeline (``ahgd pause``), and at most
``max_workers`` runs of backfills at once.  A run another process holds
(``ahgd run`` in a terminal) is left to it.  Each run executes on a thread of its own; its stages go to the worker
pool.  Reaping collects the threads that ended, records a run whose thread
died as failed, and hands every reaped run to the daemon's follow-ups.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state import EventLog, EventType as T, Run, new_event, ops_queries, queries
from state.errors import AhgdError, DiskFull, ObjectStoreError
from state.locks import Locked, is_locked, run_lock_path
from state.machine import ENDED_RUN_STATES, RunState, StageState

from .configuration import Setup


@dataclass
class ActiveRun:
    run_id: str
    pipeline: str
    thread: threading.Thread
    cancel: Any                   # the run's CancelToken
    started: float                # monotonic seconds
    result: Any = None
    error: BaseException | None = None
    #: the run as the log held it when its execution ended, read on the run's own thread:
    #: read by the loop's reap, it waited for the log's lock while run threads committed
    #: (fsync'd), 0.7-1.8 ms a run of the loop's time in a burst
    ended_run: Run | None = None
    configured_pipeline: Any = None  # the pipeline object it runs with (a reload does not swap it)


#: after a run's event found the disk full, how long no run starts (each would meet it too)
DISK_FULL_WAIT_S = 10.0
#: after a run could not check its outputs in the object store (down, unreachable), how long
#: no run starts: with a Dask cluster every run puts and reads its data there
STORE_WAIT_S = 30.0
#: how many times a run waits for the object store before it is recorded FAILED (~10 min)
STORE_WAITS = 20
_DISK_REASON = ("the disk holding the state directory was full; the run resumes at its first "
                "unfinished stage")


class Finished:
    """The runs that ended this session: how many endings (``len``), and the state each of the
    latest ``keep`` ended in (all of them with ``keep=None``: ``--once``, whose exit code
    says whether every run completed).  A daemon's whole life of runs was kept here, and
    copied into every status reply: ~45 bytes of reply and ~115 of memory a run, for ever."""

    def __init__(self, keep: int | None = 200):
        self._keep = keep
        self._runs: dict[str, str] = {}
        self._count = 0

    def __setitem__(self, run_id: str, state: str) -> None:
        self._count += 1
        self._runs.pop(run_id, None)   # the latest last
        self._runs[run_id] = state
        if self._keep is not None and len(self._runs) > self._keep:
            del self._runs[next(iter(self._runs))]

    def __len__(self) -> int:
        return self._count

    def values(self) -> Any:
        return self._runs.values()

    def recent(self) -> dict[str, str]:
        """run id -> the state it ended in, oldest first (the latest ``keep``)."""
        return dict(self._runs)


class RunSupervisor:
    """Starts PENDING runs on threads of their own and reaps them when they end.

    ``lock`` is held while runs are admitted, so that a cancel request cannot slip
    between the look at a run and its launch.
    """

    def __init__(self, log: EventLog, state_dir: Path, executor: Any, budget: Any, *,
                 lock: threading.RLock, monotonic: Callable[[], float], wake: Callable[[], None],
                 alert: Callable[..., None], logger: Any, keep_finished: int | None = 200):
        self.log = log
        self.state_dir = state_dir
        self.executor = executor
        self.budget = budget
        self.lock = lock
        self._monotonic = monotonic
        self._wake = wake
        self._alert = alert
        self._logger = logger
        self.active: dict[str, ActiveRun] = {}
        #: the runs that ended this session (--once keeps every one: its exit code)
        self.finished = Finished(keep_finished)
        self.stop = threading.Event()          # run threads read this: no new stages
        #: no run starts before this (monotonic): a run's event found the disk full, or a run
        #: could not reach the object store
        self.no_start_until: float | None = None
        #: run id -> pipeline, of the runs a full disk or the object store stopped, to be resumed
        self.waiting_to_resume: dict[str, str] = {}
        #: run id -> why it waits, when not for the disk (the object store)
        self._waiting_why: dict[str, str] = {}
        #: run id -> how often it waited for the object store (cleared when it ends)
        self._store_waits: dict[str, int] = {}
        self.grace_deadline: float | None = None

    # ------------------------------------------------------------------ admission and launch

    def resume_waiting(self) -> None:
        """The runs a full disk (or the object store) stopped, once their wait has passed
        (DISK_FULL_WAIT_S, STORE_WAIT_S): each the log still has RUNNING is recorded
        suspended (PENDING again: not a crash, so not counted against max_recoveries); while
        the disk is still full, they wait DISK_FULL_WAIT_S more."""
        if self.no_start_until is not None and self._monotonic() < self.no_start_until:
            return
        from state.orphans import suspend

        for run_id in list(self.waiting_to_resume):
            try:
                suspend(self.log, self.state_dir, run_id,
                        reason=self._waiting_why.get(run_id, _DISK_REASON))
            except DiskFull:
                self.no_start_until = self._monotonic() + DISK_FULL_WAIT_S
                return
            except AhgdError as exc:  # the recovery check tries again later
                self._logger.warning("run_resume_failed", run_id=run_id, error=str(exc))
            del self.waiting_to_resume[run_id]
            self._waiting_why.pop(run_id, None)

    def start_pending(self, setup: Setup) -> None:
        """Launch the PENDING runs that may start now, oldest request first."""
        self.resume_waiting()
        limit = max(2, 2 * self.executor.max_workers)
        if len(self.active) >= limit:
            return
        if self.no_start_until is not None and self._monotonic() < self.no_start_until:
            return  # a run found the disk full just now: nothing could be recorded either
        # pipelines whose dependencies have work in flight wait for it; paused ones wait for
        # `ahgd resume`
        # (a scan of every PENDING run: asked only when some pipeline has dependencies)
        deps = setup.dependencies
        busy = (queries.pipelines_in_flight(self.log)
                if any(deps.get(name) for name in setup.pipelines) else set())
        paused = ops_queries.pipeline_pauses(self.log)
        startable = [name for name in setup.pipelines if name not in paused
                     and not any(dep in busy for dep in deps.get(name, ()))]
        if not startable:
            return
        # a backfill's runs take at most max_workers run slots: the other runs go on meanwhile
        slots = self.executor.max_workers - ops_queries.running_backfill_count(self.log)
        candidates = queries.pending_runs(self.log, startable, limit + len(self.active),
                                          backfill_slots=slots)
        with self.lock:
            for run_id, pipeline in candidates:
                if len(self.active) >= limit:
                    return
                if run_id in self.active or is_locked(run_lock_path(self.state_dir, run_id)):
                    continue  # ours already, or another process (ahgd run) is executing it
                place = queries.pending_place(self.log, run_id)
                if place is not None:  # not cancelled since
                    self._launch(run_id, pipeline, setup.pipelines[pipeline], place)

    def _launch(self, run_id: str, pipeline_name: str, pipeline: Any,
                place: int | None = None) -> None:
        from pipelines.execution import turns
        from pipelines.execution.plan import CancelToken

        cancel = CancelToken()
        active = ActiveRun(run_id, pipeline_name, None, cancel, self._monotonic(),  # type: ignore[arg-type]
                           configured_pipeline=pipeline)

        def body() -> None:
            try:
                active.result = pipeline.execute_run(
                    run_id, log=self.log, executor=self.executor, budget=self.budget,
                    stop=self.stop, grace_deadline=lambda: self.grace_deadline, cancel=cancel)
                active.ended_run = self.log.run(run_id)
            except BaseException as exc:  # recorded and alerted by the main loop
                active.error = exc
            finally:
                turns.run_ended(pipeline_name, run_id)  # (if its execution never began)
                self._wake()

        active.thread = threading.Thread(target=body, name=f"ahgd-run-{run_id}", daemon=True)
        # taken on before its thread runs: runs launched later (oldest first) wait for it
        # before their loads even if their threads record their start before this one's does
        turns.taken_on(run_id, pipeline_name, place)
        self.active[run_id] = active
        try:
            active.thread.start()
        except BaseException:
            turns.run_ended(pipeline_name, run_id)
            raise

    def cancel_active(self, run_id: str, reason: str) -> bool:
        """Ask a run this daemon is executing to stop; False if it executes none by that id.

        Call it holding ``lock``, like admission."""
        active = self.active.get(run_id)
        if active is None or not active.thread.is_alive():
            return False
        active.cancel.set(reason)
        return True

    # ------------------------------------------------------------------ reaping

    def reap(self, follow_up: Callable[[Run], None]) -> None:
        """Collect the runs whose thread ended; ``follow_up(run)`` for each the log knows."""
        for run_id, active in list(self.active.items()):
            if active.thread.is_alive():
                continue
            del self.active[run_id]
            run = active.ended_run if active.error is None else self.log.run(run_id)
            if isinstance(active.error, Locked):  # another process took it first: not ours
                self._logger.info("run_owned_elsewhere", run_id=run_id, holder=str(active.error))
                continue
            if isinstance(active.error, DiskFull) and not (
                    run is not None and run.state in ENDED_RUN_STATES):
                self._wait_for_disk(run_id, active, active.error)
                continue
            if isinstance(active.error, ObjectStoreError) and not (
                    run is not None and run.state in ENDED_RUN_STATES) \
                    and self._may_wait_for_store(run_id, active.error):
                self._wait_for_store(run_id, active, active.error)
                continue
            self._store_waits.pop(run_id, None)
            if active.error is not None and not (run is not None and run.state in ENDED_RUN_STATES):
                error = f"{type(active.error).__name__}: {active.error}"
                self._alert("error", f"run.crashed:{run_id}",
                            f"the thread of run {run_id} failed: {error}",
                            run_id=run_id, pipeline=active.pipeline, error=error)
                self._record_thread_failure(run_id, active.error)
                run = self.log.run(run_id)
            if run is None:
                continue
            if run.state in ENDED_RUN_STATES:
                self.finished[run_id] = run.state
            follow_up(run)

    def _wait_for_disk(self, run_id: str, active: ActiveRun, error: DiskFull) -> None:
        """The log refused an event of the run for a full disk: nothing of it was written.
        No run starts for DISK_FULL_WAIT_S; then the run, if the log has it RUNNING, is
        recorded suspended (:meth:`resume_waiting`) and starts again like any PENDING run.
        It used to be recorded FAILED (once there was room), though nothing was wrong with it."""
        self.no_start_until = self._monotonic() + DISK_FULL_WAIT_S
        self.waiting_to_resume[run_id] = active.pipeline
        self._logger.warning("run_waits_for_disk", run_id=run_id, pipeline=active.pipeline,
                             error=str(error),
                             then="it resumes once the disk holding the state directory has "
                                  "room; free some (retention frees what it may)")

    def _may_wait_for_store(self, run_id: str, error: ObjectStoreError) -> bool:
        """Whether the run waits for the object store (again): not when a setting of it is
        wrong (a bucket that does not exist, refused credentials: waiting does not mend
        those), nor after STORE_WAITS waits; the run is then recorded FAILED with the error,
        which says what to fix, and ``ahgd retry`` takes it up again."""
        if error.setting:
            return False
        waits = self._store_waits.get(run_id, 0) + 1
        self._store_waits[run_id] = waits
        return waits <= STORE_WAITS

    def _wait_for_store(self, run_id: str, active: ActiveRun, error: ObjectStoreError) -> None:
        """The run could not check the outputs it reads in the object store (down, or not
        reachable from here) before a stage: the bucket's fault, not the run's.  No run starts
        for STORE_WAIT_S; then the run is recorded suspended and starts again (checking
        again), as after a full disk.  It was recorded FAILED ("the thread of run ... failed")."""
        self.no_start_until = max(self.no_start_until or 0.0, self._monotonic() + STORE_WAIT_S)
        self.waiting_to_resume[run_id] = active.pipeline
        self._waiting_why[run_id] = (f"the object store could not be reached ({error}); the run "
                                     "resumes at its first unfinished stage once it answers")
        self._logger.warning("run_waits_for_object_store", run_id=run_id,
                             pipeline=active.pipeline, error=str(error),
                             then=f"it starts again in {STORE_WAIT_S:g}s, and waits again "
                                  "while the object store does not answer")

    def _record_thread_failure(self, run_id: str, error: BaseException) -> None:
        """A run thread died (the log failed?): leave the run in a state replay understands."""
        try:
            run = self.log.run(run_id)
            if run is None or run.state not in (RunState.RUNNING, RunState.PENDING):
                return
            events = [new_event(T.STAGE_INTERRUPTED, run_id, stage=stage, attempt=attempt.attempt,
                                error="the run's thread failed")
                      for stage, attempt in run.attempts.items()
                      if attempt.state == StageState.RUNNING]
            events.append(new_event(T.RUN_FAILED, run_id, error=f"{type(error).__name__}: {error}"))
            self.log.append_many(events)
        except AhgdError as exc:
            self._alert("critical", f"run.state_unrecorded:{run_id}",
                        f"could not record that run {run_id} failed: {exc}", run_id=run_id,
                        error=str(exc))

    def wind_down(self, grace: float, tick: Callable[[], None]) -> None:
        """Stop starting stages; wait for the running ones (the engine records what has not
        finished by the grace deadline as interrupted), calling ``tick`` as time passes."""
        self.grace_deadline = self._monotonic() + grace
        self.stop.set()
        deadline = self.grace_deadline + 60
        for active in list(self.active.values()):
            while active.thread.is_alive() and self._monotonic() < deadline:
                active.thread.join(timeout=min(1.0, max(0.0, deadline - self._monotonic())))
                tick()

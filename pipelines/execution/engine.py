"""The run engine: drives one run's stages through the event log.

Every transition is appended before (``stage.started``) or after
(``stage.completed`` & co.) the work it describes, so the log always says
what happened; the engine keeps nothing that replay could not rebuild.  The
same engine serves ``BasePipeline.run()`` in a script and the daemon's
runs, including resumed and recovered ones: it starts from whatever the log
says the run has already done.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from state import EventLog, EventType as T, Run, new_event, store
from state.errors import AhgdError, IllegalTransition
from state.machine import DONE_STAGE_STATES, RunState, StageState

from .executors import Executor, InProcessExecutor
from .. import attemptdb
from ..resources import ResourceBudget
from .plan import Progress, RunPlan, retry_state
from .runner import Outcome, run_here
from ..retries import after_failure, failure_message
from .turns import LoadTurn, last_stages, run_ended
from ..stage import StageConfig
from .verify import (MAX_INVALIDATIONS, OutputChecks, ancestors, invalidated, judge_warehouses,
                     refused_by_retention, stored_key, too_often)

#: how often a waiting engine looks at its stop/cancel flags
POLL_S = 0.1
#: how long a run whose event log failed waits for its running attempts to stop
ABANDON_WAIT_S = 30.0
#: ranks runs by when their execution began here (Executor.try_reserve hands slots out in it)
_RANKS = itertools.count()


class EngineError(AhgdError):
    """The engine was asked to do something the run's state does not allow."""


@dataclass
class _Running:
    stage: str
    attempt: int
    future: Future
    executor: Executor


class _Outputs(dict):
    """stage -> its recorded output, knowing which stages' outputs are files or inline tables
    (``files``): those are the ones checked before a stage that may read them starts."""

    def __init__(self) -> None:
        super().__init__()
        self.files: set[str] = set()

    def __setitem__(self, stage: str, ref: dict[str, Any] | None) -> None:
        super().__setitem__(stage, ref)
        if stored_key(ref) is not None:
            self.files.add(stage)
        else:
            self.files.discard(stage)

    def pop(self, stage: str, *default: Any) -> Any:  # type: ignore[override]
        self.files.discard(stage)
        return super().pop(stage, *default)

    def __delitem__(self, stage: str) -> None:
        self.files.discard(stage)
        super().__delitem__(stage)


class RunEngine:
    """Executes :class:`RunPlan` objects against one event log and executor."""

    def __init__(
        self,
        log: EventLog,
        state_dir: Path,
        executor: Executor,
        *,
        budget: ResourceBudget | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log = log
        self.state_dir = Path(state_dir)
        self.executor = executor
        self.budget = budget
        self.rng = rng or random.Random()
        self.clock = clock

    def execute(
        self,
        plan: RunPlan,
        *,
        stop: threading.Event | None = None,
        cancel: threading.Event | None = None,
        grace_deadline: Callable[[], float | None] | None = None,
        progress: Progress | None = None,
    ) -> Run:
        """Run ``plan`` to an end (completed, failed, cancelled, suspended); return the run.

        ``stop`` asks for a clean pause (no new stages; running ones finish
        until ``grace_deadline()``, then are interrupted; the run goes back to
        PENDING to be resumed).  ``cancel`` stops everything at once.
        """
        return _Execution(self, plan, stop or threading.Event(), cancel or threading.Event(),
                          grace_deadline or (lambda: None), progress or Progress(plan.stages)).go()


class _Execution:
    """One call of RunEngine.execute: the loop and its bookkeeping."""

    def __init__(self, engine: RunEngine, plan: RunPlan, stop: threading.Event,
                 cancel: threading.Event, grace: Callable[[], float | None], progress: Progress):
        self.engine, self.plan, self.stop, self.cancel, self.grace = engine, plan, stop, cancel, grace
        self.progress = progress
        self.log = engine.log
        self.done: set[str] = set()
        self.outputs = _Outputs()
        self.running: dict[Future, _Running] = {}
        self.next_attempt: dict[str, int] = {}
        self.tries: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        #: stage -> (attempt, payload) of its completion, for a stage.invalidated to quote
        self.completed: dict[str, tuple[int, dict[str, Any]]] = {}
        self.checks = OutputChecks(engine.state_dir, engine.log)
        self.invalidations: dict[str, int] = {}
        self._ancestor_sets: dict[str, set[str]] = {}
        #: every stage before this index of the plan is done (where _launch_ready looks first)
        self._scan_from = 0
        self.failed: tuple[str, str] | None = None
        #: a ready stage is waiting for its turn (a run of the pipeline to end), or for a
        #: worker slot or resource budget (any slot released): ``waiting`` is either
        self.waiting_turn = self.waiting_slot = False
        #: events not yet appended: a completion waits to share the next start's commit
        self._pending: list = []
        self._pending_durable = False
        #: worker slots and budget held by finished attempts until their end is flushed
        self._held_slots = 0
        self._held_budget: list = []
        self.inprocess: InProcessExecutor | None = None
        #: (this thread's warm DuckDB instance before) once an attempt ran on this thread
        self._warm_before: tuple[Any, ...] | None = None
        #: the run's last stages start after earlier runs of the pipeline have ended
        self.last_stages = last_stages(plan.stages, plan.deps)
        self.turn = LoadTurn(self.log, engine.state_dir, plan.pipeline_name, plan.run_id)
        #: the order slots are handed out in when several runs wait: the one started first
        self.rank = next(_RANKS)
        #: this run's rank waits in the executor's line for a slot
        self._queued = False

    # -- the loop ------------------------------------------------------------------

    def go(self) -> Run:
        try:
            return self._go()
        except BaseException:
            self._abandon()  # the log failed under us: stop the work we can no longer record
            raise
        finally:
            self._release_held()  # never leak a worker slot or budget
            self.engine.executor.withdraw(self.rank)
            # later runs waiting for their turn look again
            run_ended(self.plan.pipeline_name, self.plan.run_id)
            if self.inprocess is not None:
                self.inprocess.shutdown()
            if self._warm_before is not None:  # attempts ran on this thread: its warm DuckDB
                for warm in attemptdb.warm_instances():  # instances go, as a pool thread's would
                    if warm is not None and warm not in self._warm_before:
                        warm.close()

    def _abandon(self) -> None:
        for future, r in list(self.running.items()):
            r.executor.cancel(future, "the run's event log failed")
        deadline = time.monotonic() + ABANDON_WAIT_S
        while self.running and time.monotonic() < deadline:
            finished, _ = wait(list(self.running), timeout=min(1.0, ABANDON_WAIT_S))
            for future in finished:
                r = self.running.pop(future)
                self._held_slots += 1
                if self.engine.budget is not None:
                    self._held_budget.append((self.plan.run_id, r.stage))
                store.remove_attempt(self.engine.state_dir, self.plan.run_id, r.stage, r.attempt)
        # an attempt that will not stop (an in-process stage) gives its worker slot and budget
        # share back when it does end: the process, and the other runs sharing them, go on
        for future, r in self.running.items():
            future.add_done_callback(lambda _f, stage=r.stage: self._late_release(stage))
        self.running.clear()

    def _late_release(self, stage: str) -> None:
        self.engine.executor.release()
        if self.engine.budget is not None:
            self.engine.budget.release((self.plan.run_id, stage))

    def _go(self) -> Run:
        self._start()
        while True:
            if self.cancel.is_set():
                reason = getattr(self.cancel, "reason", None) or "cancelled on request"
                self._interrupt_all(reason)
                return self._end(T.RUN_CANCELLED, reason=reason)
            if self.stop.is_set():
                deadline = self.grace()
                if not self.running or (deadline is not None and self.engine.clock() >= deadline):
                    self._interrupt_all("the daemon is shutting down")
                    if self.failed is not None:
                        break  # it failed for good: record that, not a pause to resume
                    return self._end(T.RUN_SUSPENDED, reason="the daemon stopped; the run resumes "
                                                             "at its next start")
            elif self.failed is None:
                self._launch_ready()
            if self._queued and (not self.waiting_slot or self.failed is not None
                                 or self.stop.is_set()):
                self._queued = False   # no longer waiting for a slot: later runs may have one
                self.engine.executor.withdraw(self.rank)
            if not self._completed():  # else _end commits the last completion with the run's
                self._flush()
                self._release_held()
            if not self.running:
                if self.failed is not None:
                    stage, error = self.failed
                    return self._end(T.RUN_FAILED, error=error, stage=stage)
                if self.done >= set(self.plan.stages):
                    return self._end(T.RUN_COMPLETED)
                if not self.retry_at and not self.waiting and not self.stop.is_set():
                    self._nothing_can_start()
                    continue
            self._wait()
        stage, error = self.failed  # type: ignore[misc]
        return self._end(T.RUN_FAILED, error=error, stage=stage)

    @property
    def waiting(self) -> bool:
        """A ready stage waits for its turn, a worker slot or resource budget."""
        return self.waiting_turn or self.waiting_slot

    def _completed(self) -> bool:
        """Every stage is done and nothing runs: the run completes now."""
        return (not self.running and self.failed is None
                and len(self.done) >= len(self.plan.stages) and self.done >= set(self.plan.stages))

    def _start(self) -> Run:
        run = self.log.run(self.plan.run_id)
        if run is None:
            raise EngineError(f"run {self.plan.run_id!r} was never requested")
        if run.state == RunState.PENDING:
            self.log.append(new_event(
                T.RUN_STARTED, run.run_id, stages=self.plan.stages,
                owner={"pid": os.getpid(), "host": socket.gethostname()}))
            self.turn.started(run.requested_seq)
        elif run.state != RunState.RUNNING:
            raise EngineError(f"run {run.run_id!r} is {run.state}; only a PENDING run can start")
        else:
            raise EngineError(f"run {run.run_id!r} is already RUNNING; recover it first "
                              "(the daemon does this at start-up)")
        self.progress.update(state="RUNNING", run_id=run.run_id)
        for stage, att in run.attempts.items():
            if att.state in DONE_STAGE_STATES:
                self.done.add(stage)
                self.outputs[stage] = att.output
                self.completed[stage] = (att.attempt, att.info())
                self.progress.stage(stage, state=att.state, attempts=att.attempt)
            elif att.state == StageState.RETRYING:
                self.next_attempt[stage] = att.attempt
            else:  # failed, timed out or interrupted before this execution
                self.next_attempt[stage] = att.attempt + 1
        self.tries, self.retry_at = retry_state(self.log, run, self.engine.clock)
        for stage in self.plan.stages:
            if stage in self.done:
                continue
            if stage in self.plan.skip:
                self.log.append(new_event(T.STAGE_SKIPPED, run.run_id, stage=stage, attempt=0,
                                          reason=self.plan.skip[stage]), durable=False)
                self.done.add(stage)
                self.outputs[stage] = None
                self.progress.stage(stage, state=StageState.SKIPPED)
            elif stage in self.plan.reuse:
                from_run, ref = self.plan.reuse[stage]
                rows = (ref.get("tables") or {}).get("output") if ref else None
                self.log.append(new_event(T.STAGE_REUSED, run.run_id, stage=stage, attempt=0,
                                          from_run=from_run, output=ref, rows=rows), durable=False)
                self.done.add(stage)
                self.outputs[stage] = ref
                self.completed[stage] = (0, {"from_run": from_run, "rows": rows})
                self.checks.trust(ref)  # checked in full when the resume was planned
                self.progress.stage(stage, state=StageState.COMPLETED)
        # what an earlier execution recorded is checked in full before anything reads it
        while self.failed is None and self._invalidate_bad(
                ancestors([s for s in self.plan.stages if s not in self.done], self.plan.deps)):
            pass
        if self.failed is None:  # its input, removed by retention: refused, never run anew
            self.failed = refused_by_retention(self.log, self.engine.state_dir, self.plan,
                                               self.done, {})
        return run

    def _invalidate_bad(self, readable: set[str]) -> bool:
        """Invalidate the done stages whose output, read by ``readable``, is gone or altered."""
        # only outputs kept in files, and inline tables (with their SHA-256), can go bad (an
        # inline value is in the log itself)
        outputs = self.outputs
        on_disk = readable & outputs.files
        if not on_disk:
            return False
        bad = self.checks.bad_outputs(self.plan.stages, self.done, outputs, on_disk,
                                      self.plan.run_id)
        if self.failed is None and any(m.removed for m in bad.values()):
            self.failed = refused_by_retention(self.log, self.engine.state_dir, self.plan,
                                               self.done, bad)
            return True
        for stage, mismatch in bad.items():
            attempt, info = self.completed.pop(stage, (0, {}))
            self._pending.append(invalidated(self.plan.run_id, stage, attempt, info,
                                             self.outputs.pop(stage) or {}, mismatch))
            self.done.discard(stage)
            self._scan_from = 0
            self.next_attempt[stage] = attempt + 1
            self.progress.stage(stage, state=StageState.INVALIDATED, error=mismatch.message)
            self.invalidations[stage] = n = self.invalidations.get(stage, 0) + 1
            if n >= MAX_INVALIDATIONS and self.failed is None:
                self.failed = (stage, too_often(stage, n, mismatch, self.plan.run_id))
        if bad:  # committed before the next attempt starts: one commit keeps one row per stage
            self._flush()
        return bool(bad)

    def _ancestors(self, stage: str) -> set[str]:
        """The stages ``stage`` may read (the plan's dependencies do not change: kept, and
        built from its dependencies' own sets when those are known)."""
        known = self._ancestor_sets
        found = known.get(stage)
        if found is None:
            deps = self.plan.deps.get(stage, ())
            if all(d in known for d in deps):
                found = set(deps).union(*(known[d] for d in deps))
            else:
                found = ancestors([stage], self.plan.deps)
            known[stage] = found
        return found

    def _ready(self, stage: str) -> bool:
        if stage in self.done or any(r.stage == stage for r in self.running.values()):
            return False
        if self.retry_at.get(stage, 0.0) > self.engine.clock():
            return False
        return self.plan.deps.get(stage, set()) <= self.done

    def _launch_ready(self) -> None:
        self.waiting_turn = self.waiting_slot = False
        stages, done, i = self.plan.stages, self.done, self._scan_from
        while i < len(stages) and stages[i] in done:  # the stages before i are all done
            i += 1
        self._scan_from = i
        for stage in itertools.islice(stages, i, None):
            if len(self.running) >= self.plan.parallel:
                return
            if not self._ready(stage):
                continue
            # only outputs kept in files can go bad: with none, no ancestors to look at
            if self.outputs.files and self._invalidate_bad(self._ancestors(stage)):
                return self._launch_ready() if self.failed is None else None  # from the top
            if stage in self.last_stages and not self.turn.mine():
                self.waiting_turn = True
                continue
            cfg = self.plan.configs[stage]
            budget = self.engine.budget
            key = (self.plan.run_id, stage)
            # a worker slot first: a stage is only "started" when it really starts; a slot
            # held by this run's just-finished stage passes straight to its successor
            if self._held_slots:
                self._held_slots -= 1
            elif not self._reserve():
                self.waiting_slot = True
                return
            if budget is not None and not self._take_budget(budget, key, cfg.requirements()):
                self._held_slots += 1
                self.waiting_slot = True
                continue
            try:
                self._launch(stage, cfg)
            except BaseException:  # nothing was started: give back what we took for it
                if not any(r.stage == stage for r in self.running.values()):
                    self._held_slots += 1
                    if budget is not None:
                        self._held_budget.append(key)
                raise

    def _reserve(self) -> bool:
        """A worker slot for a stage of this run.  A run with nothing running waits for a slot
        in line, by when it started (it sleeps on the slots, so a release wakes it); one with
        stages running waits on them and takes a slot as before, out of line."""
        if self.running:
            return self.engine.executor.try_reserve()
        got = self.engine.executor.try_reserve(self.rank)
        self._queued = not got
        return got

    def _take_budget(self, budget: Any, key: tuple, needs: dict[str, float]) -> bool:
        """The resource budget for ``key``: the share of this run's just-finished stage passes
        straight to its successor, as its worker slot does (its end and the new start share
        one commit); otherwise with a budget as big as the pool, the successor never fit while
        the other workers were busy, gave its slot up and the worker waited for another run."""
        if key in self._held_budget:   # the same stage again (a retry without a delay):
            self._held_budget.remove(key)   # its share stays with it, charged as before
            return True
        if self._held_budget and budget.try_pass(self._held_budget[-1], key, needs):
            self._held_budget.pop()
            return True
        return budget.try_acquire(key, needs)

    def _launch(self, stage: str, cfg: StageConfig) -> None:
        attempt = self.next_attempt.get(stage, 1)
        self.retry_at.pop(stage, None)
        # one commit carries the previous stage's completion (durable) and this start
        self._pending.append(new_event(T.STAGE_STARTED, self.plan.run_id, stage=stage, attempt=attempt))
        self._flush()
        self.tries[stage] = self.tries.get(stage, 0) + 1
        outputs = self.outputs  # the outputs of exactly the done stages, in the usual case
        task = self.plan.task(stage, attempt, self.engine.state_dir,
                              dict(outputs) if len(outputs) == len(self.done)
                              else {s: outputs.get(s) for s in self.done})
        executor = self._executor_for(cfg)
        if self.plan.parallel == 1 and isinstance(executor, InProcessExecutor):
            # one stage at a time, on a thread of this process: on this thread, then (it can
            # no more be stopped on another); it has ended when run_here returns
            self.progress.stage(stage, state=StageState.RUNNING, attempts=attempt)
            if self._warm_before is None:
                self._warm_before = attemptdb.warm_instances()
            future = run_here(self.plan.pipeline, task)
            self.running[future] = _Running(stage, attempt, future, executor)
            return
        future = executor.submit(self.plan.pipeline, task)
        self.running[future] = _Running(stage, attempt, future, executor)
        self.progress.stage(stage, state=StageState.RUNNING, attempts=attempt)

    def _flush(self) -> None:
        """Append what is pending in one transaction; durable if it holds a completion."""
        if self._pending:
            events, self._pending = self._pending, []
            durable, self._pending_durable = self._pending_durable, False
            self.log.append_many(events, durable=durable)

    def _executor_for(self, cfg: StageConfig) -> Executor:
        """The run's executor, or a thread of this process for ``executor: inprocess`` stages.

        Either way the slot comes from the shared executor, so ``max_workers``
        still bounds all stages at once.
        """
        if cfg.executor != "inprocess" or isinstance(self.engine.executor, InProcessExecutor):
            return self.engine.executor
        if self.inprocess is None:
            self.inprocess = InProcessExecutor(max(1, self.plan.parallel))
        return self.inprocess

    def _wait(self) -> None:
        now = self.engine.clock()
        timeout = POLL_S
        if self.retry_at:
            timeout = min(timeout, max(0.0, min(self.retry_at.values()) - now))
        if not self.running:
            if self.waiting_turn and not self.waiting_slot:
                self.turn.wait(timeout)  # woken when a run of the pipeline ends, not per slot
            else:
                self.engine.executor.wait_for_slot(timeout)
            return
        # an attempt run on this thread has ended already: no waiting to do
        finished = [f for f in self.running if f.done()]
        if not finished and len(self.running) == 1:
            # one attempt out: wait on its own future (concurrent.futures.wait installs and
            # removes a waiter on every call, ~10 µs of a warm stage's ~1 ms)
            (future,) = self.running
            try:
                future.exception(timeout)
            except (TimeoutError, CancelledError):
                pass
            finished = [future] if future.done() else []
        elif not finished:
            finished = wait(list(self.running), timeout=timeout, return_when=FIRST_COMPLETED)[0]
        for future in finished:
            self._finish(self.running.pop(future), future.result())

    # -- outcomes --------------------------------------------------------------------

    def _finish(self, r: _Running, outcome: Outcome) -> None:
        # the slot and budget are given back only once the attempt's end is in the
        # log (_release_held, after _flush), so the log never shows more than
        # max_workers attempts between started and ended
        self._held_slots += 1
        if self.engine.budget is not None:
            self._held_budget.append((self.plan.run_id, r.stage))
        self._record(r, outcome)

    def _release_held(self) -> None:
        """Give back what finished attempts held; call after _flush()."""
        while self._held_slots:
            self._held_slots -= 1
            self.engine.executor.release()
        while self._held_budget:
            self.engine.budget.release(self._held_budget.pop())  # type: ignore[union-attr]

    def _record(self, r: _Running, outcome: Outcome) -> None:
        run_id, stage, attempt = self.plan.run_id, r.stage, r.attempt
        payload = outcome.payload()
        # a warehouse gone, replaced or unreadable: warehouse.lost before the attempt's end
        self._pending.extend(judge_warehouses(self.log, self.engine.state_dir, self._pending,
                                              outcome.warehouses, run_id, stage, attempt))
        if outcome.ok:
            # recorded with the next stage.started, or at the latest before the loop waits
            self._pending.append(new_event(T.STAGE_COMPLETED, run_id, stage=stage, attempt=attempt,
                                           **payload))
            self._pending_durable = True
            self.done.add(stage)
            self.outputs[stage] = outcome.output
            self.completed[stage] = (attempt, payload)
            self.checks.trust(outcome.output)
            self.progress.stage(stage, state=StageState.COMPLETED, error=None)
            return
        self._flush()
        # whatever the attempt wrote was never recorded, so it does not exist
        store.remove_attempt(self.engine.state_dir, run_id, stage, attempt)
        if outcome.interrupted:
            self.log.append(new_event(T.STAGE_INTERRUPTED, run_id, stage=stage, attempt=attempt, **payload))
            self.next_attempt[stage] = attempt + 1
            self.progress.stage(stage, state=StageState.INTERRUPTED, error=outcome.error)
            return
        kind = T.STAGE_TIMED_OUT if outcome.timed_out else T.STAGE_FAILED
        cfg = self.plan.configs[stage]
        if outcome.disk_full:  # the machine's trouble, not the stage's: wait for room, uncounted
            self.tries[stage] = self.tries.get(stage, 1) - 1
        tries = self.tries.get(stage, 1)
        again = after_failure(outcome, cfg, tries, attempt, self.engine.rng,
                              stopping=self.stop.is_set() or self.cancel.is_set())
        self.log.append(new_event(kind, run_id, stage=stage, attempt=attempt, **payload,
                                  retry=again.record()))
        if again.retry:
            delay = again.after or 0.0
            self.log.append(new_event(T.STAGE_RETRYING, run_id, stage=stage, attempt=attempt + 1,
                                      delay_s=round(delay, 3), after=kind, reason=outcome.error,
                                      **({"disk_full": True} if outcome.disk_full else {})))
            self.next_attempt[stage] = attempt + 1
            self.retry_at[stage] = self.engine.clock() + delay
            self.progress.stage(stage, state=StageState.RETRYING, error=outcome.error)
            return
        self.next_attempt[stage] = attempt + 1
        state = StageState.TIMED_OUT if outcome.timed_out else StageState.FAILED
        self.progress.stage(stage, state=state, error=outcome.error)
        if self.failed is None:
            self.failed = (stage, failure_message(stage, tries, again, outcome.error))

    def _interrupt_all(self, reason: str) -> None:
        for future, r in list(self.running.items()):
            r.executor.cancel(future, reason)
        while self.running:
            finished, _ = wait(list(self.running), timeout=30)
            if not finished:  # pragma: no cover - an in-process stage that will not stop
                raise EngineError(f"stage attempts of run {self.plan.run_id!r} did not stop: "
                                  f"{sorted(r.stage for r in self.running.values())}")
            for future in finished:
                r = self.running.pop(future)
                outcome = future.result()
                if outcome.ok:
                    self._finish(r, outcome)  # it finished just in time: keep the work
                else:
                    outcome.interrupted, outcome.timed_out = True, False
                    outcome.error = outcome.error or reason
                    self._finish(r, outcome)

    def _nothing_can_start(self) -> None:
        waiting = [s for s in self.plan.stages if s not in self.done]
        self.failed = (waiting[0], f"stages {', '.join(waiting)} can never start: their "
                       "prerequisites did not complete")

    def _end(self, kind: str, **payload: Any) -> Run:
        if kind == T.RUN_FAILED:
            payload = {"error": payload["error"], "failed_stage": payload["stage"]}
        end = new_event(kind, self.plan.run_id, **payload)
        if self._pending and kind == T.RUN_COMPLETED:
            # the last stage's completion and the run's in one commit (one fsync, not two);
            # refused (never, while the engine keeps its books), the completion goes alone
            events, self._pending, self._pending_durable = self._pending + [end], [], False
            try:
                self.log.append_many(events)
                end = None
            except IllegalTransition:
                self.log.append_many(events[:-1])
        else:
            self._flush()
        self._release_held()
        if end is not None:
            self.log.append(end)
        run = self.log.run(self.plan.run_id)
        self.progress.update(state=str(run.state) if run else kind, current_stage=None)
        return run  # type: ignore[return-value]

"""Running one orchestration: pipelines started as their dependencies complete.

:class:`OrchestrationRun` is one call of ``PipelineOrchestrator.run()``: it
starts ready pipelines by priority within the resource budget (up to
``parallel`` at once), retries a failed pipeline by its ``retry_policy``, skips
the dependents of failures with the reason, enforces pipeline and
orchestration timeouts, and records each step as an ``orchestration.*``
event.  What it returns is an :class:`OrchestrationResult`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping

from state import EventLog, EventType as T, new_event

from ..durations import format_duration, parse_duration
from ..resources import ResourceBudget
from .plan import CancelToken
from .executors import Executor

#: how a pipeline of an orchestration can end without success
UNSUCCESSFUL = ("FAILED", "TIMED_OUT", "CANCELLED")


@dataclass
class PipelineOutcome:
    name: str
    state: str                      # COMPLETED, FAILED, CANCELLED, TIMED_OUT, SKIPPED
    run_id: str | None = None
    error: str | None = None
    reason: str | None = None       # why it was skipped
    duration_s: float | None = None
    attempts: int = 0


@dataclass
class OrchestrationResult:
    orchestration_id: str
    name: str
    state: str
    execution_order: list[str]
    outcomes: dict[str, PipelineOutcome]
    duration_s: float

    @property
    def errors(self) -> dict[str, str]:
        return {n: o.error or o.reason or o.state for n, o in self.outcomes.items()
                if o.state not in ("COMPLETED", "SKIPPED")}

    @property
    def skipped(self) -> dict[str, str]:
        return {n: o.reason or "" for n, o in self.outcomes.items() if o.state == "SKIPPED"}

    @property
    def completed(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.state == "COMPLETED"]

    @property
    def failed(self) -> list[str]:
        return [n for n, o in self.outcomes.items() if o.state in UNSUCCESSFUL]

    @property
    def success_rate(self) -> float:
        """Completed pipelines over all pipelines selected (skipped ones count against)."""
        return len(self.completed) / len(self.outcomes) if self.outcomes else 1.0

    @property
    def success(self) -> bool:
        return self.state == "COMPLETED"


class OrchestrationRun:
    """One call of ``PipelineOrchestrator.run()``: the pipelines it selected, driven to an end.

    ``definitions`` and ``pipelines`` are the orchestrator's registrations by name,
    ``requirements`` the resources each selected pipeline needs from ``budget``,
    ``by_priority`` orders names that are ready to start, ``clock`` is monotonic.
    """

    def __init__(self, log: EventLog, executor: Executor, orch_id: str, *, name: str, mode: str,
                 parallel: int, timeout: timedelta | None, clock: Callable[[], float],
                 budget: ResourceBudget, definitions: Mapping[str, Any],
                 pipelines: Mapping[str, Any], requirements: Mapping[str, dict[str, float]],
                 by_priority: Callable[[list[str]], list[str]], selected: list[str],
                 planned: list[str], skipped: dict[str, str]):
        self.log, self.executor, self.id = log, executor, orch_id
        self.name, self.mode, self.timeout, self.clock = name, mode, timeout, clock
        self.budget, self.definitions, self.pipelines = budget, definitions, pipelines
        self.requirements, self.by_priority = requirements, by_priority
        self.selected, self.planned, self.parallel = selected, planned, parallel
        self.outcomes: dict[str, PipelineOutcome] = {}
        self.order: list[str] = []
        self.running: dict[str, tuple[threading.Thread, CancelToken, float]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pre_skipped = skipped

    def go(self) -> OrchestrationResult:
        t0 = self.clock()
        self.log.append(new_event(T.ORCH_STARTED, self.id, name=self.name, order=self.planned,
                                  mode=self.mode, max_workers=self.parallel))
        for name, reason in self.pre_skipped.items():
            self._skip(name, reason)
        deadline = None if self.timeout is None else t0 + self.timeout.total_seconds()
        while True:
            self._skip_dependents_of_failures()
            if deadline is not None and self.clock() >= deadline:
                self._time_out_everything()
            self._start_ready()
            with self.lock:
                busy = bool(self.running)
            if not busy and len(self.outcomes) == len(self.selected):
                break
            if not busy and not self._startable():
                break  # nothing runs and nothing can start: the budget never fits (guarded at registration)
            self._enforce_pipeline_timeouts()
            self.wake.wait(0.05)
            self.wake.clear()
        for name in self.selected:  # anything never started (defensive; should be none)
            if name not in self.outcomes:
                self._skip(name, "could not start")
        duration = self.clock() - t0
        failed = [n for n, x in self.outcomes.items() if x.state in UNSUCCESSFUL]
        # complete only if every pipeline completed or was skipped on request/disabled
        state = "COMPLETED" if all(x.state == "COMPLETED" or n in self.pre_skipped
                                   for n, x in self.outcomes.items()) else "FAILED"
        result = OrchestrationResult(self.id, self.name, state, list(self.order),
                                     {n: self.outcomes[n] for n in self.selected}, duration)
        summary = {"success_rate": round(result.success_rate, 4), "duration_s": round(duration, 3),
                   "completed": result.completed, "failed": failed, "skipped": result.skipped}
        if state == "COMPLETED":
            self.log.append(new_event(T.ORCH_COMPLETED, self.id, **summary))
        else:
            self.log.append(new_event(T.ORCH_FAILED, self.id, error=f"failed: {', '.join(failed) or 'none'}; "
                                      f"skipped: {', '.join(result.skipped) or 'none'}", **summary))
        return result

    # -- scheduling ---------------------------------------------------------------------------

    def _ready(self) -> list[str]:
        defs = self.definitions
        with self.lock:
            busy = set(self.running)
        out = []
        for n in self.selected:
            if n in self.outcomes or n in busy:
                continue
            deps = [d for d in defs[n].dependencies if d in self.selected]
            if all(d in self.outcomes and self.outcomes[d].state in ("COMPLETED", "SKIPPED")
                   and not (self.outcomes[d].state == "SKIPPED" and d not in self.pre_skipped)
                   for d in deps):
                out.append(n)
        return self.by_priority(out)

    def _startable(self) -> bool:
        return bool(self._ready())

    def _start_ready(self) -> None:
        for name in self._ready():
            with self.lock:
                if len(self.running) >= self.parallel:
                    return
            if not self.budget.try_acquire(("orch", self.id, name), self.requirements[name]):
                continue
            cancel = CancelToken()
            thread = threading.Thread(target=self._run_one, args=(name, cancel),
                                      name=f"ahgd-orch-{name}", daemon=True)
            with self.lock:
                self.running[name] = (thread, cancel, self.clock())
                self.order.append(name)
            thread.start()

    def _run_one(self, name: str, cancel: CancelToken) -> None:
        d = self.definitions[name]
        pipeline = self.pipelines[name]
        attempts = int(d.retry_policy.get("max_attempts", 1))
        delay = parse_duration(d.retry_policy.get("delay", 0), what=f"pipeline {name!r}: retry_policy.delay")
        t0 = self.clock()
        outcome = PipelineOutcome(name, "FAILED")
        try:
            for attempt in range(1, attempts + 1):
                run_id = f"{name}-{self.id}-{attempt}"
                self.log.append(new_event(T.ORCH_PIPELINE_STARTED, self.id, stage=name,
                                          pipeline_run_id=run_id, attempt_no=attempt))
                try:
                    ctx = pipeline.run(run_id=run_id, trigger="orchestrator", executor=self.executor,
                                       params={"orchestration_id": self.id}, cancel=cancel)
                    state, error = str(ctx.state), ctx.error
                except Exception as exc:  # a pipeline that cannot even start
                    state, error = "FAILED", f"{type(exc).__name__}: {exc}"
                if cancel.is_set() and state == "CANCELLED":
                    state, error = "TIMED_OUT", cancel.reason or "timed out"
                outcome = PipelineOutcome(name, state, run_id, error, attempts=attempt)
                self.log.append(new_event(T.ORCH_PIPELINE_FINISHED, self.id, stage=name,
                                          pipeline_run_id=run_id, state=state, error=error))
                if state == "COMPLETED" or cancel.is_set() or attempt == attempts:
                    break
                if cancel.wait(delay.total_seconds()):
                    break  # timed out while waiting to retry: no further attempt
        except Exception as exc:  # the log itself failed: record what we can, never hang
            outcome = PipelineOutcome(name, "FAILED", error=f"{type(exc).__name__}: {exc}")
        finally:
            outcome.duration_s = self.clock() - t0
            self.budget.release(("orch", self.id, name))
            with self.lock:
                self.outcomes[name] = outcome
                self.running.pop(name, None)
            self.wake.set()

    def _skip(self, name: str, reason: str) -> None:
        with self.lock:
            if name in self.outcomes:
                return
            self.outcomes[name] = PipelineOutcome(name, "SKIPPED", reason=reason)
        self.log.append(new_event(T.ORCH_PIPELINE_SKIPPED, self.id, stage=name, reason=reason))

    def _skip_dependents_of_failures(self) -> None:
        defs = self.definitions
        changed = True
        while changed:
            changed = False
            for n in self.selected:
                if n in self.outcomes or n in self.running:
                    continue
                for dep in defs[n].dependencies:
                    o = self.outcomes.get(dep)
                    if o is None:
                        continue
                    if o.state in UNSUCCESSFUL:
                        self._skip(n, f"dependency {dep!r} {o.state.lower().replace('_', ' ')}")
                        changed = True
                        break
                    if o.state == "SKIPPED" and dep not in self.pre_skipped:
                        self._skip(n, f"dependency {dep!r} was skipped ({o.reason})")
                        changed = True
                        break

    def _enforce_pipeline_timeouts(self) -> None:
        now = self.clock()
        with self.lock:
            running = list(self.running.items())
        for name, (_, cancel, started) in running:
            limit = self.definitions[name].timeout or self.pipelines[name].timeout
            if limit is not None and not cancel.is_set() and now - started >= limit.total_seconds():
                cancel.set(f"pipeline {name!r} timed out after {format_duration(limit)}")

    def _time_out_everything(self) -> None:
        reason = f"the orchestration timed out after {format_duration(self.timeout)}"  # type: ignore[arg-type]
        with self.lock:
            running = list(self.running.items())
        for _, (_, cancel, _) in running:
            if not cancel.is_set():
                cancel.set(reason)
        for n in self.selected:
            if n not in self.outcomes and n not in dict(running):
                self._skip(n, reason)

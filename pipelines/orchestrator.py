"""``PipelineOrchestrator``: several pipelines in dependency order.

Dependencies always come before priority: among the pipelines whose
dependencies have completed, the higher ``priority`` starts first.  A failed
pipeline's dependents are recorded as skipped (with the reason) and do not
run; independent branches go on.  ``SEQUENTIAL`` runs one pipeline at a time,
``PARALLEL`` up to ``max_workers`` at once within the resource budget.  Each
orchestration is itself recorded in the event log (``orchestration.*``
events; the ``orchestration_history`` view).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from state import EventLog, EventType as T, new_event
from state.statedir import resolve_state_dir

from .base import BasePipeline
from .durations import format_duration, parse_duration
from .errors import ConfigError
from .graph import find_cycle
from .execution.executors import Executor
from .execution.pool import make_executor
from .execution.engine import CancelToken
from .resources import ResourceBudget


class ExecutionMode(str, Enum):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"


@dataclass
class PipelineDefinition:
    """One pipeline known to the orchestrator.

    ``pipeline_class`` is instantiated as ``pipeline_class(name, state_dir=...,
    **config)``; or pass a ready ``pipeline`` (YAML-configured pipelines are).
    ``retry_policy`` takes ``max_attempts`` (default 1: no retry) and ``delay``.
    """

    name: str
    pipeline_class: type | None = None
    config: dict[str, Any] = field(default_factory=dict)
    dependencies: list[str] = field(default_factory=list)
    priority: int = 0
    resource_requirements: dict[str, float] = field(default_factory=dict)
    timeout: Any = None
    retry_policy: dict[str, Any] = field(default_factory=dict)
    pipeline: BasePipeline | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.pipeline_class is None and self.pipeline is None:
            raise ConfigError(f"pipeline {self.name!r}: give pipeline_class or pipeline")
        if self.timeout is not None:
            self.timeout = parse_duration(self.timeout, what=f"pipeline {self.name!r}: timeout",
                                          positive=True)
        attempts = self.retry_policy.get("max_attempts", 1)
        if not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(f"pipeline {self.name!r}: retry_policy.max_attempts is {attempts!r}; "
                              "use a whole number of 1 or more (1 = no retry)")


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
        return [n for n, o in self.outcomes.items() if o.state in ("FAILED", "TIMED_OUT", "CANCELLED")]

    @property
    def success_rate(self) -> float:
        """Completed pipelines over all pipelines selected (skipped ones count against)."""
        return len(self.completed) / len(self.outcomes) if self.outcomes else 1.0

    @property
    def success(self) -> bool:
        return self.state == "COMPLETED"


class PipelineOrchestrator:
    """Runs registered pipelines in dependency order, by priority, within budgets."""

    def __init__(
        self,
        name: str = "default",
        execution_mode: ExecutionMode | str = ExecutionMode.PARALLEL,
        max_workers: int = 4,
        resource_limits: Mapping[str, float] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        timeout: Any = None,
        executor: str | Executor | None = "process",
        clock: Callable[[], float] = time.monotonic,
    ):
        try:
            self.execution_mode = ExecutionMode(execution_mode)
        except ValueError:
            raise ConfigError(f"execution_mode {execution_mode!r} is not one of sequential, "
                              "parallel") from None
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"orchestrator {name!r}: max_workers is {max_workers!r}; use 1 or more")
        self.name = name
        self.max_workers = max_workers
        self.state_dir = resolve_state_dir(state_dir, os.environ)
        self.budget = ResourceBudget(resource_limits)
        self.timeout = None if timeout is None else parse_duration(
            timeout, what=f"orchestrator {name!r}: timeout", positive=True)
        self._executor_arg = executor
        self._clock = clock
        self._definitions: dict[str, PipelineDefinition] = {}
        self._pipelines: dict[str, BasePipeline] = {}

    # -- registration ---------------------------------------------------------------------

    @property
    def pipelines(self) -> dict[str, PipelineDefinition]:
        return dict(self._definitions)

    def register_pipeline(self, definition: PipelineDefinition) -> None:
        if definition.name in self._definitions:
            raise ConfigError(f"pipeline {definition.name!r} is registered twice with "
                              f"orchestrator {self.name!r}; pipeline names must be unique")
        pipeline = definition.pipeline
        if pipeline is None:
            try:
                pipeline = definition.pipeline_class(  # type: ignore[misc]
                    definition.name, state_dir=self.state_dir, **definition.config)
            except TypeError as exc:
                raise ConfigError(
                    f"pipeline {definition.name!r}: cannot create "
                    f"{definition.pipeline_class.__qualname__} with config "  # type: ignore[union-attr]
                    f"{sorted(definition.config)}: {exc}") from exc
        if not isinstance(pipeline, BasePipeline):
            raise ConfigError(f"pipeline {definition.name!r}: {type(pipeline).__name__} is not a "
                              "BasePipeline")
        self.budget.check_fits(self._requirements(definition, pipeline),
                               what=f"pipeline {definition.name!r}")
        self._definitions[definition.name] = definition
        self._pipelines[definition.name] = pipeline

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None,
                    executor: str | Executor | None = "process") -> "PipelineOrchestrator":
        """An orchestrator set up by a master file's ``orchestration`` section, its
        pipelines registered."""
        from .config.loader import load_config

        resolved = resolve_state_dir(state_dir, os.environ)
        loaded = load_config([path], state_dir=resolved, import_classes=True)
        o = loaded.orchestration
        limits = None if o.resource_limits is None else o.resource_limits.as_dict()
        orch = cls(Path(path).stem, o.execution_mode, o.max_workers, limits, resolved,
                   timeout=o.timeout, executor=executor)
        orch.register_from_config(path)
        return orch

    def register_from_config(self, path: str | os.PathLike[str]) -> list[str]:
        """Register the pipelines of a YAML master or pipeline file; return their names."""
        from .config.loader import load_config
        from .config.configured import ConfiguredPipeline

        loaded = load_config([path], state_dir=self.state_dir, import_classes=True)
        names = []
        for name, p in loaded.pipelines.items():
            pipeline = ConfiguredPipeline(p.file, state_dir=self.state_dir, source=p.source,
                                          executor=self._executor_arg)
            req = p.resource_requirements
            requirements = {} if req is None else req.as_dict()
            self.register_pipeline(PipelineDefinition(
                name=name, pipeline=pipeline, dependencies=list(p.dependencies),
                priority=p.priority, resource_requirements=requirements, timeout=p.timeout,
                retry_policy=dict(p.retry_policy), enabled=p.enabled))
            names.append(name)
        return names

    @staticmethod
    def _requirements(definition: PipelineDefinition, pipeline: BasePipeline) -> dict[str, float]:
        if definition.resource_requirements:
            return dict(definition.resource_requirements)
        # a pipeline needs what its heaviest stage needs (stages of one run share it)
        needs = [pipeline.stage_config(s).requirements() for s in pipeline.define_stages()]
        return {k: max((n.get(k, 0) for n in needs), default=0) for k in ("cpu", "memory")}

    # -- planning -------------------------------------------------------------------------

    def _select(self, target: Iterable[str] | None, skip: Iterable[str] | None) -> tuple[list[str], dict[str, str]]:
        defs = self._definitions
        for name, d in defs.items():
            for dep in d.dependencies:
                if dep not in defs:
                    raise ConfigError(f"pipeline {name!r} depends on {dep!r}, which is not "
                                      f"registered (known: {', '.join(sorted(defs))})")
        _check_cycles({n: d.dependencies for n, d in defs.items()})
        wanted = list(defs) if target is None else list(target)
        for name in wanted:
            if name not in defs:
                raise ConfigError(f"target pipeline {name!r} is not registered (known: "
                                  f"{', '.join(sorted(defs))})")
        selected: list[str] = []

        def pull(n: str) -> None:
            if n in selected:
                return
            for dep in defs[n].dependencies:
                pull(dep)
            selected.append(n)

        for name in wanted:
            pull(name)
        for n in skip or ():
            if n not in defs:
                raise ConfigError(f"cannot skip pipeline {n!r}: it is not registered (known: "
                                  f"{', '.join(sorted(defs))})")
        skipped = {n: "skipped on request" for n in (skip or ()) if n in selected}
        skipped.update({n: "disabled in the configuration" for n in selected
                        if not defs[n].enabled and n not in skipped})
        return selected, skipped

    def plan(self, target_pipelines: Iterable[str] | None = None) -> list[str]:
        """The order pipelines would start in, one at a time (dependencies, then priority)."""
        selected, _ = self._select(target_pipelines, None)
        done: set[str] = set()
        order: list[str] = []
        while len(order) < len(selected):
            ready = [n for n in selected if n not in done and set(self._definitions[n].dependencies) & set(selected) <= done]
            nxt = self._by_priority(ready)[0]
            order.append(nxt)
            done.add(nxt)
        return order

    def _by_priority(self, names: list[str]) -> list[str]:
        index = {n: i for i, n in enumerate(self._definitions)}
        return sorted(names, key=lambda n: (-self._definitions[n].priority, index[n]))

    # -- running ----------------------------------------------------------------------------

    def run(self, target_pipelines: Iterable[str] | None = None,
            skip_pipelines: Iterable[str] | None = None) -> OrchestrationResult:
        """Run the selected pipelines (all, or the targets and what they depend on)."""
        selected, skipped = self._select(target_pipelines, skip_pipelines)
        planned = self.plan(target_pipelines)
        log = EventLog.open(self.state_dir)
        parallel = self.max_workers if self.execution_mode == ExecutionMode.PARALLEL else 1
        executor, own = make_executor(self._executor_arg, max(1, self.max_workers))
        orch_id = f"orch-{self.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        try:
            return _Orchestration(self, log, executor, orch_id, selected, planned, skipped,
                                  parallel).go()
        finally:
            if own:
                executor.shutdown()
            log.close()


class _Orchestration:
    """One call of PipelineOrchestrator.run()."""

    def __init__(self, orch: PipelineOrchestrator, log: EventLog, executor: Executor, orch_id: str,
                 selected: list[str], planned: list[str], skipped: dict[str, str], parallel: int):
        self.o, self.log, self.executor, self.id = orch, log, executor, orch_id
        self.selected, self.planned, self.parallel = selected, planned, parallel
        self.outcomes: dict[str, PipelineOutcome] = {}
        self.order: list[str] = []
        self.running: dict[str, tuple[threading.Thread, CancelToken, float]] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.pre_skipped = skipped

    def go(self) -> OrchestrationResult:
        o = self.o
        t0 = o._clock()
        self.log.append(new_event(T.ORCH_STARTED, self.id, name=o.name, order=self.planned,
                                  mode=o.execution_mode.value, max_workers=self.parallel))
        for name, reason in self.pre_skipped.items():
            self._skip(name, reason)
        deadline = None if o.timeout is None else t0 + o.timeout.total_seconds()
        while True:
            self._skip_dependents_of_failures()
            if deadline is not None and o._clock() >= deadline:
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
        duration = o._clock() - t0
        failed = [n for n, x in self.outcomes.items() if x.state in ("FAILED", "TIMED_OUT", "CANCELLED")]
        # complete only if every pipeline completed or was skipped on request/disabled
        state = "COMPLETED" if all(x.state == "COMPLETED" or n in self.pre_skipped
                                   for n, x in self.outcomes.items()) else "FAILED"
        result = OrchestrationResult(self.id, o.name, state, list(self.order),
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
        defs = self.o._definitions
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
        return self.o._by_priority(out)

    def _startable(self) -> bool:
        return bool(self._ready())

    def _start_ready(self) -> None:
        for name in self._ready():
            with self.lock:
                if len(self.running) >= self.parallel:
                    return
            pipeline = self.o._pipelines[name]
            need = self.o._requirements(self.o._definitions[name], pipeline)
            if not self.o.budget.try_acquire(("orch", self.id, name), need):
                continue
            cancel = CancelToken()
            thread = threading.Thread(target=self._run_one, args=(name, cancel),
                                      name=f"ahgd-orch-{name}", daemon=True)
            with self.lock:
                self.running[name] = (thread, cancel, self.o._clock())
                self.order.append(name)
            thread.start()

    def _run_one(self, name: str, cancel: CancelToken) -> None:
        d = self.o._definitions[name]
        pipeline = self.o._pipelines[name]
        attempts = int(d.retry_policy.get("max_attempts", 1))
        delay = parse_duration(d.retry_policy.get("delay", 0), what=f"pipeline {name!r}: retry_policy.delay")
        t0 = self.o._clock()
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
            outcome.duration_s = self.o._clock() - t0
            self.o.budget.release(("orch", self.id, name))
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
        defs = self.o._definitions
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
                    if o.state in ("FAILED", "TIMED_OUT", "CANCELLED"):
                        self._skip(n, f"dependency {dep!r} {o.state.lower().replace('_', ' ')}")
                        changed = True
                        break
                    if o.state == "SKIPPED" and dep not in self.pre_skipped:
                        self._skip(n, f"dependency {dep!r} was skipped ({o.reason})")
                        changed = True
                        break

    def _enforce_pipeline_timeouts(self) -> None:
        now = self.o._clock()
        with self.lock:
            running = list(self.running.items())
        for name, (_, cancel, started) in running:
            pipeline = self.o._pipelines[name]
            limit = self.o._definitions[name].timeout or pipeline.timeout
            if limit is not None and not cancel.is_set() and now - started >= limit.total_seconds():
                cancel.set(f"pipeline {name!r} timed out after {format_duration(limit)}")

    def _time_out_everything(self) -> None:
        reason = f"the orchestration timed out after {format_duration(self.o.timeout)}"  # type: ignore[arg-type]
        with self.lock:
            running = list(self.running.items())
        for _, (_, cancel, _) in running:
            if not cancel.is_set():
                cancel.set(reason)
        for n in self.selected:
            if n not in self.outcomes and n not in dict(running):
                self._skip(n, reason)


def _check_cycles(graph: Mapping[str, list[str]]) -> None:
    cycle = find_cycle(graph)
    if cycle:
        raise ConfigError(f"pipeline dependency cycle {' -> '.join(cycle)}; remove one of "
                          "these dependencies")


__all__ = ["ExecutionMode", "PipelineDefinition", "PipelineOrchestrator", "OrchestrationResult",
           "PipelineOutcome"]

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
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from state import EventLog
from state.statedir import resolve_state_dir

from .base import BasePipeline
from .durations import parse_duration
from .errors import ConfigError
from .graph import find_cycle
from .execution.executors import Executor
from .execution.pool import make_executor
from .execution.orchestration import OrchestrationResult, OrchestrationRun, PipelineOutcome
from .resources import ResourceBudget
from .stagelist import read_stages


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
        needs = [pipeline.stage_config(s).requirements() for s in read_stages(pipeline)[0]]
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
            return OrchestrationRun(
                log, executor, orch_id, name=self.name, mode=self.execution_mode.value,
                parallel=parallel, timeout=self.timeout, clock=self._clock, budget=self.budget,
                definitions=self._definitions, pipelines=self._pipelines,
                requirements={n: self._requirements(self._definitions[n], self._pipelines[n])
                              for n in selected},
                by_priority=self._by_priority, selected=selected, planned=planned,
                skipped=skipped).go()
        finally:
            if own:
                executor.shutdown()
            log.close()


def _check_cycles(graph: Mapping[str, list[str]]) -> None:
    cycle = find_cycle(graph)
    if cycle:
        raise ConfigError(f"pipeline dependency cycle {' -> '.join(cycle)}; remove one of "
                          "these dependencies")


__all__ = ["ExecutionMode", "PipelineDefinition", "PipelineOrchestrator", "OrchestrationResult",
           "PipelineOutcome"]

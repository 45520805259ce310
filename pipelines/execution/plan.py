"""What a run is asked to do, how far it got, and how it is told to stop.

:class:`RunPlan` is one run's stages, dependencies and configs as the engine
executes them; :class:`Progress` the thread-safe picture behind
``get_progress()``; :class:`CancelToken` the flag that cancels a run (or an
orchestration's pipeline) with a reason; :func:`retry_state` the retry budget
a resumed run has left.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from state import parse_ts, queries
from state.machine import DONE_STAGE_STATES, StageState

from ..stage import StageConfig
from .runner import StageTask


class CancelToken(threading.Event):
    """A ``threading.Event`` that remembers why it was set (shown in the log)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def set(self, reason: str | None = None) -> None:  # type: ignore[override]
        if reason and not self.reason:
            self.reason = reason
        super().set()


@dataclass
class RunPlan:
    """What to execute: one pipeline's stages, their dependencies and configs."""

    run_id: str
    pipeline: Any
    pipeline_name: str
    stages: list[str]
    deps: dict[str, set[str]]
    configs: dict[str, StageConfig]
    parallel: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    duckdb_settings: dict[str, Any] = field(default_factory=dict)
    #: stage -> why it is skipped
    skip: dict[str, str] = field(default_factory=dict)
    reuse: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: (stage, state_dir) -> what every task of that stage carries (the plan does not change)
    _fixed: dict[tuple[str, Path], dict[str, Any]] = field(default_factory=dict, init=False,
                                                           repr=False, compare=False)

    def task(self, stage: str, attempt: int, state_dir: Path,
             upstream: dict[str, dict[str, Any] | None]) -> StageTask:
        """What a worker needs to run ``attempt`` of ``stage``, given the outputs done so far."""
        fixed = self._fixed.get((stage, state_dir))
        if fixed is None:
            cfg = self.configs[stage]
            deps = self.deps.get(stage, set())
            fixed = self._fixed[(stage, state_dir)] = {
                "run_id": self.run_id,
                "pipeline_name": self.pipeline_name,
                "stage": stage,
                "state_dir": str(state_dir),
                "params": self.params,
                "input_stages": (tuple(deps) if len(deps) < 2  # else in the plan's order
                                 else tuple(s for s in self.stages if s in deps)),
                "rules": cfg.validation_rules,
                "config_dir": str(cfg.base_dir) if cfg.base_dir else None,
                "duckdb_settings": self.duckdb_settings,
                "timeout": cfg.timeout_seconds,
                "requirements": cfg.requirements(),
                "retry_on": cfg.retry_on,
                "no_retry_on": cfg.no_retry_on,
                "config": cfg,
            }
        return StageTask(attempt=attempt, upstream=upstream, **fixed)


def retry_state(log: Any, run: Any, clock: Callable[[], float]) -> tuple[dict[str, int],
                                                                       dict[str, float]]:
    """The retry budget used and the retry waits in progress, carried across a pause or a crash:
    ``(stage -> tries, stage -> when its wait ends on clock())``.

    Attempts that failed or timed out since the run was last (re)started by a
    human (``run.retried``) count against ``retry_attempts``; interrupted ones
    (a crash, a shutdown) do not.  A retry wait in progress keeps its deadline.
    """
    tries = dict(queries.failed_attempts_since_retry(log, run.run_id))
    retry_at: dict[str, float] = {}
    waiting = [s for s, a in run.attempts.items() if a.state == StageState.RETRYING]
    if waiting:
        now_wall = log.now().timestamp()
        for stage, ts, delay in queries.retry_waits(log, run.run_id):
            if stage in waiting:
                due = parse_ts(ts).timestamp() + delay
                retry_at[stage] = clock() + max(0.0, due - now_wall)
    return tries, retry_at


class Progress:
    """A thread-safe picture of a run for ``get_progress()`` (O(1) per update)."""

    def __init__(self, stages: list[str]):
        self._lock = threading.Lock()
        self._order = list(stages)
        self._stages = {s: {"state": "PENDING", "attempts": 0, "error": None} for s in stages}
        self._done: set[str] = set()
        self._running: set[str] = set()
        self._state: dict[str, Any] = {"state": "PENDING", "run_id": None, "current_stage": None}

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)

    def stage(self, name: str, **changes: Any) -> None:
        if "state" in changes:
            changes["state"] = str(changes["state"])
        with self._lock:
            st = self._stages.setdefault(name, {"state": "PENDING", "attempts": 0, "error": None})
            st.update(changes)
            state = st["state"]
            (self._done.add if state in DONE_STAGE_STATES else self._done.discard)(name)
            if state == StageState.RUNNING:
                self._running.add(name)
                self._state["current_stage"] = name
            else:
                self._running.discard(name)
                if self._state["current_stage"] == name and self._running:
                    self._state["current_stage"] = next(iter(self._running))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            order = self._order + [s for s in self._stages if s not in self._order]
            total = len(self._order) or len(self._stages)
            return {
                **self._state,
                "running_stages": [s for s in order if s in self._running],
                "completed_stages": [s for s in order if s in self._done],
                "total_stages": total,
                "progress_percentage": round(100.0 * len(self._done) / (total or 1), 1),
                "stages": {k: dict(v) for k, v in self._stages.items()},
            }

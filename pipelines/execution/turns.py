"""Runs of one pipeline write their results in the order they were asked for.

Two runs of a pipeline may be in flight at once (the files of a burst, a run
resumed after a crash beside a newer one).  Their last stages, the ones nothing
else depends on (the loads), must not land out of order: a corrected file's rows
would be overwritten by the older file's, and a profile rebuilt from its
sources by a stale copy read before the newest load.  So a run's last stages
start only once every earlier-requested run of the same pipeline that is still
RUNNING under a live owner has ended.  Runs whose owner is gone (a killed
script) do not hold anyone up: recovery deals with them.
"""

from __future__ import annotations

from pathlib import Path

from state import EventLog, queries
from state.locks import is_locked, run_lock_path

from ..logs import get_logger

log = get_logger("pipelines.engine")


def last_stages(stages: list[str], deps: dict[str, set[str]]) -> set[str]:
    """The stages no other stage depends on."""
    needed = {d for s in stages for d in deps.get(s, ())}
    return {s for s in stages if s not in needed}


class LoadTurn:
    """Whether a run's last stages may start now (see the module's docstring)."""

    def __init__(self, history: EventLog, state_dir: Path, pipeline: str, run_id: str):
        self.history, self.state_dir = history, Path(state_dir)
        self.pipeline, self.run_id = pipeline, run_id
        self._waiting_for: tuple[str, ...] = ()

    def mine(self) -> bool:
        earlier = [r for r in queries.earlier_runs_running(self.history, self.pipeline, self.run_id)
                   if is_locked(run_lock_path(self.state_dir, r))]
        if earlier and tuple(earlier) != self._waiting_for:
            log.info("waiting_for_earlier_runs", pipeline=self.pipeline, run_id=self.run_id,
                     earlier_runs=earlier,
                     why="the last stages of a pipeline's runs start in the order the runs "
                         "were requested")
        self._waiting_for = tuple(earlier)
        return not earlier

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

import threading
import time
from pathlib import Path
from typing import Any

from state import EventLog, queries
from state.locks import is_locked, run_lock_path

from ..logs import get_logger

log = get_logger("pipelines.engine")


def last_stages(stages: list[str], deps: dict[str, set[str]]) -> set[str]:
    """The stages no other stage depends on."""
    needed = {d for s in stages for d in deps.get(s, ())}
    return {s for s in stages if s not in needed}


#: pipeline -> how many of its runs' executions have ended in this process, and the
#: condition its waiting runs sleep on (a run waiting for its turn wakes when a run of its
#: pipeline ends here, not at every worker slot released)
_lock = threading.Lock()
_ended: dict[str, list[Any]] = {}
#: thread id -> (the run executing on that thread in this process, the thread): such a run's
#: owner is alive (us), which ``mine`` then knows without four system calls on its lock file
#: (and even if that file was deleted); set when its execution makes its LoadTurn, cleared by
#: its ``run_ended`` on the same thread, and trusted only while that thread lives
_here: dict[int, tuple[str, threading.Thread]] = {}


def _entry(pipeline: str) -> list[Any]:
    """[runs ended, their condition] of ``pipeline``; call with ``_lock`` held."""
    entry = _ended.get(pipeline)
    if entry is None:
        entry = _ended[pipeline] = [0, threading.Condition(_lock)]
    return entry


def run_ended(pipeline: str) -> None:
    """An execution of a run of ``pipeline`` has ended: its later runs may have their turn."""
    with _lock:
        _here.pop(threading.get_ident(), None)
        entry = _entry(pipeline)
        entry[0] += 1
        entry[1].notify_all()


def _executing_here() -> set[str]:
    """The runs whose execution goes on in this process (on a live thread)."""
    with _lock:
        return {run_id for run_id, thread in _here.values() if thread.is_alive()}


class LoadTurn:
    """Whether a run's last stages may start now (see the module's docstring)."""

    def __init__(self, history: EventLog, state_dir: Path, pipeline: str, run_id: str):
        self.history, self.state_dir = history, Path(state_dir)
        self.pipeline, self.run_id = pipeline, run_id
        self._waiting_for: tuple[str, ...] = ()
        #: runs of the pipeline ended in this process when ``mine`` last looked
        self._seen = 0
        with _lock:  # made by the run's execution, on its thread (it holds the run's lock)
            _here[threading.get_ident()] = (run_id, threading.current_thread())

    def wait(self, timeout: float) -> None:
        """Sleep until a run of the pipeline ends in this process (or ``timeout`` passes; an
        earlier run owned by another process is looked at again then), unless one has
        ended since ``mine`` last said no."""
        deadline = time.monotonic() + timeout
        with _lock:
            entry = _entry(self.pipeline)
            while entry[0] == self._seen:
                left = deadline - time.monotonic()
                if left <= 0 or not entry[1].wait(left):
                    return

    def mine(self) -> bool:
        entry = _ended.get(self.pipeline)
        self._seen = entry[0] if entry else 0
        running = queries.earlier_runs_running(self.history, self.pipeline, self.run_id)
        here = _executing_here() if running else ()
        earlier = [r for r in running
                   if r in here or is_locked(run_lock_path(self.state_dir, r))]
        if earlier and tuple(earlier) != self._waiting_for:
            log.info("waiting_for_earlier_runs", pipeline=self.pipeline, run_id=self.run_id,
                     earlier_runs=earlier,
                     why="the last stages of a pipeline's runs start in the order the runs "
                         "were requested")
        self._waiting_for = tuple(earlier)
        return not earlier

"""Runs of one pipeline write their results in the order they were asked for.

Two runs of a pipeline may be in flight at once (the files of a burst, a run
resumed after a crash beside a newer one).  Their last stages, the ones nothing
else depends on (the loads), must not land out of order: a corrected file's rows
would be overwritten by the older file's, and a profile rebuilt from its
sources by a stale copy read before the newest load.  So a run's last stages
start only once every earlier-requested run of the same pipeline that is still
RUNNING under a live owner has ended, and every earlier one this process has
taken on but not yet started (the daemon launches its runs oldest first, each on
a thread of its own, and a later run's thread may get to its load before an
earlier one's has recorded its start).  Runs whose owner is gone (a killed
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


class _Here:
    """A run whose execution goes on in this process."""

    __slots__ = ("pipeline", "thread", "started", "place")

    def __init__(self, pipeline: str, thread: threading.Thread | None,
                 place: int | None) -> None:
        # thread: the one executing it; None when a launcher took it on (trusted until
        # run_ended: a thread between its start and its first line is neither new nor alive).
        # place: where it is in the order of requests (the log's requested_seq), if known
        self.pipeline, self.thread, self.place = pipeline, thread, place
        #: its start is recorded: the log says RUNNING from now on
        self.started = False

    def live(self) -> bool:
        return self.thread is None or self.thread.is_alive()


#: run id -> the runs whose execution goes on in this process: such a run's owner is alive
#: (us), which ``mine`` then knows without four system calls on its lock file (and even if
#: that file was deleted), and one not yet started still counts.  Set by ``taken_on`` (a
#: launcher, before the run's thread starts) or when the execution makes its LoadTurn,
#: cleared by ``run_ended``
_here: dict[str, _Here] = {}


def _entry(pipeline: str) -> list[Any]:
    """[runs ended, their condition] of ``pipeline``; call with ``_lock`` held."""
    entry = _ended.get(pipeline)
    if entry is None:
        entry = _ended[pipeline] = [0, threading.Condition(_lock)]
    return entry


def taken_on(run_id: str, pipeline: str, place: int | None = None) -> None:
    """A thread is about to execute ``run_id`` (``place``: its place in the order of requests,
    the log's ``requested_seq``, if known): from now on the later runs of ``pipeline`` wait
    for it before their last stages, even before it records its start.

    For a launcher that starts runs on threads of their own in the order they were
    requested; it calls ``run_ended`` when the thread is done, and if it never starts."""
    with _lock:
        _here[run_id] = _Here(pipeline, None, place)


def run_ended(pipeline: str, run_id: str) -> None:
    """An execution of a run of ``pipeline`` has ended (or never began): its later runs may
    have their turn.  Said again for the same execution (the engine, then its launcher), it
    wakes nobody a second time."""
    with _lock:
        if _here.pop(run_id, None) is None:
            return
        entry = _entry(pipeline)
        entry[0] += 1
        entry[1].notify_all()


def _executing_here(pipeline: str) -> tuple[set[str], list[tuple[str, int | None]]]:
    """The runs whose execution goes on in this process, and ``(run id, place in the order of
    requests)`` of those of ``pipeline`` whose start is not recorded yet."""
    with _lock:
        live = [(run_id, e) for run_id, e in _here.items() if e.live()]
    return ({run_id for run_id, _ in live},
            [(run_id, e.place) for run_id, e in live
             if e.pipeline == pipeline and not e.started])


class LoadTurn:
    """Whether a run's last stages may start now (see the module's docstring)."""

    def __init__(self, history: EventLog, state_dir: Path, pipeline: str, run_id: str):
        self.history, self.state_dir = history, Path(state_dir)
        self.pipeline, self.run_id = pipeline, run_id
        self._waiting_for: tuple[str, ...] = ()
        #: runs of the pipeline ended in this process when ``mine`` last looked
        self._seen = 0
        #: its place in the order of requests, once ``started`` knows it
        self._place: int | None = None
        with _lock:  # made by the run's execution, on its thread (it holds the run's lock)
            if run_id not in _here:  # (its launcher's entry stands until run_ended)
                _here[run_id] = _Here(pipeline, threading.current_thread(), None)

    def started(self, place: int) -> None:
        """The run's start is recorded: ``mine`` of later runs finds it RUNNING from now on.
        ``place``: its ``requested_seq``."""
        self._place = place
        with _lock:
            entry = _here.get(self.run_id)
            if entry is not None:
                entry.started = True

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
        # looked at before the log: a run taken on here and not started then is either
        # RUNNING in the log by the time it is read, or counted below
        here, unstarted = _executing_here(self.pipeline)
        running = queries.earlier_runs_running(self.history, self.pipeline, self.run_id)
        earlier = [r for r in running
                   if r in here or is_locked(run_lock_path(self.state_dir, r))]
        # taken on here, not started yet: the earlier ones count as running (compared here
        # when both places are known, else asked of the log)
        ask = []
        for run_id, place in unstarted:
            if run_id == self.run_id or run_id in running:
                continue
            if place is None or self._place is None:
                ask.append(run_id)
            elif place < self._place:
                earlier.append(run_id)
        if ask:
            earlier += queries.earlier_runs_in_flight(self.history, self.pipeline, self.run_id,
                                                      ask)
        if earlier and tuple(earlier) != self._waiting_for:
            log.info("waiting_for_earlier_runs", pipeline=self.pipeline, run_id=self.run_id,
                     earlier_runs=earlier,
                     why="the last stages of a pipeline's runs start in the order the runs "
                         "were requested")
        self._waiting_for = tuple(earlier)
        return not earlier

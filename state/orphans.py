"""Runs whose owner is gone: RUNNING in the log while no process holds their run lock.

Whoever executes a run (the daemon, ``ahgd run``, a script's ``run()``) holds
its run lock (``locks/run-<id>.lock``, an ``flock`` the kernel drops when the
process dies) from before ``run.started`` until the run has ended, and
``run.started`` records the ``owner`` (pid and host).  A RUNNING run whose lock
is free was cut short: its process was killed, or the machine went down.

- :func:`owners_gone` finds them, for ``ahgd history``, ``ahgd status`` and
  ``ahgd state check``;
- :func:`recover` records one interrupted and PENDING again (``run.recovered``),
  or PARKED past ``max_recoveries``: the daemon at start-up, ``ahgd retry``;
- :func:`close` records one interrupted and FAILED: a script's next ``run()``
  of its pipeline, when no daemon serves the state directory.

Both take the run's lock first, so two processes never record the same run twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import queries, store
from .events import EventType as T, new_event
from .locks import FileLock, Locked, is_locked, run_lock_path
from .machine import RunState, StageState

#: the daemon's lock in the state directory: while it is held, the daemon recovers orphans
DAEMON_LOCK = "daemon.lock"


@dataclass(frozen=True)
class GoneOwner:
    """A RUNNING run whose owner is gone, and who that owner was (from ``run.started``)."""

    run_id: str
    pipeline: str
    pid: int | None = None
    host: str | None = None

    def describe(self) -> str:
        """``owner gone: pid 4242 on host etl1``."""
        who = f"pid {self.pid} on host {self.host}" if self.pid else "its process"
        return f"owner gone: {who}"

    def as_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "host": self.host, "text": self.describe()}


@dataclass
class Recovered:
    """What :func:`recover` recorded for one run."""

    run_id: str
    pipeline: str
    interrupted: list[str]
    parked: bool
    recoveries: int
    owner: GoneOwner | None = None


def owners_gone(db: Any, state_dir: Path, *, pipeline: str | None = None) -> dict[str, GoneOwner]:
    """The RUNNING runs (of ``pipeline``, if given) that no live process holds, by run id."""
    found = {}
    for run_id, name, owner in queries.running_run_owners(db, pipeline=pipeline):
        if not is_locked(run_lock_path(state_dir, run_id)):
            found[run_id] = _gone(run_id, name, owner)
    # a run that ended between the two looks released its lock: it is not an orphan
    return {r: g for r, g in found.items() if queries.run_state(db, r) == RunState.RUNNING}


def recover(log: Any, state_dir: Path, run_id: str, *, max_recoveries: int | None = None,
            lock_held: bool = False) -> Recovered | None:
    """Record the RUNNING run ``run_id``, whose owner is gone, as interrupted: its attempts in
    flight ``stage.interrupted``, the run PENDING again (``run.recovered``; it resumes at its
    first stage that has not succeeded), or PARKED once recovered more than
    ``max_recoveries`` times.  None, recording nothing, when the run is not RUNNING or a live
    process holds it.  ``lock_held``: the caller holds the run's lock itself."""
    with _RunLock(state_dir, run_id, lock_held) as locked:
        run = _running(log, run_id, locked)
        if run is None:
            return None
        owner = _owner_of(log, run)
        in_flight = _interrupt(run, "the process running this attempt stopped (crash or kill); "
                                    "the stage runs again")
        recoveries = run.recoveries + 1
        parked = max_recoveries is not None and recoveries > max_recoveries
        if parked:
            last = new_event(
                T.RUN_PARKED, run_id,
                reason=(f"run was interrupted by a crash {recoveries} times (limit "
                        f"{max_recoveries}); it may be what crashes the daemon. Fix the cause, "
                        f"then `ahgd retry {run_id}`"))
        else:
            last = new_event(T.RUN_RECOVERED, run_id, recoveries=recoveries,
                             interrupted=[s for s, _, _ in in_flight])
        _end_in_flight(log, state_dir, run_id, in_flight, last)
        return Recovered(run_id, run.pipeline, [s for s, _, _ in in_flight], parked, recoveries,
                         owner)


def close(log: Any, state_dir: Path, run_id: str, *, closed_by: str) -> GoneOwner | None:
    """Record the RUNNING run ``run_id``, whose owner is gone, as interrupted and FAILED (the
    error says who ran it, and that ``ahgd retry`` resumes it); who its owner was.  None,
    recording nothing, when the run is not RUNNING or a live process holds it."""
    with _RunLock(state_dir, run_id, False) as locked:
        run = _running(log, run_id, locked)
        if run is None:
            return None
        owner = _owner_of(log, run)
        in_flight = _interrupt(run, f"{owner.describe()}; closed by {closed_by}")
        stage = in_flight[0][0] if in_flight else None
        error = (f"interrupted: the process running it stopped ({owner.describe()}: killed, "
                 f"or the machine went down); closed by {closed_by}. `ahgd retry {run_id}` "
                 "resumes it at its first unfinished stage")
        _end_in_flight(log, state_dir, run_id, in_flight,
                       new_event(T.RUN_FAILED, run_id, error=error, failed_stage=stage))
        return owner


def suspend(log: Any, state_dir: Path, run_id: str, *, reason: str) -> bool:
    """Record the RUNNING run ``run_id``, whose execution stopped through no fault of its own
    (the history refused its event for a full disk), as suspended: its attempts in flight
    ``stage.interrupted``, the run PENDING again (``run.suspended``) to resume at its first
    stage that has not succeeded.  Not a crash: it does not count towards
    ``max_recoveries``.  False, recording nothing, when the run is not RUNNING or a live
    process holds it."""
    with _RunLock(state_dir, run_id, False) as locked:
        run = _running(log, run_id, locked)
        if run is None:
            return False
        _end_in_flight(log, state_dir, run_id, _interrupt(run, reason),
                       new_event(T.RUN_SUSPENDED, run_id, reason=reason))
        return True


def _running(log: Any, run_id: str, locked: bool) -> Any:
    """The run ``run_id`` when it is RUNNING and ours to record (its lock taken), else None."""
    run = log.run(run_id) if locked else None
    return run if run is not None and run.state == RunState.RUNNING else None


def _end_in_flight(log: Any, state_dir: Path, run_id: str,
                   in_flight: list[tuple[str, int, str]], last: Any) -> None:
    """The run's attempts in flight recorded ``stage.interrupted``, and ``last`` (how the run
    goes on: recovered, parked, failed, suspended) with them in one commit; then the files of
    attempts that never completed go."""
    log.append_many([*(new_event(T.STAGE_INTERRUPTED, run_id, stage=s, attempt=n, error=why)
                       for s, n, why in in_flight), last])
    remove_unrecorded_outputs(log, state_dir, run_id)


def daemon_serves(state_dir: Path) -> bool:
    """Is a daemon running on ``state_dir``?  It recovers (and resumes) orphans itself."""
    return is_locked(Path(state_dir) / DAEMON_LOCK)


def remove_unrecorded_outputs(log: Any, state_dir: Path, run_id: str) -> None:
    """Delete the files of attempts that never completed: they do not exist."""
    store.remove_unrecorded(state_dir, run_id, queries.recorded_output_paths(log, run_id))


def _interrupt(run: Any, why: str) -> list[tuple[str, int, str]]:
    """``(stage, attempt, error)`` of each attempt the run has in flight, by stage."""
    return sorted((s, a.attempt, why) for s, a in run.attempts.items()
                  if a.state == StageState.RUNNING)


def _owner_of(log: Any, run: Any) -> GoneOwner:
    owners = {r: o for r, _, o in queries.running_run_owners(log, pipeline=run.pipeline)}
    return _gone(run.run_id, run.pipeline, owners.get(run.run_id))


def _gone(run_id: str, pipeline: str, owner: Any) -> GoneOwner:
    if isinstance(owner, str):
        try:
            owner = json.loads(owner)
        except ValueError:
            owner = None
    owner = owner if isinstance(owner, dict) else {}
    pid = owner.get("pid")
    return GoneOwner(run_id, pipeline, pid if isinstance(pid, int) else None,
                     str(owner["host"]) if owner.get("host") else None)


class _RunLock:
    """The run's lock for the length of a ``with``; entering says whether we have it."""

    def __init__(self, state_dir: Path, run_id: str, held: bool):
        self.lock = None if held else FileLock(
            run_lock_path(state_dir, run_id), {"role": "recovery", "run_id": run_id},
            remove_on_release=True)

    def __enter__(self) -> bool:
        if self.lock is None:
            return True
        try:
            self.lock.acquire()
        except Locked:  # its owner is alive after all
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.lock is not None:
            self.lock.release()

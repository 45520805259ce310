"""Crash recovery by replay, done at start-up before any new work is taken.

The projections are the fold of the log, so "replay" is reading them: every
run the log says is RUNNING, and that no live process holds (its run lock is
free), was cut short by a crash.  Its attempts in flight become
``stage.interrupted``; the run becomes PENDING again (``run.recovered``) and
resumes at its first stage that has not succeeded, reusing the recorded
outputs of those that had.  A run recovered more than ``max_recoveries``
times is parked (``run.parked``, an alert) instead of crashing the daemon
again; ``ahgd retry RUN_ID`` un-parks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from state import EventLog
from state.machine import RunState
from state.orphans import Recovered, recover as recover_run, remove_unrecorded_outputs

__all__ = ["Recovered", "recover", "recover_and_report", "remove_unrecorded_outputs"]


def recover(log: EventLog, state_dir: Path, *, max_recoveries: int,
            skip: set[str] | None = None) -> list[Recovered]:
    """Every RUNNING run no live process holds, recorded as recovered (or parked)."""
    out = []
    for run in log.runs(states=[RunState.RUNNING]):
        if skip and run.run_id in skip:
            continue  # ours: running right now
        # None: a script or `ahgd run` in another process is running it right now
        recovered = recover_run(log, state_dir, run.run_id, max_recoveries=max_recoveries)
        if recovered is not None:
            out.append(recovered)
    return out


def recover_and_report(log: EventLog, state_dir: Path, *, max_recoveries: int, logger: Any,
                       skip: set[str] | None = None) -> list[Recovered]:
    """:func:`recover`, with a log line for each run recovered or parked."""
    found = recover(log, state_dir, max_recoveries=max_recoveries, skip=skip)
    for recovered in found:
        logger.info("run_parked" if recovered.parked else "run_recovered",
                    run_id=recovered.run_id, pipeline=recovered.pipeline,
                    interrupted=recovered.interrupted, recoveries=recovered.recoveries,
                    owner=recovered.owner.describe() if recovered.owner else None)
    return found

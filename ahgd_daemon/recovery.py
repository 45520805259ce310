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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state import EventLog, EventType as T, new_event, queries, store
from state.locks import is_locked, run_lock_path
from state.machine import RunState, StageState


@dataclass
class Recovered:
    run_id: str
    pipeline: str
    interrupted: list[str]
    parked: bool
    recoveries: int


def recover(log: EventLog, state_dir: Path, *, max_recoveries: int,
            skip: set[str] | None = None) -> list[Recovered]:
    out = []
    for run in log.runs(states=[RunState.RUNNING]):
        if (skip and run.run_id in skip) or is_locked(run_lock_path(state_dir, run.run_id)):
            continue  # a script or `ahgd run` in another process is running it right now
        in_flight = sorted((s, a.attempt) for s, a in run.attempts.items() if a.state == StageState.RUNNING)
        events = [new_event(T.STAGE_INTERRUPTED, run.run_id, stage=s, attempt=n,
                            error="the process running this attempt stopped (crash or kill); "
                                  "the stage runs again")
                  for s, n in in_flight]
        recoveries = run.recoveries + 1
        parked = recoveries > max_recoveries
        if parked:
            events.append(new_event(
                T.RUN_PARKED, run.run_id,
                reason=(f"run was interrupted by a crash {recoveries} times (limit "
                        f"{max_recoveries}); it may be what crashes the daemon. Fix the cause, "
                        f"then `ahgd retry {run.run_id}`")))
        else:
            events.append(new_event(T.RUN_RECOVERED, run.run_id, recoveries=recoveries,
                                    interrupted=[s for s, _ in in_flight]))
        log.append_many(events)
        remove_unrecorded_outputs(log, state_dir, run.run_id)
        out.append(Recovered(run.run_id, run.pipeline, [s for s, _ in in_flight], parked, recoveries))
    return out


def recover_and_report(log: EventLog, state_dir: Path, *, max_recoveries: int, logger: Any,
                       skip: set[str] | None = None) -> list[Recovered]:
    """:func:`recover`, with a log line for each run recovered or parked."""
    found = recover(log, state_dir, max_recoveries=max_recoveries, skip=skip)
    for recovered in found:
        logger.info("run_parked" if recovered.parked else "run_recovered",
                    run_id=recovered.run_id, pipeline=recovered.pipeline,
                    interrupted=recovered.interrupted, recoveries=recovered.recoveries)
    return found


def remove_unrecorded_outputs(log: EventLog, state_dir: Path, run_id: str) -> None:
    """Delete the files of attempts that never completed: they do not exist."""
    store.remove_unrecorded(state_dir, run_id, queries.recorded_output_paths(log, run_id))

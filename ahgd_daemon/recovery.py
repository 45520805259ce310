"""Crash recovery by replay, done at start-up before any new work is taken.

The projections are the fold of the log, so "replay" is reading them: every
run the log says is RUNNING, and that no live process holds (its run lock is
free), was cut short by a crash.  Its attempts in flight become
``stage.interrupted``; the run becomes PENDING again (``run.recovered``) and
resumes at its first stage that has not succeeded, reusing the recorded
outputs of those that had.  A run recovered more than ``max_recoveries``
times is parked (``run.parked``, an alert) instead of crashing the daemon
again; ``ahgd retry RUN_ID`` un-parks it.

A run of a pipeline this daemon's configuration does not have (a script's
``BasePipeline`` run on the same state directory, or a pipeline since removed
from the configuration) cannot be resumed here: it is closed as interrupted and
FAILED instead, saying so (``state.orphans.close``), so that the script's
``pipeline.retry(run_id)``, or ``ahgd retry`` with a configuration that has it,
resumes it.  Made PENDING, it would wait for ever.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from state import EventLog
from state.machine import RunState
from state.orphans import Recovered, close, recover as recover_run, remove_unrecorded_outputs

__all__ = ["Recovered", "recover", "recover_and_report", "remove_unrecorded_outputs"]


def recover(log: EventLog, state_dir: Path, *, max_recoveries: int,
            skip: set[str] | None = None, known: Iterable[str] | None = None,
            logger: Any = None) -> list[Recovered]:
    """Every RUNNING run no live process holds, recorded as recovered (or parked); one of a
    pipeline not in ``known`` (when given) is closed as FAILED instead (a warning to
    ``logger``)."""
    out = []
    known = None if known is None else set(known)
    for run in log.runs(states=[RunState.RUNNING]):
        if skip and run.run_id in skip:
            continue  # ours: running right now
        if known is not None and run.pipeline not in known:
            _close_unknown(log, state_dir, run, logger)
            continue
        # None: a script or `ahgd run` in another process is running it right now
        recovered = recover_run(log, state_dir, run.run_id, max_recoveries=max_recoveries)
        if recovered is not None:
            out.append(recovered)
    return out


def _close_unknown(log: EventLog, state_dir: Path, run: Any, logger: Any) -> None:
    owner = close(log, state_dir, run.run_id,
                  closed_by=f"the daemon, whose configuration has no pipeline {run.pipeline!r} "
                            "to resume it with (a pipeline defined in Python: its "
                            f"pipeline.retry({run.run_id!r}) resumes it)")
    if owner is not None and logger is not None:  # None: its process is alive after all
        logger.warning("interrupted_run_closed", run_id=run.run_id, pipeline=run.pipeline,
                       owner=owner.describe(), state="FAILED",
                       why=f"this daemon's configuration has no pipeline {run.pipeline!r}",
                       resume=f"pipeline.retry({run.run_id!r}) in the script that defines it, "
                              "or add the pipeline to the daemon's configuration (SIGHUP) and "
                              f"ahgd retry {run.run_id}")


def recover_and_report(log: EventLog, state_dir: Path, *, max_recoveries: int, logger: Any,
                       skip: set[str] | None = None,
                       known: Iterable[str] | None = None) -> list[Recovered]:
    """:func:`recover`, with a log line for each run recovered, parked or closed."""
    found = recover(log, state_dir, max_recoveries=max_recoveries, skip=skip, known=known,
                    logger=logger)
    for recovered in found:
        logger.info("run_parked" if recovered.parked else "run_recovered",
                    run_id=recovered.run_id, pipeline=recovered.pipeline,
                    interrupted=recovered.interrupted, recoveries=recovered.recoveries,
                    owner=recovered.owner.describe() if recovered.owner else None)
    return found

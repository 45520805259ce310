"""A run started here first closes its pipeline's runs whose process died.

The daemon recovers, and resumes, the runs it finds RUNNING with nobody
holding them.  A script has no daemon behind it: when the script (or a
foreground ``ahgd run``) that was running a pipeline is killed (``kill -9``,
a power cut), its run stays RUNNING in the log with nobody to finish it.  So
the next run of that pipeline started without a daemon, from any script or
``ahgd run``, first records each such run interrupted and FAILED
(``state.orphans.close``: the error names the process that died and says that
``ahgd retry RUN_ID`` resumes it at its first unfinished stage), then runs as
asked, from the start.  While a daemon serves the state directory, they are
left to it: it recovers them and resumes them itself.

``retry_run`` is ``BasePipeline.retry(run_id)``: what ``ahgd retry`` does, for
a pipeline defined in Python (``ahgd retry`` knows only YAML pipelines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from state import EventType as T, RunState, new_event, removals
from state.locks import FileLock, run_lock_path
from state.orphans import GoneOwner, close, daemon_serves, owners_gone, recover

from ..errors import ConfigError
from ..logs import get_logger

log = get_logger("pipelines.engine")


def close_interrupted_runs(history: Any, state_dir: Path, pipeline: str) -> list[GoneOwner]:
    """Close the RUNNING runs of ``pipeline`` whose owner is gone (none while a daemon runs on
    ``state_dir``); each one closed, with who its owner was."""
    if daemon_serves(state_dir):
        return []
    closed = []
    for run_id in owners_gone(history, state_dir, pipeline=pipeline):
        owner = close(history, state_dir, run_id,
                      closed_by=f"a new run of pipeline {pipeline!r} (pid {os.getpid()})")
        if owner is not None:
            closed.append(owner)
            log.warning("interrupted_run_closed", pipeline=pipeline, run_id=run_id,
                        owner=owner.describe(), state="FAILED",
                        resume=f"ahgd retry {run_id}, or pipeline.retry({run_id!r})")
    return closed


def retry_run(pipeline: Any, run_id: str) -> Any:
    """Run ``run_id`` of ``pipeline`` again here, from its first unfinished stage: a FAILED,
    PARKED or CANCELLED run, or a RUNNING one whose owner is gone; its context."""
    history = pipeline._open_log()
    lock = FileLock(run_lock_path(pipeline.state_dir, run_id),
                    {"role": "retry", "run_id": run_id}, remove_on_release=True).acquire()
    try:
        run = history.run(run_id)
        if run is None or run.pipeline != pipeline.name:
            raise ConfigError(f"pipeline {pipeline.name!r} has no run {run_id!r} in "
                              f"{pipeline.state_dir} (see `ahgd history`)")
        if run.state == RunState.RUNNING:
            recover(history, pipeline.state_dir, run_id, lock_held=True)
        elif run.state in (RunState.FAILED, RunState.PARKED, RunState.CANCELLED):
            refused = removals.retry_refusal(history, pipeline.state_dir, run)
            if refused:  # what it needs, removed by retention: said before anything is recorded
                raise ConfigError(refused)
            history.append(new_event(T.RUN_RETRIED, run_id, previous_state=run.state))
        else:
            raise ConfigError(f"run {run_id!r} is {run.state}; only FAILED, PARKED or CANCELLED "
                              "runs, and RUNNING ones whose owner is gone, can be retried")
    except BaseException:
        lock.release()
        raise
    return pipeline.execute_run(run_id, log=history, run_lock=lock)

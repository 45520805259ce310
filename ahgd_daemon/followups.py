"""What an ended run sets off: runs of the pipelines downstream of it, or the quarantine of its input.

A completed run requests a run of every pipeline with an ``upstream`` trigger
on its pipeline, unless a run of that pipeline already covers it (one pending,
or one started since).  Completions that no daemon saw (it crashed in between)
are caught up at start-up.  A failed drop-folder run whose stage refused the
file itself (the first stage, or an input error no retry would change) puts a
copy of that file in quarantine, when its folder asks for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from state import DuplicateEvent, EventLog, EventType as T, Run, RunState, new_event, queries
from state.errors import AhgdError

from .configuration import Setup


def follow_up(log: EventLog, setup: Setup, claimer: Any, run: Run) -> None:
    """After the daemon reaped ``run``.  (A ``rebuild`` run sets off no downstream run:
    ``ahgd warehouse rebuild`` runs the dependants itself, once all their sources are in.)"""
    if run.state == RunState.COMPLETED and run.trigger != "rebuild":
        for downstream in setup.downstream_of.get(run.pipeline, ()):
            request_downstream_run(log, setup, downstream, run.pipeline, run.run_id, run.ended_at)
    elif run.state == RunState.FAILED:
        quarantine_refused_input(setup, claimer, run)


def request_downstream_run(log: EventLog, setup: Setup, downstream: str, upstream: str,
                           upstream_run: str, upstream_ended: str) -> str | None:
    """Request a run of ``downstream`` for the completion of ``upstream_run``; its run id, or
    None when none was needed (or another request for that completion was recorded first)."""
    if downstream not in setup.pipelines:
        return None
    if queries.upstream_completion_covered(log, downstream, upstream_ended):
        return None
    from pipelines.base import new_run_id

    run_id = new_run_id(downstream)
    try:
        log.append(new_event(
            T.RUN_REQUESTED, run_id, pipeline=downstream, trigger="upstream",
            params={"upstream_pipeline": upstream, "upstream_run": upstream_run},
            idempotency_key=f"upstream:{downstream}:{upstream_run}"))
    except DuplicateEvent:
        return None
    return run_id


def catch_up_upstream(log: EventLog, setup: Setup) -> None:
    """Upstream runs that completed while no daemon could react (a crash between)."""
    for upstream, downstreams in setup.downstream_of.items():
        last = queries.last_completed_run(log, upstream)
        if last is None:
            continue
        run_id, ended_at = last
        for downstream in downstreams:
            request_downstream_run(log, setup, downstream, upstream, run_id, ended_at)


def quarantine_refused_input(setup: Setup, claimer: Any, run: Run) -> None:
    if run.trigger != "drop_folder":
        return
    folder = next((f for f in setup.folders if f.pipeline == run.pipeline), None)
    stages = list(run.stages)
    if folder is None or not folder.quarantine_on_extract_failure or not stages:
        return
    stage = run.failed_stage
    attempt = run.attempts.get(stage) if stage else None
    if attempt is None:
        return
    info = attempt.info()
    # the file itself is bad: its first stage refused it, or a later stage found
    # it malformed (an input or validation error, which no retry would change)
    is_input_error = bool(info.get("bad_input"))   # the stage raised InputError
    if info.get("retryable", True) or not (stage == stages[0] or is_input_error):
        return
    stored = Path(run.params.get("input_file", ""))
    if not stored.exists():
        return
    try:
        claimer.quarantine(folder, stored,
                           f"run {run.run_id} failed at stage {stage!r}: {attempt.error}",
                           sha256=run.params.get("input_sha256"), run_id=run.run_id)
    except (OSError, AhgdError) as exc:  # a full disk, say: the stored input stays where it is
        structlog.get_logger("ahgd.daemon").warning(
            "quarantine_failed", run_id=run.run_id, pipeline=run.pipeline, path=str(stored),
            error=str(exc), fix="nothing is lost: the input stays at that path in the store, "
                                "not copied into quarantine; free space on the state directory")

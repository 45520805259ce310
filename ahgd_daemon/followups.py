"""What an ended run sets off: runs of the pipelines downstream of it, or the quarantine of its input.

A completed run requests a run of every pipeline with an ``upstream`` trigger
on its pipeline, unless a run of that pipeline already covers it (one pending,
or one started since).  Completions that no daemon saw (it crashed in between)
are caught up at start-up.  A failed drop-folder run whose stage said the file
itself is bad (it raised ``pipelines.InputError``, such as ``ValidationFailed``,
at any stage) puts one copy of that file in quarantine, when its folder asks
for it; an error of the code, the configuration or the machine never does:
the file stays in the store, ready for ``ahgd retry``.
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
        quarantine_refused_input(log, setup, claimer, run)


def request_downstream_run(log: EventLog, setup: Setup, downstream: str, upstream: str,
                           upstream_run: str, upstream_ended: str) -> str | None:
    """Request a run of ``downstream`` for the completion of ``upstream_run``; its run id, or
    None when none was needed (or another request for that completion was recorded first)."""
    if downstream not in setup.pipelines or downstream in setup.disabled:
        return None  # gone from the configuration, or enabled: false (its triggers are off)
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


def quarantine_refused_input(log: EventLog, setup: Setup, claimer: Any, run: Run) -> None:
    if run.trigger != "drop_folder":
        return
    folder = next((f for f in setup.folders if f.pipeline == run.pipeline), None)
    if folder is None or not folder.quarantine_on_extract_failure:
        return
    stage = run.failed_stage
    attempt = run.attempts.get(stage) if stage else None
    # only the stage's own word that the data is bad (InputError, recorded as bad_input):
    # a worker that cannot load the pipeline, a config error, a killed worker, a timeout
    # or a full disk is no fault of the file
    if attempt is None or not attempt.info().get("bad_input"):
        return
    if queries.run_input_quarantined(log, run.run_id):
        return  # `ahgd retry` of a run whose file is in quarantine already: one copy is enough
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

"""What `ahgd run|retry|cancel` do to the event log, with or without a daemon.

The daemon calls these from its control socket; the CLI calls them itself
when no daemon runs on the state directory.  Either way the checks and the
messages are the same.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from state import EventLog, EventType as T, new_event, store
from state.errors import AhgdError
from state.locks import describe_holder, is_locked, read_holder, run_lock_path
from state.machine import RUN_TRANSITIONS, RunState, StageState
from state.store import safe_name


class RequestError(AhgdError):
    """A request that cannot be honoured; the message says why and what to do."""


def stage_input(state_dir: Path, pipeline: str, source: Path) -> tuple[Path, str]:
    """Copy a user's input file into ``<state>/inputs/`` by content; (path, sha256).

    Not ``files/``: that store holds drop-folder arrivals, and a file there
    without a ``file.arrived`` event is taken for a crash leftover and run.
    """
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise RequestError(f"input file {source} does not exist or is not a file")
    sha = store.sha256_file(source)
    target = Path(state_dir) / "inputs" / safe_name(pipeline) / sha / safe_name(source.name)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.incoming")
        shutil.copyfile(source, tmp)
        tmp.rename(target)
    return target, sha


def request_run(log: EventLog, state_dir: Path, pipelines: dict[str, Any], name: str, *,
                input_file: str | None = None, resume_from: str | None = None,
                params: dict[str, Any] | None = None, trigger: str = "manual",
                run_id: str | None = None) -> str:
    """Validate and record ``run.requested``; return the run id (the run is PENDING)."""
    from pipelines.base import new_run_id

    pipeline = pipelines.get(name)
    if pipeline is None:
        raise RequestError(f"no pipeline {name!r} in the configuration (known: "
                           f"{', '.join(sorted(pipelines)) or 'none'})")
    run_params = dict(params or {})
    if input_file:
        stored, sha = stage_input(state_dir, name, Path(input_file))
        run_params.update(input_file=str(stored), input_sha256=sha,
                          original_name=Path(input_file).name)
    if resume_from:
        stages, _ = pipeline._stages_and_deps()
        pipeline._resume_plan(log, stages, resume_from)  # refuse now, with the reason
        run_params["resume_from"] = resume_from
    run_id = run_id or new_run_id(name)
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=name, trigger=trigger, params=run_params))
    return run_id


def retry(log: EventLog, run_id: str) -> dict[str, Any]:
    run = log.run(run_id)
    if run is None:
        raise RequestError(f"no run {run_id!r} in this state directory (see `ahgd history`)")
    if run.state not in (RunState.FAILED, RunState.PARKED, RunState.CANCELLED):
        raise RequestError(f"run {run_id!r} is {run.state}; only FAILED, PARKED or CANCELLED runs "
                           "can be retried")
    log.append(new_event(T.RUN_RETRIED, run_id, previous_state=run.state))
    return {"run_id": run_id, "pipeline": run.pipeline, "previous_state": run.state}


def cancel_recorded(log: EventLog, state_dir: Path, run_id: str) -> dict[str, Any]:
    """Cancel a run that no process of ours is executing (PENDING, PARKED, or stale)."""
    run = log.run(run_id)
    if run is None:
        raise RequestError(f"no run {run_id!r} in this state directory (see `ahgd history`)")
    if (run.state, T.RUN_CANCELLED) not in RUN_TRANSITIONS:
        raise RequestError(f"run {run_id!r} is already {run.state}; there is nothing to cancel")
    lock = run_lock_path(state_dir, run_id)
    if run.state == RunState.RUNNING and is_locked(lock):
        raise RequestError(f"run {run_id!r} is being executed by {describe_holder(read_holder(lock))}; "
                           "stop that process (Ctrl-C) to cancel it")
    events = [new_event(T.STAGE_INTERRUPTED, run_id, stage=s, attempt=a.attempt,
                        error="cancelled while no process was running it")
              for s, a in run.attempts.items() if a.state == StageState.RUNNING]
    events.append(new_event(T.RUN_CANCELLED, run_id, reason="cancelled with `ahgd cancel`"))
    log.append_many(events)
    return {"run_id": run_id, "previous_state": run.state}


def dispatch(daemon: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Requests arriving on the daemon's control socket."""
    cmd = req.get("cmd")
    if cmd == "ping":
        return {"pid": os.getpid()}
    if cmd == "status":
        return {"status": daemon.status()}
    if cmd == "dashboard":
        return {"dashboard": daemon.dashboard(recent=req.get("recent"))}
    if cmd == "metrics":
        fmt = req.get("format", "prometheus")
        return {"metrics": daemon.monitor.export_metrics(format=fmt)}
    if cmd == "run":
        run_id = request_run(daemon.log, daemon.state_dir, daemon.setup.pipelines, req.get("pipeline", ""),
                             input_file=req.get("input"), resume_from=req.get("resume_from"),
                             params=req.get("params"))
        daemon.waker.wake()
        return {"run_id": run_id}
    if cmd == "retry":
        out = retry(daemon.log, req.get("run_id", ""))
        daemon.waker.wake()
        return out
    if cmd == "cancel":
        run_id = req.get("run_id", "")
        runs = daemon.runs
        with runs.lock:  # the main loop admits runs under the same lock
            if runs.cancel_active(run_id, "cancelled with `ahgd cancel`"):
                return {"run_id": run_id, "previous_state": RunState.RUNNING, "cancelling": True}
            return cancel_recorded(daemon.log, daemon.state_dir, run_id)
    raise RequestError(f"unknown request {cmd!r}; known: ping, status, dashboard, metrics, run, retry, cancel")

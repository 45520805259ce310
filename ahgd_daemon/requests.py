"""What `ahgd run|retry|cancel` do to the event log, with or without a daemon.

The daemon calls these from its control socket; the CLI calls them itself
when no daemon runs on the state directory.  Either way the checks and the
messages are the same.  An input file is always an open descriptor, opened
by the user who asked (never a path the daemon would open with its rights).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from state import EventLog, EventType as T, new_event
from state.errors import AhgdError, DiskFull
from state.locks import describe_holder, is_locked, read_holder, run_lock_path
from state.machine import RUN_TRANSITIONS, RunState, StageState
from state.store import safe_name

from .names import disabled_pipeline, unknown_pipeline, unknown_run


class RequestError(AhgdError):
    """A request that cannot be honoured; the message says why and what to do."""


#: run params that ahgd sets itself: the stored input (a path the daemon opens), its hash, ...
RESERVED_PARAMS = ("input_file", "input_sha256", "original_name", "resume_from", "fire_time",
                   "backfill", "keep_outputs")
#: what `ahgd warehouse rebuild` gives its runs (ahgd's own: no params: section declares them)
REBUILD_PARAMS = ("rebuild", "replays")
_CHUNK = 1 << 20


def stage_input(state_dir: Path, pipeline: str, fd: int, name: str) -> tuple[Path, str]:
    """Copy an input file, given as a descriptor open for reading, into
    ``<state>/inputs/<pipeline>/<sha256>/<name>``; (path, sha256).

    Not ``files/``: that store holds drop-folder arrivals, and a file there
    without a ``file.arrived`` event is taken for a crash leftover and run.
    """
    name = safe_name(Path(str(name)).name or "input")
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise RequestError(f"the input {name} cannot be looked at ({exc.strerror}); pass a file "
                           "open for reading") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "not a regular file")
        raise RequestError(f"the input {name} is {kind}; --input takes a regular file")
    folder = Path(state_dir) / "inputs" / safe_name(pipeline)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".incoming-{os.getpid()}-{os.urandom(6).hex()}"
    digest = hashlib.sha256()
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides
        try:
            offset = 0
            while chunk := _read_input(fd, offset, name):
                digest.update(chunk)
                os.write(out, chunk)  # a regular file: the whole chunk is written
                offset += len(chunk)
        finally:
            os.close(out)
        sha = digest.hexdigest()
        target = folder / sha / name
        if target.exists():
            tmp.unlink()
        else:
            target.parent.mkdir(exist_ok=True)
            tmp.rename(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"the disk holding {folder} is full (copying the input {name}); free "
                           "some space and ask again") from None
        raise
    return target, sha


def _read_input(fd: int, offset: int, name: str) -> bytes:
    try:
        return os.pread(fd, _CHUNK, offset)
    except OSError as exc:
        raise RequestError(f"the input {name} cannot be read ({exc.strerror}); pass a file "
                           "open for reading") from None


def request_run(log: EventLog, state_dir: Path, pipelines: dict[str, Any], name: str, *,
                input_fd: int | None = None, input_name: str | None = None,
                resume_from: str | None = None, params: dict[str, Any] | None = None,
                trigger: str = "manual", run_id: str | None = None,
                disabled: Mapping[str, Any] | None = None, force: bool = False) -> str:
    """Validate and record ``run.requested``; return the run id (the run is PENDING).

    ``input_fd`` is the input file, open for reading by whoever asked for the run.
    A pipeline in ``disabled`` (name -> the master file that disables it) is refused
    unless ``force``.
    """
    from pipelines.base import new_run_id

    pipeline = pipelines.get(name)
    if pipeline is None:
        raise RequestError(unknown_pipeline(name, pipelines))
    if disabled and name in disabled and not force:
        raise RequestError(disabled_pipeline(name, disabled[name]))
    if params is not None and not isinstance(params, dict):
        raise RequestError(f"params must be a JSON object, not {type(params).__name__}")
    reserved = sorted(set(params or {}) & set(RESERVED_PARAMS))
    if reserved:
        raise RequestError(f"params may not set {', '.join(reserved)}: ahgd sets them itself "
                           "(give an input file with `ahgd run --input FILE`, a stage to resume "
                           "from with --resume-from)")
    run_params = checked_params(pipeline, name, params or {})
    if input_fd is not None:
        stored, sha = stage_input(state_dir, name, input_fd, input_name or "input")
        run_params.update(input_file=str(stored), input_sha256=sha,
                          original_name=Path(str(input_name or stored.name)).name)
    if resume_from:
        from pipelines.base import inherit_input

        stages, _ = pipeline._stages_and_deps()
        # refused now, with the reason; a run given no input reads the reused run's
        _, source = pipeline._resume_source(log, stages, resume_from, run_params)
        inherit_input(run_params, source)
        run_params["resume_from"] = resume_from
    run_id = run_id or new_run_id(name)
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=name, trigger=trigger, params=run_params))
    return run_id


def checked_params(pipeline: Any, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` checked against the pipeline file's ``params:`` (converted, defaults filled
    in); a pipeline built in Python (no ``spec``) takes its params unchecked."""
    spec = getattr(pipeline, "spec", None)
    if spec is None:
        return dict(given)
    from pipelines.config.params import ParamError, resolve

    own = {k: v for k, v in given.items() if k in REBUILD_PARAMS}  # ahgd's, not the user's
    try:
        return {**resolve(name, spec.params, {k: v for k, v in given.items() if k not in own},
                          where=getattr(pipeline, "source", None)), **own}
    except ParamError as exc:
        raise RequestError(str(exc)) from None


def retry(log: EventLog, run_id: str, state_dir: Path | None = None, *,
          lock_held: bool = False) -> dict[str, Any]:
    """Make a FAILED, PARKED or CANCELLED run PENDING again (``run.retried``), or a RUNNING
    one whose owner is gone (a killed script): that one is recorded interrupted and
    recovered (``run.recovered``), as the daemon would after a crash.  Either way it resumes
    at its first unfinished stage.  ``lock_held``: the caller holds the run's lock."""
    run = log.run(run_id)
    if run is None:
        raise RequestError(unknown_run(log, run_id))
    if run.state == RunState.RUNNING and state_dir is not None:
        from state.orphans import recover

        recovered = recover(log, state_dir, run_id, lock_held=lock_held)
        if recovered is None:
            lock = run_lock_path(state_dir, run_id)
            raise RequestError(f"run {run_id!r} is RUNNING in {describe_holder(read_holder(lock))}"
                               "; it cannot be retried while it runs (`ahgd cancel` stops it)")
        return {"run_id": run_id, "pipeline": run.pipeline,
                "previous_state": f"RUNNING, {recovered.owner.describe()}"}
    if run.state not in (RunState.FAILED, RunState.PARKED, RunState.CANCELLED):
        raise RequestError(f"run {run_id!r} is {run.state}; only FAILED, PARKED or CANCELLED runs, "
                           "and RUNNING ones whose owner is gone, can be retried")
    if state_dir is not None:  # what it needs, removed by retention: said now, nothing recorded
        from state.removals import retry_refusal

        refused = retry_refusal(log, state_dir, run)
        if refused:
            raise RequestError(refused)
    log.append(new_event(T.RUN_RETRIED, run_id, previous_state=run.state))
    return {"run_id": run_id, "pipeline": run.pipeline, "previous_state": run.state}


def cancel_recorded(log: EventLog, state_dir: Path, run_id: str) -> dict[str, Any]:
    """Cancel a run that no process of ours is executing (PENDING, PARKED, or stale)."""
    run = log.run(run_id)
    if run is None:
        raise RequestError(unknown_run(log, run_id))
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
    for key in ("cmd", "pipeline", "run_id", "resume_from", "input_name", "format"):
        if req.get(key) is not None and not isinstance(req[key], str):
            raise RequestError(f"{key} must be a string, not {type(req[key]).__name__}")
    if req.get("force") is not None and not isinstance(req["force"], bool):
        raise RequestError(f"force must be true or false, not {type(req['force']).__name__}")
    if cmd == "ping":
        return {"pid": os.getpid()}
    if cmd == "status":
        return {"status": daemon.status()}
    if cmd == "dashboard":
        recent = req.get("recent")
        if recent is not None and (type(recent) is not int or not 1 <= recent <= 50):
            raise RequestError(f"recent={recent!r} is not a whole number from 1 to 50 "
                               "(the last runs shown per pipeline)")
        return {"dashboard": daemon.dashboard(recent=recent)}
    if cmd == "metrics":
        fmt = req.get("format", "prometheus")
        return {"metrics": daemon.monitor.export_metrics(format=fmt)}
    if cmd == "run":
        fd = _input_descriptor(req)
        run_id = request_run(daemon.log, daemon.state_dir, daemon.setup.pipelines, req.get("pipeline", ""),
                             input_fd=fd, input_name=req.get("input_name"),
                             resume_from=req.get("resume_from"), params=req.get("params"),
                             disabled=daemon.setup.disabled, force=bool(req.get("force")))
        daemon.waker.wake()
        return {"run_id": run_id}
    if cmd == "retry":
        run = daemon.log.run(req.get("run_id", ""))
        if run is not None and run.pipeline not in daemon.setup.pipelines:
            raise RequestError(  # made PENDING, it would wait for ever: nothing here runs it
                f"run {run.run_id!r} is of pipeline {run.pipeline!r}, which this daemon's "
                "configuration does not have, so it cannot run it; resume it from the script "
                f"that defines the pipeline (pipeline.retry({run.run_id!r})), or add the "
                "pipeline to the configuration and send SIGHUP")
        out = retry(daemon.log, req.get("run_id", ""), daemon.state_dir)
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


def _input_descriptor(req: dict[str, Any]) -> int | None:
    """The input file of a run request: the one descriptor passed with it, or None.

    A path is refused: the daemon would open it with its own rights, and the
    asker may not be allowed to read it.
    """
    if req.get("input") or req.get("input_file"):
        raise RequestError("the daemon does not open files by path (it would read them with its "
                           "own rights, not yours): send the file itself, open, with the request, "
                           "as `ahgd run PIPELINE --input FILE` does (an older ahgd client must be "
                           "upgraded)")
    fds = getattr(req, "fds", ())
    if len(fds) > 1:
        raise RequestError(f"{len(fds)} or more files came with the request; a run takes one "
                           "input file")
    if req.get("input_name") and not fds:
        raise RequestError("input_name came without the file: pass the file open with the "
                           "request (SCM_RIGHTS), as `ahgd run --input FILE` does")
    return fds[0] if fds else None

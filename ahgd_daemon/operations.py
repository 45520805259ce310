"""The control socket's requests for operating the daemon day to day: pause and resume a
pipeline, list the pipelines, backfill a schedule (and cancel a backfill), release and purge
quarantined files.

Each request does in the daemon what the command does on its own when no daemon
runs (the modules named below), so there is one writer of the event log.  Who
asked (the socket peer's uid and pid) goes into the pause it records; a path a
client names is never opened: a quarantined file is found among the files the
daemon's own quarantine holds, and a file goes back to the drop folder the
daemon's configuration names.
"""

from __future__ import annotations

from typing import Any

from state import ops_queries, queries

from . import backfill, pausing, quarantine
from .pipelineview import document
from .requests import RequestError

COMMANDS = ("pipeline.pause", "pipeline.resume", "pipelines", "backfill", "backfill.cancel",
            "quarantine.release", "quarantine.purge")


def _text(req: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = req.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise RequestError(f"{key} must be text" + (" and is required" if required else ""))
    return value


def _by(req: Any) -> dict[str, Any]:
    peer = getattr(req, "peer", None)
    sudo = req.get("sudo_user") if isinstance(req.get("sudo_user"), str) else None
    if peer is None:
        return pausing.who(sudo_user=sudo)
    return pausing.who(peer.uid, peer.pid, sudo_user=sudo)


def drop_folder_of(config: Any, pipeline: str) -> Any:
    """The folder of the pipeline's first drop-folder trigger (enabled or not), or None."""
    loaded = config.pipelines.get(pipeline)
    for trigger in (loaded.file.triggers if loaded is not None else ()):
        if trigger.type == "drop_folder":
            return trigger.path
    return None


def dispatch(daemon: Any, req: Any) -> dict[str, Any]:
    cmd, setup, log = req.get("cmd"), daemon.setup, daemon.log
    if cmd == "pipeline.pause":
        out = pausing.pause(log, _text(req, "pipeline"), setup.pipelines,  # type: ignore[arg-type]
                            _text(req, "reason", required=False), _by(req))
        out["waiting"] = len(queries.pending_runs(log, [out["pipeline"]], 100_000))
        return out
    if cmd == "pipeline.resume":
        name = _text(req, "pipeline")
        out = pausing.resume(log, name, setup.pipelines, _by(req))  # type: ignore[arg-type]
        out["fired"] = pausing.fire_skipped_ticks(log, setup.schedules, name,  # type: ignore[arg-type]
                                                  out["was"]["seq"])
        daemon.waker.wake()
        return out
    if cmd == "pipelines":
        fires = {(s.pipeline, s.trigger_id): s.next_fire for s in setup.schedules}
        return {"pipelines": document(setup.config, log, daemon.options.clock(), fires)}
    if cmd == "backfill":
        name = _text(req, "pipeline")
        return run_backfill(daemon.log, setup.config, setup.disabled, name,  # type: ignore[arg-type]
                            _text(req, "from"), _text(req, "to"),  # type: ignore[arg-type]
                            _text(req, "trigger", required=False), daemon.options.clock(),
                            dry_run=bool(req.get("dry_run")), wake=daemon.waker.wake)
    if cmd == "backfill.cancel":
        runs = daemon.runs
        with runs.lock:  # the main loop admits runs under the same lock
            return backfill.cancel_group(
                log, daemon.state_dir, _text(req, "backfill"),  # type: ignore[arg-type]
                lambda run_id: runs.cancel_active(run_id, "its backfill was cancelled"))
    if cmd == "quarantine.release":
        files = req.get("files")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise RequestError("files must be a list of quarantined file names or paths")
        items = quarantine.resolve(daemon.state_dir, files)
        return {"released": [quarantine.release(log, item, drop_folder_of(setup.config,
                                                                           item.pipeline))
                             for item in items]}
    if cmd == "quarantine.purge":
        seconds = req.get("older_than_s")
        if type(seconds) not in (int, float) or seconds < 0:
            raise RequestError("older_than_s must be a number of seconds, 0 or more")
        from datetime import timedelta

        return quarantine.purge(log, daemon.state_dir, timedelta(seconds=seconds),
                                daemon.options.clock(),
                                pipeline=_text(req, "pipeline", required=False),
                                dry_run=bool(req.get("dry_run")),
                                rule=_text(req, "rule", required=False) or "")
    raise RequestError(f"unknown request {cmd!r}; known here: {', '.join(COMMANDS)}")


def run_backfill(log: Any, config: Any, disabled: dict[str, Any], name: str, start: str,
                 end: str, trigger: str | None, now: Any, *, dry_run: bool = False,
                 wake: Any = None) -> dict[str, Any]:
    """Plan a backfill of ``name`` and request its runs (not with ``dry_run``)."""
    from .names import disabled_pipeline, unknown_pipeline

    if name not in config.pipelines:
        raise RequestError(unknown_pipeline(name, config.pipelines))
    if name in disabled:
        raise RequestError(disabled_pipeline(name, disabled[name]).split(". Run it")[0]
                           + ". Set enabled: true there to backfill it")
    triggers = [t.type for t in config.pipelines[name].file.triggers]
    schedule = backfill.choose(backfill.schedules_of(config, name), name, trigger, triggers)
    planned = backfill.plan(log, schedule, start, end, now)
    requested = None if dry_run else backfill.request(log, schedule, planned)
    if requested and wake is not None:
        wake()
    out = planned.as_json(requested)
    out["paused"] = ops_queries.pipeline_pauses(log).get(name)
    return out

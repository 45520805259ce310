"""The daemon's answers about itself, as documents.

- its health, for ``/healthz``;
- the ``STATUS=`` line it sends systemd;
- the progress snapshot (``ahgd demo``'s live line: active runs and their
  stage, runs by state, files waiting);
- the ``GET /status`` document (also the control socket's ``status`` request);
- the ``daemon`` section it adds to the monitor's dashboard document.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from state import EventLog, format_ts, queries

from .configuration import Setup
from .runs import ActiveRun

#: /healthz answers 503 when the main loop has not turned for this long
LOOP_STALL_S = 60.0


def health(recovering: bool, stopping: bool, loop_age_s: float) -> tuple[bool, str]:
    """(healthy, why) for /healthz: recovery done, not stopping, and the main loop turning."""
    if recovering:
        return False, "recovering interrupted runs"
    if stopping:
        return False, "stopping"
    if loop_age_s > LOOP_STALL_S:
        return False, f"the main loop has not turned for {loop_age_s:.0f}s"
    return True, "ok"


def status_line(log: EventLog | None, running: int, finished: int) -> str:
    pending = queries.pending_run_count(log) if log is not None else 0
    return f"{running} running, {pending} pending, {finished} finished this session"


def progress_snapshot(log: EventLog, active: Iterable[ActiveRun], files_waiting: int,
                      finished: Any) -> dict[str, Any]:
    """``finished``: :class:`ahgd_daemon.runs.Finished` (its latest runs go in the reply)."""
    runs = []
    for run in active:
        pipeline = run.configured_pipeline
        progress = pipeline.get_progress() if pipeline is not None else {}
        runs.append({"run_id": run.run_id, "pipeline": run.pipeline,
                     "stage": progress.get("current_stage"),
                     "progress": progress.get("progress_percentage")})
    return {"active": runs, "counts": queries.run_counts_by_state(log),
            "files_waiting": files_waiting, "finished": finished.recent()}


def status_document(state_dir: Path, uptime_s: float, setup: Setup, executor: Any,
                    snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "state_dir": str(state_dir),
        "uptime_s": round(uptime_s, 1),
        "pipelines": sorted(setup.pipelines),
        "disabled": sorted(setup.disabled),   # enabled: false: no trigger starts them
        "workers": {"max": executor.max_workers, "busy": executor.in_use(),
                    "pids": executor.worker_pids()},
        **cluster_section(executor),
        "watching": {str(f.path): f.pipeline for f in setup.folders},
        "schedules": [{"pipeline": s.pipeline, "trigger": s.trigger_id,
                       "next_fire": format_ts(s.next_fire) if s.next_fire else None}
                      for s in setup.schedules],
        **snapshot,
    }


def dashboard_section(state_dir: Path, uptime_s: float, health: tuple[bool, str],
                      recovering: bool, executor: Any, files_waiting: int | None,
                      setup: Setup | None) -> dict[str, Any]:
    """What only the daemon knows, beside the monitor's dashboard document."""
    healthy, why = health
    return {
        "pid": os.getpid(), "state_dir": str(state_dir),
        "uptime_s": round(uptime_s, 1), "healthy": healthy,
        "health": why, "recovering": recovering,
        "workers": {"max": executor.max_workers, "busy": executor.in_use()},
        **cluster_section(executor),
        "files_waiting": files_waiting,
        "pipelines": sorted(setup.pipelines) if setup else [],
        "disabled": sorted(setup.disabled) if setup else [],
    }


def cluster_section(executor: Any) -> dict[str, Any]:
    """``{"cluster": {scheduler, connected, object_store, workers: [...]}}`` when attempts run
    on a Dask cluster (daemon.executor type dask); nothing otherwise."""
    cluster = getattr(executor, "cluster", None)
    return {"cluster": cluster()} if callable(cluster) else {}

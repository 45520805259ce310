"""Which executor the daemon runs stage attempts on: its own worker pool, or a Dask cluster.

``daemon.executor`` in the master file decides (:mod:`pipelines.config.cluster`).
The default is today's warm pool of worker processes on this host, and then
nothing of Dask is imported.  ``type: dask`` connects to the scheduler named
there (checking the workers' versions); outputs then travel through
``daemon.object_store``.  When an object store is configured, this host's
worker processes are told about it too (``AHGD_OBJECT_STORE``), so a loader
here reads outputs made elsewhere, whichever executor runs now.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable


def build_executor(settings: Any, *, workers: int, env: dict[str, str], stdout: Any,
                   state_dir: Path, alert: Callable[..., Any],
                   resolve: Callable[[str, str], Any]) -> Any:
    """The executor ``settings`` (the master file's ``daemon`` section) ask for."""
    store = settings.object_store
    if store is not None:
        from state import objectstore

        objectstore.configure(store.as_dict())
        env[objectstore.ENV] = json.dumps(store.as_dict())
    chosen = settings.executor
    if chosen.type != "dask":
        from pipelines.execution.pool import ProcessExecutor

        return ProcessExecutor(workers, env=env, stdout=stdout)
    from pipelines.execution.cluster import DaskExecutor

    return DaskExecutor(
        chosen.scheduler, object_store=store.as_dict(), max_workers=workers,
        security=chosen.security.model_dump() if chosen.security else None,
        connect_timeout=chosen.connect_timeout.total_seconds(),
        local_workers=chosen.local_workers, on_scheduler_lost=chosen.on_scheduler_lost,
        scratch_dir=chosen.scratch_dir, owner=owner_of(state_dir), alert=alert,
        resolve=resolve, env=env, stdout=stdout)


def owner_of(state_dir: Path) -> str:
    """Who started an attempt on the cluster: this host's daemon of this state directory
    (a daemon that starts after one that died stops what the dead one left running)."""
    return f"{socket.gethostname()}:{Path(state_dir).resolve()}"


__all__ = ["build_executor", "owner_of"]

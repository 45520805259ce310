"""The worker pool's bookkeeping: a worker process, a queued attempt, how a child ended.

Kept apart from :mod:`pipelines.execution.pool` (the dispatcher), which is
what uses them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .children import describe_exit  # noqa: F401  (the pool's name for it)
from .runner import StageTask


@dataclass
class _Worker:
    proc: Any  # subprocess.Popen or a forked pid holder
    conn: Connection
    pid: int
    fork: bool
    pipeline_key: str | None = None
    job: "_Job | None" = None
    ready: bool = False
    generation: int = 0  # the pool's generation when it started (renew() retires older ones)
    #: (params, run_id, upstream outputs) of the last attempt sent: the next one of the same
    #: execution sends only what changed (pool._start_job, worker.serve)
    upstream: Any = None

    @property
    def sentinel(self) -> int:
        return self.conn.fileno()

    def alive(self) -> bool:
        if self.fork:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return False
            return pid == 0
        return self.proc.poll() is None

    def kill(self) -> None:
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        self.reap()

    def reap(self) -> int | None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.fork:
            try:
                _, status = os.waitpid(self.pid, 0)
                return os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                return None
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not take this long
            return None


@dataclass
class _Job:
    task_id: int
    pipeline: Any
    key: str
    blob: bytes
    fork: bool
    task: StageTask
    future: Future
    started: float | None = None
    deadline: float | None = None
    cancel_reason: str | None = None
    worker: _Worker | None = field(default=None, repr=False)

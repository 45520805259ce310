"""The executor boundary: where stage attempts run, and the in-process executor.

An :class:`Executor` reserves slots, runs attempts and cancels them; the run
engine needs nothing else, so a distributed engine plugs in here while the
caller stays the single writer of the event log.  The default,
:class:`~pipelines.execution.pool.ProcessExecutor`, is a warm pool of worker
processes; :func:`~pipelines.execution.pool.make_executor` builds one from a name.

``InProcessExecutor`` runs attempts on threads of this process.  It is for
tests and tiny stages: **it cannot enforce timeouts** (Python cannot stop a
thread), and a crashing stage takes the process with it.

Both return ``concurrent.futures.Future`` objects that resolve to an
:class:`~pipelines.execution.runner.Outcome`; neither ever raises a stage's error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .runner import StageTask, run_task


class Executor:
    """What the engine needs: reserve a slot, submit an attempt, cancel it, shut down.

    Slots are how "at most ``max_workers`` stages at once" holds across every
    run sharing an executor: the engine reserves one before it records
    ``stage.started`` and releases it when the attempt has ended.
    """

    max_workers: int = 1
    enforces_timeouts: bool = False

    def _init_slots(self) -> None:
        self._free = self.max_workers
        self._slots = threading.Condition()
        #: rank -> thread of the runs turned away for want of a slot, still waiting for one
        self._queued: dict[Any, threading.Thread] = {}

    def try_reserve(self, rank: Any = None) -> bool:
        """Take a slot if one is free.  With ``rank`` (lower first: the engine's runs in the
        order they started), a slot goes to no one while a run ranked before is waiting."""
        with self._slots:
            if self._free <= 0 or (rank is not None and self._ahead(rank) >= self._free):
                if rank is not None:
                    self._queued[rank] = threading.current_thread()
                return False
            self._free -= 1
            if rank is not None:
                self._queued.pop(rank, None)
            return True

    def _ahead(self, rank: Any) -> int:
        """How many runs ranked before ``rank`` wait for a slot (the lock held)."""
        ahead = 0
        for other, thread in list(self._queued.items()):
            if other < rank:
                if thread.is_alive():
                    ahead += 1
                else:  # its run's thread is gone without saying so: it waits for nothing
                    del self._queued[other]
        return ahead

    def withdraw(self, rank: Any) -> None:
        """The run ranked ``rank`` no longer waits for a slot (it waits for something else, or
        has ended): slots may go to the runs after it."""
        with self._slots:
            if self._queued.pop(rank, None) is not None:
                self._slots.notify_all()

    def release(self) -> None:
        with self._slots:
            self._free = min(self.max_workers, self._free + 1)
            self._slots.notify_all()

    def wait_for_slot(self, timeout: float) -> None:
        """Sleep until a slot is released or ``timeout`` passes."""
        with self._slots:
            self._slots.wait(timeout)

    def in_use(self) -> int:
        with self._slots:
            return self.max_workers - self._free

    def submit(self, pipeline: Any, task: StageTask) -> Future:  # pragma: no cover - interface
        raise NotImplementedError

    def cancel(self, future: Future, reason: str = "cancelled") -> None:
        """Stop the attempt behind ``future`` if possible (it resolves as interrupted)."""

    def shutdown(self) -> None:
        """Release workers; pending attempts resolve as interrupted."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class InProcessExecutor(Executor):
    """Threads of this process, for tests and tiny stages.

    It cannot enforce timeouts (Python cannot stop a thread: a stage past its
    timeout runs on) and a stage that crashes the interpreter takes the whole
    process with it.  Use ProcessExecutor for anything that matters.
    """

    enforces_timeouts = False

    def __init__(self, max_workers: int = 1):
        self.max_workers = max(1, max_workers)
        self._init_slots()
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="ahgd-stage")

    def submit(self, pipeline: Any, task: StageTask) -> Future:
        return self._pool.submit(run_task, pipeline, task)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

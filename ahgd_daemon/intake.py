"""Drop-folder files on their way in: from the watchers' callbacks to the claimer.

The watchers call ``complete`` (the writer closed the file, or renamed it into
place) and ``candidate`` (a file appeared or changed) from their own threads.
The main loop calls ``take``, which hands the complete files, and the
candidates that have been stable for their folder's ``stable_for`` (under
inotify, only once no process still has them open for writing), to the
intake thread.  That thread claims them in turn, so hashing or copying a
large file, or waiting for its input check, never holds up the main loop; the
files queued together (a burst) have their arrivals recorded in one commit
(``Claimer.claim_many``), each file's name leaving the folder only once that
commit is durable.

A file that cannot be taken (a full disk, too many open files, any error)
stays in its folder and is tried again after 1 s, then 2, 4 ... and at most
every 60 s while the trouble lasts, each try logged; an alert
(``daemon.file_claim_failed:<pipeline>``) fires at the first failure and
resolves once no file of that pipeline waits for another try.  ``--once``
leaves a file that failed three times for a later run (and exits 1).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from state.errors import AhgdError

from .alerts import MonitorLink
from .dropfolder import Claimer, Folder
from .inboxfiles import display_name
from .inputcheck import CheckAborted

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
#: at most this many queued files are claimed together, their arrivals in one commit
CLAIM_BATCH = 32
#: ``--once`` stops waiting for a file that failed this many times
ONCE_GIVES_UP_AFTER = 3


@dataclass
class _Retry:
    folder: Folder
    due: float          # monotonic seconds
    failures: int


class FileIntake:
    def __init__(self, monotonic: Callable[[], float], wake: Callable[[], None],
                 logger: Any = None):
        self.stability = Stability(monotonic)
        self._clock = monotonic
        self._wake = wake
        self._logger = logger or structlog.get_logger("ahgd.intake")
        self._completed: deque[tuple[Folder, Path]] = deque()
        self._cond = threading.Condition()
        # under _cond: files for the intake thread, files queued or being claimed, and
        # files waiting to be tried again
        self._queue: deque[tuple[Folder, Path]] = deque()
        self._inflight: set[Path] = set()
        self._retry: dict[Path, _Retry] = {}
        self._thread: threading.Thread | None = None
        self._claimer: Claimer | None = None
        self._stopped = False

    # -- the watchers' threads -------------------------------------------------------------

    def complete(self, folder: Folder, path: Path) -> None:
        """Watcher thread: the writer closed the file (or renamed it into place)."""
        self._completed.append((folder, path))
        self._wake()

    def candidate(self, folder: Folder, path: Path) -> None:
        """Watcher thread or scan: a file to take once it is stable."""
        self.stability.note(folder, path)
        self._wake()

    # -- the main loop -----------------------------------------------------------------------

    def waiting(self) -> int:
        """Files seen and not taken yet."""
        with self._cond:
            held = len(self._inflight | set(self._retry))
        return self.stability.pending() + len(self._completed) + held

    def idle(self) -> bool:
        """Nothing left to take (for ``--once``: files that failed often do not count)."""
        if self._completed or self.stability.pending():
            return False
        with self._cond:
            return not self._inflight and all(r.failures >= ONCE_GIVES_UP_AFTER
                                              for r in self._retry.values())

    def left_behind(self) -> list[Path]:
        """Files that could not be taken and wait for another try."""
        with self._cond:
            return sorted(self._retry)

    def next_due_in(self) -> float | None:
        """Seconds until a candidate may be stable or a retry is due; None when neither."""
        waits = [w for w in (self.stability.next_due_in(),) if w is not None]
        with self._cond:
            if self._retry:
                waits.append(max(0.0, min(r.due for r in self._retry.values()) - self._clock()))
        return min(waits) if waits else None

    def take(self, claimer: Claimer, watchers: Any, alerts: MonitorLink, *,
             stopping: Callable[[], bool]) -> None:
        """Hand every file that is ready to the intake thread (started on first use)."""
        from .watch import open_for_writing

        if stopping():
            return
        self._start(claimer, alerts, stopping)
        batch = []
        while self._completed:
            batch.append(self._completed.popleft())
        for folder, path in self.stability.due():
            if not watchers.polling(folder) and open_for_writing(path):
                self.stability.note(folder, path)  # still being written: wait for its close
                continue
            batch.append((folder, path))
        now = self._clock()
        with self._cond:
            batch += [(r.folder, p) for p, r in self._retry.items() if r.due <= now]
            for folder, path in batch:
                self.stability.forget(path)
                retry = self._retry.get(path)
                if path in self._inflight or (retry is not None and retry.due > now):
                    continue  # being taken, or waiting for its next try
                self._inflight.add(path)
                self._queue.append((folder, path))
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the intake thread; a file it was taking stays in its folder."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify()
        if self._claimer is not None:
            self._claimer.stopping.set()  # cut a running input check short
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the intake thread -------------------------------------------------------------------

    def _start(self, claimer: Claimer, alerts: MonitorLink, stopping: Callable[[], bool]) -> None:
        if self._thread is not None:
            return
        self._claimer = claimer
        self._thread = threading.Thread(target=self._serve, args=(claimer, alerts, stopping),
                                        name="ahgd-intake", daemon=True)
        self._thread.start()

    def _serve(self, claimer: Claimer, alerts: MonitorLink, stopping: Callable[[], bool]) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                # what is queued now, taken together: their arrivals share one commit
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), CLAIM_BATCH))]
            try:
                if not stopping():
                    self._claim(claimer, alerts, batch)
            except Exception as exc:  # the intake thread outlives any one failure
                self._recover(alerts, batch, exc)
            finally:
                with self._cond:
                    for _, path in batch:
                        self._inflight.discard(path)
                self._wake()

    def _recover(self, alerts: MonitorLink, batch: list[tuple[Folder, Path]],
                 exc: Exception) -> None:
        """Taking ``batch`` failed outside a claim (reporting its outcomes): each file still in
        its folder is tried again, as after a failed claim; one taken already is gone from
        there and is left alone then."""
        self._logger.error("intake_error", error=str(exc), error_type=type(exc).__name__,
                           files=[display_name(str(path)) for _, path in batch])
        for folder, path in batch:
            if not path.exists():
                continue
            try:
                self._failed(alerts, f"daemon.file_claim_failed:{folder.pipeline}", folder,
                             path, exc)
            except Exception:  # noqa: S110 - the error is logged above; the retry stands
                pass

    def _claim(self, claimer: Claimer, alerts: MonitorLink,
               batch: list[tuple[Folder, Path]]) -> None:
        try:
            outcomes: list[Any] = claimer.claim_many(batch)
        except Exception as exc:  # one file must never stop the daemon
            outcomes = [exc] * len(batch)
        for (folder, path), outcome in zip(batch, outcomes):
            self._claimed(alerts, folder, path, outcome)

    def _claimed(self, alerts: MonitorLink, folder: Folder, path: Path, claimed: Any) -> None:
        alert_id = f"daemon.file_claim_failed:{folder.pipeline}"
        if isinstance(claimed, CheckAborted):
            return  # the daemon is stopping: the file stays, the next start takes it
        if isinstance(claimed, Exception):
            self._failed(alerts, alert_id, folder, path, claimed)
            return
        if claimed.outcome == "changing":  # a writer is still at it: wait until it is stable
            self.stability.note(folder, path)
        with self._cond:
            self._retry.pop(path, None)
            still = any(r.folder.pipeline == folder.pipeline for r in self._retry.values())
        if not still:
            alerts.resolve(alert_id, f"took {display_name(path.name)} for {folder.pipeline}")

    def _failed(self, alerts: MonitorLink, alert_id: str, folder: Folder, path: Path,
                exc: Exception) -> None:
        with self._cond:
            previous = self._retry.get(path)
            failures = (previous.failures if previous else 0) + 1
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (failures - 1))
            self._retry[path] = _Retry(folder, self._clock() + delay, failures)
        shown, error = display_name(str(path)), describe(exc, self._claimer.state_dir)
        self._logger.warning("file_claim_retry", pipeline=folder.pipeline, path=shown,
                             error=error, failures=failures, retry_in_s=delay)
        alerts.alert("error", alert_id, f"could not take {shown}: {error}",
                     pipeline=folder.pipeline, path=shown, error=error,
                     fix=f"the file stays in the drop folder and is tried again (at most "
                         f"{RETRY_MAX_S:g}s apart) until it is taken; this alert resolves then")


def describe(exc: BaseException, state_dir: Path) -> str:
    """Why a file could not be taken, whose fault that is, and what to do."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk holding the state directory {state_dir} is full "
                f"({display_name(str(exc))}); free space on it (see `df -h {state_dir}`): the "
                "file is taken as soon as there is room")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return (f"too many open files ({display_name(str(exc))}); the file is taken once some "
                "are closed (raise LimitNOFILE= in the unit if this keeps happening)")
    if isinstance(exc, (OSError, AhgdError)):
        return display_name(str(exc))
    return (f"internal error ({type(exc).__name__}: {display_name(str(exc))}); a fault of "
            "ahgd, not of the file: please report it with the daemon's log")


class Stability:
    """Tracks candidate files until size and mtime stay unchanged for ``stable_for``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[Path, tuple[int, int, float, Folder]] = {}
        self._lock = threading.Lock()

    def note(self, folder: Folder, path: Path) -> None:
        try:
            st = os.lstat(path)  # the entry itself: a link is refused, never followed
        except OSError:  # gone (or unreachable): nothing to wait for
            with self._lock:
                self._seen.pop(path, None)
            return
        with self._lock:
            prev = self._seen.get(path)
            sig = (st.st_size, st.st_mtime_ns)
            if prev is None or (prev[0], prev[1]) != sig:
                self._seen[path] = (sig[0], sig[1], self._clock(), folder)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._seen.pop(path, None)

    def due(self) -> list[tuple[Folder, Path]]:
        """Files unchanged for their folder's ``stable_for``; re-checks each on disk."""
        now = self._clock()
        out = []
        with self._lock:
            items = list(self._seen.items())
        for path, (size, mtime, since, folder) in items:
            try:
                st = os.lstat(path)
            except OSError:
                self.forget(path)
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                with self._lock:
                    self._seen[path] = (st.st_size, st.st_mtime_ns, now, folder)
                continue
            if now - since >= folder.stable_for:
                out.append((folder, path))
                self.forget(path)
        return out

    def next_due_in(self) -> float | None:
        now = self._clock()
        with self._lock:
            waits = [max(0.0, since + folder.stable_for - now) for _, _, since, folder in self._seen.values()]
        return min(waits) if waits else None

    def pending(self) -> int:
        with self._lock:
            return len(self._seen)

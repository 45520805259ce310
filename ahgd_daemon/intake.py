"""Drop-folder files on their way in: from the watchers' callbacks to the claimer.

The watchers call ``complete`` (the writer closed the file, or renamed it into
place) and ``candidate`` (a file appeared or changed) from their own threads;
the main loop calls ``take``, which claims the complete files and the
candidates that have been stable for their folder's ``stable_for`` (under
inotify, only once no process still has them open for writing).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from state.errors import AhgdError

from .alerts import MonitorLink
from .dropfolder import Claimer, Folder, Stability


class FileIntake:
    def __init__(self, monotonic: Callable[[], float], wake: Callable[[], None]):
        self.stability = Stability(monotonic)
        self._completed: deque[tuple[Folder, Path]] = deque()
        self._wake = wake

    def complete(self, folder: Folder, path: Path) -> None:
        """Watcher thread: the writer closed the file (or renamed it into place)."""
        self._completed.append((folder, path))
        self._wake()

    def candidate(self, folder: Folder, path: Path) -> None:
        """Watcher thread or scan: a file to take once it is stable."""
        self.stability.note(folder, path)
        self._wake()

    def waiting(self) -> int:
        """Files seen and not taken yet."""
        return self.stability.pending() + len(self._completed)

    def idle(self) -> bool:
        return not self._completed and not self.stability.pending()

    def next_due_in(self) -> float | None:
        """Seconds until a candidate may be stable; None when there is none."""
        return self.stability.next_due_in()

    def take(self, claimer: Claimer, watchers: Any, alerts: MonitorLink, *,
             stopping: Callable[[], bool]) -> None:
        """Claim every file that is ready, until ``stopping()``; a file that cannot be
        taken raises an alert (resolved by the next file of its pipeline that can)."""
        from .watch import open_for_writing

        batch = []
        while self._completed:
            batch.append(self._completed.popleft())
        for folder, path in self.stability.due():
            if not watchers.polling(folder) and open_for_writing(path):
                self.stability.note(folder, path)  # still being written: wait for its close
                continue
            batch.append((folder, path))
        for folder, path in batch:
            self.stability.forget(path)
            if stopping():
                return
            alert_id = f"daemon.file_claim_failed:{folder.pipeline}"
            try:
                claimer.claim(folder, path)
            except (OSError, AhgdError) as exc:  # one file must not stop the daemon
                alerts.alert("error", alert_id, f"could not take {path}: {exc}",
                             pipeline=folder.pipeline, path=str(path), error=str(exc),
                             fix="the file stays where it is; the next start-up scan tries again")
            else:
                alerts.resolve(alert_id, f"took {path.name} for {folder.pipeline}")

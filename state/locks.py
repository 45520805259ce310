"""File locks on the state directory (``flock``: released when the holder dies).

A lock left by a process that was killed never blocks the next one: the
kernel drops ``flock`` locks with the process.  The file keeps the holder's
pid and start time so that a refusal can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import StateDirError

LOCK_DIR = "locks"


class Locked(StateDirError):
    """Another live process holds the lock."""

    def __init__(self, message: str, holder: dict[str, Any] | None):
        super().__init__(message)
        self.holder = holder


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path``; ``describe`` goes into the file."""

    def __init__(self, path: str | os.PathLike[str], describe: dict[str, Any] | None = None,
                 *, remove_on_release: bool = False):
        self.path = Path(path)
        self.describe = describe or {}
        self.remove_on_release = remove_on_release
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(self.path)
                os.close(fd)
                raise Locked(f"{self.path} is held by {describe_holder(holder)}", holder) from None
            try:
                # a releasing holder may have unlinked the file we opened: then this lock
                # is on a deleted inode and worth nothing; open the path again
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        else:  # pragma: no cover - a file re-created and unlinked 100 times in a row
            raise StateDirError(f"{self.path} keeps disappearing; is another program deleting it?")
        try:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                    **self.describe}
            os.ftruncate(fd, 0)
            # not fsync'd: the note is read only while its holder lives (the page cache has
            # it), and no lock outlives a crash; a daemon took one per run (~0.1 ms of CPU)
            os.write(fd, json.dumps(info).encode())
        except OSError:
            pass  # the lock holds even when its note cannot be written (a full disk)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                if self.remove_on_release:
                    # unlink while still holding it: a later locker opens a new file
                    self.path.unlink(missing_ok=True)
                else:
                    os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = Path(path).read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    what = holder.get("role", "process")
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"{what} pid {holder.get('pid')} on {holder.get('host')} (since {when})"


def is_locked(path: Path) -> bool:
    """True if a live process holds the lock at ``path`` (without taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def run_lock_path(state_dir: Path, run_id: str) -> Path:
    from .store import safe_name

    return Path(state_dir) / LOCK_DIR / f"run-{safe_name(run_id)}.lock"

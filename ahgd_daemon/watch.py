"""watchdog observers for the drop folders.

inotify (the default on local file systems) reports when a writer closes a
file, or renames a finished file into the folder: those are taken at once.
Network file systems do not deliver inotify events for remote writers, so
there (or with ``observer: polling``) a polling observer reports files and
they are taken once their size and mtime have been stable for
``stable_for``.  A file that merely appears under inotify (a hard link, a
file whose writer has not closed it yet) is tracked the same way, and taken
only if no process still has it open for writing.

Entries that match the pattern but are no regular file (a symbolic link, a
FIFO; a directory, unless the folder is recursive) are reported too, so that
the claimer records them as refused instead of passing over them in silence;
a file whose permissions change is looked at again.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileAttribEvent, FileClosedEvent,
                             FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent,
                             FileSystemEventHandler)

from .dropfolder import Folder, ignored

#: names of files no pattern takes that were said once (a folder full of them stays quiet)
NOT_TAKEN_TOLD = 1000

NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "ceph", "glusterfs",
              "afs", "fuse.rclone", "fuse.s3fs", "lustre", "gpfs"}


#: the events _Handler acts on; under inotify, the only ones the kernel is asked for.  The
#: daemon's own opening, reading, linking and unlinking of each file it takes would otherwise
#: come back as open, close-nowrite and delete events (and a directory-modified event for
#: most of them), each dispatched through watchdog's threads: a fifth of the daemon's CPU in
#: a burst of small files.  (A link's change of link count still comes back as an attribute
#: change: watchdog asks for IN_ATTRIB with IN_MODIFY.)
HANDLED_EVENTS: list[type[FileSystemEvent]] = [
    FileMovedEvent, DirMovedEvent, FileCreatedEvent, DirCreatedEvent, FileClosedEvent,
    FileModifiedEvent, FileAttribEvent]


def filesystem_type(path: Path) -> str | None:
    """The type of the mount holding ``path`` (from /proc/mounts), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(Path(path).resolve())
    best, fstype = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def open_for_writing(path: Path) -> bool:
    """Best effort: does any process we can see hold the regular file ``path`` open for writing?"""
    try:
        target = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(target.st_mode):  # a link or a FIFO is refused, not waited for
        return False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if st.st_ino != target.st_ino or st.st_dev != target.st_dev:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("flags:"):
                            if int(line.split()[1], 8) & (os.O_WRONLY | os.O_RDWR):
                                return True
            except OSError:
                continue
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: Folder, polling: bool, complete: Callable[[Folder, Path], None],
                 candidate: Callable[[Folder, Path], None],
                 not_taken: Callable[[Folder, Path], None] = lambda f, p: None):
        self.folder, self.polling = folder, polling
        self.complete, self.candidate, self.not_taken = complete, candidate, not_taken

    def dispatch(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            # a sub-folder of a recursive folder is watched; elsewhere a folder named like a
            # file is refused, so report it
            if not self.folder.recursive and event.event_type in ("created", "moved"):
                path = Path(os.fsdecode(getattr(event, "dest_path", "") or event.src_path))
                if self.folder.matches(path):
                    self.candidate(self.folder, path)
            return
        if isinstance(event, FileMovedEvent):
            path = Path(os.fsdecode(event.dest_path))
            if self.folder.matches(path):
                (self.candidate if self.polling else self.complete)(self.folder, path)
            else:
                self.not_taken(self.folder, path)
            return
        path = Path(os.fsdecode(event.src_path))
        if not self.folder.matches(path):
            if isinstance(event, FileClosedEvent) or (self.polling and
                                                      isinstance(event, FileCreatedEvent)):
                self.not_taken(self.folder, path)
            return
        if isinstance(event, FileClosedEvent) and not self.polling:
            self.complete(self.folder, path)
        elif isinstance(event, (FileCreatedEvent, FileModifiedEvent, FileAttribEvent)):
            self.candidate(self.folder, path)


class Watchers:
    """One observer per drop folder; ``start()`` creates the folders if needed."""

    def __init__(self, folders: list[Folder], *, complete: Callable[[Folder, Path], None],
                 candidate: Callable[[Folder, Path], None], logger: Any):
        self.folders = folders
        self._complete, self._candidate = complete, candidate
        self._logger = logger
        self._observers: list[Any] = []
        self.modes: dict[str, str] = {}
        self._told: dict[str, None] = {}
        self._told_lock = threading.Lock()   # the observers' threads say it

    def start(self) -> None:
        from watchdog.observers.polling import PollingObserver

        for folder in self.folders:
            folder.path.mkdir(parents=True, exist_ok=True)
            mode = folder.observer
            if mode == "auto":
                fstype = filesystem_type(folder.path)
                mode = "polling" if fstype in NETWORK_FS else "inotify"
            observer = None
            if mode == "inotify":
                try:
                    from watchdog.observers.inotify import InotifyObserver

                    observer = InotifyObserver(generate_full_events=True)
                    handler = _Handler(folder, False, self._complete, self._candidate,
                                       self.not_taken)
                    try:
                        observer.schedule(handler, str(folder.path), recursive=folder.recursive,
                                          event_filter=HANDLED_EVENTS)
                    except TypeError:  # a watchdog without event_filter: every event comes
                        observer.schedule(handler, str(folder.path), recursive=folder.recursive)
                    observer.start()
                except (OSError, ImportError) as exc:
                    self._logger.warning("inotify_unavailable", pipeline=folder.pipeline,
                                         path=str(folder.path), error=str(exc),
                                         fallback="polling")
                    observer, mode = None, "polling"
            if observer is None:
                observer = PollingObserver(timeout=folder.poll_interval)
                observer.schedule(_Handler(folder, True, self._complete, self._candidate,
                                           self.not_taken),
                                  str(folder.path), recursive=folder.recursive)
                observer.start()
            self.modes[str(folder.path)] = mode
            self._observers.append(observer)
            self._logger.info("watching", pipeline=folder.pipeline, path=str(folder.path),
                              pattern=folder.pattern, observer=mode)

    def scan(self) -> int:
        """Report files already waiting (they arrived while the daemon was down)."""
        count = 0
        for folder in self.folders:
            if not folder.path.is_dir():
                continue
            paths = folder.path.rglob("*") if folder.recursive else folder.path.iterdir()
            for path in sorted(paths):
                if not folder.matches(path):
                    if path.is_file():
                        self.not_taken(folder, path)
                    continue
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    continue
                if stat.S_ISDIR(mode) and folder.recursive:
                    continue  # a sub-folder, scanned itself
                self._candidate(folder, path)  # files, and what is refused (links, FIFOs ...)
                count += 1
        return count

    def not_taken(self, folder: Folder, path: Path) -> None:
        """A file in a drop folder whose name no folder's pattern takes: said once (a warning
        naming the pattern), so that ``UPPER.CSV`` dropped into a ``*.csv`` folder is not left
        there in silence.  Hidden and temporary files (``.part``, ``~$x``) are not."""
        if self._logger is None or ignored(path.name) or any(f.matches(path)
                                                             for f in self.folders):
            return
        key = str(path)
        with self._told_lock:
            if key in self._told:
                return
            self._told[key] = None
            if len(self._told) > NOT_TAKEN_TOLD:
                self._told.pop(next(iter(self._told)), None)
        self._logger.warning(
            "file_not_taken", pipeline=folder.pipeline, path=key, pattern=folder.pattern,
            why=f"its name does not match the drop folder's pattern {folder.pattern!r}; it is "
                "left where it is: rename it to match (names are matched with their case), or "
                "change the pattern")

    def polling(self, folder: Folder) -> bool:
        return self.modes.get(str(folder.path)) == "polling"

    def stop(self) -> None:
        for observer in self._observers:
            observer.stop()
        for observer in self._observers:
            observer.join(timeout=5)
        self._observers.clear()

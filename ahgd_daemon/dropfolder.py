"""Drop folders: watch, wait until a file is complete, claim it, or quarantine it.

A file is taken only when complete: with inotify, when its writer closes it
(or renames it into the folder); with the polling observer (network file
systems), and for files found by the start-up scan, when its size and mtime
have not changed for ``stable_for``.  Taking a file: hash it (SHA-256,
streamed), move it atomically into ``<state>/files/<pipeline>/<sha256>/``,
record ``file.arrived`` (idempotency key: pipeline + hash) together with
``run.requested`` for a run that has the stored file as its input.  The same
bytes dropped again are recorded as ``file.duplicate`` and moved to
``<state>/duplicates/<pipeline>/``.  Empty, unreadable and ill-formed files go
to ``<state>/quarantine/<pipeline>/`` beside ``<name>.reason.json``.  Nothing
is ever deleted.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import json
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from state import DuplicateEvent, EventLog, EventType as T, new_event, store
from state.store import safe_name

IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".swp", ".crdownload", ".download", "~")


def ignored(name: str) -> bool:
    """Hidden and temporary files are never taken."""
    low = name.lower()
    return name.startswith(".") or name.startswith("~") or low.endswith(IGNORED_SUFFIXES)


@dataclass
class Folder:
    """One drop-folder trigger of one pipeline."""

    pipeline: str
    path: Path
    pattern: str = "*"
    recursive: bool = False
    stable_for: float = 2.0
    observer: str = "auto"
    poll_interval: float = 1.0
    allow_duplicates: bool = False
    quarantine_on_extract_failure: bool = False
    required_columns: list[str] = field(default_factory=list)
    encoding: str = "utf-8"
    delimiter: str = ","
    check: Callable[[Path], str | None] | None = None

    def matches(self, path: Path) -> bool:
        if ignored(path.name):
            return False
        try:
            rel = path.relative_to(self.path)
        except ValueError:
            return False
        if not self.recursive and len(rel.parts) != 1:
            return False
        return fnmatch.fnmatch(path.name, self.pattern)


@dataclass
class Claimed:
    pipeline: str
    run_id: str | None
    sha256: str | None
    outcome: str  # "arrived", "duplicate", "quarantined", "gone"
    detail: str = ""


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stem, suffix = path.stem, path.suffix
    for i in range(1, 100000):
        candidate = path.with_name(f"{stem}.{i}{suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(path)  # pragma: no cover


def move(src: Path, dst: Path) -> Path:
    """Move ``src`` to ``dst`` without ever losing it.

    Same file system: hard-link, then unlink the inbox name.  (A rename out of
    a watched folder makes watchdog hold every later event for half a second
    while it waits for the other half of the move; a delete is reported at
    once.)  A crash between the two leaves the file in both places: the
    start-up scan then finds the bytes already recorded and files the inbox
    copy as a duplicate.  Across file systems: copy, fsync, rename, unlink.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        os.unlink(src)
        return dst
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    tmp = dst.with_name(f".{dst.name}.incoming")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.rename(tmp, dst)
    os.unlink(src)  # the bytes are safely in the store now
    return dst


class Claimer:
    """Claims complete files for their pipeline; thread-safe (one claim at a time)."""

    def __init__(self, log: EventLog, state_dir: Path):
        self.log = log
        self.state_dir = Path(state_dir)
        self._lock = threading.Lock()

    # -- the one entry point ---------------------------------------------------------

    def claim(self, folder: Folder, path: Path) -> Claimed:
        with self._lock:
            return self._claim(folder, path)

    def _claim(self, folder: Folder, path: Path) -> Claimed:
        pipeline = folder.pipeline
        try:
            st = path.stat()
        except FileNotFoundError:
            return Claimed(pipeline, None, None, "gone", "the file disappeared before it was taken")
        if not path.is_file():
            return Claimed(pipeline, None, None, "gone", "not a regular file")
        if st.st_size == 0:
            return self.quarantine(folder, path, "the file is empty (0 bytes)", sha256=EMPTY_SHA256)
        try:
            sha = store.sha256_file(path)
        except PermissionError as exc:
            return self.quarantine(folder, path, f"the file is unreadable: {exc.strerror}", sha256=None)
        except FileNotFoundError:
            return Claimed(pipeline, None, None, "gone", "the file disappeared while it was hashed")
        reason = self._input_problem(folder, path)
        if reason:
            return self.quarantine(folder, path, reason, sha256=sha)
        existing = self.log.aggregate(("file", f"{pipeline}\x1f{sha}"))
        if existing is not None and existing.state == "ARRIVED" and not folder.allow_duplicates:
            return self._duplicate(folder, path, sha, existing)
        stored = _unique(self.state_dir / "files" / safe_name(pipeline) / sha / safe_name(path.name))
        move(path, stored)
        return self._record_arrival(folder, stored, sha, st.st_size, path.name, existing)

    def _record_arrival(self, folder: Folder, stored: Path, sha: str, size: int, name: str,
                        existing: Any = None) -> Claimed:
        """Record the file and request its run, in one transaction.

        New bytes arrive (``file.arrived``, keyed by pipeline and hash).  Bytes that
        were quarantined before arrive again under a key of their own.  Bytes that
        already arrived, with ``allow_duplicates``, are a ``file.duplicate`` that
        still requests a run.
        """
        pipeline = folder.pipeline
        run_id = f"{safe_name(pipeline)}-file-{sha[:12]}-{secrets.token_hex(3)}"
        params = {"input_file": str(stored), "input_sha256": sha, "original_name": name}
        if existing is not None and existing.state == "ARRIVED":  # allow_duplicates
            first = new_event(T.FILE_DUPLICATE, run_id, pipeline=pipeline, sha256=sha, name=name,
                              stored_path=str(stored), first_run_id=existing.run_id, runs_again=True)
        else:
            key = f"file:{pipeline}:{sha}"
            if existing is not None:  # re-arrival after quarantine
                key += f":after:{existing.last_seen}"
            first = new_event(T.FILE_ARRIVED, run_id, pipeline=pipeline, sha256=sha, name=name,
                              size=size, stored_path=str(stored), idempotency_key=key)
        try:
            self.log.append_many([
                first,
                new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="drop_folder",
                          params=params),
            ])
        except DuplicateEvent as exc:  # another claimer recorded the same bytes first
            return Claimed(pipeline, exc.existing.run_id, sha, "duplicate", "already recorded")
        return Claimed(pipeline, run_id, sha, "arrived")

    def _duplicate(self, folder: Folder, path: Path, sha: str, existing: Any) -> Claimed:
        target = _unique(self.state_dir / "duplicates" / safe_name(folder.pipeline) / safe_name(path.name))
        move(path, target)
        self.log.append(new_event(
            T.FILE_DUPLICATE, existing.run_id, pipeline=folder.pipeline, sha256=sha, name=path.name,
            moved_to=str(target), first_run_id=existing.run_id))
        return Claimed(folder.pipeline, existing.run_id, sha, "duplicate",
                       f"the same bytes arrived before (run {existing.run_id})")

    # -- quarantine ------------------------------------------------------------------

    def quarantine(self, folder: Folder, path: Path, reason: str, *, sha256: str | None,
                   run_id: str | None = None, keep_source: bool = False) -> Claimed:
        """Move (or, with keep_source, copy) ``path`` into quarantine with its reason."""
        qdir = self.state_dir / "quarantine" / safe_name(folder.pipeline)
        target = _unique(qdir / safe_name(path.name))
        if keep_source:
            qdir.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        else:
            move(path, target)
        if sha256 is None:
            try:
                sha256 = store.sha256_file(target)
            except OSError:
                sha256 = "unreadable-" + target.name
        info = {"file": path.name, "pipeline": folder.pipeline, "reason": reason,
                "sha256": sha256, "quarantined_at": self.log.now().isoformat(), "from": str(path),
                "run_id": run_id, "fix": "correct the file and drop it into the folder again"}
        reason_file = target.with_name(target.name + ".reason.json")
        reason_file.write_text(json.dumps(info, indent=2) + "\n")
        self.log.append(new_event(T.FILE_QUARANTINED, run_id, pipeline=folder.pipeline,
                                  sha256=sha256, name=path.name, reason=reason, path=str(target)))
        return Claimed(folder.pipeline, run_id, sha256, "quarantined", reason)

    def _input_problem(self, folder: Folder, path: Path) -> str | None:
        if folder.required_columns:
            try:
                with open(path, newline="", encoding=folder.encoding) as f:
                    header = next(csv.reader(f, delimiter=folder.delimiter), [])
            except UnicodeDecodeError:
                return f"the file is not {folder.encoding} text"
            except OSError as exc:
                return f"the file is unreadable: {exc.strerror}"
            have = {h.strip().lower() for h in header}
            missing = [c for c in folder.required_columns if c.lower() not in have]
            if missing:
                return (f"missing required column(s) {', '.join(missing)} (the header has: "
                        f"{', '.join(h.strip() for h in header[:30])})")
        if folder.check is not None:
            try:
                return folder.check(path)
            except Exception as exc:  # a broken check must not take the daemon down
                return f"the input check failed: {type(exc).__name__}: {exc}"
        return None

    # -- crash leftovers -------------------------------------------------------------------

    def adopt_orphans(self, folders: dict[str, Folder]) -> list[Claimed]:
        """Record stored files that a crash left between their move and their event."""
        adopted = []
        root = self.state_dir / "files"
        for pipeline, folder in folders.items():
            pdir = root / safe_name(pipeline)
            if not pdir.is_dir():
                continue
            for sha_dir in pdir.iterdir():
                for f in sha_dir.iterdir() if sha_dir.is_dir() else ():
                    if f.name.startswith("."):
                        if f.name.endswith(".incoming"):  # a copy a crash cut short; the
                            f.unlink(missing_ok=True)      # original is still in the inbox
                        continue
                    rec = self.log.aggregate(("file", f"{pipeline}\x1f{sha_dir.name}"))
                    if rec is None:
                        adopted.append(self._record_arrival(folder, f, sha_dir.name,
                                                            f.stat().st_size, f.name))
        return adopted


#: SHA-256 of zero bytes: the identity under which empty files are quarantined
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class Stability:
    """Tracks candidate files until size and mtime stay unchanged for ``stable_for``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[Path, tuple[int, int, float, Folder]] = {}
        self._lock = threading.Lock()

    def note(self, folder: Folder, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
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
                st = path.stat()
            except FileNotFoundError:
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

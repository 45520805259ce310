"""Drop folders: a trigger's folder, and taking one file out of it.

:class:`Claimer` takes one complete file (:mod:`ahgd_daemon.intake` decides
when).  It opens the entry without following a link and without blocking,
and links it (or, when the inode has other names or the folder is on another
file system, copies it) into a staging folder of the state directory,
hashing from the same descriptor (:mod:`ahgd_daemon.inboxfiles`).  Then:

- bytes that arrived before are a ``file.duplicate``, moved to
  ``<state>/duplicates/<pipeline>/``;
- an empty file, or one its folder's ``input_check`` refuses (run in a child
  process: :mod:`ahgd_daemon.inputcheck`), goes to
  ``<state>/quarantine/<pipeline>/`` beside ``<name>.reason.json``
  (``file.quarantined``);
- anything else moves to ``<state>/files/<pipeline>/<sha256>/<name>`` and is
  recorded as ``file.arrived`` (idempotency key: pipeline + hash) together
  with ``run.requested`` for a run that has the stored file as its input.

An entry that is not a regular file (a symbolic link, a FIFO, a directory
named like a file, ...) or that the daemon may not read is never read: it
stays where it is and is recorded once as ``file.refused``.  The drop-folder
name goes last, once the outcome is recorded, so a crash leaves the file
where it was.  Names in events and reason files are text (undecodable bytes
as ``\\xNN``, the exact bytes in ``name_bytes_hex``); names in the state
directory are short and safe.  Nothing is ever deleted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.execution.children import ChildNotStarted
from state import DuplicateEvent, Event, EventLog, EventType as T, format_ts, new_event, store
from state.store import safe_name

from . import inputcheck
from .inputcheck import CheckAborted
from .inboxfiles import Entry, NotRegular, display_name, name_bytes_hex, place, stored_name

#: a file larger than this is not kept waiting in a batch of claims (claim_many) while
#: it is hashed: the batch is recorded first
BATCH_FILE_BYTES = 8 << 20
IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".swp", ".crdownload", ".download", "~")
#: claims in progress, under ``<state>/files/``: a copy or second name of the dropped file
STAGING = ".incoming"
#: why an entry is refused, and what to do, by its kind
REFUSALS = {
    "symlink": ("it is a symbolic link: ahgd never follows a link out of a drop folder (nothing "
                "it points to was read)", "put the file itself in the folder, not a link to it"),
    "fifo": ("it is a FIFO (named pipe), not a regular file",
             "write the data to a regular file and drop that; remove the FIFO"),
    "directory": ("it is a directory, not a file", "drop files, not folders (or set recursive: "
                  "true on the trigger to watch sub-folders)"),
    "unreadable": ("the daemon may not read it (permission denied)",
                   "make it readable by the user the daemon runs as (e.g. chmod g+r, group "
                   "ahgd); it is taken once its permissions change"),
    "special file": ("it is not a regular file", "remove it; only regular files are taken"),
}
REFUSALS["socket"] = ("it is a socket, not a regular file", REFUSALS["special file"][1])
REFUSALS["device"] = ("it is a device, not a regular file", REFUSALS["special file"][1])


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
    #: ``package.module.function``, called in a child process with the file's path
    check_callable: str | None = None
    #: ``{"name", "class", "config"}`` of a stage whose object's ``check_input(path)`` is
    #: called in that child (``input_check.stage``)
    check_stage: dict | None = None
    check_timeout: float = 60.0

    def matches(self, path: Path) -> bool:
        if ignored(path.name):
            return False
        try:
            rel = path.relative_to(self.path)
        except ValueError:
            return False
        if not self.recursive and len(rel.parts) != 1:
            return False
        return any(fnmatch.fnmatch(path.name, p) for p in glob_alternatives(self.pattern))


def glob_alternatives(pattern: str) -> list[str]:
    """The globs a pattern stands for: ``*.{csv,csv.gz,xlsx}`` is ``*.csv``, ``*.csv.gz`` and
    ``*.xlsx`` (braces as the shell reads them; nested braces too).  Case matters, as in
    the file system: ``*.{xlsx,XLSX}`` takes both."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, parts, last = 0, [], start + 1
    for i in range(start, len(pattern)):
        ch = pattern[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                parts.append(pattern[last:i])
                head, tail = pattern[:start], pattern[i + 1:]
                if len(parts) == 1:     # {x}: no alternatives, a literal brace
                    return [head + "{" + parts[0] + "}" + t for t in glob_alternatives(tail)]
                return [head + alt for part in parts for alt in glob_alternatives(part + tail)]
        elif ch == "," and depth == 1:
            parts.append(pattern[last:i])
            last = i + 1
    return [pattern]                    # an unclosed brace is a literal one


@dataclass
class Claimed:
    pipeline: str
    run_id: str | None
    sha256: str | None
    #: "arrived", "duplicate", "quarantined", "refused", "gone", "changing" (still written)
    outcome: str
    detail: str = ""


class Claimer:
    """Takes complete files for their pipeline, one at a time (the intake's thread);
    :meth:`quarantine` (a failed run's input) may run on another thread meanwhile."""

    def __init__(self, log: EventLog, state_dir: Path):
        self.log = log
        self.state_dir = Path(state_dir)
        self.staging = self.state_dir / "files" / STAGING
        #: set when the daemon stops: an input check still running is cut short
        self.stopping = threading.Event()

    # -- the entry points ------------------------------------------------------------------

    def claim(self, folder: Folder, path: Path) -> Claimed:
        outcome = self.claim_many([(folder, path)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def claim_many(self, items: list[tuple[Folder, Path]]) -> list[Claimed | Exception]:
        """Take several complete files, their arrivals recorded in one commit.

        A burst's files then cost one fsync'd commit, not one each.  Nothing is
        weakened: a file's drop-folder name is removed only once the commit that
        records it is durable, as for a file taken alone, and a crash before that
        commit leaves every file of the batch in its folder (what was already stored
        is adopted at the next start, ``adopt_orphans``).  The batch is recorded
        early, before a file whose bytes it holds already, before an input check (a
        child process) and before a large file, so that no file waits long for others.
        One outcome per item, in order: its ``Claimed``, or the exception that stopped
        it; after a ``CheckAborted`` (the daemon stops) the rest are not tried.
        """
        out: list[Any] = []
        batch = _Batch(out)
        unstartable: ChildNotStarted | None = None
        try:
            for i, (folder, path) in enumerate(items):
                if unstartable is not None and inputcheck.needed(folder):
                    # no check's Python came up in a minute: the other checks wait for the
                    # retry too, rather than a minute each (files without a check go on)
                    out.append(unstartable)
                    continue
                try:
                    out.append(self._claim_one(folder, path, batch))
                except CheckAborted as exc:  # stopping: this file and the rest stay
                    out.extend([exc] * (len(items) - i))
                    break
                except ChildNotStarted as exc:
                    unstartable = exc
                    out.append(exc)
                except Exception as exc:
                    out.append(exc)
            self._record(batch)
        except BaseException:
            batch.abandon()
            raise
        return out

    def _claim_one(self, folder: Folder, path: Path, batch: "_Batch") -> Any:
        link = _linked_folder(folder, path)
        if link is not None:  # O_NOFOLLOW guards the last part of a path, not the ones before
            return self.refuse(folder, link, "symlink", _lstat(link))
        try:
            entry = Entry(path)
        except FileNotFoundError:
            return Claimed(folder.pipeline, None, None, "gone",
                           "the file disappeared before it was taken")
        except NotRegular as exc:
            return self.refuse(folder, path, exc.kind, exc.st)
        except PermissionError:
            return self.refuse(folder, path, "unreadable", _lstat(path))
        try:
            taken = self._take(folder, path, entry, batch)
        except BaseException:
            entry.close()
            raise
        if not isinstance(taken, _Pending):
            entry.close()
        return taken  # a _Pending keeps its entry open until its arrival is recorded

    def _take(self, folder: Folder, path: Path, entry: Entry, batch: "_Batch") -> Any:
        pipeline = folder.pipeline
        if entry.st.st_size > BATCH_FILE_BYTES:  # hashing it takes a while: the others go first
            self._record(batch)
        self.staging.mkdir(parents=True, exist_ok=True)
        if inputcheck.needed(folder):  # a folder of its own: the check sees the name as dropped
            work: Path | None = Path(tempfile.mkdtemp(dir=self.staging))
            staged = work / path.name
        else:  # no folder to make and remove for each file (a fifth of a claim's cost)
            work, staged = None, self.staging / f"{secrets.token_hex(8)}.claim"
        try:
            if entry.link_to(staged):
                sha, size = entry.sha256()
            else:  # other names share the inode, or another file system: a copy of our own
                sha, size = entry.copy_to(staged)
            if entry.changed():
                return Claimed(pipeline, None, None, "changing",
                               "the file changed while it was taken")
            if batch.holds(pipeline, sha):  # the same bytes twice: the first one is recorded
                self._record(batch)         # first, and this one is then its duplicate
            existing = self.log.aggregate(("file", f"{pipeline}\x1f{sha}"))
            if existing is not None and existing.state == "ARRIVED" and not folder.allow_duplicates:
                return self._duplicate(folder, entry, staged, sha, existing)
            if size and inputcheck.needed(folder):
                self._record(batch)  # a check takes a child process: the batch goes first
            reason = (inputcheck.Refusal("the file is empty (0 bytes)", EMPTY_FIX) if size == 0
                      else self._check(folder, staged))
            if reason:
                return self._quarantine_staged(folder, entry, staged, reason, sha)
            stored = place(staged, self.state_dir / "files" / safe_name(pipeline) / sha
                           / stored_name(path.name))
            run_id, events = self._arrival_events(folder, stored, sha, size, path.name, existing)
            return batch.add(_Pending(folder, entry, stored, sha, run_id, events))
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            else:  # still there when the file was not taken (changing, or an error)
                _unlink_quietly(staged)

    def _check(self, folder: Folder, staged: Path) -> inputcheck.Refusal | None:
        if not inputcheck.needed(folder):
            return None
        return inputcheck.run(folder, staged, abort=self.stopping)

    def _record(self, batch: "_Batch") -> None:
        """Record the batch's arrivals in one transaction; then, and only then, remove their
        drop-folder names.  If that transaction fails (another claimer recorded one of the
        files first, a full disk ...), each file is recorded on its own, as if taken alone."""
        pending = batch.take()
        if not pending:
            return
        try:
            # a file written again since it was hashed (its sender opened it again by name, or
            # wrote through a descriptor it kept) is not recorded under a hash it no longer has:
            # taken again once it is stable
            for p in [p for p in pending if p.entry.changed()]:
                pending.remove(p)
                p.stored.unlink(missing_ok=True)
                p.entry.close()
                batch.out[p.index] = Claimed(p.folder.pipeline, None, None, "changing",
                                             "the file changed while it was taken")
            if not pending:
                return
            try:
                self.log.append_many([e for p in pending for e in p.events])
            except Exception:
                for p in pending:
                    batch.out[p.index] = self._record_alone(p)
            else:
                for p in pending:
                    batch.out[p.index] = _released(
                        p, Claimed(p.folder.pipeline, p.run_id, p.sha, "arrived"))
        finally:
            for p in pending:
                p.entry.close()

    def _record_alone(self, p: "_Pending") -> Claimed | Exception:
        try:
            claimed = self._recorded(p.folder.pipeline, p.run_id, p.sha, p.events)
        except Exception as exc:
            p.stored.unlink(missing_ok=True)  # not recorded: the dropped file is still there
            return exc
        return _released(p, claimed)

    def _record_arrival(self, folder: Folder, stored: Path, sha: str, size: int, name: str,
                        existing: Any = None) -> Claimed:
        """Record the file and request its run, in one transaction."""
        run_id, events = self._arrival_events(folder, stored, sha, size, name, existing)
        return self._recorded(folder.pipeline, run_id, sha, events)

    def _recorded(self, pipeline: str, run_id: str, sha: str, events: list[Event]) -> Claimed:
        """Append one file's arrival events; "duplicate" when another claimer recorded the
        same bytes first."""
        try:
            self.log.append_many(events)
        except DuplicateEvent as exc:
            return Claimed(pipeline, exc.existing.run_id, sha, "duplicate", "already recorded")
        return Claimed(pipeline, run_id, sha, "arrived")

    def _arrival_events(self, folder: Folder, stored: Path, sha: str, size: int, name: str,
                        existing: Any = None) -> tuple[str, list[Event]]:
        """The run id and the events that record the file and request its run.

        New bytes arrive (``file.arrived``, keyed by pipeline and hash).  Bytes that
        were quarantined before arrive again under a key of their own.  Bytes that
        already arrived, with ``allow_duplicates``, are a ``file.duplicate`` that
        still requests a run.
        """
        pipeline = folder.pipeline
        run_id = f"{safe_name(pipeline)}-file-{sha[:12]}-{secrets.token_hex(3)}"
        shown = display_name(name)
        params = {"input_file": str(stored), "input_sha256": sha, "original_name": shown}
        if existing is not None and existing.state == "ARRIVED":  # allow_duplicates
            first = new_event(T.FILE_DUPLICATE, run_id, pipeline=pipeline, sha256=sha, name=shown,
                              **_raw(name), stored_path=str(stored), first_run_id=existing.run_id,
                              runs_again=True)
        else:
            key = f"file:{pipeline}:{sha}"
            if existing is not None:  # re-arrival after quarantine
                key += f":after:{existing.last_seen}"
            first = new_event(T.FILE_ARRIVED, run_id, pipeline=pipeline, sha256=sha, name=shown,
                              **_raw(name), size=size, stored_path=str(stored),
                              idempotency_key=key)
        return run_id, [first, new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline,
                                         trigger="drop_folder", params=params)]

    def _duplicate(self, folder: Folder, entry: Entry, staged: Path, sha: str,
                   existing: Any) -> Claimed:
        name = entry.path.name
        target = place(staged, self.state_dir / "duplicates" / safe_name(folder.pipeline)
                       / stored_name(name))
        try:
            self.log.append(new_event(
                T.FILE_DUPLICATE, existing.run_id, pipeline=folder.pipeline, sha256=sha,
                name=display_name(name), **_raw(name), moved_to=str(target),
                first_run_id=existing.run_id))
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        entry.release()
        return Claimed(folder.pipeline, existing.run_id, sha, "duplicate",
                       f"the same bytes arrived before (run {existing.run_id})")

    # -- quarantine and refusal ------------------------------------------------------------

    def _quarantine_staged(self, folder: Folder, entry: Entry, staged: Path,
                           reason: inputcheck.Refusal, sha: str) -> Claimed:
        target = place(staged, self._quarantine_dir(folder) / stored_name(entry.path.name))
        try:
            claimed = self._record_quarantine(folder, target, entry.path, reason, sha, None,
                                              fix=reason.fix)
        except BaseException:
            target.with_name(target.name + ".reason.json").unlink(missing_ok=True)
            target.unlink(missing_ok=True)
            raise
        entry.release()
        return claimed

    def quarantine(self, folder: Folder, path: Path, reason: str, *, sha256: str | None,
                   run_id: str | None = None) -> Claimed:
        """Put a copy of ``path`` (a stored input, which stays) in quarantine with its reason."""
        self.staging.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.staging))
        try:
            staged = work / path.name
            try:
                os.link(path, staged, follow_symlinks=False)
            except OSError:
                shutil.copy2(path, staged, follow_symlinks=False)
            target = place(staged, self._quarantine_dir(folder) / stored_name(path.name))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if sha256 is None:
            sha256 = store.sha256_file(target)
        return self._record_quarantine(folder, target, path, reason, sha256, run_id)

    def _quarantine_dir(self, folder: Folder) -> Path:
        return self.state_dir / "quarantine" / safe_name(folder.pipeline)

    def _record_quarantine(self, folder: Folder, target: Path, source: Path, reason: str,
                           sha256: str, run_id: str | None, *,
                           fix: str = inputcheck.FILE_FIX) -> Claimed:
        reason = display_name(reason)
        info = {"file": display_name(source.name), **_raw(source.name),
                "pipeline": folder.pipeline, "reason": reason, "sha256": sha256,
                "quarantined_at": format_ts(self.log.now()), "from": display_name(str(source)),
                "run_id": run_id, "fix": fix}
        reason_file = target.with_name(target.name + ".reason.json")
        reason_file.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        self.log.append(new_event(T.FILE_QUARANTINED, run_id, pipeline=folder.pipeline,
                                  sha256=sha256, name=display_name(source.name),
                                  **_raw(source.name), reason=reason, path=str(target)))
        return Claimed(folder.pipeline, run_id, sha256, "quarantined", reason)

    def refuse(self, folder: Folder, path: Path, kind: str, st: os.stat_result | None) -> Claimed:
        """Record once that the entry at ``path`` is not taken (left where it is)."""
        reason, fix = REFUSALS.get(kind) or REFUSALS["special file"]
        shown = display_name(str(path))
        key = None
        if st is not None:  # the same object seen again is not news; a new one (ctime) is
            where = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
            key = f"refused:{folder.pipeline}:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}:{where}"
        try:
            self.log.append(new_event(T.FILE_REFUSED, None, idempotency_key=key,
                                      pipeline=folder.pipeline, path=shown,
                                      name=display_name(path.name), **_raw(path.name), kind=kind,
                                      reason=reason, fix=fix))
        except DuplicateEvent:
            pass
        return Claimed(folder.pipeline, None, None, "refused", reason)

    # -- crash leftovers -------------------------------------------------------------------

    def adopt_orphans(self, folders: dict[str, Folder]) -> list[Claimed]:
        """Record stored files that a crash left between their move and their event, and
        remove the staging copies of claims a crash cut short (their originals are still
        in the drop folder: the drop-folder name is removed last)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        adopted = []
        root = self.state_dir / "files"
        for pipeline, folder in folders.items():
            pdir = root / safe_name(pipeline)
            if not pdir.is_dir():
                continue
            for sha_dir in pdir.iterdir():
                for f in sha_dir.iterdir() if sha_dir.is_dir() else ():
                    if f.name.startswith("."):
                        if f.name.endswith(".incoming"):  # a copy an older ahgd's crash cut
                            f.unlink(missing_ok=True)      # short; the original is in the inbox
                        continue
                    st = _lstat(f)
                    if st is None or not stat.S_ISREG(st.st_mode):
                        continue  # the store holds regular files only: never adopt a link
                    rec = self.log.aggregate(("file", f"{pipeline}\x1f{sha_dir.name}"))
                    if rec is None:
                        adopted.append(self._record_arrival(folder, f, sha_dir.name,
                                                            st.st_size, f.name))
        return adopted


@dataclass
class _Pending:
    """A file stored and ready to record; its entry stays open until then."""

    folder: Folder
    entry: Entry
    stored: Path
    sha: str
    run_id: str
    events: list[Event]
    index: int = -1


class _Batch:
    """The files of one :meth:`Claimer.claim_many` waiting for their shared commit;
    ``out`` is that call's list of outcomes, where each one's is put once recorded."""

    def __init__(self, out: list[Any]):
        self.out = out
        self._pending: list[_Pending] = []

    def add(self, pending: _Pending) -> _Pending:
        pending.index = len(self.out)  # the slot claim_many appends it to
        self._pending.append(pending)
        return pending

    def holds(self, pipeline: str, sha: str) -> bool:
        return any(p.sha == sha and p.folder.pipeline == pipeline for p in self._pending)

    def take(self) -> list[_Pending]:
        pending, self._pending = self._pending, []
        return pending

    def abandon(self) -> None:
        """Not recorded after all: the stored copies go, the dropped files stay."""
        for p in self.take():
            p.stored.unlink(missing_ok=True)
            p.entry.close()


def _released(p: _Pending, claimed: Claimed) -> Claimed | Exception:
    """``claimed`` once the drop-folder name is gone (its arrival is on record)."""
    try:
        p.entry.release()
    except Exception as exc:  # recorded all the same: the next try finds it a duplicate
        return exc
    return claimed


def _raw(name: str) -> dict[str, str]:
    """``{"name_bytes_hex": ...}`` for a name that is not UTF-8 (its exact bytes), else ``{}``."""
    raw = name_bytes_hex(name)
    return {} if raw is None else {"name_bytes_hex": raw}


def _linked_folder(folder: Folder, path: Path) -> Path | None:
    """The first sub-folder on the way from ``folder.path`` to ``path`` that is a link."""
    try:
        parts = path.relative_to(folder.path).parts[:-1]
    except ValueError:
        return None
    current = folder.path
    for part in parts:
        current = current / part
        st = _lstat(current)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return current
    return None


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


#: what to do about an empty file (often one taken before its writer wrote anything)
EMPTY_FIX = ("drop the file again with its content: write it under a temporary name (.x, "
             "*.part) and rename it into the folder when it is complete")

#: SHA-256 of zero bytes: the identity under which empty files are quarantined
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

"""Removing what retention lets go, so that a crash at any moment loses nothing and lies about nothing.

One removal (:meth:`Collector.remove`):

1. the item's files are moved, by ``rename``, into ``<state dir>/.trash/<nonce>~<path>/``;
2. its event is appended: ``data.expired`` (addressed to the run, which the state machine
   allows only once the run has ended, so a run retried meanwhile refuses it and the files
   go back) or ``file.expired``, saying what, why and how many bytes, with the nonce;
3. the trash folder is deleted.  In the daemon (``delete_aside``) the event's commit skips
   its fsync and a thread of its own fsyncs the log, then deletes: the loop never waits
   for the disk.

A crash after 1 leaves a trash folder: the next collection (and the daemon at start-up)
looks for its nonce in the log and deletes it (the removal was recorded) or moves its files
back where they were (it was not).  So every removal is one event, and nothing is ever half
removed.

On a full disk step 2 needs room that is not there (SQLite grows its write-ahead log to
append), so a collection keeps some: ``<state dir>/.reserve``, a file of
:func:`reserve_size` bytes allocated (``posix_fallocate``) when a daemon starts and after
each collection that leaves room for it.  When a removal's event is refused for lack of
space (``DiskFull``), the collector deletes the reserve (and, in the daemon, waits for the
deletions already recorded to land) and appends again: the removal is recorded, then its
files go, and the next ones have the room they freed.  Only when that is not enough does
the collection fail, with a :class:`~state.errors.DiskFull` that says so and what to do;
what it had set aside goes back where it was, as always.

A collection is one :meth:`Collector.collect` generator: the plan
(``ahgd_daemon/retention.py``) and the removals interleaved, pausing (``yield``) between
small chunks; :meth:`Collector.run` drives it to the end at once (``ahgd gc``).

With an object store (area ``bucket``) there is no trash to move things into: a folder's
removal is recorded first, then its objects are deleted, on the collector's one thread for
object-store calls (never the caller's: they take 10-100 ms each), and in the daemon only
once the event is durable.  When they cannot be deleted then (the store went away), the
removal stays recorded and the next collection deletes what it left, without a second
event (the objects older than the removal's event).  While the plan waits for the store,
:meth:`Collector.collect` yields the call's ``Future``.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from pipelines.config.retain import Policy
from state import EventType as T, IllegalTransition, format_ts, new_event, removals, utc_now
from state.errors import (DatabaseDamaged, DiskFull, EventLogError, SchemaTooNew,
                          StateDirError)
from state.removals import human_bytes

from .retention import AREAS, Item, Walk, plan

TRASH = ".trash"
#: the room kept for recording removals on a full disk (README, Retention)
RESERVE = ".reserve"
#: its size: a twentieth of the file system, between these (a removal's event takes some
#: tens of kB of the write-ahead log; 4 MiB is room for a hundred and more)
RESERVE_MIN_BYTES = 256 * 1024
RESERVE_MAX_BYTES = 4 * 1024 * 1024
#: how long a removal refused for lack of room waits for recorded deletions to land
DELETIONS_WAIT_S = 30.0
_log = logging.getLogger("ahgd_daemon.removal")


def reserve_size(total_bytes: int) -> int:
    """The reserve's size on a file system of ``total_bytes``."""
    return max(RESERVE_MIN_BYTES, min(RESERVE_MAX_BYTES, total_bytes // 20))


def no_room(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full (the log's ``DiskFull``, or ENOSPC/EDQUOT)."""
    return isinstance(exc, DiskFull) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


def disk_space(path: Path) -> tuple[int, int, int]:
    """``(total, used, free)`` bytes of the file system holding ``path`` (free: what an
    unprivileged user may still take, as ``df`` says)."""
    disk = os.statvfs(path)
    total = disk.f_blocks * disk.f_frsize
    return total, total - disk.f_bfree * disk.f_frsize, disk.f_bavail * disk.f_frsize


def short_of_room(path: Path) -> bool:
    """Whether the disk holding ``path`` has less free than twice the reserve (full)."""
    try:
        total, _, free = disk_space(path)
    except OSError:
        return False
    return free < 2 * reserve_size(total)


def release_reserve(state_dir: Path) -> int:
    """Delete the reserve of ``state_dir``; the bytes it freed (0: there was none)."""
    path = Path(state_dir) / RESERVE
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


L = TypeVar("L")


def open_with_room(state_dir: Path, opener: Callable[[], L]) -> L:
    """``opener()``: the event log of ``state_dir`` opened.  On a disk too full for that
    (SQLite makes ``history.db-wal`` and ``-shm`` when no one has it open, and a full disk
    fails that as a "disk I/O error"), again once the reserve is released: ``ahgd gc``
    without a daemon, and a daemon starting, can then collect.  A :class:`DiskFull` that
    says so when there is no reserve, or it is not enough."""
    try:
        return opener()
    except (EventLogError, StateDirError) as exc:
        if isinstance(exc, (DatabaseDamaged, SchemaTooNew)) or not short_of_room(state_dir):
            raise
        first: Exception = exc
    released = release_reserve(state_dir)
    if released:
        try:
            return opener()
        except (EventLogError, StateDirError) as exc:
            first = exc
    where = Path(state_dir)
    kept = (f"even with the {human_bytes(released)} it keeps for this ({where / RESERVE}) "
            "released" if released else
            f"and the room it keeps for this ({where / RESERVE}) was not there")
    raise DiskFull(
        f"the disk holding {where} is full: ahgd cannot open {where / 'history.db'} (SQLite "
        f"needs room for history.db-wal and history.db-shm beside it; it said: {first}), "
        f"{kept}. Nothing was changed. Free some space on that disk yourself (see `df -h "
        f"{where}`; `du -sh {where}/*` shows what the state directory holds; delete nothing "
        "inside it by hand), then try again: a daemon, or `ahgd gc`, then removes what "
        "retain: lets go") from first


@dataclass
class Report:
    """One collection: what went (or would go), what stayed and why, sizes, and its pace."""

    collection: str
    as_of: str
    dry_run: bool
    pipeline: str | None = None
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # changed under us: left for next time
    walk: Walk = field(default_factory=Walk)
    restored: int = 0          # trash folders of unrecorded removals moved back
    reserve_released: int = 0  # bytes of the reserve deleted to record removals (a full disk)
    bucket_leftovers: int = 0  # objects of removals recorded before, deleted only now
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    longest_step_s: float = 0.0
    steps: int = 0

    def freed(self) -> dict[str, int]:
        out = dict.fromkeys(AREAS, 0)
        for item in self.items:
            out[item.area] += item.bytes
        return out

    def sizes_after(self) -> dict[str, int]:
        freed = self.freed()
        return {a: max(0, self.walk.sizes[a] - (0 if self.dry_run else freed[a])) for a in AREAS}

    def as_dict(self) -> dict[str, Any]:
        freed = self.freed()
        return {
            "collection": self.collection, "as_of": self.as_of, "dry_run": self.dry_run,
            "pipeline": self.pipeline, "finished": self.finished,
            "items": [i.as_dict() for i in self.items], "count": len(self.items),
            "bytes": sum(freed.values()), "by_area": freed, "kept": dict(self.walk.kept),
            "skipped": list(self.skipped), "sizes_before": dict(self.walk.sizes),
            "over_budget_bytes": self.walk.over_budget,
            "duration_s": round((self.ended or time.monotonic()) - self.started, 3),
            "steps": self.steps, "longest_step_ms": round(self.longest_step_s * 1000, 2),
            "reserve_released_bytes": self.reserve_released,
            "bucket_error": self.walk.bucket_error, "bucket_leftovers": self.bucket_leftovers,
        }


class Collector:
    """Collects the state directory of one event log by one policy."""

    def __init__(self, log: Any, state_dir: Path, policy: Policy,
                 clock: Callable[[], datetime] = utc_now, *, delete_aside: bool = False,
                 store: Any = None, warn: Callable[[str], None] | None = None):
        self.log, self.state_dir, self.policy, self.clock = log, Path(state_dir), policy, clock
        #: the object store (``state.objectstore.ObjectStore``) collected too; None: none
        self.store = store
        #: says what went wrong deleting from the store (the daemon's log; else Python's)
        self.warn = warn or _log.warning
        self._calls: ThreadPoolExecutor | None = None  # the one thread for store calls
        self._undeleted: list[str] = []  # what ahgd gc could not delete from the store
        #: delete recorded trash on a thread of its own (the daemon: its loop never waits
        #: for the disk); a crash before it is done leaves trash that recover() deletes
        self.delete_aside = delete_aside
        self._deleter: ThreadPoolExecutor | None = None
        self._deleting: list[Future] = []  # the deleter's work not known to be done
        #: bytes of the reserve this collector deleted to record removals, since it was made
        self.reserve_released = 0

    # -- a whole collection -------------------------------------------------------------

    def run(self, *, dry_run: bool = False, pipeline: str | None = None) -> Report:
        """One collection from start to end (``ahgd gc``)."""
        report = self.new_report(dry_run=dry_run, pipeline=pipeline)
        for step in self.collect(report):
            if isinstance(step, Future):
                wait([step])
        return report

    def submit(self, call: Callable[[], Any]) -> Future:
        """``call()`` on the collector's thread for object-store calls."""
        if self._calls is None:
            self._calls = ThreadPoolExecutor(1, thread_name_prefix="ahgd-gc-bucket")
        return self._calls.submit(call)

    def new_report(self, *, dry_run: bool = False, pipeline: str | None = None) -> Report:
        now = self.clock()
        return Report(f"gc-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}",
                      format_ts(now), dry_run, pipeline)

    def collect(self, report: Report) -> Iterator[Future | None]:
        """The collection of ``report``, pausing (``yield``) between small chunks of work; a
        ``Future`` while it waits for the object store (come back once it is done)."""
        released = self.reserve_released
        if not report.dry_run:
            report.restored = self.recover()
            yield
        now = self.clock()
        for item in plan(self.log, self.state_dir, self.policy, now, report.walk,
                         pipeline=report.pipeline, store=self.store, submit=self.submit):
            if item is None or isinstance(item, Future):
                yield item
                continue
            if item.area == "bucket" and item.rule == "recorded":  # finish an old removal
                if not report.dry_run:
                    if self.delete_aside:  # the daemon's loop never waits for the store
                        self.submit(lambda item=item: self._delete_objects(item))
                    else:
                        self._delete_objects(item)
                    report.bucket_leftovers += len(item.files)
                yield
                continue
            if report.dry_run or self.remove(item, report.collection):
                report.items.append(item)
            else:
                report.skipped.append(item.path)
            yield
        if self._undeleted and report.walk.bucket_error is None:
            report.walk.bucket_error = "; ".join(self._undeleted[:3])
        self._undeleted = []
        report.finished, report.ended = True, time.monotonic()
        report.reserve_released = self.reserve_released - released
        if not report.dry_run:
            self.keep_reserve()

    # -- one removal ----------------------------------------------------------------------

    def remove(self, item: Item, collection: str) -> bool:
        """Move ``item`` to the trash, record it, delete it; False when it could not be
        (gone already, or its run was retried meanwhile: then it is back where it was)."""
        if not self._still_due(item):
            return False
        if item.area == "bucket":
            return self._remove_objects(item, collection)
        source = self.state_dir / item.path
        members = [source.parent / m for m in item.files] if item.area in (
            "duplicates", "quarantine") else [source]
        nonce = secrets.token_hex(6)
        trash = self.state_dir / TRASH / f"{nonce}~{quote(item.path, safe='')}"
        self._with_room(lambda: trash.mkdir(parents=True), item)
        moved: list[Path] = []
        try:
            for member in members:
                try:
                    os.rename(member, trash / member.name)
                except FileNotFoundError:
                    continue
                moved.append(member)
            if not moved:
                shutil.rmtree(trash, ignore_errors=True)
                return False
            # the daemon's loop never waits for the disk: its thread makes the event durable
            event = self._event(item, collection, nonce)
            self._with_room(lambda: self.log.append(event, durable=not self.delete_aside), item)
        except IllegalTransition:  # the run may run again (retried meanwhile): keep it all
            self._put_back(trash, source.parent)
            return False
        except BaseException:
            self._put_back(trash, source.parent)
            raise
        if self.delete_aside:
            if self._deleter is None:
                self._deleter = ThreadPoolExecutor(1, thread_name_prefix="ahgd-gc-delete")
            self._deleting = [f for f in self._deleting if not f.done()]
            self._deleting.append(self._deleter.submit(self._durably_delete, trash))
        else:
            shutil.rmtree(trash, ignore_errors=True)
        return True

    def _remove_objects(self, item: Item, collection: str) -> bool:
        """A folder of the object store: its removal recorded, then its objects deleted (on
        the store's thread in the daemon, once the event is durable)."""
        event = self._event(item, collection, None)
        try:
            self._with_room(lambda: self.log.append(event, durable=not self.delete_aside), item)
        except IllegalTransition:  # its run may run again (retried meanwhile): keep it all
            return False
        if self.delete_aside:
            self.submit(lambda: bool(self.log.sync_files()) and self._delete_objects(item))
        else:
            self._delete_objects(item)
        return True

    def _delete_objects(self, item: Item) -> bool:
        """Delete the objects of ``item`` (its folder's files as listed); a warning when the
        store cannot: its removal is recorded, the next collection deletes what is left."""
        folder = item.extra["folder"]
        try:
            self.store.delete_many([f"{folder}/{name}" for name in item.files])
        except Exception as exc:  # noqa: BLE001 - the store went away: next time
            message = (f"could not delete {item.path}/ from the object store: {exc}; its removal "
                       "is recorded, and the next collection deletes what is left")
            self.warn(message)
            if not self.delete_aside:
                self._undeleted.append(message)
            return False
        return True

    # -- room to record removals on a full disk ------------------------------------------

    @property
    def reserve_path(self) -> Path:
        return self.state_dir / RESERVE

    def keep_reserve(self) -> bool:
        """Make the reserve (:data:`RESERVE`) if it is missing and the disk has room for it
        twice over (it never takes more than half of what is free); True when it is there.
        Made under a temporary name and renamed: never a reserve smaller than it says."""
        path = self.reserve_path
        try:
            total, _, free = disk_space(self.state_dir)
            size = reserve_size(total)
            if path.is_file() and path.stat().st_size >= size:
                return True
            if free < 2 * size:
                return False
            making = path.with_name(f"{RESERVE}.new")  # a crash's leftover is made again
            fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                finally:
                    os.close(fd)
                os.replace(making, path)
            except BaseException:
                making.unlink(missing_ok=True)
                raise
        except OSError:  # no room after all, a file system without fallocate: next time
            return False
        self.reserve_released = 0
        return True

    def _make_room(self) -> bool:
        """Room for a removal the disk refused: the reserve deleted, else the deletions
        already recorded waited for (the daemon's).  False when neither freed anything."""
        size = release_reserve(self.state_dir)
        if size:
            self.reserve_released += size
            return True
        pending = [f for f in self._deleting if not f.done()]
        self._deleting = []
        if pending:
            wait(pending, timeout=DELETIONS_WAIT_S)
            return True
        return False

    def _with_room(self, step: Callable[[], Any], item: Item) -> Any:
        """``step()``, again after :meth:`_make_room` each time the disk refuses it (as often
        as that frees something); a :class:`DiskFull` that says what to do when it cannot."""
        while True:
            try:
                return step()
            except (DiskFull, OSError) as exc:
                if not no_room(exc):
                    raise
                if not self._make_room():
                    raise self._full(item) from exc

    def _full(self, item: Item) -> DiskFull:
        where = self.state_dir
        if self.reserve_released:
            kept = (f"even with the {human_bytes(self.reserve_released)} it keeps for this "
                    f"({where / RESERVE}) released: something other than what retention may "
                    "remove fills it")
        else:
            kept = (f"and the room it keeps for this ({where / RESERVE}) is used up or was "
                    "never made (it is made when a daemon starts and after a collection, once "
                    "the disk has room for it)")
        return DiskFull(
            f"the disk holding {where} is full: retention could not record the removal of "
            f"{item.path} (each removal is an event in {where / 'history.db'}, which needs "
            f"room to grow), {kept}. That removal was not made and nothing is lost: its files "
            "went back where they were (the removals before it are recorded and done). Free "
            f"some space on that disk yourself (see `df -h {where}`; "
            f"`du -sh {where}/*` shows what the state directory holds; delete nothing inside "
            "it by hand), then run `ahgd gc` again")

    def _durably_delete(self, trash: Path) -> None:
        """On the deleting thread: make the removal's event durable (an ``fsync`` of the log's
        write-ahead log and database file: its commit skipped one), then delete the trash.
        A power cut before this leaves trash without a durable event: it is put back.
        (Through the log's own descriptors: opening and closing the files here dropped the
        daemon's SQLite locks, and the next ``ahgd`` command deleted the write-ahead log the
        daemon still wrote to: :meth:`state.log.EventLog.sync_files`.)"""
        if not self.log.sync_files():
            return  # not known to be durable: recover() decides at the next collection
        shutil.rmtree(trash, ignore_errors=True)

    def _still_due(self, item: Item) -> bool:
        """False when a run the item belongs to may run again now (retried since the plan):
        data.expired would be refused for its own run, but not an input's file.expired."""
        ids = [i for i in (item.run_id, *item.extra.get("runs", ())) if i]
        if item.area == "bucket" and item.extra.get("sha256"):  # any run that reads it now
            sha = item.extra["sha256"]
            ids += [r["run_id"] for r in removals.runs_with_inputs(self.log, [sha]).get(sha, [])]
        runs = removals.runs_by_id(self.log, ids) if ids else {}
        return not any(r["state"] in removals.UNFINISHED for r in runs.values())

    def _event(self, item: Item, collection: str, nonce: str | None) -> Any:
        fields = removals.expired_payload(
            self.state_dir, item.path, area=item.area, bytes=item.bytes, files=len(item.files),
            rule=item.rule, reason=item.reason, pipeline=item.pipeline, names=item.files[:50],
            collection=collection, **({"trash": nonce} if nonce else {}), **item.extra)
        if item.area == "data" or (item.area == "bucket"
                                   and item.extra["folder"].startswith("data/")):
            return new_event(T.DATA_EXPIRED, item.run_id, **fields)
        return new_event(T.FILE_EXPIRED, item.run_id, **fields)

    def _put_back(self, trash: Path, parent: Path) -> None:
        for entry in list(trash.iterdir()) if trash.is_dir() else []:
            target = parent / entry.name
            if not target.exists():
                parent.mkdir(parents=True, exist_ok=True)
                os.rename(entry, target)
        if trash.is_dir() and not any(trash.iterdir()):
            trash.rmdir()

    # -- after a crash ------------------------------------------------------------------

    def recover(self) -> int:
        """Finish what a crash cut short: a trash folder whose removal the log recorded is
        deleted; one it did not record goes back where it was.  The folders moved back."""
        restored = 0
        for entry in sorted((self.state_dir / TRASH).glob("*~*")):
            nonce, _, quoted = entry.name.partition("~")
            origin = unquote(quoted)
            if removals.removal_recorded(self.log, origin, nonce):
                shutil.rmtree(entry, ignore_errors=True)
                continue
            self._put_back(entry, (self.state_dir / origin).parent)
            if entry.exists():  # something new took its place meanwhile: keep both, say so
                continue
            restored += 1
        return restored


def trash_waiting(state_dir: Path) -> int:
    """How many removals a crash left in the trash (``ahgd state check`` reports them)."""
    return len(list((Path(state_dir) / TRASH).glob("*~*")))

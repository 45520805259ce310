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
removed.  A collection is one :meth:`Collector.collect` generator: the plan
(``ahgd_daemon/retention.py``) and the removals interleaved, pausing (``yield``) between
small chunks; :meth:`Collector.run` drives it to the end at once (``ahgd gc``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pipelines.config.retain import Policy
from state import EventType as T, IllegalTransition, format_ts, new_event, removals, utc_now

from .retention import AREAS, Item, Walk, plan

TRASH = ".trash"


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
        }


class Collector:
    """Collects the state directory of one event log by one policy."""

    def __init__(self, log: Any, state_dir: Path, policy: Policy,
                 clock: Callable[[], datetime] = utc_now, *, delete_aside: bool = False):
        self.log, self.state_dir, self.policy, self.clock = log, Path(state_dir), policy, clock
        #: delete recorded trash on a thread of its own (the daemon: its loop never waits
        #: for the disk); a crash before it is done leaves trash that recover() deletes
        self.delete_aside = delete_aside
        self._deleter: ThreadPoolExecutor | None = None

    # -- a whole collection -------------------------------------------------------------

    def run(self, *, dry_run: bool = False, pipeline: str | None = None) -> Report:
        """One collection from start to end (``ahgd gc``)."""
        report = self.new_report(dry_run=dry_run, pipeline=pipeline)
        for _ in self.collect(report):
            pass
        return report

    def new_report(self, *, dry_run: bool = False, pipeline: str | None = None) -> Report:
        now = self.clock()
        return Report(f"gc-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}",
                      format_ts(now), dry_run, pipeline)

    def collect(self, report: Report) -> Iterator[None]:
        """The collection of ``report``, pausing (``yield``) between small chunks of work."""
        if not report.dry_run:
            report.restored = self.recover()
            yield
        now = self.clock()
        for item in plan(self.log, self.state_dir, self.policy, now, report.walk,
                         pipeline=report.pipeline):
            if item is None:
                yield
                continue
            if report.dry_run or self.remove(item, report.collection):
                report.items.append(item)
            else:
                report.skipped.append(item.path)
            yield
        report.finished, report.ended = True, time.monotonic()

    # -- one removal ----------------------------------------------------------------------

    def remove(self, item: Item, collection: str) -> bool:
        """Move ``item`` to the trash, record it, delete it; False when it could not be
        (gone already, or its run was retried meanwhile: then it is back where it was)."""
        if not self._still_due(item):
            return False
        source = self.state_dir / item.path
        members = [source.parent / m for m in item.files] if item.area in (
            "duplicates", "quarantine") else [source]
        nonce = secrets.token_hex(6)
        trash = self.state_dir / TRASH / f"{nonce}~{quote(item.path, safe='')}"
        trash.mkdir(parents=True)
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
            self.log.append(self._event(item, collection, nonce), durable=not self.delete_aside)
        except IllegalTransition:  # the run may run again (retried meanwhile): keep it all
            self._put_back(trash, source.parent)
            return False
        except BaseException:
            self._put_back(trash, source.parent)
            raise
        if self.delete_aside:
            if self._deleter is None:
                self._deleter = ThreadPoolExecutor(1, thread_name_prefix="ahgd-gc-delete")
            self._deleter.submit(self._durably_delete, trash)
        else:
            shutil.rmtree(trash, ignore_errors=True)
        return True

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
        runs = removals.runs_by_id(self.log, ids) if ids else {}
        return not any(r["state"] in removals.UNFINISHED for r in runs.values())

    def _event(self, item: Item, collection: str, nonce: str) -> Any:
        fields = removals.expired_payload(
            self.state_dir, item.path, area=item.area, bytes=item.bytes, files=len(item.files),
            rule=item.rule, reason=item.reason, pipeline=item.pipeline, names=item.files[:50],
            collection=collection, trash=nonce, **item.extra)
        if item.area == "data":
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

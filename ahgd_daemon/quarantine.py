"""The quarantine (``<state dir>/quarantine/<pipeline>/``): listing it, putting a file back into
its drop folder (``ahgd quarantine release``), and removing old ones (``ahgd quarantine purge``).

A quarantined file lies beside ``<name>.reason.json`` (file, pipeline, reason,
sha256, quarantined_at, run_id, fix), which is what the listing reads: the
quarantine is what is in the folder.  Releasing records ``file.released``, so
that the same bytes, dropped back, are taken again rather than called a
duplicate; the file goes in under a hidden name and is renamed into place only
once the event is recorded (the folder's watcher sees the rename).  Purging
records ``file.expired`` (area ``quarantine``, the family retention records
its removals in) before it removes a file and its reason.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from state import EventLog, EventType as T, format_ts, new_event, ops_queries, removals
from state.errors import did_you_mean
from state.store import safe_name, sha256_file

from .inboxfiles import display_name
from .requests import RequestError

QUARANTINE_DIR = "quarantine"
REASON_SUFFIX = ".reason.json"


@dataclass
class Quarantined:
    """One file in quarantine."""

    path: str               # where it lies, under <state dir>/quarantine/<pipeline>/
    pipeline: str
    file: str               # its name when it was dropped
    reason: str
    quarantined_at: str
    run_id: str | None
    sha256: str | None
    bytes: int
    fix: str | None = None
    name_bytes_hex: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def listing(state_dir: Path, pipeline: str | None = None) -> list[Quarantined]:
    """Every file in quarantine (of ``pipeline``), oldest first."""
    root = Path(state_dir) / QUARANTINE_DIR
    folders = [root / safe_name(pipeline)] if pipeline else sorted(
        p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    out = []
    for folder in folders:
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if path.name.startswith(".") or path.name.endswith(REASON_SUFFIX) or not path.is_file():
                continue
            out.append(_entry(path, folder.name))
    return sorted(out, key=lambda q: (q.quarantined_at, q.path))


def _entry(path: Path, folder_name: str) -> Quarantined:
    try:
        info = json.loads(path.with_name(path.name + REASON_SUFFIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    st = path.stat()
    when = info.get("quarantined_at") or format_ts(datetime.fromtimestamp(st.st_mtime).astimezone())
    return Quarantined(
        path=str(path), pipeline=str(info.get("pipeline") or folder_name),
        file=str(info.get("file") or path.name),
        reason=str(info.get("reason") or f"unknown: no {path.name}{REASON_SUFFIX} beside it"),
        quarantined_at=str(when), run_id=info.get("run_id"), sha256=info.get("sha256"),
        bytes=st.st_size, fix=info.get("fix"), name_bytes_hex=info.get("name_bytes_hex"))


def resolve(state_dir: Path, names: list[str], pipeline: str | None = None) -> list[Quarantined]:
    """The quarantined files ``names`` stand for: a path as listed, a file name (one that
    names a single file), or the start of a SHA-256 (8 hex digits or more)."""
    every = listing(state_dir, pipeline)
    found: list[Quarantined] = []
    for name in names:
        matches = [q for q in every if name in (q.path, Path(q.path).name, q.file)
                   or (len(name) >= 8 and q.sha256 and q.sha256.startswith(name.lower()))]
        if not matches and Path(name).is_absolute() is False:
            matches = [q for q in every if q.path.endswith("/" + name.lstrip("./"))]
        if not matches:
            known = [Path(q.path).name for q in every]
            close = did_you_mean(Path(name).name, known + [q.file for q in every])
            raise RequestError(f"no file {name!r} in quarantine" + (f"; {close}" if close else "")
                               + (f" (quarantined: {', '.join(known[:20])}"
                                  + (" ..." if len(known) > 20 else "") + ")" if known
                                  else " (the quarantine is empty)")
                               + "; see `ahgd quarantine list`")
        if len(matches) > 1:
            raise RequestError(f"{name!r} names {len(matches)} quarantined files: "
                               f"{', '.join(q.path for q in matches)}; give the path")
        if matches[0] not in found:
            found.append(matches[0])
    return found


def release(log: EventLog, item: Quarantined, folder: Path | None) -> dict[str, Any]:
    """Put one quarantined file back into its pipeline's drop folder ``folder``."""
    if folder is None:
        raise RequestError(f"pipeline {item.pipeline!r} has no drop folder in the configuration "
                           f"(or is not in it), so {item.file!r} has nowhere to go back to; "
                           "copy it yourself, or purge it")
    if not item.sha256:  # a file set aside without its reason (a crash): hash it now
        item.sha256 = sha256_file(Path(item.path))
    if item.sha256:
        known = ops_queries.file_bytes(log, item.pipeline, item.sha256)
        if known is not None and known["state"] == "ARRIVED":
            raise RequestError(f"the bytes of {item.file!r} were taken again since it was "
                               f"quarantined (run {known['run_id']}): released, they would be "
                               "a duplicate; remove this copy with `ahgd quarantine purge` "
                               "instead")
    name = _drop_name(item)
    target = folder / name
    if os.path.lexists(target):
        raise RequestError(f"{target} exists already: a file of that name waits in the drop "
                           "folder; move it away first, then release again")
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".ahgd-release-{os.urandom(6).hex()}"
    source = Path(item.path)
    try:
        os.link(source, staging)
    except OSError:  # another file system: a copy, synced before it is recorded
        shutil.copyfile(source, staging)
        with open(staging, "rb+") as f:
            os.fsync(f.fileno())
    try:
        log.append(new_event(T.FILE_RELEASED, item.run_id, pipeline=item.pipeline,
                             sha256=item.sha256, name=item.file, reason=item.reason,
                             **{"from": item.path}, to=str(target),
                             quarantined_at=item.quarantined_at))
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.rename(staging, target)  # the watcher takes it now
    source.unlink(missing_ok=True)
    source.with_name(source.name + REASON_SUFFIX).unlink(missing_ok=True)
    return {"file": item.file, "pipeline": item.pipeline, "from": item.path, "to": str(target)}


def _drop_name(item: Quarantined) -> str:
    """The name it had when it was dropped (its exact bytes, if they were not UTF-8)."""
    if item.name_bytes_hex:
        try:
            return os.fsdecode(bytes.fromhex(item.name_bytes_hex))
        except ValueError:
            pass
    name = Path(item.file).name
    return name if name and name == display_name(name) and not name.startswith(".") \
        else Path(item.path).name


def purge(log: EventLog, state_dir: Path, older_than: timedelta, now: datetime, *,
          pipeline: str | None = None, dry_run: bool = False,
          rule: str = "") -> dict[str, Any]:
    """Remove the quarantined files set aside more than ``older_than`` ago, each recorded
    as ``file.expired`` first; what was (or, ``dry_run``, would be) removed."""
    cutoff = format_ts(now - older_than)
    old = [q for q in listing(state_dir, pipeline) if q.quarantined_at < cutoff]
    removed = []
    for item in old:
        if not dry_run:
            log.append(new_event(T.FILE_EXPIRED, item.run_id, **removals.expired_payload(
                state_dir, item.path, area="quarantine", bytes=item.bytes, files=1,
                pipeline=item.pipeline, sha256=item.sha256, rule=rule or "quarantine purge",
                reason=f"quarantined at {item.quarantined_at}, purged by hand "
                       f"({rule or 'ahgd quarantine purge'})")))
            Path(item.path).unlink(missing_ok=True)
            Path(item.path + REASON_SUFFIX).unlink(missing_ok=True)
        removed.append(item.as_json())
    left = len(listing(state_dir, pipeline))
    return {"cutoff": cutoff, "removed": removed, "bytes": sum(q.bytes for q in old),
            "dry_run": dry_run, "kept": left - len(old) if dry_run else left}


def parse_age(text: str) -> timedelta:
    """``--older-than``: ``30d``, ``12h``, ``90m``, ``2w``, or ISO 8601 (``P30D``)."""
    from pipelines.durations import parse_duration
    from pipelines.errors import ConfigError

    try:
        return parse_duration(text, what="--older-than")
    except ConfigError as exc:
        raise RequestError(str(exc)) from None


__all__ = ["Quarantined", "listing", "parse_age", "purge", "release", "resolve"]

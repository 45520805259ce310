"""``ahgd daemon --config F --dry-run``: what the daemon would do if it started now, changing
nothing.

The configuration is loaded as the daemon loads it; the history is read
read-only (or taken as empty when there is none).  It says, per pipeline: its
state (active, paused, disabled) and triggers; each entry of its drop folders
and what the daemon would do with it (take it, wait for it to settle, leave
it as hidden or not matching, refuse it as not a regular file, move it aside
as a duplicate, quarantine it as empty); the schedule ticks it would fire at
start-up (missed ones, by the misfire policy) or record skipped (paused), and
the next tick; the runs waiting to start.  It reads the dropped files (to
hash them) and writes nothing: not the history, not the state directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from state import format_ts, ops_queries, parse_ts, queries

from .dropfolder import REFUSALS, Folder, ignored
from .inboxfiles import display_name, kind_of
from .pipelineview import describe_trigger
from .schedules import missed_ticks


def plan(setup: Any, history: Any, now: datetime) -> dict[str, Any]:
    """The dry run's document; ``history`` a read-only history, or None (none yet)."""
    pauses = ops_queries.pipeline_pauses(history) if history is not None else {}
    pending = queries.pending_runs(history, sorted(setup.pipelines), 10_000) \
        if history is not None else []
    out = []
    for name in sorted(setup.pipelines):
        loaded = setup.config.pipelines[name]
        state = "disabled" if name in setup.disabled else "paused" if name in pauses else "active"
        entry: dict[str, Any] = {
            "name": name, "state": state,
            "triggers": [describe_trigger(t) for t in loaded.file.triggers],
            "pause": {k: v for k, v in pauses[name].items() if k != "seq"} if name in pauses
            else None,
            "files": [], "ticks": [], "next_tick": None,
            "waiting_runs": [run_id for run_id, p in pending if p == name],
        }
        for folder in (f for f in setup.folders if f.pipeline == name):
            entry["files"] += [dict(f, folder=str(folder.path))
                               for f in folder_plan(folder, history, state)]
        nexts = []
        for schedule in (s for s in setup.schedules if s.pipeline == name):
            last = ops_queries.last_fire_time(history, name, schedule.trigger_id) \
                if history is not None else None
            for tick in missed_ticks(schedule, parse_ts(last) if last else None, now):
                entry["ticks"].append({"trigger": schedule.trigger_id, "fire_time":
                                       format_ts(tick), "would": "record it skipped (paused)"
                                       if state == "paused" else "fire it (missed; misfire "
                                       f"{schedule.misfire})"})
            nxt = schedule.next_after(None, now + timedelta(microseconds=1))
            if nxt is not None:
                nexts.append(nxt)
        entry["next_tick"] = format_ts(min(nexts)) if nexts else None
        out.append(entry)
    return {"at": format_ts(now), "pipelines": out}


def folder_plan(folder: Folder, history: Any, state: str) -> list[dict[str, Any]]:
    """Each entry of one drop folder and what the daemon would do with it."""
    if not folder.path.is_dir():
        return [{"file": str(folder.path), "would": "create the folder and watch it",
                 "why": "it does not exist yet"}]
    entries = sorted(folder.path.rglob("*") if folder.recursive else folder.path.iterdir())
    out = []
    for path in entries:
        shown = display_name(path.relative_to(folder.path))
        would, why = _judge(folder, path, history, state)
        if would is not None:
            out.append({"file": shown, "would": would, "why": why})
    return out


def _judge(folder: Folder, path: Path, history: Any, state: str) -> tuple[str | None, str]:
    if ignored(path.name):
        return "leave it", "hidden or temporary (a name starting with . or ~, or ending .part, " \
                           ".tmp ...): never taken"
    try:
        st = os.lstat(path)
    except OSError as exc:
        return "leave it", f"it cannot be looked at ({exc.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return (None, "") if folder.recursive else (
            "leave it", "a folder (the trigger is not recursive)")
    if not folder.matches(path):  # its pattern (with {a,b} alternatives), as the watcher
        return "leave it", f"does not match the pattern {folder.pattern!r}"
    if not stat.S_ISREG(st.st_mode):
        why, fix = REFUSALS.get(kind_of(st.st_mode), REFUSALS["special file"])
        return "refuse it (left in place)", f"{why}; {fix}"
    if not os.access(path, os.R_OK):
        why, fix = REFUSALS["unreadable"]
        return "refuse it (left in place)", f"{why}; {fix}"
    age = time.time() - st.st_mtime
    if age < folder.stable_for:
        return "wait, then take it", (f"it changed {age:.1f}s ago; it is taken once unchanged "
                                      f"for {folder.stable_for:g}s")
    if st.st_size == 0:
        return "quarantine it", "the file is empty (0 bytes)"
    sha = _sha256(path)
    if sha is None:
        return "refuse it (left in place)", "it cannot be read"
    known = ops_queries.file_bytes(history, folder.pipeline, sha) if history is not None else None
    if known is not None and known["state"] == "ARRIVED" and not folder.allow_duplicates:
        return "move it to duplicates", (f"the same bytes arrived already as {known['name']!r} "
                                         f"(run {known['run_id']})")
    checks = " after its input check" if folder.required_columns or folder.check_callable else ""
    if state == "paused":
        return "take it", f"a new file{checks}; its run waits: the pipeline is paused"
    return "take it", f"a new file{checks}: it starts a run"


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def render(doc: dict[str, Any]) -> list[str]:
    """The document for a terminal."""
    lines = [f"dry run at {doc['at']}: what the daemon would do if it started now (nothing is "
             "changed)"]
    for p in doc["pipelines"]:
        lines += ["", f"{p['name']}  [{p['state']}]"]
        if p.get("pause"):
            by = p["pause"].get("by") or {}
            lines.append(f"  paused by {by.get('user', '?')} at {p['pause'].get('since')}"
                         + (f": {p['pause']['reason']}" if p["pause"].get("reason") else ""))
        for t in p["triggers"]:
            lines.append(f"  trigger  {t['text']}")
        if p["state"] == "disabled":
            lines.append("  its triggers are off (enabled: false); `ahgd run --force` runs it")
            continue
        for f in p["files"]:
            lines.append(f"  file     {f['file']}: would {f['would']} ({f['why']})")
        for t in p["ticks"]:
            lines.append(f"  tick     {t['fire_time']} ({t['trigger']}): would {t['would']}")
        if p["next_tick"]:
            lines.append(f"  next     tick at {p['next_tick']}")
        if p["waiting_runs"]:
            verb = "wait (paused)" if p["state"] == "paused" else "would start"
            lines.append(f"  runs     {len(p['waiting_runs'])} PENDING {verb}: "
                         + ", ".join(p["waiting_runs"][:5])
                         + (" ..." if len(p["waiting_runs"]) > 5 else ""))
    return lines

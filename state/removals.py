"""Retention's questions to the history: what may go, what went, and how to say so.

``ahgd gc`` and the daemon's collection (``ahgd_daemon/retention.py``) ask these to
decide; the run engine, ``ahgd retry`` and ``run(resume_from=...)`` ask
:func:`removal_of` and :func:`retry_refusal` so that a run which needs something retention
removed is refused, naming what went and when, instead of crashing or silently running
a stage again.  Every removal is an event: ``data.expired`` for a run's stage outputs
(``data/<run>``, addressed to the run), ``file.expired`` for a file or folder of another
area (``files/…``, ``inputs/…``, ``duplicates/…``, ``quarantine/…``, ``tmp/…``); the
``removals`` view lists them.  Paths in these events are relative to the state directory;
whoever else removes a file of the state directory (``ahgd quarantine purge``) records it
with the same payload, made by :func:`expired_payload`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .machine import RunState
from .queries import History, _dicts, _placeholders, _rows

#: the run states whose runs may still run: nothing they need is ever removed
UNFINISHED = (RunState.PENDING, RunState.RUNNING, RunState.PARKED)
#: the ended states a retry can start again (COMPLETED runs are never retried)
RETRYABLE = (RunState.FAILED, RunState.CANCELLED)
_REMOVED = "type IN ('data.expired', 'file.expired')"  # as the 0005 indexes say it
_CHUNK = 500
_RUN_COLUMNS = "run_id, pipeline, state, requested_at, started_at, ended_at, params"


# --------------------------------------------------------------------------- what went


def expired_payload(state_dir: Path, path: str | Path, *, area: str, bytes: int, files: int,
                    rule: str, reason: str, pipeline: str | None = None,
                    **extra: Any) -> dict[str, Any]:
    """The payload of a ``data.expired`` or ``file.expired``: ``path`` (made relative to the
    state directory: what :func:`removal_of` looks for; an object store's folder keeps its
    ``s3://`` URI), ``area`` (data, files, inputs, duplicates, quarantine, logs, tmp, metrics,
    cache, bucket), ``bytes`` and ``files`` (how many) removed,
    ``rule`` (the retain: key, or the command), ``reason`` (a sentence), ``pipeline``, and
    anything else (``collection``, ``trash``, ``names``, ``sha256``)."""
    text = str(path)
    return {"path": text if text.startswith("s3://") else relative_to_state(Path(state_dir), path),
            "area": area,
            "pipeline": pipeline, "files": int(files), "bytes": int(bytes), "rule": rule,
            "reason": reason, **extra}



def removal_of(db: History, path: str) -> dict[str, Any] | None:
    """The latest removal of ``path`` (relative to the state directory) or of a folder
    holding it (``data/R/extract-a1.duckdb`` is gone with ``data/R``): ``{seq, ts, type,
    run_id, path, area, bytes, files, rule, reason}``; None when retention never removed it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:n]) for n in range(len(parts), 1, -1)]
    if not candidates:
        return None
    rows = _dicts(db, f"SELECT seq, ts, type, run_id, payload FROM events WHERE {_REMOVED} AND "
                      f"json_extract(payload, '$.path') IN ({_placeholders(candidates)}) "
                      "ORDER BY seq DESC LIMIT 1", candidates)
    if not rows:
        return None
    row = rows[0]
    payload = json.loads(row.pop("payload"))
    return {**row, **{k: payload.get(k) for k in ("path", "area", "bytes", "files", "rule",
                                                   "reason")}}


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    """``ids`` in pieces of _CHUNK: an ``IN (?, ...)`` within SQLite's bound parameters."""
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]


def removed_at(db: History, paths: Sequence[str]) -> dict[str, str]:
    """``path -> ts`` of the latest recorded removal of each of ``paths`` (exactly: no
    folder holding it) that has one."""
    out: dict[str, str] = {}
    ids = list(paths)
    for chunk in _chunks(ids):
        for path, ts in _rows(db, f"SELECT json_extract(payload, '$.path'), MAX(ts) FROM events "
                                  f"WHERE {_REMOVED} AND json_extract(payload, '$.path') IN "
                                  f"({_placeholders(chunk)}) GROUP BY 1", chunk):
            out[path] = ts
    return out


def human_bytes(size: Any) -> str:
    """Bytes as people read them: ``950 B``, ``1.2 MB``, ``50.0 GB`` (decimal units)."""
    if not isinstance(size, (int, float)) or isinstance(size, bool):
        return "? B"
    value, unit = float(size), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def removal_recorded(db: History, path: str, nonce: str) -> bool:
    """Did the log record the removal of ``path`` whose files went to the trash as ``nonce``?
    (Its trash folder is then deleted after a crash; otherwise its files are put back.)"""
    return bool(_rows(db, f"SELECT 1 FROM events WHERE {_REMOVED} AND json_extract(payload, "
                          "'$.path') = ? AND json_extract(payload, '$.trash') = ? LIMIT 1",
                      [path, nonce]))


def describe(removal: dict[str, Any]) -> str:
    """``data/R/ (4 files, 1.2 MB) was removed by retention on <ts>: <reason>``."""
    files = removal.get("files")
    what = f"{removal.get('path')}" + ("/" if removal.get("type") == "data.expired" else "")
    size = human_bytes(removal.get("bytes"))
    count = f"{files} file{'s' if files != 1 else ''}, " if isinstance(files, int) else ""
    return (f"{what} ({count}{size}) was removed by retention on {removal.get('ts')}: "
            f"{removal.get('reason') or 'no reason recorded'}")


def relative_to_state(state_dir: Path, path: str | Path) -> str:
    """``path`` as the removal events name it: relative to the state directory.  A path
    recorded under another (moved) state directory keeps its part from the area on."""
    p = Path(path)
    try:
        return p.relative_to(state_dir).as_posix() if p.is_absolute() else p.as_posix()
    except ValueError:
        parts = p.parts
        for i, part in enumerate(parts):
            if part in ("files", "inputs", "data", "duplicates", "quarantine"):
                return "/".join(parts[i:])
        return p.as_posix()


def removed_file(db: History, state_dir: Path, path: str) -> dict[str, Any] | None:
    """The removal of ``path`` (relative) when it is gone because retention removed it."""
    if not path or Path(state_dir, path).exists():
        return None
    return removal_of(db, path)


def run_needs_removed(db: History, state_dir: Path, run: Any) -> list[dict[str, Any]]:
    """What a run needs to run again that retention removed: the folders of the outputs of
    its completed stages (its own ``data/<run>``, and another run's it reused) and its input
    file; each removal once."""
    paths = []
    for attempt in getattr(run, "attempts", {}).values():
        output = attempt.output if attempt.state == "COMPLETED" else None
        if isinstance(output, dict) and output.get("path") and not output.get("uri"):
            paths.append(str(output["path"]))
    if run.params.get("input_file"):
        paths.append(relative_to_state(state_dir, run.params["input_file"]))
    found: dict[int, dict[str, Any]] = {}
    for path in paths:
        removal = removed_file(db, state_dir, path)
        if removal is not None:
            found.setdefault(removal["seq"], removal)
    return [found[k] for k in sorted(found)]


def retry_refusal(db: History, state_dir: Path, run: Any, *,
                  done: str = "Nothing was started") -> str | None:
    """Why ``run`` cannot be retried (or resumed), naming what retention removed and when;
    None when nothing it needs was removed.  ``done`` says what happened instead."""
    gone = run_needs_removed(db, state_dir, run)
    if not gone:
        return None
    return removed_message(f"run {run.run_id} cannot run again", gone, run.pipeline,
                           bool(run.params.get("input_file")), done)


def removed_message(what: str, gone: Sequence[dict[str, Any]], pipeline: str,
                    had_input: bool, done: str) -> str:
    """``<what>: what it needs was removed by retention (...). <done>; start a new run ...``."""
    again = (f"drop the file again, or `ahgd run {pipeline} --input FILE`" if had_input
             else f"`ahgd run {pipeline}`")
    return (f"{what}: what it needs was removed by retention ({'; '.join(map(describe, gone))})"
            f". {done}; start a new run of {pipeline} from the beginning instead: {again}. To "
            "keep failed runs retryable for longer, raise retain.failed_runs_for (and "
            "retain.inputs_for)")


def last_collection(db: History) -> dict[str, Any] | None:
    """The latest collection that removed something: ``{collection, at, items, bytes,
    by_area: {area: bytes}}`` (None when nothing was ever removed)."""
    last = _rows(db, f"SELECT json_extract(payload, '$.collection') FROM events WHERE {_REMOVED} "
                     "AND json_extract(payload, '$.collection') IS NOT NULL ORDER BY seq DESC "
                     "LIMIT 1")
    if not last:
        return None
    rows = _rows(db, f"SELECT ts, json_extract(payload, '$.area'), json_extract(payload, "
                     f"'$.bytes') FROM events WHERE {_REMOVED} AND seq >= (SELECT MIN(seq) FROM "
                     f"events WHERE {_REMOVED} AND json_extract(payload, '$.collection') = ?) AND "
                     "json_extract(payload, '$.collection') = ?", [last[0][0], last[0][0]])
    by_area: dict[str, int] = {}
    for _, area, size in rows:
        by_area[area] = by_area.get(area, 0) + int(size or 0)
    return {"collection": last[0][0], "at": max(r[0] for r in rows), "items": len(rows),
            "bytes": sum(by_area.values()), "by_area": by_area}


# --------------------------------------------------------------------------- what may go


def runs_by_id(db: History, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``run_id -> {run_id, pipeline, state, requested_at, started_at, ended_at, params}``
    (``params`` decoded) for those of ``run_ids`` the history knows."""
    ids, out = list(run_ids), {}
    for chunk in _chunks(ids):
        for row in _dicts(db, f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id IN "
                              f"({_placeholders(chunk)})", chunk):
            out[row["run_id"]] = _decoded(row)
    return out


def run_ids_from(db: History, prefix: str) -> list[str]:
    """Run ids that begin with ``prefix`` (by the primary key): where a data folder whose name
    is not a run id (a run id with characters a file name may not hold) finds its run."""
    return [r[0] for r in _rows(db, "SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ?",
                                [prefix, prefix + "\U0010ffff"])]


def unfinished_runs(db: History) -> list[dict[str, Any]]:
    """The runs that may still run (PENDING, RUNNING, PARKED): nothing they need may go."""
    return [_decoded(r) for r in _dicts(
        db, f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({_placeholders(UNFINISHED)})",
        UNFINISHED)]


def retryable_runs(db: History, ended_since: str) -> list[dict[str, Any]]:
    """FAILED and CANCELLED runs that ended at or after ``ended_since``: those that may be
    inside their retry window (the caller applies each pipeline's own)."""
    return [_decoded(r) for r in _dicts(
        db, f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ({_placeholders(RETRYABLE)}) "
            "AND ended_at >= ?", [*RETRYABLE, ended_since])]


def newest_completed(db: History, pipeline: str, count: int) -> list[str]:
    """The ``count`` newest COMPLETED runs of ``pipeline``, newest first (by time of request:
    the order their loads landed in)."""
    return [r[0] for r in _rows(
        db, "SELECT run_id FROM runs WHERE pipeline = ? AND state = ? ORDER BY requested_at "
            "DESC, run_id DESC LIMIT ?", [pipeline, RunState.COMPLETED, int(count)])]


def completed_after(db: History, pipeline: str, requested_at: str, run_id: str) -> int:
    """How many COMPLETED runs of ``pipeline`` were requested after the one given."""
    return _rows(db, "SELECT COUNT(*) FROM runs WHERE pipeline = ? AND state = ? AND "
                     "(requested_at > ? OR (requested_at = ? AND run_id > ?))",
                 [pipeline, RunState.COMPLETED, requested_at, requested_at, run_id])[0][0]


def output_paths(db: History, run_ids: Sequence[str]) -> dict[str, list[str]]:
    """``run_id -> [path, …]``: the recorded output files of each run's completed stages
    (some in another run's ``data/`` folder: outputs it reused)."""
    out: dict[str, list[str]] = {}
    ids = list(run_ids)
    for chunk in _chunks(ids):
        for run_id, text in _rows(db, "SELECT run_id, output FROM stage_runs WHERE state = "
                                      f"'COMPLETED' AND output IS NOT NULL AND run_id IN "
                                      f"({_placeholders(chunk)})", chunk):
            ref = json.loads(text)
            if isinstance(ref, dict) and ref.get("path"):
                out.setdefault(run_id, []).append(str(ref["path"]))
    return out


def runs_with_input(db: History, pipeline: str, sha256: str) -> list[dict[str, Any]]:
    """Every run of ``pipeline`` whose input file has this SHA-256 (the runs of one stored
    input: its first run, retries, warehouse rebuilds, runs of duplicates)."""
    return [_decoded(r) for r in _dicts(
        db, f"SELECT {_RUN_COLUMNS} FROM runs WHERE json_extract(params, '$.input_sha256') = ? "
            "AND pipeline = ?", [sha256, pipeline])]


def runs_with_inputs(db: History, sha256s: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``sha256 -> runs``: every run, of any pipeline, whose input file has one of these
    SHA-256 (an object store holds each input once, by its hash, for every pipeline)."""
    out: dict[str, list[dict[str, Any]]] = {}
    ids = list(sha256s)
    for chunk in _chunks(ids):
        for row in _dicts(db, f"SELECT {_RUN_COLUMNS}, json_extract(params, '$.input_sha256') "
                              f"AS sha FROM runs WHERE json_extract(params, '$.input_sha256') "
                              f"IN ({_placeholders(chunk)})", chunk):
            out.setdefault(row.pop("sha"), []).append(_decoded(row))
    return out


def set_aside_at(db: History, kind: str, path: str) -> str | None:
    """When the file at ``path`` (absolute, as recorded) was set aside: the time of its
    ``file.duplicate`` (``kind`` "duplicates") or ``file.quarantined`` ("quarantine")."""
    if kind == "duplicates":
        sql = ("SELECT MAX(ts) FROM events WHERE type = 'file.duplicate' AND "
               "json_extract(payload, '$.moved_to') = ?")
    else:
        sql = ("SELECT MAX(ts) FROM events WHERE type = 'file.quarantined' AND "
               "json_extract(payload, '$.path') = ?")
    rows = _rows(db, sql, [path])
    return rows[0][0] if rows else None


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["params"] = json.loads(row["params"]) if row.get("params") else {}
    return row

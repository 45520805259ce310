"""The warehouse's identity, and how a lost warehouse is told apart from the one on record.

``<state dir>/warehouse.duckdb`` is written by loaders through
``PipelineContext.warehouse()``.  The first time that call creates a warehouse
(or opens one that has none) it writes a small marker table,
``_ahgd.identity``: a random id, when and by which run it was made.  Every
stage attempt that opened a warehouse reports what it found
(:func:`report_of`) and the engine records it in ``stage.completed``
(``warehouses``); the daemon also looks at the file on start-up and every few
seconds (:func:`look`: a ``stat`` and its first bytes, never opening it).

:func:`judge` compares what was found with what the log expects
(:func:`state.queries.warehouse_expectation`): a warehouse that is gone,
recreated empty, replaced by another one or not a DuckDB file any more gives a
``warehouse.lost`` event (:func:`lost_event`), which raises the alert
``warehouse.lost:<path>`` in the ``alerts`` projection; ``ahgd warehouse
rebuild`` reloads it and resolves the alert.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Mapping

from .events import Event, EventType as T, new_event
from .timestamps import format_ts, utc_now

WAREHOUSE = "warehouse.duckdb"
SCHEMA, TABLE = "_ahgd", "identity"
ALERT = "warehouse.lost"
#: bytes 8..11 of every DuckDB database file
_MAGIC_AT, _MAGIC = 8, b"DUCK"


def recorded_path(state_dir: Path, target: Path) -> str:
    """How the log names a warehouse file: relative to the state directory when inside it."""
    target, state_dir = Path(target).absolute(), Path(state_dir).absolute()
    try:
        return target.relative_to(state_dir).as_posix()
    except ValueError:
        return str(target)


def absolute(state_dir: Path, path: str) -> Path:
    return Path(state_dir) / path


def lock_path(target: Path) -> Path:
    """The lock file loaders take turns on (``context.warehouse()``)."""
    return target.with_name(target.name + ".lock")


def alert_id(path: str) -> str:
    return f"{ALERT}:{path}"


def rebuild_hint(state_dir: Path) -> str:
    return f"ahgd warehouse rebuild --state-dir {Path(state_dir).absolute()}"


def damaged_message(target: Path, error: str, state_dir: Path) -> str:
    """What a stage or the daemon says about a warehouse file that DuckDB cannot open."""
    return (f"the warehouse {target} is not a readable DuckDB database ({error}); it was "
            f"damaged or replaced by another kind of file. Move it aside (mv {target} "
            f"{target}.damaged), then reload it: {rebuild_hint(state_dir)}")


# --------------------------------------------------------------------------- the marker


def ensure_identity(con: Any, *, run_id: str | None, created: bool) -> dict[str, Any]:
    """The identity of the warehouse open on ``con``, written first if it has none.

    ``created``: this connection made the file.  The report says so, and
    ``marked`` when an existing warehouse (made before identities) got one now.
    """
    import duckdb

    row = None
    try:
        row = con.execute(f"SELECT warehouse_id, created_at, created_by FROM {SCHEMA}.{TABLE} "
                          "LIMIT 1").fetchone()
    except duckdb.CatalogException:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} (warehouse_id VARCHAR NOT NULL, "
                    "created_at VARCHAR NOT NULL, created_by VARCHAR)")
    marked = row is None
    if row is None:
        row = (uuid.uuid4().hex, format_ts(utc_now()), run_id)
        con.execute(f"INSERT INTO {SCHEMA}.{TABLE} VALUES (?, ?, ?)", list(row))
    report = {"id": row[0], "created_at": row[1], "created_by": row[2], "created": created}
    if marked and not created:
        report["marked"] = True
    return report


def is_duckdb_file(target: Path) -> bool:
    """True when ``target`` starts like a DuckDB database (an empty file does not)."""
    try:
        with open(target, "rb") as f:
            head = f.read(_MAGIC_AT + len(_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_AT:] == _MAGIC


#: what DuckDB says when a file is no database, or a damaged one
_DAMAGE_WORDS = ("not a valid duckdb database", "could not read enough bytes", "corrupt",
                 "checksum", "serialization error")


def damage_of(target: Path, error: BaseException) -> str | None:
    """The damage ``error`` (from opening ``target``) shows, or None when it is something
    else (a lock held by another program, a full disk: not the file's fault)."""
    text = str(error)
    if target.exists() and not is_duckdb_file(target):
        return text or "it is not a DuckDB database file"
    return text if any(w in text.lower() for w in _DAMAGE_WORDS) else None


def look(state_dir: Path, path: str) -> dict[str, Any] | None:
    """What the daemon sees of the warehouse at ``path`` without opening it (a ``stat`` and
    its first bytes): ``{"path", "exists": False}`` when it is gone, ``{"path", "error"}``
    when it is no DuckDB file, None when it looks like one.  (Whether it is the warehouse
    on record, the next load tells from its marker.)"""
    target = absolute(state_dir, path)
    if not target.exists():
        return {"path": path, "exists": False}
    if not is_duckdb_file(target):
        return {"path": path, "error": "it is not a DuckDB database file"}
    return None


def report_of(state_dir: Path, target: Path, identity: Mapping[str, Any] | None = None,
              error: str | None = None) -> dict[str, Any]:
    """What one stage attempt found at ``target`` (recorded in its event's ``warehouses``)."""
    report: dict[str, Any] = {"path": recorded_path(state_dir, target)}
    if error is not None:
        report["error"] = error
    else:
        report.update(identity or {})
    return report


# --------------------------------------------------------------------------- judging


def judge(state_dir: Path, expected: Mapping[str, Any] | None, found: Mapping[str, Any],
          *, by: str) -> Event | None:
    """A ``warehouse.lost`` event when ``found`` is not the warehouse ``expected``; else None.

    ``expected``: :func:`state.queries.warehouse_expectation`: None when the log
    never recorded this warehouse, ``id`` None when the latest record is a loss
    (already alerted: nothing to expect until a load makes a new one).
    ``found``: a report (:func:`report_of`) with ``path`` and ``id`` or
    ``error``, or ``{"path", "exists": False}`` from the daemon's look at the
    file.  ``by`` says who looked ("stage 'load' of run R", "the daemon").
    """
    path = str(found["path"])
    target = absolute(state_dir, path)
    facts = {k: v for k, v in found.items() if k != "path"}
    if found.get("error"):  # not a DuckDB file: a problem whatever the log expects
        if expected is not None and expected.get("id") is None:
            return None
        return lost_event(path, damaged_message(target, str(found["error"]), state_dir),
                          expected, facts, by)
    if expected is None or expected.get("id") is None or found.get("id") == expected["id"]:
        return None
    was = (f"identity {expected['id']}, last recorded by run {expected.get('run_id')} at "
           f"{expected.get('at')}")
    if found.get("exists") is False:
        what = f"the warehouse {target} is gone ({was}): the tables loaded into it are lost"
    elif found.get("created"):
        what = (f"the warehouse {target} was gone ({was}); {by} created an empty one in its "
                "place, so the tables loaded before are lost")
    else:
        made = f"made by run {found.get('created_by')} at {found.get('created_at')}"
        what = (f"the warehouse {target} is not the one on record ({was}): it has identity "
                f"{found.get('id')}, {made}; tables loaded since may be missing")
    return lost_event(path, f"{what}. Reload it: {rebuild_hint(state_dir)}", expected, facts, by)


def lost_event(path: str, message: str, expected: Mapping[str, Any] | None,
               found: Mapping[str, Any], by: str) -> Event:
    """``warehouse.lost``: the raise of alert ``warehouse.lost:<path>`` (error severity)."""
    return new_event(T.WAREHOUSE_LOST, alert_id=alert_id(path), name=ALERT, severity="error",
                     message=message, fields={"path": path, "expected": dict(expected or {}),
                                              "found": dict(found), "detected_by": by,
                                              "fix": "ahgd warehouse rebuild"})


def expectation_of(event_type: str, seq: int, ts: str, run_id: str | None, stage: str | None,
                   payload: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """What one event says the warehouse at ``path`` is, or None if it says nothing.

    A completed attempt that opened it: its identity (``id``, and the ``run_id``,
    ``stage`` and time ``at`` that recorded it).  A ``warehouse.lost``: the
    identity found then, or ``id`` None (gone or unreadable), with ``lost`` True.
    """
    if event_type == T.WAREHOUSE_LOST:
        if payload.get("alert_id") != alert_id(path):
            return None
        found = (payload.get("fields") or {}).get("found") or {}
        return {"id": found.get("id"), "run_id": found.get("created_by"), "stage": None,
                "at": found.get("created_at") or ts, "seq": seq, "lost": True}
    for report in payload.get("warehouses") or ():
        if isinstance(report, Mapping) and report.get("path") == path and report.get("id"):
            return {"id": report["id"], "run_id": run_id, "stage": stage, "at": ts, "seq": seq}
    return None

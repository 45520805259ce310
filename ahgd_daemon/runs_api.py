"""Run history as JSON documents for the HTTP API (``/api/runs``, ``/api/runs/{id}``).

Plain SQL over the projections and the events table, through a read-only
connection opened per request: the HTTP side cannot write even by mistake,
and WAL lets it read while the daemon appends.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from typing import Any, Iterator

MAX_RUNS = 1000
_RUN_COLUMNS = ("run_id", "pipeline", "state", "trigger", "requested_at", "started_at",
                "ended_at", "duration_s", "failed_stage", "error")
_RUNS_SQL = (
    "SELECT run_id, pipeline, state, trigger, requested_at, started_at, ended_at, "
    "ROUND((julianday(ended_at) - julianday(started_at)) * 86400.0, 3), failed_stage, error "
    "FROM runs")
_ATTEMPT_COLUMNS = ("stage", "attempt", "state", "started_at", "ended_at", "duration_s",
                    "error", "rows")


@contextmanager
def connect_ro(path: str) -> Iterator[sqlite3.Connection]:
    """history.db opened read-only for one request (the state layer's ``mode=ro`` open)."""
    from state.db import connect

    conn = connect(path, readonly=True, busy_timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def runs_document(conn: sqlite3.Connection, *, limit: int = 50,
                  pipeline: str | None = None) -> dict[str, Any]:
    """The newest ``limit`` runs (of ``pipeline``), each with every stage attempt."""
    where, params = "", []
    if pipeline:
        where, params = " WHERE pipeline = ?", [pipeline]
    rows = conn.execute(f"{_RUNS_SQL}{where} ORDER BY requested_at DESC, run_id DESC LIMIT ?",
                        [*params, int(limit)]).fetchall()
    runs = [dict(zip(_RUN_COLUMNS, r)) for r in rows]
    attempts = _attempts(conn, [r["run_id"] for r in runs])
    for run in runs:
        run["attempts"] = attempts.get(run["run_id"], [])
    return {"runs": runs}


def run_document(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """One run with its attempts and every event it was made of; None if unknown."""
    row = conn.execute(f"{_RUNS_SQL} WHERE run_id = ?", [run_id]).fetchone()
    if row is None:
        return None
    run = dict(zip(_RUN_COLUMNS, row))
    run["attempts"] = _attempts(conn, [run_id]).get(run_id, [])
    events = [{"seq": seq, "ts": ts, "type": type_, "stage": stage, "attempt": attempt,
               "payload": json.loads(payload)}
              for seq, ts, type_, stage, attempt, payload in conn.execute(
                  "SELECT seq, ts, type, stage, attempt, payload FROM events WHERE run_id = ? "
                  "ORDER BY seq", [run_id])]
    return {"run": run, "events": events}


def _attempts(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(run_ids), 500):  # SQLite's bound-parameter limit
        chunk = run_ids[start:start + 500]
        for row in conn.execute(
                "SELECT run_id, stage, attempt, state, started_at, ended_at, "
                "ROUND(COALESCE(wall_s, (julianday(ended_at) - julianday(started_at)) * 86400.0), 3), "
                "error, rows FROM stage_runs WHERE run_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY run_id, started_at, stage, attempt",
                chunk):
            out.setdefault(row[0], []).append(dict(zip(_ATTEMPT_COLUMNS, row[1:])))
    return out

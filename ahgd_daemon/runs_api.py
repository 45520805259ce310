"""Run history as JSON documents for the HTTP API (``/api/runs``, ``/api/runs/{id}``, and a
run's log lines for ``/api/runs/{id}/log``).

The projections and the events table, read through :mod:`state.queries` on a
read-only connection opened per request: the HTTP side cannot write even by
mistake, and WAL lets it read while the daemon appends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from state import queries

MAX_RUNS = 1000


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
    runs = queries.run_history(conn, pipeline=pipeline, limit=limit, newest_first=True,
                               columns=queries.RUN_SUMMARY_COLUMNS)
    attempts = queries.stage_attempts(conn, [r["run_id"] for r in runs])
    for run in runs:
        run["attempts"] = attempts.get(run["run_id"], [])
    return {"runs": runs}


def run_document(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """One run with its attempts and every event it was made of; None if unknown."""
    run = queries.run_summary(conn, run_id)
    if run is None:
        return None
    run["attempts"] = queries.stage_attempts(conn, [run_id]).get(run_id, [])
    return {"run": run, "events": queries.run_events(conn, run_id)}


#: the most lines ``/api/runs/{id}/log`` returns (the last ones); ``ahgd logs`` has them all
MAX_LOG_LINES = 5000


def run_log(conn: sqlite3.Connection, state_dir: Any, run_id: str,
            stage: str | None = None) -> list[dict[str, Any]] | None:
    """The last :data:`MAX_LOG_LINES` lines of a run's log (``ahgd logs``); None if unknown."""
    from .runlog import RunLogReader

    if queries.run_summary(conn, run_id) is None:
        return None
    return RunLogReader(state_dir, run_id, stage).poll(conn, final=True)[-MAX_LOG_LINES:]

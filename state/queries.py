"""Named questions about the projections (``runs``, ``stage_runs``, the ``run_history`` view).

The layers above ask these instead of writing SQL: each function answers one
rule of the daemon or of a history view, and its docstring says which.  Each
takes the history it reads: an :class:`~state.log.EventLog`, a read-only
:class:`~state.db.ReadOnlyHistory`, or a bare ``sqlite3.Connection`` for the
callers that only hold one (the HTTP API's read-only connection per request).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .db import ReadOnlyHistory
from .events import dumps_payload
from .machine import RunState
from .warehouse import alert_id as warehouse_alert_id, expectation_of


class _Queryable(Protocol):
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...


#: an EventLog, a ReadOnlyHistory, or a plain connection to history.db
History = _Queryable | sqlite3.Connection

#: a run as ``/api/runs`` shows it (the ``run_history`` view's columns, in this order)
RUN_SUMMARY_COLUMNS = ("run_id", "pipeline", "state", "trigger", "requested_at", "started_at",
                       "ended_at", "duration_s", "failed_stage", "error")
#: SQLite's limit on bound parameters, with room to spare
_CHUNK = 500


def _rows(db: History, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of one read-only query, as tuples (or ``sqlite3.Row``, which index alike)."""
    if isinstance(db, sqlite3.Connection):
        return db.execute(sql, list(params)).fetchall()
    return db.query(sql, list(params))


def _dicts(db: History, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of one read-only query, each as a dict in the order of its columns."""
    if isinstance(db, sqlite3.Connection):
        cursor = db.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    return [dict(row) for row in db.query(sql, list(params))]


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


# --------------------------------------------------------------------------- run admission


def pipelines_in_flight(db: History) -> set[str]:
    """Pipelines with a run PENDING or RUNNING: their dependants wait until they have none."""
    states = (RunState.PENDING, RunState.RUNNING)
    return {row[0] for row in _rows(
        db, f"SELECT DISTINCT pipeline FROM runs WHERE state IN ({_placeholders(states)})", states)}


def pending_runs(db: History, pipelines: Sequence[str], limit: int, *,
                 backfill_slots: int | None = None) -> list[tuple[str, str]]:
    """``(run_id, pipeline)`` of the PENDING runs of ``pipelines``, in the order they start:
    the order they were requested in (``requested_seq``), at most ``limit``; of the runs of a
    backfill (trigger ``backfill``), only the first ``backfill_slots`` when given.

    Filtering by pipeline here, not after, means a queue of runs that must wait can never
    hide, behind the limit, the run that would unblock them (nor a long backfill, the runs
    requested after it).
    """
    if not pipelines:
        return []
    # read in order from the partial indexes of the PENDING runs (migrations 0007, 0008), so
    # that the first few cost the same whatever the length of the queue; SQLite would rather
    # take runs_by_state and sort every PENDING run, hence INDEXED BY ('PENDING' is written
    # out: a partial index serves only a query that names its condition)
    if _orders_requests(db):
        order, hint, backfill_hint = ("requested_seq", "INDEXED BY runs_pending ",
                                      "INDEXED BY runs_pending_backfills ")
    else:  # a look (a dry run) at a history an older ahgd wrote, not migrated: its order
        order, hint, backfill_hint = "requested_at, run_id", "", ""
    where, params = "", []
    if backfill_slots is not None:
        where = (f"AND (trigger <> 'backfill' OR run_id IN (SELECT run_id FROM runs "
                 f"{backfill_hint}WHERE state = 'PENDING' AND trigger = 'backfill' AND "
                 f"pipeline IN ({_placeholders(pipelines)}) ORDER BY {order} LIMIT ?)) ")
        params = [*pipelines, max(0, backfill_slots)]
    rows = _rows(
        db, f"SELECT run_id, pipeline FROM runs {hint}WHERE state = 'PENDING' "
            f"AND pipeline IN ({_placeholders(pipelines)}) {where}ORDER BY {order} LIMIT ?",
        [*pipelines, *params, limit])
    return [(row[0], row[1]) for row in rows]


def _orders_requests(db: History) -> bool:
    """Whether ``runs`` has ``requested_seq`` (migration 0008): an EventLog migrates when it
    opens, but a read-only look (a ReadOnlyHistory, a bare connection) may be at a history an
    older ahgd wrote."""
    if not isinstance(db, (sqlite3.Connection, ReadOnlyHistory)):
        return True
    return any(row[1] == "requested_seq" for row in _rows(db, "PRAGMA table_info(runs)"))


def run_state(db: History, run_id: str) -> str | None:
    """The state a run is in now; None for a run the log does not know."""
    rows = _rows(db, "SELECT state FROM runs WHERE run_id = ?", [run_id])
    return rows[0][0] if rows else None


def pending_place(db: History, run_id: str) -> int | None:
    """Where a run is in the order of requests (its ``requested_seq``), if it is PENDING (not
    started, not cancelled); else None."""
    rows = _rows(db, "SELECT requested_seq FROM runs WHERE run_id = ? AND state = ?",
                 [run_id, RunState.PENDING])
    return rows[0][0] if rows else None


def pipelines_with_pending_runs(db: History) -> set[str]:
    """Pipelines with at least one run PENDING (requested, not started): work still to do."""
    return {row[0] for row in _rows(db, "SELECT DISTINCT pipeline FROM runs WHERE state = ?",
                                    [RunState.PENDING])}


# --------------------------------------------------------------------------- upstream triggers


def upstream_completion_covered(db: History, downstream: str, upstream_ended: str) -> bool:
    """Is a run of ``downstream`` already covering an upstream completion at time
    ``upstream_ended``?

    Yes when one started at or after that time (it read the new data), or when one is
    PENDING and has never started (it will read whatever has landed when it starts: such a
    run absorbs every upstream completion before it).  A run that is PENDING again after a
    crash or a clean stop started before: its finished stages may have read the old data,
    so it covers only what ended before its first start.
    """
    return bool(_rows(
        db, "SELECT 1 FROM runs WHERE pipeline = ? AND ((state = ? AND started_at IS NULL) "
            "OR started_at >= ?) LIMIT 1",
        [downstream, RunState.PENDING, upstream_ended]))


def earlier_runs_running(db: History, pipeline: str, run_id: str) -> list[str]:
    """Runs of ``pipeline`` requested before ``run_id`` (by ``requested_seq``) that are
    RUNNING: the run's last stages wait for them, so that loads land in the order the runs
    were asked for.

    Read through the runs' state index (``+r.pipeline`` keeps SQLite off the pipeline's
    index): the RUNNING runs are a handful, while the runs of the pipeline requested before
    this one are its whole history, which this was asked of before every last stage."""
    return [row[0] for row in _rows(
        db, "SELECT r.run_id FROM runs r JOIN runs me ON me.run_id = ? WHERE +r.pipeline = ? "
            "AND r.state = ? AND r.requested_seq < me.requested_seq ORDER BY r.requested_seq",
        [run_id, pipeline, RunState.RUNNING])]


def earlier_runs_in_flight(db: History, pipeline: str, run_id: str,
                           among: list[str]) -> list[str]:
    """Those of the runs ``among`` that are runs of ``pipeline`` requested before ``run_id``
    and are PENDING or RUNNING (runs an executor has taken on, asked about by id)."""
    return [row[0] for row in _rows(
        db, f"SELECT r.run_id FROM runs r JOIN runs me ON me.run_id = ? WHERE r.run_id IN "
            f"({_placeholders(among)}) AND r.pipeline = ? AND r.state IN (?, ?) AND "
            "r.requested_seq < me.requested_seq ORDER BY r.requested_seq",
        [run_id, *among, pipeline, RunState.PENDING, RunState.RUNNING])]


def last_completed_run(db: History, pipeline: str) -> tuple[str, str] | None:
    """``(run_id, ended_at)`` of the run of ``pipeline`` that COMPLETED last; None if none did."""
    rows = _rows(db, "SELECT run_id, ended_at FROM runs WHERE pipeline = ? AND state = ? "
                     "ORDER BY ended_at DESC LIMIT 1", [pipeline, RunState.COMPLETED])
    return (rows[0][0], rows[0][1]) if rows else None


# --------------------------------------------------------------------------- counts


def run_counts_by_state(db: History) -> dict[str, int]:
    """How many runs are in each state (states with no run are absent)."""
    return {row[0]: row[1] for row in _rows(db, "SELECT state, COUNT(*) FROM runs GROUP BY state")}


def pending_run_count(db: History) -> int:
    """How many runs are PENDING: the queue the daemon has yet to start."""
    return _rows(db, "SELECT COUNT(*) FROM runs WHERE state = ?", [RunState.PENDING])[0][0]


# --------------------------------------------------------------------------- recovery


def recorded_output_paths(db: History, run_id: str) -> list[str]:
    """The files of a run's stage attempts that the log recorded as outputs.

    Any other file in the run's data directory belongs to an attempt that never
    completed, and so does not exist.
    """
    paths = []
    for (text,) in _rows(db, "SELECT output FROM stage_runs WHERE run_id = ? "
                             "AND output IS NOT NULL", [run_id]):
        ref = json.loads(text)
        if isinstance(ref, dict) and ref.get("path"):
            paths.append(ref["path"])
    return paths


def running_run_owners(db: History, *, pipeline: str | None = None) -> list[tuple[str, str, Any]]:
    """``(run_id, pipeline, owner)`` of each RUNNING run (of ``pipeline``, if given), oldest
    request first; ``owner`` is what its latest ``run.started`` recorded (``{"pid": ..,
    "host": ..}``, as JSON text), or None.  Whose run lock to look at, to tell a run whose
    owner is gone (``state/orphans.py``)."""
    where, params = ("AND r.pipeline = ? ", [pipeline]) if pipeline else ("", [])
    return [(row[0], row[1], row[2]) for row in _rows(
        db, "SELECT r.run_id, r.pipeline, (SELECT json_extract(e.payload, '$.owner') FROM events "
            "e WHERE e.run_id = r.run_id AND e.type = 'run.started' ORDER BY e.seq DESC LIMIT 1) "
            f"FROM runs r WHERE r.state = ? {where}ORDER BY r.requested_at, r.run_id",
        [RunState.RUNNING, *params])]


# --------------------------------------------------------------------------- a run's own story


def failed_attempts_since_retry(db: History, run_id: str) -> dict[str, int]:
    """Per stage, the attempts that failed or timed out since a human last retried the run
    (``run.retried``), or since it began: what counts against ``retry_attempts``.
    Interrupted attempts (a crash, a shutdown) and attempts that found the disk full
    (``disk_full``: the run waits for room whatever its retries) do not count."""
    since = _rows(db, "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ? AND type = ?",
                  [run_id, "run.retried"])[0][0]
    return {row[0]: row[1] for row in _rows(
        db, "SELECT stage, COUNT(*) FROM events WHERE run_id = ? AND seq > ? AND type IN "
            "('stage.failed', 'stage.timed_out') AND json_extract(payload, '$.disk_full') IS NOT 1 "
            "GROUP BY stage", [run_id, since])}


def run_input_quarantined(db: History, run_id: str) -> bool:
    """Has a copy of the run's input file been put in quarantine for it already?  (A failed
    run's file goes to quarantine once, however often ``ahgd retry`` fails it again.)"""
    return bool(_rows(db, "SELECT 1 FROM events WHERE run_id = ? AND type = 'file.quarantined' "
                          "LIMIT 1", [run_id]))


def retry_waits(db: History, run_id: str) -> list[tuple[str, str, float]]:
    """``(stage, when it was decided, delay in seconds)`` of each ``stage.retrying`` of a
    run, oldest first: when a retry that was waiting is due again after a restart."""
    return [(row[0], row[1], float(row[2] or 0)) for row in _rows(
        db, "SELECT stage, ts, json_extract(payload, '$.delay_s') FROM events WHERE run_id = ? "
            "AND type = 'stage.retrying' ORDER BY seq", [run_id])]


def ended_runs_without_kept_outputs(db: History, pipeline: str) -> list[str]:
    """Runs of ``pipeline`` that ended (COMPLETED, FAILED, CANCELLED) and were started with
    ``keep_outputs: false`` (``enable_checkpoints=False``): their stored outputs may go."""
    states = (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)
    return [row[0] for row in _rows(
        db, f"SELECT run_id FROM runs WHERE pipeline = ? AND state IN ({_placeholders(states)}) "
            "AND json_extract(params, '$.keep_outputs') = 0", [pipeline, *states])]


# --------------------------------------------------------------------------- the warehouse


def _warehouse_needle(path: str) -> str:
    """The text every payload that reports the warehouse at ``path`` contains."""
    return '"path":' + dumps_payload(path)


def warehouse_expectation(db: History, path: str, after: int = 0) -> dict[str, Any] | None:
    """What the log says the warehouse at ``path`` (as ``stage.completed`` names it) is now.

    The identity found by the latest completed attempt that opened it (``id``,
    ``run_id``, ``stage``, ``at``, ``seq``), or, when a ``warehouse.lost`` is
    later, what that one found (``lost`` True; ``id`` None if nothing); None
    when the log never recorded it (or not after event ``after``: a caller that
    asked before reads only what is new).  Reads the log backwards and stops at
    the first event about it, so asking is cheap wherever loads are frequent.
    """
    needle, alert, before = _warehouse_needle(path), warehouse_alert_id(path), None
    while True:
        rows = _rows(
            db, "SELECT seq, ts, run_id, stage, type, payload FROM events WHERE "
                "((type = 'stage.completed' AND instr(payload, ?) > 0) OR (type = "
                "'warehouse.lost' AND json_extract(payload, '$.alert_id') = ?)) AND seq < ? "
                "AND seq > ? ORDER BY seq DESC LIMIT 50",
            [needle, alert, 2 ** 62 if before is None else before, after])
        if not rows:
            return None
        for seq, ts, run_id, stage, type_, payload in rows:
            said = expectation_of(type_, seq, ts, run_id, stage, json.loads(payload), path)
            if said is not None:
                return said
        before = rows[-1][0]


def warehouse_loads(db: History, path: str) -> list[dict[str, Any]]:
    """The COMPLETED runs with a completed attempt that opened the warehouse at ``path``,
    oldest completion first: ``{run_id, pipeline, trigger, ended_at, input_file,
    input_sha256, original_name}``.  What ``ahgd warehouse rebuild`` runs again."""
    needle = _warehouse_needle(path)
    opened = {row[0] for row in _rows(
        db, "SELECT run_id, stage, detail FROM stage_runs WHERE state = 'COMPLETED' AND "
            "instr(detail, ?) > 0", [needle])
        if expectation_of("stage.completed", 0, "", row[0], row[1], json.loads(row[2]), path)}
    return [row for row in completed_runs(db) if row["run_id"] in opened]


def completed_runs(db: History, pipeline: str | None = None) -> list[dict[str, Any]]:
    """The COMPLETED runs (of ``pipeline``, if given), oldest completion first, each with
    its input file: ``{run_id, pipeline, trigger, ended_at, input_file, input_sha256,
    original_name}``."""
    where, params = ("AND pipeline = ? ", [pipeline]) if pipeline else ("", [])
    return _dicts(db, "SELECT run_id, pipeline, trigger, ended_at, json_extract(params, "
                      "'$.input_file') AS input_file, json_extract(params, '$.input_sha256') AS "
                      "input_sha256, json_extract(params, '$.original_name') AS original_name "
                      f"FROM runs WHERE state = ? {where}ORDER BY ended_at, run_id",
                  [RunState.COMPLETED, *params])


def last_clean_completion(db: History, pipeline: str) -> str | None:
    """When the latest completed run of ``pipeline`` that rejected no row ended (no attempt
    of it moved rows aside with ``quarantine: true``); None if there is none.  Such a run
    resolves the ``pipeline.rows_rejected`` alert."""
    rows = _rows(db, "SELECT MAX(r.ended_at) FROM runs r WHERE r.pipeline = ? AND r.state = "
                     "'COMPLETED' AND NOT EXISTS (SELECT 1 FROM stage_runs s WHERE s.run_id = "
                     "r.run_id AND s.attempt > 0 AND json_extract(s.detail, "
                     "'$.validation.rejected') > 0)", [pipeline])
    return rows[0][0] if rows else None


def alert_state(db: History, alert_id: str) -> str | None:
    """``FIRING`` or ``RESOLVED`` for an alert the log knows; None for one never raised."""
    rows = _rows(db, "SELECT state FROM alerts WHERE alert_id = ?", [alert_id])
    return rows[0][0] if rows else None


# --------------------------------------------------------------------------- history


def run_history(db: History, *, pipeline: str | None = None, limit: int | None = None,
                newest_first: bool = False, columns: Sequence[str] | None = None,
                state: str | None = None, trigger: str | None = None,
                since: str | None = None) -> list[dict[str, Any]]:
    """Rows of the ``run_history`` view (every column, or ``columns``), by time of request
    (ties by run id): oldest first, or ``newest_first``; only runs of ``pipeline``, in
    ``state``, started by ``trigger``, or requested at or after ``since`` (a timestamp, or
    a date: its start) when given; at most ``limit``."""
    select = ", ".join(columns) if columns else "*"
    filters = [(f"{column} {op} ?", value) for column, op, value in (
        ("pipeline", "=", pipeline), ("state", "=", state), ("trigger", "=", trigger),
        ("requested_at", ">=", since)) if value is not None]
    where = ("WHERE " + " AND ".join(f for f, _ in filters) + " ") if filters else ""
    params: list[Any] = [v for _, v in filters]
    order = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {select} FROM run_history {where}"
           f"ORDER BY requested_at {order}, run_id {order}")
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return _dicts(db, sql, params)


def pipelines_with_runs(db: History) -> list[str]:
    """The pipelines the history has runs of, by name (``ahgd history --pipeline`` checks
    the name it is given against them)."""
    return [r[0] for r in _rows(db, "SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")]


def has_events(db: History, run_id: str) -> bool:
    """Whether any event carries ``run_id`` (a run's, or an orchestration's id)."""
    return bool(_rows(db, "SELECT 1 FROM events WHERE run_id = ? LIMIT 1", [run_id]))


def recent_run_ids(db: History, limit: int = 1000) -> list[str]:
    """The ids of the newest ``limit`` runs (by time of request): the candidates of a "did
    you mean" for a run id that is not there."""
    return [r[0] for r in _rows(db, "SELECT run_id FROM runs ORDER BY requested_at DESC, "
                                    "run_id DESC LIMIT ?", [int(limit)])]


def run_summary(db: History, run_id: str) -> dict[str, Any] | None:
    """One run as ``/api/runs`` shows it (:data:`RUN_SUMMARY_COLUMNS`); None if unknown."""
    rows = _dicts(db, f"SELECT {', '.join(RUN_SUMMARY_COLUMNS)} FROM run_history "
                      "WHERE run_id = ?", [run_id])
    return rows[0] if rows else None


def stage_attempts(db: History, run_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every stage attempt of each run, in the order they started (then by stage and attempt
    number): run_id -> ``[{stage, attempt, state, started_at, ended_at, duration_s, error,
    rows}]``.  ``duration_s`` is the attempt's measured wall time when it has one."""
    run_ids = list(run_ids)
    out: dict[str, list[dict[str, Any]]] = {}
    for start in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[start:start + _CHUNK]
        for row in _dicts(
                db, "SELECT run_id, stage, attempt, state, started_at, ended_at, "
                    "ROUND(COALESCE(wall_s, (julianday(ended_at) - julianday(started_at)) "
                    "* 86400.0), 3) AS duration_s, error, rows FROM stage_runs WHERE run_id IN "
                    f"({_placeholders(chunk)}) ORDER BY run_id, started_at, stage, attempt",
                chunk):
            out.setdefault(row.pop("run_id"), []).append(row)
    return out


def run_events(db: History, run_id: str) -> list[dict[str, Any]]:
    """Every event of one run, oldest first: ``{seq, ts, type, stage, attempt, payload}``."""
    events = _dicts(db, "SELECT seq, ts, type, stage, attempt, payload FROM events "
                        "WHERE run_id = ? ORDER BY seq", [run_id])
    for event in events:
        event["payload"] = json.loads(event["payload"])
    return events

"""Named questions for operating ahgd day to day: paused pipelines and their skipped ticks,
backfills, the last run of each pipeline, one run in full, what a file's bytes became.

Like :mod:`state.queries` (whose helpers these share), each function answers one question
the commands above ask (``ahgd pause``, ``ahgd pipelines``, ``ahgd backfill``, ``ahgd runs
show``, ``ahgd daemon --dry-run`` ...), so no layer above writes SQL on the projections.
Each takes an :class:`~state.log.EventLog`, a :class:`~state.db.ReadOnlyHistory` or a bare
``sqlite3.Connection``.
"""

from __future__ import annotations

import json
from typing import Any

from .events import PIPELINE_ID_PREFIX
from .machine import RunState
from .projections import pipeline_record
from .queries import History, _dicts, _rows

#: the run_id range of ``pipeline.*`` events: every id that starts with the prefix
_PREFIX_RANGE = [PIPELINE_ID_PREFIX, PIPELINE_ID_PREFIX[:-1] + chr(ord(PIPELINE_ID_PREFIX[-1]) + 1)]


# --------------------------------------------------------------------------- paused pipelines


def pipeline_pauses(db: History) -> dict[str, dict[str, Any]]:
    """The pipelines paused now, by name: ``{reason, by, since, seq}`` (``by``: who paused
    it, ``{user, uid, pid, host}``; ``since``: when; ``seq``: the ``pipeline.paused``
    event).  Read through the events' run_id index: cheap enough for every turn of the
    daemon's loop."""
    out: dict[str, dict[str, Any]] = {}
    for run_id, type_, ts, payload, seq in _rows(
            db, "SELECT run_id, type, ts, payload, seq FROM events WHERE seq IN (SELECT MAX(seq) "
                "FROM events WHERE run_id >= ? AND run_id < ? AND type IN ('pipeline.paused', "
                "'pipeline.resumed') GROUP BY run_id)", _PREFIX_RANGE):
        record = pipeline_record(run_id[len(PIPELINE_ID_PREFIX):], type_, ts, payload, seq)
        if record.state == "PAUSED":
            out[record.pipeline] = {"reason": record.reason, "by": record.by,
                                    "since": record.since, "seq": record.seq}
    return out


def skipped_ticks(db: History, pipeline: str, after_seq: int) -> list[tuple[str, str]]:
    """``(trigger, fire_time)`` of each tick of ``pipeline``'s schedules recorded skipped
    (``schedule.skipped``: it came while the pipeline was paused) after event
    ``after_seq``, oldest first: what its misfire policy chooses from on ``ahgd resume``."""
    return [(row[0], row[1]) for row in _rows(
        db, "SELECT json_extract(payload, '$.trigger'), json_extract(payload, '$.fire_time') "
            "FROM events WHERE type = 'schedule.skipped' AND seq > ? AND "
            "json_extract(payload, '$.pipeline') = ? ORDER BY seq", [after_seq, pipeline])]


# --------------------------------------------------------------------------- pipelines


def known_pipelines(db: History) -> list[str]:
    """Every pipeline the history names (runs, files, schedules, pauses), by name: what a
    command that works without the configuration checks a pipeline name against."""
    return [row[0] for row in _rows(
        db, "SELECT pipeline FROM runs UNION SELECT pipeline FROM files UNION SELECT pipeline "
            "FROM schedules UNION SELECT substr(run_id, ?) FROM events WHERE run_id >= ? AND "
            "run_id < ? ORDER BY 1", [len(PIPELINE_ID_PREFIX) + 1, *_PREFIX_RANGE])]


def last_runs(db: History) -> dict[str, dict[str, Any]]:
    """The latest run of each pipeline (by time of request): pipeline -> ``{run_id, state,
    trigger, requested_at, ended_at}``."""
    return {row["pipeline"]: row for row in _dicts(
        db, "SELECT r.pipeline, r.run_id, r.state, r.trigger, r.requested_at, r.ended_at FROM "
            "runs r WHERE r.run_id = (SELECT x.run_id FROM runs x WHERE x.pipeline = r.pipeline "
            "ORDER BY x.requested_at DESC, x.run_id DESC LIMIT 1)")}


def last_fire_time(db: History, pipeline: str, trigger: str) -> str | None:
    """When a schedule trigger of ``pipeline`` last fired (its latest tick); None if never."""
    rows = _rows(db, "SELECT last_fire_time FROM schedules WHERE pipeline = ? AND trigger = ?",
                 [pipeline, trigger])
    return rows[0][0] if rows else None


def run_triggers(db: History) -> list[str]:
    """The triggers the history's runs were started by (``manual``, ``drop_folder`` ...)."""
    return [row[0] for row in _rows(db, "SELECT DISTINCT trigger FROM runs ORDER BY 1")]


def file_bytes(db: History, pipeline: str, sha256: str) -> dict[str, Any] | None:
    """What the history says about these bytes of ``pipeline`` (a ``files`` row: ``state``
    ARRIVED, QUARANTINED, RELEASED ..., ``run_id``, ``name``); None if they never came."""
    rows = _dicts(db, "SELECT state, run_id, name, first_seen, last_seen FROM files WHERE "
                      "pipeline = ? AND sha256 = ?", [pipeline, sha256])
    return rows[0] if rows else None


# --------------------------------------------------------------------------- backfills


def backfill_runs(db: History, backfill_id: str) -> list[dict[str, Any]]:
    """The runs a backfill requested (``params.backfill``), oldest tick first:
    ``{run_id, state, fire_time}``."""
    return _dicts(db, "SELECT run_id, state, json_extract(params, '$.fire_time') AS fire_time "
                      "FROM runs WHERE trigger = 'backfill' AND json_extract(params, "
                      "'$.backfill') = ? ORDER BY fire_time, run_id", [backfill_id])


def backfill_ids(db: History) -> list[str]:
    """The ids of the backfills the history has runs of (for a "did you mean")."""
    return [row[0] for row in _rows(
        db, "SELECT DISTINCT json_extract(params, '$.backfill') FROM runs WHERE trigger = "
            "'backfill' ORDER BY 1") if row[0]]


def existing_runs(db: History, run_ids: list[str]) -> dict[str, str]:
    """run_id -> state, for those of ``run_ids`` the history has (a backfill's ticks that
    ran already, by their schedule or an earlier backfill)."""
    out: dict[str, str] = {}
    for start in range(0, len(run_ids), 500):
        chunk = run_ids[start:start + 500]
        out.update({row[0]: row[1] for row in _rows(
            db, f"SELECT run_id, state FROM runs WHERE run_id IN ({', '.join('?' * len(chunk))})",
            chunk)})
    return out


def running_backfill_count(db: History) -> int:
    """How many backfill runs are RUNNING: at most ``max_workers`` of them run at once."""
    return _rows(db, "SELECT COUNT(*) FROM runs WHERE state = ? AND trigger = 'backfill'",
                 [RunState.RUNNING])[0][0]


# --------------------------------------------------------------------------- one run in full


def run_in_full(db: History, run_id: str) -> dict[str, Any] | None:
    """One run as ``ahgd runs show`` shows it: its ``run_history`` row with ``params``
    decoded, and ``attempts``: every stage attempt in the order they started, each with
    its figures and ``detail`` (the payload of the attempt's latest event, decoded: its
    output, error, traceback ...).  None for a run the history does not have."""
    runs = _dicts(db, "SELECT h.*, r.params, r.stages FROM run_history h JOIN runs r ON "
                      "r.run_id = h.run_id WHERE h.run_id = ?", [run_id])
    if not runs:
        return None
    run = runs[0]
    run["params"] = json.loads(run["params"])
    run["stages"] = json.loads(run["stages"])
    run["attempts"] = _dicts(
        db, "SELECT stage, attempt, state, started_at, ended_at, ROUND(COALESCE(wall_s, "
            "(julianday(ended_at) - julianday(started_at)) * 86400.0), 3) AS duration_s, rows, "
            "cpu_s, peak_rss_mb, json_extract(detail, '$.validation.rejected') AS rows_rejected, "
            "error, detail FROM stage_runs WHERE run_id = ? ORDER BY started_at IS NULL, "
            "started_at, stage, attempt", [run_id])
    for attempt in run["attempts"]:
        attempt["detail"] = json.loads(attempt["detail"] or "{}")
    return run


def run_events_after(db: History, run_id: str, after: int = 0) -> list[dict[str, Any]]:
    """The events of one run after event ``after``, oldest first: ``{seq, ts, type, stage,
    attempt, payload}`` (decoded): what a run's log adds when its file lacks them."""
    events = _dicts(db, "SELECT seq, ts, type, stage, attempt, payload FROM events WHERE "
                        "run_id = ? AND seq > ? ORDER BY seq", [run_id, after])
    for event in events:
        event["payload"] = json.loads(event["payload"])
    return events

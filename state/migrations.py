"""Ordered, named schema migrations of the history database.

Each step runs in its own transaction together with its bookkeeping row in
``schema_migrations``, so a failing step leaves the version where it was.
Opening a database written by a newer ahgd (a version this list does not
know) is refused.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Callable, NamedTuple, Sequence

from .db import write_transaction
from .errors import MigrationFailed, SchemaTooNew
from .timestamps import format_ts, utc_now


class Migration(NamedTuple):
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _sql(script: str) -> Callable[[sqlite3.Connection], None]:
    statements = [s.strip() for s in script.split(";\n") if s.strip()]

    def run(conn: sqlite3.Connection) -> None:
        for stmt in statements:
            conn.execute(stmt)

    return run


_APPEND_ONLY = "events is append-only: {op} is refused (the event log is the source of truth; append a new event instead)"

INITIAL = f"""
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    run_id TEXT,
    stage TEXT,
    attempt INTEGER,
    type TEXT NOT NULL,
    payload TEXT NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT
);
CREATE UNIQUE INDEX events_idempotency_key ON events(idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_by_run ON events(run_id, seq);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY.format(op="UPDATE")}'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY.format(op="DELETE")}'); END;
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    trigger TEXT NOT NULL,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    stages TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    error TEXT,
    failed_stage TEXT,
    recoveries INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE INDEX runs_by_pipeline ON runs(pipeline, requested_at);
CREATE INDEX runs_by_state ON runs(state);
CREATE TABLE stage_runs (
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    error TEXT,
    detail TEXT NOT NULL,
    rows INTEGER GENERATED ALWAYS AS (json_extract(detail, '$.rows')) VIRTUAL,
    cpu_s REAL GENERATED ALWAYS AS (json_extract(detail, '$.cpu_s')) VIRTUAL,
    wall_s REAL GENERATED ALWAYS AS (json_extract(detail, '$.wall_s')) VIRTUAL,
    peak_rss_mb REAL GENERATED ALWAYS AS (json_extract(detail, '$.peak_rss_mb')) VIRTUAL,
    output TEXT GENERATED ALWAYS AS (json_extract(detail, '$.output')) VIRTUAL,
    PRIMARY KEY (run_id, stage, attempt)
) WITHOUT ROWID;
CREATE TABLE files (
    pipeline TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER,
    stored_path TEXT,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    run_id TEXT,
    duplicates INTEGER NOT NULL,
    reason TEXT,
    PRIMARY KEY (pipeline, sha256)
) WITHOUT ROWID;
CREATE TABLE schedules (
    pipeline TEXT NOT NULL,
    trigger TEXT NOT NULL,
    last_fire_time TEXT NOT NULL,
    fired INTEGER NOT NULL,
    last_run_id TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, trigger)
) WITHOUT ROWID;
CREATE TABLE orchestrations (
    orch_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    planned TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    error TEXT,
    last_seq INTEGER NOT NULL
);
CREATE TABLE orchestration_pipelines (
    orch_id TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT,
    reason TEXT,
    started_at TEXT,
    ended_at TEXT,
    PRIMARY KEY (orch_id, pipeline)
) WITHOUT ROWID;
CREATE VIEW run_history AS
SELECT run_id, pipeline, trigger, state, started_at, ended_at,
       ROUND((julianday(ended_at) - julianday(started_at)) * 86400.0, 3) AS duration_s,
       error,
       requested_at, failed_stage, recoveries, retries,
       json_extract(params, '$.input_file') AS input_file,
       json_extract(params, '$.input_sha256') AS input_sha256
FROM runs;
CREATE VIEW stage_timings AS
SELECT s.run_id, r.pipeline, s.stage, s.attempt, s.state, s.started_at, s.ended_at,
       ROUND((julianday(s.ended_at) - julianday(s.started_at)) * 86400.0, 3) AS duration_s,
       s.error, s.rows, s.wall_s, s.cpu_s, s.peak_rss_mb
FROM stage_runs s JOIN runs r ON r.run_id = s.run_id;
CREATE VIEW failures AS
SELECT 'run' AS kind, run_id, pipeline, failed_stage AS stage, NULL AS attempt, state,
       ended_at AS failed_at, error
FROM runs WHERE state IN ('FAILED', 'PARKED')
UNION ALL
SELECT 'stage' AS kind, s.run_id, r.pipeline, s.stage, s.attempt, s.state,
       s.ended_at AS failed_at, s.error
FROM stage_runs s JOIN runs r ON r.run_id = s.run_id
WHERE s.state IN ('FAILED', 'TIMED_OUT');
CREATE VIEW orchestration_history AS
SELECT o.orch_id, o.name, o.state AS orchestration_state, p.position, p.pipeline,
       p.state, p.run_id, p.reason, p.started_at, p.ended_at
FROM orchestrations o JOIN orchestration_pipelines p ON p.orch_id = o.orch_id
"""

ALERTS = """
CREATE TABLE alerts (
    alert_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    fields TEXT NOT NULL,
    run_id TEXT,
    raised_at TEXT NOT NULL,
    resolved_at TEXT,
    resolution TEXT,
    times_raised INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX alerts_by_state ON alerts(state, raised_at);
CREATE VIEW open_alerts AS
SELECT alert_id, name, severity, message, raised_at, run_id, fields
FROM alerts WHERE state = 'FIRING'
"""

#: The views as of 0004.  ``run_history.duration_s`` is the time the run spent running, the
#: sum of its executions (each from a ``run.started`` to the event that ended it: completed,
#: failed, cancelled, suspended, or, after a crash, the last event recorded before it), no
#: longer ``ended_at - started_at``, which counted the hours a run sat FAILED before ``ahgd
#: retry`` and the time a daemon was down.  ``started_at`` stays the first start;
#: ``last_started_at`` (added) is the start of the latest execution.
#: ``stage_timings.rows_rejected`` (added): the rows an attempt's validation rules moved to
#: ``<stage>_rejected`` (``quarantine: true``).
_EXECUTION_END = """(SELECT CASE WHEN e.type IN ('run.recovered', 'run.parked')
            THEN (SELECT MAX(b.ts) FROM events b WHERE b.run_id = s.run_id AND b.seq >= s.seq
                  AND b.seq < e.seq AND b.type <> 'stage.interrupted')
            ELSE e.ts END
     FROM events e WHERE e.run_id = s.run_id AND e.seq > s.seq
       AND e.type IN ('run.completed', 'run.failed', 'run.cancelled', 'run.suspended',
                      'run.recovered', 'run.parked')
     ORDER BY e.seq LIMIT 1)"""
VIEWS_0004 = f"""
DROP VIEW run_history;
CREATE VIEW run_history AS
SELECT run_id, pipeline, trigger, state, started_at, ended_at,
       CASE WHEN ended_at IS NOT NULL AND started_at IS NOT NULL THEN
           (SELECT ROUND(SUM(julianday({_EXECUTION_END}) - julianday(s.ts)) * 86400.0, 3)
            FROM events s WHERE s.run_id = runs.run_id AND s.type = 'run.started')
       END AS duration_s,
       error,
       requested_at, failed_stage, recoveries, retries,
       json_extract(params, '$.input_file') AS input_file,
       json_extract(params, '$.input_sha256') AS input_sha256,
       (SELECT MAX(s.ts) FROM events s WHERE s.run_id = runs.run_id
        AND s.type = 'run.started') AS last_started_at
FROM runs;
DROP VIEW stage_timings;
CREATE VIEW stage_timings AS
SELECT s.run_id, r.pipeline, s.stage, s.attempt, s.state, s.started_at, s.ended_at,
       ROUND((julianday(s.ended_at) - julianday(s.started_at)) * 86400.0, 3) AS duration_s,
       s.error, s.rows, s.wall_s, s.cpu_s, s.peak_rss_mb,
       json_extract(s.detail, '$.validation.rejected') AS rows_rejected
FROM stage_runs s JOIN runs r ON r.run_id = s.run_id
"""

#: Retention (0005).  ``removals``: every file and folder ``ahgd gc`` or the daemon's
#: collection removed (``data.expired``, ``file.expired``), with why and how many bytes.  The
#: partial indexes cost nothing for other events; they answer "was this path removed, when?"
#: (a retry or resume refused, naming it), "when was this file set aside?" (its age), and
#: "which runs read this input?" without scanning the log.
_REMOVED = "type IN ('data.expired', 'file.expired')"
RETENTION_0005 = f"""
CREATE INDEX events_removed_path ON events(json_extract(payload, '$.path')) WHERE {_REMOVED};
CREATE INDEX events_removals ON events(seq) WHERE {_REMOVED};
CREATE INDEX events_quarantined_path ON events(json_extract(payload, '$.path'))
    WHERE type = 'file.quarantined';
CREATE INDEX events_duplicate_moved_to ON events(json_extract(payload, '$.moved_to'))
    WHERE type = 'file.duplicate';
CREATE INDEX runs_by_input ON runs(json_extract(params, '$.input_sha256'), pipeline);
CREATE VIEW removals AS
SELECT seq, ts, type, run_id,
       json_extract(payload, '$.area') AS area,
       json_extract(payload, '$.path') AS path,
       json_extract(payload, '$.pipeline') AS pipeline,
       json_extract(payload, '$.files') AS files,
       json_extract(payload, '$.bytes') AS bytes,
       json_extract(payload, '$.rule') AS rule,
       json_extract(payload, '$.reason') AS reason,
       json_extract(payload, '$.collection') AS collection
FROM events WHERE {_REMOVED}
"""

#: ``stage_timings.host`` (0006): the machine that ran the attempt, from its payload (the
#: daemon's host, or the Dask worker's; NULL for attempts recorded before)
STAGE_HOST_0006 = """
DROP VIEW stage_timings;
CREATE VIEW stage_timings AS
SELECT s.run_id, r.pipeline, s.stage, s.attempt, s.state, s.started_at, s.ended_at,
       ROUND((julianday(s.ended_at) - julianday(s.started_at)) * 86400.0, 3) AS duration_s,
       s.error, s.rows, s.wall_s, s.cpu_s, s.peak_rss_mb,
       json_extract(s.detail, '$.validation.rejected') AS rows_rejected,
       json_extract(s.detail, '$.host') AS host
FROM stage_runs s JOIN runs r ON r.run_id = s.run_id
"""

#: the PENDING runs in the order they start (0007): the daemon asks for the first few before
#: it starts runs, and through ``runs_by_state`` it read and sorted every PENDING run for
#: them (a burst of 1,000 files: ~0.3-0.45 ms a question, more the longer the queue).  Partial
#: indexes: only the PENDING rows are in them (a run leaves when it starts).
PENDING_0007 = """
CREATE INDEX runs_pending ON runs(requested_at, run_id) WHERE state = 'PENDING';
CREATE INDEX runs_pending_backfills ON runs(requested_at, run_id)
    WHERE state = 'PENDING' AND trigger = 'backfill';
"""

#: the order runs were asked for (0008): the seq of each run's run.requested event.  Ordered by
#: (requested_at, run_id) before, runs requested in one commit (a burst's files claimed
#: together share its timestamp) started and loaded in the order of their run ids (a file
#: run's id begins with its content hash), not the order their files came in
REQUESTED_SEQ_0008 = """
ALTER TABLE runs ADD COLUMN requested_seq INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET requested_seq = COALESCE((SELECT MIN(e.seq) FROM events e
    WHERE e.run_id = runs.run_id AND e.type = 'run.requested'), last_seq);
DROP INDEX runs_pending;
DROP INDEX runs_pending_backfills;
CREATE INDEX runs_pending ON runs(requested_seq) WHERE state = 'PENDING';
CREATE INDEX runs_pending_backfills ON runs(requested_seq)
    WHERE state = 'PENDING' AND trigger = 'backfill';
"""

#: the schedules as their own fires leave them (0009): a backfill's ticks were folded as the
#: schedule's fires, so the daemon caught up every tick from a backfill's end until now (its
#: fold now leaves them out, state/folds.py apply_schedule); a history written before is
#: folded again here, as `ahgd state rebuild` would
_OWN_FIRES = """e.type = 'schedule.fired' AND json_extract(e.payload, '$.backfill') IS NULL
    AND json_extract(e.payload, '$.pipeline') = schedules.pipeline
    AND json_extract(e.payload, '$.trigger') = schedules.trigger"""
SCHEDULE_FIRES_0009 = f"""
UPDATE schedules SET fired = (SELECT COUNT(*) FROM events e WHERE {_OWN_FIRES});
DELETE FROM schedules WHERE fired = 0;
UPDATE schedules SET
    last_fire_time = (SELECT MAX(json_extract(e.payload, '$.fire_time')) FROM events e
                      WHERE {_OWN_FIRES}),
    last_run_id = (SELECT e.run_id FROM events e WHERE {_OWN_FIRES} ORDER BY e.seq DESC LIMIT 1),
    updated_at = (SELECT e.ts FROM events e WHERE {_OWN_FIRES} ORDER BY e.seq DESC LIMIT 1);
"""

#: The schema, in order.  Append new steps; never edit or reorder released ones.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_initial_event_log", _sql(INITIAL)),
    Migration("0002_alerts", _sql(ALERTS)),
    # newest runs first (/api/runs, ahgd history) without sorting the whole table
    Migration("0003_runs_by_time", _sql("CREATE INDEX runs_by_time ON runs(requested_at, run_id)")),
    # run_history.duration_s: the time spent running; last_started_at; rows_rejected
    Migration("0004_running_time_and_rejected_rows", _sql(VIEWS_0004)),
    # retention: the removals view, and the indexes its questions need
    Migration("0005_retention", _sql(RETENTION_0005)),
    # stage_timings.host: the machine that ran each attempt (a Dask worker's, or this one)
    Migration("0006_stage_host", _sql(STAGE_HOST_0006)),
    # the PENDING runs in the order they start, for the daemon's admission (pending_runs)
    Migration("0007_pending_runs", _sql(PENDING_0007)),
    # runs.requested_seq: the order runs were asked for, also among runs asked for in one
    # commit; admission and the order of loads go by it
    Migration("0008_requested_seq", _sql(REQUESTED_SEQ_0008)),
    # schedules: a backfill's ticks are not the schedule's own fires (folded again)
    Migration("0009_schedule_own_fires", _sql(SCHEDULE_FIRES_0009)),
)


def _ensure_bookkeeping(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def current_version(conn: sqlite3.Connection) -> tuple[int, str | None]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ).fetchone()
    if not exists:
        return 0, None
    row = conn.execute(
        "SELECT version, name FROM schema_migrations ORDER BY version DESC LIMIT 1"
    ).fetchone()
    return (row[0], row[1]) if row else (0, None)


def migrate(
    conn: sqlite3.Connection,
    path: str | os.PathLike[str],
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    busy_timeout: float = 60.0,
) -> int:
    """Bring the database at ``path`` up to ``len(migrations)``; return the version."""
    version, name = current_version(conn)
    known = len(migrations)
    if version > known:
        newest = migrations[-1].name if migrations else "none"
        raise SchemaTooNew(
            f"{path} has schema version {version} ({name}), written by a newer ahgd; this "
            f"ahgd knows versions up to {known} ({newest}). Upgrade ahgd-daemon, or point "
            "--state-dir at another directory"
        )
    if version and migrations[version - 1].name != name:
        raise SchemaTooNew(
            f"{path} is at schema version {version} named {name!r}, but this ahgd calls that "
            f"version {migrations[version - 1].name!r}; it was written by a different build. "
            "Use the ahgd that created it, or another --state-dir"
        )
    for number in range(version + 1, known + 1):
        step = migrations[number - 1]
        try:
            with write_transaction(conn, path, busy_timeout=busy_timeout, op=f"migration {step.name}"):
                # another process may have migrated while we waited for the lock
                now_version, _ = current_version(conn)
                if now_version >= number:
                    continue
                _ensure_bookkeeping(conn)
                step.apply(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (number, step.name, format_ts(utc_now())),
                )
        except sqlite3.Error as exc:
            raise MigrationFailed(
                f"migration {number} ({step.name}) of {path} failed: {exc}; the database "
                f"stays at version {number - 1}. Report this with the output of `ahgd state check`"
            ) from exc
    return known

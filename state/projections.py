"""Projection tables: aggregates <-> rows.

The storage side of the fold.  It knows rows and aggregates, not pipelines:
``load_*_txn`` read the aggregate an event addresses, ``save_txn`` writes what
changed, and ``Projector`` folds a whole event stream into the rows a rebuild
inserts (and ``check`` compares).  Functions ending in ``_txn`` run inside the
caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable, Sequence

from .aggregates import PipelineRecord, Refusal, Removal
from .events import PIPELINE_ID_PREFIX, Event, dumps_payload
from .machine import (
    Aggregate,
    AlertRecord,
    Attempt,
    FileRecord,
    Key,
    RAW_ONLY_TYPES,
    STAGE_TYPES,
    Orchestration,
    OrchPipeline,
    Run,
    ScheduleRecord,
    aggregate_key,
    apply,
    apply_stage,
)

TABLES = ("runs", "stage_runs", "files", "schedules", "orchestrations", "orchestration_pipelines",
          "alerts")

def dumps(value: Any) -> str:
    """The JSON text of a value, as the event log writes payloads (compact, order kept)."""
    if type(value) is dict and not value:  # a stage.started's: no encoder call
        return "{}"
    return dumps_payload(value)


# --------------------------------------------------------------------------
# rows

RUN_COLUMNS = (
    "run_id", "pipeline", "trigger", "state", "params", "stages", "requested_at",
    "started_at", "ended_at", "error", "failed_stage", "recoveries", "retries", "last_seq",
    "requested_seq",
)
STAGE_COLUMNS = Attempt._fields  # rows, cpu_s, output, ... are generated from detail
FILE_COLUMNS = FileRecord._fields
SCHEDULE_COLUMNS = ScheduleRecord._fields
ORCH_COLUMNS = ("orch_id", "name", "state", "planned", "started_at", "ended_at", "error", "last_seq")
ORCH_PIPELINE_COLUMNS = (
    "orch_id", "pipeline", "position", "state", "run_id", "reason", "started_at", "ended_at",
)
ALERT_COLUMNS = AlertRecord._fields

PRIMARY_KEYS = {
    "runs": ("run_id",),
    "stage_runs": ("run_id", "stage", "attempt"),
    "files": ("pipeline", "sha256"),
    "schedules": ("pipeline", "trigger"),
    "orchestrations": ("orch_id",),
    "orchestration_pipelines": ("orch_id", "pipeline"),
    "alerts": ("alert_id",),
}
COLUMNS = {
    "runs": RUN_COLUMNS,
    "stage_runs": STAGE_COLUMNS,
    "files": FILE_COLUMNS,
    "schedules": SCHEDULE_COLUMNS,
    "orchestrations": ORCH_COLUMNS,
    "orchestration_pipelines": ORCH_PIPELINE_COLUMNS,
    "alerts": ALERT_COLUMNS,
}


def _insert_sql(table: str) -> str:
    cols = COLUMNS[table]
    return f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


INSERT = {t: _insert_sql(t) for t in TABLES}
#: plain INSERT for tables known to be empty (rebuild)
INSERT_NEW = {t: _insert_sql(t).replace("INSERT OR REPLACE", "INSERT", 1) for t in TABLES}


_STAGES_JSON: dict[tuple[str, ...], str] = {}


def _stages_json(stages: tuple[str, ...]) -> str:
    """A pipeline's stage list is the same for all its runs: encode it once."""
    text = _STAGES_JSON.get(stages)
    if text is None:
        if len(_STAGES_JSON) > 4096:
            _STAGES_JSON.clear()
        text = _STAGES_JSON[stages] = dumps(list(stages))
    return text


def run_row(r: Run) -> tuple:
    return (
        r.run_id, r.pipeline, r.trigger, r.state, dumps(r.params), _stages_json(r.stages),
        r.requested_at, r.started_at, r.ended_at, r.error, r.failed_stage, r.recoveries,
        r.retries, r.last_seq, r.requested_seq,
    )


def attempt_row(a: Attempt) -> tuple:
    return tuple(a)


def orch_row(o: Orchestration) -> tuple:
    return (o.orch_id, o.name, o.state, dumps(list(o.planned)), o.started_at, o.ended_at,
            o.error, o.last_seq)


def orch_pipeline_rows(o: Orchestration) -> list[tuple]:
    return [(o.orch_id, name, p.position, p.state, p.run_id, p.reason, p.started_at, p.ended_at)
            for name, p in o.pipelines.items()]


def run_from_rows(row: tuple, attempt_rows: Iterable[tuple]) -> Run:
    # the latest row of each stage (rows are Attempt fields: [1] stage, [2] attempt), made
    # an Attempt once it is known to be kept (a read of a run's rows is one per stage mostly)
    rows: dict[str, tuple] = {}
    for a in attempt_rows:
        prev = rows.get(a[1])
        if prev is None or a[2] > prev[2]:
            rows[a[1]] = a
    latest = {stage: attempt_from_row(a) for stage, a in rows.items()}
    return Run(
        run_id=row[0], pipeline=row[1], trigger=row[2], state=row[3], params=json.loads(row[4]),
        stages=tuple(json.loads(row[5])), requested_at=row[6], started_at=row[7],
        ended_at=row[8], error=row[9], failed_stage=row[10], recoveries=row[11],
        retries=row[12], last_seq=row[13], attempts=latest, requested_seq=row[14],
    )


def attempt_from_row(a: tuple, _new: Any = tuple.__new__) -> Attempt:
    """An ``Attempt`` of a ``stage_runs`` row (its columns are the fields, in order)."""
    return _new(Attempt, a)


def pipeline_record(name: str, type_: str, ts: str, payload: str, seq: int) -> PipelineRecord:
    """A pipeline's pause record from its latest ``pipeline.paused`` / ``pipeline.resumed``."""
    p = json.loads(payload)
    return PipelineRecord(name, "PAUSED" if type_ == "pipeline.paused" else "ACTIVE",
                          p.get("reason"), p.get("by") or {}, ts, seq)


# --------------------------------------------------------------------------
# load / save inside a transaction


def load_run_txn(conn: sqlite3.Connection, run_id: str) -> Run | None:
    row = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    attempts = conn.execute(
        f"SELECT {', '.join(STAGE_COLUMNS)} FROM stage_runs WHERE run_id = ?", (run_id,)
    ).fetchall()
    return run_from_rows(row, attempts)


def load_txn(conn: sqlite3.Connection, key: Key) -> Aggregate | None:
    kind, ident = key
    if kind == "run":
        return load_run_txn(conn, ident)
    if kind == "file":
        pipeline, sha = ident.split("\x1f", 1)
        row = conn.execute(
            f"SELECT {', '.join(FILE_COLUMNS)} FROM files WHERE pipeline = ? AND sha256 = ?",
            (pipeline, sha),
        ).fetchone()
        return None if row is None else FileRecord(*row)
    if kind == "schedule":
        pipeline, trigger = ident.split("\x1f", 1)
        row = conn.execute(
            f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM schedules WHERE pipeline = ? AND trigger = ?",
            (pipeline, trigger),
        ).fetchone()
        return None if row is None else ScheduleRecord(*row)
    if kind == "refusal" or kind == "removal":
        return None  # not projected: each refusal (or removal) starts afresh
    if kind == "pipeline":  # no table: its latest pause or resume is the record
        row = conn.execute(
            "SELECT type, ts, payload, seq FROM events WHERE run_id = ? AND type IN "
            "('pipeline.paused', 'pipeline.resumed') ORDER BY seq DESC LIMIT 1",
            (PIPELINE_ID_PREFIX + ident,)).fetchone()
        return None if row is None else pipeline_record(ident, *row)
    if kind == "alert":
        row = conn.execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE alert_id = ?", (ident,)
        ).fetchone()
        return None if row is None else AlertRecord(*row)
    if kind == "orchestration":
        row = conn.execute(
            f"SELECT {', '.join(ORCH_COLUMNS)} FROM orchestrations WHERE orch_id = ?", (ident,)
        ).fetchone()
        if row is None:
            return None
        pipes = conn.execute(
            f"SELECT {', '.join(ORCH_PIPELINE_COLUMNS)} FROM orchestration_pipelines WHERE orch_id = ?",
            (ident,),
        ).fetchall()
        return Orchestration(
            orch_id=row[0], name=row[1], state=row[2], planned=tuple(json.loads(row[3])),
            started_at=row[4], ended_at=row[5], error=row[6], last_seq=row[7],
            pipelines={p[1]: OrchPipeline(*p[2:]) for p in pipes},
        )
    raise ValueError(f"unknown aggregate kind {kind!r}")


def save_txn(conn: sqlite3.Connection, old: Aggregate | None, new: Aggregate | None,
             stages: Iterable[str] | None = None) -> None:
    """Write the rows that changed between ``old`` and ``new``.

    ``stages``: for a run changed by stage events only, the stages they named (a stage
    event changes its own stage's attempt and nothing else): the others are not compared.
    """
    if new is None:  # a backfill's tick before its schedule ever fired: no schedules row
        return
    if isinstance(new, Run):
        _save_run_txn(conn, old, new, stages)  # type: ignore[arg-type]
    elif isinstance(new, FileRecord):
        conn.execute(INSERT["files"], tuple(new))
    elif isinstance(new, ScheduleRecord):
        conn.execute(INSERT["schedules"], tuple(new))
    elif isinstance(new, AlertRecord):
        conn.execute(INSERT["alerts"], tuple(new))
    elif isinstance(new, (Refusal, PipelineRecord, Removal)):
        pass  # the event log keeps refusals, pauses and removals; no table does
    elif isinstance(new, Orchestration):
        conn.execute(INSERT["orchestrations"], orch_row(new))
        olds = old.pipelines if isinstance(old, Orchestration) else {}
        changed = [r for r in orch_pipeline_rows(new) if new.pipelines[r[1]] is not olds.get(r[1])]
        if changed:
            conn.executemany(INSERT["orchestration_pipelines"], changed)
    else:  # pragma: no cover
        raise TypeError(f"not an aggregate: {type(new).__name__}")


def _save_run_txn(conn: sqlite3.Connection, old: Run | None, new: Run,
                  stages: Iterable[str] | None = None) -> None:
    # fields 0..13 are the run's own columns, 14 the attempts, 15 requested_seq (set once, with
    # the run: a new run is written whole)
    if old is None or old[:14] != new[:14]:
        conn.execute(INSERT["runs"], run_row(new))
    old_attempts = old.attempts if old is not None else {}
    attempts = new.attempts
    changed = attempts.items() if stages is None or old is None else (
        (s, attempts[s]) for s in stages if s in attempts)
    rows = [att for stage, att in changed if old_attempts.get(stage) is not att]
    # one statement for the rows of a batch (a completion and the next start)
    for i in range(0, len(rows), _STAGE_ROWS):
        chunk = rows[i:i + _STAGE_ROWS]
        params: list[Any] = []
        shapes = []
        for row in chunk:
            # an attempt's usual NULLs (no end yet, no error) are written in the SQL, not
            # bound: sqlite3 looks for an adapter for every None it binds, ~1 µs each
            shape = (row[5] is None) + 2 * (row[6] is None)
            shapes.append(shape)
            params += _BOUND[shape](row)
        conn.execute(_insert_stage_runs(tuple(shapes)), params)


#: stage_runs rows per INSERT (8 parameters a row: within the 999 of SQLite before 3.32)
_STAGE_ROWS = 64
_INSERT_STAGE_RUNS: dict[tuple[int, ...], str] = {}
#: by shape (1: ended_at is NULL, 2: error is NULL): the row's VALUES, and what is bound
_ROW_SQL = ("(?, ?, ?, ?, ?, ?, ?, ?)", "(?, ?, ?, ?, ?, NULL, ?, ?)",
            "(?, ?, ?, ?, ?, ?, NULL, ?)", "(?, ?, ?, ?, ?, NULL, NULL, ?)")
_BOUND = (lambda r: r, lambda r: (*r[:5], r[6], r[7]), lambda r: (*r[:6], r[7]),
          lambda r: (*r[:5], r[7]))


def _insert_stage_runs(shapes: tuple[int, ...]) -> str:
    return multi_row_insert(_INSERT_STAGE_RUNS, INSERT["stage_runs"], _ROW_SQL, shapes)


def multi_row_insert(cache: dict[tuple[int, ...], str], insert: str, row_sql: Sequence[str],
                     shapes: tuple[int, ...]) -> str:
    """``insert`` (an ``INSERT ... VALUES (...)`` of one row) as one statement of several
    rows, row ``i`` written as ``row_sql[shapes[i]]`` (which NULLs are in the SQL, not
    bound); kept in ``cache`` (at most 256 shapes).  One statement, one step, instead of one
    per row."""
    sql = cache.get(shapes)
    if sql is None:
        sql = (insert.rpartition("VALUES")[0] + "VALUES "
               + ", ".join(row_sql[s] for s in shapes))
        if len(cache) < 256:
            cache[shapes] = sql
    return sql


# --------------------------------------------------------------------------
# whole-stream fold (rebuild and check)


#: not COMPLETED: a completed attempt may still be invalidated (stage.invalidated)
_FINAL_ATTEMPT_STATES = frozenset({"FAILED", "TIMED_OUT", "INTERRUPTED", "SKIPPED", "INVALIDATED"})


class Projector:
    """Folds an event stream into every projection row, the way rebuild needs.

    Runs keep only the latest attempt of each stage; earlier attempts are
    remembered here as they are superseded, so that ``rows()`` holds them all.
    With ``stream=True`` an attempt that reaches a final state (no event can
    change that row again: a retry is a new attempt) moves to ``finished`` at
    once, so that a rebuild can insert it while the fold goes on.
    """

    def __init__(self, *, stream: bool = False) -> None:
        self.aggregates: dict[Key, Aggregate] = {}
        self.attempts: dict[tuple[str, str, int], Attempt] = {}
        self.finished: list[tuple] = []
        self.stream = stream

    def feed(self, events: Iterable[Event]) -> None:
        aggs = self.aggregates
        attempts = self.attempts
        finished = self.finished if self.stream else None
        final = _FINAL_ATTEMPT_STATES
        stage_types = STAGE_TYPES
        for e in events:
            if e.type in stage_types and e.run_id:
                # the bulk of any log: the same machine function apply() dispatches to
                k = ("run", e.run_id)
                new = apply_stage(aggs.get(k), e)
                aggs[k] = new
            else:
                k = aggregate_key(e)
                aggs[k] = apply(aggs.get(k), e)
                continue
            if e.stage is not None:
                att = new.attempts[e.stage]  # type: ignore[union-attr]
                key = (att.run_id, att.stage, att.attempt)
                if finished is not None and att.state in final:
                    attempts.pop(key, None)
                    finished.append(att)
                else:
                    attempts[key] = att

    def take_finished(self) -> list[tuple]:
        rows, self.finished = self.finished, []
        return rows

    def rows(self) -> dict[str, list[tuple]]:
        out: dict[str, list[tuple]] = {t: [] for t in TABLES}
        for (kind, _), agg in self.aggregates.items():
            if kind == "run":
                out["runs"].append(run_row(agg))  # type: ignore[arg-type]
            elif kind == "file":
                out["files"].append(tuple(agg))
            elif kind == "schedule":
                if agg is not None:  # None: only a backfill's ticks (no schedules row)
                    out["schedules"].append(tuple(agg))
            elif kind == "alert":
                out["alerts"].append(tuple(agg))
            elif kind in ("refusal", "pipeline", "removal"):
                continue  # not projected
            else:
                out["orchestrations"].append(orch_row(agg))  # type: ignore[arg-type]
                out["orchestration_pipelines"].extend(orch_pipeline_rows(agg))  # type: ignore[arg-type]
        out["stage_runs"] = [attempt_row(a) for a in self.attempts.values()]
        out["stage_runs"].extend(self.take_finished())
        return out


_decode = json.JSONDecoder().decode
_NO_PAYLOAD: dict[str, Any] = {}  # shared, never mutated


def event_from_row(row: tuple) -> Event:
    """``(seq, ts, run_id, stage, attempt, type, payload, idempotency_key)`` -> Event."""
    seq, ts, run_id, stage, attempt, type_, payload, key = row
    return Event(type_, run_id, stage, attempt,
                 _NO_PAYLOAD if payload == "{}" else _decode(payload), key, seq, ts, payload)


def replay_event_from_row(row: tuple) -> Event:
    """Like :func:`event_from_row`, leaving undecoded what the fold keeps as text."""
    seq, ts, run_id, stage, attempt, type_, payload, key = row
    if type_ in RAW_ONLY_TYPES:
        return Event(type_, run_id, stage, attempt, None, key, seq, ts, payload)
    return Event(type_, run_id, stage, attempt,
                 _NO_PAYLOAD if payload == "{}" else _decode(payload), key, seq, ts, payload)


EVENT_COLUMNS = "seq, ts, run_id, stage, attempt, type, payload, idempotency_key"

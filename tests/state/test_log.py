"""The SQLite event log: append-only, concurrent, crash-safe, migrated."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from state import (
    DuplicateEvent,
    EventLog,
    EventType as T,
    IllegalTransition,
    MigrationFailed,
    SchemaTooNew,
    new_event,
)
from state.migrations import MIGRATIONS, Migration

from tests.state.old_history import write_old_history

REPO = Path(__file__).resolve().parents[2]


def _run(log: EventLog, run_id: str = "r1") -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual"))
    log.append(new_event(T.RUN_STARTED, run_id, stages=["a"]))
    log.append(new_event(T.STAGE_STARTED, run_id, stage="a", attempt=1), durable=False)
    log.append(new_event(T.STAGE_COMPLETED, run_id, stage="a", attempt=1, rows=7, wall_s=0.25))
    log.append(new_event(T.RUN_COMPLETED, run_id))


def test_pragmas_and_public_views(state_dir: Path):
    with EventLog.open(state_dir) as log:
        _run(log)
        assert log.query("PRAGMA journal_mode")[0][0] == "wal"
        assert log.query("PRAGMA synchronous")[0][0] == 2  # FULL
        assert log.query("PRAGMA busy_timeout")[0][0] >= 30000
        history = [dict(r) for r in log.query("SELECT * FROM run_history")]
        assert list(history[0])[:8] == ["run_id", "pipeline", "trigger", "state", "started_at",
                                         "ended_at", "duration_s", "error"]
        assert history[0]["state"] == "COMPLETED" and history[0]["trigger"] == "manual"
        assert history[0]["started_at"].endswith("Z") and "T" in history[0]["started_at"]
        timings = [dict(r) for r in log.query("SELECT * FROM stage_timings")]
        assert list(timings[0])[:9] == ["run_id", "pipeline", "stage", "attempt", "state",
                                        "started_at", "ended_at", "duration_s", "error"]
        assert timings[0]["rows"] == 7 and timings[0]["wall_s"] == 0.25
    with EventLog(state_dir / "history.db", synchronous="NORMAL") as log:
        assert log.query("PRAGMA synchronous")[0][0] == 1


def test_failures_view_lists_failed_runs_and_attempts(state_dir: Path):
    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p"))
        log.append(new_event(T.RUN_STARTED, "r", stages=["a"]))
        log.append(new_event(T.STAGE_STARTED, "r", stage="a", attempt=1))
        log.append(new_event(T.STAGE_TIMED_OUT, "r", stage="a", attempt=1, error="timed out after 1s"))
        log.append(new_event(T.RUN_FAILED, "r", stage="a", error="stage 'a' timed out"))
        rows = [tuple(r) for r in log.query(
            "SELECT kind, run_id, pipeline, stage, attempt, state, error FROM failures ORDER BY kind")]
    assert rows == [("run", "r", "p", "a", None, "FAILED", "stage 'a' timed out"),
                    ("stage", "r", "p", "a", 1, "TIMED_OUT", "timed out after 1s")]


def test_update_and_delete_on_events_are_refused_from_python(state_dir: Path):
    with EventLog.open(state_dir) as log:
        _run(log)
    conn = sqlite3.connect(state_dir / "history.db")
    for sql in ("UPDATE events SET type = 'run.failed'", "DELETE FROM events"):
        with pytest.raises(sqlite3.IntegrityError, match="events is append-only"):
            conn.execute(sql)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5
    conn.close()


def test_update_and_delete_on_events_are_refused_from_the_sqlite3_shell(state_dir: Path):
    with EventLog.open(state_dir) as log:
        _run(log)
    for sql in ("UPDATE events SET payload = '{}' WHERE seq = 1;", "DELETE FROM events WHERE seq = 1;"):
        proc = subprocess.run(["sqlite3", str(state_dir / "history.db"), sql],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0
        assert "events is append-only" in proc.stderr
    proc = subprocess.run(["sqlite3", str(state_dir / "history.db"), "SELECT COUNT(*) FROM events;"],
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "5"


def test_illegal_event_writes_nothing_and_names_the_problem(state_dir: Path):
    with EventLog.open(state_dir) as log:
        _run(log)
        before = log.last_seq()
        with pytest.raises(IllegalTransition) as exc:
            log.append_many([
                new_event(T.RUN_REQUESTED, "r2", pipeline="p"),
                new_event(T.RUN_COMPLETED, "r2"),
            ])
        assert str(exc.value) == "run 'r2' is PENDING; run.completed is only allowed from: RUNNING"
        assert log.last_seq() == before
        assert log.run("r2") is None  # the whole batch was rolled back


def test_idempotency_key_means_already_done(state_dir: Path):
    with EventLog.open(state_dir) as log:
        first = log.append_many([
            new_event(T.FILE_ARRIVED, "run-a", pipeline="p", sha256="abc", name="x.csv",
                      idempotency_key="file:p:abc"),
            new_event(T.RUN_REQUESTED, "run-a", pipeline="p", trigger="drop_folder"),
        ])
        with pytest.raises(DuplicateEvent) as exc:
            log.append_many([
                new_event(T.FILE_ARRIVED, "run-b", pipeline="p", sha256="abc", name="y.csv",
                          idempotency_key="file:p:abc"),
                new_event(T.RUN_REQUESTED, "run-b", pipeline="p", trigger="drop_folder"),
            ])
        assert exc.value.existing.seq == first[0].seq
        assert log.run("run-b") is None


def test_payloads_must_be_plain_json(state_dir: Path):
    from datetime import datetime

    with EventLog.open(state_dir) as log:
        with pytest.raises(Exception, match="is not plain JSON"):
            log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p", when=datetime.now()))


def test_several_processes_append_at_once_without_loss_or_lock_errors(state_dir: Path):
    db = state_dir / "history.db"
    EventLog(db).close()
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.state.writer_proc", str(db), f"w{i}", "25"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "locked" not in err
    acked = [int(line.split()[1]) for out, _ in outputs for line in out.splitlines()]
    assert len(acked) == 4 * 25 * 7 == len(set(acked))
    with EventLog(db) as log:
        assert log.last_seq() == len(acked)
        assert log.check().ok
        assert log.query("SELECT COUNT(*) FROM runs WHERE state = 'COMPLETED'")[0][0] == 100


def test_sigkill_while_appending_loses_no_acknowledged_event(state_dir: Path, ahgd, clean_env):
    """A writer killed at random moments, 50 times: every acknowledged event survives
    and `ahgd state check` passes after every tenth kill (damage stays in the file, so a
    check after ten kills sees any of them; a check after each one cost 40 s of suite)."""
    db = state_dir / "history.db"
    EventLog(db).close()
    rng = random.Random(20261126)
    acked: set[int] = set()
    deadline = time.monotonic() + 240
    for i in range(50):
        assert time.monotonic() < deadline, "crash loop took too long"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.state.writer_proc", str(db), f"k{i}", "1000"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # wait for the first acknowledgement, then kill at a random moment
        first = proc.stdout.readline()
        assert first.startswith("ok "), first
        acked.add(int(first.split()[1]))
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        acked.update(int(line.split()[1]) for line in out.splitlines() if line.startswith("ok "))
        if i % 10 != 9:
            continue
        check = subprocess.run([*ahgd, "state", "check", "--state-dir", str(state_dir)],
                               capture_output=True, text=True, timeout=60, env=clean_env)
        assert check.returncode == 0, check.stderr
    conn = sqlite3.connect(db)
    present = {row[0] for row in conn.execute("SELECT seq FROM events")}
    conn.close()
    assert acked <= present


def _failing_migrations():
    def boom(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("simulated failure in step 2")

    return (*MIGRATIONS, Migration("9999_will_fail", boom))


def test_a_failing_migration_leaves_the_version_unchanged(state_dir: Path):
    db = state_dir / "history.db"
    EventLog(db).close()
    with pytest.raises(MigrationFailed) as exc:
        EventLog(db, migrations=_failing_migrations())
    n = len(MIGRATIONS)
    assert str(exc.value).startswith(
        f"migration {n + 1} (9999_will_fail) of {db} failed: simulated failure in step 2; "
        f"the database stays at version {n}.")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == n
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None
    conn.close()
    EventLog(db).close()  # still opens with the known migrations


def test_an_older_database_is_upgraded(state_dir: Path):
    db = state_dir / "history.db"
    extra = (*MIGRATIONS, Migration("9999_add_notes", lambda c: c.execute("CREATE TABLE notes (x)")))
    EventLog(db).close()
    with EventLog(db, migrations=extra) as log:
        assert log.version == len(MIGRATIONS) + 1
        assert log.query("SELECT name FROM schema_migrations ORDER BY version")[-1][0] == "9999_add_notes"


def test_a_version_1_database_with_history_gains_the_alerts_table(state_dir: Path):
    db = state_dir / "history.db"
    write_old_history(db, 1, _run)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5
    conn.close()
    with EventLog(db) as log:
        assert log.version == len(MIGRATIONS)
        log.append(new_event("alert.raised", alert_id="a", name="x", severity="warning"))
        assert [tuple(r) for r in log.query("SELECT alert_id, name FROM open_alerts")] == [("a", "x")]
        assert log.check().ok


def test_a_newer_database_is_refused(state_dir: Path):
    db = state_dir / "history.db"
    EventLog(db).close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_from_the_future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew) as exc:
        EventLog(db)
    assert str(exc.value) == (
        f"{db} has schema version 99 (0099_from_the_future), written by a newer ahgd; this ahgd "
        f"knows versions up to {len(MIGRATIONS)} ({MIGRATIONS[-1].name}). Upgrade ahgd-daemon, "
        "or point --state-dir at another directory")


def test_rebuild_restores_tampered_projections(state_dir: Path):
    with EventLog.open(state_dir) as log:
        _run(log)
        log.query("UPDATE runs SET state = 'FAILED'")  # projections are not protected
        report = log.check()
        assert not report.ok
        assert report.differences == ["runs['r1'].state: kept 'FAILED', the events say 'COMPLETED'"]
        assert log.rebuild() == 5
        assert log.check().ok


def test_clock_is_injected(state_dir: Path):
    from datetime import datetime, timezone

    fixed = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    with EventLog.open(state_dir, clock=lambda: fixed) as log:
        e = log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p"))
    assert e.ts == "2026-01-02T03:04:05.678901Z"


def test_a_refused_non_durable_append_leaves_synchronous_full(state_dir: Path):
    db = state_dir / "history.db"
    with EventLog(db, busy_timeout=0.2) as log:
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Exception, match="stayed locked by another process"):
                log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p"), durable=False)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert log.query("PRAGMA synchronous")[0][0] == 2  # FULL: later commits still fsync


def test_a_failing_listener_does_not_make_a_committed_append_look_failed(state_dir: Path):
    with EventLog.open(state_dir) as log:
        def broken(event):
            raise BrokenPipeError("stdout went away")

        log.add_listener(broken)
        stored = log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p"))
        assert stored.seq == 1 and log.run("r").state == "PENDING"


def test_newest_runs_come_from_an_index_not_a_sort(state_dir: Path):
    with EventLog.open(state_dir) as log:
        plan = " ".join(r[3] for r in log.query(
            "EXPLAIN QUERY PLAN SELECT run_id FROM runs ORDER BY requested_at DESC, run_id DESC "
            "LIMIT 50"))
    assert "runs_by_time" in plan and "TEMP B-TREE" not in plan


def test_payload_key_order_is_kept_in_events_projections_and_a_rebuild(state_dir: Path):
    """Key order is data (a file's columns by position): the log never sorts it."""
    order = ["sa2_code", "irsd_decile", "irsd_score", "irsad_decile", "irsad_score"]
    output = {"kind": "value", "format": "inline", "value": {"columns": {k: "VARCHAR" for k in order}}}
    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "r", pipeline="p", params={"z": 1, "a": 2}))
        log.append(new_event(T.RUN_STARTED, "r", stages=["extract"]))
        log.append(new_event(T.STAGE_STARTED, "r", stage="extract", attempt=1))
        log.append(new_event(T.STAGE_COMPLETED, "r", stage="extract", attempt=1, output=output))

        def seen() -> tuple[list, list, list]:
            done = [e for e in log.events(run_id="r") if e.type == T.STAGE_COMPLETED][0]
            from_event = list(done.data()["output"]["value"]["columns"])
            run = log.run("r")
            from_projection = list(run.attempts["extract"].output["value"]["columns"])
            return from_event, from_projection, list(run.params)

        assert seen() == (order, order, ["z", "a"])
        log.rebuild()
        assert seen() == (order, order, ["z", "a"])
        assert log.check().ok

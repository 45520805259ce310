"""Runs are started and loaded in the order they were requested, also when several are
requested in one commit (a burst's files claimed together): they share a timestamp there,
and the order was (requested_at, run_id) before, so a file run (its id begins with its
content hash) went by its hash.  The order is each run's ``requested_seq``: the seq of its
run.requested event (migration 0008, back-filled for older histories)."""

from __future__ import annotations

import sqlite3

from state import EventLog, EventType as T, new_event, queries
from state.db import ReadOnlyHistory
from tests.state.old_history import write_old_history

# in the order they came: their ids sort the other way
CAME = ["p-file-ffff-1", "p-file-8888-2", "p-file-0000-3"]


def _burst(log: EventLog) -> None:
    log.append_many([new_event(T.RUN_REQUESTED, r, pipeline="p", trigger="drop_folder")
                     for r in CAME])


def test_runs_requested_in_one_commit_start_and_load_in_the_order_they_came(tmp_path):
    with EventLog.open(tmp_path) as log:
        _burst(log)
        assert len({log.run(r).requested_at for r in CAME}) == 1  # one commit, one timestamp
        assert [log.run(r).requested_seq for r in CAME] == [1, 2, 3]
        assert queries.pending_runs(log, ["p"], 10) == [(r, "p") for r in CAME]
        assert queries.pending_runs(log, ["p"], 10, backfill_slots=0) == [(r, "p") for r in CAME]
        for r in CAME:
            log.append(new_event(T.RUN_STARTED, r, stages=["load"]))
        assert queries.earlier_runs_running(log, "p", CAME[2]) == CAME[:2]
        assert queries.earlier_runs_running(log, "p", CAME[0]) == []
        assert queries.earlier_runs_in_flight(log, "p", CAME[1], [CAME[0], CAME[2]]) == [CAME[0]]
        assert log.check().ok


def test_an_older_history_gets_the_order_of_its_requests(tmp_path):
    db = tmp_path / "history.db"
    write_old_history(db, 7, _burst)
    conn = sqlite3.connect(db)
    assert [r[1] for r in conn.execute("PRAGMA table_info(runs)")].count("requested_seq") == 0
    conn.close()
    with EventLog(db) as log:
        assert [log.run(r).requested_seq for r in CAME] == [1, 2, 3]
        assert queries.pending_runs(log, ["p"], 10) == [(r, "p") for r in CAME]
        assert log.check().ok  # the back-filled column is what the events say
        plan = log.query("EXPLAIN QUERY PLAN SELECT run_id FROM runs INDEXED BY runs_pending "
                         "WHERE state = 'PENDING' ORDER BY requested_seq LIMIT 3")
        assert "USE TEMP B-TREE" not in " ".join(str(tuple(r)) for r in plan)


def test_a_look_at_an_older_history_lists_its_pending_runs_as_that_ahgd_ordered_them(tmp_path):
    """A dry run reads history.db without migrating it (an older ahgd may still own it)."""
    db = tmp_path / "history.db"
    write_old_history(db, 7, _burst)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert queries.pending_runs(conn, ["p"], 10) == [(r, "p") for r in sorted(CAME)]
        assert queries.pending_runs(conn, ["p"], 2, backfill_slots=1) == \
            [(r, "p") for r in sorted(CAME)[:2]]
    finally:
        conn.close()
    with ReadOnlyHistory(db) as history:  # what `ahgd daemon --dry-run` looks through
        assert queries.pending_runs(history, ["p"], 10) == [(r, "p") for r in sorted(CAME)]
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 7
    conn.close()

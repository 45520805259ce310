"""The daemon makes a retention removal durable with an fsync from another thread; that must
not drop its own SQLite locks (closing any descriptor of a file drops every POSIX lock the
process holds on it).  Otherwise the next ``ahgd`` command that opens and closes the log
finds no other connection, checkpoints and deletes the write-ahead log, and every later
commit of the daemon goes to a deleted file: no other process sees it, and it is lost when
the daemon stops.  Real SQLite files, a real second process."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from ahgd_daemon.removal import Collector
from ahgd_daemon.retention import Policy
from state import EventLog, EventType as T, new_event

REPO = Path(__file__).resolve().parents[2]


def requested(run_id: str):
    return new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual", params={})


def another_command(state: Path) -> None:
    """What every `ahgd` command does: open the log, read, close."""
    code = ("import sys; from state import EventLog; log = EventLog.open(sys.argv[1]); "
            "log.runs(); log.close()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(state)], check=True, env=env, timeout=60)


def test_the_fsync_of_a_removal_keeps_the_daemons_locks(state_dir: Path):
    log = EventLog.open(state_dir)
    try:
        log.append(requested("r1"), durable=False)
        trash = state_dir / ".trash" / "x~data"
        trash.mkdir(parents=True)
        Collector(log, state_dir, Policy(), delete_aside=True)._durably_delete(trash)
        assert not trash.exists()                  # durable, then deleted
        another_command(state_dir)
        assert (state_dir / "history.db-wal").exists()   # not deleted under the daemon
        log.append(requested("r2"))
        fresh = sqlite3.connect(state_dir / "history.db")   # another process's view
        try:
            assert [r[0] for r in fresh.execute("SELECT run_id FROM runs ORDER BY run_id")] \
                == ["r1", "r2"]
        finally:
            fresh.close()
    finally:
        log.close()
    with EventLog.open(state_dir) as again:      # nothing lost when the daemon stops
        assert [r.run_id for r in again.runs()] == ["r1", "r2"]

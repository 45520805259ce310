"""`ahgd history`, `ahgd events`, `ahgd state check|rebuild` as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from state import EventLog, EventType as T, new_event


def _seed(state_dir: Path) -> None:
    with EventLog.open(state_dir) as log:
        for i, ok in enumerate([True, False]):
            run = f"run-{i}"
            log.append(new_event(T.RUN_REQUESTED, run, pipeline=f"pipe{i}", trigger="manual"))
            log.append(new_event(T.RUN_STARTED, run, stages=["a"]))
            log.append(new_event(T.STAGE_STARTED, run, stage="a", attempt=1))
            if ok:
                log.append(new_event(T.STAGE_COMPLETED, run, stage="a", attempt=1))
                log.append(new_event(T.RUN_COMPLETED, run))
            else:
                log.append(new_event(T.STAGE_FAILED, run, stage="a", attempt=1, error="bad row"))
                log.append(new_event(T.RUN_FAILED, run, error="stage 'a' failed: bad row"))


def run(ahgd, env, *args):
    return subprocess.run([*ahgd, *args], capture_output=True, text=True, timeout=60, env=env)


def test_history_json_is_an_array_of_run_history_rows(state_dir, ahgd, clean_env):
    _seed(state_dir)
    proc = run(ahgd, clean_env, "history", "--json", "--state-dir", str(state_dir))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["run_id"] for r in rows] == ["run-1", "run-0"]
    assert {"run_id", "pipeline", "trigger", "state", "started_at", "ended_at", "duration_s",
            "error"} <= set(rows[0])
    assert rows[0]["error"] == "stage 'a' failed: bad row"
    proc = run(ahgd, clean_env, "history", "--pipeline", "pipe0", "--state-dir", str(state_dir))
    assert "run-0" in proc.stdout and "run-1" not in proc.stdout


def test_state_dir_comes_from_the_environment(state_dir, ahgd, clean_env):
    _seed(state_dir)
    proc = run(ahgd, {**clean_env, "AHGD_STATE_DIR": str(state_dir)}, "history", "-n", "1")
    assert proc.returncode == 0 and "run-1" in proc.stdout


def test_events_for_one_run(state_dir, ahgd, clean_env):
    _seed(state_dir)
    proc = run(ahgd, clean_env, "events", "--run", "run-1", "--json", "--state-dir", str(state_dir))
    events = json.loads(proc.stdout)
    assert [e["type"] for e in events] == ["run.requested", "run.started", "stage.started",
                                           "stage.failed", "run.failed"]
    assert events[3]["payload"] == {"error": "bad row"}


def test_state_check_fails_on_tampered_projection_and_rebuild_fixes_it(state_dir, ahgd, clean_env):
    _seed(state_dir)
    assert run(ahgd, clean_env, "state", "check", "--state-dir", str(state_dir)).returncode == 0
    conn = sqlite3.connect(state_dir / "history.db")
    conn.execute("DELETE FROM stage_runs WHERE run_id = 'run-0'")
    conn.commit()
    conn.close()
    proc = run(ahgd, clean_env, "state", "check", "--state-dir", str(state_dir))
    assert proc.returncode == 1
    assert ("stage_runs['run-0', 'a', 1]: produced by the events but missing from the projection"
            in proc.stderr)
    assert "fix: `ahgd state rebuild`" in proc.stderr
    proc = run(ahgd, clean_env, "state", "rebuild", "--state-dir", str(state_dir))
    assert proc.returncode == 0 and "rebuilt projections from 10 events" in proc.stdout
    assert run(ahgd, clean_env, "state", "check", "--state-dir", str(state_dir)).returncode == 0


def test_missing_history_is_a_clear_error(tmp_path, ahgd, clean_env):
    proc = run(ahgd, clean_env, "history", "--state-dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: no history at {tmp_path / 'nowhere' / 'history.db'}")


def test_package_directory_is_refused_as_state_dir(ahgd, clean_env):
    repo_state = Path(__file__).resolve().parents[2] / "state"
    proc = run(ahgd, clean_env, "history", "--state-dir", str(repo_state))
    assert proc.returncode == 1
    assert "is a Python package directory (it has __init__.py), not a state directory" in proc.stderr


def test_status_and_metrics_without_a_daemon_leave_an_older_history_untouched(
        state_dir, ahgd, clean_env):
    """A look must not migrate, checkpoint or write: an older ahgd still owns that file."""
    import hashlib

    from tests.state.old_history import write_old_history

    def history(log):
        log.append(new_event(T.RUN_REQUESTED, "old-1", pipeline="p", trigger="manual"))
        log.append(new_event(T.RUN_FAILED, "old-1", error="boom"))

    write_old_history(state_dir / "history.db", 1, history)
    files = sorted(state_dir.iterdir())

    def fingerprint():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = fingerprint()
    status = run(ahgd, clean_env, "status", "--json", "--state-dir", str(state_dir))
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["daemon"] is None and doc["recent_runs"]["p"][0]["error"] == "boom"
    assert doc["alerts"]["open"] == []          # no alerts table in schema version 1
    metrics = run(ahgd, clean_env, "metrics", "--state-dir", str(state_dir))
    assert 'ahgd_runs_total{pipeline="p",state="FAILED"} 1.0' in metrics.stdout
    assert fingerprint() == before
    # SQLite's WAL readers may leave the -wal/-shm companions; nothing else appears
    assert {p.name for p in state_dir.iterdir()} <= {"history.db", "history.db-wal",
                                                     "history.db-shm"}
    conn = sqlite3.connect(state_dir / "history.db")
    assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 1
    conn.close()


def test_metrics_without_a_daemon_or_history_names_the_directory(state_dir, ahgd, clean_env):
    proc = run(ahgd, clean_env, "metrics", "--state-dir", str(state_dir))
    assert proc.returncode == 1
    assert proc.stderr == (f"error: no history at {state_dir / 'history.db'}: nothing has run "
                           "with this state directory yet (pass --state-dir or set "
                           "AHGD_STATE_DIR to the directory the daemon uses)\n")

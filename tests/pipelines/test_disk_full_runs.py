"""A full disk makes a run wait, not fail, whatever ``retry_attempts`` says (issue 11, item 10).

The run's stage outputs go to a real 16 MiB tmpfs (its own mount namespace),
full when the run starts: the stage fails with DuckDB's "No space left on
device", the run waits, room comes back, and it completes with
``retry_attempts: 0``.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import sys
from pathlib import Path


from pipelines.monitoring import PipelineMonitor
from state import EventLog, EventType as T, new_event, queries
from state.errors import DiskFull

from tests.tinyfs import UNSHARE, needs_tiny_tmpfs

REPO = Path(__file__).resolve().parents[2]


@needs_tiny_tmpfs
def test_a_stage_that_finds_the_disk_full_waits_for_room_and_the_run_completes(tmp_path):
    state = tmp_path / "state"
    (state / "data").mkdir(parents=True)
    script = (f"mount -t tmpfs -o size=16m tmpfs {state / 'data'} && exec {sys.executable} -m "
              f"tests.pipelines.disk_full_child {state}")
    proc = subprocess.run([*UNSHARE, "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "COMPLETED None"
    con = sqlite3.connect(state / "history.db")
    try:
        rows = con.execute("SELECT type, stage, attempt, payload FROM events "
                           "ORDER BY seq").fetchall()
    finally:
        con.close()
    make = [(t, a, json.loads(p)) for t, s, a, p in rows if s == "make"]
    assert [(t, a) for t, a, _ in make] == [
        ("stage.started", 1), ("stage.failed", 1), ("stage.retrying", 2), ("stage.started", 2),
        ("stage.completed", 2)]
    failed, retrying = make[1][2], make[2][2]
    assert failed["disk_full"] is True and "No space left on device" in failed["error"]
    assert retrying["disk_full"] is True and retrying["delay_s"] == 5.0

    # what the daemon's monitor makes of these events: an alert while the run waits
    log = EventLog.open(state)
    try:
        monitor = PipelineMonitor(tmp_path / "metrics", enable_system_monitoring=False)
        for event in log.events():
            monitor.observe(event)
    finally:
        log.close()
    [alert] = [a for a in monitor.get_alerts() if a.name == "run.waiting_for_disk"]
    assert "waits for disk space: stage 'make' failed with IOException" in alert.message
    assert alert.resolved_at is not None and alert.resolution == "stage 'make' completed"


def test_attempts_that_found_the_disk_full_do_not_use_up_retries(tmp_path):
    with EventLog.open(tmp_path) as log:
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="p"))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["a"]))
        for attempt, full in ((1, True), (2, True), (3, False)):
            log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=attempt))
            log.append(new_event(T.STAGE_FAILED, "r1", stage="a", attempt=attempt, error="x",
                                 **({"disk_full": True} if full else {})))
            if attempt < 3:
                log.append(new_event(T.STAGE_RETRYING, "r1", stage="a", attempt=attempt + 1,
                                     delay_s=0))
        assert queries.failed_attempts_since_retry(log, "r1") == {"a": 1}


def test_disk_full_is_recognised_by_errno_by_type_and_by_message():
    import duckdb

    from pipelines.execution.diskfull import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(DiskFull("the disk holding x is full"))
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("writing the output failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(duckdb.IOException('IO Error: Could not write file "x": No space left on '
                                        "device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("a bad value"))

"""The child of tests/daemon/test_run_disk_full.py, run in a mount namespace of its own whose
state directory is a small tmpfs: the real daemon, a run whose stage fills the disk, the
disk freed once the daemon says the run waits; prints what happened, as JSON.

    python -m tests.daemon.diskfull_daemon_child STATE_DIR MASTER [--once]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from state import EventLog, EventType as T, new_event
from tests.daemon.harness import Daemon, ahgd_exe, env, query, wait_until


def main(state: Path, master: Path, once: bool) -> None:
    if once:   # the run asked for before the daemon starts, which ends when it has no work
        with EventLog.open(state) as log:
            log.append(new_event(T.RUN_REQUESTED, "fill-r1", pipeline="fill", trigger="manual",
                                 params={}))
        asked = subprocess.CompletedProcess([], 0, "", "")
    daemon = Daemon(master, state, once=once)
    if not once:
        daemon.wait_ready(60)
        asked = subprocess.run([*ahgd_exe(), "run", "fill", "--no-wait", "--state-dir",
                                str(state)], capture_output=True, text=True, env=env(),
                               timeout=60)
    out: dict = {}
    try:
        assert asked.returncode == 0, asked.stdout + asked.stderr
        run_id = query(state, "SELECT run_id FROM runs")[0][0]
        wait_until(lambda: any(r.get("event") == "run_waits_for_disk" for r in daemon.records()),
                   60, "the daemon to say the run waits for the disk")
        out["while_full"] = query(state, "SELECT state FROM runs WHERE run_id = ?", (run_id,))
        (state / "filler").unlink()
        wait_until(lambda: query(state, "SELECT state FROM runs WHERE run_id = ?",
                                 (run_id,))[0][0] in ("COMPLETED", "FAILED", "PARKED"),
                   120, "the run to end once there is room")
        out["final"] = query(state, "SELECT state, error FROM runs WHERE run_id = ?", (run_id,))
        out["events"] = query(state, "SELECT type, stage, attempt FROM events WHERE run_id = ? "
                                     "ORDER BY seq", (run_id,))
        out["waits"] = [r for r in daemon.records() if r.get("event") == "run_waits_for_disk"]
        out["recoveries"] = query(state, "SELECT recoveries FROM runs")[0][0]
    finally:
        out["code"] = daemon.wait(60) if once else daemon.stop(60)
    print(json.dumps(out, default=list))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] == ["--once"])

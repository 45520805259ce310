"""After EMFILE or ENOSPC the waiting file is taken once there is room (issue 11, item 10).

Each test runs the real intake, claimer, event log and monitor in a child
process that really runs out: of file descriptors (a low RLIMIT_NOFILE, all of
them opened), or of disk space (a 4 MiB tmpfs of its own for the state
directory, in a private mount namespace, filled up).  The child gives the room
back once the alert fires, and the file must be taken without anyone
dropping it again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


from tests.tinyfs import UNSHARE, needs_tiny_tmpfs

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    answer = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert answer, proc.stdout + proc.stderr
    result = json.loads(answer[-1])
    result["returncode"], result["stderr"] = proc.returncode, proc.stderr
    return result


def _check(result: dict) -> list[dict]:
    assert result["failed"], "the claim never failed: the test did not run out of anything"
    assert result["taken"] == ["x.csv"] and result["left_in_inbox"] == []
    assert result["returncode"] == 0, result["stderr"]
    retries = [line for line in result["lines"] if line.get("event") == "file_claim_retry"]
    assert retries and retries[0]["failures"] == 1 and retries[0]["retry_in_s"] == 1.0
    states = [line["alert_state"] for line in result["lines"]
              if line.get("alert_id") == "daemon.file_claim_failed:p" and line.get("alert")]
    assert states == ["firing", "resolved"]
    return retries


def test_after_emfile_the_waiting_file_is_taken_again(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "inbox").mkdir()
    result = _run([sys.executable, "-m", "tests.daemon.intake_child", "emfile",
                   str(tmp_path / "state"), str(tmp_path / "inbox")])
    retries = _check(result)
    assert retries[0]["error"].startswith("too many open files ([Errno 24]")
    assert [a[0] for a in result["alerts"]] == ["alert.raised", "alert.resolved"]


@needs_tiny_tmpfs
def test_after_enospc_the_waiting_file_is_taken_once_there_is_room(tmp_path):
    state, inbox = tmp_path / "state", tmp_path / "inbox"
    state.mkdir()
    inbox.mkdir()   # on another file system than the state directory: the claim copies
    script = (f"mount -t tmpfs -o size=4m tmpfs {state} && exec {sys.executable} -m "
              f"tests.daemon.intake_child enospc {state} {inbox}")
    result = _run([*UNSHARE, "sh", "-c", script])
    retries = _check(result)
    assert retries[0]["error"].startswith(
        f"the disk holding the state directory {state} is full ([Errno 28] No space left on "
        "device); free space on it")

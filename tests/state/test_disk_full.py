"""A full disk: a clear error naming the file and the fix, and nothing lost.

The child process gets a real, tiny file system of its own (a 1 MiB tmpfs in
a private mount namespace), so SQLite sees a genuine ENOSPC.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, sys
    from state import EventLog, EventType as T, new_event
    from state.errors import DiskFull
    db = sys.argv[1]
    log = EventLog(db)
    acked = 0
    try:
        for i in range(100000):
            log.append(new_event(T.RUN_REQUESTED, f"run-{i}", pipeline="p",
                                 params={"pad": "x" * 2000}))
            acked += 1
        sys.exit(3)
    except DiskFull as exc:
        print("ACKED", acked)
        print("ERROR", exc)
    log.close()
    with EventLog(db) as again:  # reopened: every acknowledged event, a sound file
        print("COUNT", again.query("SELECT COUNT(*) FROM events")[0][0])
        print("CHECK", again.check().ok)
""")


def _isolated_tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _isolated_tmpfs_available(),
                    reason="needs unshare and a mount namespace to give the child a tiny file system")
def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    db = mnt / "history.db"
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
              f"exec {sys.executable} -c '{CHILD}' {db}")
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert int(lines["ACKED"]) > 10
    assert lines["ERROR"] == (
        f"the disk holding {db} is full (append refused, nothing was written); free some space "
        f"on {db.parent} (see `df -h {db.parent}`) and try again")
    assert lines["COUNT"] == lines["ACKED"]
    assert lines["CHECK"] == "True"

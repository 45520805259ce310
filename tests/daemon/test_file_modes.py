"""What ahgd writes is for its owner and group only, whatever the umask it was started with.

Every file and folder the demo and the daemon created is stat'ed after a
start under umask 022 (the usual default outside systemd).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from .harness import Daemon, ahgd_exe, drop_csv, env, query, wait_until, write_config

pytestmark = pytest.mark.slow


def _open_to_others(root: Path, *, except_inodes: set[int] = frozenset()) -> list[str]:
    """Every path under ``root`` (itself included) with a permission bit for others."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_ino in except_inodes:
            continue
        if st.st_mode & 0o007:
            found.append(f"{stat.filemode(st.st_mode)} {path}")
    return found


def test_the_demo_under_umask_022_writes_nothing_others_can_read(tmp_path):
    state = tmp_path / "demo"
    proc = subprocess.run([*ahgd_exe(), "demo", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=600, env=env(), cwd=tmp_path, umask=0o022)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    for name in ("history.db", "warehouse.duckdb", "files", "data", "inbox"):
        assert (state / name).exists(), name
    assert _open_to_others(state) == []
    check = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120, env=env())
    assert check.returncode == 0 and "warning" not in check.stderr, check.stderr


def test_the_daemon_under_umask_022_keeps_history_inputs_and_quarantine_to_its_group(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    manual = tmp_path / "manual.csv"
    manual.write_text("a,b\n5,6\n")
    old = os.umask(0o022)  # the daemon subprocess inherits it
    try:
        d = Daemon(config, state).wait_ready()
    finally:
        os.umask(old)
    try:
        inbox = state / "inbox" / "csvpipe"
        dropped = drop_csv(inbox, "good.csv")
        senders = {dropped.stat().st_ino}  # the sender's own file, hard-linked into files/
        wait_until(lambda: query(state, "SELECT state FROM runs") == [("COMPLETED",)], 60,
                   "the dropped file's run")
        (inbox / "empty.csv").touch(mode=0o640)
        senders.add((inbox / "empty.csv").stat().st_ino)
        reason = state / "quarantine" / "csvpipe" / "empty.csv.reason.json"
        wait_until(reason.exists, 30, "the empty file to be quarantined")
        run = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--input", str(manual), "--state-dir",
                              str(state)], capture_output=True, text=True, timeout=120,
                             env=env(), umask=0o022)
        assert run.returncode == 0, run.stdout + run.stderr
    finally:
        assert d.stop() == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    assert list((state / "inputs").rglob("manual.csv")) and reason.exists()
    assert _open_to_others(state, except_inodes=senders) == []
    # a sender's world-readable file is still out of others' reach: its folders are closed
    assert all(not p.stat().st_mode & 0o007 for p in (state / "files").rglob("*") if p.is_dir())


def test_state_check_warns_about_files_others_can_read_and_still_passes(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    d = Daemon(config, state, once=True)
    assert d.wait() == 0, d.output()
    os.chmod(state, 0o755)                 # as an older ahgd under umask 022 left them
    os.chmod(state / "history.db", 0o644)
    proc = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 0, proc.stderr
    assert "ok: integrity ok" in proc.stdout
    assert f"2 files and folders in {state} are open to every user of this machine" in proc.stderr
    assert f"  {state / 'history.db'}\n" in proc.stderr
    assert f"fix: chmod -R o-rwx {state}" in proc.stderr

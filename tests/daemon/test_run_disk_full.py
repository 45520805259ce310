"""A run whose event finds the disk full waits for room instead of failing (README,
Recovery: "nothing acknowledged is lost, and the daemon carries on once there is room").

The state directory is a real 8 MiB tmpfs in a mount namespace of the test's own; the real
daemon runs there, a stage fills the disk, and the daemon's record of its completion is
refused.  The run stays as the log has it (it was recorded FAILED once there was room, though
nothing was wrong with it); then it is recorded suspended, not recovered (a full disk is no
crash), and runs again once there is room.  With --once the daemon waits for it."""

from __future__ import annotations

import json
import subprocess

import pytest
import sys
import textwrap
from pathlib import Path

from tests.tinyfs import UNSHARE, needs_tiny_tmpfs

REPO = Path(__file__).resolve().parents[2]


@needs_tiny_tmpfs
@pytest.mark.parametrize("once", [False, True], ids=["daemon", "once"])
def test_a_run_whose_event_finds_the_disk_full_waits_and_then_completes(tmp_path, once):
    (tmp_path / "fill.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: fill}
        stages:
          - {name: fill, type: extractor, class: tests.daemon.diskfull_stages.FillsTheDisk,
             retry_attempts: 0}
          - {name: after, type: transformer, class: tests.daemon.diskfull_stages.Passes,
             retry_attempts: 0}
        """))
    master = tmp_path / "master.yaml"
    master.write_text(textwrap.dedent("""\
        pipelines:
          - {name: fill, config_file: fill.yaml}
        daemon: {max_workers: 1, shutdown_grace: PT5S, monitoring: {enabled: false}}
        """))
    state = tmp_path / "state"
    state.mkdir()
    script = (f"mount -t tmpfs -o size=8m tmpfs {state} && exec {sys.executable} -m "
              f"tests.daemon.diskfull_daemon_child {state} {master}"
              f"{' --once' if once else ''}")
    proc = subprocess.run([*UNSHARE, "sh", "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["while_full"] == [["RUNNING"]]
    assert out["final"] == [["COMPLETED", None]], out
    types = [e[0] for e in out["events"]]
    assert "run.failed" not in types
    assert ["stage.interrupted", "fill", 1] in out["events"]
    # suspended, not recovered: a full disk is no crash, and does not count towards parking
    assert "run.suspended" in types and "run.recovered" not in types
    assert out["recoveries"] == 0
    assert "the disk holding" in out["waits"][0]["error"]
    assert out["code"] == 0      # --once: the run completed before the daemon ended

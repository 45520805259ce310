"""Small things a new user met: how an interval schedule is described, and what Ctrl-C on
`ahgd run` with a daemon does (only the waiting stops: the daemon has the run)."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from ahgd_daemon.pipelineview import describe_trigger

from .harness import Daemon, ahgd_exe, env, query, wait_until, write_config


def test_an_interval_schedule_is_described_by_its_interval_not_its_id():
    trigger = SimpleNamespace(type="schedule", id="hourly", cron=None,
                              interval=timedelta(hours=1), timezone="Australia/Sydney",
                              misfire="latest")
    assert describe_trigger(trigger)["text"] == "every PT1H (Australia/Sydney, misfire latest)"


def test_ctrl_c_while_ahgd_run_waits_for_the_daemon_says_the_run_goes_on(tmp_path):
    state = tmp_path / "state"
    master = write_config(tmp_path, transform={"sleep": 20})
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    daemon = Daemon(master, state).wait_ready(60)
    try:
        proc = subprocess.Popen([*ahgd_exe(), "run", "csvpipe", "--input",
                                 str(tmp_path / "in.csv"), "--state-dir", str(state)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env(), cwd=tmp_path,
                                # as from a terminal: a suite run in the background (CI) has
                                # SIGINT ignored, and a child would inherit that
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_until(lambda: query(state, "SELECT 1 FROM runs WHERE state = 'RUNNING'"), 60,
                   "the run to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        run_id = query(state, "SELECT run_id FROM runs")[0][0]
        assert proc.returncode == 130, out + err
        assert (f"stopped waiting; run {run_id} goes on in the daemon: follow it with "
                f"`ahgd logs -f {run_id}`, stop it with `ahgd cancel {run_id}`") in err
        assert query(state, "SELECT state FROM runs") == [("RUNNING",)]
    finally:
        daemon.stop()


def test_a_file_the_pattern_does_not_take_is_said_once_not_left_in_silence(tmp_path):
    state = tmp_path / "state"
    daemon = Daemon(write_config(tmp_path), state).wait_ready(60)
    inbox = state / "inbox" / "csvpipe"
    try:
        (tmp_path / "UPPER.CSV").write_text("a,b\n1,2\n")
        os.rename(tmp_path / "UPPER.CSV", inbox / "UPPER.CSV")       # renamed in
        (inbox / "notes.txt").write_text("not data\n")                # written in place
        (inbox / "good.csv.part").write_text("a,b\n")                 # being written: quiet
        wait_until(lambda: len(_told(daemon)) >= 2, 30,
                   "the daemon to say which files it does not take")
        (inbox / "notes.txt").write_text("still not data\n")          # again: said once
        (inbox / "good.csv").write_text("a,b\n1,2\n")                  # taken: a run
        wait_until(lambda: query(state, "SELECT 1 FROM runs"), 30, "good.csv's run")
    finally:
        daemon.stop()
    said = _told(daemon)
    assert sorted(Path(r["path"]).name for r in said) == ["UPPER.CSV", "notes.txt"]
    assert said[0]["level"] == "warning" and said[0]["pattern"] == "*.csv"
    assert "does not match the drop folder's pattern '*.csv'" in said[0]["why"]


def _told(daemon: Daemon) -> list[dict]:
    return [r for r in daemon.records() if r.get("event") == "file_not_taken"]

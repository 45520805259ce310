"""Input checks read a bounded prefix, in a child process (issue 11, item 8).

The claimer runs each drop folder's ``input_check`` on its own copy of the
file, in a child process with a timeout: a huge header, a check that hangs,
crashes or prints never reaches the daemon.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

from ahgd_daemon.dropfolder import Claimer, Folder


def quarantined(state: Path) -> list[dict]:
    con = sqlite3.connect(state / "history.db")
    try:
        rows = con.execute("SELECT payload FROM events WHERE type = 'file.quarantined' "
                           "ORDER BY seq").fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows]


def claim_bounded(claimer: Claimer, folder: Folder, path: Path, timeout: float = 60.0):
    """claim() on a thread: a claim that blocks fails the test instead of hanging it; what
    the claim raised is raised here (the drop-folder tests share this)."""
    result: list = []

    def claim() -> None:
        try:
            result.append(claimer.claim(folder, path))
        except BaseException as exc:  # handed to the test's thread
            result.append(exc)

    t = threading.Thread(target=claim, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the claim of {path.name} did not return within {timeout}s"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def test_a_header_longer_than_a_mib_is_a_reason_not_a_read(claim_env):
    state, inbox, claimer = claim_env
    path = inbox / "flat.csv"
    with open(path, "wb") as f:  # 24 MiB and no line break
        for _ in range(24):
            f.write(b"x" * (1 << 20))
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a", "b"])
    claimed = claim_bounded(claimer, folder, path)
    assert claimed.outcome == "quarantined"
    [event] = quarantined(state)
    assert "its first line is longer than 1 MiB" in event["reason"]
    assert len(event["reason"]) < 500
    reason = json.loads(Path(event["path"] + ".reason.json").read_text())
    assert reason["reason"] == event["reason"]


def test_required_columns_name_what_is_missing_and_cut_long_names_short(claim_env):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("y" * 5000 + ",b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a", "b"])
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "quarantined"
    [event] = quarantined(state)
    assert event["reason"].startswith("missing required column(s) a (the header has: yyy")
    assert len(event["reason"]) < 200


def test_the_check_runs_in_another_process(claim_env, tmp_path, monkeypatch):
    state, inbox, claimer = claim_env
    pid_file = tmp_path / "pid"
    monkeypatch.setenv("AHGD_TEST_CHECK_PID", str(pid_file))
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.record_pid")
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "arrived"
    assert int(pid_file.read_text()) != os.getpid()


def test_a_check_that_hangs_is_stopped_and_blamed(claim_env):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, check_callable="tests.daemon.checks.hang",
                    check_timeout=1.0)
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "quarantined"
    [event] = quarantined(state)
    assert event["reason"].startswith("the input check tests.daemon.checks.hang did not finish "
                                      "within 1s and was stopped; the file may well be fine")


def test_a_check_that_crashes_takes_only_its_child_with_it(claim_env):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.crash")
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "quarantined"
    [event] = quarantined(state)
    assert ("was killed by SIGKILL (the kernel kills with SIGKILL when memory runs out) "
            "before it answered") in event["reason"]
    assert "a fault of the check" in event["reason"]


def test_what_a_check_prints_is_not_its_answer(claim_env):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.chatty")
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "quarantined"
    assert quarantined(state)[0]["reason"] == "x.csv is not wanted here"


def test_a_check_that_raises_is_blamed_not_the_file(claim_env):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.raises")
    assert claim_bounded(claimer, folder, inbox / "x.csv").outcome == "quarantined"
    assert quarantined(state)[0]["reason"] == (
        "the input check tests.daemon.checks.raises failed with ValueError: the check itself is "
        "broken; that is a fault of the check, not necessarily of the file: fix the check, then "
        "drop the file again")


def test_a_stopping_daemon_cuts_a_running_check_short_and_keeps_the_file(claim_env):
    from ahgd_daemon.inputcheck import CheckAborted

    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, check_callable="tests.daemon.checks.hang",
                    check_timeout=600.0)
    errors: list = []

    def claim() -> None:
        try:
            claimer.claim(folder, inbox / "x.csv")
        except CheckAborted as exc:
            errors.append(exc)

    t = threading.Thread(target=claim, daemon=True)
    t.start()
    t.join(0.5)
    claimer.stopping.set()
    t.join(30)
    assert not t.is_alive() and len(errors) == 1
    assert (inbox / "x.csv").read_text() == "a,b\n1,2\n"
    assert not any((state / "files" / ".incoming").iterdir())
    assert quarantined(state) == []

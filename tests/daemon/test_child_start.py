"""A one-shot child's timeout counts from when its Python is up, not from the fork.

The input check, the configuration's import check and the regular-expression
check each run in a fresh interpreter (``pipelines.execution.children``).  On a
loaded machine that interpreter can take seconds to start; that time is the
machine's, not the check's: a short ``input_check.timeout`` must not quarantine
a good file for it, and an interpreter that does not come up at all leaves the
file in its folder to be tried again, with an error that says whose fault it is.

The slow start is real: a ``sitecustomize`` module on the child's path sleeps
before the interpreter runs anything of ahgd's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ahgd_daemon.dropfolder import Folder
from ahgd_daemon.intake import describe
from pipelines.execution import children

from .test_input_checks import claim_bounded

SLOW_START_S = 2.5


@pytest.fixture
def slow_start(tmp_path: Path, monkeypatch):
    """Every child started from now on spends SLOW_START_S in its interpreter's start-up."""
    site = tmp_path / "slow-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, signal, time\n"
        "if os.environ.get('AHGD_TEST_SLOW_START'):\n"
        "    time.sleep(float(os.environ['AHGD_TEST_SLOW_START']))\n"
        "if os.environ.get('AHGD_TEST_DIE_AT_START'):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.syspath_prepend(str(site))  # child_env puts our sys.path on the child's
    monkeypatch.setenv("AHGD_TEST_SLOW_START", str(SLOW_START_S))


def events_of(state: Path, kind: str) -> int:
    con = sqlite3.connect(state / "history.db")
    try:
        return con.execute("SELECT count(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]
    finally:
        con.close()


def test_a_slow_interpreter_start_is_not_the_checks_time(claim_env, slow_start):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    # the check itself takes milliseconds; its interpreter takes 2.5 s to start
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a", "b"],
                    check_timeout=1.0)
    claimed = claim_bounded(claimer, folder, inbox / "x.csv")
    assert claimed.outcome == "arrived", claimed
    assert events_of(state, "file.quarantined") == 0
    assert not (inbox / "x.csv").exists()


def test_the_checks_own_time_still_counts(claim_env, slow_start):
    state, inbox, claimer = claim_env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.hang", check_timeout=1.0)
    claimed = claim_bounded(claimer, folder, inbox / "x.csv")
    assert claimed.outcome == "quarantined"
    assert events_of(state, "file.quarantined") == 1


def test_an_interpreter_that_never_comes_up_leaves_the_file_to_be_tried_again(
        claim_env, slow_start, monkeypatch):
    state, inbox, claimer = claim_env
    monkeypatch.setattr(children, "START_S", 0.5)
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a"],
                    check_timeout=60.0)
    with pytest.raises(children.ChildNotStarted) as raised:
        claim_bounded(claimer, folder, inbox / "x.csv")
    outcome = raised.value
    # not the file's fault: it stays where it was dropped, unrecorded and unquarantined
    assert (inbox / "x.csv").read_text() == "a,b\n1,2\n"
    assert events_of(state, "file.quarantined") == 0
    assert events_of(state, "file.arrived") == 0
    said = describe(outcome, state)
    assert "the input check could not start: its Python was not up after 0.5s" in said
    assert said.endswith("the file stays in its drop folder and is tried again")


def test_the_import_check_does_not_count_the_start_either(slow_start, tmp_path, monkeypatch):
    from pipelines.config.imports import import_problems

    (tmp_path / "quick_module.py").write_text("class Stage:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_problems(["quick_module.Stage"], timeout=1.0) == {"quick_module.Stage": None}
    assert import_problems(["quick_module.Nope"], timeout=1.0)["quick_module.Nope"].startswith(
        "module 'quick_module' has no attribute 'Nope'")


def test_an_interpreter_killed_as_it_starts_is_not_the_files_fault(claim_env, slow_start,
                                                                   monkeypatch):
    state, inbox, claimer = claim_env
    monkeypatch.setenv("AHGD_TEST_SLOW_START", "0")
    monkeypatch.setenv("AHGD_TEST_DIE_AT_START", "1")  # as the kernel does when memory runs out
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a"])
    with pytest.raises(children.ChildNotStarted) as raised:
        claim_bounded(claimer, folder, inbox / "x.csv")
    outcome = raised.value
    assert "its Python was killed by SIGKILL" in str(outcome) and "before it was up" in str(outcome)
    assert (inbox / "x.csv").exists() and events_of(state, "file.quarantined") == 0


def test_a_large_request_to_a_child_stuck_in_its_start_does_not_block(slow_start, monkeypatch):
    from pipelines.config.imports import import_problems

    monkeypatch.setenv("AHGD_TEST_SLOW_START", "30")
    monkeypatch.setattr(children, "START_S", 1.0)
    # far more than a pipe holds: written as the child reads, within the start's bound
    targets = [f"package_{i:05d}.module.Stage" for i in range(8000)]
    began = time.monotonic()
    with pytest.raises(children.ChildNotStarted) as caught:
        import_problems(targets, timeout=60.0)
    assert time.monotonic() - began < 15, "the write waited for the child"
    assert "send SIGHUP again; its configuration in force stays" in str(caught.value)


def test_after_a_check_that_could_not_start_the_batchs_other_checks_wait(claim_env, slow_start,
                                                                         monkeypatch, tmp_path):
    state, inbox, claimer = claim_env
    monkeypatch.setattr(children, "START_S", 0.5)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("x.csv", "y.csv"):
        (inbox / name).write_text("a,b\n1,2\n")
    (plain / "z.csv").write_text("a,b\n1,2\n")
    checked = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a"])
    unchecked = Folder("q", plain, "*.csv", stable_for=0.0)
    result: list = []
    t = threading.Thread(target=lambda: result.append(claimer.claim_many(
        [(checked, inbox / "x.csv"), (checked, inbox / "y.csv"), (unchecked, plain / "z.csv")])),
        daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive()
    x, y, z = result[0]
    assert isinstance(x, children.ChildNotStarted) and y is x  # y's check was not tried
    assert z.outcome == "arrived"  # a file without a check is taken meanwhile
    assert (inbox / "x.csv").exists() and (inbox / "y.csv").exists()
    assert events_of(state, "file.quarantined") == 0

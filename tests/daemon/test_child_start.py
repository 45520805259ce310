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
from pathlib import Path

import pytest

from ahgd_daemon.dropfolder import Claimer, Folder
from ahgd_daemon.intake import describe
from pipelines.execution import children
from state import EventLog

SLOW_START_S = 2.5


@pytest.fixture
def slow_start(tmp_path: Path, monkeypatch):
    """Every child started from now on spends SLOW_START_S in its interpreter's start-up."""
    site = tmp_path / "slow-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('AHGD_TEST_SLOW_START'):\n"
        "    time.sleep(float(os.environ['AHGD_TEST_SLOW_START']))\n")
    monkeypatch.syspath_prepend(str(site))  # child_env puts our sys.path on the child's
    monkeypatch.setenv("AHGD_TEST_SLOW_START", str(SLOW_START_S))


@pytest.fixture
def env(tmp_path: Path):
    state = tmp_path / "state"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = EventLog.open(state)
    yield state, inbox, Claimer(log, state)
    log.close()


def events_of(state: Path, kind: str) -> int:
    con = sqlite3.connect(state / "history.db")
    try:
        return con.execute("SELECT count(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]
    finally:
        con.close()


def claim_bounded(claimer: Claimer, folder: Folder, path: Path, timeout: float = 60.0):
    """The claim's outcome, or the exception it raised; fails instead of hanging."""
    result: list = []

    def claim() -> None:
        try:
            result.append(claimer.claim(folder, path))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            result.append(exc)

    t = threading.Thread(target=claim, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the claim of {path.name} did not return within {timeout}s"
    return result[0]


def test_a_slow_interpreter_start_is_not_the_checks_time(env, slow_start):
    state, inbox, claimer = env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    # the check itself takes milliseconds; its interpreter takes 2.5 s to start
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a", "b"],
                    check_timeout=1.0)
    claimed = claim_bounded(claimer, folder, inbox / "x.csv")
    assert not isinstance(claimed, Exception), claimed
    assert claimed.outcome == "arrived", claimed
    assert events_of(state, "file.quarantined") == 0
    assert not (inbox / "x.csv").exists()


def test_the_checks_own_time_still_counts(env, slow_start):
    state, inbox, claimer = env
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0,
                    check_callable="tests.daemon.checks.hang", check_timeout=1.0)
    claimed = claim_bounded(claimer, folder, inbox / "x.csv")
    assert claimed.outcome == "quarantined"
    assert events_of(state, "file.quarantined") == 1


def test_an_interpreter_that_never_comes_up_leaves_the_file_to_be_tried_again(
        env, slow_start, monkeypatch):
    state, inbox, claimer = env
    monkeypatch.setattr(children, "START_S", 0.5)
    (inbox / "x.csv").write_text("a,b\n1,2\n")
    folder = Folder("p", inbox, "*.csv", stable_for=0.0, required_columns=["a"],
                    check_timeout=60.0)
    outcome = claim_bounded(claimer, folder, inbox / "x.csv")
    assert isinstance(outcome, children.ChildNotStarted), outcome
    # not the file's fault: it stays where it was dropped, unrecorded and unquarantined
    assert (inbox / "x.csv").read_text() == "a,b\n1,2\n"
    assert events_of(state, "file.quarantined") == 0
    assert events_of(state, "file.arrived") == 0
    said = describe(outcome, state)
    assert "the input check could not start: its Python interpreter was not up after 0.5s" in said
    assert "tried again" in said


def test_the_import_check_does_not_count_the_start_either(slow_start, tmp_path, monkeypatch):
    from pipelines.config.imports import import_problems

    (tmp_path / "quick_module.py").write_text("class Stage:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_problems(["quick_module.Stage"], timeout=1.0) == {"quick_module.Stage": None}
    assert import_problems(["quick_module.Nope"], timeout=1.0)["quick_module.Nope"].startswith(
        "module 'quick_module' has no attribute 'Nope'")

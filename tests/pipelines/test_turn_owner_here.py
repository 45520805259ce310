"""A run whose execution goes on in this process keeps later runs' loads waiting without a
look at its lock file (issue 18 item 2: four system calls per earlier run, at every look of
every waiting run), and so even when that file was deleted under it; once its execution has
ended here, or its thread is gone, the lock file decides again, as for another process's run."""

from __future__ import annotations

import threading

from pipelines.execution import turns
from state import EventLog, new_event
from state import EventType as T


def _running(log: EventLog, *run_ids: str) -> None:
    for run_id in run_ids:
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual", params={}))
    for run_id in run_ids:
        log.append(new_event(T.RUN_STARTED, run_id, stages=["load"]))


def test_a_run_executing_here_holds_its_turn_without_its_lock_file(tmp_path) -> None:
    log = EventLog.open(tmp_path)
    try:
        _running(log, "a", "b")
        made, end = threading.Event(), threading.Event()

        def execution_of_a() -> None:  # as the engine does: its LoadTurn, then run_ended
            turns.LoadTurn(log, tmp_path, "p", "a")
            made.set()
            assert end.wait(30)
            turns.run_ended("p", "a")

        a = threading.Thread(target=execution_of_a, daemon=True)
        a.start()
        try:
            assert made.wait(10)
            # no lock file of "a" exists (deleted, say): its execution here still counts
            assert not (tmp_path / "locks").exists()
            assert turns.LoadTurn(log, tmp_path, "p", "b").mine() is False
        finally:
            end.set()
            a.join(10)
        assert not a.is_alive()
        # its execution ended (the run is still RUNNING in the log): the lock file decides
        assert turns.LoadTurn(log, tmp_path, "p", "b").mine() is True

        # a thread gone without run_ended (its execution failed to start) does not count
        gone = threading.Thread(target=lambda: turns.LoadTurn(log, tmp_path, "p", "a"))
        gone.start()
        gone.join(10)
        assert turns.LoadTurn(log, tmp_path, "p", "b").mine() is True
    finally:
        for run_id in "ab":  # the LoadTurns this test made
            turns.run_ended("p", run_id)
        log.close()


def test_a_run_taken_on_counts_from_then_and_only_for_later_runs(tmp_path) -> None:
    """A run a launcher has taken on holds later runs' loads before any thread of it runs
    (a thread between its start and its first line is neither new nor alive), and never
    holds up a run requested before it."""
    log = EventLog.open(tmp_path)
    try:
        for run_id in "abc":
            log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual",
                                 params={}))
        log.append(new_event(T.RUN_STARTED, "b", stages=["load"]))
        at = {r: log.run(r).requested_seq for r in "abc"}
        turns.taken_on("a", "p", at["a"])   # earlier than b, known place: compared in memory
        turns.taken_on("c", "p")            # later than b, no place: asked of the log
        b = turns.LoadTurn(log, tmp_path, "p", "b")
        b.started(at["b"])
        assert b.mine() is False and b._waiting_for == ("a",)
        turns.run_ended("p", "a")           # its execution never began, say
        assert b.mine() is True             # c, taken on and later, holds nothing up
        unknown = turns.LoadTurn(log, tmp_path, "p", "b")  # b's own place not known yet
        turns.taken_on("a", "p", at["a"])
        assert unknown.mine() is False      # asked of the log: a is earlier and PENDING
    finally:
        for run_id in "abc":
            turns.run_ended("p", run_id)
        log.close()

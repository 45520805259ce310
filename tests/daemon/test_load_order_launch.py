"""Loads land in request order even when the daemon's thread of the earlier run is slow to
begin: the daemon launches runs oldest first, each on its own thread, and a later run's
thread could record its start, run its first stages and reach its load before the earlier
run's thread had recorded anything; its load then went first (seen in CI: run b's load
started at event 39, run a's ended at event 170).

A real RunSupervisor, real runs in this process (real SQLite), the first run's thread held
back before its execution begins."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ahgd_daemon.runs import RunSupervisor
from pipelines.execution import turns
from pipelines.execution.executors import InProcessExecutor
from state import EventLog, new_event
from state import EventType as T
from state.machine import RunState
from tests.pipelines.turn_kit import HeldFirst as Held, count_looks


class _Quiet:
    def info(self, *args, **kw) -> None:
        pass


def test_a_later_run_loads_after_an_earlier_one_whose_thread_began_late(tmp_path: Path,
                                                                         monkeypatch) -> None:
    looks = count_looks(monkeypatch)
    Held.begin.clear()
    log = EventLog.open(tmp_path)
    executor = InProcessExecutor(2)
    pipeline = Held("loads", state_dir=tmp_path)
    for run_id in "ab":
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="loads", trigger="manual"))
    runs = RunSupervisor(log, tmp_path, executor, None, lock=threading.RLock(),
                         monotonic=time.monotonic, wake=lambda: None,
                         alert=lambda *a, **kw: None, logger=_Quiet())
    ended_before = turns._ended["loads"][0] if "loads" in turns._ended else 0
    try:
        # oldest first, as start_pending launches them: a with its place in the requests (compared
        # in memory), b without (asked of the log)
        runs._launch("a", "loads", pipeline, place=log.run("a").requested_seq)
        runs._launch("b", "loads", pipeline)
        deadline = time.monotonic() + 60
        while looks.get("b", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert looks.get("b", 0) >= 1, "run b never reached its load"
        # b has done its first stages and asked for its turn; a has not even started
        assert log.run("a").state == RunState.PENDING
        assert ("b", "stage.started", "load") not in [(e.run_id, e.type, e.stage)
                                                       for e in log.events()]
        Held.begin.set()
        for run_id in "ab":
            runs.active[run_id].thread.join(60)
            assert not runs.active[run_id].thread.is_alive()
        assert [runs.active[r].error for r in "ab"] == [None, None]
        assert log.run("a").state == log.run("b").state == RunState.COMPLETED
        events = [(e.run_id, e.type, e.stage) for e in log.events()]
        assert events.index(("a", "stage.completed", "load")) < \
            events.index(("b", "stage.started", "load"))
        # both executions ended: neither holds a later run of the pipeline up any more, and
        # each woke the waiting runs once (the engine said so; its launcher's word was no news)
        assert "a" not in turns._here and "b" not in turns._here
        assert turns._ended["loads"][0] - ended_before == 2
    finally:
        Held.begin.set()
        for active in runs.active.values():
            active.thread.join(60)
        executor.shutdown()
        log.close()


def test_a_run_whose_thread_fails_before_its_execution_holds_nobody_up(tmp_path: Path) -> None:
    """The launcher's own end: an execution that never began (its run lock held elsewhere, a
    broken pipeline) is forgotten when its thread ends, and later runs are woken."""
    log = EventLog.open(tmp_path)
    executor = InProcessExecutor(1)

    class Broken(Held):
        def execute_run(self, run_id: str, **kw):
            raise RuntimeError("the pipeline failed to build")

    for run_id in "ab":
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="loads", trigger="manual"))
    runs = RunSupervisor(log, tmp_path, executor, None, lock=threading.RLock(),
                         monotonic=time.monotonic, wake=lambda: None,
                         alert=lambda *a, **kw: None, logger=_Quiet())
    try:
        ended_before = turns._ended["loads"][0] if "loads" in turns._ended else 0
        runs._launch("a", "loads", Broken("loads", state_dir=tmp_path))
        runs.active["a"].thread.join(60)
        assert isinstance(runs.active["a"].error, RuntimeError)
        assert "a" not in turns._here  # forgotten by its launcher, and the waiting woken
        assert turns._ended["loads"][0] - ended_before == 1
        turn = turns.LoadTurn(log, tmp_path, "loads", "b")
        turn.started(log.run("b").requested_seq)
        assert turn.mine() is True
    finally:
        turns.run_ended("loads", "b")
        executor.shutdown()
        log.close()

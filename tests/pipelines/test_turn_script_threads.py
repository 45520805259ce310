"""Runs of one pipeline that a script's threads start with ``run()`` load in the order they
were requested, even when the thread that asked first is slow to begin executing: a run is
taken on from its request (the daemon's own launches are tested in
tests/daemon/test_load_order_launch.py)."""

from __future__ import annotations

import threading
import time

from pipelines.execution import turns
from state import EventLog
from state.machine import RunState
from tests.pipelines.turn_kit import HeldFirst as Held, count_looks


def test_a_scripts_later_run_loads_after_an_earlier_one_that_began_late(tmp_path, monkeypatch):
    looks = count_looks(monkeypatch)
    Held.begin.clear()
    results: dict[str, object] = {}

    def run(run_id: str) -> None:
        results[run_id] = Held("held", state_dir=tmp_path, executor="inprocess").run(
            run_id=run_id)

    threads = {r: threading.Thread(target=run, args=(r,), daemon=True) for r in "ab"}
    log = EventLog.open(tmp_path)
    try:
        threads["a"].start()
        deadline = time.monotonic() + 60
        while log.run("a") is None and time.monotonic() < deadline:  # a is requested first
            time.sleep(0.01)
        assert log.run("a").state == RunState.PENDING
        threads["b"].start()
        while looks.get("b", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert looks.get("b", 0) >= 1, "run b never reached its load"
        assert log.run("a").state == RunState.PENDING  # a has still not begun
        assert ("b", "stage.started", "load") not in [(e.run_id, e.type, e.stage)
                                                       for e in log.events()]
    finally:
        Held.begin.set()
        for t in threads.values():
            t.join(60)
    assert [results[r].state for r in "ab"] == ["COMPLETED", "COMPLETED"]
    events = [(e.run_id, e.type, e.stage) for e in log.events()]
    assert events.index(("a", "stage.completed", "load")) < \
        events.index(("b", "stage.started", "load"))
    assert "a" not in turns._here and "b" not in turns._here
    log.close()


def test_a_scripts_run_holds_its_lock_from_before_its_request(tmp_path, monkeypatch):
    """A daemon on the same state directory launches PENDING runs nobody holds: a run() must
    hold its run's lock when its request is recorded, or the daemon could take it first."""
    from state.locks import is_locked, run_lock_path

    held_at_request: list[bool] = []
    append = EventLog.append

    def watched(self, event, **kw):
        if event.type == "run.requested":
            held_at_request.append(is_locked(run_lock_path(tmp_path, event.run_id)))
        return append(self, event, **kw)

    monkeypatch.setattr(EventLog, "append", watched)
    Held.begin.set()
    ctx = Held("held", state_dir=tmp_path, executor="inprocess").run(run_id="solo")
    assert ctx.state == "COMPLETED"
    assert held_at_request == [True]
    assert not run_lock_path(tmp_path, "solo").exists()  # released (and removed) at the end

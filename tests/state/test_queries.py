"""The named questions of state.queries, asked of real event logs built from real events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from state import EventLog, EventType as T, RunState, format_ts, new_event, parse_ts
from state import queries as q
from state.db import ReadOnlyHistory, connect

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


class Clock:
    """The log's clock: each reading one second after the last, or frozen with ``hold``."""

    def __init__(self) -> None:
        self.now = T0
        self.step = timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def hold(self) -> None:
        self.step = timedelta(0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(state_dir: Path, clock: Clock):
    with EventLog.open(state_dir, clock=clock) as log:
        yield log


def request(log: EventLog, run_id: str, pipeline: str) -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="manual"))


def start(log: EventLog, run_id: str, stages: tuple[str, ...] = ("a",)) -> None:
    log.append(new_event(T.RUN_STARTED, run_id, stages=list(stages)))


def complete(log: EventLog, run_id: str, stages: tuple[str, ...] = ("a",)) -> None:
    for stage in stages:
        log.append(new_event(T.STAGE_STARTED, run_id, stage=stage, attempt=1))
        log.append(new_event(T.STAGE_COMPLETED, run_id, stage=stage, attempt=1,
                             output={"path": f"/data/{run_id}/{stage}-a1.duckdb"}, rows=3))
    log.append(new_event(T.RUN_COMPLETED, run_id))


def fail(log: EventLog, run_id: str) -> None:
    log.append(new_event(T.STAGE_STARTED, run_id, stage="a", attempt=1))
    log.append(new_event(T.STAGE_FAILED, run_id, stage="a", attempt=1, error="boom"))
    log.append(new_event(T.RUN_FAILED, run_id, stage="a", error="stage 'a' failed"))


def make_run(log: EventLog, run_id: str, pipeline: str, state: str = RunState.PENDING) -> None:
    """A run requested, then taken to ``state`` by the events that lead there."""
    request(log, run_id, pipeline)
    if state == RunState.CANCELLED:
        log.append(new_event(T.RUN_CANCELLED, run_id, reason="not wanted"))
    if state in (RunState.PENDING, RunState.CANCELLED):
        return
    start(log, run_id)
    if state == RunState.COMPLETED:
        complete(log, run_id)
    elif state == RunState.FAILED:
        fail(log, run_id)
    elif state == RunState.PARKED:
        log.append(new_event(T.RUN_PARKED, run_id, reason="crashed too often"))


def a_run_in_each_state(log: EventLog) -> None:
    """Run ``<state>-1`` of pipeline ``<state>_p`` (lower case) for every run state."""
    for state in RunState:
        make_run(log, f"{state.lower()}-1", f"{state.lower()}_p", state)


# --------------------------------------------------------------------------- run admission


def test_pipelines_in_flight_are_those_with_a_run_pending_or_running(log):
    assert q.pipelines_in_flight(log) == set()
    a_run_in_each_state(log)
    assert q.pipelines_in_flight(log) == {"pending_p", "running_p"}
    complete(log, "running-1")
    assert q.pipelines_in_flight(log) == {"pending_p"}


def test_pending_runs_in_request_order_only_of_the_pipelines_asked(log, clock):
    request(log, "b-late", "b")
    request(log, "a-early", "a")
    request(log, "c-other", "c")
    clock.hold()  # the next two are requested in the same microsecond: still in that order
    request(log, "a-2", "a")
    request(log, "a-1", "a")
    request(log, "running", "a")
    start(log, "running")  # not pending any more: never listed
    assert q.pending_runs(log, ["a", "b"], limit=10) == [
        ("b-late", "b"), ("a-early", "a"), ("a-2", "a"), ("a-1", "a")]
    assert q.pending_runs(log, ["a"], limit=2) == [("a-early", "a"), ("a-2", "a")]
    assert q.pending_runs(log, ["c", "nope"], limit=10) == [("c-other", "c")]
    assert q.pending_runs(log, [], limit=10) == []


def test_a_queue_of_blocked_runs_does_not_hide_a_startable_one_behind_the_limit(log):
    for i in range(5):
        request(log, f"blocked-{i}", "downstream")
    request(log, "unblocker", "upstream")
    assert q.pending_runs(log, ["upstream"], limit=1) == [("unblocker", "upstream")]


def test_run_state_follows_the_run_and_is_none_for_an_unknown_run(log):
    assert q.run_state(log, "r") is None
    request(log, "r", "p")
    assert q.run_state(log, "r") == RunState.PENDING
    start(log, "r")
    assert q.run_state(log, "r") == RunState.RUNNING
    complete(log, "r")
    assert q.run_state(log, "r") == RunState.COMPLETED


def test_pipelines_with_pending_runs(log):
    assert q.pipelines_with_pending_runs(log) == set()
    a_run_in_each_state(log)
    request(log, "pending-2", "pending_p")
    assert q.pipelines_with_pending_runs(log) == {"pending_p"}
    start(log, "pending-1")
    start(log, "pending-2")
    assert q.pipelines_with_pending_runs(log) == set()


# --------------------------------------------------------------------------- upstream triggers


def test_an_upstream_completion_is_covered_by_a_pending_downstream_run(log):
    ended = format_ts(T0 + timedelta(days=1))  # even one that ended after every event here
    assert not q.upstream_completion_covered(log, "down", ended)
    request(log, "d1", "down")
    assert q.upstream_completion_covered(log, "down", ended)
    assert not q.upstream_completion_covered(log, "other", ended)


def test_an_upstream_completion_is_covered_by_a_run_started_at_or_after_it_not_before(log):
    request(log, "d1", "down")
    start(log, "d1")
    started = log.run("d1").started_at
    complete(log, "d1")  # ended since: only its start counts
    before, after = (format_ts(parse_ts(started) + d)
                     for d in (timedelta(microseconds=-1), timedelta(microseconds=1)))
    assert q.upstream_completion_covered(log, "down", before)
    assert q.upstream_completion_covered(log, "down", started)
    assert not q.upstream_completion_covered(log, "down", after)


def test_a_run_pending_again_after_a_crash_covers_only_what_ended_before_its_start(log):
    """Its extract may have read the warehouse before the new load: a fresh run must follow."""
    request(log, "d1", "down")
    start(log, "d1", ("extract", "load"))
    log.append(new_event(T.STAGE_STARTED, "d1", stage="extract", attempt=1))
    log.append(new_event(T.STAGE_COMPLETED, "d1", stage="extract", attempt=1, rows=1))
    log.append(new_event(T.RUN_RECOVERED, "d1"))
    assert log.run("d1").state == RunState.PENDING
    started = log.run("d1").started_at
    later = format_ts(parse_ts(started) + timedelta(seconds=1))
    assert q.upstream_completion_covered(log, "down", started)
    assert not q.upstream_completion_covered(log, "down", later)


def test_a_failed_or_cancelled_downstream_run_covers_by_its_start_only(log):
    make_run(log, "never-started", "down", RunState.CANCELLED)
    assert not q.upstream_completion_covered(log, "down", format_ts(T0))
    make_run(log, "failed", "down", RunState.FAILED)
    assert q.upstream_completion_covered(log, "down", format_ts(T0))
    assert not q.upstream_completion_covered(log, "down", format_ts(T0 + timedelta(days=1)))


def test_last_completed_run_is_the_latest_to_end_and_ignores_other_outcomes(log):
    assert q.last_completed_run(log, "up") is None
    request(log, "first", "up")
    request(log, "second", "up")
    start(log, "second")
    start(log, "first")
    complete(log, "second")
    complete(log, "first")  # requested first, ended last
    make_run(log, "failed-later", "up", RunState.FAILED)
    make_run(log, "elsewhere", "other", RunState.COMPLETED)
    assert q.last_completed_run(log, "up") == ("first", log.run("first").ended_at)
    assert q.last_completed_run(log, "never") is None


# --------------------------------------------------------------------------- counts


def test_counts_by_state_and_of_pending_runs(log):
    assert q.run_counts_by_state(log) == {}
    assert q.pending_run_count(log) == 0
    a_run_in_each_state(log)
    request(log, "pending-2", "pending_p")
    assert q.run_counts_by_state(log) == {"PENDING": 2, "RUNNING": 1, "COMPLETED": 1,
                                          "FAILED": 1, "CANCELLED": 1, "PARKED": 1}
    assert q.pending_run_count(log) == 2


# --------------------------------------------------------------------------- recovery


def test_recorded_output_paths_are_those_of_completed_attempts_of_that_run(log):
    request(log, "r", "p")
    start(log, "r", stages=("a", "b", "c"))
    log.append(new_event(T.STAGE_STARTED, "r", stage="a", attempt=1))
    log.append(new_event(T.STAGE_COMPLETED, "r", stage="a", attempt=1,
                         output={"path": "/d/r/a-a1.duckdb", "sha256": "x"}))
    log.append(new_event(T.STAGE_STARTED, "r", stage="b", attempt=1))
    log.append(new_event(T.STAGE_COMPLETED, "r", stage="b", attempt=1, output={"value": 3}))
    log.append(new_event(T.STAGE_STARTED, "r", stage="c", attempt=1))  # in flight: no output
    make_run(log, "other", "p", RunState.COMPLETED)
    assert q.recorded_output_paths(log, "r") == ["/d/r/a-a1.duckdb"]
    assert q.recorded_output_paths(log, "other") == ["/data/other/a-a1.duckdb"]
    assert q.recorded_output_paths(log, "unknown") == []


# --------------------------------------------------------------------------- history


def _three_runs(log: EventLog) -> None:
    make_run(log, "r1", "p", RunState.COMPLETED)
    make_run(log, "r2", "q")
    make_run(log, "r3", "p", RunState.FAILED)


def test_run_history_orders_filters_limits_and_picks_columns(log):
    _three_runs(log)
    assert [r["run_id"] for r in q.run_history(log)] == ["r1", "r2", "r3"]
    assert [r["run_id"] for r in q.run_history(log, newest_first=True)] == ["r3", "r2", "r1"]
    assert [r["run_id"] for r in q.run_history(log, newest_first=True, limit=2)] == ["r3", "r2"]
    assert [r["run_id"] for r in q.run_history(log, pipeline="p")] == ["r1", "r3"]
    assert q.run_history(log, pipeline="none") == []
    full = q.run_history(log, limit=1)[0]
    assert list(full)[:8] == ["run_id", "pipeline", "trigger", "state", "started_at",
                              "ended_at", "duration_s", "error"]
    assert full["state"] == "COMPLETED" and full["duration_s"] == 3.0  # 3 clock ticks
    picked = q.run_history(log, columns=["state", "run_id"], newest_first=True)
    assert picked == [{"state": "FAILED", "run_id": "r3"}, {"state": "PENDING", "run_id": "r2"},
                      {"state": "COMPLETED", "run_id": "r1"}]


def test_run_history_ties_in_request_time_are_ordered_by_run_id(log, clock):
    clock.hold()
    for run_id in ("b", "c", "a"):
        request(log, run_id, "p")
    assert [r["run_id"] for r in q.run_history(log)] == ["a", "b", "c"]
    assert [r["run_id"] for r in q.run_history(log, newest_first=True)] == ["c", "b", "a"]


def test_the_same_answers_through_a_read_only_connection_and_a_read_only_history(log, state_dir):
    _three_runs(log)
    conn = connect(state_dir / "history.db", readonly=True)
    try:
        assert q.run_history(conn, newest_first=True) == q.run_history(log, newest_first=True)
        assert q.pending_runs(conn, ["q"], limit=5) == [("r2", "q")]
    finally:
        conn.close()
    with ReadOnlyHistory(state_dir / "history.db") as history:
        assert q.run_counts_by_state(history) == {"COMPLETED": 1, "PENDING": 1, "FAILED": 1}


def test_run_summary_has_the_api_columns_in_order(log, state_dir):
    _three_runs(log)
    conn = connect(state_dir / "history.db", readonly=True)
    try:
        summary = q.run_summary(conn, "r3")
        assert q.run_summary(conn, "nope") is None
    finally:
        conn.close()
    assert tuple(summary) == q.RUN_SUMMARY_COLUMNS
    assert summary["state"] == "FAILED" and summary["failed_stage"] == "a"
    assert summary["error"] == "stage 'a' failed" and summary["duration_s"] == 3.0


def test_stage_attempts_every_attempt_in_order_across_chunks_of_run_ids(log):
    request(log, "r1", "p")
    start(log, "r1", stages=("a", "b"))
    log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=1))
    log.append(new_event(T.STAGE_FAILED, "r1", stage="a", attempt=1, error="flaky"))
    log.append(new_event(T.STAGE_RETRYING, "r1", stage="a", attempt=2, delay_s=0))
    log.append(new_event(T.STAGE_STARTED, "r1", stage="a", attempt=2))
    log.append(new_event(T.STAGE_COMPLETED, "r1", stage="a", attempt=2, rows=5, wall_s=0.25))
    log.append(new_event(T.STAGE_STARTED, "r1", stage="b", attempt=1))
    make_run(log, "r2", "p", RunState.COMPLETED)
    # the second run beyond the first chunk of bound parameters
    ids = ["r1", *(f"unknown-{i}" for i in range(q._CHUNK + 10)), "r2"]
    attempts = q.stage_attempts(log, ids)
    assert set(attempts) == {"r1", "r2"}
    assert [(a["stage"], a["attempt"], a["state"]) for a in attempts["r1"]] == [
        ("a", 1, "FAILED"), ("a", 2, "COMPLETED"), ("b", 1, "RUNNING")]
    first, second, running = attempts["r1"]
    assert list(first) == ["stage", "attempt", "state", "started_at", "ended_at", "duration_s",
                           "error", "rows"]
    assert first["error"] == "flaky" and first["duration_s"] == 1.0      # from the timestamps
    assert second["duration_s"] == 0.25 and second["rows"] == 5          # measured wall time
    assert running["ended_at"] is None and running["duration_s"] is None
    assert attempts["r2"][0]["rows"] == 3
    assert q.stage_attempts(log, []) == {}


def test_run_events_in_order_with_their_payloads(log):
    request(log, "r", "p")
    start(log, "r", stages=("a",))
    complete(log, "r")
    request(log, "other", "p")
    events = q.run_events(log, "r")
    assert [e["type"] for e in events] == ["run.requested", "run.started", "stage.started",
                                           "stage.completed", "run.completed"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["payload"] == {"pipeline": "p", "trigger": "manual"}
    assert events[3]["stage"] == "a" and events[3]["attempt"] == 1
    assert events[3]["payload"]["output"] == {"path": "/data/r/a-a1.duckdb"}
    assert q.run_events(log, "unknown") == []


# --------------------------------------------------------------------------- a run's own story


def attempt_fails(log: EventLog, run_id: str, stage: str, attempt: int, how=T.STAGE_FAILED) -> None:
    log.append(new_event(T.STAGE_STARTED, run_id, stage=stage, attempt=attempt))
    log.append(new_event(how, run_id, stage=stage, attempt=attempt, error="boom"))


def test_failed_attempts_count_from_the_last_human_retry_and_not_interruptions(log):
    request(log, "r", "p")
    start(log, "r", ("a", "b"))
    attempt_fails(log, "r", "a", 1)
    log.append(new_event(T.STAGE_RETRYING, "r", stage="a", attempt=2, delay_s=0.5))
    attempt_fails(log, "r", "a", 2, T.STAGE_TIMED_OUT)
    log.append(new_event(T.RUN_FAILED, "r", error="a failed"))
    assert q.failed_attempts_since_retry(log, "r") == {"a": 2}
    assert [(s, d) for s, _, d in q.retry_waits(log, "r")] == [("a", 0.5)]
    log.append(new_event(T.RUN_RETRIED, "r"))
    assert q.failed_attempts_since_retry(log, "r") == {}
    start(log, "r", ("a", "b"))
    attempt_fails(log, "r", "a", 3)
    attempt_fails(log, "r", "a", 4, T.STAGE_INTERRUPTED)
    assert q.failed_attempts_since_retry(log, "r") == {"a": 1}
    assert q.failed_attempts_since_retry(log, "no-such-run") == {}


def test_ended_runs_without_kept_outputs_are_those_asked_so_and_ended(log):
    for run_id, keep in (("kept", True), ("dropped", False), ("default", None)):
        params = {} if keep is None else {"keep_outputs": keep}
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", params=params))
        start(log, run_id)
        complete(log, run_id)
    log.append(new_event(T.RUN_REQUESTED, "waiting", pipeline="p", params={"keep_outputs": False}))
    log.append(new_event(T.RUN_REQUESTED, "other", pipeline="q", params={"keep_outputs": False}))
    start(log, "other")
    complete(log, "other")
    assert q.ended_runs_without_kept_outputs(log, "p") == ["dropped"]
    assert q.ended_runs_without_kept_outputs(log, "q") == ["other"]

"""The monitor's fold without threads: events fed to ``observe(state, event, now)`` with a
fixed clock, asserting on the alert actions it returns and on the state it leaves; and
a state seeded from an event log against the same history folded event by event."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.monitoring.alerts import Action, alert_event
from pipelines.monitoring.fold import OBSERVED, end_run, observe, set_thresholds, take_sample
from pipelines.monitoring.history import load_history
from pipelines.monitoring.monitor_state import MonitorState
from pipelines.monitoring.records import AlertSeverity, DiskSample, SystemSample
from pipelines.monitoring.thresholds import MonitorThresholds
from state import EventLog
from state.events import new_event

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=1)          # the fixed clock: alerts raised and resolved "now"
QUIET = {"cpu_percent": 100, "memory_percent": 100, "disk_percent": 100}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(seq: int, type: str, run_id: str | None = None, **kw):
    """An event as the log hands it out: seq, and ts ``seq`` seconds after T0."""
    ts = at(seq).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return new_event(type, run_id, **kw)._replace(seq=seq, ts=ts)


def fold(state: MonitorState, *events) -> list[Action]:
    return [a for e in events for a in observe(state, e, NOW)]


def run(seq: int, run_id: str, end: str, pipeline: str = "health", **end_kw) -> list:
    """requested, started, one stage (2 s), and ``end`` 5 s after the start."""
    return [ev(seq, "run.requested", run_id, pipeline=pipeline, trigger="manual"),
            ev(seq + 1, "run.started", run_id, stages=["extract"]),
            ev(seq + 2, "stage.started", run_id, stage="extract", attempt=1),
            ev(seq + 4, "stage.completed" if end == "run.completed" else "stage.failed", run_id,
               stage="extract", attempt=1, wall_s=2.0),
            ev(seq + 6, end, run_id, **end_kw)]


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.alert.id) for a in actions]


@pytest.fixture
def state() -> MonitorState:
    return MonitorState.new(MonitorThresholds.from_mapping(QUIET))


# -- runs ---------------------------------------------------------------------------

def test_a_failing_run_raises_pipeline_failing_and_a_later_completion_resolves_it(state):
    actions = fold(state, *run(0, "r1", "run.failed", stage="extract", error="bad header"))
    assert kinds(actions) == [("raise", "pipeline.failing:health")]
    [(_, alert)] = actions
    assert (alert.severity, alert.name, alert.run_id) == (AlertSeverity.ERROR,
                                                          "pipeline.failing", None)
    assert alert.message == "run r1 of pipeline 'health' failed at stage 'extract': bad header"
    assert alert.fields == {"pipeline": "health", "run_id": "r1", "stage": "extract",
                            "error": "bad header"}
    assert alert.at == at(6)               # raised when the run failed, by the event's time
    assert state.open == {"pipeline.failing:health": alert}
    assert fold(state, *run(10, "r2", "run.failed", error="again")) == []   # one alert
    assert alert.repeats == 1

    actions = fold(state, *run(20, "r3", "run.completed"))
    assert actions == [Action("resolve", alert)]
    assert (alert.resolved_at, alert.resolution) == (NOW, "run r3 of pipeline 'health' completed")
    assert state.open == {}
    stats = state.pipelines["health"]
    assert stats.runs == {"FAILED": 2, "COMPLETED": 1}
    assert stats.last_success_at == at(26)
    assert [r["run_id"] for r in stats.recent_runs] == ["r3", "r2", "r1"]
    assert list(stats.completed_durations) == [5.0]
    assert stats.stages["extract"].states == {"FAILED": 2, "COMPLETED": 1}


def test_a_run_failed_on_replay_names_its_stage_from_failed_stage(state):
    # state/orphans.py fails a script's crashed run with ``failed_stage`` in the payload
    events = run(0, "r1", "run.failed", failed_stage="extract", error="the script died")
    [(_, alert)] = fold(state, *events)
    assert alert.message == ("run r1 of pipeline 'health' failed at stage 'extract': "
                             "the script died")
    assert state.pipelines["health"].last_run["failed_stage"] == "extract"


def test_only_the_latest_ending_of_a_pipeline_decides_whether_it_is_failing(state):
    fold(state, *run(0, "new", "run.completed")[:-1], *run(10, "old", "run.failed")[:-1])
    assert fold(state, ev(30, "run.completed", "new")) == []
    # a listener may see an older run's ending late: it does not make the pipeline failing
    assert fold(state, ev(20, "run.failed", "old", error="x")) == []
    assert state.open == {} and state.pipelines["health"].runs == {"COMPLETED": 1, "FAILED": 1}


def test_run_parked_needs_a_human_until_retried_or_cancelled(state):
    raised = fold(state, *run(0, "p1", "run.parked", reason="recovered 3 times"))
    assert kinds(raised) == [("raise", "run.parked:p1")]
    assert raised[0].alert.severity == AlertSeverity.CRITICAL
    assert raised[0].alert.message == (
        "run p1 of pipeline 'health' was parked after repeated recoveries; it needs a human "
        "(ahgd retry p1, or ahgd cancel p1)")
    assert state.parked == {"p1"} and state.queue_figures()["parked_runs"] == 1
    retried = fold(state, ev(20, "run.retried", "p1"))
    assert kinds(retried) == [("resolve", "run.parked:p1")]
    assert retried[0].alert.resolution == "run p1 was retried"
    assert state.parked == set() and state.live["p1"].state == "PENDING"

    fold(state, ev(30, "run.started", "p1"), ev(31, "run.parked", "p1"))
    cancelled = fold(state, ev(40, "run.cancelled", "p1"))
    assert kinds(cancelled) == [("resolve", "run.parked:p1")]
    assert cancelled[0].alert.resolution == "run p1 was cancelled"
    # one run: counted once per final state it reached, however often it reached it
    assert state.pipelines["health"].runs == {"PARKED": 1, "CANCELLED": 1}


def test_a_retried_run_older_than_memory_is_looked_up_through_the_state(state):
    state.find_pipeline = {"old": "abs"}.get          # what the monitor asks its log
    fold(state, ev(1, "run.retried", "old"), ev(2, "run.started", "old"))
    assert state.live["old"].pipeline == "abs" and state.run_pipeline["old"] == "abs"
    state.find_pipeline = None
    fold(state, ev(3, "run.retried", "older"))
    assert state.live["older"].pipeline == "unknown"


def test_a_file_quarantined_is_an_alert_until_a_run_of_its_pipeline_completes(state):
    actions = fold(state, ev(1, "file.arrived", "r1", pipeline="health", name="a.csv"),
                   ev(2, "file.duplicate", pipeline="health", name="a.csv"),
                   ev(3, "file.quarantined", pipeline="health", name="b.csv", reason="empty",
                      stored_path="/q/b.csv"))
    assert kinds(actions) == [("raise", "file.quarantined:health")]
    alert = actions[0].alert
    assert alert.message == "file 'b.csv' for pipeline 'health' was quarantined: empty"
    assert alert.fields == {"pipeline": "health", "file": "b.csv", "reason": "empty",
                            "path": "/q/b.csv"}
    assert state.pipelines["health"].files == {"taken": 1, "duplicate": 1, "quarantined": 1}
    assert kinds(fold(state, *run(10, "r2", "run.completed"))) == [
        ("resolve", "file.quarantined:health")]


def test_the_failure_rate_alert_opens_above_the_threshold_and_closes_at_or_below(state):
    actions = []
    for n in range(4):
        actions += fold(state, *run(n * 10, f"f{n}", "run.failed", error="x"))
    assert kinds(actions) == [("raise", "pipeline.failing:health"),
                              ("raise", "pipeline.failure_rate_high:health")]
    rate = actions[1].alert
    assert rate.message == "4 of the last 4 runs of pipeline 'health' failed"
    assert rate.fields == {"pipeline": "health", "failure_rate": 1.0, "threshold": 0.5, "runs": 4}
    closed = []
    for n in range(4):
        closed += fold(state, *run(100 + n * 10, f"c{n}", "run.completed"))
    assert kinds(closed) == [("resolve", "pipeline.failing:health"),
                             ("resolve", "pipeline.failure_rate_high:health")]
    assert rate.resolution == "failure rate of pipeline 'health' is back to 50%"   # 4 of 8


def test_turning_the_failure_rate_off_resolves_it_at_once(state):
    for n in range(4):
        fold(state, *run(n * 10, f"f{n}", "run.failed"))
    actions = set_thresholds(state, state.thresholds.with_changes(pipeline_failure_rate=None),
                             NOW)
    assert kinds(actions) == [("resolve", "pipeline.failure_rate_high:health")]
    assert actions[0].alert.resolution == "the failure-rate threshold was turned off"
    assert state.thresholds.pipeline_failure_rate is None


# -- stages -------------------------------------------------------------------------

def test_a_stage_running_too_long_is_slow_on_a_sample_and_resolved_when_it_ends():
    state = MonitorState.new(MonitorThresholds.from_mapping({**QUIET, "stage_duration_s": 60}))
    fold(state, ev(1, "run.requested", "r1", pipeline="health"),
         ev(2, "run.started", "r1", stages=["load"]),
         ev(3, "stage.started", "r1", stage="load", attempt=1))
    sample = SystemSample(at(63), 10.0, 10.0, (), 50.0, 1.0, 0)
    assert take_sample(state, sample, NOW) == []          # 60 s: not above the threshold
    actions = take_sample(state, replace(sample, at=at(64)), NOW)
    assert kinds(actions) == [("raise", "stage.slow:r1:load")]
    assert actions[0].alert.message == ("stage 'load' of pipeline 'health' has taken 61.0s, "
                                        "above the threshold of 60s")
    assert len(state.samples) == 2
    resolved = fold(state, ev(70, "stage.completed", "r1", stage="load", attempt=1, wall_s=67.0))
    assert kinds(resolved) == [("resolve", "stage.slow:r1:load")]
    assert resolved[0].alert.resolution == "stage 'load' ended COMPLETED after 67.0s"
    assert state.stage_started == {}
    # a completed attempt over the threshold that no sample caught: raised and resolved at once
    fold(state, ev(71, "stage.started", "r1", stage="save", attempt=1))
    both = fold(state, ev(72, "stage.completed", "r1", stage="save", attempt=1, wall_s=90.0))
    assert kinds(both) == [("raise", "stage.slow:r1:save"), ("resolve", "stage.slow:r1:save")]


def test_a_stage_that_timed_out_is_an_alert_until_its_run_ends(state):
    actions = fold(state, ev(1, "run.requested", "r9", pipeline="seifa"),
                   ev(2, "run.started", "r9", stages=["extract"]),
                   ev(3, "stage.started", "r9", stage="extract", attempt=1),
                   ev(9, "stage.timed_out", "r9", stage="extract", attempt=1))
    assert kinds(actions) == [("raise", "stage.timed_out:r9:extract")]
    alert = actions[0].alert
    assert (alert.run_id, alert.fields["duration_s"]) == ("r9", 6.0)   # from the timestamps
    assert state.live["r9"].stage_states == {"extract": ("TIMED_OUT", 1)}
    stage = state.pipelines["seifa"].stages["extract"]
    assert stage.states == {"TIMED_OUT": 1} and stage.durations.count == 1
    ended = fold(state, ev(10, "run.failed", "r9", error="timed out"))
    assert kinds(ended) == [("resolve", "stage.timed_out:r9:extract"),
                            ("raise", "pipeline.failing:seifa")]
    assert alert.resolution == "run r9 ended FAILED"


def test_retries_count_when_the_attempt_starts_not_when_it_is_announced(state):
    fold(state, ev(1, "run.requested", "r1", pipeline="health"), ev(2, "run.started", "r1"),
         ev(3, "stage.started", "r1", stage="load", attempt=1),
         ev(4, "stage.failed", "r1", stage="load", attempt=1, error="locked"),
         ev(5, "stage.retrying", "r1", stage="load", attempt=2))
    load = state.pipelines["health"].stages["load"]
    assert (load.states, load.retries) == ({"FAILED": 1}, 0)
    assert state.live["r1"].stage_states["load"] == ("RETRYING", 2)
    fold(state, ev(6, "stage.started", "r1", stage="load", attempt=2))
    assert (load.retries, state.queue_figures()["running_stages"]) == (1, 1)


# -- system samples ---------------------------------------------------------------

def test_a_full_disk_is_one_alert_and_a_disk_no_longer_watched_is_resolved():
    state = MonitorState.new(MonitorThresholds.from_mapping({**QUIET, "disk_percent": 80}))
    full = DiskSample("/srv", 95.0, 10, ("/srv", "/srv/inbox"))
    other = DiskSample("/var", 10.0, 10**9, ("/var",))
    sample = SystemSample(NOW, None, None, (full, other), None, None, None)
    actions = take_sample(state, sample, NOW)
    assert kinds(actions) == [("raise", "system.disk_nearly_full:/srv")]
    assert actions[0].alert.message == ("use of the disk holding /srv is 95.0%, above the "
                                        "threshold of 80%")
    assert take_sample(state, sample, NOW) == []
    gone = take_sample(state, SystemSample(NOW, None, None, (other,), None, None, None), NOW)
    assert kinds(gone) == [("resolve", "system.disk_nearly_full:/srv")]
    assert gone[0].alert.resolution.startswith("that disk is no longer watched")
    # no disk read at all (psutil failed): nothing is judged
    take_sample(state, sample, NOW)
    assert take_sample(state, SystemSample(NOW, None, None, (), None, None, None), NOW) == []
    assert list(state.open) == ["system.disk_nearly_full:/srv"]


def test_a_run_far_beyond_its_pipelines_p95_is_slow(state):
    for n in range(5):                                          # five 5 s runs
        fold(state, *run(n * 10, f"r{n}", "run.completed"))
    fold(state, ev(100, "run.requested", "slow", pipeline="health"), ev(101, "run.started", "slow"))
    sample = SystemSample(at(116), None, None, (), None, None, None)
    assert take_sample(state, sample, NOW) == []                # 15 s: not above 3 x 5 s
    [(kind, alert)] = take_sample(state, replace(sample, at=at(117)), NOW)
    assert (kind, alert.id, alert.fields["p95_s"]) == ("raise", "run.slow:slow", 5.0)
    assert kinds(fold(state, ev(120, "run.completed", "slow"))) == [("resolve", "run.slow:slow")]


# -- purity -------------------------------------------------------------------------

def test_events_the_fold_does_not_read_leave_the_state_alone(state):
    fold(state, *run(0, "r1", "run.failed"))
    before = repr(state)
    for type in ("alert.raised", "alert.resolved", "orchestration.started"):
        assert type not in OBSERVED
    assert fold(state, ev(50, "alert.resolved", alert_id="x", reason="y")) == []
    assert repr(state) == before


def test_a_run_ended_from_code_has_its_duration_from_the_given_times(state):
    state.live.clear()
    fold(state, ev(1, "run.requested", "r1", pipeline="health"), ev(2, "run.started", "r1"))
    duration, actions = end_run(state, "r1", "COMPLETED", at(44), {}, NOW)
    assert (duration, actions) == (42.0, [])
    assert state.pipelines["health"].last_run["ended_at"] == "2026-01-01T00:00:44.000000Z"


# -- seeded state equals folded state -------------------------------------------------

def _history(log: EventLog) -> None:
    """A history without the documented differences (no run retried by hand, no file
    dropped twice, no clean stop): finished, failed, parked, running and queued runs."""
    from state import EventType as T

    def append(*events):
        for e in events:
            log.append(e)

    for run_id, pipeline, outcome in [("a1", "health", "ok"), ("a2", "health", "fail"),
                                      ("b1", "seifa", "ok"), ("b2", "seifa", "park"),
                                      ("a3", "health", "ok"), ("b3", "seifa", "fail")]:
        append(new_event(T.FILE_ARRIVED, run_id, pipeline=pipeline, sha256=run_id * 32,
                         name=f"{run_id}.csv"),
               new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="drop_folder"),
               new_event(T.RUN_STARTED, run_id, stages=["extract", "load"]),
               new_event(T.STAGE_STARTED, run_id, stage="extract", attempt=1),
               new_event(T.STAGE_COMPLETED, run_id, stage="extract", attempt=1, wall_s=0.5,
                         rows=10, cpu_s=0.25, peak_rss_mb=40.0,
                         # a1 and b1 quarantine rows: a3 (clean) resolves health's alert
                         **({"validation": {"rows": 12, "rejected": 2}}
                            if run_id in ("a1", "b1") else {})),
               new_event(T.STAGE_STARTED, run_id, stage="load", attempt=1))
        if outcome == "ok":
            append(new_event(T.STAGE_FAILED, run_id, stage="load", attempt=1, error="locked",
                             wall_s=0.125),
                   new_event(T.STAGE_RETRYING, run_id, stage="load", attempt=2),
                   new_event(T.STAGE_STARTED, run_id, stage="load", attempt=2),
                   new_event(T.STAGE_COMPLETED, run_id, stage="load", attempt=2, wall_s=0.25),
                   new_event(T.RUN_COMPLETED, run_id))
        elif outcome == "fail":
            append(new_event(T.STAGE_FAILED, run_id, stage="load", attempt=1, error="bad",
                             wall_s=0.125),
                   new_event(T.RUN_FAILED, run_id, stage="load", error="bad"))
        else:
            append(new_event(T.STAGE_INTERRUPTED, run_id, stage="load", attempt=1),
                   new_event(T.RUN_PARKED, run_id, reason="recovered 3 times"))
    append(new_event(T.FILE_QUARANTINED, pipeline="seifa", sha256="f" * 64, name="x.csv",
                     reason="empty"),
           new_event(T.RUN_REQUESTED, "live", pipeline="health", trigger="manual"),
           new_event(T.RUN_STARTED, "live", stages=["extract", "load"]),
           new_event(T.STAGE_STARTED, "live", stage="extract", attempt=1),
           new_event(T.STAGE_COMPLETED, "live", stage="extract", attempt=1, wall_s=0.5,
                     rows=4, validation={"rows": 5, "rejected": 1}),
           new_event(T.STAGE_STARTED, "live", stage="load", attempt=1),
           new_event(T.RUN_REQUESTED, "queued", pipeline="seifa", trigger="schedule"))


def _durations(state: MonitorState) -> dict:
    """Run and stage durations: seeded ones are millisecond-precise (SQLite's date maths)."""
    return {(name, stage): (h.count, h.total)
            for name, s in state.pipelines.items()
            for stage, h in [(None, s.durations), *((k, v.durations) for k, v in s.stages.items())]}


def _comparable(state: MonitorState) -> dict:
    """What seeding promises to restore, durations apart."""
    return {
        "pipelines": {name: {
            "runs": dict(s.runs), "files": {k: v for k, v in s.files.items() if v},
            "last_success_at": s.last_success_at, "recent": list(s.recent),
            "completed_durations": len(s.completed_durations),
            "duration_buckets": s.durations.counts,
            "recent_runs": [(r["run_id"], r["state"]) for r in s.recent_runs],
            "stages": {stage: (dict(st.states), st.retries, st.rows, st.rows_rejected, st.cpu_s,
                               st.peak_rss_mb, st.max_attempt, st.durations.counts)
                       for stage, st in s.stages.items()},
        } for name, s in state.pipelines.items()},
        "live": {k: (r.pipeline, r.state, r.trigger, r.requested_at, r.started_at, r.stages,
                     r.stage_states, r.rows_rejected) for k, r in state.live.items()},
        "parked": state.parked,
        "open": {k: (a.name, a.severity, a.message, a.fields, a.run_id)
                 for k, a in state.open.items()},
        "run_pipeline": dict(state.run_pipeline),
        "stage_started": dict(state.stage_started),
    }


def test_a_state_seeded_from_the_log_equals_the_history_folded_event_by_event(state_dir):
    with EventLog.open(state_dir) as log:
        _history(log)
        folded = MonitorState.new(MonitorThresholds.from_mapping(QUIET))
        for event in log.events():
            for action in observe(folded, event, NOW):
                log.append(alert_event(action))     # as the monitor records them
        seeded = MonitorState.new(MonitorThresholds.from_mapping(QUIET))
        assert load_history(seeded, log, NOW) == []  # nothing left to resolve
    assert sorted(folded.open) == ["file.quarantined:seifa", "pipeline.failing:seifa",
                                   "pipeline.rows_rejected:health",   # by the live run
                                   "pipeline.rows_rejected:seifa", "run.parked:b2"]
    assert folded.pipelines["seifa"].stages["extract"].rows_rejected == 2
    assert folded.pipelines["health"].stages["extract"].rows_rejected == 3
    assert folded.open["pipeline.failing:seifa"].message == (
        "run b3 of pipeline 'seifa' failed at stage 'load': bad")
    assert _comparable(seeded) == _comparable(folded)
    durations = _durations(folded)
    assert _durations(seeded) == {k: (n, pytest.approx(total, abs=5e-3))
                                  for k, (n, total) in durations.items()}
    assert durations[("health", "load")] == (5, 3 * 0.125 + 2 * 0.25)   # wall_s, exact
    assert seeded.queue_figures() == folded.queue_figures() == {
        "pending_runs": 1, "running_runs": 1, "running_stages": 1, "parked_runs": 1}

"""PipelineMonitor: thresholds, statistics from events, alerts in the JSON log and the
event log, dashboard data, exports (parsed with prometheus_client's own parser)."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from pipelines.errors import ConfigError
from pipelines.monitoring import AlertSeverity, MonitorThresholds, PipelineMonitor
from state import EventLog
from state.events import new_event

ALL_100 = {"cpu_percent": 100, "memory_percent": 100, "disk_percent": 100}


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class JsonLog:
    """A structlog logger rendering JSON lines into a buffer, as the daemon's would."""

    def __init__(self) -> None:
        self.buf = io.StringIO()
        self.logger = structlog.wrap_logger(
            structlog.PrintLogger(self.buf),
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        )

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.buf.getvalue().splitlines()]

    def alerts(self) -> list[dict]:
        return [d for d in self.lines() if d.get("alert") is True]


@pytest.fixture
def jlog() -> JsonLog:
    """Alerts must reach the JSON log; this captures and parses what is written."""
    return JsonLog()


@pytest.fixture
def clock() -> FakeClock:
    """Run durations from the name-based API come from the injected clock."""
    return FakeClock()


@pytest.fixture
def monitor(tmp_path, jlog, clock) -> PipelineMonitor:
    """A monitor whose system thresholds never fire, so only pipeline alerts show."""
    return PipelineMonitor(tmp_path / "metrics", thresholds=ALL_100, logger=jlog.logger,
                           clock=clock)


def ev(seq: int, type: str, run_id: str | None = None, **kw):
    """A real event as the log hands it out: seq and ts assigned (one second apart)."""
    ts = (datetime(2026, 1, 1) + timedelta(seconds=seq)).isoformat(timespec="microseconds")
    return new_event(type, run_id, **kw)._replace(seq=seq, ts=ts + "Z")


def health_run_events(start: int = 1, run_id: str = "r1", end: str = "run.completed", **end_kw):
    """requested, started, extract ok (2.5s), load failed once then ok, run end."""
    s = start
    return [
        ev(s, "run.requested", run_id, pipeline="health", stages=["extract", "load"]),
        ev(s + 1, "run.started", run_id),
        ev(s + 2, "stage.started", run_id, stage="extract", attempt=1),
        ev(s + 3, "stage.completed", run_id, stage="extract", attempt=1, wall_s=2.5,
           cpu_s=1.25, peak_rss_mb=100.0, rows=1000),
        ev(s + 4, "stage.started", run_id, stage="load", attempt=1),
        ev(s + 7, "stage.failed", run_id, stage="load", attempt=1, error="locked"),
        ev(s + 8, "stage.retrying", run_id, stage="load", attempt=2),
        ev(s + 9, "stage.started", run_id, stage="load", attempt=2),
        ev(s + 10, "stage.completed", run_id, stage="load", attempt=2, wall_s=1.0, cpu_s=0.5,
           peak_rss_mb=300.0, rows=1000),
        ev(s + 11, end, run_id, **end_kw),
    ]


# -- thresholds ---------------------------------------------------------------

def test_low_disk_threshold_raises_exactly_one_alert_resolved_when_raised(state_dir, jlog):
    with EventLog.open(state_dir) as log:
        mon = PipelineMonitor(state_dir / "metrics", thresholds={**ALL_100, "disk_percent": 0.001},
                              logger=jlog.logger, event_log=log, disk_paths=[state_dir])
        for _ in range(3):
            mon.sample_now()
        [alert] = mon.get_alerts()
        assert (alert.id, alert.severity) == (f"system.disk_nearly_full:{state_dir}",
                                              AlertSeverity.ERROR)
        assert alert.fields["path"] == str(state_dir) and alert.fields["threshold"] == 0.001
        assert [tuple(r) for r in log.query("SELECT alert_id, name FROM open_alerts")] == [
            (alert.id, "system.disk_nearly_full")]
        mon.set_thresholds(disk_percent=100)
        mon.sample_now()
        mon.sample_now()
        assert mon.open_alerts() == [] and alert.resolved_at is not None
        types = [e.type for e in log.events(types=["alert.raised", "alert.resolved"])]
        assert types == ["alert.raised", "alert.resolved"]
        row = log.query("SELECT state, times_raised, resolution FROM alerts")[0]
        assert (row[0], row[1]) == ("RESOLVED", 1)
        assert row[2].startswith(f"use of the disk holding {state_dir} is back to ")
    firing, resolved = jlog.alerts()
    assert (firing["alert_state"], firing["level"], firing["severity"]) == ("firing", "error", "error")
    assert (resolved["alert_state"], resolved["level"], resolved["raised_severity"]) == (
        "resolved", "info", "error")
    assert firing["alert_id"] == resolved["alert_id"] == alert.id


def test_thresholds_at_100_raise_nothing(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds=ALL_100, logger=jlog.logger)
    for _ in range(3):
        sample = mon.sample_now()
    assert mon.get_alerts() == []
    [disk] = sample.disks
    assert 0 < disk.percent <= 100 and disk.free_bytes > 0 and disk.paths == (str(tmp_path),)
    assert sample.process_rss_mb > 0
    assert sample.child_processes >= 0


def test_disks_are_read_once_per_filesystem(tmp_path, jlog):
    inbox = tmp_path / "inbox" / "not-created-yet"
    mon = PipelineMonitor(tmp_path / "m", thresholds=ALL_100, logger=jlog.logger,
                          disk_paths=[tmp_path, inbox, "/proc"])
    disks = mon.sample_now().disks
    assert [d.paths for d in disks] == [(str(tmp_path), str(inbox)), ("/proc",)]


def test_memory_alert_resolves_once_below_threshold(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "memory_percent": 0},
                          logger=jlog.logger)
    mon.sample_now()
    mon.set_thresholds(memory_percent=100)
    mon.sample_now()
    mon.sample_now()
    [alert] = mon.get_alerts()
    assert (alert.severity, alert.name, alert.open) == (AlertSeverity.WARNING,
                                                         "system.memory_high", False)
    assert alert.resolution.startswith("memory use is back to ")
    assert [(d["level"], d["alert_state"]) for d in jlog.alerts()] == [
        ("warning", "firing"), ("info", "resolved")]


def test_unknown_threshold_names_the_closest():
    with pytest.raises(ConfigError) as err:
        MonitorThresholds.from_mapping({"cpu_percnt": 80})
    assert str(err.value) == (
        "monitor threshold 'cpu_percnt' is unknown (did you mean 'cpu_percent'?); known "
        "thresholds: cpu_percent, memory_percent, disk_percent, run_duration_factor, "
        "run_duration_min_runs, stage_duration_s, pipeline_failure_rate, failure_rate_min_runs")


@pytest.mark.parametrize("key, value, message", [
    ("disk_percent", 150, "monitor threshold 'disk_percent' is 150; use a percentage from 0 "
                          "to 100, or None to turn it off"),
    ("pipeline_failure_rate", 2, "monitor threshold 'pipeline_failure_rate' is 2; use a "
                                 "fraction from 0 to 1 such as 0.5, or None to turn it off"),
    ("run_duration_factor", 0.5, "monitor threshold 'run_duration_factor' is 0.5; use a factor "
                                 "of 1 or more, such as 3, or None to turn it off"),
    ("stage_duration_s", "PT0S", "monitor threshold 'stage_duration_s' is 0s; use a positive "
                                 "ISO 8601 duration such as PT30M"),
    ("failure_rate_min_runs", 0, "monitor threshold 'failure_rate_min_runs' is 0; use a whole "
                                 "number of runs, 1 or more"),
])
def test_bad_threshold_values(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as err:
        PipelineMonitor(tmp_path, thresholds={key: value})
    assert str(err.value) == message


def test_threshold_defaults_and_duration_text():
    t = MonitorThresholds.from_mapping({"stage_duration_s": "PT30M"})
    assert (t.cpu_percent, t.memory_percent, t.disk_percent) == (None, 85.0, 90.0)
    assert (t.run_duration_factor, t.run_duration_min_runs) == (3.0, 5)
    assert t.stage_duration_s == 1800.0
    assert (t.pipeline_failure_rate, t.failure_rate_min_runs) == (0.5, 4)


# -- runs and stages from events ----------------------------------------------

def test_pipeline_and_stage_stats_from_events(monitor):
    for e in health_run_events():
        monitor.observe(e)
    for e in health_run_events(100, "r2", "run.failed", stage="load", error="disk full"):
        monitor.observe(e)
    health = monitor.get_dashboard_data()["pipelines"]["health"]
    assert health["runs"] == {"COMPLETED": 1, "FAILED": 1}
    assert health["active_runs"] == 0
    assert health["success_rate"] == 0.5
    assert health["duration_s"] == {"count": 2, "mean": 10.0, "max": 10.0, "total": 20.0}
    assert health["last_run"] == {
        "run_id": "r2", "pipeline": "health", "state": "FAILED", "trigger": None,
        "requested_at": "2026-01-01T00:01:40.000000Z", "started_at": "2026-01-01T00:01:41.000000Z",
        "ended_at": "2026-01-01T00:01:51.000000Z", "duration_s": 10.0, "failed_stage": "load",
        "error": "disk full"}
    assert health["last_success_at"] == "2026-01-01T00:00:12.000000Z"
    extract, load = health["stages"]["extract"], health["stages"]["load"]
    assert extract["attempts"] == {"COMPLETED": 2}
    assert extract["duration_s"] == {"count": 2, "mean": 2.5, "max": 2.5, "total": 5.0}
    assert (extract["rows"], extract["cpu_s"], extract["peak_rss_mb"]) == (2000, 2.5, 100.0)
    assert load["attempts"] == {"COMPLETED": 2, "FAILED": 2}   # a retry is not an outcome
    assert load["retries"] == 2
    # the failed attempt's duration comes from its stage.started/stage.failed timestamps
    assert load["duration_s"]["max"] == 3.0
    assert (load["max_attempt"], load["peak_rss_mb"]) == (2, 300.0)
    [alert] = monitor.get_alerts()
    assert (alert.severity, alert.name, alert.id) == (AlertSeverity.ERROR, "pipeline.failing",
                                                      "pipeline.failing:health")
    assert alert.fields == {"pipeline": "health", "run_id": "r2", "stage": "load",
                            "error": "disk full"}
    assert alert.message == "run r2 of pipeline 'health' failed at stage 'load': disk full"


def test_a_failing_pipeline_is_one_alert_until_a_run_completes(monitor, jlog):
    for n, end in enumerate(["run.failed", "run.failed", "run.completed", "run.failed"]):
        for e in health_run_events(n * 100, f"r{n}", end, error=f"boom {n}"):
            monitor.observe(e)
    first, second = [a for a in monitor.get_alerts() if a.name == "pipeline.failing"]
    assert (first.id, first.repeats, first.open) == ("pipeline.failing:health", 1, False)
    assert first.resolution == "run r2 of pipeline 'health' completed"
    assert (second.id, second.open) == ("pipeline.failing:health", True)
    assert second.message == "run r3 of pipeline 'health' failed: boom 3"
    assert [d["alert_state"] for d in jlog.alerts() if d["event"] == "pipeline.failing"] == [
        "firing", "resolved", "firing"]


def test_observe_decodes_raw_payload_left_by_replay(monitor):
    """Replay leaves ``payload`` None for stage events; observe() uses event.data()."""
    events = health_run_events()
    done = events[3]
    events[3] = done._replace(payload=None, raw=json.dumps(done.payload))
    for e in events:
        monitor.observe(e)
    extract = monitor.get_dashboard_data()["pipelines"]["health"]["stages"]["extract"]
    assert (extract["rows"], extract["duration_s"]["total"]) == (1000, 2.5)


def test_parked_timed_out_and_quarantined_alerts_and_what_resolves_them(monitor, jlog):
    monitor.observe(ev(1, "run.requested", "r9", pipeline="seifa"))
    monitor.observe(ev(2, "run.started", "r9"))
    monitor.observe(ev(3, "stage.started", "r9", stage="extract", attempt=1))
    monitor.observe(ev(9, "stage.timed_out", "r9", stage="extract", attempt=1))
    monitor.observe(ev(10, "run.parked", "r9", reason="recovered 3 times"))
    monitor.observe(ev(11, "file.quarantined", pipeline="seifa", name="bad.csv",
                       sha256="ab" * 32, reason="not UTF-8"))
    assert [(a.severity, a.name, a.open) for a in monitor.get_alerts()] == [
        (AlertSeverity.WARNING, "stage.timed_out", False),   # its run ended (parked)
        (AlertSeverity.CRITICAL, "run.parked", True),
        (AlertSeverity.WARNING, "file.quarantined", True),
    ]
    timed_out, _resolved, parked, quarantined = jlog.alerts()
    assert timed_out == {"event": "stage.timed_out", "alert": True, "severity": "warning",
                         "alert_id": "stage.timed_out:r9:extract", "alert_state": "firing",
                         "level": "warning", "pipeline": "seifa", "run_id": "r9",
                         "stage": "extract", "attempt": 1, "duration_s": 6.0,
                         "detail": "stage 'extract' of pipeline 'seifa' timed out (run r9, "
                                   "attempt 1)"}
    assert (parked["severity"], parked["reason"]) == ("critical", "recovered 3 times")
    assert (quarantined["file"], quarantined["reason"]) == ("bad.csv", "not UTF-8")
    dash = monitor.get_dashboard_data()
    assert dash["pipelines"]["seifa"]["runs"] == {"PARKED": 1}
    assert dash["pipelines"]["seifa"]["files"] == {"taken": 0, "duplicate": 0, "quarantined": 1}
    assert dash["queue"]["parked_runs"] == 1
    assert [a["name"] for a in dash["alerts"]["open"]] == ["run.parked", "file.quarantined"]
    monitor.observe(ev(12, "run.retried", "r9"))
    monitor.observe(ev(13, "run.started", "r9"))
    monitor.observe(ev(14, "run.completed", "r9"))
    assert monitor.open_alerts() == []
    assert monitor.queue_figures()["parked_runs"] == 0


def test_a_run_far_beyond_its_usual_p95_raises_run_slow(monitor, clock):
    for n in range(5):                            # five 10 s runs: p95 = 10 s
        for e in health_run_events(n * 100, f"r{n}"):
            monitor.observe(e)
    clock.now = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    monitor.observe(ev(3600, "run.requested", "slow", pipeline="health"))
    monitor.observe(ev(3601, "run.started", "slow", stages=["extract", "load"]))
    clock.advance(30)
    monitor.sample_now()
    assert monitor.open_alerts() == []            # 29 s: not above 3 x 10 s
    clock.advance(2)
    monitor.sample_now()
    monitor.sample_now()
    [alert] = monitor.open_alerts()
    assert (alert.id, alert.severity) == ("run.slow:slow", AlertSeverity.WARNING)
    assert alert.message == ("run slow of pipeline 'health' has been running for 31s, more "
                             "than 3 x its usual p95 of 10.0s")
    monitor.observe(ev(3640, "run.completed", "slow"))
    assert monitor.open_alerts() == [] and alert.resolution == "run slow ended COMPLETED"


def test_a_stage_running_past_its_threshold_raises_stage_slow(tmp_path, jlog, clock):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "stage_duration_s": 60},
                          logger=jlog.logger, clock=clock)
    mon.observe(ev(1, "run.requested", "r1", pipeline="health"))
    mon.observe(ev(2, "run.started", "r1", stages=["load"]))
    mon.observe(ev(3, "stage.started", "r1", stage="load", attempt=1))
    clock.now = datetime(2026, 1, 1, 0, 1, 4, tzinfo=timezone.utc)
    mon.sample_now()
    [alert] = mon.open_alerts()
    assert alert.message == ("stage 'load' of pipeline 'health' has taken 61.0s, above the "
                             "threshold of 60s")
    mon.observe(ev(70, "stage.completed", "r1", stage="load", attempt=1, wall_s=67.0))
    assert mon.open_alerts() == []
    assert alert.resolution == "stage 'load' ended COMPLETED after 67.0s"


def test_name_api_uses_the_injected_clock(monitor, clock):
    monitor.start_pipeline_monitoring("health_pipeline")
    clock.advance(42)
    assert monitor.stop_pipeline_monitoring("health_pipeline") == 42.0
    monitor.record_stage("health_pipeline", "extract", state="completed", duration_s=4.0,
                         rows=10, cpu_s=1.0, peak_rss_mb=50.0)
    p = monitor.get_dashboard_data()["pipelines"]["health_pipeline"]
    assert (p["runs"], p["duration_s"]["max"]) == ({"COMPLETED": 1}, 42.0)
    assert p["stages"]["extract"]["attempts"] == {"COMPLETED": 1}


def test_slow_stage_recorded_from_code_is_raised_and_resolved(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "stage_duration_s": 60},
                          logger=jlog.logger)
    mon.record_stage("health", "load", state="COMPLETED", duration_s=59)
    mon.record_stage("health", "load", state="COMPLETED", duration_s=61)
    [alert] = mon.get_alerts()
    assert alert.name == "stage.slow" and not alert.open
    assert alert.message == ("stage 'load' of pipeline 'health' has taken 61.0s, above the "
                             "threshold of 60s")


def test_failure_rate_alert_fires_once_then_resolves(monitor):
    for state in ["FAILED"] * 5 + ["COMPLETED"] * 6:
        monitor.start_pipeline_monitoring("abs")
        monitor.stop_pipeline_monitoring("abs", state=state)
    [rate] = [a for a in monitor.get_alerts() if a.name == "pipeline.failure_rate_high"]
    # 5 of 10 is not above 0.5: that is where it resolves
    assert rate.fields["runs"] == 4 and not rate.open
    assert rate.message == "4 of the last 4 runs of pipeline 'abs' failed"
    assert rate.resolution == "failure rate of pipeline 'abs' is back to 50%"


def test_get_alerts_since(monitor, clock):
    monitor.raise_alert("warning", "first", "one")
    clock.advance(60)
    cut = clock.now
    second = monitor.raise_alert(AlertSeverity.INFO, "second", "two")
    assert monitor.get_alerts(since=cut) == [second]


def test_dashboard_shows_active_runs_with_progress_and_the_last_runs(monitor, clock):
    for n in range(12):
        for e in health_run_events(n * 100, f"r{n:02}"):
            monitor.observe(e)
    clock.now = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
    monitor.observe(ev(3600, "run.requested", "live", pipeline="health", trigger="drop_folder"))
    monitor.observe(ev(3601, "run.started", "live", stages=["extract", "clean", "load"]))
    monitor.observe(ev(3602, "stage.started", "live", stage="extract", attempt=1))
    monitor.observe(ev(3603, "stage.completed", "live", stage="extract", attempt=1))
    monitor.observe(ev(3604, "stage.started", "live", stage="clean", attempt=1))
    monitor.observe(ev(3605, "run.requested", "queued", pipeline="health"))
    clock.advance(10)
    dash = json.loads(json.dumps(monitor.get_dashboard_data(recent=3)))
    live, queued = dash["active_runs"]
    assert {k: live[k] for k in ("run_id", "state", "trigger", "current_stage", "stages_total",
                                 "stages_done", "progress_percentage", "elapsed_s")} == {
        "run_id": "live", "state": "RUNNING", "trigger": "drop_folder", "current_stage": "clean",
        "stages_total": 3, "stages_done": 1, "progress_percentage": 33.3, "elapsed_s": 9.0}
    assert [s["state"] for s in live["stages"]] == ["COMPLETED", "RUNNING", "PENDING"]
    assert (queued["run_id"], queued["state"], queued["elapsed_s"]) == ("queued", "PENDING", None)
    assert [r["run_id"] for r in dash["recent_runs"]["health"]] == ["r11", "r10", "r09"]
    assert dash["queue"] == {"pending_runs": 1, "running_runs": 1, "running_stages": 1,
                             "parked_runs": 0}


def test_a_long_queue_lists_the_oldest_pending_runs_and_counts_the_rest(monitor):
    from pipelines.monitoring import ACTIVE_PENDING_SHOWN

    monitor.observe(ev(1, "run.requested", "running", pipeline="health"))
    monitor.observe(ev(2, "run.started", "running", stages=["extract"]))
    for n in range(ACTIVE_PENDING_SHOWN + 5):
        monitor.observe(ev(10 + n, "run.requested", f"q{n:03}", pipeline="health"))
    dash = monitor.get_dashboard_data()
    ids = [r["run_id"] for r in dash["active_runs"]]
    assert ids == ["running"] + [f"q{n:03}" for n in range(ACTIVE_PENDING_SHOWN)]
    assert dash["active_runs_not_shown"] == 5
    assert dash["queue"]["pending_runs"] == ACTIVE_PENDING_SHOWN + 5


# -- alerts in the logs ---------------------------------------------------------

def test_alert_is_one_json_log_line_once_per_condition(monitor, jlog):
    alert = monitor.raise_alert("ERROR", "load.rejected", "3 rows rejected", pipeline="health",
                                rows=3)
    again = monitor.raise_alert("ERROR", "load.rejected", "4 rows rejected", rows=4)
    assert again is alert and alert.repeats == 1
    [line] = jlog.lines()
    assert line == {"event": "load.rejected", "alert": True, "severity": "error",
                    "alert_id": "load.rejected", "alert_state": "firing",
                    "level": "error", "detail": "3 rows rejected", "pipeline": "health",
                    "rows": 3}
    assert alert.at == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert monitor.resolve_alert("load.rejected", "reloaded by hand") is alert
    assert monitor.resolve_alert("load.rejected") is None


def test_alert_messages_for_bad_input(monitor):
    with pytest.raises(ConfigError) as err:
        monitor.raise_alert("warn", "x", "y")
    assert str(err.value) == ("alert severity 'warn' is unknown (did you mean 'warning'?); "
                              "use one of: info, warning, error, critical")
    with pytest.raises(ConfigError) as err:
        monitor.raise_alert("info", "x", "y", detail="z")
    assert str(err.value) == ("alert 'x' has field 'detail', which the log line uses itself; "
                              "rename it (reserved: alert, alert_id, alert_state, detail, "
                              "event, level, severity, timestamp)")


def _record_runs(log: EventLog) -> None:
    from state import EventType as T

    for run_id, outcome in [("a1", "ok"), ("a2", "fail"), ("a3", "park")]:
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="health", trigger="manual"))
        log.append(new_event(T.RUN_STARTED, run_id, stages=["extract"]))
        log.append(new_event(T.STAGE_STARTED, run_id, stage="extract", attempt=1))
        if outcome == "ok":
            log.append(new_event(T.STAGE_COMPLETED, run_id, stage="extract", attempt=1,
                                 wall_s=0.75, rows=10))
            log.append(new_event(T.RUN_COMPLETED, run_id))
        elif outcome == "fail":
            log.append(new_event(T.STAGE_FAILED, run_id, stage="extract", attempt=1,
                                 error="bad header", wall_s=0.25))
            log.append(new_event(T.RUN_FAILED, run_id, stage="extract", error="bad header"))
        else:
            log.append(new_event(T.STAGE_INTERRUPTED, run_id, stage="extract", attempt=1))
            log.append(new_event(T.RUN_PARKED, run_id, reason="recovered 3 times"))
    log.append(new_event(T.RUN_REQUESTED, "q1", pipeline="health", trigger="manual"))


def test_a_new_monitor_on_the_same_log_keeps_counts_and_open_alerts(state_dir, jlog):
    with EventLog.open(state_dir) as log:
        first = PipelineMonitor(state_dir / "metrics", thresholds=ALL_100, logger=jlog.logger,
                                event_log=log)
        log.add_listener(first.observe)
        _record_runs(log)
        before = _metric_values(first.export_metrics("prometheus"))
        second = PipelineMonitor(state_dir / "metrics", thresholds=ALL_100, logger=jlog.logger,
                                 event_log=log)
        after = _metric_values(second.export_metrics("prometheus"))
        assert sorted(a.id for a in second.open_alerts()) == [
            "pipeline.failing:health", "run.parked:a3"]
        assert len(jlog.alerts()) == 2          # nothing raised again by the second monitor
        for key, value in before.items():
            if key[0].startswith(("ahgd_runs", "ahgd_stage_", "ahgd_run_duration", "ahgd_queue",
                                  "ahgd_parked", "ahgd_last_success", "ahgd_alerts_open")):
                # SQLite date arithmetic is millisecond-precise: so are seeded durations
                assert after.get(key) == pytest.approx(value, rel=1e-3, abs=5e-3), key
        assert second.get_dashboard_data()["recent_runs"]["health"][0]["run_id"] == "a3"


def test_an_alert_whose_run_ended_unwatched_is_resolved_on_load(state_dir, jlog):
    from state import EventType as T

    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="health", trigger="manual"))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["extract"]))
        first = PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=jlog.logger,
                                event_log=log)
        first.raise_alert("warning", "run.slow", "slow", alert_id="run.slow:r1", run_id="r1")
        log.append(new_event(T.RUN_CANCELLED, "r1"))     # written while no monitor listened
        PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=jlog.logger, event_log=log)
        assert [tuple(r) for r in log.query("SELECT alert_id, state, resolution FROM alerts")] == [
            ("run.slow:r1", "RESOLVED", "run r1 ended while no monitor was watching")]


# -- exports ---------------------------------------------------------------------

def _metric_values(text: str) -> dict[tuple[str, tuple], float]:
    """Parse with prometheus_client's own parser: {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def test_prometheus_metrics_after_a_known_sequence_of_runs(state_dir, jlog):
    from state import EventType as T

    with EventLog.open(state_dir) as log:
        mon = PipelineMonitor(state_dir / "metrics", thresholds=ALL_100, logger=jlog.logger,
                              event_log=log, disk_paths=[state_dir])
        log.add_listener(mon.observe)
        _record_runs(log)
        log.append(new_event(T.FILE_ARRIVED, pipeline="health", sha256="a" * 64, name="x.csv"))
        log.append(new_event(T.FILE_DUPLICATE, pipeline="health", sha256="a" * 64, name="x.csv"))
        log.append(new_event(T.FILE_QUARANTINED, pipeline="health", sha256="b" * 64,
                             name="y.csv", reason="empty"))
        log.append(new_event(T.RUN_REQUESTED, "r5", pipeline="health", trigger="manual"))
        log.append(new_event(T.RUN_STARTED, "r5", stages=["extract"]))
        log.append(new_event(T.STAGE_STARTED, "r5", stage="extract", attempt=1))
        log.append(new_event(T.STAGE_FAILED, "r5", stage="extract", attempt=1, error="x"))
        log.append(new_event(T.STAGE_RETRYING, "r5", stage="extract", attempt=2))
        log.append(new_event(T.STAGE_STARTED, "r5", stage="extract", attempt=2))
        mon.sample_now()
        appends = log.query("SELECT COUNT(*) FROM events")[0][0]
        v = _metric_values(mon.export_metrics(format="prometheus"))
        success_at = log.query("SELECT ended_at FROM runs WHERE run_id = 'a1'")[0][0]
    h, hx = (("pipeline", "health"),), (("pipeline", "health"), ("stage", "extract"))
    assert v[("ahgd_runs_total", h + (("state", "COMPLETED"),))] == 1
    assert v[("ahgd_runs_total", h + (("state", "FAILED"),))] == 1
    assert v[("ahgd_runs_total", h + (("state", "PARKED"),))] == 1
    assert v[("ahgd_stage_attempts_total", (("outcome", "COMPLETED"),) + hx)] == 1
    assert v[("ahgd_stage_attempts_total", (("outcome", "FAILED"),) + hx)] == 2
    assert v[("ahgd_stage_retries_total", hx)] == 1
    # attempts that ran and ended: 0.75 s, 0.25 s, and two that ended at once (interrupted, failed)
    assert v[("ahgd_stage_duration_seconds_count", hx)] == 4
    assert v[("ahgd_stage_duration_seconds_sum", hx)] == pytest.approx(1.0, abs=0.2)
    assert v[("ahgd_stage_duration_seconds_bucket", (("le", "0.5"),) + hx)] == 3
    assert v[("ahgd_stage_duration_seconds_bucket", (("le", "1.0"),) + hx)] == 4
    for outcome in ("taken", "duplicate", "quarantined"):
        assert v[("ahgd_files_total", (("outcome", outcome),) + h)] == 1
    assert v[("ahgd_queue_depth", ())] == 1               # q1
    assert v[("ahgd_running_runs", ())] == 1              # r5
    assert v[("ahgd_running_stages", ())] == 1
    assert v[("ahgd_parked_runs", ())] == 1
    assert v[("ahgd_last_success_timestamp_seconds", h)] == pytest.approx(
        datetime.fromisoformat(success_at.replace("Z", "+00:00")).timestamp())
    # every append before the scrape, alerts' own appends included
    assert v[("ahgd_event_log_append_seconds_count", ())] == appends
    assert v[("ahgd_alerts_open", (("name", "pipeline.failing"), ("severity", "error")))] == 1
    assert v[("ahgd_alerts_open", (("name", "run.parked"), ("severity", "critical")))] == 1
    assert v[("ahgd_process_resident_memory_bytes", ())] > 0
    assert v[("ahgd_process_cpu_seconds_total", ())] > 0
    assert 0 < v[("ahgd_disk_usage_ratio", (("path", str(state_dir)),))] <= 1


def test_prometheus_escapes_label_values(monitor):
    name = 'he"al\\th\nx'
    monitor.record_stage(name, "load", state="COMPLETED", duration_s=1)
    values = _metric_values(monitor.export_metrics("prometheus"))
    assert values[("ahgd_stage_duration_seconds_count",
                   (("pipeline", name), ("stage", "load")))] == 1


@pytest.fixture
def busy_monitor(monitor) -> PipelineMonitor:
    """A monitor with a system sample, two runs, stage stats and one alert to export."""
    monitor.sample_now()
    for e in health_run_events() + health_run_events(100, "r2", "run.failed", error="x"):
        monitor.observe(e)
    return monitor


def test_csv_export_has_one_row_per_sample(busy_monitor):
    text = busy_monitor.export_metrics("csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["metric", "labels", "value"]
    assert len(rows) == len(_metric_values(busy_monitor.export_metrics("prometheus")))
    assert {"metric": "ahgd_stage_retries_total",
            "labels": "pipeline=health;stage=load", "value": "2"} in rows


def test_json_export_and_dashboard_are_json(busy_monitor):
    dashboard = busy_monitor.get_dashboard_data()
    assert json.loads(json.dumps(dashboard))["thresholds"]["disk_percent"] == 100.0
    assert dashboard["system"]["disks"][0]["percent"] > 0
    assert dashboard["alerts"]["counts"] == {"info": 0, "warning": 0, "error": 1, "critical": 0}
    exported = json.loads(busy_monitor.export_metrics())
    assert exported["pipelines"]["health"]["runs"] == {"COMPLETED": 1, "FAILED": 1}
    assert {"metric": "ahgd_runs_total", "labels": {"pipeline": "health", "state": "FAILED"},
            "value": 1.0} in exported["metrics"]


def test_unknown_format_lists_the_formats(monitor):
    with pytest.raises(ConfigError) as err:
        monitor.export_metrics("promethus")
    assert str(err.value) == ("metrics format 'promethus' is not supported (did you mean "
                              "'prometheus'?); use one of: csv, json, prometheus")


def test_save_metrics_writes_atomically(busy_monitor):
    path = busy_monitor.save_metrics("prometheus")
    assert path == busy_monitor.metrics_dir / "metrics.prom"
    assert _metric_values(path.read_text())
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert json.loads(busy_monitor.save_metrics().read_text())["pipelines"]
    assert sorted(p.name for p in busy_monitor.metrics_dir.iterdir()) == [
        "metrics.json", "metrics.prom"]


# -- threads --------------------------------------------------------------------

def test_start_stop_system_monitoring(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds=ALL_100, sample_interval=3600, logger=jlog.logger)
    mon.start_system_monitoring()
    thread = mon._thread
    mon.start_system_monitoring()            # harmless: the same thread keeps running
    assert mon._thread is thread and mon.is_monitoring
    for _ in range(500):                     # the first sample is taken at once
        if mon.get_samples():
            break
        time.sleep(0.01)
    assert len(mon.get_samples()) == 1
    stopper = threading.Thread(target=mon.stop_system_monitoring)
    stopper.start()
    stopper.join(timeout=30)                 # a sleep(3600) in the loop would hang here
    assert not stopper.is_alive() and not thread.is_alive()
    assert not mon.is_monitoring
    assert "ahgd-monitor-sampler" not in {t.name for t in threading.enumerate()}
    assert [d["event"] for d in jlog.lines()] == ["monitor.started", "monitor.stopped"]


def test_disabled_system_monitoring_starts_no_thread(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, enable_system_monitoring=False, logger=jlog.logger)
    mon.start_system_monitoring()
    assert not mon.is_monitoring
    assert mon.stop_system_monitoring() is True


def test_observe_from_threads_while_reading(monitor):
    def feed(worker: int) -> None:
        for i in range(50):
            for e in health_run_events(i * 20, f"w{worker}-{i}"):
                monitor.observe(e)

    threads = [threading.Thread(target=feed, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for _ in range(200):
        json.dumps(monitor.get_dashboard_data())
        monitor.export_metrics("prometheus")
        if not any(t.is_alive() for t in threads):
            break
    for t in threads:
        t.join(timeout=60)
    health = monitor.get_dashboard_data()["pipelines"]["health"]
    assert health["runs"] == {"COMPLETED": 200}
    assert health["stages"]["load"]["attempts"] == {"COMPLETED": 200, "FAILED": 200}
    assert health["stages"]["load"]["retries"] == 200
    assert health["stages"]["extract"]["rows"] == 200_000


# -- found in review: ordering, seeding and reload edge cases --------------------

def test_endings_seen_out_of_log_order_leave_the_later_one_in_charge(monitor):
    """Listeners run after the log's lock: run B's completion (seq 10) may be observed
    before run A's failure (seq 8); the pipeline is not failing."""
    monitor.observe(ev(1, "run.requested", "A", pipeline="p"))
    monitor.observe(ev(2, "run.started", "A"))
    monitor.observe(ev(4, "run.requested", "B", pipeline="p"))
    monitor.observe(ev(5, "run.started", "B"))
    monitor.observe(ev(10, "run.completed", "B"))
    monitor.observe(ev(8, "run.failed", "A", error="boom"))
    assert monitor.open_alerts() == []
    assert monitor.get_dashboard_data()["pipelines"]["p"]["runs"] == {"COMPLETED": 1, "FAILED": 1}


def test_an_interrupted_attempt_is_not_called_slow(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "stage_duration_s": 3},
                          logger=jlog.logger)
    mon.observe(ev(1, "run.requested", "r1", pipeline="p"))
    mon.observe(ev(2, "run.started", "r1", stages=["t"]))
    mon.observe(ev(3, "stage.started", "r1", stage="t", attempt=1))
    mon.observe(ev(20, "stage.interrupted", "r1", stage="t", attempt=1))
    assert mon.get_alerts() == []


def test_a_disk_no_longer_watched_has_its_alert_resolved(tmp_path, jlog):
    a, b = tmp_path / "a", Path("/proc")
    a.mkdir()
    mon = PipelineMonitor(tmp_path / "m", thresholds={**ALL_100, "disk_percent": 0.0001},
                          logger=jlog.logger, disk_paths=[a])
    mon.sample_now()
    [alert] = mon.open_alerts()
    mon.set_disk_paths([b])     # /proc reads 0 %: not above the threshold
    mon.sample_now()
    assert mon.open_alerts() == [] and alert.resolution.startswith("that disk is no longer watched")


def test_turning_the_failure_rate_off_resolves_its_alert_at_once(monitor):
    for _ in range(4):
        monitor.start_pipeline_monitoring("abs")
        monitor.stop_pipeline_monitoring("abs", state="FAILED")
    assert "pipeline.failure_rate_high:abs" in {a.id for a in monitor.open_alerts()}
    monitor.set_thresholds(pipeline_failure_rate=None)
    [rate] = [a for a in monitor.get_alerts() if a.name == "pipeline.failure_rate_high"]
    assert not rate.open and rate.resolution == "the failure-rate threshold was turned off"


def test_restart_agrees_with_live_counting_on_reuse_retries_and_retried_runs(state_dir, jlog):
    from state import EventType as T

    with EventLog.open(state_dir) as log:
        live = PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=jlog.logger,
                               event_log=log)
        log.add_listener(live.observe)
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="p", trigger="manual"))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["a", "b"]))
        log.append(new_event(T.STAGE_REUSED, "r1", stage="a", attempt=0))
        log.append(new_event(T.STAGE_STARTED, "r1", stage="b", attempt=1))
        log.append(new_event(T.STAGE_FAILED, "r1", stage="b", attempt=1, error="x", wall_s=0.5))
        log.append(new_event(T.STAGE_RETRYING, "r1", stage="b", attempt=2))
        log.append(new_event(T.STAGE_STARTED, "r1", stage="b", attempt=2))
        log.append(new_event(T.STAGE_FAILED, "r1", stage="b", attempt=2, error="x", wall_s=0.5))
        log.append(new_event(T.RUN_FAILED, "r1", stage="b", error="x"))
        log.append(new_event(T.RUN_RETRIED, "r1"))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["a", "b"]))
        log.append(new_event(T.STAGE_STARTED, "r1", stage="b", attempt=3))
        log.append(new_event(T.STAGE_COMPLETED, "r1", stage="b", attempt=3, wall_s=0.25))
        log.append(new_event(T.RUN_COMPLETED, "r1"))
        before = _metric_values(live.export_metrics("prometheus"))
        [completed] = [r for r in live.get_dashboard_data()["recent_runs"]["p"]
                       if r["state"] == "COMPLETED"]
        seeded = PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=jlog.logger,
                                 event_log=log)
        after = _metric_values(seeded.export_metrics("prometheus"))
    pa, pb = (("pipeline", "p"), ("stage", "a")), (("pipeline", "p"), ("stage", "b"))
    for key in [("ahgd_stage_attempts_total", (("outcome", "REUSED"),) + pa),
                ("ahgd_stage_attempts_total", (("outcome", "FAILED"),) + pb),
                ("ahgd_stage_attempts_total", (("outcome", "COMPLETED"),) + pb),
                ("ahgd_stage_retries_total", pb), ("ahgd_stage_retries_total", pa),
                ("ahgd_stage_duration_seconds_count", pb),
                ("ahgd_stage_duration_seconds_sum", pb)]:
        assert after[key] == before[key], key
    assert ("ahgd_stage_duration_seconds_count", pa) not in after   # reuse took no time
    assert after[("ahgd_stage_retries_total", pb)] == 2
    # the retried run counts once per final state it ended in, and its duration is observed
    # once, when it first ended, live and seeded alike
    p = (("pipeline", "p"),)
    assert after[("ahgd_runs_total", (("pipeline", "p"), ("state", "FAILED")))] == 1
    assert after[("ahgd_runs_total", (("pipeline", "p"), ("state", "COMPLETED")))] == 1
    assert after[("ahgd_run_duration_seconds_count", p)] == before[
        ("ahgd_run_duration_seconds_count", p)] == 1
    assert after[("ahgd_run_duration_seconds_sum", p)] == pytest.approx(
        before[("ahgd_run_duration_seconds_sum", p)], abs=2e-3)
    # the run's duration as last runs show it is run_history's: both executions
    with EventLog.open(state_dir) as log:
        [(history,)] = log.query("SELECT duration_s FROM run_history WHERE run_id = 'r1'")
    assert completed["duration_s"] == pytest.approx(history, abs=2e-3)


def test_a_retried_run_older_than_memory_is_found_in_the_log(state_dir, jlog):
    from state import EventType as T

    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "old", pipeline="p", trigger="manual"))
        log.append(new_event(T.RUN_FAILED, "old", error="x"))
        mon = PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=jlog.logger,
                              event_log=log)
        mon.state.run_pipeline.clear()     # as after 10,000 later runs
        log.add_listener(mon.observe)
        log.append(new_event(T.RUN_RETRIED, "old"))
        log.append(new_event(T.RUN_STARTED, "old"))
        log.append(new_event(T.RUN_COMPLETED, "old"))
        runs = mon.get_dashboard_data()["pipelines"]
    assert "unknown" not in runs and runs["p"]["runs"] == {"FAILED": 1, "COMPLETED": 1}
    assert mon.open_alerts() == []

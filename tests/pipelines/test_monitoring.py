"""PipelineMonitor: thresholds, statistics from events, alerts in the JSON log, exports."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from pipelines.errors import ConfigError
from pipelines.monitoring import AlertSeverity, MonitorThresholds, PipelineMonitor
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

def test_disk_threshold_alert_fires_once_across_samples(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "disk_percent": 0},
                          logger=jlog.logger)
    for _ in range(3):
        mon.sample_now()
    alerts = mon.get_alerts()
    assert [a.name for a in alerts] == ["system.disk_nearly_full"]
    assert alerts[0].severity is AlertSeverity.ERROR
    assert alerts[0].fields["path"] == str(tmp_path)
    assert alerts[0].fields["threshold"] == 0.0


def test_thresholds_at_100_raise_nothing(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds=ALL_100, logger=jlog.logger)
    for _ in range(3):
        sample = mon.sample_now()
    assert mon.get_alerts() == []
    assert 0 < sample.disk_percent <= 100
    assert sample.process_rss_mb > 0
    assert sample.child_processes >= 0


def test_recovery_below_threshold_logs_info_once(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "memory_percent": 0},
                          logger=jlog.logger)
    mon.sample_now()
    mon.set_thresholds(memory_percent=100)
    mon.sample_now()
    mon.sample_now()
    assert [(a.severity, a.name) for a in mon.get_alerts()] == [
        (AlertSeverity.WARNING, "system.memory_high"),
        (AlertSeverity.INFO, "system.memory_recovered"),
    ]
    assert [d["level"] for d in jlog.alerts()] == ["warning", "info"]


def test_unknown_threshold_names_the_closest():
    with pytest.raises(ConfigError) as err:
        MonitorThresholds.from_mapping({"cpu_percnt": 80})
    assert str(err.value) == (
        "monitor threshold 'cpu_percnt' is unknown (did you mean 'cpu_percent'?); known "
        "thresholds: cpu_percent, memory_percent, disk_percent, stage_duration_s, "
        "pipeline_failure_rate, failure_rate_min_runs")


@pytest.mark.parametrize("key, value, message", [
    ("disk_percent", 150, "monitor threshold 'disk_percent' is 150; use a percentage from 0 "
                          "to 100, or None to turn it off"),
    ("pipeline_failure_rate", 2, "monitor threshold 'pipeline_failure_rate' is 2; use a "
                                 "fraction from 0 to 1 such as 0.5, or None to turn it off"),
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
    t = MonitorThresholds.from_mapping({"stage_duration_s": "PT30M", "cpu_percent": None})
    assert (t.cpu_percent, t.memory_percent, t.disk_percent) == (None, 90.0, 90.0)
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
        "run_id": "r2", "state": "FAILED", "started_at": "2026-01-01T00:01:41.000000Z",
        "ended_at": "2026-01-01T00:01:51.000000Z", "duration_s": 10.0, "error": "disk full"}
    extract, load = health["stages"]["extract"], health["stages"]["load"]
    assert extract["attempts"] == {"COMPLETED": 2}
    assert extract["duration_s"] == {"count": 2, "mean": 2.5, "max": 2.5, "total": 5.0}
    assert (extract["rows"], extract["cpu_s"], extract["peak_rss_mb"]) == (2000, 2.5, 100.0)
    assert load["attempts"] == {"COMPLETED": 2, "FAILED": 2, "RETRYING": 2}
    # the failed attempt's duration comes from its stage.started/stage.failed timestamps
    assert load["duration_s"]["max"] == 3.0
    assert (load["max_attempt"], load["peak_rss_mb"]) == (2, 300.0)
    [alert] = monitor.get_alerts()
    assert (alert.severity, alert.name) == (AlertSeverity.ERROR, "run.failed")
    assert alert.fields == {"pipeline": "health", "run_id": "r2", "stage": "load",
                            "error": "disk full"}
    assert alert.message == "run r2 of pipeline 'health' failed at stage 'load': disk full"


def test_observe_decodes_raw_payload_left_by_replay(monitor):
    """Replay leaves ``payload`` None for stage events; observe() uses event.data()."""
    events = health_run_events()
    done = events[3]
    events[3] = done._replace(payload=None, raw=json.dumps(done.payload))
    for e in events:
        monitor.observe(e)
    extract = monitor.get_dashboard_data()["pipelines"]["health"]["stages"]["extract"]
    assert (extract["rows"], extract["duration_s"]["total"]) == (1000, 2.5)


def test_parked_timed_out_and_quarantined_raise_alerts(monitor, jlog):
    monitor.observe(ev(1, "run.requested", "r9", pipeline="seifa"))
    monitor.observe(ev(2, "run.started", "r9"))
    monitor.observe(ev(3, "stage.started", "r9", stage="extract", attempt=1))
    monitor.observe(ev(9, "stage.timed_out", "r9", stage="extract", attempt=1))
    monitor.observe(ev(10, "run.parked", "r9", reason="recovered 3 times"))
    monitor.observe(ev(11, "file.quarantined", pipeline="seifa", name="bad.csv",
                       sha256="ab" * 32, reason="not UTF-8"))
    assert [(a.severity, a.name) for a in monitor.get_alerts()] == [
        (AlertSeverity.WARNING, "stage.timed_out"),
        (AlertSeverity.CRITICAL, "run.parked"),
        (AlertSeverity.WARNING, "file.quarantined"),
    ]
    timed_out, parked, quarantined = jlog.alerts()
    assert timed_out == {"event": "stage.timed_out", "alert": True, "severity": "warning",
                         "level": "warning", "pipeline": "seifa", "run_id": "r9",
                         "stage": "extract", "attempt": 1, "duration_s": 6.0,
                         "detail": "stage 'extract' of pipeline 'seifa' timed out"}
    assert (parked["severity"], parked["reason"]) == ("critical", "recovered 3 times")
    assert (quarantined["file"], quarantined["reason"]) == ("bad.csv", "not UTF-8")
    seifa = monitor.get_dashboard_data()["pipelines"]["seifa"]
    assert (seifa["runs"], seifa["files_quarantined"]) == ({"PARKED": 1}, 1)
    assert monitor.get_alerts(min_severity="critical") == [monitor.get_alerts()[1]]


def test_name_api_uses_the_injected_clock(monitor, clock):
    monitor.start_pipeline_monitoring("health_pipeline")
    clock.advance(42)
    assert monitor.stop_pipeline_monitoring("health_pipeline") == 42.0
    monitor.record_stage("health_pipeline", "extract", state="completed", duration_s=4.0,
                         rows=10, cpu_s=1.0, peak_rss_mb=50.0)
    p = monitor.get_dashboard_data()["pipelines"]["health_pipeline"]
    assert (p["runs"], p["duration_s"]["max"]) == ({"COMPLETED": 1}, 42.0)
    assert p["stages"]["extract"]["attempts"] == {"COMPLETED": 1}


def test_slow_stage_alert(tmp_path, jlog):
    mon = PipelineMonitor(tmp_path, thresholds={**ALL_100, "stage_duration_s": 60},
                          logger=jlog.logger)
    mon.record_stage("health", "load", state="COMPLETED", duration_s=59)
    mon.record_stage("health", "load", state="COMPLETED", duration_s=61)
    [alert] = mon.get_alerts()
    assert alert.name == "stage.slow"
    assert alert.message == ("stage 'load' of pipeline 'health' took 61.0s, above the "
                             "threshold of 60s")


def test_failure_rate_alert_fires_once_then_recovers(monitor):
    for state in ["FAILED"] * 5 + ["COMPLETED"] * 6:
        monitor.start_pipeline_monitoring("abs")
        monitor.stop_pipeline_monitoring("abs", state=state)
    alerts = [a for a in monitor.get_alerts() if a.name.startswith("pipeline.")]
    # 5 of 10 is not above 0.5: that is where it recovers
    assert [(a.name, a.fields["runs"]) for a in alerts] == [
        ("pipeline.failure_rate_high", 4), ("pipeline.failure_rate_recovered", 10)]
    assert alerts[0].message == "4 of the last 4 runs of pipeline 'abs' failed"


def test_get_alerts_since(monitor, clock):
    monitor.raise_alert("warning", "first", "one")
    clock.advance(60)
    cut = clock.now
    second = monitor.raise_alert(AlertSeverity.INFO, "second", "two")
    assert monitor.get_alerts(since=cut) == [second]


# -- alerts in the log ---------------------------------------------------------

def test_alert_is_one_json_log_line(monitor, jlog):
    alert = monitor.raise_alert("ERROR", "load.rejected", "3 rows rejected", pipeline="health",
                                rows=3)
    [line] = jlog.lines()
    assert line == {"event": "load.rejected", "alert": True, "severity": "error",
                    "level": "error", "detail": "3 rows rejected", "pipeline": "health",
                    "rows": 3}
    assert alert.at == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_alert_messages_for_bad_input(monitor):
    with pytest.raises(ConfigError) as err:
        monitor.raise_alert("warn", "x", "y")
    assert str(err.value) == ("alert severity 'warn' is unknown (did you mean 'warning'?); "
                              "use one of: info, warning, error, critical")
    with pytest.raises(ConfigError) as err:
        monitor.raise_alert("info", "x", "y", detail="z")
    assert str(err.value) == ("alert 'x' has field 'detail', which the log line uses itself; "
                              "rename it (reserved: alert, detail, event, level, severity, "
                              "timestamp)")


# -- exports ---------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LVALUE = r'(?:[^"\\\n]|\\[\\"n])*'
LABEL = rf'[a-zA-Z_][a-zA-Z0-9_]*="{LVALUE}"'
VALUE = r"(?:[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|Inf)|NaN)"
HELP = re.compile(rf"# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*")
TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|summary|histogram|untyped)")
SAMPLE = re.compile(rf"({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? ({VALUE})")


def parse_prometheus(text: str) -> dict[tuple[str, str], str]:
    """Check every line against the exposition format; return {(name, labels): value}."""
    assert text.endswith("\n")
    samples: dict[tuple[str, str], str] = {}
    helped, typed, current = set(), {}, None
    for line in text[:-1].split("\n"):
        if m := HELP.fullmatch(line):
            assert m[1] not in helped and m[1] not in typed, line
            helped.add(m[1])
            current = m[1]
        elif m := TYPE.fullmatch(line):
            assert m[1] == current and m[1] not in typed, line
            typed[m[1]] = m[2]
            if m[2] == "counter":
                assert m[1].endswith("_total"), line
        elif m := SAMPLE.fullmatch(line):
            suffixes = ("_sum", "_count") if typed.get(current) == "summary" else ("",)
            assert m[1] in {current + s for s in suffixes}, f"{line!r} outside its family"
            assert (m[1], m[2] or "") not in samples, f"duplicate sample {line!r}"
            samples[(m[1], m[2] or "")] = m[3]
        else:
            pytest.fail(f"not exposition format: {line!r}")
    assert all(name.startswith("ahgd_") for name in typed)
    return samples


@pytest.fixture
def busy_monitor(monitor) -> PipelineMonitor:
    """A monitor with a system sample, two runs, stage stats and one alert to export."""
    monitor.sample_now()
    for e in health_run_events() + health_run_events(100, "r2", "run.failed", error="x"):
        monitor.observe(e)
    return monitor


def test_prometheus_export_is_valid_exposition_format(busy_monitor):
    samples = parse_prometheus(busy_monitor.export_metrics(format="prometheus"))
    assert samples[("ahgd_pipeline_runs_total", '{pipeline="health",state="FAILED"}')] == "1"
    stage = '{pipeline="health",stage="extract"}'
    assert samples[("ahgd_stage_duration_seconds_sum", stage)] == "5.0"
    assert samples[("ahgd_stage_duration_seconds_count", stage)] == "2"
    assert samples[("ahgd_stage_rows_total", stage)] == "2000"
    assert samples[("ahgd_stage_peak_resident_memory_bytes", stage)] == str(100 * 2**20)
    assert samples[("ahgd_alerts_total", '{severity="error"}')] == "1"
    assert ("ahgd_process_resident_memory_bytes", "") in samples


def test_prometheus_escapes_label_values(monitor):
    monitor.record_stage('he"al\\th\nx', "load", state="COMPLETED", duration_s=1)
    text = monitor.export_metrics("prometheus")
    samples = parse_prometheus(text)
    assert ("ahgd_stage_max_duration_seconds",
            '{pipeline="he\\"al\\\\th\\nx",stage="load"}') in samples


def test_csv_export_has_one_row_per_sample(busy_monitor):
    text = busy_monitor.export_metrics("csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["metric", "labels", "value"]
    assert len(rows) == len(parse_prometheus(busy_monitor.export_metrics("prometheus")))
    assert {"metric": "ahgd_stage_attempts_total",
            "labels": "pipeline=health;stage=load;state=RETRYING", "value": "2"} in rows


def test_json_export_and_dashboard_are_json(busy_monitor):
    dashboard = busy_monitor.get_dashboard_data()
    assert json.loads(json.dumps(dashboard))["system"]["thresholds"]["disk_percent"] == 100.0
    assert dashboard["system"]["latest"]["disk_percent"] > 0
    assert dashboard["alerts"]["counts"] == {"info": 0, "warning": 0, "error": 1, "critical": 0}
    exported = json.loads(busy_monitor.export_metrics())
    assert exported["pipelines"]["health"]["runs"] == {"COMPLETED": 1, "FAILED": 1}
    assert {"metric": "ahgd_pipeline_active_runs", "labels": {"pipeline": "health"},
            "value": 0} in exported["metrics"]


def test_unknown_format_lists_the_formats(monitor):
    with pytest.raises(ConfigError) as err:
        monitor.export_metrics("promethus")
    assert str(err.value) == ("metrics format 'promethus' is not supported (did you mean "
                              "'prometheus'?); use one of: csv, json, prometheus")


def test_save_metrics_writes_atomically(busy_monitor):
    path = busy_monitor.save_metrics("prometheus")
    assert path == busy_monitor.metrics_dir / "metrics.prom"
    parse_prometheus(path.read_text())
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
    assert health["stages"]["load"]["attempts"] == {"COMPLETED": 200, "FAILED": 200,
                                                    "RETRYING": 200}
    assert health["stages"]["extract"]["rows"] == 200_000

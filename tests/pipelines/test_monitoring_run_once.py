"""A run is one run in what the monitor shows, however often it ran: ``ahgd status``'s last runs
list it once (its newest outcome, its trigger kept), ``ahgd_runs_total`` counts it once per
final state it reached (a counter: it only goes up, live and after a restart alike), and its
duration is ``run_history.duration_s``: the time it spent running, not the time it sat FAILED
before a retry nor the time a crashed daemon was down.

A real event log (SQLite in tmp_path) with the monitor as its listener, as the daemon has it;
time passes for real between the events (short sleeps), since the log stamps them itself."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.monitoring import PipelineMonitor
from state import EventLog, parse_ts
from state import EventType as T
from state.events import new_event

ALL_100 = {"cpu_percent": 100, "memory_percent": 100, "disk_percent": 100}
WAIT = 0.3   # a run sitting FAILED, or a daemon down: time that is not running time


class _Quiet:
    def __getattr__(self, name):
        return lambda *a, **k: None


def _monitor(state_dir, log) -> PipelineMonitor:
    return PipelineMonitor(state_dir / "m", thresholds=ALL_100, logger=_Quiet(), event_log=log,
                           enable_system_monitoring=False)


def _watched(state_dir, log) -> PipelineMonitor:
    """A monitor that observes ``log`` from now on, as the daemon's does."""
    mon = _monitor(state_dir, log)
    log.add_listener(mon.observe)
    return mon


def _start(log, run_id: str, trigger: str) -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="abs", trigger=trigger))
    log.append(new_event(T.RUN_STARTED, run_id, stages=["a"]))


def _metrics(mon: PipelineMonitor) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(mon.export_metrics("prometheus")):
        for s in family.samples:
            if s.name.startswith("ahgd_run"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _runs_total(metrics, pipeline: str) -> dict[str, float]:
    return {dict(labels)["state"]: v for (name, labels), v in metrics.items()
            if name == "ahgd_runs_total" and dict(labels)["pipeline"] == pipeline}


def _history(log, run_id: str) -> dict:
    [row] = log.query("SELECT * FROM run_history WHERE run_id = ?", [run_id])
    return dict(row)


def _span(history: dict) -> float:
    """From its first start to its end: running time and the waits between."""
    return (parse_ts(history["ended_at"]) - parse_ts(history["started_at"])).total_seconds()


def _recent(mon: PipelineMonitor, pipeline: str) -> list[dict]:
    return mon.get_dashboard_data(recent=50)["recent_runs"][pipeline]


def _complete(log, run_id: str, *, ran: float = 0.1) -> None:
    log.append(new_event(T.STAGE_STARTED, run_id, stage="a", attempt=1))
    time.sleep(ran)
    log.append(new_event(T.STAGE_COMPLETED, run_id, stage="a", attempt=1, wall_s=ran))
    log.append(new_event(T.RUN_COMPLETED, run_id))


def _fail(log, run_id: str, pipeline: str | None = None, *, ran: float = 0.1) -> None:
    if pipeline is not None:
        log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, trigger="file"))
    log.append(new_event(T.RUN_STARTED, run_id, stages=["a"]))
    time.sleep(ran)
    log.append(new_event(T.RUN_FAILED, run_id, stage="a", error="boom"))


def test_a_retried_run_is_one_entry_counted_once_with_run_historys_duration(state_dir):
    with EventLog.open(state_dir) as log:
        mon = _watched(state_dir, log)
        for run_id in ("f1", "f2", "f3"):
            _fail(log, run_id, "deaths")
        time.sleep(WAIT)                                  # f3 sits FAILED
        log.append(new_event(T.RUN_RETRIED, "f3", previous_state="FAILED"))
        _fail(log, "f3")                                  # ... and fails again
        recent = _recent(mon, "deaths")
        live = _metrics(mon)
        history = _history(log, "f3")
        seeded = _monitor(state_dir, log)                 # the daemon restarted
        after = _metrics(seeded)
        recent_seeded = _recent(seeded, "deaths")

    assert [r["run_id"] for r in recent] == ["f3", "f2", "f1"]          # f3 once, newest
    assert recent[0]["trigger"] == "file"                               # kept from its request
    assert recent[0]["started_at"] == history["started_at"]             # its first start
    assert recent[0]["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)
    assert 0.2 <= history["duration_s"] <= _span(history) - WAIT                 # not the wait
    assert _runs_total(live, "deaths") == {"FAILED": 3}                 # three runs failed
    count = ("ahgd_run_duration_seconds_count", (("pipeline", "deaths"),))
    total = ("ahgd_run_duration_seconds_sum", (("pipeline", "deaths"),))
    assert live[count] == 3
    # a restart is not a counter reset: the same counts, durations and last runs
    assert _runs_total(after, "deaths") == _runs_total(live, "deaths")
    assert after[count] == live[count] and after[total] == pytest.approx(live[total], abs=5e-3)
    assert [(r["run_id"], r["trigger"]) for r in recent_seeded] == [
        (r["run_id"], r["trigger"]) for r in recent]
    assert [r["duration_s"] for r in recent_seeded] == pytest.approx(
        [r["duration_s"] for r in recent], abs=2e-3)   # SQLite's julianday: to the ms


def test_a_failed_run_retried_to_completion_counts_in_both_states_and_never_goes_down(
        state_dir):
    with EventLog.open(state_dir) as log:
        mon = _watched(state_dir, log)
        _fail(log, "r1", "abs")
        before = _runs_total(_metrics(mon), "abs")
        log.append(new_event(T.RUN_RETRIED, "r1", previous_state="FAILED"))
        log.append(new_event(T.RUN_STARTED, "r1", stages=["a"]))
        _complete(log, "r1")
        live = _runs_total(_metrics(mon), "abs")
        [entry] = _recent(mon, "abs")
        seeded = _runs_total(_metrics(_monitor(state_dir, log)), "abs")
        history = _history(log, "r1")
    assert before == {"FAILED": 1}
    assert live == seeded == {"FAILED": 1, "COMPLETED": 1}
    assert (entry["state"], entry["trigger"]) == ("COMPLETED", "file")
    assert entry["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)


def test_a_parked_run_counts_up_to_its_last_event_not_the_restart(state_dir):
    """Parked on recovery after a crash: the daemon was down between its last event and the
    park; run_history counts the run up to that last event, and so does the monitor."""
    with EventLog.open(state_dir) as log:
        _start(log, "p1", "schedule")
        log.append(new_event(T.STAGE_STARTED, "p1", stage="a", attempt=1))
        time.sleep(0.1)
        log.append(new_event(T.STAGE_COMPLETED, "p1", stage="a", attempt=1, wall_s=0.1))
        time.sleep(WAIT)                                  # killed; the daemon is down
        mon = _watched(state_dir, log)                    # it restarts: p1 seeded RUNNING
        log.append(new_event(T.RUN_PARKED, "p1", reason="recovered too often"))
        [entry] = _recent(mon, "abs")
        history = _history(log, "p1")
    assert entry["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)
    assert history["duration_s"] <= _span(history) - WAIT
    assert entry["trigger"] == "schedule"


def test_a_run_parked_while_watched_and_recovered_runs(state_dir):
    """The same seen live from its start: recovered once (a crash), started again, parked."""
    with EventLog.open(state_dir) as log:
        mon = _watched(state_dir, log)
        _start(log, "p2", "manual")
        log.append(new_event(T.STAGE_STARTED, "p2", stage="a", attempt=1))
        time.sleep(0.1)
        log.append(new_event(T.STAGE_FAILED, "p2", stage="a", attempt=1, error="x",
                             wall_s=0.1))
        time.sleep(WAIT)
        log.append_many([new_event(T.RUN_RECOVERED, "p2", recoveries=1)])
        log.append(new_event(T.RUN_STARTED, "p2", stages=["a"]))
        log.append(new_event(T.STAGE_STARTED, "p2", stage="a", attempt=2))
        time.sleep(0.1)
        log.append(new_event(T.STAGE_INTERRUPTED, "p2", stage="a", attempt=2, error="crash"))
        time.sleep(WAIT)
        log.append(new_event(T.RUN_PARKED, "p2", reason="recovered too often"))
        time.sleep(WAIT)
        log.append(new_event(T.RUN_CANCELLED, "p2", reason="given up"))
        recent = _recent(mon, "abs")
        metrics = _runs_total(_metrics(mon), "abs")
        history = _history(log, "p2")
        seeded = _runs_total(_metrics(_monitor(state_dir, log)), "abs")
    [entry] = recent
    assert entry["state"] == "CANCELLED" and entry["trigger"] == "manual"
    assert entry["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)
    assert history["duration_s"] <= _span(history) - 3 * WAIT
    assert metrics == seeded == {"PARKED": 1, "CANCELLED": 1}


def test_a_run_retried_long_after_the_monitor_forgot_it_is_read_from_the_log(state_dir):
    with EventLog.open(state_dir) as log:
        _fail(log, "old", "abs")
        _fail(log, "other", "abs")
        mon = _monitor(state_dir, log)
        mon.state.ended.clear()                           # as after 10,000 later runs
        mon.state.run_pipeline.clear()
        log.add_listener(mon.observe)
        time.sleep(WAIT)
        log.append(new_event(T.RUN_RETRIED, "old", previous_state="FAILED"))
        _fail(log, "old")
        recent = _recent(mon, "abs")
        metrics = _runs_total(_metrics(mon), "abs")
        history = _history(log, "old")
    assert [r["run_id"] for r in recent] == ["old", "other"]
    assert recent[0]["trigger"] == "file"
    assert recent[0]["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)
    assert metrics == {"FAILED": 2}


def test_a_run_suspended_by_a_clean_stop_does_not_count_the_wait(state_dir):
    with EventLog.open(state_dir) as log:
        mon = _watched(state_dir, log)
        _start(log, "s1", "manual")
        time.sleep(0.1)
        log.append(new_event(T.RUN_SUSPENDED, "s1", reason="the daemon stopped"))
        time.sleep(WAIT)
        log.append(new_event(T.RUN_STARTED, "s1", stages=["a"]))
        _complete(log, "s1")
        [entry] = _recent(mon, "abs")
        history = _history(log, "s1")
        seeded = _recent(_monitor(state_dir, log), "abs")
    assert entry["duration_s"] == pytest.approx(history["duration_s"], abs=2e-3)
    assert history["duration_s"] <= _span(history) - WAIT
    assert seeded[0]["duration_s"] == pytest.approx(entry["duration_s"], abs=2e-3)


def test_ahgd_status_lists_a_retried_run_once_with_run_historys_duration(tmp_path):
    """The CLI end to end, without a daemon: ``ahgd run`` fails, ``ahgd retry`` fails again."""
    import json
    import subprocess

    from tests.daemon.harness import ahgd_exe, env
    from tests.daemon.test_run_duration import _master

    master, state = _master(tmp_path, "{name: extract, type: extractor, class: "
                                      "tests.daemon.toggle_stages.FailUntilFlag, config: "
                                      "{sleep: 0.2}, retry_attempts: 0}"), tmp_path / "state"

    def ahgd(*args):
        return subprocess.run([*ahgd_exe(), *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env())

    assert ahgd("run", "p", "--config", master, "--state-dir", state).returncode == 1
    time.sleep(1)                                     # it sits FAILED
    [(run_id,)] = [tuple(r) for r in _query(state, "SELECT run_id FROM runs")]
    assert ahgd("retry", run_id, "--config", master, "--state-dir", state).returncode == 1
    proc = ahgd("status", "--json", "--state-dir", state)
    assert proc.returncode == 0, proc.stderr
    recent = json.loads(proc.stdout)["recent_runs"]["p"]
    [(history, trigger)] = _query(state, "SELECT duration_s, trigger FROM run_history")
    assert [r["run_id"] for r in recent] == [run_id]
    assert recent[0]["trigger"] == trigger is not None
    assert recent[0]["duration_s"] == pytest.approx(history, abs=2e-3)
    proc = ahgd("metrics", "--state-dir", state)
    assert proc.returncode == 0, proc.stderr
    assert 'ahgd_runs_total{pipeline="p",state="FAILED"} 1.0' in proc.stdout


def _query(state, sql):
    with EventLog.open(state) as log:
        return [tuple(r) for r in log.query(sql)]

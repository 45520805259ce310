"""BasePipeline runs through the event log: retries, resume, timeouts, crashes, parallelism."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipelines import ConfigError, ResumeRefused, StageConfig
from pipelines.execution.executors import InProcessExecutor
from pipelines.execution.pool import ProcessExecutor
from state import EventLog

from .sample_pipelines import (
    CrashingPipeline,
    DiamondPipeline,
    FlakyPipeline,
    LoadOrderPipeline,
    OrderPipeline,
    ReturnsPipeline,
    RulePipeline,
    SleepyPipeline,
    executions,
    trace,
)

#: how long a stage of ``MeetingDiamond`` waits for its sibling before it gives up
MEET_S = 30.0


class MeetingDiamond(DiamondPipeline):
    """``DiamondPipeline`` whose stages b and c meet: each leaves a file under the state
    directory's ``trace/``, then waits (at most ``MEET_S``) for the other's, then naps.

    Run side by side, each sees the other while it runs, whatever start-up delayed one of
    them (a freshly spawned worker on a loaded host); run one after the other, the first
    waits ``MEET_S`` in vain and records ``met: false``.  ``start`` is taken before the
    file is left and ``end`` after the nap, so two stages that met overlap by causality."""

    def execute_stage(self, stage_name: str, context) -> str:
        if stage_name not in ("b", "c"):
            return super().execute_stage(stage_name, context)
        start = time.time()
        here = Path(context.state_dir) / "trace"
        here.mkdir(exist_ok=True)
        (here / f"meet-{stage_name}").touch()
        other = here / f"meet-{'c' if stage_name == 'b' else 'b'}"
        deadline = time.monotonic() + MEET_S
        while not other.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        met = other.exists()
        time.sleep(self.nap)
        trace(context, stage_name, start=start, end=time.time(), met=met)
        return stage_name


def _events(state_dir: Path, run_id: str) -> list[tuple]:
    with EventLog.open(state_dir) as log:
        return [(e.type, e.stage, e.attempt) for e in log.events(run_id=run_id)]


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_third_stage_fails_twice_then_succeeds_with_three_attempts_recorded(state_dir, executor):
    ctx = FlakyPipeline(state_dir=state_dir, executor=executor).run()
    assert ctx.state == "COMPLETED", ctx.error
    assert ctx.get_output("load") == {"total": sum(v * 10 + 1 for v in range(100))}
    evs = [e for e in _events(state_dir, ctx.run_id) if e[1] == "validate"]
    assert evs == [
        ("stage.started", "validate", 1), ("stage.failed", "validate", 1),
        ("stage.retrying", "validate", 2), ("stage.started", "validate", 2),
        ("stage.failed", "validate", 2),
        ("stage.retrying", "validate", 3), ("stage.started", "validate", 3),
        ("stage.completed", "validate", 3),
    ]
    assert ctx.stage_results["validate"].attempts == 3
    with EventLog.open(state_dir) as log:
        rows = log.query("SELECT attempt, state, error FROM stage_timings WHERE run_id = ? AND "
                         "stage = 'validate' ORDER BY attempt", [ctx.run_id])
        assert [tuple(r) for r in rows] == [
            (1, "FAILED", "RuntimeError: flaky failure 1"),
            (2, "FAILED", "RuntimeError: flaky failure 2"),
            (3, "COMPLETED", None)]
        waits = log.query("SELECT json_extract(payload, '$.delay_s') FROM events WHERE run_id = ? "
                          "AND type = 'stage.retrying'", [ctx.run_id])
        assert all(0.0 < w[0] < 0.1 for w in waits)  # 0.01 s, x2 backoff, +/-20 % jitter
        assert log.check().ok


def test_a_stage_failure_does_not_raise_and_names_the_stage(state_dir):
    ctx = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=10, max_retries=1).run()
    assert ctx.state == "FAILED"
    assert ctx.failed_stage == "validate"
    assert ctx.error == "stage 'validate' failed after 2 attempt(s): RuntimeError: flaky failure 2"
    assert ctx.stage_results["validate"].state == "FAILED"
    assert "load" not in ctx.stage_results
    with EventLog.open(state_dir) as log:
        failure = log.query("SELECT kind, stage, error FROM failures WHERE kind = 'run'")
        assert tuple(failure[0]) == ("run", "validate", ctx.error)


def test_resume_from_reruns_only_later_stages_and_reuses_outputs(state_dir):
    first = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=0).run()
    assert first.state == "COMPLETED"
    before = len(executions(state_dir))
    second = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=0).run(
        resume_from="validate")
    assert second.state == "COMPLETED"
    ran = [e["stage"] for e in executions(state_dir)[before:]]
    assert ran == ["validate", "load"]
    assert second.get_output("load") == first.get_output("load")
    evs = _events(state_dir, second.run_id)
    assert ("stage.reused", "extract", 0) in evs and ("stage.reused", "transform", 0) in evs
    with EventLog.open(state_dir) as log:
        reused = log.query("SELECT json_extract(payload, '$.from_run') FROM events WHERE "
                           "run_id = ? AND type = 'stage.reused'", [second.run_id])
        assert {r[0] for r in reused} == {first.run_id}


def test_skip_stages_are_recorded_as_skipped(state_dir):
    ctx = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=0).run(
        skip_stages=["validate", "load"])
    assert ctx.state == "COMPLETED"
    assert ctx.stage_results["validate"].state == "SKIPPED"
    assert [e["stage"] for e in executions(state_dir)] == ["extract", "transform"]


def test_resume_refusals_name_the_stage_to_resume_from(state_dir):
    p = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=0)
    with pytest.raises(ResumeRefused) as exc:
        p.run(resume_from="transfrom")
    assert str(exc.value) == ("pipeline 'flaky' has no stage 'transfrom' to resume from; did "
                              "you mean 'transform'? (its stages: extract, transform, validate, "
                              "load)")
    with pytest.raises(ResumeRefused) as exc:
        p.run(resume_from="validate")
    assert str(exc.value) == ("cannot resume pipeline 'flaky' from 'validate': no earlier run "
                              "completed extract, transform; resume from 'extract' instead (or run "
                              "from the start)")
    first = p.run()
    out = first.stage_results["transform"].output
    path = state_dir / out["path"]
    path.write_bytes(path.read_bytes()[:-10])  # truncated behind our back
    with pytest.raises(ResumeRefused) as exc:
        p.run(resume_from="load")
    assert str(exc.value) == (
        f"cannot resume pipeline 'flaky' from 'load': the output of stage 'transform' of run "
        f"{first.run_id} was altered: {path} has {out['bytes'] - 10} bytes, {out['bytes']} were "
        "recorded; resume from 'transform' instead")
    path.unlink()
    with pytest.raises(ResumeRefused, match=r"is gone: .* does not exist; resume from 'transform'"):
        p.run(resume_from="load")


def test_a_stage_past_its_timeout_is_killed_with_its_worker(state_dir):
    # the timeout counts from when the worker is ready; 2 s leaves a fresh worker time to
    # import the stage's code and trace its pid on a loaded host.  The elapsed bound is loose
    # (the pool may be cold, and its start-up is not bounded by the timeout): what it proves
    # is that the 60 s sleep was cut short
    p = SleepyPipeline(state_dir=state_dir, seconds=60, max_retries=0,
                       stage_configs={"nap": StageConfig("nap", timeout=2.0, retry_attempts=0)})
    t0 = time.monotonic()
    ctx = p.run()
    elapsed = time.monotonic() - t0
    assert ctx.state == "FAILED"
    assert elapsed < 2.0 + 20.0  # not the 60 s the stage wanted
    assert ctx.stage_results["nap"].state == "TIMED_OUT"
    [trace] = executions(state_dir)
    assert "timed out after 2s; its worker process (pid" in ctx.error
    deadline = time.monotonic() + 5
    while psutil.pid_exists(trace["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(trace["pid"]), "the timed-out worker is still alive"


def test_a_timed_out_stage_is_retried_by_policy(state_dir):
    p = SleepyPipeline(state_dir=state_dir, seconds=60,
                       stage_configs={"nap": StageConfig("nap", timeout=0.5, retry_attempts=1,
                                                         retry_delay=0.01)})
    ctx = p.run()
    assert ctx.state == "FAILED"
    evs = _events(state_dir, ctx.run_id)
    assert [e[0] for e in evs if e[1] == "nap"] == [
        "stage.started", "stage.timed_out", "stage.retrying", "stage.started", "stage.timed_out"]


def test_os_exit_in_a_stage_fails_that_attempt_alone(state_dir):
    p = CrashingPipeline("crashing", state_dir=state_dir, parallel_stages=True, max_workers=2,
                         max_retries=0)
    ctx = p.run()
    assert ctx.state == "FAILED"
    assert ctx.failed_stage == "crash"
    assert "exited with code 1" in ctx.error
    assert ctx.stage_results["fine"].state == "COMPLETED"   # the sibling was unharmed
    assert "after" not in ctx.stage_results                  # it depends on the crash
    assert ctx.get_output("fine") == "fine"


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_parallel_stages_overlap_and_respect_dependencies(state_dir, executor):
    # b and c meet (MeetingDiamond) instead of hoping to overlap within one nap: with the
    # process pool, c may need a worker spawned just now, which a loaded host makes slower
    # than b's nap; run one after the other, they would never meet
    p = MeetingDiamond(state_dir=state_dir, parallel_stages=True, max_workers=2,
                       executor=executor, nap=0.2)
    ctx = p.run()
    assert ctx.state == "COMPLETED", ctx.error
    t = {e["stage"]: e for e in executions(state_dir)}
    assert t["b"]["met"] and t["c"]["met"], "b and c did not run at the same time"
    assert t["b"]["start"] >= t["a"]["end"] and t["c"]["start"] >= t["a"]["end"]
    assert t["d"]["start"] >= max(t["b"]["end"], t["c"]["end"])
    assert t["b"]["start"] < t["c"]["end"] and t["c"]["start"] < t["b"]["end"], "b and c did not overlap"
    # the event log's own timestamps agree
    with EventLog.open(state_dir) as log:
        rows = {r["stage"]: r for r in log.query(
            "SELECT stage, started_at, ended_at FROM stage_timings WHERE run_id = ?", [ctx.run_id])}
    assert rows["b"]["started_at"] < rows["c"]["ended_at"] and rows["c"]["started_at"] < rows["b"]["ended_at"]


def test_max_workers_bounds_parallel_stages(state_dir):
    # the stages meet in pairs (a barrier of two, at most MEET_S) instead of hoping that two
    # starts land within one 0.3 s nap on a loaded host: each pair overlaps for certain, and a
    # third stage running beside them would overlap them too (peak 3 or more)
    pairs = threading.Barrier(2)

    class Wide(DiamondPipeline):
        def define_stages(self):
            return ["s1", "s2", "s3", "s4"]

        def get_stage_dependencies(self, stage_name):
            return set()

        def execute_stage(self, stage_name, context):
            start = time.time()
            pairs.wait(MEET_S)
            time.sleep(self.nap)
            trace(context, stage_name, start=start, end=time.time())
            return stage_name

    ctx = Wide("wide", state_dir=state_dir, parallel_stages=True, max_workers=2, nap=0.1,
               max_retries=0, executor="inprocess").run()
    assert ctx.state == "COMPLETED", ctx.error
    spans = [(e["start"], e["end"]) for e in executions(state_dir)]
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak == 2


def test_get_progress_answers_from_another_thread_while_running(state_dir):
    p = DiamondPipeline(state_dir=state_dir, nap=0.4, executor="inprocess")
    seen = []
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("ctx", p.run()))
    th.start()
    deadline = time.monotonic() + 20
    while th.is_alive() and time.monotonic() < deadline:
        seen.append(p.get_progress())
        time.sleep(0.05)
    th.join(timeout=20)
    assert result["ctx"].state == "COMPLETED"
    mid = [s for s in seen if s["state"] == "RUNNING" and s["current_stage"]]
    assert mid, "progress never showed the run in flight"
    assert {"state", "current_stage", "completed_stages", "total_stages",
            "progress_percentage", "stages"} <= set(mid[0])
    assert any(0 < s["progress_percentage"] < 100 for s in mid)
    assert p.get_progress()["progress_percentage"] == 100.0


@pytest.mark.parametrize("kind, expect", [
    ("relation", {"kind": "tables", "rows": 2}),
    ("arrow", {"kind": "tables", "rows": 3}),
    ("pandas", {"kind": "tables", "rows": 2}),
    ("json", {"kind": "value", "format": "inline"}),
    ("big_json", {"kind": "value", "format": "json"}),
    ("pickle", {"kind": "value", "format": "pickle"}),
    ("none", {"kind": "none"}),
    ("tables", {"kind": "tables", "rows": None}),
])
def test_stage_outputs_of_every_kind_are_stored_and_read_back(state_dir, kind, expect):
    ctx = ReturnsPipeline(state_dir=state_dir, kind=kind, executor="process").run()
    assert ctx.state == "COMPLETED", ctx.error
    out = ctx.stage_results["make"].output
    assert out["kind"] == expect["kind"]
    if "format" in expect:
        assert out["format"] == expect["format"]
    if expect.get("rows") is not None:
        assert ctx.stage_results["make"].rows == expect["rows"]
    value = ctx.get_output("make")
    if kind == "pickle":
        assert value == {1, 2, 3}
    elif kind == "big_json":
        assert value == {"numbers": list(range(20000))}
    elif kind == "tables":
        assert sorted(value) == ["first", "second"]
        assert value["second"].fetchall() == [(2,)]
    elif expect["kind"] == "tables":
        assert len(value.fetchall()) == expect["rows"]


def test_an_unstorable_output_is_a_clear_non_retried_failure(state_dir):
    ctx = ReturnsPipeline(state_dir=state_dir, kind="generator", executor="inprocess").run()
    assert ctx.state == "FAILED"
    assert ctx.error.startswith("stage 'make' failed after 1 attempt(s) (not retried: "
                                "StageOutputError: a retry would return the same output): stage "
                                "'make' returned a generator, which cannot be stored (TypeError:")
    assert ctx.error.endswith("return a DuckDB relation, an Arrow table, a DataFrame, or a value "
                              "that JSON or pickle can hold")


def test_validation_failure_fails_the_stage_with_the_rule_and_rows(state_dir):
    ctx = RulePipeline(state_dir=state_dir, executor="inprocess",
                       rules={"ranges": {"d": [1, 10]}, "min_records": 2},
                       sql="SELECT * FROM (VALUES (1), (11), (12)) t(d)").run()
    assert ctx.state == "FAILED"
    assert ("(not retried: ValidationFailed: the data broke a validation rule, and a retry "
            "would check the same data)") in ctx.error
    assert "ranges: 2 rows have d outside [1, 10]" in ctx.error


def test_quarantine_moves_bad_rows_aside_and_passes_good_ones(state_dir):
    ctx = RulePipeline(state_dir=state_dir, executor="inprocess",
                       rules={"ranges": {"d": [1, 10]}, "quarantine": True},
                       sql="SELECT * FROM (VALUES (1), (11), (5)) t(d)").run()
    assert ctx.state == "COMPLETED", ctx.error
    assert sorted(ctx.get_output("make", table="output").fetchall()) == [(1,), (5,)]
    assert ctx.get_output("make", table="make_rejected").aggregate("count(*)").fetchall() == [(1,)]
    with EventLog.open(state_dir) as log:
        rejected = log.query("SELECT json_extract(payload, '$.validation.rejected') FROM events "
                             "WHERE type = 'stage.completed'")
    assert rejected[0][0] == 1


def test_a_rule_on_a_missing_column_is_a_config_error_before_running(state_dir):
    with pytest.raises(ConfigError, match="unknown validation rule 'min_record'; did you mean 'min_records'"):
        StageConfig("make", validation_rules={"min_record": 3})
    ctx = RulePipeline(state_dir=state_dir, executor="inprocess", rules={"not_null": ["sa2_cod"]},
                       sql="SELECT 1 AS sa2_code").run()
    assert ctx.state == "FAILED"
    assert "validation rule not_null names column 'sa2_cod', which the output does not have" in ctx.error
    assert "did you mean 'sa2_code'?" in ctx.error


@pytest.mark.parametrize("timeout, message", [
    (0, "stage 'x': timeout is 0s; use a positive ISO 8601 duration such as PT30M"),
    (-5, "stage 'x': timeout is -PT5S, which is negative; use a positive ISO 8601 duration such as PT30M"),
    ("soon", "stage 'x': timeout 'soon' is not a duration; use ISO 8601 such as PT30M, PT2H or "
             "P1D, a number of seconds such as 90, or a number with a unit such as 30m, 12h or 7d"),
])
def test_bad_timeouts_are_named(timeout, message):
    with pytest.raises(ConfigError) as exc:
        StageConfig("x", timeout=timeout)
    assert str(exc.value) == message


def test_iso_durations_and_pipeline_defaults_apply_to_stage_configs(state_dir):
    p = FlakyPipeline(state_dir=state_dir, max_retries=7, retry_delay="PT2S",
                      stage_configs={"load": StageConfig("load", timeout="PT30M")})
    cfg = p.stage_config("load")
    assert cfg.timeout_seconds == 1800 and cfg.retry_attempts == 7
    assert cfg.retry_delay.total_seconds() == 2
    own = StageConfig("load", retry_attempts=1)
    assert FlakyPipeline(state_dir=state_dir, max_retries=7,
                         stage_configs={"load": own}).stage_config("load").retry_attempts == 1


def test_warm_process_pool_is_shared_and_workers_survive_between_stages(state_dir):
    with ProcessExecutor(max_workers=1) as ex:
        p = FlakyPipeline(state_dir=state_dir, failures=0, executor=ex)
        a = p.run()
        b = p.run()
        assert a.state == b.state == "COMPLETED"
        pids = {e["pid"] for e in executions(state_dir)}
        assert len(pids) == 1, "stages should reuse the one warm worker"


def test_in_process_executor_documents_that_it_cannot_enforce_timeouts():
    assert InProcessExecutor.enforces_timeouts is False
    assert "cannot enforce timeouts" in (InProcessExecutor.__doc__ or "")
    assert ProcessExecutor.enforces_timeouts is True


def test_history_rows_carry_resource_usage(state_dir):
    ctx = FlakyPipeline(state_dir=state_dir, failures=0).run()
    conn = sqlite3.connect(state_dir / "history.db")
    rows = conn.execute("SELECT stage, wall_s, cpu_s, peak_rss_mb FROM stage_timings WHERE "
                        "run_id = ?", [ctx.run_id]).fetchall()
    conn.close()
    assert len(rows) == 4
    for stage, wall, cpu, rss in rows:
        assert wall > 0 and cpu >= 0 and rss > 10, (stage, wall, cpu, rss)


def test_the_retry_budget_carries_over_a_pause(state_dir):
    """A stage that always fails gets 1 + retry_attempts attempts in all, however often
    the run is paused (daemon stop) and resumed in between."""
    p = FlakyPipeline(state_dir=state_dir, failures=100, executor="inprocess",
                      stage_configs={"validate": StageConfig("validate", retry_attempts=1,
                                                             retry_delay=30)})
    from state import EventType as T, new_event

    with EventLog.open(state_dir) as log:
        log.append(new_event(T.RUN_REQUESTED, "r1", pipeline="flaky", stages=p.define_stages()))
        stop = threading.Event()
        result = {}
        th = threading.Thread(target=lambda: result.setdefault("ctx", p.execute_run("r1", log=log, stop=stop)))
        th.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and log.run("r1").stage_state("validate") != "RETRYING":
            time.sleep(0.02)
        stop.set()  # the daemon stops while the stage waits for its retry
        th.join(timeout=30)
        assert result["ctx"].state == "PENDING"
        p2 = FlakyPipeline(state_dir=state_dir, failures=100, executor="inprocess",
                           stage_configs={"validate": StageConfig("validate", retry_attempts=1,
                                                                  retry_delay=0.01)})
        ctx = p2.execute_run("r1", log=log)
    assert ctx.state == "FAILED"
    assert ctx.error.startswith("stage 'validate' failed after 2 attempt(s)")
    assert len([e for e in executions(state_dir) if e["stage"] == "validate"]) == 2


def test_outputs_of_attempts_that_timed_out_are_removed(state_dir):
    class BigNap(SleepyPipeline):
        def execute_stage(self, stage_name, context):
            context.sql("CREATE TABLE junk AS SELECT range AS x FROM range(1000)")
            return super().execute_stage(stage_name, context)

    p = BigNap(state_dir=state_dir, seconds=60,
               stage_configs={"nap": StageConfig("nap", timeout=1.0, retry_attempts=1, retry_delay=0.01)})
    ctx = p.run()
    assert ctx.state == "FAILED"
    leftovers = list((state_dir / "data" / ctx.run_id).glob("*")) if (state_dir / "data" / ctx.run_id).exists() else []
    assert leftovers == []


@pytest.mark.parametrize("size", [4, 5000], ids=["inline", "json-file"])
def test_a_dicts_key_order_survives_the_log_on_resume(state_dir, size):
    """A stage's value is read back from its stage.completed event (inline) or its .json file
    on resume: the next stage must get the mapping in the order the stage built it."""
    first = OrderPipeline(state_dir=state_dir, executor="inprocess", size=size).run()
    assert first.state == "COMPLETED", first.error
    expected = {"columns": [f"k{i:05d}" for i in reversed(range(size))], "nested": ["y", "b"]}
    assert first.get_output("use") == expected
    resumed = OrderPipeline(state_dir=state_dir, executor="inprocess", size=size).run(
        resume_from="use")
    assert resumed.state == "COMPLETED", resumed.error
    assert resumed.get_output("use") == expected
    assert list(resumed.get_output("make")["columns"]) == expected["columns"]


def test_runs_of_one_pipeline_load_in_the_order_they_were_requested(state_dir):
    """An older run whose work is slow still loads before a newer, quicker one: otherwise a
    stale result (an older file's rows, a profile read before the last load) would win."""
    from state import EventType as T, new_event

    with EventLog.open(state_dir) as log:
        for run_id, sleep in (("old-slow", 2.0), ("new-quick", 0.0)):
            log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="loadorder",
                                 params={"sleep": sleep}))
    results: dict[str, str] = {}

    def execute(run_id: str) -> None:
        pipeline = LoadOrderPipeline(state_dir=state_dir, executor="inprocess")
        results[run_id] = str(pipeline.execute_run(run_id).state)

    threads = [threading.Thread(target=execute, args=(r,)) for r in ("old-slow", "new-quick")]
    threads[0].start()
    with EventLog.open(state_dir) as log:  # the old one is RUNNING (its work sleeping) first
        deadline = time.monotonic() + 60
        while log.run("old-slow").state == "PENDING" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.run("old-slow").state == "RUNNING"
    threads[1].start()
    for t in threads:
        t.join(timeout=60)
    assert results == {"old-slow": "COMPLETED", "new-quick": "COMPLETED"}
    loads = [e["run_id"] for e in executions(state_dir) if e["stage"] == "load"]
    assert loads == ["old-slow", "new-quick"]
    works = [e["run_id"] for e in executions(state_dir) if e["stage"] == "work"]
    assert works == ["new-quick", "old-slow"]   # the new one worked meanwhile: only its load waited


def test_resume_reuses_only_a_run_given_the_same_input_and_params(state_dir, tmp_path):
    """A resumed run's earlier stages come from a run that read the same input file and was
    given the same params: else its history would name one file while another's rows were
    loaded.  Given no input, it takes the input of the run it reuses."""
    from state.store import sha256_file

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("code\n1\n")
    b.write_text("code\n2\n")
    sha_a, sha_b = sha256_file(a), sha256_file(b)
    p = FlakyPipeline(state_dir=state_dir, executor="inprocess", failures=0)
    first = p.run(input_file=a, params={"region": "VIC"})
    assert first.state == "COMPLETED"
    with pytest.raises(ResumeRefused) as exc:
        p.run(input_file=b, params={"region": "VIC"}, resume_from="load")
    assert str(exc.value) == (
        "cannot resume pipeline 'flaky' from 'load': no earlier run completed extract, "
        f"transform, validate with the same data as this run (the latest that did, "
        f"{first.run_id}, read the input with SHA-256 {sha_a[:12]}, not {sha_b[:12]}); a "
        "resumed run reuses the outputs of a run given the same input file and params: give "
        "those, or run from the start")
    with pytest.raises(ResumeRefused, match=r"had the params \{'region': 'VIC'\}, not "
                                            r"\{'region': 'NSW'\}"):
        p.run(input_file=a, params={"region": "NSW"}, resume_from="load")
    again = p.run(input_file=a, params={"region": "VIC"}, resume_from="load")
    bare = p.run(params={"region": "VIC"}, resume_from="load")
    with EventLog.open(state_dir) as log:
        for ctx in (again, bare):
            assert ctx.state == "COMPLETED"
            reused = log.query("SELECT DISTINCT json_extract(payload, '$.from_run') FROM events "
                               "WHERE run_id = ? AND type = 'stage.reused'", [ctx.run_id])
            assert [r[0] for r in reused] == [first.run_id]
        params = log.run(bare.run_id).params
        assert (params["input_sha256"], params["input_file"]) == (sha_a, str(a.resolve()))


def test_resume_compares_params_as_the_stages_see_them(state_dir, tmp_path):
    """A declared param's default counts whether or not a run's request recorded it (a
    scheduled or dropped run records only what it was given; `ahgd run` fills defaults in),
    and how a run came about (upstream_pipeline, orchestration_id ...) is not its data."""
    from ahgd_daemon.requests import request_run
    from pipelines import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("pipeline: {name: p}\nparams:\n  year: {type: integer, default: 2021}\n"
                    "stages:\n"
                    "  - {name: first, type: extractor, class: tests.daemon.stages.Tick}\n"
                    "  - {name: second, type: extractor, class: tests.daemon.stages.Tick}\n")
    p = load_pipeline(path, state_dir=state_dir, executor="inprocess")
    upstream = p.run(params={"upstream_pipeline": "u", "upstream_run": "u-1"})  # as followups
    assert upstream.state == "COMPLETED"
    with EventLog.open(state_dir) as log:   # as `ahgd run p --resume-from second` asks
        run_id = request_run(log, state_dir, {"p": p}, "p", resume_from="second")
        assert log.run(run_id).params["year"] == 2021      # the default, recorded
        ctx = p.execute_run(run_id, log=log)
        assert ctx.state == "COMPLETED"
        reused = log.query("SELECT json_extract(payload, '$.from_run') FROM events WHERE "
                           "run_id = ? AND type = 'stage.reused'", [run_id])
        assert [r[0] for r in reused] == [upstream.run_id]
    with pytest.raises(ResumeRefused, match=r"had the params \{'year': 2021\}, not "
                                            r"\{'year': 2020\}"):
        p.run(params={"year": 2020}, resume_from="second")

"""PipelineOrchestrator and YAML-configured pipelines, on real state directories.

Order, overlap and budgets are read back from what the event log recorded
(``runs.started_at`` / ``ended_at``, the ``orchestration_history`` view), the
way an operator would check them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pipelines import ConfigError, ExecutionMode, PipelineDefinition, PipelineOrchestrator
from pipelines.config.configured import load_pipeline
from pipelines.execution.pool import ProcessExecutor
from state import HISTORY_DB, EventLog

from .orch_pipelines import StepPipeline, executions_of, records

#: generous budget so that only the limits a test sets constrain it (this machine has 2 cores)
ROOMY = {"cpu": 64, "memory": 1_000_000}
MOD = "tests.pipelines.orch_pipelines"
#: how long a meeting stage waits for the other before it goes on alone
MEET_S = 30.0


def _meet(state_dir: Path | str, me: str, other: str) -> None:
    """Leave ``me``'s file under ``<state_dir>/trace/`` and wait (at most ``MEET_S``) for
    ``other``'s: two that meet were running at the same time, however late one started."""
    here = Path(state_dir) / "trace"
    here.mkdir(exist_ok=True)
    (here / f"meet-{me}").touch()
    deadline = time.monotonic() + MEET_S
    while not (here / f"meet-{other}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


class MeetingStep(StepPipeline):
    """``StepPipeline`` whose stage first meets pipeline ``meet`` (see :func:`_meet`)."""

    def __init__(self, name: str, *, meet: str, **kw):
        super().__init__(name, **kw)
        self.meet = meet

    def execute_stage(self, stage_name: str, context):
        _meet(context.state_dir, self.name, self.meet)
        return super().execute_stage(stage_name, context)


class MeetTransformer:
    """A YAML transformer that meets stage ``other`` (see :func:`_meet`), then passes its input
    through."""

    def __init__(self, other: str):
        self.other = other

    def transform(self, context):
        _meet(context.state_dir, context.stage_name, self.other)
        return context.passthrough(context.input_stage())


def _orch(state_dir: Path, mode: str = "parallel", **kw) -> PipelineOrchestrator:
    kw.setdefault("executor", "inprocess")
    kw.setdefault("resource_limits", ROOMY)
    return PipelineOrchestrator("t", mode, state_dir=state_dir, **kw)


def _add(orch: PipelineOrchestrator, name: str, deps=(), priority: int = 0,
         cls: type = StepPipeline, **kw) -> None:
    definition = {k: kw.pop(k) for k in ("resource_requirements", "timeout", "retry_policy")
                  if k in kw}
    orch.register_pipeline(PipelineDefinition(name, cls, config=kw,
                                              dependencies=list(deps), priority=priority,
                                              **definition))


def _diamond(orch: PipelineOrchestrator, nap: float = 0.0) -> None:
    """a -> {b (priority 1), c (priority 9)} -> d (priority 100); e alone (priority 50)."""
    _add(orch, "a", nap=nap)
    _add(orch, "b", ["a"], 1, nap=nap)
    _add(orch, "c", ["a"], 9, nap=nap)
    _add(orch, "d", ["b", "c"], 100, nap=nap)
    _add(orch, "e", [], 50, nap=nap)


def _query(state_dir: Path, sql: str, params: list | None = None) -> list[tuple]:
    with EventLog.open(state_dir) as log:
        return [tuple(r) for r in log.query(sql, params or [])]


def _run_times(state_dir: Path, orch_id: str) -> dict[str, list[tuple[str, str]]]:
    """pipeline -> [(started_at, ended_at)] of its runs in one orchestration."""
    out: dict[str, list[tuple[str, str]]] = {}
    for pipeline, start, end in _query(
            state_dir, "SELECT pipeline, started_at, ended_at FROM runs WHERE "
                       "json_extract(params, '$.orchestration_id') = ? ORDER BY started_at",
            [orch_id]):
        out.setdefault(pipeline, []).append((start, end))
    return out


def _max_overlap(intervals: list[tuple[str, str]]) -> int:
    """How many intervals were open at once, at most (ends sort before starts at a tie)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda p: (p[0], p[1]))
    level = peak = 0
    for _, step in points:
        level += step
        peak = max(peak, level)
    return peak


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _value_pipeline(folder: Path, name: str, *, fail: bool = False, extra: str = "") -> None:
    _write(folder, f"{name}.yaml", f"""
        pipeline: {{name: {name}}}
        {extra}
        stages:
          - name: extract
            type: extractor
            class: {MOD}.ValueExtractor
            config: {{value: {name}, fail: {'true' if fail else 'false'}}}
            retry_attempts: 0
        """)


# --------------------------------------------------------------------------- register and run


def test_run_reports_outcomes_order_errors_duration_and_success_rate(state_dir):
    orch = _orch(state_dir)
    _add(orch, "a")
    _add(orch, "b", ["a"])
    _add(orch, "c", fail_times=-1)
    assert list(orch.pipelines) == ["a", "b", "c"]
    result = orch.run()
    assert result.name == "t" and result.state == "FAILED" and not result.success
    assert {n: o.state for n, o in result.outcomes.items()} == {
        "a": "COMPLETED", "b": "COMPLETED", "c": "FAILED"}
    assert result.errors == {"c": "stage 'work' failed after 1 attempt(s): RuntimeError: "
                                  "c broke on execution 1"}
    assert result.completed == ["a", "b"] and result.failed == ["c"] and result.skipped == {}
    assert result.success_rate == pytest.approx(2 / 3)
    assert result.duration_s > 0
    assert sorted(result.execution_order) == ["a", "b", "c"]
    assert result.execution_order.index("a") < result.execution_order.index("b")
    a = result.outcomes["a"]
    assert a.attempts == 1 and a.duration_s > 0
    assert _query(state_dir, "SELECT state, trigger FROM runs WHERE run_id = ?", [a.run_id]) == [
        ("COMPLETED", "orchestrator")]


def test_sequential_diamond_starts_by_dependencies_then_priority(state_dir):
    orch = _orch(state_dir, ExecutionMode.SEQUENTIAL)
    _diamond(orch)
    expected = ["e", "a", "c", "b", "d"]
    assert orch.plan() == expected
    result = orch.run()
    assert result.state == "COMPLETED"
    assert result.execution_order == expected
    times = _run_times(state_dir, result.orchestration_id)
    started = sorted(times, key=lambda n: times[n][0][0])
    assert started == expected
    for before, after in zip(expected, expected[1:]):  # one at a time
        assert times[after][0][0] >= times[before][0][1]


def test_parallel_diamond_never_starts_a_pipeline_before_its_dependencies_end(state_dir):
    orch = _orch(state_dir, ExecutionMode.PARALLEL, max_workers=3)
    # _diamond's, but a and e meet rather than hope to overlap within a 0.2 s nap: on a loaded
    # host the second run's start (its log writes) can come after the first has ended; run
    # one after the other, the first waits MEET_S alone and ends before the second starts
    _add(orch, "a", nap=0.2, cls=MeetingStep, meet="e")
    _add(orch, "b", ["a"], 1, nap=0.2)
    _add(orch, "c", ["a"], 9, nap=0.2)
    _add(orch, "d", ["b", "c"], 100, nap=0.2)
    _add(orch, "e", [], 50, nap=0.2, cls=MeetingStep, meet="a")
    result = orch.run()
    assert result.state == "COMPLETED"
    assert result.execution_order == ["e", "a", "c", "b", "d"]
    times = _run_times(state_dir, result.orchestration_id)
    for name, deps in {"b": ["a"], "c": ["a"], "d": ["b", "c"]}.items():
        assert times[name][0][0] >= max(times[d][0][1] for d in deps), name
    # e and a are independent and both start at once
    assert _max_overlap([times["a"][0], times["e"][0]]) == 2


# --------------------------------------------------------------------------- failures


def test_a_failure_skips_exactly_its_dependents_and_independent_branches_go_on(state_dir):
    orch = _orch(state_dir, max_workers=2)
    _add(orch, "a")
    _add(orch, "b", ["a"], fail_times=-1)
    _add(orch, "c", ["b"])
    _add(orch, "d", ["c"])
    _add(orch, "e", ["a"], nap=0.1)
    _add(orch, "g", ["e", "c"])
    _add(orch, "f")
    result = orch.run()
    assert result.state == "FAILED"
    assert result.skipped == {
        "c": "dependency 'b' failed",
        "d": "dependency 'c' was skipped (dependency 'b' failed)",
        "g": "dependency 'c' was skipped (dependency 'b' failed)",
    }
    assert sorted(result.completed) == ["a", "e", "f"]
    assert {n: executions_of(state_dir, n) for n in "abcdefg"} == {
        "a": 1, "b": 1, "c": 0, "d": 0, "e": 1, "f": 1, "g": 0}
    rows = _query(state_dir, "SELECT pipeline, state, reason FROM orchestration_history "
                             "WHERE orch_id = ? ORDER BY pipeline", [result.orchestration_id])
    assert rows == [
        ("a", "COMPLETED", None),
        ("b", "FAILED", "stage 'work' failed after 1 attempt(s): RuntimeError: b broke on "
                        "execution 1"),
        ("c", "SKIPPED", "dependency 'b' failed"),
        ("d", "SKIPPED", "dependency 'c' was skipped (dependency 'b' failed)"),
        ("e", "COMPLETED", None),
        ("f", "COMPLETED", None),
        ("g", "SKIPPED", "dependency 'c' was skipped (dependency 'b' failed)"),
    ]
    assert _query(state_dir,
                  "SELECT COUNT(*) FROM runs WHERE pipeline IN ('c', 'd', 'g')") == [(0,)]


def test_retry_policy_of_two_attempts_retries_once_then_stops(state_dir):
    orch = _orch(state_dir)
    _add(orch, "never", fail_times=-1, retry_policy={"max_attempts": 2})
    _add(orch, "after", ["never"])
    _add(orch, "once", fail_times=1, retry_policy={"max_attempts": 2, "delay": "PT0.05S"})
    _add(orch, "plain", fail_times=-1)
    result = orch.run()
    outcomes = result.outcomes
    assert (outcomes["never"].state, outcomes["never"].attempts) == ("FAILED", 2)
    assert (outcomes["once"].state, outcomes["once"].attempts) == ("COMPLETED", 2)
    assert (outcomes["plain"].state, outcomes["plain"].attempts) == ("FAILED", 1)
    assert result.skipped == {"after": "dependency 'never' failed"}
    assert {n: executions_of(state_dir, n) for n in ("never", "once", "plain", "after")} == {
        "never": 2, "once": 2, "plain": 1, "after": 0}
    assert _query(state_dir, "SELECT json_extract(payload, '$.attempt_no'), "
                             "json_extract(payload, '$.pipeline_run_id') FROM events WHERE "
                             "type = 'orchestration.pipeline_started' AND stage = 'never' "
                             "ORDER BY seq") == [
        (1, f"never-{result.orchestration_id}-1"), (2, f"never-{result.orchestration_id}-2")]
    assert _query(state_dir, "SELECT state FROM runs WHERE pipeline = 'never'") == [
        ("FAILED",), ("FAILED",)]


# --------------------------------------------------------------------------- config errors


def _nothing_ran(state_dir: Path) -> bool:
    return not (state_dir / HISTORY_DB).exists() and records(state_dir) == []


def test_a_dependency_cycle_is_a_config_error_before_anything_runs(state_dir):
    orch = _orch(state_dir)
    _add(orch, "a", ["c"])
    _add(orch, "b", ["a"])
    _add(orch, "c", ["b"])
    _add(orch, "free")
    for call in (orch.run, orch.plan):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == ("pipeline dependency cycle a -> c -> b -> a; remove one of "
                                  "these dependencies")
    assert _nothing_ran(state_dir)


def test_unknown_dependency_and_unknown_target_are_config_errors(state_dir):
    orch = _orch(state_dir)
    _add(orch, "a")
    with pytest.raises(ConfigError) as err:
        orch.run(target_pipelines=["nope"])
    assert str(err.value) == "target pipeline 'nope' is not registered (known: a)"
    _add(orch, "b", ["zz"])
    with pytest.raises(ConfigError) as err:
        orch.run()
    assert str(err.value) == "pipeline 'b' depends on 'zz', which is not registered (known: a, b)"
    assert _nothing_ran(state_dir)


def test_a_duplicate_name_is_refused_and_the_first_stays(state_dir):
    orch = _orch(state_dir)
    _add(orch, "a", nap=0.0)
    with pytest.raises(ConfigError) as err:
        _add(orch, "a", nap=5.0)
    assert str(err.value) == ("pipeline 'a' is registered twice with orchestrator 't'; "
                              "pipeline names must be unique")
    assert orch.pipelines["a"].config == {"nap": 0.0}


def test_bad_definitions_are_config_errors(state_dir):
    with pytest.raises(ConfigError) as err:
        PipelineDefinition("t", StepPipeline, timeout="PT0S")
    assert str(err.value) == ("pipeline 't': timeout is 0s; use a positive ISO 8601 duration "
                              "such as PT30M")
    with pytest.raises(ConfigError) as err:
        PipelineDefinition("t", StepPipeline, retry_policy={"max_attempts": 0})
    assert str(err.value) == ("pipeline 't': retry_policy.max_attempts is 0; use a whole number "
                              "of 1 or more (1 = no retry)")
    with pytest.raises(ConfigError) as err:
        PipelineOrchestrator("t", "fastest")
    assert str(err.value) == "execution_mode 'fastest' is not one of sequential, parallel"
    with pytest.raises(ConfigError) as err:
        PipelineOrchestrator("t", resource_limits={"gpu": 1}, state_dir=state_dir)
    assert str(err.value) == ("resource_limits has unknown key 'gpu'; use cpu (cores) and "
                              "memory (MB)")


def test_master_file_errors_come_from_the_config_loader_with_file_and_line(state_dir, tmp_path,
                                                                          monkeypatch):
    for name in ("geo", "health", "seifa"):
        _value_pipeline(tmp_path, name)
    _write(tmp_path, "master.yaml", """
        pipelines:
          - {name: geo, config_file: geo.yaml, dependencies: [health]}
          - name: health
            config_file: health.yaml
            dependencies: [geo]
          - {name: seifa, config_file: seifa.yaml, dependencies: [sefia]}
          - {name: seifa, config_file: seifa.yaml}
        """)
    monkeypatch.chdir(tmp_path)
    orch = _orch(state_dir)
    with pytest.raises(ConfigError) as err:
        orch.register_from_config("master.yaml")
    assert str(err.value).splitlines() == [
        "master.yaml:1: pipelines: dependency cycle geo -> health -> geo; remove one of these "
        "dependencies",
        "master.yaml:6: pipelines[2].dependencies: unknown pipeline 'sefia'; did you mean 'seifa'?",
        "master.yaml:7: pipelines[3].name: duplicate pipeline name 'seifa' (also pipelines[2]); "
        "give each pipeline a unique name",
    ]
    assert orch.pipelines == {}
    assert _nothing_ran(state_dir)


# --------------------------------------------------------------------------- selection


def test_target_pipelines_run_with_what_they_depend_on_and_nothing_else(state_dir):
    orch = _orch(state_dir)
    _add(orch, "a")
    _add(orch, "b", ["a"])
    _add(orch, "c", ["b"])
    _add(orch, "d", priority=99)
    _add(orch, "e", ["d"])
    result = orch.run(target_pipelines=["b"])
    assert result.state == "COMPLETED"
    assert list(result.outcomes) == ["a", "b"] and result.execution_order == ["a", "b"]
    assert _query(state_dir, "SELECT DISTINCT pipeline FROM runs ORDER BY pipeline") == [
        ("a",), ("b",)]
    assert json.loads(_query(state_dir, "SELECT planned FROM orchestrations")[0][0]) == ["a", "b"]


def test_skip_pipelines_records_the_skip_and_lets_the_rest_run(state_dir):
    orch = _orch(state_dir)
    _add(orch, "d")
    _add(orch, "e", ["d"])
    result = orch.run(skip_pipelines=["d"])
    assert result.state == "COMPLETED"
    assert result.skipped == {"d": "skipped on request"}
    assert result.completed == ["e"] and result.success_rate == 0.5
    assert executions_of(state_dir, "d") == 0


# --------------------------------------------------------------------------- budgets


def test_parallel_within_memory_budget_never_runs_two_600mb_pipelines_at_once(state_dir):
    orch = _orch(state_dir, max_workers=3, resource_limits={"cpu": 8, "memory": 1000})
    for name in ("x", "y", "z"):
        _add(orch, name, nap=0.2, resource_requirements={"memory": 600})
    result = orch.run()
    assert result.state == "COMPLETED"
    times = _run_times(state_dir, result.orchestration_id)
    assert _max_overlap([t for runs in times.values() for t in runs]) == 1


def test_parallel_without_memory_limit_overlaps_exactly_max_workers(state_dir):
    orch = _orch(state_dir, max_workers=2, resource_limits={"cpu": 8})
    for name in ("w", "x", "y", "z"):
        _add(orch, name, nap=0.4, resource_requirements={"memory": 600})
    result = orch.run()
    assert result.state == "COMPLETED"
    times = _run_times(state_dir, result.orchestration_id)
    assert _max_overlap([t for runs in times.values() for t in runs]) == 2


def test_a_pipeline_that_can_never_fit_is_refused_at_registration(state_dir, tmp_path):
    orch = _orch(state_dir, resource_limits={"cpu": 2, "memory": 1000})
    with pytest.raises(ConfigError) as err:
        _add(orch, "huge", resource_requirements={"memory": 2000})
    assert str(err.value) == ("pipeline 'huge' needs memory 2000 MB but the budget has only "
                              "1000 MB; lower its resource_requirements.memory or raise "
                              "resource_limits.memory")
    with pytest.raises(ConfigError) as err:
        _add(orch, "wide", resource_requirements={"cpu": 4, "memory": 10})
    assert str(err.value) == ("pipeline 'wide' needs cpu 4 cores but the budget has only 2 "
                              "cores; lower its resource_requirements.cpu or raise "
                              "resource_limits.cpu")
    # a YAML pipeline needs what its heaviest stage needs
    _write(tmp_path, "heavy.yaml", f"""
        pipeline: {{name: heavy}}
        stages:
          - {{name: small, type: extractor, class: {MOD}.ValueExtractor}}
          - name: big
            type: extractor
            class: {MOD}.ValueExtractor
            resource_requirements: {{cpu: 1, memory: 5000}}
        """)
    with pytest.raises(ConfigError) as err:
        orch.register_from_config(tmp_path / "heavy.yaml")
    assert str(err.value) == ("pipeline 'heavy' needs memory 5000 MB but the budget has only "
                              "1000 MB; lower its resource_requirements.memory or raise "
                              "resource_limits.memory")
    assert orch.pipelines == {}


# --------------------------------------------------------------------------- timeouts


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (waits up to 5 s: the kill is asynchronous)."""
    for _ in range(50):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_pipeline_timeout_stops_its_worker_and_records_timed_out(state_dir):
    executor = ProcessExecutor(2)
    try:
        # 5 s, not 1: the pipeline's time counts from its start here, and a fresh pool's
        # worker must start (and record its pid) first, which a loaded host can make slow
        orch = _orch(state_dir, executor=executor)
        _add(orch, "slow", nap=30, timeout="PT5S")
        _add(orch, "after", ["slow"])
        _add(orch, "quick")
        t0 = time.monotonic()
        result = orch.run()
        elapsed = time.monotonic() - t0
        slow = result.outcomes["slow"]
        assert (slow.state, slow.error) == ("TIMED_OUT", "pipeline 'slow' timed out after PT5S")
        assert result.outcomes["quick"].state == "COMPLETED"
        assert result.skipped == {"after": "dependency 'slow' timed out"}
        assert result.state == "FAILED"
        assert _query(state_dir, "SELECT state, error FROM runs WHERE run_id = ?",
                      [slow.run_id]) == [("CANCELLED", "pipeline 'slow' timed out after PT5S")]
        assert _query(state_dir, "SELECT state, reason FROM orchestration_history WHERE "
                                 "pipeline = 'slow'") == [
            ("TIMED_OUT", "pipeline 'slow' timed out after PT5S")]
        pids = {r["pipeline"]: r["pid"] for r in records(state_dir)}
        assert pids["slow"] != os.getpid()
        assert _gone(pids["slow"])          # the sleeping worker was killed ...
        assert executor.worker_pids()       # ... and the pool lives on
        assert elapsed < 5 + 10             # not the 30 s the stage wanted
    finally:
        executor.shutdown()


def test_the_orchestration_timeout_stops_running_work_and_skips_the_rest(state_dir):
    # 5 s, not 1: the orchestration's time includes starting a worker of the shared pool,
    # which may be cold (and slow to start on a loaded host)
    orch = _orch(state_dir, ExecutionMode.SEQUENTIAL, executor="process", timeout="PT5S")
    _add(orch, "slow", priority=5, nap=30)
    _add(orch, "after", ["slow"])
    _add(orch, "other")
    t0 = time.monotonic()
    result = orch.run()
    assert time.monotonic() - t0 < 5 + 10   # not the 30 s the stage wanted
    reason = "the orchestration timed out after PT5S"
    assert (result.outcomes["slow"].state, result.outcomes["slow"].error) == ("TIMED_OUT", reason)
    assert result.skipped == {"after": reason, "other": reason}
    assert result.state == "FAILED"
    assert _query(state_dir, "SELECT state, error FROM runs") == [("CANCELLED", reason)]
    assert _query(state_dir, "SELECT state, error FROM orchestrations") == [
        ("FAILED", "failed: slow; skipped: after, other")]
    assert _gone(records(state_dir)[0]["pid"])


class _JumpsAfter:
    """A clock that reads 0 until pipeline ``name`` has finished in the log, then 100 s."""

    def __init__(self, state_dir: Path, name: str):
        self.db, self.name = state_dir / HISTORY_DB, name

    def __call__(self) -> float:
        try:
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT 1 FROM events WHERE type = "
                                  "'orchestration.pipeline_finished' AND stage = ?",
                                  [self.name]).fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            row = None
        return 100.0 if row else 0.0


def test_an_orchestration_that_timed_out_between_pipelines_is_not_completed(state_dir):
    orch = _orch(state_dir, ExecutionMode.SEQUENTIAL, timeout="PT10S",
                 clock=_JumpsAfter(state_dir, "a"))
    _add(orch, "a")
    _add(orch, "b", ["a"])
    result = orch.run()
    assert result.skipped == {"b": "the orchestration timed out after PT10S"}
    assert result.state == "FAILED"


def test_no_retry_starts_after_the_orchestration_timed_out(state_dir):
    orch = _orch(state_dir, timeout="PT0.5S")
    _add(orch, "flaky", fail_times=-1, retry_policy={"max_attempts": 2, "delay": "PT3S"})
    result = orch.run()
    assert result.outcomes["flaky"].attempts == 1
    assert _query(state_dir, "SELECT COUNT(*) FROM runs") == [(1,)]


# --------------------------------------------------------------------------- the event log


def test_each_orchestration_is_recorded_in_the_event_log(state_dir):
    orch = _orch(state_dir, ExecutionMode.SEQUENTIAL)
    _add(orch, "a")
    _add(orch, "b", ["a"], fail_times=1)
    _add(orch, "c", ["b"])
    first = orch.run()
    second = orch.run()
    assert (first.state, second.state) == ("FAILED", "COMPLETED")
    with EventLog.open(state_dir) as log:
        events = [(e.type, e.stage) for e in log.events(run_id=first.orchestration_id)]
        assert events == [
            ("orchestration.started", None),
            ("orchestration.pipeline_started", "a"), ("orchestration.pipeline_finished", "a"),
            ("orchestration.pipeline_started", "b"), ("orchestration.pipeline_finished", "b"),
            ("orchestration.pipeline_skipped", "c"),
            ("orchestration.failed", None),
        ]
        started, *_, failed = log.events(run_id=first.orchestration_id)
        assert started.data() == {"name": "t", "order": ["a", "b", "c"], "mode": "sequential",
                                  "max_workers": 1}
        assert failed.data() == {
            "error": "failed: b; skipped: c", "success_rate": round(1 / 3, 4),
            "duration_s": round(first.duration_s, 3), "completed": ["a"], "failed": ["b"],
            "skipped": {"c": "dependency 'b' failed"}}
        assert [e.type for e in log.events(run_id=second.orchestration_id)][-1] == \
            "orchestration.completed"
        rows = log.query("SELECT * FROM orchestration_history WHERE orch_id = ? ORDER BY position",
                         [first.orchestration_id])
        assert list(rows[0].keys()) == [
            "orch_id", "name", "orchestration_state", "position", "pipeline", "state", "run_id",
            "reason", "started_at", "ended_at"]
        assert [(r["orchestration_state"], r["position"], r["pipeline"], r["state"], r["run_id"],
                 r["reason"]) for r in rows] == [
            ("FAILED", 0, "a", "COMPLETED", first.outcomes["a"].run_id, None),
            ("FAILED", 1, "b", "FAILED", first.outcomes["b"].run_id,
             "stage 'work' failed after 1 attempt(s): RuntimeError: b broke on execution 1"),
            ("FAILED", 2, "c", "SKIPPED", None, "dependency 'b' failed"),
        ]
        assert all(r["ended_at"] for r in rows) and rows[2]["started_at"] is None
        assert [tuple(r) for r in log.query(
            "SELECT pipeline, state FROM orchestration_history WHERE orch_id = ? ORDER BY "
            "position", [second.orchestration_id])] == [
            ("a", "COMPLETED"), ("b", "COMPLETED"), ("c", "COMPLETED")]
        assert log.check().ok


# --------------------------------------------------------------------------- YAML


def test_register_from_config_runs_yaml_pipelines_in_worker_processes(state_dir, tmp_path):
    for name in ("geo", "seifa", "health", "extra"):
        _value_pipeline(tmp_path, name)
    _value_pipeline(tmp_path, "broken", fail=True)
    _value_pipeline(tmp_path, "dormant")
    _write(tmp_path, "slow.yaml", f"""
        pipeline: {{name: slow}}
        orchestration: {{timeout: PT1S}}
        stages:
          - {{name: nap, type: extractor, class: {MOD}.SleepExtractor, config: {{seconds: 30}}}}
        """)
    master = _write(tmp_path, "master.yaml", """
        pipelines:
          - {name: geo, config_file: geo.yaml, priority: 1}
          - {name: seifa, config_file: seifa.yaml, priority: 10}
          - name: health
            config_file: health.yaml
            dependencies: [geo, seifa]
            priority: 50
            resource_requirements: {cpu: 1, memory: 512}
          - {name: broken, config_file: broken.yaml, retry_policy: {max_attempts: 2}}
          - {name: extra, config_file: extra.yaml, dependencies: [broken]}
          - {name: dormant, config_file: dormant.yaml, enabled: false}
          - {name: slow, config_file: slow.yaml, priority: -1}
        """)
    orch = PipelineOrchestrator("yaml", ExecutionMode.SEQUENTIAL, state_dir=state_dir,
                                resource_limits=ROOMY)  # the default: worker processes
    assert orch.register_from_config(master) == [
        "geo", "seifa", "health", "broken", "extra", "dormant", "slow"]
    assert orch.plan() == ["seifa", "geo", "health", "broken", "extra", "dormant", "slow"]
    result = orch.run()
    assert result.execution_order == ["seifa", "geo", "health", "broken", "slow"]
    assert {n: o.state for n, o in result.outcomes.items()} == {
        "geo": "COMPLETED", "seifa": "COMPLETED", "health": "COMPLETED", "broken": "FAILED",
        "extra": "SKIPPED", "dormant": "SKIPPED", "slow": "TIMED_OUT"}
    assert result.skipped == {"dormant": "disabled in the configuration",
                              "extra": "dependency 'broken' failed"}
    assert result.outcomes["broken"].attempts == 2
    assert result.outcomes["slow"].error == "pipeline 'slow' timed out after PT1S"
    ran = [(r["pipeline"], r["pid"]) for r in records(state_dir)]
    assert [p for p, _ in ran] == ["seifa", "geo", "health", "broken", "broken", "slow"]
    assert os.getpid() not in {pid for _, pid in ran}
    out = _query(state_dir, "SELECT r.pipeline, json_extract(s.output, '$.value') FROM runs r "
                            "JOIN stage_runs s ON s.run_id = r.run_id WHERE r.pipeline = 'health'")
    assert [(p, json.loads(v)) for p, v in out] == [("health", {"value": "health"})]


MORTALITY_YAML = f"""
    pipeline: {{name: mortality, description: deaths by SA2}}
    stages:
      - name: extract
        type: extractor
        class: {MOD}.CsvExtractor
        config: {{delimiter: ";"}}
        retry_attempts: 0
      - name: scale
        type: transformer
        class: {MOD}.ScaleTransformer
        config: {{column: deaths, factor: 2}}
      - name: check
        type: validator
        retry_attempts: 0
        validation_rules:
          required_columns: [sa2_code, deaths]
          min_records: MIN_RECORDS
          not_null: [sa2_code]
          ranges: {{deaths: [0, null]}}
      - name: audit
        type: loader
        class: {MOD}.MarkLoader
        enabled: false
      - name: load
        type: loader
        class: {MOD}.TableLoader
        config: {{table: mortality}}
        prerequisites: [check]
    """


@pytest.fixture
def deaths_csv(tmp_path: Path) -> Path:
    """A three-row input file, as a drop folder would hand it over."""
    path = tmp_path / "deaths.csv"
    path.write_text("sa2_code;deaths\n101021007;3\n101021008;5\n101021009;0\n")
    return path


def test_yaml_pipeline_runs_end_to_end_with_classes_built_from_config(state_dir, tmp_path,
                                                                      deaths_csv):
    import duckdb

    path = _write(tmp_path, "mortality.yaml", MORTALITY_YAML.replace("MIN_RECORDS", "3"))
    ctx = load_pipeline(path, state_dir=state_dir).run(input_file=deaths_csv)
    assert ctx.state == "COMPLETED", ctx.error
    assert {s: r.state for s, r in ctx.stage_results.items()} == {
        "extract": "COMPLETED", "scale": "COMPLETED", "check": "COMPLETED",
        "audit": "SKIPPED", "load": "COMPLETED"}
    assert ctx.get_output("load") == {"table": "mortality", "rows": 3}
    ran = records(state_dir)
    assert [r["stage"] for r in ran] == ["extract", "scale", "load"]
    assert ran[0]["options"] == {"delimiter": ";"}
    assert ran[0]["pid"] != os.getpid()
    con = duckdb.connect(str(state_dir / "warehouse.duckdb"), read_only=True)
    try:
        assert con.sql("SELECT * FROM mortality ORDER BY sa2_code").fetchall() == [
            ("101021007", 6.0), ("101021008", 10.0), ("101021009", 0.0)]
    finally:
        con.close()
    assert _query(state_dir,
                  "SELECT stage FROM events WHERE type = 'stage.skipped'") == [("audit",)]


def test_a_failing_validation_rule_fails_the_yaml_run_naming_the_rule(state_dir, tmp_path,
                                                                     deaths_csv):
    path = _write(tmp_path, "mortality.yaml", MORTALITY_YAML.replace("MIN_RECORDS", "5"))
    ctx = load_pipeline(path, state_dir=state_dir, executor="inprocess").run(input_file=deaths_csv)
    assert ctx.state == "FAILED"
    assert ctx.failed_stage == "check"
    assert ctx.error == ("stage 'check' failed after 1 attempt(s) (not retried: "
                         "ValidationFailed: the data broke a validation rule, and a retry would "
                         "check the same data): stage 'check': min_records: 3 rows, at least 5 "
                         "required")
    assert [r["stage"] for r in records(state_dir)] == ["extract", "scale"]


def test_yaml_prerequisites_are_honoured_in_parallel_mode(state_dir, tmp_path, deaths_csv):
    path = _write(tmp_path, "fan.yaml", f"""
        pipeline: {{name: fan}}
        orchestration: {{execution_mode: parallel, max_workers: 2}}
        stages:
          - {{name: extract, type: extractor, class: {MOD}.CsvExtractor,
              config: {{delimiter: ";"}}}}
          - {{name: join, type: loader, class: {MOD}.MarkLoader, prerequisites: [left, right]}}
          - {{name: left, type: transformer, class: {__name__}.MeetTransformer,
              config: {{other: right}}, prerequisites: [extract]}}
          - {{name: right, type: transformer, class: {__name__}.MeetTransformer,
              config: {{other: left}}, prerequisites: [extract]}}
        """)
    # left and right meet rather than hope to overlap within a 0.3 s nap, which a loaded host
    # can miss; run one after the other, the first waits MEET_S alone and ends first
    ctx = load_pipeline(path, state_dir=state_dir, executor="inprocess").run(input_file=deaths_csv)
    assert ctx.state == "COMPLETED", ctx.error
    times = {s: (a, b) for s, a, b in _query(
        state_dir, "SELECT stage, started_at, ended_at FROM stage_timings")}
    assert times["left"][0] >= times["extract"][1] and times["right"][0] >= times["extract"][1]
    assert times["join"][0] >= max(times["left"][1], times["right"][1])
    assert _max_overlap([times["left"], times["right"]]) == 2


def test_a_yaml_stage_executor_inprocess_runs_in_this_process(state_dir, tmp_path):
    path = _write(tmp_path, "local.yaml", f"""
        pipeline: {{name: local}}
        stages:
          - {{name: extract, type: extractor, class: {MOD}.ValueExtractor, executor: inprocess}}
        """)
    ctx = load_pipeline(path, state_dir=state_dir).run()
    assert ctx.state == "COMPLETED"
    assert [r["pid"] for r in records(state_dir)] == [os.getpid()]


def test_a_yaml_pipeline_timeout_limits_a_direct_run(state_dir, tmp_path):
    path = _write(tmp_path, "nap.yaml", f"""
        pipeline: {{name: nap}}
        orchestration: {{timeout: PT1S}}
        stages:
          - {{name: nap, type: extractor, class: {MOD}.SleepExtractor, config: {{seconds: 2.5}}}}
        """)
    ctx = load_pipeline(path, state_dir=state_dir).run()
    assert ctx.state != "COMPLETED"
    assert "timed out after PT1S" in (ctx.error or "")

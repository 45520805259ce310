"""What one in-process run costs the event log (issue 18, 3a): one commit per stage, the
last stage's completion committed with the run's, and each stage's config built once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines import BasePipeline, StageConfig
from state import EventLog


class Chain(BasePipeline):
    built: list[str]

    def define_stages(self) -> list[str]:
        return ["a", "b", "c"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"stage": stage_name}

    def _stage_config(self, stage: str) -> StageConfig:
        self.built.append(stage)
        return super()._stage_config(stage)


def test_a_run_commits_once_per_stage_and_builds_each_config_once(state_dir: Path):
    pipeline = Chain("chain", state_dir=state_dir, executor="inprocess", max_retries=0)
    pipeline.built = []
    try:
        ctx = pipeline.run()
        appends = pipeline._log.append_timings.count  # type: ignore[union-attr]
    finally:
        pipeline.close()
    assert ctx.state == "COMPLETED", ctx.error
    assert sorted(pipeline.built) == ["a", "b", "c"]  # checks and run share one config each
    with EventLog.open(state_dir) as log:
        events = log.events(run_id=ctx.run_id)
        assert log.check().ok
    assert [e.type for e in events[-2:]] == ["stage.completed", "run.completed"]
    assert events[-2].ts == events[-1].ts  # one transaction: one fsync, not two
    # requested, started, one per stage (its start with the previous completion), the end
    assert appends == 2 + 3 + 1


# -- what each stage costs besides its commit (issue 18, 3a) ---------------------------------


class Long(BasePipeline):
    """40 stages without configs of their own; each returns a small plain value."""

    def define_stages(self) -> list[str]:
        return [f"s{i:02d}" for i in range(40)]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return {"stage": stage_name, "n": [1, 2.5, None, True]}


def _counting(monkeypatch: Any, owner: Any, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (the real one still runs)."""
    calls = [0]
    real = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_stages_without_a_config_get_copies_of_one_checked_config(state_dir: Path, monkeypatch):
    from datetime import timedelta

    from pipelines.errors import ConfigError

    delay = timedelta(seconds=7.125)   # settings no other test uses: nothing known for them yet
    checks = _counting(monkeypatch, StageConfig, "__post_init__")
    pipeline = Long("long", state_dir=state_dir, executor="inprocess", max_retries=2,
                    retry_delay=delay)
    stages, _, configs = pipeline._stages_deps_configs()
    assert checks[0] == 1  # built and checked once for these settings, copied for the others
    for s in stages:
        assert configs[s] == StageConfig(name=s, retry_attempts=2, retry_delay=delay)
        assert configs[s].requirements() == {"cpu": 1.0, "memory": 0.0}
    # each copy's lists and dicts are its own
    configs["s01"].parameters["x"] = 1
    configs["s01"].prerequisites.append("s00")
    assert configs["s02"].parameters == {} and configs["s02"].prerequisites == []
    assert pipeline.stage_config("s03").parameters == {}
    # what the constructor refuses, it still refuses, saying why
    from pipelines.base import default_stage_config

    with pytest.raises(ConfigError, match="stage name '9 lives' is not allowed"):
        default_stage_config("9 lives", 2, delay)
    with pytest.raises(ConfigError, match="retry_attempts is -1"):
        default_stage_config("s00", -1, delay)


def test_a_run_result_decodes_each_stage_detail_once(state_dir: Path, monkeypatch):
    from state.machine import Attempt

    pipeline = Long("long", state_dir=state_dir, executor="inprocess", max_retries=0)
    try:
        ctx = pipeline.run()
        assert ctx.state == "COMPLETED", ctx.error
        run = pipeline._log.run(ctx.run_id)  # type: ignore[union-attr]
        decodes = _counting(monkeypatch, Attempt, "info")
        again = pipeline._result(run)
    finally:
        pipeline.close()
    assert decodes[0] == 40   # the stage's result and the context's outputs share one decode
    assert again.get_output("s39") == {"stage": "s39", "n": [1, 2.5, None, True]}
    assert again.output_ref("s07") == again.stage_results["s07"].output
    assert again.output_ref("s07")["format"] == "inline"
    assert [r.rows for r in again.stage_results.values()] == [None] * 40


def test_a_small_plain_value_is_stored_inline_without_decoding_its_json(tmp_path, monkeypatch):
    import enum
    import json
    from types import SimpleNamespace

    from pipelines.execution.outputs import _store_value

    class Level(enum.IntEnum):
        LOW = 1

    class Text(str):
        pass

    ctx = SimpleNamespace(state_dir=tmp_path)
    task = SimpleNamespace(run_id="r1", stage="s", attempt=1)
    decodes = _counting(monkeypatch, json, "loads")
    plain = [{"i": 1}, [1, -0.0, 1e308, 2**80, "ü\ud800", None, False], {"a": {"b": [[]]}}, "x", 0]
    for value in plain:
        assert _store_value(ctx, task, value) == {"kind": "value", "format": "inline",
                                                   "value": value}
    assert decodes[0] == 0
    # not plain: decoded and compared as before; JSON would not give them back equal ...
    for value in ({1: "a"}, (1, 2), {"t": (1,)}):
        assert _store_value(ctx, task, value)["format"] == "pickle"
    # ... or would, for an IntEnum and a str subclass (they stay inline, as before)
    for value in ({"level": Level.LOW}, [Text("a")]):
        assert _store_value(ctx, task, value)["format"] == "inline"
    assert decodes[0] == 5
    deep: Any = []
    for _ in range(40):
        deep = [deep]
    assert _store_value(ctx, task, deep)["format"] == "inline"
    assert _store_value(ctx, task, [float("nan")])["format"] == "pickle"


def test_plain_json_is_never_true_for_a_value_json_would_change():
    import json
    import math

    from state.events import plain_json

    samples: list[Any] = [
        None, True, 0, -1, 2**100, 1.5, -0.0, 1e-310, "", "ü\ud800\n", [], {}, [1, "a", None],
        {"a": [{"b": 1.25}], "c": True}, {1: "a"}, (1,), [(1,)], {"a": {1, 2}}, float("inf"),
        [float("nan")], b"x", 1j,
    ]
    for value in samples:
        if plain_json(value):
            assert json.loads(json.dumps(value, allow_nan=False)) == value, value
    assert not any(plain_json(v) for v in ({1: "a"}, (1,), [(1,)], float("inf"), [math.nan]))
    nested: Any = 0
    for _ in range(40):
        nested = {"k": nested}
    assert not plain_json(nested)   # deeper than it walks: the caller decodes instead

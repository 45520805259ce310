"""Settings on stage objects are applied or refused with a message, never dropped
(issue 13, item 7)."""

from __future__ import annotations

import json

import pytest

from pipelines import ConfigError, StageConfig
from state import EventLog

from .stage_object_pipelines import (InsidePipeline, NamesOnlyPipeline, ObjectsPipeline,
                                     PrerequisitesPipeline)

SCHEMA = {"type": "object", "required": ["year", "sex", "deaths"],
          "properties": {"year": {"type": "integer", "maximum": 2020}}}


def _attempts(state_dir, run_id: str, stage: str) -> list[tuple]:
    with EventLog.open(state_dir) as log:
        return [tuple(r) for r in log.query(
            "SELECT attempt, state FROM stage_timings WHERE run_id = ? AND stage = ? "
            "ORDER BY attempt", [run_id, stage])]


@pytest.mark.parametrize("executor", ["inprocess", "process"])
def test_the_rules_of_stage_objects_from_define_stages_apply(state_dir, executor):
    ctx = ObjectsPipeline(state_dir=state_dir, rules={"min_records": 1000},
                          executor=executor).run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert "stage 'extract': min_records: 3 rows, at least 1000 required" in ctx.error


def test_a_validator_objects_schema_path_applies(state_dir, tmp_path):
    schema = tmp_path / "health_schema.json"
    schema.write_text(json.dumps(SCHEMA))
    ctx = ObjectsPipeline(state_dir=state_dir, rules={"min_records": 1}, schema=schema,
                          executor="inprocess").run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "validate"
    assert f"schema: 1 row has year above 2020 ({schema} maximum)" in ctx.error
    good = {**SCHEMA, "properties": {"year": {"type": "integer", "maximum": 2030}}}
    schema.write_text(json.dumps(good))
    ok = ObjectsPipeline(state_dir=state_dir, rules={"min_records": 1}, schema=schema,
                         executor="inprocess").run()
    assert ok.state == "COMPLETED", ok.error
    assert ok.get_output("load") == {"database": "health_analytics", "rows": 3}


def test_the_retries_of_a_stage_object_apply(state_dir):
    ctx = ObjectsPipeline(state_dir=state_dir, rules={}, failures=2, retries=2,
                          executor="inprocess").run()
    assert ctx.state == "COMPLETED", ctx.error
    assert _attempts(state_dir, ctx.run_id, "extract") == [
        (1, "FAILED"), (2, "FAILED"), (3, "COMPLETED")]


def test_a_stage_object_run_from_execute_stage_with_unseen_rules_is_refused(state_dir):
    ctx = InsidePipeline(state_dir=state_dir, rules={"min_records": 1000},
                         executor="inprocess").run()
    assert ctx.state == "FAILED" and ctx.failed_stage == "extract"
    assert ("stage 'extract' ran ExtractorStage('extract'), whose StageConfig sets "
            "validation_rules, retry_delay, but the pipeline's configuration of stage 'extract' does not: "
            "they would not apply.  Return the stage object from define_stages() (its settings "
            "then apply), or give its StageConfig as stage_configs={'extract': ...}") in ctx.error
    assert _attempts(state_dir, ctx.run_id, "extract") == [(1, "FAILED")]   # not retried


def test_the_same_object_with_its_config_also_in_stage_configs_runs_its_rules(state_dir):
    ctx = InsidePipeline(state_dir=state_dir, rules={"min_records": 1000},
                         also_as_stage_configs=True, executor="inprocess").run()
    assert ctx.state == "FAILED"
    assert "stage 'extract': min_records: 3 rows, at least 1000 required" in ctx.error
    fine = InsidePipeline(state_dir=state_dir, rules={"min_records": 3},
                          also_as_stage_configs=True, executor="inprocess").run()
    assert fine.state == "COMPLETED", fine.error


def test_a_stage_configured_twice_differently_is_refused_before_anything_runs(state_dir):
    pipeline = ObjectsPipeline(state_dir=state_dir, rules={"min_records": 1},
                               stage_configs={"extract": StageConfig("extract", timeout=60)})
    with pytest.raises(ConfigError, match=r"stage 'extract' is configured twice, by the "
                       r"StageConfig of ExtractorStage\('extract'\) that define_stages\(\) "
                       r"returns and by stage_configs\['extract'\], and they differ"):
        pipeline.run()
    with EventLog.open(state_dir) as log:
        assert log.query("SELECT count(*) FROM runs")[0][0] == 0


def test_names_without_execute_stage_are_refused_before_anything_runs(state_dir):
    with pytest.raises(ConfigError, match=r"stage\(s\) extract, load are names, not stage "
                       r"objects, and NamesOnlyPipeline does not define execute_stage"):
        NamesOnlyPipeline("names", state_dir=state_dir).run()


def test_prerequisites_of_a_stage_config_are_its_dependencies(state_dir):
    ctx = PrerequisitesPipeline(state_dir=state_dir, executor="inprocess").run()
    assert ctx.state == "COMPLETED", ctx.error
    assert ctx.get_output("combine") == ["a", "b"]

    class Disagrees(PrerequisitesPipeline):
        def get_stage_dependencies(self, stage_name):
            return {"b"} if stage_name == "combine" else set()

    with pytest.raises(ConfigError, match=r"stage 'combine': its StageConfig.prerequisites is "
                       r"\['a', 'b'\], but get_stage_dependencies\('combine'\) returns \['b'\]"):
        Disagrees(state_dir=state_dir, executor="inprocess").run()


def test_a_setting_nothing_acts_on_is_refused_when_given():
    with pytest.raises(ConfigError, match="checkpoint_enabled=False is not supported per stage"):
        StageConfig("extract", checkpoint_enabled=False)

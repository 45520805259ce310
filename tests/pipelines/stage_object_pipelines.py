"""Pipelines built from stage objects (the original README's "Integration" snippets), for
tests/pipelines/test_stage_objects.py; importable by worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import BasePipeline, StageConfig
from pipelines.stage import ExtractorStage, LoaderStage, ValidatorStage


class MortalityRows:
    """An extractor class: ``rows`` records, failing its first ``failures`` attempts."""

    def __init__(self, rows: int = 3, failures: int = 0):
        self.rows, self.failures = rows, failures

    def extract(self, context: Any) -> list[dict]:
        if context.attempt <= self.failures:
            raise OSError(f"the source is busy (attempt {context.attempt})")
        return [{"year": 2019 + i, "sex": "Persons", "deaths": 100 + i} for i in range(self.rows)]


class CountLoader:
    def __init__(self, target_database: str):
        self.target_database = target_database

    def load(self, context: Any) -> dict:
        return {"database": self.target_database,
                "rows": len(context.get_output(context.input_stage()))}


def stages(rules: dict, schema: Path | None = None, failures: int = 0,
           retries: int = 0) -> list[Any]:
    """extract, validate, load as stage objects, each with its own StageConfig."""
    extract = ExtractorStage(
        config=StageConfig(name="extract", retry_attempts=retries, retry_delay=0.01,
                           validation_rules=rules),
        extractor_class=MortalityRows, rows=3, failures=failures)
    validate = ValidatorStage(config=StageConfig(name="validate", retry_attempts=0),
                              schema_path=str(schema) if schema else None)
    load = LoaderStage(config=StageConfig(name="load", retry_attempts=0),
                       loader_class=CountLoader, target_database="health_analytics")
    return [extract, validate, load]


class ObjectsPipeline(BasePipeline):
    """define_stages() returns the stage objects: their configs apply."""

    def __init__(self, name: str = "objects", *, rules: dict, schema: Path | None = None,
                 failures: int = 0, retries: int = 0, **kw: Any):
        super().__init__(name, **kw)
        self.args = (rules, schema, failures, retries)

    def define_stages(self) -> list[Any]:
        return stages(*self.args)


class InsidePipeline(BasePipeline):
    """Stage names, with the stage objects run from execute_stage: the pipeline never sees
    their configs unless ``also_as_stage_configs``."""

    def __init__(self, name: str = "inside", *, rules: dict, also_as_stage_configs: bool = False,
                 **kw: Any):
        self.objects = {s.name: s for s in stages(rules)}
        if also_as_stage_configs:
            kw["stage_configs"] = {n: s.config for n, s in self.objects.items()}
        kw.setdefault("max_retries", 0)
        super().__init__(name, **kw)

    def define_stages(self) -> list[str]:
        return list(self.objects)

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        return self.objects[stage_name].execute(context)


class NamesOnlyPipeline(BasePipeline):
    """Names, and no execute_stage: nothing could run them."""

    def define_stages(self) -> list[str]:
        return ["extract", "load"]


class PrerequisitesPipeline(BasePipeline):
    """Three stages; ``combine`` lists both others as prerequisites in its StageConfig."""

    def __init__(self, name: str = "prereqs", **kw: Any):
        kw.setdefault("stage_configs", {"combine": StageConfig("combine", prerequisites=[
            "a", "b"])})
        super().__init__(name, parallel_stages=True, **kw)

    def define_stages(self) -> list[str]:
        return ["a", "b", "combine"]

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        if stage_name == "combine":
            return sorted(context.input_stages)
        return stage_name

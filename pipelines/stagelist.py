"""What ``BasePipeline.define_stages()`` returns, read and checked: names and stage objects.

    names, objects = read_stages(pipeline)        # ["extract", ...], {"extract": ExtractorStage}
    names, deps, objects = stages_and_deps(pipeline, default_execute=True)   # all checked

``define_stages()`` may return stage names, stage objects
(:class:`~pipelines.stage.PipelineStage`: ``ExtractorStage(config=..., ...)``),
or both.  A stage object's ``StageConfig`` is that stage's configuration (its
timeout, retries, validation rules apply), and the default
``execute_stage`` runs it.  A setting is never dropped: a stage configured
both by its object and by ``stage_configs`` (differently), a name with no way
to run it, or ``prerequisites`` that disagree with ``get_stage_dependencies``
are refused before anything runs, each with the fix.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .graph import find_cycle
from .stage import STAGE_NAME, PipelineStage


def read_stages(pipeline: Any) -> tuple[list[Any], dict[str, PipelineStage]]:
    """``define_stages()`` as stage names (as given, checked later), and the stage objects."""
    names: list[Any] = []
    objects: dict[str, PipelineStage] = {}
    for item in pipeline.define_stages():
        if isinstance(item, PipelineStage):
            objects.setdefault(item.name, item)
            names.append(item.name)
        else:
            names.append(item)
    return names, objects


def stages_and_deps(pipeline: Any, *, default_execute: bool,
                    ) -> tuple[list[str], dict[str, set[str]], dict[str, PipelineStage]]:
    """The stage names, each one's dependencies and the stage objects, all checked."""
    stages, objects = read_stages(pipeline)
    pipeline._stage_objects = objects  # stage_config() and the dependencies below use them
    where = f"pipeline {pipeline.name!r}"
    if not stages:
        raise ConfigError(f"{where} defines no stages; define_stages() must return names")
    seen: set[str] = set()
    for s in stages:
        if not isinstance(s, str) or not STAGE_NAME.match(s):
            raise ConfigError(f"{where}: stage name {s!r} is not allowed; use letters, digits "
                              "and _ (starting with a letter or _)")
        if s in seen:
            raise ConfigError(f"{where}: stage {s!r} is defined twice")
        seen.add(s)
    for key in pipeline.stage_configs:
        if key not in seen:
            raise ConfigError(f"{where}: stage_configs names stage {key!r}, which "
                              f"define_stages() does not return ({', '.join(stages)})")
    check_stage_objects(pipeline, stages, objects, default_execute=default_execute, where=where)
    deps = {s: set(pipeline.get_stage_dependencies(s) or ()) for s in stages}
    for s, ds in deps.items():
        unknown = ds - seen
        if unknown:
            raise ConfigError(f"{where}: stage {s!r} depends on unknown stage(s) "
                              f"{', '.join(sorted(unknown))}")
    check_prerequisites(pipeline, stages, deps, where=where)
    cycle = find_cycle({s: sorted(deps.get(s, ())) for s in stages})
    if cycle:
        raise ConfigError(f"{where}: stage dependency cycle {' -> '.join(cycle)}; remove one "
                          "of these dependencies")
    return stages, deps, objects


def check_stage_objects(pipeline: Any, names: list[str], objects: dict[str, PipelineStage], *,
                        default_execute: bool, where: str) -> None:
    for name, stage in objects.items():
        given = pipeline.stage_configs.get(name)
        if given is not None and given != stage.config:
            raise ConfigError(
                f"{where}: stage {name!r} is configured twice, by the StageConfig of {stage!r} "
                f"that define_stages() returns and by stage_configs[{name!r}], and they differ; "
                "keep one of them")
    if default_execute:
        bare = [n for n in names if n not in objects]
        if bare:
            raise ConfigError(
                f"{where}: stage(s) {', '.join(bare)} are names, not stage objects, and "
                f"{type(pipeline).__name__} does not define execute_stage(stage_name, context); "
                "define it, or return stage objects (ExtractorStage(...), ...) from "
                "define_stages()")


def check_prerequisites(pipeline: Any, names: list[str], deps: dict[str, set[str]], *,
                        where: str) -> None:
    """A stage's ``StageConfig.prerequisites`` must be what the pipeline says it depends on."""
    for name in names:
        wanted = pipeline.stage_config(name).prerequisites
        if wanted and set(wanted) != deps[name]:
            raise ConfigError(
                f"{where}: stage {name!r}: its StageConfig.prerequisites is "
                f"{sorted(wanted)}, but get_stage_dependencies({name!r}) returns "
                f"{sorted(deps[name])}; say it in one place (the default "
                "get_stage_dependencies uses prerequisites)")


__all__ = ["read_stages", "stages_and_deps", "check_stage_objects", "check_prerequisites"]

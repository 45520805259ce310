"""Pipelines described by YAML: a :class:`BasePipeline` built from a pipeline file.

    from pipelines.config.configured import load_pipeline
    pipeline = load_pipeline("pipelines/ahgd/config/seifa_sa2.yaml", state_dir="var")
    context = pipeline.run(input_file="seifa.csv")

Each stage's ``class`` is imported and instantiated with its ``config``
mapping as keyword arguments; the method named after the stage type
(``extract``, ``transform``, ``validate``, ``load``) is called with the
``PipelineContext`` and what it returns is the stage's output.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..base import BasePipeline
from ..context import PipelineContext
from ..errors import ConfigError
from ..stage import (ExtractorStage, LoaderStage, PipelineStage, StageConfig, TransformerStage,
                    ValidatorStage)
from .params import with_defaults

_STAGE_TYPES = {
    "extractor": ExtractorStage,
    "transformer": TransformerStage,
    "validator": ValidatorStage,
    "loader": LoaderStage,
}


def import_object(dotted: str, *, what: str) -> Any:
    """``package.module.Attr`` -> the object, with an error that says what is missing."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ConfigError(f"{what}: {dotted!r} is not a dotted path such as package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what}: module {module_name!r} has no attribute {attr!r}") from None


class ConfiguredPipeline(BasePipeline):
    """A pipeline whose stages, triggers and settings come from a pipeline file."""

    def __init__(self, spec: Any, *, state_dir: str | os.PathLike[str] | None = None,
                 executor: Any = "process", source: Path | None = None):
        self.spec = spec
        self.source = Path(source) if source else getattr(spec, "_source", None)
        base_dir = self.source.parent if self.source else None
        configs = {s.name: _stage_config(s, base_dir) for s in spec.stages}
        duck = spec.duckdb
        settings = {k: (str(v) if isinstance(v, Path) else v)
                    for k, v in (("memory_limit", duck.memory_limit),
                                 ("temp_directory", duck.temp_directory),
                                 ("threads", duck.threads)) if v is not None}
        if not duck.inline_tables:
            settings["inline_tables"] = False
        super().__init__(
            spec.pipeline.name,
            description=spec.pipeline.description,
            parallel_stages=spec.orchestration.execution_mode == "parallel",
            max_workers=spec.orchestration.max_workers,
            stage_configs=configs,
            state_dir=state_dir,
            executor=executor,
            duckdb_settings=settings,
            timeout=spec.orchestration.timeout,
        )
        self._stages: dict[str, PipelineStage] = {}

    # -- the BasePipeline contract ------------------------------------------------------

    def define_stages(self) -> list[str]:
        return [s.name for s in self.spec.stages]

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        spec = self._spec(stage_name)
        return set(spec.prerequisites or ())

    def execute_stage(self, stage_name: str, context: PipelineContext) -> Any:
        for name, value in with_defaults(self.spec.params, {}).items():  # params: defaults
            context.params.setdefault(name, value)
        return self.stage(stage_name).execute(context)

    def _param_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        return with_defaults(self.spec.params, params)

    # -- stages ------------------------------------------------------------------------

    def stage(self, name: str) -> PipelineStage:
        """The stage object, its class imported on first use."""
        if name not in self._stages:
            spec = self._spec(name)
            kind = _STAGE_TYPES[spec.type]
            where = f"pipeline {self.name!r} stage {name!r} class"
            cls = import_object(spec.class_, what=where) if spec.class_ else None
            if cls is None and kind is not ValidatorStage:
                raise ConfigError(f"pipeline {self.name!r} stage {name!r} has no class")
            self._stages[name] = kind(self.stage_config(name), cls, **dict(spec.config))
        return self._stages[name]

    def stage_type(self, name: str) -> str:
        """``extractor``, ``transformer``, ``validator`` or ``loader``: loaders write the
        warehouse, so a Dask executor runs them on the daemon's host."""
        return str(self._spec(name).type)

    def _spec(self, name: str) -> Any:
        for s in self.spec.stages:
            if s.name == name:
                return s
        raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}")

    @property
    def triggers(self) -> list[Any]:
        return list(self.spec.triggers)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_stages"] = {}  # rebuilt (classes imported) in the worker
        return state


def _stage_config(spec: Any, base_dir: Path | None) -> StageConfig:
    rules = spec.validation_rules.model_dump(by_alias=True, exclude_defaults=True)
    if "schema" in rules and rules["schema"] is not None:
        rules["schema"] = str(rules["schema"])
    req = spec.resource_requirements
    requirements = {} if req is None else req.as_dict()
    config = StageConfig(
        name=spec.name,
        description=spec.description,
        enabled=spec.enabled,
        timeout=spec.timeout,
        retry_attempts=spec.retry_attempts,
        retry_delay=spec.retry_delay,
        retry_backoff=spec.retry_backoff,
        prerequisites=list(spec.prerequisites or ()),
        validation_rules=rules,
        resource_requirements=requirements,
        base_dir=base_dir,
        executor=spec.executor,
    )
    # names the loader has checked (their form, and with import_classes, in the import
    # check's child): StageConfig would import a dotted one here, and a module that hangs
    # when imported would hang the daemon's engine.  The worker imports it, to judge an error
    config.retry_on, config.no_retry_on = tuple(spec.retry_on), tuple(spec.no_retry_on)
    return config


def load_pipeline(path: str | os.PathLike[str], *, state_dir: str | os.PathLike[str] | None = None,
                  executor: Any = "process") -> ConfiguredPipeline:
    """Load one pipeline file (classes imported and checked now, not at run time)."""
    from .loader import load_pipeline_file
    from state.statedir import resolve_state_dir

    resolved = resolve_state_dir(state_dir, os.environ)
    spec = load_pipeline_file(path, state_dir=resolved, import_classes=True)
    return ConfiguredPipeline(spec, state_dir=resolved, executor=executor, source=Path(path).resolve())


def build_pipelines(loaded: Any, *, state_dir: Path, executor: Any = "process") -> dict[str, ConfiguredPipeline]:
    """Pipelines of a :func:`pipelines.config.load_config` result, by name."""
    return {name: ConfiguredPipeline(p.file, state_dir=state_dir, executor=executor, source=p.source)
            for name, p in loaded.pipelines.items()}


__all__ = ["ConfiguredPipeline", "load_pipeline", "build_pipelines", "import_object"]

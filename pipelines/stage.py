"""Stages: their configuration and the four kinds the AHGD framework knows.

    from pipelines.stage import (PipelineStage, ExtractorStage, TransformerStage,
                                 ValidatorStage, LoaderStage, ResourceUsage)

A ``StageConfig`` is how one stage gets its own timeout, retries and
validation rules (``BasePipeline(stage_configs={name: StageConfig(...)})``);
pipeline-wide values apply where a stage has none.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from state.machine import StageState

from .durations import format_duration, parse_duration
from .errors import ConfigError, ValidationFailed
from .retries import exception_names, same_class_in_both

if TYPE_CHECKING:  # pragma: no cover
    from .context import PipelineContext

__all__ = [
    "ResourceUsage", "StageState", "StageConfig", "PipelineStage", "ExtractorStage",
    "TransformerStage", "ValidatorStage", "LoaderStage", "STAGE_NAME",
]

#: stage names become file names and SQL identifiers
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ResourceUsage(str, Enum):
    """How heavy a stage is; the scheduler turns it into default resource needs."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def default_requirements(self) -> dict[str, float]:
        return {
            "low": {"cpu": 0.25, "memory": 256},
            "medium": {"cpu": 1.0, "memory": 1024},
            "high": {"cpu": 2.0, "memory": 4096},
            "critical": {"cpu": 4.0, "memory": 8192},
        }[self.value]


_UNSET: Any = object()


@dataclass
class StageConfig:
    """Configuration of one stage (the original AHGD ``StageConfig``, connected).

    ``retry_attempts`` counts retries after the first attempt (3 means up to 4
    attempts).  Delays and ``timeout`` take a ``timedelta``, seconds, or ISO 8601
    text such as ``"PT30M"``.  ``retry_backoff`` multiplies the delay after each
    failed attempt; a random jitter of +/-20 % spreads retries out.  Only errors
    a retry could fix are retried (:mod:`pipelines.retries`); ``retry_on`` and
    ``no_retry_on`` name exception classes (``"OSError"``, ``"duckdb.IOException"``,
    or the classes) that are retried, or not, whatever their kind.
    """

    name: str
    description: str = ""
    enabled: bool = True
    timeout: Any = None
    retry_attempts: int = _UNSET
    retry_delay: Any = _UNSET
    retry_backoff: float = 2.0
    resource_usage: ResourceUsage = _UNSET
    prerequisites: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    validation_rules: dict[str, Any] = field(default_factory=dict)
    checkpoint_enabled: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    resource_requirements: dict[str, float] = field(default_factory=dict)
    max_retry_delay: Any = timedelta(hours=1)
    #: where relative paths in validation_rules (a JSON Schema file) are resolved
    base_dir: Path | None = None
    #: "inprocess" runs this stage on a thread of the run's process (no timeout
    #: enforcement); "local" in a worker process on the daemon's own host even when the
    #: daemon's executor is a Dask cluster; None: the pipeline's executor
    executor: str | None = None
    #: exception classes (builtin names, dotted paths, or the classes) retried / not
    #: retried whatever their kind; see pipelines.retries
    retry_on: Any = ()
    no_retry_on: Any = ()

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}"
        # which retry settings the author gave: the pipeline's defaults fill the rest
        self._explicit = {f for f in _EXPLICIT if getattr(self, f) is not _UNSET}
        if self.resource_usage is _UNSET:
            self.resource_usage = ResourceUsage.MEDIUM
        if self.retry_attempts is _UNSET:
            self.retry_attempts = 3
        if self.retry_delay is _UNSET:
            self.retry_delay = timedelta(seconds=5)
        if not isinstance(self.name, str) or not STAGE_NAME.match(self.name):
            raise ConfigError(
                f"stage name {self.name!r} is not allowed; use letters, digits and _ "
                "(starting with a letter or _), at most 63 characters"
            )
        if self.timeout is not None:
            self.timeout = parse_duration(self.timeout, what=f"{where}: timeout", positive=True)
        self.retry_delay = parse_duration(self.retry_delay, what=f"{where}: retry_delay")
        self.max_retry_delay = parse_duration(self.max_retry_delay, what=f"{where}: max_retry_delay")
        if isinstance(self.retry_attempts, bool) or not isinstance(self.retry_attempts, int) \
                or self.retry_attempts < 0:
            raise ConfigError(f"{where}: retry_attempts is {self.retry_attempts!r}; use a whole "
                              "number of retries, 0 or more")
        if not isinstance(self.retry_backoff, (int, float)) or self.retry_backoff < 1:
            raise ConfigError(f"{where}: retry_backoff is {self.retry_backoff!r}; use a number "
                              "of 1 or more (1 = constant delay, 2 = doubling)")
        if not isinstance(self.resource_usage, ResourceUsage):
            try:
                self.resource_usage = ResourceUsage(str(self.resource_usage).lower())
            except ValueError:
                raise ConfigError(
                    f"{where}: resource_usage {self.resource_usage!r} is not one of "
                    "low, medium, high, critical") from None
        for key, value in self.resource_requirements.items():
            if key not in ("cpu", "memory"):
                raise ConfigError(f"{where}: resource_requirements has unknown key {key!r}; "
                                  "use cpu (cores) and memory (MB)")
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}: resource_requirements.{key} is {value!r}; "
                                  "use a number of 0 or more")
        if self.checkpoint_enabled is not True:
            raise ConfigError(
                f"{where}: checkpoint_enabled={self.checkpoint_enabled!r} is not supported per "
                "stage: every stage's output is kept while its run needs it (for resume and "
                "recovery); BasePipeline(enable_checkpoints=False) drops a pipeline's outputs "
                "once each run has ended")
        if self.executor not in (None, "process", "local", "inprocess"):
            raise ConfigError(f"{where}: executor {self.executor!r} is not 'process', 'local' "
                              "(the daemon's host, with a Dask cluster too) or 'inprocess'")
        self.retry_on = exception_names(self.retry_on, where=where, key="retry_on")
        self.no_retry_on = exception_names(self.no_retry_on, where=where, key="no_retry_on")
        both = same_class_in_both(self.retry_on, self.no_retry_on)
        if both:
            raise ConfigError(f"{where}: {both}")
        if self.validation_rules:
            from .validation import check_rules

            check_rules(self.validation_rules, stage=self.name, base_dir=self.base_dir)

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else self.timeout.total_seconds()

    def requirements(self) -> dict[str, float]:
        """cpu (cores) and memory (MB) this stage needs, for resource budgets.

        What ``resource_requirements`` says, over what an explicitly given
        ``resource_usage`` implies; with neither, one core and no memory claim
        (an unknown need does not block work on a memory budget).
        """
        base = (self.resource_usage.default_requirements if "resource_usage" in self._explicit
                else {"cpu": 1.0, "memory": 0.0})
        return {**base, **self.resource_requirements}

    def retry_delay_for(self, failed_attempt: int, jitter: float = 1.0) -> float:
        """Seconds to wait after attempt ``failed_attempt`` failed (1-based)."""
        base = self.retry_delay.total_seconds() * (self.retry_backoff ** (failed_attempt - 1))
        return min(base * jitter, self.max_retry_delay.total_seconds())

    def describe(self) -> str:
        t = "none" if self.timeout is None else format_duration(self.timeout)
        return f"{self.name}: timeout {t}, {self.retry_attempts} retries"

    def changed(self, **changes: Any) -> "StageConfig":
        """A copy with ``changes``; the settings given explicitly stay the ones given."""
        new = replace(self, **changes)
        new._explicit = set(self._explicit) | {k for k in changes if k in _EXPLICIT}
        return new

    def unapplied(self, applied: "StageConfig") -> list[str]:
        """The settings this config gives that ``applied`` (what a run applies) does not."""
        out = [name for name, default in _SETTINGS
               if getattr(self, name, default) != default
               and getattr(self, name, default) != getattr(applied, name, default)]
        out += [name for name in _EXPLICIT
                if name in self._explicit and getattr(self, name) != getattr(applied, name)]
        return out


#: settings the engine acts on, with their defaults (prerequisites are checked with the
#: dependencies; description, parameters and tags are for the author's own code)
_SETTINGS = (("validation_rules", {}), ("timeout", None), ("retry_backoff", 2.0),
             ("max_retry_delay", timedelta(hours=1)), ("resource_requirements", {}),
             ("executor", None), ("enabled", True), ("retry_on", ()), ("no_retry_on", ()))
_EXPLICIT = ("retry_attempts", "retry_delay", "resource_usage")


# --------------------------------------------------------------------------- stages


class PipelineStage:
    """One unit of work.  Subclasses implement :meth:`execute`.

    What ``execute`` returns is the stage's output: a DuckDB relation, an
    Arrow table, a pandas DataFrame, a dict of those (several tables), a list
    of dicts (a table too), or a plain Python value.  Return stage objects from
    ``BasePipeline.define_stages()`` and their configs apply (see
    :meth:`check_applied`).
    """

    kind = "stage"

    def __init__(self, config: StageConfig, **options: Any):
        if not isinstance(config, StageConfig):
            raise ConfigError(f"{type(self).__name__} needs a StageConfig, got {type(config).__name__}")
        self.config = config
        self.options = options

    @property
    def name(self) -> str:
        return self.config.name

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("execute")
        if run is not None and not getattr(run, "_checks_settings", False):
            @functools.wraps(run)
            def execute(self: "PipelineStage", context: "PipelineContext") -> Any:
                self.check_applied(context)
                return run(self, context)

            execute._checks_settings = True  # type: ignore[attr-defined]
            cls.execute = execute  # type: ignore[method-assign]

    def check_applied(self, context: "PipelineContext") -> None:
        """Refuse to run when this stage's config sets what the run does not apply.

        The engine applies the StageConfig it knows: the stage object's own when
        ``define_stages()`` returned the object, else ``stage_configs``.  A stage
        object run from ``execute_stage`` whose timeout, retries or validation
        rules the pipeline never saw would run without them: that is an error,
        not a silent drop.
        """
        applied = getattr(context, "stage_config", None)
        if applied is None or applied is self.config:
            return
        names = self.config.unapplied(applied)
        deps = set(getattr(context, "input_stages", ()) or ())
        if self.config.prerequisites and set(self.config.prerequisites) != deps:
            names.append("prerequisites")
        if names:
            stage = context.stage_name
            raise ConfigError(
                f"stage {stage!r} ran {self!r}, whose StageConfig sets {', '.join(names)}, but "
                f"the pipeline's configuration of stage {stage!r} does not: they would not "
                "apply.  Return the stage object from define_stages() (its settings then "
                f"apply), or give its StageConfig as stage_configs={{{stage!r}: ...}}")

    def execute(self, context: "PipelineContext") -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.execute")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.name!r})"


class _ClassStage(PipelineStage):
    """A stage that instantiates a user class with its options and calls one method."""

    method = ""

    def __init__(self, config: StageConfig, cls: type | None, options: Mapping[str, Any]):
        super().__init__(config, **options)
        if cls is not None and not callable(getattr(cls, self.method, None)):
            raise ConfigError(
                f"stage {config.name!r}: {cls.__module__}.{cls.__qualname__} has no method "
                f"{self.method!r}; a {self.kind} class must define {self.method}(self, context)"
            )
        self.cls = cls

    def instance(self) -> Any:
        try:
            return self.cls(**self.options)  # type: ignore[misc]
        except TypeError as exc:
            raise ConfigError(
                f"stage {self.config.name!r}: cannot create {self.cls.__qualname__} "  # type: ignore[union-attr]
                f"with config {sorted(self.options)}: {exc}"
            ) from exc

    def execute(self, context: "PipelineContext") -> Any:
        return getattr(self.instance(), self.method)(context)


class ExtractorStage(_ClassStage):
    kind, method = "extractor", "extract"

    def __init__(self, config: StageConfig, extractor_class: type, **options: Any):
        super().__init__(config, extractor_class, options)


class TransformerStage(_ClassStage):
    kind, method = "transformer", "transform"

    def __init__(self, config: StageConfig, transformer_class: type, **options: Any):
        super().__init__(config, transformer_class, options)


class LoaderStage(_ClassStage):
    kind, method = "loader", "load"

    def __init__(self, config: StageConfig, loader_class: type, target_database: Any = None,
                 **options: Any):
        if target_database is not None:
            options["target_database"] = target_database
        super().__init__(config, loader_class, options)


class ValidatorStage(_ClassStage):
    """Checks the output of the stage it depends on.

    With ``validator_class``, its ``validate(context)`` is called: returning
    False, a non-empty list of problems, or an object with ``is_valid`` False
    fails the stage (it never passes bad data on silently); returning a
    relation or table makes that the stage's output.  Otherwise the output
    is the input, passed through without a copy.  ``schema_path`` adds a JSON
    Schema rule to the stage's validation rules.
    """

    kind, method = "validator", "validate"

    def __init__(self, config: StageConfig, validator_class: type | None = None,
                 schema_path: str | Path | None = None, **options: Any):
        if schema_path is not None:
            rules = {**config.validation_rules, "schema": str(schema_path)}
            config = config.changed(validation_rules=rules)
        super().__init__(config, validator_class, options)
        self.schema_path = schema_path

    def execute(self, context: "PipelineContext") -> Any:
        upstream = context.input_stage()
        result = getattr(self.instance(), self.method)(context) if self.cls is not None else None
        problems = _problems(result)
        if problems:
            shown = "; ".join(str(p) for p in problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ValidationFailed(f"stage {self.config.name!r}: validator found "
                                   f"{len(problems)} problem(s): {shown}{more}", failures=problems)
        if result is None or result is True or isinstance(result, (list, tuple)) or hasattr(result, "is_valid"):
            return context.passthrough(upstream) if upstream else None
        return result


def _problems(result: Any) -> list:
    if result is False:
        return ["validate() returned False"]
    if isinstance(result, (list, tuple)):
        return list(result)
    if hasattr(result, "is_valid") and not getattr(result, "is_valid"):
        errors = getattr(result, "errors", None) or ["is_valid is False"]
        return list(errors)
    return []

"""The two YAML file kinds as pydantic models.

A *pipeline file* (:class:`PipelineFile`) describes one pipeline: its stages,
triggers, DuckDB settings and how its stages are run.  A *master file*
(:class:`MasterFile`) lists pipeline files with their dependencies and
priorities, plus orchestrator and daemon settings.  Load them with
:mod:`pipelines.config`, which adds line numbers, ``${...}`` expansion and the
checks that span several keys (stage graph, dependencies, imports).  The value
types they are built from are in :mod:`pipelines.config.values`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, create_model,
                      field_validator, model_validator)

from ..durations import format_duration
from ..monitoring.thresholds import ThresholdField, threshold_fields
from ..retries import same_class_in_both
from .params import ParamSpec, problems_of as param_problems
from .retain import RetainOverrides, RetainSettings
from .cluster import ExecutorSettings, ObjectStoreSettings, check_cluster
from .values import (Delimiter, DottedPath, Duration, Encoding, ExceptionName, ExecutionMode,
                     Executor, ExistingFile, ListenAddress, MemorySize, Misfire, Observer,
                     PipelineName, PositiveDuration, RangePair, Regex, ResolvedPath, StageName,
                     StageType, Synchronous, TimeZone, fail)

# --- models ----------------------------------------------------------------------

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResourceRequirements(_Model):
    """CPU cores and memory in MB a stage or pipeline needs (or a limit on them)."""

    cpu: float | None = Field(None, gt=0)
    memory: int | None = Field(None, gt=0)

    def as_dict(self) -> dict[str, float]:
        """The values given, as ``{"cpu": ..., "memory": ...}`` (absent keys left out)."""
        return {k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v is not None}


class ValidationRules(_Model):
    """Rules run as SQL in DuckDB against a stage's output table."""

    required_columns: list[str] = Field(default_factory=list)
    min_records: int | None = Field(None, ge=0)
    max_records: int | None = Field(None, ge=0)
    not_null: list[str] = Field(default_factory=list)
    unique: list[str | list[str]] = Field(default_factory=list)  # a column, or a composite key
    ranges: dict[str, RangePair] = Field(default_factory=dict)
    allowed_values: dict[str, list[Any]] = Field(default_factory=dict)
    pattern: dict[str, Regex] = Field(default_factory=dict)
    schema_: ExistingFile | None = Field(None, alias="schema")
    quarantine: bool = False

    @model_validator(mode="after")
    def _min_below_max(self) -> ValidationRules:
        low, high = self.min_records, self.max_records
        if low is not None and high is not None and low > high:
            raise fail(f"min_records {low} is greater than max_records {high}")
        return self


class StageSpec(_Model):
    """One stage of a pipeline file (``stages[i]``)."""

    name: StageName
    type: StageType
    class_: DottedPath | None = Field(None, alias="class")
    description: str = ""
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    prerequisites: list[str] | None = None
    timeout: PositiveDuration | None = None
    retry_attempts: int = Field(3, ge=0)
    retry_delay: Duration = timedelta(seconds=5)
    retry_backoff: float = Field(2.0, ge=1.0)
    resource_requirements: ResourceRequirements | None = None
    validation_rules: ValidationRules = Field(default_factory=ValidationRules)
    executor: Executor | None = None
    retry_on: list[ExceptionName] = Field(default_factory=list)
    no_retry_on: list[ExceptionName] = Field(default_factory=list)

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"type": {"const": "validator"}}},
        "else": {"required": ["class"]}})

    @field_validator("validation_rules")
    @classmethod
    def _quarantine_needs_a_class(cls, rules: ValidationRules,
                                  info: ValidationInfo) -> ValidationRules:
        # a validator without a class passes its input through unchanged, and rows of an
        # input it does not own cannot be moved aside: every run would fail
        if rules.quarantine and "class_" in info.data and info.data["class_"] is None \
                and info.data.get("type") == "validator":
            raise fail("quarantine: true needs the validator to have a class: without one it "
                       "passes its input on unchanged and cannot move rows aside; give it a "
                       "class whose validate() returns a relation, or put these rules on the "
                       "stage that makes the table")
        return rules

    @model_validator(mode="after")
    def _class_needed(self) -> StageSpec:
        if self.class_ is None and self.type != "validator":
            raise fail("missing required key 'class'")
        both = same_class_in_both(self.retry_on, self.no_retry_on)
        if both:
            raise fail(both)
        return self


class InputCheck(_Model):
    """Cheap checks of a dropped file before a run is started for it."""

    required_columns: list[str] = Field(default_factory=list)
    encoding: Encoding | None = None
    delimiter: Delimiter | None = None
    callable: DottedPath | None = None
    #: a stage of this pipeline whose class checks the file (``check_input(path)``), built
    #: with that stage's ``config``: the check reads the file as the stage will
    stage: StageName | None = None
    #: how long the check (run in a child process) may take before the file is quarantined
    timeout: PositiveDuration = timedelta(minutes=1)


class DropFolderTrigger(_Model):
    """Start a run for each complete file matching ``pattern`` in ``path``."""

    type: Literal["drop_folder"]
    path: ResolvedPath
    pattern: str = "*"
    recursive: bool = False
    stable_for: Duration = timedelta(seconds=2)
    observer: Observer = "auto"
    poll_interval: PositiveDuration = timedelta(seconds=1)
    allow_duplicates: bool = False
    quarantine_on_extract_failure: bool = False
    input_check: InputCheck | None = None

    @field_validator("pattern")
    @classmethod
    def _file_name_pattern(cls, value: str) -> str:
        if not value or "/" in value:
            raise fail(f"{value!r} is not a file name pattern; use a glob such as '*.csv' "
                        "and put the folder in 'path'")
        return value


class ScheduleTrigger(_Model):
    """Start a run on a cron schedule or every ``interval``."""

    type: Literal["schedule"]
    timezone: TimeZone = "UTC"          # before cron: the cron check reads it
    cron: str | None = None
    interval: PositiveDuration | None = None
    misfire: Misfire = "latest"
    params: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["cron"]}, {"required": ["interval"]}]})

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        from apscheduler.triggers.cron import CronTrigger
        value = " ".join(value.split())
        try:
            CronTrigger.from_crontab(value, timezone=info.data.get("timezone", "UTC"))
        except (ValueError, KeyError, TypeError) as exc:
            reason = str(exc)
            reason = reason[:1].lower() + reason[1:]
            raise fail(f"{value!r} is not a valid cron expression ({reason}); use five fields, "
                        "minute hour day-of-month month day-of-week, such as '0 2 * * *'") from None
        return value

    @model_validator(mode="after")
    def _one_of_cron_or_interval(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.interval is None):
            which = "both" if self.cron is not None else "neither"
            raise fail(f"give exactly one of 'cron' or 'interval' (found {which})")
        if self.id is None:
            self.id = (f"cron:{self.cron}" if self.cron is not None
                       else f"interval:{format_duration(self.interval)}")
        return self


class UpstreamTrigger(_Model):
    """Start a run after any of ``pipelines`` completes a run that loaded new data."""

    type: Literal["upstream"]
    pipelines: list[str] = Field(min_length=1)


Trigger = Annotated[Union[DropFolderTrigger, ScheduleTrigger, UpstreamTrigger],
                    Field(discriminator="type")]


class PipelineInfo(_Model):
    name: PipelineName
    description: str = ""


class PipelineOrchestration(_Model):
    """How the stages of one pipeline are run."""

    execution_mode: ExecutionMode = "sequential"
    max_workers: int = Field(4, ge=1)
    timeout: PositiveDuration | None = None


class DuckDBSettings(_Model):
    memory_limit: MemorySize | None = None
    temp_directory: ResolvedPath | None = None
    threads: int | None = Field(None, ge=1)
    #: small tables kept in the stage.completed event instead of a DuckDB file per attempt
    #: (pipelines.inlinetables); false: every table output is a file
    inline_tables: bool = True


class PipelineFile(_Model):
    """A pipeline file.  ``stages[i].prerequisites`` is filled in: absent means the previous stage."""

    pipeline: PipelineInfo
    orchestration: PipelineOrchestration = Field(default_factory=PipelineOrchestration)
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    triggers: list[Trigger] = Field(default_factory=list)
    #: the run parameters it takes (`ahgd run --param`), checked: pipelines.config.params
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(min_length=1)
    #: what of its runs the state directory keeps, over the master file's retain: (retain.py)
    retain: RetainOverrides | None = None

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _default_prerequisites(self) -> PipelineFile:
        for i, stage in enumerate(self.stages):
            if stage.prerequisites is None:
                stage.prerequisites = [self.stages[i - 1].name] if i else []
        problems = param_problems(self.params, self.triggers, self.pipeline.name)
        if problems:
            raise fail("params: " + "; ".join(problems))
        names = [s.name for s in self.stages]
        for trigger in self.triggers:
            check = getattr(trigger, "input_check", None)
            if check is not None and check.stage is not None and check.stage not in names:
                raise fail(f"input_check.stage: {check.stage!r} is not a stage of this "
                           f"pipeline (its stages: {', '.join(names)})")
        return self

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def source(self) -> Path | None:
        """The YAML file this was loaded from (None when built in Python)."""
        return self._source

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that, written as YAML, loads back to the same values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class MasterEntry(_Model):
    """One pipeline listed in a master file (``pipelines[i]``)."""

    name: PipelineName
    config_file: ExistingFile
    dependencies: list[str] = Field(default_factory=list)
    priority: int = 0
    enabled: bool = True
    timeout: PositiveDuration | None = None
    resource_requirements: ResourceRequirements | None = None
    retry_policy: dict[str, Any] = Field(default_factory=dict)


class MasterOrchestration(_Model):
    """How the orchestrator runs pipelines."""

    execution_mode: ExecutionMode = "parallel"
    max_workers: int = Field(4, ge=1)
    timeout: PositiveDuration | None = None
    resource_limits: ResourceRequirements | None = None


def _threshold_setting(t: ThresholdField) -> tuple[Any, Any]:
    """One key of daemon.monitoring.thresholds, from the monitor's own list of thresholds."""
    if t.limit.kind == "duration":
        default = None if t.default is None else timedelta(seconds=t.default)
        return PositiveDuration | None, default
    kind = int if t.limit.kind == "runs" else float | None
    return kind, Field(t.default, ge=t.limit.low, le=t.limit.high)


#: Alert thresholds (see docs/monitoring.md); null turns one off, except disk_percent: null
#: there means daemon.disk_alert_percent.  One key per field of MonitorThresholds, with its
#: default and limits: a threshold is added there, not here.
MonitoringThresholdSettings = create_model(
    "MonitoringThresholdSettings", __base__=_Model, __module__=__name__,
    __doc__="Alert thresholds (see docs/monitoring.md); null turns one off.",
    **{t.name: _threshold_setting(t) for t in threshold_fields()})


class MonitoringSettings(_Model):
    """The daemon's monitor: system samples, statistics from the event log, alerts."""

    enabled: bool = True
    sample_interval: PositiveDuration = timedelta(seconds=15)
    thresholds: MonitoringThresholdSettings = Field(
        default_factory=lambda: MonitoringThresholdSettings())


class DaemonSettings(_Model):
    max_workers: int = Field(2, ge=1)
    shutdown_grace: Duration = timedelta(seconds=30)
    max_recoveries: int = Field(3, ge=0)
    synchronous: Synchronous = "FULL"
    disk_alert_percent: float = Field(90, gt=0, le=100)
    #: the HTTP status server (off unless set here or given as `ahgd daemon --http`)
    status_listen: ListenAddress | None = None
    http_allow_remote: bool = False
    http_token_file: ResolvedPath | None = None
    monitoring: MonitoringSettings = Field(default_factory=lambda: MonitoringSettings())
    #: where attempts run (this host's worker pool, or a Dask cluster), and the bucket their
    #: outputs travel through when they run elsewhere (pipelines/config/cluster.py)
    executor: ExecutorSettings = Field(default_factory=lambda: ExecutorSettings())
    object_store: ObjectStoreSettings | None = None

    @model_validator(mode="after")
    def _cluster(self) -> DaemonSettings:
        check_cluster(self.executor, self.object_store)
        return self


class MasterFile(_Model):
    """A master file; ``pipeline_files`` holds each listed pipeline file, by name."""

    pipelines: list[MasterEntry] = Field(min_length=1)
    orchestration: MasterOrchestration = Field(default_factory=MasterOrchestration)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    #: what the state directory keeps, for every pipeline (pipelines.config.retain)
    retain: RetainSettings = Field(default_factory=RetainSettings)

    _source: Path | None = PrivateAttr(None)
    _pipeline_files: dict[str, PipelineFile] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def pipeline_files(self) -> dict[str, PipelineFile]:
        return self._pipeline_files

    def to_dict(self) -> dict[str, Any]:
        """Plain data that, written as YAML, loads back to the same values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def config_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) accepting a pipeline file or a master file."""
    from pydantic.json_schema import models_json_schema
    _, top = models_json_schema([(PipelineFile, "validation"), (MasterFile, "validation")],
                                ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ahgd pipeline file or master file",
        "oneOf": [{"$ref": "#/$defs/PipelineFile"}, {"$ref": "#/$defs/MasterFile"}],
        "$defs": top["$defs"],
    }

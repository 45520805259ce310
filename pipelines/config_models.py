"""The two YAML file kinds as pydantic models, and pydantic's errors in our words.

A *pipeline file* (:class:`PipelineFile`) describes one pipeline: its stages,
triggers, DuckDB settings and how its stages are run.  A *master file*
(:class:`MasterFile`) lists pipeline files with their dependencies and
priorities, plus orchestrator and daemon settings.  Load them with
:mod:`pipelines.config`, which adds line numbers, ``${...}`` expansion and the
checks that span several keys (stage graph, dependencies, imports).

Every validator raises :func:`_fail` with the final user-facing text;
:func:`pydantic_problems` turns the rest of pydantic's error types into the
same style, so users never see pydantic's own wording.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import types
import typing
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, PrivateAttr,
                      ValidationError, ValidationInfo, WithJsonSchema, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from .durations import format_duration, parse_duration
from .errors import ConfigError

DURATION_HINT = "use ISO 8601 such as PT30M, PT2H or P1D, or a number of seconds such as 90"
POSITIVE_HINT = "use a positive ISO 8601 duration such as PT30M"
STAGE_TYPES = ("extractor", "transformer", "validator", "loader")
TRIGGER_TYPES = ("drop_folder", "schedule", "upstream")


def _fail(message: str) -> PydanticCustomError:
    """An error whose message reaches the user unchanged (see pydantic_problems)."""
    return PydanticCustomError("ahgd", "{message}", {"message": message})


def show(value: Any) -> str:
    """A value as YAML users wrote it: 'text', 5, true, null, a list, a mapping."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return repr(value)


# --- value types -----------------------------------------------------------------

def _duration(positive: bool):
    def check(value: Any) -> timedelta:
        try:
            td = parse_duration(value)
        except ConfigError:
            text = str(value).strip()
            if not isinstance(value, bool) and text.startswith("-"):
                raise _fail(f"{show(value)} is negative; {POSITIVE_HINT}") from None
            raise _fail(f"{show(value)} is not a duration; {DURATION_HINT}") from None
        if positive and td == timedelta(0):
            raise _fail(f"0s is not allowed; {POSITIVE_HINT}")
        return td

    schema = {"anyOf": [
        {"type": "string", "pattern": r"^[Pp](\d+(\.\d+)?[WwDd])*([Tt](\d+(\.\d+)?[HhMmSs])+)?$"},
        {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
        {"type": "number", "exclusiveMinimum" if positive else "minimum": 0},
    ], "description": "ISO 8601 duration (PT30M, PT2H, P1D) or seconds"}
    return Annotated[timedelta, PlainValidator(check, json_schema_input_type=str),
                     PlainSerializer(format_duration, return_type=str, when_used="json"),
                     WithJsonSchema(schema)]


Duration = _duration(positive=False)
PositiveDuration = _duration(positive=True)


def _choice(noun: str, options: tuple[str, ...]):
    lookup = {o.lower(): o for o in options}

    def check(value: Any) -> str:
        if value is False and "OFF" in options:      # YAML 1.1 reads a bare OFF as false
            value = "OFF"
        if isinstance(value, str) and value.strip().lower() in lookup:
            return lookup[value.strip().lower()]
        raise _fail(f"{show(value)} is not {noun}; use one of {', '.join(options)}")

    return Annotated[str, PlainValidator(check, json_schema_input_type=str),
                     WithJsonSchema({"enum": list(options)})]


StageType = _choice("a stage type", STAGE_TYPES)
ExecutionMode = _choice("an execution mode", ("sequential", "parallel"))
Executor = _choice("an executor", ("process", "inprocess"))
Observer = _choice("an observer", ("auto", "inotify", "polling"))
Misfire = _choice("a misfire policy", ("skip", "latest", "all"))
Synchronous = _choice("a SQLite synchronous mode", ("FULL", "EXTRA", "NORMAL", "OFF"))


def _text(pattern: str, complaint: str, schema: dict | None = None):
    """A string matching ``pattern``; ``complaint`` is formatted with the value's repr."""
    regex = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _fail(f"expected text, got {show(value)}")
        if not regex.match(value):
            raise _fail(complaint.format(value=repr(value)))
        return value

    return Annotated[str, PlainValidator(check, json_schema_input_type=str),
                     WithJsonSchema(schema or {"type": "string", "pattern": pattern})]


_NAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
PipelineName = _text(_NAME_RE, "{value} is not a valid pipeline name; use letters, digits, "
                     "'_', '-' and '.', starting with a letter, digit or '_'")
StageName = _text(_NAME_RE, "{value} is not a valid stage name; use letters, digits, "
                  "'_', '-' and '.', starting with a letter, digit or '_'")
DottedPath = _text(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$",
                   "{value} is not a dotted import path; use package.module.Name such as "
                   "mypackage.seifa.SeifaExtractor")
MemorySize = _text(r"(?i)^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
                   "{value} is not a memory size; use a number and a unit such as 512MB or 2GB",
                   {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([KkMmGgTt][Ii]?)?[Bb]$"})
ListenAddress = _text(r"^(\[[0-9A-Fa-f:.]+\]|[^:\s\[\]]*):([0-9]{1,5})$",
                      "{value} is not a listen address; use HOST:PORT such as 127.0.0.1:8765")


def _path_value(value: Any, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"expected a path, got {show(value)}")
    path = Path(os.path.expanduser(value))
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return Path(os.path.abspath(path))


def _existing_file(value: Any, info: ValidationInfo) -> Path:
    path = _path_value(value, info)
    if path.is_dir():
        raise _fail(f"{show(value)} is a directory, not a file")
    if not path.exists():
        looked = "" if str(path) == value else f" (looked for {path})"
        raise _fail(f"{show(value)} does not exist{looked}; "
                    "paths are relative to the file they appear in")
    return path


_PATH_ANNOTATIONS = (PlainSerializer(str, return_type=str, when_used="json"),
                     WithJsonSchema({"type": "string", "description": "a path, relative to this file"}))
ResolvedPath = Annotated[Path, PlainValidator(_path_value, json_schema_input_type=str),
                         *_PATH_ANNOTATIONS]
ExistingFile = Annotated[Path, PlainValidator(_existing_file, json_schema_input_type=str),
                         *_PATH_ANNOTATIONS]


def _encoding(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"expected text, got {show(value)}")
    try:
        codecs.lookup(value)
    except LookupError:
        raise _fail(f"unknown text encoding {value!r}; use a Python codec name such as "
                    "utf-8 or latin-1") from None
    return value


def _delimiter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise _fail(f"a delimiter is one character, got {show(value)}")
    return value


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(f"expected a regular expression as text, got {show(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


def _range_pair(value: Any) -> list[float | None]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                  for v in value))
    if not ok:
        raise _fail(f"expected [min, max] with numbers or null for an open end, got {show(value)}")
    low, high = value
    if low is not None and high is not None and low > high:
        raise _fail(f"min {low} is greater than max {high}; write [min, max]")
    return [low, high]


def _timezone(value: Any) -> str:
    import zoneinfo
    if not isinstance(value, str):
        raise _fail(f"expected a time zone name, got {show(value)}")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(value, sorted(zoneinfo.available_timezones()), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "use an IANA name such as Australia/Sydney or UTC"
        raise _fail(f"unknown time zone {value!r}; {hint}") from None
    return value


def _plain(func, schema: dict):
    return [PlainValidator(func, json_schema_input_type=Any), WithJsonSchema(schema)]


Encoding = Annotated[str, *_plain(_encoding, {"type": "string"})]
Delimiter = Annotated[str, *_plain(_delimiter, {"type": "string", "minLength": 1, "maxLength": 1})]
Regex = Annotated[str, *_plain(_regex, {"type": "string", "format": "regex"})]
RangePair = Annotated[list, *_plain(_range_pair, {
    "type": "array", "minItems": 2, "maxItems": 2,
    "items": {"type": ["number", "null"]}})]
TimeZone = Annotated[str, *_plain(_timezone, {"type": "string", "description": "IANA time zone"})]


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
            raise _fail(f"min_records {low} is greater than max_records {high}")
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

    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"type": {"const": "validator"}}},
        "else": {"required": ["class"]}})

    @model_validator(mode="after")
    def _class_needed(self) -> StageSpec:
        if self.class_ is None and self.type != "validator":
            raise _fail("missing required key 'class'")
        return self


class InputCheck(_Model):
    """Cheap checks of a dropped file before a run is started for it."""

    required_columns: list[str] = Field(default_factory=list)
    encoding: Encoding | None = None
    delimiter: Delimiter | None = None
    callable: DottedPath | None = None


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
            raise _fail(f"{value!r} is not a file name pattern; use a glob such as '*.csv' "
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
            raise _fail(f"{value!r} is not a valid cron expression ({reason}); use five fields, "
                        "minute hour day-of-month month day-of-week, such as '0 2 * * *'") from None
        return value

    @model_validator(mode="after")
    def _one_of_cron_or_interval(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.interval is None):
            which = "both" if self.cron is not None else "neither"
            raise _fail(f"give exactly one of 'cron' or 'interval' (found {which})")
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


class PipelineFile(_Model):
    """A pipeline file.  ``stages[i].prerequisites`` is filled in: absent means the previous stage."""

    pipeline: PipelineInfo
    orchestration: PipelineOrchestration = Field(default_factory=PipelineOrchestration)
    duckdb: DuckDBSettings = Field(default_factory=DuckDBSettings)
    triggers: list[Trigger] = Field(default_factory=list)
    stages: list[StageSpec] = Field(min_length=1)

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _default_prerequisites(self) -> PipelineFile:
        for i, stage in enumerate(self.stages):
            if stage.prerequisites is None:
                stage.prerequisites = [self.stages[i - 1].name] if i else []
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


class MonitoringThresholdSettings(_Model):
    """Alert thresholds (see docs/monitoring.md); null turns one off."""

    cpu_percent: float | None = Field(None, ge=0, le=100)
    memory_percent: float | None = Field(85, ge=0, le=100)
    disk_percent: float | None = Field(None, ge=0, le=100)   # default: daemon.disk_alert_percent
    run_duration_factor: float | None = Field(3, ge=1)
    run_duration_min_runs: int = Field(5, ge=1)
    stage_duration_s: PositiveDuration | None = None
    pipeline_failure_rate: float | None = Field(0.5, ge=0, le=1)
    failure_rate_min_runs: int = Field(4, ge=1)


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


class MasterFile(_Model):
    """A master file; ``pipeline_files`` holds each listed pipeline file, by name."""

    pipelines: list[MasterEntry] = Field(min_length=1)
    orchestration: MasterOrchestration = Field(default_factory=MasterOrchestration)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

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


# --- pydantic's errors in our words ---------------------------------------------

_TYPE_WORDS = {
    "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "dict_type": "a mapping of keys", "list_type": "a list", "tuple_type": "a list",
    "string_type": "text", "int_type": "a whole number", "int_parsing": "a whole number",
    "int_from_float": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def pydantic_problems(exc: ValidationError, root: type[BaseModel]) -> list[tuple[tuple, str]]:
    """``(key path, message)`` for each error of ``exc`` raised validating ``root``."""
    out = []
    for err in exc.errors():
        path, parent = _walk_loc(root, err["loc"])
        out.append(_problem(err, path, parent))
    return out


def _problem(err: dict, path: tuple, parent: type[BaseModel] | None) -> tuple[tuple, str]:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind == "ahgd":
        return path, ctx["message"]
    if kind == "missing":
        return path[:-1], f"missing required key {path[-1]!r}"
    if kind == "extra_forbidden":
        return path, _unknown_key(path[-1], parent)
    if kind == "union_tag_not_found":
        return path, "missing required key 'type'"
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else ctx.get("tag")
        return path + ("type",), (f"{show(tag)} is not a trigger type; "
                                  f"use one of {', '.join(TRIGGER_TYPES)}")
    if kind in _TYPE_WORDS:
        return path, f"expected {_TYPE_WORDS[kind]}, got {show(value)}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        bound = ctx[key]
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return path, f"must be {words} {bound}, got {show(value)}"
    if kind in ("too_short", "string_too_short"):
        n = ctx.get("min_length", 1)
        return path, f"needs at least {n} item{'s' if n != 1 else ''}, got none"
    return path, f"{show(value)} is not allowed here"


def _unknown_key(key: Any, parent: type[BaseModel] | None) -> str:
    known = [f.alias or name for name, f in parent.model_fields.items()] if parent else []
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {str(key)!r}; did you mean {close[0]!r}?"
    if known:
        return f"unknown key {str(key)!r}; allowed keys are {', '.join(known)}"
    return f"unknown key {str(key)!r}"


def _walk_loc(root: type[BaseModel], loc: tuple) -> tuple[tuple, type[BaseModel] | None]:
    """Follow pydantic's ``loc`` through the model types: the key path users wrote
    (without discriminator tags) and the model that holds its last key."""
    tp: Any = root
    path: list = []
    parent = None
    for elem in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            parent = tp
            path.append(elem)
            field = next((f for n, f in tp.model_fields.items() if (f.alias or n) == elem), None)
            tp = field.annotation if field else None
            continue
        parent = None
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            member = next((m for m in typing.get_args(tp) if elem in _tags(m)), None)
            if member is not None:
                tp = member
                continue
        path.append(elem)
        if origin is list:
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            tp = None
    return tuple(path), parent


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _tags(model: Any) -> tuple:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ()
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation) if field else ()

"""The value types of the YAML files: durations, names, paths, encodings, patterns.

Each is a pydantic annotation whose validator raises :func:`fail` with the final
user-facing text (see :mod:`pipelines.config.problems`, which keeps it as is).
"""

from __future__ import annotations

import codecs
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import (PlainSerializer, PlainValidator, ValidationInfo, WithJsonSchema)
from pydantic_core import PydanticCustomError

from state.errors import did_you_mean

from ..durations import DURATION_HINT, UnknownUnit, format_duration, parse_duration
from ..errors import ConfigError

POSITIVE_HINT = "use a positive ISO 8601 duration such as PT30M"
STAGE_TYPES = ("extractor", "transformer", "validator", "loader")
TRIGGER_TYPES = ("drop_folder", "schedule", "upstream")


def fail(message: str) -> PydanticCustomError:
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
        except UnknownUnit as exc:
            raise fail(f"{show(value)}: {exc.detail}") from None
        except ConfigError:
            text = str(value).strip()
            if not isinstance(value, bool) and text.startswith("-"):
                raise fail(f"{show(value)} is negative; {POSITIVE_HINT}") from None
            raise fail(f"{show(value)} is not a duration; {DURATION_HINT}") from None
        if positive and td == timedelta(0):
            raise fail(f"0s is not allowed; {POSITIVE_HINT}")
        return td

    schema = {"anyOf": [
        {"type": "string", "pattern": r"^[Pp](\d+(\.\d+)?[WwDd])*([Tt](\d+(\.\d+)?[HhMmSs])+)?$"},
        {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
        {"type": "string", "pattern": r"^(\s*\d+(\.\d+)?\s*[A-Za-z]+)+\s*$"},
        {"type": "number", "exclusiveMinimum" if positive else "minimum": 0},
    ], "description": "ISO 8601 duration (PT30M, PT2H, P1D), seconds, or a number with a unit "
                      "(30s, 15m, 12h, 7d, 2w, 1h30m)"}
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
        raise fail(f"{show(value)} is not {noun}; use one of {', '.join(options)}")

    return Annotated[str, PlainValidator(check, json_schema_input_type=str),
                     WithJsonSchema({"enum": list(options)})]


StageType = _choice("a stage type", STAGE_TYPES)
ExecutionMode = _choice("an execution mode", ("sequential", "parallel"))
#: a stage's executor: the daemon's (process: worker processes, or its Dask cluster), local
#: (the daemon's own host, even with a Dask cluster), inprocess (threads, no timeouts)
Executor = _choice("an executor", ("process", "local", "inprocess"))
Observer = _choice("an observer", ("auto", "inotify", "polling"))
Misfire = _choice("a misfire policy", ("skip", "latest", "all"))
Synchronous = _choice("a SQLite synchronous mode", ("FULL", "EXTRA", "NORMAL", "OFF"))


def _text(pattern: str, complaint: str, schema: dict | None = None):
    """A string matching ``pattern``; ``complaint`` is formatted with the value's repr."""
    regex = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise fail(f"expected text, got {show(value)}")
        if not regex.match(value):
            raise fail(complaint.format(value=repr(value)))
        return value

    return Annotated[str, PlainValidator(check, json_schema_input_type=str),
                     WithJsonSchema(schema or {"type": "string", "pattern": pattern})]


_NAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
PipelineName = _text(_NAME_RE, "{value} is not a valid pipeline name; use letters, digits, "
                     "'_', '-' and '.', starting with a letter, digit or '_'")
StageName = _text(_NAME_RE, "{value} is not a valid stage name; use letters, digits, "
                  "'_', '-' and '.', starting with a letter, digit or '_'")
#: ``package.module.Name``: what a stage ``class`` or an ``input_check.callable`` must look like
DOTTED_PATH_RE = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$"
DottedPath = _text(DOTTED_PATH_RE,
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
        raise fail(f"expected a path, got {show(value)}")
    path = Path(os.path.expanduser(value))
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return Path(os.path.abspath(path))


def _existing_file(value: Any, info: ValidationInfo) -> Path:
    path = _path_value(value, info)
    if path.is_dir():
        raise fail(f"{show(value)} is a directory, not a file")
    if not path.exists():
        looked = "" if str(path) == value else f" (looked for {path})"
        raise fail(f"{show(value)} does not exist{looked}; "
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
        raise fail(f"expected text, got {show(value)}")
    try:
        codecs.lookup(value)
    except LookupError:
        raise fail(f"unknown text encoding {value!r}; use a Python codec name such as "
                    "utf-8 or latin-1") from None
    return value


def _delimiter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1:
        raise fail(f"a delimiter is one character, got {show(value)}")
    return value


def _regex(value: Any) -> str:
    if not isinstance(value, str):
        raise fail(f"expected a regular expression as text, got {show(value)}")
    try:
        re.compile(value)
    except re.error as exc:
        raise fail(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


def _range_pair(value: Any) -> list[float | None]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                  for v in value))
    if not ok:
        raise fail(f"expected [min, max] with numbers or null for an open end, got {show(value)}")
    low, high = value
    if low is not None and high is not None and low > high:
        raise fail(f"min {low} is greater than max {high}; write [min, max]")
    return [low, high]


def _timezone(value: Any) -> str:
    import zoneinfo
    if not isinstance(value, str):
        raise fail(f"expected a time zone name, got {show(value)}")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = (did_you_mean(value, zoneinfo.available_timezones())
                or "use an IANA name such as Australia/Sydney or UTC")
        raise fail(f"unknown time zone {value!r}; {hint}") from None
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




def _exception_name(value: Any) -> str:
    from ..retries import name_problem   # a dotted path is imported later (import checks)

    problem = name_problem(value, key="the list", import_modules=False)
    if problem:
        raise fail(problem)
    return value


#: an exception class of ``retry_on`` / ``no_retry_on``: a builtin name or a dotted path
ExceptionName = Annotated[str, *_plain(_exception_name, {
    "type": "string", "pattern": r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$",
    "description": "an exception class: a builtin name (OSError) or a dotted path"})]

"""A pipeline's run parameters: the ``params:`` section of its pipeline file, and the values
a run is given (``ahgd run PIPELINE --param key=value``), checked against it.

    params:
      region: {type: string, choices: [NSW, VIC, QLD], required: true}
      year:   {type: integer, default: 2021, min: 2000, max: 2030}
      as_of:  {type: date, description: the day the extract describes}

A run's parameters reach its stages as ``context.params``, beside what ahgd
sets itself (``input_file``, ``fire_time`` ...: :data:`RESERVED`, never
declared).  Values given on the command line are text and are converted to
the declared type; dates and times stay ISO 8601 text (they travel as JSON).
Declared defaults fill in what a run was not given, whatever started it.  A
pipeline without ``params:`` takes none: a value given to it is refused, so a
misspelt name never goes unnoticed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from state.errors import did_you_mean

from ..errors import ConfigError
from .values import fail

#: what ahgd sets itself: a run's input file and its hash, its original name, a stage to
#: resume from, a schedule's tick, the backfill or warehouse rebuild that asked for it,
#: whether outputs are kept
RESERVED = ("input_file", "input_sha256", "original_name", "resume_from", "fire_time",
            "backfill", "keep_outputs", "rebuild", "replays")
TYPES = ("string", "integer", "number", "boolean", "date", "datetime")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ParamError(ConfigError):
    """A run's parameter that the pipeline's ``params:`` does not accept; says which and why."""


class ParamSpec(BaseModel):
    """One declared parameter (``params.<name>`` of a pipeline file)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["string", "integer", "number", "boolean", "date", "datetime"] = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _default_fits(self) -> ParamSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise fail(f"min {self.min:g} is greater than max {self.max:g}")
        if (self.min is not None or self.max is not None) and self.type not in ("integer", "number"):
            raise fail(f"min and max apply to integer and number params, not {self.type}")
        try:
            if self.choices is not None:
                self.choices = [convert(self, c, "choices") for c in self.choices]
            if self.default is not None:
                self.default = convert(self, self.default, "default")
        except ValueError as exc:
            raise fail(str(exc)) from None
        if self.default is not None and self.required:
            raise fail("a param with a default is never missing: drop required: true or the "
                       "default")
        return self


def check_names(specs: Mapping[str, ParamSpec]) -> list[tuple[str, str]]:
    """``(name, problem)`` for each declared name that cannot be a parameter."""
    problems = []
    for name in specs:
        if name in RESERVED:
            problems.append((name, f"{name!r} is set by ahgd itself (reserved: "
                                   f"{', '.join(RESERVED)}); choose another name"))
        elif not _NAME.match(name):
            problems.append((name, f"{name!r} is not a parameter name; use letters, digits and "
                                   "_ (not first a digit), such as region or as_of"))
    return problems


def problems_of(specs: Mapping[str, ParamSpec], triggers: list[Any], pipeline: str) -> list[str]:
    """What is wrong with a pipeline file's ``params:`` and its triggers' params: reserved
    or ill-formed names, a schedule's ``params`` the declaration refuses, a required param
    that a drop folder or an upstream completion would start a run without."""
    problems = [problem for _, problem in check_names(specs)]
    for trigger in triggers:
        if trigger.type == "schedule" and specs:
            try:
                resolve(pipeline, specs, trigger.params)
            except ParamError as exc:
                problems.append(f"the schedule {trigger.id}: {str(exc).split(': ', 1)[1]}")
        elif trigger.type in ("drop_folder", "upstream"):
            missing = sorted(n for n, s in specs.items() if s.required)
            if missing:
                problems.append(f"param(s) {', '.join(missing)} are required, but a "
                                f"{trigger.type} trigger starts runs without params: give "
                                "them a default instead")
    return list(dict.fromkeys(problems))


def convert(spec: ParamSpec, value: Any, name: str) -> Any:
    """``value`` (text from a command line, or a JSON value) as the declared type, checked
    against ``choices``, ``min`` and ``max``; ValueError with the reason otherwise."""
    out = _typed(spec.type, value, name)
    if spec.choices is not None and name != "choices" and out not in spec.choices:
        shown = ", ".join(str(c) for c in spec.choices)
        hint = did_you_mean(str(out), [str(c) for c in spec.choices])
        raise ValueError(f"{name}={out!r} is not one of {shown}" + (f"; {hint}" if hint else ""))
    if spec.min is not None and out < spec.min:
        raise ValueError(f"{name}={out!r} is below its min {spec.min:g}")
    if spec.max is not None and out > spec.max:
        raise ValueError(f"{name}={out!r} is above its max {spec.max:g}")
    return out


def _typed(kind: str, value: Any, name: str) -> Any:
    text = value.strip() if isinstance(value, str) else None
    if kind == "string":
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"{name} must be text, not {type(value).__name__}")
        return str(value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"{name}={value!r} is not a boolean; use true or false")
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise ValueError(f"{name}={value!r} is not a whole number, such as 2021")
    if kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(text) if text is not None else math.nan
            except ValueError:
                number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{name}={value!r} is not a number, such as 2.5")
        return number
    if kind == "date":
        try:
            return date.fromisoformat(str(text if text is not None else value)).isoformat()
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a date; use YYYY-MM-DD") from None
    try:  # datetime
        moment = datetime.fromisoformat(str(text if text is not None else value))
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a date and time; use ISO 8601 such as "
                         "2026-12-01T02:00:00+10:00") from None
    return moment.isoformat()


def resolve(pipeline: str, specs: Mapping[str, ParamSpec], given: Mapping[str, Any], *,
            where: Any = None) -> dict[str, Any]:
    """The parameters of a run of ``pipeline``: ``given``, converted and checked, with the
    declared defaults filled in; ParamError naming every problem otherwise."""
    hint_where = f" in {where}" if where else ""
    if given and not specs:
        raise ParamError(f"pipeline {pipeline!r} declares no params, so it takes none (given: "
                         f"{', '.join(sorted(given))}); declare them under params: in its "
                         f"pipeline file{hint_where}")
    problems, out = [], {}
    for name, value in given.items():
        spec = specs.get(name)
        if spec is None:
            close = did_you_mean(name, specs)
            problems.append(f"unknown param {name!r}" + (f"; {close}" if close else "")
                            + f" (pipeline {pipeline!r} takes: {', '.join(sorted(specs))})")
            continue
        try:
            out[name] = convert(spec, value, name)
        except ValueError as exc:
            problems.append(str(exc))
    for name, spec in specs.items():
        if name in out or name in given:
            continue
        if spec.default is not None:
            out[name] = spec.default
        elif spec.required:
            problems.append(f"param {name!r} is required"
                            + (f" ({spec.description})" if spec.description else "")
                            + f": give it as --param {name}=VALUE")
    if problems:
        raise ParamError(f"pipeline {pipeline!r}: " + "; ".join(problems))
    return out


def with_defaults(specs: Mapping[str, ParamSpec], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the declared defaults of the names it lacks (any run, as it starts)."""
    out = dict(params)
    for name, spec in specs.items():
        if name not in out and spec.default is not None:
            out[name] = spec.default
    return out


def parse_assignments(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["key=value", ...]`` from the command line -> ``{key: value}``; ValueError saying
    which one is not ``key=value``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {pair!r} is not key=value (for example --param year=2021)")
        if key.strip() in out:
            raise ValueError(f"--param {key.strip()} is given twice")
        out[key.strip()] = value
    return out


__all__ = ["ParamError", "ParamSpec", "RESERVED", "TYPES", "check_names", "convert",
           "parse_assignments", "problems_of", "resolve", "with_defaults"]

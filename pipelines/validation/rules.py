"""The static check of validation rules: their shape, and any JSON Schema file they name.

    spec = parse_rules({"min_records": 1000, "schema": "schemas/irsd.json"},
                       "extract", base_dir=yaml_dir)      # ConfigError if malformed

Nothing here touches data: a rule's values are checked against the table in
:mod:`pipelines.validation.checks`, and the checks run in :mod:`pipelines.validation`,
whose ``check_rules`` is the public entry point.  A JSON Schema file is read into
:class:`Schema` and every keyword it uses that cannot be checked in SQL is named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from state.errors import did_you_mean

from ..errors import ConfigError

RULES = ("required_columns", "min_records", "max_records", "not_null", "unique", "ranges",
         "allowed_values", "pattern", "schema", "quarantine")
SCHEMA_KEYWORDS = ("type", "properties", "required", "enum", "minimum", "maximum",
                   "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength")
_ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default",
                          "examples", "deprecated", "readOnly", "writeOnly"})
_JSON_TYPES = ("string", "integer", "number", "boolean", "null")


@dataclass(frozen=True)
class Schema:
    name: str                      # as written in the rules, used in messages
    path: Path
    properties: dict[str, dict]
    required: tuple[str, ...]


def parse_rules(rules: Mapping, stage: str, base_dir: Path | None) -> dict[str, Any]:
    """Each rule's setting checked and normalised (tuples, a :class:`Schema`); else ConfigError."""
    p = f"stage {stage!r}: "
    if not isinstance(rules, Mapping):
        raise ConfigError(p + "validation_rules must be a mapping of rule name to setting, "
                          f"such as {{min_records: 1000}}, not {rules!r}")
    out: dict[str, Any] = {}
    for name, value in rules.items():
        if name not in RULES:
            hint = did_you_mean(str(name), RULES) or "the rules are " + ", ".join(RULES)
            raise ConfigError(p + f"unknown validation rule {name!r}; {hint}")
        out[name] = _RULE_PARSERS[name](p, name, value, base_dir)
    lo, hi = out.get("min_records"), out.get("max_records")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(p + f"min_records {lo} is greater than max_records {hi}; "
                          "lower min_records or raise max_records")
    return out


def _columns(p: str, name: str, value: Any, _base: Any) -> tuple[str, ...]:
    if not is_list(value) or not all(is_name(c) for c in value):
        raise ConfigError(p + f"validation rule {name} must be a list of column names such as "
                          f"[sa2_code, sa2_name], not {value!r}")
    return tuple(value)


def _count(p: str, name: str, value: Any, _base: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(p + f"validation rule {name} must be a whole number of rows, "
                          f"0 or more, not {value!r}")
    return value


def _unique(p: str, name: str, value: Any, _base: Any) -> tuple[tuple[str, ...], ...]:
    def key(item: Any) -> tuple[str, ...] | None:
        if is_name(item):
            return (item,)
        if is_list(item) and item and all(is_name(c) for c in item):
            return tuple(item)
        return None

    keys = [key(item) for item in value] if is_list(value) else [None]
    if None in keys:
        raise ConfigError(p + "validation rule unique must be a list whose items are a column or "
                          "a list of columns (a composite key), such as [sa2_code, [state, year]], "
                          f"not {value!r}")
    return tuple(keys)


def _column_map(p: str, name: str, value: Any, shape: str) -> Mapping:
    if not isinstance(value, Mapping) or not value or not all(is_name(c) for c in value):
        raise ConfigError(p + f"validation rule {name} must map column names to {shape}, "
                          f"not {value!r}")
    return value


def _ranges(p: str, name: str, value: Any, _base: Any) -> tuple:
    out = []
    for col, bounds in _column_map(p, name, value, "[min, max], such as "
                                   "{irsd_decile: [1, 10]}").items():
        if not is_list(bounds) or len(bounds) != 2 or not all(
                b is None or _is_scalar(b) and not isinstance(b, bool) for b in bounds):
            raise ConfigError(p + f"ranges for {col} must be [min, max] with numbers, text or "
                              f"null for an open end, not {bounds!r}")
        lo, hi = bounds
        if lo is None and hi is None:
            raise ConfigError(p + f"ranges for {col} is [null, null], which checks nothing; "
                              "give at least one bound")
        if lo is not None and hi is not None and type(lo) is not str and type(hi) is not str \
                and lo > hi:
            raise ConfigError(p + f"ranges for {col} is [{lo}, {hi}], whose minimum is greater "
                              f"than its maximum; write it as [{hi}, {lo}]")
        out.append((col, lo, hi))
    return tuple(out)


def _allowed(p: str, name: str, value: Any, _base: Any) -> tuple:
    out = []
    for col, values in _column_map(p, name, value, "lists of values, such as "
                                   "{state: [NSW, VIC]}").items():
        if not is_list(values) or not all(v is None or _is_scalar(v) for v in values):
            raise ConfigError(p + f"allowed_values for {col} must be a list of numbers, text or "
                              f"booleans, not {values!r}")
        kept = tuple(v for v in values if v is not None)   # NULL never breaks allowed_values
        if not kept:
            raise ConfigError(p + f"allowed_values for {col} lists no values, so every row with "
                              "a value would fail; list the allowed values")
        out.append((col, kept))
    return tuple(out)


def _pattern(p: str, name: str, value: Any, _base: Any) -> tuple:
    pairs = tuple(_column_map(p, name, value, "regular expressions, such as "
                              "{sa2_code: '[0-9]{9}'}").items())
    for col, regex in pairs:
        if not isinstance(regex, str):
            raise ConfigError(p + f"pattern for {col} must be a regular expression in quotes, "
                              f"not {regex!r}")
        _check_regex(p + f"pattern for {col}", regex)
    return pairs


def _quarantine(p: str, name: str, value: Any, _base: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(p + f"validation rule quarantine must be true or false, not {value!r}")
    return value


# ---------------------------------------------------------------- JSON Schema files

def _schema(p: str, name: str, value: Any, base_dir: Path | None) -> Schema:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(p + "validation rule schema must be the path of a JSON Schema file, "
                          f"such as schemas/irsd.json, not {value!r}")
    path = Path(base_dir or ".") / value
    if not path.is_file():
        where = f"relative to {base_dir}" if base_dir else "relative to the current directory"
        raise ConfigError(p + f"validation rule schema names {value!r}, but {path} does not exist; "
                          f"give the path of a JSON Schema file {where}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(p + f"schema file {path} is not valid JSON: {exc}") from None
    return _SchemaReader(p + f"schema file {path}", value, path).read(doc)


class _SchemaReader:
    """Turns a JSON Schema document into ``Schema``, naming what it cannot honour."""

    def __init__(self, prefix: str, name: str, path: Path):
        self.prefix, self.name, self.path = prefix, name, path

    def fail(self, where: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.prefix}: {where} must be {what}, not {value!r}")

    def read(self, doc: Any) -> Schema:
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.prefix} must hold a JSON object with properties, "
                              f"not {doc!r}")
        unsupported = self.unsupported(doc, "", top=True)
        if unsupported:
            raise ConfigError(f"{self.prefix} uses JSON Schema keyword(s) not supported here: "
                              f"{', '.join(unsupported)}; supported: {', '.join(SCHEMA_KEYWORDS)}")
        if doc.get("type", "object") != "object":
            raise self.fail("type", "'object' (the schema of one row)", doc["type"])
        props = doc.get("properties", {})
        if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
            raise self.fail("properties", "an object mapping column names to schemas", props)
        required = doc.get("required", [])
        if not is_list(required) or not all(is_name(c) for c in required):
            raise self.fail("required", "a list of column names", required)
        for col, sub in props.items():
            self.check_property(f"properties.{col}", sub)
        return Schema(self.name, self.path, props, tuple(required))

    def unsupported(self, doc: dict, where: str, *, top: bool) -> list[str]:
        allowed = {"type", "properties", "required"} if top else set(SCHEMA_KEYWORDS) - {
            "properties", "required"}
        found = [where + k for k in doc if k not in allowed and k not in _ANNOTATIONS]
        props = doc.get("properties") if top else None
        if isinstance(props, dict):
            for col, sub in props.items():
                if isinstance(sub, dict):
                    found += self.unsupported(sub, f"properties.{col}.", top=False)
                else:
                    found.append(f"properties.{col} (a boolean schema)")
        return found

    def check_property(self, where: str, sub: dict) -> None:
        types = sub.get("type", [])
        if not all(t in _JSON_TYPES for t in (types if is_list(types) else [types])):
            raise self.fail(f"{where}.type", "one of " + ", ".join(_JSON_TYPES)
                            + " or a list of them", types)
        for kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if kw in sub and (isinstance(sub[kw], bool) or not isinstance(sub[kw], (int, float))):
                raise self.fail(f"{where}.{kw}", "a number", sub[kw])
        for kw in ("minLength", "maxLength"):
            if kw in sub and (isinstance(sub[kw], bool) or not isinstance(sub[kw], int)
                              or sub[kw] < 0):
                raise self.fail(f"{where}.{kw}", "a whole number, 0 or more", sub[kw])
        if "enum" in sub and (not is_list(sub["enum"]) or not sub["enum"]
                              or not all(v is None or _is_scalar(v) for v in sub["enum"])):
            raise self.fail(f"{where}.enum", "a non-empty list of numbers, text, booleans or null",
                            sub["enum"])
        if "pattern" in sub:
            if not isinstance(sub["pattern"], str):
                raise self.fail(f"{where}.pattern", "a regular expression", sub["pattern"])
            _check_regex(f"{self.prefix}: {where}.pattern", sub["pattern"])


def _check_regex(what: str, regex: str) -> None:
    """DuckDB's verdict (RE2), without loading DuckDB here when it is not loaded already
    (:mod:`pipelines.validation.regexes`: the daemon never loads it)."""
    from .regexes import problem

    reason = problem(regex)
    if reason is not None:
        raise ConfigError(f"{what} is not a valid regular expression ({reason}): {regex!r}; "
                          "DuckDB uses RE2 syntax")


_RULE_PARSERS = {"required_columns": _columns, "min_records": _count, "max_records": _count,
                 "not_null": _columns, "unique": _unique, "ranges": _ranges,
                 "allowed_values": _allowed, "pattern": _pattern, "schema": _schema,
                 "quarantine": _quarantine}


def is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def is_name(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))

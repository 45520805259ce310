"""Problems in the configuration, in our words.

:class:`ConfigIssue` is one problem with where it is (``file:line: key.path:
message``); :func:`pydantic_problems` turns pydantic's error types into the
same style, so users never see pydantic's own wording.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from state.errors import did_you_mean
from .values import TRIGGER_TYPES, show


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is (file, line, key path) and what to do about it."""

    file: str
    line: int | None
    path: str
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


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
    hint = did_you_mean(str(key), known, cutoff=0.6)
    if hint:
        return f"unknown key {str(key)!r}; {hint}"
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

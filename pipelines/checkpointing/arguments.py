"""The checkpoint manager's arguments, checked: names, counts, ages, enums, metadata.

Every check raises :class:`~pipelines.errors.CheckpointError` naming the argument,
the value given and what to give instead; :func:`slug` turns a pipeline or stage
name into one safe path component.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from typing import Any

from ..errors import CheckpointError
from .formats import NotJson, json_encode, type_name

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def slug(name: str) -> str:
    """One safe path component for ``name``: no separators, no leading dot, bounded length.

    Different names may share a folder ("a/b", "a_b"); files never collide
    because their names are the unique checkpoint ids.
    """
    slug = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if len(slug) > 64:
        slug = f"{slug[:48]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return slug


def check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise CheckpointError(f"{what} must be a non-empty string, got {value!r}")


def check_count(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise CheckpointError(f"max_checkpoints={value!r} is not allowed; use a whole number of "
                          "checkpoints to keep per stage, at least 1 (or None for no limit)")


def check_days(value: Any) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and math.isfinite(value) and value > 0):
        return value
    raise CheckpointError(f"retention_days={value!r} is not allowed; use a positive number of "
                          "days (or None to keep checkpoints of any age)")


def as_enum(cls: type[enum.Enum], value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if value.lower() in (member.value, member.name.lower()):
                return member
    choices = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
    raise CheckpointError(f"{what}={value!r} is not a {cls.__name__}; use one of {choices}")


def metadata_json(metadata: Any) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"metadata must be a dict of plain JSON values, got a {type_name(metadata)}")
    try:
        return json_encode(metadata, "metadata").decode()
    except NotJson as exc:
        raise CheckpointError(f"metadata must hold plain JSON values, but {exc}; convert it "
                              "(e.g. dates to ISO 8601 strings)") from None

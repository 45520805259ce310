"""Python rows as a DuckDB table, and back: what a stage's list of dicts becomes.

    is_records([{"sa2": "101", "deaths": 3}, ...])    # True: a non-empty list of dicts
    is_column_dict({"sa2": ["101", "102"], "deaths": [3, 5]})   # columns of one length
    create_table(con, "output", columns, stage="extract")      # one CREATE TABLE ... AS

The rules (README "Stage outputs"):

* a non-empty list (or tuple) whose items are all dicts is always a table, one
  row per dict; the columns are every key met, in the order first met, and a
  dict without a key gives NULL there;
* a dict whose values are lists of one length is a table only when the stage
  has validation rules (they need a table); otherwise it is a plain value, as
  any other dict;
* each column has one type, chosen from its values: ``bool`` BOOLEAN, ``int``
  BIGINT (HUGEINT past 64 bits), ``float`` (or ``int`` and ``float``) DOUBLE,
  ``str`` VARCHAR, ``date`` DATE, ``datetime`` TIMESTAMP (TIMESTAMPTZ with a
  time zone), ``time`` TIME; anything else (``Decimal``, ``bytes``, nested
  dicts and lists) as DuckDB converts it.  A column that mixes kinds (text and
  numbers, ``True`` and ``1``) is refused, naming the column, rather than
  silently turning ``1`` into ``'1'``.

A table made from records is read back by ``PipelineContext.get_output`` in the
shape it was given (the output reference records it as ``shape``): a list of
dicts (or a dict of lists), each value of its column's type.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping, Sequence

from .context import quote
from .errors import StageOutputError

RECORDS = "records"
COLUMNS = "columns"


def is_records(value: Any) -> bool:
    """A non-empty list or tuple whose items are all dicts."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(row, Mapping) for row in value))


def is_column_dict(value: Any) -> bool:
    """A non-empty dict whose values are lists (or tuples) of one length, at least 1."""
    if not isinstance(value, Mapping) or not value:
        return False
    lengths = {len(v) if isinstance(v, (list, tuple)) else -1 for v in value.values()}
    return len(lengths) == 1 and min(lengths) > 0


def columns_of(value: Any, *, stage: str) -> dict[str, list]:
    """``column -> values`` of records or of a column dict, keys checked."""
    if isinstance(value, Mapping):
        columns = {k: list(v) for k, v in value.items()}
    else:
        order: dict[Any, None] = {}
        for row in value:
            order.update(dict.fromkeys(row))
        columns = {k: [row.get(k) for row in value] for k in order}
    seen: dict[str, str] = {}
    for key in columns:
        if not isinstance(key, str) or not key.strip():
            raise StageOutputError(f"stage {stage!r} returned records with the key {key!r}; "
                                   "column names must be non-empty text")
        other = seen.setdefault(key.lower(), key)
        if other != key:
            raise StageOutputError(f"stage {stage!r} returned records with the keys {other!r} "
                                   f"and {key!r}, which DuckDB takes for one column (names are "
                                   "compared without case); rename one of them")
    return columns


def create_table(con: Any, name: str, columns: Mapping[str, Sequence], *, stage: str) -> None:
    """``CREATE TABLE main.<name>`` from ``columns`` (one list of values per column)."""
    parts, params = [], []
    for i, (column, values) in enumerate(columns.items()):
        type_ = _column_type(column, values, stage)
        cast = f"::{type_}" if type_ else ""
        parts.append(f"unnest(${i + 1}){cast} AS {quote(column)}")
        params.append(list(values))
    try:
        con.execute(f"CREATE OR REPLACE TABLE main.{quote(name)} AS SELECT {', '.join(parts)}",
                    params)
    except Exception as exc:  # a value DuckDB cannot hold: say which column
        bad = _unconvertible(con, columns)
        where = f" (column {bad!r})" if bad else ""
        raise StageOutputError(
            f"stage {stage!r} returned records that DuckDB cannot store as a table{where}: "
            f"{str(exc).strip().splitlines()[0]}; give that column plain values (text, numbers, "
            "dates), or return the list inside a dict to store it as a value") from exc


# --------------------------------------------------------------------------- types


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT" if -(1 << 63) <= value < (1 << 63) else "HUGEINT"
    if isinstance(value, float):
        return "DOUBLE"
    if isinstance(value, str):
        return "VARCHAR"
    if isinstance(value, dt.datetime):
        return "TIMESTAMP" if value.tzinfo is None else "TIMESTAMPTZ"
    if isinstance(value, dt.date):
        return "DATE"
    if isinstance(value, dt.time):
        return "TIME"
    return ""  # DuckDB's own conversion (Decimal, bytes, dicts, lists, ...)


_NUMBERS = {"BIGINT", "HUGEINT", "DOUBLE"}


def _column_type(column: str, values: Sequence, stage: str) -> str:
    """The column's SQL type, or "" to let DuckDB choose; refuses mixed kinds."""
    kinds: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is not None:
            kinds.setdefault(_kind(v) or type(v).__name__, i)
    if not kinds:
        return "VARCHAR"            # only NULLs: a text column, the most accommodating
    if len(kinds) == 1:
        kind = next(iter(kinds))
        return kind if kind.isupper() else ""
    if set(kinds) <= _NUMBERS:
        return "DOUBLE" if "DOUBLE" in kinds else "HUGEINT"
    (a, i), (b, j) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
    raise StageOutputError(
        f"stage {stage!r} returned records whose column {column!r} mixes kinds of value: "
        f"{_shown(values[i])} ({_py(values[i])}) in row {i + 1}, {_shown(values[j])} "
        f"({_py(values[j])}) in row {j + 1}; give each column one kind (e.g. str(...) for "
        "codes), or return the list inside a dict to store it as a value")


def _py(value: Any) -> str:
    return type(value).__name__


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unconvertible(con: Any, columns: Mapping[str, Sequence]) -> str | None:
    for i, (column, values) in enumerate(columns.items()):
        try:
            con.execute("SELECT unnest($1) LIMIT 0", [list(values)])
        except Exception:
            return column
    return None


__all__ = ["RECORDS", "COLUMNS", "is_records", "is_column_dict", "columns_of", "create_table"]

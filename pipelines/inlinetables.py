"""Small tables kept in the event log: ``{"kind": "tables", "format": "inline"}``.

A stage attempt whose inputs are small (every table it reads is inline, or it
reads none and the run's input file is at most :data:`SMALL_INPUT_BYTES`)
runs on an in-memory DuckDB database instead of a file of its own
(:mod:`pipelines.attemptdb`).  When it ends, tables whose text fits in
:data:`INLINE_TABLE_BYTES` (and whose columns are all of a type that DuckDB
casts to text and back exactly, :data:`_EXACT`) are recorded in the
``stage.completed`` event itself, with their SHA-256; anything bigger is
copied to the attempt's file as before (:func:`pipelines.execution.outputs`).
Creating, checkpointing, hashing and attaching a DuckDB file cost ~4 ms of CPU
(and two fsyncs) per small attempt: most of a small stage.

The reference::

    {"kind": "tables", "format": "inline", "tables": {"output": 20},
     "data": {"output": {"columns": [["id", "BIGINT"], ...], "rows": "[[\\"1\\", ...], ...]"}},
     "sha256": "..."}

``rows`` is JSON text: a list of rows, each a list of the cells as DuckDB's
text (``col::VARCHAR``) or null, in the table's order.  Readers attach it as
an in-memory catalog (:func:`attach_statements`), or, where a file is needed
(``context.output_path``, ``ahgd export``), write it to one
(:func:`materialise`).  The durability is the event's: it is committed with the
stage's completion, before the next stage starts.  Inline tables stay in
``history.db`` when retention removes a run's files: keep the limit small.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from state import store

from .errors import StageOutputError
from .sqltext import quote, sql_literal


def _env_bytes(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default)))
    except ValueError:
        return default


#: tables whose text (all of one attempt's) is at most this many bytes are kept inline;
#: 0 turns inline tables (and in-memory attempts) off.  ``AHGD_INLINE_TABLE_BYTES``.
INLINE_TABLE_BYTES = _env_bytes("AHGD_INLINE_TABLE_BYTES", 8 * 1024)
#: a stage that reads no table runs in memory when the run's input file is at most this big
SMALL_INPUT_BYTES = _env_bytes("AHGD_SMALL_INPUT_BYTES", 1024 * 1024)

#: column types whose text DuckDB casts back to the same value (tests/pipelines/
#: test_inline_tables.py checks each with its edge values); any other type goes to a file
_EXACT = re.compile(
    r"BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|"
    r"UHUGEINT|FLOAT|DOUBLE|DECIMAL\(\d{1,2},\d{1,2}\)|VARCHAR|DATE|TIME|TIMESTAMP|"
    r"TIMESTAMP_S|TIMESTAMP_MS|TIMESTAMP_NS|TIMESTAMP WITH TIME ZONE|INTERVAL|UUID|BLOB")
_ROWS = "'[\"VARCHAR[]\"]'"


def is_inline(ref: Mapping[str, Any] | None) -> bool:
    return bool(ref) and ref.get("kind") == "tables" and ref.get("format") == "inline"


def small_inputs(outputs: Mapping[str, Mapping[str, Any] | None],
                 input_file: str | None) -> bool:
    """Whether an attempt with these upstream outputs (and this run input) runs in memory."""
    if INLINE_TABLE_BYTES <= 0:
        return False
    tables = [ref for ref in outputs.values() if ref and ref.get("kind") == "tables"]
    if tables:
        return all(ref.get("format") == "inline" for ref in tables)
    if not input_file:
        return False   # it reads from somewhere we cannot size: a file of its own
    try:
        return os.stat(input_file).st_size <= SMALL_INPUT_BYTES
    except OSError:
        return False


def _shape(con: Any, name: str) -> tuple[list[str], list[str]] | None:
    """The columns and types of table ``name`` of ``con``'s current database; None when a
    type is not one kept exactly as text."""
    relation = con.table(f"main.{quote(name)}")   # binds the table; runs nothing
    columns, types = list(relation.columns), [str(t) for t in relation.types]
    return (columns, types) if all(_EXACT.fullmatch(t) for t in types) else None


def _row_bytes(columns: list[str]) -> int:
    """The least text a row takes: ``[``, ``]``, ``,`` and each cell at least ``"",``."""
    return 2 + 3 * len(columns)


def _most_rows(columns: list[str], limit: int) -> int:
    """The most rows of these columns whose text could fit in ``limit`` bytes."""
    return max(0, (limit - 2) // _row_bytes(columns))


def _text_of(con: Any, name: str, columns: list[str], most: int | None = None,
             read: Any = None) -> tuple[str, int]:
    """Table ``name`` as the JSON text of its rows, each cell as DuckDB's text, and the number
    of rows read (its first ``most`` + 1 rows: what cannot fit is never read).

    The rows are fetched and made JSON here: DuckDB's ``to_json(list(...))`` of a 20-row
    table cost ~1 ms of CPU, a plain fetch ~0.4 ms and ``json.dumps`` ~0.02 ms."""
    cells = ", ".join(f"{quote(c)}::VARCHAR" for c in columns)
    order = " ORDER BY rowid"
    if "rowid" in {c.lower() for c in columns}:   # a column of that name: the scan's order
        order = ""
    limit = "" if most is None else f" LIMIT {int(most) + 1}"
    sql = f"SELECT {cells} FROM main.{quote(name)}{order}{limit}"
    rows = read(sql) if read is not None else con.execute(sql).fetchall()
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")), len(rows)


class Prefetch(NamedTuple):
    """A table that may go inline: its columns and types, its text (:func:`_text_of`,
    bounded to the rows that could fit) and the rows that text holds."""

    columns: list[str]
    types: list[str]
    text: str
    rows: int


def prefetch(con: Any, name: str = "output", limit: int | None = None, *,
             read: Any = None) -> Prefetch | None:
    """:class:`Prefetch` of table ``name``; None when it cannot go inline.  ``read(sql)``,
    if given, runs the statement that reads it (``AttemptDatabase.read``)."""
    limit = INLINE_TABLE_BYTES if limit is None else limit
    shape = _shape(con, name) if limit > 0 else None
    if shape is None:
        return None
    return Prefetch(shape[0], shape[1], *_text_of(con, name, shape[0],
                                                   _most_rows(shape[0], limit), read))


def encode(con: Any, counts: Mapping[str, int], limit: int | None = None, *,
           known: Mapping[str, Prefetch] | None = None) -> dict[str, Any] | None:
    """The tables of ``con``'s current database (``counts``: name -> rows) as an inline
    reference, or None when they would not fit in ``limit`` bytes or a column's type is
    not one kept exactly as text.  ``known``: name -> what :func:`prefetch` read of it."""
    limit = INLINE_TABLE_BYTES if limit is None else limit
    if limit <= 0 or not counts:
        return None
    known = known or {}
    shapes: dict[str, tuple[list[str], list[str]]] = {}
    least = 0
    for name, rows in counts.items():
        shape = known[name][:2] if name in known else _shape(con, name)
        if shape is None:
            return None
        least += 2 + rows * _row_bytes(shape[0])
        if least > limit:
            return None
        shapes[name] = shape  # type: ignore[assignment]
    data: dict[str, Any] = {}
    size = 0
    for name, (columns, types) in shapes.items():
        # the rows are counted and few enough to fit (above): read them all, and keep the text
        # only if it holds every one of them
        text, read = (known[name].text, known[name].rows) if name in known else \
            _text_of(con, name, columns)
        if read != counts[name]:
            return None   # not the rows counted: the table goes to a file, whole
        size += len(text)
        if size > limit:
            return None
        data[name] = {"columns": [[c, t] for c, t in zip(columns, types)], "rows": text}
    return {"kind": "tables", "format": "inline", "tables": dict(counts), "data": data,
            "sha256": _digest(data)}


def _digest(data: Mapping[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of(ref: Mapping[str, Any]) -> str | None:
    """The SHA-256 of ``ref``'s inline tables as they are now (None: they are not there)."""
    data = ref.get("data")
    return _digest(data) if isinstance(data, dict) else None


def _checked(ref: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    data = ref.get("data")
    if not isinstance(data, dict) or _digest(data) != ref.get("sha256"):
        raise StageOutputError(
            f"the {what} is kept in the event log (an inline table) and does not match its "
            "recorded SHA-256: history.db was altered by hand or damaged. Make it again: a "
            "failed run with `ahgd retry RUN_ID` (which checks every recorded output first and "
            "runs again the stages whose output is bad), a finished one by running its "
            "pipeline again on the same input")
    return data


def attach_statements(ref: Mapping[str, Any], catalog: str, *, what: str) -> list[str]:
    """The statements that attach ``ref``'s tables as the in-memory catalog ``catalog``."""
    data = _checked(ref, what)
    out = [f"ATTACH ':memory:' AS {quote(catalog)}"]
    out += [_create(f"{quote(catalog)}.main.{quote(name)}", table)
            for name, table in data.items()]
    return out


def _create(target: str, table: Mapping[str, Any]) -> str:
    columns = table["columns"]
    for _, kind in columns:
        if not _EXACT.fullmatch(str(kind)):   # never into SQL unless it is one of ours
            raise StageOutputError(f"an inline table has a column of type {kind!r}, which "
                                   "ahgd does not write inline: history.db was altered")
    cells = ", ".join(f"r[{i}]::{kind} AS {quote(str(name))}"
                      for i, (name, kind) in enumerate(columns, 1))
    return (f"CREATE TABLE {target} AS SELECT {cells} FROM "
            f"(SELECT unnest(from_json({sql_literal(str(table['rows']))}, {_ROWS})) AS r)")


def file_for(state_dir: Path, run_id: str, stage: str, ref: Mapping[str, Any]) -> Path:
    """Where :func:`materialise` writes ``ref`` for a reader that needs a file: in the run's
    folder (removed with it by retention; a cache, never recorded)."""
    return store.run_dir(state_dir, run_id) / (
        f"{store.safe_name(stage)}-inline-{str(ref.get('sha256'))[:16]}.duckdb")


_LOCK = threading.Lock()


def materialise(ref: Mapping[str, Any], path: Path, *, what: str) -> Path:
    """``path``, a DuckDB file holding ``ref``'s tables (written once, whole: a temp file
    renamed into place)."""
    if path.exists():
        return path
    import duckdb

    data = _checked(ref, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            for name, table in data.items():
                con.execute(_create(f"main.{quote(name)}", table))
        finally:
            con.close()
        os.replace(tmp, path)
        tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)
    return path


__all__ = ["INLINE_TABLE_BYTES", "SMALL_INPUT_BYTES", "attach_statements", "encode",
           "file_for", "is_inline", "materialise", "small_inputs"]

"""Checkpoint files: the five formats, written atomically, verified, read back.

    data_size, rows, sha256, size = write_atomically(path, CheckpointFormat.PARQUET, table)
    problem, blob = verify_file(path, size, sha256, label, keep=False)
    data = read_data(CheckpointFormat.PARQUET, blob, path)

DUCKDB and PARQUET hold tables (a DuckDB relation, a pyarrow Table, a pandas
DataFrame or a list of dicts), JSON holds plain JSON values only, the pickles
hold anything picklable.  Data a format cannot hold is refused before it is
written, with a message naming the formats that can hold it.  This module
knows files, not the index: :mod:`pipelines.checkpointing.manager` records each file's
size and SHA-256 and says which file to verify and read.
"""

from __future__ import annotations

import decimal
import enum
import errno
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import sys
import uuid
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError

#: The table inside a DUCKDB checkpoint file.
TABLE_NAME = "data"


class CheckpointFormat(enum.Enum):
    DUCKDB = "duckdb"
    PARQUET = "parquet"
    JSON = "json"
    PICKLE = "pickle"
    COMPRESSED_PICKLE = "compressed_pickle"


SUFFIX = {
    CheckpointFormat.DUCKDB: ".duckdb",
    CheckpointFormat.PARQUET: ".parquet",
    CheckpointFormat.JSON: ".json",
    CheckpointFormat.PICKLE: ".pkl",
    CheckpointFormat.COMPRESSED_PICKLE: ".pkl.gz",
}
TABLE_FORMATS = (CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET)
PICKLE_FORMATS = (CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE)


# -- writing ----------------------------------------------------------------------

def write_atomically(path: Path, fmt: CheckpointFormat,
                     data: Any) -> tuple[int | None, int | None, str, int]:
    """Write ``data`` to a temp file beside ``path``, fsync, hash, rename.

    Returns (data_size_bytes, row_count, sha256, size_bytes).  On any failure
    the temp file is removed and ``path`` does not exist.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt in TABLE_FORMATS:
            data_size, rows = None, _write_table(data, tmp, fmt)
        elif fmt is CheckpointFormat.JSON:
            data_size, rows = _write_json(data, tmp), None
        else:
            data_size, rows = _write_pickle(data, tmp, fmt), None
        _fsync(tmp)
        sha256, size = sha256_file(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"cannot write checkpoint {path}: the disk is full; free some space on "
                f"{path.parent} (see `df -h {path.parent}`) and retry") from exc
        raise
    return data_size, rows, sha256, size


class _CountingWriter:
    """A file-like sink that counts bytes and passes them on (or drops them)."""

    def __init__(self, inner: Any = None):
        self.inner, self.count = inner, 0

    def write(self, chunk: Any) -> int:
        n = memoryview(chunk).nbytes
        self.count += n
        return self.inner.write(chunk) if self.inner is not None else n


_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError)


def _write_pickle(data: Any, tmp: Path, fmt: CheckpointFormat) -> int:
    with open(tmp, "xb") as raw:
        sink = gzip.GzipFile("", "wb", 6, raw, mtime=0) \
            if fmt is CheckpointFormat.COMPRESSED_PICKLE else raw
        counter = _CountingWriter(sink)
        try:
            pickle.dump(data, counter, protocol=5)
        except _PICKLE_ERRORS as exc:
            raise _cannot_hold(data, fmt, str(exc)) from exc
        finally:
            if sink is not raw:
                sink.close()
    return counter.count


def _picklable(data: Any) -> bool:
    try:
        pickle.dump(data, _CountingWriter(), protocol=5)
    except _PICKLE_ERRORS:
        return False
    return True


class NotJson(ValueError):
    """``data`` holds something JSON would lose or change; the message says where."""


def json_encode(value: Any, where: str) -> bytes:
    """Encode plain JSON values only: no tuples, sets, dates, NaN or non-string keys."""
    stack, seen = [(value, where)], set()
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if item is None or kind in (str, int, bool) or (kind is float and math.isfinite(item)):
            continue
        if kind is float:
            raise NotJson(f"{path} is {item!r}, which JSON cannot hold")
        if kind not in (list, dict):
            raise NotJson(f"{path} is a {type_name(item)}, which JSON cannot hold")
        if id(item) in seen:  # shared or circular; json.dumps below refuses a cycle
            continue
        seen.add(id(item))
        if kind is dict:
            bad = next((k for k in item if type(k) is not str), None)
            if bad is not None:
                raise NotJson(f"{path} has the key {bad!r}, which JSON would turn into a string")
            children = [(x, f"{path}[{k!r}]") for k, x in item.items()]
        else:
            children = [(x, f"{path}[{i}]") for i, x in enumerate(item)]
        stack.extend(reversed(children))
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        raise NotJson(f"{where} holds a circular reference") from None
    except RecursionError:
        raise NotJson(f"{where} is nested too deeply for JSON") from None


def _write_json(data: Any, tmp: Path) -> int:
    try:
        blob = json_encode(data, "data")
    except NotJson as exc:
        raise _cannot_hold(data, CheckpointFormat.JSON, str(exc)) from None
    with open(tmp, "xb") as f:
        f.write(blob)
    return len(blob)


def _table_kind(data: Any) -> str | None:
    """What kind of table ``data`` is, without importing a library it cannot be from."""
    duckdb = sys.modules.get("duckdb")
    if duckdb is not None and isinstance(data, duckdb.DuckDBPyRelation):
        return "relation"
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(data, pa.Table):
        return "arrow"
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        return "pandas"
    if type(data) is list and data and all(type(row) is dict for row in data):
        return "rows"
    return None


# Python values DuckDB converts faithfully, most specific first; anything else
# in a pandas object column DuckDB would silently store as its str().
_CELL_KINDS = ((bool, "bool"), ((int, float), "number"), (str, "str"), (bytes, "bytes"),
               (decimal.Decimal, "decimal"), (uuid.UUID, "uuid"), (datetime, "datetime"),
               (date, "date"), (time, "time"), (timedelta, "timedelta"), (dict, "dict"),
               (list, "list"), (tuple, "list"))


def _cells_problem(cells: Iterator[tuple[Any, int, Any]]) -> str | None:
    """Why DuckDB would change these (column, row, value) cells on the way in, or None."""
    first_seen: dict[Any, tuple[str, int]] = {}
    for column, n, value in cells:
        kind = next((name for base, name in _CELL_KINDS if isinstance(value, base)), None)
        if kind is None:
            return (f"column {column!r} holds a value of type {type_name(value)} in row {n}, "
                    "which DuckDB cannot store as such")
        seen_kind, seen_row = first_seen.setdefault(column, (kind, n))
        if seen_kind != kind:
            return (f"column {column!r} holds {seen_kind} in row {seen_row} and {kind} in row {n}, "
                    "which DuckDB would store as one type (make the column one type, or pass "
                    "a pyarrow Table with a schema)")
    return None


def _rows_problem(rows: list[dict]) -> str | None:
    for n, row in enumerate(rows):
        bad = next((k for k in row if type(k) is not str), None)
        if bad is not None:
            return f"row {n} has the key {bad!r}; column names must be strings"
    if not any(rows):
        return "the rows have no columns"
    return _cells_problem((k, n, v) for n, row in enumerate(rows) for k, v in row.items()
                          if v is not None)


def _table_problem(kind: str, data: Any) -> str | None:
    return _rows_problem(data) if kind == "rows" else _frame_problem(data) if kind == "pandas" else None


def _frame_problem(frame: Any) -> str | None:
    """Check the object columns of a pandas DataFrame (typed columns convert faithfully)."""
    pd = sys.modules["pandas"]
    return _cells_problem(
        (column, n, v) for column in frame.columns if frame[column].dtype == object
        for n, v in enumerate(frame[column])
        if not (v is None or v is pd.NA or v is pd.NaT or (type(v) is float and v != v)))


_TABLE_KINDS = "a DuckDB relation, a pyarrow Table, a pandas DataFrame or a non-empty list of dicts"


def _write_table(data: Any, tmp: Path, fmt: CheckpointFormat) -> int:
    """Store ``data`` as table ``data`` of a DuckDB file, or COPY it to Parquet; return the rows."""
    kind = _table_kind(data)
    problem = f"{fmt.name} holds tables ({_TABLE_KINDS})" if kind is None else _table_problem(kind, data)
    if problem:
        raise _cannot_hold(data, fmt, problem)
    import duckdb

    con = duckdb.connect(str(tmp) if fmt is CheckpointFormat.DUCKDB else ":memory:")
    try:
        if kind == "rows":
            select, params = "SELECT unnest(r) FROM (SELECT unnest(?) AS r)", [data]
        else:
            con.register("src", data.to_arrow_reader() if kind == "relation" else data)
            select, params = 'SELECT * FROM "src"', []
        if fmt is CheckpointFormat.DUCKDB:
            con.execute(f'CREATE TABLE "{TABLE_NAME}" AS {select}', params)
            return con.execute(f'SELECT count(*) FROM "{TABLE_NAME}"').fetchone()[0]
        return con.execute(f"COPY ({select}) TO ? (FORMAT parquet)", [*params, str(tmp)]).fetchone()[0]
    except duckdb.Error as exc:
        raise _cannot_hold(data, fmt, f"DuckDB refused it ({str(exc).splitlines()[0]})",
                           tables_tried=True) from exc
    finally:
        con.close()


def _cannot_hold(data: Any, fmt: CheckpointFormat, reason: str, *,
                 tables_tried: bool = False) -> CheckpointError:
    """The error for data ``fmt`` cannot hold, naming the formats that can."""
    others = [f for f in _formats_that_hold(data, tables_tried) if f is not fmt]
    fix = ("use a format that can: " + ", ".join(f"CheckpointFormat.{f.name}" for f in others)
           if others else "no checkpoint format can hold it; convert it to a table, plain JSON "
           "values or a picklable object first")
    return CheckpointError(f"cannot checkpoint a {type_name(data)} as {fmt.name}: {reason}; {fix}")


def _formats_that_hold(data: Any, tables_tried: bool) -> list[CheckpointFormat]:
    kind = _table_kind(data)
    found = []
    if not tables_tried and kind and _table_problem(kind, data) is None:
        found += TABLE_FORMATS
    try:
        json_encode(data, "data")
        found.append(CheckpointFormat.JSON)
    except NotJson:
        pass
    if _picklable(data):
        found += PICKLE_FORMATS
    return found


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return digest, os.fstat(f.fileno()).st_size


# -- verifying and reading -----------------------------------------------------------

def verify_file(path: Path, recorded: int, sha256: str, label: str, *,
                keep: bool) -> tuple[str | None, bytes | None]:
    """(problem, bytes): compare the file with the recorded size and SHA-256.

    ``label`` starts the problem text.  With ``keep`` the file is read once and
    the verified bytes are returned, so what is deserialised is exactly what
    was hashed.
    """
    blob = None
    try:
        size = path.stat().st_size
        if size == recorded:
            if keep:
                blob = path.read_bytes()
                size, digest = len(blob), hashlib.sha256(blob).hexdigest()
            else:
                digest, size = sha256_file(path)
    except FileNotFoundError:
        return f"{label} is missing", None
    except OSError as exc:
        return f"{label} cannot be read ({exc.strerror})", None
    if size != recorded:
        what = "truncated" if size < recorded else "longer than recorded"
        return f"{label} is {what} ({size} bytes on disk, {recorded} recorded)", None
    if digest != sha256:
        return f"{label} was altered (SHA-256 {digest} on disk, {sha256} recorded)", None
    return None, blob


def read_data(fmt: CheckpointFormat, blob: bytes | None, path: Path) -> Any:
    """Turn verified bytes (or the verified table file at ``path``) back into data."""
    if fmt is CheckpointFormat.JSON:
        return json.loads(blob)
    if fmt is CheckpointFormat.PICKLE:
        return pickle.loads(blob)
    if fmt is CheckpointFormat.COMPRESSED_PICKLE:
        with gzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as f:
            return pickle.load(f)
    return _open_table(fmt, path)


def _open_table(fmt: CheckpointFormat, path: Path) -> Any:
    """A DuckDB relation over the checkpoint; it keeps its connection alive.

    DUCKDB files are opened read-only; PARQUET is read into an in-memory table,
    so the relation never sees a file changed after verification.
    """
    import duckdb

    if fmt is CheckpointFormat.DUCKDB:
        return duckdb.connect(str(path), read_only=True).table(TABLE_NAME)
    con = duckdb.connect()
    con.execute(f'CREATE TABLE "{TABLE_NAME}" AS SELECT * FROM read_parquet(?)', [str(path)])
    return con.table(TABLE_NAME)


# -- messages ---------------------------------------------------------------------

def type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


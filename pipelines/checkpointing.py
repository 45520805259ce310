"""Checkpoints: a stage's output saved to a file, indexed in SQLite, verified on load.

    mgr = CheckpointManager(Path("checkpoints"))
    meta = mgr.create_checkpoint("health", "transform", table, version="v1.2.0")
    data, meta = mgr.load_checkpoint("health", "transform", strategy=RecoveryStrategy.LATEST)

Each checkpoint is one file under ``<checkpoint_dir>/<pipeline>/<stage>/``,
written atomically (temp file, fsync, rename), and one row of the index
``<checkpoint_dir>/checkpoints.db`` holding its size and SHA-256.  The file is
checked against both before anything is deserialised: an altered pickle is
never unpickled.  Names of pipelines and stages only reach file names through
:func:`_slug`, so no name can point outside the checkpoint directory.
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
import re
import sqlite3
import sys
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import structlog

from state.db import connect, ensure_dir, translate, write_transaction
from state.log import format_ts, utc_now
from state.migrations import Migration, migrate

from .errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound

INDEX_DB = "checkpoints.db"
#: The table inside a DUCKDB checkpoint file.
TABLE_NAME = "data"

log = structlog.get_logger("pipelines.checkpointing")

__all__ = ["CheckpointFormat", "CheckpointManager", "CheckpointMetadata", "CheckpointValidation",
           "RecoveryStrategy", "INDEX_DB", "TABLE_NAME"]


class CheckpointFormat(enum.Enum):
    DUCKDB = "duckdb"
    PARQUET = "parquet"
    JSON = "json"
    PICKLE = "pickle"
    COMPRESSED_PICKLE = "compressed_pickle"


class RecoveryStrategy(enum.Enum):
    LATEST = "latest"        # the newest checkpoint; a corrupt one is an error
    STABLE = "stable"        # the newest checkpoint that verifies
    VERSIONED = "versioned"  # the newest checkpoint with the given version


_SUFFIX = {
    CheckpointFormat.DUCKDB: ".duckdb",
    CheckpointFormat.PARQUET: ".parquet",
    CheckpointFormat.JSON: ".json",
    CheckpointFormat.PICKLE: ".pkl",
    CheckpointFormat.COMPRESSED_PICKLE: ".pkl.gz",
}
_TABLE_FORMATS = (CheckpointFormat.DUCKDB, CheckpointFormat.PARQUET)
_PICKLE_FORMATS = (CheckpointFormat.PICKLE, CheckpointFormat.COMPRESSED_PICKLE)


@dataclass(frozen=True)
class CheckpointMetadata:
    """One checkpoint as the index records it.

    ``data_size_bytes`` is the serialised size before compression (JSON and
    pickles); ``row_count`` the number of rows (DUCKDB and PARQUET).
    ``skipped_checkpoints`` lists the newer checkpoints that
    ``RecoveryStrategy.STABLE`` passed over because they failed verification.
    """

    checkpoint_id: str
    pipeline_name: str
    stage_name: str
    format: CheckpointFormat
    version: str | None
    created_at: datetime
    file_path: Path
    size_bytes: int
    sha256: str
    data_size_bytes: int | None = None
    row_count: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped_checkpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckpointValidation:
    checkpoint_id: str
    is_valid: bool
    errors: list[str]


def _create_index(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE checkpoints (
            seq INTEGER PRIMARY KEY,
            checkpoint_id TEXT NOT NULL UNIQUE,
            pipeline_name TEXT NOT NULL,
            stage_name TEXT NOT NULL,
            format TEXT NOT NULL,
            version TEXT,
            created_at TEXT NOT NULL,
            file_path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            data_size_bytes INTEGER,
            row_count INTEGER,
            metadata TEXT NOT NULL
        )""")
    conn.execute("CREATE INDEX checkpoints_by_stage "
                 "ON checkpoints(pipeline_name, stage_name, created_at, seq)")


_MIGRATIONS = (Migration("0001_checkpoint_index", _create_index),)
_COLUMNS = ("checkpoint_id", "pipeline_name", "stage_name", "format", "version", "created_at",
            "file_path", "size_bytes", "sha256", "data_size_bytes", "row_count", "metadata")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM checkpoints"
_INSERT = f"INSERT INTO checkpoints ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_NEWEST_FIRST = " ORDER BY created_at DESC, seq DESC"


class CheckpointManager:
    """Create, load, verify and expire checkpoints under ``checkpoint_dir``.

    Safe to share between threads; several processes may use the same
    directory at once (the index is SQLite in WAL mode, file names are unique).
    ``max_checkpoints`` and ``retention_days`` apply per pipeline and stage;
    ``None`` switches a limit off.  ``clock`` returns aware UTC datetimes.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str],
        default_format: CheckpointFormat | str = CheckpointFormat.COMPRESSED_PICKLE,
        max_checkpoints: int | None = 10,
        retention_days: float | None = 7,
        clock: Callable[[], datetime] | None = None,
    ):
        self.checkpoint_dir = Path(checkpoint_dir).resolve()
        self.default_format = _as_enum(CheckpointFormat, default_format, "default_format")
        self.max_checkpoints = _check_count(max_checkpoints)
        self.retention_days = _check_days(retention_days)
        self._clock = clock or utc_now
        self._db_path = ensure_dir(self.checkpoint_dir) / INDEX_DB
        self._lock = threading.Lock()
        self._conn = connect(self._db_path)
        migrate(self._conn, self._db_path, _MIGRATIONS)

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.checkpoint_dir)!r})"

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- creating ---------------------------------------------------------

    def create_checkpoint(
        self,
        pipeline_name: str,
        stage_name: str,
        data: Any,
        version: str | None = None,
        format: CheckpointFormat | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CheckpointMetadata:
        """Write ``data`` to a new checkpoint file, index it, then apply retention."""
        _check_name(pipeline_name, "pipeline_name")
        _check_name(stage_name, "stage_name")
        if version is not None and not isinstance(version, str):
            raise CheckpointError(f"version must be a string such as 'v1.2.0', got {version!r}")
        fmt = self.default_format if format is None else _as_enum(CheckpointFormat, format, "format")
        extra = _metadata_json(metadata)
        created = self._now()
        checkpoint_id = f"{created:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:16]}"
        folder = ensure_dir(self.checkpoint_dir / _slug(pipeline_name) / _slug(stage_name))
        path = folder / f"{checkpoint_id}{_SUFFIX[fmt]}"
        data_size, rows, sha256, size = _write_atomically(path, fmt, data)
        meta = CheckpointMetadata(
            checkpoint_id, pipeline_name, stage_name, fmt, version, created, path, size, sha256,
            data_size, rows, json.loads(extra))
        try:
            with self._write("create checkpoint") as conn:
                conn.execute(_INSERT, (
                    checkpoint_id, pipeline_name, stage_name, fmt.value, version, format_ts(created),
                    path.relative_to(self.checkpoint_dir).as_posix(), size, sha256, data_size, rows,
                    extra))
                expired = self._expire_txn(conn, pipeline_name, stage_name, created,
                                           self.max_checkpoints, self.retention_days)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("checkpoint_created", checkpoint_id=checkpoint_id, pipeline=pipeline_name,
                 stage=stage_name, format=fmt.value, size_bytes=size)
        self._remove_files(expired)
        return meta

    # -- loading ----------------------------------------------------------

    def load_checkpoint(
        self,
        pipeline_name: str,
        stage_name: str,
        strategy: RecoveryStrategy | str = RecoveryStrategy.LATEST,
        version: str | None = None,
    ) -> tuple[Any, CheckpointMetadata]:
        """Return ``(data, metadata)`` of the checkpoint that ``strategy`` picks."""
        _check_name(pipeline_name, "pipeline_name")
        _check_name(stage_name, "stage_name")
        strategy = _as_enum(RecoveryStrategy, strategy, "strategy")
        if strategy is RecoveryStrategy.VERSIONED and version is None:
            raise CheckpointError(
                f"RecoveryStrategy.VERSIONED needs a version; call load_checkpoint({pipeline_name!r}, "
                f"{stage_name!r}, strategy=RecoveryStrategy.VERSIONED, version='...')")
        if strategy is not RecoveryStrategy.VERSIONED and version is not None:
            raise CheckpointError(
                f"version={version!r} is only used with RecoveryStrategy.VERSIONED; pass "
                f"strategy=RecoveryStrategy.VERSIONED, or leave version out")
        found = self._select(pipeline_name=pipeline_name, stage_name=stage_name, version=version)
        if not found:
            raise self._no_checkpoint(pipeline_name, stage_name, version)
        if strategy is not RecoveryStrategy.STABLE:
            return self._load(found[0])
        return self._load_stable(found)

    def load_checkpoint_by_id(self, checkpoint_id: str) -> tuple[Any, CheckpointMetadata]:
        return self._load(self._get(checkpoint_id))

    def _load(self, meta: CheckpointMetadata) -> tuple[Any, CheckpointMetadata]:
        problem, blob = _check_file(meta, keep=meta.format not in _TABLE_FORMATS)
        if problem:
            raise CheckpointCorrupt(f"{problem}; restore the file from a backup, or drop the "
                                    f"checkpoint with delete_checkpoint({meta.checkpoint_id!r})")
        return _deserialise(meta, blob), meta

    def _load_stable(self, found: list[CheckpointMetadata]) -> tuple[Any, CheckpointMetadata]:
        problems: list[str] = []
        skipped: list[str] = []
        for meta in found:
            problem, blob = _check_file(meta, keep=meta.format not in _TABLE_FORMATS)
            if problem is None:
                meta = replace(meta, skipped_checkpoints=tuple(skipped))
                return _deserialise(meta, blob), meta
            log.warning("checkpoint_skipped", checkpoint_id=meta.checkpoint_id,
                        pipeline=meta.pipeline_name, stage=meta.stage_name, problem=problem)
            problems.append(problem)
            skipped.append(meta.checkpoint_id)
        first = found[0]
        raise CheckpointCorrupt(
            f"none of the {len(found)} checkpoints of stage {first.stage_name!r} of pipeline "
            f"{first.pipeline_name!r} passes verification: {'; '.join(problems)}; restore the files "
            "from a backup, or drop them with delete_checkpoint(id)")

    # -- inspecting and removing -------------------------------------------

    def list_checkpoints(self, pipeline_name: str | None = None,
                         stage_name: str | None = None) -> list[CheckpointMetadata]:
        """Checkpoints in the index, newest first."""
        return self._select(pipeline_name=pipeline_name, stage_name=stage_name)

    def validate_checkpoint(self, checkpoint_id: str) -> CheckpointValidation:
        """Check the file against the recorded size and SHA-256 (nothing is deserialised)."""
        problem, _ = _check_file(self._get(checkpoint_id), keep=False)
        return CheckpointValidation(checkpoint_id, problem is None, [problem] if problem else [])

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Remove the index row, then the file."""
        with self._write("delete checkpoint") as conn:
            row = conn.execute("SELECT file_path FROM checkpoints WHERE checkpoint_id = ?",
                               (checkpoint_id,)).fetchone()
            if row is None:
                raise self._unknown_id(checkpoint_id)
            conn.execute("DELETE FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,))
        self._remove_files([(checkpoint_id, row[0])])

    def cleanup(self, max_checkpoints: int | None = None, retention_days: float | None = None,
                pipeline_name: str | None = None) -> list[str]:
        """Apply retention to every pipeline and stage (or those of ``pipeline_name``).

        Limits left as ``None`` take the manager's; returns the deleted ids.
        """
        keep = self.max_checkpoints if max_checkpoints is None else _check_count(max_checkpoints)
        days = self.retention_days if retention_days is None else _check_days(retention_days)
        now = self._now()
        expired: list[tuple[str, str]] = []
        with self._write("checkpoint cleanup") as conn:
            groups = conn.execute(
                "SELECT DISTINCT pipeline_name, stage_name FROM checkpoints"
                + (" WHERE pipeline_name = ?" if pipeline_name is not None else ""),
                () if pipeline_name is None else (pipeline_name,)).fetchall()
            for pipeline, stage in groups:
                expired += self._expire_txn(conn, pipeline, stage, now, keep, days)
        self._remove_files(expired)
        return [checkpoint_id for checkpoint_id, _ in expired]

    # -- the index ----------------------------------------------------------

    def _expire_txn(self, conn: sqlite3.Connection, pipeline: str, stage: str, now: datetime,
                    keep: int | None, days: float | None) -> list[tuple[str, str]]:
        """Delete the index rows that retention drops; return their (id, file) pairs."""
        cutoff = None if days is None else format_ts(now - timedelta(days=days))
        rows = conn.execute(
            "SELECT checkpoint_id, file_path, created_at FROM checkpoints "
            "WHERE pipeline_name = ? AND stage_name = ?" + _NEWEST_FIRST, (pipeline, stage)).fetchall()
        expired = [(cid, path) for n, (cid, path, created) in enumerate(rows)
                   if (keep is not None and n >= keep) or (cutoff is not None and created < cutoff)]
        conn.executemany("DELETE FROM checkpoints WHERE checkpoint_id = ?",
                         [(cid,) for cid, _ in expired])
        return expired

    def _remove_files(self, expired: list[tuple[str, str]]) -> None:
        for checkpoint_id, rel_path in expired:
            try:
                (self.checkpoint_dir / rel_path).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("checkpoint_file_not_removed", checkpoint_id=checkpoint_id,
                            path=str(self.checkpoint_dir / rel_path), error=exc.strerror)
            else:
                log.info("checkpoint_deleted", checkpoint_id=checkpoint_id)

    @contextmanager
    def _write(self, op: str) -> Iterator[sqlite3.Connection]:
        with self._lock, write_transaction(self._conn, self._db_path, op=op) as conn:
            yield conn

    def _select(self, **where: str | None) -> list[CheckpointMetadata]:
        bound = {column: value for column, value in where.items() if value is not None}
        sql = _SELECT
        if bound:
            sql += " WHERE " + " AND ".join(f'"{column}" = ?' for column in bound)
        try:
            with self._lock:
                rows = self._conn.execute(sql + _NEWEST_FIRST, tuple(bound.values())).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self._db_path, "read checkpoint index") from exc
        return [self._metadata(row) for row in rows]

    def _get(self, checkpoint_id: str) -> CheckpointMetadata:
        _check_name(checkpoint_id, "checkpoint_id")
        found = self._select(checkpoint_id=checkpoint_id)
        if not found:
            raise self._unknown_id(checkpoint_id)
        return found[0]

    def _metadata(self, row: tuple) -> CheckpointMetadata:
        (cid, pipeline, stage, fmt, version, created, rel_path, size, sha256, data_size, rows,
         extra) = row
        return CheckpointMetadata(
            cid, pipeline, stage, CheckpointFormat(fmt), version, datetime.fromisoformat(created),
            self.checkpoint_dir / rel_path, size, sha256, data_size, rows, json.loads(extra))

    def _unknown_id(self, checkpoint_id: str) -> CheckpointNotFound:
        return CheckpointNotFound(
            f"no checkpoint with id {checkpoint_id!r} in {self.checkpoint_dir}; "
            "see the ones that exist with list_checkpoints()")

    def _no_checkpoint(self, pipeline: str, stage: str, version: str | None) -> CheckpointNotFound:
        if version is None:
            return CheckpointNotFound(
                f"no checkpoint for stage {stage!r} of pipeline {pipeline!r} in {self.checkpoint_dir}; "
                "create one with create_checkpoint(), or check the names with list_checkpoints()")
        versions = sorted({m.version for m in self._select(pipeline_name=pipeline, stage_name=stage)
                           if m.version is not None})
        recorded = ", ".join(map(repr, versions)) if versions else "none"
        return CheckpointNotFound(
            f"no checkpoint with version {version!r} for stage {stage!r} of pipeline {pipeline!r}; "
            f"versions recorded: {recorded}")

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None or now.utcoffset() is None:
            raise CheckpointError(
                f"the clock returned {now!r}, a time without a time zone; pass a clock that "
                "returns aware UTC times, such as lambda: datetime.now(timezone.utc)")
        return now.astimezone(timezone.utc)


# -- names and arguments -------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(name: str) -> str:
    """One safe path component for ``name``: no separators, no leading dot, bounded length.

    Different names may share a folder ("a/b", "a_b"); files never collide
    because their names are the unique checkpoint ids.
    """
    slug = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if len(slug) > 64:
        slug = f"{slug[:48]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return slug


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise CheckpointError(f"{what} must be a non-empty string, got {value!r}")


def _check_count(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise CheckpointError(f"max_checkpoints={value!r} is not allowed; use a whole number of "
                          "checkpoints to keep per stage, at least 1 (or None for no limit)")


def _check_days(value: Any) -> float | None:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                         and math.isfinite(value) and value > 0):
        return value
    raise CheckpointError(f"retention_days={value!r} is not allowed; use a positive number of "
                          "days (or None to keep checkpoints of any age)")


def _as_enum(cls: type[enum.Enum], value: Any, what: str) -> Any:
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if value.lower() in (member.value, member.name.lower()):
                return member
    choices = ", ".join(f"{cls.__name__}.{m.name}" for m in cls)
    raise CheckpointError(f"{what}={value!r} is not a {cls.__name__}; use one of {choices}")


def _type_name(value: Any) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _metadata_json(metadata: Any) -> str:
    if metadata is None:
        return "{}"
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"metadata must be a dict of plain JSON values, got a {_type_name(metadata)}")
    try:
        return _json_encode(metadata, "metadata").decode()
    except _NotJson as exc:
        raise CheckpointError(f"metadata must hold plain JSON values, but {exc}; convert it "
                              "(e.g. dates to ISO 8601 strings)") from None


# -- writing ----------------------------------------------------------------------

def _write_atomically(path: Path, fmt: CheckpointFormat,
                      data: Any) -> tuple[int | None, int | None, str, int]:
    """Write ``data`` to a temp file beside ``path``, fsync, hash, rename.

    Returns (data_size_bytes, row_count, sha256, size_bytes).  On any failure
    the temp file is removed and ``path`` does not exist.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if fmt in _TABLE_FORMATS:
            data_size, rows = None, _write_table(data, tmp, fmt)
        elif fmt is CheckpointFormat.JSON:
            data_size, rows = _write_json(data, tmp), None
        else:
            data_size, rows = _write_pickle(data, tmp, fmt), None
        _fsync(tmp)
        sha256, size = _sha256_file(tmp)
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


class _NotJson(ValueError):
    """``data`` holds something JSON would lose or change; the message says where."""


def _json_encode(value: Any, where: str) -> bytes:
    """Encode plain JSON values only: no tuples, sets, dates, NaN or non-string keys."""
    stack, seen = [(value, where)], set()
    while stack:
        item, path = stack.pop()
        kind = type(item)
        if item is None or kind in (str, int, bool) or (kind is float and math.isfinite(item)):
            continue
        if kind is float:
            raise _NotJson(f"{path} is {item!r}, which JSON cannot hold")
        if kind not in (list, dict):
            raise _NotJson(f"{path} is a {_type_name(item)}, which JSON cannot hold")
        if id(item) in seen:  # shared or circular; json.dumps below refuses a cycle
            continue
        seen.add(id(item))
        if kind is dict:
            bad = next((k for k in item if type(k) is not str), None)
            if bad is not None:
                raise _NotJson(f"{path} has the key {bad!r}, which JSON would turn into a string")
            children = [(x, f"{path}[{k!r}]") for k, x in item.items()]
        else:
            children = [(x, f"{path}[{i}]") for i, x in enumerate(item)]
        stack.extend(reversed(children))
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        raise _NotJson(f"{where} holds a circular reference") from None
    except RecursionError:
        raise _NotJson(f"{where} is nested too deeply for JSON") from None


def _write_json(data: Any, tmp: Path) -> int:
    try:
        blob = _json_encode(data, "data")
    except _NotJson as exc:
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
            return (f"column {column!r} holds a value of type {_type_name(value)} in row {n}, "
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
    return CheckpointError(f"cannot checkpoint a {_type_name(data)} as {fmt.name}: {reason}; {fix}")


def _formats_that_hold(data: Any, tables_tried: bool) -> list[CheckpointFormat]:
    kind = _table_kind(data)
    found = []
    if not tables_tried and kind and _table_problem(kind, data) is None:
        found += _TABLE_FORMATS
    try:
        _json_encode(data, "data")
        found.append(CheckpointFormat.JSON)
    except _NotJson:
        pass
    if _picklable(data):
        found += _PICKLE_FORMATS
    return found


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return digest, os.fstat(f.fileno()).st_size


# -- verifying and reading -----------------------------------------------------------

def _check_file(meta: CheckpointMetadata, *, keep: bool) -> tuple[str | None, bytes | None]:
    """(problem, bytes): compare the file with the recorded size and SHA-256.

    With ``keep`` the file is read once and the verified bytes are returned,
    so what is deserialised is exactly what was hashed.
    """
    path, recorded = meta.file_path, meta.size_bytes
    label = (f"checkpoint {meta.checkpoint_id!r} of stage {meta.stage_name!r} of pipeline "
             f"{meta.pipeline_name!r}: file {path}")
    blob = None
    try:
        size = path.stat().st_size
        if size == recorded:
            if keep:
                blob = path.read_bytes()
                size, digest = len(blob), hashlib.sha256(blob).hexdigest()
            else:
                digest, size = _sha256_file(path)
    except FileNotFoundError:
        return f"{label} is missing", None
    except OSError as exc:
        return f"{label} cannot be read ({exc.strerror})", None
    if size != recorded:
        what = "truncated" if size < recorded else "longer than recorded"
        return f"{label} is {what} ({size} bytes on disk, {recorded} recorded)", None
    if digest != meta.sha256:
        return f"{label} was altered (SHA-256 {digest} on disk, {meta.sha256} recorded)", None
    return None, blob


def _deserialise(meta: CheckpointMetadata, blob: bytes | None) -> Any:
    """Turn verified bytes (or a verified table file) back into data."""
    try:
        if meta.format is CheckpointFormat.JSON:
            return json.loads(blob)
        if meta.format is CheckpointFormat.PICKLE:
            return pickle.loads(blob)
        if meta.format is CheckpointFormat.COMPRESSED_PICKLE:
            with gzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as f:
                return pickle.load(f)
        return _open_table(meta)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {meta.checkpoint_id!r} ({meta.file_path}) passed verification but could "
            f"not be read back as {meta.format.name}: {type(exc).__name__}: {exc}; if it holds "
            "objects of your own classes, make sure they can be imported here") from exc


def _open_table(meta: CheckpointMetadata) -> Any:
    """A DuckDB relation over the checkpoint; it keeps its connection alive.

    DUCKDB files are opened read-only; PARQUET is read into an in-memory table,
    so the relation never sees a file changed after verification.
    """
    import duckdb

    if meta.format is CheckpointFormat.DUCKDB:
        return duckdb.connect(str(meta.file_path), read_only=True).table(TABLE_NAME)
    con = duckdb.connect()
    con.execute(f'CREATE TABLE "{TABLE_NAME}" AS SELECT * FROM read_parquet(?)', [str(meta.file_path)])
    return con.table(TABLE_NAME)

"""Checkpoints: a stage's output saved to a file, indexed in SQLite, verified on load.

    mgr = CheckpointManager(Path("checkpoints"))
    meta = mgr.create_checkpoint("health", "transform", table, version="v1.2.0")
    data, meta = mgr.load_checkpoint("health", "transform", strategy=RecoveryStrategy.LATEST)

Each checkpoint is one file under ``<checkpoint_dir>/<pipeline>/<stage>/``,
written atomically (temp file, fsync, rename), and one row of the index
``<checkpoint_dir>/checkpoints.db`` holding its size and SHA-256.  The file is
checked against both before anything is deserialised: an altered pickle is
never unpickled.  Names of pipelines and stages only reach file names through
:func:`~pipelines.checkpointing.arguments.slug`, so no name can point outside the checkpoint directory.

This module holds the manager and its index; writing, verifying and reading
the files in each :class:`CheckpointFormat` is :mod:`pipelines.checkpointing.formats`.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from state.db import connect, ensure_dir, translate, write_transaction
from state import format_ts, utc_now
from state.migrations import Migration, migrate

from ..errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound
from ..logs import get_logger
from .arguments import as_enum, check_count, check_days, check_name, metadata_json, slug
from .formats import (SUFFIX, TABLE_FORMATS, CheckpointFormat, read_data, verify_file, write_atomically)

INDEX_DB = "checkpoints.db"

log = get_logger("pipelines.checkpointing")


class RecoveryStrategy(enum.Enum):
    LATEST = "latest"        # the newest checkpoint; a corrupt one is an error
    STABLE = "stable"        # the newest checkpoint that verifies
    VERSIONED = "versioned"  # the newest checkpoint with the given version


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
        self.default_format = as_enum(CheckpointFormat, default_format, "default_format")
        self.max_checkpoints = check_count(max_checkpoints)
        self.retention_days = check_days(retention_days)
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
        check_name(pipeline_name, "pipeline_name")
        check_name(stage_name, "stage_name")
        if version is not None and not isinstance(version, str):
            raise CheckpointError(f"version must be a string such as 'v1.2.0', got {version!r}")
        fmt = self.default_format if format is None else as_enum(CheckpointFormat, format, "format")
        extra = metadata_json(metadata)
        created = self._now()
        checkpoint_id = f"{created:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:16]}"
        folder = ensure_dir(self.checkpoint_dir / slug(pipeline_name) / slug(stage_name))
        path = folder / f"{checkpoint_id}{SUFFIX[fmt]}"
        data_size, rows, sha256, size = write_atomically(path, fmt, data)
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
        check_name(pipeline_name, "pipeline_name")
        check_name(stage_name, "stage_name")
        strategy = as_enum(RecoveryStrategy, strategy, "strategy")
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
        problem, blob = _check_file(meta, keep=meta.format not in TABLE_FORMATS)
        if problem:
            raise CheckpointCorrupt(f"{problem}; restore the file from a backup, or drop the "
                                    f"checkpoint with delete_checkpoint({meta.checkpoint_id!r})")
        return _deserialise(meta, blob), meta

    def _load_stable(self, found: list[CheckpointMetadata]) -> tuple[Any, CheckpointMetadata]:
        problems: list[str] = []
        skipped: list[str] = []
        for meta in found:
            problem, blob = _check_file(meta, keep=meta.format not in TABLE_FORMATS)
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
        keep = self.max_checkpoints if max_checkpoints is None else check_count(max_checkpoints)
        days = self.retention_days if retention_days is None else check_days(retention_days)
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
        check_name(checkpoint_id, "checkpoint_id")
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


# -- verifying and reading -----------------------------------------------------------

def _check_file(meta: CheckpointMetadata, *, keep: bool) -> tuple[str | None, bytes | None]:
    """(problem, bytes): compare the file with the size and SHA-256 the index recorded."""
    label = (f"checkpoint {meta.checkpoint_id!r} of stage {meta.stage_name!r} of pipeline "
             f"{meta.pipeline_name!r}: file {meta.file_path}")
    return verify_file(meta.file_path, meta.size_bytes, meta.sha256, label, keep=keep)


def _deserialise(meta: CheckpointMetadata, blob: bytes | None) -> Any:
    """Turn verified bytes (or a verified table file) back into data."""
    try:
        return read_data(meta.format, blob, meta.file_path)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {meta.checkpoint_id!r} ({meta.file_path}) passed verification but could "
            f"not be read back as {meta.format.name}: {type(exc).__name__}: {exc}; if it holds "
            "objects of your own classes, make sure they can be imported here") from exc

"""SQLite connections and write transactions, in one place.

``connect()`` sets every pragma; ``write_transaction()`` is the one
``BEGIN IMMEDIATE`` helper, and it turns sqlite3 errors into the project's own
exceptions so that callers never see a bare ``database is locked``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import DatabaseDamaged, DiskFull, EventLogError, StateDirError

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
DEFAULT_BUSY_TIMEOUT_S = 60.0


def connect(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "FULL",
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
    readonly: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` with the project's pragmas: WAL, ``synchronous``, busy timeout.

    The connection is in autocommit mode (``isolation_level=None``); writes go
    through :func:`write_transaction`, which issues ``BEGIN IMMEDIATE``.
    """
    sync = synchronous.upper()
    if sync not in SYNCHRONOUS_MODES:
        raise EventLogError(
            f"synchronous={synchronous!r} is not a SQLite synchronous mode; "
            f"use one of {', '.join(SYNCHRONOUS_MODES)} (FULL is the safe default)"
        )
    path = Path(path)
    try:
        if readonly:
            conn = sqlite3.connect(  # as_uri(): a '?', '#' or '%' in the path stays in it
                path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                timeout=busy_timeout, check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
            )
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if not readonly:
            mode = _journal_mode_wal(conn, busy_timeout)
            if str(mode).lower() != "wal":
                raise EventLogError(
                    f"{path}: SQLite refused WAL mode (got {mode!r}); the state directory "
                    "must be on a local file system that supports shared memory"
                )
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.Error as exc:
        raise translate(exc, path, "open") from exc
    return conn


def _journal_mode_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """``PRAGMA journal_mode=WAL``, waiting up to ``busy_timeout`` for other connections.

    SQLite answers "database is locked" at once, without its busy handler, when another
    connection holds the file while the mode is set: two threads or processes opening a new
    state directory at the same moment (7 rounds of 60 with four threads) failed here."""
    def wal() -> str:
        return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]

    try:
        return wal()
    except sqlite3.OperationalError as exc:
        return _again_while_locked(wal, exc, busy_timeout)


def _again_while_locked(statement: Callable[[], Any], first: sqlite3.OperationalError,
                        busy_timeout: float) -> Any:
    """``statement()`` again, backing off, for as long as SQLite answers locked or busy without
    having waited itself (``first`` was its first answer), up to ``busy_timeout``; what it
    returns, or the last error raised."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    exc = first
    while True:
        low = str(exc).lower()
        if not (("locked" in low or "busy" in low) and time.monotonic() < deadline):
            raise exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        try:
            return statement()
        except sqlite3.OperationalError as again:
            exc = again


def translate(exc: sqlite3.Error, path: str | os.PathLike[str], op: str) -> Exception:
    """Turn a sqlite3 error into a project error whose message says what to do."""
    msg = str(exc)
    low = msg.lower()
    where = Path(path)
    if "disk is full" in low or "database or disk is full" in low or getattr(exc, "sqlite_errorcode", None) == 13:
        return DiskFull(
            f"the disk holding {where} is full ({op} refused, nothing was written); "
            f"free some space on {where.parent} (see `df -h {where.parent}`) and try again"
        )
    if "readonly" in low or "read-only" in low:
        return StateDirError(
            f"{where} is read-only for this user ({op} refused); give the user running ahgd "
            f"write access to {where.parent}, or use another --state-dir"
        )
    if "unable to open" in low:
        return StateDirError(
            f"cannot open {where} ({msg}); check that {where.parent} exists and is writable, "
            "or use another --state-dir"
        )
    if "locked" in low or "busy" in low:
        return EventLogError(
            f"{where} stayed locked by another process for longer than the busy timeout "
            f"({op}); find it with `fuser {where}` or raise busy_timeout"
        )
    if "malformed" in low or "not a database" in low:
        return DatabaseDamaged(
            f"{where} is damaged: SQLite says {msg!r} ({op} refused; nothing was written to it). "
            "Stop what uses it and restore it from a backup"
            + ("; `ahgd state check` says how many of its events can still be read and how to "
               "salvage them" if where.name == "history.db" else ""),
            path=where, sqlite_error=msg,
        )
    return EventLogError(f"{op} on {where} failed: {msg}")


def begin_immediate(
    conn: sqlite3.Connection,
    path: str | os.PathLike[str],
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
    op: str = "write",
    cursor: sqlite3.Cursor | None = None,
) -> None:
    """``BEGIN IMMEDIATE``: take the write lock now, waiting up to ``busy_timeout``.

    The busy handler already waits; this loop covers the few SQLITE_BUSY cases
    that bypass it (WAL recovery after a crash), up to the same deadline.
    ``cursor``: a cursor of ``conn`` kept for the caller's statements (the event log's
    appends: a new cursor per statement was a measurable share of one).
    """
    try:
        (cursor or conn).execute("BEGIN IMMEDIATE")
        return
    except sqlite3.OperationalError as first:
        try:
            _again_while_locked(lambda: conn.execute("BEGIN IMMEDIATE"), first, busy_timeout)
        except sqlite3.OperationalError as exc:
            raise translate(exc, path, op) from exc


def commit(conn: sqlite3.Connection, path: str | os.PathLike[str], op: str = "write",
           cursor: sqlite3.Cursor | None = None) -> None:
    """``COMMIT``, rolled back and translated if SQLite refuses (disk full, I/O error)."""
    try:
        (cursor or conn).execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise translate(exc, path, op) from exc


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@contextmanager
def write_transaction(
    conn: sqlite3.Connection,
    path: str | os.PathLike[str],
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
    op: str = "write",
) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception."""
    begin_immediate(conn, path, busy_timeout=busy_timeout, op=op)
    try:
        yield conn
    except BaseException:
        rollback(conn)
        raise
    commit(conn, path, op)


@contextmanager
def read_transaction(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot for several SELECTs (WAL readers never block writers)."""
    try:
        conn.execute("BEGIN")
    except sqlite3.Error as exc:
        raise translate(exc, path, "read") from exc
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # a read: nothing to keep; and the first error is the one to see
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:
        conn.execute("COMMIT")


def ensure_dir(path: Path) -> Path:
    """Create a state sub-directory, with an error that says what to do if we cannot."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError as exc:
        raise StateDirError(
            f"cannot create {path}: permission denied; give the user running ahgd write "
            f"access to {path.parent}, or use another --state-dir"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"cannot create {path}: the disk is full; free some space and retry") from exc
        raise StateDirError(f"cannot create {path}: {exc.strerror}") from exc
    return path


class ReadOnlyHistory:
    """``history.db`` opened read-only (``mode=ro``): for looking at the history.

    Never migrates, checkpoints or writes, so a status command cannot change a
    database that a newer or older ahgd, or another user, owns. ``query``
    answers like :meth:`state.log.EventLog.query`.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._conn = connect(self.path, readonly=True)
        self._conn.row_factory = sqlite3.Row

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, list(params)).fetchall()
        except sqlite3.Error as exc:
            raise translate(exc, self.path, "query") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "ReadOnlyHistory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

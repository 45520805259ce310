"""The event log: one SQLite file, append-only ``events`` plus projections.

Every append runs in one ``BEGIN IMMEDIATE`` transaction: insert the event,
load the aggregate it addresses, ``apply`` it (an illegal transition rolls the
whole transaction back), write the changed projection rows, commit.  A batch
of events (the engine's: a stage's completion with the next one's start) is
inserted in one multi-row INSERT, its projection rows in one more.  The same
``apply`` folds the whole stream in :meth:`EventLog.rebuild` and
:meth:`EventLog.check`.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import projections as P
from .db import (
    DEFAULT_BUSY_TIMEOUT_S,
    begin_immediate,
    commit,
    connect,
    ensure_dir,
    read_transaction,
    rollback,
    translate,
)
from .errors import AhgdError, EventLogError, IllegalTransition
from .events import EVENT_TYPES, Event
from .machine import STAGE_TYPES, Aggregate, Key, Run, aggregate_key, apply
from .migrations import MIGRATIONS, Migration, migrate
from . import replay
from .replay import CheckReport
from .timestamps import Clock, format_ts, utc_now

HISTORY_DB = "history.db"

Listener = Callable[[Event], None]


class DuplicateEvent(AhgdError):
    """An event's idempotency key is already in the log: the work was already done.

    Nothing from the batch was written; ``existing`` is the event recorded before.
    """

    def __init__(self, existing: Event):
        super().__init__(f"an event with idempotency key {existing.idempotency_key!r} "
                         f"is already recorded (seq {existing.seq}, {existing.type})")
        self.existing = existing


_new_tuple = tuple.__new__

#: upper bounds (seconds) of the append-latency histogram buckets
APPEND_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 10.0)


class AppendTimings:
    """How long appends took (lock wait + write + commit), as a cumulative-ready histogram.

    Kept in memory by each :class:`EventLog`; ``snapshot()`` is what the
    monitor exports as ``ahgd_event_log_append_seconds``.
    """

    __slots__ = ("counts", "total", "count", "_lock")

    def __init__(self) -> None:
        self.counts = [0] * (len(APPEND_BUCKETS_S) + 1)   # the last one is +Inf
        self.total = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(APPEND_BUCKETS_S, seconds)
        with self._lock:
            self.counts[i] += 1
            self.total += seconds
            self.count += 1

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """``([(upper bound, cumulative count), ..., (inf, count)], sum, count)``."""
        with self._lock:
            counts, total, count = list(self.counts), self.total, self.count
        running, buckets = 0, []
        for bound, n in zip((*APPEND_BUCKETS_S, float("inf")), counts):
            running += n
            buckets.append((bound, running))
        return buckets, total, count

_INSERT_EVENT = (
    "INSERT INTO events (ts, run_id, stage, attempt, type, payload, idempotency_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?)"
#: a row without an idempotency key: NULL written in the SQL, not bound (sqlite3 looks
#: for an adapter for every None it binds, ~1 µs each)
_EVENT_ROW_NO_KEY = "(?, ?, ?, ?, ?, ?, NULL)"
#: batches up to this many events go in one INSERT (7 parameters a row: within the 999 of
#: SQLite builds before 3.32); larger ones, rare, row by row
_BATCH_ROWS = 64
_INSERT_EVENTS: dict[tuple[int, ...], str] = {}


def _insert_events_sql(keyed: tuple[bool, ...]) -> str:
    """One INSERT of event rows, one per item of ``keyed`` (whether the row has an
    idempotency key)."""
    return P.multi_row_insert(_INSERT_EVENTS, _INSERT_EVENT, (_EVENT_ROW_NO_KEY, _EVENT_ROW),
                              keyed)


def now_ts() -> str:
    """``format_ts(utc_now())`` (the same clock read: ``datetime.now`` floors the system
    clock to microseconds as this does) at a quarter of its cost; one per append."""
    us = time.time_ns() // 1000
    sec, frac = divmod(us, 1_000_000)
    cached = _TS_SECOND
    if cached[0] != sec:
        cached = _remember_second(sec)
    return f"{cached[1]}{frac:06d}Z"


def _remember_second(sec: int) -> tuple[int, str]:
    global _TS_SECOND
    _TS_SECOND = (sec, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)))
    return _TS_SECOND


_TS_SECOND: tuple[int, str] = (-1, "")


def _fold(e: Event, key: Key, seq: int, ts: str, payload: str, touched: dict,
          named: dict) -> Event:
    """The stored event of ``e`` (its ``seq`` and ``ts``), folded into its aggregate in
    ``touched``; ``named`` notes the stages its run's events named (None: a run-level event
    came, every attempt may have changed).  One place for the batch and the row-by-row pass."""
    ev = _new_tuple(Event, (e.type, e.run_id, e.stage, e.attempt, e.payload,
                            e.idempotency_key, seq, ts, payload))
    original, current = touched[key]
    touched[key] = (original, apply(current, ev))
    if e.type in STAGE_TYPES and e.stage:
        stages = named.setdefault(key, set())
        if stages is not None:
            stages.add(e.stage)
    else:
        named[key] = None
    return ev


class EventLog:
    """The durable core.  Thread-safe: one connection, used under a lock.

    Several processes may append to the same file at once; SQLite serialises
    them and the busy timeout hides the waiting.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
        clock: Clock = utc_now,
        migrations: Sequence[Migration] = MIGRATIONS,
        cache_size: int = 512,
    ) -> None:
        self.path = Path(path)
        ensure_dir(self.path.parent)
        self.synchronous = synchronous.upper()
        self.busy_timeout = busy_timeout
        self._clock = clock
        self._conn = connect(self.path, synchronous=self.synchronous, busy_timeout=busy_timeout)
        #: the appends' own cursor (under the lock): one per statement cost a microsecond each
        self._cur = self._conn.cursor()
        self._lock = threading.RLock()
        # run_id -> run as of our last commit; valid while no other connection has
        # committed (PRAGMA data_version tells, inside the write transaction)
        self._cache: OrderedDict[str, Run] = OrderedDict()
        self._data_version: int | None = None
        self._cache_size = cache_size
        self._listeners: list[Listener] = []
        self.append_timings = AppendTimings()
        #: descriptors of the database file and its write-ahead log for sync_files, kept open
        #: until the connection is closed (see there)
        self._sync_fds: list[int] | None = None
        self._sync_lock = threading.Lock()
        try:
            self.version = migrate(self._conn, self.path, migrations, busy_timeout=busy_timeout)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], **kwargs: Any) -> "EventLog":
        """Open ``<state_dir>/history.db``, creating and migrating it as needed."""
        return cls(Path(state_dir) / HISTORY_DB, **kwargs)

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._sync_lock:   # only now: SQLite's locks went with its connection
            fds, self._sync_fds = self._sync_fds or [], None
        for fd in fds:
            os.close(fd)

    def sync_files(self) -> bool:
        """``fsync`` the write-ahead log and the database file, as a commit with synchronous
        FULL does: what was committed with ``durable=False`` is durable after.  Callable from
        any thread, without the log's lock.  False when an fsync failed.

        Through descriptors opened once and kept until :meth:`close`: closing *any*
        descriptor of a file drops every POSIX lock this process holds on it, SQLite's
        included.  Another process closing its connection would then find no other
        connection, checkpoint and delete the write-ahead log that this connection still
        writes to: its later commits would be seen by no other process and lost with it."""
        with self._sync_lock:
            if self._sync_fds is None:
                fds = []
                for suffix in ("-wal", ""):
                    try:
                        fds.append(os.open(f"{self.path}{suffix}", os.O_RDONLY | os.O_CLOEXEC))
                    except OSError:
                        continue
                self._sync_fds = fds
            fds = list(self._sync_fds)
        try:
            for fd in fds:
                os.fsync(fd)
        except OSError:
            return False
        return True

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` after each committed append (e.g. to log it)."""
        self._listeners.append(listener)

    def now(self) -> datetime:
        return self._clock()

    # -- appending -------------------------------------------------------------

    def append(self, event: Event, *, durable: bool = True) -> Event:
        """Append one event; return it with ``seq`` and ``ts`` assigned."""
        return self.append_many((event,), durable=durable)[0]

    def append_many(self, events: Iterable[Event], *, durable: bool = True) -> list[Event]:
        """Append events in one transaction: all of them, or none.

        ``durable=False`` lets this commit skip its fsync (``synchronous=NORMAL``
        for one transaction); the next durable commit makes it durable too.
        Raises IllegalTransition (nothing written) or DuplicateEvent (nothing
        written; an idempotency key was already recorded).
        """
        prepared = []
        for e in events:
            if e.type not in EVENT_TYPES:
                raise IllegalTransition(f"unknown event type {e.type!r}", event_type=e.type, current=None)
            try:
                payload = P.dumps(e.payload)
            except (TypeError, ValueError) as exc:
                raise EventLogError(
                    f"the payload of {e.type} (run {e.run_id}, stage {e.stage}) is not plain "
                    f"JSON ({exc}); convert such values to str, int, float, list or dict"
                ) from exc
            prepared.append((e, payload))
        if not prepared:
            return []
        began = time.perf_counter()
        with self._lock:
            stored, touched = self._append_locked(prepared, durable)
            for key, (_, new) in touched.items():
                if key[0] == "run":
                    self._remember(new)  # type: ignore[arg-type]
        self.append_timings.observe(time.perf_counter() - began)
        for ev in stored:
            for listener in self._listeners:
                try:
                    listener(ev)
                except Exception:  # the event is committed: a broken log line must not say otherwise
                    pass
        return stored

    def _append_locked(self, prepared: list[tuple[Event, str]], durable: bool):
        conn = self._conn
        cur = self._cur
        clock = self._clock
        ts = now_ts() if clock is utc_now else format_ts(clock())
        relax = not durable and self.synchronous in ("FULL", "EXTRA")
        if relax:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            # begin/commit written out rather than through write_transaction():
            # this is the hot path, and a context manager costs a measurable share
            begin_immediate(conn, self.path, busy_timeout=self.busy_timeout, op="append",
                            cursor=cur)
        except BaseException:
            if relax:  # never leave the connection at NORMAL: later commits must fsync
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            raise
        try:
            # another connection committed since our last look: what we cached may be stale
            version = cur.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._cache.clear()
                self._data_version = version
            stored: list[Event] = []
            touched: dict[Key, tuple[Aggregate | None, Aggregate]] = {}
            # per run: the stages its stage events named (None once a run-level event came):
            # only their attempts can have changed
            named: dict[Key, set[str] | None] = {}
            if 1 < len(prepared) <= _BATCH_ROWS:
                batch = self._append_batch_txn(prepared, ts, touched, named)
                if batch is not None:
                    stored = batch
                    prepared = []  # done: no row-by-row pass
            for e, payload in prepared:
                # the aggregate as it was before this event (loaded before the event's row is
                # written: an aggregate kept only in the log, a pause, must not see it)
                key = aggregate_key(e)
                if key not in touched:
                    touched[key] = (self._load_txn(key),) * 2  # type: ignore[assignment]
                try:
                    cur.execute(
                        _INSERT_EVENT,
                        (ts, e.run_id, e.stage, e.attempt, e.type, payload, e.idempotency_key),
                    )
                except sqlite3.IntegrityError as exc:
                    if e.idempotency_key is not None and "idempotency_key" in str(exc):
                        raise DuplicateEvent(self._event_by_key_txn(e.idempotency_key)) from None
                    raise
                stored.append(_fold(e, key, cur.lastrowid, ts, payload, touched, named))
            for key, (original, new) in touched.items():
                P.save_txn(cur, original, new, named.get(key))  # type: ignore[arg-type]
        except sqlite3.Error as exc:
            rollback(conn)
            self._cache.clear()
            raise translate(exc, self.path, "append") from exc
        except BaseException:
            rollback(conn)
            self._cache.clear()
            raise
        else:
            commit(conn, self.path, "append", cur)
        finally:
            if relax:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return stored, touched

    def _append_batch_txn(self, prepared: list[tuple[Event, str]], ts: str,
                          touched: dict, named: dict) -> list[Event] | None:
        """Several events in one multi-row INSERT (the engine's usual batch: a stage's
        completion with the next one's start); None, with nothing written, when the batch
        must go row by row instead: a duplicate idempotency key or an event that addresses
        no aggregate, so that the error raised is the one the row-by-row pass raises.

        The aggregates are loaded before any row of the batch is written, as the row-by-row
        pass loads each before its first event's row (an aggregate kept only in the log, a
        pause, must not see its own event); only events of the same aggregate can change what
        a load reads.  The rows get consecutive ``seq`` values ending at ``lastrowid``: an
        ``INTEGER PRIMARY KEY`` row is given one more than the largest in the table, and the
        write lock is ours for the whole statement.
        """
        keys = []
        try:
            for e, _ in prepared:
                key = aggregate_key(e)
                keys.append(key)
                if key not in touched:
                    touched[key] = (self._load_txn(key),) * 2
        except IllegalTransition:
            touched.clear()
            return None
        n = len(prepared)
        params: list[Any] = []
        keyed = []
        for e, payload in prepared:
            if e.idempotency_key is None:
                params += (ts, e.run_id, e.stage, e.attempt, e.type, payload)
                keyed.append(False)
            else:
                params += (ts, e.run_id, e.stage, e.attempt, e.type, payload, e.idempotency_key)
                keyed.append(True)
        try:
            last = self._cur.execute(_insert_events_sql(tuple(keyed)), params).lastrowid
        except sqlite3.IntegrityError:
            touched.clear()  # the statement wrote nothing: the row-by-row pass says which key
            return None
        stored = []
        seq = last - n + 1
        for (e, payload), key in zip(prepared, keys):
            stored.append(_fold(e, key, seq, ts, payload, touched, named))
            seq += 1
        return stored

    def _load_txn(self, key: Key) -> Aggregate | None:
        if key[0] == "run":
            cached = self._cache.get(key[1])
            if cached is not None:
                return cached
        return P.load_txn(self._cur, key)  # type: ignore[arg-type]

    def _remember(self, run: Run) -> None:
        cache = self._cache
        cache[run.run_id] = run
        cache.move_to_end(run.run_id)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _event_by_key_txn(self, key: str) -> Event:
        row = self._conn.execute(
            f"SELECT {P.EVENT_COLUMNS} FROM events WHERE idempotency_key = ?", (key,)
        ).fetchone()
        return P.event_from_row(row)

    # -- reading ---------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only SQL query; rows support ``row["column"]``."""
        with self._lock:
            cur = self._conn.cursor()
            cur.row_factory = sqlite3.Row
            try:
                return cur.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise translate(exc, self.path, "query") from exc

    def events(
        self,
        *,
        run_id: str | None = None,
        after: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        where, params = ["seq > ?"], [after]
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if types:
            types = list(types)
            where.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        sql = f"SELECT {P.EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [P.event_from_row(r) for r in rows]

    def event_by_key(self, key: str) -> Event | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {P.EVENT_COLUMNS} FROM events WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if row is None else P.event_from_row(row)

    def last_seq(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def run(self, run_id: str) -> Run | None:
        """The run as the projections hold it, with the latest attempt of each stage."""
        with self._lock, read_transaction(self._conn, self.path):
            return P.load_run_txn(self._conn, run_id)

    def runs(self, *, states: Iterable[str] | None = None, pipeline: str | None = None) -> list[Run]:
        where, params = [], []
        if states:
            states = list(states)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(states)
        if pipeline:
            where.append("pipeline = ?")
            params.append(pipeline)
        sql = "SELECT run_id FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY last_seq"
        with self._lock, read_transaction(self._conn, self.path):
            ids = [r[0] for r in self._conn.execute(sql, params).fetchall()]
            return [P.load_run_txn(self._conn, i) for i in ids]  # type: ignore[misc]

    def aggregate(self, key: Key) -> Aggregate | None:
        with self._lock, read_transaction(self._conn, self.path):
            return P.load_txn(self._conn, key)

    # -- rebuild and check -----------------------------------------------------

    def rebuild(self) -> int:
        """Drop every projection row and re-fold them from ``events``; return the count."""
        with self._lock:
            self._cache.clear()
            return replay.rebuild(self._conn, self.path, self.busy_timeout)

    def check(self) -> CheckReport:
        """SQLite's integrity check, and the kept projections compared with a fresh fold."""
        try:
            with self._lock, read_transaction(self._conn, self.path):
                return replay.check_txn(self._conn)
        except sqlite3.DatabaseError as exc:  # damage bad enough that the check itself fails
            raise translate(exc, self.path, "check") from exc

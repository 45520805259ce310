"""Re-folding the whole event stream: rebuild the projections, or check them.

``rebuild`` drops every projection row and writes the fold of ``events`` in one
transaction; ``check_txn`` runs SQLite's integrity check and compares the kept
projections with a fresh fold, row by row.  Both use the same pure fold as live
appends (:mod:`state.projections` over :func:`state.machine.apply`).
"""

from __future__ import annotations

import gc
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

from . import projections as P
from .db import write_transaction
from .errors import IllegalTransition


class CheckReport(NamedTuple):
    integrity: list[str]
    differences: list[str]
    events: int

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"] and not self.differences



def fold_events_txn(conn: sqlite3.Connection, batch: int = 20000) -> tuple[P.Projector, int]:
    """Every event folded into projection rows (inside the caller's transaction)."""
    projector = P.Projector()
    cur = conn.execute(f"SELECT {P.EVENT_COLUMNS} FROM events ORDER BY seq")
    count = 0
    event_from_row = P.replay_event_from_row
    with _gc_paused():
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                break
            count += len(rows)
            projector.feed(map(event_from_row, rows))
    return projector, count


def rebuild(conn: sqlite3.Connection, path: Path, busy_timeout: float) -> int:
    """Drop every projection row and re-fold them from ``events``; return the count."""
    (cache_size,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB while we rewrite every table
    try:
        with _gc_paused(), write_transaction(conn, path, busy_timeout=busy_timeout, op="rebuild"):
            projector, count = fold_events_txn(conn)
            # bulk-load without secondary indexes, then build them in one pass
            indexes = conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                f"AND tbl_name IN ({', '.join('?' * len(P.TABLES))})", P.TABLES).fetchall()
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')
            for table in P.TABLES:
                conn.execute(f"DELETE FROM {table}")
            for table, rows in projector.rows().items():
                conn.executemany(P.INSERT_NEW[table], rows)
            for _, sql in indexes:
                conn.execute(sql)
    finally:
        conn.execute(f"PRAGMA cache_size={cache_size}")
    return count


def check_txn(conn: sqlite3.Connection) -> CheckReport:
    """SQLite's integrity check, and the kept projections compared with a fresh fold."""
    integrity = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    try:
        projector, count = fold_events_txn(conn)
    except IllegalTransition as exc:
        return CheckReport(integrity, [f"the event stream itself does not fold: {exc}"], -1)
    folded = projector.rows()
    differences: list[str] = []
    for table in P.TABLES:
        cols = P.COLUMNS[table]
        kept = conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
        differences.extend(_diff_table(table, cols, kept, folded[table]))
    return CheckReport(integrity, differences, count)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a fold allocates millions of tuples and frees none.

    Otherwise every collection rescans the whole growing heap, for nothing:
    folds make no reference cycles.  It cost a quarter of a 1M-event rebuild.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _diff_table(table: str, cols: Sequence[str], kept: list[tuple], folded: list[tuple]) -> list[str]:
    pk = [cols.index(c) for c in P.PRIMARY_KEYS[table]]

    def key(row: tuple) -> tuple:
        return tuple(row[i] for i in pk)

    kept_by = {key(r): tuple(r) for r in kept}
    fold_by = {key(r): tuple(r) for r in folded}
    out = []
    for k in sorted(kept_by.keys() - fold_by.keys(), key=repr):
        out.append(f"{table}{list(k)}: kept in the projection but not produced by the events")
    for k in sorted(fold_by.keys() - kept_by.keys(), key=repr):
        out.append(f"{table}{list(k)}: produced by the events but missing from the projection")
    for k in sorted(kept_by.keys() & fold_by.keys(), key=repr):
        a, b = kept_by[k], fold_by[k]
        if a != b:
            for name, x, y in zip(cols, a, b):
                if x != y:
                    out.append(f"{table}{list(k)}.{name}: kept {x!r}, the events say {y!r}")
    return out

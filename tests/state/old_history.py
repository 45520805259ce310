"""A history.db at an older schema version, holding a history (events and the projections
of them), as an older ahgd wrote it: the history is written by today's code into a fresh
database of the full schema, then copied, the columns the old schema has, into one
migrated only that far (today's code cannot append to an older schema: it writes columns
that came later)."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from state import EventLog
from state.migrations import MIGRATIONS


def write_old_history(db: Path, version: int, write: Callable[[EventLog], None]) -> None:
    """Make ``db`` at schema ``version`` with the history ``write(log)`` appends."""
    EventLog(db, migrations=MIGRATIONS[:version]).close()
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "history.db"
        with EventLog(full) as log:
            write(log)
        conn = sqlite3.connect(db)
        try:
            conn.execute("ATTACH DATABASE ? AS full", (str(full),))
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM main.sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations'")]
            for table in tables:
                old = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
                cols = ", ".join(old)
                conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM full.{table}")
            conn.commit()
            conn.execute("DETACH DATABASE full")
        finally:
            conn.close()

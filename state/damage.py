"""A history.db that SQLite cannot read: what is left of it, and what to do, in one report.

Every ``ahgd`` command that meets a damaged history (random bytes, a
truncated file, something else written over it) prints this report and
exits 1.  It reads the file through a read-only connection and changes
nothing.  The salvage it gives was tried on damaged files: SQLite reads
the events in ``seq`` order up to the first damaged page, so what it
salvages is the log's beginning, which folds without gaps.  (``sqlite3
.recover`` is no help: the sqlite3 3.40 shell of Debian 12 fails with "SQL
logic error" even on an intact history.db.)
"""

from __future__ import annotations

import shlex
import sqlite3
from pathlib import Path
from typing import NamedTuple


class Salvage(NamedTuple):
    """What SQLite can still read of a damaged history."""

    events: int            # events readable from the first one on (0: none)
    last_seq: int | None   # the seq of the last of them
    stopped_by: str | None  # SQLite's error where the reading stopped (None: all were read)


def readable_events(path: Path) -> Salvage:
    """Count the events SQLite can read from ``path``, in order, until the first error."""
    count, last = 0, 0
    try:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return Salvage(0, None, str(exc))
    try:
        try:  # the salvage's own query: what it reads is what is counted
            for row in conn.execute("SELECT * FROM events ORDER BY seq"):
                count, last = count + 1, row[0]
            return Salvage(count, last or None, None)
        except sqlite3.Error:
            pass
        # Python's sqlite3 reads a row ahead, so the last good row was not handed out yet:
        # go on one row at a time until SQLite stops
        while True:
            try:
                row = conn.execute("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                                   (last,)).fetchone()
            except sqlite3.Error as exc:
                return Salvage(count, last or None, str(exc))
            if row is None:
                return Salvage(count, last or None, None)
            count, last = count + 1, row[0]
    finally:
        conn.close()


def damaged(path: Path) -> bool:
    """Whether SQLite finds ``path`` damaged: its quick check fails, or an event cannot be read."""
    if not Path(path).is_file():
        return False
    try:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
        try:
            if [r[0] for r in conn.execute("PRAGMA quick_check")] != ["ok"]:
                return True
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return True
    except sqlite3.Error:
        return False  # cannot open it at all (permissions): not damage
    return readable_events(path).stopped_by is not None


def report(path: Path, sqlite_error: str) -> str:
    """The message for a damaged ``history.db``: the damage, then the way back."""
    path = Path(path).resolve()
    state_dir = path.parent
    aside = state_dir / "damaged"
    q = shlex.quote
    salvage = readable_events(path)
    lines = [
        f"{path} is damaged: SQLite says {sqlite_error!r}. It was left as it is.",
        "What to do:",
        "  1. stop the daemon (systemctl stop ahgd-daemon) and move the damaged file aside,",
        "     with its -wal and -shm files where they exist:",
        f"       mkdir {q(str(aside))} && mv {q(str(path))}* {q(str(aside))}/",
        f"  2. put history.db back from your backup, then check it: "
        f"ahgd state check --state-dir {q(str(state_dir))}",
    ]
    if salvage.events:
        lost = ("all of them" if salvage.stopped_by is None else
                f"seq 1 to {salvage.last_seq}; SQLite stops there with {salvage.stopped_by!r}, "
                "so later events are lost")
        damaged = aside / path.name
        lines += [
            f"  Without a backup, {salvage.events:,} events can still be read ({lost}).",
            "  Salvage them into a new history.db and re-fold the runs, files and alerts:",
            f"       touch {q(str(path))} && ahgd state rebuild --state-dir {q(str(state_dir))}",
            f"       (echo 'BEGIN;'; sqlite3 {q(str(damaged))} '.mode insert events' "
            "'SELECT * FROM events ORDER BY seq'; echo 'COMMIT;') "
            f"| sqlite3 {q(str(path))}",
            f"       ahgd state rebuild --state-dir {q(str(state_dir))}",
        ]
    else:
        why = f" ({salvage.stopped_by})" if salvage.stopped_by else ""
        lines += [
            f"  Without a backup, nothing can be salvaged: SQLite cannot read a single event{why}.",
            "  With the damaged file moved aside, the daemon starts a new, empty history.",
        ]
    return "\n".join(lines)

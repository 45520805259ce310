"""A stage attempt's DuckDB file, attached to a DuckDB instance the thread keeps warm.

Starting a DuckDB database instance (``duckdb.connect(path)``) costs about
20 ms of CPU whatever the file holds: for a small stage that was most of its
time, twice over (its own file, then again in the next stage).  So each
thread (a worker process has one) keeps one in-memory instance, and an
attempt is::

    ATTACH '<data/run/stage-aN.duckdb>' AS "stage-aN"   -- ~3 ms, not ~20
    cursor: USE "stage-aN"                            -- current_database() as before
    ... the stage; its inputs ATTACH ... (READ_ONLY) on the same instance ...
    close the cursor; DETACH the inputs; DETACH "stage-aN"

``DETACH`` checkpoints the file and closes it, as closing a connection did:
the file is complete, with no ``.wal`` beside it, before it is hashed and
recorded.  Nothing of one attempt may reach the next: after each attempt the
instance must look as it did when it was made (no database attached besides
the built-in ones, no table, view or sequence in its ``memory`` catalog, every
setting as it was: ``SET`` is global in DuckDB).  If anything differs, or a
``DETACH`` fails, the instance is closed and the next attempt starts a fresh
one.  A thread that opens a second attempt while one is open (two contexts at
once) gets a database of its own, as before (:func:`open_attempt` returns
None).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

from .sqltext import quote, sql_literal

#: the catalogs every DuckDB instance has
BUILTIN_CATALOGS = frozenset({"memory", "system", "temp"})

_LOCAL = threading.local()

#: what an instance looks like, in one query (each query costs a round trip): the databases
#: attached besides the built-in ones, the objects in its ``memory`` catalog, its settings
_LOOKS = (
    "SELECT (SELECT count(*) FROM duckdb_databases() WHERE database_name NOT IN "
    "('memory', 'system', 'temp')),"
    " (SELECT count(*) FROM duckdb_tables() WHERE database_name = 'memory')"
    " + (SELECT count(*) FROM duckdb_views() WHERE NOT internal AND database_name = 'memory')"
    " + (SELECT count(*) FROM duckdb_sequences() WHERE database_name = 'memory'),"
    " (SELECT list((name, value) ORDER BY name) FROM duckdb_settings())")


class _Instance:
    """One in-memory DuckDB instance of this thread, and what it looked like when made."""

    def __init__(self, key: tuple, config: Mapping[str, Any]) -> None:
        import duckdb

        self.key = key
        self.con = duckdb.connect(":memory:", config=dict(config))
        self.made = self._looks()
        self.busy = False
        #: attempts served by this instance (the tests read it)
        self.attempts = 0

    def _looks(self) -> tuple:
        return self.con.execute(_LOOKS).fetchone()

    def catalogs(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT database_name FROM duckdb_databases()").fetchall()
            if r[0] not in BUILTIN_CATALOGS]

    def as_made(self) -> bool:
        return self._looks() == self.made   # (0, 0, settings as they were)

    def close(self) -> None:
        if getattr(_LOCAL, "instance", None) is self:
            _LOCAL.instance = None
        try:
            self.con.close()
        except Exception:  # closing is all that is left to do with it
            pass


class AttemptDatabase:
    """An attempt's file attached to the thread's instance; ``con`` is a cursor using it."""

    def __init__(self, instance: _Instance, con: Any, alias: str) -> None:
        self._instance = instance
        self.con = con
        self.alias = alias

    def close(self) -> None:
        """Detach everything the attempt attached, its own file last: checkpointed and closed.

        Raises what DuckDB raised for the attempt's own file (a full disk): the
        file is then not complete, and the instance is closed."""
        inst, self._instance = self._instance, None
        if inst is None:
            return
        inst.busy = False
        try:
            self.con.close()
        except Exception:
            pass
        own = quote(self.alias)
        try:
            for catalog in inst.catalogs():  # the inputs, and anything the stage attached
                if catalog != self.alias:
                    inst.con.execute(f"DETACH {quote(catalog)}")
            inst.con.execute(f"DETACH {own}")
        except BaseException:
            inst.close()  # closing the instance closes (and checkpoints) what is still attached
            raise
        try:
            clean = inst.as_made()
        except Exception:
            clean = False
        if not clean:
            inst.close()


def open_attempt(path: Path, config: Mapping[str, Any]) -> AttemptDatabase | None:
    """Create ``path`` (which must not exist) as a DuckDB database, attached to this thread's
    warm instance; None when that instance is serving another attempt."""
    key = (os.getpid(), tuple(sorted((k, str(v)) for k, v in config.items())))
    inst = getattr(_LOCAL, "instance", None)
    if inst is not None and inst.key != key:
        if inst.busy:
            return None
        inst.close()  # other settings (another pipeline's): make one with these
        inst = None
    if inst is None:
        inst = _LOCAL.instance = _Instance(key, config)
    elif inst.busy:
        return None
    alias = path.name[: -len(".duckdb")] if path.name.endswith(".duckdb") else path.name
    try:
        inst.con.execute(f"ATTACH {sql_literal(str(path))} AS {quote(alias)}")
    except BaseException:
        inst.close()
        raise
    try:
        con = inst.con.cursor()
        con.execute(f"USE {quote(alias)}")
    except BaseException:
        inst.close()
        raise
    inst.busy = True
    inst.attempts += 1
    return AttemptDatabase(inst, con, alias)


def warm_instance() -> Any:
    """This thread's warm instance (for tests and benchmarks), or None."""
    return getattr(_LOCAL, "instance", None)


__all__ = ["AttemptDatabase", "open_attempt", "warm_instance"]

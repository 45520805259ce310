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

Reading every setting (``duckdb_settings()``, ~170 of them) costs about 6 ms
of CPU, as much as the rest of a small attempt's DuckDB work; so the instance
keeps DuckDB's query log (``QueryLog``, in memory, emptied after each
attempt), and its settings and ``memory`` catalog are looked at only after an
attempt that ran a statement which may change them: anything but the
statements of :data:`_PLAIN` (so ``SET``, ``RESET``, ``PRAGMA``, ``CALL``,
``LOAD`` …), one that names the ``memory`` catalog or calls a logging
function, or a log that does not hold the attempt's own ``ATTACH`` (it was
emptied or turned off meanwhile).  Databases the stage attached are detached
with the attempt whatever the log says.  An instance whose DuckDB has no
query log is looked at in full after every attempt.
"""

from __future__ import annotations

import os
import re
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
#: the databases attached besides the built-in ones, and the statements run since the log
#: was last emptied (the function, not the view ``duckdb_logs``: ~2 ms less)
_CATALOGS = ("SELECT list(database_name) FROM duckdb_databases() "
             "WHERE database_name NOT IN ('memory', 'system', 'temp')")
_GLANCE = (f"SELECT ({_CATALOGS}), (SELECT list(message) FROM "
           "duckdb_logs(denormalized_table = false) WHERE type = 'QueryLog')")
_EMPTY_LOG = "CALL truncate_duckdb_logs()"
#: statements that change no setting (their first word): after an attempt that ran only
#: these, the settings need no comparing; anything else is compared (never skipped)
_PLAIN = re.compile(
    r"[\s(]*(SELECT|WITH|FROM|VALUES|TABLE|INSERT|UPDATE|DELETE|MERGE|CREATE|DROP|ALTER|"
    r"ATTACH|DETACH|USE|DESCRIBE|SHOW|SUMMARIZE|EXPLAIN|COPY|BEGIN|START|COMMIT|END|ROLLBACK|"
    r"ABORT|CHECKPOINT|FORCE\s+CHECKPOINT|ANALYZE|VACUUM|PIVOT|UNPIVOT)\b", re.IGNORECASE)
#: what makes a plain statement worth a full look all the same: a table function that
#: changes the log itself (callable from a SELECT), or the ``memory`` catalog named (where a
#: table, view or sequence would outlive the attempt; string literals are not looked in)
_SUSPECT = re.compile(r"(enable|disable)_logging|truncate_duckdb_logs|\bmemory\b",
                      re.IGNORECASE)
_LITERAL = re.compile(r"'(?:[^']|'')*'")


class _Instance:
    """One in-memory DuckDB instance of this thread, and what it looked like when made."""

    def __init__(self, key: tuple, config: Mapping[str, Any]) -> None:
        import duckdb

        self.key = key
        self.con = duckdb.connect(":memory:", config=dict(config))
        #: the ATTACH of the attempt being served: a statement its log must hold
        self.marker: str | None = None
        try:  # statements are logged from here on; the settings below include the log's
            self.con.execute("CALL enable_logging('QueryLog')")
            self.logged = True
        except Exception:  # a DuckDB without a query log: compare the settings every time
            self.logged = False
        self.made = self._looks()
        self._empty_log()
        self.busy = False
        #: attempts served by this instance, and after how many its settings were read and
        #: compared (the tests read them)
        self.attempts = 0
        self.settings_compared = 0

    def _looks(self) -> tuple:
        return self.con.execute(_LOOKS).fetchone()

    def catalogs(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT database_name FROM duckdb_databases()").fetchall()
            if r[0] not in BUILTIN_CATALOGS]

    def glance(self) -> tuple[list[str], list[str] | None]:
        """The databases attached besides the built-in ones, and (with the query log) the
        statements run since it was last emptied: one round trip."""
        if not self.logged:
            return self.catalogs(), None
        catalogs, statements = self.con.execute(_GLANCE).fetchone()
        return list(catalogs or ()), list(statements or ())

    def as_made(self, statements: list[str] | None = None) -> bool:
        """Whether the instance looks as it did when made: no database attached besides the
        built-in ones, nothing in its ``memory`` catalog, every setting as it was.  Given the
        statements of the attempt (:meth:`glance`), looked at only if one may have changed
        that."""
        if self.logged:
            self._empty_log()
            if statements is not None and self._only_plain(statements):
                return True   # no statement that could have changed a setting or the catalog
        self.settings_compared += 1
        return self._looks() == self.made   # (0, 0, settings as they were)

    def _only_plain(self, statements: list[str]) -> bool:
        if self.marker not in statements:
            return False   # the log was emptied or turned off during the attempt
        return all(s == _GLANCE or (_PLAIN.match(s) and not _SUSPECT.search(_LITERAL.sub("", s)))
                   for s in statements)

    def _empty_log(self) -> None:
        if self.logged:
            self.con.execute(_EMPTY_LOG)

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
            catalogs, statements = inst.glance()
            for catalog in catalogs:  # the inputs, and anything the stage attached
                if catalog != self.alias:
                    inst.con.execute(f"DETACH {quote(catalog)}")
            inst.con.execute(f"DETACH {own}")
        except BaseException:
            inst.close()  # closing the instance closes (and checkpoints) what is still attached
            raise
        try:
            clean = inst.as_made(statements)
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
    inst.marker = f"ATTACH {sql_literal(str(path))} AS {quote(alias)}"
    try:
        inst.con.execute(inst.marker)
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

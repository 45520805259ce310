"""A stage attempt's DuckDB file, attached to a DuckDB instance the thread keeps warm.

Starting a DuckDB database instance (``duckdb.connect(path)``) costs about
20 ms of CPU whatever the file holds: for a small stage that was most of its
time, twice over (its own file, then again in the next stage).  So each
thread (a worker process has one) keeps one in-memory instance, and an
attempt is::

    cursor: ATTACH '<data/run/stage-aN.duckdb>' AS "stage-aN"; USE "stage-aN"
                                       -- ~3 ms, not ~20; current_database() as before
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
with the attempt whatever the log says: the same log tells which they are
(the attempt's own and its inputs, when it shows no other ``ATTACH`` or
``DETACH``) and which tables the attempt's file holds
(:meth:`AttemptDatabase.row_counts`); when it cannot tell, they are listed.
Each statement sent costs ~0.3 ms of CPU whatever it does, so the attempt's
``ATTACH`` and ``USE`` go as one, as do its ``DETACH`` statements and the
emptying of the log.  An instance whose DuckDB has no
query log is looked at in full after every attempt.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping

from . import malloctune
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
#: the statements run since the log was last emptied, alone (the databases attached are then
#: known without asking: :meth:`AttemptDatabase.close`) and with the rows of ``output``
_LOG = "SELECT list(message) FROM duckdb_logs(denormalized_table = false)"
_LOG_ROWS = f'SELECT ({_LOG}), (SELECT COUNT(*) FROM main."output")'
#: statements that cannot add, drop or rename a table of the attempt's database (their first
#: word; EXPLAIN is not one: EXPLAIN ANALYZE runs its statement)
_KEEPS_TABLES = re.compile(
    r"[\s(]*(SELECT|WITH|FROM|VALUES|TABLE|DESCRIBE|SHOW|SUMMARIZE|INSERT|UPDATE|DELETE|USE|"
    r"BEGIN|START|COMMIT|END|ROLLBACK|ABORT)\b", re.IGNORECASE)
_ATTACHES = re.compile(r"\s*(ATTACH|DETACH)\b", re.IGNORECASE)
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

        malloctune.tune()  # once a process: the heap kept between statements
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
        #: times the databases attached or an attempt's tables had to be listed because the
        #: query log could not tell them (the tests read it)
        self.listings = 0

    def _looks(self) -> tuple:
        return self.con.execute(_LOOKS).fetchone()

    def catalogs(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT database_name FROM duckdb_databases()").fetchall()
            if r[0] not in BUILTIN_CATALOGS]

    def glance(self) -> tuple[list[str], list[str] | None]:
        """The databases attached besides the built-in ones, and (with the query log) the
        statements run since it was last emptied: one round trip."""
        self.listings += 1
        if not self.logged:
            return self.catalogs(), None
        catalogs, statements = self.con.execute(_GLANCE).fetchone()
        return list(catalogs or ()), list(statements or ())

    def as_made(self, statements: list[str] | None = None, *, emptied: bool = False) -> bool:
        """Whether the instance looks as it did when made: no database attached besides the
        built-in ones, nothing in its ``memory`` catalog, every setting as it was.  Given the
        statements of the attempt (:meth:`glance`), looked at only if one may have changed
        that."""
        if self.logged:
            if not emptied:
                self._empty_log()
            if statements is not None and self._only_plain(statements):
                return True   # no statement that could have changed a setting or the catalog
        self.settings_compared += 1
        return self._looks() == self.made   # (0, 0, settings as they were)

    def _only_plain(self, statements: list[str]) -> bool:
        if self.marker not in statements:
            return False   # the log was emptied or turned off during the attempt
        return all(_plain(s) for s in statements)

    def _empty_log(self) -> None:
        if self.logged:
            self.con.execute(_EMPTY_LOG)

    def close(self) -> None:
        if getattr(_LOCAL, "instance", None) is self:
            _LOCAL.instance = None
        if getattr(_LOCAL, "spare", None) is self:
            _LOCAL.spare = None
        try:
            self.con.close()
        except Exception:  # closing is all that is left to do with it
            pass


#: the instance's own look-ups, which change nothing
_OWN = frozenset({_GLANCE, _LOG, _LOG_ROWS})


def _plain(statement: str) -> bool:
    """Whether a logged statement cannot have changed a setting or the ``memory`` catalog."""
    return statement in _OWN or bool(
        _PLAIN.match(statement) and not _SUSPECT.search(_LITERAL.sub("", statement)))


class AttemptDatabase:
    """An attempt's file attached to the thread's instance; ``con`` is a cursor using it.

    The attempt's inputs are attached through :meth:`attach_input`, so that when the
    query log shows no other ``ATTACH`` or ``DETACH`` (and nothing that could have
    changed the instance), :meth:`close` knows what to detach without listing the
    databases, and :meth:`row_counts` knows the attempt's tables without listing them:
    each listing costs a round trip of ~0.7 ms of CPU, a quarter of a small attempt's
    own bookkeeping.  Whenever the log cannot tell, they are listed as before."""

    def __init__(self, instance: _Instance, con: Any, alias: str) -> None:
        self._instance = instance
        self.con = con
        self.alias = alias
        #: catalog -> the ATTACH statement of each input attached through attach_input
        self._inputs: dict[str, str] = {}
        #: the statements of the query log as read by row_counts (close reads no more)
        self._statements: list[str] | None = None
        #: the inputs' statements as the query log holds them
        self._input_log: set[str] = set()
        #: the read-only statements ahgd ran on the attempt's behalf (:meth:`read`)
        self._reads: set[str] = set()

    def read(self, sql: str) -> list[tuple]:
        """The rows of ``sql``, a statement of ahgd's that only reads the attempt's tables:
        the query log's checks pass over it whatever names it quotes (a column called
        ``memory`` would otherwise look like a change to the instance)."""
        self._reads.add(sql)
        return self.con.execute(sql).fetchall()

    def attach_input(self, catalog: str, statements: list[str]) -> None:
        """Run ``statements`` (``ATTACH ... AS catalog (READ_ONLY)``, or an in-memory catalog
        and the ``CREATE TABLE``s of an inline output: :mod:`pipelines.inlinetables`) on the
        attempt's cursor, in one round trip."""
        self.con.execute("; ".join(statements))
        self._inputs[catalog] = statements[0]
        self._input_log.update(_logged(statements))

    def _clean(self, inst: _Instance, statements: list[str] | None) -> bool:
        """Whether the log holds the whole attempt and every ``ATTACH`` or ``DETACH`` in it is
        the attempt's own (its file, its inputs): the attached databases are then known."""
        if statements is None or inst is None or inst.marker not in statements:
            return False
        own = {inst.marker, f" USE {quote(self.alias)}"}
        for s in statements:
            if s in own or s in _OWN or s in self._input_log or s in self._reads:
                continue
            if _ATTACHES.match(s) or not _plain(s):
                return False
        return True

    def row_counts(self, made: list[str], has_output: bool) -> dict[str, int] | None:
        """Every table of the attempt's database and its rows, when the query log shows that
        they are ``made`` (the tables store_output created, ``output`` among them when
        ``has_output``) and no others, else None (list them)."""
        inst = self._instance
        if inst is None or not inst.logged or not has_output:
            return None
        statements, rows = self.con.execute(_LOG_ROWS).fetchone()
        statements = list(statements or ())
        if not self._clean(inst, statements):
            inst.listings += 1
            return None
        self._statements = statements
        made_by = {f'CREATE TABLE "main".{quote(n)} AS ' for n in made} | {
            f"CREATE OR REPLACE TABLE main.{quote(n)} AS " for n in made}
        for s in statements:
            if (_KEEPS_TABLES.match(s) or s in _OWN or s == inst.marker or _ATTACHES.match(s)
                    or s in self._input_log or s in self._reads):
                continue
            if not any(s.lstrip().startswith(p) for p in made_by):
                inst.listings += 1
                return None   # a statement that may have made, dropped or renamed a table
        return {name: rows if name == "output" else
                self.con.execute(f"SELECT COUNT(*) FROM main.{quote(name)}").fetchone()[0]
                for name in sorted(made)}

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
        emptied = False
        try:
            statements = self._statements
            if statements is None and inst.logged:
                statements = list(inst.con.execute(_LOG).fetchone()[0] or ())
            if self._clean(inst, statements):   # the log shows every database attached
                catalogs = list(self._inputs)
            else:
                catalogs, statements = inst.glance()
            detach = [f"DETACH {quote(c)}" for c in catalogs if c != self.alias]
            detach.append(f"DETACH {own}")   # its own file last: checkpointed and closed
            if inst.logged:   # and the log emptied for the next attempt, in one round trip
                detach.append(_EMPTY_LOG)
                emptied = True
            inst.con.execute("; ".join(detach))
        except BaseException:
            inst.close()  # closing the instance closes (and checkpoints) what is still attached
            raise
        if statements is not None and self._reads:
            statements = [s for s in statements if s not in self._reads]
        try:
            clean = inst.as_made(statements, emptied=emptied)
        except Exception:
            clean = False
        if not clean:
            inst.close()


def _logged(statements: list[str]) -> list[str]:
    """``statements`` sent as one string (joined by ``"; "``) as DuckDB's query log holds
    them: each but the last with its ``;``, each but the first with its leading space."""
    last = len(statements) - 1
    return [(" " if i else "") + s + (";" if i < last else "") for i, s in enumerate(statements)]


def open_attempt(path: Path, config: Mapping[str, Any], *,
                 in_memory: bool = False) -> AttemptDatabase | None:
    """Create ``path`` (which must not exist) as a DuckDB database, attached to this thread's
    warm instance (``in_memory``: a database in memory under the same name, ``path`` is not
    made); None when that instance is serving another attempt."""
    key = (os.getpid(), tuple(sorted((k, str(v)) for k, v in config.items())))
    inst = getattr(_LOCAL, "instance", None)
    if inst is not None and inst.busy:
        return None
    if inst is None or inst.key != key:
        # other settings: the spare instance if it has these (small attempts run on one with
        # one thread, the others on one with DuckDB's default: a run alternates), else a new
        # one, the current one kept as the spare (and the spare before it closed)
        spare = getattr(_LOCAL, "spare", None)
        if spare is not None and spare.key == key:
            _LOCAL.spare, inst = inst, spare
        else:
            if spare is not None:
                spare.close()
            _LOCAL.spare, inst = inst, _Instance(key, config)
        _LOCAL.instance = inst
    alias = path.name[: -len(".duckdb")] if path.name.endswith(".duckdb") else path.name
    attach = f"ATTACH {sql_literal(':memory:' if in_memory else str(path))} AS {quote(alias)}"
    # one round trip (each costs ~0.3 ms of CPU), which the log holds as two statements
    inst.marker = _logged([attach, f"USE {quote(alias)}"])[0]
    try:
        con = inst.con.cursor()
        con.execute(f"{attach}; USE {quote(alias)}")
    except BaseException:
        inst.close()
        raise
    inst.busy = True
    inst.attempts += 1
    return AttemptDatabase(inst, con, alias)


def warm_instance() -> Any:
    """This thread's warm instance (for tests and benchmarks), or None."""
    return getattr(_LOCAL, "instance", None)


def warm_instances() -> tuple[Any, Any]:
    """This thread's warm instance and its spare (another settings'), each or None."""
    return getattr(_LOCAL, "instance", None), getattr(_LOCAL, "spare", None)


__all__ = ["AttemptDatabase", "open_attempt", "warm_instance"]

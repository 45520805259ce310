"""``PipelineContext``: what a stage sees, and what ``run()`` hands back.

Inside a stage attempt the context owns a DuckDB connection to the attempt's
own database file (``context.duckdb``); the outputs of earlier stages are
attached to it read-only, one catalog per stage, so SQL reads them directly::

    def transform(self, context):
        return context.sql(f"SELECT * FROM {context.output_table('extract')} WHERE x > 0")

After ``run()`` the same object carries the outcome (``state``, ``error``,
``failed_stage``, ``stage_results``) and ``get_output(stage)`` still works,
through a read-only connection.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from state import store, warehouse as identity

from . import attemptdb, inlinetables
from .sqltext import quote, sql_literal
from .errors import ConfigError, StageOutputError, WarehouseDamaged

RESERVED_CATALOGS = {"main", "temp", "system", "memory"}
#: the Dask worker this attempt runs on (its host), None on the daemon's own host
REMOTE_HOST: ContextVar[str | None] = ContextVar("ahgd_remote_host", default=None)
WAREHOUSE = identity.WAREHOUSE


def catalog_for(stage: str) -> str:
    """The catalog name under which a stage's output is attached."""
    return f"stage_{stage}" if stage.lower() in RESERVED_CATALOGS else stage


@dataclass
class StageResult:
    """How one stage of a finished run ended."""

    stage: str
    state: str
    attempts: int = 0
    error: str | None = None
    rows: int | None = None
    wall_s: float | None = None
    output: dict[str, Any] | None = None


class PipelineContext:
    """Run identity, parameters, inputs, outputs, SQL and a bound logger."""

    def __init__(
        self,
        *,
        run_id: str,
        pipeline_name: str,
        state_dir: Path,
        params: Mapping[str, Any] | None = None,
        outputs: Mapping[str, dict[str, Any] | None] | None = None,
        stage_name: str | None = None,
        attempt: int | None = None,
        input_stages: tuple[str, ...] = (),
        duckdb_settings: Mapping[str, Any] | None = None,
        logger: Any = None,
        config_dir: str | os.PathLike[str] | None = None,
        stage_config: Any = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline_name = pipeline_name
        self.state_dir = Path(state_dir)
        self.params: dict[str, Any] = dict(params or {})
        self.stage_name = stage_name
        self.attempt = attempt
        self.duckdb_settings = dict(duckdb_settings or {})
        #: the folder of the YAML file that configured this stage (None for Python pipelines):
        #: resolve relative paths in a stage's options against it
        self.config_dir = None if config_dir is None else Path(config_dir)
        #: the StageConfig this run applies to the stage (timeout, retries, validation
        #: rules, and your own ``parameters`` and ``tags``); None outside a stage
        self.stage_config = stage_config
        self._outputs: dict[str, dict[str, Any] | None] = dict(outputs or {})
        self._added: dict[str, Any] = {}
        self._input_stages = input_stages
        self._con = None
        self._attempt_db: attemptdb.AttemptDatabase | None = None
        self._con_path: Path | None = None
        #: where the attempt's file is (or would be, while its database is in memory)
        self._file_path: Path | None = None
        #: the attempt's database is in memory (small inputs: pipelines.inlinetables); its
        #: file is made only if its tables do not fit inline
        self._in_memory = False
        self._attached: set[str] = set()
        self._logger = logger
        #: path -> what each warehouse() call of this attempt found (the engine records it)
        self.warehouses_seen: dict[str, dict[str, Any]] = {}
        # the outcome, filled in when run() returns
        self.state: str | None = None
        self.error: str | None = None
        self.failed_stage: str | None = None
        self.stage_results: dict[str, StageResult] = {}
        self.started_at: str | None = None
        self.ended_at: str | None = None

    # -- identity and inputs --------------------------------------------------

    @property
    def input_file(self) -> Path | None:
        """The file that triggered this run (a drop-folder file, ``--input``), or None."""
        p = self.params.get("input_file")
        return None if p is None else Path(p)

    @property
    def input_sha256(self) -> str | None:
        return self.params.get("input_sha256")

    @property
    def log(self) -> Any:
        """A logger bound to pipeline, run_id and stage (structlog's calling convention:
        ``context.log.info("event", key=value)``): the daemon's JSON log, or in a script
        the standard ``logging`` logger ``pipelines.stage`` (:mod:`pipelines.logs`)."""
        if self._logger is None:
            from .logs import get_logger

            self._logger = get_logger("pipelines.stage").bind(
                pipeline=self.pipeline_name, run_id=self.run_id, stage=self.stage_name,
                attempt=self.attempt)
        return self._logger

    @property
    def succeeded(self) -> bool:
        return self.state == "COMPLETED"

    def input_stage(self) -> str | None:
        """The stage this one depends on (the last, if several)."""
        return self._input_stages[-1] if self._input_stages else None

    @property
    def input_stages(self) -> tuple[str, ...]:
        """Every stage this one depends on, in the pipeline's order."""
        return tuple(self._input_stages)

    # -- outputs -----------------------------------------------------------------

    def has_output(self, stage: str) -> bool:
        return stage in self._added or self._outputs.get(stage) is not None

    def output_ref(self, stage: str) -> dict[str, Any] | None:
        return self._outputs.get(stage)

    def add_output(self, stage: str, value: Any) -> None:
        """Make ``value`` the output of ``stage`` for this context (in-process use)."""
        self._added[stage] = value

    def get_output(self, stage: str, table: str | None = None) -> Any:
        """The output of an earlier stage, in a shape that depends on what it returned,
        never on its data.

        Tables come back as a DuckDB relation (several tables: a dict of
        relations; ``table`` names one); a list of dicts (or a dict of
        columns) as that again, read from its table; plain values as
        themselves; a skipped stage or one that returned None gives None.
        The rows a ``quarantine`` moved aside are never part of the default
        shape: ``get_output(stage, table=f"{stage}_rejected")`` reads them
        (the table exists, empty when no row was rejected).
        """
        if stage in self._added:
            return self._added[stage]
        if stage not in self._outputs:
            known = ", ".join(sorted(self._outputs)) or "none"
            raise KeyError(f"no output of stage {stage!r} in run {self.run_id} "
                           f"(stages with outputs here: {known})")
        ref = self._outputs[stage]
        if not ref or ref.get("kind") == "none":
            return None
        if ref["kind"] == "value":
            return _load_value(self.state_dir, ref, stage)
        tables = list(ref.get("tables") or {"output": None})
        con = self.duckdb
        self._attach(stage)
        if table is not None:
            if table not in tables:
                raise KeyError(f"stage {stage!r} has no table {table!r} (its tables: {', '.join(tables)})")
            return con.table(f"{quote(catalog_for(stage))}.{quote(table)}")
        side = ref.get("rejected_table") or f"{stage}_rejected"
        shown = [t for t in tables if t != side] or tables
        if ref.get("shape") and "output" in tables:  # records: given back as records
            return _read_back(con.sql(f"SELECT * FROM {quote(catalog_for(stage))}.\"output\" "
                                      "ORDER BY rowid"), ref["shape"])
        if len(shown) == 1:
            return con.table(f"{quote(catalog_for(stage))}.{quote(shown[0])}")
        return {t: con.table(f"{quote(catalog_for(stage))}.{quote(t)}") for t in shown}

    def output_table(self, stage: str, table: str = "output") -> str:
        """The quoted SQL name of an earlier stage's table, attached and ready to query."""
        ref = self._outputs.get(stage)
        if not ref or ref.get("kind") != "tables":
            raise KeyError(f"stage {stage!r} has no table output in run {self.run_id}")
        self._attach(stage)
        return f"{quote(catalog_for(stage))}.{quote(table)}"

    def output_path(self, stage: str) -> Path:
        """The DuckDB file holding an earlier stage's tables, to ``ATTACH ... (READ_ONLY)``
        from another connection (a loader's ``warehouse()``); ``output_table`` is the way
        from this attempt's own connection.  An output in the object store is fetched into
        the local cache first."""
        ref = self._outputs.get(stage)
        if not ref or ref.get("kind") != "tables":
            raise KeyError(f"stage {stage!r} has no table output in run {self.run_id}")
        if inlinetables.is_inline(ref):   # kept in the event log: written to a file to attach
            return inlinetables.materialise(
                ref, inlinetables.file_for(self.state_dir, self.run_id, stage, ref),
                what=f"output of stage {stage!r} read by run {self.run_id}")
        return store.local_path(self.state_dir, ref)

    def passthrough(self, stage: str) -> "Passthrough":
        """Return this from a stage to make its output that of ``stage``, without a copy."""
        return Passthrough(stage)

    # -- SQL ---------------------------------------------------------------------

    @property
    def duckdb(self):
        """A DuckDB connection: the attempt's own database inside a stage; read-only after."""
        if self._con is None:
            import duckdb

            if self.stage_name is not None and self.attempt is not None:
                path = self._file_path = store.attempt_path(
                    self.state_dir, self.run_id, self.stage_name, self.attempt, ".duckdb")
                config = _duckdb_config(self.duckdb_settings)
                self._in_memory = self.duckdb_settings.get("inline_tables", True) and \
                    inlinetables.small_inputs(self._outputs, self.params.get("input_file"))
                if not self._in_memory:   # (in memory: the file is made only if needed)
                    _fresh_file(path)
                self._con_path = None if self._in_memory else path
                if self._in_memory and "threads" not in config:
                    # small data: DuckDB's threads cost more than they give (a statement
                    # ~0.1 ms of CPU more each, a small CSV read twice the CPU)
                    config["threads"] = 1
                # the thread's warm DuckDB instance (pipelines.attemptdb): ~3 ms, not ~20
                self._attempt_db = attemptdb.open_attempt(path, config, in_memory=self._in_memory)
                self._con = (self._attempt_db.con if self._attempt_db is not None
                             else duckdb.connect(":memory:" if self._in_memory else str(path),
                                                 config=config))
            else:
                self._con = duckdb.connect(":memory:", config=_duckdb_config(self.duckdb_settings))
        return self._con

    @property
    def attempt_database(self) -> attemptdb.AttemptDatabase | None:
        """The attempt's file on the thread's warm instance, once ``duckdb`` was used (None
        for a database of its own: :func:`pipelines.attemptdb.open_attempt`)."""
        return self._attempt_db

    @property
    def database_path(self) -> Path | None:
        """The attempt's DuckDB file, once ``duckdb`` has been used inside a stage (None while
        its database is in memory)."""
        return self._con_path

    @property
    def in_memory(self) -> bool:
        """Whether the attempt's database is in memory (its inputs are small)."""
        return self._in_memory and self._con is not None

    def write_file(self) -> Path:
        """Copy the attempt's in-memory database to its file (the tables did not fit inline);
        the file is then the attempt's database, checkpointed once the context closes."""
        con = self.duckdb
        path = self._file_path
        if path is None:   # set with the attempt's database, by `duckdb`
            raise RuntimeError("write_file() is for a stage attempt's own database")
        _fresh_file(path)
        source = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f"ATTACH {sql_literal(str(path))} AS __ahgd_file; "
                    f"COPY FROM DATABASE {quote(source)} TO __ahgd_file; DETACH __ahgd_file")
        self._con_path, self._in_memory = path, False
        return path

    def sql(self, query: str, params: Any = None):
        """``context.duckdb.sql(query, params=...)``: a lazy relation."""
        return self.duckdb.sql(query, params=params)

    def _attach(self, stage: str) -> None:
        if stage in self._attached:
            return
        ref = self._outputs.get(stage)
        if not ref or ref.get("kind") != "tables":
            return
        catalog = catalog_for(stage)
        statements = self._attach_statements(stage, ref, catalog)
        con = self.duckdb
        if self._attempt_db is not None:   # known to the attempt: detached without a listing
            self._attempt_db.attach_input(catalog, statements)
        else:
            con.execute("; ".join(statements))
        self._attached.add(stage)

    def _attach_statements(self, stage: str, ref: Mapping[str, Any], catalog: str) -> list[str]:
        """The statements that attach ``stage``'s tables as ``catalog``: its file read-only,
        or its inline tables as an in-memory catalog."""
        if inlinetables.is_inline(ref):
            return inlinetables.attach_statements(
                ref, catalog, what=f"output of stage {stage!r} read by run {self.run_id}")
        path = store.local_path(self.state_dir, ref)
        return [f"ATTACH {sql_literal(str(path))} AS {quote(catalog)} (READ_ONLY)"]

    @contextmanager
    def warehouse(self, path: str | os.PathLike[str] | None = None) -> Iterator[Any]:
        """An exclusive connection to ``<state dir>/warehouse.duckdb`` for loaders.

        DuckDB allows one writing process per file, so loaders of different
        pipelines take turns on a lock file; write idempotently (delete the
        rows of this source, then insert) inside one transaction.  The tables
        of earlier stages are attached to it read-only, as on ``duckdb``, so
        ``output_table(stage)`` names them here too::

            with context.warehouse() as con:
                con.execute(f"CREATE OR REPLACE TABLE deaths AS "
                            f"SELECT * FROM {context.output_table('transform')}")
  The first
        call that creates the warehouse gives it an identity (table
        ``_ahgd.identity``); the attempt reports the one it found, so that a
        warehouse deleted or replaced since the last load is noticed.  A file
        that is not a DuckDB database raises :class:`WarehouseDamaged`, which
        names it and the fix.
        """
        import duckdb

        if REMOTE_HOST.get() is not None:
            raise ConfigError(
                f"stage {self.stage_name!r} of pipeline {self.pipeline_name!r} opened the "
                f"warehouse on {REMOTE_HOST.get()}, a Dask worker; stages that write the "
                "warehouse run on the daemon's host: give the stage `executor: local` "
                "(StageConfig(executor='local') in Python)")
        target = Path(path) if path is not None else self.state_dir / WAREHOUSE
        target.parent.mkdir(parents=True, exist_ok=True)
        seen = identity.recorded_path(self.state_dir, target)
        with open(identity.lock_path(target), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            created = not target.exists()
            try:
                con = duckdb.connect(str(target), config=_duckdb_config(self.duckdb_settings))
                try:
                    found = identity.ensure_identity(con, run_id=self.run_id, created=created)
                except BaseException:
                    con.close()
                    raise
            except duckdb.Error as exc:
                damage = identity.damage_of(target, exc)
                if damage is None:  # a lock of another program, a full disk: not the file
                    raise
                self.warehouses_seen[seen] = identity.report_of(self.state_dir, target, error=damage)
                raise WarehouseDamaged(
                    identity.damaged_message(target, damage, self.state_dir)) from None
            self.warehouses_seen.setdefault(seen, identity.report_of(self.state_dir, target, found))
            try:
                self._attach_outputs(con)
                yield con
            finally:
                con.close()

    def _attach_outputs(self, con: Any) -> None:
        """Attach every earlier stage's tables to ``con`` read-only, as :meth:`_attach` does
        on the attempt's own connection (a stage named like the warehouse file is left out:
        read it through :meth:`output_path`)."""
        own = con.execute("SELECT current_database()").fetchone()[0]
        for stage, ref in self._outputs.items():
            catalog = catalog_for(stage)
            if ref and ref.get("kind") == "tables" and catalog.lower() != own.lower():
                con.execute("; ".join(self._attach_statements(stage, ref, catalog)))

    def close(self) -> None:
        """Close the attempt's database: checkpointed and closed, complete on disk."""
        if self._con is not None:
            con, db = self._con, self._attempt_db
            self._con, self._attempt_db = None, None
            self._attached.clear()
            if db is not None:
                db.close()  # DETACH: checkpointed and closed, as closing a connection does
            else:
                con.close()

    def __repr__(self) -> str:
        return (f"PipelineContext(run_id={self.run_id!r}, pipeline={self.pipeline_name!r}, "
                f"state={self.state!r})")


@dataclass(frozen=True)
class Passthrough:
    """Marks a stage output as the very output of an earlier stage."""

    stage: str


def _fresh_file(path: Path) -> None:
    """Make ``path``'s folder; remove what a killed earlier try of this attempt left there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)


def _duckdb_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in ("memory_limit", "temp_directory", "threads", "max_temp_directory_size"):
        if settings.get(key) is not None:
            config[key] = str(settings[key]) if key != "threads" else int(settings[key])
    if "temp_directory" in config:
        Path(config["temp_directory"]).mkdir(parents=True, exist_ok=True)
    return config


def _load_value(state_dir: Path, ref: Mapping[str, Any], stage: str) -> Any:
    fmt = ref.get("format")
    if fmt == "inline":
        return ref.get("value")
    store.verify(state_dir, ref, what=f"output of stage {stage!r}")
    path = store.local_path(state_dir, ref)
    if fmt == "json":
        return json.loads(path.read_text())  # type: ignore[union-attr]
    if fmt == "pickle":
        return pickle.loads(path.read_bytes())  # type: ignore[union-attr]
    raise StageOutputError(f"output of stage {stage!r} has unknown format {fmt!r}")


def _read_back(relation: Any, shape: str) -> Any:
    """A table made from records (``pipelines.records``) as a list of dicts, or a dict of
    lists for ``shape == "columns"``."""
    names = list(relation.columns)
    rows = relation.fetchall()
    if shape == "columns":
        return {n: [row[i] for row in rows] for i, n in enumerate(names)}
    return [dict(zip(names, row)) for row in rows]


def result_from_attempt(stage: str, attempt: Any) -> StageResult:
    info = attempt.info() if attempt.detail != "{}" else {}
    return StageResult(stage=stage, state=attempt.state, attempts=attempt.attempt,
                       error=attempt.error, rows=info.get("rows"), wall_s=info.get("wall_s"),
                       output=info.get("output"))


__all__ = ["PipelineContext", "StageResult", "Passthrough", "catalog_for", "quote"]

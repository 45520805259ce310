"""Storing what a stage returned: tables in the attempt's own DuckDB file (small ones in
the event itself: :mod:`pipelines.inlinetables`), or a value.

``store_output`` is called by :func:`pipelines.execution.runner.run_task` once
the stage has returned.  Tables (DuckDB relations, Arrow tables, DataFrames, a
dict of those, a list of dicts: :mod:`pipelines.records`) are written to the
attempt's database and checked against the stage's validation rules as SQL;
anything else is a value (inline JSON, a JSON file, or a pickle).  What cannot
be stored fails the stage with a message saying what can.

An attempt's ``rows`` is the row count of its ``output`` table; a stage that
returns a value (a loader, whose rows went elsewhere) reports the rows it
handled as an integer ``rows`` in a returned mapping, as the bundled
``WarehouseLoader`` does with ``{"table": ..., "rows": 2293, ...}``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from state import store
from state.events import plain_json

from .. import inlinetables, records
from ..context import Passthrough, PipelineContext, quote
from ..errors import StageOutputError, ValidationFailed

#: plain values up to this size (JSON text) ride inside the stage.completed event
INLINE_LIMIT = 16 * 1024


def store_output(ctx: PipelineContext, task: Any,
                 value: Any) -> tuple[dict, int | None, dict | None]:
    """``(output reference, rows of the output table, validation report)``."""
    if isinstance(value, Passthrough):
        if value.stage not in task.upstream:
            raise StageOutputError(f"stage {task.stage!r} passed through stage {value.stage!r}, "
                                   "which is not one of its inputs")
        ref = ctx.output_ref(value.stage) or {"kind": "none"}
        report = None
        if task.rules:
            if ref.get("kind") != "tables":
                raise StageOutputError(f"stage {task.stage!r} has validation rules but its "
                                       f"input (stage {value.stage!r}) has no table")
            if task.rules.get("quarantine"):
                raise StageOutputError(
                    f"stage {task.stage!r} passes its input through unchanged, so it cannot "
                    "quarantine rows; drop `quarantine` or return a relation (the stage then "
                    "owns a copy)")
            # the input is attached read-only: validation here only counts and reports
            report = _validate(ctx.duckdb, task, ctx.output_table(value.stage))
        _drop_attempt_database(ctx)
        return dict(ref), (ref.get("tables") or {}).get("output"), report
    tables, shape = _as_tables(ctx, task, value)
    if tables is None:
        if task.rules:
            raise StageOutputError(
                f"stage {task.stage!r} has validation rules but returned "
                f"{_type_name(value)}, not a table; return a DuckDB relation, Arrow table, "
                "DataFrame or a list of dicts, or remove its validation_rules")
        _drop_attempt_database(ctx)
        return _store_value(ctx, task, value), reported_rows(value), None
    report = None
    con = ctx.duckdb
    extra: dict[str, Any] = {"shape": shape} if shape else {}
    if task.rules:
        checked = "output" if "output" in tables else tables[0]
        report = _validate(con, task, quote(checked))
        if task.rules.get("quarantine"):
            extra["rejected_table"] = _rejected_table(con, task.stage, checked)
    db = ctx.attempt_database
    # small inputs: the tables ride in the event if they fit (the one table's text read
    # before the query log, bounded to what could fit), else they go to a file
    early = inlinetables.prefetch(con, read=db.read) if ctx.in_memory and \
        tables == ["output"] and db is not None else None
    counts = db.row_counts(tables, "output" in tables) if db is not None else None
    known = {"output": early} if early else None   # kept only if it holds the rows counted
    if counts is None:   # the query log cannot tell which tables the attempt's database holds
        counts = _row_counts(con, "output" in tables)
    if ctx.in_memory:
        ref = inlinetables.encode(con, counts, known=known)
        if ref is not None:
            ctx.close()
            return {**ref, **extra}, counts.get("output"), report
        ctx.write_file()
    path = ctx.database_path
    ctx.close()  # checkpoint and release the file before hashing it
    ref = store.file_ref(ctx.state_dir, path, kind="tables", format="duckdb", tables=counts,
                         **extra)
    return ref, counts.get("output"), report


def reported_rows(value: Any) -> int | None:
    """The rows a stage that returned a value says it handled: an integer ``rows`` (0 or
    more) in a returned mapping; None otherwise."""
    if isinstance(value, dict):
        rows = value.get("rows")
        if type(rows) is int and rows >= 0:
            return rows
    return None


def _rejected_table(con: Any, stage: str, checked: str) -> str:
    """``<stage>_rejected``, made (empty) when no row was rejected: it is always there to read."""
    name = f"{stage}_rejected"
    if name not in _table_names(con):
        con.execute(f"CREATE TABLE main.{quote(name)} AS SELECT *, NULL::VARCHAR AS "
                    f"_rejected_reason FROM main.{quote(checked)} LIMIT 0")
    return name


def _as_tables(ctx: PipelineContext, task: Any,
               value: Any) -> tuple[list[str] | None, str | None]:
    """Materialise tabular output as tables of the attempt database: (names, shape), or
    (None, None) if it is a value.  ``shape`` says how ``get_output`` gives it back:
    None (relations), ``records`` or ``columns`` (:mod:`pipelines.records`)."""
    if isinstance(value, dict) and value and all(_is_tabular(v) for v in value.values()):
        for name in value:
            if not isinstance(name, str) or not name.isidentifier():
                raise StageOutputError(f"stage {task.stage!r} returned a table named {name!r}; "
                                       "table names must be identifiers")
        for name, v in value.items():
            _materialise(ctx, task, name, v)
        return list(value), None
    if _is_tabular(value):
        _materialise(ctx, task, "output", value)
        return ["output"], None
    if records.is_records(value) or (task.rules and records.is_column_dict(value)):
        shape = records.COLUMNS if isinstance(value, dict) else records.RECORDS
        records.create_table(ctx.duckdb, "output", records.columns_of(value, stage=task.stage),
                             stage=task.stage)
        return ["output"], shape
    if task.rules and isinstance(value, (list, tuple)) and not value:
        raise ValidationFailed(
            f"stage {task.stage!r} returned no records (an empty list), so there is no table "
            "to check its validation rules against; return at least one record, or a relation "
            "or DataFrame with columns and no rows")
    return None, None


def _is_tabular(value: Any) -> bool:
    mod = type(value).__module__
    name = type(value).__name__
    if mod.startswith("duckdb") and "Relation" in name:
        return True
    if mod.startswith("pyarrow") and name in ("Table", "RecordBatch", "RecordBatchReader"):
        return True
    return mod.startswith("pandas") and name == "DataFrame"


def _materialise(ctx: PipelineContext, task: Any, name: str, value: Any) -> None:
    con = ctx.duckdb
    target = f"main.{quote(name)}"
    if getattr(value, "_con", None) is con and _created(ctx, value, target):
        return
    view = f"__ahgd_out_{name}"
    try:
        con.register(view, value)
    except Exception as exc:  # a relation of another connection cannot be registered
        if hasattr(value, "fetch_arrow_table"):
            try:
                con.register(view, value.fetch_arrow_table())
            except Exception:
                raise StageOutputError(
                    f"stage {task.stage!r} returned a DuckDB relation from another connection "
                    f"({exc}); build it on context.duckdb (context.sql(...)) instead") from exc
        else:
            raise StageOutputError(f"stage {task.stage!r} returned a {_type_name(value)} that "
                                   f"DuckDB cannot read: {exc}") from exc
    try:
        con.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {quote(view)}")
    except Exception as exc:  # a lazy read_csv of a bad file fails here, not in the stage
        from ..csvfile import csv_error

        problem = csv_error(exc, input_file=ctx.input_file)
        if problem is not None:
            raise problem from None
        raise
    finally:
        con.unregister(view)


def _created(ctx: PipelineContext, relation: Any, target: str) -> bool:
    """``CREATE TABLE target AS`` the relation's own query, in one statement: False when the
    table is there already (the stage made it), to be replaced the long way.  A relation
    registered as a view and read back is bound twice, a ``read_csv`` sniffing the file
    twice: 1-3 ms of CPU more for a small table."""
    import duckdb

    try:
        relation.create(target)
    except duckdb.CatalogException as exc:
        if "already exists" in str(exc):
            return False
        raise
    except Exception as exc:  # a lazy read_csv of a bad file fails here, not in the stage
        from ..csvfile import csv_error

        problem = csv_error(exc, input_file=ctx.input_file)
        if problem is not None:
            raise problem from None
        raise
    return True


def _drop_attempt_database(ctx: PipelineContext) -> None:
    """The attempt's DuckDB file was opened only to read inputs: it is not an output."""
    ctx.close()
    if ctx.database_path is not None:
        for suffix in ("", ".wal"):
            ctx.database_path.with_name(ctx.database_path.name + suffix).unlink(missing_ok=True)


def _row_counts(con: Any, has_output: bool) -> dict[str, int]:
    """Every table of the attempt's database and its rows; the names and the rows of
    ``output`` (the usual one table) in one round trip."""
    if not has_output:
        names, known = _table_names(con), {}
    else:
        names, rows = con.execute(f"SELECT ({_NAMES}), (SELECT COUNT(*) FROM main.\"output\")"
                                  ).fetchone()
        names, known = list(names or ()), {"output": rows}
    return {name: known[name] if name in known else
            con.execute(f"SELECT COUNT(*) FROM main.{quote(name)}").fetchone()[0]
            for name in names}


_NAMES = ("SELECT list(table_name ORDER BY table_name) FROM duckdb_tables() "
          "WHERE database_name = current_database() AND schema_name = 'main'")


def _table_names(con: Any) -> list[str]:
    return list(con.execute(_NAMES).fetchone()[0] or ())


def _store_value(ctx: PipelineContext, task: Any, value: Any,
                 _dumps: Any = json.JSONEncoder(allow_nan=False).encode) -> dict[str, Any]:
    if value is None:
        return {"kind": "none"}
    state_dir = ctx.state_dir
    try:
        text = _dumps(value)   # json.dumps(value, allow_nan=False); never sort_keys: key order is data
        # exact: JSON gives the value back equal (a tuple, a subclass, a non-str key would
        # not); a small value of plain types is known to without decoding the text again
        exact = (len(text) <= 256 and plain_json(value)) or json.loads(text) == value
    except (TypeError, ValueError):
        text, exact = None, False
    if text is not None and exact and len(text) <= INLINE_LIMIT:
        return {"kind": "value", "format": "inline", "value": value}
    if text is not None and exact:
        path = store.attempt_path(state_dir, task.run_id, task.stage, task.attempt, ".json")
        _write(path, text.encode())
        return store.file_ref(state_dir, path, kind="value", format="json")
    try:
        blob = pickle.dumps(value, protocol=5)
    except Exception as exc:
        raise StageOutputError(
            f"stage {task.stage!r} returned {_type_name(value)}, which cannot be stored "
            f"({type(exc).__name__}: {exc}); return a DuckDB relation, an Arrow table, a "
            "DataFrame, or a value that JSON or pickle can hold") from exc
    path = store.attempt_path(state_dir, task.run_id, task.stage, task.attempt, ".pkl")
    _write(path, blob)
    return store.file_ref(state_dir, path, kind="value", format="pickle")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _type_name(value: Any) -> str:
    t = type(value)
    return f"a {t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else f"a {t.__name__}"


# --------------------------------------------------------------------------- validation


def _validate(con: Any, task: Any, table: str) -> dict[str, Any]:
    from ..validation import enforce, validate_table

    base = Path(task.config_dir) if task.config_dir else None
    report = validate_table(con, table, task.rules, stage=task.stage, base_dir=base)
    enforce(report)
    return {"rows": report.rows, "rejected": report.rejected,
            "rejected_table": report.rejected_table}


__all__ = ["INLINE_LIMIT", "store_output"]

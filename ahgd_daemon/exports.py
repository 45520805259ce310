"""Exports (``ahgd export TABLE --format parquet|csv --to PATH``): a warehouse table, or a table
of one stage's output (``--run RUN_ID --stage S``: its output, or its ``<stage>_rejected``
rows), copied to a Parquet or CSV file.

DuckDB streams the table to the file (``COPY ... TO``), so a table larger than
memory exports; the source is attached read-only, and the file is written
under a temporary name beside the target and renamed into place when it is
whole, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines import inlinetables
from pipelines.sqltext import quote, sql_literal
from state import store
from state.errors import AhgdError, did_you_mean
from state.warehouse import WAREHOUSE

FORMATS = ("parquet", "csv")


class ExportError(AhgdError):
    """An export that cannot be done as asked; says why and what to do."""


def stage_output_file(state_dir: Path, run: dict[str, Any], stage: str) -> Path:
    """The DuckDB file of ``stage``'s output in ``run`` (``ops_queries.run_in_full``): its
    latest completed attempt's."""
    stages = list(dict.fromkeys([*run["stages"], *(a["stage"] for a in run["attempts"])]))
    if stage not in stages:
        close = did_you_mean(stage, stages)
        raise ExportError(f"run {run['run_id']!r} has no stage {stage!r}"
                          + (f"; {close}" if close else "")
                          + f" (its stages: {', '.join(stages) or 'none yet'})")
    done = [a for a in run["attempts"] if a["stage"] == stage and a["state"] == "COMPLETED"
            and (a["detail"].get("output") or {}).get("kind") == "tables"]
    if not done:
        states = [f"#{a['attempt']} {a['state']}" for a in run["attempts"] if a["stage"] == stage]
        raise ExportError(f"stage {stage!r} of run {run['run_id']} has no table output to export "
                          f"(its attempts: {', '.join(states) or 'none'}; only a completed stage "
                          "that returned tables has one); `ahgd runs show "
                          f"{run['run_id']}` shows what it did")
    ref = done[-1]["detail"]["output"]
    if inlinetables.is_inline(ref):   # small tables kept in the event log: written to a file
        return inlinetables.materialise(
            ref, inlinetables.file_for(state_dir, run["run_id"], stage, ref),
            what=f"output of stage {stage!r} of run {run['run_id']}")
    path = store.local_path(state_dir, ref)
    if path is None or not Path(path).exists():
        raise ExportError(f"the output of stage {stage!r} of run {run['run_id']} is gone from "
                          f"{path} (removed by retention, or by hand); run the pipeline again to "
                          "make it")
    return Path(path)


def warehouse_file(state_dir: Path) -> Path:
    path = Path(state_dir) / WAREHOUSE
    if not path.exists():
        raise ExportError(f"no warehouse at {path}: no loader has run with this state directory "
                          "yet (pass --state-dir, or --run RUN_ID --stage S for a stage's output)")
    return path


#: DuckDB's memory for an export: the copy streams, so this bounds the process whatever the
#: table's size (beyond it DuckDB would raise, not swap), and leaves the server's memory to runs
MEMORY_LIMIT = "1GB"


def export(source: Path, table: str, fmt: str, target: Path, *, what: str,
           memory_limit: str = MEMORY_LIMIT) -> dict[str, Any]:
    """Copy ``table`` of the DuckDB file ``source`` to ``target`` as ``fmt``; the row count."""
    import duckdb

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    target = Path(target)
    if target.is_dir():
        raise ExportError(f"--to {target} is a directory; give a file name such as "
                          f"{target / (table + '.' + fmt)}")
    if not target.parent.is_dir():
        raise ExportError(f"--to {target}: the folder {target.parent} does not exist; create it "
                          "first")
    con = duckdb.connect(":memory:", config={"memory_limit": memory_limit})
    try:
        try:
            con.execute(f"ATTACH {sql_literal(str(source))} AS src (READ_ONLY)")
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise ExportError(f"{source} is being written (a loader runs now); try again "
                                  "in a moment") from None
            raise ExportError(f"cannot open {what} {source}: {exc}") from None
        schema, name = _find(con, table, what)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
        try:
            con.execute(f"COPY (SELECT * FROM src.{quote(schema)}.{quote(name)}) TO "
                        f"{sql_literal(str(partial))} ({options})")
            rows = con.execute(f"SELECT COUNT(*) FROM src.{quote(schema)}.{quote(name)}"
                               ).fetchone()[0]
            os.replace(partial, target)
        finally:
            if partial.exists():
                partial.unlink()
    finally:
        con.close()
    return {"table": f"{schema}.{name}" if schema != "main" else name, "format": fmt,
            "to": str(target), "rows": rows, "bytes": target.stat().st_size, "from": str(source)}


def _find(con: Any, table: str, what: str) -> tuple[str, str]:
    tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE "
                         "table_catalog = 'src' ORDER BY 1, 2").fetchall()
    names = {(f"{s}.{t}" if s != "main" else t): (s, t) for s, t in tables}
    if table in names:
        return names[table]
    lowered = {k.lower(): v for k, v in names.items()}
    if table.lower() in lowered:
        return lowered[table.lower()]
    close = did_you_mean(table, names)
    raise ExportError(f"no table {table!r} in {what}" + (f"; {close}" if close else "")
                      + f" (its tables: {', '.join(names) or 'none'})")

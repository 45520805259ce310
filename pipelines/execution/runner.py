"""One stage attempt, executed where the executor puts it (a worker or this process).

``run_task`` builds the stage's context, calls the pipeline's
``execute_stage``, stores what it returned (DuckDB tables in the attempt's own
file, or a plain value), applies the stage's validation rules as SQL, and
reports an :class:`Outcome` with wall time, CPU time and peak RSS.  It never
raises for a stage failure: the outcome says what went wrong and whether a
retry could help.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state import store
from state.errors import AhgdError

from ..context import Passthrough, PipelineContext, quote
from ..errors import InputError, StageError, StageOutputError
from .diskfull import disk_full

#: plain values up to this size (JSON text) ride inside the stage.completed event
INLINE_LIMIT = 16 * 1024


@dataclass
class StageTask:
    """Everything a worker needs to run one attempt (picklable, small)."""

    run_id: str
    pipeline_name: str
    stage: str
    attempt: int
    state_dir: str
    params: dict[str, Any]
    upstream: dict[str, dict[str, Any] | None]
    input_stages: tuple[str, ...]
    rules: dict[str, Any]
    #: the folder of the file that configured the stage (YAML): relative paths start there
    config_dir: str | None
    duckdb_settings: dict[str, Any]
    timeout: float | None = None
    requirements: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """How an attempt ended, as reported back to the engine."""

    ok: bool
    output: dict[str, Any] | None = None
    rows: int | None = None
    wall_s: float = 0.0
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    retryable: bool = True
    bad_input: bool = False         # the stage raised InputError: the data, not the code
    disk_full: bool = False         # no space left on a disk: the machine, not the stage
    timed_out: bool = False
    interrupted: bool = False
    worker_pid: int | None = None
    validation: dict[str, Any] | None = None
    #: what each warehouse the attempt opened was found to be (state.warehouse.report_of)
    warehouses: list[dict[str, Any]] | None = None

    def payload(self) -> dict[str, Any]:
        """The event payload (stage.completed / stage.failed / stage.timed_out)."""
        keep = {"wall_s": round(self.wall_s, 6)}
        for key in ("cpu_s", "peak_rss_mb", "worker_pid"):
            value = getattr(self, key)
            if value is not None:
                keep[key] = round(value, 6) if isinstance(value, float) else value
        if self.ok:
            keep["output"] = self.output or {"kind": "none"}
            if self.rows is not None:
                keep["rows"] = self.rows
            if self.validation:
                keep["validation"] = self.validation
            if self.warehouses:
                keep["warehouses"] = self.warehouses
        else:
            keep["error"] = self.error or "stage failed"
            keep["error_type"] = self.error_type
            keep["retryable"] = self.retryable
            if self.bad_input:
                keep["bad_input"] = True
            if self.disk_full:
                keep["disk_full"] = True
            if self.traceback:
                keep["traceback"] = self.traceback[-4000:]
            if self.warehouses:
                keep["warehouses"] = self.warehouses
        return keep


def run_task(pipeline: Any, task: StageTask) -> Outcome:
    """Execute one attempt of ``task.stage`` of ``pipeline``; never raises for stage errors."""
    usage = _Usage()
    ctx = PipelineContext(
        run_id=task.run_id,
        pipeline_name=task.pipeline_name,
        state_dir=Path(task.state_dir),
        params=task.params,
        outputs=task.upstream,
        stage_name=task.stage,
        attempt=task.attempt,
        input_stages=task.input_stages,
        duckdb_settings=task.duckdb_settings,
        config_dir=task.config_dir,
    )
    try:
        value = pipeline.execute_stage(task.stage, ctx)
        output, rows, report = _store(ctx, task, value)
        outcome = Outcome(ok=True, output=output, rows=rows, validation=report)
    except (Exception, SystemExit) as exc:  # a stage may raise anything; Ctrl-C still stops us
        outcome = _failure(task, exc)
    finally:
        ctx.close()
    outcome.warehouses = list(ctx.warehouses_seen.values()) or None
    usage.finish(outcome)
    if not outcome.ok:
        _discard(ctx, task)
    return outcome


def _failure(task: StageTask, exc: BaseException) -> Outcome:
    if isinstance(exc, SystemExit):
        message = f"stage {task.stage!r} called sys.exit({exc.code!r})"
    elif isinstance(exc, AhgdError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    retryable = getattr(exc, "retryable", True) if isinstance(exc, StageError) else \
        not isinstance(exc, AhgdError)
    return Outcome(
        ok=False,
        error=message,
        error_type=type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
        retryable=retryable,
        bad_input=isinstance(exc, InputError),
        disk_full=disk_full(exc),
    )


def _discard(ctx: PipelineContext, task: StageTask) -> None:
    """Remove what a failed attempt wrote: it was never recorded, so it does not exist."""
    store.remove_attempt(ctx.state_dir, task.run_id, task.stage, task.attempt)


# --------------------------------------------------------------------------- storing outputs


def _store(ctx: PipelineContext, task: StageTask, value: Any) -> tuple[dict, int | None, dict | None]:
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
    tables = _as_tables(ctx, task, value)
    if tables is None:
        if task.rules:
            raise StageOutputError(
                f"stage {task.stage!r} has validation rules but returned "
                f"{_type_name(value)}, not a table; return a DuckDB relation, Arrow table or "
                "DataFrame, or remove its validation_rules")
        _drop_attempt_database(ctx)
        return _store_value(ctx, task, value), None, None
    report = None
    con = ctx.duckdb
    if task.rules:
        report = _validate(con, task, '"output"' if "output" in tables else quote(next(iter(tables))))
    counts = {
        name: con.execute(f"SELECT COUNT(*) FROM main.{quote(name)}").fetchone()[0]
        for name in _table_names(con)
    }
    path = ctx.database_path
    ctx.close()  # checkpoint and release the file before hashing it
    ref = store.file_ref(ctx.state_dir, path, kind="tables", format="duckdb", tables=counts)
    return ref, counts.get("output"), report


def _as_tables(ctx: PipelineContext, task: StageTask, value: Any) -> list[str] | None:
    """Materialise tabular output as tables of the attempt database; None if not tabular."""
    if isinstance(value, dict) and value and all(_is_tabular(v) for v in value.values()):
        for name in value:
            if not isinstance(name, str) or not name.isidentifier():
                raise StageOutputError(f"stage {task.stage!r} returned a table named {name!r}; "
                                       "table names must be identifiers")
        for name, v in value.items():
            _materialise(ctx, task, name, v)
        return list(value)
    if _is_tabular(value):
        _materialise(ctx, task, "output", value)
        return ["output"]
    return None


def _is_tabular(value: Any) -> bool:
    mod = type(value).__module__
    name = type(value).__name__
    if mod.startswith("duckdb") and "Relation" in name:
        return True
    if mod.startswith("pyarrow") and name in ("Table", "RecordBatch", "RecordBatchReader"):
        return True
    return mod.startswith("pandas") and name == "DataFrame"


def _materialise(ctx: PipelineContext, task: StageTask, name: str, value: Any) -> None:
    con = ctx.duckdb
    target = f"main.{quote(name)}"
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
    finally:
        con.unregister(view)


def _drop_attempt_database(ctx: PipelineContext) -> None:
    """The attempt's DuckDB file was opened only to read inputs: it is not an output."""
    ctx.close()
    if ctx.database_path is not None:
        for suffix in ("", ".wal"):
            ctx.database_path.with_name(ctx.database_path.name + suffix).unlink(missing_ok=True)


def _table_names(con: Any) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' ORDER BY table_name").fetchall()
    return [r[0] for r in rows]


def _store_value(ctx: PipelineContext, task: StageTask, value: Any) -> dict[str, Any]:
    if value is None:
        return {"kind": "none"}
    state_dir = ctx.state_dir
    try:
        text = json.dumps(value, allow_nan=False)   # never sort_keys: key order is data
        exact = json.loads(text) == value
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


def _validate(con: Any, task: StageTask, table: str) -> dict[str, Any]:
    from ..validation import enforce, validate_table

    base = Path(task.config_dir) if task.config_dir else None
    report = validate_table(con, table, task.rules, stage=task.stage, base_dir=base)
    enforce(report)
    return {"rows": report.rows, "rejected": report.rejected,
            "rejected_table": report.rejected_table}


# --------------------------------------------------------------------------- resource usage


class _Usage:
    """Wall time, CPU time (this process and its children) and peak RSS of one attempt.

    CPU comes from ``os.times()`` (the same kernel counters psutil reads, at a
    thirtieth of the cost); the peak is Linux's VmHWM, reset before each
    attempt through a kept-open ``/proc/self/clear_refs``.  Elsewhere psutil's
    current RSS stands in for the peak.
    """

    def __init__(self) -> None:
        _proc_files().reset_peak()
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu_seconds()

    def finish(self, outcome: Outcome) -> None:
        outcome.wall_s = time.perf_counter() - self.t0
        outcome.cpu_s = round(_cpu_seconds() - self.cpu0, 6)
        outcome.peak_rss_mb = _proc_files().peak_rss_mb()
        outcome.worker_pid = os.getpid()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _ProcFiles:
    """/proc/self files opened once per process (opening them costs more than reading)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        try:
            self.clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self.status = os.open("/proc/self/status", os.O_RDONLY)
        except OSError:
            self.clear = self.status = -1

    def reset_peak(self) -> None:
        if self.clear >= 0:
            try:  # "5" resets VmHWM: the peak becomes this attempt's, not the worker's lifetime
                os.write(self.clear, b"5")
            except OSError:
                pass

    def peak_rss_mb(self) -> float | None:
        if self.status >= 0:
            try:
                data = os.pread(self.status, 8192, 0)
                i = data.find(b"VmHWM:")
                if i >= 0:
                    return int(data[i + 6:data.index(b"kB", i)]) / 1024.0
            except (OSError, ValueError):
                pass
        try:
            import psutil

            return psutil.Process().memory_info().rss / (1024 * 1024)
        except Exception:  # pragma: no cover - psutil is a dependency
            return None


_PROC: _ProcFiles | None = None


def _proc_files() -> _ProcFiles:
    global _PROC
    if _PROC is None or _PROC.pid != os.getpid():  # per process: workers may be forked
        _PROC = _ProcFiles()
    return _PROC


"""One stage attempt, executed where the executor puts it (a worker or this process).

``run_task`` builds the stage's context, calls the pipeline's
``execute_stage``, stores what it returned (DuckDB tables in the attempt's own
file, or a plain value), applies the stage's validation rules as SQL, and
reports an :class:`Outcome` with wall time, CPU time and peak RSS.  It never
raises for a stage failure: the outcome says what went wrong and whether a
retry could help.
"""

from __future__ import annotations

import contextvars
import os
import socket
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state import store
from state.errors import AhgdError

from ..context import REMOTE_HOST, PipelineContext
from ..errors import InputError
from ..retries import classify
from .diskfull import disk_full
from .outputs import store_output


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
    #: the stage's retry_on / no_retry_on (exception class names; pipelines.retries)
    retry_on: tuple[str, ...] = ()
    no_retry_on: tuple[str, ...] = ()
    #: the StageConfig the run applies to this stage (``context.stage_config``)
    config: Any = None
    #: the object store holding outputs of attempts that ran elsewhere (state.objectstore)
    object_store: dict[str, Any] | None = None
    #: the host of the Dask worker running the attempt; None on the daemon's own host
    remote_host: str | None = None


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
    retryable: bool = True          # of a kind a retry could fix (pipelines.retries)
    retry_why: str | None = None    # why it is, or is not
    retry_after: float | None = None  # RetryLater(after=...): seconds before the retry
    bad_input: bool = False         # the stage raised InputError: the data, not the code
    disk_full: bool = False         # no space left on a disk: the machine, not the stage
    timed_out: bool = False
    interrupted: bool = False
    worker_pid: int | None = None
    #: the machine that ran the attempt, and the Dask worker's address when one did
    host: str | None = None
    worker: str | None = None
    validation: dict[str, Any] | None = None
    #: what each warehouse the attempt opened was found to be (state.warehouse.report_of)
    warehouses: list[dict[str, Any]] | None = None

    def payload(self) -> dict[str, Any]:
        """The event payload (stage.completed / stage.failed / stage.timed_out)."""
        keep = {"wall_s": round(self.wall_s, 6)}
        for key in ("cpu_s", "peak_rss_mb", "worker_pid", "host", "worker"):
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
    if task.object_store is not None:  # upstream outputs may be objects: fetched on first read
        from state import objectstore

        objectstore.configure(task.object_store)
    remote = REMOTE_HOST.set(task.remote_host)
    ctx = PipelineContext(
        run_id=task.run_id,
        pipeline_name=task.pipeline_name,
        state_dir=_state_path(task.state_dir),
        params=task.params,
        outputs=task.upstream,
        stage_name=task.stage,
        attempt=task.attempt,
        input_stages=task.input_stages,
        duckdb_settings=task.duckdb_settings,
        config_dir=task.config_dir,
        stage_config=task.config,
    )
    try:
        value = pipeline.execute_stage(task.stage, ctx)
        output, rows, report = store_output(ctx, task, value)
        outcome = Outcome(ok=True, output=output, rows=rows, validation=report)
    except (Exception, SystemExit) as exc:  # a stage may raise anything; Ctrl-C still stops us
        outcome = failure(task, exc)
    finally:
        ctx.close()
        REMOTE_HOST.reset(remote)
    outcome.warehouses = list(ctx.warehouses_seen.values()) or None
    usage.finish(outcome)
    if not outcome.ok:
        _discard(ctx, task)
    return outcome


_STATE_PATHS: dict[str, Path] = {}


def _state_path(state_dir: str) -> Path:
    """``Path(state_dir)``, made once per state directory (a Path is immutable)."""
    path = _STATE_PATHS.get(state_dir)
    if path is None:
        if len(_STATE_PATHS) > 64:
            _STATE_PATHS.clear()
        path = _STATE_PATHS[state_dir] = Path(state_dir)
    return path


def run_here(pipeline: Any, task: StageTask) -> Future:
    """Execute one attempt on the calling thread; a resolved Future of its Outcome.

    For an in-process run that executes one stage at a time: handing the attempt to
    a pool thread and waiting for it cost ~0.15 ms a stage, and a thread of this
    process can no more be stopped or timed out than the caller can.  The attempt
    runs in a copy of the caller's context variables, as it would on a pool thread
    (what it sets does not leak into the caller).  Ctrl-C (``KeyboardInterrupt``)
    propagates after what the attempt wrote is removed (it was never recorded).
    """
    future: Future = Future()
    try:
        outcome = contextvars.copy_context().run(run_task, pipeline, task)
    except BaseException:
        store.remove_attempt(Path(task.state_dir), task.run_id, task.stage, task.attempt)
        raise
    future.set_result(outcome)
    return future


def failure(task: StageTask, exc: BaseException, prefix: str = "") -> Outcome:
    """The outcome of an attempt that raised ``exc``: whether a retry could help, and why."""
    if isinstance(exc, SystemExit):
        message = f"stage {task.stage!r} called sys.exit({exc.code!r})"
    elif isinstance(exc, AhgdError):
        message = str(exc)
    else:
        message = f"{type(exc).__name__}: {exc}"
    decision = classify(exc, task.retry_on, task.no_retry_on)
    return Outcome(
        ok=False,
        error=prefix + message,
        error_type=type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
        retryable=decision.retry,
        retry_why=decision.why,
        retry_after=decision.after,
        bad_input=isinstance(exc, InputError),
        disk_full=disk_full(exc),
    )


def _discard(ctx: PipelineContext, task: StageTask) -> None:
    """Remove what a failed attempt wrote: it was never recorded, so it does not exist."""
    store.remove_attempt(ctx.state_dir, task.run_id, task.stage, task.attempt)


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
        outcome.host = outcome.host or HOSTNAME


#: this machine, as the attempts it runs record it (``stage_timings.host``)
HOSTNAME = socket.gethostname()


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


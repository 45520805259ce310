"""``BasePipeline``: subclass it, list the stages, say what each does.

    class HealthDataPipeline(BasePipeline):
        def define_stages(self):
            return ["extract", "transform", "validate", "load"]

        def execute_stage(self, stage_name, context):
            ...

    context = HealthDataPipeline("health", state_dir="var").run()
    context.state, context.failed_stage, context.error, context.get_output("load")

Every transition of every run goes to ``<state_dir>/history.db``; a run
started here leaves the same history as one started by the daemon.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping

from state import EventLog, EventType as T, new_event, queries, removals, store
from state.errors import OutputMissing, did_you_mean
from state.locks import FileLock, run_lock_path
from state.machine import DONE_STAGE_STATES, StageState
from state.statedir import resolve_state_dir

from .context import PipelineContext, result_from_attempt
from .durations import parse_duration
from .execution.engine import RunEngine
from .execution.interrupted import close_interrupted_runs
from .execution.plan import CancelToken, Progress, RunPlan
from .errors import ConfigError, ResumeRefused
from .execution.executors import Executor
from .execution import turns
from .execution.pool import run_executor
from .logs import RunLogger
from .resources import ResourceBudget
from .stage import STAGE_NAME, PipelineStage, StageConfig
from .stagelist import read_stages, stages_and_deps


class PipelineState(str, Enum):
    """Where a pipeline's current run is (the original AHGD states, plus the log's)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    RECOVERING = "RECOVERING"
    CANCELLED = "CANCELLED"
    PARKED = "PARKED"


#: (retry_attempts, retry_delay) -> (the attributes of a StageConfig built with them, the
#: names of its mutable ones): a stage without a config of its own gets a copy
_DEFAULT_CONFIGS: dict[tuple, tuple[dict[str, Any], tuple[str, ...]]] = {}


def default_stage_config(stage: str, retry_attempts: Any, retry_delay: Any) -> StageConfig:
    """``StageConfig(name=stage, retry_attempts=..., retry_delay=...)``: the same (equal,
    validated, its lists, dicts and sets its own), made by copying one that was built and
    checked for these settings, not by checking them again for every stage of every run
    (~4 µs a stage).  Anything unusual (a name the constructor would refuse, settings that
    cannot be a key) is built by the constructor, which says what is wrong."""
    try:
        key = (type(retry_attempts), retry_attempts, type(retry_delay), retry_delay)
        known = _DEFAULT_CONFIGS.get(key)
    except TypeError:  # unhashable settings: the constructor judges them
        return StageConfig(name=stage, retry_attempts=retry_attempts, retry_delay=retry_delay)
    if known is None or type(stage) is not str or not STAGE_NAME.match(stage):
        cfg = StageConfig(name=stage, retry_attempts=retry_attempts, retry_delay=retry_delay)
        if len(_DEFAULT_CONFIGS) < 64:
            attrs = dict(cfg.__dict__)
            mutable = tuple(k for k, v in attrs.items() if type(v) in (list, dict, set))
            for k in mutable:
                attrs[k] = attrs[k].copy()  # never shared with a config handed out
            _DEFAULT_CONFIGS[key] = (attrs, mutable)
        return cfg
    attrs, mutable = known
    values = attrs.copy()
    for k in mutable:
        values[k] = values[k].copy()
    values["name"] = stage
    cfg = object.__new__(StageConfig)
    cfg.__dict__ = values
    return cfg


_RUNTIME_ATTRS = ("_progress", "_cancel", "_lock", "_executor_arg", "_log", "_stage_objects",
                  "_stages_read", "_stages_reading", "_configs_read")


class BasePipeline(ABC):
    """A pipeline of named stages, run through the event log.

    ``stage_configs`` maps stage names to :class:`StageConfig` (timeout,
    retries, validation); ``max_retries`` and ``retry_delay`` apply to stages
    that do not set their own.  ``executor`` is ``"process"`` (default: each
    attempt in a warm worker process; timeouts really stop work; the pool is the
    process's own, kept warm across runs and shut down at exit),
    ``"inprocess"`` (threads; cannot enforce timeouts), or an Executor
    shared with other pipelines.
    """

    def __init__(
        self,
        name: str,
        *,
        enable_checkpoints: bool = True,
        parallel_stages: bool = False,
        max_workers: int = 4,
        max_retries: int = 3,
        retry_delay: Any = timedelta(seconds=5),
        stage_configs: Mapping[str, StageConfig] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        executor: str | Executor | None = "process",
        duckdb_settings: Mapping[str, Any] | None = None,
        timeout: Any = None,
        description: str = "",
        seed: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(f"pipeline name {name!r} is not allowed; use letters, digits, _ and -")
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"pipeline {name!r}: max_workers is {max_workers!r}; use 1 or more")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"pipeline {name!r}: max_retries is {max_retries!r}; use 0 or more")
        self.name = name
        self.description = description
        self.enable_checkpoints = enable_checkpoints
        self.parallel_stages = parallel_stages
        self.max_workers = max_workers
        self.max_retries = max_retries
        self.retry_delay = parse_duration(retry_delay, what=f"pipeline {name!r}: retry_delay")
        self.timeout = None if timeout is None else parse_duration(
            timeout, what=f"pipeline {name!r}: timeout", positive=True)
        self.stage_configs: dict[str, StageConfig] = dict(stage_configs or {})
        for key, cfg in self.stage_configs.items():
            if not isinstance(cfg, StageConfig):
                raise ConfigError(f"pipeline {name!r}: stage_configs[{key!r}] is a "
                                  f"{type(cfg).__name__}; use StageConfig(name={key!r}, ...)")
        self.state_dir = resolve_state_dir(state_dir, os.environ)
        self.duckdb_settings = dict(duckdb_settings or {})
        self.duckdb_settings.setdefault("temp_directory", str(self.state_dir / "tmp" / "duckdb"))
        self._executor_arg = executor
        self._rng = random.Random(seed)
        self._progress = Progress([])
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._log: EventLog | None = None
        self._stage_objects: dict[str, PipelineStage] | None = None

    # -- what subclasses provide ------------------------------------------------------

    @abstractmethod
    def define_stages(self) -> list[Any]:
        """The stages, in order: names, or stage objects (``ExtractorStage(config=...)``,
        whose StageConfig then applies), or both."""

    def execute_stage(self, stage_name: str, context: PipelineContext) -> Any:
        """Do one stage's work; what it returns is the stage's output.

        By default, runs the stage object ``define_stages()`` returned for it.
        """
        stage = self._objects().get(stage_name)
        if stage is None:
            raise ConfigError(f"pipeline {self.name!r}: stage {stage_name!r} is a name, not a "
                              "stage object; define execute_stage(stage_name, context)")
        return stage.execute(context)

    def get_stage_dependencies(self, stage_name: str) -> set[str]:
        """Stages that must complete before ``stage_name``: its StageConfig's
        ``prerequisites`` when it has some, else the previous stage."""
        wanted = self.stage_config(stage_name).prerequisites
        if wanted:
            return set(wanted)
        read = getattr(self, "_stages_read", None)  # kept while _stages_and_deps asks them all
        if read is None:
            stages, _ = read_stages(self)
            read = (stages, {s: i for i, s in enumerate(stages) if isinstance(s, str)})
            if getattr(self, "_stages_reading", False):
                self._stages_read = read
        stages, index = read
        i = index[stage_name] if stage_name in index else stages.index(stage_name)
        return {stages[i - 1]} if i > 0 else set()

    # -- configuration ------------------------------------------------------------------

    def stage_config(self, stage: str) -> StageConfig:
        """The effective config of a stage: its own (``stage_configs``, else its stage
        object's), else the pipeline-wide defaults."""
        memo = getattr(self, "_configs_read", None)  # while _stages_and_deps checks them all
        if memo is not None:
            found = memo.get(stage)
            if found is None:
                found = memo[stage] = self._stage_config(stage)
            return found
        return self._stage_config(stage)

    def _stage_config(self, stage: str) -> StageConfig:
        cfg = self.stage_configs.get(stage)
        if cfg is None and stage in self._objects():
            cfg = self._objects()[stage].config
        if cfg is None:
            return default_stage_config(stage, self.max_retries, self.retry_delay)
        explicit = getattr(cfg, "_explicit", None)
        changes: dict[str, Any] = {}
        if explicit is not None:
            if "retry_attempts" not in explicit:
                changes["retry_attempts"] = self.max_retries
            if "retry_delay" not in explicit:
                changes["retry_delay"] = self.retry_delay
        return cfg.changed(**changes) if changes else cfg

    def _objects(self) -> dict[str, PipelineStage]:
        """The stage objects among what define_stages() returns, by name."""
        if getattr(self, "_stage_objects", None) is None:
            self._stage_objects = read_stages(self)[1]
        return self._stage_objects  # type: ignore[return-value]

    def _stages_and_deps(self) -> tuple[list[str], dict[str, set[str]]]:
        """The stage names and each one's dependencies, checked (``pipelines.stagelist``)."""
        stages, deps, _ = self._stages_deps_configs()
        return stages, deps

    def _stages_deps_configs(self) -> tuple[list[str], dict[str, set[str]], dict[str, StageConfig]]:
        """:meth:`_stages_and_deps`, with the effective config of each stage as the checks
        built it (a run then uses those, rather than building each config again)."""
        # define_stages() is read once for all the stages' dependencies, not once per stage
        self._stages_reading, self._stages_read, self._configs_read = True, None, {}
        try:
            stages, deps, self._stage_objects = stages_and_deps(
                self, default_execute=type(self).execute_stage is BasePipeline.execute_stage)
            configs = self._configs_read
        finally:
            self._stages_reading, self._stages_read, self._configs_read = False, None, None
        return stages, deps, configs  # type: ignore[return-value]

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        resume_from: str | None = None,
        skip_stages: Iterable[str] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        input_file: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        trigger: str = "script",
        executor: Executor | None = None,
        budget: ResourceBudget | None = None,
        cancel: threading.Event | None = None,
    ) -> PipelineContext:
        """Run every stage (or resume); return the context carrying the outcome.

        A stage failure does not raise: the run ends FAILED and
        ``context.failed_stage`` / ``context.error`` say which stage and why.
        Errors in how the run was asked for (an unknown ``resume_from``
        stage, outputs that cannot be reused) raise before anything runs.
        ``executor``, ``budget`` and ``cancel`` let an orchestrator share its
        worker pool and resource budget, and stop the run.
        """
        stages, deps, configs = self._stages_deps_configs()
        skip = set(skip_stages or ())
        unknown = skip - set(stages)
        if unknown:
            raise ConfigError(f"pipeline {self.name!r} has no stage(s) {', '.join(sorted(unknown))} "
                              f"to skip (its stages: {', '.join(stages)})")
        log = self._open_log()
        run_id = run_id or new_run_id(self.name)
        run_params = dict(params or {})
        if input_file is not None:
            path = Path(input_file).resolve()
            run_params.setdefault("input_file", str(path))
            if "input_sha256" not in run_params and path.is_file():
                run_params["input_sha256"] = store.sha256_file(path)
        reuse: dict[str, tuple[str, dict]] = {}
        if resume_from:
            reuse, source = self._resume_source(log, stages, resume_from, run_params)
            inherit_input(run_params, source)
        run_params.setdefault("keep_outputs", bool(self.enable_checkpoints))
        if resume_from:
            run_params["resume_from"] = resume_from
        self._drop_unkept_outputs(log)
        close_interrupted_runs(log, self.state_dir, self.name)  # a killed script's runs
        # the run's lock is held before the run exists: a daemon on this state directory
        # leaves it to us (else it could take the PENDING run between its request and its
        # start, and this run() would fail as Locked)
        lock = FileLock(run_lock_path(self.state_dir, run_id), {"role": "run", "run_id": run_id},
                        remove_on_release=True).acquire()
        # taken on from its request: runs of this pipeline that other threads request later
        # load after it, even if one of them gets to its load before this one has started
        turns.taken_on(run_id, self.name)
        try:
            log.append(new_event(T.RUN_REQUESTED, run_id, pipeline=self.name, trigger=trigger,
                                 params=run_params, stages=stages))
            return self.execute_run(run_id, log=log, skip=skip, reuse=reuse,
                                    stages=(stages, deps, configs), executor=executor,
                                    budget=budget, cancel=cancel, run_lock=lock)
        finally:
            turns.run_ended(self.name, run_id)  # (if its execution never began)
            lock.release()  # (execute_run released it, unless it never got that far)

    def execute_run(
        self,
        run_id: str,
        *,
        log: EventLog | None = None,
        executor: Executor | None = None,
        budget: ResourceBudget | None = None,
        skip: set[str] | None = None,
        reuse: dict[str, tuple[str, dict[str, Any]]] | None = None,
        stop: threading.Event | None = None,
        grace_deadline: Any = None,
        stages: tuple[list[str], dict[str, set[str]]] | None = None,
        cancel: threading.Event | None = None,
        run_lock: FileLock | None = None,
    ) -> PipelineContext:
        """Execute an already requested (PENDING) run: the daemon's entry point.

        ``run_lock``: the run's lock, already held by the caller (it is released
        here); otherwise it is taken here, and a run another process holds raises
        :class:`state.locks.Locked`.
        """
        log = log or self._open_log()
        # (stages, deps), or from run(): (stages, deps, the configs its checks built)
        stages_, deps, *built = stages or self._stages_and_deps()
        lock = run_lock or FileLock(run_lock_path(self.state_dir, run_id),
                                    {"role": "run", "run_id": run_id}, remove_on_release=True)
        if not lock.held:
            lock.acquire()  # raises Locked if another process is executing it
        try:
            return self._execute_locked(run_id, log, stages_, deps, executor, budget, skip, reuse,
                                        stop, grace_deadline, cancel, built[0] if built else None)
        finally:
            lock.release()

    def _execute_locked(self, run_id: str, log: EventLog, stages_: list[str],
                        deps: dict[str, set[str]], executor: Executor | None,
                        budget: ResourceBudget | None, skip: set[str] | None,
                        reuse: dict[str, tuple[str, dict[str, Any]]] | None,
                        stop: threading.Event | None, grace_deadline: Any,
                        cancel: threading.Event | None,
                        built: dict[str, StageConfig] | None = None) -> PipelineContext:
        # built once: each is a new object (run() passes those its checks built)
        configs = {s: built.get(s) or self.stage_config(s) for s in stages_} if built else \
            {s: self.stage_config(s) for s in stages_}
        skips = {s: "skipped on request" for s in (skip or ())}
        skips.update({s: "disabled in the configuration" for s in stages_
                      if not configs[s].enabled and s not in skips})
        run = log.run(run_id)  # read under the lock: nobody else changes it now
        if run is None:
            raise ConfigError(f"run {run_id!r} was never requested")
        if reuse is None and run.params.get("resume_from") and not run.attempts:
            try:  # requested through the daemon or the CLI: outputs are checked now
                reuse = self._resume_plan(log, stages_, run.params["resume_from"], run.params)
            except ResumeRefused as exc:
                log.append(new_event(T.RUN_FAILED, run_id, error=str(exc)))
                return self._result(log.run(run_id))
        if cancel is None:
            cancel = self._cancel = CancelToken()
        plan = RunPlan(
            run_id=run_id,
            pipeline=self,
            pipeline_name=self.name,
            stages=stages_,
            deps=deps,
            configs=configs,
            parallel=self.max_workers if self.parallel_stages else 1,
            params=run.params,
            duckdb_settings=self.duckdb_settings,
            skip=skips,
            reuse=reuse or {},
        )
        self._progress = Progress(stages_)
        done_with = None
        if executor is None:  # "process": the process-wide warm pool, kept for later runs
            executor, done_with = run_executor(self._executor_arg, plan.parallel, self)
        timer = None
        if self.timeout is not None:  # the pipeline's own limit for a whole run
            from .durations import format_duration

            reason = f"pipeline {self.name!r} timed out after {format_duration(self.timeout)}"
            timer = threading.Timer(self.timeout.total_seconds(), cancel.set, args=(reason,))
            timer.daemon = True
            timer.start()
        try:
            engine = RunEngine(log, self.state_dir, executor, budget=budget, rng=self._rng)
            final = engine.execute(plan, stop=stop, cancel=cancel, grace_deadline=grace_deadline,
                                   progress=self._progress)
        finally:
            if timer is not None:
                timer.cancel()
            if done_with is not None:
                done_with()
        return self._result(final)

    def _result(self, run: Any) -> PipelineContext:
        # each attempt's detail decoded once: its output is the StageResult's (was decoded
        # again for the context's outputs)
        results = {s: result_from_attempt(s, a) for s, a in run.attempts.items()}
        outputs = {s: results[s].output for s, a in run.attempts.items()
                   if a.state in DONE_STAGE_STATES}
        ctx = PipelineContext(run_id=run.run_id, pipeline_name=self.name, state_dir=self.state_dir,
                              params=run.params, outputs=outputs, duckdb_settings=self.duckdb_settings)
        ctx.state = run.state
        ctx.error = run.error
        ctx.failed_stage = run.failed_stage
        ctx.started_at, ctx.ended_at = run.started_at, run.ended_at
        ctx.stage_results = results
        return ctx

    def retry(self, run_id: str) -> PipelineContext:
        """Run ``run_id`` again from its first unfinished stage, as ``ahgd retry`` does: a
        FAILED, PARKED or CANCELLED run, or a RUNNING one whose process was killed."""
        from .execution.interrupted import retry_run

        return retry_run(self, run_id)

    def cancel(self, reason: str = "cancelled on request") -> None:
        """Ask the current run to stop (from another thread); it ends CANCELLED."""
        self._cancel.set(reason)

    def get_progress(self) -> dict[str, Any]:
        """State, current stage, completed stages and per-stage results; any thread."""
        snap = self._progress.snapshot()
        snap["pipeline"] = self.name
        return snap

    # -- resume ----------------------------------------------------------------------------

    def _resume_plan(self, log: EventLog, stages: list[str], resume_from: str,
                     params: Mapping[str, Any] | None = None) -> dict[str, tuple[str, dict]]:
        """stage -> (run, output ref) of each stage before ``resume_from``, reused from the
        latest run that completed them all with the same data (:meth:`_resume_source`)."""
        return self._resume_source(log, stages, resume_from, params)[0]

    def _param_defaults(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` as the run's stages see them: a pipeline declaring params with defaults
        (a YAML ``params:`` section) fills them in as each run starts, whether or not its
        request recorded them."""
        return params

    def _resume_source(self, log: EventLog, stages: list[str], resume_from: str,
                       params: Mapping[str, Any] | None = None,
                       ) -> tuple[dict[str, tuple[str, dict]], Any]:
        """The reuse plan of a run resumed from ``resume_from``, and the run it reuses (None
        when nothing comes before it).  Only a run given the same data may lend its outputs:
        the same input file (by SHA-256) when the new run names one, and the same params
        (``params``: the new run's; :func:`data_params`).  A new run without an input takes
        the lent run's (:func:`inherit_input`), so its history says which file fed it."""
        if resume_from not in stages:
            close = did_you_mean(resume_from, stages)
            raise ResumeRefused(f"pipeline {self.name!r} has no stage {resume_from!r} to resume from"
                                f"{'; ' + close if close else ''} (its stages: {', '.join(stages)})")
        earlier = stages[: stages.index(resume_from)]
        if not earlier:
            return {}, None
        if not self.enable_checkpoints:
            raise ResumeRefused(f"pipeline {self.name!r} runs with enable_checkpoints=False, so no "
                                "stage outputs are kept to resume from; run it from the start")
        wanted = self._param_defaults(data_params(params or {}))
        gone = other = None  # outputs retention removed; a run given other data
        for run in reversed(log.runs(pipeline=self.name)):
            done = {s: a for s, a in run.attempts.items() if a.state == StageState.COMPLETED}
            if not all(s in done for s in earlier) or not run.params.get("keep_outputs", True):
                continue
            differs = _data_difference(wanted, self._param_defaults(data_params(run.params)))
            if differs:
                other = other or (run.run_id, differs)
                continue
            reuse = {}
            for s in earlier:
                ref = done[s].output
                try:
                    store.verify(self.state_dir, ref, what=f"output of stage {s!r} of run {run.run_id}")
                except OutputMissing as exc:
                    removed = removals.removed_file(log, self.state_dir, str(ref.get("path")))
                    if removed is None:
                        raise ResumeRefused(f"cannot resume pipeline {self.name!r} from "
                                            f"{resume_from!r}: {exc}; resume from {s!r} instead"
                                            ) from None
                    gone = gone or removed
                    break
                src = done[s].info().get("from_run") or run.run_id
                reuse[s] = (src, ref)
            else:
                return reuse, run
        if gone is not None:
            raise ResumeRefused(f"cannot resume pipeline {self.name!r} from {resume_from!r}: "
                                f"{removals.describe(gone)}; resume from {earlier[0]!r} instead "
                                "(or run from the start)")
        if other is not None:
            raise ResumeRefused(
                f"cannot resume pipeline {self.name!r} from {resume_from!r}: no earlier run "
                f"completed {', '.join(earlier)} with the same data as this run (the latest "
                f"that did, {other[0]}, {other[1]}); a resumed run reuses the outputs of a run "
                "given the same input file and params: give those, or run from the start")
        raise ResumeRefused(
            f"cannot resume pipeline {self.name!r} from {resume_from!r}: no earlier run completed "
            f"{', '.join(earlier)}; resume from {earlier[0]!r} instead (or run from the start)")

    def _drop_unkept_outputs(self, log: EventLog) -> None:
        for run_id in queries.ended_runs_without_kept_outputs(log, self.name):
            store.remove_run(self.state_dir, run_id)

    # -- plumbing ----------------------------------------------------------------------------

    def _open_log(self) -> EventLog:
        with self._lock:
            if self._log is None:
                self._log = EventLog.open(self.state_dir)
                self._log.add_listener(RunLogger(self.name))  # a script's lines (pipelines.logs)
            return self._log

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __getstate__(self) -> dict[str, Any]:
        # what a worker process needs: configuration, not this process's handles
        return {k: v for k, v in self.__dict__.items() if k not in _RUNTIME_ATTRS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._progress = Progress([])
        self._cancel = CancelToken()
        self._lock = threading.Lock()
        self._executor_arg = "inprocess"
        self._log = None
        self._stage_objects = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


#: run params that do not change what a run's stages read: where the input is kept and how
#: it was named, how the run came about, what ahgd does with its outputs
_NOT_DATA = ("input_file", "original_name", "resume_from", "fire_time", "backfill",
             "keep_outputs", "rebuild", "replays", "upstream_pipeline", "upstream_run",
             "orchestration_id")


def data_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """What of a run's params decides its data: its input's SHA-256 and its own params."""
    return {k: v for k, v in params.items() if k not in _NOT_DATA}


def _data_difference(wanted: Mapping[str, Any], had: Mapping[str, Any]) -> str | None:
    """How a run that read ``had`` differs from one asked for with ``wanted`` (their
    :func:`data_params`), in words; None when its outputs may serve.  A run asked for with
    no input takes any run's (and inherits it)."""
    if "input_sha256" in wanted and wanted["input_sha256"] != had.get("input_sha256"):
        return (f"read the input with SHA-256 {str(had.get('input_sha256') or 'none')[:12]}, "
                f"not {str(wanted['input_sha256'])[:12]}")
    mine = {k: v for k, v in wanted.items() if k != "input_sha256"}
    theirs = {k: v for k, v in had.items() if k != "input_sha256"}
    if mine != theirs:
        return f"had the params {theirs or '{}'}, not {mine or '{}'}"
    return None


def inherit_input(params: dict[str, Any], source: Any) -> None:
    """A resumed run given no input of its own reads the one its reused outputs came from:
    ``params`` (the new run's) takes that run's ``input_file``, ``input_sha256`` and
    ``original_name``."""
    if source is None or "input_sha256" in params or "input_file" in params:
        return
    for key in ("input_file", "input_sha256", "original_name"):
        if key in source.params:
            params[key] = source.params[key]


def new_run_id(pipeline: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{store.safe_name(pipeline)}-{now}-{secrets.token_hex(3)}"


__all__ = ["BasePipeline", "PipelineState", "new_run_id"]

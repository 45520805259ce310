"""The daemon: one long-running process that turns triggers into runs.

The main loop reads like a list of named steps (check for stop and reload,
take complete files, fire due schedules, reap finished runs, start pending
runs, heartbeat), then sleeps until something wakes it.  ``--once`` is the
same loop with one more step: stop when there is nothing left to do.

The daemon is the only writer of the event log for the runs it executes;
stages run in a warm pool of worker processes that report back to it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import structlog

from state import EventLog, EventType as T, new_event
from state.errors import AhgdError, StateDirError
from state.locks import FileLock, Locked, is_locked, run_lock_path
from state.machine import ENDED_RUN_STATES, RunState

from . import schedules as sched
from .dropfolder import Claimer, Folder, Stability
from .logs import EventLogger
from .notify import Notifier, without_notify_environment
from .recovery import recover

LOCK_NAME = "daemon.lock"
RECOVERY_CHECK_S = 30.0
HEARTBEAT_S = 5.0
#: /healthz answers 503 when the main loop has not turned for this long
LOOP_STALL_S = 60.0


@dataclass
class DaemonOptions:
    config_paths: list[Path]
    state_dir: Path
    once: bool = False
    max_workers: int | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    monotonic: Callable[[], float] = time.monotonic
    notifier: Notifier | None = None
    progress: Callable[[dict[str, Any]], None] | None = None
    install_signals: bool = True
    #: how worker processes log (the daemon's own format), and where (default: our stdout)
    json_logs: bool = True
    worker_output: Any = None
    #: the HTTP status server: --http HOST:PORT (else daemon.status_listen), and its access
    http: str | None = None
    http_allow_remote: bool = False
    http_token: str | None = None


@dataclass
class _Active:
    run_id: str
    pipeline: str
    thread: threading.Thread
    cancel: Any
    started: float
    result: Any = None
    error: BaseException | None = None
    pipeline_obj: Any = None  # the pipeline object it runs with (a reload does not swap it)


@dataclass
class _Setup:
    """Everything derived from the configuration (replaced as a whole on reload)."""

    loaded: Any
    pipelines: dict[str, Any]
    folders: list[Folder]
    schedules: list[sched.Schedule]
    upstream: dict[str, list[str]]
    deps: dict[str, list[str]]
    settings: Any
    by_pipeline_folder: dict[str, Folder] = field(default_factory=dict)


class Daemon:
    def __init__(self, options: DaemonOptions):
        self.o = options
        self.state_dir = Path(options.state_dir)
        self.log_ = structlog.get_logger("ahgd.daemon")
        self.notifier = options.notifier or Notifier()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()        # run threads read this: no new stages
        self._stop_requested = False
        self._reload_requested = False
        self.grace_deadline: float | None = None
        self.active: dict[str, _Active] = {}
        self._completed_files: deque[tuple[Folder, Path]] = deque()
        self.stability = Stability(options.monotonic)
        self.session: dict[str, str] = {}     # run_id -> final state, for --once
        self.started_at = time.time()
        self._last_heartbeat = 0.0
        self._last_recovery = 0.0
        self._loop_beat = options.monotonic()
        self._recovering = True     # /healthz: 503 until start-up recovery is done
        self._stopping = False
        self._last_progress = 0.0
        self._lock = threading.RLock()
        self.setup: _Setup | None = None
        self.log: EventLog | None = None
        self.watchers: Any = None
        self.control: Any = None
        self.http: Any = None
        self.executor: Any = None
        self.monitor: Any = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        lock = FileLock(self.state_dir / LOCK_NAME, {"role": "ahgd daemon"})
        try:
            lock.acquire()
        except Locked as exc:
            from state.locks import describe_holder

            raise StateDirError(
                f"another ahgd daemon is already running on {self.state_dir}: "
                f"{describe_holder(exc.holder)}; stop it first (systemctl stop ahgd-daemon, or "
                "kill that pid) or use another --state-dir") from None
        try:
            self._startup()
            try:
                self._loop()
            finally:
                self._shutdown()
        finally:
            lock.release()
        return self._exit_code()

    def _startup(self) -> None:
        from pipelines.execution.pool import ProcessExecutor
        from pipelines.monitoring import PipelineMonitor
        from pipelines.resources import ResourceBudget

        self.setup = self._load_setup()
        settings = self.setup.settings
        http = self._http_plan(settings)  # a refused address stops us before anything starts
        self.log = EventLog.open(self.state_dir, synchronous=settings.synchronous)
        self.log.add_listener(EventLogger(self.log))
        workers = self.o.max_workers or settings.max_workers
        worker_env = without_notify_environment(os.environ)
        worker_env.setdefault("AHGD_LOG_FORMAT", "json" if self.o.json_logs else "console")
        self.executor = ProcessExecutor(workers, env=worker_env, stdout=self.o.worker_output)
        monitoring = settings.monitoring
        self.monitor = PipelineMonitor(
            self.state_dir / "metrics", enable_system_monitoring=monitoring.enabled,
            thresholds=_thresholds(settings),
            sample_interval=monitoring.sample_interval.total_seconds(),
            logger=structlog.get_logger("ahgd.monitor"), event_log=self.log,
            disk_paths=self._disk_paths(), workers=self.executor.worker_jobs)
        if monitoring.enabled:
            self.log.add_listener(self._observe)
        self.monitor.resolve_alert("daemon.config_reload_failed",
                                   "the daemon started with a valid configuration")
        self._start_http(http)  # before recovery: /healthz says 503 until it is done
        self.executor.prestart()
        limits = self.setup.loaded.orchestration.resource_limits
        self.budget = ResourceBudget(None if limits is None else limits.as_dict())
        if self.o.install_signals:
            self._install_signals()
        self.notifier.status("recovering interrupted runs")
        for r in recover(self.log, self.state_dir, max_recoveries=settings.max_recoveries):
            # a parked run's critical alert comes from the monitor, on its run.parked event
            self.log_.info("run_parked" if r.parked else "run_recovered", run_id=r.run_id,
                           pipeline=r.pipeline, interrupted=r.interrupted, recoveries=r.recoveries)
            if r.parked:
                self.session[r.run_id] = RunState.PARKED
        self._recovering = False
        self._loop_beat = self.o.monotonic()
        if monitoring.enabled:
            # after recovery: what a crash left RUNNING is not judged slow, only dead
            self.monitor.start_system_monitoring()
        self.claimer = Claimer(self.log, self.state_dir)
        self.claimer.adopt_orphans(self.setup.by_pipeline_folder)
        self._start_triggers()
        self._catch_up_upstream()
        from .control import ControlServer

        self.control = ControlServer(self.state_dir, self._dispatch)
        self.control.start()
        self.notifier.ready(self._status_line())
        self.log_.info("daemon_ready", pid=os.getpid(), state_dir=str(self.state_dir),
                       pipelines=sorted(self.setup.pipelines), workers=workers, once=self.o.once)

    def _http_plan(self, settings: Any) -> tuple[str, str | None, bool] | None:
        """(listen, token, allow_remote) from the flags and the master file, checked."""
        listen = self.o.http or settings.status_listen
        if not listen:
            return None
        from .httpstatus import check_bind, read_token

        token = self.o.http_token
        if token is None and settings.http_token_file is not None:
            token = read_token(settings.http_token_file)
        allow_remote = self.o.http_allow_remote or settings.http_allow_remote
        check_bind(listen, allow_remote=allow_remote, token=token)
        return listen, token, allow_remote

    def _start_http(self, plan: tuple[str, str | None, bool] | None) -> None:
        if plan is None:
            return
        from .httpstatus import StatusServer, StatusSources

        listen, token, allow_remote = plan
        sources = StatusSources(
            dashboard=self.dashboard, metrics=lambda: self.monitor.export_metrics("prometheus"),
            health=self.health, status=self.status, history_db=lambda: str(self.log.path))
        self.http = StatusServer(listen, sources, token=token, allow_remote=allow_remote)
        self.http.start()
        host = self.http.address[0]
        self.log_.info("http_status", listen=listen, host=host, port=self.http.port,
                       url=f"http://{'[' + host + ']' if ':' in host else host}:{self.http.port}/",
                       token_required=token is not None)

    def _disk_paths(self) -> list[Path]:
        """The state directory and every drop folder: the disks worth watching."""
        paths = [self.state_dir, *(f.path for f in self.setup.folders)]
        return list(dict.fromkeys(Path(p) for p in paths))

    def _loop(self) -> None:
        while True:
            self._loop_beat = self.o.monotonic()
            if self._stop_requested:
                return
            if self._reload_requested:
                self._reload()
            self._take_files()
            self._fire_schedules()
            self._reap_runs()
            self._start_runs()
            self._heartbeat()
            if self.o.once and self._nothing_left():
                return
            self._sleep()

    def _shutdown(self) -> None:
        settings = self.setup.settings if self.setup else None
        grace = settings.shutdown_grace.total_seconds() if settings else 30.0
        self._stopping = True
        self.notifier.stopping(f"stopping; running stages get {grace:g}s to finish")
        self.log_.info("daemon_stopping", running=sorted(self.active), grace_s=grace)
        if self.control is not None:
            self.control.stop()
        if self.watchers is not None:
            self.watchers.stop()
        self.grace_deadline = self.o.monotonic() + grace
        self._stop.set()
        deadline = self.grace_deadline + 60
        for a in list(self.active.values()):
            while a.thread.is_alive() and self.o.monotonic() < deadline:
                a.thread.join(timeout=min(1.0, max(0.0, deadline - self.o.monotonic())))
                self.notifier.watchdog()
        self._reap_runs()
        if self.executor is not None:
            self.executor.shutdown()
        if self.monitor is not None:
            self.monitor.stop_system_monitoring()
        if self.http is not None:  # last: /healthz says "stopping" while runs wind down
            self.http.stop()
        if self.log is not None:
            self.log.close()
        self.log_.info("daemon_stopped")

    def _exit_code(self) -> int:
        if not self.o.once:
            return 0
        bad = {r: s for r, s in self.session.items() if s != RunState.COMPLETED}
        return 1 if bad else 0

    # ------------------------------------------------------------------ configuration

    def _load_setup(self) -> _Setup:
        from pipelines.config import load_config
        from pipelines.config.configured import ConfiguredPipeline, import_object

        loaded = load_config(self.o.config_paths, state_dir=self.state_dir, import_classes=True)
        pipelines, folders, schedules, upstream, deps = {}, [], [], {}, {}
        by_folder: dict[str, Folder] = {}
        for name, lp in loaded.pipelines.items():
            if not lp.enabled:
                continue
            pipelines[name] = ConfiguredPipeline(lp.file, state_dir=self.state_dir, source=lp.source)
            deps[name] = list(lp.dependencies)
            for trig in lp.file.triggers:
                if trig.type == "drop_folder":
                    check = trig.input_check
                    folder = Folder(
                        pipeline=name, path=Path(trig.path), pattern=trig.pattern,
                        recursive=trig.recursive, stable_for=trig.stable_for.total_seconds(),
                        observer=trig.observer, poll_interval=trig.poll_interval.total_seconds(),
                        allow_duplicates=trig.allow_duplicates,
                        quarantine_on_extract_failure=trig.quarantine_on_extract_failure,
                        required_columns=list(check.required_columns) if check else [],
                        encoding=(check.encoding if check and check.encoding else "utf-8"),
                        delimiter=(check.delimiter if check and check.delimiter else ","),
                        check=(import_object(check.callable, what=f"pipeline {name!r} input_check")
                               if check and check.callable else None))
                    folders.append(folder)
                    by_folder.setdefault(name, folder)
                elif trig.type == "schedule":
                    schedules.append(sched.build(name, trig))
                elif trig.type == "upstream":
                    for up in trig.pipelines:
                        upstream.setdefault(up, []).append(name)
        return _Setup(loaded, pipelines, folders, schedules, upstream, deps, loaded.daemon, by_folder)

    def _start_triggers(self) -> None:
        from .watch import Watchers

        self.watchers = Watchers(self.setup.folders, complete=self._file_complete,
                                 candidate=self._file_candidate, logger=self.log_)
        self.watchers.start()
        found = self.watchers.scan()
        if found:
            self.log_.info("files_waiting", count=found)
        now = self.o.clock()
        for s in self.setup.schedules:
            fired = sched.catch_up(self.log, s, now)
            if fired:
                self.log_.info("missed_ticks_fired", pipeline=s.pipeline, trigger=s.trigger_id,
                               policy=s.misfire, runs=fired)

    def _reload(self) -> None:
        self._reload_requested = False
        self.notifier.reloading("reloading configuration")
        try:
            new = self._load_setup()
        except Exception as exc:  # the old configuration stays in force
            self._reload_failed(str(exc))
            return
        old_watchers, old_setup = self.watchers, self.setup
        try:
            with self._lock:
                self.setup = new
            self._start_triggers()  # new watchers first: no moment without eyes on the folders
        except Exception as exc:
            if self.watchers is not old_watchers and self.watchers is not None:
                self.watchers.stop()
            with self._lock:
                self.setup, self.watchers = old_setup, old_watchers
            self._reload_failed(f"{type(exc).__name__}: {exc}")
            return
        if old_watchers is not None:
            old_watchers.stop()
        self.monitor.set_thresholds(**_thresholds(new.settings))
        self.monitor.set_disk_paths(self._disk_paths())
        self.monitor.sample_interval = new.settings.monitoring.sample_interval.total_seconds()
        self.monitor.resolve_alert("daemon.config_reload_failed", "the configuration reloaded")
        self.log_.info("config_reloaded", pipelines=sorted(new.pipelines))
        self.notifier.ready(self._status_line())

    def _reload_failed(self, error: str) -> None:
        self._alert("error", "daemon.config_reload_failed", f"configuration reload failed: {error}",
                    error=error, kept="the previous configuration stays in force")
        self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ files

    def _file_complete(self, folder: Folder, path: Path) -> None:
        """Watcher thread: the writer closed the file (or renamed it into place)."""
        self._completed_files.append((folder, path))
        self._wake()

    def _file_candidate(self, folder: Folder, path: Path) -> None:
        """Watcher thread or scan: a file to take once it is stable."""
        self.stability.note(folder, path)
        self._wake()

    def _take_files(self) -> None:
        from .watch import open_for_writing

        batch = []
        while self._completed_files:
            batch.append(self._completed_files.popleft())
        for folder, path in self.stability.due():
            if not self.watchers.polling(folder) and open_for_writing(path):
                self.stability.note(folder, path)  # still being written: wait for its close
                continue
            batch.append((folder, path))
        for folder, path in batch:
            self.stability.forget(path)
            if self._stop_requested:
                return
            alert_id = f"daemon.file_claim_failed:{folder.pipeline}"
            try:
                self.claimer.claim(folder, path)
            except (OSError, AhgdError) as exc:  # one file must not stop the daemon
                self._alert("error", alert_id, f"could not take {path}: {exc}",
                            pipeline=folder.pipeline, path=str(path), error=str(exc),
                            fix="the file stays where it is; the next start-up scan tries again")
            else:
                self.monitor.resolve_alert(alert_id, f"took {path.name} for {folder.pipeline}")

    # ------------------------------------------------------------------ schedules

    def _fire_schedules(self) -> None:
        # --once takes the ticks missed before it started (catch_up at start-up), not new
        # ones: with a short interval it would otherwise never run out of work
        if self.setup.schedules and not self.o.once:
            sched.due(self.log, self.setup.schedules, self.o.clock())

    # ------------------------------------------------------------------ runs

    def _start_runs(self) -> None:
        if self._stop_requested:
            return
        limit = max(2, 2 * self.executor.max_workers)
        if len(self.active) >= limit:
            return
        busy = {r[0] for r in self.log.query(
            "SELECT DISTINCT pipeline FROM runs WHERE state IN ('PENDING', 'RUNNING')")}
        # pipelines whose dependencies have work in flight wait for it; filtering in
        # SQL means a queue of blocked runs can never hide the run that unblocks them
        startable = [p for p in self.setup.pipelines
                     if not any(dep in busy for dep in self.setup.deps.get(p, ()))]
        if not startable:
            return
        rows = self.log.query(
            f"SELECT run_id, pipeline FROM runs WHERE state = 'PENDING' AND pipeline IN "
            f"({', '.join('?' * len(startable))}) ORDER BY requested_at, run_id LIMIT ?",
            [*startable, limit + len(self.active)])
        with self._lock:  # a cancel request must not slip between our look and the launch
            for run_id, pipeline in rows:
                if len(self.active) >= limit:
                    return
                if run_id in self.active or is_locked(run_lock_path(self.state_dir, run_id)):
                    continue  # ours already, or another process (ahgd run) is executing it
                still = self.log.query("SELECT state FROM runs WHERE run_id = ?", [run_id])
                if still and still[0][0] == RunState.PENDING:
                    self._launch(run_id, pipeline)

    def _launch(self, run_id: str, pipeline_name: str) -> None:
        from pipelines.execution.engine import CancelToken

        pipeline = self.setup.pipelines[pipeline_name]
        cancel = CancelToken()
        active = _Active(run_id, pipeline_name, None, cancel, self.o.monotonic(),  # type: ignore[arg-type]
                         pipeline_obj=pipeline)

        def body() -> None:
            try:
                active.result = pipeline.execute_run(
                    run_id, log=self.log, executor=self.executor, budget=self.budget,
                    stop=self._stop, grace_deadline=lambda: self.grace_deadline, cancel=cancel)
            except BaseException as exc:  # recorded and alerted by the main loop
                active.error = exc
            finally:
                self._wake()

        active.thread = threading.Thread(target=body, name=f"ahgd-run-{run_id}", daemon=True)
        self.active[run_id] = active
        active.thread.start()

    def _reap_runs(self) -> None:
        for run_id, a in list(self.active.items()):
            if a.thread.is_alive():
                continue
            del self.active[run_id]
            run = self.log.run(run_id)
            if isinstance(a.error, Locked):  # another process took it first: not ours
                self.log_.info("run_owned_elsewhere", run_id=run_id, holder=str(a.error))
                continue
            if a.error is not None and not (run is not None and run.state in ENDED_RUN_STATES):
                self._alert("error", f"run.crashed:{run_id}",
                            f"the thread of run {run_id} failed: {type(a.error).__name__}: {a.error}",
                            run_id=run_id, pipeline=a.pipeline,
                            error=f"{type(a.error).__name__}: {a.error}")
                self._fail_stuck(run_id, a.error)
                run = self.log.run(run_id)
            if run is None:
                continue
            if run.state in ENDED_RUN_STATES:
                self.session[run_id] = run.state
            if run.state == RunState.COMPLETED:
                self._trigger_downstream(run)
            elif run.state == RunState.FAILED:
                self._maybe_quarantine(run)

    def _fail_stuck(self, run_id: str, error: BaseException) -> None:
        """A run thread died (the log failed?): leave the run in a state replay understands."""
        try:
            run = self.log.run(run_id)
            if run is None or run.state not in (RunState.RUNNING, RunState.PENDING):
                return
            events = [new_event(T.STAGE_INTERRUPTED, run_id, stage=s, attempt=at.attempt,
                                error="the run's thread failed")
                      for s, at in run.attempts.items() if at.state == "RUNNING"]
            events.append(new_event(T.RUN_FAILED, run_id, error=f"{type(error).__name__}: {error}"))
            self.log.append_many(events)
        except AhgdError as exc:
            self._alert("critical", f"run.state_unrecorded:{run_id}",
                        f"could not record that run {run_id} failed: {exc}", run_id=run_id,
                        error=str(exc))

    def _trigger_downstream(self, run: Any) -> None:
        for downstream in self.setup.upstream.get(run.pipeline, ()):
            self._request_upstream_run(downstream, run.pipeline, run.run_id, run.ended_at)

    def _request_upstream_run(self, downstream: str, upstream: str, upstream_run: str,
                              upstream_ended: str) -> str | None:
        if downstream not in self.setup.pipelines:
            return None
        # covered if a run of the downstream started after the upstream data landed, or
        # has yet to start (a pending run absorbs every upstream completion before it)
        covered = self.log.query(
            "SELECT 1 FROM runs WHERE pipeline = ? AND (state = 'PENDING' OR started_at >= ?) LIMIT 1",
            [downstream, upstream_ended])
        if covered:
            return None
        from pipelines.base import new_run_id
        from state import DuplicateEvent

        run_id = new_run_id(downstream)
        try:
            self.log.append(new_event(
                T.RUN_REQUESTED, run_id, pipeline=downstream, trigger="upstream",
                params={"upstream_pipeline": upstream, "upstream_run": upstream_run},
                idempotency_key=f"upstream:{downstream}:{upstream_run}"))
        except DuplicateEvent:
            return None
        return run_id

    def _catch_up_upstream(self) -> None:
        """Upstream runs that completed while no daemon could react (a crash between)."""
        for upstream, downstreams in self.setup.upstream.items():
            last = self.log.query(
                "SELECT run_id, ended_at FROM runs WHERE pipeline = ? AND state = 'COMPLETED' "
                "ORDER BY ended_at DESC LIMIT 1", [upstream])
            if not last:
                continue
            for d in downstreams:
                self._request_upstream_run(d, upstream, last[0][0], last[0][1])

    def _maybe_quarantine(self, run: Any) -> None:
        if run.trigger != "drop_folder":
            return
        folder = next((f for f in self.setup.folders if f.pipeline == run.pipeline), None)
        stages = list(run.stages)
        if folder is None or not folder.quarantine_on_extract_failure or not stages:
            return
        stage = run.failed_stage
        att = run.attempts.get(stage) if stage else None
        if att is None:
            return
        info = att.info()
        # the file itself is bad: its first stage refused it, or a later stage found
        # it malformed (an input or validation error, which no retry would change)
        is_input_error = bool(info.get("bad_input"))   # the stage raised InputError
        if info.get("retryable", True) or not (stage == stages[0] or is_input_error):
            return
        stored = Path(run.params.get("input_file", ""))
        if not stored.exists():
            return
        self.claimer.quarantine(folder, stored, f"run {run.run_id} failed at stage {stage!r}: {att.error}",
                                sha256=run.params.get("input_sha256"), run_id=run.run_id,
                                keep_source=True)

    # ------------------------------------------------------------------ heartbeat and sleep

    def _heartbeat(self) -> None:
        now = self.o.monotonic()
        if now - self._last_heartbeat >= self._watchdog_every():
            self._last_heartbeat = now
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
        if now - self._last_recovery >= RECOVERY_CHECK_S:
            self._last_recovery = now
            self._recover_orphans()
        if self.o.progress is not None and now - self._last_progress >= 0.2:
            self._last_progress = now
            self.o.progress(self.progress_snapshot())

    def _recover_orphans(self) -> None:
        """Runs left RUNNING by a process that died after our start-up (an `ahgd run`)."""
        try:
            found = recover(self.log, self.state_dir, max_recoveries=self.setup.settings.max_recoveries,
                            skip=set(self.active))
        except AhgdError as exc:
            self.log_.warning("recovery_check_failed", error=str(exc))
            return
        for r in found:
            self.log_.info("run_parked" if r.parked else "run_recovered", run_id=r.run_id,
                           pipeline=r.pipeline, interrupted=r.interrupted, recoveries=r.recoveries)

    def _watchdog_every(self) -> float:
        interval = self.notifier.watchdog_interval()
        return min(HEARTBEAT_S, interval / 2) if interval else HEARTBEAT_S

    def _sleep(self) -> None:
        timeouts = [self._watchdog_every()]
        nxt = None if self.o.once else sched.next_wakeup(self.setup.schedules, self.o.clock())
        if nxt is not None:
            timeouts.append(nxt)
        stable = self.stability.next_due_in()
        if stable is not None:
            timeouts.append(stable + 0.01)
        if self.active:
            timeouts.append(1.0)
        if self.o.progress is not None:
            timeouts.append(0.2)
        timeout = max(0.0, min(timeouts))
        try:
            select.select([self._wake_r], [], [], timeout)
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def _nothing_left(self) -> bool:
        if self.active or self._completed_files or self.stability.pending():
            return False
        pending = self.log.query("SELECT pipeline FROM runs WHERE state = 'PENDING'")
        return not any(p[0] in self.setup.pipelines for p in pending)

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            self._stop_requested = True
            self._wake()

        def reload(signum: int, _frame: Any) -> None:
            self._reload_requested = True
            self._wake()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def request_stop(self) -> None:
        self._stop_requested = True
        self._wake()

    # ------------------------------------------------------------------ status and control

    def _alert(self, severity: str, alert_id: str, message: str, **fields: Any) -> None:
        """A condition the daemon itself finds: logged, recorded, resolved when it clears."""
        name = alert_id.split(":", 1)[0]
        run_id = fields.get("run_id")
        try:
            self.monitor.raise_alert(severity, name, message, alert_id=alert_id, run_id=run_id,
                                     **{k: v for k, v in fields.items() if k != "run_id"})
        except Exception as exc:  # an alert must never stop the daemon
            self.log_.error(name, alert=True, severity=severity, detail=message,
                            monitor_error=str(exc))

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: recovery done and the main loop turning."""
        if self._recovering:
            return False, "recovering interrupted runs"
        if self._stopping:
            return False, "stopping"
        age = self.o.monotonic() - self._loop_beat
        if age > LOOP_STALL_S:
            return False, f"the main loop has not turned for {age:.0f}s"
        return True, "ok"

    def dashboard(self, recent: int | None = None) -> dict[str, Any]:
        """The monitor's dashboard document, with what only the daemon knows."""
        doc = self.monitor.get_dashboard_data(recent=recent)
        healthy, why = self.health()
        try:
            waiting = self.stability.pending() + len(self._completed_files)
        except RuntimeError:  # the main loop changed it under us: next time
            waiting = None
        setup = self.setup
        doc["daemon"] = {
            "pid": os.getpid(), "state_dir": str(self.state_dir),
            "uptime_s": round(time.time() - self.started_at, 1), "healthy": healthy,
            "health": why, "recovering": self._recovering,
            "workers": {"max": self.executor.max_workers, "busy": self.executor.in_use()},
            "files_waiting": waiting,
            "pipelines": sorted(setup.pipelines) if setup else [],
        }
        return doc

    def _observe(self, event: Any) -> None:
        try:
            self.monitor.observe(event)
        except Exception as exc:  # metrics must never break an append
            self.log_.warning("monitor_failed", error=str(exc))

    def _status_line(self) -> str:
        pending = 0
        if self.log is not None:
            pending = self.log.query("SELECT COUNT(*) FROM runs WHERE state = 'PENDING'")[0][0]
        return f"{len(self.active)} running, {pending} pending, {len(self.session)} finished this session"

    def progress_snapshot(self) -> dict[str, Any]:
        runs = []
        for a in list(self.active.values()):
            snap = a.pipeline_obj.get_progress() if a.pipeline_obj is not None else {}
            runs.append({"run_id": a.run_id, "pipeline": a.pipeline,
                         "stage": snap.get("current_stage"),
                         "progress": snap.get("progress_percentage")})
        counts = {r[0]: r[1] for r in self.log.query("SELECT state, COUNT(*) FROM runs GROUP BY state")}
        return {"active": runs, "counts": counts, "files_waiting": self.stability.pending()
                + len(self._completed_files), "finished": dict(self.session)}

    def status(self) -> dict[str, Any]:
        snap = self.progress_snapshot()
        return {
            "pid": os.getpid(),
            "state_dir": str(self.state_dir),
            "uptime_s": round(time.time() - self.started_at, 1),
            "pipelines": sorted(self.setup.pipelines),
            "workers": {"max": self.executor.max_workers, "busy": self.executor.in_use(),
                        "pids": self.executor.worker_pids()},
            "watching": {str(f.path): f.pipeline for f in self.setup.folders},
            "schedules": [{"pipeline": s.pipeline, "trigger": s.trigger_id,
                           "next_fire": s.next_fire.isoformat() if s.next_fire else None}
                          for s in self.setup.schedules],
            **snap,
        }

    def _dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        from . import requests

        return requests.dispatch(self, req)


def _thresholds(settings: Any) -> dict[str, Any]:
    """The monitor's thresholds from ``daemon.monitoring.thresholds`` (and disk_alert_percent)."""
    t = settings.monitoring.thresholds.model_dump()
    if t["disk_percent"] is None:
        t["disk_percent"] = settings.disk_alert_percent
    if t["stage_duration_s"] is not None:
        t["stage_duration_s"] = t["stage_duration_s"].total_seconds()
    return t

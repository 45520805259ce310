"""The daemon: one long-running process that turns triggers into runs.

This module is its lifecycle (lock, start-up and recovery, reload, shutdown)
and its main loop, which reads like a list of named steps (check for stop and
reload, take complete files, fire due schedules, reap finished runs, start
pending runs, heartbeat), then sleeps until something wakes it.  ``--once``
is the same loop with one more step: stop when there is nothing left to do.

The daemon is the only writer of the event log for the runs it executes;
stages run in a warm pool of worker processes that report back to it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from state import EventLog, RunState, ops_queries, queries
from state.errors import AhgdError, StateDirError
from state.locks import FileLock, Locked

from . import schedules, statusdocs
from .alerts import MonitorLink
from .collection import DaemonCollection, setup_policy
from .configuration import Setup, forget_stage_modules, load_setup, start_triggers
from .dropfolder import Claimer
from .executor import build_executor
from .followups import catch_up_upstream, follow_up
from .intake import FileIntake
from .logs import EventLogger
from .notify import Notifier, without_notify_environment
from .recovery import recover_and_report
from .removal import open_with_room
from .runs import RunSupervisor
from .warehouse_watch import WarehouseWatch
from .waker import Waker, install_signal_handlers

LOCK_NAME = "daemon.lock"
RECOVERY_CHECK_S = 30.0
HEARTBEAT_S = 5.0
#: a configuration load still running after this is left to itself: a SIGHUP starts another
#: (the import check's child may take START_S to start and TIMEOUT_S to import, the regular
#: expressions' as long again)
RELOAD_STUCK_S = 300.0


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


class Daemon:
    def __init__(self, options: DaemonOptions):
        self.options = options
        self.state_dir = Path(options.state_dir)
        self.logger = structlog.get_logger("ahgd.daemon")
        self.notifier = options.notifier or Notifier()
        self.waker = Waker()
        self._stop_requested = False
        self._reload_requested = False
        self._reloading: _Reload | None = None  # a configuration being loaded, off the loop
        self.intake = FileIntake(options.monotonic, self.waker.wake)
        self._started = options.monotonic()
        self._last_heartbeat = 0.0
        self._last_recovery = 0.0
        self._loop_beat = options.monotonic()
        self._recovering = True     # /healthz: 503 until start-up recovery is done
        self._stopping = False
        self._last_progress = 0.0
        self._lock = threading.RLock()  # held to swap the setup and to admit runs
        self.setup: Setup | None = None
        self.log: EventLog | None = None
        self.runs: RunSupervisor | None = None
        self.claimer: Claimer | None = None
        self.watchers: Any = None
        self.control: Any = None
        self.http: Any = None
        self.executor: Any = None
        self.monitor: Any = None
        self.alerts: MonitorLink | None = None
        self.warehouse: WarehouseWatch | None = None
        self.collection: DaemonCollection | None = None  # retain: (ahgd_daemon/collection.py)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        from state.statedir import ensure_state_dir, restrict_umask

        restrict_umask()  # owner and group only, for us and the workers (they inherit it)
        ensure_state_dir(self.state_dir)
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
            from pipelines.execution.logsetup import keep_run_logs

            keep_run_logs(None)  # an in-process daemon (ahgd demo) leaves no run-log tee behind
        return self._exit_code()

    def _startup(self) -> None:
        from pipelines.monitoring import PipelineMonitor
        from pipelines.resources import ResourceBudget

        self.setup = load_setup(self.options.config_paths, self.state_dir)
        settings = self.setup.settings
        http = self._http_plan(settings)  # a refused address stops us before anything starts
        # on a full disk, with the room retention keeps (ahgd_daemon/removal.py): then it collects
        self.log = open_with_room(self.state_dir, lambda: EventLog.open(
            self.state_dir, synchronous=settings.synchronous))
        self.log.add_listener(EventLogger(self.log))
        workers = self.options.max_workers or settings.max_workers
        worker_env = without_notify_environment(os.environ)
        worker_env.setdefault("AHGD_LOG_FORMAT", "json" if self.options.json_logs else "console")
        # every line about a run also goes to <state dir>/logs/<run id>.jsonl (`ahgd logs`)
        from pipelines.execution.logsetup import RUN_LOGS_ENV, keep_run_logs

        keep_run_logs(self.state_dir)
        worker_env[RUN_LOGS_ENV] = str(self.state_dir)
        # daemon.executor: this host's worker pool, or a Dask cluster (ahgd_daemon/executor.py)
        self.executor = build_executor(
            settings, workers=workers, env=worker_env, stdout=self.options.worker_output,
            state_dir=self.state_dir, alert=lambda *a, **k: self.alerts.alert(*a, **k),
            resolve=lambda name, why: self.alerts.resolve(name, why))
        monitoring = settings.monitoring
        self.monitor = PipelineMonitor(
            self.state_dir / "metrics", enable_system_monitoring=monitoring.enabled,
            thresholds=_thresholds(settings),
            sample_interval=monitoring.sample_interval.total_seconds(),
            logger=structlog.get_logger("ahgd.monitor"), event_log=self.log,
            disk_paths=self._disk_paths(), workers=self.executor.worker_jobs)
        self.alerts = MonitorLink(self.monitor, self.logger)
        if monitoring.enabled:
            self.log.add_listener(self.alerts.observe)
        self.monitor.resolve_alert("daemon.config_reload_failed",
                                   "the daemon started with a valid configuration")
        limits = self.setup.config.orchestration.resource_limits
        # without resource_limits the budget is this machine's cores and memory: right for its
        # own pool, wrong for a Dask cluster, whose workers Dask fills by the resources they
        # declare.  Charged here, one 32 GB stage on a big worker held every other stage back
        # on a small daemon host, however idle the cluster
        budget = None if limits is None and settings.executor.type == "dask" else \
            ResourceBudget(None if limits is None else limits.as_dict())
        self.runs = RunSupervisor(
            self.log, self.state_dir, self.executor, budget, lock=self._lock,
            monotonic=self.options.monotonic, wake=self.waker.wake, alert=self.alerts.alert,
            logger=self.logger, keep_finished=None if self.options.once else 200)
        self._start_http(http)  # before recovery: /healthz says 503 until it is done
        self.executor.prestart()
        if self.options.install_signals:
            install_signal_handlers(stop=self.request_stop, reload=self._request_reload)
        self.notifier.status("recovering interrupted runs")
        for recovered in recover_and_report(self.log, self.state_dir, logger=self.logger,
                                            max_recoveries=settings.max_recoveries,
                                            known=self.setup.pipelines):
            if recovered.parked:  # its critical alert comes from the monitor, on run.parked
                self.runs.finished[recovered.run_id] = RunState.PARKED
        # a warehouse deleted or damaged while no daemon watched is reported before new work
        self.warehouse = WarehouseWatch.start(self.log, self.state_dir, self.logger,
                                              self.options.monotonic)
        self.collection = DaemonCollection.start(self)  # a crash's half-done removal finished
        self._recovering = False
        self._loop_beat = self.options.monotonic()
        if monitoring.enabled:
            # after recovery: what a crash left RUNNING is not judged slow, only dead
            self.monitor.start_system_monitoring()
        self.claimer = Claimer(self.log, self.state_dir)
        self.claimer.adopt_orphans(self.setup.folder_by_pipeline)
        self.watchers = start_triggers(self.setup, self.log, self.intake, self.options.clock(),
                                       self.logger)
        catch_up_upstream(self.log, self.setup)
        from .control import ControlServer

        self.control = ControlServer(self.state_dir, self._dispatch)
        self.control.start()
        self.notifier.ready(self._status_line())
        self.logger.info("daemon_ready", pid=os.getpid(), state_dir=str(self.state_dir),
                         pipelines=sorted(self.setup.pipelines), workers=workers,
                         once=self.options.once)

    def _http_plan(self, settings: Any) -> Any:
        """Where the status server listens, checked; None when it is off."""
        listen = self.options.http or settings.status_listen
        if not listen:
            return None
        from .httpstatus import plan

        return plan(listen, self.options.http_token, self.options.http_allow_remote, settings)

    def _start_http(self, plan: Any) -> None:
        if plan is None:
            return
        from .httpstatus import StatusSources, serve

        self.http = serve(plan, StatusSources(
            dashboard=self.dashboard, metrics=lambda: self.monitor.export_metrics("prometheus"),
            health=self.health, status=self.status, history_db=lambda: str(self.log.path)),
            self.logger)

    def _disk_paths(self) -> list[Path]:
        """The state directory and every drop folder: the disks worth watching."""
        paths = [self.state_dir, *(f.path for f in self.setup.folders)]
        return list(dict.fromkeys(Path(p) for p in paths))

    def _loop(self) -> None:
        while True:
            self._loop_beat = self.options.monotonic()
            if self._stop_requested:
                return
            if self._reload_requested:
                self._start_reload()
            if self._reloading is not None:
                self._reload_step()
            self._take_files()
            self._fire_schedules()
            self._reap_runs()
            self._start_runs()
            self._heartbeat()
            self.collection.step()  # retention: a few milliseconds at most per turn
            if self.options.once and self._nothing_left() and self.collection.settle():
                return
            self._sleep()

    def _shutdown(self) -> None:
        settings = self.setup.settings if self.setup else None
        grace = settings.shutdown_grace.total_seconds() if settings else 30.0
        self._stopping = True
        self.notifier.stopping(f"stopping; running stages get {grace:g}s to finish")
        self.logger.info("daemon_stopping", running=sorted(self.runs.active), grace_s=grace)
        if self.control is not None:
            self.control.stop()
        if self.watchers is not None:
            self.watchers.stop()
        self.intake.stop()  # a file it was taking stays in its folder for the next start
        self.runs.wind_down(grace, tick=self.notifier.watchdog)
        self._reap_runs()
        if self.executor is not None:
            self.executor.shutdown()
        if self.monitor is not None:
            self.monitor.stop_system_monitoring()
        if self.http is not None:  # last: /healthz says "stopping" while runs wind down
            self.http.stop()
        if self.log is not None:
            self.log.close()
        self.logger.info("daemon_stopped")

    def _exit_code(self) -> int:
        if not self.options.once:
            return 0
        failed = any(state != RunState.COMPLETED for state in self.runs.finished.values())
        return 1 if failed or self.intake.left_behind() else 0

    # ------------------------------------------------------------------ configuration

    def _start_reload(self) -> None:
        """Load the configuration on a thread of its own: its import check (a child Python)
        may take up to a minute, and meanwhile the loop goes on with the configuration in
        force, pinging systemd's watchdog (WatchdogSec=30 would otherwise kill the daemon in
        the middle of a reload), firing schedules and starting and reaping runs.  A SIGHUP
        that comes during the load starts another once it is applied: the files may have
        changed after this load read them."""
        loading = self._reloading
        if loading is not None and loading.done.is_set():
            return  # applied (or its failure said) first, in this turn: then this SIGHUP's
        if loading is not None:
            age = self.options.monotonic() - loading.began
            if age < RELOAD_STUCK_S:  # one at a time: this SIGHUP's load starts after it
                if not loading.queued:
                    loading.queued = True
                    self.logger.info("config_reload_queued", loading_for_s=round(age, 1))
                return
            # a load that never ends (a hung mount, a stuck child) must not block every
            # later SIGHUP: it is left to itself and its result ignored
            self.logger.warning("config_reload_abandoned", loading_for_s=round(age, 1))
        self._reload_requested = False
        self.notifier.reloading("reloading configuration")
        try:
            self._reloading = _Reload(self.options.monotonic(),
                                      lambda: load_setup(self.options.config_paths,
                                                         self.state_dir), self.waker.wake)
        except RuntimeError as exc:  # no thread to be had (TasksMax): the old one stays
            self._reloading = None
            self._reload_failed(f"no thread could be started to load it ({exc}); send SIGHUP "
                                "again once the daemon has fewer threads")

    def _reload_step(self) -> None:
        """Apply a finished load; say once when one has run for RELOAD_STUCK_S."""
        loading = self._reloading
        if loading.done.is_set():
            self._reload()
        elif not loading.stuck and self.options.monotonic() - loading.began >= RELOAD_STUCK_S:
            loading.stuck = True
            self._reload_failed(
                f"the configuration load has not finished after {RELOAD_STUCK_S:g}s (a "
                "configuration file on a mount that does not answer, a machine out of "
                "processes?); send SIGHUP again to start a new load, and if that one does not "
                "finish either, restart the daemon (systemctl restart ahgd-daemon)")

    def _reload(self) -> None:
        """Apply the configuration a finished load made (on the loop's thread)."""
        loaded, self._reloading = self._reloading, None
        if loaded.setup is None:  # the old configuration stays in force
            error = loaded.error
            self._reload_failed(str(error) if isinstance(error, Exception) else
                                f"the load ended with {type(error).__name__}: {error}")
            return
        new = loaded.setup
        old_watchers, old_setup = self.watchers, self.setup
        try:
            with self._lock:
                self.setup = new
            # new watchers first: no moment without eyes on the folders
            self.watchers = start_triggers(new, self.log, self.intake, self.options.clock(),
                                           self.logger)
        except Exception as exc:  # start_triggers stopped the new watchers it had started
            with self._lock:
                self.setup, self.watchers = old_setup, old_watchers
            self._reload_failed(f"{type(exc).__name__}: {exc}")
            return
        if old_watchers is not None:
            old_watchers.stop()
        # new attempts run the stage code on disk; attempts running now finish on theirs
        self.executor.renew()
        forget_stage_modules(old_setup, new)
        self.monitor.set_thresholds(**_thresholds(new.settings))
        self.monitor.set_disk_paths(self._disk_paths())
        self.monitor.sample_interval = new.settings.monitoring.sample_interval.total_seconds()
        self.monitor.resolve_alert("daemon.config_reload_failed", "the configuration reloaded")
        self.collection.configure(setup_policy(new), new.settings)  # and its disk threshold
        self.logger.info("config_reloaded", pipelines=sorted(new.pipelines))
        self.notifier.ready(self._status_line())

    def _reload_failed(self, error: str) -> None:
        self.alerts.alert("error", "daemon.config_reload_failed",
                          f"configuration reload failed: {error}", error=error,
                          kept="the previous configuration stays in force")
        self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ the loop's steps

    def _take_files(self) -> None:
        self.intake.take(self.claimer, self.watchers, self.alerts,
                         stopping=lambda: self._stop_requested)

    def _fire_schedules(self) -> None:
        # --once takes the ticks missed before it started (catch_up at start-up), not new
        # ones: with a short interval it would otherwise never run out of work
        if self.setup.schedules and not self.options.once:
            schedules.due(self.log, self.setup.schedules, self.options.clock())

    def _reap_runs(self) -> None:
        self.runs.reap(lambda run: follow_up(self.log, self.setup, self.claimer, run))

    def _start_runs(self) -> None:
        if not self._stop_requested:
            self.runs.start_pending(self.setup)

    def _heartbeat(self) -> None:
        now = self.options.monotonic()
        if now - self._last_heartbeat >= self._watchdog_every():
            self._last_heartbeat = now
            self.notifier.watchdog()
            self.notifier.status(self._status_line())
        if now - self._last_recovery >= RECOVERY_CHECK_S:
            self._last_recovery = now
            self._recover_orphans()
        if self.warehouse.due():
            self.warehouse.check()
        if self.options.progress is not None and now - self._last_progress >= 0.2:
            self._last_progress = now
            self.options.progress(self.progress_snapshot())

    def _recover_orphans(self) -> None:
        """Runs left RUNNING by a process that died after our start-up (an `ahgd run`)."""
        try:
            recover_and_report(self.log, self.state_dir, logger=self.logger,
                               max_recoveries=self.setup.settings.max_recoveries,
                               skip={*self.runs.active, *self.runs.waiting_to_resume},
                               known=self.setup.pipelines)
        except AhgdError as exc:
            self.logger.warning("recovery_check_failed", error=str(exc))

    def _nothing_left(self) -> bool:
        if self.runs.active or self.runs.waiting_to_resume or not self.intake.idle():
            return False
        waiting = queries.pipelines_with_pending_runs(self.log) - set(
            ops_queries.pipeline_pauses(self.log))  # a paused pipeline's runs wait for resume
        return waiting.isdisjoint(self.setup.pipelines)

    # ------------------------------------------------------------------ sleep, stop and reload

    def _watchdog_every(self) -> float:
        interval = self.notifier.watchdog_interval()
        return min(HEARTBEAT_S, interval / 2) if interval else HEARTBEAT_S

    def _sleep(self) -> None:
        timeouts = [self._watchdog_every()]
        next_tick = None if self.options.once else schedules.next_wakeup(self.setup.schedules,
                                                                         self.options.clock())
        if next_tick is not None:
            timeouts.append(next_tick)
        stable = self.intake.next_due_in()
        if stable is not None:
            timeouts.append(stable + 0.01)
        if self.runs.active or self.runs.waiting_to_resume:
            timeouts.append(1.0)
        if self.options.progress is not None:
            timeouts.append(0.2)
        timeouts.append(self.collection.sleep_hint())  # 0 while a collection is under way
        self.waker.sleep(max(0.0, min(timeouts)))

    def request_stop(self) -> None:
        self._stop_requested = True
        self.waker.wake()

    def _request_reload(self) -> None:
        self._reload_requested = True
        self.waker.wake()

    # ------------------------------------------------------------------ status and control

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: recovery done and the main loop turning."""
        return statusdocs.health(self._recovering, self._stopping,
                                 self.options.monotonic() - self._loop_beat)

    def _uptime_s(self) -> float:
        return self.options.monotonic() - self._started

    def dashboard(self, recent: int | None = None) -> dict[str, Any]:
        """The monitor's dashboard document, with what only the daemon knows."""
        doc = self.monitor.get_dashboard_data(recent=recent)
        try:
            waiting = self.intake.waiting()
        except RuntimeError:  # the main loop changed it under us: next time
            waiting = None
        doc["daemon"] = statusdocs.dashboard_section(
            self.state_dir, self._uptime_s(), self.health(), self._recovering, self.executor,
            waiting, self.setup)
        if self.collection is not None:  # sizes by area, the last collection
            doc["storage"] = self.collection.section()
        doc["paused"] = {name: {k: v for k, v in pause.items() if k != "seq"}  # ahgd pause
                         for name, pause in ops_queries.pipeline_pauses(self.log).items()}
        return doc

    def _status_line(self) -> str:
        line = statusdocs.status_line(self.log, len(self.runs.active), len(self.runs.finished))
        return line if self._reloading is None else f"{line}; reloading configuration"

    def progress_snapshot(self) -> dict[str, Any]:
        return statusdocs.progress_snapshot(self.log, list(self.runs.active.values()),
                                            self.intake.waiting(), self.runs.finished)

    def status(self) -> dict[str, Any]:
        return statusdocs.status_document(self.state_dir, self._uptime_s(), self.setup,
                                          self.executor, self.progress_snapshot())

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("cmd") == "gc":  # ahgd gc
            return self.collection.dispatch(request)
        if str(request.get("cmd", "")).startswith("warehouse."):  # ahgd warehouse rebuild
            from .rebuild import dispatch

            return dispatch(self, request)
        from . import operations  # pause, resume, pipelines, backfill, quarantine

        if request.get("cmd") in operations.COMMANDS:
            return operations.dispatch(self, request)
        from . import requests

        return requests.dispatch(self, request)


class _Reload:
    """``load()`` run on a thread (``ahgd-reload``) from ``began`` (monotonic); ``done`` set, and
    ``wake()`` called, when it has returned (``setup``) or raised (``error``).  ``queued``: a
    SIGHUP came during it (its load starts once this one is applied); ``stuck``: it was
    reported as not finishing."""

    def __init__(self, began: float, load: Callable[[], Setup], wake: Callable[[], None]):
        self.began, self.queued, self.stuck = began, False, False
        self.setup: Setup | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._load, self._wake = load, wake
        threading.Thread(target=self._run, name="ahgd-reload", daemon=True).start()

    def _run(self) -> None:
        try:
            self.setup = self._load()
        except BaseException as exc:  # noqa: BLE001 - reported by the loop, which keeps the old
            self.error = exc
        finally:
            self.done.set()
            self._wake()


def _thresholds(settings: Any) -> dict[str, Any]:
    """The monitor's thresholds from the master file's ``daemon`` settings."""
    from pipelines.monitoring.thresholds import configured_thresholds

    return configured_thresholds(settings.monitoring.thresholds.model_dump(),
                                 settings.disk_alert_percent)

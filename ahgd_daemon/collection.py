"""The daemon's own collection: when it runs, in steps that never hold up the loop, and what it says.

The daemon collects its state directory by the configuration's ``retain:`` policy
(``ahgd_daemon/retention.py`` decides, ``ahgd_daemon/removal.py`` removes): once soon
after start-up, then every :data:`INTERVAL_S`, and at once when the disk holding it is
nearly full: the alert ``system.disk_nearly_full`` recorded, or the collection's own look at
the disk (:meth:`DaemonCollection._watch_disk`, every :data:`DISK_CHECK_S` of the loop's
turns), which does not need the monitor, nor room in the event log for the alert's event (on
a full disk there is none).  Its removals are recorded with the room the collector keeps
(``<state dir>/.reserve``, ``ahgd_daemon/removal.py``), made again once a collection has
freed enough.  The main loop calls :meth:`DaemonCollection.step`
each turn; a step advances the collection for at most :data:`STEP_BUDGET_S` (one removal
or one small chunk of the walk past that, at worst) and returns, so schedules, drop folders
and runs are served between steps; while runs are in flight it does not step at all (for at
most :data:`BUSY_WAIT_MAX_S` in a row; the disk alert's collection never waits).  ``ahgd gc`` through the daemon's socket
(:meth:`DaemonCollection.request`) runs a whole collection on the socket's thread,
while the loop's steps wait.  Each collection ends with one ``gc_done`` log line (what went,
how long it took, its longest step), and feeds ``storage`` in ``ahgd status``, the page
and ``/metrics`` (``ahgd_daemon/storage.py``).  A collection that fails is logged and
tried again at the next interval; it never stops the daemon.

With ``daemon.object_store`` the bucket is collected too.  Its calls run on the
collector's own thread: while one is under way (the listing: a ``Future`` from the
collection) the loop does not step the collection at all, and the call's end wakes it.  A
bucket that cannot be reached is a ``gc_bucket_unreachable`` warning; nothing of it is
recorded, and the next collection tries again.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.config.retain import Policy, policy as make_policy
from state import format_ts
from state.errors import AhgdError
from state.removals import human_bytes

from . import storage
from .removal import Collector, Report, disk_space, reserve_size

#: between two collections (a disk alert starts one at once)
INTERVAL_S = 900.0
#: the first collection, after start-up and recovery
FIRST_AFTER_S = 5.0
#: the most one step of the loop spends collecting (then the loop goes on)
STEP_BUDGET_S = 0.01
#: while runs are in flight, a collection that is due (or under way) waits for them: its
#: walk and removals took the CPU and the GIL from a burst's runs (~0.4 s of a 400-file
#: burst).  It waits at most this long in a row, so that a daemon never idle still collects;
#: the disk alert's collection never waits
BUSY_WAIT_MAX_S = 300.0
#: how often a waiting collection looks again (a run's end wakes the loop sooner)
BUSY_RECHECK_S = 1.0
DISK_ALERT = "system.disk_nearly_full"
BUDGET_ALERT = "retention.data_budget_exceeded"
#: how often the loop looks at the state directory's disk itself (one statvfs)
DISK_CHECK_S = 1.0
#: the disk's use (percent) from which it collects at once, when no configuration says
#: (daemon.disk_alert_percent, or daemon.monitoring.thresholds.disk_percent)
DISK_PERCENT = 90.0
#: while the disk stays nearly full, it collects again once the disk has filled by this
#: share more (a disk full of other things is not walked again and again); a full one
#: (less free than twice the reserve) at most every DISK_FULL_AGAIN_S
DISK_GROWTH = 0.01
#: within this many points of the threshold the loop wakes every DISK_CHECK_S to look
DISK_NEAR_POINTS = 15.0
DISK_FULL_AGAIN_S = 30.0
#: how often a missing reserve is made again (when the disk has room for it)
RESERVE_AGAIN_S = 5.0


def disk_threshold(settings: Any) -> float:
    """The disk use (percent) at which the daemon collects at once: the alert's threshold."""
    try:
        configured = settings.monitoring.thresholds.disk_percent
    except AttributeError:
        configured = None
    return float(configured if configured is not None else
                 getattr(settings, "disk_alert_percent", DISK_PERCENT))


def timed(step: Iterator[Any], budget_s: float,
          waiting: Callable[[Future], None] | None = None) -> tuple[bool, float]:
    """Advance ``step`` until ``budget_s`` has passed (at a pause), or it yields a ``Future``
    (handed to ``waiting``: it waits for another thread); (finished, seconds)."""
    began = time.perf_counter()
    for paused in step:
        if isinstance(paused, Future) and not paused.done():
            if waiting is not None:
                waiting(paused)
            return False, time.perf_counter() - began
        if time.perf_counter() - began >= budget_s:
            return False, time.perf_counter() - began
    return True, time.perf_counter() - began


def configured_store(settings: Any) -> Any:
    """The object store of a daemon's settings (``daemon.object_store``), the one its
    executor uses; None (and nothing of boto3 imported) without one."""
    found = getattr(settings, "object_store", None)
    if found is None:
        return None
    from state import objectstore

    return objectstore.configure(found.as_dict())


def setup_policy(setup: Any) -> Policy:
    """The ``retain:`` policy of a daemon's configuration (master defaults, pipeline overrides)."""
    return config_policy(setup.config)


def config_policy(config: Any) -> Policy:
    """The ``retain:`` policy of a loaded configuration (``pipelines.config.load_config``)."""
    return make_policy(config.retain, {n: p.file.retain for n, p in config.pipelines.items()})


class DaemonCollection:
    def __init__(self, log: Any, state_dir: Path, policy: Policy, *, logger: Any,
                 wake: Callable[[], None], alerts: Any, clock: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic,
                 busy: Callable[[], bool] | None = None, disk_percent: float = DISK_PERCENT,
                 store: Any = None):
        self.collector = Collector(log, state_dir, policy, clock, delete_aside=True,
                                   store=store, warn=self._store_warning)
        self._waiting_on: Future | None = None  # an object-store call the collection awaits
        #: the disk's use (percent) from which it collects at once (the disk alert's threshold)
        self.disk_percent = disk_percent
        self._disk_next = 0.0               # when the loop looks at the disk next (monotonic)
        self._disk_near = False             # within DISK_NEAR_POINTS of disk_percent: watched
        self._disk_low: int | None = None   # the least used since the disk last set it off
        self._disk_last = -DISK_FULL_AGAIN_S  # when the disk last set off a collection
        self._reserve_next: float | None = None  # when to try making the reserve again
        self._trigger = "interval"  # why the collection asked for (_asap) is wanted
        self._label = "interval"    # why the collection under way started (gc_done says)
        self.state_dir, self.logger, self.wake, self.alerts = Path(state_dir), logger, wake, alerts
        self.monotonic = monotonic
        #: whether runs are in flight (the daemon's): the collection waits for them meanwhile
        self.busy = busy or (lambda: False)
        self._waiting_since: float | None = None  # when it began to wait for runs, this time
        self._overdue = False  # it waited BUSY_WAIT_MAX_S: this collection waits no more
        self._lock = threading.Lock()        # one collection at a time: the loop's or ahgd gc's
        self._asap = threading.Event()       # a disk alert: collect now
        self._due = monotonic() + FIRST_AFTER_S
        self._steps: Iterator[None] | None = None
        self._current: Report | None = None
        self.last: Report | None = None
        self.last_at: str | None = None  # when the last collection ended (wall clock)
        self.sizes: dict[str, int] | None = None
        self.measured_at: str | None = None
        self.ended = 0                       # collections ended (or failed) so far
        self._settle_from: int | None = None

    @classmethod
    def start(cls, daemon: Any) -> "DaemonCollection":
        """The collection of a daemon that has recovered its runs: a crash's trash finished
        now (before any request), the disk alert listened to, the sizes exported."""
        runs = daemon.runs
        collection = cls(daemon.log, daemon.state_dir, setup_policy(daemon.setup),
                         logger=daemon.logger, wake=daemon.waker.wake, alerts=daemon.alerts,
                         clock=daemon.options.clock, monotonic=daemon.options.monotonic,
                         busy=lambda: bool(runs.active),
                         disk_percent=disk_threshold(daemon.setup.settings),
                         store=configured_store(daemon.setup.settings))
        try:
            collection.collector.recover()
        except (AhgdError, OSError) as exc:
            collection._failed(exc)
        collection._keep_reserve()  # room to record removals should the disk fill up
        daemon.log.add_listener(collection.on_event)
        daemon.monitor.add_collector(storage.StorageCollector(collection.section))
        return collection

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"cmd": "gc", "dry_run": bool, "pipeline": name or null}`` from the socket."""
        from .requests import RequestError

        dry_run, pipeline = request.get("dry_run", False), request.get("pipeline")
        if not isinstance(dry_run, bool) or not (pipeline is None or isinstance(pipeline, str)):
            raise RequestError("gc takes dry_run (true or false) and pipeline (a name or null)")
        return {"gc": self.request(dry_run=dry_run, pipeline=pipeline)}

    def configure(self, policy: Policy, settings: Any = None) -> None:
        """A reload's policy (and daemon settings: the disk threshold), from now on."""
        self.collector.policy = policy
        if settings is not None:
            self.disk_percent = disk_threshold(settings)
            self.collector.store = configured_store(settings)

    # -- when ----------------------------------------------------------------------------

    def on_event(self, event: Any) -> None:
        """An event log listener: the disk alert starts a collection at once."""
        if event.type == "alert.raised" and (event.data() or {}).get("name") == DISK_ALERT:
            self._trigger = "disk alert"
            self._asap.set()
            self.wake()

    def _watch_disk(self) -> None:
        """Every :data:`DISK_CHECK_S`: a disk at or over :attr:`disk_percent` (or with less
        free than twice the reserve) starts a collection at once.  The alert cannot be relied
        on for that: on a full disk its event, which starts one, cannot be recorded.  While
        the disk stays that full it collects again once the disk has filled by
        :data:`DISK_GROWTH` of its size more (runs still writing), and a full disk at most every
        :data:`DISK_FULL_AGAIN_S` (what was kept may be removable by then)."""
        now = self.monotonic()
        if now < self._disk_next:
            return
        self._disk_next = now + DISK_CHECK_S
        try:
            total, used, free = disk_space(self.state_dir)
        except OSError:
            return
        seen = used + free
        percent = 100.0 * used / seen if seen else 0.0
        full = free < 2 * reserve_size(total)
        # near: the loop turns at least every DISK_CHECK_S to look (else its heartbeat's 5 s)
        self._disk_near = full or percent >= self.disk_percent - DISK_NEAR_POINTS
        if not full and percent < self.disk_percent:
            self._disk_low = None
            return
        low = self._disk_low
        self._disk_low = used if low is None else min(low, used)
        again = (low is None or used - self._disk_low >= DISK_GROWTH * total
                 or (full and now - self._disk_last >= DISK_FULL_AGAIN_S))
        if not again or self._asap.is_set():
            return
        self._disk_low, self._disk_last, self._trigger = used, now, "disk nearly full"
        self._asap.set()
        self.logger.warning(
            "gc_disk_nearly_full", disk_percent=round(percent, 1), free_bytes=free,
            threshold_percent=self.disk_percent, collecting="now",
            detail=f"the disk holding {self.state_dir} is {percent:.1f}% used "
                   f"({human_bytes(free)} free): retention collects at once, what its retain: "
                   "policy lets go; if that is not enough, free space on that disk or lower "
                   "retain.successful_runs / retain.failed_runs_for")

    def _keep_reserve(self) -> None:
        """The collector's reserve made when missing and the disk has room; tried again every
        :data:`RESERVE_AGAIN_S` until it is there."""
        try:
            made = self.collector.keep_reserve()
        except Exception:  # noqa: BLE001 - never a reason to stop the loop
            made = False
        self._reserve_next = None if made else self.monotonic() + RESERVE_AGAIN_S

    def _is_due(self) -> bool:
        return self._asap.is_set() or self.monotonic() >= self._due

    def sleep_hint(self) -> float:
        """How long the loop may sleep as far as collecting goes (0: a step is waiting);
        at most :data:`DISK_CHECK_S` while the disk is near its threshold."""
        hint = self._next_in_s()
        if self._disk_near:
            hint = min(hint, max(0.0, self._disk_next - self.monotonic()))
        return hint

    def _next_in_s(self) -> float:
        """How long until the next collection steps (0: now)."""
        if self._steps is not None and self._waiting_on is not None:
            return BUSY_RECHECK_S  # the object store's answer wakes the loop sooner
        if self._steps is not None or self._is_due():
            return BUSY_RECHECK_S if self._waiting_since is not None else 0.0
        return max(0.0, self._due - self.monotonic())

    def _gives_way(self) -> bool:
        """True while the collection waits for the runs in flight: never for the disk
        alert, and for at most :data:`BUSY_WAIT_MAX_S` in a row (then it steps on, busy or
        not, until it ends)."""
        if self._overdue or self._asap.is_set() or not self.busy():
            self._waiting_since = None
            return False
        now = self.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since >= BUSY_WAIT_MAX_S:
            self._waiting_since, self._overdue = None, True
            return False
        return True

    # -- from the loop ---------------------------------------------------------------------

    def step(self) -> None:
        """Advance the collection by at most :data:`STEP_BUDGET_S`; start one when due."""
        if not self._lock.acquire(blocking=False):
            return  # `ahgd gc` is collecting on the socket's thread
        try:
            self._watch_disk()
            if self._steps is None and not self._is_due():
                if self._reserve_next is not None and self.monotonic() >= self._reserve_next:
                    self._keep_reserve()
                return
            if self._waiting_on is not None:
                if not self._waiting_on.done():
                    return  # the object store has not answered: its answer wakes the loop
                self._waiting_on = None
            if self._gives_way():
                return  # runs are in flight: the loop looks again at its next turn
            if self._steps is None:
                self._overdue = self._asap.is_set()  # the disk alert's collection never waits
                self._label = self._trigger if self._overdue else "interval"
                self._trigger = "interval"
                self._asap.clear()
                self._current = self.collector.new_report()
                self._steps = self.collector.collect(self._current)
            report = self._current
            try:
                finished, took = timed(self._steps, STEP_BUDGET_S, self._wait_for)
            except Exception as exc:  # a full disk, a permission: next time, never a crash
                self._failed(exc)
                return
            report.steps += 1
            report.longest_step_s = max(report.longest_step_s, took)
            if finished:
                self._finish(report, self._label)
            else:
                # what the collection holds (its plan of thousands of items) lives until it
                # ends: kept out of the collector's full scans meanwhile, which otherwise take
                # 70-110 ms each with 20,000 runs (measured, bench/retention.py) and pause the
                # loop wherever they strike; unfrozen when the collection ends
                gc.freeze()
        finally:
            self._lock.release()

    def _wait_for(self, call: Future) -> None:
        """The collection waits for ``call`` (on the store's thread); its end wakes the loop."""
        self._waiting_on = call
        call.add_done_callback(lambda _: self.wake())

    def _store_warning(self, message: str) -> None:
        store = self.collector.store
        self.logger.warning(
            "gc_bucket_unreachable", object_store=getattr(store, "url", None),
            endpoint=(getattr(store, "settings", None) or {}).get("endpoint_url") or "AWS S3",
            detail=message)

    def settle(self) -> bool:
        """``--once``: one whole collection once the work is done; True when it has ended."""
        if self._settle_from is None:
            self._settle_from = self.ended
            self._asap.set()
            return False
        return self.ended > self._settle_from and self._steps is None and not self._asap.is_set()

    # -- ahgd gc through the socket ----------------------------------------------------------

    def request(self, *, dry_run: bool, pipeline: str | None) -> dict[str, Any]:
        """``ahgd gc`` asked over the control socket: one whole collection, here and now."""
        if dry_run:
            return self.collector.run(dry_run=True, pipeline=pipeline).as_dict()
        with self._lock:
            if self._steps is not None:  # the loop's collection gives way to this one
                self._steps.close()
                self._steps = self._current = self._waiting_on = None
                gc.unfreeze()
            began = time.perf_counter()
            report = self.collector.run(pipeline=pipeline)
            report.steps, report.longest_step_s = 1, time.perf_counter() - began
            self._finish(report, "ahgd gc")
        return report.as_dict()

    # -- what it says ----------------------------------------------------------------------

    def _finish(self, report: Report, trigger: str) -> None:
        self._steps = self._current = self._waiting_on = None
        self._waiting_since, self._overdue = None, False
        gc.unfreeze()
        # what the collection deleted (on the deleting thread) may have to land first
        self._reserve_next = None if self.collector.reserve_path.is_file() else self.monotonic()
        self.ended += 1
        self._due = self.monotonic() + INTERVAL_S
        self.last, self.last_at = report, format_ts(self.collector.clock())
        if report.pipeline is None:
            self.sizes, self.measured_at = report.sizes_after(), report.as_of
            if self.collector.store is None:  # no bucket: shown as nothing, not as 0 B
                self.sizes.pop("bucket", None)
            self._judge_budget(report)
        if report.walk.bucket_error:
            self._store_warning(report.walk.bucket_error)
        summary = self.last_summary()
        self.logger.info("gc_done", trigger=trigger, removed=summary["items"],
                         freed_bytes=summary["bytes"], by_area=summary["by_area"],
                         kept=report.walk.kept, skipped=len(report.skipped),
                         restored=report.restored, duration_s=summary["duration_s"],
                         steps=report.steps, longest_step_ms=summary["longest_step_ms"],
                         **({"reserve_released_bytes": report.reserve_released}
                            if report.reserve_released else {}))

    def _failed(self, exc: Exception) -> None:
        self._steps = self._current = self._waiting_on = None
        self._waiting_since, self._overdue = None, False
        gc.unfreeze()
        self._reserve_next = self.monotonic()  # released for its removals, perhaps
        self.ended += 1
        self._due = self.monotonic() + INTERVAL_S
        level = self.logger.warning if isinstance(exc, (AhgdError, OSError)) else self.logger.error
        level("gc_failed", error=f"{type(exc).__name__}: {exc}",
              fix="nothing was lost: a removal not recorded is put back at the next collection; "
                  "it is tried again in 15 minutes, at once if the disk fills further (or now "
                  "with `ahgd gc`)")

    def _judge_budget(self, report: Report) -> None:
        budget = self.collector.policy.data_budget
        alert_id = f"{BUDGET_ALERT}:data"
        if budget is not None and report.walk.over_budget:
            self.alerts.alert("warning", alert_id, (
                f"data/ stays {human_bytes(report.walk.over_budget)} over "
                f"retain.data_budget ({human_bytes(budget)}) after collection: "
                "what is left is needed (runs that may still run or be retried, the newest "
                "outputs of each pipeline); raise the budget, lower retain.successful_runs or "
                "retain.failed_runs_for, or free the disk"),
                over_bytes=report.walk.over_budget, budget_bytes=budget)
        else:
            self.alerts.resolve(alert_id, "data/ is within retain.data_budget")

    def last_summary(self) -> dict[str, Any] | None:
        report = self.last
        if report is None:
            return None
        freed = report.freed()
        return {"collection": report.collection, "at": self.last_at,
                "items": len(report.items), "bytes": sum(freed.values()), "by_area": freed,
                "pipeline": report.pipeline, "skipped": len(report.skipped),
                "duration_s": round((report.ended or report.started) - report.started, 3),
                "steps": report.steps, "longest_step_ms": round(report.longest_step_s * 1000, 2)}

    def section(self) -> dict[str, Any]:
        """The ``storage`` section of the dashboard document."""
        return storage.section(
            self.state_dir, self.sizes, self.measured_at, self._last_shown(),
            data_budget=self.collector.policy.data_budget,
            over_budget=self.last.walk.over_budget if self.last else None,
            next_in_s=self._next_in_s())

    def _last_shown(self) -> dict[str, Any] | None:
        summary = self.last_summary()
        if summary is not None:
            return summary
        from state import removals

        return removals.last_collection(self.collector.log)

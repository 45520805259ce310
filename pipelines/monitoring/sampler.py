"""Measuring the machine, this process and its stage workers with psutil.

    sampler = SystemSampler([state_dir, inbox], clock, workers=executor.worker_jobs)
    sample = sampler.measure()        # a SystemSample; a measure psutil cannot read is None

Machine CPU % is measured over at least :data:`CPU_WINDOW_S`.  Disk use is
read once per filesystem: the watched paths are grouped by device, so a state
directory and inbox on the same disk give one figure (and one alert).  A
worker's CPU % is that of one core since the previous sample (psutil needs the
same ``Process`` object twice, so they are kept per pid).
:class:`~pipelines.monitoring.PipelineMonitor` owns one sampler and decides
what the samples mean.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import psutil

from .records import DiskSample, SystemSample, WorkerSample

CPU_WINDOW_S = 1.0        # shortest interval over which machine CPU % is measured
#: ``() -> [(pid, pipeline, run_id, stage), ...]``: the stage workers and what they run
WorkerSource = Callable[[], Iterable[tuple[int, Any, Any, Any]]]


class SystemSampler:
    """Takes :class:`SystemSample` readings; safe to call from several threads."""

    def __init__(self, disk_paths: Sequence[str | os.PathLike], clock: Callable[[], datetime],
                 workers: WorkerSource | None = None):
        self.disk_paths = [Path(p) for p in disk_paths]
        self._clock = clock
        self._workers = workers
        self._sample_lock = threading.Lock()
        self._process = psutil.Process()
        self._cpu_before = (time.monotonic(), psutil.cpu_times())
        self._cpu_last: float | None = None
        self._worker_procs: dict[int, psutil.Process] = {}

    def measure(self) -> SystemSample:
        with self._sample_lock:
            percent = self._cpu_percent()
            mem = _safe(psutil.virtual_memory)
            disks = self._disks()
            rss = _safe(lambda: self._process.memory_info().rss)
            times = _safe(self._process.cpu_times)
            children = _safe(lambda: len(self._process.children(recursive=True)))
            workers = self._measure_workers()
        return SystemSample(
            at=self._clock(), cpu_percent=percent,
            memory_percent=mem.percent if mem is not None else None, disks=disks,
            process_rss_mb=rss / 2**20 if rss is not None else None,
            process_cpu_s=round(times.user + times.system, 3) if times is not None else None,
            child_processes=children, workers=workers)

    def _disks(self) -> tuple[DiskSample, ...]:
        by_device: dict[int, list[str]] = {}
        for path in self.disk_paths:
            existing = _existing(path)
            device = _safe(lambda: os.stat(existing).st_dev)
            if device is not None:
                by_device.setdefault(device, []).append(str(path))
        out = []
        for paths in by_device.values():
            usage = _safe(lambda: psutil.disk_usage(str(_existing(Path(paths[0])))))
            if usage is not None:
                out.append(DiskSample(paths[0], usage.percent, usage.free, tuple(paths)))
        return tuple(out)

    def _measure_workers(self) -> tuple[WorkerSample, ...]:
        if self._workers is None:
            return ()
        try:
            jobs = list(self._workers())
        except Exception:  # the pool is shutting down: no figures this time
            return ()
        seen, out = set(), []
        for pid, pipeline, run_id, stage in jobs:
            seen.add(pid)
            proc = self._worker_procs.get(pid)
            if proc is None:
                proc = _safe(lambda: psutil.Process(pid))
                if proc is None:
                    continue
                self._worker_procs[pid] = proc
                _safe(lambda: proc.cpu_percent(None))  # the first call only starts the clock
                cpu = None
            else:
                cpu = _safe(lambda: proc.cpu_percent(None))
            rss = _safe(lambda: proc.memory_info().rss)
            out.append(WorkerSample(pid, pipeline, run_id, stage,
                                    round(rss / 2**20, 1) if rss is not None else None, cpu))
        for gone in set(self._worker_procs) - seen:
            del self._worker_procs[gone]
        return tuple(out)

    def _cpu_percent(self) -> float | None:
        """Machine CPU % since the previous reading at least CPU_WINDOW_S ago.

        The kernel counts CPU time in ticks, so a shorter window gives noise
        (0 or 100 %); until the window has passed the last value is repeated.
        """
        now, (then, before) = time.monotonic(), self._cpu_before
        if now - then < CPU_WINDOW_S:
            return self._cpu_last
        after = _safe(psutil.cpu_times)
        if after is not None:
            self._cpu_before = (now, after)
            self._cpu_last = _busy_percent(before, after)
        return self._cpu_last


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent (an inbox not created yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _busy_percent(before: Any, after: Any) -> float | None:
    def busy_total(t: Any) -> tuple[float, float]:
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total - t.idle - getattr(t, "iowait", 0.0), total

    b0, t0 = busy_total(before)
    b1, t1 = busy_total(after)
    if t1 - t0 <= 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * (b1 - b0) / (t1 - t0))), 1)


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (psutil.Error, OSError):
        return None

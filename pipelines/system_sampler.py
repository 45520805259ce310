"""Measuring the machine and this process with psutil, for the monitor's samples.

    sampler = SystemSampler(metrics_dir, clock)
    sample = sampler.measure()        # a SystemSample; a measure psutil cannot read is None

Machine CPU % is measured over at least :data:`CPU_WINDOW_S`; disk use is that
of the filesystem holding ``disk_path``.  :class:`~pipelines.monitoring.PipelineMonitor`
owns one sampler and decides what the samples mean.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import psutil

from .monitor_records import SystemSample

CPU_WINDOW_S = 1.0        # shortest interval over which machine CPU % is measured


class SystemSampler:
    """Takes :class:`SystemSample` readings; safe to call from several threads."""

    def __init__(self, disk_path: str | os.PathLike, clock: Callable[[], datetime]):
        self.disk_path = Path(disk_path)
        self._clock = clock
        self._sample_lock = threading.Lock()
        self._process = psutil.Process()
        self._cpu_before = (time.monotonic(), psutil.cpu_times())
        self._cpu_last: float | None = None

    def measure(self) -> SystemSample:
        with self._sample_lock:
            percent = self._cpu_percent()
            mem = _safe(psutil.virtual_memory)
            disk = _safe(lambda: psutil.disk_usage(str(self.disk_path)))
            rss = _safe(lambda: self._process.memory_info().rss)
            times = _safe(self._process.cpu_times)
            children = _safe(lambda: len(self._process.children(recursive=True)))
        return SystemSample(
            at=self._clock(), cpu_percent=percent,
            memory_percent=mem.percent if mem is not None else None,
            disk_percent=disk.percent if disk is not None else None,
            process_rss_mb=rss / 2**20 if rss is not None else None,
            process_cpu_s=round(times.user + times.system, 3) if times is not None else None,
            child_processes=children)

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

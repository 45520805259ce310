"""The state directory's size by area, and what the last collection freed: for people and Prometheus.

:func:`section` is the ``storage`` section of the dashboard document (``ahgd status``,
``GET /api/dashboard``, the status page); :class:`StorageCollector` exports the same as
``ahgd_state_dir_bytes{area}`` and ``ahgd_gc_last_*`` for ``/metrics``.  The daemon takes
the sizes from its latest collection (which walks every area anyway) and measures
``history.db`` live; without a daemon, :func:`measure` walks the state directory once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from state import HISTORY_DB, parse_ts, removals

from .retention import AREAS, TMP_DIR, files_under

#: the areas shown, in order: the collected ones, then the event log itself
SHOWN = (*AREAS, "history")


def history_bytes(state_dir: Path) -> int:
    """``history.db`` with its write-ahead log and shared memory (a few ``stat`` calls)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(Path(state_dir) / (HISTORY_DB + suffix)).st_size
        except OSError:
            pass
    return total


def measure(state_dir: Path) -> dict[str, int]:
    """Bytes by area, walking the state directory (``ahgd status`` without a daemon)."""
    state_dir = Path(state_dir)
    sizes = {}
    for area in AREAS:
        if area == "bucket":  # the object store's: only a collection lists it
            continue
        folder = state_dir.joinpath(*TMP_DIR) if area == "tmp" else state_dir / area
        sizes[area] = _walk_bytes(folder)
    sizes["history"] = history_bytes(state_dir)
    return sizes


def _walk_bytes(folder: Path) -> int:
    return sum(size for _, size in files_under(folder))


def section(state_dir: Path, sizes: dict[str, int] | None, measured_at: str | None,
            last: dict[str, Any] | None, *, data_budget: int | None = None,
            over_budget: int | None = None, next_in_s: float | None = None) -> dict[str, Any]:
    """The dashboard document's ``storage`` section (docs/monitoring.md)."""
    areas = {a: (sizes or {}).get(a) for a in SHOWN}
    areas["history"] = history_bytes(state_dir)
    # the total is this disk's: the object store's bucket is shown, not added
    known = [v for a, v in areas.items() if isinstance(v, int) and a != "bucket"]
    return {"state_dir": str(state_dir), "measured_at": measured_at, "areas": areas,
            "total_bytes": sum(known) if known else None, "data_budget": data_budget,
            "over_budget_bytes": over_budget, "last_collection": last,
            "next_collection_in_s": None if next_in_s is None else round(next_in_s, 1)}


def history_section(state_dir: Path, history: Any) -> dict[str, Any]:
    """The section without a daemon: measured now, the last collection from the log."""
    from state import format_ts, utc_now

    return section(state_dir, measure(state_dir), format_ts(utc_now()),
                   removals.last_collection(history))


class StorageCollector:
    """``/metrics``: the sizes and the last collection, read from ``source()`` (the daemon's
    storage section) at each scrape."""

    def __init__(self, source: Callable[[], dict[str, Any]]):
        self._source = source

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        doc = self._source()
        sizes = GaugeMetricFamily("ahgd_state_dir_bytes", "Bytes in the state directory by area "
                                  "(history measured at each scrape, the rest at the last "
                                  "collection).", labels=["area"])
        for area, size in (doc.get("areas") or {}).items():
            if isinstance(size, int):
                sizes.add_metric([area], size)
        yield sizes
        last = doc.get("last_collection")
        if not last:
            return
        freed = GaugeMetricFamily("ahgd_gc_last_freed_bytes", "Bytes the last collection "
                                  "removed, by area.", labels=["area"])
        for area, size in (last.get("by_area") or {}).items():
            freed.add_metric([area], size)
        yield freed
        yield GaugeMetricFamily("ahgd_gc_last_removed", "Things (run data folders, inputs, "
                                "set-aside files) the last collection removed.",
                                value=last.get("items") or 0)
        at = parse_ts(last.get("at")) if last.get("at") else None
        if at is not None:
            yield GaugeMetricFamily("ahgd_gc_last_timestamp_seconds", "Unix time the last "
                                    "collection ended.", value=at.timestamp())
        for key, name, what in (("duration_s", "ahgd_gc_last_duration_seconds",
                                 "How long the last collection took, start to end."),
                                ("longest_step_ms", "ahgd_gc_last_longest_step_seconds",
                                 "The longest the last collection held up the daemon's loop.")):
            value = last.get(key)
            if isinstance(value, (int, float)):
                yield GaugeMetricFamily(name, what, value=value / (1000 if key.endswith("ms")
                                                                    else 1))
        if doc.get("over_budget_bytes"):
            yield GaugeMetricFamily("ahgd_data_over_budget_bytes", "Bytes data/ stays over "
                                    "retain.data_budget (what is kept cannot go).",
                                    value=doc["over_budget_bytes"])

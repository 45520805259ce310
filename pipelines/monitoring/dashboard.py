"""The dashboard document from a :class:`~pipelines.monitoring.monitor_state.MonitorState`.

One JSON-serialisable dict (docs/monitoring.md, "The dashboard document"):
the queue, the latest system sample, the thresholds, the active runs with
their progress, the last runs per pipeline, the alerts and the per-pipeline
statistics.  What ``ahgd status``, ``GET /api/dashboard`` and the JSON
metrics export show; the caller holds the monitor's lock.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict
from datetime import datetime
from typing import Any

from .monitor_state import MonitorState
from .records import AlertSeverity, iso

#: queued runs listed in the dashboard (the oldest); the rest are counted
ACTIVE_PENDING_SHOWN = 20


def dashboard_document(state: MonitorState, now: datetime, recent: int,
                       monitoring: dict[str, Any]) -> dict[str, Any]:
    """The document at ``now``, with ``recent`` last runs per pipeline; ``monitoring``
    says whether the sampling thread runs and how often it samples."""
    latest = state.samples[-1] if state.samples else None
    running = [r for r in state.live.values() if r.state == "RUNNING"]
    pending = [r for r in state.live.values() if r.state != "RUNNING"]
    # a queue of thousands must not make every dashboard request (and the lock) heavy
    first_pending = heapq.nsmallest(ACTIVE_PENDING_SHOWN, pending,
                                    key=lambda r: iso(r.requested_at) or "")
    active = sorted(running, key=lambda r: iso(r.started_at) or "") + first_pending
    return {
        "generated_at": iso(now),
        "daemon": None,
        "queue": state.queue_figures(),
        "system": latest.to_dict() if latest else None,
        "monitoring": monitoring,
        "thresholds": asdict(state.thresholds),
        "active_runs": [r.progress(now) for r in active],
        "active_runs_not_shown": len(pending) - len(first_pending),
        "recent_runs": {name: list(s.recent_runs)[:recent]
                        for name, s in sorted(state.pipelines.items()) if s.recent_runs},
        "alerts": {
            "open": [a.to_dict() for a in sorted(state.open.values(),
                                                 key=lambda a: (-a.severity.rank, a.at))],
            "counts": {s.value: state.alert_counts[s] for s in AlertSeverity},
            "recent": [a.to_dict() for a in list(state.alerts)[-50:]],
        },
        "pipelines": {name: {**s.to_dict(), "active_runs": sum(
            1 for r in state.live.values() if r.pipeline == name)}
            for name, s in sorted(state.pipelines.items())},
    }

"""``ahgd pipelines``: the configured pipelines, each with its triggers, its state (active,
paused or disabled), its last run and its next scheduled tick, as one document.

The daemon answers it from the configuration it runs (its schedules know their
next tick); without a daemon, ``--config`` gives the configuration and the
next ticks are computed from now.  Pauses and last runs come from the history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from state import format_ts, ops_queries

from .schedules import build


def describe_trigger(trigger: Any) -> dict[str, Any]:
    """One trigger as data, with ``text`` for a terminal."""
    if trigger.type == "drop_folder":
        return {"type": "drop_folder", "path": str(trigger.path), "pattern": trigger.pattern,
                "text": f"drop folder {trigger.path} ({trigger.pattern})"}
    if trigger.type == "schedule":
        if trigger.cron:
            when = f"cron {trigger.cron}"
        else:   # the interval itself, not the trigger's id (which may be "hourly")
            from pipelines.durations import format_duration

            when = f"every {format_duration(trigger.interval)}"
        return {"type": "schedule", "id": trigger.id, "cron": trigger.cron,
                "interval_s": trigger.interval.total_seconds() if trigger.interval else None,
                "timezone": trigger.timezone, "misfire": trigger.misfire,
                "text": f"{when} ({trigger.timezone}, misfire {trigger.misfire})"}
    return {"type": "upstream", "pipelines": list(trigger.pipelines),
            "text": f"after {', '.join(trigger.pipelines)} complete"}


def document(config: Any, history: Any, now: datetime,
             next_fires: dict[tuple[str, str], datetime | None] | None = None) -> list[dict[str, Any]]:
    """Every pipeline of ``config`` (a loaded configuration), by name.  ``history`` is the
    event log or a read-only one (None: no history yet); ``next_fires`` the daemon's next
    tick of each (pipeline, trigger), else computed from ``now``."""
    pauses = ops_queries.pipeline_pauses(history) if history is not None else {}
    last = ops_queries.last_runs(history) if history is not None else {}
    out = []
    for name in sorted(config.pipelines):
        loaded = config.pipelines[name]
        state = ("disabled" if not loaded.enabled else "paused" if name in pauses else "active")
        ticks = []
        for trigger in loaded.file.triggers:
            if trigger.type != "schedule" or not loaded.enabled:
                continue
            if next_fires is not None:
                tick = next_fires.get((name, trigger.id))
            else:
                tick = build(name, trigger).next_after(None, now + timedelta(microseconds=1))
            if tick is not None:
                ticks.append(tick)
        entry: dict[str, Any] = {
            "name": name, "state": state,
            "description": loaded.file.pipeline.description,
            "triggers": [describe_trigger(t) for t in loaded.file.triggers],
            "dependencies": list(loaded.dependencies),
            "params": sorted(loaded.file.params),
            "last_run": last.get(name),
            "next_tick": format_ts(min(ticks)) if ticks else None,
            "config_file": str(loaded.source),
        }
        if state == "paused":
            entry["pause"] = {k: v for k, v in pauses[name].items() if k != "seq"}
        out.append(entry)
    return out

"""The names a command is given (a pipeline, a run id, an event type), checked against what
is there, with one message for each kind of wrong name (and for a pipeline asked for by name
that the configuration disables).

A name that matches nothing must never look like success (an empty report, exit 0):
every command that takes one says what was not found, suggests the closest known
name (``state.errors.did_you_mean``) and says where to look.  The functions here
return the message, or None when the name is fine; the caller raises its own error
(the CLI fails with it, the daemon answers its client with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from state import queries
from state.errors import did_you_mean
from state.events import EVENT_TYPES


def _hint(name: str, known: Iterable[str]) -> str:
    close = did_you_mean(name, known)
    return f"; {close}" if close else ""


def unknown_pipeline(name: str, known: Iterable[str]) -> str:
    """A pipeline the configuration does not have."""
    known = sorted(known)
    return (f"no pipeline {name!r} in the configuration{_hint(name, known)} "
            f"(known: {', '.join(known) or 'none'})")


def disabled_pipeline(name: str, where: Any) -> str:
    """A pipeline the configuration has, with ``enabled: false`` (in the master file ``where``)."""
    return (f"pipeline {name!r} is disabled (enabled: false in {where}): its drop folders, "
            "schedules and upstream triggers are off, and it runs only when asked with --force. "
            f"Run it once anyway with `ahgd run {name} --force`, or set enabled: true there "
            "(and reload a running daemon: systemctl reload ahgd-daemon, or SIGHUP)")


def unknown_run(db: Any, run_id: str, *, any_event: bool = False) -> str | None:
    """None if the history has run ``run_id`` (with ``any_event``: or any event carrying
    that id, such as an orchestration's), else the message."""
    if queries.run_state(db, run_id) is not None:
        return None
    if any_event and queries.has_events(db, run_id):
        return None
    return (f"no run {run_id!r} in this state directory"
            f"{_hint(run_id, queries.recent_run_ids(db))} (see `ahgd history`)")


def unknown_event_types(types: Iterable[str]) -> str | None:
    """None if every one of ``types`` is an event type, else the message for the first."""
    for name in types:
        if name not in EVENT_TYPES:
            close = did_you_mean(name, EVENT_TYPES)
            return (f"unknown event type {name!r}; "
                    + (close if close else f"the types are {', '.join(sorted(EVENT_TYPES))}"))
    return None


def pipeline_without_runs(db: Any, name: str) -> str | None:
    """None if the history has runs of pipeline ``name``, else the message."""
    known = queries.pipelines_with_runs(db)
    if name in known:
        return None
    return (f"no runs of pipeline {name!r} in this state directory{_hint(name, known)} "
            f"(pipelines with runs: {', '.join(known) or 'none yet'})")

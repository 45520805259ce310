"""Pausing and resuming a pipeline (``ahgd pause`` / ``ahgd resume``): the events, who asked,
and what a resume sets going again.

A pause is a ``pipeline.paused`` event, so it survives restarts.  While a
pipeline is paused its drop folders still take files (recorded, with their
runs), but none of its runs starts: they wait, PENDING (``runs.py`` leaves
them); each schedule tick that comes is recorded as ``schedule.skipped``
(``schedules.py``).  A resume is a ``pipeline.resumed`` event; the daemon
then fires the ticks skipped during the pause as each trigger's ``misfire``
policy says (``skip``: none, ``latest``: the most recent, ``all``: each), and
the waiting runs start.  Runs already running when the pause came finish.

The daemon calls these from its control socket; ``ahgd pause`` calls them
itself when no daemon runs (the next daemon reads the pause from the log).
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterable
from typing import Any

from state import EventLog, EventType as T, new_event, ops_queries
from state.events import PIPELINE_ID_PREFIX

from .names import unknown_pipeline
from .requests import RequestError

MAX_REASON = 500


def who(uid: int | None = None, pid: int | None = None,
        sudo_user: str | None = None) -> dict[str, Any]:
    """Who asks: a user name, uid, pid and host (the control socket's peer, or ourselves);
    ``sudo_user`` is who ran ``sudo -u ...``, as that client said."""
    uid = os.getuid() if uid is None else uid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    out: dict[str, Any] = {"user": user, "uid": uid, "pid": os.getpid() if pid is None else pid,
                           "host": socket.gethostname()}
    if sudo_user and sudo_user != user:
        out["sudo_user"] = str(sudo_user)[:64]
    return out


def client_sudo_user() -> str | None:
    """Who ran ``sudo -u ahgd ahgd ...`` (the client says; recorded beside the real uid)."""
    return os.environ.get("SUDO_USER") or None


def describe(pause: dict[str, Any]) -> str:
    """``paused by alice (uid 1000, via sudo by bob) at 2026-...Z: the reason``."""
    by = pause.get("by") or {}
    extra = f", via sudo by {by['sudo_user']}" if by.get("sudo_user") else ""
    who_ = f"{by.get('user', '?')} (uid {by.get('uid', '?')}{extra})"
    reason = pause.get("reason")
    return f"paused by {who_} at {pause.get('since')}" + (f": {reason}" if reason else
                                                         " (no reason given)")


def check_known(name: str, known: Iterable[str], *, from_history: bool = False) -> None:
    known = list(known)
    if name not in known:
        message = unknown_pipeline(name, known)
        if from_history:
            message = message.replace("in the configuration", "in this state directory's history")
            message += ("; no daemon runs here, so the names come from the history: pass "
                        "--config to name a pipeline that has not run yet")
        raise RequestError(message)


def pause(log: EventLog, name: str, known: Iterable[str], reason: str | None,
          by: dict[str, Any], *, from_history: bool = False) -> dict[str, Any]:
    """Record ``pipeline.paused``; what the reply says (the pause, and the runs waiting)."""
    check_known(name, known, from_history=from_history)
    if reason is not None and not isinstance(reason, str):
        raise RequestError(f"reason must be text, not {type(reason).__name__}")
    reason = (reason or "").strip()[:MAX_REASON] or None
    current = ops_queries.pipeline_pauses(log).get(name)
    if current is not None:
        raise RequestError(f"pipeline {name!r} is already {describe(current)}; `ahgd resume "
                           f"{name}` resumes it")
    event = log.append(new_event(T.PIPELINE_PAUSED, PIPELINE_ID_PREFIX + name, pipeline=name,
                                 reason=reason, by=by))
    return {"pipeline": name, "pause": {"reason": reason, "by": by, "since": event.ts}}


def resume(log: EventLog, name: str, known: Iterable[str], by: dict[str, Any], *,
           from_history: bool = False) -> dict[str, Any]:
    """Record ``pipeline.resumed``; the reply carries the pause it ended (``seq`` among it:
    the ticks skipped since are the ones the misfire policy chooses from)."""
    check_known(name, known, from_history=from_history)
    current = ops_queries.pipeline_pauses(log).get(name)
    if current is None:
        raise RequestError(f"pipeline {name!r} is not paused; `ahgd pause {name}` pauses it")
    log.append(new_event(T.PIPELINE_RESUMED, PIPELINE_ID_PREFIX + name, pipeline=name, by=by,
                         paused_at=current["since"]))
    return {"pipeline": name, "was": current}


def fire_skipped_ticks(log: EventLog, schedules: list[Any], name: str,
                       paused_seq: int) -> list[str]:
    """After a resume: the ticks of ``name``'s schedules skipped during the pause, fired as
    each trigger's misfire policy says; the run ids requested."""
    from .schedules import MAX_CATCH_UP, fire
    from state import parse_ts

    skipped = ops_queries.skipped_ticks(log, name, paused_seq)
    fired = []
    for schedule in (s for s in schedules if s.pipeline == name):
        ticks = sorted({t for trigger, t in skipped if trigger == schedule.trigger_id})
        chosen = {"all": ticks[-MAX_CATCH_UP:], "latest": ticks[-1:]}.get(schedule.misfire, [])
        for tick in chosen:
            run_id = fire(log, schedule, parse_ts(tick), catch_up=True)
            if run_id:
                fired.append(run_id)
    return fired


def local_by() -> dict[str, Any]:
    """Who asks, when no daemon runs (this process)."""
    return who(sudo_user=client_sudo_user())

"""The legal transitions of every aggregate, as explicit tables.

``(current state, or None for "does not exist yet", event type) -> new state``
for runs, stage attempts, files, alerts, orchestrations and paused pipelines.  Anything
not in a table raises :class:`IllegalTransition` (built by :func:`illegal`, which lists
the states the event is allowed from) before the log writes a byte.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .aggregates import R, S
from .errors import IllegalTransition
from .events import Event, EventType as T


def _plain(table: dict) -> dict[tuple[str | None, str], str]:
    """Plain ``str`` keys and values: aggregates hold text, as the database does."""
    return {(None if c is None else str(c), str(t)): str(v) for (c, t), v in table.items()}


# (current run state or None for "no such run", event type) -> new run state
RUN_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.RUN_REQUESTED): R.PENDING,
    (R.PENDING, T.RUN_STARTED): R.RUNNING,
    (R.RUNNING, T.RUN_COMPLETED): R.COMPLETED,
    (R.PENDING, T.RUN_FAILED): R.FAILED,
    (R.RUNNING, T.RUN_FAILED): R.FAILED,
    (R.PENDING, T.RUN_CANCELLED): R.CANCELLED,
    (R.RUNNING, T.RUN_CANCELLED): R.CANCELLED,
    (R.PARKED, T.RUN_CANCELLED): R.CANCELLED,
    (R.RUNNING, T.RUN_RECOVERED): R.PENDING,
    (R.RUNNING, T.RUN_SUSPENDED): R.PENDING,
    (R.PENDING, T.RUN_PARKED): R.PARKED,
    (R.RUNNING, T.RUN_PARKED): R.PARKED,
    (R.FAILED, T.RUN_RETRIED): R.PENDING,
    (R.PARKED, T.RUN_RETRIED): R.PENDING,
    (R.CANCELLED, T.RUN_RETRIED): R.PENDING,
    # retention removed the outputs of a run that has ended; never of one that may still run
    # (PENDING, RUNNING, PARKED), and a run retried meanwhile makes it illegal, atomically
    (R.COMPLETED, T.DATA_EXPIRED): R.COMPLETED,
    (R.FAILED, T.DATA_EXPIRED): R.FAILED,
    (R.CANCELLED, T.DATA_EXPIRED): R.CANCELLED,
})

# (current state of the stage's latest attempt, None if never tried, event type)
#   -> new state of the addressed attempt
STAGE_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.STAGE_STARTED): S.RUNNING,
    (S.RETRYING, T.STAGE_STARTED): S.RUNNING,
    (S.FAILED, T.STAGE_STARTED): S.RUNNING,
    (S.TIMED_OUT, T.STAGE_STARTED): S.RUNNING,
    (S.INTERRUPTED, T.STAGE_STARTED): S.RUNNING,
    (S.INVALIDATED, T.STAGE_STARTED): S.RUNNING,
    (S.RUNNING, T.STAGE_COMPLETED): S.COMPLETED,
    (S.RUNNING, T.STAGE_FAILED): S.FAILED,
    (S.RUNNING, T.STAGE_TIMED_OUT): S.TIMED_OUT,
    (S.RUNNING, T.STAGE_INTERRUPTED): S.INTERRUPTED,
    (S.FAILED, T.STAGE_RETRYING): S.RETRYING,
    (S.TIMED_OUT, T.STAGE_RETRYING): S.RETRYING,
    (S.INTERRUPTED, T.STAGE_RETRYING): S.RETRYING,
    (None, T.STAGE_SKIPPED): S.SKIPPED,
    (None, T.STAGE_REUSED): S.COMPLETED,
    # a completed (or reused) stage whose recorded output is gone or altered runs again
    (S.COMPLETED, T.STAGE_INVALIDATED): S.INVALIDATED,
})

FILE_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.FILE_ARRIVED): "ARRIVED",
    ("QUARANTINED", T.FILE_ARRIVED): "ARRIVED",
    ("ARRIVED", T.FILE_DUPLICATE): "ARRIVED",
    (None, T.FILE_QUARANTINED): "QUARANTINED",
    ("ARRIVED", T.FILE_QUARANTINED): "QUARANTINED",
    ("QUARANTINED", T.FILE_QUARANTINED): "QUARANTINED",
    # `ahgd quarantine release`: back into the drop folder, to be taken again (not a duplicate)
    ("QUARANTINED", T.FILE_RELEASED): "RELEASED",
    (None, T.FILE_RELEASED): "RELEASED",            # set aside by a crash before its event
    ("RELEASED", T.FILE_RELEASED): "RELEASED",      # another quarantined copy of the same bytes
    ("RELEASED", T.FILE_ARRIVED): "ARRIVED",
    ("RELEASED", T.FILE_QUARANTINED): "QUARANTINED",
})

#: a pipeline paused by hand; a schedule's tick that comes meanwhile is recorded skipped
PIPELINE_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.PIPELINE_PAUSED): "PAUSED",
    ("ACTIVE", T.PIPELINE_PAUSED): "PAUSED",
    ("PAUSED", T.PIPELINE_RESUMED): "ACTIVE",
    ("PAUSED", T.SCHEDULE_SKIPPED): "PAUSED",
})

#: a file retention removed is not projected: each removal stands on its own in the log
REMOVAL_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.FILE_EXPIRED): "REMOVED",
})

#: a refused drop-folder entry is not projected: every refusal stands on its own in the log
REFUSAL_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.FILE_REFUSED): "REFUSED",
    ("REFUSED", T.FILE_REFUSED): "REFUSED",
})

#: one alert per condition: raising an alert that is already firing is illegal
ALERT_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.ALERT_RAISED): "FIRING",
    ("RESOLVED", T.ALERT_RAISED): "FIRING",
    ("FIRING", T.ALERT_RESOLVED): "RESOLVED",
    # warehouse.lost raises the alert warehouse.lost:<path>; found again while it fires, it
    # is one more sighting of the same condition, not a second alert
    (None, T.WAREHOUSE_LOST): "FIRING",
    ("RESOLVED", T.WAREHOUSE_LOST): "FIRING",
    ("FIRING", T.WAREHOUSE_LOST): "FIRING",
})

ORCH_TRANSITIONS: dict[tuple[str | None, str], str] = _plain({
    (None, T.ORCH_STARTED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_STARTED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_FINISHED): "RUNNING",
    ("RUNNING", T.ORCH_PIPELINE_SKIPPED): "RUNNING",
    ("RUNNING", T.ORCH_COMPLETED): "COMPLETED",
    ("RUNNING", T.ORCH_FAILED): "FAILED",
})


def illegal(what: str, current: str | None, event: Event, allowed: Iterable[str], hint: str = "") -> IllegalTransition:
    allowed_s = ", ".join(sorted(str(a) for a in allowed if a is not None)) or "nothing"
    cur = "does not exist" if current is None else f"is {current}"
    msg = f"{what} {cur}; {event.type} is only allowed from: {allowed_s}"
    if hint:
        msg += f" ({hint})"
    return IllegalTransition(msg, event_type=event.type, current=current)


def next_state(table: dict[tuple[str | None, str], str], current: str | None, e: Event,
                what: Callable[[], str], hint: str = "") -> str:
    """The state ``e`` leads to from ``current`` in ``table``, or IllegalTransition."""
    new_state = table.get((current, e.type))
    if new_state is None:
        allowed = [c or "new" for (c, t) in table if t == e.type]
        raise illegal(what(), current, e, allowed, hint)
    return new_state



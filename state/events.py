"""Typed events: the vocabulary of the event log.

The ``type`` strings are part of the public SQL interface (``events.type``);
they never change meaning once released.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Any, NamedTuple


class EventType(StrEnum):
    # runs
    RUN_REQUESTED = "run.requested"
    RUN_STARTED = "run.started"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_RECOVERED = "run.recovered"      # replay found it in flight after a crash
    RUN_SUSPENDED = "run.suspended"      # the daemon stopped cleanly mid-run
    RUN_PARKED = "run.parked"            # recovered too often: needs a human
    RUN_RETRIED = "run.retried"          # a human asked for another go
    # stage attempts
    STAGE_STARTED = "stage.started"
    STAGE_COMPLETED = "stage.completed"
    STAGE_FAILED = "stage.failed"
    STAGE_RETRYING = "stage.retrying"
    STAGE_SKIPPED = "stage.skipped"
    STAGE_REUSED = "stage.reused"        # output taken from an earlier run (resume)
    STAGE_TIMED_OUT = "stage.timed_out"
    STAGE_INTERRUPTED = "stage.interrupted"
    STAGE_INVALIDATED = "stage.invalidated"  # its recorded output failed its check: it runs again
    # inputs and triggers
    FILE_ARRIVED = "file.arrived"
    FILE_DUPLICATE = "file.duplicate"
    FILE_QUARANTINED = "file.quarantined"
    FILE_REFUSED = "file.refused"        # not taken: a link, FIFO, directory ...; left in place
    FILE_RELEASED = "file.released"      # a quarantined file put back into its drop folder
    # retention (`ahgd gc`, the daemon's collection): what was removed, why, and how many bytes
    DATA_EXPIRED = "data.expired"        # a run's stage outputs (data/<run>/); addresses the run
    FILE_EXPIRED = "file.expired"        # a stored input, a duplicate, a quarantined file, ...
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULE_SKIPPED = "schedule.skipped"  # a tick that came while its pipeline was paused
    # a pipeline paused and resumed by hand (`ahgd pause` / `ahgd resume`); their run_id is
    # PIPELINE_ID_PREFIX + the pipeline's name, so one pipeline's are found by index
    PIPELINE_PAUSED = "pipeline.paused"
    PIPELINE_RESUMED = "pipeline.resumed"
    # orchestrations (several pipelines run in dependency order)
    ORCH_STARTED = "orchestration.started"
    ORCH_PIPELINE_STARTED = "orchestration.pipeline_started"
    ORCH_PIPELINE_FINISHED = "orchestration.pipeline_finished"
    ORCH_PIPELINE_SKIPPED = "orchestration.pipeline_skipped"
    ORCH_COMPLETED = "orchestration.completed"
    ORCH_FAILED = "orchestration.failed"
    # alerts (a condition the monitor watches: raised once, resolved when it clears)
    ALERT_RAISED = "alert.raised"
    ALERT_RESOLVED = "alert.resolved"
    # the warehouse (<state dir>/warehouse.duckdb) was found gone, replaced or unreadable;
    # it raises the alert of the same name (an ``alerts`` row), resolved by ``alert.resolved``
    WAREHOUSE_LOST = "warehouse.lost"


EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)

#: the run_id of ``pipeline.paused`` / ``pipeline.resumed`` events is this plus the pipeline's
#: name (run ids never hold a colon)
PIPELINE_ID_PREFIX = "pipeline:"


class Event(NamedTuple):
    """One row of the ``events`` table.

    ``seq`` and ``ts`` are assigned by the log when the event is appended;
    an event built by a caller has ``seq=None`` and ``ts=None``.  ``raw`` is
    the payload's JSON text as stored, when known; replay leaves ``payload``
    undecoded (``None``) for the event types whose fold only keeps that text.
    """

    type: str
    run_id: str | None = None
    stage: str | None = None
    attempt: int | None = None
    payload: dict[str, Any] = {}
    idempotency_key: str | None = None
    seq: int | None = None
    ts: str | None = None
    raw: str | None = None

    def data(self) -> dict[str, Any]:
        """The payload as a dict, decoding ``raw`` if replay left it undecoded."""
        if self.payload is not None:
            return self.payload
        return json.loads(self.raw or "{}")


#: The JSON text of a payload as the log stores it: compact, and in the payload's own order.
#: Keys are never sorted: a mapping whose order carries meaning (the columns of a file,
#: in the file's order) must reach the stage that resumes from it unchanged.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
dumps_payload = _ENCODER.encode


def _fast_dumps_payload(value: Any, _make: Any = json.encoder.c_make_encoder,
                        _default: Any = _ENCODER.default,
                        _strings: Any = json.encoder.encode_basestring_ascii) -> str:
    """``_ENCODER.encode(value)``, the same text and errors (a fresh circular-reference
    check each call), without JSONEncoder.encode's and iterencode's Python layers: the
    event log encodes a payload per append, and those layers were a third of its cost."""
    if type(value) is str:
        return _strings(value)
    return "".join(_make({}, _default, _strings, None, ":", ",", False, False, False)(value, 0))


if json.encoder.c_make_encoder is not None:  # CPython's C encoder (else the plain encode)
    dumps_payload = _fast_dumps_payload


def plain_json(value: Any, _depth: int = 0, _finite: Any = math.isfinite) -> bool:
    """True if ``value`` is built only of ``dict`` (``str`` keys), ``list``, ``str``, ``int``,
    ``bool``, finite ``float`` and ``None``, those exact types and at most 32 levels deep:
    decoding its JSON text then gives back an equal value, so a caller need not decode it to
    know.  False says nothing either way (a tuple, a subclass, a non-str key ...): decode and
    compare then.  For small values (a walk in Python is slower than the C decoder on large
    ones)."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return _finite(value)
    if _depth >= 32:
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not plain_json(v, _depth + 1):
                return False
        return True
    if t is list:
        for v in value:
            if not plain_json(v, _depth + 1):
                return False
        return True
    return False


def new_event(
    type: str,
    run_id: str | None = None,
    *,
    stage: str | None = None,
    attempt: int | None = None,
    idempotency_key: str | None = None,
    **payload: Any,
) -> Event:
    """Build an event, with its payload given as keyword arguments."""
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}; known types: {sorted(EVENT_TYPES)}")
    return Event(type, run_id, stage, attempt, payload, idempotency_key)

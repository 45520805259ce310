"""What the state machine folds events into: the run and stage states, and one
record type per aggregate (a row of each projection table).

Plain data with no behaviour beyond reading itself: the transitions are in
:mod:`state.transitions`, the folds in :mod:`state.machine` (runs and their
stage attempts) and :mod:`state.folds` (files, schedules, alerts, orchestrations).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, NamedTuple


class RunState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PARKED = "PARKED"


class StageState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    RETRYING = "RETRYING"
    TIMED_OUT = "TIMED_OUT"
    INTERRUPTED = "INTERRUPTED"
    #: it had COMPLETED, but its recorded output was later found gone or altered: it runs again
    INVALIDATED = "INVALIDATED"


R, S = RunState, StageState


#: a run in one of these does nothing more on its own: it has ended, for good (COMPLETED)
#: or until someone retries it (FAILED, CANCELLED, PARKED)
ENDED_RUN_STATES = frozenset({R.COMPLETED, R.FAILED, R.CANCELLED, R.PARKED})
DONE_STAGE_STATES = frozenset({S.COMPLETED, S.SKIPPED})
#: attempts that ended without success and may be followed by another attempt
ENDED_UNSUCCESSFULLY = frozenset({S.FAILED, S.TIMED_OUT, S.INTERRUPTED, S.INVALIDATED})


class Attempt(NamedTuple):
    """One attempt of one stage of one run (a row of ``stage_runs``).

    ``detail`` is the JSON text of the payload of the latest event about this
    attempt, kept verbatim: figures such as ``rows`` and ``output`` are read
    from it on demand (and by SQL, as generated columns), so that replay
    never has to decode or re-encode them.
    """

    run_id: str
    stage: str
    attempt: int
    state: str
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    detail: str = "{}"

    def info(self) -> dict[str, Any]:
        return json.loads(self.detail)

    @property
    def output(self) -> dict[str, Any] | None:
        return self.info().get("output") if self.detail != "{}" else None

    @property
    def rows(self) -> int | None:
        return self.info().get("rows") if self.detail != "{}" else None


class Run(NamedTuple):
    """A run and the latest attempt of each of its stages (a row of ``runs``).

    ``last_seq`` is the seq of the last *run-level* event: stage events change
    attempt rows, never the run's own row (fewer pages written per append).
    """

    run_id: str
    pipeline: str
    trigger: str
    state: str
    params: dict[str, Any]
    stages: tuple[str, ...]
    requested_at: str
    started_at: str | None
    ended_at: str | None
    error: str | None
    failed_stage: str | None
    recoveries: int
    retries: int
    last_seq: int
    attempts: dict[str, Attempt]
    #: the seq of its run.requested event: the order runs were asked for (requested_at ties
    #: when several are requested in one commit, a burst's files claimed together)
    requested_seq: int = 0

    def stage_state(self, stage: str) -> str:
        a = self.attempts.get(stage)
        return a.state if a is not None else S.PENDING


class FileRecord(NamedTuple):
    """A file taken from a drop folder, by pipeline and content (``files``)."""

    pipeline: str
    sha256: str
    state: str
    name: str
    size: int | None
    stored_path: str | None
    first_seen: str
    last_seen: str
    run_id: str | None
    duplicates: int
    reason: str | None


class ScheduleRecord(NamedTuple):
    """The last tick of one schedule trigger (``schedules``)."""

    pipeline: str
    trigger: str
    last_fire_time: str
    fired: int
    last_run_id: str | None
    updated_at: str


class OrchPipeline(NamedTuple):
    position: int
    state: str
    run_id: str | None
    reason: str | None
    started_at: str | None
    ended_at: str | None


class Orchestration(NamedTuple):
    """One orchestration of several pipelines (``orchestrations``)."""

    orch_id: str
    name: str
    state: str
    planned: tuple[str, ...]
    started_at: str
    ended_at: str | None
    error: str | None
    last_seq: int
    pipelines: dict[str, OrchPipeline]


class AlertRecord(NamedTuple):
    """One alert condition (``alerts``): firing until resolved, then perhaps again."""

    alert_id: str           # the condition, e.g. "system.disk_nearly_full:/var/lib/ahgd"
    name: str
    severity: str
    state: str              # FIRING | RESOLVED
    message: str
    fields: str             # JSON text
    run_id: str | None
    raised_at: str
    resolved_at: str | None
    resolution: str | None
    times_raised: int
    last_seq: int


class Refusal(NamedTuple):
    """A drop-folder entry that was not taken (``file.refused``: a link, a FIFO, ...).

    Only the event log keeps refusals (``SELECT * FROM events WHERE type =
    'file.refused'``); no projection table holds them."""

    pipeline: str
    path: str
    kind: str
    reason: str
    last_seen: str
    times: int


class Removal(NamedTuple):
    """A file or folder that retention removed (``file.expired``: a stored input, a duplicate,
    a quarantined file, ...).  Like refusals, only the event log keeps them (the ``removals``
    view reads it); no projection table holds them."""

    path: str               # relative to the state directory
    area: str               # files, inputs, duplicates, quarantine, tmp, metrics, cache
    bytes: int
    at: str


class PipelineRecord(NamedTuple):
    """Whether a pipeline is paused by hand (``ahgd pause``): ``PAUSED`` or ``ACTIVE``.

    No table holds it: the pipeline's latest ``pipeline.paused`` / ``pipeline.resumed``
    event is the record (``state.ops_queries.pipeline_pauses``)."""

    pipeline: str
    state: str              # PAUSED | ACTIVE
    reason: str | None
    by: dict[str, Any]      # who: user, uid, pid, host
    since: str              # when it was paused (or resumed)
    seq: int


Aggregate = (Run | FileRecord | ScheduleRecord | Orchestration | AlertRecord | Refusal
             | PipelineRecord | Removal)
Key = tuple[str, str]

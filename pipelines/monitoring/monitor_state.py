"""What a monitor knows, as one plain value: :class:`MonitorState`.

Seeding (:mod:`~pipelines.monitoring.history`), the fold
(:mod:`~pipelines.monitoring.fold`), the alert decisions
(:mod:`~pipelines.monitoring.alerts`), the dashboard document and the metrics
export all take a ``MonitorState`` and read or change it; none of them locks,
logs or writes.  :class:`~pipelines.monitoring.PipelineMonitor` owns one and
holds its lock around every use.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Hashable

from state.machine import DONE_STAGE_STATES

from .records import RECENT_RUNS, Alert, PipelineStats, SystemSample, iso
from .thresholds import MonitorThresholds

#: run ids (and stage starts) remembered for the fold; older ones are looked up
MEMORY_CAP = 10_000
#: the machine's finished stage states, and REUSED, which the monitor names apart
_DONE_STAGE_STATES = DONE_STAGE_STATES | {"REUSED"}
#: ``run_id -> pipeline`` (or None) for a run older than the fold remembers
PipelineLookup = Callable[[str], "str | None"]
#: ``(run_id, seq) -> RunPast`` (or None): what the event log knows of a run whose past the fold
#: did not see, as of its event ``seq`` (the monitor asks its event log)
RunLookup = Callable[[str, int], "RunPast | None"]


@dataclass(frozen=True)
class RunPast:
    """What a run did before: how it was asked for, when it first started, the time it spent
    running (run_history.duration_s's definition: the sum of its executions) and the final
    states it ended in (it may end again after ``ahgd retry``, or a PARKED one cancelled)."""

    trigger: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None     # its first start
    ran_s: float | None = None             # None: it never ran
    endings: frozenset[str] = frozenset()


@dataclass
class LiveRun:
    """A run that has not finished: PENDING (queued) or RUNNING."""

    run_id: str
    pipeline: str
    state: str
    trigger: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    stages: list[str] = field(default_factory=list)
    stage_states: dict[str, tuple[str, int]] = field(default_factory=dict)  # stage -> (state, attempt)
    rows_rejected: int = 0      # by its stages' validation_rules quarantine, so far
    #: started_at is the start of this execution; what came before it:
    first_started_at: datetime | None = None
    ran_s: float | None = None                 # its earlier executions' running time
    endings: frozenset[str] = frozenset()      # final states it ended in before
    #: False: the fold did not see all of its past (seeded, or retried long ago): its end asks
    #: the event log (``MonitorState.find_run``)
    known: bool = True
    #: the last event of this execution (not counting stage.interrupted): where an execution
    #: cut short by a crash ends (run.recovered, run.parked), as run_history counts it
    last_event_at: datetime | None = None

    def progress(self, now: datetime) -> dict[str, Any]:
        states = [self.stage_states.get(s, ("PENDING", 0)) for s in self.stages]
        total = len(self.stages)
        done = sum(1 for state, _ in states if state in _DONE_STAGE_STATES)
        current = next((s for s, (state, _) in zip(self.stages, states)
                        if state in ("RUNNING", "RETRYING")), None)
        return {
            "run_id": self.run_id, "pipeline": self.pipeline, "state": self.state,
            "trigger": self.trigger, "requested_at": iso(self.requested_at),
            "started_at": iso(self.started_at),
            "elapsed_s": (round((now - self.started_at).total_seconds(), 3)
                          if self.started_at is not None else None),
            "current_stage": current, "stages_total": total, "stages_done": done,
            "progress_percentage": round(100.0 * done / total, 1) if total else 0.0,
            "stages": [{"stage": s, "state": state, "attempt": attempt}
                       for s, (state, attempt) in zip(self.stages, states)],
        }


@dataclass
class MonitorState:
    """Statistics, runs in flight and alerts: everything a monitor folds and renders."""

    thresholds: MonitorThresholds = field(default_factory=MonitorThresholds)
    recent_runs: int = RECENT_RUNS                 # finished runs kept per pipeline
    pipelines: dict[str, PipelineStats] = field(default_factory=dict)
    live: dict[str, LiveRun] = field(default_factory=dict)         # queued or running
    parked: set[str] = field(default_factory=set)
    open: dict[str, Alert] = field(default_factory=dict)           # by alert id
    alerts: deque[Alert] = field(default_factory=lambda: deque(maxlen=1000))  # oldest first
    alert_counts: Counter = field(default_factory=Counter)         # raised, by severity
    samples: deque[SystemSample] = field(default_factory=lambda: deque(maxlen=720))
    #: bounded memory of the fold: run -> pipeline, and (run, stage) -> when it started
    run_pipeline: OrderedDict[str, str] = field(default_factory=OrderedDict)
    stage_started: OrderedDict[tuple[str, str], datetime | None] = field(
        default_factory=OrderedDict)
    #: runs that ended (bounded like run_pipeline): what a retry of one carries on from
    ended: OrderedDict[str, RunPast] = field(default_factory=OrderedDict)
    #: a run's pipeline when it is no longer remembered (the monitor asks its event log)
    find_pipeline: PipelineLookup | None = field(default=None, compare=False, repr=False)
    #: a run's past when the fold did not see it (the monitor asks its event log)
    find_run: RunLookup | None = field(default=None, compare=False, repr=False)

    @classmethod
    def new(cls, thresholds: MonitorThresholds | None = None, *, recent_runs: int = RECENT_RUNS,
            max_samples: int = 720, max_alerts: int = 1000,
            find_pipeline: PipelineLookup | None = None,
            find_run: RunLookup | None = None) -> MonitorState:
        """An empty state keeping at most ``max_samples`` samples and ``max_alerts`` alerts."""
        return cls(thresholds or MonitorThresholds(), recent_runs,
                   alerts=deque(maxlen=max_alerts), samples=deque(maxlen=max_samples),
                   find_pipeline=find_pipeline, find_run=find_run)

    def stats(self, pipeline: str) -> PipelineStats:
        """The statistics of ``pipeline``, made empty on first use."""
        stats = self.pipelines.get(pipeline)
        if stats is None:
            stats = self.pipelines[pipeline] = PipelineStats(
                recent_runs=deque(maxlen=self.recent_runs))
        return stats

    def remember_pipeline(self, run_id: str, pipeline: str) -> None:
        remember(self.run_pipeline, run_id, pipeline)

    def queue_figures(self) -> dict[str, int]:
        """Pending and running runs, running stages and parked runs."""
        live = list(self.live.values())
        return {
            "pending_runs": sum(1 for r in live if r.state == "PENDING"),
            "running_runs": sum(1 for r in live if r.state == "RUNNING"),
            "running_stages": sum(1 for r in live for s, _ in r.stage_states.values()
                                  if s == "RUNNING"),
            "parked_runs": len(self.parked),
        }


def remember(cache: OrderedDict, key: Hashable, value: Any) -> None:
    """Keep ``key`` (as the newest), forgetting the oldest beyond MEMORY_CAP."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > MEMORY_CAP:
        cache.popitem(last=False)

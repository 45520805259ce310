"""``ahgd warehouse rebuild``: which runs reload a lost warehouse, in which order, and its end.

The plan (:func:`plan`) replays the loads the log recorded.  It takes every
pipeline whose completed runs opened the warehouse (their ``stage.completed``
events say which one: ``warehouses``), or the pipelines named with
``--pipeline`` and every such pipeline downstream of them, and puts them in
*waves*: a pipeline runs after every pipeline it depends on (the master
file's ``dependencies`` and its ``upstream`` triggers).  Within a pipeline,
each distinct input file of its completed runs runs again, the same bytes
from the store (``files/…``, ``inputs/…``), in the order they last completed,
so that rows a later file replaced are replaced again; a pipeline whose runs
had no input file (an upstream or scheduled one) runs once.

:func:`finish` ends a rebuild whose runs all completed: the alert
``warehouse.lost:<path>`` is resolved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from state import EventLog, EventType as T, new_event, queries, warehouse
from state.machine import RunState

from .names import unknown_pipeline
from .requests import RequestError

#: the trigger of the runs a rebuild requests (their completion sets off no upstream trigger:
#: the rebuild runs the dependants itself, after all their sources)
TRIGGER = "rebuild"


@dataclass(frozen=True)
class Replay:
    """One run a rebuild requests: ``pipeline`` again on the input of run ``replays``."""

    pipeline: str
    replays: str
    input_file: str | None = None
    input_sha256: str | None = None
    original_name: str | None = None

    def describe(self, state_dir: Path) -> str:
        if not self.input_file:
            return self.pipeline
        return f"{self.pipeline} ({warehouse.recorded_path(state_dir, Path(self.input_file))})"


def plan(log: EventLog, state_dir: Path, pipelines: Mapping[str, Any],
         dependencies: Mapping[str, Sequence[str]], downstream_of: Mapping[str, Sequence[str]],
         only: Sequence[str] = (), path: str = warehouse.WAREHOUSE) -> list[list[Replay]]:
    """The waves of runs that reload the warehouse at ``path``; RequestError if none can."""
    damaged = warehouse.look(state_dir, path)
    if damaged is not None and damaged.get("error"):  # no load could open it: on record, refused
        lost = warehouse.judge(state_dir, queries.warehouse_expectation(log, path), damaged,
                               by="ahgd warehouse rebuild")
        if lost is not None:
            log.append(lost)
        raise RequestError(warehouse.damaged_message(warehouse.absolute(state_dir, path),
                                                     damaged["error"], state_dir))
    loads = queries.warehouse_loads(log, path)
    used = {row["pipeline"] for row in loads}
    for name in only:
        if name not in pipelines:
            raise RequestError(unknown_pipeline(name, pipelines))
    prereqs = {p: set(dependencies.get(p, ())) | {u for u, ds in downstream_of.items() if p in ds}
               for p in pipelines}
    if only:
        targets = set(only) | {p for p in used & set(pipelines)
                               if _depends_on(p, set(only), prereqs)}
    else:
        targets = used & set(pipelines)
        gone = sorted(used - set(pipelines))
        if not targets:
            why = (f"the pipelines that loaded it ({', '.join(gone)}) are not in the configuration"
                   if gone else "no completed run in this state directory recorded loading it "
                   "(runs of ahgd before warehouse identities did not)")
            raise RequestError(f"nothing to rebuild {warehouse.absolute(state_dir, path)} from: "
                               f"{why}; name the pipelines that load it: ahgd warehouse rebuild "
                               "--pipeline NAME ...")
    # a pipeline named: all its completed runs (runs recorded before warehouse identities
    # included); one found by its recorded loads: those runs
    replays = {p: _replays(log, p, queries.completed_runs(log, p) if p in only or p not in used
                           else loads) for p in targets}
    empty = sorted(p for p, r in replays.items() if not r)
    if empty:
        raise RequestError(f"pipeline(s) {', '.join(empty)} never completed a run in this state "
                           "directory, so there is nothing of theirs to reload; run them with "
                           "`ahgd run`, or leave them out")
    missing = [f"{r.input_file} (input of run {r.replays}{_removed(log, state_dir, r)})"
               for rs in replays.values() for r in rs
               if r.input_file and not Path(r.input_file).is_file()]
    if missing:
        raise RequestError("input files of the runs to replay are gone from the store: "
                           f"{'; '.join(missing)}. Drop those files again (or run their pipeline "
                           "with --input), then rebuild the rest with --pipeline")
    return [[r for p in wave for r in replays[p]] for wave in _waves(sorted(targets), prereqs)]


def _removed(log: EventLog, state_dir: Path, replay: Replay) -> str:
    """``; removed by retention on <ts> (retain.inputs_for)`` when that is why it is gone."""
    from state import removals

    gone = removals.removed_file(log, state_dir, removals.relative_to_state(
        state_dir, str(replay.input_file)))
    return "" if gone is None else (f"; removed by retention on {gone['ts']} "
                                    f"(retain.{gone.get('rule') or 'inputs_for'})")


def _depends_on(pipeline: str, sources: set[str], prereqs: Mapping[str, set[str]]) -> bool:
    seen, todo = set(), list(prereqs.get(pipeline, ()))
    while todo:
        p = todo.pop()
        if p in sources:
            return True
        if p not in seen:
            seen.add(p)
            todo.extend(prereqs.get(p, ()))
    return False


def _replays(log: EventLog, pipeline: str, runs: Sequence[Mapping[str, Any]]) -> list[Replay]:
    """One replay per distinct input (by content) of ``pipeline``'s completed ``runs``, in the
    order each input last completed (``runs`` is oldest first)."""
    last: dict[str | None, Mapping[str, Any]] = {}
    for row in runs:
        if row["pipeline"] == pipeline:
            key = row.get("input_sha256") or row.get("input_file")
            last.pop(key, None)
            last[key] = row
    return [Replay(pipeline, row["run_id"], row.get("input_file"), row.get("input_sha256"),
                   row.get("original_name")) for row in last.values()]


def _waves(targets: list[str], prereqs: Mapping[str, set[str]]) -> list[list[str]]:
    waves, placed = [], set()
    while len(placed) < len(targets):
        wave = [p for p in targets if p not in placed and (prereqs[p] & set(targets)) <= placed]
        if not wave:
            cycle = sorted(set(targets) - placed)
            raise RequestError(f"pipelines {', '.join(cycle)} depend on each other, so no order "
                               "rebuilds them; fix their dependencies or upstream triggers")
        waves.append(wave)
        placed.update(wave)
    return waves


def as_json(waves: list[list[Replay]]) -> list[list[dict[str, Any]]]:
    return [[asdict(r) for r in wave] for wave in waves]


def from_json(waves: list[list[Mapping[str, Any]]]) -> list[list[Replay]]:
    return [[Replay(**dict(r)) for r in wave] for wave in waves]


def request_params(replay: Replay, rebuild_id: str) -> dict[str, Any]:
    """The parameters of a rebuild's run (the input file goes in separately)."""
    return {"rebuild": rebuild_id, "replays": replay.replays}


def finish(log: EventLog, run_ids: Sequence[str], path: str = warehouse.WAREHOUSE,
           resolve: Callable[[str, str], Any] | None = None) -> str:
    """A rebuild whose runs all COMPLETED resolves ``warehouse.lost:<path>``; what it did.

    ``resolve``: the daemon's monitor (it logs the resolution); without one, or when
    the monitor did not know the alert, ``alert.resolved`` is appended here.
    """
    unfinished = [f"{r} ({queries.run_state(log, r)})" for r in run_ids
                  if queries.run_state(log, r) != RunState.COMPLETED]
    if unfinished:
        raise RequestError(f"the rebuild is not complete: {', '.join(unfinished)}; the alert "
                           "stays open until every run completes")
    alert = warehouse.alert_id(path)
    reason = f"the warehouse was rebuilt by runs {', '.join(run_ids)}"
    if resolve is not None and resolve(alert, reason) is not None:
        return f"alert {alert} resolved"
    if queries.alert_state(log, alert) == "FIRING":
        log.append(new_event(T.ALERT_RESOLVED, alert_id=alert, reason=reason))
        return f"alert {alert} resolved"
    return "no warehouse.lost alert was open"


def dispatch(daemon: Any, req: Mapping[str, Any]) -> dict[str, Any]:
    """The ``warehouse.*`` requests of the daemon's control socket (``ahgd warehouse rebuild``)."""
    from .requests import _input_descriptor, request_run

    cmd, setup = req.get("cmd"), daemon.setup
    if cmd == "warehouse.plan":
        waves = plan(daemon.log, daemon.state_dir, setup.pipelines, setup.dependencies,
                     setup.downstream_of, list(req.get("pipelines") or ()))
        return {"waves": as_json(waves)}
    if cmd == "warehouse.run":
        run_id = request_run(daemon.log, daemon.state_dir, setup.pipelines,
                             str(req.get("pipeline", "")), input_fd=_input_descriptor(req),  # type: ignore[arg-type]
                             input_name=req.get("input_name"), params=req.get("params"),
                             trigger=TRIGGER)
        daemon.waker.wake()
        return {"run_id": run_id}
    if cmd == "warehouse.rebuilt":
        return {"outcome": finish(daemon.log, list(req.get("runs") or ()),
                                  resolve=daemon.alerts.resolve)}
    raise RequestError(f"unknown request {cmd!r}; known: warehouse.plan, warehouse.run, "
                       "warehouse.rebuilt")

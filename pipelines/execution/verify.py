"""What an execution checks on disk before it trusts the log: recorded outputs and the warehouse.

A run that starts from a log which already has completed stages (a recovery
after a crash, ``ahgd retry``, a resumed or reused run) reads files written by
an earlier execution, perhaps days ago, and perhaps since truncated, replaced
or deleted.  So:

* when the execution starts, every such output that a stage still to run may
  read (an output of one of its ancestors) is checked: size, then SHA-256 —
  each file hashed once per execution;
* before each stage starts, the files it may read get the cheap check (their
  size) again; an output this very execution produced needs no hash.

A file that fails (gone, another size, another hash) invalidates every
completed stage whose recorded output it is (a passthrough stage shares its
input's file): ``stage.invalidated`` records the file, what was expected and
what was found, and the stage runs again as its next attempt.  The bad file
is left where it is, for inspection; it is never read again.  A file that is
gone because retention removed it (a ``data.expired`` in the log) is not
damage: the run is refused instead (:func:`removed_by_retention`), naming what
was removed and when, and nothing runs again silently.

Each attempt that opened the warehouse reports which one it found
(:mod:`state.warehouse`); :func:`judge_warehouses` turns a warehouse that is not
the one on record into a ``warehouse.lost`` event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from state import EventType as T, new_event, queries, removals, store, warehouse
from state.events import Event

from .. import inlinetables

#: a stage whose output is found bad this many times in one execution fails the run
#: instead of running again (something keeps damaging it)
MAX_INVALIDATIONS = 3
#: what an invalidated attempt keeps of its completion, for ``stage_timings``
_FIGURES = ("rows", "wall_s", "cpu_s", "peak_rss_mb", "worker_pid", "from_run")


@dataclass(frozen=True)
class Mismatch:
    """A recorded output file that is not what its ``stage.completed`` says."""

    path: str                       # relative to the state directory
    expected: dict[str, Any]        # {"bytes", "sha256"}
    found: dict[str, Any]           # {"exists": False} | {"bytes"} | {"bytes", "sha256"}
    message: str                    # names the file, the stage and the run
    removed: dict[str, Any] | None = None   # retention removed it: state.removals.removal_of


class OutputChecks:
    """The checks of one execution, remembering which files it has hashed or written."""

    def __init__(self, state_dir: Path, history: Any = None):
        self.state_dir = Path(state_dir)
        self.history = history   # to tell a file retention removed from a damaged one
        self._hashed: set[str] = set()
        self._bad: dict[str, dict[str, Any]] = {}

    def trust(self, ref: Mapping[str, Any] | None) -> None:
        """``ref`` was written (or fully checked) by this execution: size checks suffice."""
        key = stored_key(ref)
        if key is not None:
            self._hashed.add(key)
            self._bad.pop(key, None)

    def check(self, ref: Mapping[str, Any] | None, *, stage: str, run_id: str) -> Mismatch | None:
        """The size (and, the first time, the SHA-256) of the file behind ``ref``; of inline
        tables, the SHA-256 of what the event log holds."""
        key = stored_key(ref)
        if key is None:
            return None  # nothing, or an inline value: nothing on disk to lose
        if inlinetables.is_inline(ref):
            return self._check_inline(key, ref, stage=stage, run_id=run_id)  # type: ignore[arg-type]
        path = key
        found = self._bad.get(path)
        if found is None:
            found = store.check(self.state_dir, ref, full=path not in self._hashed)
            if found is None:
                self._hashed.add(path)
                return None
            self._bad[path] = found
        what = f"output of stage {stage!r} of run {ref_run(ref, run_id)}"
        removed = (removals.removal_of(self.history, path) if self.history is not None
                   and found.get("exists") is False and not ref.get("uri") else None)
        return Mismatch(path, {"bytes": ref.get("bytes"), "sha256": ref.get("sha256")}, found,
                        store.describe(self.state_dir, ref, found, what=what), removed)

    def _check_inline(self, key: str, ref: Mapping[str, Any], *, stage: str,
                      run_id: str) -> Mismatch | None:
        if key in self._hashed:
            return None
        found = inlinetables.digest_of(ref)
        if found == ref.get("sha256"):
            self._hashed.add(key)
            return None
        return Mismatch(key, {"sha256": ref.get("sha256")}, {"sha256": found},
                        f"the output of stage {stage!r} of run {ref_run(ref, run_id)} is kept in "
                        "the event log (inline tables) and does not match its recorded SHA-256: "
                        "history.db was altered")

    def bad_outputs(self, stages: Iterable[str], done: set[str],
                    outputs: Mapping[str, Mapping[str, Any] | None], readable: set[str],
                    run_id: str) -> dict[str, Mismatch]:
        """The done stages to invalidate, in ``stages`` order, each with its mismatch: those
        whose output file, read by one of ``readable``, fails its check, and every other done
        stage whose recorded output is that same file (a passthrough)."""
        bad = {m.path for s in readable if s in done
               if (m := self.check(outputs.get(s), stage=s, run_id=run_id)) is not None}
        out: dict[str, Mismatch] = {}
        if not bad:
            return out
        for s in stages:
            ref = outputs.get(s) if s in done else None
            if ref and stored_key(ref) in bad:
                out[s] = self.check(ref, stage=s, run_id=run_id)  # type: ignore[assignment]
        return out


def stored_key(ref: Mapping[str, Any] | None) -> str | None:
    """What identifies the stored output behind ``ref``: its file, or its inline tables."""
    if not ref:
        return None
    if ref.get("path"):
        return str(ref["path"])
    if inlinetables.is_inline(ref):
        return f"inline:{ref.get('sha256')}"
    return None


def refused_by_retention(history: Any, state_dir: Path, plan: Any, done: set[str],
                         bad: Mapping[str, Mismatch]) -> tuple[str, str] | None:
    """``(stage, why)`` the run fails with when retention removed what it needs (outputs
    among ``bad``, or its input file while a stage is still to run), naming what was
    removed and when; None when nothing it needs was removed (a bad output is then damage)."""
    gone = {m.removed["seq"]: m.removed for m in bad.values() if m.removed}
    input_file = plan.params.get("input_file")
    todo = [s for s in plan.stages if s not in done]
    if input_file and todo and not Path(input_file).exists():
        removal = removals.removal_of(history, removals.relative_to_state(state_dir, input_file))
        if removal is not None:
            gone[removal["seq"]] = removal
    if not gone:
        return None
    stage = next(iter(bad), None) or (todo or plan.stages)[0]
    return stage, removals.removed_message(f"run {plan.run_id} cannot go on",
                                           [gone[k] for k in sorted(gone)], plan.pipeline_name,
                                           bool(input_file), "No stage ran again")


def ref_run(ref: Mapping[str, Any], run_id: str) -> str:
    """The run whose data directory holds ``ref`` (a reused output lives in another run's)."""
    parts = Path(str(ref.get("path", ""))).parts
    return parts[1] if len(parts) > 2 and parts[0] == store.DATA_DIR else run_id


def ancestors(stages: Iterable[str], deps: Mapping[str, set[str]]) -> set[str]:
    """Every stage that ``stages`` depend on, directly or not: what they may read."""
    seen: set[str] = set()
    todo = [d for s in stages for d in deps.get(s, ())]
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.add(s)
            todo.extend(deps.get(s, ()))
    return seen


def invalidated(run_id: str, stage: str, attempt: int, info: Mapping[str, Any],
                ref: Mapping[str, Any], bad: Mismatch) -> Event:
    """``stage.invalidated`` for the completed ``attempt`` of ``stage`` (``info``: its payload)."""
    figures = {k: info[k] for k in _FIGURES if info.get(k) is not None}
    return new_event(T.STAGE_INVALIDATED, run_id, stage=stage, attempt=attempt,
                     error=f"{bad.message}; the stage runs again", path=bad.path,
                     expected=bad.expected, found=bad.found, output=dict(ref), **figures)


def too_often(stage: str, times: int, bad: Mismatch, run_id: str) -> str:
    """Why a run fails when the same stage's output keeps going bad."""
    where = ("history.db" if bad.path.startswith("inline:")
             else f"files under {Path(bad.path).parent}")
    return (f"the output of stage {stage!r} was found gone or altered {times} times in this "
            f"execution ({bad.message}); something keeps changing {where}: stop it, then "
            f"`ahgd retry {run_id}`")


# --------------------------------------------------------------------------- the warehouse


def judge_warehouses(log: Any, state_dir: Path, pending: Iterable[Event],
                     reports: Iterable[Mapping[str, Any]] | None, run_id: str, stage: str,
                     attempt: int) -> list[Event]:
    """``warehouse.lost`` for each warehouse an attempt opened that is not the one on record.

    What is on record is the latest of this execution's events not yet appended
    (``pending``), else of the log (:func:`state.queries.warehouse_expectation`).
    """
    events = []
    for report in reports or ():
        path = report.get("path")
        if not path:
            continue
        expected = next((said for e in reversed(list(pending))
                         if (said := warehouse.expectation_of(e.type, 0, "", e.run_id, e.stage,
                                                              e.data(), path)) is not None),
                        None)
        if expected is None:
            expected = queries.warehouse_expectation(log, path)
        event = warehouse.judge(state_dir, expected, report,
                                by=f"stage {stage!r} (attempt {attempt}) of run {run_id}")
        if event is not None:
            events.append(event)
    return events

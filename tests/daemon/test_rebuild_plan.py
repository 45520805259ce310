"""What `ahgd warehouse rebuild` runs, in which order: the plan, from a real event log.

The runs are recorded as the engine records them (``stage.completed`` with the
``warehouses`` the attempt found); the stored input files are real files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ahgd_daemon.rebuild import plan
from ahgd_daemon.requests import RequestError
from state import EventLog, EventType as T, new_event


def stored(state: Path, pipeline: str, name: str, text: str) -> tuple[str, str]:
    data = text.encode()
    sha = hashlib.sha256(data).hexdigest()
    path = state / "files" / pipeline / sha / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path), sha


def completed(log: EventLog, run_id: str, pipeline: str, input_file: str | None = None,
              sha: str | None = None, *, warehouse: bool = True) -> None:
    params = {"input_file": input_file, "input_sha256": sha} if input_file else {}
    seen = {"warehouses": [{"path": "warehouse.duckdb", "id": "w1", "created": False}]}
    log.append_many([
        new_event(T.RUN_REQUESTED, run_id, pipeline=pipeline, params=params, stages=["load"]),
        new_event(T.RUN_STARTED, run_id),
        new_event(T.STAGE_STARTED, run_id, stage="load", attempt=1)])
    log.append_many([
        new_event(T.STAGE_COMPLETED, run_id, stage="load", attempt=1, output={"kind": "none"},
                  **(seen if warehouse else {})),
        new_event(T.RUN_COMPLETED, run_id)])


@pytest.fixture
def log(state_dir):
    with EventLog.open(state_dir) as log:
        yield log


PIPELINES = dict.fromkeys(["a", "b", "p", "q", "r"])


def names(waves) -> list[list[tuple[str, str | None]]]:
    return [[(r.pipeline, Path(r.input_file).name if r.input_file else None) for r in w]
            for w in waves]


def test_each_input_once_in_the_order_it_last_loaded_and_dependants_after_their_sources(
        log, state_dir):
    a1, a2 = stored(state_dir, "a", "a1.csv", "1"), stored(state_dir, "a", "a2.csv", "2")
    b1 = stored(state_dir, "b", "b1.csv", "3")
    completed(log, "a-1", "a", *a1)
    completed(log, "b-1", "b", *b1)
    completed(log, "a-2", "a", *a2)
    completed(log, "a-3", "a", *a1)          # a1 again, after a2: its rows won
    completed(log, "p-1", "p")               # p waits for a (master-file dependencies)
    completed(log, "q-1", "q")               # q runs when b completes (upstream trigger)
    completed(log, "r-1", "r", warehouse=False)  # never opened the warehouse: not rebuilt
    waves = plan(log, state_dir, PIPELINES, {"p": ["a"]}, {"b": ["q"]})
    assert names(waves) == [[("a", "a2.csv"), ("a", "a1.csv"), ("b", "b1.csv")],
                            [("p", None), ("q", None)]]
    assert [r.replays for r in waves[0]] == ["a-2", "a-3", "b-1"]
    # one pipeline and what depends on it; a pipeline named runs all its completed runs
    assert names(plan(log, state_dir, PIPELINES, {"p": ["a"]}, {"b": ["q"]}, only=["b"])) == [
        [("b", "b1.csv")], [("q", None)]]
    assert names(plan(log, state_dir, PIPELINES, {}, {}, only=["r"])) == [[("r", None)]]


def test_what_cannot_be_rebuilt_is_refused_saying_why(log, state_dir):
    with pytest.raises(RequestError, match=r"no completed run .* recorded loading it.*--pipeline"):
        plan(log, state_dir, PIPELINES, {}, {})
    gone = stored(state_dir, "a", "a1.csv", "1")
    completed(log, "a-1", "a", *gone)
    Path(gone[0]).unlink()
    with pytest.raises(RequestError) as refused:
        plan(log, state_dir, PIPELINES, {}, {})
    assert gone[0] in str(refused.value) and "input of run a-1" in str(refused.value)
    with pytest.raises(RequestError, match=r"no pipeline 'x' in the configuration"):
        plan(log, state_dir, PIPELINES, {}, {}, only=["x"])
    with pytest.raises(RequestError, match=r"depend on each other"):
        stored(state_dir, "a", "a1.csv", "1")
        completed(log, "p-1", "p")
        plan(log, state_dir, PIPELINES, {"p": ["a"], "a": ["p"]}, {})


def test_a_warehouse_that_is_no_duckdb_file_is_refused_and_put_on_record(log, state_dir):
    completed(log, "a-1", "a", *stored(state_dir, "a", "a1.csv", "1"))
    (state_dir / "warehouse.duckdb").write_text("not a database")
    with pytest.raises(RequestError) as refused:
        plan(log, state_dir, PIPELINES, {}, {})
    assert f"mv {state_dir / 'warehouse.duckdb'}" in str(refused.value)
    [row] = log.query("SELECT state, severity FROM alerts WHERE name = 'warehouse.lost'")
    assert tuple(row) == ("FIRING", "error")
    with pytest.raises(RequestError):  # asked again: still refused, the loss recorded once
        plan(log, state_dir, PIPELINES, {}, {})
    assert log.query("SELECT COUNT(*) FROM events WHERE type = 'warehouse.lost'")[0][0] == 1

"""The append's hot path (issue 18, 3a): what a batch costs in SQL, and that the faster
paths write exactly what the plain ones did."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from state import DuplicateEvent, EventLog, EventType as T, IllegalTransition, new_event
from state import events as E
from state.log import now_ts
from state.timestamps import format_ts


def _started(log: EventLog, run_id: str, stages: list[str]) -> None:
    log.append(new_event(T.RUN_REQUESTED, run_id, pipeline="p", trigger="manual", stages=stages))
    log.append(new_event(T.RUN_STARTED, run_id, stages=stages))
    log.append(new_event(T.STAGE_STARTED, run_id, stage=stages[0], attempt=1))


def _statements(log: EventLog) -> list[str]:
    seen: list[str] = []
    log._conn.set_trace_callback(seen.append)
    return seen


def test_a_completion_and_the_next_start_are_one_insert_each(state_dir: Path):
    """The engine's usual batch (a stage's completion, the next one's start) writes its two
    events in one INSERT and its two stage_runs rows in one, and they read back as stored."""
    stages = [f"s{i:02d}" for i in range(20)]  # long enough for the stage-name set
    with EventLog.open(state_dir) as log:
        _started(log, "r1", stages)
        seen = _statements(log)
        stored = log.append_many([
            new_event(T.STAGE_COMPLETED, "r1", stage="s00", attempt=1, wall_s=0.5,
                      output={"kind": "value", "format": "inline", "value": {"i": 0}}),
            new_event(T.STAGE_STARTED, "r1", stage="s01", attempt=1),
        ])
        log._conn.set_trace_callback(None)
        inserts = [s for s in seen if s.lstrip().upper().startswith("INSERT")]
        assert len([s for s in inserts if "INTO events" in s]) == 1, inserts
        assert len([s for s in inserts if "INTO stage_runs" in s]) == 1, inserts
        # the seqs given back are the rows' own, in order, with one timestamp
        rows = log.query("SELECT seq, ts, type, stage, payload FROM events WHERE run_id = 'r1' "
                         "ORDER BY seq DESC LIMIT 2")[::-1]
        assert [(r["seq"], r["type"], r["stage"]) for r in rows] == \
            [(e.seq, e.type, e.stage) for e in stored]
        assert rows[0]["ts"] == rows[1]["ts"] == stored[0].ts
        assert json.loads(rows[0]["payload"])["output"]["value"] == {"i": 0}
        states = dict(log.query("SELECT stage, state FROM stage_runs WHERE run_id = 'r1'"))
        assert states == {"s00": "COMPLETED", "s01": "RUNNING"}
        assert log.check().ok
        # an unknown stage is refused against the long list as against a short one
        with pytest.raises(IllegalTransition, match="has no stage 'nope'"):
            log.append_many([new_event(T.STAGE_COMPLETED, "r1", stage="s01", attempt=1),
                             new_event(T.STAGE_STARTED, "r1", stage="nope", attempt=1)])
        assert log.run("r1").attempts["s01"].state == "RUNNING"  # nothing of the batch written

        # a batch with a recorded idempotency key goes row by row: refused whole, with the
        # error the rows give in order
        _started(log, "r2", ["a", "b"])
        log.append(new_event(T.SCHEDULE_FIRED, "s", pipeline="p", trigger="t",
                             fire_time="2026-01-01T00:00:00Z", idempotency_key="k1"))
        before = log.last_seq()
        with pytest.raises(DuplicateEvent) as dup:
            log.append_many([new_event(T.STAGE_COMPLETED, "r2", stage="a", attempt=1),
                             new_event(T.SCHEDULE_FIRED, "s", pipeline="p", trigger="t",
                                       fire_time="2026-01-01T00:01:00Z", idempotency_key="k1")])
        assert dup.value.existing.seq == before
        # an illegal event before the duplicate: the illegal one is what is said, as row by row
        with pytest.raises(IllegalTransition):
            log.append_many([new_event(T.STAGE_COMPLETED, "r2", stage="b", attempt=1),
                             new_event(T.SCHEDULE_FIRED, "s", pipeline="p", trigger="t",
                                       fire_time="2026-01-01T00:02:00Z", idempotency_key="k1")])
        assert log.last_seq() == before
        assert log.run("r2").attempts["a"].state == "RUNNING"


def test_the_fast_timestamp_and_encoder_write_what_the_plain_ones_did():
    for _ in range(50):  # bounded: the clock read between the two may cross a second
        t0 = time.time_ns() // 1000
        text = now_ts()
        t1 = time.time_ns() // 1000
        lo, hi = (format_ts(datetime.fromtimestamp(t // 10**6, timezone.utc)
                            .replace(microsecond=t % 10**6)) for t in (t0, t1))
        assert lo <= text <= hi and len(text) == len(lo) == 27, (lo, text, hi)
    for value in ({}, {"a": 1, "é": [1.5, None, True, "x\n\"y"]}, [1, 2], "s", 3, 1e300,
                  {"nested": {"order": {"z": 1, "a": 2}}}):
        assert E._fast_dumps_payload(value) == E._ENCODER.encode(value)
    for bad in (float("nan"), {"x": object()}):
        with pytest.raises((ValueError, TypeError)):
            E._fast_dumps_payload(bad)
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        E._fast_dumps_payload(loop)

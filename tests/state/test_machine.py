"""The pure state machine, and the log that applies it: property-based."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from state import (
    EventLog,
    EventType as T,
    IllegalTransition,
    RunState,
    StageState,
    apply,
    fold,
    new_event,
)
from state.projections import TABLES, Projector

RUNS = ["r1", "r2"]
STAGES = ["a", "b", "c"]
RUN_TYPES = [t for t in T if t.startswith("run.")]
STAGE_TYPES = [t for t in T if t.startswith("stage.")]


def _payload(t: str) -> dict:
    if t == T.RUN_REQUESTED:
        return {"pipeline": "p", "trigger": "manual", "params": {"n": 1}}
    if t == T.RUN_STARTED:
        return {"stages": STAGES}
    if t in (T.RUN_FAILED, T.STAGE_FAILED):
        return {"error": "boom"}
    if t == T.STAGE_COMPLETED:
        return {"rows": 3, "wall_s": 0.5, "output": {"kind": "value", "value": [1, 2]}}
    if t == T.STAGE_RETRYING:
        return {"delay_s": 0.1}
    return {}


def _event(kind: int, run: str, stage: str, attempt: int, ftype: int):
    if kind == 0:
        t = RUN_TYPES[ftype % len(RUN_TYPES)]
        return new_event(t, run, **_payload(t))
    if kind == 1:
        t = STAGE_TYPES[ftype % len(STAGE_TYPES)]
        return new_event(t, run, stage=stage, attempt=attempt, **_payload(t))
    if kind == 2:
        t = [T.FILE_ARRIVED, T.FILE_DUPLICATE, T.FILE_QUARANTINED][ftype % 3]
        return new_event(t, run, pipeline="p", sha256=f"sha{attempt % 2}", name="f.csv",
                         reason="empty" if t == T.FILE_QUARANTINED else None)
    if kind == 4:
        t = [T.ALERT_RAISED, T.ALERT_RESOLVED][ftype % 2]
        return new_event(t, run, alert_id=f"cond{attempt % 2}", name="system.disk_nearly_full",
                         severity="error", message="disk 95%", fields={"percent": 95},
                         reason="back to 80%")
    return new_event(T.SCHEDULE_FIRED, run, pipeline="p", trigger="cron",
                     fire_time=f"2026-01-0{1 + attempt}T00:00:00Z")


ALL_CANDIDATES = (
    [(0, r, "a", 0, f) for r in RUNS for f in range(len(RUN_TYPES))]
    + [(1, r, s, a, f) for r in RUNS for s in STAGES for a in range(4) for f in range(len(STAGE_TYPES))]
    + [(2, r, "a", a, f) for r in RUNS[:1] for a in range(2) for f in range(3)]
    + [(3, r, "a", a, 0) for r in RUNS[:1] for a in range(3)]
    + [(4, r, "a", a, f) for r in RUNS[:1] for a in range(2) for f in range(2)]
)


def _legal_now(model: dict, candidate) -> bool:
    from state import aggregate_key

    e = _event(*candidate)._replace(seq=10**6, ts="2026-01-01T00:00:00.000000Z")
    try:
        apply(model.get(aggregate_key(e)), e)
        return True
    except IllegalTransition:
        return False


@st.composite
def events_strategy(draw):
    """Mostly legal next events (found by asking the pure machine), some random ones.

    Purely random sequences almost never get past run.requested; this walks
    deep into runs (retries, recoveries, parking, completion) and still throws
    illegal events at every state.
    """
    model: dict = {}
    out = []
    for i in range(draw(st.integers(min_value=5, max_value=80))):
        if draw(st.integers(min_value=0, max_value=9)) < 8:
            legal = [c for c in ALL_CANDIDATES if _legal_now(model, c)]
            by_type: dict = {}
            for c in legal:  # choose the event type first, so stage events are not crowded out
                by_type.setdefault(_event(*c).type, []).append(c)
            if by_type:
                # stage events get most of the draws, or runs end before they get going
                weight = {"stage": 8, "run": 3}
                weighted = [t for t in sorted(by_type) for _ in range(weight.get(t.split(".")[0], 1))]
                group = by_type[draw(st.sampled_from(weighted))]
                cand = draw(st.sampled_from(group))
            else:
                cand = draw(st.sampled_from(ALL_CANDIDATES))
        else:
            cand = draw(st.sampled_from(ALL_CANDIDATES))
        e = _event(*cand)
        out.append(e)
        stamped = e._replace(seq=i + 1, ts="2026-01-01T00:00:00.000000Z")
        if _legal_now(model, cand):
            fold([stamped], model)
    return out


def _snapshot(conn: sqlite3.Connection) -> dict[str, list]:
    out = {"events": conn.execute("SELECT * FROM events ORDER BY seq").fetchall()}
    for t in TABLES:
        out[t] = sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events_strategy())
def test_projections_always_equal_a_fresh_fold_and_illegal_events_change_nothing(evs):
    with tempfile.TemporaryDirectory() as d:
        log = EventLog(Path(d) / "history.db")
        spy = sqlite3.connect(Path(d) / "history.db")
        accepted = []
        try:
            for e in evs:
                before = _snapshot(spy)
                try:
                    accepted.append(log.append(e, durable=False))
                except IllegalTransition:
                    assert _snapshot(spy) == before, "an illegal event changed the database"
            report = log.check()
            assert report.ok, report.differences
            assert report.events == len(accepted)
            # the pure fold of what was accepted gives the same run states
            model = fold(accepted)
            for (kind, ident), agg in model.items():
                if kind == "run":
                    kept = log.run(ident)
                    assert kept is not None and kept.state == agg.state
                    assert {s: a.state for s, a in kept.attempts.items()} == {
                        s: a.state for s, a in agg.attempts.items()}
            # and a rebuild reproduces exactly the incrementally kept rows
            kept_rows = {t: sorted(spy.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                         for t in TABLES}
            log.rebuild()
            rebuilt = {t: sorted(spy.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                       for t in TABLES}
            assert rebuilt == kept_rows
        finally:
            spy.close()
            log.close()


def _stamp(events):
    return [e._replace(seq=i + 1, ts=f"2026-01-01T00:00:{i:02d}.000000Z")
            for i, e in enumerate(events)]


def _happy_run(run="r"):
    return _stamp([
        new_event(T.RUN_REQUESTED, run, pipeline="p"),
        new_event(T.RUN_STARTED, run, stages=["a", "b"]),
        new_event(T.STAGE_STARTED, run, stage="a", attempt=1),
        new_event(T.STAGE_FAILED, run, stage="a", attempt=1, error="flaky"),
        new_event(T.STAGE_RETRYING, run, stage="a", attempt=2, delay_s=1.0),
        new_event(T.STAGE_STARTED, run, stage="a", attempt=2),
        new_event(T.STAGE_COMPLETED, run, stage="a", attempt=2, rows=10),
        new_event(T.STAGE_SKIPPED, run, stage="b", attempt=0, reason="asked"),
        new_event(T.RUN_COMPLETED, run),
    ])


def test_apply_is_pure_and_the_fold_reaches_completed():
    evs = _happy_run()
    state = fold(evs)
    run = state[("run", "r")]
    assert run.state == RunState.COMPLETED
    assert run.attempts["a"].state == StageState.COMPLETED and run.attempts["a"].attempt == 2
    assert run.attempts["a"].rows == 10
    assert run.attempts["b"].state == StageState.SKIPPED
    # folding again from scratch gives an equal state: no hidden mutation
    assert fold(evs) == state


@pytest.mark.parametrize(
    "extra, message",
    [
        (new_event(T.STAGE_COMPLETED, "r", stage="a", attempt=2),
         "run 'r' is COMPLETED, stage events are only allowed while it is RUNNING"),
        (new_event(T.RUN_STARTED, "r"),
         "run 'r' is COMPLETED; run.started is only allowed from: PENDING"),
        (new_event(T.RUN_REQUESTED, "r", pipeline="p"),
         "run 'r' is COMPLETED; run.requested is only allowed from: nothing (a run id is used once)"),
    ],
)
def test_illegal_transitions_after_completion_are_named(extra, message):
    state = fold(_happy_run())
    with pytest.raises(IllegalTransition) as exc:
        apply(state[("run", "r")], extra._replace(seq=99, ts="2026-01-01T00:01:00.000000Z"))
    assert message in str(exc.value)


def test_a_stage_succeeds_once_and_attempts_must_follow_each_other():
    base = _stamp([
        new_event(T.RUN_REQUESTED, "r", pipeline="p"),
        new_event(T.RUN_STARTED, "r", stages=["a"]),
        new_event(T.STAGE_STARTED, "r", stage="a", attempt=1),
        new_event(T.STAGE_COMPLETED, "r", stage="a", attempt=1),
    ])
    run = fold(base)[("run", "r")]
    with pytest.raises(IllegalTransition, match="a stage succeeds once"):
        apply(run, new_event(T.STAGE_COMPLETED, "r", stage="a", attempt=1)._replace(seq=9, ts="t"))
    failed = fold(base[:3] + _stamp([new_event(T.STAGE_FAILED, "r", stage="a", attempt=1)])[0:0]
                  + [new_event(T.STAGE_FAILED, "r", stage="a", attempt=1)._replace(seq=4, ts="t")])
    with pytest.raises(IllegalTransition) as exc:
        apply(failed[("run", "r")],
              new_event(T.STAGE_STARTED, "r", stage="a", attempt=3)._replace(seq=5, ts="t"))
    assert str(exc.value) == ("stage.started for stage 'a' of run 'r' has attempt 3; "
                              "expected attempt 2")
    with pytest.raises(IllegalTransition, match="run 'r' has no stage 'zz'"):
        apply(run, new_event(T.STAGE_STARTED, "r", stage="zz", attempt=1)._replace(seq=9, ts="t"))


def test_a_run_cannot_end_with_an_attempt_in_flight():
    evs = _stamp([
        new_event(T.RUN_REQUESTED, "r", pipeline="p"),
        new_event(T.RUN_STARTED, "r", stages=["a"]),
        new_event(T.STAGE_STARTED, "r", stage="a", attempt=1),
    ])
    run = fold(evs)[("run", "r")]
    for t in (T.RUN_FAILED, T.RUN_RECOVERED, T.RUN_SUSPENDED, T.RUN_CANCELLED):
        with pytest.raises(IllegalTransition, match=r"still has stage attempts in flight \(a\)"):
            apply(run, new_event(t, "r", error="x")._replace(seq=9, ts="t"))


def test_recovery_counts_and_retry_unparks():
    evs = _stamp([
        new_event(T.RUN_REQUESTED, "r", pipeline="p"),
        new_event(T.RUN_STARTED, "r", stages=["a"]),
        new_event(T.STAGE_STARTED, "r", stage="a", attempt=1),
        new_event(T.STAGE_INTERRUPTED, "r", stage="a", attempt=1, error="daemon restarted"),
        new_event(T.RUN_RECOVERED, "r"),
        new_event(T.RUN_STARTED, "r"),
        new_event(T.STAGE_STARTED, "r", stage="a", attempt=2),
        new_event(T.STAGE_INTERRUPTED, "r", stage="a", attempt=2),
        new_event(T.RUN_PARKED, "r", reason="recovered 2 times"),
        new_event(T.RUN_RETRIED, "r"),
    ])
    state = fold(evs[:5])
    assert state[("run", "r")].recoveries == 1 and state[("run", "r")].state == RunState.PENDING
    state = fold(evs)
    run = state[("run", "r")]
    assert run.state == RunState.PENDING and run.recoveries == 0 and run.retries == 1
    assert run.attempts["a"].attempt == 2 and run.attempts["a"].error == "stage interrupted"


def test_projector_keeps_every_attempt_row():
    p = Projector()
    p.feed(_happy_run())
    rows = p.rows()
    assert sorted((r[1], r[2], r[3]) for r in rows["stage_runs"]) == [
        ("a", 1, "FAILED"), ("a", 2, "COMPLETED"), ("b", 0, "SKIPPED")]


def _stamped(event, seq: int):
    return event._replace(seq=seq, ts=f"2026-01-01T00:00:0{seq}.000000Z")


def test_an_alert_fires_once_per_condition_until_resolved():
    raised = new_event(T.ALERT_RAISED, alert_id="disk:/srv", name="system.disk_nearly_full",
                       severity="error", message="disk 95%")
    resolved = new_event(T.ALERT_RESOLVED, alert_id="disk:/srv", reason="disk 80%")
    state = fold([_stamped(raised, 1)])
    with pytest.raises(IllegalTransition) as exc:
        fold([_stamped(raised, 2)], state)
    assert str(exc.value) == ("alert 'disk:/srv' is FIRING; alert.raised is only allowed from: "
                              "RESOLVED, new (resolve it before raising it again)")
    state = fold([_stamped(resolved, 3), _stamped(raised, 4)], state)
    alert = state[("alert", "disk:/srv")]
    assert (alert.state, alert.times_raised, alert.resolved_at) == ("FIRING", 2, None)

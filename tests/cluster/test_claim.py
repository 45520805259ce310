"""The claim of an attempt on a real loopback Dask cluster: the token the daemon sends beside
the task reaches the scheduler late (as on a slow or loaded link to it), is taken already (a
second run of the task), never comes, or comes after the daemon gave the attempt up.

The daemon's side of a late token is this process's executor: its ``put_token`` is made to
send the token some seconds after the task.  The workers are real ``dask worker`` processes.
"""

from __future__ import annotations

import pickle
import sqlite3
import threading
import time
import uuid
from dataclasses import replace

import pytest

from pipelines.execution import clusterlink, clusterwatch, remote
from pipelines.execution.runner import StageTask

from tests.daemon.harness import wait_until

from .stages import behaving, set_claim_late


def dask_executor(cluster, s3, tmp_path, **kw):
    from pipelines.execution.cluster import DaskExecutor

    return DaskExecutor(cluster.address, object_store=s3.settings(uuid.uuid4().hex[:8]),
                        owner=f"test:{tmp_path}", **kw)


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def late_tokens(monkeypatch, delay: float | None) -> dict[str, float]:
    """The executor's claim tokens leave ``delay`` seconds after their task (None: never);
    the name of each token sent, with the time (``time.time()``) it was sent."""
    real, sent = clusterlink.put_token, {}

    def put_token(client, name, timeout):
        async def later():
            import asyncio

            await asyncio.sleep(delay)
            real(client, name, timeout)
            sent[name] = time.time()

        if delay is not None:
            client.loop.add_callback(later)
        return name

    monkeypatch.setattr(clusterlink, "put_token", put_token)
    return sent


def run_bounded(pipeline, timeout: float, **kw):
    """``pipeline.run(**kw)`` on a thread, waited for at most ``timeout`` seconds."""
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ctx", pipeline.run(**kw)), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the run did not end within {timeout:g}s"
    return result["ctx"]


def sleeping_task(tmp_path, marker, run_id: str, seconds: float = 1.0) -> StageTask:
    return StageTask(run_id, "behaving", "work", 1, str(tmp_path / "state"),
                     {"do": "sleep", "seconds": seconds, "marker": str(marker)}, {}, (), {},
                     None, {}, timeout=120)


def test_a_claim_token_that_reaches_the_scheduler_late_is_waited_for(
        cluster, s3, tmp_path, monkeypatch):
    """The token comes 2 s after the task reached its worker (the worker waited 0.5 s for it
    before, then did nothing and reported the attempt as run elsewhere: a stage that never ran
    failed as WorkerDied).  The stage runs once, after the token came, and the run completes."""
    sent = late_tokens(monkeypatch, 2.0)
    marker = tmp_path / "marker"
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        ctx = run_bounded(behaving(tmp_path / "state"), 60,
                          params={"do": "rows", "marker": str(marker)}, executor=ex)
        assert ctx.state == "COMPLETED", getattr(ctx, "error", ctx)
        assert len(sent) == 1
        assert [line.split()[0] for line in lines(marker)] == ["start"]
        # it started once the token was there: its worker had waited for it
        assert marker.stat().st_mtime >= min(sent.values())
        con = sqlite3.connect(tmp_path / "state" / "history.db")
        try:
            rows = con.execute("SELECT attempt, state, host FROM stage_timings").fetchall()
        finally:
            con.close()
        assert [r[:2] for r in rows] == [(1, "COMPLETED")] and rows[0][2]
    finally:
        ex.shutdown()


def test_an_attempt_given_up_while_its_token_is_late_never_starts(
        cluster, s3, tmp_path, monkeypatch):
    """Cancelled while its worker waits for the late token: the token comes after, and the
    stage never starts (the wait ends when Dask no longer wants the task)."""
    sent = late_tokens(monkeypatch, 4.0)
    marker = tmp_path / "marker"
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        future = ex.submit(behaving(tmp_path / "state"), sleeping_task(tmp_path, marker, "rl"))
        cluster.worker_running("ahgd-rl-work", timeout=20)  # its worker waits for the token
        assert not sent
        ex.cancel(future, "cancelled by the test")
        outcome = future.result(timeout=20)
        assert not outcome.ok and outcome.interrupted, outcome
        wait_until(lambda: sent, 20, "the late token to be sent")
        time.sleep(2.0)  # time for a worker still waiting to take it and start
        assert lines(marker) == []
    finally:
        ex.shutdown()


def test_a_token_taken_already_means_a_second_run_does_nothing_at_once(cluster, s3, tmp_path):
    """Two runs of one attempt (as when Dask runs a task again after losing its worker, or
    recomputes a lost result): the first takes the token and runs the stage; the second finds
    the token taken, says by which worker, and returns at once, running nothing (it does not
    wait for a token that will never come)."""
    marker = tmp_path / "marker"
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        client = ex._client
        p = behaving(tmp_path / "state")
        blob = pickle.dumps(p, protocol=5)
        task = replace(sleeping_task(tmp_path, marker, "rt", 0.1),
                       object_store=ex.object_store.settings)
        claim = clusterlink.put_token(client, f"ahgd-rt-{uuid.uuid4().hex[:8]}-claim", 10)
        args = (remote.run_attempt, claim, blob, f"test:{id(p)}", task, remote.versions(),
                f"test:{tmp_path}", None)
        first = client.submit(*args, key=f"{claim}-first", pure=False).result(timeout=60)
        assert first.ok, first
        started = time.monotonic()
        second = client.submit(*args, key=f"{claim}-second", pure=False).result(timeout=60)
        took = time.monotonic() - started
        assert not second.ok and second.error_type == "AlreadyClaimed", second
        assert "not run twice" in second.error
        assert took < 5, f"the second run took {took:.1f}s to find the token taken"
        assert [line.split()[0] for line in lines(marker)] == ["start", "end"]
        clusterlink.drop_token(client, claim)
    finally:
        ex.shutdown()


@pytest.fixture
def short_claim_wait(cluster):
    """The workers' claims wait 1.5 s for their token, not ``remote.CLAIM_LATE_S``; put back
    after the test."""
    from distributed import Client

    with Client(cluster.address, timeout=10, set_as_default=False) as client:
        before = client.run(set_claim_late, 1.5)
        try:
            yield
        finally:
            for address, seconds in before.items():
                client.run(set_claim_late, seconds, workers=[address])


def test_a_token_that_never_comes_fails_the_attempt_blaming_the_scheduler_link(
        cluster, s3, tmp_path, monkeypatch, short_claim_wait):
    """No token within the claim's limit: the attempt fails, retryable, saying that the link
    to the scheduler is at fault, not the stage, and that the stage did not run."""
    late_tokens(monkeypatch, None)
    marker = tmp_path / "marker"
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        future = ex.submit(behaving(tmp_path / "state"), sleeping_task(tmp_path, marker, "rn"))
        outcome = future.result(timeout=30)
        assert not outcome.ok and outcome.error_type == "ClaimNotReceived", outcome
        assert outcome.retryable and not outcome.interrupted and not outcome.timed_out
        assert "link to the Dask scheduler" in outcome.error and "not the stage" in outcome.error
        assert "did not run" in outcome.error and outcome.worker and outcome.host
        assert lines(marker) == []
    finally:
        ex.shutdown()


def test_a_claim_gives_up_before_the_daemon_takes_the_wait_for_an_overrun():
    """The daemon's backstop fails an attempt still held TIMEOUT_SLACK_S past its timeout as
    the stage's overrun: a claim waiting for its token must give up well before that."""
    assert remote.CLAIM_LATE_S + 5 <= clusterwatch.TIMEOUT_SLACK_S

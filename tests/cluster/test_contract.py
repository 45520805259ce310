"""The executor contract, the same for this host's worker pool and for the Dask cluster.

Each test runs once with ``ProcessExecutor`` (local) and once with
``DaskExecutor`` on the session's real loopback cluster, outputs through moto's
S3 server: success, failure, timeout, cancel, slot limits, shutdown.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid

import duckdb
import pytest

from pipelines import StageConfig
from state import store

from .stages import Behaving, TwoStages, behaving


@pytest.fixture(params=["local", "dask"])
def make_executor(request, tmp_path):
    made = []

    def make(max_workers: int = 2):
        if request.param == "local":
            from pipelines.execution.pool import ProcessExecutor

            ex = ProcessExecutor(max_workers)
        else:
            cluster, s3 = request.getfixturevalue("cluster"), request.getfixturevalue("s3")
            from pipelines.execution.cluster import DaskExecutor

            ex = DaskExecutor(cluster.address, object_store=s3.settings(uuid.uuid4().hex[:8]),
                              max_workers=max_workers, owner=f"test:{tmp_path}")
        made.append(ex)
        return ex

    make.kind = request.param
    yield make
    for ex in made:
        ex.shutdown()


def history(tmp_path, sql: str) -> list[tuple]:
    con = sqlite3.connect(tmp_path / "state" / "history.db")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (on this host: the cluster is on loopback) has exited, or does
    within ``timeout`` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_success_records_the_output_and_the_host(make_executor, tmp_path):
    ex = make_executor()
    p = TwoStages("two", state_dir=tmp_path / "state", executor=ex, max_retries=0)
    ctx = p.run()
    assert ctx.state == "COMPLETED"
    rows = history(tmp_path, "SELECT t.stage, t.host, json_extract(s.detail, '$.output.uri'), "
                             "s.output FROM stage_timings t JOIN stage_runs s "
                             "USING (run_id, stage, attempt) ORDER BY t.stage")
    assert [r[0] for r in rows] == ["count", "make"]
    assert all(r[1] for r in rows)  # the host that ran each attempt
    if make_executor.kind == "dask":  # outputs travel through the object store
        assert all(str(r[2]).startswith("s3://ahgd-test/") for r in rows)
    else:
        assert all(r[2] is None for r in rows)
    # count read make's 100 rows, wherever make ran (fetched from the store if it ran there)
    ref = json.loads(rows[0][3])
    con = duckdb.connect(str(store.local_path(tmp_path / "state", ref)), read_only=True)
    try:
        assert con.execute("SELECT rows, total FROM output").fetchall() == [(100, 9900)]
    finally:
        con.close()


def test_a_failing_stage_fails_the_attempt_with_its_error(make_executor, tmp_path):
    p = behaving(tmp_path / "state")
    ctx = p.run(params={"do": "fail"}, executor=make_executor())
    assert ctx.state == "FAILED"
    [(error,)] = history(tmp_path, "SELECT error FROM stage_runs WHERE stage = 'work'")
    assert "RuntimeError" in error and "on purpose" in error


def test_a_timeout_kills_the_work(make_executor, tmp_path):
    marker = tmp_path / "marker"
    # 2 s, not 1: the timeout counts from when the worker is ready, but a fresh pool's worker
    # (here, or a Dask worker's) still imports duckdb and the stage's module after that, at
    # SCHED_BATCH, before the stage writes its start marker; a loaded host makes that slow
    p = Behaving("slow", state_dir=tmp_path / "state", max_retries=0,
                 stage_configs={"work": StageConfig("work", retry_attempts=0, timeout=2)})
    started = time.monotonic()
    ctx = p.run(params={"do": "sleep", "seconds": 60, "marker": str(marker)},
                executor=make_executor())
    assert ctx.state == "FAILED"
    assert time.monotonic() - started < 30  # bounded: the 60 s sleep was killed
    [(state,)] = history(tmp_path, "SELECT state FROM stage_runs WHERE stage = 'work'")
    assert state == "TIMED_OUT"
    assert len(lines(marker)) == 1


def test_cancel_stops_the_attempt(make_executor, tmp_path):
    marker = tmp_path / "marker"
    cancel = threading.Event()
    p = behaving(tmp_path / "state")
    ex = make_executor()
    result = {}
    # the stage sleeps 60 s, not 2: on a loaded host the cancel could arrive after a short
    # sleep ended; that it stopped the work is shown by the process that ran it being gone
    # (it can write no "end" then), not by waiting past a sleep
    t = threading.Thread(target=lambda: result.setdefault("ctx", p.run(
        params={"do": "sleep", "seconds": 60, "marker": str(marker)}, executor=ex,
        cancel=cancel)))
    t.start()
    deadline = time.monotonic() + 30
    while not lines(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines(marker), "the attempt never started"
    cancel.set()
    t.join(timeout=30)
    assert not t.is_alive()
    assert result["ctx"].state == "CANCELLED"
    # the worker process running it was killed (the Dask worker kills it once it sees the
    # task released, a moment after the run returned) ...
    pid = int(lines(marker)[0].split("pid=")[1].split()[0])
    assert gone(pid, 30), f"the process running the cancelled attempt (pid {pid}) lives on"
    assert [line.split()[0] for line in lines(marker)] == ["start"]
    # ... so the slot is free and the next attempt runs
    assert ex.in_use() == 0
    again = behaving(tmp_path / "state2").run(params={"do": "rows"}, executor=ex)
    assert again.state == "COMPLETED"


def test_slots_limit_how_many_attempts_run_at_once(make_executor, tmp_path):
    ex = make_executor(max_workers=1)
    assert ex.try_reserve() is True
    assert ex.try_reserve() is False  # one slot: the second waits
    assert ex.in_use() == 1
    ex.release()
    assert ex.in_use() == 0
    markers = [tmp_path / f"m{i}" for i in range(2)]
    runs = [threading.Thread(target=behaving(tmp_path / f"s{i}").run, kwargs=dict(
        params={"do": "sleep", "seconds": 1, "marker": str(markers[i])}, executor=ex))
        for i in range(2)]
    for r in runs:
        r.start()
    peak = 0
    deadline = time.monotonic() + 60
    while any(r.is_alive() for r in runs) and time.monotonic() < deadline:
        peak = max(peak, ex.in_use())
        time.sleep(0.02)
    for r in runs:
        r.join(timeout=5)
    assert peak == 1
    assert all([line.split()[0] for line in lines(m)] == ["start", "end"] for m in markers)


def test_shutdown_interrupts_what_runs_and_refuses_new_work(make_executor, tmp_path):
    from pipelines.execution.runner import StageTask

    ex = make_executor()
    marker = tmp_path / "marker"
    p = behaving(tmp_path / "state")
    task = StageTask("r1", "behaving", "work", 1, str(tmp_path / "state"),
                     {"do": "sleep", "seconds": 60, "marker": str(marker)}, {}, (), {}, None, {},
                     timeout=120)
    future = ex.submit(p, task)
    deadline = time.monotonic() + 30
    while not lines(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lines(marker), "the attempt never started"
    ex.shutdown()
    outcome = future.result(timeout=30)
    assert not outcome.ok and outcome.interrupted
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(p, task)

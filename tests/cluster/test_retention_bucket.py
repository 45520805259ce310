"""Retention collects the object store too (README, Retention): a Dask executor's outputs
(``<prefix>/data/<run>/``) and inputs (``<prefix>/files/<sha256>/``) go by the rules that
apply to the state directory, each removal recorded, decided from the history (a run whose
outputs are in the bucket has no ``data/<run>`` here).  Real runs on the session's Dask
cluster, a real S3 endpoint (moto's server); only the collector's clock is moved forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from ahgd_daemon.collection import DaemonCollection
from state import utc_now
from state.objectstore import ObjectStore
from tests.daemon.retention_kit import Kit, days, write_configs

from .processes import REPO, Gate, child_env, free_port

RETAIN = "successful_runs: 1, inputs_for: P1D, failed_runs_for: P5D, logs_for: P90D"


def store_section(settings: dict[str, str]) -> str:
    return "object_store: " + json.dumps(settings)


@pytest.fixture
def bucket(cluster, s3, tmp_path):
    """Three runs of csvpipe on the cluster, outputs and inputs in a prefix of their own: two
    COMPLETED (the older beyond successful_runs: 1), then one FAILED (inside its retry
    window); and an object no run recorded.  ``(kit, store, runs)``."""
    from pipelines.execution.cluster import DaskExecutor

    settings = s3.settings(uuid.uuid4().hex[:8])
    kit = Kit(write_configs(tmp_path, RETAIN, daemon=store_section(settings)),
              tmp_path / "state")
    store = ObjectStore(settings)
    executor = DaskExecutor(cluster.address, object_store=settings, max_workers=2,
                            owner=f"test:{tmp_path}")
    kit.pipeline._executor_arg = executor
    try:
        kit.succeed(True)
        old, newest = kit.run(), kit.run()
        kit.succeed(False)
        failed = kit.run()
    finally:
        executor.shutdown()
    s3.client().put_object(Bucket=store.bucket, Key=store.key_for("data/by-hand/mine.bin"),
                           Body=b"keep")
    yield kit, store, {"old": old, "newest": newest, "failed": failed}
    kit.close()


def folders(store: ObjectStore) -> set[str]:
    return {"/".join(name.split("/")[:2]) for name in store.list("")}


def bucket_removals(kit: Kit) -> list[tuple]:
    return [r for r in kit.removals() if r[2] == "bucket"]


def test_an_old_runs_outputs_and_input_go_from_the_bucket_and_the_rest_stays(bucket):
    kit, store, runs = bucket
    sha = {k: kit.run_row(r).params["input_sha256"] for k, r in runs.items()}
    before = folders(store)
    assert {f"data/{r}" for r in runs.values()} | {f"files/{s}" for s in sha.values()} \
        | {"data/by-hand"} <= before

    report = kit.collector(days(2), store=store).run()

    assert folders(store) == before - {f"data/{runs['old']}", f"files/{sha['old']}"}
    recorded = bucket_removals(kit)
    assert sorted(recorded) == sorted([
        ("data.expired", runs["old"], "bucket", store.uri_for(f"data/{runs['old']}")),
        ("file.expired", runs["old"], "bucket", store.uri_for(f"files/{sha['old']}"))])
    rules = {i.path: i.rule for i in report.items if i.area == "bucket"}
    assert rules == {store.uri_for(f"data/{runs['old']}"): "successful_runs",
                     store.uri_for(f"files/{sha['old']}"): "inputs_for"}
    assert report.walk.kept.get("bucket: unknown: no run in the history has this folder") == 1
    assert report.walk.bucket_error is None
    bytes_ = kit.log.query("SELECT SUM(bytes) FROM removals WHERE area = 'bucket'")[0][0]
    assert bytes_ == sum(i.bytes for i in report.items if i.area == "bucket") > 0

    # the failed run's retry window over: its outputs and input go too; the newest stays
    kit.collector(days(6), store=store).run()
    assert folders(store) == before - {f"data/{runs['old']}", f"files/{sha['old']}",
                                       f"data/{runs['failed']}", f"files/{sha['failed']}"}
    assert len(bucket_removals(kit)) == 4


def test_without_an_object_store_nothing_of_the_bucket_is_touched(bucket):
    kit, store, _ = bucket
    before = store.list("")
    report = kit.collector(days(30)).run()
    assert store.list("") == before
    assert bucket_removals(kit) == [] and report.walk.sizes["bucket"] == 0


def test_an_unreachable_bucket_records_nothing_warns_and_the_next_collection_collects(
        bucket, tmp_path):
    kit, store, runs = bucket
    before = store.list("")
    down = ObjectStore({**store.settings, "endpoint_url": f"http://127.0.0.1:{free_port()}"})
    warnings: list[tuple[str, dict]] = []

    class Logger:
        def warning(self, event, **kw):
            warnings.append((event, kw))

        info = error = lambda self, *a, **kw: None

    collection = DaemonCollection(kit.log, kit.state_dir, kit.policy, logger=Logger(),
                                  wake=lambda: None, alerts=None,
                                  clock=lambda: utc_now() + days(2),
                                  monotonic=lambda: time.monotonic() + 10, store=down)
    collection._judge_budget = lambda report: None  # no alerts here: only the bucket matters
    # the loop (this thread) never waits for the store: its calls (boto3's retries take
    # seconds) run on another thread; told by where they run, not by a time limit
    callers: list[int] = []
    listing = down.objects

    def objects(rel_prefix):
        callers.append(threading.get_ident())
        return listing(rel_prefix)

    down.objects = objects
    steps, deadline = 0, time.monotonic() + 60
    while collection.ended == 0 and time.monotonic() < deadline:
        collection.step()
        steps += 1
        time.sleep(0.01)
    assert collection.ended == 1
    assert callers and threading.get_ident() not in callers, "the loop called the object store"
    assert steps > 1  # the loop came back while the listing went on
    assert store.list("") == before and bucket_removals(kit) == []
    (event, said), = [w for w in warnings if w[0] == "gc_bucket_unreachable"]
    assert said["object_store"] == store.url and said["endpoint"] == down.settings["endpoint_url"]
    assert down.settings["endpoint_url"] in said["detail"]
    assert "the next collection tries again" in said["detail"]

    collection.collector.store = store  # reachable again: the next collection removes
    collection._asap.set()
    while collection.ended == 1 and time.monotonic() < deadline:
        collection.step()
        time.sleep(0.01)
    assert collection.ended == 2 and collection.last.walk.bucket_error is None
    collection.collector.submit(lambda: None).result(timeout=30)  # its deletions done
    assert [r[1] for r in bucket_removals(kit)] == [runs["old"], runs["old"]]
    assert f"data/{runs['old']}" not in folders(store)


def test_gc_dry_run_lists_the_bucket_items_and_removes_nothing(bucket):
    kit, store, runs = bucket
    before = store.list("")
    done = subprocess.run(
        [sys.executable, "-m", "ahgd_daemon", "gc", "--dry-run", "--state-dir",
         str(kit.state_dir), "--config", str(kit.master)],
        capture_output=True, text=True, timeout=120, env=child_env(), cwd=REPO)
    assert done.returncode == 0, done.stderr
    # now, not in two days: only the old run's outputs (successful_runs: 1) would go
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("bucket ")]
    assert [r[1] for r in rows] == [store.uri_for(f"data/{runs['old']}")]
    assert rows[0][4] == "successful_runs"
    assert "object store (bucket)" in done.stdout
    assert store.list("") == before and bucket_removals(kit) == []


def test_objects_the_bucket_could_not_delete_after_their_removal_was_recorded_go_next_time(
        bucket, s3, cluster, caplog):
    """...unless a run has read them since: the same file dropped again reads the input the
    store could not delete (it is there, with its SHA-256, so it is not put again); that run
    is now the newest, and its input stays."""
    from concurrent.futures import Future, wait

    from ahgd_daemon.requests import request_run
    from pipelines.execution.cluster import DaskExecutor
    from tests.daemon.retention_kit import PIPELINE

    kit, store, runs = bucket
    link = Gate(s3.port)  # the bucket can be cut and mended; its objects stay
    relayed = ObjectStore({**store.settings, "endpoint_url": link.endpoint})
    old = store.uri_for(f"data/{runs['old']}")
    left = sorted(n for n in store.list(f"data/{runs['old']}/"))
    collector = kit.collector(days(2), store=relayed)
    report = collector.new_report()
    steps = collector.collect(report)
    for step in steps:  # up to the bucket's listing, which the link lets through
        if isinstance(step, Future):
            wait([step])
            link.shut()  # then the bucket goes away, before anything of it is removed
            break
    for _ in steps:
        pass
    # recorded (the removal was decided on a listing), not deleted: said so
    assert [r[3] for r in bucket_removals(kit)] == [old, store.uri_for(
        f"files/{kit.run_row(runs['old']).params['input_sha256']}")]
    assert store.list(f"data/{runs['old']}/") == left
    assert "could not delete" in (report.walk.bucket_error or "")
    assert any("could not delete" in r.getMessage() for r in caplog.records)

    # the old run's file dropped again, run on the cluster: it reads files/<sha> as it is
    sha = kit.run_row(runs["old"]).params["input_sha256"]
    executor = DaskExecutor(cluster.address, object_store=store.settings, max_workers=2,
                            owner=f"test:{kit.state_dir}:again")
    kit.pipeline._executor_arg = executor
    kit.succeed(True)
    try:
        fd = os.open(kit.state_dir.parent / "input-1.csv", os.O_RDONLY)
        try:
            rerun = request_run(kit.log, kit.state_dir, kit.pipelines, PIPELINE, input_fd=fd,
                                input_name="input-1.csv")
        finally:
            os.close(fd)
        kit.pipeline.execute_run(rerun, log=kit.log)
    finally:
        executor.shutdown()
    assert kit.run_row(rerun).state == "COMPLETED"
    assert kit.run_row(rerun).params["input_sha256"] == sha

    link.open()
    again = kit.collector(days(2), store=relayed).run()
    assert store.list(f"data/{runs['old']}/") == []
    assert again.bucket_leftovers >= len(left) and again.walk.bucket_error is None
    paths = [r[3] for r in bucket_removals(kit)]
    # no second event for what was recorded (the run before the rerun goes now: not newest)
    assert paths.count(old) == 1 and paths.count(store.uri_for(f"files/{sha}")) == 1
    assert store.uri_for(f"data/{runs['newest']}") in paths
    assert store.list(f"files/{sha}/")  # the newest run's input stays
    link.shut()

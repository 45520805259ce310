"""Retention collects the object store too (README, Retention): a Dask executor's outputs
(``<prefix>/data/<run>/``) and inputs (``<prefix>/files/<sha256>/``) go by the rules that
apply to the state directory, each removal recorded, decided from the history (a run whose
outputs are in the bucket has no ``data/<run>`` here).  Real runs on the session's Dask
cluster, a real S3 endpoint (moto's server); only the collector's clock is moved forward."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ahgd_daemon.collection import DaemonCollection
from state import utc_now
from state.objectstore import ObjectStore
from tests.daemon.retention_kit import Kit, days, write_configs

from .processes import REPO, child_env, free_port

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
    longest, deadline = 0.0, time.monotonic() + 60
    while collection.ended == 0 and time.monotonic() < deadline:
        began = time.perf_counter()
        collection.step()
        longest = max(longest, time.perf_counter() - began)
        time.sleep(0.01)
    assert collection.ended == 1
    assert longest < 0.2, "the loop waited for the object store"  # its retries take seconds
    assert store.list("") == before and bucket_removals(kit) == []
    (event, said), = [w for w in warnings if w[0] == "gc_bucket_unreachable"]
    assert said["object_store"] == store.url and said["endpoint"] == down.settings["endpoint_url"]
    assert down.settings["endpoint_url"] in said["detail"]
    assert "the next collection tries again" in said["detail"]

    collection.collector.store = store  # reachable again: the next collection removes
    kit.collector(days(2), store=store).run()
    assert [r[1] for r in bucket_removals(kit)] == [runs["old"], runs["old"]]


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

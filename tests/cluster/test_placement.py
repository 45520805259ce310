"""Where attempts go and what they find there: worker versions checked at connect, a class in
``__main__`` refused, ``resource_requirements`` as Dask resources, outputs in the object store
verified by their SHA-256 before reuse."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from pipelines import StageConfig
from pipelines.execution import remote
from pipelines.execution.runner import StageTask
from state import objectstore, store
from state.errors import OutputMissing

from .stages import Behaving, TwoStages


def dask_executor(cluster, s3, tmp_path, **kw):
    from pipelines.execution.cluster import DaskExecutor

    return DaskExecutor(cluster.address, object_store=s3.settings(uuid.uuid4().hex[:8]),
                        owner=f"test:{tmp_path}", **kw)


def test_workers_with_other_versions_are_refused_at_connect(cluster, s3, tmp_path, monkeypatch):
    from pipelines.execution.clusterlink import ClusterUnavailable

    ours = remote.versions()
    monkeypatch.setattr(remote, "versions", lambda: {**ours, "duckdb": "0.0.1"})
    with pytest.raises(ClusterUnavailable) as caught:
        dask_executor(cluster, s3, tmp_path)
    message = str(caught.value)
    assert f"duckdb {ours['duckdb']}" in message and "duckdb 0.0.1" in message
    assert "Install the same ahgd-daemon[dask]" in message and cluster.address in message


def test_a_pipeline_class_in_a_script_main_is_refused_saying_what_to_do(cluster, s3, tmp_path):
    script = type("ScriptPipeline", (Behaving,), {"__module__": "__main__"})
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        p = script("script", state_dir=tmp_path / "state", max_retries=0)
        outcome = ex.submit(p, StageTask("r", "script", "work", 1, str(tmp_path / "state"), {},
                                         {}, (), {}, None, {})).result(timeout=10)
    finally:
        ex.shutdown()
    assert not outcome.ok and not outcome.retryable and outcome.error_type == "ConfigError"
    assert "defined in the script's __main__" in outcome.error
    assert "move it into a module of its own" in outcome.error


def test_resource_requirements_are_dask_resources(cluster, s3, tmp_path):
    ex = dask_executor(cluster, s3, tmp_path)
    big = None
    try:
        def run(state):
            p = Behaving("big", state_dir=state, max_retries=0, stage_configs={
                "work": StageConfig("work", retry_attempts=0,
                                    resource_requirements={"memory": 32768})})
            return p.run(params={"do": "rows"}, executor=ex)

        # no worker offers 32 GB: refused, saying how to start one that does
        assert run(tmp_path / "s1").state == "FAILED"
        con = sqlite3.connect(tmp_path / "s1" / "history.db")
        [(error,)] = con.execute("SELECT error FROM stage_runs").fetchall()
        con.close()
        assert "no Dask worker offers cpu=1, memory=32768" in error
        assert '--resources "cpu=1,memory=32768"' in error
        # a worker with 40 GB joins: the stage lands there, and only there
        big = cluster.add_worker("big", resources="cpu=2,memory=40960")
        cluster.wait_for_workers(3)
        for i in range(2):
            assert run(tmp_path / f"s{i + 2}").state == "COMPLETED"
            con = sqlite3.connect(tmp_path / f"s{i + 2}" / "history.db")
            [(worker,)] = con.execute(
                "SELECT json_extract(detail, '$.worker') FROM stage_runs").fetchall()
            con.close()
            assert worker == big_address(cluster)
    finally:
        ex.shutdown()
        if big is not None:
            from .processes import stop

            stop(big)
            cluster.workers.remove(big)
            del cluster.named["big"]


def big_address(cluster) -> str:
    return worker_address(cluster, "big")


def worker_address(cluster, name: str) -> str:
    from distributed import Client

    with Client(cluster.address, timeout=10, set_as_default=False) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
    return next(a for a, w in info.items() if w.get("name") == name)


def test_an_output_changed_in_the_object_store_is_found_before_it_is_reused(
        cluster, s3, tmp_path):
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        p = TwoStages("two", state_dir=tmp_path / "state", max_retries=0)
        first = p.run(executor=ex)
        assert first.state == "COMPLETED"
        con = sqlite3.connect(tmp_path / "state" / "history.db")
        [(make,)] = con.execute("SELECT output FROM stage_runs WHERE stage = 'make'").fetchall()
        con.close()
        ref = __import__("json").loads(make)
        found = objectstore.current()
        bucket, key = objectstore.parse_url(ref["uri"])
        body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        damaged = body[:-1] + bytes([body[-1] ^ 0xFF])  # the same size, another hash
        s3.client().put_object(Bucket=bucket, Key=key, Body=damaged,
                               Metadata={"sha256": ref["sha256"]})
        # a reader fetching it refuses it
        with pytest.raises(OutputMissing, match="does not match its recorded SHA-256"):
            found.fetch(ref, tmp_path / "fresh-cache")
        found_now = store.check(tmp_path / "state", ref)
        assert found_now["bytes"] == ref["bytes"] and found_now["sha256"] not in (
            None, ref["sha256"])
        # resuming from count verifies make's object, as for a local file, and refuses it
        from pipelines.errors import ResumeRefused

        with pytest.raises(ResumeRefused, match="resume from 'make' instead") as refused:
            p.run(resume_from="count", executor=ex)
        assert ref["uri"] in str(refused.value)
        # gone from the store: said so, naming the object
        s3.client().delete_object(Bucket=bucket, Key=key)
        assert store.check(tmp_path / "state", ref) == {"exists": False}
        assert ref["uri"] in store.describe(tmp_path / "state", ref, {"exists": False}, what="x")
    finally:
        ex.shutdown()


def test_credentials_come_from_a_file_never_the_yaml(tmp_path):
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    assert objectstore.read_credentials(creds, "default") == {
        "aws_access_key_id": "AK", "aws_secret_access_key": "SK"}
    from state.errors import ObjectStoreError

    with pytest.raises(ObjectStoreError, match=r"has no \[ops\] section"):
        objectstore.read_credentials(creds, "ops")


def test_the_status_page_lists_the_cluster_and_its_workers(cluster, s3, tmp_path):
    from ahgd_daemon.statusdocs import cluster_section
    from pipelines.execution.pool import ProcessExecutor

    ex = dask_executor(cluster, s3, tmp_path)
    try:
        doc = cluster_section(ex)["cluster"]
    finally:
        ex.shutdown()
    assert doc["scheduler"] == cluster.address and doc["connected"] is True
    assert doc["object_store"].startswith("s3://ahgd-test/")
    assert len(doc["workers"]) == 2
    assert all(w["host"] and w["resources"] == {"cpu": 2.0, "memory": 4096.0}
               for w in doc["workers"])
    local = ProcessExecutor(1)
    try:
        assert cluster_section(local) == {}  # no cluster: nothing on the page about one
    finally:
        local.shutdown()


def test_a_stage_reading_an_inprocess_output_runs_on_the_daemons_host(cluster, s3, tmp_path):
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        p = TwoStages("two", state_dir=tmp_path / "state", max_retries=0,
                      stage_configs={"make": StageConfig("make", executor="inprocess")})
        assert p.run(executor=ex).state == "COMPLETED"
    finally:
        ex.shutdown()
    con = sqlite3.connect(tmp_path / "state" / "history.db")
    rows = con.execute("SELECT stage, json_extract(detail, '$.worker') FROM stage_runs "
                       "ORDER BY stage").fetchall()
    con.close()
    # make's file exists only here (not in the bucket): count ran here too, not on a worker
    assert rows == [("count", None), ("make", None)]


def test_a_worker_that_cannot_reach_the_bucket_is_named_in_the_error(s3, tmp_path):
    """The daemon put the run's input into the bucket; a worker that cannot reach it (here: a
    proxy nobody listens on) failed the attempt saying the file "could not be fetched here"
    and to check the store is "reachable from this host", read on the daemon's host, which
    could reach it.  The error names the Dask worker and its host."""
    import hashlib

    from .processes import DaskCluster

    cluster = DaskCluster(tmp_path / "dask", workers=1, env={
        "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "", "no_proxy": ""})
    data = tmp_path / "in.csv"
    data.write_text("a,b\n1,2\n")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    ex = dask_executor(cluster, s3, tmp_path)
    try:
        p = Behaving("cut", state_dir=tmp_path / "state", max_retries=0)
        outcome = ex.submit(p, StageTask(
            "rc", "cut", "work", 1, str(tmp_path / "state"),
            {"do": "rows", "input_file": str(data), "input_sha256": sha}, {}, (), {}, None,
            {}, timeout=60)).result(timeout=60)
        address = worker_address(cluster, "w0")
    finally:
        ex.shutdown()
        cluster.stop()
    assert not outcome.ok and outcome.retryable, outcome
    assert f"could not be fetched on the Dask worker {address} on {outcome.host}" in \
        outcome.error, outcome.error
    assert any(k.endswith(f"files/{sha}/in.csv") for k in s3.keys())  # the daemon put it there


def test_an_input_gone_from_the_bucket_is_put_again_for_the_next_run(cluster, s3, tmp_path):
    """The daemon remembered, for its whole life, that it had put a run's input into the
    bucket: once the object was removed (a lifecycle rule, a clean-up), every later run of
    that file failed every attempt ("... is gone from the object store") until the daemon was
    restarted, though the file was safe on the daemon's host."""
    import hashlib
    import shutil

    data = tmp_path / "in.csv"
    data.write_text(f"a,b\n1,{uuid.uuid4().hex}\n")  # its own object, not another test's
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    scratch = tmp_path / "scratch"  # the workers' copies: removed below, as a new host has none
    ex = dask_executor(cluster, s3, tmp_path, scratch_dir=str(scratch))
    p = Behaving("again", state_dir=tmp_path / "state", max_retries=0)

    def attempt(run_id: str):
        return ex.submit(p, StageTask(
            run_id, "again", "work", 1, str(tmp_path / "state"),
            {"do": "rows", "input_file": str(data), "input_sha256": sha}, {}, (), {}, None, {},
            timeout=60)).result(timeout=60)
    try:
        assert attempt("r1").ok
        [key] = [k for k in s3.keys() if k.endswith(f"files/{sha}/in.csv")]
        s3.client().delete_object(Bucket="ahgd-test", Key=key)
        shutil.rmtree(scratch / "cache", ignore_errors=True)
        second = attempt("r2")
        assert second.ok, second.error
        assert key in s3.keys()  # put there again
    finally:
        ex.shutdown()

"""The real daemon with ``daemon.executor: {type: dask}``: killed with an attempt running on a
worker and started again, and ``ahgd demo`` on the cluster giving what the local run gives."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import duckdb

from ahgd_daemon.demo import BUNDLED

from ..daemon.harness import Daemon, ahgd_exe, drop_csv, query, wait_until
from .processes import S3_ENV, child_env


def dask_section(cluster, s3, prefix: str) -> str:
    return textwrap.dedent(f"""\
        daemon:
          max_workers: 2
          shutdown_grace: PT2S
          executor: {{type: dask, scheduler: "{cluster.address}", local_workers: 1}}
          object_store: {{url: "s3://ahgd-test/{prefix}", endpoint_url: "{s3.endpoint}", region: us-east-1}}
        """)


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def gone(pid: int) -> bool:
    """Whether process ``pid`` (on this host: the cluster is on loopback) has exited."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_daemon_killed_with_an_attempt_on_a_worker_recovers_and_stops_the_orphan(
        cluster, s3, tmp_path):
    marker, hold = tmp_path / "marker", tmp_path / "hold"
    hold.touch()  # attempt 1 runs until this is removed (or it is stopped)
    (tmp_path / "remote.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: remote}}
        duckdb: {{inline_tables: false}}   # outputs as files through the bucket, the orphan's too
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/remote", pattern: "*.csv", stable_for: PT0.2S}}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: tests.cluster.stages.MarkedTransformer, config: {{marker: "{marker}", hold: "{hold}"}}, retry_attempts: 0}}
          - {{name: load, type: loader, class: tests.daemon.stages.CountLoader, retry_attempts: 0}}
        """))
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: remote, config_file: remote.yaml}\n"
                      + dask_section(cluster, s3, "crash"))
    state = tmp_path / "state"
    try:
        d = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
        drop_csv(state / "inbox" / "remote", "one.csv", rows=4)
        wait_until(lambda: lines(marker), 60, "the transform to start on a worker")
        d.kill()  # SIGKILL: the attempt runs on in the cluster, its daemon gone
        [(run_id,)] = query(state, "SELECT run_id FROM runs")
        d2 = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
        try:
            wait_until(lambda: query(state, "SELECT state FROM runs") == [("COMPLETED",)], 90,
                       "the run to complete after the restart")
        finally:
            assert d2.stop() == 0, d2.output()
        # the orphaned attempt was stopped: the process that ran it is gone while it was held
        # (however long the release took to reach its worker on a loaded host)
        orphan = int(lines(marker)[0].split()[3].removeprefix("pid="))
        wait_until(lambda: gone(orphan), 30, "the orphaned attempt's process to be stopped")
    finally:
        hold.unlink(missing_ok=True)
    # the orphaned attempt never ended, and the new one ran to its end
    seen = [line.split()[0] + " " + line.split()[2] for line in lines(marker)]
    assert seen[0] == "start a1" and "end a1" not in seen, seen
    assert seen[-1].startswith("end a") and seen.count(seen[-1].replace("end", "start")) == 1
    # the warehouse got the four rows once; nothing of the orphan is left in the bucket
    assert [t["rows"] for t in __import__("tests.daemon.harness", fromlist=["traces"]).traces(state)
            if t.get("event") == "done" and t["stage"] == "load"] == [4]
    recorded = {r[0] for r in query(state, "SELECT json_extract(output, '$.path') FROM "
                                           "stage_runs WHERE state = 'COMPLETED'") if r[0]}
    objects = {k.split("crash/", 1)[1] for k in s3.keys(f"crash/data/{run_id}/")}
    assert objects and objects <= recorded, (objects, recorded)
    # the daemon is the only writer of the log: no worker opened or made one
    assert not [p for p in cluster.root.rglob("*") if p.name.startswith("history.db")]
    hosts = query(state, "SELECT stage, host FROM stage_timings WHERE state = 'COMPLETED'")
    assert {s for s, h in hosts if h} == {"extract", "transform", "load"}


def test_ahgd_demo_on_the_cluster_gives_the_rows_and_states_of_the_local_run(cluster, s3, tmp_path):
    config = tmp_path / "ahgd" / "config"
    shutil.copytree(BUNDLED / "config", config)
    (tmp_path / "ahgd" / "data").symlink_to(BUNDLED / "data")
    master = config / "master.yaml"
    local_master = config / "local.yaml"
    shutil.copyfile(master, local_master)
    master.write_text(master.read_text() + dask_section(cluster, s3, "demo"))
    runs: dict = {}
    tables: dict = {}
    for kind, cfg in (("local", local_master), ("dask", master)):
        state = tmp_path / kind
        proc = subprocess.run([*ahgd_exe(), "demo", "--config", str(cfg), "--state-dir",
                               str(state)], capture_output=True, text=True, timeout=300,
                              env=child_env(), cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        runs[kind] = sorted(query(state, "SELECT pipeline, trigger, state FROM run_history"))
        con = duckdb.connect(str(state / "warehouse.duckdb"), read_only=True)
        try:
            for t in ("seifa_sa2", "mortality_region", "sa2_health_profile"):
                same = [c for c in con.table(t).columns if c not in ("_run_id", "_loaded_at")]
                tables.setdefault(kind, {})[t] = con.execute(
                    f"SELECT {', '.join(same)} FROM {t} ORDER BY ALL").fetchall()
        finally:
            con.close()
        if kind == "dask":  # the transforms ran on Dask workers, their outputs in the bucket
            hosts = query(state, "SELECT DISTINCT json_extract(detail, '$.worker') FROM "
                                 "stage_runs WHERE stage = 'transform'")
            assert all(h and h[0].startswith("tcp://127.0.0.1:") for h in hosts), hosts
            assert any("/transform-a1.duckdb" in k for k in s3.keys("demo/data/"))
            # loaders, and the profile's extract (`executor: local`: it reads the warehouse),
            # ran on the daemon's host
            here = query(state, "SELECT DISTINCT s.stage, json_extract(s.detail, '$.worker') "
                                "FROM stage_runs s JOIN runs r USING (run_id) WHERE "
                                "s.stage = 'load' OR (r.pipeline = 'sa2_health_profile' AND "
                                "s.stage = 'extract')")
            assert sorted(here) == [("extract", None), ("load", None)], here
    assert runs["dask"] == runs["local"] == sorted([
        ("seifa_sa2", "drop_folder", "COMPLETED"), ("mortality_regions", "drop_folder", "COMPLETED"),
        ("sa2_health_profile", "upstream", "COMPLETED")])
    assert tables["dask"] == tables["local"]
    assert len(tables["dask"]["sa2_health_profile"]) == 2293


def test_a_big_stage_on_the_cluster_does_not_hold_back_small_ones_on_a_small_daemon_host(
        s3, tmp_path):
    """Without ``resource_limits`` the daemon's budget was its own machine's cores and memory,
    and every stage was charged to it though it ran on a Dask worker: one stage needing more
    than the daemon's host has (alone on an idle budget, it started) held every other stage of
    every pipeline back until it ended, however idle the cluster.  Dask places attempts by the
    resources the workers declare; the daemon's host is no limit on them."""
    from .processes import DaskCluster

    marker, hold = tmp_path / "marker", tmp_path / "hold"
    cluster = DaskCluster(tmp_path / "dask", workers=1)
    try:
        cluster.add_worker("big", resources="cpu=512,memory=100000000")
        cluster.wait_for_workers(2)
        hold.touch()  # the big transform runs until this is removed
        (tmp_path / "huge.yaml").write_text(textwrap.dedent(f"""\
            pipeline: {{name: huge}}
            triggers:
              - {{type: drop_folder, path: "${{state_dir}}/inbox/huge", pattern: "*.csv", stable_for: PT0.2S}}
            stages:
              - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
              - name: transform
                type: transformer
                class: tests.cluster.stages.MarkedTransformer
                config: {{marker: "{marker}", hold: "{hold}"}}
                retry_attempts: 0
                resource_requirements: {{cpu: 256, memory: 50000000}}   # more than any daemon host
              - {{name: load, type: loader, class: tests.daemon.stages.CountLoader, retry_attempts: 0}}
            """))
        (tmp_path / "small.yaml").write_text(textwrap.dedent("""\
            pipeline: {name: small}
            triggers:
              - {type: drop_folder, path: "${state_dir}/inbox/small", pattern: "*.csv", stable_for: PT0.2S}
            stages:
              - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}
              - {name: transform, type: transformer, class: tests.daemon.stages.SlowTransformer, retry_attempts: 0}
              - {name: load, type: loader, class: tests.daemon.stages.CountLoader, retry_attempts: 0}
            """))
        master = tmp_path / "master.yaml"
        master.write_text("pipelines:\n  - {name: huge, config_file: huge.yaml}\n"
                          "  - {name: small, config_file: small.yaml}\n"
                          + dask_section(cluster, s3, "budget"))
        state = tmp_path / "state"
        d = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
        try:
            drop_csv(state / "inbox" / "huge", "big.csv", rows=3)
            wait_until(lambda: lines(marker), 60, "the big transform to start on its worker")
            drop_csv(state / "inbox" / "small", "one.csv", rows=2)
            wait_until(lambda: query(state, "SELECT state FROM runs WHERE pipeline = 'small'")
                       == [("COMPLETED",)], 60, "the small run to complete beside the big stage")
            assert query(state, "SELECT s.state FROM stage_runs s JOIN runs r USING (run_id) "
                                "WHERE r.pipeline = 'huge' AND s.stage = 'transform'") == [
                ("RUNNING",)]  # the big stage still held
            hold.unlink()
            wait_until(lambda: query(state, "SELECT state FROM runs WHERE pipeline = 'huge'")
                       == [("COMPLETED",)], 60, "the big run to complete")
        finally:
            assert d.stop() == 0, d.output()
    finally:
        hold.unlink(missing_ok=True)
        cluster.stop()


def test_a_run_that_finds_the_object_store_down_between_stages_waits_for_it_not_fails(
        cluster, s3, tmp_path):
    """Before each stage the engine checks the outputs it will read; with the bucket down that
    check raised ObjectStoreError in the run's thread, which the daemon recorded as a crash:
    the run FAILED ("the thread of run ... failed"), its retrying stage left RETRYING.  The
    bucket's outage is not the run's fault: the run is suspended, starts again, and completes
    once the bucket answers, its rows loaded once."""
    from .processes import Gate

    marker, hold = tmp_path / "marker", tmp_path / "hold"
    gate = Gate(s3.port)
    hold.touch()
    (tmp_path / "remote.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: remote}}
        duckdb: {{inline_tables: false}}   # outputs as files through the bucket
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/remote", pattern: "*.csv", stable_for: PT0.2S}}
        stages:
          - {{name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: tests.cluster.stages.MarkedTransformer, config: {{marker: "{marker}", hold: "{hold}"}}, retry_attempts: 2, retry_delay: PT1S}}
          - {{name: load, type: loader, class: tests.daemon.stages.CountLoader, retry_attempts: 0}}
        """))
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: remote, config_file: remote.yaml}\n"
                      + dask_section(cluster, s3, "gate").replace(s3.endpoint, gate.endpoint))
    state = tmp_path / "state"
    try:
        d = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
        try:
            drop_csv(state / "inbox" / "remote", "one.csv", rows=4)
            wait_until(lambda: lines(marker), 60, "the transform to start on a worker")
            gate.shut()   # the bucket goes down while the transform runs
            hold.unlink()
            wait_until(lambda: any(r.get("event") == "run_waits_for_object_store"
                                   for r in d.records())
                       or query(state, "SELECT state FROM runs") == [("FAILED",)], 90,
                       "the run to wait for the bucket (or fail)")
            assert query(state, "SELECT state, error FROM runs")[0][0] != "FAILED", \
                query(state, "SELECT error FROM runs")
            gate.open()
            wait_until(lambda: query(state, "SELECT state FROM runs") in (
                [("COMPLETED",)], [("FAILED",)]), 120, "the run to end once the bucket is back")
            assert query(state, "SELECT state FROM runs") == [("COMPLETED",)], \
                query(state, "SELECT error FROM runs")
            reason = query(state, "SELECT json_extract(payload, '$.reason') FROM events "
                                  "WHERE type = 'run.suspended'")
            assert reason and "object store could not be reached" in reason[0][0], reason
        finally:
            assert d.stop() == 0, d.output()
    finally:
        hold.unlink(missing_ok=True)
        gate.shut()
    from ..daemon.harness import traces

    assert [t["rows"] for t in traces(state)
            if t.get("event") == "done" and t["stage"] == "load"] == [4]
    assert not query(state, "SELECT stage, state FROM stage_runs WHERE state IN "
                            "('RUNNING', 'RETRYING')")


def test_ahgd_status_says_where_attempts_run_the_scheduler_and_its_workers(cluster, s3, tmp_path):
    """``ahgd status`` showed "workers 0/2 busy" and "workers: none" (this host's pool) with the
    Dask executor, and nothing of the scheduler, whether it was connected, or its workers: the
    dashboard document had them (daemon.cluster), the text did not."""
    (tmp_path / "p.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: p}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor}
        """))
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n"
                      + dask_section(cluster, s3, "status"))
    state = tmp_path / "state"
    d = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
    try:
        proc = subprocess.run([*ahgd_exe(), "status", "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=60,
                              env=child_env({"COLUMNS": "250", "PYTHONIOENCODING": "utf-8"}))
    finally:
        assert d.stop() == 0, d.output()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"Dask cluster {cluster.address} connected" in out, out
    assert "2 workers" in out and "outputs in s3://ahgd-test/status" in out, out
    assert out.count("2 threads, cpu=2, memory=4096; idle") == 2, out


def test_a_bucket_that_does_not_exist_fails_the_run_naming_it_instead_of_waiting(
        cluster, s3, tmp_path):
    """A run that met the object store's failure waited for it (suspended, started again)
    with no end: a bucket that does not exist, or refused credentials, never answer
    otherwise, so the run went round for ever, its history growing.  Such a setting fails
    the run at once, the error naming the bucket and the fix; `ahgd retry` takes it up once
    the setting is mended."""
    (tmp_path / "remote.yaml").write_text(textwrap.dedent("""\
        pipeline: {name: remote}
        triggers:
          - {type: drop_folder, path: "${state_dir}/inbox/remote", pattern: "*.csv", stable_for: PT0.2S}
        stages:
          - {name: extract, type: extractor, class: tests.daemon.stages.CsvExtractor, retry_attempts: 2, retry_delay: PT1S}
          - {name: load, type: loader, class: tests.daemon.stages.CountLoader, retry_attempts: 0}
        """))
    master = tmp_path / "master.yaml"
    master.write_text("pipelines:\n  - {name: remote, config_file: remote.yaml}\n"
                      + dask_section(cluster, s3, "nobucket").replace(
                          "s3://ahgd-test/", "s3://no-such-bucket-ahgd/"))
    state = tmp_path / "state"
    d = Daemon(master, state, extra_env=S3_ENV).wait_ready(60)
    try:
        drop_csv(state / "inbox" / "remote", "one.csv", rows=4)
        wait_until(lambda: query(state, "SELECT state FROM runs") == [("FAILED",)], 90,
                   "the run to fail")
        [(error,)] = query(state, "SELECT error FROM runs")
        assert "the bucket 'no-such-bucket-ahgd' does not exist at" in error, error
        assert "create it, or fix daemon.object_store.url" in error, error
        assert not query(state, "SELECT seq FROM events WHERE type = 'run.suspended'")
        # not retried: waiting does not create a bucket (it was tried three times)
        assert query(state, "SELECT stage, attempt FROM stage_runs") == [("extract", 1)]
        # the file is good: the bucket's setting failed the run, the file is not quarantined
        assert not list((state / "quarantine").rglob("*.csv"))
    finally:
        assert d.stop() == 0, d.output()

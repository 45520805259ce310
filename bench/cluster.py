"""Scale-out costs: stage attempts on a Dask cluster (loopback) against this host's worker pool.

    python bench/cluster.py [--attempts 200] [--files 1000] [--reps 95] [--kills 5] [--skip throughput,datapath]

Starts a real ``dask scheduler``, ``dask worker`` processes and moto's S3
server on 127.0.0.1 (as tests/cluster does; needs ``pip install -e '.[test]'``),
then measures, on the same machine in the same run:

1. **per-stage overhead**: ``--attempts`` one-stage attempts (the stage returns
   an inline value: no file moves) submitted one after another straight to the
   executor; the time from ``submit`` to the outcome, p50 and p95, for the
   warm local pool and for ``DaskExecutor`` (one worker).  Target: Dask p50 <= 15 ms.
2. **the daemon's extra memory with a Dask client**: the RSS of a fresh
   process holding a warm ``ProcessExecutor``, then after it has connected a
   ``DaskExecutor`` and run 20 attempts through it.  Target: <= 50 MB.
3. **a worker killed**: ``--kills`` times, an attempt (a stage sleeping 30 s)
   runs on one of two workers; that worker gets SIGKILL; the time from the
   kill to the attempt's outcome (``WorkerDied``).  Target: <= 2 s.
4. **throughput**: ``--files`` (1,000) small CSV files dropped at once into the
   folder of bench/latency.py's 4-stage pipeline (read, transform, validate,
   load), through the real daemon (``ahgd daemon``, ``max_workers: 4``), as
   bench/latency.py measures it: runs/s from the first ``file.arrived`` to the
   last ``run.completed``, with the daemon's own pool, and with Dask with 1 and
   with 2 workers (2 threads each; the loader runs on the daemon's host).
5. **the data path**: bench/datapath.py's mortality_regions pipeline on a MORT
   table of ``--reps`` copies (95: ~1.5 M rows), with the process executor and
   through Dask and the object store (median of ``--repeat``).  Target: <= 1.5x.

Timings are not pass/fail: each is printed beside its target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipelines import BasePipeline, load_pipeline  # noqa: E402
from pipelines.execution.runner import StageTask  # noqa: E402
from tests.cluster.processes import S3_ENV, DaskCluster, S3Server, stop  # noqa: E402

os.environ.update(S3_ENV)


class Noop(BasePipeline):
    def define_stages(self):
        return ["noop"]

    def execute_stage(self, stage_name, context):
        return {"i": 1}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latencies(ex, root: Path, attempts: int) -> list[float]:
    from bench.cluster import Noop as Importable  # not __main__'s: a Dask worker imports it

    p = Importable("noop", state_dir=root / "noop", max_retries=0)
    out = []
    for i in range(attempts + 5):
        task = StageTask(f"r{i}", "noop", "noop", 1, str(root / "noop"), {}, {}, (), {}, None, {},
                         timeout=60)
        t0 = time.perf_counter()
        outcome = ex.submit(p, task).result(timeout=60)
        if not outcome.ok:
            raise SystemExit(f"attempt failed: {outcome.error}")
        if i >= 5:  # the first few warm the worker up
            out.append((time.perf_counter() - t0) * 1000)
    return out


MEMORY_PROBE = """
import os, sys, time
sys.path.insert(0, {repo!r})
from pipelines.execution.pool import ProcessExecutor
from bench.cluster import latencies
from pathlib import Path

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
local = ProcessExecutor(1)
latencies(local, Path({root!r}), 20)
before = rss()
from pipelines.execution.cluster import DaskExecutor
ex = DaskExecutor({address!r}, object_store={store!r}, owner="bench-memory")
latencies(ex, Path({root!r}), 20)
time.sleep(1)
print(before, rss())
ex.shutdown(); local.shutdown()
"""


def extra_memory(cluster, s3, root: Path) -> tuple[float, float]:
    code = MEMORY_PROBE.format(repo=str(REPO), root=str(root), address=cluster.address,
                               store=s3.settings("memory"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    before, after = map(float, proc.stdout.split()[-2:])
    return before, after


def throughput(root: Path, files: int, workers: int, cluster=None, s3=None) -> dict:
    """``files`` CSV files dropped at once into the folder of bench/latency.py's 4-stage
    pipeline, through the real daemon (``ahgd daemon``, ``max_workers: workers``): its own
    pool, or (``cluster``) the Dask cluster with the object store; bench/latency.py's
    measure_throughput (runs/s from the first ``file.arrived`` to the last ``run.completed``)."""
    import latency as lat

    root.mkdir(parents=True, exist_ok=True)
    master = lat.write_config(root, workers)
    if cluster is not None:  # the same master file, with the executor and the bucket
        text = master.read_text()
        old = f"daemon: {{max_workers: {workers}, shutdown_grace: PT10S}}"
        assert old in text, text
        store = s3.settings(uuid.uuid4().hex[:6])
        master.write_text(text.replace(old, (
            f"daemon: {{max_workers: {workers}, shutdown_grace: PT10S, executor: {{type: dask, "
            f"scheduler: '{cluster.address}', local_workers: 2}}, object_store: {{url: "
            f"'{store['url']}', endpoint_url: '{store['endpoint_url']}', region: us-east-1}}}}")))
    state = root / "state"
    daemon = lat.DaemonProcess(master, state, root / "daemon.log")
    history = None
    try:
        daemon.wait_ready(60)
        history = lat.History(state)
        found = lat.measure_throughput(history, state / "inbox" / "throughput", root / "staging",
                                       files, 20, 900.0)
    finally:
        if history is not None:
            history.close()
        daemon.stop()
    if found["failed"] or found["lost"]:
        raise SystemExit(f"{found['failed']} runs failed, {found['lost']} files lost; the "
                         f"daemon's log: {root / 'daemon.log'}")
    return found


def kill_times(cluster, dask, root: Path, kills: int) -> list[float]:
    """Seconds from a worker's SIGKILL to the failed outcome of the attempt it ran."""
    import signal

    from tests.cluster.stages import behaving

    if "k1" not in cluster.named:
        cluster.add_worker("k1", resources="cpu=8,memory=8192")
    out = []
    ex = dask()
    try:
        for i in range(kills):
            cluster.restart_exited_workers()
            cluster.wait_for_workers(2)
            root.mkdir(parents=True, exist_ok=True)
            marker = root / f"kill{i}.marker"
            task = StageTask(f"k{i}", "behaving", "work", 1, str(root / "kill"),
                             {"do": "sleep", "seconds": 30, "marker": str(marker)}, {}, (), {},
                             None, {}, timeout=120)
            future = ex.submit(behaving(root / "kill"), task)
            deadline = time.monotonic() + 30
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if future.done():
                raise SystemExit(f"the attempt ended before its worker was killed: "
                                 f"{future.result().error}")
            os.kill(cluster.worker_pid_running(f"ahgd-k{i}-work"), signal.SIGKILL)
            killed = time.monotonic()
            outcome = future.result(timeout=60)
            out.append(time.monotonic() - killed)
            if outcome.error_type != "WorkerDied":
                raise SystemExit(f"the attempt ended {outcome.error_type}: {outcome.error}")
    finally:
        ex.shutdown()
    cluster.restart_exited_workers()
    extra = cluster.named.pop("k1")  # back to one worker
    cluster.workers.remove(extra)
    stop(extra)
    return out


def datapath(ex_factory, root: Path, reps: int, repeat: int) -> tuple[list[float], list[float]]:
    import datapath as dp

    root.mkdir(parents=True, exist_ok=True)
    csv_path = root / "mort_big.csv"
    rows = dp.generate(csv_path, reps)
    print(f"   input: {rows:,} rows, {csv_path.stat().st_size / 1e6:.0f} MB")
    local, remote = [], []
    for i in range(repeat):
        wall, _mb, _run = dp.run_pipeline(csv_path, root / f"local{i}", None)
        local.append(wall)
        pipeline = load_pipeline(dp.YAML, state_dir=root / f"dask{i}")
        ex = ex_factory()
        try:
            t0 = time.perf_counter()
            ctx = pipeline.run(input_file=csv_path, executor=ex)
            remote.append(time.perf_counter() - t0)
        finally:
            ex.shutdown()
        if ctx.state != "COMPLETED":
            raise SystemExit(f"the Dask run failed: {ctx.error}")
        print(f"   run {i + 1}: process executor {local[-1]:.2f} s, Dask + object store "
              f"{remote[-1]:.2f} s")
    return local, remote


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attempts", type=int, default=200)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=95)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--skip", default="",
                    help="comma-separated: overhead,memory,kill,throughput,datapath")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from pipelines.execution.cluster import DaskExecutor
    from pipelines.execution.pool import ProcessExecutor

    root = Path(tempfile.mkdtemp(prefix="ahgd-cluster-", dir=args.dir))
    s3 = cluster = None
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    try:
        s3 = S3Server(root)
        cluster = DaskCluster(root / "dask", workers=1, resources="cpu=8,memory=8192")

        def dask(**kw):
            return DaskExecutor(cluster.address, object_store=s3.settings(uuid.uuid4().hex[:6]),
                                owner=f"bench:{root}", **kw)

        if "overhead" not in skip:
            print(f"1. per-stage overhead, {args.attempts} attempts one after another (ms):")
            for name, ex in (("local pool", ProcessExecutor(1)), ("Dask, 1 worker", dask())):
                try:
                    ms = latencies(ex, root / name.replace(" ", "-"), args.attempts)
                finally:
                    ex.shutdown()
                print(f"   {name:<16} p50 {statistics.median(ms):6.2f}   p95 {percentile(ms, 95):6.2f}")
            print("   (target: Dask p50 <= 15 ms)")
        if "memory" not in skip:
            before, after = extra_memory(cluster, s3, root / "memory")
            print(f"2. daemon RSS with the local pool {before:.0f} MB; with a Dask client too "
                  f"{after:.0f} MB: +{after - before:.0f} MB (target: <= 50 MB)")
        if "kill" not in skip:
            took = kill_times(cluster, dask, root / "kill", args.kills)
            print(f"3. a worker killed (SIGKILL) to its attempt failed, {args.kills} times (s): "
                  f"median {statistics.median(took):.2f}, max {max(took):.2f} (target: <= 2 s)")
        if "throughput" not in skip:
            print(f"4. throughput, {args.files} files dropped at once, 4 stages, the real daemon "
                  f"with max_workers 4 (runs/s):")
            found = throughput(root / "tl", args.files, 4)
            print(f"   local pool (4 processes)   {found['runs'] / found['elapsed']:7.1f}")
            for workers in (1, 2):
                if workers == 2 and "w1" not in cluster.named:
                    cluster.add_worker("w1", resources="cpu=8,memory=8192")
                cluster.restart_exited_workers()
                cluster.wait_for_workers(workers)
                found = throughput(root / f"td{workers}", args.files, 4, cluster, s3)
                print(f"   Dask, {workers} worker(s), 2 threads each  "
                      f"{found['runs'] / found['elapsed']:7.1f}   (the loader runs on the "
                      "daemon's host)")
        if "datapath" not in skip:
            print(f"5. data path, MORT x{args.reps}:")
            local, remote = datapath(dask, root / "datapath", args.reps, args.repeat)
            lm, rm = statistics.median(local), statistics.median(remote)
            print(f"   process executor {lm:.2f} s; Dask + object store {rm:.2f} s: ratio "
                  f"{rm / lm:.2f} (target: <= 1.5)")
    finally:
        if cluster is not None:
            cluster.stop()
        if s3 is not None:
            s3.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

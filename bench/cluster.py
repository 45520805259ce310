"""Scale-out costs: stage attempts on a Dask cluster (loopback) against this host's worker pool.

    python bench/cluster.py [--attempts 200] [--files 1000] [--reps 95] [--skip throughput,datapath]

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
3. **throughput**: ``--files`` small CSV files, each one run of the 4-stage
   pipeline of bench/latency.py (read, transform, validate, load), 4 runs at
   a time from threads sharing one executor: the local pool (4 processes), and
   Dask with 1 and with 2 workers (2 threads each; the loader runs on this host).
4. **the data path**: bench/datapath.py's mortality_regions pipeline on a MORT
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
import textwrap
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipelines import BasePipeline, load_pipeline  # noqa: E402
from pipelines.execution.runner import StageTask  # noqa: E402
from tests.cluster.processes import S3_ENV, DaskCluster, S3Server  # noqa: E402

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


def throughput_pipeline(root: Path) -> Path:
    yaml = root / "throughput.yaml"
    yaml.write_text(textwrap.dedent("""\
        pipeline: {name: throughput}
        stages:
          - {name: extract, type: extractor, class: bench.latency_stages.CsvExtract}
          - {name: transform, type: transformer, class: bench.latency_stages.Transform}
          - {name: validate, type: validator, class: bench.latency_stages.Validate}
          - {name: load, type: loader, class: bench.latency_stages.Load}
        """))
    return yaml


def throughput(ex, root: Path, files: int, yaml: Path) -> float:
    inputs = root / "files"
    inputs.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = inputs / f"f{i}.csv"
        path.write_text("id,value,label\n" + "".join(f"{j},{i + j},x{j}\n" for j in range(20)))
        paths.append(path)
    state = root / f"state-{uuid.uuid4().hex[:6]}"
    pipeline = load_pipeline(yaml, state_dir=state)
    queue, failed = list(paths), []
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if not queue:
                    return
                path = queue.pop()
            ctx = pipeline.run(input_file=path, executor=ex)
            if ctx.state != "COMPLETED":
                failed.append(ctx.error)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"{len(failed)} runs failed, the first: {failed[0]}")
    return files / took


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
    ap.add_argument("--skip", default="", help="comma-separated: overhead,memory,throughput,datapath")
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
        if "throughput" not in skip:
            yaml = throughput_pipeline(root)
            print(f"3. throughput, {args.files} files through 4 stages, 4 runs at a time (runs/s):")
            ex = ProcessExecutor(4)
            try:
                print(f"   local pool (4 processes)  {throughput(ex, root / 'tl', args.files, yaml):7.1f}")
            finally:
                ex.shutdown()
            for workers in (1, 2):
                if workers == 2:
                    cluster.add_worker("w1", resources="cpu=8,memory=8192")
                    cluster.wait_for_workers(2)
                ex = dask(max_workers=4)
                try:
                    rate = throughput(ex, root / f"td{workers}", args.files, yaml)
                finally:
                    ex.shutdown()
                print(f"   Dask, {workers} worker(s)           {rate:7.1f}")
        if "datapath" not in skip:
            print(f"4. data path, MORT x{args.reps}:")
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

"""The real daemon: drop-folder latency, throughput over 1,000 files, and idle CPU and memory.

    python bench/latency.py [--files 200] [--throughput-files 1000] [--idle-seconds 60]

Starts ``ahgd daemon`` as a subprocess on a temp state directory with two
pipelines whose stages live in ``bench/latency_stages.py``, then measures:
  1. latency: a file's close in the drop folder to its ``run.started`` event
     (p50, p95), one file at a time, the daemon idle between them (each run
     has completed before the next file is written);
  2. throughput: 1,000 small CSV files moved into the folder of a 4-stage
     pipeline at once (extract reads the CSV into DuckDB; transform, validate
     and load are small SQL), runs/s from the first ``file.arrived`` to the
     last ``run.completed``;
  3. idle: the daemon's CPU (% of one core) and RSS over ``--idle-seconds``
     with nothing to do, and its worker processes' RSS, summed.
Event times are the ``ts`` of the events in history.db; file close times are
``time.time()`` right after ``close()``.  Drop folders use the default
``stable_for`` and the inotify observer (a local disk).
Targets: p50 <= 20 ms, p95 <= 100 ms; throughput >= 50 runs/s on 2 cores; idle CPU <= 1 %
of a core, RSS <= 120 MB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

REPO = Path(__file__).resolve().parents[1]

TARGET_P50_MS = 20.0
TARGET_P95_MS = 100.0
TARGET_IDLE_CPU_PCT = 1.0
TARGET_IDLE_RSS_MB = 120.0
#: issue 18 item 2: bursts of small files through the 4-stage pipeline, 2 workers
TARGET_RUNS_PER_S = 50.0
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "PARKED")
STAGES = "bench.latency_stages"


# --------------------------------------------------------------------------- the daemon


def write_config(root: Path, workers: int, monitoring: dict[str, Any] | None = None) -> Path:
    """A master file with the latency pipeline (1 stage) and the throughput pipeline (4).

    ``monitoring``, if given, becomes ``daemon.monitoring`` (e.g. ``{"enabled": False}``);
    otherwise the daemon's defaults apply.
    """
    (root / "latency.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: latency}}
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/latency", pattern: "*.csv"}}
        stages:
          - {{name: extract, type: extractor, class: {STAGES}.Touch, retry_attempts: 0}}
        """))
    (root / "throughput.yaml").write_text(textwrap.dedent(f"""\
        pipeline: {{name: throughput}}
        triggers:
          - {{type: drop_folder, path: "${{state_dir}}/inbox/throughput", pattern: "*.csv"}}
        stages:
          - {{name: extract, type: extractor, class: {STAGES}.CsvExtract, retry_attempts: 0}}
          - {{name: transform, type: transformer, class: {STAGES}.Transform, retry_attempts: 0}}
          - {{name: validate, type: validator, class: {STAGES}.Validate, retry_attempts: 0}}
          - {{name: load, type: loader, class: {STAGES}.Load, retry_attempts: 0}}
        """))
    master = root / "master.yaml"
    extra = "" if monitoring is None else f", monitoring: {json.dumps(monitoring)}"  # JSON is YAML
    master.write_text(textwrap.dedent(f"""\
        pipelines:
          - {{name: latency, config_file: latency.yaml}}
          - {{name: throughput, config_file: throughput.yaml}}
        daemon: {{max_workers: {workers}, shutdown_grace: PT10S{extra}}}
        """))
    return master


def ahgd_command() -> list[str]:
    exe = Path(sys.executable).with_name("ahgd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ahgd_daemon"]


class DaemonProcess:
    """``ahgd daemon`` in its own session, its JSON log in a file; stop() always ends it."""

    def __init__(self, config: Path, state_dir: Path, log_path: Path, extra_args: Sequence[str] = ()):
        env = {k: v for k, v in os.environ.items()
               if k not in ("AHGD_STATE_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.log_path = log_path
        self._out = open(log_path, "w")
        cmd = [*ahgd_command(), "daemon", "--config", str(config), "--state-dir", str(state_dir),
               "--json-logs", *extra_args]
        # a session of its own: Ctrl-C reaches this script, which then stops the daemon itself
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO, start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited with code {self.proc.returncode}:\n{self.tail()}")
            if '"daemon_ready"' in self.log_path.read_text():
                return
            time.sleep(0.05)
        raise SystemExit(f"the daemon was not ready after {timeout:g}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._out.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL (the daemon and its workers' process groups) after ``timeout``."""
        if self.proc.poll() is None:
            workers = _children(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"the daemon did not stop within {timeout:g}s of SIGTERM; sending SIGKILL")
                self.proc.kill()
                self.proc.wait(timeout=30)
            for p in workers:  # workers leave when the daemon's socket closes; make sure
                try:
                    p.wait(timeout=5)
                except psutil.TimeoutExpired:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        self._out.close()
        return self.proc.returncode


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# --------------------------------------------------------------------------- reading the log


class History:
    """Reads new events from history.db incrementally (read-only, as any tool may)."""

    def __init__(self, state_dir: Path):
        self.db = state_dir / "history.db"
        self.conn: sqlite3.Connection | None = None
        self.last_seq = 0
        self.arrived: dict[tuple[str, str], tuple[str, float]] = {}  # (pipeline, name) -> run_id, ts
        self.started: dict[str, float] = {}
        self.ended: dict[str, tuple[str, float]] = {}
        self.quarantined: dict[str, str] = {}

    def poll(self) -> None:
        if self.conn is None:
            if not self.db.exists():
                return
            self.conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        rows = self.conn.execute(
            "SELECT seq, ts, run_id, type, payload FROM events WHERE seq > ? ORDER BY seq",
            (self.last_seq,)).fetchall()
        for seq, ts, run_id, kind, payload in rows:
            self.last_seq = seq
            t = event_time(ts)
            if kind == "file.arrived":
                p = json.loads(payload)
                self.arrived[(p["pipeline"], p["name"])] = (run_id, t)
            elif kind == "run.started":
                self.started.setdefault(run_id, t)
            elif kind in ("run.completed", "run.failed", "run.cancelled", "run.parked"):
                self.ended[run_id] = (kind, t)
            elif kind in ("file.quarantined", "file.duplicate"):
                p = json.loads(payload)
                self.quarantined[p["name"]] = p.get("reason") or kind

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        self.poll()
        return self.conn.execute(sql, params).fetchall() if self.conn else []

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def event_time(ts: str) -> float:
    """history.db timestamps are ISO 8601 UTC with microseconds and a Z."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


def csv_text(i: int, rows: int) -> str:
    return "id,value,label\n" + "".join(f"{i * 100000 + r},{r},row{i}_{r}\n" for r in range(rows))


# --------------------------------------------------------------------------- the three measurements


def measure_latency(history: History, inbox: Path, files: int, gap: float, timeout: float) -> dict[str, Any]:
    """One file at a time: close -> run.started (and close -> file.arrived), in ms."""
    inbox.mkdir(parents=True, exist_ok=True)
    started, arrived = [], []
    for i in range(files):
        name = f"lat-{i:05d}.csv"
        with open(inbox / name, "w") as f:
            f.write(csv_text(i, 3))
        closed = time.time()

        def run_of() -> str | None:
            history.poll()
            hit = history.arrived.get(("latency", name))
            return hit[0] if hit and hit[0] in history.started else None

        run_id = wait_for(run_of, timeout, 0.002, f"the run.started of {name}")
        started.append((history.started[run_id] - closed) * 1e3)
        arrived.append((history.arrived[("latency", name)][1] - closed) * 1e3)
        wait_for(lambda: history.poll() or run_id in history.ended, timeout, 0.005, f"the run of {name} to end")
        time.sleep(gap)  # let the daemon's loop go back to sleep: it is idle when the next file lands
    return {"started": started, "arrived": arrived}


def measure_throughput(history: History, inbox: Path, staging: Path, files: int, rows: int,
                       timeout: float, daemon_pid: int | None = None,
                       round_no: int = 0) -> dict[str, Any]:
    """Move ``files`` CSV files into the folder at once; wait until every run has ended.

    With ``daemon_pid``, also the CPU time the daemon and its workers spent meanwhile."""
    staging.mkdir(parents=True, exist_ok=True)
    inbox.mkdir(parents=True, exist_ok=True)
    names = [f"thr-{round_no}-{i:05d}.csv" for i in range(files)]
    for i, name in enumerate(names):   # other rows each round: no file is a duplicate
        (staging / name).write_text(csv_text(10**6 + round_no * files + i, rows))
    cpu0 = _cpu_split(daemon_pid)
    t_drop = time.time()
    for name in names:
        os.rename(staging / name, inbox / name)  # a complete file appears: the way `mv` drops
    t_dropped = time.time()

    def all_ended() -> bool:
        history.poll()
        ids = [history.arrived[("throughput", n)][0] for n in names if ("throughput", n) in history.arrived]
        lost = sum(1 for n in names if n in history.quarantined)
        return len(ids) + lost >= files and all(r in history.ended for r in ids)

    wait_for(all_ended, timeout, 0.25, f"{files} throughput runs to end")
    cpu1 = _cpu_split(daemon_pid)
    ids = [history.arrived[("throughput", n)][0] for n in names if ("throughput", n) in history.arrived]
    first_arrival = min(history.arrived[("throughput", n)][1] for n in names if ("throughput", n) in history.arrived)
    ends = [history.ended[r] for r in ids]
    completed = sum(1 for kind, _ in ends if kind == "run.completed")
    last_end = max(t for _, t in ends)
    stage_rows = history.query(
        "SELECT s.stage, COUNT(*), AVG(s.wall_s), AVG(s.cpu_s), "
        "AVG((julianday(s.ended_at) - julianday(s.started_at)) * 86400.0), AVG(s.peak_rss_mb) "
        "FROM stage_runs s JOIN runs r ON r.run_id = s.run_id WHERE r.pipeline = 'throughput' "
        f"AND r.run_id IN ({','.join('?' * len(ids))}) "
        "GROUP BY s.stage ORDER BY MIN(s.started_at)", tuple(ids))
    run_rows = history.query(
        "SELECT AVG((julianday(ended_at) - julianday(started_at)) * 86400.0), "
        "AVG((julianday(started_at) - julianday(requested_at)) * 86400.0) "
        f"FROM runs WHERE pipeline = 'throughput' AND run_id IN ({','.join('?' * len(ids))})",
        tuple(ids))
    return {"files": files, "runs": len(ids), "completed": completed, "failed": len(ids) - completed,
            "lost": files - len(ids), "drop_s": t_dropped - t_drop, "elapsed": last_end - first_arrival,
            "stages": stage_rows, "run_avg_s": run_rows[0][0], "queue_avg_s": run_rows[0][1],
            "cpu_s": None if cpu0 is None or cpu1 is None else
            {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}}


def _cpu_split(daemon_pid: int | None) -> dict[str, float] | None:
    """CPU seconds so far of the daemon and of its workers (summed): user + system in
    ``daemon`` / ``workers``, the system (kernel) part in ``*_sys``, minor page faults in
    ``*_faults`` (a fault is a page of memory the process touched for the first time, or
    again after giving it back)."""
    if daemon_pid is None:
        return None
    try:
        daemon = psutil.Process(daemon_pid)
        out = dict.fromkeys(("daemon", "daemon_sys", "daemon_faults",
                             "workers", "workers_sys", "workers_faults"), 0.0)
        for who, procs in (("daemon", [daemon]), ("workers", daemon.children(recursive=True))):
            for p in procs:
                try:
                    times = p.cpu_times()
                    out[who] += times.user + times.system
                    out[f"{who}_sys"] += times.system
                    out[f"{who}_faults"] += _minor_faults(p.pid)
                except (psutil.NoSuchProcess, OSError):
                    pass
        return out
    except psutil.NoSuchProcess:
        return None


def _minor_faults(pid: int) -> int:
    """Field 10 of /proc/<pid>/stat (0 where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[7])


def measure_idle(daemon_pid: int, seconds: float) -> dict[str, Any]:
    """CPU time and RSS of the daemon (and, separately, its workers) over ``seconds`` of nothing."""
    daemon = psutil.Process(daemon_pid)
    workers = daemon.children(recursive=True)
    t0 = time.monotonic()
    c0 = daemon.cpu_times()
    w0 = {w.pid: sum(w.cpu_times()[:2]) for w in workers}
    time.sleep(seconds)
    c1 = daemon.cpu_times()
    elapsed = time.monotonic() - t0
    w_cpu = 0.0
    for w in workers:
        try:
            w_cpu += sum(w.cpu_times()[:2]) - w0[w.pid]
        except psutil.NoSuchProcess:
            pass
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"elapsed": elapsed, "cpu_pct": 100.0 * cpu / elapsed, "rss_mb": rss_mb(daemon),
            "workers": len(workers), "workers_rss_mb": sum(rss_mb(w) for w in workers),
            "workers_cpu_pct": 100.0 * w_cpu / elapsed}


def rss_mb(p: psutil.Process) -> float:
    try:
        return p.memory_info().rss / 2**20
    except psutil.NoSuchProcess:
        return 0.0


# --------------------------------------------------------------------------- report


def verdict(value: float, target: float, unit: str) -> str:
    return f"target <= {target:g} {unit}   ratio {value / target:5.2f}x   {'ok' if value <= target else 'OVER'}"


def runs_per_s(thr: dict[str, Any]) -> float:
    return thr["completed"] / thr["elapsed"] if thr["elapsed"] > 0 else float("nan")


def report(lat: dict[str, Any], thr: dict[str, Any] | None, idle: dict[str, Any] | None,
           ready_rss: tuple[float, float], workers: int,
           rounds: list[dict[str, Any]] | None = None) -> None:
    s, a = lat["started"], lat["arrived"]
    print(f"\n1. file close -> run.started, {len(s)} files one at a time, the daemon idle between:")
    p50, p95 = percentile(s, 50), percentile(s, 95)
    print(f"   p50 {p50:7.2f} ms   {verdict(p50, TARGET_P50_MS, 'ms')}")
    print(f"   p95 {p95:7.2f} ms   {verdict(p95, TARGET_P95_MS, 'ms')}")
    print(f"   min {min(s):.2f}  mean {statistics.mean(s):.2f}  max {max(s):.2f} ms")
    print(f"   of which close -> file.arrived (event ts, before hashing and moving the file): "
          f"p50 {percentile(a, 50):.2f}, p95 {percentile(a, 95):.2f} ms;"
          f" file.arrived -> run.started: p50 {percentile([x - y for x, y in zip(s, a)], 50):.2f} ms")
    print("   for scale: Dagster's file sensors poll every 30 s by default, Airflow's FileSensor every 60 s")
    if thr is not None:
        rate = runs_per_s(thr)
        print(f"\n2. throughput: {thr['files']} files moved into the folder at once "
              f"(in {thr['drop_s'] * 1e3:.0f} ms), 4-stage pipeline, {workers} worker processes:")
        if rounds and len(rounds) > 1:
            def one(r: dict[str, Any]) -> str:
                c, n = r.get("cpu_s"), r["completed"]
                cpu = (f" (daemon {c['daemon'] / n * 1e3:.1f}, workers "
                       f"{c['workers'] / n * 1e3:.1f} ms)") if c and n else ""
                return f"{runs_per_s(r):.1f}{cpu}"

            print(f"   {len(rounds)} rounds, one after another, runs/s (CPU a run): "
                  f"{', '.join(one(r) for r in rounds)}; the median round below")
        print(f"   {thr['completed']} runs completed, {thr['failed']} failed, {thr['lost']} not run "
              f"(quarantined or duplicate) in {thr['elapsed']:.2f} s (first file.arrived -> last "
              f"run.completed)")
        print(f"   {rate:.1f} runs/s  ({rate * 4:.1f} stages/s)   target >= {TARGET_RUNS_PER_S:g} runs/s"
              f" on 2 cores   ratio {rate / TARGET_RUNS_PER_S:5.2f}x   "
              f"{'ok' if rate >= TARGET_RUNS_PER_S else 'UNDER'}")
        cpu_run = sum((cpu or 0) for _, _, _, cpu, _, _ in thr["stages"])
        print(f"   worker CPU per run (the stages' cpu_s summed): {cpu_run * 1e3:.1f} ms")
        if thr.get("cpu_s") and thr["completed"]:
            n = thr["completed"]
            c = thr["cpu_s"]
            print(f"   CPU per run over the burst, by process: daemon {c['daemon'] / n * 1e3:.1f}"
                  f" ms, workers {c['workers'] / n * 1e3:.1f} ms (50 runs/s on 2 cores"
                  f" leaves 40 ms for both)")
            print(f"     of which in the kernel: daemon {c['daemon_sys'] / n * 1e3:.1f} ms, workers"
                  f" {c['workers_sys'] / n * 1e3:.1f} ms; minor page faults per run: daemon"
                  f" {c['daemon_faults'] / n:.0f}, workers {c['workers_faults'] / n:.0f}")
        print(f"   a run took {thr['run_avg_s'] * 1e3:.1f} ms on average from run.started to its end"
              f" (queued {thr['queue_avg_s']:.1f} s on average before it started)")
        print("   per stage (averages): stage      wall_s in worker  cpu_s  started->ended  peak RSS")
        for stage, n, wall, cpu, span, peak in thr["stages"]:
            print(f"                         {stage:<10} {wall * 1e3:9.1f} ms  {(cpu or 0) * 1e3:6.1f} ms"
                  f"  {span * 1e3:9.1f} ms  {peak or 0:6.1f} MB   ({n} attempts)")
    if idle is not None:
        print(f"\n3. idle over {idle['elapsed']:.0f} s (after the work above):")
        print(f"   daemon CPU {idle['cpu_pct']:6.3f} % of one core   "
              f"{verdict(idle['cpu_pct'], TARGET_IDLE_CPU_PCT, '%')}")
        print(f"   daemon RSS {idle['rss_mb']:6.1f} MB              {verdict(idle['rss_mb'], TARGET_IDLE_RSS_MB, 'MB')}")
        print(f"   (daemon RSS right after daemon_ready: {ready_rss[0]:.1f} MB)")
        print(f"   {idle['workers']} worker processes: RSS {idle['workers_rss_mb']:.1f} MB summed "
              f"(after daemon_ready: {ready_rss[1]:.1f} MB), CPU {idle['workers_cpu_pct']:.3f} % of one core")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--files", type=int, default=200, help="files for the latency figure (default 200)")
    ap.add_argument("--throughput-files", type=int, default=1000,
                    help="files dropped at once for the throughput figure; 0 skips it (default 1000)")
    ap.add_argument("--throughput-rounds", type=int, default=1,
                    help="bursts one after another (the median is reported in full: on a shared "
                         "host one burst's figure moves with what else runs; default 1)")
    ap.add_argument("--rows", type=int, default=20, help="rows per throughput CSV file (default 20)")
    ap.add_argument("--idle-seconds", type=float, default=60.0,
                    help="how long to watch the idle daemon; 0 skips it (default 60)")
    ap.add_argument("--workers", type=int, default=2, help="the daemon's max_workers (default 2)")
    ap.add_argument("--gap", type=float, default=0.05,
                    help="seconds to wait after a latency run ends before the next file (default 0.05)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up waiting for the throughput runs after this many seconds (default 600)")
    ap.add_argument("--dir", default=os.getcwd(),
                    help="directory on the disk to use; a temp dir is made inside it and removed "
                         "afterwards (default: the current directory)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (state, daemon log) for inspection")
    args = ap.parse_args()
    if args.files < 1 or args.workers < 1 or args.throughput_rounds < 1:
        ap.error("--files, --workers and --throughput-rounds must be 1 or more")
    root = Path(tempfile.mkdtemp(prefix="ahgd-bench-latency-", dir=args.dir))
    state = root / "state"
    daemon = history = None
    try:
        config = write_config(root, args.workers)
        print(f"disk: {root}   {os.cpu_count()} CPUs   load average {os.getloadavg()[0]:.2f}")
        t0 = time.monotonic()
        daemon = DaemonProcess(config, state, root / "daemon.log")
        daemon.wait_ready(60)
        print(f"daemon pid {daemon.proc.pid} ready in {time.monotonic() - t0:.2f} s "
              f"({' '.join(ahgd_command())} daemon ...), {args.workers} worker processes")
        time.sleep(0.5)
        ready_rss = (rss_mb(psutil.Process(daemon.proc.pid)),
                     sum(rss_mb(w) for w in _children(daemon.proc.pid)))
        history = History(state)
        lat = measure_latency(history, state / "inbox" / "latency", args.files, args.gap, 30.0)
        thr, rounds = None, []
        if args.throughput_files > 0:
            for k in range(args.throughput_rounds):
                rounds.append(measure_throughput(
                    history, state / "inbox" / "throughput", root / "staging",
                    args.throughput_files, args.rows, args.timeout,
                    daemon_pid=daemon.proc.pid, round_no=k))
            thr = sorted(rounds, key=runs_per_s)[len(rounds) // 2]   # the median round
        idle = measure_idle(daemon.proc.pid, args.idle_seconds) if args.idle_seconds > 0 else None
        report(lat, thr, idle, ready_rss, args.workers, rounds)
        if daemon.proc.poll() is not None:
            print(f"\nthe daemon exited early with code {daemon.proc.returncode}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan the daemon
        if history is not None:
            history.close()
        if daemon is not None:
            code = daemon.stop()
            print(f"\ndaemon stopped (exit code {code})")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

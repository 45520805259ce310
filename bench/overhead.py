"""Orchestration overhead per stage, against the fsync'd SQLite commit floor, and start-up cost.

    python bench/overhead.py [--stages 50 200] [--repeat 5] [--dir DIR]

A chain of N no-op stages (each returns ``{"i": i}`` and reads the previous
stage's output with ``context.get_output(prev)``) is run through
``BasePipeline.run()``:
  * in process (``executor="inprocess"``: one stage at a time, each attempt on the
    engine's own thread);
  * in worker processes, warm: one ``ProcessExecutor`` pre-started and passed
    in as ``executor=``, after a warm-up run;
  * in worker processes, cold: a ``ProcessExecutor`` started for the run and
    shut down after it (what every ``run()`` paid before pools were shared);
  * a script's consecutive runs with ``executor="process"`` (the default): the
    process-wide warm pool kept across ``run()`` calls, for the pipeline class
    kept in a module (fresh-interpreter workers) and defined in the script
    (``__main__``: forked workers).
Per stage = wall time of ``run()`` / N (the stages themselves do nothing), with
the CPU time this process spent per stage beside it (all its threads; not the
worker processes');
"marginal" = (T(largest N) - T(smallest N)) / (difference in N), which leaves
out the per-run costs (run.requested/started/completed, the run lock).
Beside them, on the same disk in the same run: one INSERT + COMMIT in plain
sqlite3 (WAL, synchronous=FULL), the floor for the one durable commit each
stage needs (its ``stage.completed``, in one transaction with the next
``stage.started``); and, alternating with it, the same commit holding what a
stage really records (two events in a table indexed by run, two ``stage_runs``
rows): the least an event log could pay for it.  Then the whole-process
start-up of ``ahgd --help`` and ``python -c "import pipelines"`` (median wall time).
Targets: in-process <= 1.5x the floor measured in the same run, warm workers
<= 1 ms/stage, each start-up <= 0.4 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.base import BasePipeline  # noqa: E402

TARGET_INPROCESS_FLOORS = 1.5   # in-process per stage, in units of the floor
TARGET_WORKERS_MS = 1.0
#: the issue's figure for a script-defined pipeline (forked workers), ms/step of a 50-step chain
SCRIPT_DEFINED_MS = 2.0
TARGET_STARTUP_S = 0.4

# measured by the issue author on this machine, each peer with its default local persistence
PEERS_PER_STEP = [
    ("DBOS 3.4", "SQLite, one commit per step", 4.6),
    ("Luigi 3.8", "local scheduler", 4.1),
    ("Prefect 3.9", "marginal; states reach its database seconds later", 7.0),
    ("Dagster 1.13", "in process", 95.0),
]
PEERS_STARTUP = [("Luigi", 0.23), ("DBOS", 0.96), ("Dagster", 1.84), ("Prefect", 2.44)]


class ChainPipeline(BasePipeline):
    """N stages in a line; each reads the previous one's output and returns a small dict."""

    def __init__(self, n: int, **kwargs: Any):
        super().__init__(f"chain{n}", max_retries=0, **kwargs)
        self.stages = [f"s{i:03d}" for i in range(n)]

    def define_stages(self) -> list[str]:
        return self.stages

    def execute_stage(self, stage_name: str, context: Any) -> Any:
        i = int(stage_name[1:])
        if i:
            prev = context.get_output(self.stages[i - 1])
            if prev != {"i": i - 1}:
                raise AssertionError(f"stage {stage_name} read {prev!r}")
        return {"i": i}


def _chain_class() -> type:
    """ChainPipeline from an importable module, so worker processes import it rather than fork."""
    if __name__ != "__main__":
        return ChainPipeline
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import overhead  # this file again, as a module a fresh interpreter can import

    return overhead.ChainPipeline


# --------------------------------------------------------------------------- measurements


_PAYLOAD = '{"output": {"kind": "value", "format": "inline", "value": {"i": 1}}}'


def sqlite_floors(base: Path, n: int, block: int = 50) -> tuple[list[float], list[float]]:
    """Seconds per commit in plain sqlite3 (WAL, synchronous=FULL), in alternating blocks:
    (the floor: one INSERT + COMMIT; what a stage must commit: its ``stage.completed`` and the
    next ``stage.started`` in an events table indexed by run, and their two ``stage_runs``
    rows).  The second is the least any event log recording the same could pay; what the
    in-process figure adds to it is the engine's Python and the rest of the SQL."""
    def connect(name: str, schema: list[str]) -> sqlite3.Connection:
        conn = sqlite3.connect(base / name, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for sql in schema:
            conn.execute(sql)
        return conn

    floor = connect("floor.db", ["CREATE TABLE events (seq INTEGER PRIMARY KEY, ts TEXT, "
                                 "run_id TEXT, stage TEXT, type TEXT, payload TEXT)"])
    stage = connect("stage.db", [
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, ts TEXT, run_id TEXT, stage TEXT, "
        "attempt INTEGER, type TEXT, payload TEXT)",
        "CREATE INDEX events_by_run ON events(run_id, seq)",
        "CREATE TABLE stage_runs (run_id TEXT, stage TEXT, attempt INTEGER, state TEXT, "
        "started_at TEXT, ended_at TEXT, detail TEXT, PRIMARY KEY (run_id, stage, attempt)) "
        "WITHOUT ROWID"])
    ts, run = "2026-01-01T00:00:00.000000Z", "chain200-20260101T000000Z-0123456789ab"

    def one_floor(i: int) -> None:
        floor.execute("BEGIN IMMEDIATE")
        floor.execute("INSERT INTO events (ts, run_id, stage, type, payload) VALUES (?, ?, ?, ?, ?)",
                      (ts, "r", f"s{i}", "stage.completed", _PAYLOAD))
        floor.execute("COMMIT")

    def one_stage(i: int) -> None:
        stage.execute("BEGIN IMMEDIATE")
        stage.execute("INSERT INTO events (ts, run_id, stage, attempt, type, payload) VALUES "
                      "(?, ?, ?, 1, 'stage.completed', ?), (?, ?, ?, 1, 'stage.started', '{}')",
                      (ts, run, f"s{i}", _PAYLOAD, ts, run, f"s{i + 1}"))
        stage.execute("INSERT OR REPLACE INTO stage_runs VALUES (?, ?, 1, 'COMPLETED', ?, ?, ?), "
                      "(?, ?, 1, 'RUNNING', ?, NULL, '{}')",
                      (run, f"s{i}", ts, ts, _PAYLOAD, run, f"s{i + 1}", ts))
        stage.execute("COMMIT")

    times: tuple[list[float], list[float]] = ([], [])
    i = 0
    while len(times[0]) < n:
        for kind, one in enumerate((one_floor, one_stage)):
            for _ in range(min(block, n - len(times[kind]))):
                t0 = time.perf_counter()
                one(i)
                times[kind].append(time.perf_counter() - t0)
                i += 1
    floor.close()
    stage.close()
    return times


class Timing(float):
    """Wall seconds of one run, carrying the CPU seconds this process spent on it (``cpu``:
    every thread of this process, not the worker processes): on a shared machine the CPU
    figure moves less with the load than the wall time does."""

    cpu: float = 0.0


def _timed(pipeline: Any, n: int, executor: Any = None, *, cold: bool = False) -> Timing:
    """Wall seconds of ``pipeline.run()`` (on a pool started for it and shut down after it
    when ``cold``); raises unless the n-stage chain completed."""
    try:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if cold:
            from pipelines.execution.pool import ProcessExecutor

            executor = ProcessExecutor(1)
        try:
            ctx = pipeline.run(executor=executor)
        finally:
            if cold:
                executor.shutdown()
        elapsed = Timing(time.perf_counter() - t0)
        elapsed.cpu = time.process_time() - cpu0
    finally:
        pipeline.close()
    if ctx.state != "COMPLETED":
        raise SystemExit(f"the {n}-stage chain ended {ctx.state} at stage {ctx.failed_stage}: {ctx.error}")
    return elapsed


def time_run(cls: type, n: int, state_dir: Path, executor: Any) -> float:
    """Wall seconds of one run of an n-stage chain; raises unless it completed."""
    pipeline = cls(n, state_dir=state_dir, executor=executor if isinstance(executor, str) else "process")
    return _timed(pipeline, n, None if isinstance(executor, str) else executor)


def time_cold(cls: type, n: int, state_dir: Path) -> float:
    """Wall seconds of one run on a pool started for it and shut down after it."""
    return _timed(cls(n, state_dir=state_dir), n, cold=True)


def chain_figures(cls: type, sizes: list[int], repeat: int, state_dir: Path, executor: Any) -> dict[int, list[float]]:
    """Wall seconds of ``repeat`` runs for each chain length, after one warm-up run."""
    time_run(cls, 5, state_dir, executor)
    return {n: [time_run(cls, n, state_dir, executor) for _ in range(repeat)] for n in sizes}


def startup(cmd: list[str], runs: int) -> float:
    """Median wall seconds of a whole process, from spawn to exit."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ahgd_command() -> list[str]:
    exe = Path(sys.executable).with_name("ahgd")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ahgd_daemon"]


# --------------------------------------------------------------------------- printing


def per_stage_lines(label: str, runs: dict[int, list[float]], target_ms: float | None) -> list[str]:
    """Median (and best) ms per stage for each N, then the marginal cost between the extreme Ns."""
    def judged(ms: float) -> str:
        return f"target <= {target_ms:.3g} ms  ratio {ms / target_ms:5.2f}x" if target_ms else ""

    lines = []
    for n, times in runs.items():
        med, best = statistics.median(times) * 1e3 / n, min(times) * 1e3 / n
        cpu = statistics.median(getattr(t, "cpu", 0.0) for t in times) * 1e3 / n
        lines.append(f"  {label:<28} N={n:<4} {med:7.3f} ms/stage (best {best:6.3f}, CPU here "
                     f"{cpu:6.3f})  {judged(med)}")
    ns = sorted(runs)
    if len(ns) > 1:
        lo, hi = statistics.median(runs[ns[0]]), statistics.median(runs[ns[-1]])
        marginal = (hi - lo) * 1e3 / (ns[-1] - ns[0])
        lines.append(f"  {label:<28} marginal {marginal:6.3f} ms/stage (N={ns[0]}->{ns[-1]})  {judged(marginal)}")
    return lines


def median_ms(runs: dict[int, list[float]], n: int) -> float:
    return statistics.median(runs[n]) * 1e3 / n


def main() -> None:
    # the engine is measured, not a terminal: the runs' INFO lines (pipelines.logs) stay off
    logging.getLogger("pipelines").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--stages", type=int, nargs="+", default=[50, 200], metavar="N",
                    help="chain lengths to run (default: 50 200)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs per chain length; the median (and the best) is shown (default 5)")
    ap.add_argument("--floor-commits", type=int, default=500,
                    help="plain sqlite3 INSERT+COMMITs for the floor (default 500)")
    ap.add_argument("--startup-runs", type=int, default=7, help="process starts per command (default 7)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold worker-pool figure")
    ap.add_argument("--dir", default=os.getcwd(),
                    help="directory on the disk to measure; a temp dir is made inside it and "
                         "removed afterwards (default: the current directory)")
    args = ap.parse_args()
    if any(n < 2 for n in args.stages) or args.repeat < 1:
        ap.error("chain lengths must be 2 or more and --repeat 1 or more")
    from pipelines.execution.pool import ProcessExecutor

    cls = _chain_class()
    sizes = sorted(set(args.stages))
    base = Path(tempfile.mkdtemp(prefix="ahgd-bench-overhead-", dir=args.dir))
    executor = None
    try:
        print(f"disk: {base}   python {sys.version.split()[0]}   {os.cpu_count()} CPUs   "
              f"load average {os.getloadavg()[0]:.2f}")
        floor, stage_sql = sqlite_floors(base, args.floor_commits)
        floor_ms = statistics.median(floor) * 1e3
        stage_ms = statistics.median(stage_sql) * 1e3
        print(f"\nfloor: plain sqlite3 INSERT+COMMIT, WAL, synchronous=FULL: median {floor_ms:.3f} ms, "
              f"mean {statistics.mean(floor) * 1e3:.3f} ms ({len(floor)} commits)")
        print("  (each stage needs one such durable commit: its stage.completed, committed with "
              "the next stage.started)")
        print(f"what a stage commits, in plain sqlite3 (its two events, indexed by run, and two "
              f"stage_runs rows):\n  median {stage_ms:.3f} ms = {stage_ms / floor_ms:.2f}x the floor "
              "(the least an event log recording the same could pay; the rest of the in-process "
              "figure is the engine's Python and SQL)")

        print(f"\norchestration per stage = wall time of run() / N (median of {args.repeat} runs, after a "
              "warm-up run):")
        inproc = chain_figures(cls, sizes, args.repeat, base / "inprocess", "inprocess")
        target_inproc = TARGET_INPROCESS_FLOORS * floor_ms
        print(f"  targets: in-process <= {TARGET_INPROCESS_FLOORS:g}x the floor = "
              f"{target_inproc:.3f} ms/stage; warm worker processes <= {TARGET_WORKERS_MS:g} ms/stage")
        for line in per_stage_lines("in-process", inproc, target_inproc):
            print(line)
        executor = ProcessExecutor(1)
        executor.prestart()
        warm = chain_figures(cls, sizes, args.repeat, base / "warm", executor)
        executor.shutdown()
        executor = None
        for line in per_stage_lines("worker processes, warm pool", warm, TARGET_WORKERS_MS):
            print(line)
        if not args.no_cold:
            n = sizes[0]
            cold = [time_cold(cls, n, base / "cold") for _ in range(args.repeat)]
            extra = statistics.median(cold) - statistics.median(warm[n])
            print(f"  {'worker processes, cold pool':<28} N={n:<4} {statistics.median(cold) * 1e3 / n:7.3f} "
                  f"ms/stage (best {min(cold) * 1e3 / n:6.3f})  the pool's start-up, "
                  f"{extra * 1e3:.0f} ms a run more than warm (no target)")
        n = sizes[0]
        print(f"\na script's consecutive run()s, executor='process' (the shared warm pool), N={n}, "
              f"median of {args.repeat} after a first run:")
        for label, kind in (("module-defined pipeline", cls), ("script-defined pipeline", ChainPipeline)):
            if kind is cls and label.startswith("script"):
                continue
            runs = chain_figures(kind, [n], args.repeat, base / f"shared-{kind.__module__}", "process")
            print(f"  script, {label + ',':<25} executor='process', consecutive runs "
                  f"{median_ms(runs, n):7.3f} ms/step   (the issue: script-defined "
                  f"{SCRIPT_DEFINED_MS:g} ms/step; module-defined was 5.1, a pool per run)")
        n = sizes[-1]
        print(f"\nin units of the floor (N={n}): in-process {median_ms(inproc, n) / floor_ms:.2f}x "
              f"(target <= {TARGET_INPROCESS_FLOORS:g}x), warm workers "
              f"{median_ms(warm, n) / floor_ms:.2f}x")

        print(f"\nstart-up, whole process (median of {args.startup_runs}):")
        figures = [
            ("python -c pass", [sys.executable, "-c", "pass"], None),
            ('python -c "import pipelines"', [sys.executable, "-c", "import pipelines"], TARGET_STARTUP_S),
            ("ahgd --help", [*ahgd_command(), "--help"], TARGET_STARTUP_S),
        ]
        for label, cmd, target in figures:
            s = startup(cmd, args.startup_runs)
            verdict = (f"target <= {target:g} s  ratio {s / target:5.2f}x" if target
                       else "(the interpreter alone, for scale)")
            print(f"  {label:<30} {s:6.3f} s   {verdict}")

        print("\nfor scale, peers measured by the issue author on this machine (default local persistence):")
        for name, how, ms in PEERS_PER_STEP:
            print(f"  {name:<13} {ms:6.1f} ms/step   ({how})")
        print("  start-up: " + ", ".join(f"{name} {s:.2f} s" for name, s in PEERS_STARTUP))
    finally:
        if executor is not None:
            executor.shutdown()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The daemon's idle footprint on the bundled configuration, and the start-up of ``ahgd --help``.

    python bench/footprint.py [--idle-seconds 8] [--no-runs] [--help-runs 9] [--dir DIR]

Starts ``ahgd daemon --config pipelines/ahgd/config/master.yaml --json-logs`` (the
console script next to ``sys.executable``, else ``python -m ahgd_daemon``; this
checkout first on ``PYTHONPATH``) on a temp state directory, waits for its
``daemon_ready`` line and then ``--idle-seconds``, and reads ``/proc/PID/status``
and ``/proc/PID/maps``:
  * the daemon's RSS (``VmRSS``, with its anonymous and file-backed parts) and
    thread count; whether DuckDB (``_duckdb``), pyarrow (``libarrow``) or
    fastexcel are mapped into it;
  * its warm worker processes, counted separately (their number is the
    configuration's ``daemon.max_workers``: the user's choice), each one's RSS.
Then, unless ``--no-runs``, the bundled SEIFA and MORT files are dropped into
their inboxes, the three bundled pipelines run (their input checks in child
processes, their stages in the workers), and the same figures are read again
after ``--idle-seconds`` more.  Last, ``ahgd --help`` as a whole process,
median wall time of ``--help-runs``.
Targets: the daemon's idle RSS <= 60 MB (the issue's; DBOS idles at 69 MB);
``ahgd --help`` <= 0.4 s.  Not pass/fail: figures move with the machine's load
(printed).
"""

from __future__ import annotations

import argparse
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

from bench.latency import DaemonProcess, ahgd_command  # noqa: E402

TARGET_IDLE_RSS_MB = 60.0
TARGET_HELP_S = 0.4
MASTER = REPO / "pipelines" / "ahgd" / "config" / "master.yaml"
DATA = REPO / "pipelines" / "ahgd" / "data"
DROPS = {"seifa_sa2": "seifa_2021_sa2.csv", "mortality_regions": "aihw_mort_table1.csv"}
#: what a heavy library's mapping is called in /proc/PID/maps
HEAVY = {"duckdb": "_duckdb", "pyarrow": "libarrow", "fastexcel": "fastexcel"}


def status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def kb_mb(value: str) -> float:
    return int(value.split()[0]) / 1024


def mapped(pid: int) -> dict[str, bool]:
    text = Path(f"/proc/{pid}/maps").read_text()
    return {name: needle in text for name, needle in HEAVY.items()}


def children(pid: int) -> list[int]:
    """Child processes, whichever of the daemon's threads started them."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue  # the thread ended meanwhile
    return sorted(found)


def look(pid: int) -> dict[str, Any]:
    s = status(pid)
    workers = []
    for child in children(pid):
        try:
            workers.append((child, kb_mb(status(child)["VmRSS"])))
        except (OSError, KeyError):
            continue  # gone meanwhile
    return {"rss": kb_mb(s["VmRSS"]), "anon": kb_mb(s.get("RssAnon", "0 kB")),
            "file": kb_mb(s.get("RssFile", "0 kB")), "threads": int(s["Threads"]),
            "mapped": mapped(pid), "workers": workers}


def report(label: str, seen: dict[str, Any]) -> None:
    rss = seen["rss"]
    verdict = "ok" if rss <= TARGET_IDLE_RSS_MB else "OVER"
    print(f"\n{label}")
    print(f"  daemon RSS      {rss:6.1f} MB   (anonymous {seen['anon']:.1f}, files {seen['file']:.1f})"
          f"   target <= {TARGET_IDLE_RSS_MB:g} MB   ratio {rss / TARGET_IDLE_RSS_MB:4.2f}x   {verdict}")
    print(f"  daemon threads  {seen['threads']:6d}")
    print("  mapped          " + ", ".join(f"{name} {'YES' if on else 'no'}"
                                           for name, on in seen["mapped"].items()))
    workers = seen["workers"]
    each = ", ".join(f"{mb:.1f}" for _, mb in workers)
    print(f"  warm workers    {len(workers):6d}   RSS {sum(mb for _, mb in workers):.1f} MB together"
          f" ({each or 'none'}; counted apart: their number is daemon.max_workers)")


def run_bundled(state_dir: Path, timeout: float) -> float:
    """Drop the bundled files; seconds until the three runs have ended."""
    t0 = time.monotonic()
    for pipeline, name in DROPS.items():
        inbox = state_dir / "inbox" / pipeline
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / name, inbox / f".{name}.part")
        os.rename(inbox / f".{name}.part", inbox / name)
    db = state_dir / "history.db"
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT pipeline, state FROM runs").fetchall()
        finally:
            con.close()
        if len(rows) >= 3 and all(s in ("COMPLETED", "FAILED", "CANCELLED", "PARKED")
                                  for _, s in rows):
            bad = [r for r in rows if r[1] != "COMPLETED"]
            if bad:
                raise SystemExit(f"bundled runs did not complete: {bad}")
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"the bundled runs did not end within {timeout:g}s")


def help_time(runs: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*ahgd_command(), "--help"], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle-seconds", type=float, default=8.0,
                    help="idle time before each reading (default 8)")
    ap.add_argument("--no-runs", action="store_true",
                    help="skip the second reading, after the bundled files have run")
    ap.add_argument("--help-runs", type=int, default=9,
                    help="process starts of `ahgd --help`; the median is shown (default 9)")
    ap.add_argument("--dir", default=".", help="where to make the temp directory (default: .)")
    args = ap.parse_args()

    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    base = Path(tempfile.mkdtemp(prefix="ahgd-footprint-", dir=args.dir))
    daemon = None
    try:
        state_dir = base / "state"
        daemon = DaemonProcess(MASTER, state_dir, base / "daemon.log")
        daemon.wait_ready(60)
        time.sleep(args.idle_seconds)
        report(f"idle {args.idle_seconds:g} s after start-up (bundled master.yaml, nothing run):",
               look(daemon.proc.pid))
        if not args.no_runs:
            took = run_bundled(state_dir, 120)
            time.sleep(args.idle_seconds)
            report(f"idle {args.idle_seconds:g} s after the bundled files ran (3 runs, "
                   f"{took:.1f} s; input checks and stages in child processes):",
                   look(daemon.proc.pid))
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    s = help_time(args.help_runs)
    print(f"\n`ahgd --help`, whole process, median of {args.help_runs}: {s:.3f} s   target <= "
          f"{TARGET_HELP_S:g} s   ratio {s / TARGET_HELP_S:4.2f}x   "
          f"{'ok' if s <= TARGET_HELP_S else 'OVER'}")
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

"""Event log growth: bytes of ``history.db`` per run of the bundled pipelines, projected.

    python bench/loggrowth.py [--rounds 10] [--dir DIR]

Runs the three bundled pipelines (``seifa_sa2`` and ``mortality_regions`` on their bundled
ABS and AIHW files, given as ``ahgd run --input`` gives them, then ``sa2_health_profile``)
``--rounds`` times in this process on a temp state directory, and measures ``history.db``
(checkpointed: the events, the projections, their indexes) after the first round and after
the last.  Prints bytes per run and per event, and what 1,000 runs a day for five years
comes to.  Retention removes files, never events: this is the figure that grows for ever.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ahgd_daemon.requests import request_run  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.config.configured import build_pipelines  # noqa: E402
from state import EventLog  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[1] / "pipelines" / "ahgd"
SOURCES = {"seifa_sa2": "seifa_2021_sa2.csv", "mortality_regions": "aihw_mort_table1.csv"}
RUNS_A_DAY, YEARS = 1000, 5


def measure(db: Path) -> tuple[int, int, int]:
    """(bytes in use after a checkpoint, events, runs)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    finally:
        conn.close()
    return (pages - free) * size, events, runs


def one_round(log: EventLog, state_dir: Path, pipelines: dict) -> None:
    for name, source in SOURCES.items():
        fd = os.open(BUNDLED / "data" / source, os.O_RDONLY)
        try:
            run_id = request_run(log, state_dir, pipelines, name, input_fd=fd, input_name=source)
        finally:
            os.close(fd)
        assert pipelines[name].execute_run(run_id, log=log).state == "COMPLETED"
    run_id = request_run(log, state_dir, pipelines, "sa2_health_profile")
    assert pipelines["sa2_health_profile"].execute_run(run_id, log=log).state == "COMPLETED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ahgd-bench-loggrowth-", dir=args.dir))
    try:
        state_dir = tmp / "state"
        loaded = load_config([BUNDLED / "config" / "master.yaml"], state_dir=state_dir,
                             import_classes=True)
        pipelines = build_pipelines(loaded, state_dir=state_dir)
        for p in pipelines.values():
            p._executor_arg = "inprocess"
        began = time.perf_counter()
        with EventLog.open(state_dir) as log:
            one_round(log, state_dir, pipelines)
            first = measure(log.path)
            for _ in range(args.rounds - 1):
                one_round(log, state_dir, pipelines)
        last = measure(state_dir / "history.db")
        runs, events = last[2] - first[2], last[1] - first[1]
        per_run = (last[0] - first[0]) / runs
        total = per_run * RUNS_A_DAY * 365 * YEARS
        print(f"{last[2]} runs of the bundled pipelines in {time.perf_counter() - began:.0f} s; "
              f"history.db {last[0] / 1e6:.2f} MB")
        print(f"growth over the last {runs} runs: {per_run / 1000:.1f} kB per run, "
              f"{events / runs:.1f} events per run ({(last[0] - first[0]) / events:.0f} B each)")
        print(f"1,000 runs a day for {YEARS} years ({RUNS_A_DAY * 365 * YEARS:,} runs, "
              f"{events / runs * RUNS_A_DAY * 365 * YEARS / 1e6:.1f} M events): "
              f"{total / 1e9:.1f} GB, {total / YEARS / 1e9:.1f} GB a year")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

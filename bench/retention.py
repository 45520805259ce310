"""Retention benchmark: collect 20,000 old runs' outputs the way the daemon does, in steps.

    python bench/retention.py [--runs 20000] [--keep 10] [--dir DIR]

Builds a state directory whose event log holds ``--runs`` completed runs of one pipeline
(each with two recorded stage outputs, ``data/<run>/extract-a1.duckdb`` and
``transform-a1.duckdb``, 4 KB each, and the events of a real run), then lets the daemon's
collection (``ahgd_daemon/collection.py``: the same object and step the daemon's loop calls)
remove all but the ``--keep`` newest, one step per turn of a loop that does nothing else,
with the collector's clock 60 days on.  Prints the time per run removed and the longest
step (the longest pause of the daemon's loop); then ``ahgd state check``'s fold over the
result.  Target (issue 14): no pause over 50 ms.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ahgd_daemon.collection import STEP_BUDGET_S, DaemonCollection  # noqa: E402
from pipelines.config.retain import Retain, Policy  # noqa: E402
from state import EventLog, EventType as T, new_event, utc_now  # noqa: E402

print = functools.partial(print, flush=True)  # noqa: A001

STAGES = ["extract", "transform", "load"]
FILE_BYTES = 4096
TARGET_MS = 50.0


def lifecycle(state_dir: Path, run_id: str) -> list:
    """The events of one completed run, its two output files written as it goes."""
    folder = state_dir / "data" / run_id
    folder.mkdir(parents=True)
    evs = [new_event(T.RUN_REQUESTED, run_id, pipeline="bench", trigger="manual", params={}),
           new_event(T.RUN_STARTED, run_id, stages=STAGES)]
    for stage in STAGES:
        evs.append(new_event(T.STAGE_STARTED, run_id, stage=stage, attempt=1))
        output: dict[str, Any] = {"rows": 1000}
        if stage != "load":
            path = folder / f"{stage}-a1.duckdb"
            path.write_bytes(b"\0" * FILE_BYTES)
            output = {"kind": "tables", "path": f"data/{run_id}/{stage}-a1.duckdb",
                      "bytes": FILE_BYTES, "sha256": "0" * 64}
        evs.append(new_event(T.STAGE_COMPLETED, run_id, stage=stage, attempt=1, rows=1000,
                             output=output))
    evs.append(new_event(T.RUN_COMPLETED, run_id))
    return evs


class _Quiet:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    warning = error = info

    def alert(self, *args: Any, **kw: Any) -> None:
        pass

    def resolve(self, *args: Any, **kw: Any) -> None:
        pass


def build(state_dir: Path, runs: int) -> float:
    began = time.perf_counter()
    with EventLog.open(state_dir) as log:
        batch: list = []
        for n in range(runs):
            batch += lifecycle(state_dir, f"bench-{n:06d}")
            if len(batch) >= 2000:
                log.append_many(batch, durable=False)
                batch = []
        if batch:
            log.append_many(batch)
    return time.perf_counter() - began


def collect(state_dir: Path, keep: int) -> dict[str, Any]:
    quiet = _Quiet()
    later = utc_now() + timedelta(days=60)
    policy = Policy(Retain(successful_runs=keep))
    with EventLog.open(state_dir) as log:
        collection = DaemonCollection(log, state_dir, policy, logger=quiet, wake=lambda: None,
                                      alerts=quiet, clock=lambda: later)
        collection._asap.set()   # due now (as after a disk alert)
        steps: list[float] = []
        began = time.perf_counter()
        while collection.ended == 0:
            t0 = time.perf_counter()
            collection.step()
            steps.append(time.perf_counter() - t0)
        total = time.perf_counter() - began
        report = collection.last
        check = log.check()
    removed = sum(1 for i in report.items if i.area == "data")
    ordered = sorted(steps)
    return {"removed": removed, "total_s": total, "steps": len(steps),
            "longest_ms": ordered[-1] * 1000,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
            "median_ms": statistics.median(ordered) * 1000,
            "per_run_ms": total / max(1, removed) * 1000, "check_ok": check.ok,
            "left": sorted(p.name for p in (state_dir / "data").iterdir())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--keep", type=int, default=10)
    ap.add_argument("--dir", default=".", help="where the temp state directory goes")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ahgd-bench-retention-", dir=args.dir))
    try:
        print(f"load average {os.getloadavg()[0]:.2f}; building {args.runs:,} completed runs "
              f"({2 * args.runs:,} output files of {FILE_BYTES} B) in {tmp}")
        print(f"  built in {build(tmp / 'state', args.runs):.1f} s")
        out = collect(tmp / "state", args.keep)
        print(f"collected: {out['removed']:,} runs' outputs removed in {out['total_s']:.1f} s "
              f"= {out['per_run_ms']:.2f} ms per run removed, in {out['steps']:,} steps of the "
              f"loop (step budget {STEP_BUDGET_S * 1000:.0f} ms)")
        print(f"  pause of the loop per step: median {out['median_ms']:.1f} ms, p99 "
              f"{out['p99_ms']:.1f} ms, longest {out['longest_ms']:.1f} ms "
              f"(target <= {TARGET_MS:.0f} ms: {'met' if out['longest_ms'] <= TARGET_MS else 'NOT met'})")
        print(f"  left in data/: {len(out['left'])} folders (the {args.keep} newest); "
              f"projections match a fresh fold: {out['check_ok']}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

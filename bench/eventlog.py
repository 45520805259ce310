"""Event log benchmark: append cost against the raw SQLite floor, and rebuild time.

    python bench/eventlog.py [--appends 2000] [--rebuild-events 1000000] [--dir DIR]

Prints, on one disk in one run:
  * the raw floor: one INSERT + COMMIT into an identical ``events`` table with
    the same pragmas, in plain sqlite3;
  * the project's append (event + state machine + projections, one transaction);
  * their ratio, for synchronous=FULL and synchronous=NORMAL;
  * the time to rebuild every projection from N events (default 1,000,000).
Targets (issue 2): append <= 1.5x the floor; rebuild of 1M events <= 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from state import EventLog, EventType as T, new_event  # noqa: E402
from state.migrations import INITIAL  # noqa: E402

STAGES = ["extract", "transform", "validate", "load"]


def lifecycle(run_id: str) -> list:
    """A realistic run: 11 events (requested, started, 4 x stage started/completed, completed)."""
    evs = [
        new_event(T.RUN_REQUESTED, run_id, pipeline="bench", trigger="manual",
                  params={"input_file": "/data/in.csv"}),
        new_event(T.RUN_STARTED, run_id, stages=STAGES),
    ]
    for s in STAGES:
        evs.append(new_event(T.STAGE_STARTED, run_id, stage=s, attempt=1))
        evs.append(new_event(T.STAGE_COMPLETED, run_id, stage=s, attempt=1, rows=1000,
                             cpu_s=0.01, peak_rss_mb=50.0,
                             output={"kind": "tables", "path": f"data/{run_id}/{s}.1.duckdb"}))
    evs.append(new_event(T.RUN_COMPLETED, run_id))
    return evs


class RawFloor:
    """One INSERT + COMMIT into an identical ``events`` table, same pragmas, plain sqlite3."""

    def __init__(self, path: Path, sync: str):
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={sync}")
        self.conn.execute(INITIAL.split(";\n")[0])  # the same events table
        self.payload = json.dumps({"rows": 1000, "cpu_s": 0.01, "peak_rss_mb": 50.0,
                                   "output": {"kind": "tables", "path": "data/r/extract.1.duckdb"}})
        self.i = 0

    def one(self) -> float:
        self.i += 1
        t0 = time.perf_counter()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO events (ts, run_id, stage, attempt, type, payload, idempotency_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("2026-01-01T00:00:00.000000Z", f"r{self.i}", "extract", 1, "stage.completed",
             self.payload, None),
        )
        self.conn.execute("COMMIT")
        return time.perf_counter() - t0


class Ours:
    """EventLog.append of a realistic run lifecycle, event by event."""

    def __init__(self, path: Path, sync: str):
        self.log = EventLog(path, synchronous=sync)
        self.pending: list = []
        self.runs = 0

    def one(self) -> float:
        if not self.pending:
            self.pending = lifecycle(f"run-{self.runs}")
            self.runs += 1
        e = self.pending.pop(0)
        t0 = time.perf_counter()
        self.log.append(e)
        return time.perf_counter() - t0


def compare(base: Path, sync: str, n: int, blocks: int = 20) -> tuple[float, float]:
    """Medians of both, measured in alternating blocks so that both see the same disk noise."""
    raw, ours = RawFloor(base / f"raw-{sync}.db", sync), Ours(base / f"ours-{sync}.db", sync)
    raw_t: list[float] = []
    ours_t: list[float] = []
    per_block = max(1, n // blocks)
    for _ in range(blocks):
        raw_t.extend(raw.one() for _ in range(per_block))
        ours_t.extend(ours.one() for _ in range(per_block))
    raw.conn.close()
    ours.log.close()
    return statistics.median(raw_t), statistics.median(ours_t)


def rebuild(path: Path, n_events: int) -> tuple[float, int]:
    log = EventLog(path, synchronous="OFF")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    rows = []
    seq_runs = n_events // 11  # 11 events a run
    ts = "2026-01-01T00:00:00.000000Z"
    for i in range(seq_runs):
        for e in lifecycle(f"run-{i}"):
            rows.append((ts, e.run_id, e.stage, e.attempt, e.type,
                         json.dumps(e.payload, separators=(",", ":")), None))
        if len(rows) >= 100_000:
            conn.executemany(
                "INSERT INTO events (ts, run_id, stage, attempt, type, payload, idempotency_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()
    if rows:
        conn.executemany(
            "INSERT INTO events (ts, run_id, stage, attempt, type, payload, idempotency_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    t0 = time.perf_counter()
    count = log.rebuild()
    elapsed = time.perf_counter() - t0
    log.close()
    return elapsed, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=2000)
    ap.add_argument("--rebuild-events", type=int, default=1_000_000)
    ap.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ahgd-bench-", dir=args.dir))
    try:
        print(f"disk: {base}")
        print(f"median of {args.appends} operations each, raw and ours alternating in blocks")
        for sync in ("FULL", "NORMAL"):
            floor, ours = compare(base, sync, args.appends)
            print(f"synchronous={sync:<6}  raw INSERT+COMMIT {floor * 1e6:8.1f} us   "
                  f"EventLog.append {ours * 1e6:8.1f} us   ratio {ours / floor:5.2f}x"
                  + ("   (target <= 1.5x)" if sync == "FULL" else ""))
        elapsed, count = rebuild(base / "rebuild.db", args.rebuild_events)
        print(f"rebuild: {count:,} events re-folded into projections in {elapsed:.2f} s "
              f"({count / elapsed:,.0f} events/s; target <= 10 s for 1M)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

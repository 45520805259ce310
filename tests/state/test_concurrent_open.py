"""Several threads (or scripts) opening a new state directory at the same moment all get it.

SQLite answers "database is locked" at once, without waiting, when another connection
holds the file while one sets WAL mode; ``connect`` took that for a lock held past the
busy timeout and said so (7 rounds of 60 with four threads failed).
"""

from __future__ import annotations

import threading

from state import EventLog

ROUNDS = 40
THREADS = 4


def test_threads_opening_a_new_state_directory_together_all_succeed(tmp_path):
    failures: list[str] = []
    for n in range(ROUNDS):
        state_dir = tmp_path / f"state-{n}"
        state_dir.mkdir()
        start = threading.Barrier(THREADS)

        def open_it() -> None:
            start.wait(10)
            try:
                with EventLog.open(state_dir) as log:
                    log.query("SELECT COUNT(*) FROM events")
            except Exception as exc:  # every one must open: collect, assert below
                failures.append(f"round {n}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_it) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert failures == []

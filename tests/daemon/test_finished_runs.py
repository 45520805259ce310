"""A daemon keeps the latest runs that ended, not every run of its life: the list was
copied into every status reply (545 KB after 12,000 runs) and never shrank."""

from __future__ import annotations

import tracemalloc

from ahgd_daemon.runs import Finished


def test_finished_keeps_the_latest_runs_and_counts_them_all():
    finished = Finished(keep=3)
    for i in range(10):
        finished[f"r{i}"] = "COMPLETED" if i % 2 else "FAILED"
    finished["r8"] = "COMPLETED"            # retried in the session: its latest state, last
    assert len(finished) == 11
    assert finished.recent() == {"r7": "COMPLETED", "r9": "COMPLETED", "r8": "COMPLETED"}


def test_a_once_session_keeps_every_run_for_its_exit_code():
    finished = Finished(keep=None)
    for i in range(500):
        finished[f"r{i}"] = "COMPLETED"
    finished["r0"] = "FAILED"
    assert len(finished.recent()) == 500
    assert any(state != "COMPLETED" for state in finished.values())


def test_memory_stays_flat_over_many_runs():
    finished = Finished()
    for i in range(300):
        finished[f"csvpipe-file-{i:012x}-abcdef"] = "COMPLETED"
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(300, 20_300):
            finished[f"csvpipe-file-{i:012x}-abcdef"] = "COMPLETED"
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "lineno"))
    finally:
        tracemalloc.stop()
    assert len(finished.recent()) == 200 and len(finished) == 20_300
    assert grown < 50_000, grown   # 20,000 runs kept would be ~2 MB

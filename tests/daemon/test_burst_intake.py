"""A burst of small files through the daemon's side (issue 18 item 2): what the daemon
spends per file and per run, and that the batching that saves it keeps every guarantee.

Real files, a real event log, real inotify watchers, the real daemon killed with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from ahgd_daemon.dropfolder import Claimer, Folder
from state import EventLog, EventType as T, new_event, queries

from .harness import Daemon, query, wait_until, write_config


def _folder(inbox: Path) -> Folder:
    return Folder(pipeline="p", path=inbox, pattern="*.csv", stable_for=0.0)


def _arrivals(state: Path) -> list[tuple[int, str, dict]]:
    rows = query(state, "SELECT seq, ts, payload FROM events WHERE type = 'file.arrived' "
                        "ORDER BY seq")
    return [(seq, ts, json.loads(payload)) for seq, ts, payload in rows]


def test_files_claimed_together_share_one_commit_and_leave_the_folder_after_it(tmp_path):
    state, inbox = tmp_path / "state", tmp_path / "inbox"
    inbox.mkdir()
    names = [f"f{i}.csv" for i in range(5)]
    for i, name in enumerate(names):
        (inbox / name).write_text(f"a,b\n{i},x\n")
    (inbox / "same.csv").write_text("a,b\n0,x\n")  # the bytes of f0.csv again
    with EventLog.open(state) as log:
        claimer = Claimer(log, state)
        out = claimer.claim_many([(_folder(inbox), inbox / n) for n in [*names, "same.csv"]])
        # their runs start (and load) in the order the files were taken, not by run id (a
        # file run's id begins with its content hash; the five share one timestamp)
        assert queries.pending_runs(log, ["p"], 10) == [(c.run_id, "p") for c in out[:5]]
    assert [c.outcome for c in out] == ["arrived"] * 5 + ["duplicate"], out
    arrived = _arrivals(state)
    assert [p["name"] for _, _, p in arrived] == names
    # one transaction: one timestamp, and the run requests interleaved in the same commit
    assert len({ts for _, ts, _ in arrived}) == 1
    assert os.listdir(inbox) == []  # each name went once the commit was durable
    dup = list((state / "duplicates" / "p").iterdir())
    assert [d.name for d in dup] == ["same.csv"]  # as if taken after f0.csv, alone
    for c, name in zip(out, names):
        stored = state / "files" / "p" / c.sha256 / name
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == c.sha256


def test_the_watchers_ask_inotify_only_for_the_events_they_act_on(tmp_path):
    from watchdog.observers.inotify_c import InotifyConstants as C

    from ahgd_daemon.watch import Watchers

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    seen: list[tuple[str, str]] = []
    watchers = Watchers([_folder(inbox)], complete=lambda f, p: seen.append(("complete", p.name)),
                        candidate=lambda f, p: seen.append(("candidate", p.name)), logger=_Quiet())
    watchers.start()
    try:
        assert watchers.modes[str(inbox)] == "inotify"
        (emitter,) = watchers._observers[0].emitters
        mask = emitter.get_event_mask_from_filter()
        # the daemon's own open, read, link and unlink of each file it takes are not asked for
        for unwanted in (C.IN_OPEN, C.IN_CLOSE_NOWRITE, C.IN_DELETE, C.IN_ACCESS):
            assert not mask & unwanted, hex(unwanted)
        for wanted in (C.IN_CLOSE_WRITE, C.IN_MOVED_TO, C.IN_CREATE, C.IN_ATTRIB, C.IN_MODIFY):
            assert mask & wanted, hex(wanted)
        # and what it acts on still comes: a close after writing, a rename into the folder
        with open(inbox / "written.csv", "w") as f:
            f.write("a\n1\n")
        (tmp_path / "moved.csv").write_text("a\n2\n")
        os.rename(tmp_path / "moved.csv", inbox / "moved.csv")
        wait_until(lambda: {("complete", "written.csv"), ("complete", "moved.csv")} <= set(seen),
                   10, "the watcher's reports")
    finally:
        watchers.stop()


class _Quiet:
    def info(self, *a: object, **k: object) -> None:
        pass

    warning = info


def test_earlier_runs_running_reads_the_running_runs_not_the_pipelines_history(tmp_path):
    """Asked before each run's last stages: it must not cost more as the history grows."""
    state = tmp_path / "state"
    events = []
    for i in range(1500):
        run = f"old-{i:05d}"
        events += [new_event(T.RUN_REQUESTED, run, pipeline="p", trigger="manual", params={}),
                   new_event(T.RUN_STARTED, run, stages=[], owner={}),
                   new_event(T.RUN_COMPLETED, run)]
    for run in ("now-1", "now-2", "now-3"):
        events.append(new_event(T.RUN_REQUESTED, run, pipeline="p", trigger="manual", params={}))
    with EventLog.open(state, synchronous="NORMAL") as log:
        log.append_many(events, durable=False)
        log.append_many([new_event(T.RUN_STARTED, r, stages=["a"], owner={})
                         for r in ("now-1", "now-2", "now-3")])
    con = sqlite3.connect(state / "history.db")
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    con.set_progress_handler(count, 100)  # called every 100 SQLite VM instructions
    try:
        assert queries.earlier_runs_running(con, "p", "now-3") == ["now-1", "now-2"]
    finally:
        con.close()
    # a scan of the 1,500 finished runs took 77 of these; the RUNNING ones take a few
    assert steps[0] < 15, steps[0]


def test_the_next_pending_runs_cost_the_same_whatever_the_length_of_the_queue(tmp_path):
    """Asked before runs start: the first few PENDING runs, not a sort of all of them."""
    state = tmp_path / "state"
    with EventLog.open(state, synchronous="NORMAL") as log:
        log.append_many([new_event(T.RUN_REQUESTED, f"r-{i:05d}", pipeline=p, trigger=trigger,
                                   params={})
                         for i in range(2000)
                         for p, trigger in [(("p", "q")[i % 2], ("drop_folder", "backfill")[i % 3 == 0])]],
                        durable=False)
    con = sqlite3.connect(state / "history.db")
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    con.set_progress_handler(count, 100)
    try:
        picked = queries.pending_runs(con, ["p"], 4, backfill_slots=1)
    finally:
        con.close()
    # oldest first, of p only, one backfill run at most (r-00000 is p's backfill run)
    assert [r for r, _ in picked] == ["r-00000", "r-00002", "r-00004", "r-00008"]
    assert steps[0] < 15, steps[0]  # reading and sorting all 2,000 took 272 of these


def test_a_sigkill_in_a_burst_loses_no_file_it_took(tmp_path):
    """Files whose arrivals share commits: killed mid-burst, every file is still in the
    folder or on record, and the next start takes the rest (each file's bytes once)."""
    config = write_config(tmp_path, stable_for="PT0.3S")
    state = tmp_path / "state"
    inbox = state / "inbox" / "csvpipe"
    staging = tmp_path / "staging"
    staging.mkdir()
    n = 60
    shas = set()
    for i in range(n):
        data = f"a,b\n{i},burst\n".encode()
        shas.add(hashlib.sha256(data).hexdigest())
        (staging / f"b{i:03d}.csv").write_bytes(data)
    def arrived_count() -> int:
        return query(state, "SELECT COUNT(*) FROM events WHERE type = 'file.arrived'")[0][0]

    daemon = Daemon(config, state).wait_ready()
    try:
        for i in range(n):
            os.rename(staging / f"b{i:03d}.csv", inbox / f"b{i:03d}.csv")
        wait_until(lambda: arrived_count() >= 5, 30, "the first arrivals", interval=0.002)
    finally:
        daemon.kill()  # SIGKILL, mid-burst or just after it
    recorded = {p["name"] for _, _, p in _arrivals(state)}
    left = set(os.listdir(inbox))
    assert {f"b{i:03d}.csv" for i in range(n)} <= recorded | left  # nothing acknowledged lost
    again = Daemon(config, state).wait_ready()  # takes what is left (and adopts what a
    try:                                        # crash left stored but unrecorded)
        wait_until(lambda: arrived_count() >= n and not os.listdir(inbox), 60,
                   "every file taken after the restart")
    finally:
        again.kill()
    arrived = _arrivals(state)
    assert {p["sha256"] for _, _, p in arrived} == shas
    assert len(arrived) == n  # each file's bytes arrived once (a second copy: a duplicate)
    # and the burst's arrivals were batched: far fewer commits than files
    assert len({ts for _, ts, _ in arrived}) < n // 2

"""Claiming drop-folder files that were not what they seemed (issue 11, items 4-7 and 9).

Real files, links, FIFOs and directories in a temp folder, a real event log;
the claimer is called the way the daemon's intake thread calls it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from ahgd_daemon.dropfolder import Folder

from .test_input_checks import claim_bounded

SECRET = "SECRET-LINE root:$6$notarealhash:19000:0:99999:7:::"


@pytest.fixture
def env(claim_env):
    """claim_env (tests/conftest.py) with the claimer's event log."""
    state, inbox, claimer = claim_env
    return state, inbox, claimer.log, claimer


def folder(inbox: Path, **kw) -> Folder:
    return Folder(pipeline="p", path=inbox, pattern="*.csv", stable_for=0.0, **kw)


def events(state: Path, type_: str) -> list[dict]:
    con = sqlite3.connect(state / "history.db")
    try:
        rows = con.execute("SELECT payload FROM events WHERE type = ? ORDER BY seq",
                           [type_]).fetchall()
    finally:
        con.close()
    return [json.loads(r[0]) for r in rows]


def everything_under(root: Path) -> bytes:
    """The bytes of every regular file under ``root`` (links are not followed)."""
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(p).st_mode):
                out.append(p.read_bytes())
    return b"\n".join(out)


# -- item 4: links are never followed -------------------------------------------------------

def test_a_link_to_a_private_file_is_refused_and_nothing_of_it_is_read(env, tmp_path):
    state, inbox, log, claimer = env
    private = tmp_path / "private" / "shadow.csv"
    private.parent.mkdir()
    private.write_text(SECRET + "\n1,2\n")
    os.symlink(private, inbox / "shadow.csv")
    f = folder(inbox, required_columns=["sa2_code"])
    claimed = claimer.claim(f, inbox / "shadow.csv")
    assert claimed.outcome == "refused"
    [refused] = events(state, "file.refused")
    assert refused["kind"] == "symlink" and refused["path"] == str(inbox / "shadow.csv")
    assert "never follows a link" in refused["reason"]
    assert events(state, "file.arrived") == events(state, "file.quarantined") == []
    assert os.path.islink(inbox / "shadow.csv")          # left where it is
    assert private.read_text().startswith(SECRET)         # and its target untouched
    assert b"SECRET-LINE" not in everything_under(state)  # history.db, quarantine, files ...
    assert log.check().ok


def test_a_dangling_link_is_refused_with_an_event(env):
    state, inbox, log, claimer = env
    os.symlink(inbox / "nowhere.csv", inbox / "dangling.csv")
    claimed = claimer.claim(folder(inbox), inbox / "dangling.csv")
    assert claimed.outcome == "refused"
    assert [e["kind"] for e in events(state, "file.refused")] == ["symlink"]
    # seen again (a rescan), it is not news: one event per link
    claimer.claim(folder(inbox), inbox / "dangling.csv")
    assert len(events(state, "file.refused")) == 1
    assert log.rebuild() == 1 and log.check().ok  # a refusal folds, and projects nothing


def test_a_file_under_a_linked_sub_folder_is_not_taken(env, tmp_path):
    state, inbox, log, claimer = env
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.csv").write_text(SECRET + "\n")
    os.symlink(outside, inbox / "sub")
    claimed = claimer.claim(folder(inbox, recursive=True), inbox / "sub" / "x.csv")
    assert claimed.outcome == "refused"
    [refused] = events(state, "file.refused")
    assert refused["path"] == str(inbox / "sub") and refused["kind"] == "symlink"
    assert b"SECRET-LINE" not in everything_under(state)


def test_only_regular_files_are_stored(env):
    state, inbox, log, claimer = env
    (inbox / "good.csv").write_text("a,b\n1,2\n")
    claimed = claimer.claim(folder(inbox), inbox / "good.csv")
    assert claimed.outcome == "arrived"
    [arrived] = events(state, "file.arrived")
    stored = Path(arrived["stored_path"])
    assert stat.S_ISREG(os.lstat(stored).st_mode) and stored.read_text() == "a,b\n1,2\n"
    assert not (inbox / "good.csv").exists()


# -- item 5: hard links ------------------------------------------------------------------------

def test_a_hard_link_is_stored_as_a_copy_that_later_edits_do_not_reach(env, tmp_path):
    state, inbox, log, claimer = env
    original = tmp_path / "sender" / "data.csv"
    original.parent.mkdir()
    original.write_text("a,b\n1,2\n")
    os.link(original, inbox / "data.csv")
    claimed = claimer.claim(folder(inbox), inbox / "data.csv")
    assert claimed.outcome == "arrived"
    stored = Path(events(state, "file.arrived")[0]["stored_path"])
    assert os.stat(stored).st_ino != os.stat(original).st_ino
    with open(original, "a") as f:  # the sender edits its own name afterwards
        f.write("3,4\n")
    assert stored.read_text() == "a,b\n1,2\n"
    from state.store import sha256_file

    assert sha256_file(stored) == claimed.sha256
    assert not (inbox / "data.csv").exists() and original.exists()


def test_a_file_its_writer_still_holds_open_is_stored_as_a_copy(env):
    """A writer that renames its file into the folder before closing it, pauses longer than
    ``stable_for``, then writes again: what was hashed stays what is stored."""
    from state.store import sha256_file

    state, inbox, log, claimer = env
    partial = inbox / ".data.csv.part"
    with open(partial, "w") as writer:
        writer.write("a,b\n1,2\n")
        writer.flush()
        os.rename(partial, inbox / "data.csv")
        claimed = claim_bounded(claimer, folder(inbox), inbox / "data.csv")
        assert claimed.outcome == "arrived"
        stored = Path(events(state, "file.arrived")[0]["stored_path"])
        writer.write("3,4\n")  # the writer goes on, through the descriptor it holds
    assert stored.read_text() == "a,b\n1,2\n"
    assert sha256_file(stored) == claimed.sha256


def test_a_writer_opening_the_file_while_it_is_looked_at_never_signals_the_daemon_dead(tmp_path):
    """The look holds a read lease for microseconds; a writer opening the file then makes the
    kernel signal the holder.  SIGIO, the default, kills a process: the look asks for SIGURG.
    A writer opening the file in a loop meets the look thousands of times a second."""
    import subprocess
    import sys

    from tests.daemon.harness import REPO, env as child_env

    target = tmp_path / "f.csv"
    target.write_text("a\n")
    done = subprocess.run([sys.executable, "-m", "tests.daemon.lease_race", str(target), "1.5"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=child_env())
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert int(done.stdout) > 0  # it did see the writer, between the writer's opens


def test_a_file_rewritten_while_it_is_taken_is_not_recorded_under_its_old_hash(env, monkeypatch):
    """The sender copies a corrected file over the same name while the daemon runs its input
    check: the first bytes are not recorded (their hash is no longer the file's), the
    corrected file is taken next time, under its own hash, and nothing of the sender's is lost."""
    from ahgd_daemon.dropfolder import Claimer
    from state.store import sha256_file

    state, inbox, log, claimer = env
    target = inbox / "data.csv"
    target.write_text("a,b\n1,2\n")
    real_check = Claimer._check

    def sender_rewrites_meanwhile(self, folder_, staged):
        if target.read_text() == "a,b\n1,2\n":
            with open(target, "w") as f:   # cp corrected.csv data.csv: the same inode
                f.write("a,b\n1,2\n3,4\n")
        return real_check(self, folder_, staged)

    monkeypatch.setattr(Claimer, "_check", sender_rewrites_meanwhile)
    checked = folder(inbox, required_columns=["a"])
    first = claim_bounded(claimer, checked, target)
    assert first.outcome == "changing" and events(state, "file.arrived") == []
    assert target.read_text() == "a,b\n1,2\n3,4\n"  # the sender's file is still there
    second = claim_bounded(claimer, checked, target)
    assert second.outcome == "arrived"
    [arrived] = events(state, "file.arrived")
    assert sha256_file(Path(arrived["stored_path"])) == second.sha256 == arrived["sha256"]
    assert Path(arrived["stored_path"]).read_text() == "a,b\n1,2\n3,4\n"


def test_where_leases_cannot_tell_a_file_others_may_write_is_copied(env, monkeypatch):
    """No lease to be had (another user's file without CAP_LEASE, a file system without
    leases): a file only the daemon's user may write is linked, one others may write copied."""
    import fcntl

    state, inbox, log, claimer = env
    monkeypatch.delattr(fcntl, "F_SETLEASE")
    mine, shared = inbox / "mine.csv", inbox / "shared.csv"
    for path, mode in ((mine, 0o644), (shared, 0o664)):
        path.write_text(f"a,b\n{path.stem},2\n")
        os.chmod(path, mode)
    inodes = {p.name: os.stat(p).st_ino for p in (mine, shared)}
    for path in (mine, shared):
        assert claim_bounded(claimer, folder(inbox), path).outcome == "arrived"
    stored = {Path(e["stored_path"]).name: os.stat(e["stored_path"]).st_ino
              for e in events(state, "file.arrived")}
    assert stored["mine.csv"] == inodes["mine.csv"]        # linked
    assert stored["shared.csv"] != inodes["shared.csv"]    # copied


def test_a_closed_file_is_still_linked_not_copied(env):
    state, inbox, log, claimer = env
    (inbox / "data.csv").write_text("a,b\n1,2\n")
    inode = os.stat(inbox / "data.csv").st_ino
    assert claim_bounded(claimer, folder(inbox), inbox / "data.csv").outcome == "arrived"
    stored = Path(events(state, "file.arrived")[0]["stored_path"])
    assert os.stat(stored).st_ino == inode  # a second name, not a copy


# -- item 6: names that are not UTF-8 ----------------------------------------------------------

RAW_NAMES = [b"caf\xe9.csv", b"\xff\xfe.csv", b"\xfe\xff.csv", b"ok-\x80\x81.csv"]


def test_names_that_are_not_utf8_are_taken_and_recorded_faithfully(env):
    state, inbox, log, claimer = env
    f = folder(inbox)
    outcomes = []
    for i, raw in enumerate(RAW_NAMES):
        path = Path(os.fsdecode(os.fsencode(inbox) + b"/" + raw))
        path.write_text(f"a,b\n{i},{i}\n")
        outcomes.append(claimer.claim(f, path).outcome)
    empty = Path(os.fsdecode(os.fsencode(inbox) + b"/\xe9mpty.csv"))
    empty.write_bytes(b"")
    outcomes.append(claimer.claim(f, empty).outcome)
    again = Path(os.fsdecode(os.fsencode(inbox) + b"/again-\xff.csv"))
    again.write_text("a,b\n0,0\n")   # the bytes of the first file
    outcomes.append(claimer.claim(f, again).outcome)
    assert outcomes == ["arrived"] * 4 + ["quarantined", "duplicate"]
    arrived = events(state, "file.arrived")
    for raw, event in zip(RAW_NAMES, arrived):
        assert event["name"] == raw.decode("utf-8", "backslashreplace")
        assert bytes.fromhex(event["name_bytes_hex"]) == raw
    [quarantined] = events(state, "file.quarantined")
    assert bytes.fromhex(quarantined["name_bytes_hex"]) == b"\xe9mpty.csv"
    reason = json.loads(Path(quarantined["path"] + ".reason.json").read_text(encoding="utf-8"))
    assert reason["file"] == "\\xe9mpty.csv" and reason["name_bytes_hex"] == b"\xe9mpty.csv".hex()
    [duplicate] = events(state, "file.duplicate")
    assert bytes.fromhex(duplicate["name_bytes_hex"]) == b"again-\xff.csv"
    names = {r[0] for r in log.query("SELECT name FROM files")}
    assert "\\xff\\xfe.csv" in names and "\\xe9mpty.csv" in names
    assert os.listdir(inbox) == []
    assert log.check().ok and log.rebuild() > 0


# -- item 7: 255-byte names --------------------------------------------------------------------

def test_a_255_byte_name_is_quarantined_with_its_reason_and_taken_with_duplicates(env):
    state, inbox, log, claimer = env
    f = folder(inbox)
    long_name = "x" * 251 + ".csv"
    assert len(long_name.encode()) == 255
    (inbox / long_name).write_bytes(b"")
    q = claimer.claim(f, inbox / long_name)
    assert q.outcome == "quarantined"
    [event] = events(state, "file.quarantined")
    assert event["name"] == long_name
    stored = Path(event["path"])
    assert stored.exists() and len(stored.name) <= 160 and stored.name.endswith(".csv")
    assert json.loads(Path(event["path"] + ".reason.json").read_text())["file"] == long_name
    outcomes = []
    for _ in range(4):  # the same bytes four times: one arrival, three duplicates
        (inbox / long_name).write_text("a,b\n1,2\n")
        outcomes.append(claimer.claim(f, inbox / long_name).outcome)
    assert outcomes == ["arrived", "duplicate", "duplicate", "duplicate"]
    assert len(os.listdir(state / "duplicates" / "p")) == 3
    assert os.listdir(inbox) == []
    assert [e["name"] for e in events(state, "file.duplicate")] == [long_name] * 3


def test_long_names_that_differ_only_at_the_end_stay_apart(env):
    state, inbox, log, claimer = env
    f = folder(inbox)
    for i, tail in enumerate(("aaaa", "bbbb")):
        name = "y" * 247 + tail + ".csv"  # 255 bytes
        (inbox / name).write_text(f"a,b\n{i},{i}\n")
        assert claimer.claim(f, inbox / name).outcome == "arrived"
    stored = [Path(e["stored_path"]).name for e in events(state, "file.arrived")]
    assert len(set(stored)) == 2 and all(len(s) <= 160 for s in stored)
    assert all(s.startswith("yyyy") and s.endswith(".csv") for s in stored)  # recognisable


# -- item 9: FIFOs, directories ------------------------------------------------------------------

def test_a_fifo_is_refused_without_blocking(env):
    state, inbox, log, claimer = env
    os.mkfifo(inbox / "pipe.csv")
    claimed = claim_bounded(claimer, folder(inbox), inbox / "pipe.csv")
    assert claimed.outcome == "refused"
    assert [e["kind"] for e in events(state, "file.refused")] == ["fifo"]


def test_a_fifo_swapped_in_while_files_are_claimed_never_blocks(env, tmp_path):
    """A writer keeps replacing x.csv with a FIFO and back; no claim may hang on it."""
    state, inbox, log, claimer = env
    f = folder(inbox)
    work = tmp_path / "work"
    work.mkdir()
    stop = threading.Event()

    def swap() -> None:
        i = 0
        while not stop.is_set() and i < 20000:
            i += 1
            (work / "file").write_text(f"a,b\n{i},{i}\n")
            os.replace(work / "file", inbox / "x.csv")
            os.mkfifo(work / "fifo")
            os.replace(work / "fifo", inbox / "x.csv")

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        outcomes = set()
        deadline = time.monotonic() + 20
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            outcomes.add(claim_bounded(claimer, f, inbox / "x.csv", timeout=10).outcome)
    finally:
        stop.set()
        swapper.join(10)
    assert outcomes & {"arrived", "refused"}
    for e in events(state, "file.arrived"):  # whatever was taken is a regular file
        assert stat.S_ISREG(os.lstat(e["stored_path"]).st_mode)


def test_a_directory_named_like_a_file_is_refused_with_an_event(env):
    state, inbox, log, claimer = env
    (inbox / "x.csv").mkdir()
    claimed = claimer.claim(folder(inbox), inbox / "x.csv")
    assert claimed.outcome == "refused"
    [event] = events(state, "file.refused")
    assert event["kind"] == "directory" and "drop files, not folders" in event["fix"]
    assert (inbox / "x.csv").is_dir()


def test_the_start_up_scan_reports_what_it_will_refuse(tmp_path):
    from ahgd_daemon.watch import Watchers

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.csv").write_text("a,b\n")
    os.symlink(tmp_path / "nowhere", inbox / "dangling.csv")
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "dir.csv").mkdir()
    (inbox / "other.txt").write_text("not the pattern")
    seen: list[str] = []
    watchers = Watchers([folder(inbox)], complete=lambda f, p: None,
                        candidate=lambda f, p: seen.append(p.name), logger=None)
    assert watchers.scan() == 4
    assert sorted(seen) == ["dangling.csv", "dir.csv", "good.csv", "pipe.csv"]

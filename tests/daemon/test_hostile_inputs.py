"""The real daemon against what people (and programs) really drop (issue 11, items 4-9).

One daemon, one drop folder with a ``required_columns`` input check, and in it:
a link to a private file outside the inbox, a dangling link, a hard link to a
file its sender edits later, a FIFO that stays there, a directory named
``x.csv``, files whose names are not UTF-8, 255-byte names (taken, quarantined,
and duplicated), a newline-free file of 40 MiB -- then a good file, which must
still load.  The daemon must stay up, record each of them, keep its memory
bounded, and let nothing of the private file through.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import psutil
import pytest

from .harness import Daemon, drop_csv, query, traces, wait_until, write_config

pytestmark = pytest.mark.slow

SECRET = "SECRET-7f3a9c-root-hash"
RAW_NAMES = [b"caf\xe9.csv", b"\xff\xfe.csv", b"\xfe\xff-2.csv", b"\x80\x81\x82.csv"]


def _drop_bytes_name(inbox: Path, raw: bytes, content: bytes) -> None:
    tmp = os.fsencode(inbox) + b"/.incoming.part"
    with open(tmp, "wb") as f:
        f.write(content)
    os.rename(tmp, os.fsencode(inbox) + b"/" + raw)


def _drop(inbox: Path, name: str, content: bytes) -> None:
    tmp = inbox / f".{name[:50]}.part"
    tmp.write_bytes(content)
    tmp.rename(inbox / name)


def _events(state: Path, type_: str) -> list[dict]:
    return [json.loads(r[0]) for r in
            query(state, "SELECT payload FROM events WHERE type = ? ORDER BY seq", (type_,))]


def _duckdb_contains(state: Path, needle: str) -> list[str]:
    """Output tables (every stage attempt's DuckDB file) holding ``needle`` anywhere."""
    import duckdb

    found = []
    for path in sorted((state / "data").rglob("*.duckdb")):
        con = duckdb.connect(str(path), read_only=True)
        try:
            for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
                hits = con.execute(f'SELECT COUNT(*) FROM "{table}" t WHERE '
                                   f"CAST(t AS VARCHAR) LIKE '%{needle}%'").fetchone()[0]
                if hits:
                    found.append(f"{path}:{table}")
        finally:
            con.close()
    return found


class _PeakRss:
    """The daemon's resident memory, sampled every 20 ms on a thread until stopped."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


def test_hostile_drops_leave_the_daemon_up_and_take_only_what_was_dropped(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    config = write_config(tmp_path, trigger=", input_check: {required_columns: [a, b]}")
    private = tmp_path / "private" / "secret.csv"
    private.parent.mkdir()
    private.write_text(f"a,b\n{SECRET},1\n{SECRET},2\n")
    sender = tmp_path / "sender" / "shared.csv"
    sender.parent.mkdir()
    sender.write_text("a,b\nshared,1\n")
    inbox = state / "inbox" / "csvpipe"
    inbox.mkdir(parents=True)
    os.mkfifo(inbox / "pipe.csv")               # sits there the whole time
    d = Daemon(config, state).wait_ready()
    try:
        os.symlink(private, inbox / "private.csv")
        os.symlink(tmp_path / "nowhere.csv", inbox / "dangling.csv")
        (inbox / "x.csv").mkdir()
        wait_until(lambda: len(_events(state, "file.refused")) >= 4, 30,
                   "the link, the dangling link, the FIFO and the directory to be refused")
        refused = {e["name"]: e["kind"] for e in _events(state, "file.refused")}
        assert refused == {"private.csv": "symlink", "dangling.csv": "symlink",
                           "pipe.csv": "fifo", "x.csv": "directory"}

        os.link(sender, inbox / "hard.csv")
        wait_until(lambda: any(e["name"] == "hard.csv" for e in _events(state, "file.arrived")),
                   30, "the hard-linked file to be taken")
        with open(sender, "a") as f:
            f.write("edited,2\n")

        for i, raw in enumerate(RAW_NAMES):
            _drop_bytes_name(inbox, raw, f"a,b\nname{i},{i}\n".encode())
        long_taken, long_empty = "t" * 251 + ".csv", "e" * 251 + ".csv"
        _drop(inbox, long_empty, b"")
        for _ in range(3):  # once taken, then twice a duplicate, under the same long name
            _drop(inbox, long_taken, b"a,b\nlong,1\n")
            wait_until(lambda: not (inbox / long_taken).exists(), 30, "the long name to go")

        baseline = psutil.Process(d.proc.pid).memory_info().rss
        rss = _PeakRss(d.proc.pid)
        with open(inbox / ".flat.part", "wb") as f:
            for _ in range(40):
                f.write(b"x," * (1 << 19))
        os.rename(inbox / ".flat.part", inbox / "flat.csv")
        wait_until(lambda: any(e["name"] == "flat.csv" for e in _events(state, "file.quarantined")),
                   60, "the newline-free file to be quarantined")
        peak = rss.stop()

        drop_csv(inbox, "good.csv", rows=25, seed=7)
        wait_until(lambda: query(state, "SELECT state FROM runs WHERE json_extract(params, "
                                        "'$.original_name') = 'good.csv'") == [("COMPLETED",)],
                   60, "the good file to load")
        wait_until(lambda: not query(state, "SELECT 1 FROM runs WHERE state IN "
                                            "('PENDING', 'RUNNING')"), 60, "every run to end")
        assert d.proc.poll() is None, d.output()
    finally:
        code = d.stop()
    assert code == 0, d.output()
    output = d.output()
    assert "Traceback" not in output

    # the link: refused by name, nothing of its target anywhere
    lines = [r for r in d.records() if r.get("event") == "file.refused"]
    assert any(r.get("path") == str(inbox / "private.csv") and r["level"] == "warning"
               for r in lines)
    for path in state.rglob("*"):
        if stat.S_ISREG(os.lstat(path).st_mode) and path.suffix != ".duckdb":
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in output
    assert _duckdb_contains(state, SECRET) == []
    assert os.path.islink(inbox / "private.csv") and private.read_text().count(SECRET) == 2

    # the hard link: stored as a copy, which the sender's edit did not reach
    [hard] = [e for e in _events(state, "file.arrived") if e["name"] == "hard.csv"]
    stored = Path(hard["stored_path"])
    assert stored.read_text() == "a,b\nshared,1\n" and os.stat(stored).st_nlink == 1

    # names that are not UTF-8: each taken, recorded faithfully, and loaded
    by_hex = {e.get("name_bytes_hex"): e for e in _events(state, "file.arrived")}
    for raw in RAW_NAMES:
        event = by_hex[raw.hex()]
        assert event["name"] == raw.decode("utf-8", "backslashreplace")
    loads = [t["rows"] for t in traces(state) if t["stage"] == "load" and t["event"] == "done"]
    assert len(loads) == 1 + len(RAW_NAMES) + 1 + 1   # hard, the four, the long one, good
    assert 25 in loads

    # 255-byte names: quarantined with a reason file, taken, and duplicates recorded
    [empty] = [e for e in _events(state, "file.quarantined") if e["name"] == long_empty]
    assert Path(empty["path"] + ".reason.json").exists()
    assert [e["name"] for e in _events(state, "file.duplicate")] == [long_taken] * 2

    # the newline-free file: a reason that says so, and the daemon's memory bounded
    [flat] = [e for e in _events(state, "file.quarantined") if e["name"] == "flat.csv"]
    assert "its first line is longer than 1 MiB" in flat["reason"]
    assert peak - baseline < 64 * (1 << 20), f"the daemon grew by {(peak - baseline) >> 20} MiB"

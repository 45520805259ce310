"""A history.db SQLite cannot read: every command says so in the same words, with what to
do, exits 1 and never shows a traceback; the salvage it gives works as written."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from state import EventLog, EventType as T, new_event

from .harness import ahgd_exe, env, write_config

pytestmark = pytest.mark.slow

COMMANDS = [["state", "check"], ["status"], ["history"], ["events"], ["metrics"], ["daemon", "--once"]]


def _history(state: Path, runs: int = 300) -> Path:
    """A real history of ``runs`` requested runs, checkpointed into history.db alone."""
    with EventLog.open(state, synchronous="OFF") as log:
        log.append_many([new_event(T.RUN_REQUESTED, f"run-{i}", pipeline="p", trigger="manual",
                                   params={"pad": "x" * 200}) for i in range(runs)])
    conn = sqlite3.connect(state / "history.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return state / "history.db"


def _random(db: Path) -> None:
    db.write_bytes(os.urandom(20_000))


def _text(db: Path) -> None:
    db.write_text("run_id,state\nrun-1,COMPLETED\n")


def _truncated(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def _cut_to_its_header(db: Path) -> None:
    os.truncate(db, 100)


def _overwritten_after_page_one(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)
    db.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_random, _text, _truncated, _cut_to_its_header,
                                    _overwritten_after_page_one], ids=lambda f: f.__name__[1:])
def test_every_command_reports_the_damage_and_what_to_do(tmp_path, damage):
    state = tmp_path / "state"
    db = _history(state)
    damage(db)
    before = db.read_bytes()
    config = write_config(tmp_path)
    messages = []
    for command in COMMANDS:
        extra = ["--config", str(config)] if command[0] == "daemon" else []
        proc = subprocess.run([*ahgd_exe(), *command, *extra, "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=120, env=env())
        shown = proc.stdout + proc.stderr
        assert proc.returncode == 1, (command, shown)
        assert "Traceback" not in shown, (command, shown)
        assert f"error: {db} is damaged: SQLite says " in proc.stderr, (command, shown)
        assert "It was left as it is." in proc.stderr
        assert "put history.db back from your backup" in proc.stderr
        assert f"mv {db}* {state / 'damaged'}/" in proc.stderr
        messages.append(proc.stderr[proc.stderr.index("error: "):])
    assert len(set(messages)) == 1, messages  # the same words from every command
    assert "nothing can be salvaged" in messages[0]
    assert db.read_bytes() == before  # looking changed nothing


def test_the_salvage_it_gives_recovers_the_readable_events(tmp_path):
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 shell is not installed (apt-get install sqlite3)")
    state = tmp_path / "state"
    db = _history(state, runs=3000)
    conn = sqlite3.connect(db)
    [(page_size,)] = conn.execute("PRAGMA page_size").fetchall()
    leaves = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'events' AND "
                                         "pagetype = 'leaf' ORDER BY pageno")]
    conn.close()
    with open(db, "r+b") as f:  # wreck one leaf page of the events table, half way
        f.seek((leaves[len(leaves) // 2] - 1) * page_size)
        f.write(b"\xff" * page_size)
    proc = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120, env=env())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    readable = next(line for line in lines if "events can still be read" in line)
    count = int(readable.split("Without a backup, ")[1].split(" events")[0].replace(",", ""))
    assert 0 < count < 3000 and f"(seq 1 to {count};" in readable
    # do what it says, to the letter: move aside, then the three salvage commands
    steps = [line.strip() for line in lines if line.startswith(" " * 7)]
    assert [s.split()[0] for s in steps] == ["mkdir", "touch", "(echo", "ahgd"], steps
    bin_dir = str(Path(ahgd_exe()[0]).parent)
    shell_env = env({"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    for step in steps:
        done = subprocess.run(["sh", "-c", step], capture_output=True, text=True, timeout=300,
                              env=shell_env)
        assert done.returncode == 0 or "malformed" in done.stderr, (step, done.stderr)
    again = subprocess.run([*ahgd_exe(), "state", "check", "--state-dir", str(state)],
                           capture_output=True, text=True, timeout=120, env=env())
    assert again.returncode == 0, again.stderr
    assert f"projections match a fresh fold of {count:,} events" in again.stdout
    with EventLog.open(state) as log:
        assert [e.run_id for e in log.events()] == [f"run-{i}" for i in range(count)]

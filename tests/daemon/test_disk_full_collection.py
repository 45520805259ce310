"""On a full disk retention still frees what its policy lets go, by itself and with ``ahgd gc``.

A real 20 MB tmpfs (mounted here, unmounted in a ``finally``) holds the state directory;
a file of zeros fills what is left of it, as another program on the same disk would.  Two
things went wrong there (the audit of issue 31): the daemon started its urgent collection
only once the alert ``system.disk_nearly_full`` was *recorded*, which a full disk refuses;
and every removal is an event appended before its files are deleted, which a full disk
refuses too, so even ``ahgd gc`` removed nothing.  Now the daemon looks at the disk itself,
and a removal refused for lack of room uses the collector's reserve
(``<state dir>/.reserve``) to be recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ahgd_daemon.removal import RESERVE, RESERVE_MAX_BYTES, reserve_size
from tests.daemon.harness import REPO, Daemon, ahgd_exe, drop_csv, env, query, wait_until
from tests.daemon.retention_kit import PIPELINE, Kit, write_configs

DISK = "20m"
#: an ordinary run of the kit's pipeline leaves about 1 MB under data/ (inline_tables: false)
RUNS = 8


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 20 MB tmpfs of this test's own (root only: skipped, saying why, elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 20 MB tmpfs for a real full disk needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs",
                              str(mnt)], capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(path: Path) -> Path:
    """Zeros in ``path`` until its disk has no byte left (1 MiB, then 4 KiB writes)."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                continue
    return path


def free_bytes(path: Path) -> int:
    disk = os.statvfs(path)
    return disk.f_bavail * disk.f_frsize


def _ahgd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ahgd_exe(), *args], capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=timeout)


def _run_dirs(state_dir: Path) -> set[str]:
    return {p.name for p in (state_dir / "data").iterdir() if p.name.startswith(PIPELINE)}


def test_ahgd_gc_on_a_full_disk_records_its_removals_with_the_reserve(
        tmp_path: Path, small_disk: Path) -> None:
    master = write_configs(tmp_path, "successful_runs: 1")
    state_dir = small_disk / "state"
    kit = Kit(master, state_dir)
    try:
        kit.succeed(True)
        runs = [kit.run() for _ in range(RUNS)]
    finally:
        kit.close()
    assert _run_dirs(state_dir) == set(runs)
    gc = ("gc", "--state-dir", str(state_dir), "--config", str(master))

    # no reserve yet (no daemon ever ran here): a clear refusal, and nothing lost
    filler = fill(small_disk / "filler")
    assert free_bytes(small_disk) < 64 * 1024
    refused = _ahgd(*gc)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    # (no one has the history open: SQLite cannot even make its -wal and -shm files)
    assert message.startswith(f"error: the disk holding {state_dir} is full: ahgd cannot open "
                              f"{state_dir / 'history.db'}"), message
    assert f"the room it keeps for this ({state_dir / RESERVE}) was not there" in message
    assert "Nothing was changed. Free some space on that disk yourself" in message
    assert f"df -h {state_dir}" in message and "delete nothing inside it by hand" in message
    assert _run_dirs(state_dir) == set(runs)
    assert not list((state_dir / ".trash").glob("*~*"))

    # room again: the first collection keeps the reserve (nothing to remove yet by a policy
    # of RUNS), then the disk fills up to the last byte
    filler.unlink()
    assert query(state_dir, "SELECT COUNT(*) FROM removals") == [(0,)]
    (tmp_path / "many").mkdir()
    many = write_configs(tmp_path / "many", f"successful_runs: {RUNS}")
    kept = _ahgd(*gc[:-1], str(many))
    assert kept.returncode == 0 and "removed 0 things" in kept.stdout, kept.stderr
    total = os.statvfs(small_disk).f_blocks * os.statvfs(small_disk).f_frsize
    assert (state_dir / RESERVE).stat().st_size == reserve_size(total) <= RESERVE_MAX_BYTES
    fill(filler)
    assert free_bytes(small_disk) < 64 * 1024

    began = time.monotonic()
    done = _ahgd(*gc, "--json")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["reserve_released_bytes"] == 0   # (released to open the history at all)
    assert sorted(i["path"] for i in report["items"]) == sorted(f"data/{r}" for r in runs[:-1])
    assert _run_dirs(state_dir) == {runs[-1]}
    removed = query(state_dir, "SELECT run_id FROM removals WHERE type = 'data.expired'")
    assert sorted(r for (r,) in removed) == sorted(runs[:-1])   # each one recorded, once
    assert not list((state_dir / ".trash").glob("*~*"))
    assert free_bytes(small_disk) > 4 * 1024 * 1024
    assert (state_dir / RESERVE).stat().st_size == reserve_size(total)   # made again
    check = _ahgd("state", "check", "--state-dir", str(state_dir))
    assert check.returncode == 0 and check.stdout.startswith("ok: integrity ok"), check.stderr
    print(f"ahgd gc on the full disk: {len(report['items'])} removals recorded, "
          f"{report['bytes']} bytes freed in {took:.2f} s")


def test_the_daemon_collects_at_once_when_the_disk_fills_up(
        tmp_path: Path, small_disk: Path) -> None:
    master = write_configs(tmp_path, "successful_runs: 2")
    master.write_text(master.read_text().replace(
        "shutdown_grace: PT5S}", "shutdown_grace: PT5S, monitoring: {sample_interval: PT2S}}"))
    state_dir = small_disk / "state"
    state_dir.mkdir()
    (state_dir / "ok").write_text("")   # the kit's load stage succeeds
    daemon = _Daemon(master, state_dir, tmp_path)
    wait_until(lambda: _events(daemon, "daemon_ready") or daemon.proc.poll() is not None, 30,
               "the daemon to start")
    assert daemon.proc.poll() is None, daemon.output()
    try:
        wait_until(lambda: _events(daemon, "gc_done"), 30, "the daemon's first collection")
        assert (state_dir / RESERVE).is_file()   # made at start-up
        inbox = state_dir / "inbox" / PIPELINE
        for n in range(RUNS):
            drop_csv(inbox, f"f{n}.csv", rows=5, seed=n)
        wait_until(lambda: query(state_dir, "SELECT COUNT(*) FROM runs WHERE state = "
                                            "'COMPLETED'") == [(RUNS,)], 120, "the runs")
        runs = sorted(r for (r,) in query(state_dir, "SELECT run_id FROM runs"))
        assert _run_dirs(state_dir) == set(runs)   # the next collection is 15 minutes away

        filler = fill(small_disk / "filler")   # another program fills the disk to the brim
        full_at = time.monotonic()
        assert free_bytes(small_disk) < 64 * 1024
        wait_until(lambda: [r for r in _events(daemon, "gc_done")
                            if r.get("trigger") == "disk nearly full"], 30,
                   "a collection of the full disk")
        took = time.monotonic() - full_at
        wait_until(lambda: len(_run_dirs(state_dir)) == 2, 30, "the old runs' outputs to go")
        removed = query(state_dir, "SELECT run_id FROM removals WHERE type = 'data.expired'")
        assert sorted(r for (r,) in removed) == sorted(set(runs) - _run_dirs(state_dir))
        assert free_bytes(small_disk) > 4 * 1024 * 1024
        assert _events(daemon, "gc_disk_nearly_full")[0]["free_bytes"] < 64 * 1024
        done = [r for r in _events(daemon, "gc_done") if r.get("trigger") == "disk nearly full"]
        assert done[0]["reserve_released_bytes"] > 0   # its removals recorded with the reserve
        assert not _events(daemon, "gc_failed"), _events(daemon, "gc_failed")
        wait_until(lambda: (state_dir / RESERVE).is_file(), 30, "the reserve to be made again")
        print(f"daemon: full disk collected {took:.1f} s after it filled up")
        filler.unlink()
    finally:
        code = daemon.stop(timeout=60)
    assert code == 0, daemon.output()[-3000:]
    assert not list((state_dir / ".trash").glob("*~*"))
    check = _ahgd("state", "check", "--state-dir", str(state_dir))
    assert check.returncode == 0 and check.stdout.startswith("ok: integrity ok"), check.stderr


class _Daemon(Daemon):
    """The harness's daemon, its log off the small disk (the harness puts it beside the
    state directory: a full disk would cut it short)."""

    def __init__(self, config: Path, state_dir: Path, log_dir: Path):
        self.config, self.state_dir = config, state_dir
        self.log_path = log_dir / f"daemon-{time.time_ns()}.log"
        self._out = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*ahgd_exe(), "daemon", "--config", str(config), "--state-dir", str(state_dir),
             "--json-logs"], stdout=self._out, stderr=subprocess.STDOUT, env=env(), cwd=REPO)


def _events(daemon: Daemon, name: str) -> list[dict]:
    """The daemon's log lines of event ``name`` (not a line it is still writing)."""
    out = []
    for line in daemon.output().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out

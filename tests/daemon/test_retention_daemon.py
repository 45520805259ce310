"""Retention with real processes (issue 14): a collection SIGKILLed in the middle of a removal
leaves nothing half removed once the daemon restarts; the daemon collects on its own and says
so; ``ahgd gc`` prints what goes with sizes, as a table or JSON, with or without a daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon.harness import REPO, Daemon, ahgd_exe, env, query, wait_until
from tests.daemon.retention_kit import Kit, write_configs


def _ahgd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ahgd_exe(), *args], capture_output=True, text=True, env=env(),
                          cwd=REPO, timeout=timeout)


def _completed_runs(tmp: Path, count: int, retain: str = "successful_runs: 1") -> tuple[Path, Path, list[str]]:
    master = write_configs(tmp, retain)
    kit = Kit(master, tmp / "state")
    try:
        kit.succeed(True)
        runs = [kit.run() for _ in range(count)]
    finally:
        kit.close()
    return master, tmp / "state", runs


def _data_files(state_dir: Path, run_id: str) -> list[str]:
    folder = state_dir / "data" / run_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("point", ["moved", "recorded"])
def test_sigkill_in_the_middle_of_a_removal_then_restart(tmp_path: Path, point: str) -> None:
    master, state_dir, runs = _completed_runs(tmp_path, 4)
    files = {r: _data_files(state_dir, r) for r in runs}
    child = subprocess.run([sys.executable, "-m", "tests.daemon.gc_child", str(state_dir),
                            str(master), "2", point], env=env(), cwd=REPO, timeout=120,
                           capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    assert len(list((state_dir / ".trash").glob("*~*"))) == 1   # one removal cut short
    check = _ahgd("state", "check", "--state-dir", str(state_dir))
    assert check.returncode == 0 and "removal(s) by retention were cut short" in check.stderr

    daemon = Daemon(master, state_dir, once=True)   # restart: finishes it, then collects
    assert daemon.wait(timeout=120) == 0, daemon.output()
    done = [r for r in daemon.records() if r.get("event") == "gc_done"]
    assert done and isinstance(done[-1]["longest_step_ms"], (int, float))
    assert not list((state_dir / ".trash").glob("*"))
    expired = query(state_dir, "SELECT run_id, COUNT(*) FROM removals WHERE type = "
                               "'data.expired' GROUP BY run_id")
    assert dict(expired) == {r: 1 for r in runs[:3]}   # each removal once, the newest kept
    for run_id in runs:   # all of a run's outputs, or none of them
        assert _data_files(state_dir, run_id) in ([], files[run_id])
    assert _data_files(state_dir, runs[3]) == files[runs[3]]
    check = _ahgd("state", "check", "--state-dir", str(state_dir))
    assert check.returncode == 0 and check.stdout.startswith("ok: integrity ok"), check.stderr
    assert "cut short" not in check.stderr   # (the kit's files are world-readable: a warning)


def test_ahgd_gc_without_a_daemon_dry_run_then_for_real(tmp_path: Path) -> None:
    master, state_dir, runs = _completed_runs(tmp_path, 3)
    base = ["gc", "--state-dir", str(state_dir)]
    nocfg = _ahgd(*base)
    assert nocfg.returncode == 2 and "--config is needed" in nocfg.stderr
    wrong = _ahgd(*base, "--config", str(master), "--pipeline", "csvpipes")
    assert wrong.returncode == 1 and "did you mean 'csvpipe'" in wrong.stderr

    dry = _ahgd(*base, "--config", str(master), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].split()[:5] == ["area", "path", "size", "rule", "why"]
    assert sorted(line.split()[1] for line in lines[1:3]) == sorted([f"data/{runs[0]}",
                                                                     f"data/{runs[1]}"])
    assert "successful_runs" in lines[1] and " kB" not in lines[1] and "B " in lines[1]
    assert any(line.startswith("would remove 2 things, ") for line in lines)
    assert (state_dir / "data" / runs[0]).exists()

    real = _ahgd(*base, "--config", str(master), "--json")
    report = json.loads(real.stdout)
    assert sorted(i["path"] for i in report["items"]) == sorted([f"data/{runs[0]}",
                                                                 f"data/{runs[1]}"])
    assert report["by_area"]["data"] == sum(i["bytes"] for i in report["items"]) > 0
    assert not (state_dir / "data" / runs[0]).exists()
    status = json.loads(_ahgd("status", "--state-dir", str(state_dir), "--json").stdout)
    storage = status["storage"]
    assert storage["last_collection"]["items"] == 2
    assert storage["last_collection"]["bytes"] == report["bytes"]
    assert storage["areas"]["data"] > 0 and storage["areas"]["history"] > 0


def test_the_daemon_collects_on_its_own_and_answers_ahgd_gc(tmp_path: Path) -> None:
    master, state_dir, runs = _completed_runs(tmp_path, 3)
    daemon = Daemon(master, state_dir, args=["--http", "127.0.0.1:0"]).wait_ready()
    try:
        wait_until(lambda: [r for r in daemon.records() if r.get("event") == "gc_done"], 30,
                   "the daemon's first collection")
        assert not (state_dir / "data" / runs[0]).exists()
        assert not (state_dir / "data" / runs[1]).exists()
        metrics = _ahgd("metrics", "--state-dir", str(state_dir)).stdout
        assert 'ahgd_state_dir_bytes{area="data"}' in metrics
        assert "ahgd_gc_last_removed 2.0" in metrics
        assert "ahgd_gc_last_longest_step_seconds" in metrics
        storage = json.loads(_ahgd("status", "--state-dir", str(state_dir), "--json").stdout)[
            "storage"]   # the daemon's dashboard document (the page and /api/dashboard too)
        assert storage["last_collection"]["items"] == 2 and storage["areas"]["data"] > 0
        assert storage["next_collection_in_s"] > 0
        # when it ended, not when the status was asked for: the same a second later
        time.sleep(1.1)
        later = json.loads(_ahgd("status", "--state-dir", str(state_dir), "--json").stdout)[
            "storage"]
        assert later["last_collection"]["at"] == storage["last_collection"]["at"]
        text = _ahgd("status", "--state-dir", str(state_dir)).stdout
        assert "last collection just now" not in text and "(measured " in text, text
        again = _ahgd("gc", "--state-dir", str(state_dir), "--dry-run")
        assert again.returncode == 0, again.stderr
        assert "would remove 0 things" in again.stdout and "by the daemon" in again.stdout
    finally:
        assert daemon.stop() == 0

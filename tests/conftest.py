"""Shared fixtures: real state directories in tmp_path, the installed `ahgd` CLI."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A fresh, empty state directory of its own for each test."""
    d = tmp_path / "state-dir"
    d.mkdir()
    return d


@pytest.fixture
def claim_env(tmp_path: Path):
    """(state dir, an empty inbox, a Claimer on a real event log there): drop-folder claims."""
    from ahgd_daemon.dropfolder import Claimer
    from state import EventLog

    state = tmp_path / "state"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    log = EventLog.open(state)
    yield state, inbox, Claimer(log, state)
    log.close()


def ahgd_command() -> list[str]:
    """The `ahgd` console script of this environment (falls back to `python -m`)."""
    exe = Path(sys.executable).with_name("ahgd")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ahgd")
    return [found] if found else [sys.executable, "-m", "ahgd_daemon"]


@pytest.fixture
def ahgd() -> list[str]:
    """The argv prefix that runs the real CLI as a subprocess."""
    return ahgd_command()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """An environment for subprocesses without a stray AHGD_STATE_DIR or NOTIFY_SOCKET."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AHGD_STATE_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env

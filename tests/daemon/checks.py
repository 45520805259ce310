"""``input_check`` callables for the drop-folder tests (imported by the check's child process)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def record_pid(path: Path) -> str | None:
    """Passes, after writing the pid it ran in to ``$AHGD_TEST_CHECK_PID``."""
    Path(os.environ["AHGD_TEST_CHECK_PID"]).write_text(str(os.getpid()))
    return None


def hang(path: Path) -> str | None:
    time.sleep(3600)
    return None


def crash(path: Path) -> str | None:
    os.kill(os.getpid(), signal.SIGKILL)
    return None


def chatty(path: Path) -> str | None:
    """Prints a lot to stdout (which must not become the answer), then refuses the file."""
    for _ in range(2000):
        print('{"problem": null}')
    sys.stdout.flush()
    return f"{path.name} is not wanted here"


def raises(path: Path) -> str | None:
    raise ValueError("the check itself is broken")

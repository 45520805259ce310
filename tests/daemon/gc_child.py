"""A collection that SIGKILLs its own process in the middle of a removal (the crash tests).

``python -m tests.daemon.gc_child STATE_DIR MASTER N POINT``: collects STATE_DIR by the
``retain:`` of MASTER and is killed at its N-th removal, either once the files are in the
trash but before the event is appended (POINT ``moved``) or once the event is appended but
before the trash is emptied (``recorded``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ahgd_daemon.collection import config_policy
from ahgd_daemon.removal import Collector
from pipelines.config import load_config
from state import EventLog


def main(state_dir: Path, master: Path, n: int, point: str) -> None:
    policy = config_policy(load_config([master], state_dir=state_dir))
    with EventLog.open(state_dir) as log:
        real_append, calls = log.append, [0]

        def append(event, *args, **kw):
            calls[0] += 1
            if calls[0] == n and point == "moved":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real_append(event, *args, **kw)
            if calls[0] == n and point == "recorded":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        log.append = append
        Collector(log, state_dir, policy).run()
    sys.exit(3)  # never reached: the N-th removal kills the process


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

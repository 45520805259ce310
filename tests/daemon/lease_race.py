"""``python -m tests.daemon.lease_race FILE SECONDS``: look whether FILE is open for writing
(``Entry.open_for_writing``, a read lease held for microseconds) in a loop while a child opens
it for writing in a loop; prints how often the look saw the writer.  Run as a process of its
own: the kernel's lease-break signal, were it SIGIO, would kill it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ahgd_daemon.inboxfiles import Entry

WRITER = """
import os, sys, time
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    os.close(os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND))
"""


def main(path: str, seconds: str) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, seconds])
    entry, seen, end = Entry(Path(path)), 0, time.monotonic() + float(seconds)
    while time.monotonic() < end:
        seen += entry.open_for_writing()
    writer.wait()
    entry.close()
    print(seen)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

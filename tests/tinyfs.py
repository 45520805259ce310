"""A tiny file system of the tests' own, to run out of space for real.

A child runs inside ``unshare --user --map-root-user --mount`` and mounts a tmpfs of a
few MiB; nothing outside the child sees it.  Tests that need it skip, saying why,
where user namespaces are not allowed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def tiny_tmpfs_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run([*UNSHARE, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_tiny_tmpfs = pytest.mark.skipif(
    not tiny_tmpfs_available(), reason="needs unshare and a mount namespace for a tiny file system")


def fill(path: Path) -> Path:
    """Write zeros to ``path`` until its file system is full; the file, to delete for room."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return path

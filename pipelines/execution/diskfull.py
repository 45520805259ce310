"""A full disk, as a stage attempt meets it: recognised, and waited out.

An attempt that fails for want of space is the machine's trouble, not the
stage's: :func:`disk_full` recognises it (``ENOSPC``/``EDQUOT``, ahgd's
``DiskFull``, or a library's "No space left on device", as DuckDB's IO
errors say), the attempt's event records ``"disk_full": true``, and the
engine makes the run wait for room -- :func:`disk_full_wait` -- whatever the
stage's ``retry_attempts``, without counting the attempt against them.
"""

from __future__ import annotations

import errno

from state.errors import DiskFull

#: a stage that failed for want of disk space waits this long before its next attempt,
#: doubling with each attempt up to DISK_FULL_MAX_S, whatever its retry_attempts say
DISK_FULL_FIRST_S = 5.0
DISK_FULL_MAX_S = 300.0


def disk_full(exc: BaseException | None) -> bool:
    """Did ``exc`` (or what caused it) come from a full disk?  ENOSPC or EDQUOT, ahgd's
    ``DiskFull``, or a library's "No space left on device" (DuckDB's IO errors say so)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, DiskFull) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_wait(attempt: int) -> float:
    """Seconds to wait for room before the attempt after ``attempt``."""
    return min(DISK_FULL_MAX_S, DISK_FULL_FIRST_S * 2 ** min(max(attempt - 1, 0), 16))

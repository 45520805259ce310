"""glibc's malloc, set once per process for DuckDB's way of allocating.

DuckDB (the Python wheel) allocates through the C library's ``malloc``.
glibc gives the memory at the top of its heap back to the kernel as soon as
more than ``M_TRIM_THRESHOLD`` of it is free (128 KiB until a large block
has been freed once), so a statement that allocates a few MiB in small pieces
and frees them, as binding a ``read_csv`` does (its sniffer: ~3.5 MiB), grows
the heap page by page, shrinks it at the end, and faults every page in again
next time.  Measured on a 20-row CSV: 2.2 ms of CPU a bind, 1.4 ms of it the
kernel's (~840 page faults); 0.65 ms with the heap kept (bench/README.md).

So the first DuckDB instance of a process (:mod:`pipelines.attemptdb`)
calls :func:`tune` once: free memory at the top of the heap is kept up to
:data:`TRIM_BYTES` (64 MiB), and blocks from :data:`MMAP_BYTES` (32 MiB) up
are mapped on their own, which is where glibc's own adaptive thresholds end
up after large blocks have been freed.  Memory is still given back: DuckDB
trims the allocator itself after a task that used more than
``allocator_flush_threshold`` (128 MB), and glibc trims a heap once more than
64 MiB at its top is free (each of glibc's arenas has its own heap: a process
whose threads allocate in several keeps up to that much free in each).

Nothing is changed when the process already has its own settings: any of
glibc's ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_THRESHOLD_`` environment variables, or the same thresholds as
``glibc.malloc.*`` tunables in ``GLIBC_TUNABLES`` (Dask's nanny, for one, starts
its workers with ``MALLOC_TRIM_THRESHOLD_=65536``: kept); ``AHGD_MALLOC_TUNE=0``
turns this off.  On a C library without ``mallopt`` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import os
import sys

from .execution.children import switched_off

#: mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

TRIM_BYTES = 64 << 20
MMAP_BYTES = 32 << 20

_GLIBC_OWN = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
#: the tunables that set what mallopt sets here (``arena_max``, ``tcache_*`` and the rest
#: leave the thresholds alone)
_TUNABLES_OWN = ("glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
                 "glibc.malloc.mmap_threshold", "glibc.malloc.mmap_max")

#: None until :func:`tune` ran; then what it did ("tuned", or why not)
outcome: str | None = None


def tune() -> str:
    """Set the thresholds once for this process; return what was done (or why not)."""
    global outcome
    if outcome is None:
        outcome = _tune()
    return outcome


def _tune() -> str:
    if switched_off("AHGD_MALLOC_TUNE"):
        return "off (AHGD_MALLOC_TUNE)"
    own = [name for name in _GLIBC_OWN if name in os.environ]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(f"{name}=" in tunables for name in _TUNABLES_OWN):
        own.append("GLIBC_TUNABLES")
    if own:
        return f"left as set by {', '.join(own)}"
    if not sys.platform.startswith("linux"):
        return "not glibc"
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either turns glibc's adaptive thresholds off
    if mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) != 1:
        return "refused by the C library"
    return "tuned"

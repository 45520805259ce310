"""The header row of a CSV file, read from a bounded prefix and never through a link.

    header = read_csv_header(path, encoding="utf-8-sig", delimiter=",")

At most ``limit`` bytes (:data:`HEADER_LIMIT`, 1 MiB) are read: a file with no
line break in its first MiB has no header worth the name, and is refused as
such instead of being read whole.  A symbolic link, a FIFO or a device is
refused without being read (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``).
Every problem is an :class:`~pipelines.errors.InputError` whose message names
the file and what to do, and quotes nothing of the file's content.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import stat
from pathlib import Path

from .errors import InputError

HEADER_LIMIT = 1 << 20
#: what a file in Windows-1252 (Excel's CSV on Windows) is said to be, and what to do
WINDOWS_1252_FIX = ("Windows-1252, which Excel's \"CSV (Comma delimited)\" writes on Windows "
                    "(its – ’ “ ” €); save it as \"CSV UTF-8\", or read it with "
                    "pipelines.TableExtractor, which reads Windows-1252")
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_csv_header(path: str | os.PathLike[str], *, encoding: str = "utf-8-sig",
                    delimiter: str = ",", limit: int = HEADER_LIMIT) -> list[str]:
    """The first row of the CSV file at ``path`` (``encoding``: a Python codec name).

    Raises InputError for a link or special file, an empty file, bytes that are
    not ``encoding`` text, a first line longer than ``limit`` bytes, or a
    header that is not valid CSV; OSError when the file cannot be opened."""
    path = Path(path)
    name = _shown(path.name)
    data, whole = _prefix(path, name, limit)
    return parse_header(data, whole, name, encoding=encoding, delimiter=delimiter, limit=limit)


def parse_header(data: bytes, whole: bool, name: str, *, encoding: str = "utf-8-sig",
                 delimiter: str = ",", limit: int = HEADER_LIMIT) -> list[str]:
    """The first row of the CSV text whose first bytes are ``data`` (all of it when
    ``whole``), as :func:`read_csv_header` reads it; ``name`` is the file's, for messages."""
    label = encoding.lower().removesuffix("-sig").removesuffix("_sig")
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(data, final=whole)
    except UnicodeDecodeError as exc:
        if label == "utf-8" and 0x80 <= exc.object[exc.start] <= 0x9F:
            raise InputError(
                f"{name} is not utf-8 text (byte 0x{exc.object[exc.start]:02x} at byte "
                f"{exc.start}): it looks like {WINDOWS_1252_FIX}") from None
        raise InputError(f"{name} is not {label} text ({exc.reason} at byte {exc.start}); "
                         f"save it as {label}, or set the encoding it is in") from None
    lines = list(io.StringIO(text, newline=""))
    if not whole and lines and not lines[-1].endswith(("\n", "\r")):
        lines.pop()  # cut at the limit: the header may not need it, but may not read it

    def feed():
        yield from lines
        if not whole:
            raise _Cut

    try:
        row = next(csv.reader(feed(), delimiter=delimiter), None)
    except _Cut:
        raise _too_long(name, limit) from None
    except csv.Error as exc:
        raise InputError(f"{name}: the header row is not valid CSV ({exc})") from None
    if row is None:
        raise InputError(f"{name} is empty; expected a CSV file whose first row names the "
                         "columns")
    if not row:
        raise InputError(f"{name} starts with an empty line; expected a CSV file whose first "
                         "row names the columns")
    return row


class _Cut(Exception):
    """The header needs more than the bytes read."""


def open_regular_fd(path: str | os.PathLike[str], name: str | None = None) -> int:
    """A read-only descriptor of ``path``: never through a link, never a FIFO or device
    (an :class:`InputError` naming the file, ``name`` or its own, says so)."""
    name = name or Path(path).name
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise InputError(f"{name} is a symbolic link or a special file; only regular files "
                             "are read (copy the file itself there)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{name} is not a regular file; only regular files are read")
    return fd


def _prefix(path: Path, name: str, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes from the start of the file, and whether that is all of it."""
    fd = open_regular_fd(path, name)
    try:
        chunks, size = [], 0
        while size <= limit:
            block = os.pread(fd, limit + 1 - size, size)
            if not block:
                break
            chunks.append(block)
            size += len(block)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data[:limit], len(data) <= limit


def _too_long(name: str, limit: int) -> InputError:
    return InputError(f"{name}: its first line is longer than {_size(limit)} (ahgd reads at "
                      f"most {_size(limit)} to find the header), so it has no CSV header row; "
                      "check that it is a CSV file whose first row names the columns")


def _size(n: int) -> str:
    return f"{n // (1 << 20)} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


def _shown(name: str) -> str:
    """A file name as valid text (undecodable bytes as ``\\xNN``)."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")

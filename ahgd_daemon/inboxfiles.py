"""Taking a file out of a drop folder without trusting what is there.

A drop-folder entry is looked at with ``lstat`` and opened once, with
``O_NOFOLLOW | O_NONBLOCK``: a symbolic link is never followed (wherever it
points, nothing behind it is read), and a FIFO or device swapped in at the
last moment cannot block the open.  Only a descriptor that ``fstat`` says is
a regular file is used, and everything after comes from that one descriptor:
the SHA-256, and the copy when one is made, so what is hashed is what is
stored.  A file is linked into the store when it has no other name; a file
whose inode has other names (a hard link made by the sender) is copied, so
that a later edit through another name cannot change a stored input under
its hash.

Names are bytes to the kernel; Python hands over undecodable bytes as lone
surrogates, which SQLite and JSON readers refuse.  :func:`display_name` is a
name as text for events, logs and reason files (an undecodable byte shows as
``\\xNN``), :func:`name_bytes_hex` the exact bytes whenever those differ from
the text's UTF-8, and :func:`stored_name` a short, safe, recognisable name for
the state directory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import signal
import stat
from pathlib import Path

from state.errors import StoreError
from state.store import safe_name

CHUNK = 1 << 20
#: names in the state directory are at most this many bytes: room is left under the
#: file system's 255 for ``.reason.json`` and a ``.N`` that keeps names unique
STORED_NAME_MAX = 150
_KINDS = ((stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"), (stat.S_ISDIR, "directory"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"))
_OPEN_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
               | getattr(os, "O_NOCTTY", 0))
#: link() errors that mean "copy instead" (other file system, no hard links, not allowed)
_COPY_INSTEAD = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EMLINK,
                 errno.ENOTSUP}


# -- names ------------------------------------------------------------------------------

def display_name(name: str | os.PathLike[str]) -> str:
    """``name`` as valid text: undecodable bytes of a file name shown as ``\\xNN``."""
    text = os.fspath(name)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def name_bytes_hex(name: str | os.PathLike[str]) -> str | None:
    """The raw bytes of a file name, in hex, when it is not valid UTF-8 (else None).

    ``bytes.fromhex(...)`` gives the name back exactly; a UTF-8 name is its
    :func:`display_name`."""
    text = os.fspath(name)
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").hex()


def stored_name(name: str) -> str:
    """A name for the state directory: only ``A-Za-z0-9_.=-``, at most ``STORED_NAME_MAX``
    bytes.  A longer name keeps its start and its extension around ten hex digits of the
    SHA-256 of the whole name, so different long names stay different."""
    try:
        safe = safe_name(display_name(name))
    except StoreError:  # nothing usable left (all dots)
        safe = "file"
    if len(safe) <= STORED_NAME_MAX:
        return safe
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:10]
    stem, dot, ext = safe.rpartition(".")
    suffix = f".{ext}" if dot and stem and 0 < len(ext) <= 16 else ""
    return f"{safe[:STORED_NAME_MAX - len(suffix) - 11]}-{digest}{suffix}"


def unique(path: Path) -> Path:
    """``path``, or ``name.1.ext``, ``name.2.ext`` ... whichever does not exist yet."""
    if not os.path.lexists(path):
        return path
    stem, suffix = path.stem, path.suffix
    for i in range(1, 100000):
        candidate = path.with_name(f"{stem}.{i}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(path)  # pragma: no cover


# -- opening ----------------------------------------------------------------------------

class NotRegular(Exception):
    """A drop-folder entry that is not a regular file (``kind``: symlink, fifo, ...)."""

    def __init__(self, kind: str, st: os.stat_result | None):
        super().__init__(kind)
        self.kind, self.st = kind, st


def kind_of(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "special file")


class Entry:
    """A drop-folder file opened for reading: ``fd`` and its ``fstat`` (``st``)."""

    def __init__(self, path: Path):
        self.path = path
        first = os.lstat(path)   # FileNotFoundError: it is gone
        if not stat.S_ISREG(first.st_mode):  # nothing that is not a file is ever opened
            raise NotRegular(kind_of(first.st_mode), first)
        try:
            self.fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EMLINK):  # swapped for a link,
                again = os.lstat(path)                                  # a socket ...
                raise NotRegular(kind_of(again.st_mode), again) from None
            raise
        self.st = os.fstat(self.fd)
        if not stat.S_ISREG(self.st.st_mode):
            os.close(self.fd)
            raise NotRegular(kind_of(self.st.st_mode), self.st)

    def __enter__(self) -> "Entry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def changed(self) -> bool:
        """Did the file change (size or mtime) since it was opened?  (A writer still at it.)"""
        now = os.fstat(self.fd)
        return (now.st_size, now.st_mtime_ns) != (self.st.st_size, self.st.st_mtime_ns)

    def sha256(self) -> tuple[str, int]:
        """(SHA-256, bytes) of the file, read from the descriptor in constant memory."""
        h, offset = hashlib.sha256(), 0
        while block := os.pread(self.fd, CHUNK, offset):
            h.update(block)
            offset += len(block)
        return h.hexdigest(), offset

    def copy_to(self, dst: Path) -> tuple[str, int]:
        """Copy the file into a new file ``dst`` (fsynced), hashing what is copied."""
        h, offset = hashlib.sha256(), 0
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            while block := os.pread(self.fd, CHUNK, offset):
                h.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view):]
                offset += len(block)
            os.fsync(out)
        finally:
            os.close(out)
        return h.hexdigest(), offset

    def link_to(self, dst: Path) -> bool:
        """Give the opened file the second name ``dst``; False (nothing made) when it has
        other names already, another process has it open for writing (a writer that renamed
        it into the folder before closing it), or the file system cannot or will not link it
        here."""
        if self.st.st_nlink > 1 or self.open_for_writing():
            return False
        try:
            os.link(self.path, dst, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _COPY_INSTEAD or exc.errno == errno.ENOENT:  # (the name went meanwhile:
                return False                                             # copy what we opened)
            raise
        linked = os.lstat(dst)
        if (linked.st_dev, linked.st_ino) != (self.st.st_dev, self.st.st_ino):
            os.unlink(dst)  # the name was swapped after we opened it: copy what we opened
            return False
        return True

    def open_for_writing(self) -> bool:
        """Whether the file may be written through a descriptor some process holds: a linked
        file would go on changing under its hash with every such write; a copy cannot.

        Linux refuses a read lease (``F_SETLEASE``) on a file open for writing: that answers
        for the daemon's own user's files (and for any, with CAP_LEASE).  Where it cannot
        answer (another user's file, a file system without leases, not Linux), a file that
        anyone but the daemon's user may write is taken as possibly written."""
        setlease = getattr(fcntl, "F_SETLEASE", None)
        try:
            if setlease is None:
                raise OSError(errno.EINVAL, "no leases here")
            # a writer opening the file while we hold the lease (for microseconds) makes the
            # kernel signal us: SIGURG, which is ignored unless handled, not SIGIO, which kills
            fcntl.fcntl(self.fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(self.fd, setlease, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return True
            return (self.st.st_uid != os.geteuid()
                    or bool(self.st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)))
        fcntl.fcntl(self.fd, setlease, fcntl.F_UNLCK)
        return False

    def release(self) -> None:
        """Remove the drop-folder name, if it still names the file we took."""
        try:
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == (self.st.st_dev, self.st.st_ino):
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def place(src: Path, dst: Path) -> Path:
    """Move ``src`` (ours, in the state directory) to ``dst`` or the first free
    ``name.N.ext`` beside it, never replacing a file; return where it went."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = unique(dst)
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue  # taken between our look and the link: the next name
        except OSError as exc:
            if exc.errno not in _COPY_INSTEAD:
                raise
            os.rename(src, target)  # no hard links here; ours alone, so no race to lose
            return target
        os.unlink(src)
        return target

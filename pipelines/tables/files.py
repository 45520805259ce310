"""What a dropped file is (CSV, gzip'd CSV, a spreadsheet, a ZIP of one of those) and its text.

    kind = file_kind(path)                    # "csv", "gzip", "zip", "xlsx", "xls" or "ods"
    member = zip_member(path, "seifa.xlsx")   # the one member of a ZIP, or the one named
    encoding = guess_encoding(stream)   # "utf-8", "windows-1252" or "latin-1" (streamed)

Kinds are told by the file's first bytes, not its name (a stored input keeps
the name it was dropped with, whatever that was).  Files are opened once,
never through a symbolic link, and only when they are regular files.  Nothing
here reads more than it must: :func:`csv_prefix` decompresses at most
``limit`` bytes of a gzip'd or zipped CSV for a header check.
"""

from __future__ import annotations

import codecs
import gzip
import os
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

from ..csvheader import open_regular_fd
from ..errors import InputError

SPREADSHEETS = ("xlsx", "xls", "ods")
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_CHUNK = 1 << 20


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading: never through a link, never a FIFO or device."""
    return os.fdopen(open_regular_fd(path), "rb")


def sniff(head: bytes, names: list[str] | None = None) -> str:
    """The kind of a file from its first bytes (and, for a ZIP, its member names)."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(_OLE2):
        return "xls"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        names = names or []
        if "xl/workbook.xml" in names or "xl/workbook.bin" in names:
            return "xlsx"
        if "mimetype" in names and "content.xml" in names:
            return "ods"
        return "zip"
    return "csv"


def file_kind(path: str | os.PathLike[str]) -> str:
    with open_regular(path) as f:
        head = f.read(8)
        if head.startswith(b"PK"):
            f.seek(0)
            return sniff(head, _zip_names(f, Path(path).name))
    return sniff(head)


def _zip_names(f: BinaryIO, name: str) -> list[str]:
    try:
        with zipfile.ZipFile(f) as z:
            return z.namelist()
    except zipfile.BadZipFile as exc:
        raise InputError(f"{name} starts like a ZIP file but is not one ({exc}); send the file "
                         "again whole") from None


def zip_member(path: str | os.PathLike[str], member: str | None = None) -> str:
    """The member of the ZIP file at ``path`` to read: ``member``, else its one data file."""
    name = Path(path).name
    with open_regular(path) as f:
        names = _zip_names(f, name)
    files = [n for n in names if not n.endswith("/") and not _hidden(n)]
    if member is not None:
        if member in names:
            return member
        base = [n for n in files if n.rsplit("/", 1)[-1] == member]
        if len(base) == 1:
            return base[0]
        raise InputError(f"{name} has no member {member!r} (its members: "
                         f"{', '.join(files[:20]) or 'none'}); check the member option")
    data = [n for n in files if n.lower().endswith((".csv", ".txt", ".xlsx", ".xlsm", ".xls",
                                                    ".ods", ".csv.gz"))]
    if len(data) == 1:
        return data[0]
    if not data:
        raise InputError(f"{name} is a ZIP file with no CSV or spreadsheet in it (its members: "
                         f"{', '.join(files[:20]) or 'none'})")
    raise InputError(f"{name} is a ZIP file with {len(data)} data files "
                     f"({', '.join(data[:20])}); say which with the extract stage's member "
                     f"option, e.g. member: {data[0]!r}")


def _hidden(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".") or not base


def member_kind(path: str | os.PathLike[str], member: str) -> tuple[str, int]:
    """(kind, uncompressed size) of a ZIP member: a spreadsheet inside a ZIP is told by its
    name (``.ods``, else ``.xlsx``), so that nothing but its first bytes is decompressed."""
    with open_regular(path) as f, zipfile.ZipFile(f) as z:
        info = z.getinfo(member)
        with z.open(info) as m:
            head = m.read(8)
    if head.startswith(b"PK"):
        return ("ods" if member.lower().endswith(".ods") else "xlsx"), info.file_size
    return sniff(head), info.file_size


def member_bytes(path: str | os.PathLike[str], member: str) -> bytes:
    with open_regular(path) as f, zipfile.ZipFile(f) as z:
        return z.read(member)


def extract_member(path: str | os.PathLike[str], member: str, target: Path) -> Path:
    """Copy a ZIP member to ``target`` (decompressing a gzip'd member too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_regular(path) as f, zipfile.ZipFile(f) as z, z.open(member) as src, \
            open(target, "wb") as out:
        head = src.read(2)
        stream: BinaryIO = src
        if head == b"\x1f\x8b":
            src.close()
            stream = gzip.open(z.open(member))     # type: ignore[assignment]
        else:
            out.write(head)
        while block := stream.read(_CHUNK):
            out.write(block)
    return target


def text_stream(path: str | os.PathLike[str], member: str | None = None) -> BinaryIO:
    """The bytes of a CSV, decompressed: a plain file, a gzip'd one, or a ZIP member."""
    f = open_regular(path)
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f)     # type: ignore[return-value]
    if member is not None:
        z = zipfile.ZipFile(f)
        m = z.open(member)
        if m.peek(2)[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=m)     # type: ignore[return-value]
        return m
    return f


def csv_prefix(path: str | os.PathLike[str], member: str | None, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` decompressed bytes from the start of a CSV, and whether that is all."""
    try:
        with text_stream(path, member) as s:
            data = s.read(limit + 1)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{Path(path).name} cannot be decompressed ({exc}); send the file "
                         "again whole") from None
    return data[:limit], len(data) <= limit


#: the bytes Latin-1 reads as control codes and Windows-1252 as text (€ ‘ ’ “ ” – — …):
#: what Excel's "CSV (Comma delimited)" writes on Windows, and DuckDB's Latin-1 refuses
_C1 = bytes(range(0x80, 0xA0))
#: the five of them that Windows-1252 leaves undefined
_UNDEFINED = b"\x81\x8d\x8f\x90\x9d"


def guess_encoding(stream: BinaryIO) -> str:
    """``utf-8`` when every byte of ``stream`` is UTF-8 text, else ``windows-1252`` when
    it has bytes that only Windows-1252 reads as text (:func:`eight_bit`), else
    ``latin-1`` (in which any bytes are text); :data:`MIXED` when it is UTF-8 in places
    only.  Reads the stream to its end, a MiB at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    seen, utf8 = b"", False
    try:
        while block := stream.read(_CHUNK):
            seen = block
            decoder.decode(block)
            utf8 = utf8 or not block.isascii()
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:      # from the block that is not UTF-8 on
        c1, undefined, block = False, False, seen
        while block:
            utf8 = utf8 or _utf8_sequence(block)
            undefined = undefined or _undefined(block)
            c1 = c1 or _has_c1(block)
            block = stream.read(_CHUNK)
        return _eight_bit(utf8, undefined, c1)
    return "utf-8"


def eight_bit(data: bytes) -> str:
    """``windows-1252`` when ``data`` (text that is not UTF-8) holds a byte Windows-1252
    reads as a character and Latin-1 as a control code, and none it leaves undefined;
    else ``latin-1``; :data:`MIXED` when it also holds UTF-8's characters.  (The bytes from
    0xA0 up are the same characters in Latin-1 and Windows-1252.)"""
    return _eight_bit(_utf8_sequence(data), _undefined(data), _has_c1(data))


def _eight_bit(utf8: bool, undefined: bool, c1: bool) -> str:
    """The verdict on text that is not UTF-8, from what it holds: UTF-8's characters too
    (:data:`MIXED`), a byte Windows-1252 leaves undefined, one only Windows-1252 reads."""
    return MIXED if utf8 else "windows-1252" if c1 and not undefined else "latin-1"


#: text that is UTF-8 in places and not in others (a file edited in two programs, two exports
#: pasted together): read as either, some of it would be garbled
MIXED = "mixed"
#: a UTF-8 character of two to four bytes: in Latin-1 or Windows-1252 text, such a run is
#: mojibake ("Ã©"), not text anybody writes
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|"
                            rb"[\xf0-\xf4][\x80-\xbf]{3}")


def _utf8_sequence(data: bytes) -> bool:
    return _UTF8_SEQUENCE.search(data) is not None


def _has_c1(data: bytes) -> bool:
    return len(data.translate(None, _C1)) != len(data)


def _undefined(data: bytes) -> bool:
    return len(data.translate(None, _UNDEFINED)) != len(data)


def transcode(path: str | os.PathLike[str], member: str | None, target: Path,
              encoding: str) -> Path:
    """Copy the CSV at ``path`` (decompressed; a ZIP's ``member``) to ``target`` as UTF-8
    from ``encoding``: for what DuckDB cannot read itself (Windows-1252).  Lines are kept
    as they are, so a line number in the copy is one in the file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder(encoding)()
    with text_stream(path, member) as src, open(target, "wb") as out:
        while block := src.read(_CHUNK):
            out.write(decoder.decode(block).encode("utf-8"))
        out.write(decoder.decode(b"", final=True).encode("utf-8"))
    return target


__all__ = ["SPREADSHEETS", "open_regular", "sniff", "file_kind", "zip_member", "member_kind",
           "member_bytes", "extract_member", "text_stream", "csv_prefix", "guess_encoding",
           "eight_bit", "transcode"]

"""What a worker process prints, copied into the log of the run whose attempt it is running.

A worker of the daemon (``AHGD_RUN_LOGS`` set) points its own stdout and stderr
(the file descriptors, so C libraries and child processes are caught too) at
pipes.  A thread reads them line by line, passes every byte on to where the
output went before (the daemon's stdout: journald), and appends each line to
the run log of the attempt in progress as ``{"event": "output", "stream":
"stdout"|"stderr", "line": ...}`` (:mod:`state.runlogs`).  The worker's own
structured lines bypass the pipes (they are written to the log by
:mod:`pipelines.execution.logsetup`).  After each attempt the pipes are
drained before the next attempt's lines can be taken for this one's.
"""

from __future__ import annotations

import os
import selectors
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from state import runlogs
from state.timestamps import format_ts, utc_now

#: how long an attempt's end waits for the pipes to be drained (a stage's child process may
#: keep one open: its later output goes to the next attempt's log, or to none)
DRAIN_S = 2.0


class OutputCapture:
    """The worker's stdout and stderr, teed into the current attempt's run log."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._current: dict[str, Any] | None = None
        self._marker = b""
        self._drained: dict[int, threading.Event] = {}
        sys.stdout.flush()
        sys.stderr.flush()
        self._pass: dict[int, int] = {}     # pipe read end -> the original fd
        self._streams: dict[int, str] = {}
        self._partial: dict[int, bytes] = {}
        self._selector = selectors.DefaultSelector()
        for fd, name in ((1, "stdout"), (2, "stderr")):
            original = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            os.set_inheritable(fd, True)
            self._pass[read_end] = original
            self._streams[read_end] = name
            self._partial[read_end] = b""
            self._selector.register(read_end, selectors.EVENT_READ)
        for stream in (sys.stdout, sys.stderr):  # a print() reaches the pipe when it is made
            try:
                stream.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
            except (AttributeError, ValueError):
                pass
        threading.Thread(target=self._pump, name="ahgd-output", daemon=True).start()

    def original_stdout(self) -> TextIO:
        """Where the worker's structured log lines go: its stdout as it was, not the pipe."""
        fd = next(o for r, o in self._pass.items() if self._streams[r] == "stdout")
        return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")

    @contextmanager
    def attempt(self, run_id: str, pipeline: str, stage: str, attempt: int) -> Iterator[None]:
        """Lines printed meanwhile belong to this attempt's run log."""
        with self._lock:
            self._current = {"run_id": run_id, "pipeline": pipeline, "stage": stage,
                             "attempt": attempt}
        try:
            yield
        finally:
            self._drain()
            with self._lock:
                self._current = None

    def _drain(self) -> None:
        """Wait until everything written to the pipes so far has been read."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        marker = b"\x00ahgd-drained-" + os.urandom(8).hex().encode() + b"\n"
        with self._lock:
            self._marker = marker
            self._drained = {fd: threading.Event() for fd in (1, 2)}
        for fd in (1, 2):
            try:
                os.write(fd, marker)
            except OSError:
                self._drained[fd].set()
        for event in self._drained.values():
            event.wait(DRAIN_S)

    def _pump(self) -> None:
        while True:
            for key, _ in self._selector.select():
                fd = key.fd
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    self._selector.unregister(fd)
                    continue
                self._take(fd, chunk)

    def _take(self, fd: int, chunk: bytes) -> None:
        data = self._partial[fd] + chunk
        lines = data.split(b"\n")
        self._partial[fd] = lines.pop()
        if len(self._partial[fd]) > runlogs.MAX_LINE:  # no newline in sight: a line of its own
            lines.append(self._partial[fd])
            self._partial[fd] = b""
        out = []
        for line in lines:
            with self._lock:
                marker = self._marker
            if marker and line.endswith(marker[:-1]):
                line = line[:-len(marker) + 1]
                target = 1 if self._streams[fd] == "stdout" else 2
                if line:
                    out.append(line)
                    self._record(fd, line)
                self._drained.get(target, threading.Event()).set()
                continue
            out.append(line)
            self._record(fd, line)
        if out:
            try:
                os.write(self._pass[fd], b"".join(line + b"\n" for line in out))
            except OSError:
                pass

    def _record(self, fd: int, line: bytes) -> None:
        with self._lock:
            current = dict(self._current) if self._current else None
        if current is None:
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        runlogs.append(self.state_dir, current["run_id"], {
            "timestamp": format_ts(utc_now()), "level": "info", "event": "output",
            "stream": self._streams[fd], "line": text, **current})


_capture: OutputCapture | None = None


def start_capture() -> OutputCapture | None:
    """In a worker of the daemon (``AHGD_RUN_LOGS`` set): capture its output; else None."""
    global _capture
    from .logsetup import RUN_LOGS_ENV

    state_dir = os.environ.get(RUN_LOGS_ENV)
    if not state_dir or _capture is not None:
        return _capture
    _capture = OutputCapture(state_dir)
    return _capture

"""Connection limits shared by the daemon's two servers (control socket, HTTP status page).

Whoever can connect must not be able to starve the daemon or the people who
ask it something.  So each server:

- serves at most ``limit`` connections at once; when all are taken, the
  connection that has been *sending its request* the longest is dropped to
  make room (a client that has sent its request is never dropped), so a
  flood of idle or trickling connections cannot keep ``ahgd status`` or
  ``/healthz`` out;
- gives every client one deadline for its whole request, however slowly it
  trickles bytes (``DeadlineReader``), not a timeout per read;
- backs off when the process runs out of file descriptors instead of
  spinning on a listening socket it cannot accept from;
- logs a client that went away (closed early, reset, too slow, dropped to
  make room) as one JSON line at debug level, never a traceback; anything
  else is one error line (the traceback inside it, as a JSON string).
"""

from __future__ import annotations

import errno
import io
import socket
import socketserver
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

#: errors of accept(2) that mean "out of descriptors or memory", not "a bad client"
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long the accept loop rests after running out of descriptors
BACKOFF_S = 0.1
#: how long a new connection waits for a slot once the oldest reader was dropped
ADMIT_WAIT_S = 2.0


class RequestTooSlow(TimeoutError):
    """The client did not send its whole request before the deadline."""


def client_gone(exc: BaseException | None) -> bool:
    """True for the errors a client causes by leaving: reset, closed early, too slow."""
    return isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                            TimeoutError))


class Slots:
    """At most ``limit`` connections; a full house drops its oldest reader for a newcomer."""

    def __init__(self, limit: int):
        self.limit = limit
        self._cond = threading.Condition()
        self._open = 0
        self._reading: OrderedDict[int, socket.socket] = OrderedDict()
        self._dropped: set[int] = set()

    def admit(self, sock: socket.socket, wait: float = ADMIT_WAIT_S) -> bool:
        """Take a slot for ``sock``; False when every slot serves a request being answered."""
        with self._cond:
            if self._open >= self.limit and self.drop_oldest_reader():
                self._cond.wait_for(lambda: self._open < self.limit, timeout=wait)
            if self._open >= self.limit:
                return False
            self._open += 1
            self._reading[id(sock)] = sock
            return True

    def answering(self, sock: socket.socket) -> None:
        """``sock`` has sent its request: it is no longer one to drop."""
        with self._cond:
            self._reading.pop(id(sock), None)

    def release(self, sock: socket.socket) -> None:
        with self._cond:
            self._reading.pop(id(sock), None)
            self._dropped.discard(id(sock))
            self._open -= 1
            self._cond.notify_all()

    def was_dropped(self, sock: socket.socket) -> bool:
        with self._cond:
            return id(sock) in self._dropped

    def drop_oldest_reader(self) -> bool:
        """Shut down the connection that has been sending its request the longest.

        Its thread wakes up (its read returns end-of-file), ends and frees the slot.
        """
        with self._cond:
            if not self._reading:
                return False
            key, sock = self._reading.popitem(last=False)
            self._dropped.add(key)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._open


class DeadlineReader(io.RawIOBase):
    """A socket's bytes, until one deadline for all of them (not a timeout per read)."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock = sock
        self.deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTooSlow("the request did not arrive in time")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise RequestTooSlow("the request did not arrive in time") from None


class BoundedServer(socketserver.ThreadingMixIn):
    """A ThreadingMixIn with the limits above; mix in before the socketserver class.

    ``name`` prefixes the log lines (``control``, ``http``); a subclass may
    override ``refuse(sock)`` to answer a connection for which there is no slot.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # listen(2) backlog: a burst of clients is queued, not refused
    name = "server"

    def __init__(self, *args: Any, limit: int, logger: Any, **kwargs: Any):
        self.slots = Slots(limit)
        self.logger = logger
        self._last_fd_warning = -1e9
        super().__init__(*args, **kwargs)

    def get_request(self) -> Any:
        try:
            return super().get_request()  # type: ignore[misc]
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                self._out_of_descriptors(exc)
            raise  # socketserver skips this accept

    def _out_of_descriptors(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_fd_warning >= 60:
            self._last_fd_warning = now
            self.logger.warning(f"{self.name}_out_of_descriptors", error=exc.strerror or str(exc),
                                connections=self.slots.in_use,
                                fix="raise the open-files limit (LimitNOFILE= in the unit, "
                                    "ulimit -n) or find what holds descriptors (ls /proc/PID/fd)")
        self.slots.drop_oldest_reader()
        time.sleep(BACKOFF_S)  # the listening socket stays readable: never spin on it

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.admit(request):
            self.logger.debug(f"{self.name}_connection_refused", limit=self.slots.limit,
                              reason="every connection is being answered")
            self.refuse(request)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self.slots.release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self.slots.release(request)

    def refuse(self, sock: socket.socket) -> None:
        """Answer a connection that gets no slot (the default: just close it)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if client_gone(exc):
            self.log_client_gone(request, exc)
        else:
            self.logger.error(f"{self.name}_request_failed",
                              error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def log_client_gone(self, request: Any, exc: BaseException | None) -> None:
        """One debug line for a client that left, or that we dropped, and why."""
        dropped = self.slots.was_dropped(request)
        self.logger.debug(f"{self.name}_client_gone",
                          error=f"{type(exc).__name__}: {exc}" if exc else None,
                          why=("dropped to make room for a new connection" if dropped else
                               "too slow" if isinstance(exc, RequestTooSlow) else
                               "the client closed the connection"))

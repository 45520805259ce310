"""How the daemon's main loop sleeps and is woken: a socket pair, and the signals.

The loop sleeps in ``select`` on one end of the pair until its timeout; any
thread (a watcher, a run thread, the control socket, a signal handler) wakes
it at once by writing a byte to the other end.
"""

from __future__ import annotations

import select
import signal
import socket
from collections.abc import Callable


class Waker:
    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)

    def wake(self) -> None:
        """Any thread: end the current (or the next) sleep now."""
        try:
            self._write.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def sleep(self, timeout: float) -> None:
        """Until ``timeout`` seconds have passed or someone wakes us."""
        try:
            select.select([self._read], [], [], timeout)
            while self._read.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass


def install_signal_handlers(stop: Callable[[], None], reload: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop``; SIGHUP calls ``reload``."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop())
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload())

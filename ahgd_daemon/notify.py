"""The sd_notify protocol over ``$NOTIFY_SOCKET``, without a systemd library.

Under systemd (``Type=notify``) the service manager hands the daemon a unix
datagram socket in ``NOTIFY_SOCKET`` and, when ``WatchdogSec=`` is set, the
timeout in ``WATCHDOG_USEC`` (and the pid it is meant for in ``WATCHDOG_PID``).
Each message is one datagram of newline-separated ``KEY=value`` lines.

A :class:`Notifier` is built from an environment mapping, read once when
:meth:`Notifier.from_environ` is called.  Sending never raises for a socket
problem and never logs: it returns ``False`` and the daemon carries on.
Without ``NOTIFY_SOCKET`` every method is a no-op returning ``False``.

Worker processes must not inherit the variables (``NotifyAccess=main`` would
reject and log their datagrams, and a worker pinging the watchdog would hide
a hung daemon): start them with :func:`without_notify_environment`.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Callable, Mapping

#: The variables systemd sets for the notify protocol and the watchdog.
NOTIFY_ENVIRONMENT_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

_KEY = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_SEND_TIMEOUT_S = 2.0


def without_notify_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``environ`` without NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

    For the ``env=`` of worker processes; to make ``multiprocessing`` workers
    clean as well, build the Notifier with ``unset_environment=True``.
    """
    return {k: v for k, v in environ.items() if k not in NOTIFY_ENVIRONMENT_KEYS}


class Notifier:
    """Sends READY/STOPPING/WATCHDOG/STATUS/RELOADING to the service manager.

    ``address`` is the raw ``NOTIFY_SOCKET`` value: an absolute path or
    ``@name`` for the abstract namespace; anything else (unset, empty, a
    relative path, ``vsock:``) leaves the notifier disabled.  ``clock``
    returns CLOCK_MONOTONIC in nanoseconds, for ``MONOTONIC_USEC=``.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._clock = clock

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> Notifier:
        """Read the notify variables from ``environ`` (``os.environ`` when None).

        With ``unset_environment=True`` the three variables are removed from
        that mapping afterwards (it must then be mutable), as sd_notify(3)
        does, so that processes started later do not inherit them.
        """
        env = os.environ if environ is None else environ
        notifier = cls(
            env.get("NOTIFY_SOCKET"),
            watchdog_usec=env.get("WATCHDOG_USEC"),
            watchdog_pid=env.get("WATCHDOG_PID"),
            clock=clock,
        )
        if unset_environment:
            for key in NOTIFY_ENVIRONMENT_KEYS:
                if key in env:
                    del env[key]  # type: ignore[attr-defined]
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to talk to."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when there is no watchdog.

        None also when WATCHDOG_PID names another process (we are a child of
        the process the watchdog is for) or a value is malformed.  Ping at
        half this interval.
        """
        usec = _positive_int(self._watchdog_usec)
        if usec is None:
            return None
        if self._watchdog_pid is not None and _positive_int(self._watchdog_pid) != os.getpid():
            return None
        return usec / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Start-up (crash recovery included) is done; the unit becomes active."""
        return self.send(READY=1, STATUS=status)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun."""
        return self.send(STOPPING=1, STATUS=status)

    def reloading(self, status: str | None = None) -> bool:
        """A config reload has begun; send :meth:`ready` when it is done."""
        return self.send(
            RELOADING=1, MONOTONIC_USEC=self._clock() // 1000, STATUS=status
        )

    def watchdog(self) -> bool:
        """The main loop is alive."""
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """One line for ``systemctl status``."""
        return self.send(STATUS=text)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in the order given; None values are left out.

        Newlines inside a value are replaced by spaces so that text cannot
        add fields of its own.  A key that is not upper-case letters, digits
        and underscores is a programming error and raises ValueError, with
        or without a service manager.
        """
        lines = []
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ValueError(
                    f"sd_notify field {key!r} is not a valid name; "
                    "use upper-case letters, digits and underscores such as STATUS"
                )
            if value is not None:
                text = str(value).replace("\r", " ").replace("\n", " ")
                lines.append(f"{key}={text}")
        if not lines:
            return False
        return self.send_raw("\n".join(lines))

    def send_raw(self, text: str) -> bool:
        """Send ``text`` as one datagram; True when the socket took it."""
        if self._address is None:
            return False
        try:
            data = text.encode("utf-8")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(_SEND_TIMEOUT_S)
                sent = sock.sendto(data, self._address)
        except (OSError, UnicodeError, ValueError):
            return False
        return sent == len(data)

    def __repr__(self) -> str:
        return f"Notifier(enabled={self.enabled}, watchdog_interval={self.watchdog_interval()})"


def _socket_address(value: str | None) -> bytes | None:
    """NOTIFY_SOCKET as a sockaddr_un path: '@name' is the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _positive_int(value: str | None) -> int | None:
    if value is None or not _DIGITS.match(value):
        return None
    number = int(value)
    return number if number > 0 else None

"""The control socket: how `ahgd run|retry|cancel|status` reach a running daemon.

A unix stream socket at ``<state dir>/ahgd.sock`` (file permissions decide
who may use it); one JSON request per connection, one JSON reply.  When a
daemon runs on a state directory it does the work asked for, so there are
never two writers racing on the same run.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

from state.errors import AhgdError

SOCKET_NAME = "ahgd.sock"
_MAX_REQUEST = 1 << 20


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


class ControlError(AhgdError):
    """The daemon could not be asked, or answered with an error (its message is for the user)."""


def request(state_dir: Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """Send one request; None if no daemon listens on this state directory."""
    path = socket_path(state_dir)
    if not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket file left by a daemon that was killed
        except PermissionError:
            raise ControlError(f"no permission to use the daemon's socket {path}; run this as the "
                               "daemon's user or a member of its group (e.g. sudo -u ahgd ahgd ...)")
        try:
            s.sendall(json.dumps(payload).encode() + b"\n")
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError as exc:  # includes timeouts
            raise ControlError(f"the daemon on {path} did not answer ({exc}); the request may "
                               "have reached it: check `ahgd history` before asking again") from None
    finally:
        s.close()
    reply = json.loads(b"".join(chunks) or b"{}")
    if not reply.get("ok", False):
        raise ControlError(reply.get("error") or "the daemon refused the request")
    return reply


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        data = self.rfile.readline(_MAX_REQUEST)
        try:
            req = json.loads(data or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            reply = {"ok": True, **(self.server.dispatch(req) or {})}  # type: ignore[attr-defined]
        except Exception as exc:  # every failure is an answer, never a dead server
            reply = {"ok": False, "error": str(exc), "type": type(exc).__name__}
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class ControlServer:
    """Serves requests on the socket in a thread; ``dispatch(request) -> reply``."""

    def __init__(self, state_dir: Path, dispatch: Callable[[dict[str, Any]], dict[str, Any]]):
        self.path = socket_path(state_dir)
        self._dispatch = dispatch
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # only one daemon holds the state lock, so a socket file here is stale
        self.path.unlink(missing_ok=True)
        old = os.umask(0o117)  # owner and group may talk to the daemon
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old)
        self._server.dispatch = self._dispatch  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="ahgd-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)

"""The control socket: how `ahgd run|retry|cancel|status` reach a running daemon.

A unix stream socket at ``<state dir>/ahgd.sock`` (file permissions decide
who may use it); one JSON request per connection, one JSON reply.  When a
daemon runs on a state directory it does the work asked for, so there are
never two writers racing on the same run.

Whoever may connect cannot turn the daemon's rights against its machine: the
daemon never opens a path a client names.  An input file travels as an open
descriptor beside the request (``SCM_RIGHTS``), opened by the client with
the client's own rights; the peer's uid and pid (``SO_PEERCRED``) go into
the log of every request that changes something.  A request is at most
``MAX_REQUEST`` bytes and must arrive whole within ``REQUEST_DEADLINE_S``;
at most ``MAX_CONNECTIONS`` are served at once (``connections.py``).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import structlog

from state.errors import AhgdError

from .connections import BoundedServer, RequestTooSlow

SOCKET_NAME = "ahgd.sock"
MAX_REQUEST = 64 * 1024       # bytes in one request (ahgd's own are a few hundred)
MAX_CONNECTIONS = 64          # connections served at once
REQUEST_DEADLINE_S = 5.0      # for the whole request to arrive, however it trickles
REPLY_TIMEOUT_S = 30.0        # for a client to take its reply
CONNECT_PATIENCE_S = 10.0     # a client's wait while the daemon's accept queue is full
MAX_FDS = 1                   # descriptors passed with one request (the input file)


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


class ControlError(AhgdError):
    """The daemon could not be asked, or answered with an error (its message is for the user)."""


class RequestTooLarge(AhgdError):
    """A request over ``MAX_REQUEST`` bytes."""


class Peer(NamedTuple):
    """Who is on the other end of a connection (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


class Request(dict):
    """A client's JSON request, with what came beside it: the descriptors it passed
    (``fds``, open for as long as the request is handled) and who sent it (``peer``)."""

    fds: tuple[int, ...] = ()
    peer: Peer | None = None


def request(state_dir: Path, payload: dict[str, Any], timeout: float = 30.0,
            fds: Sequence[int] = ()) -> dict[str, Any] | None:
    """Send one request (and ``fds``, open files, beside it); None if no daemon listens here."""
    path = socket_path(state_dir)
    if not path.exists():
        return None
    data = json.dumps(payload).encode() + b"\n"
    if len(data) > MAX_REQUEST:
        raise ControlError(f"this request is {len(data):,} bytes; the daemon's control socket takes "
                           f"at most {MAX_REQUEST:,} bytes per request: send less (smaller params)")
    s = _connect(path, timeout)
    if s is None:
        return None  # a socket file left by a daemon that was killed
    try:
        try:
            sent = socket.send_fds(s, [data], list(fds)) if fds else 0
            s.sendall(data[sent:])
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the daemon may have answered already (a refusal) and closed: read it
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # it answered, then closed with our request half read
            if not chunks or not chunks[-1].endswith(b"\n"):
                raise ControlError(f"the daemon on {path} closed the connection without "
                                   "answering; check `ahgd history` before asking again, and "
                                   "the daemon's log for why") from None
        except OSError as exc:  # includes timeouts
            raise ControlError(f"the daemon on {path} did not answer ({exc}); the request may "
                               "have reached it: check `ahgd history` before asking again") from None
    finally:
        s.close()
    if not chunks:
        raise ControlError(f"the daemon on {path} closed the connection without answering; the "
                           "request may have reached it: check `ahgd history` before asking again, "
                           "and the daemon's log for why")
    reply = json.loads(b"".join(chunks))
    if not reply.get("ok", False):
        raise ControlError(reply.get("error") or "the daemon refused the request")
    return reply


def _connect(path: Path, timeout: float) -> socket.socket | None:
    """A connected socket; None when nobody listens; waits while the accept queue is full."""
    deadline = time.monotonic() + min(timeout, CONNECT_PATIENCE_S)
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            return None
        except PermissionError:
            s.close()
            raise ControlError(f"no permission to use the daemon's socket {path}; run this as the "
                               "daemon's user or a member of its group (e.g. sudo -u ahgd ahgd ...)")
        except (BlockingIOError, InterruptedError, TimeoutError) as exc:
            s.close()  # the daemon's accept queue is full
            if time.monotonic() >= deadline:
                raise ControlError(
                    f"the daemon's socket {path} takes no new connections ({exc.strerror or exc}: "
                    "its queue is full, so the daemon is overloaded or stuck); try again in a "
                    "moment, and if it lasts, look at its log (journalctl -u ahgd-daemon) and "
                    "restart it") from None
            time.sleep(0.05)


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock = self.request
        fds: list[int] = []
        try:
            try:
                data = _read_request(sock, fds)
            except RequestTooLarge as exc:
                reply = {"ok": False, "error": str(exc), "type": "RequestTooLarge"}
            else:
                if data is None or self.server.slots.was_dropped(sock):
                    # left without asking anything, or dropped (before its request was whole)
                    self.server.log_client_gone(sock, None)
                    return
                self.server.slots.answering(sock)
                reply = self.server.answer(data, tuple(fds), _peer(sock))
        finally:
            for fd in fds:
                os.close(fd)
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.sendall(json.dumps(reply, default=str).encode() + b"\n")  # a client gone: one debug line


def _read_request(sock: socket.socket, fds: list[int]) -> bytes | None:
    """The request line (and descriptors passed with it, into ``fds``); None if the client sent
    nothing.  One deadline for all of it; RequestTooLarge past MAX_REQUEST bytes."""
    deadline = time.monotonic() + REQUEST_DEADLINE_S
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTooSlow(f"no whole request within {REQUEST_DEADLINE_S:g} s")
        sock.settimeout(left)
        try:
            chunk, got, _flags, _addr = socket.recv_fds(sock, 65536, MAX_FDS)
        except TimeoutError:
            raise RequestTooSlow(f"no whole request within {REQUEST_DEADLINE_S:g} s") from None
        for fd in got:  # more than MAX_FDS in all are refused in dispatch; keep no more open
            if len(fds) <= MAX_FDS:
                fds.append(fd)
            else:
                os.close(fd)
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise RequestTooLarge(
                f"the request is larger than {MAX_REQUEST:,} bytes ({MAX_REQUEST // 1024} KiB), "
                "the most the daemon's control socket takes; send less (ahgd's own requests are "
                "a few hundred bytes: keep params small)")
        if not chunk or b"\n" in chunk:
            return bytes(buf) if buf or fds else None


def _peer(sock: socket.socket) -> Peer | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return Peer(*struct.unpack("3i", raw))


class _Server(BoundedServer, socketserver.UnixStreamServer):
    name = "control"
    allow_reuse_address = True
    dispatch: Callable[[Request], dict[str, Any]]

    def answer(self, data: bytes, fds: tuple[int, ...], peer: Peer | None) -> dict[str, Any]:
        """Every failure is an answer, never a dead server; the error says whose fault it is."""
        try:
            req = json.loads(data)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
            return {"ok": False, "type": "BadRequest",
                    "error": f"the request is not JSON ({exc}); send one JSON object on one line, "
                             'e.g. {"cmd": "ping"}'}
        if not isinstance(req, dict):
            return {"ok": False, "type": "BadRequest",
                    "error": 'a request is one JSON object, e.g. {"cmd": "ping"}'}
        request = Request(req)
        request.fds, request.peer = fds, peer
        if req.get("cmd") in ("run", "retry", "cancel"):
            self.logger.info("control_request", cmd=req.get("cmd"), pipeline=req.get("pipeline"),
                             run_id=req.get("run_id"), peer_uid=peer and peer.uid,
                             peer_pid=peer and peer.pid)
        try:
            return {"ok": True, **(self.dispatch(request) or {})}
        except AhgdError as exc:
            return {"ok": False, "error": str(exc), "type": type(exc).__name__}
        except Exception as exc:  # ours, not the client's: say so, and log the traceback
            self.logger.error("control_request_failed", cmd=req.get("cmd"),
                              error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return {"ok": False, "type": type(exc).__name__,
                    "error": f"the daemon failed to answer ({type(exc).__name__}: {exc}); this is "
                             "a fault in ahgd, not in the request: its log has the details"}

    def refuse(self, sock: socket.socket) -> None:
        reply = {"ok": False, "type": "Busy",
                 "error": f"the daemon is answering {self.slots.limit} requests at once, its "
                          "limit; try again in a moment"}
        try:
            sock.send(json.dumps(reply).encode() + b"\n", socket.MSG_DONTWAIT)
        except OSError:
            pass


class ControlServer:
    """Serves requests on the socket in a thread; ``dispatch(request) -> reply``."""

    def __init__(self, state_dir: Path, dispatch: Callable[[Request], dict[str, Any]]):
        self.path = socket_path(state_dir)
        self._dispatch = dispatch
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # only one daemon holds the state lock, so a socket file here is stale
        self.path.unlink(missing_ok=True)
        old = os.umask(0o117)  # owner and group may talk to the daemon
        try:
            self._server = _Server(str(self.path), _Handler, limit=MAX_CONNECTIONS,
                                   logger=structlog.get_logger("ahgd.control"))
        finally:
            os.umask(old)
        self._server.dispatch = self._dispatch
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="ahgd-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)

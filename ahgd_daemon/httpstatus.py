"""The daemon's read-only HTTP status server (off unless ``--http HOST:PORT``).

    GET /               the dashboard page (one self-contained HTML file, no CDN)
    GET /healthz        200 "ok" once recovery is done and the main loop turns; 503 otherwise
    GET /metrics        Prometheus text format
    GET /api/dashboard  the dashboard document (active runs, last runs, alerts, system)
    GET /api/runs       ?limit=50&pipeline=NAME: runs with every stage attempt, newest first
    GET /api/runs/{id}  one run and its events
    GET /api/runs/{id}/log  the run's log as text (?stage=S; ?format=json: one object a line)
    GET /status         what `ahgd status --json` shows of the daemon

Read-only by construction: only GET and HEAD are answered (anything else is
405), and run history is read through a ``mode=ro`` SQLite connection of each
request's own.  At most ``MAX_CONNECTIONS`` at once, each with
``REQUEST_DEADLINE_S`` for its whole request; when all are taken, the one
that has been sending its request the longest is dropped for the newcomer,
so trickling clients cannot keep ``/healthz`` from answering
(``connections.py``).  It binds to loopback unless ``allow_remote`` is given with a
token; a token, when set, is checked on every request (``Authorization:
Bearer <token>`` or ``?token=<token>``).
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from pipelines.errors import ConfigError

from . import runs_api
from .connections import BoundedServer, DeadlineReader

PAGE = ("web", "dashboard.html")
MAX_CONNECTIONS = 32      # connections served at once (the oldest still sending makes room)
REQUEST_DEADLINE_S = 10   # for the whole request (line and headers), however it trickles
REPLY_TIMEOUT_S = 30      # for a client to take its reply
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")


class StatusSources(NamedTuple):
    """What the server shows, as callables the daemon provides."""

    dashboard: Callable[[], dict[str, Any]]
    metrics: Callable[[], str]
    health: Callable[[], tuple[bool, str]]
    status: Callable[[], dict[str, Any]]
    history_db: Callable[[], str]           # path of history.db, opened read-only per request


def read_token(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace removed), or ConfigError."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the HTTP token file {path}: {exc.strerror or exc}; "
                          "create it (e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`) or "
                          "fix its permissions") from None
    if not token:
        raise ConfigError(f"the HTTP token file {path} is empty; put a long random token in it "
                          "(e.g. `openssl rand -hex 32 > FILE`)")
    return token


class HttpPlan(NamedTuple):
    """Where and how the daemon serves its status (``--http`` and the master file)."""

    listen: str
    token: str | None
    allow_remote: bool


def plan(listen: str, token: str | None, allow_remote: bool, settings: Any) -> HttpPlan:
    """The flags given (``--http``, the token, ``--http-allow-remote``) completed from the
    master file's ``daemon:`` settings, and checked: a refused address raises ConfigError."""
    if token is None and settings.http_token_file is not None:
        token = read_token(settings.http_token_file)
    allow_remote = allow_remote or settings.http_allow_remote
    check_bind(listen, allow_remote=allow_remote, token=token)
    return HttpPlan(listen, token, allow_remote)


def serve(plan: HttpPlan, sources: StatusSources, logger: Any) -> StatusServer:
    """Start a server as planned, and log where it listens."""
    server = StatusServer(plan.listen, sources, token=plan.token, allow_remote=plan.allow_remote,
                          logger=logger)
    server.start()
    host = server.address[0]
    logger.info("http_status", listen=plan.listen, host=host, port=server.port,
                url=f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/",
                token_required=plan.token is not None)
    return server


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8787`` for IPv6) as (host, port)."""
    host, sep, port = str(listen).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {listen!r} is not a listen address; use HOST:PORT such as "
                          "127.0.0.1:8787 (port 0 picks a free port)")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    """True if every address ``host`` names is a loopback address."""
    ip = _ip_loopback(host)
    if ip is not None:
        return ip
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(listen: str, *, allow_remote: bool, token: str | None) -> tuple[str, int]:
    """The (host, port) to bind, or ConfigError saying why not and what to do."""
    host, port = parse_listen(listen)
    if allow_remote and not token:
        raise ConfigError("--http-allow-remote (daemon.http_allow_remote) needs a token, checked "
                          "on every request: put it in a file readable by the daemon only and "
                          "pass --http-token-file FILE (daemon.http_token_file), or set "
                          "AHGD_HTTP_TOKEN")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            f"--http {listen}: {host} is not a loopback address. The status server shows run "
            "errors and file paths, so it listens on 127.0.0.1 or [::1] unless you also give "
            "--http-allow-remote with a token (--http-token-file FILE or AHGD_HTTP_TOKEN; in "
            "the master file daemon.http_allow_remote and daemon.http_token_file); or keep it "
            "on loopback behind a reverse proxy")
    return host, port


def _ip_loopback(text: str) -> bool | None:
    """Whether the IP address ``text`` is loopback; None when ``text`` is not an address."""
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return None


class StatusServer:
    def __init__(self, listen: str, sources: StatusSources, *, token: str | None = None,
                 allow_remote: bool = False, logger: Any = None):
        self.address = check_bind(listen, allow_remote=allow_remote, token=token)
        self._sources = sources
        self._token = token
        self._logger = logger or structlog.get_logger("ahgd.http")
        self._server: _Server | None = None

    def start(self) -> None:
        handler = _handler_class(self._sources, self._token)
        host, port = self.address
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self._server = server_class(self.address, handler, limit=MAX_CONNECTIONS,
                                        logger=self._logger)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} for --http: {exc.strerror or exc}; another "
                "process may hold that port (see `ss -ltnp`): pick another port, or 0 for any "
                "free one") from None
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="ahgd-http-status", daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(BoundedServer, HTTPServer):
    """The limits of ``connections.BoundedServer``: no flood of idle or trickling
    connections takes every thread of the daemon, nor keeps ``/healthz`` out
    (the token is only checked once a request is read)."""

    name = "http"


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str


def _json(status: int, doc: Any) -> _Reply:
    return _Reply(status, json.dumps(doc, default=str).encode(), "application/json")


def _text(status: int, text: str) -> _Reply:
    return _Reply(status, text.encode(), "text/plain; charset=utf-8")


def _page() -> bytes:
    return resources.files("ahgd_daemon").joinpath(*PAGE).read_bytes()


def _route(sources: StatusSources, path: str, query: dict[str, list[str]]) -> _Reply:
    from pipelines.monitoring import PROMETHEUS_CONTENT_TYPE

    if path in ("/", "/index.html"):
        return _Reply(200, _page(), "text/html; charset=utf-8")
    if path == "/healthz":
        ok, why = sources.health()
        return _text(200 if ok else 503, why + "\n")
    if path == "/metrics":
        return _Reply(200, sources.metrics().encode(), PROMETHEUS_CONTENT_TYPE)
    if path == "/api/dashboard":
        return _json(200, sources.dashboard())
    if path == "/status":
        return _json(200, sources.status())
    if path == "/api/runs":
        limit = _limit(query)
        if isinstance(limit, _Reply):
            return limit
        pipeline = (query.get("pipeline") or [None])[0]
        with runs_api.connect_ro(sources.history_db()) as conn:
            return _json(200, runs_api.runs_document(conn, limit=limit, pipeline=pipeline))
    if path.startswith("/api/runs/") and path.endswith("/log"):
        run_id = unquote(path[len("/api/runs/"):-len("/log")])
        with runs_api.connect_ro(sources.history_db()) as conn:
            return _run_log(conn, sources.history_db(), run_id, query)
    if path.startswith("/api/runs/"):
        run_id = unquote(path[len("/api/runs/"):])
        with runs_api.connect_ro(sources.history_db()) as conn:
            doc = runs_api.run_document(conn, run_id)
        if doc is None:
            return _json(404, {"error": f"no run {run_id!r} in the event log; list runs with "
                                        "/api/runs"})
        return _json(200, doc)
    return _json(404, {"error": f"no page {path!r}; try /, /healthz, /metrics, /api/dashboard, "
                                "/api/runs, /api/runs/RUN_ID or /status"})


def _run_log(conn: Any, history_db: str, run_id: str, query: dict[str, list[str]]) -> _Reply:
    """``ahgd logs RUN_ID`` over HTTP: its last lines as text, or JSON lines."""
    lines = runs_api.run_log(conn, Path(history_db).parent, run_id,
                             (query.get("stage") or [None])[0])
    if lines is None:
        return _json(404, {"error": f"no run {run_id!r} in the event log; list runs with "
                                    "/api/runs"})
    if (query.get("format") or ["text"])[0] == "json":
        return _Reply(200, "".join(json.dumps(r, default=str) + "\n" for r in lines).encode(),
                      "application/x-ndjson")
    from .runlog import render

    return _text(200, "".join(render(r) + "\n" for r in lines) or "(no lines yet)\n")


def _limit(query: dict[str, list[str]]) -> int | _Reply:
    text = (query.get("limit") or ["50"])[0]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= runs_api.MAX_RUNS:
        return _json(400, {"error": f"limit={text!r} is not a whole number from 1 to "
                                    f"{runs_api.MAX_RUNS}; use e.g. ?limit=50"})
    return int(text)


def _handler_class(sources: StatusSources, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ahgd"
        sys_version = ""
        server: _Server

        def setup(self) -> None:
            super().setup()
            # one deadline for the request line and headers together, not one per read
            self.rfile = io.BufferedReader(
                DeadlineReader(self.connection, time.monotonic() + REQUEST_DEADLINE_S))

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.server.slots.was_dropped(self.request):
                self.close_connection = True  # dropped for a newcomer before it was whole
                return False
            self.server.slots.answering(self.request)
            self.connection.settimeout(REPLY_TIMEOUT_S)
            return True

        def handle(self) -> None:
            super().handle()
            if self.server.slots.was_dropped(self.request):
                self.server.log_client_gone(self.request, None)

        def log_error(self, format: str, *args: Any) -> None:
            # http.server's own note of a client that was too slow: one debug line
            self.server.logger.debug("http_client_gone", why=format % args)

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self._answer(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(head=True)

        def _refuse_write(self) -> None:
            self._send(_json(405, {"error": f"{self.command} is refused: the status server is "
                                            "read-only; change state with the ahgd command "
                                            "line (ahgd run, retry, cancel)"}),
                       head=False, extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_write  # noqa: N815

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            """http.server's own errors (unknown method, bad request line) as JSON too."""
            if code == 501:  # a method with no do_X: as read-only as the others
                self._refuse_write()
                return
            self.close_connection = True
            self._send(_json(code, {"error": message or explain or "bad request"}),
                       head=self.command == "HEAD")

        def _answer(self, head: bool) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if token is None and not self._local_host():
                self._send(_json(421, {"error": "this status server answers requests for "
                                                "127.0.0.1, [::1] or localhost only (the Host "
                                                "header said otherwise)"}), head)
                return
            if token is not None and not self._authorised(url.query):
                self._send(_json(401, {"error": "a token is needed: send 'Authorization: "
                                                "Bearer <token>' or add ?token=<token>"}),
                           head, extra={"WWW-Authenticate": 'Bearer realm="ahgd"'})
                return
            try:
                reply = _route(sources, url.path, query)
            except Exception as exc:  # a broken page must not take the daemon down
                reply = _json(500, {"error": f"{type(exc).__name__}: {exc}"})
            self._send(reply, head)

        def _authorised(self, raw_query: str) -> bool:
            header = self.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else None
            if given is None:  # unquote, not parse_qs: a '+' in a base64 token stays a '+'
                given = next((unquote(part[6:]) for part in raw_query.split("&")
                              if part.startswith("token=")), None)
            return given is not None and hmac.compare_digest(given.encode(), token.encode())

        def _local_host(self) -> bool:
            """Without a token, only loopback names: a DNS-rebinding page gets nothing."""
            host = self.headers.get("Host")
            if host is None:
                return True
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            name = name.strip("[]").lower()  # no DNS here: the header is the client's word
            return name == "localhost" or _ip_loopback(name) is True

        def _send(self, reply: _Reply, head: bool, extra: dict[str, str] | None = None) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if reply.content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy", _CSP)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are not events worth a log line

    return Handler

"""The optional HTTP status endpoint (``daemon.status_listen: 127.0.0.1:8765``).

``GET /status`` is the daemon's status as JSON (what `ahgd status --json`
shows), ``GET /metrics`` its metrics in the Prometheus text format, and
``GET /healthz`` answers ``ok``.  Read-only; bind it to loopback and let a
local Prometheus or reverse proxy reach it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class StatusServer:
    def __init__(self, listen: str, status: Callable[[], dict[str, Any]],
                 metrics: Callable[[], str]):
        host, _, port = listen.rpartition(":")
        self.address = (host.strip("[]") or "127.0.0.1", int(port))
        self._status, self._metrics = status, metrics
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        status, metrics = self._status, self._metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                try:
                    if self.path == "/status":
                        body, kind = json.dumps(status(), default=str).encode(), "application/json"
                    elif self.path == "/metrics":
                        body, kind = metrics().encode(), "text/plain; version=0.0.4; charset=utf-8"
                    elif self.path == "/healthz":
                        body, kind = b"ok\n", "text/plain"
                    else:
                        self.send_error(404, "try /status, /metrics or /healthz")
                        return
                except Exception as exc:  # a broken page must not take the daemon down
                    self.send_error(500, str(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are not events worth a log line

        self._server = ThreadingHTTPServer(self.address, Handler)
        self._server.daemon_threads = True
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

"""The status server under slow and rude clients: /healthz always answers, a trickled
request has one deadline for all of it, and a client that leaves early is one debug line."""

from __future__ import annotations

import http.client
import select
import socket
import struct
import threading
import time

import pytest

from ahgd_daemon.httpstatus import MAX_CONNECTIONS, REQUEST_DEADLINE_S

from .harness import Daemon, wait_until, write_config

pytestmark = pytest.mark.slow


def _port(d: Daemon) -> int:
    def found():
        assert d.proc.poll() is None, d.output()
        return next((r["port"] for r in d.records() if r.get("event") == "http_status"), None)

    return wait_until(found, 30, "the http_status log line")


@pytest.fixture
def daemon(tmp_path):
    state = tmp_path / "state"
    d = Daemon(write_config(tmp_path), state,
               args=["--http", "127.0.0.1:0", "--log-level", "debug"]).wait_ready()
    try:
        yield d, _port(d)
    finally:
        d.stop()


def _healthz(port: int, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_trickling_connections_do_not_keep_healthz_out(daemon):
    d, port = daemon
    stop = threading.Event()
    slow = []
    for _ in range(MAX_CONNECTIONS + 8):  # more than the server serves at once
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow.append(s)

    def trickle() -> None:  # a header byte every second on each, for at most 20 s
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            for s in slow:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            stop.wait(1)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)
        for _ in range(3):  # every time, not once by luck
            started = time.monotonic()
            assert _healthz(port) == (200, b"ok\n")
            assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join(5)
        for s in slow:
            s.close()
    assert "Traceback" not in d.output()


def test_a_trickled_request_has_one_deadline_for_all_of_it(daemon):
    _, port = daemon
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed_after = None
        while time.monotonic() - started < REQUEST_DEADLINE_S + 8:
            try:
                s.send(b"X")  # one header byte a second: each read is quick, the whole is not
            except OSError:
                closed_after = time.monotonic() - started
                break
            ready, _, _ = select.select([s], [], [], 1)
            if ready:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None, "the server kept a trickling request open"
        assert closed_after < REQUEST_DEADLINE_S + 3
    finally:
        s.close()
    assert _healthz(port) == (200, b"ok\n")


def test_clients_that_leave_early_are_one_debug_line_each_and_no_traceback(daemon):
    d, port = daemon
    for _ in range(10):  # ask for the biggest page, then reset the connection at once
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /api/dashboard HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.close()
    wait_until(lambda: any(r.get("event") == "http_client_gone" for r in d.records()), 20,
               "an early leaver to be logged")
    time.sleep(1)
    assert _healthz(port) == (200, b"ok\n")
    gone = [r for r in d.records() if r.get("event") == "http_client_gone"]
    assert 1 <= len(gone) <= 10 and {r["level"] for r in gone} == {"debug"}
    assert "Traceback" not in d.output()

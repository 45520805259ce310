"""sd_notify client: real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import struct
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from ahgd_daemon.notify import NOTIFY_ENVIRONMENT_KEYS, Notifier, without_notify_environment


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5.0)
    sock.bind(address)
    return sock


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A path socket in tmp_path playing systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = _receiver(str(path))
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """An abstract-namespace socket, the form systemd uses in some containers."""
    name = f"ahgd-test-{uuid.uuid4().hex}"
    sock = _receiver(b"\0" + name.encode())
    yield sock, "@" + name
    sock.close()


def _recv(sock: socket.socket) -> str:
    return sock.recv(65536).decode("utf-8")


def test_ready_sends_ready_with_status(listener):
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("recovered 3 runs") is True
    assert _recv(sock) == "READY=1\nSTATUS=recovered 3 runs"


def test_each_message_arrives_as_one_datagram(listener):
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.ready() is True
    assert notifier.status("2 runs active") is True
    assert notifier.watchdog() is True
    assert notifier.stopping("waiting for 2 stages") is True
    received = [_recv(sock) for _ in range(4)]
    assert received == [
        "READY=1",
        "STATUS=2 runs active",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=waiting for 2 stages",
    ]


def test_abstract_namespace_socket(abstract_listener):
    sock, address = abstract_listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.watchdog() is True
    assert _recv(sock) == "WATCHDOG=1"


def test_reloading_carries_monotonic_usec_from_the_clock(listener):
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path}, clock=lambda: 12_345_678_999)
    assert notifier.reloading("reloading /etc/ahgd/master.yaml") is True
    assert _recv(sock) == (
        "RELOADING=1\nMONOTONIC_USEC=12345678\nSTATUS=reloading /etc/ahgd/master.yaml"
    )


def test_extend_timeout_in_microseconds(listener):
    sock, path = listener
    assert Notifier.from_environ({"NOTIFY_SOCKET": path}).extend_timeout(2.5) is True
    assert _recv(sock) == "EXTEND_TIMEOUT_USEC=2500000"


def test_send_keeps_order_drops_none_and_flattens_newlines(listener):
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.send(STATUS="line one\nREADY=1", ERRNO=None, BUSERROR="0x0") is True
    assert _recv(sock) == "STATUS=line one READY=1\nBUSERROR=0x0"


def test_send_raw_sends_text_unchanged(listener):
    sock, path = listener
    assert Notifier.from_environ({"NOTIFY_SOCKET": path}).send_raw("FDSTORE=0\nX=1") is True
    assert _recv(sock) == "FDSTORE=0\nX=1"


def test_send_rejects_a_bad_field_name_even_without_systemd():
    with pytest.raises(ValueError) as excinfo:
        Notifier.from_environ({}).send(status="x")
    assert str(excinfo.value) == (
        "sd_notify field 'status' is not a valid name; "
        "use upper-case letters, digits and underscores such as STATUS"
    )


def test_datagram_carries_our_pid_so_notify_access_main_accepts_it(listener):
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    assert Notifier.from_environ({"NOTIFY_SOCKET": path}).ready() is True
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert data == b"READY=1"
    creds = [d for level, kind, d in ancdata
             if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert len(creds) == 1
    pid, _uid, _gid = struct.unpack("iII", creds[0][:12])
    assert pid == os.getpid()


def test_without_notify_socket_every_method_is_a_noop():
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    results = [
        notifier.ready("x"), notifier.stopping(), notifier.watchdog(),
        notifier.status("x"), notifier.reloading(), notifier.extend_timeout(1),
        notifier.send(STATUS="x"), notifier.send_raw("READY=1"),
    ]
    assert results == [False] * 8


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "vsock:2:1234"])
def test_unusable_notify_socket_values_leave_it_disabled(value):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_missing_socket_path_returns_false_without_raising(tmp_path):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_socket_path_too_long_returns_false_without_raising():
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/" + "n" * 200})
    assert notifier.stopping() is False


def test_path_that_is_not_a_socket_returns_false(tmp_path):
    plain = tmp_path / "plain-file"
    plain.write_text("not a socket")
    assert Notifier.from_environ({"NOTIFY_SOCKET": str(plain)}).ready() is False


def test_closed_receiver_returns_false(tmp_path):
    path = tmp_path / "closed.sock"
    _receiver(str(path)).close()
    assert Notifier.from_environ({"NOTIFY_SOCKET": str(path)}).watchdog() is False


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ, expected):
    assert Notifier.from_environ(environ).watchdog_interval() == expected


def test_from_environ_reads_os_environ_only_when_called(monkeypatch, listener):
    sock, path = listener
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier.from_environ().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier.from_environ().ready() is True
    assert _recv(sock) == "READY=1"


def test_unset_environment_removes_the_variables_from_the_mapping(listener):
    sock, path = listener
    environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000",
               "WATCHDOG_PID": str(os.getpid()), "PATH": "/usr/bin"}
    notifier = Notifier.from_environ(environ, unset_environment=True)
    assert environ == {"PATH": "/usr/bin"}
    assert notifier.watchdog_interval() == 30.0
    assert notifier.watchdog() is True
    assert _recv(sock) == "WATCHDOG=1"


def test_without_notify_environment_is_a_copy_for_workers():
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000",
               "WATCHDOG_PID": "42", "WATCHDOG_OTHER": "kept", "HOME": "/var/lib/ahgd"}
    assert without_notify_environment(environ) == {
        "WATCHDOG_OTHER": "kept", "HOME": "/var/lib/ahgd"}
    assert set(NOTIFY_ENVIRONMENT_KEYS) <= set(environ)

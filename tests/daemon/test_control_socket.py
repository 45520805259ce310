"""The control socket cannot be turned against the daemon's machine, nor starve it.

The real daemon runs as a subprocess (as root, like the tests); a member of
the socket's group is played by a forked child that drops to uid ``nobody``
with gid 0, the socket's group.  (A fresh ``ahgd`` process cannot run as
nobody here: this environment's Python lives under /root, mode 0700; the
child calls the same client code, ``ahgd_daemon.control.request``.)
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from ahgd_daemon.control import MAX_REQUEST, REQUEST_DEADLINE_S, ControlError, request, socket_path

from .harness import Daemon, ahgd_exe, drop_csv, env, query, wait_until, write_config

pytestmark = pytest.mark.slow

NOBODY = 65534


@pytest.fixture
def shared_dir():
    """A directory the socket's group (gid 0) may enter: pytest's tmp_path is root's alone."""
    path = Path(tempfile.mkdtemp(prefix="ahgd-control-"))
    os.chmod(path, 0o750)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_group_member(fn: Callable[[], dict[str, Any]], timeout: float = 60) -> dict[str, Any]:
    """Run ``fn`` in a forked child as uid nobody, gid 0 (a member of the socket's group)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(0)
            os.setuid(NOBODY)
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"crash": repr(exc)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 1)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, 9)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"crash": "no answer from the child"}')


def _ask(state: Path, payload: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
    try:
        return request(state, payload, timeout=60, fds=fds or [])
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}


def _raw(state: Path, data: bytes, timeout: float = 30) -> bytes:
    """Send bytes as they are (no client-side checks), return what the daemon answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(socket_path(state)))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it answered and closed before taking it all
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # after the answer: it closed with our request half read
            assert chunks, "the daemon closed the connection without an answer"
        return b"".join(chunks)
    finally:
        s.close()


def test_a_group_member_cannot_make_the_daemon_read_a_file_for_it(shared_dir):
    config = write_config(shared_dir)
    state = shared_dir / "state"
    secret = shared_dir / "secret.csv"
    secret.write_text("a,b\nroot-only,42\n")
    os.chmod(secret, 0o600)  # root's alone
    own = shared_dir / "mine"
    own.mkdir()
    os.chown(own, NOBODY, 0)
    d = Daemon(config, state).wait_ready()
    try:
        def member() -> dict[str, Any]:
            out: dict[str, Any] = {}
            try:
                open(secret, "rb").close()
                out["can_read_secret"] = True
            except PermissionError:
                out["can_read_secret"] = False
            out["by_path"] = _ask(state, {"cmd": "run", "pipeline": "csvpipe", "input": str(secret)})
            out["proc"] = _ask(state, {"cmd": "run", "pipeline": "csvpipe",
                                       "input": "/proc/self/environ"})
            out["params"] = _ask(state, {"cmd": "run", "pipeline": "csvpipe",
                                         "params": {"input_file": str(secret)}})
            fd = os.open(own, os.O_RDONLY)
            try:
                out["directory"] = _ask(state, {"cmd": "run", "pipeline": "csvpipe",
                                                "input_name": "x.csv"}, [fd])
            finally:
                os.close(fd)
            mine = own / "mine.csv"
            mine.write_text("a,b\nmine,1\n")
            with open(mine, "rb") as fh:
                out["own_file"] = _ask(state, {"cmd": "run", "pipeline": "csvpipe",
                                               "input_name": "mine.csv"}, [fh.fileno()])
            return out

        out = _as_group_member(member)
        assert "crash" not in out, out
        assert out["can_read_secret"] is False  # the child really is unprivileged
        for key in ("by_path", "proc"):
            assert out[key]["ok"] is False, out
            assert "does not open files by path" in out[key]["error"], out
            assert "ahgd run PIPELINE --input FILE" in out[key]["error"], out
        assert out["params"]["ok"] is False
        assert "params may not set input_file" in out["params"]["error"], out
        assert out["directory"]["ok"] is False
        assert "is a directory; --input takes a regular file" in out["directory"]["error"], out
        assert out["own_file"]["ok"] is True, out
        run_id = out["own_file"]["run_id"]
        wait_until(lambda: query(state, "SELECT state FROM runs WHERE run_id = ?", (run_id,))
                   == [("COMPLETED",)], 60, "the member's own run to complete")
    finally:
        assert d.stop() == 0, d.output()
    # the one run is the member's own file; the secret was never copied anywhere
    [(params,)] = query(state, "SELECT params FROM runs")
    stored = Path(json.loads(params)["input_file"])
    assert stored.read_text() == "a,b\nmine,1\n" and json.loads(params)["original_name"] == "mine.csv"
    copied = [p for p in (state / "inputs").rglob("*") if p.is_file()]
    assert copied == [stored]
    assert not any(b"root-only" in p.read_bytes() for p in state.rglob("*") if p.is_file())
    requests = [r for r in d.records() if r.get("event") == "control_request"]
    assert {r["peer_uid"] for r in requests} == {NOBODY}


def test_the_cli_sends_the_input_open_and_reads_it_as_its_user(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    d = Daemon(config, state).wait_ready()
    try:
        proc = subprocess.run([*ahgd_exe(), "run", "csvpipe", "--input", str(fifo), "--state-dir",
                               str(state)], capture_output=True, text=True, timeout=60, env=env())
        assert proc.returncode != 0
        assert "not a regular file" in proc.stderr or "is not a file" in proc.stderr.lower()
        # an old client's path is refused with what to do instead
        reply = json.loads(_raw(state, json.dumps({"cmd": "run", "pipeline": "csvpipe",
                                                   "input": str(config)}).encode() + b"\n"))
        assert reply["ok"] is False and "does not open files by path" in reply["error"]
    finally:
        assert d.stop() == 0
    assert query(state, "SELECT COUNT(*) FROM runs") == [(0,)]


def test_a_request_larger_than_the_limit_is_refused_saying_the_limit(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    d = Daemon(config, state).wait_ready()
    try:
        big = json.dumps({"cmd": "run", "pipeline": "csvpipe",
                          "params": {"blob": "x" * 900_000}}).encode() + b"\n"
        reply = json.loads(_raw(state, big))
        assert reply["ok"] is False
        assert f"larger than {MAX_REQUEST:,} bytes" in reply["error"], reply
        # the client refuses before sending, with the same limit
        with pytest.raises(ControlError, match=f"at most {MAX_REQUEST:,} bytes"):
            request(state, {"cmd": "run", "pipeline": "csvpipe", "params": {"blob": "x" * 900_000}})
        assert _ask(state, {"cmd": "ping"})["ok"] is True
    finally:
        assert d.stop() == 0
    assert query(state, "SELECT COUNT(*) FROM events WHERE type = 'run.requested'") == [(0,)]


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _cpu_used(pid: int, seconds: float) -> float:
    """The CPU seconds process ``pid`` uses over the next ``seconds``."""
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return _cpu_seconds(pid) - before


def test_idle_connections_past_the_limit_leave_status_and_files_working(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    d = Daemon(config, state).wait_ready()
    socks: list[socket.socket] = []
    try:
        # what the daemon does as it starts (late on a loaded host) is over before the flood:
        # the CPU measured below is the idle connections' only
        wait_until(lambda: _cpu_used(d.proc.pid, 0.5) < 0.05, 30, "the daemon to settle")
        # a tight descriptor limit, like systemd's default 1024 for a bigger flood
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (256, hard))
        flood_until = time.monotonic() + 20
        while len(socks) < 300 and time.monotonic() < flood_until:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect(str(socket_path(state)))
            except OSError:  # its accept queue is full for a moment
                s.close()
                time.sleep(0.01)
                continue
            socks.append(s)
        assert len(socks) > 200  # the flood really reached the daemon
        before = _cpu_seconds(d.proc.pid)
        time.sleep(3)
        used = _cpu_seconds(d.proc.pid) - before
        assert used < 1.0, f"the daemon used {used:.2f} s of CPU in 3 s with idle connections open"
        status = subprocess.run([*ahgd_exe(), "status", "--json", "--state-dir", str(state)],
                                capture_output=True, text=True, timeout=90, env=env())
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["daemon"]["pid"] == d.proc.pid
        drop_csv(state / "inbox" / "csvpipe", "during-the-flood.csv")
        wait_until(lambda: query(state, "SELECT state FROM runs") == [("COMPLETED",)], 60,
                   "the file dropped during the flood to be run")
    finally:
        for s in socks:
            s.close()
        assert d.stop() == 0, d.output()
    assert "Traceback" not in d.output()


def test_a_trickled_request_is_dropped_at_the_deadline_not_per_read(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    d = Daemon(config, state).wait_ready()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(socket_path(state)))
        start = time.monotonic()
        closed_after = None
        payload = b'{"cmd": "ping", "pad": "' + b"x" * 100
        for byte in payload:  # one byte every 0.25 s: each read is quick, the whole is not
            if time.monotonic() - start > REQUEST_DEADLINE_S + 5:
                break
            try:
                s.send(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - start
                break
            ready, _, _ = select.select([s], [], [], 0.25)
            if ready and s.recv(4096) == b"":
                closed_after = time.monotonic() - start
                break
        assert closed_after is not None, "the daemon kept a trickling request open"
        assert closed_after < REQUEST_DEADLINE_S + 3
        assert _ask(state, {"cmd": "ping"})["ok"] is True
    finally:
        s.close()
        assert d.stop() == 0


def test_clients_that_leave_early_are_one_debug_line_each_and_no_traceback(tmp_path):
    config = write_config(tmp_path)
    state = tmp_path / "state"
    d = Daemon(config, state, args=["--log-level", "debug"]).wait_ready()
    try:
        for _ in range(5):  # connect and leave without a word
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(socket_path(state)))
            s.close()
        for _ in range(10):  # ask, and leave before the answer
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(socket_path(state)))
            s.sendall(b'{"cmd": "dashboard"}\n')
            s.close()
        wait_until(lambda: len([r for r in d.records() if r.get("event") == "control_client_gone"])
                   >= 5, 20, "the early leavers to be logged")
        time.sleep(1)
        assert _ask(state, {"cmd": "ping"})["ok"] is True
    finally:
        assert d.stop() == 0
    gone = [r for r in d.records() if r.get("event") == "control_client_gone"]
    assert 5 <= len(gone) <= 15 and {r["level"] for r in gone} == {"debug"}
    assert "Traceback" not in d.output()


def test_bad_requests_and_the_daemons_own_faults_are_answered_saying_whose_they_are(tmp_path):
    from ahgd_daemon.control import ControlServer

    def dispatch(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("cmd") == "boom":
            raise ValueError("an internal bug")
        return {"pong": True}

    server = ControlServer(tmp_path, dispatch)
    server.start()
    try:
        def answer(data: bytes) -> dict[str, Any]:
            return json.loads(_raw(tmp_path, data, timeout=10))

        for data in (b"not json\n", b"[" * 60_000 + b"\n", b"\xff\xfe\n"):
            reply = answer(data)
            assert reply["ok"] is False and reply["type"] == "BadRequest", reply
            assert "send one JSON object on one line" in reply["error"]
        assert "a request is one JSON object" in answer(b"[1, 2]\n")["error"]
        boom = answer(b'{"cmd": "boom"}\n')
        assert boom["ok"] is False
        assert "a fault in ahgd, not in the request" in boom["error"]
        assert answer(b'{"cmd": "ping"}\n') == {"ok": True, "pong": True}
    finally:
        server.stop()

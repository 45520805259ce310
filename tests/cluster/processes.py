"""A real Dask cluster and a real S3 endpoint on loopback, for the scale-out tests.

``DaskCluster`` starts ``dask scheduler`` and ``dask worker`` processes (this
interpreter's ``distributed.cli``) on 127.0.0.1; ``S3Server`` starts moto's
server mode, a real S3 HTTP API.  Each is stopped by its PID (SIGKILL, then
reaped), and every wait is bounded.  Without the ``dask`` extra installed
the tests that use them are skipped, saying what to install.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUCKET = "ahgd-test"


def need_dask() -> None:
    """Skip, saying why, when the Dask extra is not installed (CI installs it: `.[test]`)."""
    for module in ("distributed", "boto3", "moto"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed: pip install -e '.[test]' (it pulls "
                        "ahgd-daemon[dask] and moto[server])")


def die_with_pytest() -> None:
    """In the child before exec: SIGTERM it when the test process dies, so a pytest killed by a
    timeout or by hand leaves no scheduler, worker or S3 server behind (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment for a child: the repository importable, moto's credentials set."""
    env = {k: v for k, v in os.environ.items() if k not in ("AHGD_STATE_DIR", "NOTIFY_SOCKET")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(S3_ENV)
    env.update(extra or {})
    return env


def stop(proc: subprocess.Popen | None) -> None:
    """SIGKILL one process of ours by its PID, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not take this long
        pass


class DaskCluster:
    """``dask scheduler`` and ``workers`` × ``dask worker`` (no nanny) on 127.0.0.1."""

    def __init__(self, root: Path, workers: int = 2, nthreads: int = 2,
                 resources: str = "cpu=2,memory=4096", port: int | None = None,
                 tls: dict[str, str] | None = None, env: dict[str, str] | None = None):
        self.env = env or {}  # more environment for its processes (a proxy, say)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls  # {"ca_file", "cert", "key"}: every process of the cluster uses TLS
        self.address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{self.port}"
        self.nthreads, self.resources = nthreads, resources
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.named: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self.start_scheduler()
        for i in range(workers):
            self.add_worker(f"w{i}")
        self.wait_for_workers(workers)

    def security(self):
        """What a client of this cluster needs (None: plain TCP)."""
        if not self.tls:
            return None
        from distributed.security import Security

        return Security(tls_ca_file=self.tls["ca_file"], tls_client_cert=self.tls["cert"],
                        tls_client_key=self.tls["key"], require_encryption=True)

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return ["--tls-ca-file", self.tls["ca_file"], "--tls-cert", self.tls["cert"],
                "--tls-key", self.tls["key"]]

    def _popen(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        self._logs.append(log)
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(self.env), cwd=self.root, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_pytest)

    def start_scheduler(self) -> None:
        self.scheduler = self._popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-dashboard", "--no-show",
             *(["--protocol", "tls"] if self.tls else []), *self._tls_args()], "scheduler")
        wait_for_port(self.port, self.scheduler, "dask scheduler")

    def add_worker(self, name: str, resources: str | None = None) -> subprocess.Popen:
        proc = self._popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--host",
             "127.0.0.1", "--no-nanny", "--nthreads", str(self.nthreads), "--no-dashboard",
             "--name", name, "--local-directory", str(self.root / name),
             "--resources", resources or self.resources, "--death-timeout", "60",
             *self._tls_args()], name)
        self.workers.append(proc)
        self.named[name] = proc
        return proc

    def restart_exited_workers(self, grace: float = 0.0) -> None:
        """Start again the workers that exited, giving each ``grace`` seconds to exit (a worker
        stops when it loses the scheduler; systemd's Restart= starts it again in production)."""
        for name, proc in list(self.named.items()):
            if proc.poll() is None:
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    continue  # still connected: nothing to do
            self.workers.remove(proc)
            self.add_worker(name)

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False,
                    security=self.security()) as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_pid_running(self, key_part: str, timeout: float = 20.0) -> int:
        """The PID of the worker whose processing list has a key containing ``key_part``."""
        return self.worker_running(key_part, timeout)[0]

    def worker_running(self, key_part: str, timeout: float = 20.0) -> tuple[int, str]:
        """The PID and address of the worker whose processing list has a key containing
        ``key_part``."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=10, set_as_default=False,
                    security=self.security()) as client:
            while time.monotonic() < deadline:
                info = client.scheduler_info(n_workers=-1)["workers"]
                for addr, keys in client.processing().items():
                    if any(key_part in str(k) for k in keys):
                        return self.named[str(info[addr].get("name"))].pid, addr
                time.sleep(0.05)
        raise AssertionError(f"no worker ran a task like {key_part!r} within {timeout:g}s")

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            stop(proc)
        for log in self._logs:
            log.close()


class Gate:
    """A TCP relay on 127.0.0.1 to ``target_port`` that can be shut (its port refuses
    connections and those open are cut, as an endpoint that went down) and opened again on
    the same port: an S3 endpoint down for a while, its objects kept."""

    def __init__(self, target_port: int):
        import threading

        self.target, self.port = target_port, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._threading = threading
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def shut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class S3Server:
    """moto's S3 server on 127.0.0.1, with the bucket ``BUCKET``."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(Path(root) / "moto.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=child_env(), stdin=subprocess.DEVNULL,
            preexec_fn=die_with_pytest)
        wait_for_port(self.port, self.proc, "moto server")
        self.client().create_bucket(Bucket=BUCKET)

    def settings(self, prefix: str = "outputs") -> dict[str, str]:
        return {"url": f"s3://{BUCKET}/{prefix}", "endpoint_url": self.endpoint,
                "region": "us-east-1"}

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for p in pages for o in p.get("Contents") or ())

    def stop(self) -> None:
        stop(self.proc)
        self._log.close()


#: what the daemon and the tests give boto3 (moto accepts any key)
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}

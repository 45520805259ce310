"""The daemon's connection to a Dask scheduler: connect (TLS if asked), and check the workers.

At connect time (start-up and every reconnect) every worker must run this
daemon's ahgd, Python and DuckDB versions, or the connection is refused with
a message that names the workers and the fix; attempts that a dead daemon of
the same state directory left running on workers are stopped
(:func:`pipelines.execution.remote.stop_owned`).  Each worker's host name is
learnt here, for ``stage_timings.host`` and the status page.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError
from . import remote


class ClusterUnavailable(ConfigError):
    """The Dask scheduler cannot be reached, or its workers cannot run this daemon's attempts."""


class SchedulerUnreachable(ClusterUnavailable):
    """No answer from the scheduler's address (it may be down, or not started yet)."""


def connect(scheduler: str, security: Mapping[str, Any] | None, timeout: float,
            expected: dict[str, str], owner: str, hosts: dict[str, str]) -> Any:
    """A ``distributed.Client`` to ``scheduler``, its workers checked (:func:`check`)."""
    from distributed import Client

    if scheduler.startswith("tls://") and not security:
        raise ClusterUnavailable(
            f"the Dask scheduler at {scheduler} is a TLS address, but daemon.executor has no "
            "security section: add security: {ca_file: ..., cert: ..., key: ...} (this "
            "daemon's certificate and key, signed by the CA the scheduler trusts)")
    try:
        client = Client(scheduler, security=_security(security), set_as_default=False,
                        timeout=timeout)
    except (OSError, TimeoutError) as exc:
        tls = (" If it is running, check that the certificate in daemon.executor.security is "
               "signed by the CA the scheduler and workers trust (their --tls-ca-file), and "
               "that the scheduler was given theirs (--tls-cert, --tls-key): a certificate it "
               "does not trust is refused without a word." if security else "")
        raise SchedulerUnreachable(
            f"cannot reach the Dask scheduler at {scheduler} ({exc}); start it "
            "(systemctl start ahgd-dask-scheduler, or `dask scheduler`) or correct "
            f"daemon.executor.scheduler.{tls}") from None
    try:
        check(client, scheduler, expected, owner, hosts)
    except BaseException:
        client.close(timeout=2)
        raise
    return client


def check(client: Any, scheduler: str, expected: dict[str, str], owner: str,
          hosts: dict[str, str]) -> None:
    """Every worker runs this daemon's ahgd, Python and DuckDB; none runs attempts a dead
    daemon of this state directory left behind (they are stopped)."""
    found = client.run(remote.describe, on_error="return")
    bad = []
    for addr, info in sorted(found.items()):
        if isinstance(info, BaseException):
            bad.append(f"{addr} cannot run ahgd ({type(info).__name__}: {info})")
        elif info.get("versions") != expected:
            bad.append(f"{addr} on {info.get('host')} has {remote._show(info.get('versions') or {})}")
        else:
            hosts[addr] = info["host"]
    if bad:
        raise ClusterUnavailable(
            f"the Dask cluster at {scheduler} has workers this daemon "
            f"({remote._show(expected)}) cannot use: {'; '.join(bad)}. Install the same "
            "ahgd-daemon[dask] with the same Python and DuckDB versions on every worker (or "
            "stop those workers), then start the daemon again")
    client.run(remote.stop_owned, owner, on_error="ignore")


def learn(client: Any, addresses: list[str], hosts: dict[str, str]) -> None:
    """The host names of workers that joined since we connected."""
    try:
        found = client.run(remote.describe, workers=addresses, on_error="return")
    except Exception:
        return
    for addr, info in found.items():
        if isinstance(info, dict):
            hosts[addr] = info["host"]


def put_token(client: Any, name: str, timeout: float) -> str:
    """A Dask queue ``name`` on the scheduler holding one token: the claim an attempt's task
    takes before it runs.  Sent on the client's event loop without waiting for the answer: no
    round trip on the attempt's path.  It then goes on another connection than the task, and
    may reach the scheduler after it: :func:`remote._claim` waits for it while Dask wants the
    task, up to ``remote.CLAIM_LATE_S``."""
    async def create_and_put() -> None:
        try:
            await client.scheduler.queue_create(name=name, maxsize=0)
            await client.scheduler.queue_put(name=name, data=remote.CLAIM_TOKEN,
                                             timeout=timeout)
        except Exception:  # the scheduler went away: the task is lost with it, and said so
            pass

    client.loop.add_callback(create_and_put)
    return name


#: how long the client's stream to the scheduler holds a message to batch it with others
#: (Dask's default, 10 ms, was most of an attempt's overhead: see bench/cluster.py)
SEND_INTERVAL_S = 0.001


def prompt(client: Any) -> None:
    """Let the client's messages to the scheduler (a task, a release) wait at most
    ``SEND_INTERVAL_S`` to be batched, not Dask's 10 ms; set again after Dask reconnects (its
    new stream has the default)."""
    comm = getattr(client, "scheduler_comm", None)
    if comm is not None and getattr(comm, "interval", 0) > SEND_INTERVAL_S:
        comm.interval = SEND_INTERVAL_S


def is_connection_error(exc: BaseException) -> bool:
    """The scheduler cannot be talked to (gone, or not answering), as opposed to a bug."""
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (OSError, TimeoutError, CommClosedError)) or \
        type(exc).__name__ in ("CancelledError", "ClientClosedError")


def drop_token(client: Any, name: str) -> None:
    """Release the queue of :func:`put_token` (what ``distributed.Queue.close`` sends)."""
    if client is not None and client.status == "running":
        client._send_to_scheduler({"op": "queue_release", "name": name})


def status(client: Any, scheduler: str, store_url: str, hosts: dict[str, str],
           running: dict[str, list[str]]) -> dict[str, Any]:
    """The status page's ``cluster``: the scheduler, whether it is connected (``client`` None:
    lost), the object store, and each worker with the attempts it runs."""
    doc: dict[str, Any] = {"scheduler": scheduler, "connected": client is not None,
                           "object_store": store_url, "workers": []}
    if client is None:
        return doc
    try:
        info = client.scheduler_info(n_workers=-1)
    except Exception as exc:  # it went away since: the next look says so
        doc["error"] = str(exc)
        return doc
    for addr, w in sorted((info.get("workers") or {}).items()):
        doc["workers"].append({
            "address": addr, "host": hosts.get(addr) or w.get("host"),
            "nthreads": w.get("nthreads"), "memory_limit": w.get("memory_limit"),
            "resources": w.get("resources") or {}, "running": running.get(addr, [])})
    return doc


def _security(settings: Mapping[str, Any] | None) -> Any:
    if not settings:
        return None
    from distributed.security import Security

    return Security(tls_ca_file=str(settings["ca_file"]), tls_client_cert=str(settings["cert"]),
                    tls_client_key=str(settings["key"]), require_encryption=True)


__all__ = ["ClusterUnavailable", "SchedulerUnreachable", "connect", "check", "learn", "status",
           "put_token", "drop_token", "is_connection_error"]

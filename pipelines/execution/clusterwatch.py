"""The Dask executor's watcher thread: workers lost, attempts past their timeout, the scheduler
lost and found again.

:class:`ClusterWatch` is a part of :class:`~pipelines.execution.cluster.DaskExecutor`
(which it is mixed into; it uses the executor's jobs, lock and client).  Every
``poll_s`` it asks the scheduler which worker runs which attempt: an attempt
whose worker left the cluster fails as ``WorkerDied`` with the host; one past
its timeout by ``TIMEOUT_SLACK_S`` (its worker did not stop it) is cancelled.
When the client loses the scheduler, the alert ``daemon.scheduler_lost``
fires, and the watcher reconnects (checking the workers' versions again),
sends the attempts held meanwhile, removes the objects of attempts cut off,
and resolves the alert.
"""

from __future__ import annotations

import time
from typing import Any

from . import clusterlink as link
from .clusterjobs import died, forget_outputs

ALERT = "daemon.scheduler_lost"
#: a remote attempt past its timeout by this much (a hung worker) is given up by the daemon
TIMEOUT_SLACK_S = 30.0


class ClusterWatch:
    """The watcher half of DaskExecutor (see the module's docstring)."""

    _client: Any

    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait(self.poll_s)
            try:
                self._look()
            except Exception as exc:  # this thread must outlive any one failure
                self._log.error("dask_watch_error", error=f"{type(exc).__name__}: {exc}")

    def _look(self) -> None:
        if self._closed:
            return
        client = self._client
        if client is None or client.status != "running":
            self._lost(f"the client is {getattr(client, 'status', 'closed')}")
            self._reconnect()
            return
        if self._lost_at is not None:  # Dask's client reconnected by itself
            self._check(client)
            self._back()
        with self._lock:
            busy = [j for j in self._jobs.values() if j.dask is not None]
        if not busy:
            return
        processing = client.processing()
        new = [a for a in processing if a not in self._hosts]
        if new:
            self._learn(new)
        now = time.monotonic()
        for job in busy:
            where = next((w for w, keys in processing.items() if job.key in keys), None)
            if where is not None:
                job.seen_on = where
            elif job.seen_on is not None and job.seen_on not in processing:
                job.cancel_reason = "its worker was lost"
                self._finish(job, died(job, self._hosts, "it left the cluster"))
                try:
                    client.cancel([job.dask], reason=job.cancel_reason)
                except Exception:
                    pass
            elif job.task.timeout and now - job.sent_at > job.task.timeout + TIMEOUT_SLACK_S \
                    and job.seen_on is not None:
                self.cancel(job.outer, f"stage {job.task.stage!r} ran {job.task.timeout:g}s "
                                       "and its worker did not stop it")

    def _lost(self, why: str) -> None:
        with self._lock:
            if self._lost_at is not None or self._closed:
                return
            self._lost_at = time.monotonic()
        message = (f"the Dask scheduler at {self.scheduler} is lost: attempts in flight were "
                   "interrupted; new attempts " + ("run on this host" if self.on_scheduler_lost
                                                   == "local" else "wait for it")
                   + " until it is back; start it again (systemctl start ahgd-dask-scheduler)")
        self._log.error("dask_scheduler_lost", scheduler=self.scheduler, why=why)
        if self._alert is not None:
            self._alert("error", ALERT, message, scheduler=self.scheduler)

    def _connect(self) -> Any:
        return link.connect(self.scheduler, self.security, self.connect_timeout, self._expected,
                            self.owner, self._hosts)

    def _check(self, client: Any) -> None:
        link.check(client, self.scheduler, self._expected, self.owner, self._hosts)

    def _learn(self, addresses: list[str]) -> None:
        link.learn(self._client, addresses, self._hosts)

    def _reconnect(self) -> None:
        client = self._client
        if client is not None and client.status == "connecting":
            return  # Dask's own reconnect is under way
        try:
            if client is not None:
                client.close(timeout=1)
        except Exception:
            pass
        try:
            self._client = self._connect()
        except Exception as exc:
            self._client = None
            self._log.info("dask_reconnect_failed", scheduler=self.scheduler, error=str(exc))
            self._wake.wait(1.0)
            return
        self._back()

    def _back(self) -> None:
        with self._lock:
            self._lost_at = None
            held, self._held = self._held, []
            forget, self._forget = self._forget, []
            for job in held:
                self._jobs[job.outer] = job
        for task in forget:
            forget_outputs(self.object_store, task)
        self._log.info("dask_scheduler_back", scheduler=self.scheduler, held=len(held))
        if self._resolve_alert is not None:
            self._resolve_alert(ALERT, f"the Dask scheduler at {self.scheduler} is back")
        for job in held:
            self._send(job)


__all__ = ["ALERT", "ClusterWatch", "TIMEOUT_SLACK_S"]

"""The Dask executor's watcher thread: workers lost, attempts past their timeout, the scheduler
lost and found again.

:class:`ClusterWatch` is a part of :class:`~pipelines.execution.cluster.DaskExecutor`
(which it is mixed into; it uses the executor's jobs, lock and client).  Every
``poll_s`` it asks the scheduler which worker runs which attempt: an attempt
whose worker left the cluster fails as ``WorkerDied`` with the host; one past
its timeout by ``TIMEOUT_SLACK_S`` since a worker took it (its worker did not stop it)
fails as timed out, so the stage's retry policy decides what next.
When the client loses the scheduler, the alert ``daemon.scheduler_lost``
fires, and the watcher reconnects (checking the workers' versions again),
sends the attempts held meanwhile, removes the objects of attempts cut off,
and resolves the alert.
"""

from __future__ import annotations

import time
from typing import Any

from . import clusterlink as link, remote
from .clusterjobs import died, forget_outputs
from .runner import Outcome

ALERT = "daemon.scheduler_lost"
#: how long a scheduler found again is given for its workers to join before the attempts held
#: meanwhile are sent (workers stop when they lose the scheduler; their units start them again)
WORKERS_BACK_S = 60.0
#: a remote attempt past its timeout by this much (a hung worker) is given up by the daemon
TIMEOUT_SLACK_S = 30.0


class ClusterWatch:
    """The watcher half of DaskExecutor (see the module's docstring)."""

    _client: Any

    def _watch(self) -> None:
        while not self._closed:
            if self._wake.wait(self.poll_s):
                self._wake.clear()  # a worker removed (_event), or shut down (_closed is set)
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
            self._subscribe(client)
            self._back()
        self._release_done()
        self._fail_removed(client)
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
                if job.seen_at is None:
                    job.seen_at = now
            elif job.seen_on is not None and job.seen_on not in processing:
                self._give_up(client, job, "its worker was lost",
                              died(job, self._hosts, "it left the cluster"))
            elif (job.task.timeout and job.seen_at is not None
                  and now - job.seen_at > job.task.timeout + TIMEOUT_SLACK_S):
                self._overran(client, job, now)

    def _overran(self, client: Any, job: Any, now: float) -> None:
        """An attempt its worker did not stop at its timeout fails as timed out (counted by
        the stage's retry policy: as an interruption it was started again at once, and an
        attempt that always overran did so for ever), and its task is cancelled."""
        reason = (f"stage {job.task.stage!r} was past its timeout of {job.task.timeout:g}s and "
                  f"its Dask worker {job.seen_on} had not ended it")
        self._give_up(client, job, reason, Outcome(
            ok=False, timed_out=True, error_type="Timeout", worker=job.seen_on,
            host=self._hosts.get(job.seen_on or ""), wall_s=now - (job.seen_at or now),
            error=f"{reason}; ahgd gave the attempt up {TIMEOUT_SLACK_S:g}s later"))

    def _give_up(self, client: Any, job: Any, reason: str, outcome: Outcome) -> None:
        """End ``job`` with ``outcome`` and cancel its task: the worker sees it released and
        kills the process running it (a run of it Dask starts elsewhere finds no claim)."""
        job.cancel_reason = reason
        self._finish(job, outcome)
        try:
            client.cancel([job.dask], reason=reason)
        except Exception:
            pass

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
        client = link.connect(self.scheduler, self.security, self.connect_timeout,
                              self._expected, self.owner, self._hosts)
        self._subscribe(client)
        return client

    def _subscribe(self, client: Any) -> None:
        """Be told by the scheduler the moment it removes a worker (its ``all`` topic), with
        the tasks that worker was running: their attempts fail then, not at the next look."""
        try:
            client.subscribe_topic("all", self._event)
            client.subscribe_topic(remote.OUTCOME_TOPIC, self._told)
        except Exception:  # the looks every poll_s still find lost workers, results still come
            pass

    def _told(self, event: Any) -> None:
        """An outcome a worker published as its task ended (:func:`remote._tell`; on the
        client's event loop: settled on a thread of ours).  Another daemon's, or one already
        settled, is ignored; one that never comes is the task's result."""
        msg = _message(event)
        if not isinstance(msg, dict):
            return
        key = msg.get("key")
        with self._lock:
            job = next((j for j in self._jobs.values() if j.key == key), None)
        if job is not None and not job.settled and isinstance(msg.get("outcome"), bytes):
            self._settling.submit(self._settle_told, job, msg["outcome"])

    def _settle_told(self, job: Any, blob: bytes) -> None:
        import pickle

        try:
            outcome = pickle.loads(blob)
        except Exception:  # the task's result brings it
            return
        self._finish(job, outcome)

    def _event(self, event: Any) -> None:
        """An event of the scheduler's ``all`` topic (on the client's event loop: no waiting
        here; the watcher thread does the rest)."""
        msg = _message(event)
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        keys = {str(k) for k in msg.get("processing-tasks") or ()}
        if keys:
            with self._lock:
                self._removed.append((str(msg.get("worker") or ""), keys))
            self._wake.set()

    def _fail_removed(self, client: Any) -> None:
        """Fail the attempts of the workers the scheduler removed (:meth:`_event`)."""
        with self._lock:
            removed, self._removed = self._removed, []
            jobs = {j.key: j for j in self._jobs.values() if j.dask is not None}
        for worker, keys in removed:
            for key in keys & jobs.keys():
                job = jobs[key]
                job.seen_on = worker or job.seen_on
                self._give_up(client, job, "its worker was lost",
                              died(job, self._hosts, "the scheduler removed it"))

    def _await_workers(self) -> None:
        """A scheduler started again has no workers at first: they stopped when they lost it,
        and join again as their units start them.  Wait for one (at most ``WORKERS_BACK_S``)
        before the held attempts are sent: sent at once, each failed as ``NoWorkerFits``
        ("start a worker with --resources cpu=1"), the cluster's restart charged to the
        stage's retries, and a stage with ``retry_attempts: 0`` failed its run.  New attempts
        are held meanwhile, as while the scheduler was lost."""
        deadline = time.monotonic() + WORKERS_BACK_S
        told = False
        while not self._closed and _no_workers(self._offers(fresh=True)):
            if time.monotonic() >= deadline:
                self._log.warning("dask_no_workers", scheduler=self.scheduler,
                                  waited_s=WORKERS_BACK_S, fix="start the Dask workers "
                                  "(systemctl start ahgd-dask-worker)")
                return
            if not told:
                self._log.info("dask_waiting_for_workers", scheduler=self.scheduler,
                               at_most_s=WORKERS_BACK_S)
                told = True
            time.sleep(0.25)  # not _wake: set and left set, it would not wait at all

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
        self._await_workers()
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


def _no_workers(offers: list | None) -> bool:
    return offers is not None and not offers


def _message(event: Any) -> Any:
    """The message of a scheduler topic's event (``(time, message)``), else None."""
    return event[1] if isinstance(event, (tuple, list)) and len(event) == 2 else None


__all__ = ["ALERT", "ClusterWatch", "TIMEOUT_SLACK_S", "WORKERS_BACK_S"]

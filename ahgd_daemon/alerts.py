"""The daemon's own calls into the monitor, which must never stop the daemon.

The daemon raises alerts for what it finds itself (a file it cannot take, a
run thread that died, a reload that failed); when the monitor cannot record
one, it is still a log line with ``alert: true``.  Every appended event is
passed to the monitor for its metrics; a failure there is a warning, never a
failed append.
"""

from __future__ import annotations

from typing import Any


class MonitorLink:
    def __init__(self, monitor: Any, logger: Any):
        self.monitor = monitor
        self._logger = logger

    def alert(self, severity: str, alert_id: str, message: str, **fields: Any) -> None:
        """A condition the daemon itself finds: logged, recorded, resolved when it clears."""
        name = alert_id.split(":", 1)[0]
        run_id = fields.get("run_id")
        try:
            self.monitor.raise_alert(severity, name, message, alert_id=alert_id, run_id=run_id,
                                     **{k: v for k, v in fields.items() if k != "run_id"})
        except Exception as exc:  # an alert must never stop the daemon
            self._logger.error(name, alert=True, severity=severity, detail=message,
                               monitor_error=str(exc))

    def resolve(self, alert_id: str, message: str) -> Any:
        return self.monitor.resolve_alert(alert_id, message)

    def observe(self, event: Any) -> None:
        """An event log listener: the monitor's metrics follow every append."""
        try:
            self.monitor.observe(event)
        except Exception as exc:  # metrics must never break an append
            self._logger.warning("monitor_failed", error=str(exc))

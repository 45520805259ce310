"""The daemon's eye on the warehouse: one deleted or damaged under it is reported at once.

On start-up and every :data:`CHECK_S` seconds, each warehouse the log knows
(the state directory's ``warehouse.duckdb``, and any other a stage reported
opening) is looked at without being opened (:func:`state.warehouse.look`: a
``stat`` and its first bytes).  Gone while the log expects one, or not a
DuckDB file at all: the daemon records ``warehouse.lost``, which raises the
alert of that name (error severity, saying to run ``ahgd warehouse rebuild``).
A warehouse replaced by another DuckDB file is found by the next load, which
reads its identity marker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from state import EventLog, EventType as T, queries, warehouse
from state.errors import AhgdError
from state.events import Event

#: how often the daemon looks (a stat per warehouse: cheap)
CHECK_S = 5.0
#: how long what the log expects is trusted before it is read again (runs of other
#: processes, a script's `run()`, append to the log without this daemon seeing them)
REFRESH_S = 60.0


class WarehouseWatch:
    def __init__(self, log: EventLog, state_dir: Path, logger: Any,
                 monotonic: Callable[[], float] = time.monotonic):
        self.log = log
        self.state_dir = Path(state_dir)
        self._logger = logger
        self._monotonic = monotonic
        self.paths: set[str] = {warehouse.WAREHOUSE}
        #: path -> (what the log expects, the last seq read for it, when it was read)
        self._expected: dict[str, tuple[dict[str, Any] | None, int, float]] = {}
        self.last_check = float("-inf")

    @classmethod
    def start(cls, log: EventLog, state_dir: Path, logger: Any,
              monotonic: Callable[[], float] = time.monotonic) -> "WarehouseWatch":
        """A watch that follows ``log`` (as a listener), after a first look now."""
        watch = cls(log, state_dir, logger, monotonic)
        log.add_listener(watch.observe)
        watch.check()
        return watch

    def observe(self, event: Event) -> None:
        """An event log listener: a stage reported a warehouse, or a loss was recorded."""
        if event.type == T.STAGE_COMPLETED:
            paths = [str(r["path"]) for r in event.data().get("warehouses") or ()
                     if isinstance(r, dict) and r.get("path")]
        elif event.type == T.WAREHOUSE_LOST:
            paths = [str(p) for p in [(event.data().get("fields") or {}).get("path")] if p]
        else:
            return
        for path in paths:
            self.paths.add(path)
            said = warehouse.expectation_of(event.type, event.seq or 0, event.ts or "",
                                            event.run_id, event.stage, event.data(), path)
            cached = self._expected.get(path)
            if said is not None and cached is not None and (event.seq or 0) > cached[1]:
                self._expected[path] = (said, event.seq or 0, cached[2])

    def due(self) -> bool:
        return self._monotonic() - self.last_check >= CHECK_S

    def check(self) -> list[Event]:
        """Look at every warehouse; record (and return) a ``warehouse.lost`` for each lost one.
        A look that fails (the log cannot be read now) is a warning: the next one may do."""
        try:
            return self._check()
        except AhgdError as exc:
            self._logger.warning("warehouse_check_failed", error=str(exc))
            return []

    def _check(self) -> list[Event]:
        self.last_check = self._monotonic()
        recorded = []
        for path in sorted(self.paths):
            found = warehouse.look(self.state_dir, path)
            if found is None or warehouse.judge(self.state_dir, self._expectation(path), found,
                                                by="the daemon") is None:
                continue
            # confirm against the log as it is now before raising anything
            event = warehouse.judge(self.state_dir, self._expectation(path, fresh=True), found,
                                    by="the daemon")
            if event is not None:
                recorded.append(self.log.append(event))  # observe() takes it as the latest word
        return recorded

    def _expectation(self, path: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """What the log expects; read again (only what is new since) now and then."""
        now = self._monotonic()
        cached = self._expected.get(path)
        if cached is None or fresh or now - cached[2] > REFRESH_S:
            top = self.log.last_seq()
            newer = queries.warehouse_expectation(self.log, path, after=cached[1] if cached else 0)
            cached = (newer if newer is not None else cached[0] if cached else None, top, now)
            self._expected[path] = cached
        return cached[0]

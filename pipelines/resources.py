"""Resource budgets: CPU cores and memory (MB) that work reserves before it starts.

Work that does not fit waits; work that could never fit is refused up front
(:meth:`ResourceBudget.check_fits`), so nothing hangs waiting for a machine
it will never get.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from .errors import ConfigError


def machine_limits() -> dict[str, float]:
    """What this machine has: logical CPUs and total memory in MB (psutil)."""
    import psutil

    return {"cpu": float(psutil.cpu_count() or 1),
            "memory": psutil.virtual_memory().total / (1024 * 1024)}


def _needs(requirements: Mapping[str, float]) -> dict[str, float]:
    """``cpu`` and ``memory`` of ``requirements`` as numbers (0 where not given)."""
    return {k: float(requirements.get(k, 0) or 0) for k in ("cpu", "memory")}


class ResourceBudget:
    """A shared pool of ``cpu`` (cores) and ``memory`` (MB). Thread-safe."""

    def __init__(self, limits: Mapping[str, float] | None = None):
        limits = dict(limits) if limits else machine_limits()
        for key in limits:
            if key not in ("cpu", "memory"):
                raise ConfigError(f"resource_limits has unknown key {key!r}; use cpu (cores) "
                                  "and memory (MB)")
        self.limits = {"cpu": float(limits.get("cpu", float("inf"))),
                       "memory": float(limits.get("memory", float("inf")))}
        self._used = {"cpu": 0.0, "memory": 0.0}
        self._holders: dict[Any, dict[str, float]] = {}
        self._changed = threading.Condition()

    def check_fits(self, requirements: Mapping[str, float], *, what: str) -> None:
        """Raise ConfigError if ``requirements`` exceed the whole budget."""
        for key in ("cpu", "memory"):
            need = float(requirements.get(key, 0) or 0)
            if need > self.limits[key]:
                unit = "cores" if key == "cpu" else "MB"
                raise ConfigError(
                    f"{what} needs {key} {need:g} {unit} but the budget has only "
                    f"{self.limits[key]:g} {unit}; lower its resource_requirements.{key} or "
                    f"raise resource_limits.{key}")

    def _fits(self, need: Mapping[str, float], freed: Mapping[str, float] | None = None) -> bool:
        """Whether ``need`` fits in what is left once ``freed`` is given back (lock held)."""
        return all(self._used[k] - (freed[k] if freed else 0.0) + need[k]
                   <= self.limits[k] + 1e-9 for k in need)

    def try_acquire(self, holder: Any, requirements: Mapping[str, float]) -> bool:
        need = _needs(requirements)
        with self._changed:
            if holder in self._holders:
                return True
            # work alone on an idle budget always starts, even if it asks for more
            # than the limit (check_fits refuses that earlier, where it can)
            idle = not self._holders
            if not idle and not self._fits(need):
                return False
            for k in need:
                self._used[k] += need[k]
            self._holders[holder] = need
            return True

    def try_pass(self, holder: Any, successor: Any, requirements: Mapping[str, float]) -> bool:
        """Hand ``holder``'s share to ``successor`` if it fits once ``holder``'s is given
        back: at no moment may a third party take what ``holder`` frees.  False (and
        ``holder`` keeps its share) when it does not fit."""
        need = _needs(requirements)
        with self._changed:
            old = self._holders.get(holder)
            if old is None or successor in self._holders:
                return False
            alone = len(self._holders) == 1  # the successor would work alone: it always starts
            if not alone and not self._fits(need, freed=old):
                return False
            del self._holders[holder]
            for k in need:
                self._used[k] = max(0.0, self._used[k] - old[k]) + need[k]
            self._holders[successor] = need
            if any(need[k] < old[k] for k in need):
                self._changed.notify_all()  # less is held than before: others may fit now
            return True

    def release(self, holder: Any) -> None:
        with self._changed:
            need = self._holders.pop(holder, None)
            if need:
                for k in need:
                    self._used[k] = max(0.0, self._used[k] - need[k])
            self._changed.notify_all()

    def used(self) -> dict[str, float]:
        with self._changed:
            return dict(self._used)

"""The alert thresholds, defined once: each with its default, its limits and their wording.

:class:`MonitorThresholds` is the value the monitor judges by.  The master
file's ``daemon.monitoring.thresholds``
(:class:`pipelines.config.models.MonitoringThresholdSettings`) is made from
the same fields by :func:`threshold_fields`, so adding a threshold is one
field here: its YAML key, default and limits follow.  A threshold is crossed
when the measure goes *above* it; ``None`` turns it off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, NamedTuple

from state.errors import did_you_mean

from ..durations import parse_duration
from ..errors import ConfigError
from .records import in_parentheses


@dataclass(frozen=True)
class Limit:
    """The values one threshold takes, and the words for them in an error."""

    kind: str                   # "number" (None turns it off), "runs" or "duration" (seconds)
    low: float | None = None    # the lowest value allowed
    high: float | None = None   # the highest, or None for no bound
    what: str = ""              # "a percentage from 0 to 100": after "use" in an error

    def check(self, name: str, value: Any) -> Any:
        """``value`` as the monitor keeps it (a float, an int, seconds), or ConfigError."""
        if self.kind == "duration":
            if value is None:
                return None
            return parse_duration(value, positive=True,
                                  what=f"monitor threshold {name!r}").total_seconds()
        if self.kind == "runs":
            if isinstance(value, bool) or not isinstance(value, int) or value < (self.low or 0):
                raise ConfigError(f"monitor threshold {name!r} is {value!r}; use {self.what}")
            return value
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (self.low is None or value >= self.low)
                or not (self.high is None or value <= self.high)):
            raise ConfigError(f"monitor threshold {name!r} is {value!r}; "
                              f"use {self.what}, or None to turn it off")
        return float(value)


PERCENT = Limit("number", 0, 100, "a percentage from 0 to 100")
RUNS = Limit("runs", 1, None, "a whole number of runs, 1 or more")
DURATION = Limit("duration", what="a positive ISO 8601 duration such as PT30M")
_SAME = object()


def _threshold(default: Any, limit: Limit, *, in_config: Any = _SAME) -> Any:
    """A field of MonitorThresholds; ``in_config``: its default in the master file, if other."""
    return field(default=default, metadata={
        "limit": limit, "in_config": default if in_config is _SAME else in_config})


@dataclass(frozen=True)
class MonitorThresholds:
    """Alert thresholds; a value is crossed when the measure goes *above* it.

    ``None`` turns a threshold off.  Percentages are 0-100.  A run is slow when
    it has been going for longer than ``run_duration_factor`` times the 95th
    percentile of its pipeline's completed runs (judged once the pipeline has
    ``run_duration_min_runs`` of them).  The failure rate is a fraction over the
    last ``FAILURE_WINDOW`` finished runs, judged from ``failure_rate_min_runs``.
    """

    cpu_percent: float | None = _threshold(None, PERCENT)
    memory_percent: float | None = _threshold(85.0, PERCENT)
    #: null in the master file: daemon.disk_alert_percent (which defaults to 90)
    disk_percent: float | None = _threshold(90.0, PERCENT, in_config=None)
    run_duration_factor: float | None = _threshold(
        3.0, Limit("number", 1, 1000, "a factor of 1 or more, such as 3"))
    run_duration_min_runs: int = _threshold(5, RUNS)
    stage_duration_s: float | None = _threshold(None, DURATION)
    pipeline_failure_rate: float | None = _threshold(
        0.5, Limit("number", 0, 1, "a fraction from 0 to 1 such as 0.5"))
    failure_rate_min_runs: int = _threshold(4, RUNS)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["limit"].check(f.name,
                                                                       getattr(self, f.name)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | MonitorThresholds | None,
                     ) -> MonitorThresholds:
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(f"monitor threshold {key!r} is unknown"
                                  f"{in_parentheses(did_you_mean(str(key), known))}; "
                                  f"known thresholds: {', '.join(known)}")
        return cls(**values)

    def with_changes(self, **changes: Any) -> MonitorThresholds:
        return self.from_mapping({**asdict(self), **changes})


class ThresholdField(NamedTuple):
    """One threshold as the master file has it."""

    name: str
    default: Any        # in the master file (seconds for a duration)
    limit: Limit


def threshold_fields() -> list[ThresholdField]:
    """Every threshold, in order, with its master-file default and its limits."""
    return [ThresholdField(f.name, f.metadata["in_config"], f.metadata["limit"])
            for f in fields(MonitorThresholds)]


def configured_thresholds(values: Mapping[str, Any], disk_alert_percent: float,
                          ) -> dict[str, Any]:
    """The monitor's thresholds from ``daemon.monitoring.thresholds`` (a mapping, e.g.
    the settings model's ``model_dump()``): ``disk_percent: null`` there means
    ``daemon.disk_alert_percent``; durations become seconds."""
    out = dict(values)
    if out.get("disk_percent") is None:
        out["disk_percent"] = disk_alert_percent
    for t in threshold_fields():
        if t.limit.kind == "duration" and out.get(t.name) is not None:
            out[t.name] = parse_duration(out[t.name]).total_seconds()
    return out

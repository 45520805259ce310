"""One thresholds model: the master file's ``daemon.monitoring.thresholds`` is made from
MonitorThresholds (keys, defaults, limits), and what the daemon hands the monitor."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import timedelta

import pytest
from pydantic import ValidationError

from pipelines.config.models import DaemonSettings, MonitoringThresholdSettings
from pipelines.errors import ConfigError
from pipelines.monitoring import MonitorThresholds
from pipelines.monitoring.thresholds import configured_thresholds, threshold_fields


def test_the_master_file_has_one_key_per_threshold_with_the_same_defaults():
    names = [f.name for f in fields(MonitorThresholds)]
    assert list(MonitoringThresholdSettings.model_fields) == names
    configured = MonitoringThresholdSettings().model_dump()
    monitor = asdict(MonitorThresholds())
    # disk_percent: null in the master file means daemon.disk_alert_percent
    assert configured == {**monitor, "disk_percent": None}
    assert [t.name for t in threshold_fields()] == names


@pytest.mark.parametrize("threshold", threshold_fields(), ids=lambda t: t.name)
def test_a_value_beyond_a_limit_is_refused_by_both(threshold):
    limit = threshold.limit
    for bad in ([limit.high + 1] if limit.high is not None else []) + (
            [limit.low - 1] if limit.low is not None else []):
        with pytest.raises(ValidationError):
            MonitoringThresholdSettings(**{threshold.name: bad})
        with pytest.raises(ConfigError) as err:
            MonitorThresholds.from_mapping({threshold.name: bad})
        assert str(err.value).startswith(f"monitor threshold {threshold.name!r} is {bad!r}; "
                                         f"use {limit.what}")
    if limit.kind == "duration":
        with pytest.raises(ValidationError):
            MonitoringThresholdSettings(**{threshold.name: "PT0S"})
        with pytest.raises(ConfigError):
            MonitorThresholds.from_mapping({threshold.name: "PT0S"})


def test_what_the_daemon_hands_the_monitor():
    settings = DaemonSettings(disk_alert_percent=70,
                              monitoring={"thresholds": {"stage_duration_s": "PT30M"}})
    given = configured_thresholds(settings.monitoring.thresholds.model_dump(),
                                  settings.disk_alert_percent)
    assert given == {**asdict(MonitorThresholds()), "disk_percent": 70.0,
                     "stage_duration_s": 1800.0}
    assert MonitorThresholds.from_mapping(given).stage_duration_s == 1800.0
    explicit = DaemonSettings(disk_alert_percent=70,
                              monitoring={"thresholds": {"disk_percent": 95}})
    assert configured_thresholds(explicit.monitoring.thresholds.model_dump(),
                                 70)["disk_percent"] == 95
    assert DaemonSettings().monitoring.thresholds.stage_duration_s is None
    assert MonitoringThresholdSettings(stage_duration_s=90).stage_duration_s == timedelta(
        seconds=90)

"""The ``retain:`` sections (issue 14): defaults, a pipeline file's overrides, and mistakes
reported with the file and line, naming the key and the fix."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.config.retain import parse_size, policy
from state.removals import human_bytes as format_size
from pipelines.errors import ConfigError

PIPELINE = """\
pipeline: {name: p}
stages:
  - {name: extract, type: extractor, class: x.Y}
"""


def _load(tmp: Path, master_retain: str = "", pipeline_retain: str = ""):
    (tmp / "p.yaml").write_text(PIPELINE + pipeline_retain)
    (tmp / "master.yaml").write_text("pipelines:\n  - {name: p, config_file: p.yaml}\n"
                                     + master_retain)
    return load_config([tmp / "master.yaml"])


def _policy(config):
    return policy(config.retain, {n: p.file.retain for n, p in config.pipelines.items()})


def test_defaults_a_user_can_live_with(tmp_path: Path) -> None:
    keep = _policy(_load(tmp_path)).of("p")
    assert keep.successful_runs == 10 and keep.inputs_for == timedelta(days=30)
    assert keep.duplicates_for == timedelta(days=7) and keep.quarantine_for == timedelta(days=30)
    assert keep.failed_runs_for == timedelta(days=30) and keep.logs_for == timedelta(days=90)
    assert _policy(_load(tmp_path)).data_budget is None


def test_master_sets_defaults_and_a_pipeline_file_overrides_them(tmp_path: Path) -> None:
    config = _load(tmp_path, textwrap.dedent("""\
        retain:
          successful_runs: 3
          inputs_for: PT12H
          duplicates_for: 86400
          data_budget: 50GB
        """), "retain: {successful_runs: 20, quarantine_for: P1D}\n")
    pol = _policy(config)
    keep = pol.of("p")
    assert keep.successful_runs == 20 and keep.quarantine_for == timedelta(days=1)
    assert keep.inputs_for == timedelta(hours=12) and keep.duplicates_for == timedelta(days=1)
    assert pol.of("gone_pipeline").successful_runs == 3 and pol.data_budget == 50 * 10**9


def test_mistakes_name_the_file_line_key_and_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, "retain:\n  successful_runs: 0\n  inputs_for: soon\n"
                        "  data_budget: lots\n  keep_forever: yes\n")
    text = str(bad.value)
    master = tmp_path / "master.yaml"
    assert f"{master}:4: retain.successful_runs: 0 is not allowed" in text and "use 1 or more" in text
    assert f"{master}:5: retain.inputs_for: 'soon' is not a duration" in text
    assert f"{master}:6: retain.data_budget: 'lots' is not a size; use a number and a unit" in text
    assert "unknown key 'keep_forever'" in text and "logs_for" in text


def test_data_budget_belongs_to_the_master_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, pipeline_retain="retain:\n  data_budget: 1GB\n")
    assert f"{tmp_path / 'p.yaml'}:5: retain.data_budget:" in str(bad.value)
    assert "set it in the master file's retain: section" in str(bad.value)


def test_sizes() -> None:
    assert parse_size("50GB") == 50 * 10**9 and parse_size("1.5 MiB") == 1572864
    assert parse_size(4096) == 4096 and format_size(1_234_567) == "1.2 MB"
    for bad in ("0GB", "-1", "12 parsecs", True, 0):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_a_size_written_back_reads_as_the_same_bytes() -> None:
    from pipelines.config.retain import RetainSettings

    for given in ("50GB", "1.5 MiB", 1597440, 1234567, "2TB"):
        first = RetainSettings(data_budget=given)
        again = RetainSettings(**first.model_dump(mode="json"))
        assert again.data_budget == first.data_budget and again == first

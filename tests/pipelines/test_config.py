"""The YAML configuration format: real files in tmp_path, exact user-facing messages."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from pipelines.config import (ConfigIssue, check_files, config_schema, load_config,
                              load_master_file, load_pipeline_file)
from pipelines.config import MasterFile, PipelineFile
from pipelines.durations import parse_duration
from pipelines.errors import ConfigError

from .test_readme_examples import PIPELINE_YAML

# the original README's "Pipeline Configuration (YAML)" block, kept verbatim in one place
SEED_README_EXAMPLE = PIPELINE_YAML

FULL_PIPELINE = '''\
pipeline: {name: seifa_sa2, description: "SEIFA 2021 by SA2"}
orchestration: {execution_mode: sequential, max_workers: 2, timeout: PT2H}
duckdb: {memory_limit: 2GB, temp_directory: "${state_dir}/tmp", threads: 2}
triggers:
  - type: drop_folder
    path: "${state_dir}/inbox/seifa_sa2"
    pattern: "*.csv"
    stable_for: PT2S
    observer: polling
    poll_interval: PT0.5S
    allow_duplicates: false
    quarantine_on_extract_failure: true
    recursive: true
    input_check: {required_columns: [sa2_code], encoding: utf-8, delimiter: ",",
                  callable: mypackage.checks.looks_like_seifa}
  - {type: schedule, cron: "0 2 * * *", timezone: Australia/Sydney, misfire: latest}
  - {type: schedule, interval: PT15M, misfire: skip, params: {full: true}, id: quarter-hourly}
  - {type: upstream, pipelines: [mortality_regions]}
stages:
  - name: extract
    type: extractor
    class: mypackage.seifa.SeifaExtractor
    config: {encoding: utf-8}
    prerequisites: []
    timeout: PT30M
    retry_attempts: 3
    retry_delay: PT5S
    retry_backoff: 2.0
    resource_requirements: {cpu: 1.0, memory: 2048}
    validation_rules:
      required_columns: [sa2_code]
      min_records: 1000
      max_records: 5000
      not_null: [sa2_code]
      unique: [sa2_code]
      ranges: {irsd_score: [500, 1300], decile: [1, null]}
      allowed_values: {state: [NSW, VIC]}
      pattern: {sa2_code: '^\\d{9}$'}
      schema: schemas/seifa.json
      quarantine: true
    executor: process
  - name: transform
    type: transformer
    class: mypackage.seifa.SeifaTransformer
    timeout: 90
  - name: validate
    type: validator
    validation_rules: {min_records: 1}
  - name: load
    type: loader
    class: mypackage.seifa.SeifaLoader
    prerequisites: [transform, validate]
    executor: inprocess
'''

MORTALITY = '''\
pipeline: {name: mortality_regions}
stages:
  - {name: extract, type: extractor, class: mypackage.mortality.Extract}
'''

MASTER = '''\
pipelines:
  - {name: seifa_sa2, config_file: seifa_sa2.yaml, priority: 10}
  - name: mortality_regions
    config_file: mortality_regions.yaml
    enabled: false
    timeout: PT1H
    resource_requirements: {cpu: 0.5, memory: 512}
    retry_policy: {max_attempts: 2}
orchestration: {execution_mode: parallel, max_workers: 4, timeout: PT2H,
                resource_limits: {cpu: 2, memory: 4096}}
daemon: {max_workers: 2, shutdown_grace: PT30S, max_recoveries: 3, synchronous: FULL,
         disk_alert_percent: 90, status_listen: "127.0.0.1:8765"}
'''

MINIMAL = '''\
pipeline:
  name: demo
stages:
  - name: extract
    type: extractor
    class: pkg.mod.Extract
    timeout: PT30M
  - name: load
    type: loader
    class: pkg.mod.Load
'''


def write(base: Path, name: str, text: str) -> Path:
    path = base / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(load, *args, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(*args, **kwargs)
    assert [str(i) for i in info.value.issues] == str(info.value).splitlines()
    return str(info.value).splitlines()


@pytest.fixture
def seifa_dir(tmp_path: Path) -> Path:
    """A folder with the full pipeline file, its JSON Schema, a second pipeline and a master."""
    write(tmp_path, "seifa_sa2.yaml", FULL_PIPELINE)
    write(tmp_path, "schemas/seifa.json", '{"type": "object"}')
    write(tmp_path, "mortality_regions.yaml", MORTALITY)
    write(tmp_path, "master.yaml", MASTER)
    return tmp_path


@pytest.fixture
def import_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real importable package on sys.path, removed from sys.modules afterwards."""
    pkg = tmp_path / "site" / "ahgd_cfgtest_pkg"
    write(pkg, "__init__.py", "")
    write(pkg, "seifa.py", '''\
        from pathlib import Path
        HERE = Path(__file__).parent
        (HERE / "imported").write_text("yes")

        class SeifaExtractor:
            def __init__(self, **options):
                (HERE / "instantiated").write_text("yes")

        def looks_like_seifa(path):
            (HERE / "called").write_text("yes")
        ''')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("ahgd_cfgtest_pkg")]:
        del sys.modules[name]


# --- files that load --------------------------------------------------------------

def test_the_seed_readme_example_loads_when_classes_are_not_imported(tmp_path):
    path = write(tmp_path, "example_pipeline.yaml", SEED_README_EXAMPLE)
    cfg = load_pipeline_file(path)
    assert cfg.name == "example_pipeline" and cfg.source == path
    assert cfg.orchestration.execution_mode == "parallel"
    assert cfg.orchestration.timeout == timedelta(hours=2)
    stage = cfg.stages[0]
    assert stage.class_ == "src.extractors.ExampleExtractor"
    assert stage.timeout == timedelta(minutes=30) and stage.retry_attempts == 3
    assert stage.config == {"source_url": "https://example.com/data"}
    assert (stage.resource_requirements.cpu, stage.resource_requirements.memory) == (1.0, 2048)
    assert stage.prerequisites == [] and cfg.triggers == []


def looked_for() -> str:
    """What a missing top-level module's message adds: where it was looked for."""
    import os

    return (f" (it is looked for in the working directory, {os.getcwd()}, and on PYTHONPATH, "
            "after the installed packages: run ahgd from the folder that holds it, or add that "
            "folder to PYTHONPATH)")


def test_the_seed_readme_example_names_its_missing_module_when_importing(tmp_path):
    path = write(tmp_path, "example_pipeline.yaml", SEED_README_EXAMPLE)
    assert problems(load_pipeline_file, path, import_classes=True) == [
        f"{path}:13: stages[0].class: cannot import module 'src.extractors': "
        f"No module named 'src'{looked_for()}"]


def test_full_pipeline_file_loads_every_key(seifa_dir, state_dir):
    cfg = load_pipeline_file(seifa_dir / "seifa_sa2.yaml", state_dir=state_dir)
    assert cfg.duckdb.memory_limit == "2GB" and cfg.duckdb.temp_directory == state_dir / "tmp"
    folder, cron, interval, upstream = cfg.triggers
    assert folder.path == state_dir / "inbox" / "seifa_sa2" and folder.observer == "polling"
    assert folder.poll_interval == timedelta(seconds=0.5) and folder.recursive
    assert folder.input_check.callable == "mypackage.checks.looks_like_seifa"
    assert (cron.cron, cron.timezone, cron.id) == ("0 2 * * *", "Australia/Sydney", "cron:0 2 * * *")
    assert (interval.interval, interval.id, interval.params) == (
        timedelta(minutes=15), "quarter-hourly", {"full": True})
    assert upstream.pipelines == ["mortality_regions"]
    rules = cfg.stage("extract").validation_rules
    assert rules.schema_ == seifa_dir / "schemas" / "seifa.json"
    assert rules.ranges == {"irsd_score": [500, 1300], "decile": [1, None]}
    assert rules.pattern == {"sa2_code": r"^\d{9}$"}
    assert cfg.stage("transform").timeout == timedelta(seconds=90)
    assert cfg.stage("validate").class_ is None
    assert [s.prerequisites for s in cfg.stages] == [
        [], ["extract"], ["transform"], ["transform", "validate"]]


def test_pipeline_file_round_trips_through_yaml(seifa_dir, state_dir, tmp_path):
    first = load_pipeline_file(seifa_dir / "seifa_sa2.yaml", state_dir=state_dir)
    again_path = write(tmp_path, "again/seifa_sa2.yaml", yaml.safe_dump(first.to_dict()))
    again = load_pipeline_file(again_path)
    assert again.model_dump() == first.model_dump()
    assert again.to_dict()["stages"][0]["timeout"] == "PT30M"


def test_master_file_round_trips_through_yaml(seifa_dir, state_dir, tmp_path):
    master = load_master_file(seifa_dir / "master.yaml", state_dir=state_dir)
    assert sorted(master.pipeline_files) == ["mortality_regions", "seifa_sa2"]
    entry = master.pipelines[1]
    assert (entry.enabled, entry.timeout, entry.retry_policy) == (
        False, timedelta(hours=1), {"max_attempts": 2})
    assert master.daemon.status_listen == "127.0.0.1:8765"
    again = load_master_file(write(tmp_path, "elsewhere/master.yaml",
                                   yaml.safe_dump(master.to_dict())), state_dir=state_dir)
    assert again.model_dump() == master.model_dump()
    assert ({n: f.model_dump() for n, f in again.pipeline_files.items()}
            == {n: f.model_dump() for n, f in master.pipeline_files.items()})


def test_load_config_reads_masters_and_pipeline_files_alike(seifa_dir, state_dir, tmp_path):
    extra = write(tmp_path, "extra/health.yaml", MINIMAL.replace("name: demo", "name: health"))
    cfg = load_config([seifa_dir / "master.yaml", extra], state_dir=state_dir)
    assert sorted(cfg.pipelines) == ["health", "mortality_regions", "seifa_sa2"]
    seifa, health = cfg.pipelines["seifa_sa2"], cfg.pipelines["health"]
    assert (seifa.priority, seifa.master, seifa.source) == (
        10, seifa_dir / "master.yaml", seifa_dir / "seifa_sa2.yaml")
    assert (health.priority, health.dependencies, health.master, health.enabled) == (
        0, [], None, True)
    assert cfg.orchestration.resource_limits.memory == 4096
    assert cfg.daemon.shutdown_grace == timedelta(seconds=30)
    assert cfg.files == [seifa_dir / "master.yaml", extra]


def test_load_config_gives_default_settings_without_a_master(tmp_path):
    cfg = load_config([write(tmp_path, "demo.yaml", MINIMAL)])
    assert cfg.orchestration.execution_mode == "parallel" and cfg.orchestration.max_workers == 4
    assert (cfg.daemon.max_workers, cfg.daemon.synchronous, cfg.daemon.max_recoveries) == (2, "FULL", 3)
    assert cfg.pipelines["demo"].file.stages[1].prerequisites == ["extract"]


def test_a_pipeline_file_given_directly_and_in_a_master_is_one_pipeline(seifa_dir, state_dir):
    cfg = load_config([seifa_dir / "seifa_sa2.yaml", seifa_dir / "master.yaml"],
                      state_dir=state_dir)
    assert cfg.pipelines["seifa_sa2"].priority == 10
    assert len(cfg.pipelines) == 2


def test_relative_paths_are_relative_to_the_file_they_appear_in(tmp_path):
    write(tmp_path, "conf/pipelines/schemas/x.json", "{}")
    write(tmp_path, "conf/pipelines/x.yaml", '''\
        pipeline: {name: x}
        duckdb: {temp_directory: scratch}
        triggers: [{type: drop_folder, path: ../../inbox/x}]
        stages:
          - {name: check, type: validator, validation_rules: {schema: schemas/x.json}}
        ''')
    write(tmp_path, "conf/master.yaml", "pipelines: [{name: x, config_file: pipelines/x.yaml}]\n")
    master = load_master_file(tmp_path / "conf" / "master.yaml")
    x = master.pipeline_files["x"]
    assert master.pipelines[0].config_file == tmp_path / "conf" / "pipelines" / "x.yaml"
    assert x.duckdb.temp_directory == tmp_path / "conf" / "pipelines" / "scratch"
    assert x.triggers[0].path == tmp_path / "inbox" / "x"
    assert x.stages[0].validation_rules.schema_ == tmp_path / "conf/pipelines/schemas/x.json"


def test_state_dir_and_environment_variables_are_expanded(tmp_path, state_dir):
    path = write(tmp_path, "x.yaml", '''\
        pipeline: {name: x, description: "costs $${NOT_EXPANDED}"}
        triggers: [{type: drop_folder, path: "${state_dir}/inbox/${FEED}"}]
        stages:
          - {name: get, type: extractor, class: "${PKG}.Get", config: {url: "${BASE_URL}/a"}}
        ''')
    env = {"FEED": "seifa", "PKG": "mypackage.get", "BASE_URL": "https://abs.gov.au"}
    cfg = load_pipeline_file(path, state_dir=state_dir, env=env)
    assert cfg.triggers[0].path == state_dir / "inbox" / "seifa"
    assert cfg.stages[0].class_ == "mypackage.get.Get"
    assert cfg.stages[0].config == {"url": "https://abs.gov.au/a"}
    assert cfg.pipeline.description == "costs ${NOT_EXPANDED}"


def test_environment_defaults_to_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AHGD_CFGTEST_DESC", "from the environment")
    path = write(tmp_path, "x.yaml", MINIMAL.replace("name: demo", "name: demo\n  description: ${AHGD_CFGTEST_DESC}"))
    assert load_pipeline_file(path).pipeline.description == "from the environment"


def test_imports_classes_and_callables_without_calling_them(tmp_path, import_root):
    path = write(tmp_path, "x.yaml", '''\
        pipeline: {name: x}
        triggers:
          - {type: drop_folder, path: inbox,
             input_check: {callable: ahgd_cfgtest_pkg.seifa.looks_like_seifa}}
        stages:
          - {name: get, type: extractor, class: ahgd_cfgtest_pkg.seifa.SeifaExtractor}
        ''')
    cfg = load_pipeline_file(path, import_classes=True)
    assert cfg.stages[0].class_ == "ahgd_cfgtest_pkg.seifa.SeifaExtractor"
    assert (import_root / "imported").exists()
    assert not (import_root / "instantiated").exists() and not (import_root / "called").exists()


def test_a_misspelt_class_names_the_module_and_suggests_the_attribute(tmp_path, import_root):
    path = write(tmp_path, "x.yaml", '''\
        pipeline: {name: x}
        triggers:
          - {type: drop_folder, path: inbox, input_check: {callable: ahgd_cfgtest_pkg.nope.check}}
        stages:
          - {name: get, type: extractor, class: ahgd_cfgtest_pkg.seifa.SeifaExtractr}
        ''')
    assert problems(load_pipeline_file, path, import_classes=True) == [
        f"{path}:3: triggers[0].input_check.callable: cannot import module "
        "'ahgd_cfgtest_pkg.nope': No module named 'ahgd_cfgtest_pkg.nope'",
        f"{path}:5: stages[0].class: module 'ahgd_cfgtest_pkg.seifa' has no attribute "
        "'SeifaExtractr'; did you mean 'SeifaExtractor'?",
    ]


def test_a_stage_config_key_its_class_does_not_take_is_a_problem_of_the_file(tmp_path):
    """Each run makes the class with its config as keywords: a misspelt key failed every run,
    while the check said ok."""
    path = write(tmp_path, "x.yaml", '''\
        pipeline: {name: x}
        stages:
          - name: extract
            type: extractor
            class: pipelines.CsvExtractor
            config: {thousand: ",", types: {mort: VARCHAR}}
          - {name: load, type: loader, class: pipelines.WarehouseLoader, config: {table: t}}
          - {name: note, type: loader, class: tests.pipelines.test_config.NeedsTarget}
        ''')
    assert problems(load_pipeline_file, path, import_classes=True) == [
        f"{path}:6: stages[0].config.thousand: CsvExtractor takes no option 'thousand'; did "
        "you mean 'thousands'? (its options: source, encoding, delimiter, quote, escape, types, "
        "all_varchar, thousands, lineage, base_dir)",
        f"{path}:8: stages[2].config: NeedsTarget needs the option(s) target (its options: "
        "target, mode)",
    ]
    # a class that takes any keyword (**options) is not second-guessed
    assert load_pipeline_file(write(tmp_path, "y.yaml", '''\
        pipeline: {name: y}
        stages:
          - {name: a, type: loader, class: tests.pipelines.test_config.TakesAnything,
             config: {whatever: 1}}
        '''), import_classes=True).stages[0].config == {"whatever": 1}


def test_config_keys_are_not_second_guessed_where_the_signature_may_not_say(tmp_path):
    """A validator's schema_path (the stage's own, not its class's), a pydantic model (aliases,
    ignored extras), a wrapper that takes more than it wraps, a disabled stage: no problem."""
    (tmp_path / "s.json").write_text('{"type": "object"}')
    path = write(tmp_path, "x.yaml", '''\
        pipeline: {name: x}
        stages:
          - {name: v, type: validator, class: tests.pipelines.test_config.NeedsTarget,
             config: {schema_path: s.json, target: t}}
          - {name: m, type: loader, class: tests.pipelines.test_config.ModelStage,
             config: {inputFile: a.csv, unused: 1}}
          - {name: w, type: loader, class: tests.pipelines.test_config.Wrapped,
             config: {target: t, retries: 2}}
          - {name: idle, type: loader, class: tests.pipelines.test_config.NeedsTarget,
             enabled: false, config: {stale: 1}}
        ''')
    assert load_pipeline_file(path, import_classes=True).stages[0].config["schema_path"] == "s.json"


class ModelStage(__import__("pydantic").BaseModel):
    input_file: str = __import__("pydantic").Field("", alias="inputFile")

    def load(self, context):
        return {}


def _with_retries(cls):
    import functools

    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, retries: int = 0, **kwargs):
        init(self, *args, **kwargs)
        self.retries = retries

    cls.__init__ = __init__
    return cls


class NeedsTarget:
    def __init__(self, target: str, mode: str = "append"):
        self.target, self.mode = target, mode

    def load(self, context):
        return {}


class TakesAnything:
    def __init__(self, **options):
        self.options = options

    def load(self, context):
        return {}


# --- the common mistakes, word for word ---------------------------------------------

def _stage_error(tmp_path, replace: str, by: str) -> list[str]:
    path = write(tmp_path, "demo.yaml", MINIMAL.replace(replace, by))
    return [line.removeprefix(f"{path}:") for line in problems(load_pipeline_file, path)]


def test_a_misspelt_key_suggests_the_right_one(tmp_path):
    assert _stage_error(tmp_path, "timeout: PT30M", "timout: PT30M") == [
        "7: stages[0].timout: unknown key 'timout'; did you mean 'timeout'?"]


def test_an_unknown_key_without_a_close_match_lists_the_keys(tmp_path):
    assert _stage_error(tmp_path, "name: demo", "name: demo\n  owner: me") == [
        "3: pipeline.owner: unknown key 'owner'; allowed keys are name, description"]


def test_a_bad_duration_shows_the_accepted_forms(tmp_path):
    assert _stage_error(tmp_path, "timeout: PT30M", "timeout: thirty minutes") == [
        "7: stages[0].timeout: 'thirty minutes' is not a duration; use ISO 8601 such as "
        "PT30M, PT2H or P1D, a number of seconds such as 90, or a number with a unit such as "
        "30m, 12h or 7d"]


@pytest.mark.parametrize("written, meant", [
    ("30m", timedelta(minutes=30)), ("45s", timedelta(seconds=45)), ("12h", timedelta(hours=12)),
    ("1h30m", timedelta(hours=1, minutes=30)), ("1h 30min", timedelta(hours=1, minutes=30)),
    ("2 days", timedelta(days=2)), ("2w", timedelta(weeks=2)), ("0.5h", timedelta(minutes=30)),
    ("90", timedelta(seconds=90)), ("PT30M", timedelta(minutes=30)),
])
def test_a_duration_may_be_a_number_with_a_unit(tmp_path, written, meant):
    """What systemd and most schedulers accept (30m, 12h, 7d) reads as they read it."""
    path = write(tmp_path, "demo.yaml", MINIMAL.replace("timeout: PT30M", f"timeout: {written}"))
    assert load_pipeline_file(path).stages[0].timeout == meant


@pytest.mark.parametrize("written, unit, hint", [
    ("3 months", "months", " (a month or a year has no fixed length: use days, such as 30d)"),
    ("1y", "y", " (a month or a year has no fixed length: use days, such as 30d)"),
    ("30x", "x", ""),
    ("6M", "M", " (M is a month to some tools and a minute to others: write min for minutes, "
                "or days such as 30d)"),
])
def test_a_unit_that_is_not_of_time_is_named(tmp_path, written, unit, hint):
    assert _stage_error(tmp_path, "timeout: PT30M", f"timeout: {written}") == [
        f"7: stages[0].timeout: {written!r}: {unit!r} is not a unit of time{hint}; use s, m, h, "
        "d or w (such as 30m or 1h30m), or ISO 8601 such as PT30M"]


@pytest.mark.parametrize("written", ["1h junk", "30m30m", "h", "-5m"])
def test_a_number_with_a_unit_and_more_is_not_a_duration(written):
    with pytest.raises(ConfigError, match="is not a duration; use ISO 8601"):
        parse_duration(written)


def test_an_unknown_stage_type_lists_the_types(tmp_path):
    assert _stage_error(tmp_path, "type: loader", "type: transform") == [
        "9: stages[1].type: 'transform' is not a stage type; use one of extractor, "
        "transformer, validator, loader"]


@pytest.mark.parametrize("zero", ["0", "PT0S", "P0D"])
def test_a_zero_timeout_is_refused(tmp_path, zero):
    assert _stage_error(tmp_path, "timeout: PT30M", f"timeout: {zero}") == [
        "7: stages[0].timeout: 0s is not allowed; use a positive ISO 8601 duration such as PT30M"]


def test_a_negative_delay_is_refused(tmp_path):
    assert _stage_error(tmp_path, "timeout: PT30M", "retry_delay: -5") == [
        "7: stages[0].retry_delay: -5 is negative; use a positive ISO 8601 duration such as PT30M"]


def test_a_missing_required_key_names_it(tmp_path):
    assert _stage_error(tmp_path, "    class: pkg.mod.Extract\n", "") == [
        "4: stages[0]: missing required key 'class'"]


def test_a_missing_top_level_key_names_it(tmp_path):
    path = write(tmp_path, "demo.yaml", "pipeline: {name: demo}\n")
    assert problems(load_pipeline_file, path) == [f"{path}:1: missing required key 'stages'"]


def test_wrong_kinds_of_value_are_named(tmp_path):
    assert _stage_error(tmp_path, "timeout: PT30M",
                        "retry_attempts: many\n    prerequisites: extract\n    enabled: maybe") == [
        "7: stages[0].retry_attempts: expected a whole number, got 'many'",
        "8: stages[0].prerequisites: expected a list, got 'extract'",
        "9: stages[0].enabled: expected true or false, got 'maybe'",
    ]


def test_an_unknown_validation_rule_is_an_error(tmp_path):
    assert _stage_error(tmp_path, "timeout: PT30M",
                        "validation_rules: {min_record: 5, ranges: {x: [9, 1]}}") == [
        "7: stages[0].validation_rules.ranges.x: min 9 is greater than max 1; write [min, max]",
        "7: stages[0].validation_rules.min_record: unknown key 'min_record'; "
        "did you mean 'min_records'?",
    ]


def test_a_bad_timezone_suggests_the_closest(tmp_path):
    path = write(tmp_path, "demo.yaml", MINIMAL + textwrap.dedent('''\
        triggers:
          - type: schedule
            cron: "0 2 * * *"
            timezone: Australia/Sidney
        '''))
    assert problems(load_pipeline_file, path) == [
        f"{path}:14: triggers[0].timezone: unknown time zone 'Australia/Sidney'; "
        "did you mean 'Australia/Sydney'?"]


def test_a_bad_cron_expression_says_why(tmp_path):
    path = write(tmp_path, "demo.yaml", MINIMAL + 'triggers:\n  - {type: schedule, cron: "0 2 * *"}\n')
    assert problems(load_pipeline_file, path) == [
        f"{path}:12: triggers[0].cron: '0 2 * *' is not a valid cron expression (wrong number "
        "of fields; got 4, expected 5); use five fields, minute hour day-of-month month "
        "day-of-week, such as '0 2 * * *'"]


def test_trigger_mistakes(tmp_path):
    path = write(tmp_path, "demo.yaml", MINIMAL + textwrap.dedent('''\
        triggers:
          - {type: schedule, cron: "0 2 * * *", interval: PT1H}
          - {type: schedule}
          - {type: dropfolder, path: inbox}
          - {path: inbox}
          - {type: drop_folder, path: inbox, pattern: "in/*.csv", observer: fanotify}
        '''))
    assert problems(load_pipeline_file, path) == [
        f"{path}:12: triggers[0]: give exactly one of 'cron' or 'interval' (found both)",
        f"{path}:13: triggers[1]: give exactly one of 'cron' or 'interval' (found neither)",
        f"{path}:14: triggers[2].type: 'dropfolder' is not a trigger type; "
        "use one of drop_folder, schedule, upstream",
        f"{path}:15: triggers[3]: missing required key 'type'",
        f"{path}:16: triggers[4].pattern: 'in/*.csv' is not a file name pattern; use a glob "
        "such as '*.csv' and put the folder in 'path'",
        f"{path}:16: triggers[4].observer: 'fanotify' is not an observer; "
        "use one of auto, inotify, polling",
    ]


def test_stage_graph_mistakes(tmp_path):
    path = write(tmp_path, "demo.yaml", '''\
        pipeline: {name: demo}
        stages:
          - {name: extract, type: extractor, class: a.B, prerequisites: [load]}
          - {name: clean, type: transformer, class: a.B, prerequisites: [extrct]}
          - {name: clean, type: transformer, class: a.B, prerequisites: [clean]}
          - {name: load, type: loader, class: a.B, prerequisites: [extract]}
        ''')
    assert problems(load_pipeline_file, path) == [
        f"{path}:2: stages: prerequisite cycle extract -> load -> extract; "
        "remove one of these prerequisites",
        f"{path}:4: stages[1].prerequisites: unknown stage 'extrct'; did you mean 'extract'?",
        f"{path}:5: stages[2].name: duplicate stage name 'clean' (also stages[1]); "
        "give each stage a unique name",
        f"{path}:5: stages[2].prerequisites: stage 'clean' cannot be its own prerequisite",
    ]


def test_a_dependency_cycle_shows_its_path(tmp_path):
    write(tmp_path, "a.yaml", MINIMAL.replace("demo", "a"))
    write(tmp_path, "b.yaml", MINIMAL.replace("demo", "b"))
    master = write(tmp_path, "master.yaml", '''\
        pipelines:
          - {name: a, config_file: a.yaml, dependencies: [b]}
          - {name: b, config_file: b.yaml, dependencies: [a]}
        ''')
    assert problems(load_master_file, master) == [
        f"{master}:1: pipelines: dependency cycle a -> b -> a; remove one of these dependencies"]


def test_master_file_mistakes(tmp_path):
    write(tmp_path, "seifa_sa2.yaml", MINIMAL.replace("demo", "seifa_sa2"))
    write(tmp_path, "health.yaml", MINIMAL.replace("demo", "health"))
    master = write(tmp_path, "master.yaml", '''\
        pipelines:
          - {name: seifa_sa2, config_file: seifa_sa2.yaml, priority: 10}
          - {name: sa2_health_profile, config_file: health.yaml, dependencies: [seifa]}
          - {name: seifa_sa2, config_file: missing.yaml}
        daemon: {synchronous: sometimes, disk_alert_percent: 120, status_listen: localhost}
        ''')
    assert problems(load_master_file, master) == [
        f"{master}:3: pipelines[1].name: 'sa2_health_profile' does not match the name 'health' "
        f"in {tmp_path / 'health.yaml'} (pipeline.name); use the same name in both",
        f"{master}:3: pipelines[1].dependencies: unknown pipeline 'seifa'; "
        "did you mean 'seifa_sa2'?",
        f"{master}:4: pipelines[2].config_file: 'missing.yaml' does not exist (looked for "
        f"{tmp_path / 'missing.yaml'}); paths are relative to the file they appear in",
        f"{master}:4: pipelines[2].name: duplicate pipeline name 'seifa_sa2' (also pipelines[0]); "
        "give each pipeline a unique name",
        f"{master}:5: daemon.synchronous: 'sometimes' is not a SQLite synchronous mode; "
        "use one of FULL, EXTRA, NORMAL, OFF",
        f"{master}:5: daemon.disk_alert_percent: must be at most 100, got 120",
        f"{master}:5: daemon.status_listen: 'localhost' is not a listen address; "
        "use HOST:PORT such as 127.0.0.1:8765",
    ]


def test_dependencies_and_upstream_triggers_may_span_files_in_load_config(tmp_path):
    write(tmp_path, "a.yaml", MINIMAL.replace("demo", "a"))
    b = write(tmp_path, "b.yaml", MINIMAL.replace("demo", "b") +
              "triggers: [{type: upstream, pipelines: [a, c]}]\n")
    one = write(tmp_path, "one.yaml", "pipelines: [{name: a, config_file: a.yaml}]\n")
    two = write(tmp_path, "two.yaml", "pipelines: [{name: b, config_file: b.yaml, "
                                      "dependencies: [a]}]\n")
    assert problems(load_config, [one, two]) == [
        f"{b}:11: triggers[0].pipelines: unknown pipeline 'c'; known pipelines are a, b"]
    write(tmp_path, "b.yaml", b.read_text().replace("[a, c]", "[a]"))
    assert load_config([one, two]).pipelines["b"].dependencies == ["a"]
    with pytest.raises(ConfigError):
        load_master_file(two)      # alone, 'a' is unknown


def test_conflicting_settings_in_two_master_files(tmp_path):
    write(tmp_path, "a.yaml", MINIMAL.replace("demo", "a"))
    write(tmp_path, "b.yaml", MINIMAL.replace("demo", "b"))
    one = write(tmp_path, "one.yaml", "pipelines: [{name: a, config_file: a.yaml}]\n"
                                      "daemon: {max_workers: 2, max_recoveries: 5}\n")
    two = write(tmp_path, "two.yaml", "pipelines: [{name: b, config_file: b.yaml}]\n"
                                      "daemon: {max_workers: 3, shutdown_grace: PT1M}\n")
    assert problems(load_config, [one, two]) == [
        f"{two}:2: daemon.max_workers: conflicts with the value set in {one}; "
        "set it in one master file only"]
    write(tmp_path, "two.yaml", two.read_text().replace("max_workers: 3", "max_workers: 2"))
    daemon = load_config([one, two]).daemon
    assert (daemon.max_workers, daemon.max_recoveries, daemon.shutdown_grace) == (
        2, 5, timedelta(minutes=1))


def test_state_dir_is_needed_when_a_file_uses_it(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL + 'duckdb: {temp_directory: "${state_dir}/tmp"}\n')
    assert problems(load_pipeline_file, path) == [
        f"{path}:11: duckdb.temp_directory: ${{state_dir}} is used but no state directory "
        "was given; pass --state-dir"]


def test_an_unset_environment_variable_is_named(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL.replace("pkg.mod.Load", "${AHGD_CFGTEST_UNSET}.Load"))
    assert problems(load_pipeline_file, path, env={}) == [
        f"{path}:10: stages[1].class: environment variable AHGD_CFGTEST_UNSET is not set; "
        "export it or write the value here"]


def test_yaml_syntax_errors_give_line_and_column(tmp_path):
    path = write(tmp_path, "x.yaml", "pipeline:\n  name: x\n  description: a: b\n")
    assert problems(load_pipeline_file, path) == [
        f"{path}:3:17: YAML syntax error: mapping values are not allowed here"]


def test_tabs_in_indentation_get_a_hint(tmp_path):
    path = write(tmp_path, "x.yaml", "pipeline:\n\tname: x\n")
    assert problems(load_pipeline_file, path) == [
        f"{path}:2:1: YAML syntax error: found character '\\t' that cannot start any token "
        "(while scanning for the next token); indent with spaces, not tabs"]


def test_a_broken_file_named_twice_is_reported_once(tmp_path):
    broken = write(tmp_path, "x.yaml", "pipeline: {name: x\n")
    master = write(tmp_path, "master.yaml", "pipelines: [{name: x, config_file: x.yaml}]\n")
    assert problems(load_config, [broken, master, broken]) == [
        f"{broken}:2:1: YAML syntax error: expected ',' or '}}', but got '<stream end>' "
        "(while parsing a flow mapping on line 1)"]


def test_an_empty_file_is_named(tmp_path):
    path = write(tmp_path, "x.yaml", "# nothing yet\n")
    assert problems(load_config, [path]) == [
        f"{path}: the file is empty; a pipeline file needs 'pipeline' and 'stages', "
        "a master file needs 'pipelines'"]


def test_duplicate_yaml_keys_are_errors(tmp_path):
    path = write(tmp_path, "x.yaml", MINIMAL.replace("timeout: PT30M", "timeout: PT30M\n    timeout: PT1H"))
    assert problems(load_pipeline_file, path) == [
        f"{path}:8: stages[0].timeout: duplicate key 'timeout' (first on line 7); remove one of them"]


def test_files_of_the_wrong_kind(tmp_path):
    master = write(tmp_path, "master.yaml", "pipelines: []\n")
    other = write(tmp_path, "other.yaml", "- just a list\n")
    assert problems(load_pipeline_file, master) == [
        f"{master}:1: this is a master file, not a pipeline file"]
    assert problems(load_config, [other, tmp_path / "absent.yaml"]) == [
        f"{other}:1: neither a pipeline file (top-level keys 'pipeline' and 'stages') "
        "nor a master file (top-level key 'pipelines')",
        f"{tmp_path / 'absent.yaml'}: file not found",
    ]


def test_issues_are_structured_records(tmp_path):
    path = write(tmp_path, "demo.yaml", MINIMAL.replace("type: loader", "type: transform"))
    with pytest.raises(ConfigError) as info:
        load_pipeline_file(path)
    assert info.value.issues == [ConfigIssue(
        file=str(path), line=9, path="stages[1].type",
        message="'transform' is not a stage type; use one of extractor, transformer, "
                "validator, loader")]


def test_no_message_uses_pydantics_wording(tmp_path):
    bad_values = ["[1, 2]", "{a: 1}", "null", "-3", "''", "x y", "true", "3.5"]
    keys = ["name", "type", "class", "timeout", "retry_attempts", "retry_backoff", "config",
            "prerequisites", "resource_requirements", "validation_rules", "executor", "enabled"]
    for value in bad_values:
        stage = "\n".join(f"    {k}: {value}" for k in keys)
        path = write(tmp_path, "demo.yaml", f"pipeline: {{name: {value}}}\nstages:\n  - \n{stage}\n"
                                            f"triggers: {value}\nduckdb: {value}\n")
        for line in problems(load_pipeline_file, path):
            message = line.removeprefix(f"{path}:")
            assert not re.search(r"Input should|pydantic|Field required|Extra inputs", message), line


# --- check_files and the schema --------------------------------------------------------

def test_check_files_reports_every_problem_of_every_file(tmp_path, seifa_dir, state_dir):
    broken = write(tmp_path, "broken/one.yaml", MINIMAL.replace("timeout: PT30M", "timout: PT30M")
                   .replace("type: loader", "type: transform"))
    write(tmp_path, "broken/two.yaml", MINIMAL.replace("demo", "two").replace("PT30M", "P0D"))
    master = write(tmp_path, "broken/master.yaml", '''\
        pipelines:
          - {name: two, config_file: two.yaml, dependencies: [one]}
        ''')
    two = tmp_path / "broken" / "two.yaml"
    assert check_files([broken, master, seifa_dir / "master.yaml"], state_dir=state_dir,
                       import_classes=False) == [
        f"{broken}:7: stages[0].timout: unknown key 'timout'; did you mean 'timeout'?",
        f"{broken}:9: stages[1].type: 'transform' is not a stage type; use one of extractor, "
        "transformer, validator, loader",
        f"{master}:2: pipelines[0].dependencies: unknown pipeline 'one'; known pipelines are "
        "demo, mortality_regions, seifa_sa2, two",
        f"{two}:7: stages[0].timeout: 0s is not allowed; use a positive ISO 8601 duration "
        "such as PT30M",
    ]
    assert check_files([seifa_dir / "master.yaml"], state_dir=state_dir, import_classes=False) == []


def test_check_files_imports_classes_by_default(seifa_dir, state_dir):
    found = check_files([seifa_dir / "master.yaml"], state_dir=state_dir)
    assert found[0] == (f"{seifa_dir / 'seifa_sa2.yaml'}:15: triggers[0].input_check.callable: "
                        "cannot import module 'mypackage.checks': No module named 'mypackage'"
                        + looked_for())
    assert len(found) == 5


def _schema_errors(schema: dict, value, root: dict, where: str = "$") -> list[str]:
    """A small JSON Schema checker: the keywords config_schema() uses, nothing more."""
    if "$ref" in schema:
        return _schema_errors(root["$defs"][schema["$ref"].split("/")[-1]], value, root, where)
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
             "integer": int, "number": (int, float)}
    wanted = schema.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        if not any(isinstance(value, kinds[n]) and not (isinstance(value, bool) and n in
                   ("integer", "number")) for n in names):
            return [f"{where}: not {wanted}"]
    errs = []
    if "const" in schema and value != schema["const"] or "enum" in schema and value not in schema["enum"]:
        errs.append(f"{where}: {value!r} not allowed")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append(f"{where}: {value!r} does not match")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errs.append(f"{where}: {value} out of range")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errs.append(f"{where}: {value} out of range")
    ok = lambda s: not _schema_errors(s, value, root, where)  # noqa: E731
    if "anyOf" in schema and not any(ok(s) for s in schema["anyOf"]):
        errs.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema and sum(ok(s) for s in schema["oneOf"]) != 1:
        errs.append(f"{where}: does not match exactly one of oneOf")
    if "if" in schema:
        branch = schema.get("then" if ok(schema["if"]) else "else")
        errs += _schema_errors(branch, value, root, where) if branch else []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{where}: missing {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            extra = schema.get("additionalProperties", True)
            if k in props:
                errs += _schema_errors(props[k], v, root, f"{where}.{k}")
            elif extra is False:
                errs.append(f"{where}: unknown key {k}")
            elif isinstance(extra, dict):
                errs += _schema_errors(extra, v, root, f"{where}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errs.append(f"{where}: wrong number of items")
        for i, item in enumerate(value):
            errs += _schema_errors(schema.get("items", {}), item, root, f"{where}[{i}]")
    return errs


def test_config_schema_is_json_and_accepts_good_files(seifa_dir):
    schema = config_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert set(schema["$defs"]) >= {"PipelineFile", "MasterFile", "StageSpec", "ScheduleTrigger"}
    for name in ("seifa_sa2.yaml", "mortality_regions.yaml", "master.yaml"):
        data = yaml.safe_load((seifa_dir / name).read_text())
        assert _schema_errors(schema, data, schema) == [], name
    assert _schema_errors(schema, yaml.safe_load(SEED_README_EXAMPLE), schema) == []


def test_config_schema_rejects_what_the_loader_rejects():
    schema = config_schema()
    bad = yaml.safe_load(MINIMAL.replace("timeout: PT30M", "timout: PT30M"))
    assert "$.stages[0]: unknown key timout" in _schema_errors(
        schema["$defs"]["PipelineFile"], bad, schema)
    no_class = yaml.safe_load(MINIMAL.replace("    class: pkg.mod.Load\n", ""))
    assert "$.stages[1]: missing class" in _schema_errors(
        schema["$defs"]["PipelineFile"], no_class, schema)
    assert _schema_errors(schema, {"pipelines": [{"name": "x"}]}, schema) != []


def test_models_are_importable_from_the_loader_module():
    from pipelines import config
    assert config.PipelineFile is PipelineFile and config.MasterFile is MasterFile


def test_upstream_triggers_that_trigger_each_other_are_refused(tmp_path):
    a = write(tmp_path, "a.yaml", MINIMAL.replace("demo", "a") +
              "triggers: [{type: upstream, pipelines: [b]}]\n")
    b = write(tmp_path, "b.yaml", MINIMAL.replace("demo", "b") +
              "triggers: [{type: upstream, pipelines: [a, b]}]\n")
    assert problems(load_config, [a, b]) == [
        f"{a}:11: triggers[0]: upstream trigger cycle a -> b -> a would run for ever; "
        "remove one of these upstream triggers",
        f"{b}:11: triggers[0].pipelines: pipeline 'b' cannot be its own upstream",
    ]


def test_monitoring_settings_mistakes(tmp_path):
    write(tmp_path, "demo.yaml", MINIMAL)
    master = write(tmp_path, "master.yaml", '''\
        pipelines: [{name: demo, config_file: demo.yaml}]
        daemon:
          monitoring:
            sample_interval: PT0S
            thresholds: {memory_percnt: 80, disk_percent: 101, run_duration_factor: 0.5}
        ''')
    assert problems(load_master_file, master) == [
        f"{master}:4: daemon.monitoring.sample_interval: 0s is not allowed; use a positive "
        "ISO 8601 duration such as PT30M",
        f"{master}:5: daemon.monitoring.thresholds.disk_percent: must be at most 100, got 101",
        f"{master}:5: daemon.monitoring.thresholds.run_duration_factor: must be at least 1, "
        "got 0.5",
        f"{master}:5: daemon.monitoring.thresholds.memory_percnt: unknown key 'memory_percnt'; "
        "did you mean 'memory_percent'?",
    ]


@_with_retries
class Wrapped(NeedsTarget):
    pass

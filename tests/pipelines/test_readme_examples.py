"""The original framework's README examples, run as scripts the way users run them.

Each example is copied verbatim from ``ETL_FRAMEWORK_README.md`` (CI has no
``/work/shared``) and only ``src.pipelines`` is replaced by ``pipelines``.
Where an example leaves something to the reader (a helper method, a class,
a variable from an earlier example, a file), the test adds the smallest
honest completion, marked ``added by the test`` in the script.  Each script
runs in a subprocess (``python example.py``, cwd ``tmp_path``,
``AHGD_STATE_DIR`` set): pipeline classes then live in the script's
``__main__`` and the process executor forks its workers for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from state import EventLog

REPO = Path(__file__).resolve().parents[2]

# README "Basic Pipeline Creation"
BASIC = """\
from src.pipelines import BasePipeline, PipelineContext, StageConfig
from src.pipelines.stage import ExtractorStage, TransformerStage, LoaderStage

class HealthDataPipeline(BasePipeline):
    def define_stages(self):
        return ["extract", "transform", "validate", "load"]
    
    def execute_stage(self, stage_name: str, context: PipelineContext):
        if stage_name == "extract":
            # Extract health data
            return self.extract_health_data()
        elif stage_name == "transform":
            # Transform data
            return self.transform_data(context.get_output("extract"))
        # ... other stages

# Run pipeline
pipeline = HealthDataPipeline(
    name="health_pipeline",
    enable_checkpoints=True,
    parallel_stages=False
)

result = pipeline.run()
"""

# README "Pipeline Orchestration"
ORCHESTRATION = """\
from src.pipelines import PipelineOrchestrator, PipelineDefinition
from src.pipelines.orchestrator import ExecutionMode

# Create orchestrator
orchestrator = PipelineOrchestrator(
    name="ahgd_orchestrator",
    execution_mode=ExecutionMode.PARALLEL,
    max_workers=4
)

# Register pipelines
orchestrator.register_pipeline(PipelineDefinition(
    name="geographic_pipeline",
    pipeline_class=GeographicPipeline,
    dependencies=[],
    priority=10
))

orchestrator.register_pipeline(PipelineDefinition(
    name="health_pipeline", 
    pipeline_class=HealthDataPipeline,
    dependencies=["geographic_pipeline"],
    priority=8
))

# Run orchestration
result = orchestrator.run()
"""

# README "Configuration-Driven Pipelines"
CONFIG_DRIVEN = """\
# Load from YAML configuration
orchestrator.register_from_config(Path("pipelines/health_data_pipeline.yaml"))

# Run specific pipelines
result = orchestrator.run(target_pipelines=["health_data_pipeline"])
"""

# README "Monitoring and Alerting"
MONITORING = """\
from src.pipelines.monitoring import PipelineMonitor, AlertSeverity

# Create monitor
monitor = PipelineMonitor(
    metrics_dir=Path("metrics"),
    enable_system_monitoring=True
)

# Start monitoring
monitor.start_system_monitoring()
monitor.start_pipeline_monitoring("health_pipeline")

# Get dashboard data
dashboard_data = monitor.get_dashboard_data()

# Export metrics
metrics_json = monitor.export_metrics(format="json")
"""

# README "Checkpoint Management"
CHECKPOINTS = """\
from src.pipelines.checkpointing import CheckpointManager, CheckpointFormat, RecoveryStrategy

# Create checkpoint manager
checkpoint_mgr = CheckpointManager(
    checkpoint_dir=Path("checkpoints"),
    default_format=CheckpointFormat.COMPRESSED_PICKLE
)

# Create checkpoint
metadata = checkpoint_mgr.create_checkpoint(
    pipeline_name="health_pipeline",
    stage_name="transform",
    data=transformed_data,
    version="v1.2.0"
)

# Load checkpoint
data, metadata = checkpoint_mgr.load_checkpoint(
    pipeline_name="health_pipeline",
    stage_name="transform",
    strategy=RecoveryStrategy.LATEST
)

# Resume pipeline from checkpoint
result = pipeline.run(resume_from="transform")
"""

# README "Pipeline Configuration (YAML)"
PIPELINE_YAML = """\
pipeline:
  name: "example_pipeline"
  description: "Example ETL pipeline"
  
orchestration:
  execution_mode: "parallel"
  max_workers: 4
  timeout: "PT2H"

stages:
  - name: "extract_data"
    type: "extractor"
    class: "src.extractors.ExampleExtractor"
    config:
      source_url: "https://example.com/data"
    timeout: "PT30M"
    retry_attempts: 3
    resource_requirements:
      cpu: 1.0
      memory: 2048
"""

# README "Stage Configuration"
STAGE_CONFIG = """\
stage_config = StageConfig(
    name="extract_health_data",
    description="Extract health indicators from AIHW",
    timeout=timedelta(minutes=30),
    retry_attempts=3,
    resource_usage=ResourceUsage.MEDIUM,
    validation_rules={
        "required_columns": ["year", "state", "indicator"],
        "min_records": 1000
    }
)
"""

# README "Extractors"
EXTRACTORS = """\
from src.extractors.aihw import AIHWExtractor

extractor_stage = ExtractorStage(
    config=stage_config,
    extractor_class=AIHWExtractor,
    source_type="mortality_data"
)
"""

# README "Transformers"
TRANSFORMERS = """\
from src.transformers.health import HealthTransformer

transformer_stage = TransformerStage(
    config=stage_config,
    transformer_class=HealthTransformer,
    standardisation_rules="aihw_standard"
)
"""

# README "Validators"
VALIDATORS = """\
from src.validators.health import HealthDataValidator

validator_stage = ValidatorStage(
    config=stage_config,
    validator_class=HealthDataValidator,
    schema_path="schemas/health_schema.json"
)
"""

# README "Loaders"
LOADERS = """\
from src.loaders.warehouse import DataWarehouseLoader

loader_stage = LoaderStage(
    config=stage_config,
    loader_class=DataWarehouseLoader,
    target_database="health_analytics"
)
"""

# README "Debugging"
DEBUGGING = """\
# Enable debug logging
import logging
logging.getLogger("src.pipelines").setLevel(logging.DEBUG)

# Check pipeline status
status = pipeline.get_progress()
print(f"Pipeline state: {status['state']}")
print(f"Completed stages: {status['completed_stages']}")

# Validate checkpoints
result = checkpoint_mgr.validate_checkpoint(checkpoint_id)
if not result.is_valid:
    print(f"Validation errors: {result.errors}")
"""


# --------------------------------------------------------------------------- completions
# Everything below is added by the test, never part of the README's text.

#: "Basic Pipeline Creation" calls self.extract_health_data() and self.transform_data(),
#: which the README leaves to the reader; inserted right after the class line.
HEALTH_HELPERS = """\
    # --- added by the test: the two helpers the README leaves to the reader ---
    def extract_health_data(self):
        return [{"sa2_code": "101021007", "deaths": 3, "population": 2500},
                {"sa2_code": "101021008", "deaths": 5, "population": 4000}]

    def transform_data(self, rows):
        return [{**row, "deaths_per_1000": 1000 * row["deaths"] / row["population"]}
                for row in rows]
    # --- end of the addition ---

"""

#: "Pipeline Orchestration" registers GeographicPipeline, which the README never defines.
GEOGRAPHIC = """\
# --- added by the test: GeographicPipeline, which the README leaves to the reader ---
class GeographicPipeline(BasePipeline):
    def define_stages(self):
        return ["extract", "load"]

    def execute_stage(self, stage_name, context):
        if stage_name == "extract":
            return [{"sa2_code": "101021007", "area_km2": 12.5}]
        return {"regions": len(context.get_output("extract"))}
# --- end of the addition ---

"""

#: "Configuration-Driven Pipelines" uses `orchestrator` and `Path` from earlier examples.
CONFIG_DRIVEN_SETUP = """\
# --- added by the test: the orchestrator and Path that earlier examples provide ---
from pathlib import Path
from src.pipelines import PipelineOrchestrator

orchestrator = PipelineOrchestrator(name="ahgd_orchestrator")
# --- end of the addition ---

"""

#: The class the README's pipeline YAML names (src.extractors.ExampleExtractor); it does
#: not download anything (there is no network here): it reports what it would read.
EXAMPLE_EXTRACTOR = """\
# added by the test: the extractor class the README's pipeline YAML names
class ExampleExtractor:
    def __init__(self, source_url):
        self.source_url = source_url

    def extract(self, context):
        return {"source_url": self.source_url, "rows": 3}
"""

#: "Checkpoint Management" checkpoints `transformed_data`, which the README leaves to
#: the reader: here, the transform stage's output of the "Basic" example's run.
TRANSFORMED_DATA = """\
# --- added by the test: the data the README's snippet checkpoints, and Path ---
from pathlib import Path

transformed_data = result.get_output("transform")
# --- end of the addition ---

"""

#: "Debugging" validates `checkpoint_id` of a `checkpoint_mgr` from earlier examples.
DEBUGGING_SETUP = """\
# --- added by the test: the checkpoint manager and id the snippet inspects ---
from pathlib import Path
from src.pipelines.checkpointing import CheckpointManager

checkpoint_mgr = CheckpointManager(checkpoint_dir=Path("checkpoints"))
checkpoint_id = checkpoint_mgr.create_checkpoint(
    pipeline_name="health_pipeline", stage_name="transform",
    data=result.get_output("transform")).checkpoint_id
# --- end of the addition ---

"""

STAGE_IMPORTS = """\
# --- added by the test: the imports the README's snippets assume ---
from datetime import timedelta
from src.pipelines import StageConfig
from src.pipelines.stage import (ExtractorStage, LoaderStage, ResourceUsage, TransformerStage,
                                 ValidatorStage)
# --- end of the addition ---

"""

#: The AHGD component classes the integration snippets import, defined in the script and
#: made importable under the names the snippets use.
AHGD_COMPONENTS = """\
# --- added by the test: tiny stand-ins for the AHGD component classes ---
import sys
import types


class AIHWExtractor:
    def __init__(self, source_type):
        self.source_type = source_type

    def extract(self, context):
        return [{"year": 2021, "state": "NSW", "indicator": self.source_type}]


class HealthTransformer:
    def __init__(self, standardisation_rules):
        self.standardisation_rules = standardisation_rules

    def transform(self, context):
        return context.get_output(context.input_stage())


class HealthDataValidator:
    def validate(self, context):
        return True


class DataWarehouseLoader:
    def __init__(self, target_database):
        self.target_database = target_database

    def load(self, context):
        return {"database": self.target_database}


for _name, _cls in (("src.extractors.aihw", AIHWExtractor),
                    ("src.transformers.health", HealthTransformer),
                    ("src.validators.health", HealthDataValidator),
                    ("src.loaders.warehouse", DataWarehouseLoader)):
    _module = types.ModuleType(_name)
    setattr(_module, _cls.__name__, _cls)
    sys.modules[_name] = _module
# --- end of the addition ---

"""

HEALTH_SCHEMA = {"type": "object", "required": ["year", "state", "indicator"],
                 "properties": {"year": {"type": "integer"}, "state": {"type": "string"},
                                "indicator": {"type": "string"}}}


def _health_pipeline_class() -> str:
    """The "Basic" example with its helpers inserted after the class line."""
    line = "class HealthDataPipeline(BasePipeline):\n"
    assert BASIC.count(line) == 1
    return BASIC.replace(line, line + HEALTH_HELPERS)


def _health_pipeline_definition() -> str:
    """The "Basic" example's imports and class, without its run."""
    code = _health_pipeline_class()
    return code[: code.index("# Run pipeline")]


def _added(text: str) -> str:
    """A block the test appends to check what the example achieved, marked as such."""
    return "\n# --- added by the test: record what the example achieved ---\n" + text + \
        "# --- end of the addition ---\n"


def _script(*parts: str) -> str:
    """The parts as one script, reading ``pipelines`` where the README says ``src.pipelines``."""
    return "\n".join(parts).replace("src.pipelines", "pipelines")


@pytest.fixture
def example_env(tmp_path: Path) -> dict[str, str]:
    """How a user runs an example: the repository importable, a state dir of the example's own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AHGD_STATE_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["AHGD_STATE_DIR"] = str(tmp_path / "state")
    return env


def _run(tmp_path: Path, env: dict[str, str], name: str, code: str) -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{name}.py failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _query(state_dir: Path, sql: str, params: list | None = None) -> list[tuple]:
    with EventLog.open(state_dir) as log:
        return [tuple(r) for r in log.query(sql, params or [])]


# --------------------------------------------------------------------------- tests


def test_basic_pipeline_creation_runs_to_completed_in_history(tmp_path, example_env):
    _run(tmp_path, example_env, "basic", _script(_health_pipeline_class()))
    state = tmp_path / "state"
    assert _query(state, "SELECT pipeline, trigger, state FROM run_history") == [
        ("health_pipeline", "script", "COMPLETED")]
    assert _query(state, "SELECT stage, state FROM stage_timings ORDER BY started_at") == [
        ("extract", "COMPLETED"), ("transform", "COMPLETED"), ("validate", "COMPLETED"),
        ("load", "COMPLETED")]
    # a list of dicts is a table (README "Stage outputs"), read back as the same records
    out = _query(state, "SELECT json_extract(output, '$.path'), json_extract(output, '$.shape') "
                        "FROM stage_runs WHERE stage = 'transform'")
    assert out[0][1] == "records"
    with duckdb.connect(str(state / out[0][0]), read_only=True) as con:
        assert con.execute("SELECT * FROM output ORDER BY sa2_code").fetchall() == [
            ("101021007", 3, 2500, 1.2), ("101021008", 5, 4000, 1.25)]
    # the class lives in the script's __main__: its stages ran in forked worker processes
    owner = _query(state, "SELECT json_extract(payload, '$.owner.pid') FROM events "
                          "WHERE type = 'run.started'")[0][0]
    workers = {r[0] for r in _query(state, "SELECT json_extract(detail, '$.worker_pid') "
                                           "FROM stage_runs")}
    assert owner not in workers and None not in workers


def test_pipeline_orchestration_runs_geographic_before_health(tmp_path, example_env):
    _run(tmp_path, example_env, "orchestration",
         _script(_health_pipeline_definition(), GEOGRAPHIC, ORCHESTRATION))
    state = tmp_path / "state"
    rows = _query(state, "SELECT name, orchestration_state, pipeline, state FROM "
                         "orchestration_history ORDER BY started_at")
    assert rows == [("ahgd_orchestrator", "COMPLETED", "geographic_pipeline", "COMPLETED"),
                    ("ahgd_orchestrator", "COMPLETED", "health_pipeline", "COMPLETED")]
    runs = dict((p, (s, e)) for p, s, e in _query(
        state, "SELECT pipeline, started_at, ended_at FROM runs"))
    assert runs["health_pipeline"][0] >= runs["geographic_pipeline"][1]
    planned = _query(state, "SELECT planned FROM orchestrations")[0][0]
    assert json.loads(planned) == ["geographic_pipeline", "health_pipeline"]


def test_configuration_driven_pipeline_loads_the_yaml_and_runs_the_target(tmp_path, example_env):
    # added by the test: the YAML file the example loads is the README's own pipeline
    # configuration, named after the pipeline the example targets
    assert PIPELINE_YAML.count('name: "example_pipeline"') == 1
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "health_data_pipeline.yaml").write_text(
        PIPELINE_YAML.replace('name: "example_pipeline"', 'name: "health_data_pipeline"'))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "extractors.py").write_text(EXAMPLE_EXTRACTOR)
    _run(tmp_path, example_env, "config_driven", _script(CONFIG_DRIVEN_SETUP, CONFIG_DRIVEN))
    state = tmp_path / "state"
    assert _query(state, "SELECT pipeline, state FROM orchestration_history") == [
        ("health_data_pipeline", "COMPLETED")]
    assert _query(state, "SELECT stage, state, json_extract(output, '$.value.source_url') "
                         "FROM stage_runs") == [
        ("extract_data", "COMPLETED", "https://example.com/data")]


def test_monitoring_exports_json_metrics_and_the_script_exits(tmp_path, example_env):
    _run(tmp_path, example_env, "monitoring", _script(
        "from pathlib import Path  # added by the test: the README's snippet uses Path\n",
        MONITORING,
        _added("import json\n"
               'Path("exported.json").write_text(metrics_json)\n'
               'Path("dashboard.json").write_text(json.dumps(dashboard_data))\n')))
    exported = json.loads((tmp_path / "exported.json").read_text())
    dashboard = json.loads((tmp_path / "dashboard.json").read_text())
    assert "health_pipeline" in exported["pipelines"]
    assert dashboard["monitoring"]["system"] is True
    assert (tmp_path / "metrics").is_dir()


def test_checkpoint_round_trips_and_the_pipeline_resumes_from_transform(tmp_path, example_env):
    _run(tmp_path, example_env, "checkpoints", _script(
        _health_pipeline_class(), TRANSFORMED_DATA, CHECKPOINTS,
        _added("import json\n"
               'Path("outcome.json").write_text(json.dumps({\n'
               '    "same": data == transformed_data, "state": result.state,\n'
               '    "version": metadata.version, "format": metadata.format.value}))\n')))
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome == {"same": True, "state": "COMPLETED", "version": "v1.2.0",
                       "format": "compressed_pickle"}
    state = tmp_path / "state"
    runs = _query(state, "SELECT run_id, state FROM runs ORDER BY requested_at")
    assert [s for _, s in runs] == ["COMPLETED", "COMPLETED"]
    resumed = _query(state, "SELECT type, stage FROM events WHERE run_id = ? AND stage IS NOT "
                            "NULL AND type IN ('stage.reused', 'stage.completed') ORDER BY seq",
                     [runs[1][0]])
    assert resumed == [("stage.reused", "extract"), ("stage.completed", "transform"),
                       ("stage.completed", "validate"), ("stage.completed", "load")]


def test_debugging_prints_the_progress_keys_and_a_valid_checkpoint(tmp_path, example_env):
    proc = _run(tmp_path, example_env, "debugging",
                _script(_health_pipeline_class(), DEBUGGING_SETUP, DEBUGGING))
    lines = proc.stdout.splitlines()
    assert "Pipeline state: COMPLETED" in lines
    assert "Completed stages: ['extract', 'transform', 'validate', 'load']" in lines
    assert not any(line.startswith("Validation errors") for line in lines)


def test_stage_configuration_constructs(tmp_path, example_env):
    proc = _run(tmp_path, example_env, "stage_config", _script(
        STAGE_IMPORTS, STAGE_CONFIG,
        _added("print(stage_config.describe(), stage_config.requirements())\n")))
    assert proc.stdout.splitlines()[-1] == (
        "extract_health_data: timeout PT30M, 3 retries {'cpu': 1.0, 'memory': 1024}")


def test_integration_stage_snippets_construct(tmp_path, example_env):
    # added by the test: the JSON Schema file the validator snippet names
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "health_schema.json").write_text(json.dumps(HEALTH_SCHEMA))
    proc = _run(tmp_path, example_env, "integration", _script(
        STAGE_IMPORTS, STAGE_CONFIG, AHGD_COMPONENTS, EXTRACTORS, TRANSFORMERS, VALIDATORS,
        LOADERS,
        _added("for s in (extractor_stage, transformer_stage, validator_stage, loader_stage):\n"
               "    print(type(s).__name__, s.name, s.cls.__name__, sorted(s.options))\n"
               "print(validator_stage.config.validation_rules['schema'])\n")))
    assert proc.stdout.splitlines()[-5:] == [
        "ExtractorStage extract_health_data AIHWExtractor ['source_type']",
        "TransformerStage extract_health_data HealthTransformer ['standardisation_rules']",
        "ValidatorStage extract_health_data HealthDataValidator []",
        "LoaderStage extract_health_data DataWarehouseLoader ['target_database']",
        "schemas/health_schema.json"]


# --------------------------------------------------------------------------- this README's own
# The examples of this repository's README.md marked `<!-- readme-example: NAME -->`, read
# from the README itself (so the text and the test cannot drift apart) and run as written.


def readme_example(name: str) -> str:
    """The code block right after ``<!-- readme-example: name -->`` in README.md."""
    text = (REPO / "README.md").read_text()
    marker = f"<!-- readme-example: {name} -->\n"
    assert text.count(marker) == 1, f"README.md has no example {name!r}"
    block = text.split(marker, 1)[1]
    assert block.startswith("```"), f"example {name!r} must follow its marker"
    return block.split("\n", 1)[1].split("\n```\n", 1)[0] + "\n"


def test_the_readme_python_example_loads_a_csv_into_the_warehouse(tmp_path, example_env):
    from tests.ahgd_truth import MORT_CSV, read_rows

    raw = [r for r in read_rows(MORT_CSV) if r["deaths"]]
    shutil.copy(MORT_CSV, tmp_path / "mort.csv")   # the file the example reads, as it says
    proc = _run(tmp_path, example_env, "csv_to_warehouse", readme_example("python-csv-to-warehouse"))
    nsw = sorted((r["SEX"], int(r["deaths"].replace(",", ""))) for r in raw
                 if r["mort"] == "STE01" and r["YEAR"] == "2023")
    assert proc.stdout.splitlines() == ["COMPLETED None None", f"{{'rows': {len(raw)}}}", str(nsw)]
    assert "INFO pipelines.run: stage.started pipeline=deaths" in proc.stderr
    with duckdb.connect(str(tmp_path / "var" / "warehouse.duckdb"), read_only=True) as con:
        loaded = {(a, str(y), s): d for a, y, s, d in con.execute(
            "SELECT area, year, sex, deaths FROM deaths").fetchall()}
    assert loaded == {(r["mort"], r["YEAR"], r["SEX"]): int(r["deaths"].replace(",", ""))
                      for r in raw}


def test_the_readme_yaml_example_loads_mort_with_lineage_and_again_without_duplicates(tmp_path):
    from pipelines import load_pipeline
    from tests.ahgd_truth import MORT_CSV, read_rows

    raw = read_rows(MORT_CSV)
    path = tmp_path / "deaths.yaml"
    path.write_text(readme_example("yaml-csv-to-warehouse"))
    state = tmp_path / "state"
    runs = [load_pipeline(path, state_dir=state, executor="process").run(input_file=MORT_CSV)
            for _ in range(2)]
    assert [r.state for r in runs] == ["COMPLETED", "COMPLETED"], [r.error for r in runs]
    with duckdb.connect(str(state / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT mort, year, sex, deaths, age_standardised_rate_per_100000, "
                           "_source_sha256, _run_id FROM mort_table1").fetchall()
    sha = hashlib.sha256(MORT_CSV.read_bytes()).hexdigest()
    assert len(rows) == len(raw)
    assert {r[5:] for r in rows} == {(sha, runs[1].run_id)}
    by_key = {(m, str(y), s): (d, asr) for m, y, s, d, asr, *_ in rows}
    for r in raw:
        deaths, asr = by_key[(r["mort"], r["YEAR"], r["SEX"])]
        assert deaths == (int(r["deaths"].replace(",", "")) if r["deaths"] else None)
        want = float(r["age_standardised_rate_per_100000"]) \
            if r["age_standardised_rate_per_100000"] else None
        assert asr == want


def test_the_readme_yaml_example_blames_a_file_without_a_column_not_the_configuration(tmp_path):
    """The file is at fault (quarantined by a drop folder), not the configuration: the example's
    required_columns names every column its other rules use."""
    from pipelines import load_pipeline
    from tests.ahgd_truth import MORT_CSV

    lines = MORT_CSV.read_text().splitlines()
    header = lines[0].split(",")
    at = header.index("SEX")
    without_sex = tmp_path / "mort_without_sex.csv"
    without_sex.write_text("\n".join(",".join(c for i, c in enumerate(_csv_row(line)) if i != at)
                                     for line in lines) + "\n")
    path = tmp_path / "deaths.yaml"
    path.write_text(readme_example("yaml-csv-to-warehouse"))
    run = load_pipeline(path, state_dir=tmp_path / "state", executor="process").run(
        input_file=without_sex)
    assert run.state == "FAILED"
    assert run.failed_stage == "validate", run.error
    assert "missing column(s) sex" in run.error and "ConfigError" not in run.error, run.error


def _csv_row(line: str) -> list[str]:
    import csv

    return [f'"{c}"' if "," in c else c for c in next(csv.reader([line]))]

"""YAML-configured pipelines: read, check and build them.

    from pipelines.config import load_config, check_files, config_schema
    cfg = load_config([Path("conf/master.yaml")], state_dir=state_dir)

    source      reading YAML with the line of every key; ${state_dir} and ${ENV} expansion
    values      the value types (durations, names, paths, ...) with their messages
    models      the pipeline file and master file as pydantic models
    problems    ConfigIssue, and pydantic's errors in our words
    loader      one load of several files: every problem at once, checks across files
    imports     stage classes and input-check callables imported in a fresh interpreter
    configured  ConfiguredPipeline: a BasePipeline built from a pipeline file

``pipelines.config.configured`` imports the run engine; it is not imported here,
so that checking a file (``ahgd config check``) stays light.
"""

from __future__ import annotations

from .loader import (ConfigCheck, LoadedConfig, LoadedPipeline, check_config, check_files,
                     load_config, load_master_file, load_pipeline_file)
from .models import MasterFile, PipelineFile, config_schema
from .problems import ConfigIssue

__all__ = ["ConfigCheck", "ConfigIssue", "LoadedConfig", "LoadedPipeline", "MasterFile",
           "PipelineFile", "check_config", "check_files", "config_schema", "load_config", "load_master_file",
           "load_pipeline_file"]

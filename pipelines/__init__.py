"""The pipeline author's API (the original AHGD framework's ``src.pipelines``).

    from pipelines import (BasePipeline, PipelineContext, StageConfig,
                           PipelineOrchestrator, PipelineDefinition,
                           CheckpointManager, PipelineMonitor,
                           CsvExtractor, TableExtractor, WarehouseLoader)

Names are imported on first use (PEP 562), so ``import pipelines`` stays cheap
for the CLI and for worker processes.  Imports nothing from ``ahgd_daemon``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names

_EXPORTS = {
    "BasePipeline": "pipelines.base",
    "PipelineContext": "pipelines.context",
    "PipelineState": "pipelines.base",
    "StageConfig": "pipelines.stage",
    "StageState": "pipelines.stage",
    "ResourceUsage": "pipelines.stage",
    "PipelineStage": "pipelines.stage",
    "ExtractorStage": "pipelines.stage",
    "TransformerStage": "pipelines.stage",
    "ValidatorStage": "pipelines.stage",
    "LoaderStage": "pipelines.stage",
    "PipelineOrchestrator": "pipelines.orchestrator",
    "PipelineDefinition": "pipelines.orchestrator",
    "OrchestrationResult": "pipelines.orchestrator",
    "ExecutionMode": "pipelines.orchestrator",
    "CheckpointManager": "pipelines.checkpointing",
    "CheckpointFormat": "pipelines.checkpointing",
    "RecoveryStrategy": "pipelines.checkpointing",
    "PipelineMonitor": "pipelines.monitoring",
    "AlertSeverity": "pipelines.monitoring",
    "ConfigError": "pipelines.errors",
    "InputError": "pipelines.errors",
    "StageError": "pipelines.errors",
    "StageOutputError": "pipelines.errors",
    "ValidationFailed": "pipelines.errors",
    "WarehouseDamaged": "pipelines.errors",
    "ResumeRefused": "pipelines.errors",
    "RetryLater": "pipelines.retries",
    "parse_duration": "pipelines.durations",
    "quote": "pipelines.context",
    "sha256_file": "state.store",
    "read_csv_header": "pipelines.csvheader",
    "read_csv_sql": "pipelines.csvfile",
    "csv_error": "pipelines.csvfile",
    "CsvExtractor": "pipelines.extractors",
    "WarehouseLoader": "pipelines.loaders",
    "TableExtractor": "pipelines.tables.extractor",
    "read_table": "pipelines.tables.extractor",
    "HeaderFit": "pipelines.tables.source",
    "Wanted": "pipelines.tables.headers",
    "match_header": "pipelines.tables.headers",
    "mapping_lines": "pipelines.tables.headers",
    "show_header": "pipelines.tables.headers",
    "load_pipeline": "pipelines.config.configured",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)


if TYPE_CHECKING:  # pragma: no cover
    from .base import BasePipeline, PipelineState
    from .checkpointing import CheckpointFormat, CheckpointManager, RecoveryStrategy
    from .context import PipelineContext
    from .durations import parse_duration
    from state.store import sha256_file

    from .config.configured import load_pipeline
    from .context import quote
    from .csvfile import csv_error, read_csv_sql
    from .csvheader import read_csv_header
    from .extractors import CsvExtractor
    from .loaders import WarehouseLoader
    from .tables.extractor import TableExtractor, read_table
    from .tables.headers import Wanted, mapping_lines, match_header, show_header
    from .tables.source import HeaderFit
    from .errors import (ConfigError, InputError, ResumeRefused, StageError, StageOutputError,
                         ValidationFailed, WarehouseDamaged)
    from .monitoring import AlertSeverity, PipelineMonitor
    from .orchestrator import ExecutionMode, OrchestrationResult, PipelineDefinition, PipelineOrchestrator
    from .retries import RetryLater
    from .stage import (ExtractorStage, LoaderStage, PipelineStage, ResourceUsage, StageConfig,
                        StageState, TransformerStage, ValidatorStage)

"""Checkpoints: a stage's output saved to a file, indexed, verified before it is read.

    from pipelines.checkpointing import CheckpointManager, CheckpointFormat, RecoveryStrategy
    mgr = CheckpointManager(Path("checkpoints"))
    meta = mgr.create_checkpoint("health", "transform", table, version="v1.2.0")

    manager   CheckpointManager and its SQLite index (sizes, SHA-256, versions)
    formats   the five file formats: written atomically, verified, read back
    arguments the manager's arguments checked (names, counts, ages, metadata), safe path names
"""

from __future__ import annotations

from .formats import TABLE_NAME, CheckpointFormat
from .manager import (INDEX_DB, CheckpointManager, CheckpointMetadata, CheckpointValidation,
                      RecoveryStrategy)

__all__ = ["CheckpointFormat", "CheckpointManager", "CheckpointMetadata", "CheckpointValidation",
           "RecoveryStrategy", "INDEX_DB", "TABLE_NAME"]

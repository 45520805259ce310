"""Errors of the pipeline framework, named after the condition.

All derive from :class:`state.errors.AhgdError`; messages name the thing,
the value and the fix.
"""

from __future__ import annotations

from state.errors import AhgdError


class ConfigError(AhgdError):
    """A pipeline, stage or YAML setting is invalid (raised before anything runs)."""


class StageError(AhgdError):
    """A stage could not do its work; carries whether a retry could help."""

    retryable = True


class InputError(StageError):
    """The input a run was given is bad: absent, of the wrong layout, malformed, changed.

    Raise it from a stage when the data is at fault, not the code or the machine:
    a retry would find the same input, so the stage is not retried, and a run
    started by a drop-folder file with ``quarantine_on_extract_failure`` moves
    that file to quarantine.  The daemon recognises it by type (the attempt's
    ``stage.failed`` event records ``"bad_input": true``), subclasses included.
    """

    retryable = False


class StageOutputError(StageError):
    """A stage returned something that cannot be stored (a generator, a socket, ...)."""

    retryable = False


class WarehouseDamaged(StageError):
    """``<state dir>/warehouse.duckdb`` is not a DuckDB database any more (damaged, replaced).

    Not the input's fault (the file is not quarantined) and not retried: the
    message names the file and says to move it aside and ``ahgd warehouse rebuild``.
    """

    retryable = False


class ValidationFailed(InputError):
    """A validation rule found bad rows; retrying would find them again."""

    def __init__(self, message: str, *, failures: list | None = None):
        super().__init__(message)
        self.failures = failures or []


class ResumeRefused(AhgdError):
    """``resume_from`` cannot be honoured (unknown stage, missing or altered output)."""


class CheckpointError(AhgdError):
    """Base for checkpoint problems."""


class CheckpointNotFound(CheckpointError):
    """No checkpoint matches the id, pipeline, stage or version asked for."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file is missing, truncated or altered (checksum mismatch)."""

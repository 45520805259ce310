"""Where the state directory is, and the checks that keep users out of trouble."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import StateDirError

ENV_VAR = "AHGD_STATE_DIR"
DEFAULT = "state"


def resolve_state_dir(option: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``--state-dir``, else ``$AHGD_STATE_DIR``, else ``./state``; absolute."""
    raw = option if option not in (None, "") else environ.get(ENV_VAR) or DEFAULT
    path = Path(raw).expanduser().resolve()
    if (path / "__init__.py").exists():
        raise StateDirError(
            f"{path} is a Python package directory (it has __init__.py), not a state "
            "directory; pass --state-dir (or set AHGD_STATE_DIR) to a directory of its own, "
            "e.g. --state-dir ./var"
        )
    if path.exists() and not path.is_dir():
        raise StateDirError(f"state directory {path} exists and is not a directory; "
                            "pass --state-dir with a directory path")
    return path

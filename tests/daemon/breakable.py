"""The bundled SEIFA extractor, in a module that fails to import while a marker file exists.

The daemon imports it at start-up (the marker is not there yet, so the
configuration is fine); a worker process imports it when it first runs the
stage, after the test has put the marker in place: a broken deployment, as a
worker meets it.  ``AHGD_TEST_BREAK_IMPORT`` names the marker.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.ahgd.seifa import SeifaExtractor as _Bundled

_MARKER = os.environ.get("AHGD_TEST_BREAK_IMPORT")
if _MARKER and Path(_MARKER).exists():
    raise ImportError(f"this module is broken while {_MARKER} exists (a half-deployed release)")


class SeifaExtractor(_Bundled):
    """The bundled extractor, unchanged."""

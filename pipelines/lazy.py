"""Names a package imports on first use (PEP 562), so that importing it stays cheap.

``import pipelines`` must not load DuckDB, and the configuration must be able to read
the monitor's thresholds without loading psutil: each such package lists its public
names with the module that defines them, and gets its ``__getattr__`` and ``__dir__``
from :func:`lazy_names`.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_names(package: str, exports: Mapping[str, str],
               ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``.

    ``exports`` maps each public name to the module that defines it: absolute
    (``pipelines.base``) or relative to the package (``.monitor``).  A name is
    imported on its first use and then kept in the package like any other.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__

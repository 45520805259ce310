"""Where the state directory is, who may read it, and the checks that keep users out of trouble.

The default is ``./ahgd-state``: a name of its own, where ``./state`` (the default
before) is what many projects call a folder of their own, and in a clone of this
repository is the ``state`` package itself.  A ``./state`` holding a ``history.db``
is still found when there is no ``./ahgd-state``, with a note.

Everything ahgd writes is for its owner and group only: ``restrict_umask``
adds ``027`` to the process umask (the daemon and every ``ahgd`` command call
it first, and worker processes inherit it), and a state directory ahgd
creates is made ``0750``.  Files made world-readable by an older version stay
as they are; ``world_accessible`` finds them for ``ahgd state check``.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Callable, Mapping

from .errors import StateDirError

ENV_VAR = "AHGD_STATE_DIR"
DEFAULT = "ahgd-state"
#: the default before ``ahgd-state``: still used, with a note, where it holds a history
LEGACY_DEFAULT = "state"
#: permission bits ahgd never grants: group write, and anything for others
UMASK_BITS = 0o027
STATE_DIR_MODE = 0o750


def resolve_state_dir(option: str | os.PathLike[str] | None, environ: Mapping[str, str], *,
                      note: Callable[[str], None] | None = None) -> Path:
    """``--state-dir``, else ``$AHGD_STATE_DIR``, else ``./ahgd-state``; absolute.

    ``./state`` was the default before: where it holds a ``history.db`` and there is no
    ``./ahgd-state``, it is still used, and ``note`` (default: a warning) says so once.
    """
    raw = option if option not in (None, "") else environ.get(ENV_VAR) or _default(note)
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


def _default(note: Callable[[str], None] | None) -> str:
    legacy = Path(LEGACY_DEFAULT)
    if (Path(DEFAULT).exists() or not (legacy / "history.db").is_file()
            or (legacy / "__init__.py").exists()):
        return DEFAULT
    message = (f"using {legacy.resolve()}, the state directory found there (./{LEGACY_DEFAULT} "
               f"was the default of earlier ahgd versions; it is now ./{DEFAULT}); to keep it "
               f"without this note, rename it (mv {LEGACY_DEFAULT} {DEFAULT}) or name it: "
               f"--state-dir {LEGACY_DEFAULT}, or {ENV_VAR}={LEGACY_DEFAULT}")
    if note is not None:
        note(message)
    else:
        warnings.warn(message, LegacyStateDir, stacklevel=4)
    return LEGACY_DEFAULT


class LegacyStateDir(UserWarning):
    """The default state directory was found at ``./state``, where earlier versions kept it."""


def restrict_umask() -> int:
    """Add ``UMASK_BITS`` to the process umask (a stricter one stays); the new umask."""
    old = os.umask(UMASK_BITS)
    os.umask(old | UMASK_BITS)
    return old | UMASK_BITS


def ensure_state_dir(path: Path) -> Path:
    """Create the state directory (mode 0750) if it does not exist; an existing one is left as
    it is."""
    path = Path(path)
    if path.is_dir():
        return path
    try:
        path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, STATE_DIR_MODE)  # whatever the umask was
    except OSError as exc:
        raise StateDirError(f"cannot create the state directory {path}: {exc.strerror or exc}; "
                            "create it yourself (install -d -m 0750 DIR) or pass another "
                            "--state-dir") from None
    return path


def world_accessible(state_dir: Path) -> tuple[int, list[Path]]:
    """Files and folders under ``state_dir`` (itself included) that every user of the machine
    may read, write or enter: (how many, the first 20).  What lies in a folder others may
    not enter is out of their reach whatever its own mode, and is not counted."""
    found: list[Path] = []
    count = 0
    for root, dirs, files in os.walk(state_dir):
        if root == str(state_dir) and _others_bits(Path(root)):
            count, found = count + 1, found + [Path(root)]
        if not _others_bits(Path(root)) & 0o001:
            dirs[:] = []  # others cannot enter: nothing inside is theirs to read
            continue
        for name in (*dirs, *files):
            if _others_bits(Path(root) / name):
                count += 1
                if len(found) < 20:
                    found.append(Path(root) / name)
    return count, found


def _others_bits(path: Path) -> int:
    try:
        mode = path.lstat().st_mode
    except OSError:  # gone meanwhile
        return 0
    return 0 if stat.S_ISLNK(mode) else mode & 0o007


def entries(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` (none when it is not there, or not a folder): the state
    directory's areas as retention and the caches walk them."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []

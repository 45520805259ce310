"""How ahgd starts a Python child: its own packages first, the working directory last.

Worker processes (``pipelines.execution.worker``), the input checks
(``ahgd_daemon.inputcheck``) and the configuration's import check
(``pipelines.config.imports``) are fresh interpreters started with ``-m``.
Plain ``python -m`` puts the working directory first on ``sys.path``, and a
folder there named like one of ahgd's packages — a state directory called
``state``, a folder of YAML called ``pipelines`` — is then imported instead of
it, as an empty namespace package (``cannot import name 'EventLog' from 'state'
(unknown location)``).  With an editable install, whose packages are found by
an import hook after ``sys.path``, any such folder wins.

So a child is started with ``-P`` (nothing put in front of ``sys.path``), and
its ``PYTHONPATH`` is the folders ahgd's own packages were imported from, then
this process's ``sys.path`` without the working directory.  The child appends
the working directory at the end (:func:`working_directory_last`): stage
modules kept there still import, after everything installed, and never in
place of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: the project's top-level packages: never to be shadowed in a child
PACKAGES = ("state", "pipelines", "ahgd_daemon")


def switched_off(name: str) -> bool:
    """Whether the environment variable ``name`` (an ``AHGD_*`` switch of a setting ahgd makes
    for its own processes, on by default) says ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(name, "1").strip() in ("0", "false", "no", "off")


def python_command(module: str, *args: str) -> list[str]:
    """``python -P -m module args...`` with this interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: our environment) with the ``PYTHONPATH`` a child needs."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(child_path())
    return env


def child_path() -> list[str]:
    """The folders of ahgd's packages, then our ``sys.path`` without the working directory."""
    here = _cwd()
    rest = [p for p in sys.path if p and p != "." and os.path.abspath(p) != here]
    return list(dict.fromkeys([*package_roots(), *rest]))


def package_roots() -> list[str]:
    """The folders that hold ahgd's packages as this process imported them (site-packages
    for an ordinary install, the clone for an editable one)."""
    roots = [str(Path(__file__).resolve().parents[2])]  # pipelines/execution/children.py
    for name in PACKAGES:
        module = sys.modules.get(name)
        where = getattr(module, "__file__", None)
        if where:  # a regular package, not a namespace folder
            roots.append(str(Path(where).resolve().parents[1]))
    return list(dict.fromkeys(roots))


def working_directory_last() -> None:
    """Append the working directory to ``sys.path`` (in a child, or the ``ahgd`` command):
    the user's own modules there import, after the installed packages.

    ahgd's packages are imported first: an editable install finds them through an import
    hook that Python asks only after every ``sys.path`` entry, so a folder named ``state``
    anywhere on ``sys.path`` would otherwise still win."""
    import state  # noqa: F401  (``pipelines`` is in already: this module is part of it)
    here = _cwd()
    if here and here not in sys.path:
        sys.path.append(here)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the working directory was deleted: nothing to find there
        return ""


def start_child(module: str, *, stderr: int | None = None) -> subprocess.Popen:
    """``python -P -m module <our pid>`` with the environment a child needs (:func:`child_env`),
    stdin and stdout piped, in a session of its own: :func:`kill_session` then stops it and
    everything it started (a timeout, a daemon stopping).  The one-shot children (input
    checks, import checks, regular-expression checks) are started so."""
    return subprocess.Popen(python_command(module, str(os.getpid())), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, env=child_env(),
                            close_fds=True, start_new_session=True)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL us when our parent dies (a SIGKILLed daemon leaves no workers)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's EOF still ends us later
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect


def child_begins(argv: list[str]) -> int:
    """In a child :func:`start_child` started: the working directory last on ``sys.path``,
    death with the parent (its pid is ``argv[1]``), and whatever the child's code prints sent
    to stderr; returns the descriptor the answer is written to (the real stdout)."""
    working_directory_last()
    die_with_parent(int(argv[1]) if len(argv) > 1 else None)
    answer = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return answer


def kill_session(proc: subprocess.Popen) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything it started: its
    whole process group gets SIGKILL unless it has ended already; then it is reaped."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()

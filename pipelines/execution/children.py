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
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from state.errors import AhgdError

#: the project's top-level packages: never to be shadowed in a child
PACKAGES = ("state", "pipelines", "ahgd_daemon")
#: what a child writes first on its answer channel, once its interpreter is up
#: (:func:`child_begins`): a caller's timeout counts from then, not from the fork
READY = b"ahgd-child-ready\n"
#: how long a child's interpreter may take to start before the machine is blamed
START_S = 60.0


class ChildNotStarted(AhgdError):
    """A child's interpreter was not up within ``START_S``: the machine's fault (overloaded,
    out of memory, a slow disk), not that of what the child was to do."""


class ChildTimedOut(Exception):
    """The child started but did not answer within the caller's timeout; ``output`` is what it
    had answered by then."""

    def __init__(self, output: bytes):
        super().__init__("timed out")
        self.output = output


class ChildAborted(Exception):
    """The caller's ``abort`` was set while the child was at work: it was stopped."""


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


def child_begins(argv: list[str], *, ready: bool = True) -> int:
    """In a child :func:`start_child` started: the working directory last on ``sys.path``,
    death with the parent (its pid is ``argv[1]``), and whatever the child's code prints sent
    to stderr; returns the descriptor the answer is written to (the real stdout), on which
    :data:`READY` is written unless ``ready`` is False (the child then says it with
    :func:`say_ready` once it has imported what it always needs: ahgd's own imports are the
    start's time, not the work's)."""
    working_directory_last()
    die_with_parent(int(argv[1]) if len(argv) > 1 else None)
    answer = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if ready:
        say_ready(answer)
    return answer


def say_ready(answer: int) -> None:
    """Tell the parent this child is up: its timeout counts from now (:func:`exchange`)."""
    os.write(answer, READY)


def exchange(proc: subprocess.Popen, request: bytes, *, timeout: float, what: str,
             then: str, abort: Callable[[], bool] | None = None,
             start_s: float | None = None) -> bytes:
    """Give ``request`` to a child :func:`start_child` started; its answer (what it wrote after
    :data:`READY`) once it has closed its stdout.

    ``timeout`` counts from when the child is up (it wrote ``READY``): the start of a Python
    on a loaded machine is not the work's time.  Raises ``ChildNotStarted`` when it is not up
    within ``start_s`` (default ``START_S``), or ends before it is (``what`` names the child,
    ``then`` says what happens next: the message's end); ``ChildTimedOut`` after ``timeout``;
    ``ChildAborted`` once ``abort()`` says so.  The request is written as the child reads
    it, within the same bounds (a child stuck in its start never blocks the caller on a full
    pipe).  The caller stops the child (:func:`kill_session`)."""
    start_s = START_S if start_s is None else start_s
    out = bytearray()
    limit = time.monotonic() + start_s
    ready = False
    pending = memoryview(request)
    stdin, stdout = proc.stdin, proc.stdout
    os.set_blocking(stdin.fileno(), False)
    with selectors.DefaultSelector() as sel:
        sel.register(stdout, selectors.EVENT_READ)
        sel.register(stdin, selectors.EVENT_WRITE)
        while True:
            now = time.monotonic()
            if not ready and (len(out) >= len(READY) or not READY.startswith(out)):
                ready, limit = True, now + timeout  # up (or not one of ours: it said something)
                if out.startswith(READY):
                    del out[:len(READY)]
            if now >= limit:
                if not ready:
                    raise ChildNotStarted(
                        f"{what} could not start: its Python was not up after {start_s:g}s (the "
                        "machine is overloaded, out of memory or its disk is slow); nothing is "
                        f"known to be wrong with what it was given; {then}")
                raise ChildTimedOut(bytes(out))
            if abort is not None and abort():
                raise ChildAborted(what)
            for key, _ in sel.select(min(0.2, limit - now)):
                if key.fileobj is stdin:
                    try:
                        pending = pending[os.write(stdin.fileno(), pending):]
                    except BrokenPipeError:  # it ended: its exit says why
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin)
                        stdin.close()
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
            else:
                continue
            break  # its stdout is closed: it has answered, or it has ended
    if not stdin.closed:
        stdin.close()
    if not ready and not out.startswith(READY) and READY.startswith(out):
        # nothing but (part of) READY came: it ended before it was up
        code = _exit_code(proc, limit)
        ended = describe_exit(code) if code is not None else "closed its output"
        raise ChildNotStarted(
            f"{what} could not start: its Python {ended} before it was up (what it printed is "
            f"in the daemon's log); nothing is known to be wrong with what it was given; {then}")
    if out.startswith(READY):
        del out[:len(READY)]
    try:  # it closed its stdout: it is ending (within what is left of its time)
        proc.wait(timeout=max(0.5, limit - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise ChildTimedOut(bytes(out)) from None
    return bytes(out)


def _exit_code(proc: subprocess.Popen, limit: float) -> int | None:
    try:
        return proc.wait(timeout=max(0.5, limit - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def describe_exit(code: int | None) -> str:
    """How a child process ended, from its return code, for a message: "exited with code 3",
    "was killed by SIGKILL (the kernel kills with SIGKILL when memory runs out)"."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = (" (the kernel kills with SIGKILL when memory runs out)"
                if -code == signal.SIGKILL else "")
        return f"was killed by {name}{hint}"
    return f"exited with code {code}"


def kill_session(proc: subprocess.Popen) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything it started: its
    whole process group gets SIGKILL unless it has ended already; then it is reaped."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()

"""Whether the stage classes and input-check callables a configuration names can be imported,
checked in a fresh interpreter: what a worker process will find, not what this process remembers.

A long-lived process (the daemon reloading on SIGHUP, a notebook) keeps every
module it ever imported in ``sys.modules``: importing again there would answer
for the module as it was then, not as it is on disk now.  So the dotted paths
are imported by a short-lived child (``python -m pipelines.config.imports``,
given this process's ``sys.path``), which also keeps a module that hangs,
crashes or exits when imported away from the caller.  A module that exists only
in this process (``__main__``, or one put into ``sys.modules`` by hand, with no
file behind it) cannot be imported anywhere else, so it is checked here.

The same child checks the exception classes a stage's ``retry_on`` /
``no_retry_on`` names by dotted path (:func:`check_names`): their modules are
imported too, and one that hangs must not hang a daemon loading its
configuration.

Protocol: a JSON list of ``[kind, dotted path]`` on the child's stdin (kind
``"import"`` for a stage class or callable, ``"retry_on"`` / ``"no_retry_on"``
for an exception class); one JSON line ``{"kind": kind, "target": dotted,
"problem": text or null, "parameters": ...}`` per request on its stdout, each as
soon as it is known.  What the imported modules print goes to stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from state.errors import did_you_mean

from .values import DOTTED_PATH_RE

#: how long the child may take to import everything before the rest is reported as hanging
TIMEOUT_S = 60.0
_DOTTED = re.compile(DOTTED_PATH_RE)


def named_imports(data: Any) -> list[tuple[tuple, str]]:
    """(key path, dotted path) of each stage ``class`` and ``input_check.callable`` in the
    data of a pipeline file, read from the data itself (not its model, which may have
    failed); values that are no dotted path are left to the model to report."""
    data = data if isinstance(data, dict) else {}
    found: list[tuple[tuple, Any]] = []
    for i, stage in enumerate(_list(data.get("stages"))):
        if isinstance(stage, dict):
            found.append((("stages", i, "class"), stage.get("class")))
    for i, trigger in enumerate(_list(data.get("triggers"))):
        check = trigger.get("input_check") if isinstance(trigger, dict) else None
        if isinstance(check, dict):
            found.append((("triggers", i, "input_check", "callable"), check.get("callable")))
    return [(path, dotted) for path, dotted in found
            if isinstance(dotted, str) and _DOTTED.match(dotted)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


#: a request to the child: ("import", a stage class or callable) or ("retry_on" /
#: "no_retry_on", an exception class)
Request = tuple[str, str]
IMPORT = "import"


def import_problems(dotted_paths: Iterable[str], *, timeout: float | None = None,
                    parameters: dict[str, dict[str, Any]] | None = None,
                    ) -> dict[str, str | None]:
    """Each of ``dotted_paths`` (``package.module.Attr``) -> why it cannot be imported, or None.

    Nothing is called or instantiated; modules are imported (their top level runs).  A dict
    given as ``parameters`` gets, for each path that imports and whose signature Python can
    read, the keywords calling it takes (:func:`call_parameters`).
    """
    found = check_names([(IMPORT, t) for t in dotted_paths], timeout=timeout,
                        parameters=parameters)
    return {t: problem for (_, t), problem in found.items()}


def check_names(requests: Iterable[Request], *, timeout: float | None = None,
                parameters: dict[str, dict[str, Any]] | None = None,
                ) -> dict[Request, str | None]:
    """Each request -> its problem or None, all answered by one child (:func:`import_problems`
    for an ``"import"``; :func:`pipelines.retries.name_problem` for a ``retry_on`` /
    ``no_retry_on`` entry: the class must be an exception ahgd may retry or not).  ``timeout``
    (default :data:`TIMEOUT_S`) counts from when the child is up."""
    timeout = TIMEOUT_S if timeout is None else timeout
    targets = list(dict.fromkeys(requests))
    here = [r for r in targets if _only_in_this_process(r[1].rpartition(".")[0])]
    out: dict[Request, str | None] = {}
    found: dict[str, dict[str, Any]] = {}
    for request in here:
        out[request] = _answer(*request, found)
    fresh = [r for r in targets if r not in out]
    if fresh:
        out.update(_in_child(fresh, timeout, found))
    if parameters is not None:
        parameters.update(found)
    return {r: out[r] for r in targets}


def _answer(kind: str, target: str, parameters: dict[str, dict[str, Any]]) -> str | None:
    """The problem of one request, checked in this process; a stage class's keywords go to
    ``parameters``."""
    if kind != IMPORT:
        from ..retries import name_problem

        return name_problem(target, key=kind)
    problem = import_problem(target)
    if problem is None:
        signature = call_parameters(_imported(target))
        if signature is not None:
            parameters[target] = signature
    return problem


def call_parameters(obj: Any) -> dict[str, Any] | None:
    """What calling ``obj`` (a stage class, with its ``config:`` as keywords) takes:
    ``{"names": [keyword names], "required": [those without a default], "any": whether it
    takes any keyword (**kwargs)}``; None when its signature may not say (a pydantic model:
    aliases, ignored extras; a builtin, a C type; a signature that cannot be read).  A
    wrapper's own signature is read, not the one it wraps: it may take more."""
    import inspect

    if hasattr(obj, "model_fields") and hasattr(obj, "model_validate"):
        return None
    try:
        signature = inspect.signature(obj, follow_wrapped=False)
    except Exception:  # noqa: BLE001 - not ours to judge: the run says, if it fails
        return None
    names, required, anything = [], [], False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            anything = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return {"names": names, "required": required, "any": anything}


def _imported(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def import_problem(dotted: str) -> str | None:
    """Import ``package.module.Attr`` in this process; the problem in words, or None."""
    module_name, _, attr = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            try:
                where = f"the working directory, {os.getcwd()},"
            except OSError:  # deleted under us
                where = "the working directory"
            hint = (f" (it is looked for in {where} and on "
                    "PYTHONPATH, after the installed packages: run ahgd from the folder that "
                    "holds it, or add that folder to PYTHONPATH)")
        elif isinstance(exc, ModuleNotFoundError):
            hint = _own_package_hint(module_name) or _module_did_you_mean(module_name)
        return f"cannot import module {module_name!r}: {exc}{hint}"
    except (Exception, SystemExit) as exc:
        return f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        hint = did_you_mean(attr, names)
        return f"module {module_name!r} has no attribute {attr!r}{'; ' + hint if hint else ''}"
    if not callable(getattr(module, attr)):
        return f"{dotted!r} is a {type(getattr(module, attr)).__name__}, not a class or function"
    return None


def _own_package_hint(module_name: str) -> str:
    """Why ``pipelines.my_stages`` is not found when the user's folder is called ``pipelines``:
    that name is ahgd's own package, which is imported in its place (children.py)."""
    from ..execution.children import PACKAGES

    top, _, rest = module_name.partition(".")
    if top not in PACKAGES or not rest:
        return ""
    try:
        folder = Path.cwd() / top
    except OSError:
        return ""
    base = folder.joinpath(*rest.split("."))
    if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
        return ""
    return (f" ({top!r} is ahgd's own package, so your folder {folder} cannot be imported under "
            f"that name: rename the folder, for example to my_{top}, and write the class as "
            f"my_{top}.{rest}.<Class>; or write it as {rest}.<Class> and run ahgd with "
            f"PYTHONPATH={folder})")


def _module_did_you_mean(module_name: str) -> str:
    """``pipelines.extractor``: did you mean ``pipelines.extractors``, a module of the package
    above it (ahgd's or the user's)?"""
    import pkgutil

    parent, _, name = module_name.rpartition(".")
    try:
        package = importlib.import_module(parent)
    except Exception:  # noqa: BLE001 - the package above is missing too: nothing to offer
        return ""
    names = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
    hint = did_you_mean(name, names, prefix=f"{parent}.")  # not the package's part: alike
    return f"; {hint}" if hint else ""


def _only_in_this_process(module_name: str) -> bool:
    """``__main__`` or a module (or package above it) made by hand, without a file."""
    parts = module_name.split(".")
    if parts[0] == "__main__":
        return True
    for i in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, "__spec__", None) is None:
            return True
    return False


def _in_child(targets: list[Request], timeout: float,
              parameters: dict[str, dict[str, Any]]) -> dict[Request, str | None]:
    from ..execution.children import ChildTimedOut, exchange, kill_session, start_child

    # the child must find modules where this process (and so a worker) finds them, and
    # never a folder of the working directory in place of ahgd's packages (children.py); in a
    # session of its own, a timeout kills what the imports started too
    proc = start_child("pipelines.config.imports", stderr=subprocess.PIPE)
    timed_out = False
    # stderr is read on a thread of its own: a module that prints much must not block on it
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        # the timeout counts from when the child's Python is up (not from the fork)
        out = exchange(proc, json.dumps(targets).encode(), timeout=timeout,
                       what="the import check of the configuration",
                       then="check the configuration again once the machine has room (a "
                            "daemon: send SIGHUP again; its configuration in force stays)")
    except ChildTimedOut as exc:
        timed_out, out = True, exc.output
    finally:
        kill_session(proc)
        reader.join(5)
    err = errors[0] if errors else b""
    found: dict[Request, str | None] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            answer = json.loads(line)
            found[(answer["kind"], answer["target"])] = answer["problem"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(answer.get("parameters"), dict):
            parameters[answer["target"]] = answer["parameters"]
    # the child answers in order: the first request it did not answer is the one that hung
    # (or stopped it); those after it were never tried
    culprit = next((r[1].rpartition(".")[0] for r in targets if r not in found), None)
    for request in targets:
        if request in found:
            continue
        module = request[1].rpartition(".")[0]
        if module != culprit:
            found[request] = (f"not checked: the check stopped at module {culprit!r} (its "
                              "problem is reported beside this one); check again once that "
                              "is fixed")
        elif timed_out:
            found[request] = (f"importing module {module!r} did not finish within {timeout:g}s "
                              "(does it wait for something, or loop, when imported?); make its "
                              "import quick: a worker process imports it before every run")
        else:
            from ..execution.pool import describe_exit

            last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            found[request] = (f"importing module {module!r} stopped the interpreter that "
                              f"imported it (it {describe_exit(proc.returncode)}: "
                              f"{last[0][:300]}); a worker process would stop the same way: fix "
                              "what the module does when imported")
    return found


def main(argv: list[str]) -> None:
    from ..execution.children import child_begins

    # as in a worker: stage modules kept in the working directory import, last; what the
    # modules print goes to stderr, not into the answer
    answer = child_begins(argv)
    for kind, target in json.loads(sys.stdin.buffer.read()):
        parameters: dict[str, dict[str, Any]] = {}
        problem = _answer(kind, target, parameters)
        line = json.dumps({"kind": kind, "target": target, "problem": problem,
                           "parameters": parameters.get(target)})
        os.write(answer, (line + "\n").encode())


if __name__ == "__main__":
    main(sys.argv)

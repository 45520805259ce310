"""Reading the YAML files: the data, the line of every key, and ``${...}`` expansion.

``read_yaml`` gives a :class:`Doc` (the data plus the line of every key and
list item, so that each problem can say ``file:line``) or the syntax error
in our words; ``expand`` replaces ``${state_dir}`` and ``${ENV_VAR}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .problems import ConfigIssue


# --- reading YAML ----------------------------------------------------------------

@dataclass
class Doc:
    """One YAML file: its data and the line of every key and list item."""

    path: Path            # absolute
    display: str          # as the user named it, for messages
    data: Any
    lines: dict[tuple, int]

    def line_of(self, path: tuple) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None


def read_yaml(path: Path, display: str) -> tuple[Doc | None, list[ConfigIssue]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None, [ConfigIssue(display, None, "", "file not found")]
    except UnicodeDecodeError as exc:
        return None, [ConfigIssue(display, None, "", f"not UTF-8 text (byte {exc.start}); "
                                                     "save the file as UTF-8")]
    except OSError as exc:
        return None, [ConfigIssue(display, None, "", f"cannot read: {exc.strerror or exc}")]
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None and exc.context_mark is not mark:
                context += f" on line {exc.context_mark.line + 1}"
            problem = (f"{context}, {problem}" if problem.startswith("but ")
                       else f"{problem} ({context})")
        if "'\\t'" in problem:
            problem += "; indent with spaces, not tabs"
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return None, [ConfigIssue(display, line, "", f"YAML syntax error: {problem}", col)]
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    issues: list[ConfigIssue] = []
    if node is not None:
        _node_lines(node, (), lines, issues, display, 0)
    return Doc(Path(os.path.abspath(path)), display, data, lines), issues


def _node_lines(node, path: tuple, lines: dict, issues: list, display: str, depth: int) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if depth > 50:
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key_path = path + (key_node.value,)
            line = key_node.start_mark.line + 1
            if key_path in lines and key_node.value != "<<":
                issues.append(ConfigIssue(display, line, format_path(key_path),
                                          f"duplicate key {key_node.value!r} (first on line "
                                          f"{lines[key_path]}); remove one of them"))
                continue
            lines[key_path] = line
            _node_lines(value_node, key_path, lines, issues, display, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _node_lines(item, path + (i,), lines, issues, display, depth + 1)


def format_path(path: Iterable) -> str:
    out = ""
    for elem in path:
        out += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if out else str(elem))
    return out


def file_kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if "pipeline" in data or "stages" in data:
        return "pipeline"
    return "master" if "pipelines" in data else None


# --- ${...} expansion ------------------------------------------------------------

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")


def expand(value: Any, path: tuple, subst: Mapping[str, str | None],
            problems: list[tuple[tuple, str]]) -> Any:
    """``value`` with ``${name}`` replaced from ``subst`` (``$${`` is a literal ``${``)."""
    if isinstance(value, dict):
        return {k: expand(v, path + (k,), subst, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, path + (i,), subst, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        found = subst.get(name)
        if found is not None:
            return found
        if name == "state_dir":
            problems.append((path, "${state_dir} is used but no state directory was given; "
                                   "pass --state-dir"))
        elif not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append((path, f"'${{{name}}}' is not a variable; write ${{NAME}} with "
                                   "letters, digits and '_', or $${ for a literal ${"))
        else:
            problems.append((path, f"environment variable {name} is not set; "
                                   "export it or write the value here"))
        return match.group(0)

    return _VAR.sub(replace, value)


class Substitutions(Mapping):
    """``state_dir`` from the argument, everything else from the environment."""

    def __init__(self, state_dir: Path | None, env: Mapping[str, str]):
        self.state_dir, self.env = state_dir, env

    def __getitem__(self, name: str) -> str:
        if name == "state_dir":
            if self.state_dir is None:
                raise KeyError(name)
            return str(self.state_dir)
        return self.env[name]

    def __iter__(self):
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)



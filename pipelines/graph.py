"""Dependency graphs: cycle detection shared by stages, pipelines and YAML files."""

from __future__ import annotations

from typing import Iterable, Mapping


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The first cycle met walking ``graph`` in its order, as ``[a, b, a]``; None if acyclic.

    ``graph`` maps a node to the nodes it depends on; edges to unknown nodes
    are ignored (reporting those is the caller's business).  Iterative, so a
    long chain cannot exhaust the recursion limit.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in graph:
        if start in state:
            continue
        path, stack = [start], [iter(graph[start])]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return None

"""YAML for configuration files (policies, the web config) with bounded cost.

An alias (`*a`) repeats a whole subtree without repeating its text, so nine lines can stand for 9**9
nodes (the "billion laughs"): constructing them is cheap for PyYAML, which shares the objects, but
every walk afterwards (duplicate keys, pydantic, error messages) expands them. Here the composed node
graph is measured first, each distinct node once, and refused when its expanded size, its depth or a
recursive alias is more than a configuration file could need.
"""

from __future__ import annotations

from typing import Any

import yaml

from cgagent.regular import open_regular

try:  # libyaml when present: the same nodes and marks, faster
    Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    Loader = yaml.SafeLoader

MAX_BYTES = 1 << 20        # a configuration file, not a data set
MAX_NODES = 100_000        # after alias expansion
MAX_DEPTH = 64             # the walks after loading recurse; a policy is 3 levels deep


class YAMLBoundError(yaml.YAMLError):
    """The document is valid YAML but too large once expanded (or recursive); `line` is 1-based."""

    def __init__(self, problem: str, node: yaml.Node) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = node.start_mark.line + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def check_bounds(root: yaml.Node, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Raise YAMLBoundError unless `root` expands to at most max_nodes nodes, max_depth levels deep,
    with no alias inside its own anchor. Iterative, each distinct node visited once."""
    size: dict[int, tuple[int, int]] = {}      # id(node) -> (expanded nodes, depth)
    open_: set[int] = set()                    # nodes on the current path: seeing one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        kids = _children(node)
        if done:
            open_.discard(nid)
            n = 1 + sum(size[id(k)][0] for k in kids)
            depth = 1 + max((size[id(k)][1] for k in kids), default=0)
            if n > max_nodes:
                raise YAMLBoundError(f"expands to more than {max_nodes} values (aliases repeating aliases)",
                                     node)
            if depth > max_depth:
                raise YAMLBoundError(f"nested more than {max_depth} levels deep", node)
            size[nid] = (n, depth)
            continue
        if nid in size:
            continue
        if nid in open_:
            raise YAMLBoundError("an alias refers to the anchor it is inside of (a recursive structure)", node)
        open_.add(nid)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)


def compose(text: str) -> tuple[yaml.Node | None, Any]:
    """One document -> (its node tree, with each node's line; the constructed data), bounded.
    Raises yaml.YAMLError (YAMLBoundError for the bounds)."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        check_bounds(node)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def read_text(path: str) -> str:
    """A configuration file's text: a regular file of at most MAX_BYTES, checked before reading it all
    (OSError, UnicodeDecodeError, or ValueError for a FIFO, a device or the size)."""
    with open(open_regular(path), "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 10} KiB")
    return data.decode("utf-8")

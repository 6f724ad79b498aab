"""The layout of the code, held by its import graph (issue 14).

Every module of cgagent, exporters and policies sits in one layer of LAYERS; a module may import
modules of its own layer or of a lower one, never of a higher one, and no set of modules may import
each other in a circle. Imports are read with `ast`, wherever they are: at module level, inside a
function (the usual way to hide a cycle), or under `if TYPE_CHECKING:` (a lower layer must not even
name a higher layer's types; such type-only imports are left out of the cycle check alone, since
they never run).

Where exporters/ and policies/ sit: the agent drives the exporter (exporters/), the OOM watcher
(cgagent.oomwatch) and the policy controller (policies.controller), so they are the agent layer.
policies.memory_step is the policy's answer to OOM kills that the workload's supervisor applies
before a restart: it calls the runtime and the runtime calls it, so it is runtime. The rest of
policies/ (the model, the loader, throttling arithmetic, carried-over limits, run options) is
definitions that the CLI, the agent and the runtime read: it sits with the mechanisms and imports
only the base.

A new module fails test_every_module_has_a_layer until it is placed in the table.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("cgagent", "exporters", "policies")

# Top layer first. An entry names a module, or with ".*" a package and everything in it; the longest
# entry that matches a module decides its layer. cgagent itself is listed without ".*", so that a
# new top-level module fails until it is placed on purpose.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cli", ("cgagent.cli.*", "cgagent.__main__", "cgagent.demo")),
    ("agent", ("cgagent.agent.*", "cgagent.api.*", "cgagent.oomwatch", "exporters.*", "policies.controller")),
    ("runtime", ("cgagent.runtime.*", "cgagent.runflags", "cgagent.shim", "cgagent.prune", "policies.memory_step")),
    ("mechanisms", ("cgagent.cgroups.*", "cgagent.isolation.*", "cgagent.network.*", "cgagent.images.*",
                    "cgagent.launch", "cgagent.live", "cgagent.oom", "cgagent.terminal", "cgagent.zygote",
                    "policies.*")),
    ("base", ("cgagent", "cgagent.state", "cgagent.units", "cgagent.errors", "cgagent.limits", "cgagent.host",
              "cgagent.convert", "cgagent.spec", "cgagent.devrules", "cgagent.events", "cgagent.procopts",
              "cgagent.faults", "cgagent.procs", "cgagent.kmsg", "cgagent.inotify", "cgagent.yamlbound",
              "cgagent.logtime", "cgagent.signals", "cgagent.wakeup", "cgagent.regular",
              "cgagent.beneath")),
)


@dataclass(frozen=True)
class Import:
    src: str          # importing module
    dst: str          # imported module (the deepest one of ours the statement names)
    where: str        # file:line
    type_only: bool   # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.where}: {self.src} imports {self.dst}" + (" (TYPE_CHECKING)" if self.type_only else "")


def modules(root: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Dotted module name -> file, for every .py file of `packages` under `root`."""
    out = {}
    for pkg in packages:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts.pop()
                    out[".".join(parts)] = os.path.join(d, f)
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(root: str, packages: tuple[str, ...] = PACKAGES) -> tuple[dict[str, str], list[Import]]:
    mods = modules(root, packages)

    def ours(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out: list[Import] = []
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        rel = os.path.relpath(path, root)

        def visit(node: ast.AST, type_only: bool, mod: str = mod, pkg: str = pkg, rel: str = rel) -> None:
            if isinstance(node, ast.If) and _type_checking(node.test):
                for n in node.body:
                    visit(n, True)
                for n in node.orelse:
                    visit(n, type_only)
                return
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                dst = ours(name)
                if dst is not None and dst != mod:
                    out.append(Import(mod, dst, f"{rel}:{getattr(node, 'lineno', 0)}", type_only))
            for child in ast.iter_child_nodes(node):
                visit(child, type_only)

        visit(tree, False)
    return mods, out


def layer_of(mod: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    """Index into `layers` (0 = top), or None when no entry matches."""
    best: tuple[int, int] | None = None   # (entry length, layer index)
    for i, (_, entries) in enumerate(layers):
        for e in entries:
            name = e.removesuffix(".*")
            hit = mod == name or (e.endswith(".*") and mod.startswith(name + "."))
            if hit and (best is None or len(name) > best[0]):
                best = (len(name), i)
    return None if best is None else best[1]


def upward(edges: list[Import], layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Each import from a lower layer to a higher one, as a line that names it."""
    bad = []
    for e in edges:
        src, dst = layer_of(e.src, layers), layer_of(e.dst, layers)
        if src is not None and dst is not None and dst < src:
            bad.append(f"{e} — layer {layers[src][0]} may not import layer {layers[dst][0]}")
    return bad


def cycles(edges: list[Import]) -> list[str]:
    """Each import cycle (TYPE_CHECKING imports left out: they never run), as the imports that make it."""
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        if not e.type_only:
            graph.setdefault(e.src, {}).setdefault(e.dst, e)
    # Tarjan's strongly connected components, iterative (no recursion limit on a deep graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    out = []
    for comp in comps:
        members = set(comp)
        inside = [str(e) for src in comp for dst, e in sorted(graph.get(src, {}).items()) if dst in members]
        out.append(f"cycle among {', '.join(comp)}:\n    " + "\n    ".join(inside))
    return out


def test_every_module_has_a_layer() -> None:
    mods, _ = imports(ROOT)
    missing = sorted(m for m in mods if layer_of(m) is None)
    assert not missing, f"modules in no layer (add them to LAYERS in {__file__}): {', '.join(missing)}"


def test_no_import_goes_up_a_layer() -> None:
    _, edges = imports(ROOT)
    bad = upward(edges)
    assert not bad, "imports against the layering (CLI > agent > runtime > mechanisms > base):\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    _, edges = imports(ROOT)
    found = cycles(edges)
    assert not found, "\n".join(found)


def test_runtime_core_is_imported_by_no_mechanism() -> None:
    """The cycle issue 14 found, named: network and isolation called back up into the runtime."""
    _, edges = imports(ROOT)
    low = ("cgagent.isolation", "cgagent.network", "cgagent.cgroups", "cgagent.state", "cgagent.units")
    bad = [str(e) for e in edges if e.src.startswith(low) and e.dst.startswith("cgagent.runtime")]
    assert not bad, "\n".join(bad)


def _write(root: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_the_checks_find_hidden_imports(tmp_path: object) -> None:
    """The checker itself: a function-level cycle, a relative import going up a layer, and a
    TYPE_CHECKING import (up a layer: reported; in a circle: not a cycle) are all seen."""
    root = str(tmp_path)
    _write(root, {
        "app/__init__.py": "",
        "app/top.py": "from app import low\n",
        "app/low/__init__.py": "",
        "app/low/a.py": "def f():\n    from app.low import b\n",
        "app/low/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app import top\n"
                        "def g():\n    if True:\n        from . import a\n",
        "app/low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app.low import d\n",
        "app/low/d.py": "import app.low.c\n",
    })
    layers = (("top", ("app.top",)), ("low", ("app", "app.low.*")))
    _, edges = imports(root, ("app",))
    found = {(e.src, e.dst, e.type_only) for e in edges}
    assert ("app.low.a", "app.low.b", False) in found
    assert ("app.low.b", "app.low.a", False) in found
    assert ("app.low.b", "app.top", True) in found
    up = upward(edges, layers)
    assert len(up) == 1 and "app/low/b.py:3: app.low.b imports app.top (TYPE_CHECKING)" in up[0], up
    cyc = cycles(edges)
    assert len(cyc) == 1 and "app.low.a, app.low.b" in cyc[0], cyc
    assert "app/low/a.py:2: app.low.a imports app.low.b" in cyc[0], cyc

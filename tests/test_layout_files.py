"""Cgroup file names stay inside the drivers (cgagent/cgroups/): everything else reads a cgroup through
cgagent.cgroups.reader and never learns a file name or the cgroup version. A string literal that names
a cgroup file (alone, or as the last component of a path: "memory.max", f"{d}/cpu.stat") anywhere in
cgagent/, exporters/ or policies/ outside cgagent/cgroups/ fails here with its file and line.
Docstrings and help texts may mention files: only a literal that is a file name or a path counts."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ROOT / "cgagent" / "cgroups"
CHECKED = ("cgagent", "exporters", "policies")
# Files the drivers may build from parts (f"{res}.pressure", f"cpuset.{f}"), named here so they count too.
KNOWN = {"cgroup.procs", "cgroup.threads", "cgroup.controllers", "cgroup.subtree_control", "cgroup.events",
         "cgroup.freeze", "cgroup.kill", "cgroup.type", "cgroup.event_control", "cgroup.stat", "tasks",
         "cpu.pressure", "memory.pressure", "io.pressure", "io.stat", "io.max", "io.weight",
         "memory.events.local", "memory.swap.current", "memory.swap.events", "memory.high", "memory.low",
         "memory.min", "memory.oom.group", "pids.events", "cpuset.cpus", "cpuset.mems"}
# Below the drivers, not behind them: host detection runs before any driver exists (cgagent.cgroups
# imports cgagent.host, so the other way round would be a cycle).
ALLOWED = {("cgagent/host.py", "cgroup.controllers")}
_NAME = re.compile(r"(?:^|/)((?:cgroup|cpu|cpuacct|cpuset|memory|pids|io|freezer|devices|hugetlb|rdma|misc)"
                   r"\.[a-z_]+(?:\.[a-z_]+)*)$")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def literals(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string literal and f-string piece, docstrings left out."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def file_names(text: str) -> list[str]:
    m = _NAME.search(text)
    return [m.group(1)] if m else []


def driver_file_names() -> set[str]:
    """Every cgroup file name the drivers use as a literal, and the ones they build from parts."""
    names = set(KNOWN)
    for p in DRIVERS.rglob("*.py"):
        for _line, text in literals(p):
            names.update(file_names(text))
    return names


def test_the_drivers_name_the_files_this_test_looks_for() -> None:
    names = driver_file_names()
    # the ones the issue names, found in the drivers themselves (not only in KNOWN)
    for n in ("cpu.max", "cpu.stat", "memory.events", "memory.max", "cpuacct.usage", "memory.limit_in_bytes",
              "memory.oom_control", "pids.max", "cpu.cfs_quota_us", "memory.stat"):
        assert n in names, n


def test_no_cgroup_file_name_outside_the_drivers() -> None:
    names = driver_file_names()
    found = []
    for top in CHECKED:
        for p in sorted((ROOT / top).rglob("*.py")):
            if p.is_relative_to(DRIVERS):
                continue
            rel = p.relative_to(ROOT).as_posix()
            for line, text in literals(p):
                for n in file_names(text):
                    if n in names and (rel, n) not in ALLOWED:
                        found.append(f"{rel}:{line}: {n!r}")
    assert not found, "cgroup file names outside cgagent/cgroups/ (read them through " \
        "cgagent.cgroups.reader):\n" + "\n".join(found)


def test_the_check_sees_paths_and_bare_names() -> None:
    """The matcher itself: a path or a bare name counts, prose and other dotted words do not."""
    assert file_names("/memory.events") == ["memory.events"]
    assert file_names("memory.oom_control") == ["memory.oom_control"]
    assert file_names("cpu.weight.nice") == ["cpu.weight.nice"]
    assert file_names("Number of threads (pids.current).") == []
    assert file_names("cgagent.cgroups") == []
    assert file_names("io.BytesIO") == []


# Where a cgroup is only read, the version is the reader's business.
READ_USERS = ("exporters", "policies", "cgagent/oom.py", "cgagent/oomwatch.py")


def test_readers_of_cgroups_do_not_branch_on_the_cgroup_version() -> None:
    found = []
    for top in READ_USERS:
        base = ROOT / top
        for p in sorted(base.rglob("*.py") if base.is_dir() else [base]):
            tree = ast.parse(p.read_text(), str(p))
            rel = p.relative_to(ROOT).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("v2", "is_v2", "v2_mount", "v1_mounts"):
                    found.append(f"{rel}:{node.lineno}: .{node.attr}")
                if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and node.left.value == "" \
                        and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
                    found.append(f"{rel}:{node.lineno}: '\"\" in dirs' (the v2 key)")
    assert not found, "cgroup version branches outside cgagent/cgroups/:\n" + "\n".join(found)

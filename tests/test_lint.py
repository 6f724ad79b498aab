"""The tree stays ruff-clean (the config is in pyproject.toml); `make lint` adds mypy --strict."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_finds_nothing() -> None:
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    r = subprocess.run([ruff, "check", "cgagent", "exporters", "policies", "grafana", "tests", "bench"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_every_dataclass_has_a_docstring() -> None:
    """A dataclass without one gets one made at its creation, from inspect.signature of the class:
    ~0.5 ms of start-up for each, and the launch path defines a dozen (issue 14)."""
    import ast

    missing = []
    for pkg in ("cgagent", "exporters", "policies"):
        for d, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            for f in (x for x in files if x.endswith(".py")):
                path = os.path.join(d, f)
                with open(path) as fh:
                    tree = ast.parse(fh.read(), path)
                missing += [f"{os.path.relpath(path, ROOT)}:{n.lineno} {n.name}" for n in ast.walk(tree)
                            if isinstance(n, ast.ClassDef) and ast.get_docstring(n) is None
                            and any("dataclass" in ast.unparse(x) for x in n.decorator_list)]
    assert not missing, "dataclasses without a docstring:\n" + "\n".join(missing)

"""Helpers for isolated runs: `Box` runs the CLI against a test image store inside the `cg`
fixture's state dir and cgroup parent. The fixtures are in tests/isolated_fixtures.py: use them in a
test module with `pytest_plugins = ("tests.isolated_fixtures",)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import images
from tests.conftest import Env

IMG = images.REF


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout


def wait_for(pred: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling: the kernel has no event for "a record was written"
    raise AssertionError("condition not met in time")


def ps_json(b: Box) -> list[dict[str, object]]:
    return list(json.loads(ok(b.run("ps", "-a", "--json"))))


@dataclass
class Box:
    cg: Env
    store: str

    def env(self) -> dict[str, str]:
        return self.cg.env(CGAGENT_ROOT=self.store)

    def run(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cg.cmd(*args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(self.cg.cmd(*args), env=self.env(), text=True, **kw)

    def sh(self, script: str, *opts: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`cgagent run --rm OPTS IMG -- sh -c SCRIPT`."""
        return self.run("run", "--rm", *opts, IMG, "--", "sh", "-c", script, timeout=timeout)

    def containers(self) -> list[str]:
        d = Path(self.store) / "containers"
        return sorted(os.listdir(d)) if d.is_dir() else []

"""Fixtures for isolated runs: one image store per test module holding the busybox test image
(built here from busybox-static), and a `box` that runs the CLI against it; teardown removes what a
failed test left (workloads, their overlay dirs)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests import images
from tests.conftest import Env
from tests.isolated import Box


@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, overlay mounts)")
    base = tmp_path_factory.mktemp("imgstore")
    images.busybox_layout(str(base / "oci"))
    store = str(base / "store")
    env = dict(os.environ, CGAGENT_ROOT=store)
    r = subprocess.run([*Env("", "").cmd("image", "import", str(base / "oci"))], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield store


@pytest.fixture
def box(cg: Env, image_store: str) -> Iterator[Box]:
    b = Box(cg, image_store)
    yield b
    names = [f[:-5] for f in os.listdir(f"{cg.state_dir}/workloads")] if os.path.isdir(
        f"{cg.state_dir}/workloads") else []
    if names:  # a failed test may leave workloads: remove them (and their overlay dirs) first
        b.run("rm", "-f", *names)
    left = b.containers()
    assert not left, f"container dirs left behind: {left}"

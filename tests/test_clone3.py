"""clone3(CLONE_INTO_CGROUP) in the launch path (issue 14): a workload created inside its cgroup v2
directory, never moved there by a `cgroup.procs` write, and today's fork + write wherever the kernel
cannot (no cgroup v2 directory, threads in the process).

This host is cgroup v1 hybrid, with a controller-less cgroup2 hierarchy at /sys/fs/cgroup/unified:
each test makes its own child cgroup there and removes it. The whole run on a v2 host (cgroupfs
driver, limits applied) is tested in the VM tier (tests/vm_guest/guest_v2.py, block `fast`).
Each case runs in a fresh interpreter: whether clone3 may be used depends on the process having a
single thread, which pytest's process does not promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIFIED = "/sys/fs/cgroup/unified"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(f"{UNIFIED}/cgroup.procs"),
    reason="needs root and the cgroup2 hierarchy at /sys/fs/cgroup/unified")

# Spawns `cat /proc/self/cgroup` with launch.spawn(into=DIR) and reports which hook ran, where the
# child was while it waited for the go (read from outside, before it could run anything of its own),
# and what it printed itself. `place` would be the cgroup.procs write: here it only records its call.
PROBE = r"""
import json, os, sys, threading
from cgagent import launch

into, threads = sys.argv[1], sys.argv[2] == "threads"
if threads:
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
seen = {}
def hook(name):
    def run(pid):
        with open(f"/proc/{pid}/cgroup") as f:
            seen[name] = [ln for ln in f.read().splitlines() if ln.startswith("0::")][0]
    return run
r, w = os.pipe()
pid = launch.spawn(["cat", "/proc/self/cgroup"], hook("place"), stdio=(0, w, 2), into=into, born=hook("born"))
os.close(w)
out = os.read(r, 65536).decode()
code = launch.exit_code(os.waitpid(pid, 0)[1])
if threads:
    stop.set()
print(json.dumps({"seen": seen, "own": [ln for ln in out.splitlines() if ln.startswith("0::")][0],
                  "code": code, "cached": launch._clone3_missing}))
"""


def probe(into: str, threads: bool = False) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", PROBE, into, "threads" if threads else "single"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def v2dir() -> Iterator[str]:
    d = f"{UNIFIED}/cgagent-test-clone3-{os.getpid()}-{os.urandom(3).hex()}"
    os.mkdir(d)
    try:
        yield d
    finally:
        os.rmdir(d)   # the probe has reaped its child: the cgroup is empty


def test_child_is_born_in_its_cgroup_without_a_move(v2dir: str) -> None:
    got = probe(v2dir)
    rel = "0::/" + os.path.basename(v2dir)
    # in its cgroup while it waited, and nobody wrote cgroup.procs: `place` never ran
    assert got["seen"] == {"born": rel}
    assert got["own"] == rel and got["code"] == 0


def test_not_a_cgroup_v2_directory_falls_back_to_fork_and_place(tmp_path: object) -> None:
    got = probe(str(tmp_path))
    assert set(got["seen"]) == {"place"}
    assert got["code"] == 0
    assert got["cached"] is False   # EBADF is about this directory, not about the kernel


def test_a_process_with_threads_falls_back(v2dir: str) -> None:
    """glibc's fork() takes malloc's and stdio's locks when other threads could hold them; a raw
    clone3 cannot, so it is not used then."""
    got = probe(v2dir, threads=True)
    assert set(got["seen"]) == {"place"}
    assert got["own"] != "0::/" + os.path.basename(v2dir)   # `place` here did not move it
    assert got["code"] == 0


def test_the_child_runs_python_after_clone3(v2dir: str) -> None:
    """The child continues in Python as after os.fork(): at-fork hooks ran, the GIL is its own."""
    code = r"""
import os, sys
from cgagent import launch
hits = []
os.register_at_fork(before=lambda: hits.append("before"), after_in_child=lambda: hits.append("child"),
                    after_in_parent=lambda: hits.append("parent"))
fd = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
pid = launch.clone_into(fd)
if pid == 0:
    os._exit(0 if hits == ["before", "child"] else 3)
print(hits, launch.exit_code(os.waitpid(pid, 0)[1]))
"""
    r = subprocess.run([sys.executable, "-c", code, v2dir], capture_output=True, text=True, timeout=60,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['before',", "'parent']", "0"]

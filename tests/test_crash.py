"""SIGKILL the CLI at random points during 50 isolated launches: `cgagent ps` stays accurate and
`cgagent rm -f` of everything leaves no cgroup, overlay dir, record or process behind (issue 4)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from tests.isolated import IMG, Box, ok, ps_json

pytestmark = pytest.mark.slow
pytest_plugins = ("tests.isolated_fixtures",)
LAUNCHES = int(os.environ.get("CGAGENT_CRASH_LAUNCHES", "50"))


def procs_of(b: Box, name: str) -> list[int]:
    """The kernel's view: processes in the workload's cgroup (pids hierarchy)."""
    import json

    try:
        rec = json.load(open(f"{b.cg.state_dir}/workloads/{name}.json"))
    except FileNotFoundError:
        return []
    d = rec["dirs"].get("pids") or rec["dirs"].get("")
    try:
        return [int(p) for p in open(f"{d}/cgroup.procs").read().split()]
    except OSError:
        return []


def test_sigkill_during_launches_then_rm_f_everything(box: Box) -> None:
    rng = random.Random(os.environ.get("CGAGENT_CRASH_SEED", "4"))
    names = [f"crash{i}" for i in range(LAUNCHES)]
    for n in names:
        mode = rng.choice(["fg", "fg", "detached"])
        args = ["run", "--name", n, *(["-d"] if mode == "detached" else []), IMG, "--", "sleep", "1000"]
        p = box.popen(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.0, 0.8))  # a random point of the launch: that is the point of the test
        p.send_signal(signal.SIGKILL)
        p.wait()
    rows = {r["name"]: r for r in ps_json(box)}
    for n in names:
        alive = procs_of(box, n)
        if n not in rows:
            assert not alive, f"{n}: processes {alive} but no record"
            continue
        status = rows[n]["status"]
        assert (status == "running") == bool(alive), (n, status, alive)
    if rows:
        ok(box.run("rm", "-f", *rows))
    assert ps_json(box) == []
    assert box.containers() == []
    for n in names:
        assert procs_of(box, n) == []

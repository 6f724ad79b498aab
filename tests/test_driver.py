"""The cgroupfs driver on this machine's real hierarchy: create, apply, set, freeze/thaw, destroy."""

from __future__ import annotations

import os
import subprocess

from cgagent import host as hostmod
from cgagent.cgroups import manager_for, resolve_dirs
from cgagent.limits import Resources
from tests.conftest import Env


def test_lifecycle_with_sub_cgroups(cg: Env) -> None:
    h = hostmod.detect()
    dirs = resolve_dirs(h, cg.parent, "drv")
    mgr = manager_for(h, dirs)
    mgr.create()
    assert mgr.exists()
    mgr.set(Resources(cpu_quota=30000, cpu_period=100000, memory=64 << 20, pids_limit=20))
    p = subprocess.Popen(["sleep", "300"])
    try:
        mgr.apply(p.pid)
        assert mgr.procs() == [p.pid]
        s = mgr.stats()
        assert s.limits.cpu_quota_us == 30000 and s.limits.memory == 64 << 20 and s.limits.pids == 20
        assert s.pids == 1
        # a workload may make cgroups of its own below ours: destroy must remove them too
        inner = {d: os.path.join(d, "inner") for d in set(dirs.values())}
        for d in inner.values():
            os.mkdir(d)
        mgr.freeze()
        state = open(f"{dirs['freezer']}/freezer.state").read().strip() if "freezer" in dirs else \
            open(f"{dirs['']}/cgroup.freeze").read().strip()
        assert state in ("FROZEN", "1")
        mgr.thaw()
        mgr.destroy()
        assert p.wait(10) == -9
        assert not mgr.exists()
        assert not any(os.path.exists(d) for d in inner.values())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_oom_kill_count_reads_the_kernel(cg: Env) -> None:
    h = hostmod.detect()
    mgr = manager_for(h, resolve_dirs(h, cg.parent, "oomdrv"))
    mgr.create()
    mgr.set(Resources(memory=16 << 20))
    assert mgr.oom_kill_count() == 0
    p = subprocess.Popen(["python3", "-c", "import os, sys; sys.stdin.read(1); x = b'1' * (64 << 20)"],
                         stdin=subprocess.PIPE)
    mgr.apply(p.pid)
    assert p.stdin is not None
    p.stdin.write(b"x")
    p.stdin.close()
    assert p.wait(30) == -9
    assert mgr.oom_kill_count() == 1
    mgr.destroy()

"""Host detection from /proc and /sys, on fixture trees and on this machine."""

import os
import shutil
from pathlib import Path

from cgagent import host

FIX = Path(__file__).parent / "fixtures"


def fake_proc(tmp: Path, mountinfo: str, cgroups: str, self_cgroup: str, comm: str) -> tuple[str, str]:
    proc, sys = tmp / "proc", tmp / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "1").mkdir()
    shutil.copy(FIX / mountinfo, proc / "self" / "mountinfo")
    shutil.copy(FIX / cgroups, proc / "cgroups")
    (proc / "self" / "cgroup").write_text(self_cgroup)
    (proc / "1" / "comm").write_text(comm + "\n")
    (sys / "devices/system/cpu").mkdir(parents=True)
    (sys / "devices/system/cpu/online").write_text("0-3\n")
    return str(proc), str(sys)


def test_hybrid_with_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    proc, sys = fake_proc(tmp_path, "mountinfo-hybrid", "cgroups-v1",
                          "4:memory:/user.slice\n3:cpu,cpuacct:/user.slice\n0::/user.slice\n", "init")
    h = host.detect(proc, sys)
    assert h.mode == "hybrid"
    assert h.v1_mounts["cpu"] == h.v1_mounts["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert h.v2_mount == "/sys/fs/cgroup/unified"
    assert not h.init_is_systemd
    assert h.own_cgroup["cpuacct"] == "/user.slice"
    assert h.online_cpus == [0, 1, 2, 3]
    assert h.missing() == []


def test_unified_with_systemd(tmp_path: Path) -> None:
    proc, sys = fake_proc(tmp_path, "mountinfo-v2", "cgroups-v2", "0::/user.slice/session-1.scope\n", "systemd")
    h = host.detect(proc, sys)
    assert h.mode == "v2" and h.is_v2
    assert h.init_is_systemd
    assert h.own_cgroup[""] == "/user.slice/session-1.scope"


def test_this_machine() -> None:
    h = host.detect()
    assert h.mode in ("v1", "hybrid", "v2")
    assert len(h.online_cpus) == os.cpu_count()
    assert h.usable(), "no usable cgroup controller on the test machine"

"""The v2 cgroupfs driver on a fixture tree (this machine is v1; the VM tier runs it for real)."""

from pathlib import Path

import pytest

from cgagent.cgroups.v2 import V2Manager
from cgagent.errors import CgagentError
from cgagent.limits import Resources

ROOT_CTRLS = "cpuset cpu io memory hugetlb pids rdma misc"


def tree(tmp: Path, subtree: str = "memory pids") -> Path:
    """A cgroup2 mount as the VM boots it: root subtree_control has only memory and pids."""
    (tmp / "cgroup.controllers").write_text(ROOT_CTRLS + "\n")
    (tmp / "cgroup.subtree_control").write_text(subtree + "\n")
    parent = tmp / "cgagent"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    (parent / "cgroup.subtree_control").write_text("\n")
    w = parent / "web"
    w.mkdir()
    files = {
        "cgroup.controllers": "cpuset cpu memory pids", "cgroup.procs": "", "cpu.weight": "100",
        "cpu.max": "max 100000", "memory.max": "max", "memory.swap.max": "max", "pids.max": "max",
        "pids.current": "3", "cpuset.cpus": "", "cpuset.mems": "", "cpuset.cpus.effective": "0-1",
        "cpuset.mems.effective": "0", "memory.current": "1048576", "memory.peak": "2097152",
        "memory.stat": "anon 524288\nfile 262144\ninactive_file 131072\nactive_file 131072\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 40\nnr_throttled 30\n"
                    "throttled_usec 250000\nnr_bursts 0\nburst_usec 0\n",
        "cpu.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n"
                        "full avg10=0.00 avg60=0.00 avg300=0.00 total=567\n",
    }
    for name, text in files.items():
        (w / name).write_text(text + ("\n" if text and not text.endswith("\n") else ""))
    return w


def test_create_enables_controllers_down_its_own_path(tmp_path: Path) -> None:
    w = tree(tmp_path)
    V2Manager({"": str(w)}, mount=str(tmp_path)).create()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +cpuset +io"
    assert (tmp_path / "cgagent" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"


def test_nested_base_does_not_touch_levels_above(tmp_path: Path) -> None:
    w = tree(tmp_path)
    V2Manager({"": str(w)}, mount=str(tmp_path), base=str(tmp_path / "cgagent")).create()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "memory pids\n"


def test_set_writes_v2_files(tmp_path: Path) -> None:
    w = tree(tmp_path)
    m = V2Manager({"": str(w)}, mount=str(tmp_path))
    m.set(Resources(cpu_shares=1024, cpu_quota=50000, cpu_period=100000, memory=256 << 20,
                    memory_swap=512 << 20, pids_limit=16, cpuset_cpus="0"))
    assert (w / "cpu.weight").read_text() == "100"
    assert (w / "cpu.max").read_text() == "50000 100000"
    assert (w / "memory.max").read_text() == str(256 << 20)
    assert (w / "memory.swap.max").read_text() == str(256 << 20)   # swap only: total minus memory
    assert (w / "pids.max").read_text() == "16"
    assert (w / "cpuset.cpus").read_text() == "0"
    m.set(Resources(cpu_quota=-1, memory=-1, memory_swap=-1, pids_limit=-1))
    assert (w / "cpu.max").read_text() == "max 100000"
    assert (w / "memory.max").read_text() == "max"
    assert (w / "memory.swap.max").read_text() == "max"
    assert (w / "pids.max").read_text() == "max"


def test_period_alone_keeps_quota(tmp_path: Path) -> None:
    w = tree(tmp_path)
    (w / "cpu.max").write_text("20000 100000\n")
    V2Manager({"": str(w)}, mount=str(tmp_path)).set(Resources(cpu_period=50000))
    assert (w / "cpu.max").read_text() == "20000 50000"


def test_stats_in_base_units(tmp_path: Path) -> None:
    w = tree(tmp_path)
    (w / "memory.swap.current").write_text("4096\n")
    (w / "memory.max").write_text("268435456\n")
    (w / "memory.swap.max").write_text("1048576\n")
    s = V2Manager({"": str(w)}, mount=str(tmp_path)).stats()
    assert (s.cpu.total_ns, s.cpu.user_ns, s.cpu.system_ns) == (1_500_000, 1_000_000, 500_000)
    assert (s.throttling.periods, s.throttling.throttled_periods, s.throttling.throttled_ns) == (40, 30, 250_000_000)
    assert s.cpu.per_cpu_ns is None
    m = s.memory
    assert (m.usage, m.max_usage, m.rss, m.cache, m.swap) == (1048576, 2097152, 524288, 262144, 4096)
    assert m.working_set == 1048576 - 131072
    assert (m.limit_hits, m.oom_events, m.oom_kills, s.oom_kills) == (7, 2, 1, 1)
    lim = s.limits
    assert (lim.memory, lim.memory_swap) == (256 << 20, (256 << 20) + (1 << 20))   # memory + swap, as --memory-swap
    assert (s.pids, lim.pids) == (3, -1)
    assert (lim.cpu_weight, lim.cpu_quota_us, lim.cpu_period_us, lim.cpu_shares) == (100, -1, 100000, None)
    assert (lim.cpuset_cpus, lim.cpuset_mems) == ("0-1", "0")   # the effective sets: empty means inherit on v2
    assert s.pressure["cpu"].some_us == 1234 and s.pressure["cpu"].full_us == 567
    assert V2Manager({"": str(w)}, mount=str(tmp_path)).oom_kill_count() == 1


def test_limit_for_a_controller_not_enabled_is_refused(tmp_path: Path) -> None:
    w = tree(tmp_path)
    (w / "cgroup.controllers").write_text("memory pids\n")
    with pytest.raises(CgagentError) as e:
        V2Manager({"": str(w)}, mount=str(tmp_path)).set(Resources(cpu_quota=50000))
    assert "cpu" in str(e.value)

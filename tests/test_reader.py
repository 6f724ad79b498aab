"""The drivers' read API (cgagent.cgroups.reader) on fixture trees of both versions: this machine is v1,
so v2 is read from tests/fixtures/v2 (the VM tier reads a real one); v1 from the tree of
tests/test_exporter_golden.py. The real v1 kernel is read by the exporter and driver tests."""

from __future__ import annotations

import os
import select
import shutil
from pathlib import Path

import pytest

from cgagent import inotify
from cgagent.cgroups import fs
from cgagent.cgroups.reader import CgroupGone
from cgagent.cgroups.readers import reader_for
from cgagent.cgroups.v1.cpuacct import NS_PER_TICK
from tests.test_exporter_golden import V1_HIERARCHIES, v1_tree
from tests.test_exporter_values import FIXTURE


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    """A writable copy of the v2 fixture's workload cgroup."""
    shutil.copytree(FIXTURE, tmp_path / "cg")
    return tmp_path / "cg" / "cgagent/web"


@pytest.fixture
def v1(tmp_path: Path) -> dict[str, str]:
    v1_tree(tmp_path / "cg")
    return {c: str(tmp_path / "cg" / h / "cgagent/w1") for c, h in V1_HIERARCHIES.items()}


def test_v2_reads_in_base_units(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    assert r.mode == "v2" and r.has("cpuacct") and r.has("psi")
    u, th, m = r.cpu_usage(per_cpu=True), r.throttling(), r.memory()
    assert (u.total_ns, u.user_ns, u.system_ns, u.per_cpu_ns) == (250_000_000_000, 200_000_000_000,
                                                                 50_000_000_000, None)
    assert (th.periods, th.throttled_periods, th.throttled_ns) == (400, 380, 75_000_123_000)
    assert (m.usage, m.rss, m.cache, m.swap) == (52428800, 41943040, 10485760, None)   # swap only when asked
    assert (m.limit_hits, m.oom_events, m.oom_kills) == (3, 2, 1)
    assert r.pids() == 4
    lim = r.limits("cpu", "memory")
    assert (lim.cpu_weight, lim.cpu_quota_us, lim.cpu_period_us, lim.memory, lim.pids) == (59, 20000, 100000,
                                                                                         268435456, None)
    assert (r.pressure()["io"].some_us, r.pressure()["io"].full_us) == (9, 10)


def test_v2_oom_counter_is_memory_events_oom_kill_with_the_directory_inode(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    assert r.oom_kills() == 1
    assert r.oom_counter() == (os.stat(v2).st_ino, 1)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\n")
    with pytest.raises(ValueError):
        r.oom_counter()
    assert r.oom_kills() is None   # no counter kept, the cgroup is there: not an error


def test_v2_oom_notifier_reports_a_change_of_the_counter(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    with inotify.Inotify() as ino:
        n = r.oom_notifier(ino)
        assert n.wd >= 0 and n.fd < 0
        (v2 / "memory.events").write_text("max 3\noom 3\noom_kill 2\n")
        assert select.select([ino.fd], [], [], 5)[0]
        assert {wd for wd, _mask, _name in ino.read()} == {n.wd}
        n.close()
    assert r.oom_counter()[1] == 2


def test_v2_limit_files_are_those_that_exist(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    assert r.limit_files("pids") == [f"{v2}/pids.max"]
    assert r.limit_files("cpu", "memory") == [f"{v2}/cpu.weight", f"{v2}/cpu.max", f"{v2}/memory.max",
                                             f"{v2}/memory.min"]
    (v2 / "cpu.weight.nice").write_text("0\n")
    assert f"{v2}/cpu.weight.nice" in r.limit_files("cpu")


def test_v2_memory_swap_limit_is_memory_plus_swap(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    (v2 / "memory.swap.max").write_text("1048576\n")
    lim = r.limits("swap")
    assert (lim.memory, lim.memory_swap) == (None, 268435456 + 1048576)   # only the parts asked for
    (v2 / "memory.swap.max").write_text("max\n")
    assert r.limits("swap").memory_swap == -1


def test_v2_controller_not_enabled_reads_as_none_not_gone(v2: Path) -> None:
    for f in ("cpu.max", "cpu.weight", "memory.max", "memory.current", "cpu.pressure", "memory.pressure",
              "io.pressure"):
        (v2 / f).unlink()
    r = reader_for({"": str(v2)})
    lim = r.limits("cpu", "memory")
    assert (lim.cpu_weight, lim.cpu_quota_us, lim.memory) == (None, None, None)
    assert r.memory().usage is None and r.pressure() == {}


def test_v2_cgroup_gone_mid_read_raises_cgroup_gone(v2: Path) -> None:
    r = reader_for({"": str(v2)})
    shutil.rmtree(v2)
    for read in (r.cpu_usage, r.throttling, r.memory, r.pids, r.pressure, r.oom_kills, lambda: r.limits("cpu"),
                 lambda: r.limits("memory")):
        with pytest.raises(CgroupGone):
            read()
    with pytest.raises(FileNotFoundError):
        r.oom_counter()
    s = r.snapshot()   # `stats` of an exited workload: nothing known, no error
    assert s.memory.usage is None and s.cpu.total_ns is None and s.limits.memory is None and s.oom_kills is None


def test_v1_reads_each_hierarchy(v1: dict[str, str]) -> None:
    r = reader_for(v1)
    assert r.mode == "v1" and not r.has("psi") and r.pressure() == {}
    u = r.cpu_usage(per_cpu=True)
    assert (u.total_ns, u.user_ns, u.system_ns, u.per_cpu_ns) == (3950617284, 600 * NS_PER_TICK, 132 * NS_PER_TICK,
                                                                 [1600000000, 2350617284])
    assert r.cpu_usage().per_cpu_ns is None   # the costly file only when asked
    th = r.throttling()
    assert (th.periods, th.throttled_periods, th.throttled_ns) == (400, 28, 493827156)
    m = r.memory(swap=True)
    assert (m.usage, m.max_usage, m.rss, m.cache, m.inactive_file, m.limit_hits, m.swap) == (
        50 << 20 | 4, 60 << 20 | 4, 327680, 163840, 40960, 12, 20480)   # total_swap: with descendants
    lim = r.limits()
    assert (lim.cpu_shares, lim.cpu_weight, lim.cpu_quota_us, lim.cpu_period_us) == (4096, None, 50000, 100000)
    assert (lim.memory, lim.memory_swap, lim.pids) == (268435456, -1, 400)   # PAGE_COUNTER_MAX is -1
    assert r.pids() == 16
    assert r.oom_kills() == 3
    assert r.oom_counter() == (os.stat(v1["memory"]).st_ino, 3)
    assert r.limit_files("cpu", "pids") == [f"{v1['cpu']}/cpu.shares", f"{v1['cpu']}/cpu.cfs_quota_us",
                                            f"{v1['cpu']}/cpu.cfs_period_us", f"{v1['pids']}/pids.max"]


def test_v1_hierarchy_missing_or_gone(v1: dict[str, str]) -> None:
    r = reader_for({c: d for c, d in v1.items() if c != "pids"})
    assert not r.has("pids") and r.pids() is None and r.limits("pids").pids is None
    shutil.rmtree(v1["memory"])
    with pytest.raises(CgroupGone):
        r.memory()
    with pytest.raises(CgroupGone):
        r.oom_kills()
    with pytest.raises(CgroupGone):
        r.limits("memory")
    s = r.snapshot()   # the other hierarchies still read
    assert s.memory.usage is None and s.throttling.periods == 400 and s.limits.cpu_shares == 4096


def test_manager_stats_and_oom_count_come_from_the_reader(v1: dict[str, str]) -> None:
    from cgagent.cgroups.v1 import V1Manager

    mgr = V1Manager(v1)
    s = mgr.stats()
    assert (s.cpu.total_ns, s.throttling.periods, s.memory.usage, s.pids, s.oom_kills) == (
        3950617284, 400, 50 << 20 | 4, 16, 3)
    assert mgr.oom_kill_count() == 3
    shutil.rmtree(v1["memory"])
    assert mgr.oom_kill_count() == 0


def test_v1_memory_stat_without_totals_reads_the_cgroups_own_lines(v1: dict[str, str]) -> None:
    stat = Path(v1["memory"]) / "memory.stat"
    stat.write_text("".join(line for line in stat.read_text().splitlines(keepends=True)
                            if not line.startswith("total_")))
    m = reader_for(v1).memory(swap=True)
    assert (m.rss, m.cache, m.inactive_file, m.swap) == (
        int(_line(stat, "rss")), int(_line(stat, "cache")), int(_line(stat, "inactive_file")), int(_line(stat, "swap")))


def test_integer_files_max_and_malformed(tmp_path: Path) -> None:
    f = tmp_path / "x"
    for text, want in (("max\n", -1), ("-1\n", -1), ("1234\n", 1234), ("0", 0)):
        f.write_text(text)
        assert fs.read_int(str(f)) == want, text
    f.write_text("12abc\n")
    with pytest.raises(ValueError):
        fs.read_int(str(f))
    assert fs.read_int(str(tmp_path / "missing")) is None
    f.write_text("a 1\nab 2\nb 3\n")
    assert fs.read_fields(str(f), (("b",), ("c", "ab"), ("d",))) == {"b": 3, "c": 2}


def _line(path: Path, key: str) -> str:
    return next(ln.split()[1] for ln in path.read_text().splitlines() if ln.split()[0] == key)

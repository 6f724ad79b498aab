"""The exporter's whole text output on fixture cgroup trees (v1 and v2) equals a stored copy, byte for
byte: series, labels, values and their order. The stored copies were written by the collectors as
they were before the driver read API (cgagent.cgroups.reader) replaced their own file reads, so any
change of output by a refactoring shows here. Only what varies by nature is left out: the timing
samples of cgagent_scrape_duration_seconds and cgagent_build_info (Python and cgagent versions).

A deliberate change of output: CGAGENT_REGEN_GOLDEN=1 rewrites the stored copies; review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgagent import events
from cgagent.host import Host
from cgagent.state import Record, Store
from exporters.collectors import blkio
from exporters.registry import Exporter, Options
from tests.test_exporter_values import FIXTURE, v2_host

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
VARYING = ("cgagent_scrape_duration_seconds{", "cgagent_build_info{",
           # wall-clock now, and directory mtimes of the fixture trees (tests/test_exporter_lifecycle.py)
           "container_last_seen{", "container_start_time_seconds{")
V1_HIERARCHIES = {"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "memory": "memory", "pids": "pids",
                  "blkio": "blkio"}
UNLIMITED_V1 = "9223372036854771712"   # PAGE_COUNTER_MAX pages in bytes: v1's "no limit"


def v1_files(i: int, quota: str = "50000", mem_limit: str = "268435456") -> dict[str, dict[str, str]]:
    """The files of one v1 cgroup per hierarchy; `i` varies the numbers between cgroups."""
    return {
        "cpu,cpuacct": {
            "cpu.stat": f"nr_periods {100 * i}\nnr_throttled {7 * i}\nthrottled_time {123456789 * i}\n",
            "cpu.shares": str(1024 * i), "cpu.cfs_quota_us": quota, "cpu.cfs_period_us": "100000",
            "cpuacct.usage": str(987654321 * i), "cpuacct.stat": f"user {150 * i}\nsystem {33 * i}\n",
            "cpuacct.usage_percpu": f"{400000000 * i} {587654321 * i}",
        },
        "memory": {
            "memory.usage_in_bytes": str(50 << 20 | i), "memory.max_usage_in_bytes": str(60 << 20 | i),
            "memory.failcnt": str(3 * i), "memory.limit_in_bytes": mem_limit,
            "memory.memsw.limit_in_bytes": UNLIMITED_V1,
            "memory.soft_limit_in_bytes": UNLIMITED_V1 if i % 2 else str(64 << 20),
            "memory.stat": (f"cache {4096 * i}\nrss {8192 * i}\nmapped_file 0\ninactive_file {1024 * i}\n"
                            f"total_cache {40960 * i}\ntotal_rss {81920 * i}\ntotal_inactive_file {10240 * i}\n"
                            f"total_active_file 0\nswap {512 * i}\ntotal_swap {5120 * i}\n"),
            "memory.oom_control": f"oom_kill_disable 0\nunder_oom 0\noom_kill {i - 1}\n",
        },
        "pids": {"pids.current": str(4 * i), "pids.max": "max" if i % 2 else str(100 * i)},
        "blkio": {"blkio.throttle.io_service_bytes_recursive": (
                      f"8:0 Read {4096 * i}\n8:0 Write {8192 * i}\n8:0 Sync {4096 * i}\n8:0 Async {8192 * i}\n"
                      f"8:0 Discard 0\n8:0 Total {12288 * i}\n7:3 Read 0\n7:3 Write {1 << 20}\n"
                      f"Total {12288 * i + (1 << 20)}"),
                  "blkio.throttle.io_serviced_recursive": (f"8:0 Read {i}\n8:0 Write {2 * i}\n8:0 Total {3 * i}\n"
                                                           f"7:3 Read 0\n7:3 Write 16\nTotal {3 * i + 16}")},
    }


def v1_tree(root: Path) -> Host:
    """A v1 host in a directory: cpu,cpuacct co-mounted, memory and pids; one workload under /cgagent and
    a watched /system.slice whose b.service has no pids cgroup (systemd on v1: accounting off)."""
    cgroups = {"/system.slice": v1_files(1), "/system.slice/a.service": v1_files(2, quota="-1"),
               "/system.slice/b.service": v1_files(3, mem_limit=UNLIMITED_V1), "/cgagent/w1": v1_files(4)}
    del cgroups["/system.slice/b.service"]["pids"]
    for cid, hierarchies in cgroups.items():
        for h, files in hierarchies.items():
            d = root / h / cid.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                (d / name).write_text(text + "\n")
    return Host(mode="hybrid", v1_mounts={c: str(root / h) for c, h in V1_HIERARCHIES.items()},
                own_cgroup=dict.fromkeys(V1_HIERARCHIES, "/"))


def sys_dev_block(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Device names from a fixture /sys/dev/block (8:0 is sda; 7:3 has no entry: its number stays)."""
    (root / "8:0").mkdir(parents=True)
    (root / "8:0" / "uevent").write_text("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n")
    monkeypatch.setattr(blkio, "SYS_DEV_BLOCK", str(root))


def store_with(root: Path, rec: Record) -> Store:
    """A state dir with one running workload and an events log: OOM kills of it and of a removed one."""
    store = Store(str(root))
    store.save(rec)
    events.append(store.root, "start", "gone", cgroup="/cgagent/gone", policy="batch", resources={})
    events.append(store.root, "oom_kill", "gone", kills=2, total=2, instance=0.5, gen=1, seq=2,
                  cgroup="/cgagent/gone", policy="batch", source="exit")
    events.append(store.root, "oom_kill", rec.name, kills=1, total=1, instance=rec.created, gen=1, seq=1,
                  cgroup=rec.cgroup, policy=rec.policy, source="serve")
    events.append(store.root, "policy", rec.name, policy="batch", action="cpu_step_up")
    return store


def text(exp: Exporter) -> str:
    exp.render()   # the second scrape is the steady state: limits come from the kept values
    lines = exp.render().decode().splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.startswith(VARYING))


def check(name: str, got: str) -> None:
    path = GOLDEN / name
    if os.environ.get("CGAGENT_REGEN_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(got)
    assert got == path.read_text(), f"exporter output differs from {path} (see the module doc)"


@pytest.mark.parametrize("per_cpu", [False, True], ids=["total", "per-cpu"])
def test_v1_tree_output_is_unchanged(tmp_path: Path, per_cpu: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_dev_block(tmp_path / "sys", monkeypatch)
    host = v1_tree(tmp_path / "cg")
    dirs = {c: str(tmp_path / "cg" / h / "cgagent/w1") for c, h in V1_HIERARCHIES.items()}
    store = store_with(tmp_path / "state", Record(name="w1", cmd=["w"], driver="cgroupfs", mode="v1", dirs=dirs,
                                                  cgroup="/cgagent/w1", status="running", policy="batch",
                                                  created=1.0, pid=1))
    exp = Exporter(Options(host=host, state_dir=store.root, watch=["/system.slice"], per_cpu=per_cpu,
                           process_metrics=False))
    check(f"v1-{'per-cpu' if per_cpu else 'total'}.prom", text(exp))


def test_v2_tree_output_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_dev_block(tmp_path / "sys", monkeypatch)
    store = store_with(tmp_path / "state", Record(name="web", cmd=["web"], driver="cgroupfs", mode="v2",
                                                  dirs={"": str(FIXTURE / "cgagent/web")}, cgroup="/cgagent/web",
                                                  status="running", policy="batch", created=1.0, pid=1))
    exp = Exporter(Options(host=v2_host(FIXTURE), state_dir=store.root, watch=["/system.slice"], per_cpu=True,
                           process_metrics=False))
    check("v2.prom", text(exp))

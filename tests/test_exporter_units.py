"""Parsing behind cAdvisor's network, disk I/O, lifecycle and spec series, on fixture files (the
real-kernel behaviour is in tests/test_exporter_io.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cgagent.cgroups import fs
from cgagent.cgroups.readers import reader_for
from cgagent.cgroups.stats import DeviceIo
from cgagent.convert import weight_to_cadvisor_shares
from exporters.collectors.blkio import device_name
from exporters.collectors.network import parse_net_dev
from exporters.process import Process

NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier "
    "compressed\n"
    "    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0      0 0\n"
    "  eth0: 5242880    3600    1    2    0     0          0         0   190000    1800    3    4    0     0      0 0\n"
    "vethabcdef@if3:  7 8 9 10 0 0 0 0 11 12 13 14 0 0 0 0\n")

def test_net_dev_counters_per_interface_without_lo() -> None:
    got = parse_net_dev(NET_DEV)
    assert got == {"eth0": (5242880, 3600, 1, 2, 190000, 1800, 3, 4),
                   "vethabcdef@if3": (7, 8, 9, 10, 11, 12, 13, 14)}


def test_v1_blkio_per_device_prefers_recursive_and_falls_back(tmp_path: Path) -> None:
    d = tmp_path / "blkio"
    d.mkdir()
    (d / "blkio.throttle.io_service_bytes").write_text("8:0 Read 1\n8:0 Write 2\nTotal 3\n")
    (d / "blkio.throttle.io_serviced").write_text("8:0 Read 5\n8:0 Write 6\nTotal 11\n")
    r = reader_for({"blkio": str(d)})
    assert r.io_devices() == [DeviceIo(8, 0, 1, 2, 5, 6)]   # an old kernel: the cgroup's own counters
    (d / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:16 Read 4096\n8:16 Write 8192\n8:16 Sync 0\n8:16 Async 12288\n8:16 Discard 0\n8:16 Total 12288\n"
        "253:0 Read 0\n253:0 Write 512\nTotal 12800\n")
    (d / "blkio.throttle.io_serviced_recursive").write_text("8:16 Read 1\n8:16 Write 2\nTotal 3\n")
    assert r.io_devices() == [DeviceIo(8, 16, 4096, 8192, 1, 2), DeviceIo(253, 0, 0, 512, 0, 0)]
    assert reader_for({"memory": str(d)}).io_devices() == []   # not in the blkio hierarchy


def test_v2_io_stat_per_device(tmp_path: Path) -> None:
    (tmp_path / "io.stat").write_text("259:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n"
                                      "8:0 rbytes=5 wbytes=0 rios=1 wios=0\n")
    r = reader_for({"": str(tmp_path)})
    assert r.io_devices() == [DeviceIo(259, 0, 100, 200, 1, 2), DeviceIo(8, 0, 5, 0, 1, 0)]
    (tmp_path / "io.stat").unlink()
    assert r.io_devices() == []   # io controller not enabled


def test_device_name_from_uevent(tmp_path: Path) -> None:
    (tmp_path / "259:0").mkdir()
    (tmp_path / "259:0" / "uevent").write_text("MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n")
    (tmp_path / "7:1").mkdir()
    (tmp_path / "7:1" / "uevent").write_text("MAJOR=7\nMINOR=1\nDEVNAME=../../etc\n")
    assert device_name(259, 0, str(tmp_path)) == "/dev/nvme0n1"
    assert device_name(7, 1, str(tmp_path)) == "7:1"      # not a name under /dev
    assert device_name(8, 99, str(tmp_path)) == "8:99"    # gone


def test_cadvisor_shares_from_weight() -> None:
    # cAdvisor's convertCPUWeightToCPULimit: 2 + (weight-1)*262142/9999
    assert [weight_to_cadvisor_shares(w) for w in (1, 39, 100, 10000)] == [2, 998, 2597, 262144]


def test_created_is_the_earliest_mtime_of_dirs_and_birth_file(tmp_path: Path) -> None:
    cpu, mem = tmp_path / "cpu", tmp_path / "memory"
    for d in (cpu, mem):
        d.mkdir()
        (d / "cgroup.clone_children").write_text("0\n")
        os.utime(d, (2000, 2000))
    os.utime(mem / "cgroup.clone_children", (1500, 1500))   # a child made later moved the dir's mtime
    os.utime(cpu / "cgroup.clone_children", (1700, 1700))
    assert reader_for({"cpu": str(cpu), "memory": str(mem)}).created() == 1500
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.type").write_text("domain\n")
    os.utime(v2 / "cgroup.type", (1200, 1200))
    os.utime(v2, (1300, 1300))
    assert reader_for({"": str(v2)}).created() == 1200
    assert reader_for({"": str(tmp_path / "gone")}).created() is None


def test_a_pid_is_the_first_listed_and_none_when_empty(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("".join(f"{p}\n" for p in range(4242, 9000)))   # a root cgroup lists thousands
    assert reader_for({"": str(tmp_path)}).a_pid() == 4242
    procs.write_text("")
    assert reader_for({"": str(tmp_path)}).a_pid() is None
    assert fs.first_proc(str(tmp_path / "gone")) is None


def test_process_series_as_prometheus_client_names_them_and_a_true_fd_count() -> None:
    held = [os.open("/", os.O_PATH) for _ in range(300)]   # as DirFds holds a descriptor per cgroup
    try:
        fams = {f.name: f.samples for f in Process().families()}
        listed = len(os.listdir("/proc/self/fd")) - 1   # the listing's own descriptor
    finally:
        for fd in held:
            os.close(fd)
    assert set(fams) == {"process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
                         "process_cpu_seconds_total", "process_open_fds", "process_max_fds"}
    assert fams["process_open_fds"][0][1] == listed >= 300
    assert fams["process_resident_memory_bytes"][0][1] > 0 and fams["process_max_fds"][0][1] >= 300
    assert 0 < fams["process_start_time_seconds"][0][1] <= time.time()

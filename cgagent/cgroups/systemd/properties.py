"""Resources -> systemd unit properties (D-Bus `a(sv)` pairs), per cgroup mode.

v1: CPUShares, CPUQuotaPerSecUSec, CPUQuotaPeriodUSec, MemoryLimit, TasksMax (cpuset: not a
    systemd property on v1; SystemdManager writes that hierarchy, which systemd leaves alone).
v2: CPUWeight, CPUQuotaPerSecUSec, CPUQuotaPeriodUSec, MemoryMax, MemorySwapMax, TasksMax,
    AllowedCPUs, AllowedMemoryNodes.
Disk I/O: IOWeight, IODeviceWeight, IO{Read,Write}{BandwidthMax,IOPSMax} on v2; BlockIOWeight,
    BlockIODeviceWeight, BlockIO{Read,Write}Bandwidth on v1 (which has no IOPS property).
Every limit goes through systemd (never written to cgroupfs behind its back), so a daemon-reload
re-applies the same values instead of reverting them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cgagent import convert
from cgagent.cgroups.systemd import devices
from cgagent.errors import CgagentError
from cgagent.limits import Resources, io_devices
from cgagent.units import parse_cpu_list

Property = tuple[str, tuple[str, Any]]

# systemd clamps the CFS period to [1 ms, 1 s] and so that quota*period >= 1 ms (cgroup-util.c)
_MIN_PERIOD_US, _MAX_PERIOD_US = 1_000, 1_000_000


def _bytes(n: int) -> int:
    return convert.UNLIMITED_U64 if n < 0 else n


def effective_period(quota_per_sec: int, period_us: int) -> int:
    """The CFS period systemd writes for this quota (cgroup_cpu_adjust_period)."""
    if quota_per_sec == convert.UNLIMITED_U64 or quota_per_sec <= 0:
        return period_us
    need = -(-_MIN_PERIOD_US * 1_000_000 // quota_per_sec)
    return min(max(period_us, _MIN_PERIOD_US, need), _MAX_PERIOD_US)


def effective(r: Resources) -> Resources:
    """What the kernel will hold once systemd has applied `r`: the quota rounded up to systemd's
    10 ms granularity (what a daemon-reload re-reads from CPUQuota=N%), then recomputed for the
    period systemd uses. Records and stats then agree with cpu.cfs_quota_us / cpu.max."""
    if r.cpu_quota is None or r.cpu_quota < 0:
        return r
    period = r.cpu_period or convert.DEFAULT_PERIOD_US
    per_sec = convert.systemd_quota_per_sec(r.cpu_quota, period)
    if per_sec <= 0:
        return r  # systemd refuses a zero quota; let it say so
    new_period = effective_period(per_sec, period)
    keep_period = r.cpu_period is not None or new_period != period
    return dataclasses.replace(r, cpu_quota=per_sec * new_period // 1_000_000,
                               cpu_period=new_period if keep_period else None)


def _cpu(r: Resources, v2: bool) -> list[Property]:
    out: list[Property] = []
    if v2:
        weight = r.effective_weight()
        if weight is not None:
            out.append(("CPUWeight", ("t", weight)))
    else:
        shares = r.effective_shares()
        if shares is not None:
            out.append(("CPUShares", ("t", shares)))
    if r.cpu_quota is not None:
        period = r.cpu_period or convert.DEFAULT_PERIOD_US
        out.append(("CPUQuotaPerSecUSec", ("t", convert.systemd_quota_per_sec(r.cpu_quota, period))))
    if r.cpu_period is not None:
        out.append(("CPUQuotaPeriodUSec", ("t", r.cpu_period)))
    return out


def _memory(r: Resources, v2: bool) -> list[Property]:
    out: list[Property] = []
    if not v2:
        if r.memory_swap is not None:
            raise CgagentError("--memory-swap is not supported by the systemd driver on cgroup v1 "
                               "(systemd has no memory+swap property there)",
                               "drop --memory-swap, or use --cgroup-driver cgroupfs")
        if r.memory is not None:
            out.append(("MemoryLimit", ("t", _bytes(r.memory))))
        return out
    if r.memory is not None:
        out.append(("MemoryMax", ("t", _bytes(r.memory))))
    try:
        swap = convert.v2_swap_max(r.memory, r.memory_swap)
    except ValueError as e:
        raise CgagentError(f"--memory-swap {r.memory_swap}: {e}", "give --memory-swap >= --memory") from None
    if swap is not None:
        out.append(("MemorySwapMax", ("t", _bytes(swap))))
    return out


def _cpuset(r: Resources, v2: bool) -> list[Property]:
    if r.cpuset_cpus is None and r.cpuset_mems is None:
        return []
    if not v2:
        return []   # systemd has no v1 cpuset: the driver writes the cpuset hierarchy itself
    out: list[Property] = []
    if r.cpuset_cpus is not None:
        out.append(("AllowedCPUs", ("ay", convert.cpuset_bitmask(parse_cpu_list(r.cpuset_cpus, "--cpuset-cpus")))))
    if r.cpuset_mems is not None:
        out.append(("AllowedMemoryNodes",
                    ("ay", convert.cpuset_bitmask(parse_cpu_list(r.cpuset_mems, "--cpuset-mems")))))
    return out


# Resources field -> (v2 property, v1 property or None: systemd has no v1 IOPS limit)
_IO_DEVICE_PROPS = {"blkio_weight_device": ("IODeviceWeight", "BlockIODeviceWeight"),
                    "device_read_bps": ("IOReadBandwidthMax", "BlockIOReadBandwidth"),
                    "device_write_bps": ("IOWriteBandwidthMax", "BlockIOWriteBandwidth"),
                    "device_read_iops": ("IOReadIOPSMax", None),
                    "device_write_iops": ("IOWriteIOPSMax", None)}


def device_node(major: int, minor: int) -> str:
    """A path systemd resolves to the device (it stats it): udev's /dev/block/MAJ:MIN link, else a
    node in /dev with that number (a /dev without udev, as in a container)."""
    import os
    import stat

    link = f"/dev/block/{major}:{minor}"
    if os.path.exists(link):
        return link
    with os.scandir("/dev") as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and os.major(st.st_rdev) == major and os.minor(st.st_rdev) == minor:
                return e.path
    raise CgagentError(f"no node for block device {major}:{minor} in /dev, which systemd needs to name it",
                       "create the node, or use --cgroup-driver cgroupfs")


def _io(r: Resources, v2: bool) -> list[Property]:
    out: list[Property] = []
    if r.blkio_weight is not None:
        out.append(("IOWeight" if v2 else "BlockIOWeight", ("t", r.blkio_weight)))
    for field, (p2, p1) in _IO_DEVICE_PROPS.items():
        entries = io_devices(getattr(r, field))
        if not entries:
            continue
        if not v2 and p1 is None:
            raise CgagentError(f"--{field.replace('_', '-')} is not supported by the systemd driver on cgroup v1 "
                               "(systemd has no IOPS property for blkio)", "use --cgroup-driver cgroupfs")
        # a limit of 0 is "none": systemd's "infinity" (it writes rbps=max, or 0 on v1, for it)
        weight = field == "blkio_weight_device"
        out.append((p2 if v2 else str(p1), ("a(st)", [(device_node(ma, mi), n if weight or n else convert.UNLIMITED_U64)
                                                    for ma, mi, n in entries])))
    if out:
        out.append(("IOAccounting" if v2 else "BlockIOAccounting", ("b", True)))
    return out


def limits(r: Resources, mode: str) -> list[Property]:
    """The unit properties for the limits in `r` (fields left None are not sent)."""
    v2 = mode == "v2"
    out = _cpu(r, v2) + _memory(r, v2) + _cpuset(r, v2) + _io(r, v2)
    if r.pids_limit is not None:
        out.append(("TasksMax", ("t", convert.systemd_tasks_max(r.pids_limit))))
    return out + devices.properties(r)


def scope(description: str, slice_: str, pid: int) -> list[Property]:
    """The properties every cgagent scope is created with, before its limits."""
    return [
        ("Description", ("s", description)),
        ("Slice", ("s", slice_)),
        ("PIDs", ("au", [pid])),
        # the workload may make its own sub-cgroups; systemd must not touch them
        ("Delegate", ("b", True)),
        # no implicit ordering against shutdown.target etc.: the scope is ours to start and stop
        ("DefaultDependencies", ("b", False)),
        ("CPUAccounting", ("b", True)),
        ("MemoryAccounting", ("b", True)),
        ("TasksAccounting", ("b", True)),
    ]

"""v1 blkio: the proportional weight (blkio.bfq.weight with BFQ, else CFQ's blkio.weight), the
throttle rules blkio.throttle.{read,write}_{bps,iops}_device, and the bytes/ops counters."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.errors import CgagentError
from cgagent.limits import Resources, io_devices

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import DeviceIo, IoUsage

NAME = "blkio"
# Resources field -> the throttle file; a rule "MAJ:MIN 0" deletes that device's rule
THROTTLE_FILES = {"device_read_bps": "blkio.throttle.read_bps_device",
                  "device_write_bps": "blkio.throttle.write_bps_device",
                  "device_read_iops": "blkio.throttle.read_iops_device",
                  "device_write_iops": "blkio.throttle.write_iops_device"}
LIMIT_FILES = tuple(THROTTLE_FILES.values())
# BFQ's files first: with the BFQ scheduler CFQ's do not exist (kernel 5.0 removed CFQ)
_WEIGHT_FILES = (("blkio.bfq.weight", "blkio.bfq.weight_device"), ("blkio.weight", "blkio.weight_device"))
_STAT_FILES = ("blkio.throttle.io_service_bytes_recursive", "blkio.throttle.io_serviced_recursive")
# kernels before 4.14 (or with the throttle stats off) keep only the cgroup's own counters
_LOCAL_STAT_FILES = ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced")


def _weight_files(d: str) -> tuple[str, str]:
    for files in _WEIGHT_FILES:
        if os.path.exists(f"{d}/{files[0]}"):
            return files
    raise CgagentError(f"{d} has no blkio weight file (neither BFQ's nor CFQ's)",
                       "select the bfq I/O scheduler for the disk (echo bfq > /sys/block/DISK/queue/scheduler), "
                       "or drop --blkio-weight")


def apply(d: str, r: Resources) -> None:
    if r.blkio_weight is not None or r.blkio_weight_device:
        weight, weight_device = _weight_files(d)
        if r.blkio_weight is not None:
            fs.write(f"{d}/{weight}", r.blkio_weight)
        for major, minor, n in io_devices(r.blkio_weight_device):
            fs.write(f"{d}/{weight_device}", f"{major}:{minor} {n}")
    for field, name in THROTTLE_FILES.items():
        for major, minor, n in io_devices(getattr(r, field)):
            fs.write(f"{d}/{name}", f"{major}:{minor} {n}")


def _sum(path: str) -> tuple[int, int] | None:
    """(Read, Write) summed over devices from a `MAJ:MIN Op N` file; None when it is missing."""
    try:
        text = fs.read(path)
    except FileNotFoundError:
        return None
    rd = wr = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write"):
            if parts[1] == "Read":
                rd += int(parts[2])
            else:
                wr += int(parts[2])
    return rd, wr


def usage(d: str) -> IoUsage:
    from cgagent.cgroups.stats import IoUsage

    nbytes, ops = (_sum(f"{d}/{f}") for f in _STAT_FILES)
    out = IoUsage()
    if nbytes is not None:
        out.read_bytes, out.write_bytes = nbytes
    if ops is not None:
        out.read_ops, out.write_ops = ops
    return out


def _per_device(path: str) -> dict[tuple[int, int], tuple[int, int]] | None:
    """(major, minor) -> (Read, Write) from a `MAJ:MIN Op N` file; None when it is missing."""
    try:
        text = fs.read(path)
    except FileNotFoundError:
        return None
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ("Read", "Write"):
            continue   # Sync/Async/Discard/Total lines, and the trailing "Total N"
        major, _, minor = parts[0].partition(":")
        key = (int(major), int(minor))
        rd, wr = out.get(key, (0, 0))
        out[key] = (rd + int(parts[2]), wr) if parts[1] == "Read" else (rd, wr + int(parts[2]))
    return out


def per_device(d: str) -> list[DeviceIo]:
    """Bytes and operations per device, this cgroup and its descendants (the *_recursive files;
    the cgroup's own where the kernel has no recursive ones)."""
    from cgagent.cgroups.stats import DeviceIo

    for files in (_STAT_FILES, _LOCAL_STAT_FILES):
        nbytes = _per_device(f"{d}/{files[0]}")
        if nbytes is not None:
            ops = _per_device(f"{d}/{files[1]}") or {}
            break
    else:
        return []
    return [DeviceIo(mj, mn, *nbytes.get((mj, mn), (0, 0)), *ops.get((mj, mn), (0, 0)))
            for mj, mn in dict.fromkeys([*nbytes, *ops])]


def throttle_rules(d: str) -> dict[str, dict[str, int]]:
    """Resources field -> {"MAJ:MIN": value} as the kernel holds the rules now."""
    out: dict[str, dict[str, int]] = {}
    for field, name in THROTTLE_FILES.items():
        rules: dict[str, int] = {}
        try:
            for line in fs.read(f"{d}/{name}").splitlines():
                dev, _, n = line.partition(" ")
                if n:
                    rules[dev] = int(n)
        except FileNotFoundError:
            pass
        out[field] = rules
    return out

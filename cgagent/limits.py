"""The validated resource plan the drivers apply, and the checks that make it safe for this host.

Kept free of pydantic and typer so `cgagent run` starts fast; `cgagent.spec.ResourceSpec` (pydantic)
parses the same fields with the same functions for files and the full CLI.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from cgagent import convert
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.units import (
    flag_bytes,
    format_cpu_list,
    parse_bytes,
    parse_cpu_list,
    parse_int,
    parse_number,
)

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any

MIN_MEMORY = 6 * 1024 * 1024   # Docker's floor: below this the workload cannot even start
# pids.max above PID_MAX_LIMIT (2**22) is EINVAL on both cgroup versions
MAX_PIDS = 1 << 22
MIN_QUOTA_US = 1000            # the kernel refuses a smaller cpu.cfs_quota_us / cpu.max quota
# the per-device I/O fields, each a tuple of "MAJ:MIN VALUE" (see parse_io_device)
IO_DEVICE_FIELDS = ("blkio_weight_device", "device_read_bps", "device_write_bps", "device_read_iops",
                    "device_write_iops")


@dataclass(frozen=True)
class Resources:
    """Limits in kernel units. None = leave as is / unset; -1 = unlimited."""

    cpu_shares: int | None = None      # v1 cpu.shares (v2 derives cpu.weight)
    cpu_weight: int | None = None      # v2 cpu.weight (v1 derives cpu.shares)
    cpu_quota: int | None = None       # µs per period; -1 unlimited
    cpu_period: int | None = None      # µs
    memory: int | None = None          # bytes; -1 unlimited
    memory_swap: int | None = None     # memory + swap, bytes (Docker semantics); -1 unlimited
    pids_limit: int | None = None      # -1 unlimited
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    # device allow-list, cgagent.devrules form ("c 1:3 rwm"); None = no device control
    devices: tuple[str, ...] | None = None
    blkio_weight: int | None = None    # 10..1000 (v1 blkio.weight / blkio.bfq.weight, v2 io.weight)
    # per block device, "MAJ:MIN VALUE" (see parse_io_device): weight 10..1000; bytes or ops per second,
    # 0 = no limit on that device (kept, so `update DEV:0` writes the removal)
    blkio_weight_device: tuple[str, ...] | None = None
    device_read_bps: tuple[str, ...] | None = None
    device_write_bps: tuple[str, ...] | None = None
    device_read_iops: tuple[str, ...] | None = None
    device_write_iops: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for f in ("devices", *IO_DEVICE_FIELDS):   # a JSON record has lists
            v = getattr(self, f)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, f, tuple(v))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resources:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def merged(self, change: Resources) -> Resources:
        """`update`: fields given in `change` replace ours."""
        return dataclasses.replace(self, **change.to_dict())

    def controllers(self) -> list[str]:
        """The controllers these limits need."""
        need = {"cpu": (self.cpu_shares, self.cpu_weight, self.cpu_quota, self.cpu_period),
                "memory": (self.memory, self.memory_swap), "pids": (self.pids_limit,),
                "cpuset": (self.cpuset_cpus, self.cpuset_mems),
                "io": (self.blkio_weight, *(getattr(self, f) for f in IO_DEVICE_FIELDS))}
        return [c for c, vals in need.items() if any(v is not None for v in vals)]

    @property
    def cpus(self) -> float | None:
        if self.cpu_quota is None:
            return None
        return convert.quota_to_cpus(self.cpu_quota, self.cpu_period or convert.DEFAULT_PERIOD_US)

    def effective_weight(self) -> int | None:
        if self.cpu_weight is not None:
            return self.cpu_weight
        return convert.shares_to_weight(self.cpu_shares) if self.cpu_shares else None

    def effective_shares(self) -> int | None:
        if self.cpu_shares is not None:
            return self.cpu_shares
        return convert.weight_to_shares(self.cpu_weight) if self.cpu_weight else None


# Field parsers: one per user-facing option, shared by the fast CLI path and the pydantic spec.
def field_cpus(v: Any) -> float:
    n = parse_number(v, "--cpus")
    if n <= 0:
        raise CgagentError(f"--cpus {v} must be greater than 0", "give a fraction of CPUs such as 0.5 or 2")
    return n


def field_shares(v: Any) -> int:
    n = parse_int(v, "--cpu-shares")
    if not convert.SHARES_MIN <= n <= convert.SHARES_MAX:
        raise CgagentError(f"--cpu-shares {v} is out of range", "use 2..262144 (default 1024)")
    return n


def field_weight(v: Any) -> int:
    n = parse_int(v, "--cpu-weight")
    if not convert.WEIGHT_MIN <= n <= convert.WEIGHT_MAX:
        raise CgagentError(f"--cpu-weight {v} is out of range", "use 1..10000 (default 100)")
    return n


def field_period(v: Any) -> int:
    n = parse_int(v, "--cpu-period")
    if not 1000 <= n <= 1_000_000:
        raise CgagentError(f"--cpu-period {v} is out of range", "use 1000..1000000 µs (default 100000)")
    return n


def field_memory(v: Any) -> int:
    n = parse_bytes(v, "--memory")
    if 0 <= n < MIN_MEMORY:
        raise CgagentError(f"--memory {v} is below the minimum of 6M", "give at least 6M")
    return n


def field_memory_swap(v: Any) -> int:
    return parse_bytes(v, "--memory-swap")


def field_pids(v: Any) -> int:
    n = parse_int(v, "--pids-limit")
    if n == 0 or n < -1 or n > MAX_PIDS:
        raise CgagentError(f"--pids-limit {v} is invalid", f"give a count from 1 to {MAX_PIDS}, or -1 for unlimited")
    return n


def field_cpuset(option: str) -> Any:
    def parse(v: Any) -> str:
        return format_cpu_list(parse_cpu_list(str(v), option))
    return parse


def field_blkio_weight(v: Any) -> int:
    n = parse_int(v, "--blkio-weight")
    if not IO_WEIGHT_MIN <= n <= IO_WEIGHT_MAX:
        raise CgagentError(f"--blkio-weight {v} is out of range", "use 10..1000 (default 500)")
    return n


IO_WEIGHT_MIN, IO_WEIGHT_MAX = 10, 1000   # Docker's --blkio-weight range (blkio.weight's)
_IO_OPTION = {"blkio_weight_device": "--blkio-weight-device", "device_read_bps": "--device-read-bps",
              "device_write_bps": "--device-write-bps", "device_read_iops": "--device-read-iops",
              "device_write_iops": "--device-write-iops"}
MAX_IO_DEVICES = 64   # bounded: each device is a line in a kernel file and a systemd property entry


def block_device(path: str, option: str, sysfs: str = "/sys") -> str:
    """A block device node -> "MAJ:MIN", refused with one line when it is missing, not a block device,
    or a partition (the kernel throttles and weighs whole disks only: blkg_conf_prep)."""
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise CgagentError(f"{option} {path}: {e.strerror or 'cannot stat it'}",
                           "give the path of a block device node, e.g. /dev/sda or /dev/loop3") from None
    if not stat.S_ISBLK(st.st_mode):
        raise CgagentError(f"{option} {path} is not a block device",
                           "give a block device node such as /dev/sda (see `lsblk`)")
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if os.path.exists(f"{sysfs}/dev/block/{dev}/partition"):
        disk = os.path.basename(os.path.dirname(os.path.realpath(f"{sysfs}/dev/block/{dev}")))
        raise CgagentError(f"{option} {path} is a partition ({dev}); the kernel limits whole disks only",
                           f"give the disk it is on, /dev/{disk}")
    return dev


def parse_io_device(field: str, v: Any) -> tuple[str, int]:
    """One "DEV:VALUE" of a per-device I/O option -> ("MAJ:MIN", value); DEV is a path or MAJ:MIN."""
    option = _IO_OPTION[field]
    if not isinstance(v, str) or len(v) > 4096:
        raise CgagentError(f"{option} must be a string DEVICE:VALUE", f"give e.g. {option} /dev/sda:10mb")
    dev, sep, raw = v.rpartition(":")
    if not sep or not dev:
        raise CgagentError(f"{option} {v!r} is not DEVICE:VALUE", f"give e.g. {option} /dev/sda:10mb")
    if field == "blkio_weight_device":
        n = parse_int(raw, option)
        if not IO_WEIGHT_MIN <= n <= IO_WEIGHT_MAX:
            raise CgagentError(f"{option} {v} is out of range", "give a weight of 10..1000, e.g. /dev/sda:200")
    elif field.endswith("_bps"):
        n = parse_bytes(raw, option)
        if n < 0:
            raise CgagentError(f"{option} {v}: a rate cannot be unlimited here", "give 0 to remove the limit")
    else:
        n = parse_int(raw, option)
        if n < 0:
            raise CgagentError(f"{option} {v} is negative", "give operations per second, or 0 to remove the limit")
    return block_device(dev, option), n


def _io_device_field(field: str) -> Any:
    def parse(v: Any) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list | tuple) or len(items) > MAX_IO_DEVICES:
            raise CgagentError(f"{_IO_OPTION[field]} takes at most {MAX_IO_DEVICES} DEVICE:VALUE entries",
                               "give fewer devices")
        out: dict[str, int] = {}
        for item in items:
            dev, n = parse_io_device(field, item)
            out[dev] = n   # the last one given for a device wins, as for every other option
        return tuple(f"{d} {n}" for d, n in out.items())
    return parse


def io_devices(entries: tuple[str, ...] | None) -> list[tuple[int, int, int]]:
    """("MAJ:MIN VALUE", ...) -> [(major, minor, value)]."""
    out = []
    for e in entries or ():
        dev, _, n = e.partition(" ")
        major, _, minor = dev.partition(":")
        out.append((int(major), int(minor), int(n)))
    return out


def merge_io_devices(base: tuple[str, ...] | None, change: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """`update`: a device given replaces that device's entry; the others stay."""
    if change is None:
        return base
    out = {e.partition(" ")[0]: e for e in base or ()}
    out.update({e.partition(" ")[0]: e for e in change})
    return tuple(out.values())


FIELD_PARSERS: dict[str, Any] = {
    "cpus": field_cpus,
    "cpu_shares": field_shares,
    "cpu_weight": field_weight,
    "cpu_period": field_period,
    "memory": field_memory,
    "memory_swap": field_memory_swap,
    "pids_limit": field_pids,
    "cpuset_cpus": field_cpuset("--cpuset-cpus"),
    "cpuset_mems": field_cpuset("--cpuset-mems"),
    "blkio_weight": field_blkio_weight,
    **{f: _io_device_field(f) for f in IO_DEVICE_FIELDS},
}


def parse_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """User strings -> typed values, field by field (no host checks yet)."""
    return {k: FIELD_PARSERS[k](v) for k, v in raw.items() if v is not None}


def _check_swap(memory: int | None, swap: int | None, memory_given: bool, swap_given: bool) -> None:
    """--memory-swap is memory plus swap: it needs a memory limit and at least that much. On `update`
    a flag left out keeps the workload's current value, and the message says which one it is."""
    if swap is None or swap < 0 or not (memory_given or swap_given):
        return
    mem = "--memory" if memory_given else "the workload's memory limit"
    if memory is None or memory < 0:
        raise CgagentError(f"--memory-swap {flag_bytes(swap)} needs a memory limit (it is memory plus swap), "
                           f"and {'--memory is unlimited' if memory_given else 'the workload has none'}",
                           "give --memory too, e.g. --memory 256M --memory-swap 512M")
    if swap < memory:
        what = "--memory-swap" if swap_given else "the workload's --memory-swap"
        raise CgagentError(f"{what} {flag_bytes(swap)} is smaller than {mem} {flag_bytes(memory)}",
                           f"give --memory-swap of at least {flag_bytes(memory)} (memory plus swap), "
                           "or -1 for unlimited swap")


def plan(values: dict[str, Any], host: Host, base: Resources | None = None) -> Resources:
    """Typed option values -> Resources, checked against this host and against each other."""
    base = base or Resources()
    cpus = values.get("cpus")
    period = values.get("cpu_period", base.cpu_period)
    quota = base.cpu_quota
    if cpus is not None:
        online = len(host.online_cpus) or 1
        if cpus > online:
            raise CgagentError(f"--cpus {cpus:g} is more than the {online} online CPUs", f"give at most {online}")
        quota = convert.cpus_to_quota(cpus, period or convert.DEFAULT_PERIOD_US)
        if quota < MIN_QUOTA_US:
            raise CgagentError(f"--cpus {cpus:g} is below the kernel's minimum quota of {MIN_QUOTA_US} µs "
                               f"per {period or convert.DEFAULT_PERIOD_US} µs period",
                               "give at least 0.01 CPUs (with the default period)")
    elif "cpu_period" in values and base.cpu_quota is not None and base.cpu_quota > 0:
        # keep the same CPU fraction when only the period changes
        quota = round(base.cpu_quota * values["cpu_period"] / (base.cpu_period or convert.DEFAULT_PERIOD_US))
    if "cpu_shares" in values and "cpu_weight" in values:
        raise CgagentError("--cpu-shares and --cpu-weight both given",
                           "give one: shares (v1 scale) or weight (v2 scale)")
    shares = values.get("cpu_shares", None if "cpu_weight" in values else base.cpu_shares)
    weight = values.get("cpu_weight", None if "cpu_shares" in values else base.cpu_weight)
    memory = values.get("memory", base.memory)
    swap = values.get("memory_swap", base.memory_swap)
    _check_swap(memory, swap, "memory" in values, "memory_swap" in values)
    for key, option, allowed in (("cpuset_cpus", "--cpuset-cpus", host.online_cpus),
                                 ("cpuset_mems", "--cpuset-mems", host.online_mems)):
        if key in values:
            bad = [c for c in parse_cpu_list(values[key], option) if c not in allowed]
            if bad:
                raise CgagentError(f"{option} {values[key]} names {format_cpu_list(bad)}, not online",
                                   f"choose from {format_cpu_list(allowed)}")
    return Resources(
        cpu_shares=shares,
        cpu_weight=weight,
        cpu_quota=quota,
        cpu_period=period,
        memory=memory,
        memory_swap=swap,
        pids_limit=values.get("pids_limit", base.pids_limit),
        cpuset_cpus=values.get("cpuset_cpus", base.cpuset_cpus),
        cpuset_mems=values.get("cpuset_mems", base.cpuset_mems),
        devices=base.devices,
        blkio_weight=values.get("blkio_weight", base.blkio_weight),
        **{f: merge_io_devices(getattr(base, f), values.get(f)) for f in IO_DEVICE_FIELDS},
    )

"""v2 io: io.weight ("default W" and "MAJ:MIN W"), io.max ("MAJ:MIN rbps=N wbps=N riops=N wiops=N",
max = no limit) and the io.stat counters."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.limits import Resources, io_devices

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from cgagent.cgroups.stats import DeviceIo, IoUsage

NAME = "io"
LIMIT_FILES = ("io.max",)
_MAX_KEYS = {"device_read_bps": "rbps", "device_write_bps": "wbps", "device_read_iops": "riops",
             "device_write_iops": "wiops"}


def apply(d: str, r: Resources) -> None:
    # io.weight is the iocost controller's; BFQ keeps its own io.bfq.weight (same syntax)
    weight = "io.weight" if os.path.exists(f"{d}/io.weight") else "io.bfq.weight"
    if r.blkio_weight is not None:
        fs.write(f"{d}/{weight}", f"default {r.blkio_weight}")
    for major, minor, n in io_devices(r.blkio_weight_device):
        fs.write(f"{d}/{weight}", f"{major}:{minor} {n}")
    per_dev: dict[str, list[str]] = {}
    for field, key in _MAX_KEYS.items():
        for major, minor, n in io_devices(getattr(r, field)):
            per_dev.setdefault(f"{major}:{minor}", []).append(f"{key}={n or 'max'}")
    for dev, keys in per_dev.items():   # keys not named keep their value
        fs.write(f"{d}/io.max", f"{dev} {' '.join(keys)}")


def usage(d: str) -> IoUsage:
    """io.stat summed over devices; all None when the controller is not enabled (no file)."""
    from cgagent.cgroups.stats import IoUsage

    try:
        text = fs.read(f"{d}/io.stat")
    except FileNotFoundError:
        return IoUsage()
    total = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for line in text.splitlines():
        for kv in line.split()[1:]:
            k, _, v = kv.partition("=")
            if k in total:
                total[k] += int(v)
    return IoUsage(read_bytes=total["rbytes"], write_bytes=total["wbytes"], read_ops=total["rios"],
                   write_ops=total["wios"])


def per_device(d: str) -> list[DeviceIo]:
    """io.stat per device ("MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=.."); [] without
    the io controller."""
    from cgagent.cgroups.stats import DeviceIo

    try:
        text = fs.read(f"{d}/io.stat")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        dev, *kvs = line.split()
        major, _, minor = dev.partition(":")
        st = dict(kv.partition("=")[::2] for kv in kvs)
        out.append(DeviceIo(int(major), int(minor), int(st.get("rbytes", 0)), int(st.get("wbytes", 0)),
                            int(st.get("rios", 0)), int(st.get("wios", 0))))
    return out


def max_rules(d: str) -> dict[str, dict[str, int]]:
    """Resources field -> {"MAJ:MIN": value} of io.max now (no limit: absent)."""
    out: dict[str, dict[str, int]] = {f: {} for f in _MAX_KEYS}
    keys = {v: k for k, v in _MAX_KEYS.items()}
    try:
        text = fs.read(f"{d}/io.max")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        dev, *kvs = line.split()
        for kv in kvs:
            k, _, v = kv.partition("=")
            if k in keys and v != "max":
                out[keys[k]][dev] = int(v)
    return out

"""v1 devices: devices.deny "a" (deny everything), then one devices.allow line per rule.

Rewritten only when devices.list differs: the kernel refuses "a" on a cgroup with children (a
workload's own sub-cgroups), and a live `update` must not open a window where /dev/null fails.
"""

from __future__ import annotations

from cgagent.cgroups import fs
from cgagent.limits import Resources

NAME = "devices"


def apply(d: str, r: Resources) -> None:
    if r.devices is None:
        return
    if set(fs.read(f"{d}/devices.list").split("\n")) - {""} == set(r.devices):
        return
    fs.write(f"{d}/devices.deny", "a")
    for rule in r.devices:
        fs.write(f"{d}/devices.allow", rule)

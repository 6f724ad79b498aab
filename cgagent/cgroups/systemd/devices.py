"""systemd devices: `DevicePolicy=strict` plus one `DeviceAllow=` per rule. systemd applies them
itself (devices.allow on v1, its own BPF device program on v2) and re-applies them on daemon-reload.

DeviceAllow names a node path or a whole class: `/dev/char/1:3` (systemd parses the numbers, so no
node needs to exist), `char-*` (every character device), `char-pts` (the majors /proc/devices
names pts).
"""

from __future__ import annotations

from typing import Any

from cgagent.devrules import WILDCARD, parse_all, proc_devices
from cgagent.errors import CgagentError
from cgagent.limits import Resources

Property = tuple[str, tuple[str, Any]]
_CLASS = {"c": "char", "b": "block"}


def properties(r: Resources) -> list[Property]:
    if r.devices is None:
        return []
    names: dict[tuple[str, int], str] | None = None
    allow: list[tuple[str, str]] = []
    for rule in parse_all(r.devices):
        cls = _CLASS[rule.kind]
        if rule.major == WILDCARD:
            if rule.minor != WILDCARD:
                raise CgagentError(f"device rule {rule} (any major, one minor) cannot be a systemd DeviceAllow=",
                                   "give a major number too, or use --cgroup-driver cgroupfs")
            allow.append((f"{cls}-*", rule.access))
        elif rule.minor == WILDCARD:
            names = proc_devices() if names is None else names
            name = names.get((rule.kind, rule.major))
            if name is None:
                raise CgagentError(f"device rule {rule}: no driver has major {rule.major} in /proc/devices, "
                                   "and systemd's DeviceAllow= names a whole major by its driver",
                                   "give the minor number too, or use --cgroup-driver cgroupfs")
            allow.append((f"{cls}-{name}", rule.access))
        else:
            allow.append((f"/dev/{cls}/{rule.major}:{rule.minor}", rule.access))
    return [("DevicePolicy", ("s", "strict")), ("DeviceAllow", ("a(ss)", allow))]

"""What this host offers: cgroup mode (v1, hybrid, v2), usable controllers, init system, CPUs.

Reads /proc/self/mountinfo, /proc/cgroups, /proc/self/cgroup and sysfs; nothing is written.
`proc` and `sys` roots are parameters so fixture trees can stand in for a real host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cgagent.units import parse_cpu_list

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "devices", "blkio")
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io")
# used when present, not reported missing: disk I/O control is an addition, not a requirement to run
OPTIONAL = ("blkio", "io")


@dataclass
class Host:
    """What this machine's cgroups are: the mode, the mounts, the controllers, our own cgroup."""

    mode: str                                   # "v1" | "hybrid" | "v2" | "none"
    v1_mounts: dict[str, str] = field(default_factory=dict)   # controller -> mount point
    v2_mount: str | None = None                 # the cgroup2 mount point (unified or hybrid)
    v2_controllers: list[str] = field(default_factory=list)   # available at the v2 root
    enabled_v1: list[str] = field(default_factory=list)       # enabled in /proc/cgroups
    own_cgroup: dict[str, str] = field(default_factory=dict)  # controller ("" for v2) -> our path
    init_is_systemd: bool = False
    online_cpus: list[int] = field(default_factory=list)
    online_mems: list[int] = field(default_factory=list)

    @property
    def is_v2(self) -> bool:
        return self.mode == "v2"

    def usable(self) -> list[str]:
        if self.is_v2:
            return [c for c in V2_CONTROLLERS if c in self.v2_controllers]
        return [c for c in V1_CONTROLLERS if c in self.v1_mounts]

    def missing(self) -> list[str]:
        want = V2_CONTROLLERS if self.is_v2 else V1_CONTROLLERS
        have = self.usable()
        return [c for c in want if c not in have and c not in OPTIONAL]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def parse_mountinfo(text: str) -> tuple[dict[str, str], str | None]:
    """-> (v1 controller -> mount point, cgroup2 mount point)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype, _source, superopts = [*right.split(), "", "", ""][:3]
        mountpoint = left.split()[4].replace("\\040", " ")
        if fstype == "cgroup2":
            # prefer the canonical mount; a second cgroup2 mount elsewhere (e.g. a test's) is ignored
            if v2 is None or mountpoint == "/sys/fs/cgroup":
                v2 = mountpoint
        elif fstype == "cgroup":
            for opt in superopts.split(","):
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = mountpoint
    return v1, v2


def parse_proc_cgroups(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[3] == "1":
            out.append(parts[0])
    return out


def parse_self_cgroup(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, ctrls, path = parts
        if ctrls == "":
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


def detect(proc: str = "/proc", sys: str = "/sys") -> Host:
    v1, v2 = parse_mountinfo(_read(f"{proc}/self/mountinfo"))
    enabled = parse_proc_cgroups(_read(f"{proc}/cgroups"))
    v1 = {c: m for c, m in v1.items() if c in enabled}
    if v2 and not v1:
        mode = "v2"
    elif v1 and v2:
        mode = "hybrid"
    elif v1:
        mode = "v1"
    else:
        mode = "none"
    v2_ctrls = _read(f"{v2}/cgroup.controllers").split() if v2 else []
    comm = _read(f"{proc}/1/comm").strip()
    return Host(
        mode=mode,
        v1_mounts=v1,
        v2_mount=v2,
        v2_controllers=v2_ctrls,
        enabled_v1=enabled,
        own_cgroup=parse_self_cgroup(_read(f"{proc}/self/cgroup")),
        init_is_systemd=comm == "systemd",
        online_cpus=parse_cpu_list(_read(f"{sys}/devices/system/cpu/online") or "0", "online cpus"),
        online_mems=parse_cpu_list(_read(f"{sys}/devices/system/node/online") or "0", "online nodes"),
    )

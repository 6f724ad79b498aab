"""cgroup v1 (and hybrid) cgroupfs driver: one directory per controller hierarchy."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.manager import CgroupManager
from cgagent.cgroups.v1 import blkio, cpu, cpuacct, cpuset, devices, freezer, memory, pids
from cgagent.errors import CgagentError
from cgagent.limits import Resources

CONTROLLERS = {m.NAME: m for m in (cpuset, cpu, cpuacct, memory, pids, freezer, devices, blkio)}


class V1Manager(CgroupManager):
    mode = "v1"

    def _unique(self) -> list[str]:
        seen: list[str] = []
        for d in self.dirs.values():
            if d not in seen:
                seen.append(d)
        return seen

    def _main_dir(self) -> str:
        for c in ("pids", "memory", "cpu", "freezer"):
            if c in self.dirs:
                return self.dirs[c]
        return next(iter(self.dirs.values()))

    def create(self) -> None:
        for ctrl, d in self.dirs.items():
            if ctrl == "cpuset":
                _make_cpuset(d)
            else:
                os.makedirs(d, exist_ok=True)

    def apply(self, pid: int) -> None:
        for d in self._unique():
            fs.write(f"{d}/cgroup.procs", pid)

    def set(self, r: Resources) -> None:
        if "io" in r.controllers() and "blkio" not in self.dirs:
            raise CgagentError("disk I/O limits need the blkio controller, which is not mounted",
                               "mount the v1 blkio hierarchy, or drop the --blkio-*/--device-*-bps/iops options")
        for ctrl, d in self.dirs.items():
            CONTROLLERS[ctrl].apply(d, r)

    def procs(self) -> list[int]:
        out: list[int] = []
        root = self._main_dir()
        if not os.path.isdir(root):
            return out
        for d in fs.subdirs_bottom_up(root):
            out.extend(fs.procs(d))
        return out

    def freeze(self) -> None:
        freezer.set_state(self._freezer_dir(), True)

    def thaw(self) -> None:
        freezer.set_state(self._freezer_dir(), False)

    def _freezer_dir(self) -> str:
        if "freezer" not in self.dirs:
            raise CgagentError("pausing needs the v1 freezer controller, which is not mounted",
                               "mount it: mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer")
        return self.dirs["freezer"]

    def kill(self) -> None:
        frozen = "freezer" in self.dirs and os.path.isdir(self.dirs["freezer"])
        try:
            if frozen:
                self.freeze()
            try:
                fs.kill_all(self.procs())
            finally:
                if frozen:
                    self.thaw()
        except (OSError, CgagentError):
            # the workload's own supervisor may finish it (and rmdir the cgroup) while we kill
            if os.path.isdir(self.dirs.get("freezer") or next(iter(self.dirs.values()))):
                raise

    def remove(self) -> None:
        for d in self._unique():
            fs.rmdir_tree(d)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs.values())


def _make_cpuset(d: str) -> None:
    """mkdir -p, then fill cpus/mems of every empty level from its parent, top down.

    v1 starts a cpuset empty, and an empty cpuset takes no tasks. A parent that a concurrent launch
    has just made may still be empty when we see it, so emptiness, not "we made it", decides.
    """
    os.makedirs(d, exist_ok=True)
    empty: list[str] = []
    cur = d
    while not all(fs.read(f"{cur}/cpuset.{f}").strip() for f in ("cpus", "mems")):
        empty.append(cur)
        cur = os.path.dirname(cur)
    for level in reversed(empty):
        cpuset.prepare(level)

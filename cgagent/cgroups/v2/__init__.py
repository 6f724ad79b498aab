"""cgroup v2 cgroupfs driver: one unified directory; controllers enabled down our own path."""

from __future__ import annotations

import os

from cgagent.cgroups import fs
from cgagent.cgroups.manager import CgroupManager
from cgagent.cgroups.parents import Made
from cgagent.cgroups.v2 import cpu, cpuset, devices, freeze, io, memory, pids
from cgagent.errors import CgagentError
from cgagent.limits import Resources

CONTROLLERS = (cpu, cpuset, memory, pids, io)


class V2Manager(CgroupManager):
    mode = "v2"

    def __init__(self, dirs: dict[str, str], mount: str = "/sys/fs/cgroup", base: str | None = None) -> None:
        super().__init__(dirs)
        self.dir = dirs[""]
        self.mount = mount
        # Where our own path starts: subtree_control is only written from here down.
        self.base = base or mount

    def create(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        self._enable_controllers()

    def _levels(self) -> list[str]:
        """base, then each directory down to our parent."""
        rel = os.path.relpath(os.path.dirname(self.dir), self.base)
        levels = [self.base]
        if rel != ".":
            for part in rel.split("/"):
                levels.append(os.path.join(levels[-1], part))
        return levels

    @staticmethod
    def _to_enable(level: str) -> list[str]:
        available = fs.read(f"{level}/cgroup.controllers").split()
        enabled = fs.read(f"{level}/cgroup.subtree_control").split()
        return [c.NAME for c in CONTROLLERS if c.NAME in available and c.NAME not in enabled]

    def made_by_create(self) -> Made:
        """Also the controllers create() enables in the subtree_control of the level above the first
        directory it makes (deeper levels go with their directories): they are turned off again when
        that directory goes, so the host's subtree_control ends as it was."""
        out = super().made_by_create()
        top = min((d for d in out.dirs if d.startswith(self.base + "/")), key=len, default=None)
        if top is not None:
            want = self._to_enable(os.path.dirname(top))
            if want:
                out.subtree.append((os.path.dirname(top), top, want))
        return out

    def _enable_controllers(self) -> None:
        """Write +ctrl into cgroup.subtree_control of each level from base to our parent."""
        for level in self._levels():
            want = self._to_enable(level)
            if want:
                try:
                    fs.write(f"{level}/cgroup.subtree_control", " ".join(f"+{c}" for c in want))
                except CgagentError as e:
                    raise CgagentError(
                        f"cannot enable {' '.join(want)} in {level}: {e.problem}",
                        "a cgroup with processes cannot delegate (v2 'no internal processes'); "
                        "use an absolute --cgroup-parent") from None

    def apply(self, pid: int) -> None:
        fs.write(f"{self.dir}/cgroup.procs", pid)

    def clone_target(self) -> str | None:
        return self.dir

    def set(self, r: Resources) -> None:
        enabled = self._enabled()
        missing = [c for c in r.controllers() if c not in enabled]
        if missing:
            raise CgagentError(f"controller {', '.join(missing)} is not enabled for {self.dir}",
                               "see `cgagent doctor` for how to enable it")
        for c in CONTROLLERS:
            if c.NAME in enabled:
                c.apply(self.dir, r)
        devices.apply(self.dir, r)   # a BPF program, not a controller of cgroup.controllers

    def _enabled(self) -> list[str]:
        try:
            return fs.read(f"{self.dir}/cgroup.controllers").split()
        except FileNotFoundError:
            return []

    def procs(self) -> list[int]:
        out: list[int] = []
        if not os.path.isdir(self.dir):
            return out
        for d in fs.subdirs_bottom_up(self.dir):
            out.extend(fs.procs(d))
        return out

    def freeze(self) -> None:
        freeze.set_frozen(self.dir, True)

    def thaw(self) -> None:
        freeze.set_frozen(self.dir, False)

    def kill(self) -> None:
        if os.path.exists(f"{self.dir}/cgroup.kill"):
            fs.write(f"{self.dir}/cgroup.kill", 1)
            return
        self.freeze()
        try:
            fs.kill_all(self.procs())
        finally:
            self.thaw()

    def remove(self) -> None:
        fs.rmdir_tree(self.dir)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

"""systemd cgroup driver: each workload is a transient scope `cgagent-<name>.scope` in a slice.

systemd owns the cgroup tree when it is init; limits written to cgroupfs behind its back are
reverted on the next daemon-reload. So every limit is a unit property (StartTransientUnit at
creation, SetUnitProperties for live updates), and only reads (stats, procs, OOM counter) go to the
scope's cgroup files, through the cgroupfs managers on the directories systemd reports.

A scope needs its PIDs when it is created, so `set()` before `apply()` only stores the limits, and
`apply(pid)` creates the scope with the pid and the limits at once (the child waits meanwhile).
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from cgagent.cgroups.manager import CgroupManager
from cgagent.cgroups.parents import Made, slice_path
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources

if TYPE_CHECKING:
    from cgagent.cgroups.stats import Stats
    from cgagent.cgroups.systemd.dbus import Systemd

DEFAULT_SLICE = "cgagent.slice"
UNIT_PREFIX = "cgagent-"
# v1 hierarchies systemd 252 does not manage (cpuacct only when not co-mounted as cpu,cpuacct)
_UNMANAGED_V1 = ("cpuacct", "cpuset", "freezer")

__all__ = ["DEFAULT_SLICE", "SystemdManager", "slice_for", "slice_path", "unit_name"]


def unit_name(name: str) -> str:
    return f"{UNIT_PREFIX}{name}.scope"


def slice_for(parent: str | None) -> str:
    """--cgroup-parent -> the slice; a path is mapped (/a/b = a-b.slice, the default /cgagent =
    cgagent.slice: see cgagent.cgroups.parents)."""
    from cgagent.cgroups.parents import as_slice

    return as_slice(parent, DEFAULT_SLICE)


def _dirs_for(host: Host, cgroup_path: str, existing_only: bool) -> dict[str, str]:
    if host.is_v2:
        return {"": os.path.normpath(f"{host.v2_mount or '/sys/fs/cgroup'}/{cgroup_path}")}
    dirs = {c: os.path.normpath(f"{m}/{cgroup_path}") for c, m in host.v1_mounts.items()}
    if existing_only:
        # systemd realises a scope only in the v1 hierarchies it manages (not cpuset/freezer)
        dirs = {c: d for c, d in dirs.items() if os.path.isdir(d)}
    return dirs


def _cgroup_of(pid: int, v2: bool) -> str | None:
    """The process's cgroup as the kernel shows it to us: v2's path, or on v1 systemd's own
    hierarchy's (name=systemd), where a scope's path is the one systemd reports as ControlGroup."""
    from cgagent.host import parse_self_cgroup

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read(65536)
    except OSError:
        return None
    return parse_self_cgroup(text).get("" if v2 else "name=systemd")


class SystemdManager(CgroupManager):
    driver = "systemd"

    def __init__(self, host: Host, unit: str, slice_: str, dirs: dict[str, str] | None = None,
                 owned: bool = False) -> None:
        """`owned`: the scope is ours (we started it, or a record names it). Only an owned scope is
        ever stopped, so a failed create never touches a unit another program made."""
        self.host = host
        self.mode = "v2" if host.is_v2 else "v1"
        self.unit = unit
        self.slice = slice_
        self.owned = owned
        self._pending = Resources()
        self._unit_state: str | None = None   # made_by_create's look at the unit, for create()
        # a process of cgagent's own in the scope (cgagent.runtime), so that systemd does not remove
        # the scope's cgroup before its OOM counter is read: not one of the workload's processes
        self.keeper: int | None = None
        # --stop-signal/--stop-timeout (cgagent.runtime): what `systemctl stop` of the scope sends and waits
        self.stop: tuple[int, float] | None = None
        self.cgroup_path = os.path.normpath(f"{slice_path(slice_)}/{unit}")   # systemd's ControlGroup
        super().__init__(dirs if dirs is not None else _dirs_for(host, self.cgroup_path, existing_only=False))

    @classmethod
    def for_workload(cls, host: Host, parent: str | None, name: str) -> SystemdManager:
        return cls(host, unit_name(name), slice_for(parent))

    # --- connection

    def _bus(self) -> Systemd:
        from cgagent.cgroups.systemd.connection import connection

        return connection()

    def close(self) -> None:
        from cgagent.cgroups.systemd.connection import release

        release()

    def _fs(self) -> CgroupManager:
        from cgagent.cgroups.cgroupfs import manager_for

        return manager_for(self.host, self.dirs)

    def _states(self, units: list[str]) -> dict[str, str]:
        """ActiveState of each loaded unit of `units` (one ListUnitsByNames; absent = not loaded)."""
        from cgagent.cgroups.systemd.dbus import SystemdError

        bus = self._bus()
        try:
            (rows,) = bus.call("ListUnitsByNames", "as", (units,))
        except SystemdError as e:   # systemd < 230: one unit at a time
            if e.dbus_name != "org.freedesktop.DBus.Error.UnknownMethod":
                raise
            out = {}
            for u in units:
                path = bus.unit_path(u)
                if path is not None:
                    out[u] = str(bus.get(path, "Unit", "ActiveState"))
            return out
        return {str(r[0]): str(r[3]) for r in rows if r[2] != "not-found"}

    # --- lifecycle

    def effective(self, r: Resources) -> Resources:
        from cgagent.cgroups.systemd import properties

        return properties.effective(r)

    def made_by_create(self) -> Made:
        """The slices our scope will start (its slice and the ones above it, -.slice aside) that are not
        active yet: stopped again once no workload of ours is in them. The same look tells create()
        whether the unit name is free."""
        stem = self.slice[: -len(".slice")]
        parts = stem.split("-") if stem != "-" else []
        chain = ["-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))]
        states = self._states([self.unit, *chain])
        self._unit_state = states.get(self.unit, "")
        out = Made()
        out.slices = [s for s in chain if states.get(s) != "active"]
        return out

    def join(self, pid: int) -> None:
        """`exec`, or a restart reusing the scope its keeper holds: put `pid` into the running scope
        (Delegate=yes allows it) instead of starting a new unit. AttachProcessesToUnit (systemd >= 238)
        moves it in every hierarchy systemd manages, so systemd counts it with the scope (KillUnit,
        TasksMax); on v1 the hierarchies systemd leaves alone (cpuset, freezer) are written here."""
        from cgagent.cgroups import fs
        from cgagent.cgroups.systemd.dbus import SystemdError

        try:
            self._bus().call("AttachProcessesToUnit", "ssau", (self.unit, "", [pid]))
        except SystemdError as e:
            if e.dbus_name != "org.freedesktop.DBus.Error.UnknownMethod":
                raise
            for d in self.dirs.values():   # an older systemd: the delegated cgroup is ours to write
                fs.write(f"{d}/cgroup.procs", pid)
        finally:
            self.close()
        if self.mode == "v1":
            for ctrl in _UNMANAGED_V1:
                if ctrl in self.dirs:
                    fs.write(f"{self.dirs[ctrl]}/cgroup.procs", pid)

    def rejoin(self, pid: int) -> bool:
        """join() for a restart into the scope its keeper held when looked at: False when the scope has
        gone since (the keeper died meanwhile), then renew() makes it anew."""
        from cgagent.cgroups.systemd.dbus import NO_SUCH_UNIT, UNIT_INACTIVE, SystemdError

        try:
            self.join(pid)
        except SystemdError as e:
            if e.dbus_name not in (NO_SUCH_UNIT, UNIT_INACTIVE):
                raise
            return False
        return True

    def renew(self, r: Resources, slice_: str) -> None:
        """A restart whose scope went with its keeper: the next apply() makes it anew in `slice_` with
        `r` (the record's limits now, as update and the policies left them; this manager may have been
        made from the record, knowing none). A scope systemd has not yet seen empty still holds the
        name: it is stopped first, what is left in it killed at once (the last run's processes: no
        stop timeout to wait out before the restart)."""
        self.owned, self._pending, self.keeper, self.slice = False, r, None, slice_
        self.cgroup_path = os.path.normpath(f"{slice_path(slice_)}/{self.unit}")
        self.dirs = _dirs_for(self.host, self.cgroup_path, existing_only=False)
        try:
            if self._states([self.unit]).get(self.unit, "") not in ("", "inactive"):
                self.kill()     # all of it (no keeper now)
                self.remove()   # apply() makes the v1 hierarchies systemd does not manage anew
        finally:
            self.close()

    def reserve(self) -> None:
        """Nothing: the parents are slices systemd makes and removes (create() asks it over D-Bus,
        not under the store lock)."""

    def create(self) -> None:
        """Check that systemd answers and that the unit name is free (a failed leftover is reset)."""
        state, self._unit_state = self._unit_state, None
        if state is None:   # not looked at by made_by_create()
            state = self._states([self.unit]).get(self.unit, "")
        if state == "failed":
            self._bus().call("ResetFailedUnit", "s", (self.unit,))
            state = self._states([self.unit]).get(self.unit, "")
        if state not in ("", "inactive"):
            raise CgagentError(f"the systemd unit {self.unit} already exists ({state})",
                               "another program owns that name: choose another --name")

    def set(self, r: Resources) -> None:
        from cgagent.cgroups.systemd import properties

        props = properties.limits(self.effective(r), self.mode)   # raises for what the mode cannot do
        v1_cpuset = self.mode == "v1" and (r.cpuset_cpus is not None or r.cpuset_mems is not None)
        if v1_cpuset and "cpuset" not in self.host.v1_mounts:
            raise CgagentError("--cpuset-cpus/--cpuset-mems need the cpuset controller, which is not mounted",
                               "mount the v1 cpuset hierarchy, or drop them")
        if not self.owned:
            self._pending = r
            return
        if props:
            self._bus().call("SetUnitProperties", "sba(sv)", (self.unit, True, props))
        if v1_cpuset and "cpuset" in self.dirs:   # systemd has no v1 cpuset: ours to write
            from cgagent.cgroups.v1 import cpuset

            cpuset.apply(self.dirs["cpuset"], r)

    def apply(self, pid: int) -> None:
        from cgagent.cgroups.systemd import properties
        from cgagent.cgroups.systemd.dbus import SystemdError

        pid = pid or os.getpid()
        props = properties.scope(f"cgagent workload {self.unit[len(UNIT_PREFIX):-len('.scope')]}",
                                 self.slice, pid) + properties.limits(self.effective(self._pending), self.mode)
        pids = [pid, *self.also, *([self.keeper] if self.keeper is not None else [])]
        if len(pids) > 1:
            props = [("PIDs", ("au", pids)) if k == "PIDs" else (k, v) for k, v in props]
        if self.stop is not None:
            props += [("KillSignal", ("i", self.stop[0])), ("TimeoutStopUSec", ("t", int(self.stop[1] * 1e6)))]
        bus = self._bus()
        self.owned = True   # from here a scope may exist: cleanup must stop it
        try:
            result = bus.job("StartTransientUnit", "ssa(sv)a(sa(sv))", (self.unit, "fail", props, []))
        except SystemdError:
            self.owned = False   # refused outright: systemd created nothing
            raise
        if result != "done":
            raise CgagentError(f"systemd could not start {self.unit}: its job ended {result!r}",
                               f"see `journalctl -u {self.unit}` and `systemctl status {self.slice}`")
        if _cgroup_of(pid, self.host.is_v2) != self.cgroup_path:
            # not where the slice's name puts it (systemd in a container of its own reports paths
            # from its root): ask systemd where the scope is
            path = bus.unit_path(self.unit)
            if path is None:
                raise CgagentError(f"{self.unit} ended as soon as it started", "the process exited at once")
            self.cgroup_path = str(bus.get(path, "Scope", "ControlGroup"))
        self.dirs = _dirs_for(self.host, self.cgroup_path, existing_only=True)
        self.close()   # the supervisor may hold this manager for days: don't keep a socket open
        if self.mode == "v1":
            self._join_unmanaged(pid)

    def _join_unmanaged(self, pid: int) -> None:
        """v1: systemd realises the scope only in the hierarchies it manages. In cpuset, freezer and a
        cpuacct mounted on its own (not as cpu,cpuacct), put the workload at the same path ourselves,
        as runc's systemd driver does, so --cpuset-*, CPU usage and freezing work. systemd never
        writes these hierarchies, so nothing of ours can be reverted; remove() takes them away."""
        from cgagent.cgroups import fs
        from cgagent.cgroups.v1 import _make_cpuset, cpuset

        for ctrl in _UNMANAGED_V1:
            mount = self.host.v1_mounts.get(ctrl)
            if mount is None or ctrl in self.dirs:
                continue
            d = os.path.normpath(f"{mount}/{self.cgroup_path}")
            self.dirs[ctrl] = d
            if ctrl == "cpuset":
                _make_cpuset(d)   # a new v1 cpuset is empty: filled from its parent, then limited
                cpuset.apply(d, self._pending)
            else:
                os.makedirs(d, exist_ok=True)
            fs.write(f"{d}/cgroup.procs", pid)

    def stats(self) -> Stats:
        s = super().stats()
        if self.keeper is not None and s.pids and self.keeper in self._fs().procs():
            s.pids -= 1
        return s

    def procs(self) -> list[int]:
        return [p for p in self._fs().procs() if p != self.keeper]

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs.values())

    def freeze(self) -> None:
        self._freezer("FreezeUnit")

    def thaw(self) -> None:
        self._freezer("ThawUnit")

    def _freezer(self, method: str) -> None:
        if self.mode == "v2":
            from cgagent.cgroups.v2.freeze import wait_frozen

            # systemd may answer before the kernel has finished: cgroup.events says when it has
            try:
                wait_frozen(self.dirs[""], method == "FreezeUnit",
                            start=lambda: self._bus().call(method, "s", (self.unit,)))
            finally:
                self.close()
        elif "freezer" in self.dirs:   # v1: the freezer hierarchy we joined (systemd has no v1 freezer)
            fs_mgr = self._fs()
            fs_mgr.freeze() if method == "FreezeUnit" else fs_mgr.thaw()
        else:
            raise CgagentError("freezing needs the freezer controller (v1) or cgroup v2",
                               "mount the freezer hierarchy, or use --cgroup-driver cgroupfs")

    def kill(self) -> None:
        from cgagent.cgroups.systemd.dbus import NO_SUCH_UNIT, SystemdError

        if self.keeper is not None:
            # not KillUnit: the keeper must hold the scope until its OOM counter is read (destroy)
            from cgagent.cgroups import fs

            for _ in range(100):   # a process forking while we kill: the next round gets its child
                left = self.procs() if self.exists() else []
                if not left:
                    return
                fs.kill_all(left)
            return
        try:
            self._bus().call("KillUnit", "ssi", (self.unit, "all", int(signal.SIGKILL)))
        except SystemdError as e:
            if e.dbus_name != NO_SUCH_UNIT:
                raise

    def remove(self) -> None:
        """StopUnit (systemd removes the cgroup), then forget a failed result so the name is free."""
        from cgagent.cgroups.systemd.dbus import NO_SUCH_UNIT, SystemdError

        bus = self._bus()
        try:
            if bus.unit_path(self.unit) is not None:   # else stopped and collected: nothing failed kept
                bus.job("StopUnit", "ss", (self.unit, "fail"))
                bus.call("ResetFailedUnit", "s", (self.unit,))
        except SystemdError as e:
            if e.dbus_name != NO_SUCH_UNIT:
                raise
        self._remove_unmanaged()

    def _remove_unmanaged(self, timeout: float = 5.0) -> None:
        """rmdir what systemd did not (the hierarchies _join_unmanaged filled), and the slice levels
        above it there when empty. The kernel has no event for "v1 cgroup empty": retry EBUSY."""
        import errno
        import time

        deadline = time.monotonic() + timeout
        for ctrl, d in self.dirs.items():
            mount = self.host.v1_mounts.get(ctrl)
            if ctrl not in _UNMANAGED_V1 or mount is None:
                continue
            cur = d
            while cur.startswith(mount + "/") and os.path.isdir(cur):
                try:
                    os.rmdir(cur)
                except OSError as e:
                    if e.errno == errno.EBUSY and cur == d and time.monotonic() < deadline:
                        time.sleep(0.005)
                        continue
                    break   # a slice level still used by another workload: leave it
                cur = os.path.dirname(cur)

    def destroy(self, timeout: float = 10.0) -> None:
        if not self.owned:
            return
        try:
            if self.exists() and self._fs().procs():
                self.keeper = None   # all of them now, the keeper too
                self.kill()   # StopUnit alone would SIGTERM and wait TimeoutStopSec (90 s)
            self.remove()
        finally:
            self.close()

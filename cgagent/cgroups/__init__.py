"""Cgroup drivers behind one interface: where a workload's cgroup lives, and who manages it."""

from __future__ import annotations

import os

from cgagent.cgroups.cgroupfs import manager_for
from cgagent.cgroups.manager import CgroupManager
from cgagent.cgroups.parents import as_path
from cgagent.cgroups.parents import validate_path as validate_parent
from cgagent.errors import CgagentError
from cgagent.host import Host

DEFAULT_PARENT = "/cgagent"

__all__ = ["DEFAULT_PARENT", "CgroupManager", "existing_manager", "manager_for", "new_manager", "resolve_dirs",
           "validate_parent"]


def _rel(host: Host, controller: str, parent: str) -> str:
    if parent.startswith("nested"):
        sub = parent.partition(":")[2].strip("/")
        own = host.own_cgroup.get(controller, "/")
        return os.path.join(own, sub) if sub else own
    return parent


def resolve_dirs(host: Host, parent: str, name: str) -> dict[str, str]:
    """Absolute directories of the workload `name` under `parent` (a path, or a slice: mapped), one per
    controller."""
    parent = as_path(parent)
    if host.is_v2:
        assert host.v2_mount
        rel = _rel(host, "", parent)
        return {"": os.path.normpath(f"{host.v2_mount}/{rel}/{name}")}
    if host.mode == "none":
        raise CgagentError("no cgroup filesystem is mounted", "mount cgroup2 on /sys/fs/cgroup (see `cgagent doctor`)")
    return {c: os.path.normpath(f"{m}/{_rel(host, c, parent)}/{name}") for c, m in host.v1_mounts.items()}


def new_manager(host: Host, driver: str, parent: str, name: str) -> CgroupManager:
    """The manager for a workload about to be created (its `dirs` say where its cgroup will be)."""
    if driver == "systemd":
        from cgagent.cgroups.systemd import SystemdManager

        return SystemdManager.for_workload(host, parent, name)
    return manager_for(host, resolve_dirs(host, parent, name))


def existing_manager(host: Host, driver: str, dirs: dict[str, str], unit: str | None = None) -> CgroupManager:
    """The manager for a workload a record describes."""
    if driver == "systemd":
        from cgagent.cgroups.systemd import SystemdManager, slice_for

        assert unit, "a systemd-driver record names its unit"
        # the slice only matters when creating the scope; an existing one is found by its unit name
        return SystemdManager(host, unit, slice_for(None), dirs=dirs, owned=True)
    return manager_for(host, dirs)

"""The cgroupfs driver's manager for a workload's directories: v2 or v1. Its own module (the package
re-exports it) so that the systemd driver, which reads through it, does not import the package that
imports the systemd driver."""

from __future__ import annotations

import os

from cgagent.cgroups.manager import CgroupManager
from cgagent.host import Host


def manager_for(host: Host, dirs: dict[str, str]) -> CgroupManager:
    if "" in dirs:
        from cgagent.cgroups.v2 import V2Manager

        mount = host.v2_mount or "/sys/fs/cgroup"
        own = host.own_cgroup.get("", "/")
        # Nested mode: subtree_control is ours to write only below our own cgroup.
        base = os.path.normpath(f"{mount}/{own}") if dirs[""].startswith(os.path.normpath(f"{mount}/{own}") + "/") \
            and own != "/" else mount
        return V2Manager(dirs, mount=mount, base=base)
    from cgagent.cgroups.v1 import V1Manager

    return V1Manager(dirs)

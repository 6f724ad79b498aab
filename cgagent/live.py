"""A recorded workload as the kernel sees it now: its cgroup manager and its live status.

Below the runtime, so that the network layer (`--net container:NAME`) can ask whether a workload
runs, and which are its processes, without importing the runtime that calls it.
"""

from __future__ import annotations

from cgagent import procs
from cgagent.cgroups import CgroupManager, existing_manager
from cgagent.host import Host
from cgagent.state import Record


def manager(host: Host, rec: Record) -> CgroupManager:
    mgr = existing_manager(host, rec.driver, rec.dirs, rec.unit)
    if rec.keeper_pid is not None and hasattr(mgr, "keeper"):
        mgr.keeper = rec.keeper_pid
    return mgr


def keeper_alive(rec: Record) -> bool:
    return rec.keeper_pid is not None and procs.alive(rec.keeper_pid, rec.keeper_start)


def supervisor_alive(rec: Record) -> bool:
    return procs.alive(rec.supervisor_pid, rec.supervisor_start)


def live_status(host: Host, rec: Record) -> str:
    """The truth from the kernel, not the record: a live cgroup with processes is running."""
    if rec.status == "exited":
        return "exited"
    mgr = manager(host, rec)
    try:
        if mgr.procs():
            return "running"
    except OSError:
        pass
    if rec.status == "created" and rec.pid is None:
        return "created"
    return "restarting" if rec.restart != "no" and supervisor_alive(rec) else "exited"

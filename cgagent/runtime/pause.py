"""pause / unpause: freeze every process of a workload in place (v1 freezer.state, v2 cgroup.freeze,
systemd FreezeUnit/ThawUnit) and thaw it again. A paused workload keeps its memory and its limits;
`stop` and `rm -f` of one work (cgagent.runtime.control thaws it as it kills)."""

from __future__ import annotations

from cgagent import events
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.live import live_status, manager
from cgagent.runtime.request import require_root
from cgagent.state import Record, Store


def is_paused(rec: Record) -> bool:
    """Is the workload's cgroup frozen now (the kernel's word, not the record's)?"""
    from cgagent.cgroups.readers import reader_for

    try:
        return bool(reader_for(rec.dirs).frozen())
    except (OSError, ValueError):
        return False


def pause(store: Store, host: Host, name: str) -> None:
    _set(store, host, name, True)


def unpause(store: Store, host: Host, name: str) -> None:
    _set(store, host, name, False)


def _set(store: Store, host: Host, name: str, frozen: bool) -> None:
    cmd = "pause" if frozen else "unpause"
    require_root(f"cgagent {cmd}")
    with store.lock():
        rec = store.load(name)
        if live_status(host, rec) != "running":
            raise CgagentError(f"workload {name!r} is not running", f"only a running workload can be {cmd}d")
        if is_paused(rec) == frozen:
            raise CgagentError(f"workload {name!r} is {'already' if frozen else 'not'} paused",
                               f"`cgagent {'unpause' if frozen else 'pause'} {name}` does the opposite")
        mgr = manager(host, rec)
        if frozen:
            mgr.freeze()
        else:
            mgr.thaw()
        events.append(store.root, cmd, name)

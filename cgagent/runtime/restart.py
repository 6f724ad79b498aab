"""`cgagent restart`: stop a workload, then start the same record again under a new detached
supervisor (as `docker restart`; an exited workload is started again). Beside control, not in it:
it starts workloads, so it needs the supervisor, which (through a policy's OOM answer) needs control."""

from __future__ import annotations

import contextlib
import time

from cgagent import oom, procs
from cgagent.cgroups import CgroupManager
from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.live import live_status, manager, supervisor_alive
from cgagent.runtime import starting
from cgagent.runtime.control import settle_orphan, stop
from cgagent.runtime.lifecycle import make, reserve_cgroup, teardown_isolation
from cgagent.runtime.parents import prune_parents
from cgagent.runtime.request import require_root
from cgagent.runtime.stopflag import clear_stop
from cgagent.state import Record, Store

# the last supervisor's end, after `stop` (which waits 10 s for it, then records the end itself)
LAST_SUPERVISOR_WAIT = 60.0


def restart(store: Store, host: Host, name: str, timeout: float | None = None) -> None:
    """`stop` (its stop signal, SIGKILL after `timeout`), then start the same record again under a new
    detached supervisor, as `docker restart`: also a workload that has exited. Its cgroup, overlay
    and network connection are made anew from the record (limits as `update` left them); the
    overlay's upper dir is fresh, since cgagent removes it at every exit."""
    require_root("cgagent restart")
    rec = _take_over_abandoned(store, host, name)
    if rec.auto_remove:
        raise CgagentError(f"workload {name!r} was run with --rm: stopping it removes it, so it cannot restart",
                           "run it again without --rm (with --restart for restarts)")
    if live_status(host, rec) != "exited":
        stop(store, host, name, timeout)
    settle_orphan(store, host, name)   # ended while no supervisor ran: its end is recorded first
    _last_supervisor_gone(store, name)
    rec, mgr = _recreate(store, host, name)
    from cgagent.runtime.supervisor import detach

    detach(store, host, rec, mgr, _back_to_exited)


def _take_over_abandoned(store: Store, host: Host, name: str) -> Record:
    """The record of `name`. One left "created" by a start that was killed (`run -d` or `restart`
    SIGKILLed after it saved the record; cgagent.runtime.starting) is taken over first: what that
    start made goes, the record says exited, and this restart starts it as it would any exited one."""
    with store.lock():
        rec = store.load(name)
        if rec.status != "created" or supervisor_alive(rec) or not starting.abandoned(store, name):
            return rec
        manager(host, rec).destroy()   # a child waiting to be placed, a systemd keeper the record does not name
        teardown_isolation(rec)
        rec.status, rec.finished = "exited", time.time()
        store.save(rec)
        return rec


def _last_supervisor_gone(store: Store, name: str) -> None:
    """Wait for the last run's supervisor to finish its work (the record, its scope's and slice's
    stop: D-Bus jobs a busy systemd can take seconds over, beyond `stop`'s own wait) and exit: a new
    supervisor for the same record must not start beside it."""
    rec = store.load(name)
    if supervisor_alive(rec) and rec.supervisor_pid is not None:
        procs.wait_exit(rec.supervisor_pid, rec.supervisor_start, LAST_SUPERVISOR_WAIT)


def _recreate(store: Store, host: Host, name: str) -> tuple[Record, CgroupManager]:
    """The cgroup and rootfs of an exited workload, made again from its record (as create() does)."""
    from cgagent.cgroups import existing_manager
    from cgagent.runtime.lifecycle import _slice_of
    from cgagent.runtime.parents import remember_parents

    with store.lock():
        rec = store.load(name)
        if supervisor_alive(rec) and rec.status == "exited":
            raise CgagentError(f"the supervisor of {name!r}'s last run (pid {rec.supervisor_pid}) has not exited "
                               f"within {LAST_SUPERVISOR_WAIT:g}s of its end",
                               f"run `cgagent restart {name}` again once it has (see `cgagent ps -a`)")
        if rec.status != "exited" or live_status(host, rec) != "exited" or supervisor_alive(rec):
            raise CgagentError(f"workload {name!r} was started again meanwhile", "see `cgagent ps`")
        if rec.driver == "systemd":
            from cgagent.cgroups.systemd import SystemdManager

            assert rec.unit
            mgr: CgroupManager = SystemdManager(host, rec.unit, _slice_of(rec))
        else:
            mgr = existing_manager(host, rec.driver, rec.dirs)
        if mgr.exists():
            raise CgagentError(f"cgroup {next(iter(rec.dirs.values()))} exists already",
                               f"another tool made it meanwhile; `cgagent rm -f {name}` and run it again")
        made = mgr.made_by_create()
        rec.status, rec.pid, rec.pid_start, rec.started, rec.finished = "created", None, None, None, None
        rec.supervisor_pid = rec.supervisor_start = rec.keeper_pid = rec.keeper_start = None
        rec.exit_code, rec.oom_kills, rec.policy_oom_seq, rec.detached = None, 0, 0, True
        starting.hold(store, name)
        store.save(rec)   # first, as create(): the record names what is about to be made
        oom.forget(store, name)   # a new instance: OOMKilled is about this run, as in docker
        clear_stop(store, name)
        fault("record")
        remember_parents(store, made)
        failed = reserve_cgroup(mgr)
    try:
        if failed is not None:
            raise failed
        spec = None
        if rec.isolation:
            from cgagent.isolation.spec import IsolationSpec

            spec = IsolationSpec.from_record(rec.isolation)
        make(mgr, spec, Resources.from_dict(rec.resources))
        fault("cgroup")
    except BaseException:
        _back_to_exited(store, rec, mgr)
        raise
    return rec, mgr


def _back_to_exited(store: Store, rec: Record, mgr: CgroupManager) -> None:
    """A restart that did not start: what it made goes, the record stays (exited), as before."""
    with contextlib.suppress(Exception):
        mgr.destroy()
    with contextlib.suppress(Exception):
        teardown_isolation(rec)
    with store.lock():
        with contextlib.suppress(CgagentError):
            cur = store.load(rec.name)
            if cur.created == rec.created:
                cur.status, cur.finished = "exited", time.time()
                store.save(cur)
        starting.release(rec.name)
        with contextlib.suppress(Exception):
            prune_parents(store)

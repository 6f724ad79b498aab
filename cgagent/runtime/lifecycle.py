"""A workload's life from request to record: create (record first, then its cgroup), start (the
process placed in its cgroup before it runs an instruction of its own), finish (how it ended, its
cgroup removed).

Every step that makes something on the machine is preceded by a record that names it, so a
crash at any point leaves state that `cgagent ps` reports and `cgagent rm -f` cleans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from cgagent import events, launch, oom, procopts, procs, zygote
from cgagent.cgroups import CgroupManager, new_manager
from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.host import Host
from cgagent.images import users as image_users
from cgagent.limits import Resources
from cgagent.live import keeper_alive, manager
from cgagent.procopts import HostProcess
from cgagent.runtime import starting
from cgagent.runtime.parents import prune_parents, remember_parents
from cgagent.runtime.request import RunRequest, parse_restart, require_root, select_driver
from cgagent.runtime.stopflag import clear_stop
from cgagent.state import Damaged, Record, Store, validate_name

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from cgagent.isolation.spec import IsolationSpec
    from cgagent.terminal import Console

    T = TypeVar("T")

# --- the keeper (systemd driver): systemd removes a scope's cgroup as soon as its last process has
# exited, before anyone could read the OOM counter in it, and no kernel counter outlives a v1 memory
# cgroup (v1 does not count kills in the parent). So each scope holds one process of cgagent's own
# from its creation until the supervisor (or `rm`) has read the counter and stops the scope: the
# kills of the workload's last process are then read from a cgroup that still exists, by design.
# It is excluded from the workload's processes (ps, stats, stop); it costs one task of TasksMax.

@dataclass(frozen=True)
class Keeper:
    """A keeper just made: it holds its scope, and becomes `sleep` only once a line on `handed` says
    the record names it (_record_started). Should the process that made it die first, the pipe's
    EOF ends it, and so the scope: a keeper no record names would hold a scope, and say "running",
    for good."""

    pid: int
    start: int
    handed: int   # the pipe's write end

    def hand_over(self) -> None:
        with contextlib.suppress(OSError):   # killed meanwhile: a restart makes a new scope
            os.write(self.handed, b"k\n")

    def close(self) -> None:
        """Handed over or not: without its line, the keeper reads EOF now and exits."""
        os.close(self.handed)


# a shell, not a copy of this process, waits for the line: small, and runs none of our code
_KEEPER = 'read -r k && [ "$k" = k ] && exec "$0" 2147483647'


def _spawn_keeper() -> Keeper:
    path = "/usr/bin:/bin:/usr/sbin:/sbin"
    sleep, sh = launch.which("sleep", path), launch.which("sh", path)
    if sleep is None or sh is None:
        raise CgagentError("`sleep` or `sh` is not installed (the systemd driver needs both)",
                           "install coreutils and dash")
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()   # not in the supervisor's process group: a Ctrl-C is not for it
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(r, 0)
            for fd in (1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)   # the caller's pipes among them: the workload's go-ahead too
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.execv(sh, ["sh", "-c", _KEEPER, sleep])
        finally:
            os._exit(127)
    os.close(r)
    return Keeper(pid, procs.start_time(pid) or 0, w)


def _slice_of(rec: Record) -> str:
    parent = os.path.basename(os.path.dirname(rec.cgroup))
    return parent if parent.endswith(".slice") else "-.slice"


def _cgroup_id(host: Host, dirs: dict[str, str]) -> str:
    if "" in dirs:
        return "/" + os.path.relpath(dirs[""], host.v2_mount or "/sys/fs/cgroup")
    for ctrl in ("cpu", "memory", "pids"):
        if ctrl in dirs:
            return "/" + os.path.relpath(dirs[ctrl], host.v1_mounts[ctrl])
    return "/"


# --- create / start / finish

def create(req: RunRequest, host: Host, store: Store) -> tuple[Record, CgroupManager]:
    require_root("cgagent run")
    name = validate_name(req.name) if req.name else f"w-{os.urandom(4).hex()}"
    driver = select_driver(host, req.driver)
    if not req.cmd:
        raise CgagentError("no command given", "put the command after --, e.g. cgagent run -- sleep 10")
    if parse_restart(req.restart)[0] != "no" and req.auto_remove:
        raise CgagentError("--rm and --restart exclude each other", "drop one of them")
    if not req.isolation:
        launch.require_command(req.cmd[0])
    mgr = new_manager(host, driver, req.parent, name)
    dirs = mgr.dirs
    resources = mgr.effective(req.resources)   # systemd rounds the CPU quota: record what the kernel holds
    with store.lock():
        if store.exists(name):
            raise CgagentError(f"the name {name!r} is already in use", f"choose another --name, or `cgagent rm {name}`")
        if mgr.exists():
            raise CgagentError(f"cgroup {next(iter(dirs.values()))} already exists",
                               "another tool owns it; choose another --name or --cgroup-parent")
        rec = Record(name=name, cmd=req.cmd, driver=driver, mode=mgr.mode, dirs=dirs,
                     cgroup=_cgroup_id(host, dirs), resources=resources.to_dict(), created=time.time(),
                     detached=req.detach, auto_remove=req.auto_remove, policy=req.policy,
                     unit=getattr(mgr, "unit", None), restart=req.restart,
                     isolation=req.isolation.to_record() if req.isolation is not None else {},
                     preserve_fds=req.preserve_fds, labels=dict(req.labels),
                     ulimits=[list(u) for u in req.ulimits], stop_signal=req.stop_signal,
                     stop_timeout=req.stop_timeout,
                     process=req.host_process.to_record() if req.host_process is not None else {},
                     tty=req.tty)
        made = mgr.made_by_create()
        clear_stop(store, name)   # one a killed `rm`/`prune` left would keep this one from restarting
        starting.hold(store, name)
        try:
            with image_users.claimed(rec.isolation, store.root, rec.name, rec.created):
                store.save(rec)  # first: a crash from here on leaves a record that names the cgroup
        except BaseException:
            starting.release(name)
            starting.forget(store, name)
            raise
        fault("record")
        remember_parents(store, made)
        failed = reserve_cgroup(mgr, lambda: zygote.claim(dirs, usable=zygote.fits(rec)))
    try:
        if failed is not None:
            raise failed
        make(mgr, req.isolation, req.resources)
        fault("cgroup")
    except BaseException:
        discard(store, rec, mgr)
        raise
    return rec, mgr


def reserve_cgroup(mgr: CgroupManager, first: Callable[[], object] | None = None) -> BaseException | None:
    """Under the store lock, after the look at the parents (made_by_create): make the cgroup
    (mgr.reserve). `first`: a pooled cgroup with a zygote in it becomes this one (cgagent.zygote),
    so the mkdir finds it made. The failure is returned, for the caller to undo outside the lock."""
    try:
        fault("planned")
        if first is not None:
            first()
        mgr.reserve()
    except BaseException as e:
        return e
    return None


def make(mgr: CgroupManager, isolation: IsolationSpec | None, resources: Resources) -> None:
    """Make what a saved record names: the root of an isolated run, the cgroup and its limits (a run,
    or a restart from the record). The caller undoes it on failure."""
    if isolation is not None:
        from cgagent.isolation import rootfs

        rootfs.prepare(isolation)
    if not mgr.reserved:
        mgr.create()
    mgr.set(resources)


def discard(store: Store, rec: Record, mgr: CgroupManager) -> None:
    """Undo a create: cgroup, owned parents, record. Never raises over the original error."""
    with contextlib.suppress(Exception):
        mgr.destroy()
    with contextlib.suppress(Exception):
        teardown_isolation(rec)
    with store.lock():
        with contextlib.suppress(Exception):
            prune_parents(store)
        forget(store, rec)
        starting.release(rec.name)


def forget(store: Store, rec: Record) -> None:
    """Drop a workload that is gone (cgroup and isolation already removed): its record, then its hold
    on its image, then its OOM history. Under the store's lock."""
    store.delete(rec.name)
    starting.forget(store, rec.name)
    image_users.release(rec.isolation, store.root, rec.name, rec.created)
    oom.forget(store, rec.name)


def teardown_isolation(rec: Record, spec: IsolationSpec | None = None) -> None:
    """Remove an isolated workload's upper/work dirs (its mounts died with its mount namespace).
    `spec`: the record's, where the caller has parsed it already."""
    if rec.isolation:
        from cgagent.isolation import rootfs
        from cgagent.network import workload as network

        if spec is None:
            from cgagent.isolation.spec import for_teardown

            spec = for_teardown(rec.isolation)
        try:
            rootfs.teardown(spec)   # first: meanwhile the kernel deletes the veth pair (network.ended)
        finally:
            network.release(spec, rec.name)   # veth, address, ports, hosts files


def _isolation_ended(rec: Record) -> IsolationSpec | None:
    """The workload has exited: what its teardown will wait for starts to be watched now. The
    record's spec, for that teardown."""
    if not rec.isolation:
        return None
    from cgagent.isolation.spec import for_teardown
    from cgagent.network import workload as network

    spec = for_teardown(rec.isolation)
    network.ended(spec, rec.name)
    return spec


def start(store: Store, rec: Record, mgr: CgroupManager, stdio: tuple[int, int, int] | None = None,
          console: Console | None = None) -> int:
    """Start the recorded workload; its pid. With `console` (-t), its stdio is a pty of its own, whose
    master the caller receives with console.receive() (then `stdio` is not used)."""
    env, setup, netfd, spec = None, None, None, None
    host: HostProcess | None = None
    if rec.isolation:
        from cgagent.isolation.child import make_setup
        from cgagent.isolation.spec import IsolationSpec
        from cgagent.network import workload as network

        spec = IsolationSpec.from_record(rec.isolation)
        netfd, files = network.prepare(spec, rec.name, store.root)   # connected in place(), below
        spec = spec.with_files(files)
        env, setup = make_setup(spec, netfd, store.root)
    if rec.process and not rec.isolation:
        host = HostProcess.from_record(rec.process)
        env = procopts.host_env(host)
    setup = procopts.child_setup(procopts.ulimits_from_record(rec.ulimits), host, setup)
    if console is not None:
        setup, stdio = console.wrap(setup), None

    def connect(pid: int) -> None:
        if spec is not None:
            network.connect(spec, rec.name, pid, netfd)
            fault("network")

    def place(pid: int, born: bool = False) -> None:
        # Runs while the child waits: the record names the pid before the workload runs a single
        # instruction of its own, so nothing it does can be observed ahead of its record.
        fault("place")
        if born:
            keeper = None
            connect(pid)
        elif rec.driver != "systemd" and spec is not None and netfd is not None:
            # a cgroup.procs write waits out an RCU grace period (~15 ms on v1) in the kernel, with
            # the GIL released: the connection is made meanwhile
            keeper = _beside(lambda: _place(rec, mgr, pid), lambda: connect(pid))
        else:
            connect(pid)
            keeper = _place(rec, mgr, pid)
        try:
            fault("keeper")
            _record_started(store, rec, mgr, pid, keeper)
        finally:
            if keeper is not None:
                keeper.close()

    parked = None
    if zygote.fits(rec):   # as create() decided: then the setup is the isolation's alone, no console
        iso = spec.to_record() if spec else None
        parked = zygote.taker(mgr.dirs, iso, netfd, store.root)
        if parked is not None:   # systemd makes the scope around the zygote and these (its PID 1)
            mgr.also = zygote.companions(iso)
    else:
        zygote.discard()   # this process's pool cgroup, if any, has no use here: the zygote goes
    try:
        # cgroupfs on v2: the child is created in its cgroup (no cgroup.procs write, see launch.py)
        pid = launch.spawn(rec.cmd, place, stdio, env=env, child_setup=setup, keep_fds=rec.preserve_fds,
                           into=mgr.clone_target(), born=lambda p: place(p, born=True), parked=parked,
                           private=starting.held())
    except BaseException:
        if netfd is not None:
            os.close(netfd)
        if console is not None:
            console.close()
        raise
    if netfd is not None:
        os.close(netfd)   # the workload holds its namespace now
    # the inodes tell `prune` which cgroups are this workload's, should its record be lost
    events.append(store.root, "start", rec.name, pid=pid, cgroup=rec.cgroup, cmd=rec.cmd, resources=rec.resources,
                  inos=_cgroup_inos(rec.dirs))
    fault("started")
    return pid


def _beside(slow: Callable[[], T], fast: Callable[[], object]) -> T:
    """slow() in a thread of its own while fast() runs here; slow's result. Both have ended when
    this returns or raises (the first failure: fast's, else slow's). _thread, not threading: a
    direct launch does not import threading."""
    import _thread

    done = _thread.allocate_lock()
    done.acquire()
    out: list[Any] = [None, None]   # result, exception

    def run() -> None:
        try:
            out[0] = slow()
        except BaseException as e:
            out[1] = e
        finally:
            done.release()

    _thread.start_new_thread(run, ())
    try:
        fast()
    finally:
        done.acquire()   # never leave slow() running: it works on what the caller undoes next
    if out[1] is not None:
        raise out[1]
    return out[0]  # type: ignore[no-any-return]


def _cgroup_inos(dirs: dict[str, str]) -> list[int]:
    """The inode numbers of a workload's cgroup dirs: what the start event records, so that a cgroup
    found later under the same name is known to be that workload's and not a namesake's (another
    state dir's workload under the same parent, say): cgagent.prune reads them."""
    out = []
    for d in sorted(set(dirs.values())):
        with contextlib.suppress(OSError):
            out.append(os.stat(d).st_ino)
    return out


def _place(rec: Record, mgr: CgroupManager, pid: int) -> Keeper | None:
    """Put the child in its cgroup. Systemd: into the scope its keeper still holds (a restart), else
    into a new scope together with a new keeper, which is returned."""
    if rec.driver != "systemd":
        mgr.apply(pid)
        return None
    from cgagent.cgroups.systemd import SystemdManager

    assert isinstance(mgr, SystemdManager)
    if mgr.owned:   # a restart: the scope stays while its keeper lives (the keeper may die at any time)
        if keeper_alive(rec) and mgr.exists():
            fault("rejoin")
            mgr.keeper = rec.keeper_pid
            if mgr.rejoin(pid):
                return None
        mgr.renew(Resources.from_dict(rec.resources), _slice_of(rec))
    keeper = _spawn_keeper()
    try:
        mgr.keeper = keeper.pid
        if rec.stop_signal or rec.stop_timeout is not None:   # `systemctl stop` of the scope does as `stop`
            mgr.stop = (procopts.signal_number(rec.stop_signal),
                        procopts.DEFAULT_STOP_TIMEOUT if rec.stop_timeout is None else rec.stop_timeout)
        mgr.apply(pid)
    except BaseException:
        keeper.close()
        os.kill(keeper.pid, signal.SIGKILL)
        os.waitpid(keeper.pid, 0)
        raise
    return keeper


def _record_started(store: Store, rec: Record, mgr: CgroupManager, pid: int,
                    keeper: Keeper | None) -> None:
    """Save what start() made into the record as it is on disk now (under the lock): the limits and
    counts others wrote meanwhile (update, the policy controller) are kept, never overwritten by
    the supervisor's older copy. A record removed meanwhile (`rm -f` racing) stops the start."""
    with store.lock():
        try:
            cur = store.load(rec.name)
        except CgagentError:
            cur = None
        if cur is None or cur.created != rec.created:
            raise CgagentError(f"workload {rec.name!r} was removed while it started", "run it again")
        if mgr.dirs != cur.dirs:   # systemd driver: the scope's cgroup as systemd reports it
            cur.dirs, cur.cgroup = dict(mgr.dirs), getattr(mgr, "cgroup_path", cur.cgroup)
        if keeper is not None:
            cur.keeper_pid, cur.keeper_start = keeper.pid, keeper.start
        cur.supervisor_pid, cur.supervisor_start, cur.restarts = (rec.supervisor_pid, rec.supervisor_start,
                                                                  rec.restarts)
        cur.pid, cur.pid_start, cur.status, cur.started = pid, procs.start_time(pid), "running", time.time()
        cur.log_offset = events.size(store.root)   # before this instance's start event (appended below)
        store.save(cur)
        if keeper is not None:   # the record names it: it may hold the scope for good now
            keeper.hand_over()
        starting.release(rec.name)
        fault("placed")
    vars(rec).update(vars(cur))


# the supervisor's view of the kernel log: who the OOM killer killed (cgagent.kmsg), for its events
_kmsg: Any = None


def watch_kmsg() -> None:
    global _kmsg
    from cgagent.kmsg import OomLog

    _kmsg = OomLog()


def victims(rec: Record) -> dict[str, Any] | None:
    got = _kmsg.victims(rec.cgroup) if _kmsg is not None else []
    return {"victims": got[-10:]} if got else None


def finish(store: Store, host: Host, name: str, exit_code: int | None,
           supervisor: bool = False, created: float | None = None) -> Record | None:
    """The workload has ended: record how (OOM kills from the kernel's counter), remove its cgroup.
    `supervisor`: the caller is the workload's supervisor, and a record that names another is a later
    workload of the same name (`rm -f` gave up waiting for this one after 10 s, recorded its end,
    removed it, and a new run took the name): left alone. So is one `created` at another time than
    `created`, when given (`stop`/`rm -f` of a --rm workload whose record went with its end)."""
    with store.lock(), _one_connection(host):
        try:
            rec = store.load(name)
        except Damaged as d:   # its cgroups and overlay go now; the record stays for `ps -a` to show
            from cgagent import prune

            rec = None
            prune.after_exit(store, host, d, exit_code)
        except CgagentError:
            rec = None  # removed meanwhile (`rm -f`)
        if rec is not None and ((supervisor and rec.supervisor_pid != os.getpid())
                                or (created is not None and rec.created != created)):
            rec = None
        if rec is not None:
            spec = _isolation_ended(rec)
            mgr = manager(host, rec)
            # before the cgroup goes (a systemd scope is held by its keeper until destroy() below)
            # idempotent: `serve` may have logged them already
            oom.note(store, rec, oom.read_rec_counter(rec), "exit", victims(rec))
            rec.oom_kills = oom.kills(store, rec)
            mgr.destroy()
            teardown_isolation(rec, spec)
            first = rec.status != "exited"
            rec.status, rec.exit_code, rec.finished = "exited", exit_code, time.time()
            if first and not events.logged(store.root, "exit", name, rec.log_offset, started=rec.started):
                # a retry after a failed save below (full disk) must not log the exit a second time
                events.append(store.root, "exit", name, exit_code=exit_code, oom_kills=rec.oom_kills,
                              started=rec.started)
            clear_stop(store, name)
            if rec.auto_remove:
                forget(store, rec)
            else:
                store.save(rec)
        prune_parents(store)
    return rec


def _one_connection(host: Host) -> contextlib.AbstractContextManager[None]:
    """Where systemd may hold the scope and its slices, their end asks it over one connection."""
    if not host.init_is_systemd:
        return contextlib.nullcontext()
    from cgagent.cgroups.systemd.connection import one_connection

    return one_connection()



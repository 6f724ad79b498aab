"""Workload lifecycle: validated request -> cgroup -> process -> record on disk.

Every step that makes something on the machine is preceded by a record that names it, so a
crash at any point leaves state that `cgagent ps` reports and `cgagent rm -f` cleans.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass

from cgagent import events, launch, oom, procs
from cgagent.cgroups import CgroupManager, existing_manager, new_manager
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.state import Record, Store, atomic_write, validate_name

DRIVERS = ("cgroupfs", "systemd")


@dataclass
class RunRequest:
    cmd: list[str]
    resources: Resources
    name: str | None = None
    parent: str = "/cgagent"
    driver: str | None = None
    detach: bool = False
    auto_remove: bool = False
    policy: str | None = None


def require_root(action: str) -> None:
    if os.geteuid() != 0:
        raise CgagentError(f"{action} needs root (it writes to /sys/fs/cgroup)", "run it with sudo or as root")


def select_driver(host: Host, requested: str | None) -> str:
    if requested is not None and requested not in DRIVERS:
        raise CgagentError(f"unknown cgroup driver {requested!r}", "use --cgroup-driver cgroupfs or systemd")
    driver = requested or ("systemd" if host.init_is_systemd else "cgroupfs")
    if driver == "cgroupfs" and host.init_is_systemd and requested == "cgroupfs":
        import sys

        print("cgagent: warning: systemd is init here; two cgroup managers on one tree can fight "
              "(systemd may revert limits on daemon-reload)", file=sys.stderr)
    return driver


def manager(host: Host, rec: Record) -> CgroupManager:
    return existing_manager(host, rec.driver, rec.dirs, rec.unit)


def _cgroup_id(host: Host, dirs: dict[str, str]) -> str:
    if "" in dirs:
        return "/" + os.path.relpath(dirs[""], host.v2_mount or "/sys/fs/cgroup")
    for ctrl in ("cpu", "memory", "pids"):
        if ctrl in dirs:
            return "/" + os.path.relpath(dirs[ctrl], host.v1_mounts[ctrl])
    return "/"


# --- parents cgagent created (e.g. /sys/fs/cgroup/cpu/cgagent), removed when their last child goes

def _parents_file(store: Store) -> str:
    return os.path.join(store.root, "parents.json")


def _load_parents(store: Store) -> list[str]:
    try:
        with open(_parents_file(store)) as f:
            return list(json.load(f))
    except (FileNotFoundError, ValueError):
        return []


def _own_parents(store: Store, dirs: dict[str, str]) -> list[str]:
    """Directories between the cgroup base and the workload that do not exist yet."""
    out = []
    for d in dirs.values():
        cur = os.path.dirname(d)
        while not os.path.isdir(cur):
            out.append(cur)
            cur = os.path.dirname(cur)
    return out


def _remember_parents(store: Store, new: list[str]) -> None:
    if new:
        known = _load_parents(store)
        atomic_write(_parents_file(store), json.dumps(sorted(set(known) | set(new))).encode())


def prune_parents(store: Store) -> None:
    """rmdir the parents cgagent made, deepest first, where they are empty. Caller holds the lock."""
    known = _load_parents(store)
    if not known:
        return
    left = []
    for d in sorted(known, key=lambda p: p.count("/"), reverse=True):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(d)
    atomic_write(_parents_file(store), json.dumps(sorted(left)).encode())


# --- create / start / finish

def create(req: RunRequest, host: Host, store: Store) -> tuple[Record, CgroupManager]:
    require_root("cgagent run")
    name = validate_name(req.name) if req.name else f"w-{os.urandom(4).hex()}"
    driver = select_driver(host, req.driver)
    if not req.cmd:
        raise CgagentError("no command given", "put the command after --, e.g. cgagent run -- sleep 10")
    if launch.which(req.cmd[0]) is None:
        raise CgagentError(f"command not found: {req.cmd[0]}", "check the name and PATH", exit_code=127)
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
                     unit=getattr(mgr, "unit", None))
        store.save(rec)  # first: a crash from here on leaves a record that names the cgroup
        if driver == "cgroupfs":   # systemd owns its slices: never rmdir them
            _remember_parents(store, _own_parents(store, dirs))
    try:
        mgr.create()
        mgr.set(req.resources)
    except BaseException:
        discard(store, rec, mgr)
        raise
    return rec, mgr


def discard(store: Store, rec: Record, mgr: CgroupManager) -> None:
    """Undo a create: cgroup, owned parents, record. Never raises over the original error."""
    with contextlib.suppress(Exception):
        mgr.destroy()
    with store.lock():
        with contextlib.suppress(Exception):
            prune_parents(store)
        store.delete(rec.name)


def start(store: Store, rec: Record, mgr: CgroupManager, stdio: tuple[int, int, int] | None = None) -> int:
    pid = launch.spawn(rec.cmd, mgr.apply, stdio)
    if mgr.dirs != rec.dirs:   # systemd driver: the scope's cgroup as systemd reports it
        rec.dirs, rec.cgroup = dict(mgr.dirs), getattr(mgr, "cgroup_path", rec.cgroup)
    rec.pid, rec.pid_start, rec.status, rec.started = pid, procs.start_time(pid), "running", time.time()
    store.save(rec)
    events.append(store.root, "start", rec.name, pid=pid, cgroup=rec.cgroup, cmd=rec.cmd, resources=rec.resources)
    return pid


def finish(store: Store, host: Host, name: str, exit_code: int | None) -> Record | None:
    """The workload has ended: record how (OOM kills from the kernel's counter), remove its cgroup."""
    with store.lock():
        try:
            rec = store.load(name)
        except CgagentError:
            rec = None  # removed meanwhile (`rm -f`)
        if rec is not None:
            mgr = manager(host, rec)
            with contextlib.suppress(OSError, ValueError):
                oom.note(store, rec, mgr.oom_kill_count(), "exit")  # once: `serve` may have logged them
            mgr.destroy()
            first = rec.status != "exited"
            rec.status, rec.exit_code, rec.finished = "exited", exit_code, time.time()
            if first:
                events.append(store.root, "exit", name, exit_code=exit_code, oom_kills=rec.oom_kills)
            if rec.auto_remove:
                store.delete(name)
            else:
                store.save(rec)
        prune_parents(store)
    return rec


def run_foreground(req: RunRequest, host: Host, store: Store) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    rec, mgr = create(req, host, store)
    # this CLI is the workload's supervisor until it exits; `stop` waits for it to record the exit
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        pid = start(store, rec, mgr)
    except BaseException:
        discard(store, rec, mgr)
        raise
    code = launch.wait_forwarding(pid)
    finish(store, host, rec.name, code)
    return code


def run_detached(req: RunRequest, host: Host, store: Store) -> str:
    """Start the workload under a supervisor (double fork, setsid) that outlives this CLI."""
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    rec, mgr = create(req, host, store)
    r, w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:
        code = 1
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            code = _supervise(store, host, rec, mgr, w)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(w, f"err:{getattr(e, 'exit_code', 1)}:{e}".encode())
        os._exit(code)
    os.close(w)
    os.waitpid(first, 0)
    msg = os.read(r, 4096).decode()
    os.close(r)
    if msg.startswith("err:"):
        _, ecode, text = msg.split(":", 2)
        problem, _, fix = text.partition(": ")
        raise CgagentError(problem, fix, exit_code=int(ecode))
    if not msg.startswith("ok"):
        discard(store, rec, mgr)
        raise CgagentError("the supervisor died before starting the workload", "see the record with cgagent ps -a")
    return rec.name


def _supervise(store: Store, host: Host, rec: Record, mgr: CgroupManager, report: int) -> int:
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = os.open(store.log_path(rec.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        pid = start(store, rec, mgr, stdio=(devnull, log, log))
    except BaseException:
        discard(store, rec, mgr)
        raise
    os.write(report, b"ok")
    os.close(report)
    for fd in (0, 1, 2):
        os.dup2(devnull if fd == 0 else log, fd)
    code = launch.wait_forwarding(pid)
    finish(store, host, rec.name, code)
    return 0


# --- views and control of existing workloads

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
    return "created" if rec.status == "created" and rec.pid is None else "exited"


def oom_kills(host: Host, rec: Record) -> int:
    if rec.status != "exited":
        with contextlib.suppress(OSError, ValueError):
            return max(rec.oom_kills, manager(host, rec).oom_kill_count())
    return rec.oom_kills


def _supervisor_alive(rec: Record) -> bool:
    return procs.alive(rec.supervisor_pid, rec.supervisor_start)


def stop(store: Store, host: Host, name: str, timeout: float) -> None:
    require_root("cgagent stop")
    rec = store.load(name)
    if live_status(host, rec) != "running":
        return
    mgr = manager(host, rec)
    main = rec.pid if procs.alive(rec.pid, rec.pid_start) else None
    targets = [main] if main else mgr.procs()
    for p in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    if main:
        procs.wait_exit(main, timeout)
    mgr.kill()
    _settle(store, host, rec)


def _settle(store: Store, host: Host, rec: Record) -> None:
    """After the processes are killed: let a live supervisor record the exit, else do it here."""
    if _supervisor_alive(rec):
        assert rec.supervisor_pid
        procs.wait_exit(rec.supervisor_pid, 10.0)
    cur = store.load(rec.name) if store.exists(rec.name) else None
    if cur is not None and cur.status != "exited":
        # the foreground CLI may still be waiting: give it the chance to record the real exit code
        finish(store, host, rec.name, None)


def remove(store: Store, host: Host, name: str, force: bool) -> None:
    require_root("cgagent rm")
    rec = store.load(name)
    if live_status(host, rec) == "running":
        if not force:
            raise CgagentError(f"workload {name!r} is running", f"stop it first, or use `cgagent rm -f {name}`")
        manager(host, rec).kill()
    with store.lock():
        manager(host, rec).destroy()
        store.delete(name)
        prune_parents(store)


def update(store: Store, host: Host, name: str, values: dict[str, object]) -> Record:
    from cgagent.limits import plan

    require_root("cgagent update")
    with store.lock():
        rec = store.load(name)
        if live_status(host, rec) != "running":
            raise CgagentError(f"workload {name!r} is not running", "only running workloads can be updated")
        base = Resources.from_dict(rec.resources)
        new = plan(values, host, base)
        mgr = manager(host, rec)
        mgr.set(new)
        rec.resources = mgr.effective(new).to_dict()
        store.save(rec)
        events.append(store.root, "update", name, resources=rec.resources)
    return rec

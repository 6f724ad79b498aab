"""Workload lifecycle: validated request -> cgroup -> process -> record on disk.

Every step that makes something on the machine is preceded by a record that names it, so a
crash at any point leaves state that `cgagent ps` reports and `cgagent rm -f` cleans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from cgagent import events, launch, oom, procs
from cgagent.cgroups import CgroupManager, existing_manager, new_manager
from cgagent.errors import CgagentError
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.state import Record, Store, validate_name

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
    isolation: dict[str, Any] | None = None   # image/--rootfs runs: cgagent.isolation.spec.build
    restart: str = "no"                        # no | on-failure[:N] | always


def parse_restart(text: str) -> tuple[str, int | None]:
    """Docker's --restart: no | on-failure[:N] | always -> (mode, most restarts or None)."""
    mode, _, num = text.partition(":")
    if mode in ("no", "always") and not num:
        return mode, None
    if mode == "on-failure" and (not num or (num.isdigit() and int(num) > 0)):
        return mode, int(num) if num else None
    raise CgagentError(f"--restart {text!r} is not a restart policy", "use no, on-failure, on-failure:N or always")


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


# --- parents cgagent created (directories, slices, subtree_control bits) go with their last workload

def prune_parents(store: Store) -> None:
    """Caller holds the lock."""
    from cgagent.cgroups import parents

    parents.prune(store)


# --- create / start / finish

def create(req: RunRequest, host: Host, store: Store) -> tuple[Record, CgroupManager]:
    require_root("cgagent run")
    name = validate_name(req.name) if req.name else f"w-{os.urandom(4).hex()}"
    driver = select_driver(host, req.driver)
    if not req.cmd:
        raise CgagentError("no command given", "put the command after --, e.g. cgagent run -- sleep 10")
    if parse_restart(req.restart)[0] != "no" and req.auto_remove:
        raise CgagentError("--rm and --restart exclude each other", "drop one of them")
    if not req.isolation and launch.which(req.cmd[0]) is None:
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
                     unit=getattr(mgr, "unit", None), isolation=req.isolation or {}, restart=req.restart)
        made = mgr.made_by_create()
        store.save(rec)  # first: a crash from here on leaves a record that names the cgroup
        from cgagent.cgroups import parents

        parents.remember(store, made)
    try:
        if rec.isolation:
            from cgagent.isolation import rootfs

            rootfs.prepare(rec.isolation)
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
    with contextlib.suppress(Exception):
        _teardown_isolation(rec)
    with store.lock():
        with contextlib.suppress(Exception):
            prune_parents(store)
        store.delete(rec.name)


def _teardown_isolation(rec: Record) -> None:
    """Remove an isolated workload's upper/work dirs (its mounts died with its mount namespace)."""
    if rec.isolation:
        from cgagent.isolation import rootfs
        from cgagent.network import workload as network

        try:
            network.release(rec.isolation, rec.name)   # veth, address, ports, hosts files
        finally:
            rootfs.teardown(rec.isolation)   # the overlay dirs go even if the network part fails


def start(store: Store, rec: Record, mgr: CgroupManager, stdio: tuple[int, int, int] | None = None) -> int:
    env, setup, netfd = None, None, None
    if rec.isolation:
        from cgagent.isolation.child import make_setup
        from cgagent.network import workload as network

        netfd = network.prepare(rec.isolation, rec.name, store.root)   # connected before the fork
        env, setup = make_setup(rec.isolation, netfd)
    def place(pid: int) -> None:
        # Runs while the child waits: the record names the pid before the workload runs a single
        # instruction of its own, so nothing it does can be observed ahead of its record.
        mgr.apply(pid)
        if mgr.dirs != rec.dirs:   # systemd driver: the scope's cgroup as systemd reports it
            rec.dirs, rec.cgroup = dict(mgr.dirs), getattr(mgr, "cgroup_path", rec.cgroup)
        rec.pid, rec.pid_start, rec.status, rec.started = pid, procs.start_time(pid), "running", time.time()
        store.save(rec)

    try:
        pid = launch.spawn(rec.cmd, place, stdio, env=env, child_setup=setup)
    except BaseException:
        if netfd is not None:
            os.close(netfd)
        raise
    if rec.isolation:
        network.started(rec.isolation, rec.name, pid, netfd)
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
            _teardown_isolation(rec)
            first = rec.status != "exited"
            rec.status, rec.exit_code, rec.finished = "exited", exit_code, time.time()
            if first:
                events.append(store.root, "exit", name, exit_code=exit_code, oom_kills=rec.oom_kills)
            _clear_stop(store, name)
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
    code = _supervise_loop(store, rec, mgr, pid, None)
    finish(store, host, rec.name, code)
    return code


# --- restarts: the supervisor (foreground CLI or detached supervisor) applies --restart

RESTART_FIRST_DELAY = 0.1   # Docker's: doubling from 100 ms up to a minute,
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 10.0  # and back to the start after a run of 10 s or more


def _stop_flag(store: Store, name: str) -> str:
    return os.path.join(store.workloads, f"{name}.stopping")


def request_stop(store: Store, name: str) -> None:
    """Tell the supervisor not to restart `name` again (stop, rm -f)."""
    store.ensure()
    with open(_stop_flag(store, name), "w"):
        pass


def _clear_stop(store: Store, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_stop_flag(store, name))


def _should_restart(store: Store, rec: Record, code: int) -> bool:
    mode, most = parse_restart(rec.restart)
    if mode == "no" or os.path.exists(_stop_flag(store, rec.name)):
        return False
    # on-failure: only a non-zero exit, and at most N restarts
    return mode == "always" or (code != 0 and (most is None or rec.restarts < most))


def _supervise_loop(store: Store, rec: Record, mgr: CgroupManager, pid: int,
                    stdio: tuple[int, int, int] | None) -> int:
    """Wait for the workload; restart it per its policy with backoff. Returns the last exit code."""
    watcher = None
    if rec.driver == "systemd":
        # systemd removes an emptied scope's cgroup at once, racing finish()'s read of the OOM
        # counter: watch it while the workload lives, as `cgagent serve` does
        from cgagent.oomwatch import OomWatcher

        watcher = OomWatcher(store, source="supervisor", only=rec.name).start()
    try:
        return _wait_restarting(store, rec, mgr, pid, stdio)
    finally:
        if watcher is not None:
            watcher.stop()


def _wait_restarting(store: Store, rec: Record, mgr: CgroupManager, pid: int,
                     stdio: tuple[int, int, int] | None) -> int:
    streak = 0
    while True:
        began = time.monotonic()
        code = launch.wait_forwarding(pid)
        if not _should_restart(store, rec, code):
            return code
        streak = 0 if time.monotonic() - began >= RESTART_RESET_AFTER else streak
        delay = min(RESTART_FIRST_DELAY * 2 ** streak, RESTART_MAX_DELAY)
        streak += 1
        events.append(store.root, "restart", rec.name, exit_code=code, restarts=rec.restarts + 1,
                      delay_s=round(delay, 3))
        # the backoff ends early on a signal for us (stop, Ctrl-C): then the workload stays down
        sig = signal.sigtimedwait([s for s in launch.WAITED if s != signal.SIGCHLD], delay)
        if sig is not None or not _should_restart(store, rec, code):
            return code
        rec.restarts += 1
        pid = start(store, rec, mgr, stdio)


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
    code = _supervise_loop(store, rec, mgr, pid, (devnull, log, log))
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
    if rec.status == "created" and rec.pid is None:
        return "created"
    return "restarting" if rec.restart != "no" and _supervisor_alive(rec) else "exited"


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
    request_stop(store, name)   # no restart after this
    if live_status(host, rec) != "running":
        _end_supervisor(rec)    # it may be waiting out a restart backoff
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


def _end_supervisor(rec: Record, timeout: float = 10.0) -> None:
    """Wake a supervisor in its restart backoff (it then records the end) and wait for it to exit."""
    if rec.restart != "no" and _supervisor_alive(rec) and rec.supervisor_pid != os.getpid():
        assert rec.supervisor_pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.supervisor_pid, signal.SIGTERM)
        procs.wait_exit(rec.supervisor_pid, timeout)


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
        request_stop(store, name)   # before the kill: the supervisor must not restart it
        manager(host, rec).kill()
    if force:
        request_stop(store, name)
        _end_supervisor(rec)   # or it could restart the workload into the cgroup being removed
    with store.lock():
        with contextlib.suppress(OSError, ValueError, CgagentError):  # kills nobody has logged yet
            oom.note(store, store.load(name), manager(host, rec).oom_kill_count(), "rm")
        manager(host, rec).destroy()
        _teardown_isolation(rec)
        store.delete(name)
        _clear_stop(store, name)
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

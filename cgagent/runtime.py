"""Workload lifecycle: validated request -> cgroup -> process -> record on disk.

Every step that makes something on the machine is preceded by a record that names it, so a
crash at any point leaves state that `cgagent ps` reports and `cgagent rm -f` cleans.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from cgagent import events, launch, oom, procs
from cgagent.cgroups import CgroupManager, existing_manager, new_manager
from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.host import Host
from cgagent.limits import Resources
from cgagent.state import Damaged, Record, Store, validate_name

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
    preserve_fds: int = 0                      # fds 3 .. 3+N-1 the workload inherits (--preserve-fds)


def parse_restart(text: str) -> tuple[str, int | None]:
    """Docker's --restart: no | on-failure[:N] | always -> (mode, most restarts or None)."""
    mode, _, num = text.partition(":")
    if mode in ("no", "always") and not num:
        return mode, None
    if mode == "on-failure" and (not num or (num.isascii() and num.isdigit() and len(num) <= 9 and int(num) > 0)):
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
    mgr = existing_manager(host, rec.driver, rec.dirs, rec.unit)
    if rec.keeper_pid is not None and hasattr(mgr, "keeper"):
        mgr.keeper = rec.keeper_pid
    return mgr


# --- the keeper (systemd driver): systemd removes a scope's cgroup as soon as its last process has
# exited, before anyone could read the OOM counter in it, and no kernel counter outlives a v1 memory
# cgroup (v1 does not count kills in the parent). So each scope holds one process of cgagent's own
# from its creation until the supervisor (or `rm`) has read the counter and stops the scope: the
# kills of the workload's last process are then read from a cgroup that still exists, by design.
# It is excluded from the workload's processes (ps, stats, stop); it costs one task of TasksMax.

def _spawn_keeper() -> int:
    sleep = launch.which("sleep", "/usr/bin:/bin:/usr/sbin:/sbin")
    if sleep is None:
        raise CgagentError("`sleep` is not installed (the systemd driver needs it)", "install coreutils")
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()   # not in the supervisor's process group: a Ctrl-C is not for it
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.execv(sleep, ["sleep", "2147483647"])
        finally:
            os._exit(127)
    return pid


def _keeper_alive(rec: Record) -> bool:
    return rec.keeper_pid is not None and procs.alive(rec.keeper_pid, rec.keeper_start)


def _slice_of(rec: Record) -> str:
    parent = os.path.basename(os.path.dirname(rec.cgroup))
    return parent if parent.endswith(".slice") else "-.slice"


def _start_manager(host: Host, rec: Record, mgr: CgroupManager) -> CgroupManager:
    """The manager to start (or restart) the workload with. A systemd scope that is gone (its keeper
    was killed) is made anew with the limits the record holds NOW (update, policies), not those of
    its creation."""
    if rec.driver != "systemd" or not getattr(mgr, "owned", False) or (_keeper_alive(rec) and mgr.exists()):
        return mgr
    from cgagent.cgroups.systemd import SystemdManager

    assert rec.unit
    fresh = SystemdManager(host, rec.unit, _slice_of(rec))
    fresh.set(Resources.from_dict(rec.resources))   # not owned yet: kept for StartTransientUnit
    return fresh


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
                     unit=getattr(mgr, "unit", None), isolation=req.isolation or {}, restart=req.restart,
                     preserve_fds=req.preserve_fds)
        made = mgr.made_by_create()
        store.save(rec)  # first: a crash from here on leaves a record that names the cgroup
        fault("record")
        from cgagent.cgroups import parents

        parents.remember(store, made)
    try:
        if rec.isolation:
            from cgagent.isolation import rootfs

            rootfs.prepare(rec.isolation)
        mgr.create()
        mgr.set(req.resources)
        fault("cgroup")
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
        oom.forget(store, rec.name)


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
        fault("network")
        env, setup = make_setup(rec.isolation, netfd)
    def place(pid: int) -> None:
        # Runs while the child waits: the record names the pid before the workload runs a single
        # instruction of its own, so nothing it does can be observed ahead of its record.
        keeper = _place(rec, mgr, pid)
        _record_started(store, rec, mgr, pid, keeper)

    try:
        pid = launch.spawn(rec.cmd, place, stdio, env=env, child_setup=setup, keep_fds=rec.preserve_fds)
    except BaseException:
        if netfd is not None:
            os.close(netfd)
        raise
    if rec.isolation:
        network.started(rec.isolation, rec.name, pid, netfd)
    from cgagent.prune import cgroup_inos

    # the inodes tell `prune` which cgroups are this workload's, should its record be lost
    events.append(store.root, "start", rec.name, pid=pid, cgroup=rec.cgroup, cmd=rec.cmd, resources=rec.resources,
                  inos=cgroup_inos(rec.dirs))
    fault("started")
    return pid


def _place(rec: Record, mgr: CgroupManager, pid: int) -> tuple[int, int | None] | None:
    """Put the child in its cgroup. Systemd: into the scope its keeper still holds (a restart), else
    into a new scope together with a new keeper. Returns a new keeper (pid, start time)."""
    fault("place")
    if rec.driver != "systemd":
        mgr.apply(pid)
        return None
    if getattr(mgr, "owned", False) and _keeper_alive(rec) and mgr.exists():
        mgr.keeper = rec.keeper_pid   # type: ignore[attr-defined]
        mgr.join(pid)
        return None
    keeper = _spawn_keeper()
    try:
        mgr.keeper = keeper   # type: ignore[attr-defined]
        mgr.apply(pid)
    except BaseException:
        os.kill(keeper, signal.SIGKILL)
        os.waitpid(keeper, 0)
        raise
    return keeper, procs.start_time(keeper) or 0


def _record_started(store: Store, rec: Record, mgr: CgroupManager, pid: int,
                    keeper: tuple[int, int | None] | None) -> None:
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
            cur.keeper_pid, cur.keeper_start = keeper
        cur.supervisor_pid, cur.supervisor_start, cur.restarts = rec.supervisor_pid, rec.supervisor_start, rec.restarts
        cur.pid, cur.pid_start, cur.status, cur.started = pid, procs.start_time(pid), "running", time.time()
        store.save(cur)
        fault("placed")
    vars(rec).update(vars(cur))


# the supervisor's view of the kernel log: who the OOM killer killed (cgagent.kmsg), for its events
_kmsg: Any = None


def _watch_kmsg() -> None:
    global _kmsg
    from cgagent.kmsg import OomLog

    _kmsg = OomLog()


def _victims(rec: Record) -> dict[str, Any] | None:
    got = _kmsg.victims(rec.cgroup) if _kmsg is not None else []
    return {"victims": got[-10:]} if got else None


def finish(store: Store, host: Host, name: str, exit_code: int | None) -> Record | None:
    """The workload has ended: record how (OOM kills from the kernel's counter), remove its cgroup."""
    with store.lock():
        try:
            rec = store.load(name)
        except Damaged as d:   # its cgroups and overlay go now; the record stays for `ps -a` to show
            from cgagent import prune

            rec = None
            prune.after_exit(store, host, d, exit_code)
        except CgagentError:
            rec = None  # removed meanwhile (`rm -f`)
        if rec is not None:
            mgr = manager(host, rec)
            # before the cgroup goes (a systemd scope is held by its keeper until destroy() below)
            # idempotent: `serve` may have logged them already
            oom.note(store, rec, oom.read_rec_counter(rec), "exit", _victims(rec))
            rec.oom_kills = oom.kills(store, rec)
            mgr.destroy()
            _teardown_isolation(rec)
            first = rec.status != "exited"
            rec.status, rec.exit_code, rec.finished = "exited", exit_code, time.time()
            if first and not events.logged(store.root, "exit", name, started=rec.started):
                # a retry after a failed save below (full disk) must not log the exit a second time
                events.append(store.root, "exit", name, exit_code=exit_code, oom_kills=rec.oom_kills,
                              started=rec.started)
            _clear_stop(store, name)
            if rec.auto_remove:
                store.delete(name)
                oom.forget(store, name)
            else:
                store.save(rec)
        prune_parents(store)
    return rec


def run_foreground(req: RunRequest, host: Host, store: Store) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    rec, mgr = create(req, host, store)
    _watch_kmsg()
    # this CLI is the workload's supervisor until it exits; `stop` waits for it to record the exit
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        pid = start(store, rec, mgr)
    except BaseException:
        discard(store, rec, mgr)
        raise
    code = _wait_restarting(store, host, rec, mgr, pid, None)
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


def _reload(store: Store, rec: Record) -> bool:
    """Take the record as it is on disk (what `update` and the policy controller wrote since).
    False when it is gone or belongs to a new workload of the same name."""
    with store.lock():
        try:
            cur = store.load(rec.name)
        except CgagentError:
            return False
    if cur.created != rec.created:
        return False
    cur.supervisor_pid, cur.supervisor_start, cur.restarts = rec.supervisor_pid, rec.supervisor_start, rec.restarts
    vars(rec).update(vars(cur))
    return True


def _oom_before_restart(store: Store, host: Host, rec: Record) -> None:
    """Log the kills of the run that ended, and let its policy answer them (more memory) before the
    next run starts, so that the next run is the one that gets it."""
    with store.lock():
        try:
            cur = store.load(rec.name)
        except CgagentError:
            return
        oom.note(store, cur, oom.read_rec_counter(cur), "exit", _victims(cur))
        seq = oom.load_mark(store, cur).kills
    if cur.policy is None or seq <= cur.policy_oom_seq:
        return
    with contextlib.suppress(Exception):   # a policy that cannot be read must not stop the restart
        from policies.controller import answer_oom_before_restart

        answer_oom_before_restart(store, host, rec.name, cur.policy, seq)


def _wait_restarting(store: Store, host: Host, rec: Record, mgr: CgroupManager, pid: int,
                     stdio: tuple[int, int, int] | None) -> int:
    """Wait for the workload; restart it per its policy with backoff. Returns the last exit code."""
    streak = 0
    while True:
        began = time.monotonic()
        code = launch.wait_forwarding(pid, reap_all=rec.detached)
        if not _should_restart(store, rec, code):
            return code
        _oom_before_restart(store, host, rec)
        streak = 0 if time.monotonic() - began >= RESTART_RESET_AFTER else streak
        delay = min(RESTART_FIRST_DELAY * 2 ** streak, RESTART_MAX_DELAY)
        streak += 1
        events.append(store.root, "restart", rec.name, exit_code=code, restarts=rec.restarts + 1,
                      delay_s=round(delay, 3))
        # the backoff ends early on a signal for us (stop, Ctrl-C): then the workload stays down
        sig = signal.sigtimedwait([s for s in launch.WAITED if s != signal.SIGCHLD], delay)
        if sig is not None or not _should_restart(store, rec, code) or not _reload(store, rec):
            return code
        rec.restarts += 1
        mgr = _start_manager(host, rec, mgr)
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
            with contextlib.suppress(OSError):   # the CLI may be gone: nobody to tell
                os.write(w, f"err:{getattr(e, 'exit_code', 1)}:{e}".encode())
        os._exit(code)
    os.close(w)
    fault("forked")
    os.waitpid(first, 0)
    msg = os.read(r, 4096).decode()
    os.close(r)
    if msg.startswith("err:"):
        _, ecode, text = msg.split(":", 2)
        problem, _, fix = text.partition(": ")
        raise CgagentError(problem, fix, exit_code=int(ecode))
    if not msg.startswith("ok"):
        # the supervisor was killed before the workload ran (or while it started it): undo what is
        # ours, unless the workload runs (then `ps` shows it and `rm -f` ends it)
        if live_status(host, store.load(rec.name) if store.exists(rec.name) else rec) != "running":
            discard(store, rec, manager(host, store.load(rec.name)) if store.exists(rec.name) else mgr)
        raise CgagentError("the supervisor died before starting the workload", "see the record with cgagent ps -a")
    return rec.name


def _supervise(store: Store, host: Host, rec: Record, mgr: CgroupManager, report: int) -> int:
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = store.open_log(rec.name)
    rec.supervisor_pid, rec.supervisor_start = os.getpid(), procs.start_time(os.getpid())
    try:
        pid = start(store, rec, mgr, stdio=(devnull, log, log))
    except BaseException:
        discard(store, rec, mgr)
        raise
    with contextlib.suppress(OSError):   # EPIPE: the CLI was killed; the workload runs all the same
        os.write(report, b"ok")
    os.close(report)
    for fd in (0, 1, 2):
        os.dup2(devnull if fd == 0 else log, fd)
    os.close(devnull)
    os.close(log)
    # Become a fresh process (containerd-shim, conmon): this one's argv is the CLI's, with its -e
    # values, for any local user to read in /proc/PID/cmdline. The shim keeps the pid, the children
    # (workload, keeper) and the blocked signals, and reads everything else from the record.
    import sys

    os.closerange(3, 1 << 16)
    with contextlib.suppress(OSError):
        os.execv(sys.executable, [sys.executable, "-m", "cgagent.shim", "--state-dir", store.root,
                                  "--pid", str(pid), rec.name])
    return shim_main(store, host, rec.name, pid)   # no interpreter to exec: supervise from here


def shim_main(store: Store, host: Host, name: str, pid: int) -> int:
    """The detached supervisor: wait for the workload, restart it per its policy, record its end."""
    fault("shim")
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    with contextlib.suppress(OSError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: reap orphans
    _watch_kmsg()
    try:
        rec = store.load(name)
    except Damaged:
        # damaged since the workload started (the pid came in argv): supervise it to its end, then
        # finish() removes what it made and leaves the damaged record for `ps -a` to show
        code = launch.wait_forwarding(pid, reap_all=True)
        finish(store, host, name, code)
        return 0
    if rec.supervisor_pid != os.getpid():
        raise CgagentError(f"workload {name!r} has another supervisor", "")
    assert rec.pid is not None
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = store.open_log(name)
    code = _wait_restarting(store, host, rec, manager(host, rec), rec.pid, (devnull, log, log))
    try:
        finish(store, host, name, code)
    except BaseException as e:
        from cgagent.state import last_words

        last_words(f"the exit of {name} (code {code}) could not be recorded: {e}; "
                   f"the next `cgagent stop/rm {name}` records it")
        raise
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


def oom_kills(store: Store, rec: Record) -> int:
    """The workload's OOM kills: those logged, and those the kernel counts that nobody logged yet."""
    return oom.kills(store, rec, oom.read_rec_counter(rec) if rec.status != "exited" else None)


def oom_victim(store: Store, rec: Record) -> str | None:
    """The last OOM victim the kernel reported, e.g. "python3 (pid 812, anon-rss 30336 kB)"."""
    v = oom.load_mark(store, rec).victim
    if not isinstance(v, dict):
        return None
    return f"{v.get('comm')} (pid {v.get('pid')}, anon-rss {v.get('anon_rss_kb')} kB)"


def _supervisor_alive(rec: Record) -> bool:
    return procs.alive(rec.supervisor_pid, rec.supervisor_start)


def stop(store: Store, host: Host, name: str, timeout: float) -> None:
    require_root("cgagent stop")
    rec = store.load(name)
    try:
        request_stop(store, name)   # no restart after this
    except OSError:
        if rec.restart != "no":   # without the flag its supervisor could restart it: refuse
            raise
        # nothing to restart: a full or read-only state dir must not keep the workload from stopping
    if live_status(host, rec) != "running":
        _end_supervisor(rec)    # it may be waiting out a restart backoff
        return
    mgr = manager(host, rec)
    main = rec.pid if procs.alive(rec.pid, rec.pid_start) else None
    targets = [main] if main else mgr.procs()
    for p in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    if main and not procs.wait_exit(main, timeout):
        import sys

        print(f"cgagent: {name} did not exit within {timeout:g}s of SIGTERM; killed it (SIGKILL)",
              file=sys.stderr, flush=True)
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
    try:
        rec = store.load(name)
    except CgagentError:   # damaged or deleted record: what it left is found by name
        from cgagent import prune

        if force and prune.reclaim(store, host, name):
            return
        raise
    if live_status(host, rec) == "running":
        if not force:
            raise CgagentError(f"workload {name!r} is running", f"stop it first, or use `cgagent rm -f {name}`")
        request_stop(store, name)   # before the kill: the supervisor must not restart it
        manager(host, rec).kill()
        # the exit is recorded (one exit event) before the record goes; a full or read-only state
        # dir cannot hold it, and must not keep the record from going
        with contextlib.suppress(OSError, CgagentError):
            _settle(store, host, rec)
    if force:
        request_stop(store, name)
        _end_supervisor(rec)   # or it could restart the workload into the cgroup being removed
    with store.lock():
        with contextlib.suppress(CgagentError):  # a restart may have made a new scope meanwhile
            rec = store.load(name)
        # kills nobody has logged yet, read before the cgroup goes
        oom.note(store, rec, oom.read_rec_counter(rec), "rm")
        manager(host, rec).destroy()
        _teardown_isolation(rec)
        store.delete(name)
        oom.forget(store, name)
        _clear_stop(store, name)
        prune_parents(store)


def update(store: Store, host: Host, name: str, values: dict[str, object]) -> Record:
    """Change a running (or restarting: applied to its next run) workload's limits."""
    rec = _update(store, host, name, values, None)
    assert rec is not None
    return rec


def answer_oom(store: Store, host: Host, name: str, values: dict[str, object], oom_seq: int) -> bool:
    """update() as a policy's answer to the OOM kills up to `oom_seq`: made only if nobody answered
    them yet (the supervisor before a restart, or the agent's policy controller). False: answered."""
    return _update(store, host, name, values, oom_seq) is not None


def _update(store: Store, host: Host, name: str, values: dict[str, object], oom_seq: int | None) -> Record | None:
    from cgagent.limits import plan

    require_root("cgagent update")
    with store.lock():
        rec = store.load(name)
        if oom_seq is not None and rec.policy_oom_seq >= oom_seq:
            return None
        status = live_status(host, rec)
        if status not in ("running", "restarting"):
            raise CgagentError(f"workload {name!r} is not running", "only running workloads can be updated")
        base = Resources.from_dict(rec.resources)
        new = plan(values, host, base)
        mgr = manager(host, rec)
        old, old_seq = rec.resources, rec.policy_oom_seq
        rec.resources = mgr.effective(new).to_dict()
        if oom_seq is not None:
            rec.policy_oom_seq = oom_seq
        store.save(rec)   # first: a full state dir refuses the change before the kernel has it
        try:
            # device rules are fixed at creation: re-sending them would make systemd (v1) rewrite
            # devices.deny/allow, a moment in which even /dev/null fails
            mgr.set(dataclasses.replace(new, devices=None))
        except (OSError, CgagentError):
            if status == "running":
                rec.resources, rec.policy_oom_seq = old, old_seq
                store.save(rec)
                raise
            # between two runs, its systemd scope gone: the record is what the next scope is made from
        events.append(store.root, "update", name, resources=rec.resources)
    return rec

"""The child side of an isolated run, plugged into `launch.spawn(child_setup=...)`.

spawn's child (already in its cgroup) unshares the pid namespace and forks:
- the forked process is PID 1 of the new namespace: it unshares mnt/uts/ipc/cgroup(/net), builds
  the root filesystem, drops privileges and returns to spawn, which execs the command (with --init:
  tini, which runs the command, as Docker does);
- spawn's child itself becomes a relay: it waits for PID 1 and exits with its status, so the
  parent waits for the process it forked and learns exec failures through spawn's pipe (the
  relay closes its copy, PID 1's copy closes at exec).
Everything the child needs after pivot_root is imported here, up front: the host's Python library
is out of reach once the new root is in place.
"""

from __future__ import annotations

import errno
import os
import signal
import warnings  # noqa: F401  os.execvpe imports it lazily, after pivot_root that would fail
from collections.abc import Callable

from cgagent import launch
from cgagent.errors import CgagentError
from cgagent.isolation import namespaces, rootfs, seccomp, security, userns
from cgagent.isolation.spec import IsolationSpec, env_dict
from cgagent.isolation.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    PR_SET_PDEATHSIG,
    mount,
    prctl,
    sethostname,
    setns,
    unshare,
)

TINI = "/usr/bin/tini-static"   # Debian's package tini
INIT_PATH = "/dev/init"
Setup = Callable[[], "list[str] | None"]


def _quiet_fds() -> None:
    """A relay or reaper must not hold the caller's pipes (or `run -d` callers never see EOF)."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def relay(pid: int) -> None:
    """Be the relay of `pid` (PID 1 of the workload's pid namespace, our child) and never return: hold
    none of the caller's fds, forward signals, exit with its status. WAITED must be blocked."""
    code = 255
    try:
        _quiet_fds()
        code = launch.wait_forwarding(pid)
    finally:
        os._exit(code)


def _install_init(src: int) -> None:
    """--init: put tini (static, so it needs nothing from the image) at INIT_PATH, in the workload's
    own /dev tmpfs, so a read-only root or any image works, and read-only.

    A copy with mode 0111, not a bind of the host's file: exec'd by a process that cannot read it,
    PID 1 is left non-dumpable (fs/exec.c would_dump), so the workload cannot open /proc/1/mem or
    ptrace it even as root with the same capabilities."""
    dst = os.open(INIT_PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o111)
    try:
        size = os.fstat(src).st_size
        done = 0
        while done < size:
            n = os.sendfile(dst, src, done, size - done)
            if n == 0:
                raise OSError(errno.EIO, f"{TINI} shrank while copied")
            done += n
        os.fchmod(dst, 0o111)   # the umask must not matter, nor what the file was created with
    finally:
        os.close(dst)
        os.close(src)
    mount(INIT_PATH, INIT_PATH, None, MS_BIND)
    mount(None, INIT_PATH, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _ipc_path(spec: IsolationSpec, state_dir: str | None) -> str | None:
    """--ipc container:NAME: the path of NAME's IPC namespace, found now (a missing NAME is one line)."""
    if not spec.ipc.startswith("container:"):
        return None
    from cgagent.network.workload import ns_of

    return ns_of(spec.ipc.partition(":")[2], state_dir, "ipc", "--ipc")


def _pid_ns(spec: IsolationSpec, state_dir: str | None) -> int | None:
    """--pid container:NAME: an fd of NAME's pid namespace, opened now (a missing NAME is one line).
    Never the host's: a process of NAME outside its namespace (its relay) must not lead there."""
    if not spec.pid.startswith("container:"):
        return None
    from cgagent.network.workload import in_host_pid_ns, ns_of

    name = spec.pid.partition(":")[2]
    fd = os.open(ns_of(name, state_dir, "pid", "--pid"), os.O_RDONLY | os.O_CLOEXEC)
    if os.fstat(fd).st_ino == os.stat("/proc/self/ns/pid").st_ino:
        os.close(fd)
        raise in_host_pid_ns("--pid", name)   # its process changed since ns_of looked (pid reuse)
    return fd


def make_setup(spec: IsolationSpec, join_net: int | None = None, state_dir: str | None = None,
               pid_ns_made: bool = False) -> tuple[dict[str, str], Setup]:
    """-> (the environment to exec with, the child_setup for launch.spawn). `join_net`: the fd of the
    network namespace cgagent.network prepared (bridge, a named network, container:NAME).
    `pid_ns_made`: the caller is PID 1 of the workload's new pid namespace already, with its relay
    (a zygote's, cgagent.zygote): the setup neither unshares nor forks."""
    seccomp.machine()   # an architecture the filter has no table for: refused here, in one line
    join_ipc = _ipc_path(spec, state_dir)
    join_pid = _pid_ns(spec, state_dir)
    env = env_dict(spec)
    caps = security.usable(spec)
    init = spec.init
    if init and not os.path.isfile(TINI):
        raise CgagentError(f"--init needs tini, and {TINI} is missing",
                           "install the Debian package tini (apt-get install tini), or drop --init")

    def setup() -> list[str] | None:
        if join_net is not None:   # first, so the relay (the recorded pid) names the namespace too
            setns(join_net, CLONE_NEWNET)
        # made here, where /proc still shows our pid namespace (the helper's maps are written by pid)
        user_fd = userns.make(spec.userns) if spec.userns else None
        # --pid host: no namespace, so no PID 1 and no relay: this process runs the command, and outlives
        # its caller as a host command does (the death signal ties PID 1 to its relay only)
        relayed = spec.pid != "host"
        if not pid_ns_made:
            if join_pid is not None:   # NAME's namespace for our child: its PID 1 is the init there
                setns(join_pid, CLONE_NEWPID)
                os.close(join_pid)
            elif relayed:
                unshare(CLONE_NEWPID)
            if relayed:
                pid = os.fork()
                if pid != 0:
                    relay(pid)
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if join_ipc is not None:
            fd = os.open(join_ipc, os.O_RDONLY | os.O_CLOEXEC)
            setns(fd, CLONE_NEWIPC)
            os.close(fd)
        unshare(namespaces.flags(spec.net, spec.ipc))
        sethostname(spec.hostname or "cgagent")
        tini = os.open(TINI, os.O_RDONLY | os.O_CLOEXEC) if init else -1   # while the host's files are in view
        rootfs.enter(spec, user_fd)
        security.check_cwd()
        if init:
            _install_init(tini)
        if spec.net == "none":
            namespaces.up_loopback()
        if user_fd is not None:  # last: from here on, root is root of this user namespace only
            setns(user_fd, CLONE_NEWUSER)
            os.close(user_fd)
        security.apply(caps, spec.user, spec.seccomp, env, exec_unreadable=init)
        if relayed:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of uid cleared it
        if not init:
            return None
        if spec.pid:   # host or container:NAME: not PID 1, so tini reaps as the children's subreaper
            return [INIT_PATH, "-s", "--"]
        return [INIT_PATH, "--"]   # tini: PID 1, reaps orphans, forwards signals, passes the exit status on

    return env, setup

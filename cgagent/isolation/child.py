"""The child side of an isolated run, plugged into `launch.spawn(child_setup=...)`.

spawn's child (already in its cgroup) unshares the pid namespace and forks:
- the forked process is PID 1 of the new namespace: it unshares mnt/uts/ipc/cgroup(/net), builds
  the root filesystem, drops privileges and returns to spawn, which execs the command (or, with
  --init, it forks the command and stays as a reaper that forwards signals);
- spawn's child itself becomes a relay: it waits for PID 1 and exits with its status, so the
  parent waits for the process it forked and learns exec failures through spawn's pipe (the
  relay closes its copy, PID 1's copy closes at exec).
Everything the child needs after pivot_root is imported here, up front: the host's Python library
is out of reach once the new root is in place.
"""

from __future__ import annotations

import os
import signal
import warnings  # noqa: F401  os.execvpe imports it lazily, after pivot_root that would fail
from collections.abc import Callable
from typing import Any

from cgagent import launch
from cgagent.isolation import namespaces, rootfs, security, userns
from cgagent.isolation.spec import env_dict
from cgagent.isolation.syscalls import (
    CLONE_NEWNET,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    PR_SET_PDEATHSIG,
    prctl,
    set_comm,
    sethostname,
    setns,
    unshare,
)


def _quiet_fds() -> None:
    """A relay or reaper must not hold the caller's pipes (or `run -d` callers never see EOF)."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _relay(pid: int) -> None:
    code = 255
    try:
        _quiet_fds()
        code = launch.wait_forwarding(pid)
    finally:
        os._exit(code)


def _noop(signum: int, frame: object) -> None:
    pass


def _reaper(child: int) -> None:
    """--init: PID 1 reaps every orphan and forwards signals to the command; exits with its status."""
    code = 255
    try:
        _quiet_fds()
        set_comm("init")  # what `ps` inside shows for PID 1
        for s in launch.WAITED:  # a namespace's init only receives signals it has a handler for
            signal.signal(s, _noop)
        while True:
            info = signal.sigwaitinfo(launch.WAITED)
            if info.si_signo != signal.SIGCHLD:
                if info.si_code <= 0:
                    try:
                        os.kill(child, info.si_signo)
                    except ProcessLookupError:
                        pass
                continue
            while True:
                try:
                    wpid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if wpid == 0:
                    break
                if wpid == child:
                    code = launch.exit_code(status)
                    return
    finally:
        os._exit(code)


def make_setup(spec: dict[str, Any], join_net: int | None = None) -> tuple[dict[str, str], Callable[[], None]]:
    """-> (the environment to exec with, the child_setup for launch.spawn). `join_net`: the fd of the
    network namespace cgagent.network prepared (bridge, a named network, container:NAME)."""
    env = env_dict(spec)

    def setup() -> None:
        if join_net is not None:   # first, so the relay (the recorded pid) names the namespace too
            setns(join_net, CLONE_NEWNET)
        # made here, where /proc still shows our pid namespace (the helper's maps are written by pid)
        user_fd = userns.make(spec["userns"]) if spec.get("userns") else None
        unshare(CLONE_NEWPID)
        pid = os.fork()
        if pid != 0:
            _relay(pid)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        unshare(namespaces.flags(spec))
        sethostname(spec.get("hostname") or "cgagent")
        rootfs.enter(spec, user_fd)
        security.check_cwd()
        if spec.get("net", "none") == "none":
            namespaces.up_loopback()
        if user_fd is not None:  # last: from here on, root is root of this user namespace only
            setns(user_fd, CLONE_NEWUSER)
            os.close(user_fd)
        security.apply(list(spec.get("caps") or []), str(spec.get("user") or ""), bool(spec.get("seccomp", True)),
                       env)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of uid cleared it
        if spec.get("init"):
            child = os.fork()
            if child != 0:
                _reaper(child)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return env, setup

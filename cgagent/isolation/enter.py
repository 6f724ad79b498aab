"""`cgagent exec NAME -- CMD`: run a command inside a running workload, like `docker exec`.

The new process joins the workload's cgroup (spawn's `place`), then its namespaces through setns on
/proc/<pid>/ns/* of the workload's PID 1, chroots into that process's root, and gets the same
privileges as the workload (capabilities, no_new_privs, seccomp). A pid namespace only applies to
children, so the joined process forks once more and relays the exit status, as `run` does.
"""

from __future__ import annotations

import os
import signal
import warnings  # noqa: F401  os.execvpe imports it lazily; after chroot that would fail
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cgagent import launch
from cgagent.cgroups import CgroupManager
from cgagent.errors import CgagentError
from cgagent.isolation import namespaces, seccomp, security
from cgagent.isolation.child import relay
from cgagent.isolation.spec import env_dict, from_record
from cgagent.isolation.syscalls import CLONE_NEWPID, CLONE_NEWUSER, PR_SET_PDEATHSIG, prctl
from cgagent.procopts import with_env

if TYPE_CHECKING:
    from cgagent.terminal import Console


def run(mgr: CgroupManager, isolation: Mapping[str, Any], cmd: list[str], env_add: list[str], user: str | None,
        workdir: str | None, keep_fds: int = 0, tty: bool = False, interactive: bool = False) -> int:
    """Foreground exec; returns the command's exit code (shell convention). `isolation`: the record's.
    With `tty` (-t) the command gets a pty opened inside the workload (its /dev/pts), `interactive`
    (-i) sends the caller's keys to it."""
    if not cmd:
        raise CgagentError("no command given", "put the command after --, e.g. cgagent exec web -- sh")
    console = None
    if tty:
        from cgagent import terminal

        terminal.check_input(interactive)
        console = terminal.Console(terminal.caller_size())
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    spec = from_record(isolation)
    if spec is None:  # a host workload: only its cgroup to join
        launch.require_command(cmd[0])
        own = console.wrap(None) if console is not None else None
        return _wait(launch.spawn(cmd, mgr.join, keep_fds=keep_fds, child_setup=own), console, interactive)
    seccomp.machine()
    procs = mgr.procs()
    target = namespaces.top_pid(procs) if spec.pid else namespaces.init_pid(procs)   # host, container:
    if target is None:
        raise CgagentError("the workload's PID 1 is gone", "see `cgagent ps -a`")
    env = with_env(env_dict(spec), env_add)
    fds = namespaces.open_namespaces(target)
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    user_ns = [(os.open(f"/proc/{target}/ns/user", os.O_RDONLY | os.O_CLOEXEC), CLONE_NEWUSER)] \
        if spec.userns else []
    pid_fds = [(fd, t) for fd, t in fds if t == CLONE_NEWPID]
    other = [(fd, t) for fd, t in fds if t != CLONE_NEWPID]

    def setup() -> None:
        namespaces.join(pid_fds)   # for our children only
        child = os.fork()
        if child != 0:
            relay(child)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        namespaces.join(other)     # mnt last: it changes what paths mean
        os.fchdir(root)
        os.chroot(".")
        namespaces.join(user_ns)   # last: it gives up our power over the other namespaces
        os.chdir(workdir or spec.workdir or "/")
        security.check_cwd()
        security.apply(security.usable(spec), user if user is not None else spec.user, spec.seccomp, env)

    try:
        pid = launch.spawn(cmd, mgr.join, env=env, child_setup=console.wrap(setup) if console else setup,
                           keep_fds=keep_fds)
    finally:
        for fd, _t in fds + user_ns:
            os.close(fd)
        os.close(root)
    return _wait(pid, console, interactive)


def _wait(pid: int, console: Console | None, interactive: bool) -> int:
    if console is None:
        return launch.wait_forwarding(pid)
    from cgagent import terminal

    return terminal.proxy(pid, console.receive(), interactive)

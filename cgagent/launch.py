"""Fork and exec a command inside a cgroup, reporting exec failures back to the parent."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

from cgagent.errors import CANNOT_INVOKE, NOT_FOUND, CgagentError
from cgagent.signals import FORWARDED

TYPE_CHECKING = False   # not typing's own: the thin client's path does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import NoReturn

WAITED = (*FORWARDED, signal.SIGCHLD)


def which(cmd: str, path: str | None = None) -> str | None:
    """shutil.which without importing shutil (start-up time matters here)."""
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) and not os.path.isdir(cmd) else None
    for d in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        full = os.path.join(d or ".", cmd)
        if os.access(full, os.X_OK) and not os.path.isdir(full):
            return full
    return None


def require_command(name: str, path: str | None = None) -> None:
    """Refuse, before anything is made, a command exec would refuse: not found (127), or there but
    not executable (126: a directory, a file without x permission), as a shell and Docker tell them."""
    if which(name, path) is not None:
        return
    if "/" in name and os.path.exists(name):
        why = "it is a directory" if os.path.isdir(name) else "permission denied"
        raise CgagentError(f"cannot execute {name}: {why}", "give an executable file", exit_code=CANNOT_INVOKE)
    raise CgagentError(f"command not found: {name}", "check the name and PATH", exit_code=NOT_FOUND)


MAX_PRESERVE_FDS = 1024


def preserve_fds(value: object) -> int:
    """--preserve-fds N: how many fds from 3 on the workload inherits (as runc and podman)."""
    text = str(value if value is not None else 0)
    if not text.isdigit() or int(text) > MAX_PRESERVE_FDS:
        raise CgagentError(f"--preserve-fds {text!r} is not a count from 0 to {MAX_PRESERVE_FDS}",
                           "e.g. --preserve-fds 1 passes fd 3")
    return int(text)


# --- clone3(CLONE_INTO_CGROUP): a child born in its cgroup (cgroup v2, kernel >= 5.7)
#
# Moving a task into a cgroup (a `cgroup.procs` write) takes cgroup_threadgroup_rwsem for writing,
# which waits for an RCU grace period after a quiet spell: ~15 ms, most of a launch. A child that
# clone3() creates inside its cgroup is never moved. Python has no clone3, so it is called through
# ctypes, as os.fork() calls fork(): without CLONE_VM the child is a copy of this process, like a
# fork's, and continues in Python. What os.fork() does around fork() is done here around clone3,
# with the same C API: PyOS_BeforeFork (the import lock, os.register_at_fork's before hooks),
# then PyOS_AfterFork_Child (the GIL, the thread states, the threading module, the child hooks) or
# PyOS_AfterFork_Parent. The call goes through ctypes.PyDLL so that it keeps the GIL (a CDLL call
# releases it, and a child copied while another thread held it would wait for it forever).
# What glibc's fork() adds and a raw clone3 skips: its pthread_atfork handlers, and the locks it
# takes when the process has threads (malloc's, stdio's). So clone3 is used only while the process
# has a single thread (then nobody can hold those locks), and the child execs soon. The child's
# glibc thread descriptor keeps the parent's tid (fork() has the kernel write the new one), which
# only raise()/pthread_kill() on itself and PI mutexes read; the code between clone3 and exec
# (spawn's child, the isolation setup) uses neither.

CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435   # the same on x86_64 and aarch64 (asm-generic numbering from 424 on)
_CLONE_ARGS = "=11Q"   # struct clone_args, 88 bytes: flags, pidfd, child_tid, parent_tid, exit_signal,
#                        stack, stack_size, tls, set_tid, set_tid_size, cgroup
_clone3_missing = False   # the kernel lacks clone3 or CLONE_INTO_CGROUP: not asked again


def clone_into(cgroup_fd: int) -> int:
    """fork(), the child created inside the cgroup v2 directory `cgroup_fd` (an O_PATH|O_DIRECTORY
    descriptor). Returns 0 in the child and its pid in the parent, as os.fork(). Raises OSError when
    the kernel cannot (ENOSYS: no clone3; E2BIG/EINVAL: no CLONE_INTO_CGROUP before 5.7; EBADF: not a
    cgroup v2 directory; EBUSY: a cgroup with controllers enabled for its children) or when the
    process has threads (EDEADLK: see above)."""
    import ctypes
    import struct
    import sys

    if len(os.listdir("/proc/self/task")) != 1:
        raise OSError(errno.EDEADLK, "clone3 from a process with threads")
    api = ctypes.PyDLL(None, use_errno=True)
    api.syscall.restype = ctypes.c_long
    for hook in (api.PyOS_BeforeFork, api.PyOS_AfterFork_Child, api.PyOS_AfterFork_Parent):
        hook.restype = None
    args = ctypes.create_string_buffer(struct.pack(_CLONE_ARGS, CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD,
                                                   0, 0, 0, 0, 0, cgroup_fd))
    size = struct.calcsize(_CLONE_ARGS)
    sys.audit("os.fork")
    api.PyOS_BeforeFork()
    pid = api.syscall(ctypes.c_long(SYS_CLONE3), args, ctypes.c_size_t(size))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return int(pid)


def _fork_into(into: str | None) -> tuple[int, bool]:
    """(os.fork()'s result, whether the child was born in the cgroup v2 directory `into`). Without
    `into`, or when clone3 cannot put it there, a plain fork: the caller moves the child."""
    global _clone3_missing
    if into is None or _clone3_missing:
        return os.fork(), False
    try:
        fd = os.open(into, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return os.fork(), False
    try:
        return clone_into(fd), True
    except OSError as e:
        _clone3_missing = e.errno in (errno.ENOSYS, errno.E2BIG, errno.EINVAL)
        return os.fork(), False
    finally:
        os.close(fd)   # in the child too: its exec would close it, its setup has no use for it


def child(cmd: list[str], env: dict[str, str] | None, stdio: tuple[int, int, int] | None,
          child_setup: Callable[[], list[str] | None] | None, keep_fds: int, w: int, go_r: int) -> NoReturn:
    """spawn's child (or a zygote, cgagent.zygote): wait for "go", set up, exec; never returns.
    Exec failures are written to `w` for the parent."""
    stage = "setup"
    try:
        if os.read(go_r, 1) != b"1":
            os._exit(125)
        own_session()
        argv = cmd
        if child_setup is not None:
            wrapper = child_setup()
            if wrapper:
                stage = "exec"
                _check_command(cmd[0], (env if env is not None else os.environ).get("PATH"))
                argv = [*wrapper, *cmd]
        stage = "exec"
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, *FORWARDED):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _close_from(3 + keep_fds, w)   # last
        if env is None:
            os.execvp(argv[0], argv)
        else:
            os.execvpe(argv[0], argv, env)
    except OSError as e:
        os.write(w, f"{stage}:{e.errno}:{e}".encode())
    except BaseException as e:
        os.write(w, f"{stage}:0:{e}".encode())
    os._exit(127)


def own_session() -> None:
    """A session of our own, as runc's init makes: the caller's terminal stays its stdio if it was,
    but is no longer our controlling one, so no TIOCSTI can type into the caller's shell and no
    terminal signal reaches us but through the caller (wait_forwarding). A zygote has one already."""
    if os.getsid(0) != os.getpid():
        os.setsid()


def _close_from(first: int, w: int) -> None:
    """Close every fd >= `first` but `w` (the exec-failure pipe, close-on-exec already).
    os.closerange is one close_range(2) call (Linux 5.9), and needs neither ctypes (milliseconds of
    import in every launch's child) nor /proc (an isolated child may have none by now)."""
    if w >= first:
        os.closerange(first, w)
        first = w + 1
    os.closerange(first, 0x7FFFFFFF)


def spawn(cmd: list[str], place: Callable[[int], None], stdio: tuple[int, int, int] | None = None,
          env: dict[str, str] | None = None, child_setup: Callable[[], list[str] | None] | None = None,
          keep_fds: int = 0, into: str | None = None, born: Callable[[int], None] | None = None,
          parked: Callable[[list[str], dict[str, str] | None, tuple[int, int, int] | None, int, int],
                           tuple[int, bool]] | None = None, private: tuple[int, ...] = ()) -> int:
    """Fork; let `place(pid)` put the child in its cgroup (cgroupfs write, or a systemd scope) while
    it waits; then the child runs `child_setup` and execs `cmd`, or `cmd` behind the program that
    child_setup returned (an init: `[init, --]`).

    With `into` (a cgroup v2 directory) the child is created inside it when the kernel can
    (clone_into); then `born(pid)` runs instead of `place(pid)`, the child waiting all the same.
    With `parked` (cgagent.zygote.taker) no fork: a zygote is handed the command and the pipes, and
    runs the child's part; `born` runs when it is in the cgroup already, else `place`.

    Only fds 0-2 and 3 .. 3+keep_fds-1 (--preserve-fds) survive the exec: anything else the caller
    leaked (a directory fd of the host reached as /proc/self/fd/N: CVE-2024-21626) is closed.
    `private`: the caller's own fds, which the child closes before anything else (its setup, which
    a workdir of /proc/self/fd/N reaches, runs before the last close).
    The signals the caller waits for (WAITED) must already be blocked; the child unblocks them.
    Raises CgagentError (exit 127/126) when the command cannot be executed.
    """
    r, w = os.pipe2(os.O_CLOEXEC)        # child -> parent: exec failure reason; EOF = exec happened
    go_r, go_w = os.pipe2(os.O_CLOEXEC)  # parent -> child: "you are in your cgroup now"
    try:
        pid, in_place = parked(cmd, env, stdio, w, go_r) if parked is not None else _fork_into(into)
    except BaseException:
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        raise
    if pid == 0:  # child: no Python-level cleanup may run here, so every path ends in exec or _exit
        try:
            for fd in (r, go_w, *private):
                os.close(fd)
        finally:
            child(cmd, env, stdio, child_setup, keep_fds, w, go_r)
    os.close(w)
    os.close(go_r)
    try:
        if not in_place:
            place(pid)
        elif born is not None:
            born(pid)
    except BaseException:
        os.close(go_w)  # EOF: the child exits 125 without running anything
        os.close(r)
        os.waitpid(pid, 0)
        raise
    os.write(go_w, b"1")
    os.close(go_w)
    try:
        msg = os.read(r, 4096).decode(errors="replace")
    finally:
        os.close(r)
    if msg:
        os.waitpid(pid, 0)
        _exec_failure(cmd, msg)
    return pid


def _check_command(name: str, path: str | None) -> None:
    """What exec would say about `name`, for a wrapper that execs it later (its errors would be its own)."""
    if which(name, path) is None:
        raise OSError(errno.EACCES if "/" in name and os.path.exists(name) else errno.ENOENT, name)


def _exec_failure(cmd: list[str], msg: str) -> None:
    stage, _, rest = msg.partition(":")
    num, _, text = rest.partition(":")
    code = int(num or 0)
    if stage == "setup":
        raise CgagentError(f"could not set up the workload: {text}", "see `cgagent doctor`")
    if code == errno.ENOENT:
        raise CgagentError(f"command not found: {cmd[0]}", "check the name and PATH", exit_code=NOT_FOUND)
    if code in (errno.EACCES, errno.ENOEXEC, errno.EPERM):
        raise CgagentError(f"cannot execute {cmd[0]}: {os.strerror(code)}",
                           "check its permissions and format", exit_code=CANNOT_INVOKE)
    raise CgagentError(f"cannot execute {cmd[0]}: {text or 'unknown error'}", "", exit_code=CANNOT_INVOKE)


def exit_code(status: int) -> int:
    """waitpid status -> shell convention: the exit code, or 128 + signal number."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _reaped(pid: int, reap_all: bool) -> int | None:
    """pid's exit code if it has ended; with reap_all, also reap every other child that ended (a
    subreaper inherits the workload's orphans, which would stay zombies otherwise)."""
    while True:
        try:
            wpid, status = os.waitpid(-1 if reap_all else pid, os.WNOHANG)
        except ChildProcessError:
            raise CgagentError(f"process {pid} is not a child of this supervisor", "") from None
        if wpid == 0:
            return None
        if wpid == pid:
            return exit_code(status)


def wait_forwarding(pid: int, reap_all: bool = False) -> int:
    """Wait for our child `pid`, forwarding signals sent to us. Returns its exit code.

    The terminal's too (Ctrl-C, a resize): the child has a session of its own (own_session), so they
    reach only us.
    """
    while True:
        # first: it may have ended before we waited (a supervisor that has just been exec'd)
        code = _reaped(pid, reap_all)
        if code is not None:
            return code
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo == signal.SIGCHLD:
            continue
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass

"""Launches without a cgroup migration on cgroup v1 (issue 14, ../shared/notes/launch-path.md).

Moving a task into a cgroup (a `cgroup.procs` write) waits for an RCU grace period after a quiet
spell: ~16 ms, most of a launch. A process forked inside its cgroup is never moved. So the agent's
parked request runners (cgagent.api.launcher) each hold, at idle, a cgroup of their own in the
default parent (a "pool" cgroup, named POOL_PREFIX...) with a zygote in it: a child of theirs, moved
in then, that waits on a socket. A launch that can use it (a host run whose cgroup is in the same
parent, supervised by the runner itself) renames the pool cgroup to the workload's name (cgroup v1
allows a rename within the parent) instead of making one, writes the limits, and hands the zygote
argv, environment, directory and stdio (SCM_RIGHTS): the zygote execs the workload where it is,
as launch.spawn's child would have. Anything else discards the pool cgroup (its zygote exits on
the socket's EOF, the directory is removed). A pool cgroup is never a workload: nothing records it,
and a crash leaves one that the next agent start (or `cgagent prune`) removes by its name.

Under the systemd driver on cgroup v2 there is no pool cgroup: a scope is made around processes that
exist (StartTransientUnit's PIDs), and systemd moves them. The zygote (and the PID 1 it forks ahead)
waits where the runner is, and a launch that can use it asks systemd to make the workload's scope
around them (`companions`): the fork of the runner, the unshare of the pid namespace and the fork of
its PID 1 were done at idle.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from cgagent import procs

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:   # the direct path asks claim() too: it must not pay for socket's import
    import socket
    from typing import Any

    from cgagent.state import Record

POOL_PREFIX = ".cgagent-pool-"
MAX_JOB = 256 * 1024
PLACED = b"placed"


class _Slot:
    def __init__(self, dirs: dict[str, str], pid: int, sock: socket.socket) -> None:
        self.dirs = dirs
        self.placed = bool(dirs)   # in a pool cgroup; else where the runner is (systemd moves it)
        self.pid = pid
        self.sock = sock
        self.owner = os.getpid()
        self.claimed = False
        self.pid1: int | None = None   # the PID 1 forked ahead, as the zygote reported it (0: none)


_slot: _Slot | None = None


def _unique(dirs: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(dirs.values()))   # controllers mounted together share a directory: one each


def park(dirs: dict[str, str], make: Callable[[], None], place: Callable[[int], None]) -> None:
    """Make the pool cgroup `dirs` (`make`), fork this process's zygote and move it in (`place`).
    No `dirs`: no pool cgroup, the zygote stays here (the systemd driver's: see above)."""
    import socket

    global _slot
    make()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            mine.close()
            _zygote(theirs)
        finally:
            os._exit(125)
    theirs.close()
    _slot = _Slot(dict(dirs), pid, mine)
    try:
        place(pid)
        mine.send(PLACED)   # in its cgroup now: what it forks from here is born there too
    except BaseException:
        discard()
        raise


def fits(rec: Record) -> bool:
    """Whether a zygote can launch `rec`: it takes argv, env and stdio, and makes an isolation's setup
    itself, in a run supervised by this process; nothing that needs more in the child (ulimits, a
    host command's user/dir/init, inherited fds, a terminal) or a supervisor of its own. One answer
    for claim()'s caller and taker()'s, so a claimed zygote is never left unused (or the reverse)."""
    return not (rec.detached or rec.preserve_fds or rec.ulimits or rec.process or rec.tty)


def claim(dirs: dict[str, str], usable: bool) -> bool:
    """Rename this process's pool cgroup to `dirs` (a new workload's, in the same parent): True when
    done. False (the pool cgroup discarded) when there is none, it is not `usable` for this launch,
    or it is in another parent."""
    s = _slot
    if s is None or s.claimed or s.owner != os.getpid():
        return False
    if not s.placed:   # nothing to rename: systemd makes the scope around the zygote (companions)
        if not usable:
            discard()
            return False
        s.dirs, s.claimed = dict(dirs), True
        return True
    same = usable and s.dirs.keys() == dirs.keys() and all(
        os.path.dirname(s.dirs[c]) == os.path.dirname(dirs[c]) for c in dirs)
    renamed: list[str] = []
    if same:
        try:
            for c in dirs:
                if s.dirs[c] not in renamed:   # a directory shared by controllers: once
                    os.rename(s.dirs[c], dirs[c])
                    renamed.append(s.dirs[c])
        except OSError:
            for c in dirs:   # back to where discard() looks for them
                if s.dirs[c] in renamed and os.path.isdir(dirs[c]):
                    with contextlib.suppress(OSError):
                        os.rename(dirs[c], s.dirs[c])
            same = False
    if not same:
        discard()
        return False
    s.dirs, s.claimed = dict(dirs), True
    return True


def taker(dirs: dict[str, str], isolation: dict[str, Any] | None = None, netfd: int | None = None,
          state_dir: str | None = None
          ) -> Callable[[list[str], dict[str, str] | None, tuple[int, int, int] | None, int, int],
                        tuple[int, bool]] | None:
    """For launch.spawn: the zygote claimed for `dirs` by this process, else None; it answers its pid
    and whether it is in the cgroup already. An isolated run's zygote makes its child_setup itself
    (cgagent.isolation.child.make_setup) from the spec's record and the network namespace's fd: the
    same closure spawn's child would have run."""
    s = _slot
    if s is None or not s.claimed or s.dirs != dirs or s.owner != os.getpid():
        return None

    def take(cmd: list[str], env: dict[str, str] | None, stdio: tuple[int, int, int] | None,
             w: int, go_r: int) -> tuple[int, bool]:
        import array
        import json
        import socket

        global _slot
        job = {"cmd": cmd, "env": dict(os.environ) if env is None else env, "cwd": os.getcwd(),
               "isolation": isolation, "state_dir": state_dir}
        fds = array.array("i", [w, go_r, *(stdio if stdio is not None else (0, 1, 2)),
                                *([netfd] if netfd is not None else [])])
        _pid1_of(s)   # read first: closing a unix socket with unread data resets the zygote's end
        s.sock.sendmsg([json.dumps(job).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        s.sock.close()
        _slot = None   # the workload's now: its supervisor waits for it, its cgroup is the workload's
        return s.pid, s.placed

    return take


def companions(isolation: dict[str, Any] | None) -> list[int]:
    """The processes that must join the workload's cgroup with the zygote claimed by this process,
    when it is in none yet: the PID 1 forked ahead, if the job will be handed to it (_for_pid1, the
    zygote's own test). It waits for "go" (cgagent.launch.child) as the zygote does, so it is alive
    while the cgroup is made around them."""
    s = _slot
    if s is None or not s.claimed or s.placed or s.owner != os.getpid() or not _for_pid1(isolation):
        return []
    pid1 = _pid1_of(s)
    return [pid1] if pid1 else []


def _pid1_of(s: _Slot) -> int:
    """The pid of the zygote's PID 1 forked ahead (0: none), which it sends once it has forked it."""
    if s.pid1 is None:
        try:
            word = s.sock.recv(32)
        except OSError:
            word = b""
        s.pid1 = int(word) if word.isdigit() else 0
    return s.pid1


def held_fds() -> set[int]:
    """The fds this process must keep for its zygote (when it closes what it inherited)."""
    s = _slot
    return {s.sock.fileno()} if s is not None and s.owner == os.getpid() else set()


def discard() -> None:
    """Give up this process's pool cgroup, if it has one unclaimed: the zygote ends (EOF on its
    socket), then the directories go."""
    global _slot
    s = _slot
    if s is None or s.owner != os.getpid():
        return
    _slot = None
    s.sock.close()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(s.pid, 0)
    if not s.claimed:   # a claimed one is the workload's: its own cleanup removes it
        for d in sorted(_unique(s.dirs), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _zygote(sock: socket.socket) -> None:
    """Wait for a job (or EOF: discarded), then become the workload: launch's child code, here.

    Once in its cgroup, the zygote also forks the PID 1 of a new pid namespace ahead of the job
    (_fork_pid1): an isolated run in a pid namespace of its own (the default) is handed to it, and
    the zygote becomes its relay, as spawn's child does in cgagent.isolation.child, minus the
    unshare and the fork at launch. Any other job ends that PID 1 first."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the agent's terminal is not ours while we wait
    os.setsid()
    procs.close_all_but({0, 1, 2, sock.fileno()})
    try:
        if sock.recv(len(PLACED)) != PLACED:
            return   # discarded before it was placed
        pid1 = _fork_pid1(sock)
    except OSError:
        return
    try:
        sock.send(str(pid1[0] if pid1 is not None else 0).encode())   # for companions()
    except OSError:   # discarded meanwhile: our PID 1 ends before we do (our cgroup is removed then)
        _end_pid1(pid1)
        return
    try:
        job = _receive(sock)
    except BaseException:
        _end_pid1(pid1)
        raise
    if job is None:
        _end_pid1(pid1)
        return
    msg, fds = job
    if pid1 is not None and _for_pid1(_json(msg).get("isolation")):
        _hand_over(pid1, msg, fds)
    _end_pid1(pid1)
    _become(msg, fds)


def _for_pid1(iso: object) -> bool:
    """An isolated run that the PID 1 forked ahead can be: a pid namespace of its own (not --pid host
    or container:NAME), and nothing its setup must look up as the host's pid namespace shows it
    (cgagent.isolation.child.make_setup): not --userns (its helper's maps are written by pid), not
    --ipc container:NAME (NAME's processes are found in its cgroup.procs, which a process in a
    child pid namespace sees empty)."""
    return (isinstance(iso, dict) and not iso.get("pid") and not iso.get("userns")
            and not str(iso.get("ipc") or "").startswith("container:"))


def _receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """A job: its JSON and its fds (w, go_r, stdin, stdout, stderr[, the network namespace])."""
    import array
    import socket

    fds = array.array("i")
    try:
        # close-on-exec as they arrive, as the direct path's are: the exec-failure pipe is kept by
        # launch.child for its exec to close, and nothing else of ours may reach the workload
        msg, anc, flags, _ = sock.recvmsg(MAX_JOB, socket.CMSG_SPACE(6 * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    except OSError:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not msg or len(fds) not in (5, 6) or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        return None
    sock.close()
    return msg, list(fds)


def _json(msg: bytes) -> dict[str, Any]:
    import json

    job = json.loads(msg)
    return job if isinstance(job, dict) else {}


def _fork_pid1(sock: socket.socket) -> tuple[int, socket.socket] | None:
    """Fork the PID 1 of a new pid namespace, which waits for a job of ours (_pid1). None when the
    kernel refuses (a pid namespace too deep, or none left): the job then goes the usual way."""
    import socket

    from cgagent.isolation.syscalls import CLONE_NEWPID, PR_SET_PDEATHSIG, prctl, unshare

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        unshare(CLONE_NEWPID)
        pid = os.fork()
    except OSError:
        _own_pid_ns()
        mine.close()
        theirs.close()
        return None
    if pid == 0:
        try:
            mine.close()
            sock.close()
            # SIGKILL once the zygote (its relay to be) is gone; should it be gone already, the end
            # of the socket says so (getppid() is 0 here: the parent is outside our namespace)
            prctl(PR_SET_PDEATHSIG, 9)
            _pid1(theirs)
        finally:
            os._exit(125)
    theirs.close()
    return pid, mine


def _own_pid_ns() -> None:
    """Children of ours in our own pid namespace again (after unshare(CLONE_NEWPID))."""
    from cgagent.isolation.syscalls import CLONE_NEWPID, setns

    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, CLONE_NEWPID)
    finally:
        os.close(fd)


def _end_pid1(pid1: tuple[int, socket.socket] | None) -> None:
    """The job is not for the PID 1 forked ahead: it ends (EOF), and our children are born in our
    pid namespace again (a host run's children, or the isolation's own unshare, need that)."""
    if pid1 is None:
        return
    pid, to = pid1
    to.close()
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    _own_pid_ns()


def _hand_over(pid1: tuple[int, socket.socket], msg: bytes, fds: list[int]) -> None:
    """Give the job to the PID 1 forked ahead and relay for it (never returns): the zygote is the
    recorded pid, in the workload's network namespace too, waiting for PID 1 and exiting with its
    status, as cgagent.isolation.child's relay does. If the hand-over fails, the job goes the usual way."""
    import array
    import signal
    import socket

    from cgagent import launch

    pid, to = pid1
    try:
        to.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    except OSError:
        return
    try:
        if len(fds) > 5:   # first, so the relay (the recorded pid) names the namespace too
            from cgagent.isolation.syscalls import CLONE_NEWNET, setns

            setns(fds[5], CLONE_NEWNET)
        signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
        from cgagent.isolation.child import relay

        relay(pid)
    finally:
        os._exit(255)


def _pid1(sock: socket.socket) -> None:
    """The PID 1 forked ahead: wait for the zygote's job (EOF: not ours), then become the workload."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):   # else the job builds it, as spawn's child does
        from cgagent.isolation import seccomp
        from cgagent.isolation.spec import DEFAULT_CAPS

        seccomp.prepare(DEFAULT_CAPS)
    job = _receive(sock)
    if job is not None:
        _become(*job, pid_ns_made=True)


def _become(msg: bytes, fds: list[int], pid_ns_made: bool = False) -> None:
    """Run the job: launch's child code (never returns). `pid_ns_made`: this is PID 1 of the
    workload's pid namespace already (its relay waits for it)."""
    import signal

    from cgagent import launch

    job = _json(msg)
    w, go_r, *stdio = fds
    env, setup = job["env"], None
    try:
        os.chdir(job["cwd"])
        if job.get("isolation") is not None:
            from cgagent.isolation.child import make_setup
            from cgagent.isolation.spec import IsolationSpec

            env, setup = make_setup(IsolationSpec.from_record(job["isolation"]), stdio[3] if len(stdio) > 3 else None,
                                    job.get("state_dir"), pid_ns_made=pid_ns_made)
    except BaseException as e:
        os.write(w, f"setup:{getattr(e, 'errno', 0) or 0}:{e}".encode())
        os._exit(127)
    # as spawn's caller has them (the isolation's relay waits for them); the child unblocks them
    signal.pthread_sigmask(signal.SIG_BLOCK, launch.WAITED)
    launch.child(job["cmd"], env, (stdio[0], stdio[1], stdio[2]), setup, 0, w, go_r)

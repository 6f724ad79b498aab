"""The launcher: a single-threaded process forked from the agent at start, before the agent has any
thread, which forks the processes that carry out launches (a foreground run's supervisor, a detached
run's starter).

Why a process of its own: the agent serves its API from threads, and a fork from a threaded process
copies whatever lock another thread held at that moment (a module's import lock, malloc's) into a
child that has nobody to release it. The launcher has one thread and never imports anything after
its start, so its forks need no care; it has the agent's modules (preloaded before it was forked),
so the processes it forks pay for no interpreter start-up and no import.

On the wire, a SOCK_SEQPACKET pair (each message whole or not at all, so request threads may send
at once): the agent sends one JSON message {"op": ..., ...} carrying, over SCM_RIGHTS, the agent's end
of a reply pair followed by the op's own fds. The launcher forks a process for it, answers on the
reply pair "pid N" carrying a pidfd of that process (signals go through it: no pid reuse race),
and once the process has ended "exit CODE". A runner forked ahead reports its code itself once its
work is done (its workload's end recorded, its stdio closed), so that the caller does not wait for
the runner's own exit (tearing down its memory: 1-3 ms); it is reaped all the same. The launcher
ends when the agent's end closes (the agent stopped, or was killed): the processes it forked go on
(a supervisor records its workload's end).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from cgagent.errors import CgagentError
from cgagent.faults import fault
from cgagent.procs import close_all_but
from cgagent.wakeup import ready_to_read

MAX_MESSAGE = 256 * 1024   # a run request is at most 64 KiB of JSON (the API's bound)
MAX_FDS = 8
SEQPACKET = socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC

# op -> runs in the forked process with (request, fds) and returns its exit code
Op = Callable[[dict[str, Any], list[int]], int]


def _send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the fds it carries; a truncated one (never ours) is dropped as empty."""
    fds = array.array("i")
    msg, anc, flags, _addr = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        return b"", []
    return msg, list(fds)


class Launched(NamedTuple):
    """A process the launcher forked for us."""

    pid: int
    pidfd: int                 # ours to close
    reply: socket.socket       # "exit CODE" arrives here when it ends; ours to close

    def exit_code(self) -> int | None:
        """Wait for its end: its exit code (shell convention), None if the launcher went away."""
        try:
            msg = self.reply.recv(64)
        except OSError:
            return None
        word, _, num = msg.decode(errors="replace").partition(" ")
        return int(num) if word == "exit" and num.lstrip("-").isdigit() else None

    def close(self) -> None:
        os.close(self.pidfd)
        self.reply.close()


class Launcher:
    """The agent's handle on its launcher process."""

    def __init__(self, pid: int, ctl: socket.socket) -> None:
        self.pid = pid
        self.ctl = ctl

    @classmethod
    def fork(cls, ops: dict[str, Op], park: Callable[[], None] | None = None,
             look: Callable[[], None] | None = None, prepare: Callable[[], None] | None = None,
             unpark: Callable[[], None] | None = None) -> Launcher:
        """Fork the launcher. Only while this process has one thread: the point of it. `park` runs
        in each runner forked ahead of a request (at idle): what it prepares (cgagent.zygote) the
        request may use, and `unpark` removes what the request did not (once it reported its code);
        `look` runs in the launcher before each such fork (what it learns, the runner inherits);
        `prepare` runs once in the launcher, first (what a launch imports: loaded
        there, not in the agent, whose memory it would only grow)."""
        if len(os.listdir("/proc/self/task")) != 1:
            raise RuntimeError("the launcher must be forked before the agent starts any thread")
        ours, theirs = socket.socketpair(socket.AF_UNIX, SEQPACKET)
        for f in (sys.stdout, sys.stderr):
            f.flush()   # nothing of the agent's own output may be written twice
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                if prepare is not None:
                    prepare()
                _Launcher(theirs, ops, park, look, unpark).serve()
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def launch(self, op: str, request: dict[str, Any], fds: list[int]) -> Launched:
        """Have the launcher fork a process that runs `op` with `fds` (ours stay open: the caller
        closes them)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, SEQPACKET)
        try:
            try:
                _send(self.ctl, json.dumps({**request, "op": op}).encode(), [theirs.fileno(), *fds])
            finally:
                theirs.close()
            msg, got = _receive(mine)
        except BaseException:
            mine.close()
            raise
        word, _, num = msg.decode(errors="replace").partition(" ")
        if word != "pid" or not num.isdigit() or len(got) != 1:
            for fd in got:
                os.close(fd)
            mine.close()
            raise CgagentError("the agent's launcher process is gone", "restart the agent (`cgagent serve`)", 1)
        return Launched(int(num), got[0], mine)

    def stop(self) -> None:
        """Close our end (the launcher then ends) and reap it."""
        self.ctl.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


# --- the launcher process

POOL_SIZE = 2      # runners forked ahead of requests
IDLE = 0.05        # seconds without a request before the pool is refilled (not while a launch runs)
# ... and at once when a runner reports (or a child ends): a foreground run is over then, and the next
# (a script's loop of runs) comes sooner than IDLE: each would find the pool empty and pay the fork
# and cgroup move

_report_fd: int | None = None   # in a runner: its socket to the launcher, where it reports its code


def held_fds() -> set[int]:
    """The fds a runner's request must keep (cgagent.api.attach._close_inherited): its report socket."""
    return set() if _report_fd is None else {_report_fd}


class _Runner(NamedTuple):
    pid: int
    pidfd: int
    sock: socket.socket   # its request arrives here


class _Launcher:
    def __init__(self, ctl: socket.socket, ops: dict[str, Op], park: Callable[[], None] | None,
                 look: Callable[[], None] | None, unpark: Callable[[], None] | None = None) -> None:
        self.ctl = ctl
        self.ops = ops
        self.park = park
        self.look = look
        self.unpark = unpark
        self.children: dict[int, tuple[int, socket.socket | None]] = {}   # pidfd -> (pid, reply)
        self.reports: dict[int, tuple[socket.socket, int]] = {}   # a runner's socket -> (it, its pidfd)
        self.pool: list[_Runner] = []

    def serve(self) -> None:
        # Ctrl-C on the agent's terminal is the agent's to handle: it closes our socket, we end then
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            while self.step():
                pass
        finally:
            self.drain()

    def step(self) -> bool:
        """One turn: a request, an ended child, or (idle) one runner more. False: the agent is gone."""
        ctl = self.ctl.fileno()
        parked = {r.pidfd: r for r in self.pool}
        short = len(self.pool) < POOL_SIZE
        ready = ready_to_read([ctl, *self.children, *parked, *self.reports], IDLE if short else None)
        if not ready:
            self.pool.append(self.fork_runner())
            return True
        if ctl in ready:
            try:
                msg, fds = _receive(self.ctl)
            except OSError:
                msg, fds = b"", []
            if not msg and not fds:
                return False   # the agent is gone: our children go on without us
            if fds:
                self.start(msg, fds)
        ended = False
        for fd in ready:
            if fd in self.reports:
                ended = self.reported(fd) or ended   # its work is done: the next runner may be forked
        for pidfd in ready:
            if pidfd in self.children:
                self.reap(pidfd)
                ended = True
            elif pidfd in parked:   # a parked runner died (killed): not one to hand a request to
                self.pool.remove(parked[pidfd])
                parked[pidfd].sock.close()
                self.children[pidfd] = (parked[pidfd].pid, None)
                self.reap(pidfd)
        if ended and len(self.pool) < POOL_SIZE:
            self.pool.append(self.fork_runner())   # after reap(): the exit code went first
        return True

    def fork_runner(self) -> _Runner:
        if self.look is not None:
            self.look()
        ours, theirs = socket.socketpair(socket.AF_UNIX, SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 125
            try:
                ours.close()
                code = self.runner(theirs)
            finally:
                os._exit(code)
        theirs.close()
        return _Runner(pid, os.pidfd_open(pid), ours)

    def runner(self, sock: socket.socket) -> int:
        """A process forked ahead of its request: prepare, wait for the request, run it, report."""
        from cgagent import zygote

        global _report_fd
        _report_fd = sock.fileno()
        close_all_but({0, 1, 2, sock.fileno()})   # the agent's, the launcher's, other requests'
        try:
            if self.park is not None:
                with contextlib.suppress(Exception):   # nothing prepared: the launch does it all
                    self.park()
            msg, fds = _receive(sock)
            if not msg:
                return 0   # the launcher is gone, or dropped us
            code = self.run(msg, fds) % 256   # as os._exit(code) gives it
            null = os.open(os.devnull, os.O_RDWR)
            for target in (0, 1, 2):   # the caller's: a pipe's reader sees its end with the code
                os.dup2(null, target)
            os.close(null)
            with contextlib.suppress(OSError):
                sock.send(f"exit {code}".encode())
            fault("reported")
            return code
        finally:
            sock.close()
            zygote.discard()
            if self.unpark is not None:
                with contextlib.suppress(Exception):
                    self.unpark()

    def run(self, msg: bytes, fds: list[int]) -> int:
        try:
            request = json.loads(msg)
            op = self.ops[request.pop("op")]
        except (ValueError, KeyError, TypeError, AttributeError):
            return 125
        return op(request, fds)   # it closes every fd it was not given (attach._close_inherited)

    def start(self, msg: bytes, fds: list[int]) -> None:
        reply = socket.socket(fileno=fds[0])
        rest = fds[1:]
        if self.pool:   # a runner forked ahead: no fork now
            runner = self.pool.pop(0)
            pid, pidfd = runner.pid, runner.pidfd
            try:
                _send(runner.sock, msg, rest)
            except OSError:
                pass   # it died meanwhile: its pidfd says so below, the request's thread sees it end
            self.reports[runner.sock.fileno()] = (runner.sock, pidfd)
        else:
            pid = os.fork()
            if pid == 0:
                code = 125
                try:
                    close_all_but({0, 1, 2, *rest})
                    code = self.run(msg, rest)
                finally:
                    os._exit(code)
            pidfd = os.pidfd_open(pid)
        for fd in rest:
            os.close(fd)
        try:
            _send(reply, f"pid {pid}".encode(), [pidfd])
        except OSError:
            pass   # the request's thread is gone: the process runs all the same, reaped below
        self.children[pidfd] = (pid, reply)

    def reported(self, fd: int) -> bool:
        """A runner's own report of its code: passed on at once; its reap then sends nothing.
        -> whether it was one."""
        sock, pidfd = self.reports.pop(fd)
        try:
            msg = sock.recv(64)
        except OSError:
            msg = b""
        sock.close()
        pid, reply = self.children[pidfd]
        word, _, num = msg.decode(errors="replace").partition(" ")
        if reply is None or word != "exit" or not num.isdigit():
            return False   # it ended without a report (killed): its reap tells the code
        with contextlib.suppress(OSError):
            reply.send(msg)
        reply.close()
        self.children[pidfd] = (pid, None)
        return True

    def reap(self, pidfd: int) -> None:
        for fd, (sock, its) in list(self.reports.items()):
            if its == pidfd:   # ended without a report read: the code is the kernel's
                del self.reports[fd]
                sock.close()
        pid, reply = self.children.pop(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if reply is not None:
            with contextlib.suppress(OSError):
                reply.send(f"exit {128 - code if code < 0 else code}".encode())
            reply.close()
        os.close(pidfd)

    def drain(self) -> None:
        """The agent stops: the parked runners give up what they prepared and end, waited for, so that
        nothing of the pool outlives the agent; runners with a request go on."""
        for r in self.pool:
            r.sock.close()
        for r in self.pool:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(r.pid, 0)
            os.close(r.pidfd)
        self.pool = []


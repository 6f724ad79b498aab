"""Foreground runs through the agent: the caller's stdin, stdout and stderr over SCM_RIGHTS, its
signals forwarded, the exit code back.

On the wire: `POST /v1/workloads` with `"detach": false` and `Upgrade: cgagent-stdio`. A request the
agent refuses is answered as any other (JSON error). Else it answers `101 Switching Protocols`; the
caller then sends one byte "F" carrying its fds 0, 1 and 2, and afterwards a line "N\\n" for each
signal N it receives; the agent answers one line "exit CODE\\n" when the workload's supervisor ends.

The supervisor is a process that the agent's launcher forks (cgagent.api.launcher: single-threaded,
the agent's modules loaded, no interpreter start-up); it
does what the direct path's `cgagent run` does, in its own session, with the caller's fds as its
stdio: its errors reach the caller's stderr as one line, as they would directly. Should the agent go
away meanwhile, the supervisor goes on and records the exit (`cgagent ps -a` shows it)."""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from cgagent.errors import CgagentError
from cgagent.wakeup import ready_to_read

if TYPE_CHECKING:   # the agent's side: not for the thin client, which imports this module for run_attached
    from cgagent.api.launcher import Launched, Launcher, Op

from cgagent.api.runclient import MAX_LINE


def receive_stdio(sock: socket.socket) -> list[int] | None:
    """The caller's three fds (None: it sent something else, or went away)."""
    fds = array.array("i")
    try:
        msg, anc, _flags, _addr = sock.recvmsg(1, socket.CMSG_SPACE(3 * fds.itemsize))
    except OSError:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if msg == b"F" and len(fds) == 3:
        return list(fds)
    for fd in fds:
        os.close(fd)
    return None


def _close_inherited(keep: set[int]) -> None:
    """In a process forked from the agent: every fd of the agent's goes (its listening sockets, other
    callers' connections, its files). A restarted agent can bind again, the caller sees the agent's
    end and not ours, and nothing of the agent's is reachable from the request (`-w /proc/self/fd/N`)."""
    from cgagent import zygote
    from cgagent.api import launcher
    from cgagent.network import libnft, slot
    from cgagent.procs import close_all_but

    # the runner's zygote, nft context and connection made ahead (at idle, cgagent.network.workload.warm):
    # the launch may use them; and its socket to the launcher, where it reports its code (closed on exec)
    close_all_but({0, 1, 2} | keep | zygote.held_fds() | libnft.held_fds() | slot.held_fds() | launcher.held_fds())


class Caller(NamedTuple):   # not a dataclass: dataclasses (inspect, ast) cost a thin client ~6 ms
    """What a host workload inherits from the CLI on the direct path: its environment and directory.
    The agent's own would be wrong (`FOO=1 cgagent run -- sh -c 'echo $FOO'`)."""

    environ: dict[str, str] | None
    cwd: str | None

    @classmethod
    def of(cls, body: dict[str, Any]) -> Caller:
        return cls(body.get("environ"), body.get("cwd"))

    def enter(self) -> None:
        """In the forked process that runs the request: become the caller's context."""
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError as e:
                raise CgagentError(f"cannot enter the caller's directory {self.cwd} ({e.strerror})",
                                   "run it from a directory the agent can reach") from None
        if self.environ is not None:
            os.environ.clear()
            os.environ.update(self.environ)


def _become_child(caller: Caller, stdio: list[int], keep: set[int] | None = None) -> None:
    """In a process just forked from a request's thread: stdio, session, signals and context of its own."""
    from cgagent.api.stderr import real_stderr

    real_stderr()
    os.setsid()   # the agent's terminal signals (if it has one) are not the caller's
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    _close_inherited(keep or set())
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    caller.enter()


def _request(fields: dict[str, Any], host: Any, store: Any) -> Any:
    """The run request, built in the caller's context: the defaults that come from the environment
    (CGAGENT_DEFAULT_NET, CGAGENT_ROOT, PATH, `-e NAME`) and relative paths are the caller's."""
    from cgagent.api.runreq import request

    return request(fields, host, store.root)


class Pool:
    """The launcher's zygotes (cgagent.zygote), for the agent's default driver and parent (its
    environment's):
    - cgroup v1, cgroupfs driver: each in a pool cgroup in the default parent. The pool makes that
      parent (remembered as a workload's parents are, pruned once the pool is gone) only once the
      launcher has seen it exist, that is once a workload was made there: an agent that launched
      nothing makes no cgroup.
    - cgroup v2, systemd driver: in no cgroup of their own (systemd makes a scope around them).
    - cgroup v2, cgroupfs driver: none; clone3(CLONE_INTO_CGROUP) already creates the workload in
      its cgroup (cgagent.launch). v1 with systemd: none either (its other hierarchies would need joining)."""

    def __init__(self, host: Any, store: Any) -> None:
        self.host, self.store = host, store
        self.parent: str | None = None
        self.dirs: dict[str, str] | None = None   # the default parent's pool cgroup, as a workload's ({}: none)
        self.seen = False

    def _probe(self) -> dict[str, str] | None:
        from cgagent.api.runreq import request
        from cgagent.cgroups import new_manager
        from cgagent.runtime import select_driver

        if self.dirs is None:
            req = request({"cmd": ["--", "true"]}, self.host, self.store.root)   # the agent's defaults
            driver = select_driver(self.host, req.driver)
            mgr = new_manager(self.host, driver, req.parent, "x")
            if (driver, mgr.mode) == ("systemd", "v2"):
                self.dirs, self.seen = {}, True
            elif (driver, mgr.mode) == ("cgroupfs", "v1"):
                self.parent, self.dirs = req.parent, mgr.dirs
            else:
                return None
        return self.dirs

    def look(self) -> None:
        """In the launcher, before it forks a runner."""
        with contextlib.suppress(Exception):
            dirs = self._probe()
            here = dirs is not None and all(os.path.isdir(os.path.dirname(d)) for d in dirs.values())
            self.seen = self.seen or here

    def sweep(self) -> None:
        """At the agent's start: remove the pool cgroups a killed agent (or runner) of this state dir
        left in the default parent (its own only: their names carry the state dir's hash)."""
        from cgagent.cgroups import manager_for

        with contextlib.suppress(Exception):   # nothing to sweep, or not ours to: the launches go on
            dirs = self._probe()
            if dirs is None:
                return
            prefix = pool_name(self.store)
            names = {n for d in dirs.values() if os.path.isdir(os.path.dirname(d))
                     for n in os.listdir(os.path.dirname(d)) if n.startswith(prefix)}
            for n in names:
                with contextlib.suppress(Exception):
                    manager_for(self.host, {c: os.path.join(os.path.dirname(d), n) for c, d in dirs.items()}).destroy()

    def park(self) -> None:
        """In a runner the launcher forked ahead of its request: its zygote, then (so that the zygote
        holds none of its sockets) a bridged launch's first-use costs and its connection, made now."""
        from cgagent.network import workload as network

        try:
            self._park_zygote()
        finally:
            with contextlib.suppress(Exception):
                network.warm()

    def unpark(self) -> None:
        """In a runner whose request is done (its code reported), or that ends unused."""
        from cgagent.network import workload as network

        network.unpark()

    def _park_zygote(self) -> None:
        from cgagent import zygote
        from cgagent.cgroups import new_manager
        from cgagent.runtime.parents import remember_parents

        if self.dirs == {}:   # systemd on v2: no pool cgroup, the zygote waits here (_probe set seen)
            zygote.park({}, lambda: None, lambda _pid: None)
            return
        if not self.seen or self.parent is None:
            return
        mgr = new_manager(self.host, "cgroupfs", self.parent, pool_name(self.store) + os.urandom(4).hex())

        def make() -> None:
            # as a workload's create: the look at the parents and the mkdir under one lock, so that a
            # workload ending meanwhile cannot prune a parent this mkdir would then make unremembered
            with self.store.lock():
                made = mgr.made_by_create()
                if not made.empty():
                    remember_parents(self.store, made)
                mgr.reserve()

        zygote.park(mgr.dirs, make, mgr.apply)


def pool_name(store: Any) -> str:
    """The pool cgroups' names of the agent on `store` begin with this: a sweep removes its own only."""
    import hashlib

    from cgagent import zygote

    return zygote.POOL_PREFIX + hashlib.sha256(store.root.encode()).hexdigest()[:8] + "-"


def ops(host: Any, store: Any) -> dict[str, Op]:
    """What the launcher (cgagent.api.launcher) runs in the processes it forks."""
    return {"detached": lambda fields, fds: _detached(fields, fds, host, store),
            "attached": lambda fields, fds: _attached(fields, fds, host, store)}


def run_detached_as(launcher: Launcher, fields: dict[str, Any]) -> str:
    """runtime.run_detached in a process of the caller's context; what it prints on stderr is
    printed here (the request's capture takes it to the caller). -> the workload's name."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = launcher.launch("detached", fields, [err_w, out_w])
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    try:
        with os.fdopen(err_r, "rb") as err:
            printed = err.read(64 * 1024).decode(errors="replace")
        msg = b""
        while chunk := os.read(out_r, 65536):
            msg += chunk
    finally:
        os.close(out_r)
        child.exit_code()
        child.close()
    if printed:
        sys.stderr.write(printed)
    text = msg.decode(errors="replace")
    if text.startswith("ok:"):
        return text[3:]
    if text.startswith("err:"):
        _, ecode, line = text.split(":", 2)
        raise CgagentError(line, "", int(ecode))
    raise CgagentError("the agent's run process failed", "see the agent's log", 1)


def _detached(fields: dict[str, Any], fds: list[int], host: Any, store: Any) -> int:
    err_w, out_w = fds
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDWR)
        _become_child(Caller.of(fields), [null, null, err_w], {out_w})
        from cgagent.runtime import run_detached

        name = run_detached(_request(fields, host, store), host, store)
        os.write(out_w, b"ok:" + name.encode())
        code = 0
    except CgagentError as e:
        os.write(out_w, f"err:{e.exit_code}:{e}".encode())
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    return code


def spawn_supervisor(launcher: Launcher, fields: dict[str, Any], stdio: list[int]) -> Launched:
    """Have the launcher fork the foreground run's supervisor with `stdio` as its 0, 1, 2."""
    return launcher.launch("attached", fields, stdio)


def _attached(fields: dict[str, Any], stdio: list[int], host: Any, store: Any) -> int:
    from cgagent.errors import OWN_ERROR, report, run_code

    code = OWN_ERROR
    try:
        _become_child(Caller.of(fields), stdio)
        from cgagent.runtime import run_foreground

        code = run_foreground(_request(fields, host, store), host, store)
    except CgagentError as e:
        code = run_code(report(e))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code


def relay(sock: socket.socket, child: Launched) -> None:
    """Forward the caller's signal lines to the supervisor until it exits; send its exit code. A
    caller that went away ends it at once: its connection (a slot of the agent's table) is given back,
    and the supervisor runs on and records the end, as `docker run` killed leaves its container."""
    from cgagent.signals import FORWARDED

    buf = b""
    listening = True
    while True:
        watched = [child.reply.fileno(), sock.fileno()] if listening else [child.reply.fileno()]
        ready = ready_to_read(watched)
        if sock.fileno() in ready:
            try:
                data = sock.recv(MAX_LINE)
            except OSError:
                data = b""
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip().isdigit() and int(line) in FORWARDED:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(child.pidfd, int(line))
            if len(buf) > MAX_LINE:
                listening = False   # not our protocol: stop reading it
        if child.reply.fileno() in ready:
            code = child.exit_code()
            if code is None:
                raise CgagentError("the agent's launcher went away while the workload ran",
                                   "see `cgagent ps -a`", 1)
            with contextlib.suppress(OSError):
                sock.sendall(f"exit {code}\n".encode())
            return

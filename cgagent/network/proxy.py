"""Ports published on a loopback address, relayed in user space (Docker's docker-proxy does the same).

Why not DNAT: a packet from 127.0.0.1 that DNAT turns towards a workload must leave through the
bridge with a loopback source, which the kernel refuses unless `route_localnet=1` is set on the
bridge -- and that setting is what lets workloads reach the host's 127.0.0.1 services
(CVE-2020-8558). So cgagent never sets it: a process listens on the loopback address and opens its
own connection to the workload (from the gateway address, as docker-proxy does). Only the host can
reach a loopback listener, so nothing outside the host gets in through it.

One proxy process per connection (attachment) holds every loopback port of it. It is forked from
the connecting process (no interpreter start-up), detached (setsid, double fork) so it outlives a
`run -d` CLI, and waits for a "go" byte sent after its pid is in the attachment record: a connect
that dies before that leaves no proxy behind. Teardown kills it by pid and start time; and it ends
by itself when the host end of the workload's veth goes (the kernel deletes the pair with the
workload's namespace), so a workload that dies unseen does not leave it running.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from cgagent.errors import CgagentError

MAX_CONNS = 512             # TCP connections relayed at once per proxy
MAX_UDP_SESSIONS = 256      # UDP clients remembered at once per proxy (the oldest goes first)
UDP_IDLE = 60.0             # seconds without a reply before a UDP client is forgotten
CHUNK = 65536


def bind(ports: list[tuple[str, int, int, str]]) -> list[tuple[socket.socket, str, int, int]]:
    """Listening sockets for the loopback ports: (socket, proto, host port, workload port). Raises a
    one-line error naming the port when another program holds it."""
    out: list[tuple[socket.socket, str, int, int]] = []
    try:
        for proto, hp, cp, hip in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            out.append((s, proto, hp, cp))
            if proto == "tcp":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((hip, hp))
            except OSError as e:
                raise CgagentError(f"cannot publish {hip}:{hp}/{proto}: {e.strerror}",
                                   "another program holds that port: choose another host port") from None
            if proto == "tcp":
                s.listen(128)
    except BaseException:
        for s, *_ in out:
            s.close()
        raise
    return out


class _Pair:
    def __init__(self) -> None:
        self.left, self.lock = 2, threading.Lock()


def _pipe_tcp(a: socket.socket, b: socket.socket, done: threading.Semaphore, pair: _Pair) -> None:
    """Copy a -> b until EOF, then half-close b; the last direction to finish closes both."""
    try:
        while True:
            data = a.recv(CHUNK)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)
    with pair.lock:
        pair.left -= 1
        last = pair.left == 0
    if last:
        a.close()
        b.close()
        done.release()


def _tcp_accept(lsock: socket.socket, target: tuple[str, int], slots: threading.Semaphore) -> None:
    c, _ = lsock.accept()
    if not slots.acquire(blocking=False):
        c.close()   # bounded: a flood of connections cannot exhaust the proxy's fds
        return
    try:
        w = socket.create_connection(target, timeout=10)
        w.settimeout(None)
    except OSError:
        c.close()
        slots.release()
        return
    pair = _Pair()
    for x, y in ((c, w), (w, c)):
        threading.Thread(target=_pipe_tcp, args=(x, y, slots, pair), daemon=True).start()


class _Udp:
    def __init__(self, lsock: socket.socket, target: tuple[str, int]) -> None:
        self.lsock, self.target = lsock, target
        self.sessions: dict[tuple[str, int], tuple[socket.socket, list[float]]] = {}
        self.lock = threading.Lock()

    def _replies(self, client: tuple[str, int], s: socket.socket, seen: list[float]) -> None:
        s.settimeout(UDP_IDLE)
        try:
            while True:
                data = s.recv(CHUNK)
                seen[0] = time.monotonic()
                self.lsock.sendto(data, client)
        except OSError:
            pass
        with self.lock:
            if self.sessions.get(client, (None,))[0] is s:
                del self.sessions[client]
        s.close()

    def datagram(self) -> None:
        data, client = self.lsock.recvfrom(CHUNK)
        with self.lock:
            got = self.sessions.get(client)
            if got is None:
                if len(self.sessions) >= MAX_UDP_SESSIONS:
                    oldest = min(self.sessions, key=lambda k: self.sessions[k][1][0])
                    self.sessions.pop(oldest)[0].close()
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect(self.target)
                got = (s, [time.monotonic()])
                self.sessions[client] = got
                threading.Thread(target=self._replies, args=(client, s, got[1]), daemon=True).start()
        with contextlib.suppress(OSError):
            got[0].send(data)


RTMGRP_LINK = 1
RTM_DELLINK = 17
IFLA_IFNAME = 3


def _deleted(data: bytes, name: str) -> bool:
    """Does this batch of rtnetlink messages delete link `name`?"""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == RTM_DELLINK:
            a, end = off + 32, off + length      # after nlmsghdr (16) and ifinfomsg (16)
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == IFLA_IFNAME and data[a + 4:a + alen].rstrip(b"\0") == name.encode():
                    return True
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return False


def _link_watch(name: str) -> tuple[socket.socket, Callable[[], None]]:
    """A netlink socket told of link changes, and its handler: exit when `name` is deleted."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    nl.bind((0, RTMGRP_LINK))

    def check() -> None:
        try:
            gone = _deleted(nl.recv(CHUNK), name)
        except OSError:          # ENOBUFS: messages were lost, ask the kernel directly
            gone = True
        if gone:
            try:
                socket.if_nametoindex(name)
            except OSError:
                os._exit(0)

    try:
        socket.if_nametoindex(name)   # subscribed first, then checked: no deletion slips between
    except OSError:
        os._exit(0)
    return nl, check


def serve(listeners: list[tuple[socket.socket, str, int, int]], addr: str, watch: str | None = None) -> None:
    """The proxy's loop (never returns while a listener is open and link `watch` exists)."""
    threading.stack_size(256 * 1024)
    slots = threading.Semaphore(MAX_CONNS)
    handlers: dict[int, Callable[[], None]] = {}
    for s, proto, _, cp in listeners:
        if proto == "tcp":
            handlers[s.fileno()] = functools.partial(_tcp_accept, s, (addr, cp), slots)
        else:
            handlers[s.fileno()] = _Udp(s, (addr, cp)).datagram
    if watch:
        nl, on_link = _link_watch(watch)
        handlers[nl.fileno()] = on_link
    poll = select.poll()
    for fd in handlers:
        poll.register(fd, select.POLLIN)
    while True:
        for fd, _ in poll.poll():
            with contextlib.suppress(OSError):
                handlers[fd]()


def start(listeners: list[tuple[socket.socket, str, int, int]], addr: str, watch: str | None) -> tuple[int, int]:
    """Fork the detached proxy for `listeners` (which this process then closes). -> (its pid, the
    fd to write the go byte to once the pid is recorded; closing it unwritten ends the proxy)."""
    go_r, go_w = os.pipe()
    pid_r, pid_w = os.pipe()
    child = os.fork()
    if child == 0:   # pragma: no cover - runs in the forked processes
        try:
            os.close(go_w)
            os.close(pid_r)
            keep = sorted({go_r, pid_w, *(s.fileno() for s, *_ in listeners)})
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            low = 3
            for fd in keep:   # nothing of the CLI stays open here: no lock, no pipe, no netns fd
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, 1 << 20)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.write(pid_w, str(os.getpid()).encode())
            os.close(pid_w)
            if os.read(go_r, 1) != b"g":
                os._exit(0)
            os.close(go_r)
            serve(listeners, addr, watch)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(pid_w)
    for s, *_ in listeners:
        s.close()
    try:
        os.waitpid(child, 0)
        with os.fdopen(pid_r, "rb") as f:
            text = f.read()
        if not text:
            raise CgagentError("the port proxy did not start", "see the system log")
        return int(text), go_w
    except BaseException:
        os.close(go_w)
        raise


def go(fd: int) -> None:
    try:
        os.write(fd, b"g")
    finally:
        os.close(fd)


def stop(pid: int, start_time: int | None) -> None:
    """Kill the proxy `pid` if it is still the one we started (pid reuse guarded by its start time)."""
    import signal

    from cgagent import procs

    procs.send_signal(pid, start_time, signal.SIGKILL)

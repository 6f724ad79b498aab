"""Namespace bookkeeping: which ones a workload gets, the loopback link of a fresh netns, joining."""

from __future__ import annotations

import _socket  # the C module: `socket` costs milliseconds of imports at every launch
import fcntl
import os
import struct

from cgagent.isolation.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUTS,
    setns,
)

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
# joined in this order by `exec`: the user-visible ones first, mnt last but one (it changes paths)
JOIN_ORDER = (("cgroup", CLONE_NEWCGROUP), ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("net", CLONE_NEWNET),
              ("pid", CLONE_NEWPID), ("mnt", CLONE_NEWNS))


def flags(net: str) -> int:
    """Namespaces the workload's PID 1 unshares (pid is unshared one step earlier, before the fork)."""
    f = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP
    if net == "none":
        f |= CLONE_NEWNET
    return f


def up_loopback() -> None:
    """`ip link set lo up` in the current netns, with one ioctl instead of netlink."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        cur = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", cur | IFF_UP))
    finally:
        s.close()


def open_namespaces(pid: int) -> list[tuple[int, int]]:
    """fds of `pid`'s namespaces that differ from ours, in JOIN_ORDER."""
    out = []
    for name, nstype in JOIN_ORDER:
        theirs = f"/proc/{pid}/ns/{name}"
        try:
            if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue
        except FileNotFoundError:
            continue
        out.append((os.open(theirs, os.O_RDONLY | os.O_CLOEXEC), nstype))
    return out


def join(fds: list[tuple[int, int]]) -> None:
    for fd, nstype in fds:
        setns(fd, nstype)
        os.close(fd)


def init_pid(candidates: list[int]) -> int | None:
    """The host pid of the process that is PID 1 of a child pid namespace, among `candidates`."""
    for pid in candidates:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) >= 2 and ids[-1] == "1":
                            return pid
        except OSError:
            continue
    return None

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


def flags(net: str, ipc: str = "") -> int:
    """Namespaces the workload's PID 1 unshares (pid is unshared one step earlier, before the fork).
    `ipc`: "" its own, host or container:NAME (joined by setns, not unshared)."""
    f = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWCGROUP
    if not ipc:
        f |= CLONE_NEWIPC
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


def _others(candidates: list[int], ns: str) -> list[int]:
    """The `candidates` whose namespace `ns` is not ours, in pid order."""
    ours = os.stat(f"/proc/self/ns/{ns}").st_ino
    out = []
    for pid in sorted(candidates):
        try:
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino != ours:
                out.append(pid)
        except OSError:
            continue
    return out


def top_pid(candidates: list[int]) -> int | None:
    """The first process of a workload that is not its pid namespace's PID 1 (--pid host, --pid
    container:NAME): the one of `candidates` in a mount namespace other than ours (not a systemd
    scope's keeper, not a relay) whose parent is not in such a namespace too."""
    inside = set(_others(candidates, "mnt"))
    for pid in sorted(inside):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid not in inside:
            return pid
    return None


def inner_pid(candidates: list[int]) -> int | None:
    """A process of the workload in a pid namespace other than ours, or None (--pid host)."""
    found = _others(candidates, "pid")
    return found[0] if found else None


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

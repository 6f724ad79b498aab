"""Working in another network namespace: a netlink socket opened there keeps pointing there.

setns(2) on the calling thread, open the socket, setns back: ~1 ms, where pyroute2's own
`IPRoute(netns=...)` forks a helper (~15 ms).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from cgagent.errors import CgagentError

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    from cgagent.isolation.syscalls import setns

    setns(fd, CLONE_NEWNET)


def open_ns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgagentError(f"cannot open network namespace {path}: {e.strerror}",
                           "is the workload still running?") from None


@contextlib.contextmanager
def entered(path: str | None) -> Iterator[None]:
    """Run the block with this thread in the namespace `path` (None: stay where we are)."""
    if path is None:
        yield
        return
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    there = open_ns(path)
    try:
        _setns(there)
        try:
            yield
        finally:
            _setns(here)
    finally:
        os.close(there)
        os.close(here)


def _iproute_class() -> Any:
    """pyroute2's IPRoute without running pyroute2/__init__, which imports IPDB, NDB, conntrack,
    wireguard... (~70 ms of a launch that needs none of them). The package entry is a stand-in only
    while the submodule loads; a later `import pyroute2` runs the real __init__ over the same submodules."""
    if "pyroute2" in sys.modules:
        from pyroute2 import IPRoute

        return IPRoute
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    if spec is None:
        raise CgagentError("pyroute2 is not installed", "pip install pyroute2")
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    try:
        from pyroute2.iproute.linux import IPRoute
    finally:
        del sys.modules["pyroute2"]
    return IPRoute


def iproute(path: str | None = None) -> Any:
    """An IPRoute whose socket lives in the namespace `path` (None: the host's)."""
    cls = _iproute_class()
    with entered(path):
        return cls()


def same_ns(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def in_root_netns() -> bool:
    """True when the agent runs in PID 1's network namespace (the machine's own network)."""
    try:
        return same_ns("/proc/1/ns/net", "/proc/thread-self/ns/net")
    except OSError:
        return False


def sysctl(key: str, value: str, path: str | None = None) -> None:
    """Write net.* sysctl `key` (dotted) in namespace `path`: /proc/sys/net follows the opener's netns."""
    with entered(path):
        fd = os.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_sysctl(key: str, path: str | None = None) -> str:
    with entered(path), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def new_netns() -> int:
    """A fresh network namespace, held by the returned fd (O_CLOEXEC) and nothing else: it vanishes
    with its last process and the last fd, so a crash leaves nothing mounted behind."""
    from cgagent.isolation.syscalls import unshare

    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            _setns(here)
    finally:
        os.close(here)


def fd_path(fd: int) -> str:
    return f"/proc/{os.getpid()}/fd/{fd}"

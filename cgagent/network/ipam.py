"""Persistent address allocation, as CNI's host-local IPAM does it.

Under <root>/ipam/<network>/: one file per allocated address (created with O_EXCL, content = owner),
`lock` (flock serialises allocation across processes), `last_reserved_ip.0` (the cursor: the next
allocation starts after it, so a just-released address is not handed out again at once; rewritten
in place, as a rename would give every launch a new inode to allocate and an old one to free).
None of it is fsync'd: an allocation stands for an address in use by a link, which a power loss ends
too; a file such a loss left empty names no owner alive, and prune frees its address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator

from cgagent.errors import CgagentError
from cgagent.network.files import write_in_place

CURSOR = "last_reserved_ip.0"
LOCK = "lock"


class Ipam:
    def __init__(self, directory: str, subnet: str, gateway: str | None = None,
                 range_start: str | None = None, range_end: str | None = None) -> None:
        self.dir = directory
        self.net = ipaddress.IPv4Network(subnet, strict=False)
        self.gateway = ipaddress.IPv4Address(gateway) if gateway else None
        hosts_first = self.net.network_address + 1 if self.net.prefixlen < 31 else self.net.network_address
        hosts_last = self.net.broadcast_address - 1 if self.net.prefixlen < 31 else self.net.broadcast_address
        self.first = ipaddress.IPv4Address(range_start) if range_start else hosts_first
        self.last = ipaddress.IPv4Address(range_end) if range_end else hosts_last

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _cursor(self) -> ipaddress.IPv4Address | None:
        try:
            with open(os.path.join(self.dir, CURSOR)) as f:
                ip = ipaddress.IPv4Address(f.read().strip())
        except (OSError, ValueError):
            return None
        return ip if self.first <= ip <= self.last else None

    def _set_cursor(self, ip: ipaddress.IPv4Address) -> None:
        # in place, not durable: a cursor a crash tore or lost only makes the next allocation start
        # earlier (an unreadable one is no cursor)
        write_in_place(os.path.join(self.dir, CURSOR), str(ip))

    def _candidates(self) -> Iterator[ipaddress.IPv4Address]:
        """Every address of the range once, starting after the cursor and wrapping around."""
        first, last = int(self.first), int(self.last)
        cur = self._cursor()
        start = int(cur) + 1 if cur is not None else first
        size = last - first + 1
        for i in range(size):
            n = first + (start - first + i) % size
            yield ipaddress.IPv4Address(n)

    def allocate(self, owner: str, network: str = "") -> ipaddress.IPv4Address:
        with self._locked():
            for ip in self._candidates():
                if ip == self.gateway:
                    continue
                try:
                    fd = os.open(os.path.join(self.dir, str(ip)),
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                except FileExistsError:
                    continue
                try:
                    os.write(fd, owner.encode())
                finally:
                    os.close(fd)
                self._set_cursor(ip)
                return ip
        raise CgagentError(f"network {network or self.net} is full: no free address in {self.first}-{self.last}",
                           "disconnect a workload, run `cgagent network prune`, or use a larger --subnet")

    def reserve(self, ip: ipaddress.IPv4Address, owner: str, network: str = "") -> ipaddress.IPv4Address:
        """A static address (--ip): taken if free, else one line naming who holds it."""
        if ip not in self.net or ip in (self.net.network_address, self.net.broadcast_address) or ip == self.gateway:
            raise CgagentError(f"--ip {ip} is not a free host address of {network or self.net} ({self.net})",
                               "give an address inside the subnet, not its gateway")
        with self._locked():
            try:
                fd = os.open(os.path.join(self.dir, str(ip)), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644)
            except FileExistsError:
                raise CgagentError(f"--ip {ip} is in use on {network or self.net}",
                                   "give another address (see `cgagent network ls`)") from None
            try:
                os.write(fd, owner.encode())
            finally:
                os.close(fd)
        return ip

    def release(self, owner: str) -> list[str]:
        """Free every address `owner` holds (idempotent). Returns them."""
        freed = []
        with self._locked():
            for ip, who in self.entries().items():
                if who == owner:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.dir, ip))
                    freed.append(ip)
        return freed

    def reown(self, ip: str, old: str, new: str) -> None:
        """The address `old` holds passes to `new` (a connection made ahead, taken over). Raises when
        `old` does not hold it (any more)."""
        path = os.path.join(self.dir, ip)
        with self._locked():
            try:
                with open(path) as f:
                    held = f.read().strip() == old
            except FileNotFoundError:
                held = False
            if not held:
                raise CgagentError(f"address {ip} is no longer held by {old}", "run the workload again")
            tmp = f"{path}.tmp.{os.getpid()}"   # not an address: entries() skips it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, new.encode())
            finally:
                os.close(fd)
            os.rename(tmp, path)

    def entries(self) -> dict[str, str]:
        """address -> owner for every allocated address."""
        out: dict[str, str] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for n in names:
            try:
                ipaddress.IPv4Address(n)
            except ValueError:
                continue  # lock, cursor, temp files
            try:
                with open(os.path.join(self.dir, n)) as f:
                    out[n] = f.read().strip()
            except FileNotFoundError:
                continue
        return out

    def destroy(self) -> None:
        """Remove the directory of a network that is gone (only when no address is allocated)."""
        for n in (LOCK, CURSOR):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, n))
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)

"""A minimal inotify binding (ctypes): the stdlib has none, and the agent needs only watch + read."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator

TYPE_CHECKING = False   # not typing's own: `logs -f` and `wait` import this module on their fast path
if TYPE_CHECKING:
    from typing import TypeVar

    User = TypeVar("User")

IN_MODIFY = 0x00000002
IN_OPEN = 0x00000020
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# How often a follower without an inotify instance looks instead: what it reports is late by up to
# this much, never early.
POLL_SECONDS = 1.0

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
# the libc this process already has (ctypes.util.find_library would import subprocess, tempfile, shutil
# and run ldconfig: ~10 ms on every CLI start that reads a cgroup)
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    """One inotify instance; `fd` goes into select/epoll, `read()` drains what is queued."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        _libc.inotify_rm_watch(self.fd, wd)  # EINVAL when the kernel already dropped it: fine

    def read(self) -> Iterator[tuple[int, int, str]]:
        """(wd, mask, name) of every queued event; nothing when the queue is empty."""
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            pos = 0
            while pos < len(buf):
                wd, mask, _cookie, n = _HEADER.unpack_from(buf, pos)
                pos += _HEADER.size
                name = buf[pos:pos + n].rstrip(b"\0").decode(errors="replace")
                pos += n
                yield wd, mask, name

    def drain(self) -> None:
        """Forget what is queued: for a caller that only needed the wakeup."""
        for _ in self.read():
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Follow:
    """What a follower of some files waits on: an inotify instance watching them or, when the kernel
    gives none (root's instances are counted host-wide, fs.inotify.max_user_instances, 128 by
    default; watches past max_user_watches), a look every POLL_SECONDS, as `tail -f` reverts to
    polling. Wait with ready_to_read(fds, timeout) (or wakeup.readable), then drain()."""

    def __init__(self, watches: list[tuple[str, int]]) -> None:
        self._ino: Inotify | None = None
        try:
            ino = Inotify()
        except OSError:
            return
        try:
            for path, mask in watches:
                ino.add(path, mask)
        except OSError:
            ino.close()
            return
        self._ino = ino

    @property
    def fds(self) -> list[int]:
        return [] if self._ino is None else [self._ino.fd]

    @property
    def timeout(self) -> float | None:
        return POLL_SECONDS if self._ino is None else None

    def drain(self) -> None:
        if self._ino is not None:
            self._ino.drain()

    def close(self) -> None:
        if self._ino is not None:
            self._ino.close()

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def release(ino: Inotify | None, users_by_wd: dict[int, list[User]], wd: int, user: User) -> None:
    """`user` stops watching `wd`; the kernel's watch, shared by everyone on that file (one inode,
    one wd), goes with its last user. A wd the kernel dropped already (IN_IGNORED) is let be."""
    users = users_by_wd.get(wd)
    if users is None or user not in users:
        return
    users.remove(user)
    if not users:
        del users_by_wd[wd]
        if ino is not None:
            ino.remove(wd)

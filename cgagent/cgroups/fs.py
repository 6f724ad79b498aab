"""Small, exact helpers for cgroup files: every read and write goes through here."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from collections.abc import Iterator

from cgagent.errors import CgagentError


class CgroupGone(FileNotFoundError):
    """A cgroup's file read as missing and its directory is gone: removed while it was read."""


def gone_check(d: str) -> None:
    """Called when a file that always exists with its controller was missing: was it the cgroup?"""
    if not os.path.isdir(d):
        raise CgroupGone(d)


def oom_counter(d: str, oom_file: str) -> tuple[int, int]:
    """Reader.oom_counter's read, given the memory directory and the mode's file holding the line
    `oom_kill N`: (the directory's inode, N), both through one open directory."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        gen = os.fstat(dfd).st_ino
        fd = os.open(oom_file, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
        try:
            text = os.read(fd, 4096)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    for line in text.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"oom_kill" and value.isdigit():
            return gen, int(value)
    raise ValueError(f"{d}: no oom_kill counter")


class DirFds:
    """O_PATH descriptors of cgroup directories, so that read() can openat() a file relative to its
    directory: on cgroupfs that skips ~40% of the cost of an open. The exporter reads ~14 files in
    each of ~1000 directories per scrape; it activates this with `dir_fds()` and calls `keep()`
    after each discovery so removed cgroups are not held. At most `limit` descriptors."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fds: dict[str, int] = {}

    def get(self, d: str) -> int | None:
        fd = self.fds.get(d)
        if fd is None and len(self.fds) < self.limit:
            try:
                # interned: the key is the target's own directory string (cgroups.tree), not a copy
                fd = self.fds[sys.intern(d)] = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        return fd

    def drop(self, d: str) -> None:
        fd = self.fds.pop(d, None)
        if fd is not None:
            os.close(fd)

    def keep(self, dirs: set[str]) -> None:
        for d in [d for d in self.fds if d not in dirs]:
            self.drop(d)

    def close(self) -> None:
        self.keep(set())


_local = threading.local()


@contextlib.contextmanager
def dir_fds(cache: DirFds) -> Iterator[None]:
    """read() in this thread opens files through `cache`'s directory descriptors."""
    _local.dirfds = cache
    try:
        yield
    finally:
        _local.dirfds = None


_RDONLY = os.O_RDONLY | os.O_CLOEXEC


def _open(path: str) -> int:
    cache: DirFds | None = getattr(_local, "dirfds", None)
    if cache is not None:
        d, _, name = path.rpartition("/")
        dfd = cache.fds.get(d)
        if dfd is None:
            dfd = cache.get(d)
        if dfd is not None:
            try:
                return os.open(name, _RDONLY, dir_fd=dfd)
            except FileNotFoundError:
                cache.drop(d)   # removed (maybe re-created since): the path decides below
    return os.open(path, _RDONLY)


def read_bytes(path: str) -> bytes:
    """The whole file. os.open/os.read, not open(): no io stack. The exporter reads ~12 files per
    cgroup per scrape through here, so it is kept to the syscalls: the calls and string work around
    them once cost as much as the kernel's side (bench.exporter's floor)."""
    fd = _open(path)
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:  # cgroup.procs of a big cgroup: read to the end
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


def read(path: str) -> str:
    return read_bytes(path).decode()


def read_int(path: str) -> int | None:
    """An integer file; "max" reads as -1. A missing file is None (controller absent, old kernel)."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        return int(data)   # int() takes ASCII bytes and ignores the newline
    except ValueError:
        if data.strip() == b"max":
            return -1
        raise


def read_kv(path: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat, memory.events). Missing file -> {}."""
    try:
        text = read_bytes(path).decode()
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v:
            try:
                out[k] = int(v)
            except ValueError:  # "key value more" lines: the first value counts
                out[k] = int(v.split()[0])
    return out


_NEEDLES: dict[tuple[tuple[str, ...], ...], tuple[tuple[str, tuple[bytes, ...]], ...]] = {}


def read_fields(path: str, keys: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    """Only the wanted values of a `key value` file, each by its names in order of preference
    (v1: `total_rss` else `rss`), under its first name. memory.stat has ~40 lines: finding the few
    wanted ones costs a fraction of splitting them all (the exporter reads it for every cgroup).
    Missing file -> {}."""
    try:
        data = b"\n" + read_bytes(path)
    except FileNotFoundError:
        return {}
    needles = _NEEDLES.get(keys)
    if needles is None:
        needles = _NEEDLES[keys] = tuple((names[0], tuple(f"\n{k} ".encode() for k in names)) for names in keys)
    out: dict[str, int] = {}
    for k, alternatives in needles:
        for needle in alternatives:
            i = data.find(needle)
            if i >= 0:
                start = i + len(needle)
                end = data.find(b"\n", start)
                out[k] = int(data[start:end] if end >= 0 else data[start:])
                break
    return out


def write(path: str, value: str | int) -> None:
    """Write one value; kernel refusals become one-line errors naming the file and value."""
    try:
        # O_TRUNC as runc does: harmless on cgroupfs, and fixture trees can be plain files
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CgagentError(f"{path} does not exist",
                           "the controller is not available here (see `cgagent doctor`)") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as e:
        reason = {errno.EINVAL: "invalid value", errno.EBUSY: "busy (in use by processes or children)",
                  errno.ENOSPC: "no space (not enough resources)", errno.EPERM: "permission denied",
                  errno.EACCES: "permission denied"}.get(e.errno or 0, e.strerror or "error")
        raise CgagentError(f"the kernel refused {value!r} for {path}: {reason}",
                           "check the limit against the host and the parent cgroup") from None
    finally:
        os.close(fd)


def procs(dirpath: str) -> list[int]:
    try:
        return [int(p) for p in read(os.path.join(dirpath, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def first_proc(dirpath: str) -> int | None:
    """The first process cgroup.procs lists, reading one small block (a root cgroup lists thousands)."""
    try:
        fd = _open(os.path.join(dirpath, "cgroup.procs"))
    except FileNotFoundError:
        return None
    try:
        head = os.read(fd, 64)
    finally:
        os.close(fd)
    line = head.split(b"\n", 1)[0]
    return int(line) if line and (b"\n" in head or len(head) < 64) else None


def kill_all(pids: list[int]) -> None:
    """SIGKILL each pid; ones already gone are fine (they exited on their own)."""
    import signal

    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def subdirs_bottom_up(root: str) -> list[str]:
    """root and every cgroup below it, deepest first (rmdir order)."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        out.append(dirpath)
    return out


def rmdir_tree(root: str) -> None:
    for d in subdirs_bottom_up(root):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass

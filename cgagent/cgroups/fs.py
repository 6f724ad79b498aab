"""Small, exact helpers for cgroup files: every read and write goes through here."""

from __future__ import annotations

import errno
import os

from cgagent.errors import CgagentError


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_int(path: str) -> int | None:
    """An integer file; "max" reads as -1. A missing file is None (controller absent, old kernel)."""
    try:
        text = read(path).strip()
    except FileNotFoundError:
        return None
    if text == "max":
        return -1
    return int(text)


def read_kv(path: str) -> dict[str, int]:
    """`key value` lines (cpu.stat, memory.stat, memory.events). Missing file -> {}."""
    try:
        text = read(path)
    except FileNotFoundError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v:
            out[k] = int(v.split()[0])
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

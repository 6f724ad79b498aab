"""--userns: root inside maps to an unprivileged host range (uid/gid BASE..BASE+SIZE-1).

The user namespace is made first, by a throwaway helper whose maps we write, and kept as an fd.
PID 1 then builds the whole filesystem view as real root, with the image layers (and --rootfs)
mounted *idmapped* through that namespace, so files owned by 0 in the image are owned by root
inside and by BASE on the host, and enters the user namespace last, just before dropping
privileges. Every other namespace stays owned by the host's user namespace, so root inside has no
capability over them (hostname, mounts, network config are fixed from outside).
"""

from __future__ import annotations

import ctypes
import os

from cgagent.isolation.spec import IdMap
from cgagent.isolation.syscalls import (
    AT_EMPTY_PATH,
    AT_RECURSIVE,
    CLONE_NEWUSER,
    SYS_MOUNT_SETATTR,
    MountAttr,
    _check,
    _libc,
    move_mount,
    open_tree_clone,
    unshare,
)

MOUNT_ATTR_IDMAP = 0x00100000


def make(m: IdMap) -> int:
    """An fd of a new user namespace mapping 0..size-1 to base..: made by a helper child we map."""
    r, w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.close(done_w)
            unshare(CLONE_NEWUSER)
            os.write(w, b"1")
            os.read(done_r, 1)  # stay alive until the parent holds the namespace
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(done_r)
    try:
        if os.read(r, 1) != b"1":
            raise OSError(0, "the user namespace helper failed")
        line = f"0 {m.base} {m.size}\n".encode()
        for f in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{pid}/{f}", os.O_WRONLY)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        os.close(done_w)  # the helper exits
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached, idmapped copy of the mount at `path` (attach it with move_mount)."""
    fd = open_tree_clone(path)
    attr = MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    try:
        _check(_libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE),
                             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), f"idmap {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach(fd: int, target: str) -> None:
    move_mount(fd, target)
    os.close(fd)

"""The kernel calls Python 3.11's `os` lacks: unshare, setns, mount, umount2, pivot_root, prctl, capset.

Thin ctypes wrappers that raise OSError(errno) like `os` does. Syscall numbers of x86_64 and
aarch64 where libc has no wrapper (pivot_root, capset; from 424 on the numbers are shared).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_MACHINE = os.uname().machine
SYS_PIVOT_ROOT = 41 if _MACHINE == "aarch64" else 155
SYS_CAPSET = 91 if _MACHINE == "aarch64" else 126
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    rc = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source or ''} on {target}: {os.strerror(err)}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")


def open_tree_clone(path: str | int) -> int:
    """A detached copy of the mount tree at `path` (a path, or an O_PATH fd of it): a bind mount not
    yet attached anywhere."""
    dfd, name, empty = _at(path)
    return _check(_libc.syscall(SYS_OPEN_TREE, ctypes.c_int(dfd), name,
                                ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE | empty)),
                  f"open_tree {path}")


def _at(target: str | int) -> tuple[int, bytes, int]:
    """(dirfd, path, flag) naming `target`, a path or an fd of it (AT_EMPTY_PATH)."""
    if isinstance(target, int):
        return target, b"", AT_EMPTY_PATH
    return AT_FDCWD, os.fsencode(target), 0


def move_mount(fd: int, target: str) -> None:
    """Attach the detached tree `fd` (from open_tree_clone) at `target`."""
    _check(_libc.syscall(SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD), _b(target),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount to {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    return _check(_libc.prctl(option, a2, a3, a4, a5), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.syscall(SYS_CAPSET, ctypes.byref(hdr), ctypes.byref(data)), "capset")


def set_seccomp_filter(prog: bytes) -> None:
    """Install a classic-BPF seccomp filter (`prog` = packed struct sock_filter array)."""

    class SockFprog(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


SYS_MOUNT_SETATTR = 442
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NODEV = 0x00000004


class MountAttr(ctypes.Structure):
    _fields_ = (("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64))


def mount_setattr(target: int | str, attr_set: int, recursive: bool = True, propagation: int = 0) -> None:
    """Add mount attributes to the mount tree at `target` (a path, or an open_tree fd), leaving its
    other flags as they are (a bind remount would have to restate them all); `propagation`, if
    given (MS_PRIVATE...), replaces its propagation type."""
    attr = MountAttr(attr_set, 0, propagation, 0)
    dfd, path, empty = _at(target)
    flags = (AT_RECURSIVE if recursive else 0) | empty
    _check(_libc.syscall(SYS_MOUNT_SETATTR, ctypes.c_int(dfd), path, ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {target}")

"""Opening a name beneath a directory with no symlink followed anywhere on the way: an image's
own file names (a blob, a layer member's parent) and a volume's host path at each start, which a
workload that can write a parent may have turned into a link since it was checked.

The kernel resolves it (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS); where
openat2 is missing (an old kernel, a seccomp filter), one O_NOFOLLOW open per component does the
same: a symlink anywhere fails with ELOOP.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from cgagent.regular import PATH_ONLY as _REGULAR_PATH

PATH_ONLY = _REGULAR_PATH | os.O_NOFOLLOW
DIR = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_DIRECTORY
_SYS_OPENAT2 = 437         # the same number on x86_64 and aarch64 (asm-generic table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc symbols in this process
    _libc = None
_openat2_ok = _libc is not None


def _openat2(dirfd: int, rel: str, flags: int) -> int:
    """openat2 beneath `dirfd` with no symlinks; raises OSError(ENOSYS) when the kernel or a seccomp
    filter does not offer it."""
    assert _libc is not None
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def _walk_open(dirfd: int, parts: list[str], flags: int) -> int:
    """The fallback: one O_NOFOLLOW open per component; a symlink anywhere fails with ELOOP."""
    cur = dirfd
    try:
        for p in parts[:-1]:
            if stat.S_ISLNK(os.stat(p, dir_fd=cur, follow_symlinks=False).st_mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            nxt = os.open(p, DIR, dir_fd=cur)
            if cur != dirfd:
                os.close(cur)
            cur = nxt
        return os.open(parts[-1], flags, dir_fd=cur)
    finally:
        if cur != dirfd:
            os.close(cur)


def open_beneath(dirfd: int, parts: list[str], flags: int = PATH_ONLY) -> int:
    """The file `parts` names beneath `dirfd`, opened with `flags`; OSError (ELOOP or EXDEV for a
    symlink on the way)."""
    global _openat2_ok
    if _openat2_ok:
        try:
            return _openat2(dirfd, "/".join(parts), flags)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_ok = False   # an old kernel, or a seccomp filter that refuses it
    return _walk_open(dirfd, parts, flags)

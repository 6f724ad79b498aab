"""Opening a file that must be a regular one, named by someone else (an image's blob, a policy or
configuration file, a record in the state dir): its type is checked on an O_PATH descriptor, which
opens nothing, and only a regular file is then opened for reading, through /proc/self/fd (the
same inode: no name is looked up twice). Opening is not harmless for other types: a FIFO waits for a
writer, a tape device rewinds, /dev/watchdog arms the machine's watchdog."""

from __future__ import annotations

import os
import stat

PATH_ONLY = os.O_PATH | os.O_CLOEXEC   # opens nothing: a file is read only once known regular


class NotRegular(ValueError):
    """What `path` names is not a regular file; `symlink` says whether it is a symbolic link."""

    def __init__(self, symlink: bool) -> None:
        super().__init__("a symlink" if symlink else "not a regular file")
        self.symlink = symlink


def reopen(fd: int) -> int:
    """`fd`, an O_PATH descriptor, opened for reading if it names a regular file (else NotRegular).
    `fd` is closed either way."""
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(stat.S_ISLNK(mode))
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(fd)


def open_regular(path: str, follow: bool = True, dir_fd: int | None = None) -> int:
    """A descriptor open for reading on the regular file `path` (OSError, or NotRegular); with
    follow=False a symlink at the last component is refused as one."""
    return reopen(os.open(path, PATH_ONLY | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd))

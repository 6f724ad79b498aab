"""Reading an untrusted directory tree (an OCI layout, an unpacked archive) without leaving it, and
walking or removing trees of any depth without recursion.

An image names files inside itself (`blobs/sha256/<hex>`, docker-save's `Config` and `Layers`).
Every such name is resolved beneath the tree's root with no symlink followed (cgagent.beneath),
and only regular files are read: a name can never reach a host file or a
device such as /dev/zero, and an error never reveals anything about a file outside.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import BinaryIO

from cgagent.beneath import DIR, open_beneath
from cgagent.errors import CgagentError
from cgagent.regular import NotRegular, reopen

MAX_DOC = 4 << 20          # manifest, index, config, manifest.json: containerd's limit for manifests
MAX_NAME = 4096


class Tree:
    """A directory whose files are read by names taken from untrusted documents."""

    def __init__(self, path: str, label: str) -> None:
        self.label = label
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
        except OSError as e:
            raise CgagentError(f"cannot open {label}: {e.strerror}",
                               "give an OCI layout directory or an archive") from None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, what: str, rel: str, why: str) -> CgagentError:
        return CgagentError(f"{what} {_quote(rel)} {why}",
                            "the image was refused; it may only name regular files inside itself")

    def parts(self, rel: object, what: str) -> list[str]:
        """The components of a name found in the image, refused unless it stays inside the tree."""
        if not isinstance(rel, str) or not rel:
            raise CgagentError(f"{what} path {_quote(str(rel))} is not a file name", f"{self.label} is malformed")
        if rel.startswith("/"):
            raise self._refuse(what, rel, f"is an absolute path, outside {self.label}")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._refuse(what, rel, f"leaves {self.label} (it contains '..')")
        if not parts or "\0" in rel or len(rel) > MAX_NAME:
            raise self._refuse(what, rel, "is not a valid file name")
        return parts

    def exists(self, rel: str) -> bool:
        try:
            os.close(open_beneath(self.fd, self.parts(rel, "file")))
        except (OSError, CgagentError):
            return False
        return True

    def open(self, rel: object, what: str) -> BinaryIO:
        """A regular file inside the tree, opened without following any symlink."""
        parts = self.parts(rel, what)
        name = "/".join(parts)
        try:
            fd = open_beneath(self.fd, parts)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise CgagentError(f"{what} {_quote(name)} is missing from {self.label}",
                                   "the image is incomplete; export it again") from None
            if e.errno in (errno.ELOOP, errno.EXDEV):
                raise self._refuse(what, name, "is a symlink or passes through one") from None
            if e.errno == errno.ENOTDIR:
                raise self._refuse(what, name, "passes through something that is not a directory") from None
            raise CgagentError(f"cannot read {what} {_quote(name)}: {e.strerror}", "check the image") from None
        try:
            return os.fdopen(reopen(fd), "rb")
        except NotRegular as e:   # a symlink: the walk without openat2 opens the last one itself
            why = "is a symlink or passes through one" if e.symlink else "is not a regular file"
            raise self._refuse(what, name, why) from None

    def read(self, rel: object, what: str, cap: int = MAX_DOC) -> bytes:
        """A small document, read whole but never more than `cap` bytes."""
        with self.open(rel, what) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise CgagentError(f"{what} {_quote(str(rel))} is larger than {cap >> 20} MiB",
                               f"{self.label} was refused; image documents are small JSON files")
        return data


def _quote(name: str) -> str:
    """A name from the image, quoted and cut short: an error line stays one short line."""
    return repr(name if len(name) <= 120 else name[:117] + "...")


def walk(path: str, on_file: Callable[[int, str], None], on_dir_done: Callable[[int, str], None] | None = None) -> None:
    """Visit a tree of any depth without recursion and without long paths: each directory is entered
    by its name relative to an open parent (O_NOFOLLOW), so neither Python's recursion limit nor
    PATH_MAX bounds the depth, and at most two directory fds are open at a time.

    on_file(dirfd, name) sees every non-directory (symlinks are never followed); on_dir_done(dirfd,
    name) runs after a directory's whole content was visited, with the fd of its parent.
    """
    fd = os.open(path, DIR)
    pending: list[list[str]] = []      # per level: subdirectories still to enter
    ids: list[tuple[int, int]] = []    # per level: (dev, ino) of the parent, checked when climbing back
    names: list[str] = []              # per level: the name of the directory `fd` is, in its parent
    try:
        while True:
            subdirs = []
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        subdirs.append(e.name)
                    else:
                        on_file(fd, e.name)
            pending.append(subdirs)
            while not pending[-1]:
                pending.pop()
                if not names:
                    return
                parent = os.open("..", DIR, dir_fd=fd)
                pst = os.fstat(parent)
                os.close(fd)
                fd = parent
                if (pst.st_dev, pst.st_ino) != ids.pop():
                    raise OSError(errno.ESTALE, "the tree was moved while it was walked", path)
                done = names.pop()
                if on_dir_done is not None:
                    on_dir_done(fd, done)
            name = pending[-1].pop()
            st = os.fstat(fd)
            child = os.open(name, DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            ids.append((st.st_dev, st.st_ino))
            names.append(name)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """`rm -rf path` for a tree of any depth; symlinks are removed, never followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    walk(path, lambda d, n: os.unlink(n, dir_fd=d), lambda d, n: os.rmdir(n, dir_fd=d))
    os.rmdir(path)


def disk_usage(path: str) -> int:
    """Bytes allocated to the files under `path` (st_blocks, so sparse files count what they use)."""
    total = 0

    def add(d: int, n: str) -> None:
        nonlocal total
        total += os.stat(n, dir_fd=d, follow_symlinks=False).st_blocks * 512

    walk(path, add)
    return total

"""Unpack one layer tar into a directory for overlayfs, refusing anything that escapes it.

Every member is checked by hand (never tarfile.extractall): no absolute paths, no `..`, no hard
link or symlink resolving outside the layer, no write through a symlink. Whiteouts become what
overlayfs understands: `.wh.x` -> char device 0/0 named x; `.wh..wh..opq` -> xattr
trusted.overlay.opaque=y on the directory. Device nodes other than whiteouts are skipped: a block
device shipped in an image would let the workload read host disks.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Callable
from typing import IO

from cgagent.errors import CgagentError

WH = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
_XATTRS_KEPT = ("user.", "security.capability")


class HashingReader:
    """A read-only stream that hashes (and counts) what passes through it."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        if self.on_read is not None and data:
            self.on_read(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def refuse(what: str, member: str) -> CgagentError:
    return CgagentError(f"unsafe layer: {what} ({member!r})", "the image was refused; nothing was imported")


def clean_name(name: str) -> list[str]:
    """Member name -> path components inside the layer; raises on absolute paths and `..`."""
    if name.startswith("/"):
        raise refuse("absolute path", name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("path with '..'", name)
    return parts


def _check_parents(dest: str, parts: list[str], member: str, create: bool = True) -> str:
    """Create missing parent dirs; refuse when a parent is a symlink or not a directory."""
    cur = dest
    for p in parts[:-1]:
        cur = os.path.join(cur, p)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                raise refuse("hard link to a file not in the layer", member) from None
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise refuse("write through a symlink", member)
        if not stat.S_ISDIR(st.st_mode):
            raise refuse("a path component is not a directory", member)
    return os.path.join(cur, parts[-1])


def _clear(path: str, keep_dir: bool) -> None:
    """Remove whatever is at `path` (a later tar entry replaces an earlier one), never following links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not keep_dir:
            shutil.rmtree(path)
    else:
        os.unlink(path)


def _symlink_ok(parts: list[str], target: str) -> bool:
    if target.startswith("/"):
        return True  # resolved against the workload's root at run time, never the host's
    resolved = posixpath.normpath(posixpath.join("/".join(parts[:-1]), target))
    return resolved != ".." and not resolved.startswith("../")


def _apply_meta(path: str, m: tarfile.TarInfo, is_link: bool) -> None:
    os.lchown(path, m.uid, m.gid)
    if not is_link:
        os.chmod(path, stat.S_IMODE(m.mode))
    for key, val in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            attr = key[len("SCHILY.xattr."):]
            if attr.startswith(_XATTRS_KEPT):
                with contextlib.suppress(OSError):
                    os.setxattr(path, attr, val.encode("utf-8", "surrogateescape"), follow_symlinks=False)
    if not is_link:
        os.utime(path, (m.mtime, m.mtime))
    else:
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


def unpack(stream: IO[bytes], dest: str) -> int:
    """Unpack the (uncompressed) tar `stream` into the existing empty dir `dest`. Returns bytes of files."""
    size = 0
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")
    except tarfile.TarError as e:
        raise CgagentError(f"layer is not a tar archive: {e}", "check the image") from None
    with tf:
        try:
            for m in tf:
                size += _member(tf, m, dest, dirs)
        except tarfile.TarError as e:
            raise CgagentError(f"layer is not a valid tar archive: {e}", "check the image") from None
    for path, m in reversed(dirs):  # after the contents, or writing them would reset mtimes
        _apply_meta(path, m, False)
    return size


def _member(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: str, dirs: list[tuple[str, tarfile.TarInfo]]) -> int:
    parts = clean_name(m.name)
    if not parts:
        return 0  # "./": the layer root itself
    base = parts[-1]
    if base == OPAQUE:
        d = _check_parents(dest, [*parts[:-1], "x"], m.name)
        d = os.path.dirname(d)
        os.setxattr(d, "trusted.overlay.opaque", b"y")
        return 0
    if base.startswith(WH + WH):
        return 0  # aufs bookkeeping (.wh..wh.plnk etc.)
    if base.startswith(WH):
        path = _check_parents(dest, [*parts[:-1], base[len(WH):]], m.name)
        _clear(path, False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return 0
    path = _check_parents(dest, parts, m.name)
    if m.isdir():
        _clear(path, keep_dir=True)
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
        dirs.append((path, m))
        return 0
    if m.issym():
        if not _symlink_ok(parts, m.linkname):
            raise refuse("symlink pointing outside the layer", f"{m.name} -> {m.linkname}")
        _clear(path, False)
        os.symlink(m.linkname, path)
        _apply_meta(path, m, True)
        return 0
    if m.islnk():
        tparts = clean_name(m.linkname)
        if not tparts:
            raise refuse("hard link to the layer root", m.name)
        target = _check_parents(dest, tparts, m.linkname, create=False)
        try:
            tst = os.lstat(target)
        except FileNotFoundError:
            raise refuse("hard link to a file not in the layer", f"{m.name} -> {m.linkname}") from None
        if stat.S_ISDIR(tst.st_mode) or stat.S_ISLNK(tst.st_mode):
            raise refuse("hard link to a directory or symlink", f"{m.name} -> {m.linkname}")
        _clear(path, False)
        os.link(target, path, follow_symlinks=False)
        return 0
    if m.isfile():
        _clear(path, False)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        src = tf.extractfile(m)
        assert src is not None
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
        _apply_meta(path, m, False)
        return m.size
    if m.isfifo():
        _clear(path, False)
        os.mkfifo(path, 0o600)
        _apply_meta(path, m, False)
        return 0
    return 0  # char/block devices (see the module doc) and unknown types are not unpacked


def open_layer(raw: IO[bytes], magic: bytes) -> IO[bytes]:
    """The uncompressed stream of a layer blob: gzip is detected from its magic bytes."""
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        raise CgagentError("zstd-compressed layers are not supported", "re-export the image with gzip layers")
    return raw

"""Unpack one layer tar into a directory for overlayfs, refusing anything that escapes it.

Every member is checked by hand (never tarfile.extractall): no absolute paths, no `..`, no hard
link or symlink resolving outside the layer, no write through a symlink. Whiteouts become what
overlayfs understands: `.wh.x` -> char device 0/0 named x; `.wh..wh..opq` -> xattr
trusted.overlay.opaque=y on the directory; a whiteout must name one ordinary entry of its own
directory (never `.`, `..` or nothing). Device nodes other than whiteouts are skipped: a block
device shipped in an image would let the workload read host disks.

Everything is bounded by a Budget: the bytes file headers claim (sparse files count their full
size), the bytes of tar stream read, the number of entries, the size of each header (pax, GNU long
names, sparse maps), and path lengths (PATH_MAX), so neither a small hostile layer nor a deep tree
exhausts memory, disk or the recursion limit.
"""

from __future__ import annotations

import array
import contextlib
import errno
import gzip
import hashlib
import math
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Literal

from cgagent.beneath import open_beneath
from cgagent.errors import CgagentError
from cgagent.images.confined import remove_tree

WH = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_XATTRS_KEPT = ("user.", "security.capability")
PATH_MAX = 4096
MAX_ENTRIES = 1_000_000          # files, dirs and implied parent dirs in one import
MAX_HEADER = 1 << 20             # pax headers, GNU long names and sparse maps of one member
MAX_MTIME = 1 << 33                # year 2242
MAX_KNOWN = 1 << 16              # directories remembered as checked (a cache)
MAX_DIR_NAMES = 64 << 20         # directory names held for their mtimes (a layer may repeat one)
MAX_HEADER_NESTING = 8           # pax header before pax header before ...
MAX_DIGITS = 64                  # the longest run of digits in a pax header (see check_pax)
DEFAULT_MAX_SIZE = 10 << 30
MAX_SIZE_ENV = "CGAGENT_IMAGE_MAX_SIZE"
_PARENT = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _human(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


@dataclass
class Budget:
    """What one import may unpack; max_bytes < 0 means no size cap (entries stay bounded)."""

    max_bytes: int = DEFAULT_MAX_SIZE
    max_entries: int = MAX_ENTRIES
    claimed: int = 0     # file sizes as tar headers declare them (a sparse file's full size)
    streamed: int = 0    # uncompressed tar bytes read
    entries: int = 0

    def _too_big(self, what: str) -> CgagentError:
        return CgagentError(f"the image {what} more than {_human(self.max_bytes)} (the --max-size cap)",
                            f"raise --max-size (or {MAX_SIZE_ENV}) only for an image you trust")

    def claim(self, n: int) -> None:
        self.claimed += max(n, 0)
        if 0 <= self.max_bytes < self.claimed:
            raise self._too_big("unpacks to")

    def stream(self, n: int) -> None:
        self.streamed += n
        if 0 <= self.max_bytes < self.streamed:
            raise self._too_big("has a layer stream of")

    def entry(self, n: int = 1) -> None:
        self.entries += n
        if self.entries > self.max_entries:
            raise CgagentError(f"the image has more than {self.max_entries} files and directories",
                               "the image was refused; nothing was imported")


class HashingReader:
    """A read-only stream that hashes (and counts) what passes through it."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None] | None = None) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self.on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n >= 0 else CHUNK)  # never the whole rest of a stream at once
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


def _short(name: str) -> str:
    return name if len(name) <= 120 else name[:117] + "..."


def refuse(what: str, member: str) -> CgagentError:
    return CgagentError(f"unsafe layer: {what} ({_short(member)!r})", "the image was refused; nothing was imported")


def clean_name(name: str) -> list[str]:
    """Member name -> path components inside the layer; raises on absolute paths and `..`."""
    if "\0" in name:   # a pax header can carry one; no path can
        raise refuse("NUL in a name", name)
    if name.startswith("/"):
        raise refuse("absolute path", name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("path with '..'", name)
    return parts


_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_DIGITS + 1))


def check_pax(buf: bytes) -> None:
    """Refuse a pax header that is not `LEN KEY=VALUE\\n` records end to end (then NUL padding), or
    that has a run of more than MAX_DIGITS digits, or a `hdrcharset=` that is not a record's key.
    CPython before 3.11.10 and 3.12.6 parses it with regexes that take quadratic time on those
    (CVE-2024-6232): a 1 MiB header, a 1 KiB gzip, would take minutes. Linear here."""
    pos, charsets = 0, 0
    while pos < len(buf) and buf[pos] != 0:
        m = _PAX_LENGTH.match(buf, pos)
        end = pos + int(m.group(1)) if m else 0
        eq = buf.find(b"=", m.end(), end) if m else -1
        if m is None or end > len(buf) or eq < 0 or buf[end - 1] != 0x0A:
            raise _bad_pax("a record is malformed")
        charsets += buf[m.end():eq] == b"hdrcharset"
        pos = end
    if buf.count(b"hdrcharset=") != charsets:
        raise _bad_pax("it holds hdrcharset= where no record's key is")
    if _LONG_DIGITS.search(buf):
        raise _bad_pax(f"it holds more than {MAX_DIGITS} digits in a row")


def _bad_pax(why: str) -> CgagentError:
    return CgagentError(f"a pax header of the image was refused: {why}", "the image was refused; nothing was imported")


class _HeaderLimit:
    """tarfile's file object while it parses one member's headers: reads beyond MAX_HEADER are
    refused before tarfile allocates them (a 1 KiB gzip can declare a 1 GiB pax header); a pax
    header's body (the read after _proc_pax began) goes through check_pax first."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.left = MAX_HEADER
        self.depth = 0
        self.pax = False

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise CgagentError(f"a tar header of the image is larger than {MAX_HEADER >> 20} MiB",
                               "the image was refused; nothing was imported")
        data: bytes = self.raw.read(n)
        self.left -= len(data)
        if self.pax:
            self.pax = False
            check_pax(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class _BoundedTarInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> _BoundedTarInfo:
        lim = tf.fileobj
        if not isinstance(lim, _HeaderLimit):
            lim = tf.fileobj = _HeaderLimit(tf.fileobj)
            try:
                return super().fromtarfile(tf)
            finally:
                tf.fileobj = lim.raw
        lim.depth += 1      # tarfile recurses once per pax/long-name header before the member
        try:
            if lim.depth > MAX_HEADER_NESTING:
                raise CgagentError("the image has a tar member with too many extended headers",
                                   "the image was refused; nothing was imported")
            return super().fromtarfile(tf)
        finally:
            lim.depth -= 1

    def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        """CPython's private step (3.11 to 3.13 read the header's body first thing): check_pax it."""
        if isinstance(tf.fileobj, _HeaderLimit):
            tf.fileobj.pax = True
        info: tarfile.TarInfo = tarfile.TarInfo._proc_pax(self, tf)  # type: ignore[attr-defined]
        return info


# How tarfile says a header is bad: its own errors, and ValueError/OverflowError from a pax or GNU
# sparse field it converts (a nan mtime, a non-UTF-8 hdrcharset, a huge number)
TAR_ERRORS = (tarfile.TarError, ValueError, OverflowError)


def open_tar(stream: IO[bytes], mode: Literal["r|", "r|*"] = "r|") -> tarfile.TarFile:
    """A streaming reader whose headers are bounded (see _HeaderLimit); "r|*" detects compression."""
    try:
        return tarfile.open(fileobj=stream, mode=mode, tarinfo=_BoundedTarInfo)
    except TAR_ERRORS as e:   # it reads the first member's headers
        raise CgagentError(f"layer is not a tar archive: {e}", "check the image") from None


def members(tf: tarfile.TarFile, budget: Budget) -> Any:
    """The members one by one; tarfile's own list of every member seen is emptied as it goes."""
    while True:
        try:
            m = tf.next()
        except TAR_ERRORS as e:
            raise CgagentError(f"layer is not a valid tar archive: {e}", "check the image") from None
        tf.members.clear()  # type: ignore[attr-defined]
        if m is None:
            return
        budget.entry()
        yield m


def unpack(stream: IO[bytes], dest: str, budget: Budget | None = None, whiteouts: bool = True) -> int:
    """Unpack the (uncompressed) tar `stream` into the existing empty dir `dest`. Returns bytes of files.

    whiteouts=False unpacks a plain archive (a docker-save or OCI-layout tar), where `.wh.` names
    are ordinary files."""
    u = _Unpacker(dest, budget or Budget(), whiteouts)
    with open_tar(stream) as tf:
        for m in members(tf, u.budget):
            u.member(tf, m)
    u.set_dir_mtimes()
    return u.size


def _apply_meta(path: str, m: tarfile.TarInfo, is_link: bool, mtime: bool = True) -> None:
    """Owner, mode, kept xattrs and mtime of what was just made at `path` (never a symlink unless
    is_link, where nothing follows it)."""
    os.lchown(path, m.uid, m.gid)
    if not is_link:
        os.chmod(path, stat.S_IMODE(m.mode))
    for key, val in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            attr = key[len("SCHILY.xattr."):]
            if attr.startswith(_XATTRS_KEPT):
                with contextlib.suppress(OSError):
                    os.setxattr(path, attr, val.encode("utf-8", "surrogateescape"), follow_symlinks=False)
    if not mtime:
        return
    if not is_link:
        os.utime(path, (m.mtime, m.mtime))
    else:
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)


def _utime_beneath(dest: int, parts: list[str], t: int) -> None:
    """Set the mtime of `parts` under `dest`, its parent opened with no symlink followed; a name
    that is gone or now goes through a link is skipped."""
    try:
        parent = open_beneath(dest, parts[:-1], _PARENT) if len(parts) > 1 else dest
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            return
        raise
    try:
        with contextlib.suppress(FileNotFoundError):
            os.utime(parts[-1], (t, t), dir_fd=parent, follow_symlinks=False)
    finally:
        if parent != dest:
            os.close(parent)


def _symlink_ok(parts: list[str], target: str) -> bool:
    if target.startswith("/"):
        return True  # resolved against the workload's root at run time, never the host's
    resolved = posixpath.normpath(posixpath.join("/".join(parts[:-1]), target))
    return resolved != ".." and not resolved.startswith("../")


class _Unpacker:
    def __init__(self, dest: str, budget: Budget, whiteouts: bool) -> None:
        self.dest = dest
        self.budget = budget
        self.whiteouts = whiteouts
        self.size = 0
        # Directory mtimes are set last (writing their content would change them), kept compactly
        # (a layer may hold a million directories): relative paths NUL-separated, mtimes in an array.
        self.dir_names = bytearray()
        self.dir_mtimes = array.array("q")
        # Real directories (no symlinks on the way) made or checked by this unpack. Nothing else
        # writes the private staging dir, and any removal of a directory empties the set, so a
        # member whose parent is in it needs no walk (a deep tree would cost depth^2 lstats).
        self.known: set[str] = {dest}

    def _parent(self, parts: list[str], member: str, create: bool = True) -> str:
        """The real directory that holds `parts[-1]`, made when missing; refused when a component
        is a symlink or not a directory. Returns the full path of parts."""
        path = os.path.join(self.dest, *parts)
        if len(os.fsencode(path)) >= PATH_MAX:
            raise refuse(f"path longer than {PATH_MAX} bytes", member)
        parent = os.path.dirname(path)
        todo: list[str] = []
        while parent not in self.known:   # climb to the deepest directory already checked
            todo.append(parent)
            parent = os.path.dirname(parent)
        for cur in reversed(todo):
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if not create:
                    raise refuse("hard link to a file not in the layer", member) from None
                self.budget.entry()
                os.mkdir(cur, 0o755)
                self._know(cur)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise refuse("write through a symlink", member)
            if not stat.S_ISDIR(st.st_mode):
                raise refuse("a path component is not a directory", member)
            self._know(cur)
        return path

    def _know(self, path: str) -> None:
        if len(self.known) >= MAX_KNOWN:   # a cache: bounded, refilled by walks
            self._forget()
        self.known.add(path)

    def _forget(self) -> None:
        self.known = {self.dest}

    def set_dir_mtimes(self) -> None:
        """Never through a symlink, at any component: a later member may have replaced a directory
        (the name's last one, or one on its way) with a link to a host path."""
        dest = os.open(self.dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            end = len(self.dir_names) - 1
            for i in range(len(self.dir_mtimes) - 1, -1, -1):   # deepest (latest) first, one name at a time
                start = self.dir_names.rfind(b"\0", 0, end) + 1
                _utime_beneath(dest, os.fsdecode(bytes(self.dir_names[start:end])).split("/"), self.dir_mtimes[i])
                end = start - 1
        finally:
            os.close(dest)

    def _clear(self, path: str, keep_dir: bool) -> None:
        """Remove what is at `path` (a later tar entry replaces an earlier one), never following links."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                remove_tree(path)
                self._forget()
        else:
            os.unlink(path)

    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = clean_name(m.name)
        if not (0 <= m.uid < 1 << 32 and 0 <= m.gid < 1 << 32):
            raise refuse("owner out of range", m.name)
        if isinstance(m.mtime, float) and not math.isfinite(m.mtime):   # a pax mtime of nan, inf or 1e400
            raise CgagentError(f"the image is damaged: tar member {_short(m.name)!r} has the mtime {m.mtime}",
                               "export the image again")
        m.mtime = min(max(int(m.mtime), 0), MAX_MTIME)   # what utime() and the kernel can hold
        if not parts:
            return  # "./": the layer root itself
        base = parts[-1]
        if self.whiteouts and base.startswith(WH):
            self._whiteout(parts, m.name)
            return
        path = self._parent(parts, m.name)
        if m.isdir():
            self._clear(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o755)
            self._know(path)
            _apply_meta(path, m, False, mtime=False)
            self.dir_names += os.fsencode("/".join(parts)) + b"\0"
            if len(self.dir_names) > MAX_DIR_NAMES:
                raise refuse(f"directory names of more than {_human(MAX_DIR_NAMES)}", m.name)
            self.dir_mtimes.append(int(m.mtime))
        elif m.issym():
            if "\0" in m.linkname:
                raise refuse("NUL in a symlink's target", m.name)
            if not _symlink_ok(parts, m.linkname):
                raise refuse("symlink pointing outside the layer", f"{m.name} -> {m.linkname}")
            self._clear(path, False)
            os.symlink(m.linkname, path)
            _apply_meta(path, m, True)
        elif m.islnk():
            self._hardlink(path, m)
        elif m.isfile():
            self.budget.claim(m.size)
            self._clear(path, False)
            self._write(tf, m, path)
            _apply_meta(path, m, False)
            self.size += m.size
        elif m.isfifo():
            self._clear(path, False)
            os.mkfifo(path, 0o600)
            _apply_meta(path, m, False)
        # char/block devices (see the module doc) and unknown types are not unpacked

    def _whiteout(self, parts: list[str], member: str) -> None:
        base = parts[-1]
        if base == OPAQUE:
            d = os.path.dirname(self._parent([*parts[:-1], "x"], member))
            os.setxattr(d, "trusted.overlay.opaque", b"y", follow_symlinks=False)
            return
        if base.startswith(WH + WH):
            return  # aufs bookkeeping (.wh..wh.plnk etc.)
        victim = base[len(WH):]
        if victim in ("", ".", ".."):   # `.wh..` would whiteout the directory itself, `.wh...` its parent
            raise refuse("whiteout of '.', '..' or nothing", member)
        path = self._parent([*parts[:-1], victim], member)
        self._clear(path, False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def _hardlink(self, path: str, m: tarfile.TarInfo) -> None:
        tparts = clean_name(m.linkname)
        if not tparts:
            raise refuse("hard link to the layer root", m.name)
        target = self._parent(tparts, m.linkname, create=False)
        try:
            tst = os.lstat(target)
        except FileNotFoundError:
            raise refuse("hard link to a file not in the layer", f"{m.name} -> {m.linkname}") from None
        if stat.S_ISDIR(tst.st_mode) or stat.S_ISLNK(tst.st_mode):
            raise refuse("hard link to a directory or symlink", f"{m.name} -> {m.linkname}")
        self._clear(path, False)
        os.link(target, path, follow_symlinks=False)

    @staticmethod
    def _write(tf: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
        """The file's content; runs of zero chunks become holes (sparse members stay sparse)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        src = tf.extractfile(m)
        assert src is not None
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                if len(chunk) == CHUNK and chunk == _ZEROS:
                    out.seek(CHUNK, os.SEEK_CUR)
                else:
                    out.write(chunk)
            out.truncate(out.tell())


def open_layer(raw: IO[bytes], magic: bytes) -> IO[bytes]:
    """The uncompressed stream of a layer blob: gzip is detected from its magic bytes."""
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        raise CgagentError("zstd-compressed layers are not supported", "re-export the image with gzip layers")
    return raw

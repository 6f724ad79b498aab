"""When each line of a detached workload's log was written, for `logs --since` and `--timestamps`.

The workload writes its log file directly (no pipe through cgagent: its output never waits for us,
a dead supervisor never costs it an EPIPE, and `cat` reads the log as it is). Beside it, a stamper
(a child of the supervisor) appends to `logs/<name>.idx` one entry per inotify wake-up: the log's
size then and its mtime (the kernel's time of the last write, never later than the bytes before that
size). A line's time is the first entry that covers its end; bytes no entry covers yet take the
log's mtime now. Times are clamped to never go back (a wall clock stepped back).
"""

from __future__ import annotations

import array
import bisect
import contextlib
import datetime
import os
import re
import struct
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from cgagent.errors import CgagentError
from cgagent.wakeup import ready_to_read

ENTRY = struct.Struct("<QQ")   # log size, time (ns since the epoch)
MAX_LINE = 1 << 20


# --- the stamper (runs in a child of the supervisor for the supervisor's life)

def start_stamper(log_path: str, idx_path: str) -> None:
    """Fork the stamper: it ends when this process (the supervisor) has exited."""
    parent = os.getpid()
    if os.fork() != 0:
        return
    try:
        with contextlib.suppress(OSError, AttributeError):   # `ps -o comm` tells it from the supervisor
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(15, b"cgagent-stamp", 0, 0, 0)   # PR_SET_NAME
        _stamp(log_path, idx_path, parent)
    finally:
        os._exit(0)


def _stamp(log_path: str, idx_path: str, parent: int) -> None:
    try:
        sup = os.pidfd_open(parent)
        log = os.open(log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        idx = os.open(idx_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return   # no index: readers fall back to the log's mtime
    from cgagent.inotify import IN_MODIFY, Follow

    # without an inotify instance (past ~120 detached workloads) a look a second: times late by up to one
    watch = Follow([(log_path, IN_MODIFY)])
    size = os.fstat(idx).st_size
    os.ftruncate(idx, size - size % ENTRY.size)   # a torn last entry (a kill mid-write)
    last_size, last_t = 0, 0
    if size >= ENTRY.size:
        last_size, last_t = ENTRY.unpack(os.pread(idx, ENTRY.size, size - size % ENTRY.size - ENTRY.size))
    if last_size > os.fstat(log).st_size:   # an index left by an earlier workload of this name
        os.ftruncate(idx, 0)
        last_size = 0
    ended = False
    while True:
        st = os.fstat(log)
        if st.st_size > last_size:
            last_size, last_t = st.st_size, max(last_t, st.st_mtime_ns)
            try:
                os.write(idx, ENTRY.pack(last_size, last_t))
            except OSError:
                return   # a full disk: the index stops, the log goes on (readers use the mtime)
        elif st.st_size < last_size:
            last_size = st.st_size   # truncated by hand: later entries must still grow
        if ended:   # the supervisor is gone (and the look above saw its last writes): done
            return
        ready = ready_to_read([*watch.fds, sup], watch.timeout)
        watch.drain()
        ended = sup in ready


# --- parsing --since

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)(?:[Tt ](\d\d:\d\d(?::\d\d)?)(?:\.(\d{1,9}))?)?([Zz]|[+-]\d\d:\d\d)?")


def parse_since(value: str | None, now_ns: int | None = None) -> int | None:
    """`logs --since`'s value as docker takes it -> ns since the epoch: an RFC 3339 time (a time
    without a zone is local), a date, Unix seconds, or a duration back from now (10m, 1h30m, 1.5s)."""
    if value is None:
        return None
    try:   # a duration of 400 digits, or year 1 in a zone west of UTC, is out of any clock's range
        ns = _since_ns(value.strip(), time.time_ns() if now_ns is None else now_ns)
    except (ValueError, OverflowError):
        ns = None
    if ns is None:
        raise CgagentError(f"--since {value!r} is not a time",
                           "give an RFC 3339 time (2024-05-01T10:00:00Z), Unix seconds, or a duration (10m, 1h30m)")
    return ns


def _since_ns(v: str, now: int) -> int | None:
    if re.fullmatch(r"\d{1,12}(\.\d{1,9})?", v):
        sec, _, frac = v.partition(".")
        return int(sec) * 10**9 + int((frac or "0").ljust(9, "0"))
    if re.fullmatch(f"(?:{_DURATION.pattern})+", v):
        return now - sum(int(float(n) * _UNIT_NS[u]) for n, u in _DURATION.findall(v))
    m = _RFC3339.fullmatch(v)
    if m is None:
        return None
    day, clock, frac, zone = m.groups()
    offset = "" if zone in (None, "Z", "z") else zone
    dt = datetime.datetime.fromisoformat(f"{day}T{clock or '00:00:00'}{offset}")
    if zone in ("Z", "z"):
        dt = dt.replace(tzinfo=datetime.UTC)
    elif dt.tzinfo is None:
        dt = dt.astimezone()   # local time, as docker reads a time without a zone
    return int(dt.timestamp()) * 10**9 + int((frac or "0").ljust(9, "0"))


def stamp(t_ns: int) -> bytes:
    """RFC 3339 UTC with nanoseconds, as `docker logs --timestamps` prints it."""
    sec, ns = divmod(t_ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode() + b".%09dZ " % ns


# --- reading

class Index:
    """The entries of a log's index; reread as it grows (follow)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sizes: list[int] = []
        self.times: list[int] = []
        self._read = 0
        self.refresh()

    def refresh(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return   # none (yet, or a workload older than the index): readers use the log's mtime
        with os.fdopen(fd, "rb") as f:
            f.seek(self._read)
            raw = f.read()
        raw = raw[:len(raw) - len(raw) % ENTRY.size]
        self._read += len(raw)
        a = array.array("Q", raw)
        if sys.byteorder == "big":   # entries are little-endian on every machine
            a.byteswap()
        self.sizes += a[0::2]
        self.times += a[1::2]

    def time_at(self, end: int) -> int | None:
        """The time of the bytes before `end`: the first entry whose size reaches it."""
        k = bisect.bisect_left(self.sizes, end)
        return self.times[k] if k < len(self.sizes) else None

    def size_before(self, t_ns: int) -> int:
        """The log's size when the last entry older than `t_ns` was made (0: none)."""
        k = bisect.bisect_left(self.times, t_ns)
        return self.sizes[k - 1] if k > 0 else 0


class LogReader:
    """Reads a log from where --tail/--since put it; with timestamps, whole lines, each prefixed."""

    def __init__(self, f: BinaryIO, idx_path: str, timestamps: bool) -> None:
        self.f = f
        self.timestamps = timestamps
        self.index = Index(idx_path) if timestamps else None
        self.idx_path = idx_path
        self.pending = b""
        self.last = 0

    def seek_since(self, since_ns: int | None) -> None:
        """Move forward (never back: --tail may have put it later) to the first line at or after `since_ns`."""
        if since_ns is None:
            return
        index = self.index or Index(self.idx_path)
        end = os.fstat(self.f.fileno()).st_size
        pos = index.size_before(since_ns)
        if index.time_at(end) is None and _mtime(self.f) < since_ns:
            pos = end   # nothing stamped since then, and the log has not changed since either
        here = self.f.tell()
        # a line that goes on past `pos` was completed later: it is kept whole
        self.f.seek(max(here, pos if pos >= end else _line_start(self.f, pos)))

    def chunks(self, final: bool = False) -> Iterator[bytes]:
        """What is there now, 64 KiB at a time; with timestamps a last line without its newline
        waits for it (until `final`: the writer is gone). A line over MAX_LINE is cut there, as
        docker cuts its lines at 16 KiB."""
        if self.index is not None:
            self.index.refresh()   # once a call, not once a line: a log without entries has many lines
        while data := self.f.read(65536):
            if not self.timestamps:
                yield data
            elif out := self._stamped(data, False):
                yield out
        if self.timestamps and final and (out := self._stamped(b"", True)):
            yield out

    def _stamped(self, data: bytes, final: bool) -> bytes:
        """The whole lines of pending + data, each prefixed; the lines of one entry (one write, or a
        burst) are prefixed together in one replace(): a million lines take a second, not many."""
        assert self.index is not None
        sizes, times = self.index.sizes, self.index.times
        start = self.f.tell() - len(data) - len(self.pending)
        data, self.pending = self.pending + data, b""
        whole = len(data)
        limit = data.rfind(b"\n") + 1   # the end of the last whole line
        if final or whole - limit > MAX_LINE:
            if limit < whole:
                data += b"\n"   # a last line without its newline gets one, as docker prints it
            limit = len(data)
        else:
            self.pending = data[limit:]
        out: list[bytes] = []
        pos, k = 0, bisect.bisect_left(sizes, start + 1)
        while pos < limit:
            if k < len(sizes):
                covered = sizes[k] - start   # the lines that had ended when entry k was made
                cut = limit if covered >= whole else data.rfind(b"\n", pos, covered) + 1
                t, k = times[k], k + 1
                if cut <= pos:
                    continue
            else:
                cut, t = limit, _mtime(self.f)   # not stamped yet: written by the log's last change
            self.last = max(self.last, t)
            prefix = stamp(self.last)
            out.append(prefix + data[pos:cut - 1].replace(b"\n", b"\n" + prefix) + b"\n")
            pos = cut
        return b"".join(out)


def _mtime(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_mtime_ns


def _line_start(f: BinaryIO, pos: int) -> int:
    """The start of the line holding byte `pos` (a size may end mid-line)."""
    back = pos
    while back > 0:
        lo = max(0, back - 65536)
        f.seek(lo)
        chunk = f.read(back - lo)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            return lo + nl + 1
        back = lo
    return 0

"""The durable events log: one JSON object per line, appended and fsync'd, never rewritten.

Kinds: start, exit, oom_kill, update, and later ones (policy actions). Readers tolerate a torn
last line (a crash mid-append) by not reading past it, and skip any other line that is not an
event (not JSON, not an object, a time that is not a timestamp, an over-long line) with one warning
naming file:line, so a damaged line never stops `cgagent events` nor a scrape. The file is 0600:
events carry command lines.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator

from cgagent.errors import kind_of

TYPE_CHECKING = False   # not typing's own: a launch does not import typing (see cgagent.cli.thin)
if TYPE_CHECKING:
    from typing import Any, BinaryIO

FILE = "events.jsonl"
MAX_LINE = 1 << 20      # an event is well under 64 KiB; a longer line is damage and is skipped unread
_MAX_TIME = 1e11        # year 5138: a larger "time" is garbage, not a timestamp


def path(state_root: str) -> str:
    return os.path.join(state_root, FILE)


def append(state_root: str, kind: str, name: str, **fields: Any) -> dict[str, Any]:
    from cgagent.state import private_dir, private_fd, write_error

    ev = {"time": time.time(), "kind": kind, "name": name, **fields}
    data = json.dumps(ev, sort_keys=True).encode() + b"\n"
    p = path(state_root)
    try:
        private_dir(state_root)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            private_fd(fd)
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                # a writer killed mid-line (a fatal signal cuts a write of several pages short) left
                # it torn: end it, or it swallows this event (a racing writer's line at most leaves
                # an empty one, which readers skip)
                data = b"\n" + data
            n = os.write(fd, data)   # one write: O_APPEND keeps lines whole
            if n != len(data):
                # the disk filled mid-line: end the torn piece so the next event starts a line of its own
                os.write(fd, b"\n")
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(p, e, len(data)) from None
    return ev


def problem(ev: Any) -> str | None:
    """Why a parsed line is not an event, or None."""
    if not isinstance(ev, dict):
        return f"{kind_of(ev)}, not an object"
    t = ev.get("time")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0 <= t < _MAX_TIME:
        return f"time {str(t)[:40]!r} is not a timestamp"
    for k in ("kind", "name"):
        if not isinstance(ev.get(k), str):
            return f"{k} is not a string"
    return None


_warned: set[tuple[str, tuple[int, int] | None, int]] = set()


def warn(where: str, what: str) -> None:
    print(f"cgagent: warning: {where}: {what} (line skipped)", file=sys.stderr, flush=True)


class Reader:
    """Reads new whole lines from where it stopped. A log replaced by another file (new inode) or cut
    shorter than what was read is read again from its start, and `reset` says so: whoever folds the
    events must then start over rather than add the same events twice."""

    def __init__(self, state_root: str, offset: int = 0, on_bad: Callable[[str, str], None] = warn) -> None:
        self.file = path(state_root)
        self.offset = offset
        self.line = 0          # lines before `offset` (when it started at 0: else only byte offsets)
        self.numbered = offset == 0
        self.ino: tuple[int, int] | None = None
        self.reset = False
        self.on_bad = on_bad

    def read(self) -> Iterator[dict[str, Any]]:
        self.reset = False
        try:
            f = open(self.file, "rb")
        except FileNotFoundError:
            if self.offset:
                self._restart(None)
            return
        with f:
            st = os.fstat(f.fileno())
            ino = (st.st_dev, st.st_ino)
            if self.ino is not None and (ino != self.ino or st.st_size < self.offset):
                self._restart(ino)
            self.ino = ino
            f.seek(self.offset)
            yield from self._lines(f)

    def _restart(self, ino: tuple[int, int] | None) -> None:
        self.offset, self.line, self.ino, self.reset, self.numbered = 0, 0, ino, True, True

    def _bad(self, start: int, what: str) -> None:
        # once per line per process: serve's readers (OOM totals, policies) re-read the same log
        if (self.file, self.ino, start) in _warned:
            return
        _warned.add((self.file, self.ino, start))
        self.on_bad(f"{self.file}:{self.line}" if self.numbered else f"{self.file} (byte {start})", what)

    def _lines(self, f: BinaryIO) -> Iterator[dict[str, Any]]:
        while True:
            start = self.offset
            raw = f.readline(MAX_LINE + 1)
            if not raw.endswith(b"\n"):
                if len(raw) <= MAX_LINE:
                    return   # torn or still being written: read it next time, whole
                skipped = len(raw)
                while not raw.endswith(b"\n"):   # skip the rest of the over-long line in bounded pieces
                    raw = f.readline(MAX_LINE)
                    if not raw:
                        return   # no end yet: come back when it has one
                    skipped += len(raw)
                self.offset += skipped
                self.line += 1
                self._bad(start, f"longer than {MAX_LINE} bytes")
                continue
            self.offset += len(raw)
            self.line += 1
            if raw == b"\n":
                continue   # the end a torn line was given (append)
            try:
                ev = json.loads(raw)
            except (ValueError, RecursionError):
                self._bad(start, "not JSON")
                continue
            why = problem(ev)
            if why is not None:
                self._bad(start, why)
                continue
            yield ev


def size(state_root: str) -> int:
    """The log's length now: an offset to read what is appended later from (0: no log yet)."""
    try:
        return os.stat(path(state_root)).st_size
    except OSError:
        return 0


def logged(state_root: str, kind: str, name: str, since: int = 0, **match: Any) -> bool:
    """Whether the log already holds a `kind` event of `name` with these field values (makes a
    retried append idempotent), looking from offset `since` (from the start when the log is now
    shorter than that: replaced)."""
    return any(ev["kind"] == kind and ev["name"] == name and all(ev.get(k) == v for k, v in match.items())
               for _off, ev in read(state_root, noted(state_root, since)))


def noted(state_root: str, offset: int) -> int:
    """An offset noted before some event was appended, as the one to look for it from: the start
    when the log is now shorter than that (replaced). Not for readers that fold the log as it grows
    (they notice a replaced log themselves, by its inode, and start over)."""
    return offset if 0 <= offset <= size(state_root) else 0


def read(state_root: str, offset: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset after the line, event) for each whole, valid line from `offset`."""
    r = Reader(state_root, offset)
    for ev in r.read():
        yield r.offset, ev

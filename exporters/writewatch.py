"""Values that change only when someone writes their file (limits), kept per cgroup until inotify
reports such a write (IN_MODIFY; a write(2) to a cgroup file raises it). The events are drained at
the start of each scrape: no thread, no timer. A watch the kernel drops (IN_IGNORED: the cgroup was
removed, maybe re-created under the same path for the same Target, as `cgagent restart` does) drops
its target's entry, so the next scrape reads and watches the files anew. Targets on the same files
share the kernel's watch (inotify gives the same wd), so it is removed with the last of them. Without
inotify (no instance, out of watches, a file missing) the target is simply read every scrape."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from cgagent import inotify
from exporters.targets import Target


@dataclass(eq=False, slots=True)   # one per cgroup: no __dict__ each
class Entry:
    """What one target's watched files last read, and the watches on them (all live, or none)."""

    values: Any = None
    wds: list[int] = field(default_factory=list)
    fresh: bool = False


class WriteWatch:
    def __init__(self) -> None:
        self._entries: dict[Target, Entry] = {}
        self._by_wd: dict[int, list[Target]] = {}   # a wd's users: the targets watching that file
        self._ino: inotify.Inotify | None = None
        with contextlib.suppress(OSError):
            self._ino = inotify.Inotify()

    def begin(self) -> None:
        """Start of a scrape: mark every target whose files were written since as stale, and drop
        the entries whose watches are gone."""
        if self._ino is None:
            return
        for wd, mask, _name in self._ino.read():
            if wd == -1:   # IN_Q_OVERFLOW: events were lost, IN_IGNORED ones too: trust nothing
                self._restart()
                return
            users = self._by_wd.get(wd)
            if users is None:
                continue
            if mask & inotify.IN_IGNORED:   # the kernel dropped this watch: watch() must add one again
                del self._by_wd[wd]
                for t in users:
                    self._forget(t)
            else:
                for t in users:
                    self._entries[t].fresh = False

    def cached(self, t: Target) -> Any:
        """The values kept for `t`, or None when they must be read (call `watch` first, then read)."""
        e = self._entries.get(t)
        return e.values if e is not None and e.fresh else None

    def watch(self, t: Target, paths: list[str]) -> None:
        """Watch `t`'s files (once); call before reading them so a write in between is not missed."""
        if t in self._entries or self._ino is None:
            return
        e = self._entries[t] = Entry()
        try:
            for p in paths:
                wd = self._ino.add(p, inotify.IN_MODIFY)
                e.wds.append(wd)
                self._by_wd.setdefault(wd, []).append(t)
        except OSError:   # missing file or out of watches: read this target every scrape
            self._forget(t)
            self._entries[t] = e

    def store(self, t: Target, values: Any) -> None:
        e = self._entries.get(t)
        if e is not None:
            e.values = values
            e.fresh = bool(e.wds)

    def end(self, live: list[Target]) -> None:
        """End of a scrape: drop the targets that are gone and their watches."""
        keep = set(live)
        for t in [t for t in self._entries if t not in keep]:
            self._forget(t)

    def close(self) -> None:
        self.end([])
        if self._ino is not None:
            self._ino.close()
            self._ino = None

    def _restart(self) -> None:
        """Forget everything on a new inotify instance: the old one's watches go with its fd. Keeping
        it would keep the watches of targets whose removal the lost events hid, until their files go."""
        assert self._ino is not None
        self._ino.close()
        self._ino = None
        self._entries.clear()
        self._by_wd.clear()
        with contextlib.suppress(OSError):
            self._ino = inotify.Inotify()

    def _forget(self, t: Target) -> None:
        """Drop `t`'s entry; a watch goes with its last user."""
        e = self._entries.pop(t, None)
        if e is None:
            return
        for wd in e.wds:
            inotify.release(self._ino, self._by_wd, wd, t)
        e.wds.clear()
        e.fresh = False
